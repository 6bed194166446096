//! The per-row pipeline of docs/design.md section 2 and the batched driver.
//!
//! Order: bias and bans → penalties → temperature (T = 0 is greedy) → top-k → softmax →
//! top-p → min-p → renormalise and draw. Rows are independent; large batches run on rayon.

use crate::draw::{draw_dense, draw_dense_by, draw_sparse};
use crate::elem::{Elem, Real};
use crate::error::SamplingError;
use crate::filter::{
    apply_cut, by_prob, cut_block_sums, kth_largest, mass_select, region_block_sums,
    top_k_candidates, top_p_cut, Cut, Nucleus, HEAD,
};
use crate::params::RowParams;
use crate::penalty::{apply, count_history};
use crate::rng::uniform;
#[cfg(target_arch = "x86_64")]
use crate::simd::{simd_level, Simd};
use crate::softmax::{
    approx_exp, exp_weight, exp_weights, exp_weights_elem, first_index_of, first_index_of_by,
    indicator_weights, max_nan, max_nan_by, raw_log_softmax_at, top_logprobs, MassEstimate, BLOCK,
    EST_REL, EST_SCALE,
};
use num_traits::{Float, One, Zero};
use rayon::prelude::*;
use std::sync::{Arc, RwLock};

/// How rows get their random streams.
#[derive(Debug, Clone, Copy)]
pub enum Seeds<'a> {
    /// One seed for the batch: row `i` uses lane `i` of that seed's stream.
    Shared(u64),
    /// One seed per row (lane 0), so a row draws the same wherever it sits in the batch.
    PerRow(&'a [u64]),
}

/// A rectangular block of `rows` rows of `width` ids, row-major; negative ids are padding.
#[derive(Debug, Clone, Copy)]
pub struct IdRows<'a> {
    /// The ids, `rows * width` of them.
    pub ids: &'a [i64],
    /// Ids per row.
    pub width: usize,
}

impl<'a> IdRows<'a> {
    /// Offset of row `i`'s first id: one row broadcasts to the whole batch.
    fn start(&self, i: usize) -> usize {
        if self.ids.len() == self.width {
            0
        } else {
            i * self.width
        }
    }

    fn row(&self, i: usize) -> &'a [i64] {
        if self.width == 0 {
            return &[];
        }
        let start = self.start(i);
        &self.ids[start..start + self.width]
    }
}

/// Everything one batched call needs besides the output buffer.
#[derive(Debug, Clone, Copy)]
pub struct BatchRequest<'a, T> {
    /// The logit rows, all of one length V.
    pub rows: &'a [&'a [T]],
    /// Parameters: one row for the whole batch, or one per row.
    pub params: &'a [RowParams],
    /// Token history per row (one row for a single-row batch), or `None`.
    pub history: Option<IdRows<'a>>,
    /// Logit-bias ids per row (one row broadcasts); `-inf` values ban.
    pub bias_ids: Option<IdRows<'a>>,
    /// Logit-bias values, laid out like `bias_ids`.
    pub bias_values: &'a [f64],
    /// Random streams.
    pub seeds: Seeds<'a>,
    /// Step of the stream (a `Sampler` advances it each call).
    pub step: u64,
    /// Compute the log-probability of the chosen token under the raw softmax.
    pub want_raw_logprob: bool,
    /// How many top log-probabilities to report per row (at most `max(V, TOP_N_SLACK)`).
    pub top_n: usize,
}

/// `top_n` may exceed the vocabulary (the extra slots are padding) up to this many; beyond
/// both, a request would only reach the allocator (B × top_n slots) and abort the process.
pub const TOP_N_SLACK: usize = 1024;

/// What one row produced.
#[derive(Debug, Clone, PartialEq)]
pub struct RowResult {
    /// The chosen token id.
    pub id: i64,
    /// Its log-probability under the final distribution.
    pub logprob: f64,
    /// Its log-probability under the raw softmax (NaN unless asked for).
    pub raw_logprob: f64,
    /// The `top_n` most probable tokens of the final distribution with their log-probabilities.
    pub top: Vec<(i64, f64)>,
}

/// Reusable buffers of one thread. They live in a thread-local for the thread's lifetime, so
/// a call costs no allocation and, more to the point, no page faults: fresh 512 KB buffers
/// come from `mmap` and touching them cost more than the whole pipeline on a 128k row.
#[derive(Default)]
struct Scratch<F> {
    y: Vec<F>,
    w: Vec<F>,
    sel: Vec<F>,
    blocks: Vec<f64>,
    pairs: Vec<(F, u32)>,
    hist: Vec<u32>,
    counts: Vec<(u32, u32)>,
    keys: Vec<u64>,
    /// The row's mass estimated in its first read (top-p rows).
    est: MassEstimate,
    /// A bfloat16 row widened after its first scan (the dense path).
    wide: Vec<F>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<(Scratch<f32>, Scratch<f64>)> = Default::default();
}

/// Runs `f` with this thread's scratch for the compute type `F` (a fresh one if the thread's
/// is already in use).
fn with_scratch<F: Real, R>(f: impl FnOnce(&mut Scratch<F>) -> R) -> R {
    use std::any::Any;
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut pair) => {
            let (s32, s64) = &mut *pair;
            if let Some(s) = (s32 as &mut dyn Any).downcast_mut::<Scratch<F>>() {
                f(s)
            } else if let Some(s) = (s64 as &mut dyn Any).downcast_mut::<Scratch<F>>() {
                f(s)
            } else {
                f(&mut Scratch::default())
            }
        }
        Err(_) => f(&mut Scratch::default()),
    })
}

/// Top-k runs on the streaming path (candidates only) while `k` is at most this share of V;
/// above it, a selection on a copy and the dense path are cheaper.
const SPARSE_TOP_K_DIVISOR: usize = 8;

/// Whether bias, bans or penalties change row `i` (otherwise it can be read in place).
fn modifies_row<T>(req: &BatchRequest<'_, T>, i: usize, p: &RowParams) -> bool {
    req.bias_ids
        .is_some_and(|b| b.row(i).iter().any(|&id| id >= 0))
        || (req.history.is_some() && !p.penalties().is_off())
}

/// Applies bias, bans and penalties to the loaded row `s.y` (of length `v`); when
/// [`modifies_row`] is false it only validates the history ids.
#[inline(always)]
fn modify_row<T: Elem>(
    req: &BatchRequest<'_, T>,
    i: usize,
    p: &RowParams,
    v: usize,
    s: &mut Scratch<T::C>,
) -> Result<(), SamplingError> {
    type F<T> = <T as Elem>::C;
    if let Some(bias) = req.bias_ids {
        let start = bias.start(i);
        for (n, &id) in bias.row(i).iter().enumerate() {
            if id < 0 {
                continue;
            }
            if id as u64 >= v as u64 {
                return Err(SamplingError::TokenOutOfRange {
                    what: "logit_bias",
                    row: i,
                    id,
                    vocab: v,
                });
            }
            let b = req.bias_values[start + n];
            let e = &mut s.y[id as usize];
            // A ban wins over everything, and a masked token stays masked.
            let biased = *e + F::<T>::of(b);
            *e = if e.is_nan() {
                // Keep a NaN visible to the row check: a ban must not hide bad input.
                *e
            } else if b == f64::NEG_INFINITY || biased.is_nan() {
                F::<T>::neg_infinity()
            } else {
                biased
            };
        }
    }
    if let Some(h) = req.history {
        let penalties = p.penalties();
        if !penalties.is_off() {
            count_history(h.row(i), v, i, &mut s.hist, &mut s.counts)?;
            apply(&mut s.y, &s.counts, &penalties);
        } else if let Some(&id) = h.row(i).iter().find(|&&id| id >= v as i64) {
            // Bad ids are an error even when no penalty reads them, so a bug in the caller's
            // bookkeeping surfaces on the first call, not when a penalty is switched on.
            return Err(SamplingError::TokenOutOfRange {
                what: "history",
                row: i,
                id,
                vocab: v,
            });
        }
    }
    Ok(())
}

/// The streaming top-k of a row: on the raw bfloat16 bits when given (AVX-512), else on `y`.
/// Returns (NaN seen, `est` filled): `est` (the inverse temperature and where to put the
/// row's [`MassEstimate`]) is only filled by the AVX-512 scans, in the same read.
#[inline(always)]
fn first_scan<F: Real>(
    y: &[F],
    raw_bf16: Option<&[u16]>,
    k: usize,
    cand: &mut Vec<(F, u32)>,
    sel: &mut Vec<F>,
    est: Option<(f32, &mut MassEstimate)>,
) -> (bool, bool) {
    #[cfg(target_arch = "x86_64")]
    if let (Some(c), Some(s)) = (crate::simd::pairs_f32(cand), crate::simd::vec_f32(sel)) {
        let filled = est.is_some();
        if let Some(raw) = raw_bf16 {
            // SAFETY: raw_bf16 is only Some when avx512_bf16 found AVX-512.
            return (
                unsafe { crate::simd::top_k_candidates_bf16(raw, k, c, s, est) },
                filled,
            );
        }
        if let Some(y32) = crate::simd::avx512_f32(y) {
            // SAFETY: avx512_f32 returned Some, so the CPU has AVX-512.
            return (
                unsafe { crate::simd::top_k_candidates(y32, k, c, s, est) },
                filled,
            );
        }
    }
    let _ = (raw_bf16, est);
    (top_k_candidates(y, k, cand, sel), false)
}

/// The nucleus of a peaked row (top-p without top-k) decided without the exact exp pass.
///
/// `cand` holds on entry the ids of the head, every token whose logit is at least the
/// [`HEAD`]-th largest; `est` the row's [`MassEstimate`] from the same first read. The head's
/// exact weights (the exp pass's, bit for bit) and the estimate bound the row's total mass:
/// each estimated term is within `EST_REL` of its weight, the lane sums within 1e-5. When the
/// head holds `top_p` of even the largest possible total and the cut among the head is the
/// same at both ends of the bound, that is the cut the exact total gives (the cut only moves
/// with the target). Then `cand` is left holding the kept pairs in id order and their mass is
/// returned: what the exact path's sparse draw gets. `None` (a flat row, or a bound too loose
/// to decide) leaves the exact path to run; `cand` still holds the head's ids.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn peaked_nucleus<Y: Copy, F: Real, const FMA: bool>(
    x: &[Y],
    load: impl Fn(Y) -> F,
    m: F,
    inv_t: F,
    p: &RowParams,
    cand: &mut Vec<(F, u32)>,
    est: &MassEstimate,
) -> Option<f64> {
    let n = x.len();
    if cand.len() >= n {
        return None;
    }
    let (mw, tw) = (m.wide(), inv_t.wide());
    let c2 = tw as f32 * EST_SCALE;
    // Each block's estimate is against its reference r: rescale to the row's maximum.
    let scale = |r: f32| ((r as f64 - mw) * tw).exp();
    let all: f64 = est.blocks.iter().map(|&(r, s)| s * scale(r)).sum();
    let (mut head, mut head_est, mut head_min) = (0.0, 0.0, F::infinity());
    for c in cand.iter_mut() {
        let v = load(x[c.1 as usize]);
        c.0 = exp_weight::<F, FMA>(v, m, inv_t);
        head += c.0.wide();
        head_min = head_min.min(c.0);
        let r = est.blocks.get(c.1 as usize / BLOCK)?.0;
        head_est += approx_exp(v.wide() as f32, r, c2) as f64 * scale(r);
    }
    // Terms under 2^-126 of their reference count as 0 in the estimate.
    let slack = 1e-5 * all + n as f64 * 1e-36;
    let rest = all - head_est;
    let lo = head + (rest - slack).max(0.0) / (1.0 + EST_REL);
    let hi = head + (rest + slack) / (1.0 - EST_REL);
    let target = p.top_p * hi;
    if head < target || target.is_nan() {
        return None;
    }
    let cut = mass_select(cand, p.top_p * hi);
    // As in `top_p_cut`: a cut on the head's smallest weight may tie with a token outside it.
    if mass_select(cand, p.top_p * lo) != cut || cut.0 <= head_min {
        return None;
    }
    let cut = Cut {
        tau: cut.0,
        tie_max: cut.1,
    };
    let floor = F::of(p.min_p);
    cand.retain(|c| cut.keeps(c.0, c.1, floor));
    cand.sort_unstable_by_key(|c| c.1);
    Some(cand.iter().map(|c| c.0.wide()).sum())
}

#[inline(always)]
fn process_row<T: Elem, const FMA: bool>(
    req: &BatchRequest<'_, T>,
    i: usize,
    s: &mut Scratch<T::C>,
    probs: Option<&mut [T::C]>,
) -> Result<RowResult, SamplingError> {
    type F<T> = <T as Elem>::C;
    let x = req.rows[i];
    let v = x.len();
    let p = &req.params[if req.params.len() == 1 { 0 } else { i }];
    let sparse_k = p.temperature > 0.0 && p.top_k > 0 && p.top_k <= v / SPARSE_TOP_K_DIVISOR;
    let head_ready = !sparse_k && p.top_p < 1.0 && p.temperature > 0.0;
    // An unmodified f32/f64 row is read where it lies: a copy would be one more pass through
    // memory for nothing. An unmodified bf16 row whose first pass is a top-k scan is scanned
    // as bf16 (half the bytes); the dense path widens it afterwards, from cache.
    let modifies = modifies_row(req, i, p);
    let direct = if modifies { None } else { T::as_compute(x) };
    #[cfg(target_arch = "x86_64")]
    let raw_bf16 = match (sparse_k || head_ready) && !modifies {
        true => crate::simd::avx512_bf16(x),
        false => None,
    };
    #[cfg(not(target_arch = "x86_64"))]
    let raw_bf16: Option<&[u16]> = None;
    // Greedy on an unmodified bf16 row reads the raw row too (widened as it is read).
    let greedy_raw = p.temperature == 0.0 && !modifies && direct.is_none() && T::WIDENS_IN_PLACE;
    if direct.is_none() && raw_bf16.is_none() && !greedy_raw {
        T::load_row(x, &mut s.y);
    }
    // NaN in the input stays NaN through bias and penalties, so one check after them suffices.
    modify_row(req, i, p, v, s)?;
    let y: &[F<T>] = direct.unwrap_or(&s.y);

    let u = || match req.seeds {
        Seeds::Shared(seed) => uniform(seed, i as u64, req.step),
        Seeds::PerRow(seeds) => uniform(seeds[i], 0, req.step),
    };
    let t = F::<T>::of(p.temperature);
    let inv_t = F::<T>::one() / t;

    let (id, logprob, top) = if sparse_k {
        // Streaming top-k: everything after the selection touches only the candidates.
        if first_scan(y, raw_bf16, p.top_k, &mut s.pairs, &mut s.sel, None).0 {
            return Err(SamplingError::NanInRow { row: i });
        }
        let m = s
            .pairs
            .iter()
            .fold(F::<T>::neg_infinity(), |a, c| a.max(c.0));
        if m == F::<T>::neg_infinity() {
            return Err(SamplingError::AllMasked { row: i });
        }
        let indicator = m == F::<T>::infinity() || !inv_t.is_finite();
        for c in s.pairs.iter_mut() {
            c.0 = if indicator {
                if c.0 == m {
                    F::<T>::one()
                } else {
                    F::<T>::zero()
                }
            } else {
                ((c.0 - m) * inv_t).exp_nonpos()
            };
        }
        s.pairs.sort_unstable_by(by_prob);
        if p.top_p < 1.0 {
            let target = p.top_p * s.pairs.iter().map(|c| c.0.wide()).sum::<f64>();
            let mut acc = 0.0;
            let mut cut = s.pairs.len();
            for (n, c) in s.pairs.iter().enumerate() {
                acc += c.0.wide();
                if acc >= target {
                    cut = n + 1;
                    break;
                }
            }
            s.pairs.truncate(cut);
        }
        if p.min_p > 0.0 {
            // The first pair is the most probable (weight 1, or the shared +inf weight).
            let floor = p.min_p * s.pairs[0].0.wide();
            s.pairs.retain(|c| c.0.wide() >= floor);
        }
        let total: f64 = s.pairs.iter().map(|c| c.0.wide()).sum();
        let id = draw_sparse(&s.pairs, total, u()) as usize;
        if let Some(out) = probs {
            out.fill(F::<T>::zero());
            let inv = 1.0 / total;
            for c in &s.pairs {
                out[c.1 as usize] = F::<T>::of(c.0.wide() * inv);
            }
        }
        let w_id = s
            .pairs
            .iter()
            .find(|c| c.1 as usize == id)
            .map_or(0.0, |c| c.0.wide());
        let top = top_logprobs(&mut s.pairs, total, req.top_n);
        (id, (w_id / total).ln(), top)
    } else {
        // With top-p on, the first read of the row also finds its heaviest tokens (the memory
        // read costs the same), so the nucleus cut need not scan the weights for them.
        let mut estimated = false;
        let (m, nan) = if head_ready {
            // The mass estimate only pays where a decided nucleus saves the exp pass: top-p
            // without a (dense) top-k, whose floor the estimate would not see.
            let no_k = p.top_k == 0 || p.top_k >= v;
            // (A temperature so small that the estimate's scale leaves f32 gets no estimate.)
            let it = inv_t.wide() as f32;
            let scaled = (it * EST_SCALE).is_finite();
            let est =
                (no_k && scaled && probs.is_none() && req.top_n == 0).then_some((it, &mut s.est));
            let (nan, filled) = first_scan(y, raw_bf16, HEAD.min(v), &mut s.pairs, &mut s.sel, est);
            estimated = filled;
            let m = s
                .pairs
                .iter()
                .fold(F::<T>::neg_infinity(), |a, c| a.max(c.0));
            (m, nan)
        } else if greedy_raw {
            max_nan_by(x, T::load)
        } else {
            max_nan(y)
        };
        let dense_k = p.top_k > 0 && p.top_k < v;
        let indicator = m == F::<T>::infinity() || !inv_t.is_finite();
        // A bf16 row scanned raw is widened inside the exp pass; only the rare paths below
        // that read the row otherwise get a widened copy.
        let widen = raw_bf16.is_some() && (dense_k || indicator);
        if widen {
            T::load_row(x, &mut s.wide);
        }
        let y: &[F<T>] = if widen { &s.wide } else { y };
        if nan {
            return Err(SamplingError::NanInRow { row: i });
        }
        if m == F::<T>::neg_infinity() {
            return Err(SamplingError::AllMasked { row: i });
        }
        // Most top-p rows are peaked: their nucleus is decided from the head and the mass
        // estimate of the first read, and the exact exp pass over the row is skipped.
        let peaked = if estimated && !indicator && !dense_k {
            if raw_bf16.is_some() && !widen {
                peaked_nucleus::<_, _, FMA>(x, T::load, m, inv_t, p, &mut s.pairs, &s.est)
            } else {
                peaked_nucleus::<_, _, FMA>(y, |v| v, m, inv_t, p, &mut s.pairs, &s.est)
            }
        } else {
            None
        };
        if let Some(total) = peaked {
            let id = draw_sparse(&s.pairs, total, u());
            let w_id = s
                .pairs
                .iter()
                .find(|c| c.1 == id)
                .map_or(0.0, |c| c.0.wide());
            (id as usize, (w_id / total).ln(), Vec::new())
        } else if p.temperature == 0.0 {
            let id = if greedy_raw {
                first_index_of_by(x, T::load, m)
            } else {
                first_index_of(y, m)
            };
            if let Some(out) = probs {
                out.fill(F::<T>::zero());
                out[id] = F::<T>::one();
            }
            let mut top = Vec::new();
            if req.top_n > 0 {
                top.push((id as i64, 0.0));
                top.resize(req.top_n, (-1, f64::NEG_INFINITY));
            }
            (id, 0.0, top)
        } else {
            let mut total = if indicator {
                // +inf logits share the mass; a temperature too small for the compute type
                // leaves the argmax set, the limit of the softmax as T -> 0.
                indicator_weights(y, m, &mut s.w, &mut s.blocks)
            } else if raw_bf16.is_some() && !widen {
                let floor = F::<T>::neg_infinity();
                exp_weights_elem::<T, FMA>(x, m, inv_t, floor, &mut s.w, &mut s.blocks)
            } else {
                let floor = if dense_k {
                    kth_largest(y, p.top_k, &mut s.sel)
                } else {
                    F::<T>::neg_infinity()
                };
                exp_weights::<_, FMA>(y, m, inv_t, floor, &mut s.w, &mut s.blocks)
            };
            // The largest weight is exactly 1 (the maximum's own exp(0)).
            let floor = F::<T>::of(p.min_p);
            let mut nucleus_in_head = false;
            let mut in_region = false;
            // A cut the row was not rewritten for (the draw applies it itself).
            let mut kept = None;
            if p.top_p < 1.0 || p.min_p > 0.0 {
                let cut = if p.top_p < 1.0 {
                    let (cut, nucleus) = top_p_cut(
                        &s.w,
                        total,
                        p.top_p,
                        head_ready,
                        &mut s.pairs,
                        &mut s.sel,
                        &mut s.keys,
                        &mut s.blocks,
                    );
                    // Unless the filtered row itself is wanted (probs, top log-probs).
                    nucleus_in_head = nucleus == Nucleus::Head && probs.is_none() && req.top_n == 0;
                    in_region = nucleus == Nucleus::Region;
                    cut
                } else {
                    Cut {
                        tau: F::<T>::zero(),
                        tie_max: u32::MAX,
                    }
                };
                if nucleus_in_head {
                    // A peaked row: the nucleus is among the few heaviest tokens, so the draw
                    // runs on them (in id order, as the dense draw would) and the row is not
                    // touched again.
                    s.pairs.retain(|c| cut.keeps(c.0, c.1, floor));
                    s.pairs.sort_unstable_by_key(|c| c.1);
                    total = s.pairs.iter().map(|c| c.0.wide()).sum();
                } else if probs.is_some() || req.top_n > 0 {
                    total = apply_cut(&mut s.w, cut, floor, &mut s.blocks);
                } else {
                    kept = Some(cut);
                    // The cut's region already gave the block sums, unless a min-p floor
                    // removes more.
                    total = if in_region && p.min_p == 0.0 {
                        region_block_sums(&mut s.blocks, &s.pairs, cut)
                    } else {
                        cut_block_sums(&s.w, cut, floor, &mut s.blocks)
                    };
                }
            }
            let id = if nucleus_in_head {
                draw_sparse(&s.pairs, total, u()) as usize
            } else if let Some(cut) = kept {
                draw_dense_by(&s.w, &s.blocks, total, u(), |x, j| cut.keeps(x, j, floor))
            } else {
                draw_dense(&s.w, &s.blocks, total, u())
            };
            if let Some(out) = probs {
                let inv = 1.0 / total;
                for (o, &wj) in out.iter_mut().zip(&s.w) {
                    *o = F::<T>::of(wj.wide() * inv);
                }
            }
            let top = if req.top_n > 0 {
                top_k_candidates(&s.w, req.top_n.min(v), &mut s.pairs, &mut s.sel);
                top_logprobs(&mut s.pairs, total, req.top_n)
            } else {
                Vec::new()
            };
            (id, (s.w[id].wide() / total).ln(), top)
        }
    };

    let raw_logprob = if req.want_raw_logprob {
        raw_log_softmax_at::<_, FMA>(x, id, &mut s.sel)
    } else {
        f64::NAN
    };
    Ok(RowResult {
        id: id as i64,
        logprob,
        raw_logprob,
        top,
    })
}

/// # Safety
/// The CPU must support AVX-512 F/BW/VL, AVX2 and FMA (checked by `simd_level`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn process_row_avx512<T: Elem>(
    req: &BatchRequest<'_, T>,
    i: usize,
    s: &mut Scratch<T::C>,
    probs: Option<&mut [T::C]>,
) -> Result<RowResult, SamplingError> {
    process_row::<T, true>(req, i, s, probs)
}

/// # Safety
/// The CPU must support AVX2 and FMA (checked by `simd_level`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn process_row_avx2<T: Elem>(
    req: &BatchRequest<'_, T>,
    i: usize,
    s: &mut Scratch<T::C>,
    probs: Option<&mut [T::C]>,
) -> Result<RowResult, SamplingError> {
    process_row::<T, true>(req, i, s, probs)
}

/// One row, compiled for the widest SIMD the CPU has: the same generic code, specialised
/// three times, picked at run time so one wheel serves every x86-64 machine.
fn process_row_dispatch<T: Elem>(
    req: &BatchRequest<'_, T>,
    i: usize,
    s: &mut Scratch<T::C>,
    probs: Option<&mut [T::C]>,
) -> Result<RowResult, SamplingError> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: each variant is called only when simd_level() found its features.
        match simd_level() {
            Simd::Avx512 => return unsafe { process_row_avx512(req, i, s, probs) },
            Simd::Avx2 => return unsafe { process_row_avx2(req, i, s, probs) },
            Simd::Baseline => {}
        }
    }
    process_row::<T, false>(req, i, s, probs)
}

fn check_shapes<T>(
    req: &BatchRequest<'_, T>,
    probs_len: Option<usize>,
) -> Result<usize, SamplingError> {
    let b = req.rows.len();
    let v = req.rows.first().map_or(0, |r| r.len());
    if b > 0 && v == 0 {
        return Err(SamplingError::Shape(
            "logits have a vocabulary of size 0".into(),
        ));
    }
    if req.rows.iter().any(|r| r.len() != v) {
        return Err(SamplingError::Shape("logit rows differ in length".into()));
    }
    if req.params.len() != 1 && req.params.len() != b {
        return Err(SamplingError::Shape(format!(
            "{} parameter rows for a batch of {b}",
            req.params.len()
        )));
    }
    let rows_of = |r: &IdRows<'_>| r.ids.len().checked_div(r.width).unwrap_or(0);
    if let Some(h) = &req.history {
        if h.width > 0
            && (h.ids.len() % h.width != 0 || (rows_of(h) != b && !(rows_of(h) == 1 && b == 1)))
        {
            return Err(SamplingError::Shape(format!(
                "history has {} rows for a batch of {b}",
                rows_of(h)
            )));
        }
    }
    if let Some(bi) = &req.bias_ids {
        if bi.width > 0
            && (bi.ids.len() % bi.width != 0
                || (rows_of(bi) != b && rows_of(bi) != 1)
                || req.bias_values.len() != bi.ids.len())
        {
            return Err(SamplingError::Shape(format!(
                "logit_bias has {} rows for a batch of {b}",
                rows_of(bi)
            )));
        }
    }
    if req.top_n > v.max(TOP_N_SLACK) {
        return Err(SamplingError::Shape(format!(
            "top_logprobs = {} exceeds both the vocabulary size {v} and {TOP_N_SLACK}",
            req.top_n
        )));
    }
    if let Seeds::PerRow(s) = req.seeds {
        if s.len() != b {
            return Err(SamplingError::Shape(format!(
                "{} seeds for a batch of {b}",
                s.len()
            )));
        }
    }
    if let Some(n) = probs_len {
        if n != b * v {
            return Err(SamplingError::Shape(format!(
                "probs buffer has {n} elements, expected {}",
                b * v
            )));
        }
    }
    Ok(v)
}

/// Below this many logits in a batch, threads cost more than they save. Measured with
/// `benches/parallel_threshold.py` on the 2-core VM: handing rows to the pool and waking its
/// workers costs ~50-150 µs per call, so 2 threads only win from about a million logits
/// (e.g. B = 8 at V = 128k); at 65,536 they were 2-5x slower than one.
pub const PARALLEL_MIN_ELEMENTS: usize = 1 << 20;

/// [`PARALLEL_MIN_ELEMENTS`], or `TOKENSAMPLER_PARALLEL_MIN` when set (read once): the knob
/// `benches/parallel_threshold.py` turns to measure where the threshold belongs.
fn parallel_min_elements() -> usize {
    use std::sync::OnceLock;
    static MIN: OnceLock<usize> = OnceLock::new();
    *MIN.get_or_init(|| {
        std::env::var("TOKENSAMPLER_PARALLEL_MIN")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(PARALLEL_MIN_ELEMENTS)
    })
}

static POOL: RwLock<Option<Arc<rayon::ThreadPool>>> = RwLock::new(None);

/// Sets the number of worker threads for batched calls (0 restores rayon's default, one per
/// core).
pub fn set_num_threads(n: usize) -> Result<(), SamplingError> {
    let pool = if n == 0 {
        None
    } else {
        Some(Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(|i| format!("tokensampler-{i}"))
                .build()
                .map_err(|e| SamplingError::ThreadPool(format!("cannot start {n} threads: {e}")))?,
        ))
    };
    match POOL.write() {
        Ok(mut g) => *g = pool,
        Err(poisoned) => *poisoned.into_inner() = pool,
    }
    Ok(())
}

/// The number of worker threads batched calls use.
pub fn num_threads() -> usize {
    current_pool().map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
}

fn current_pool() -> Option<Arc<rayon::ThreadPool>> {
    match POOL.read() {
        Ok(g) => g.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Panics on a worker of the sampling pool: lets the bindings test that a worker's panic
/// reaches the caller as an error, not an abort.
pub fn debug_panic_on_worker() {
    let work = || {
        (0..2).into_par_iter().for_each(|i| {
            if i == 1 {
                panic!("deliberate panic on a worker thread");
            }
        })
    };
    match current_pool() {
        Some(pool) => pool.install(work),
        None => work(),
    }
}

/// Runs the pipeline on every row. `probs`, when given, receives the final distribution of
/// each row (B × V, row-major). Errors name the lowest failing row.
pub fn run_batch<T: Elem>(
    req: &BatchRequest<'_, T>,
    probs: Option<&mut [T::C]>,
) -> Result<Vec<RowResult>, SamplingError> {
    let v = check_shapes(req, probs.as_ref().map(|p| p.len()))?;
    let b = req.rows.len();
    let outs: Vec<Option<&mut [T::C]>> = match probs {
        Some(p) if v > 0 => p.chunks_mut(v).map(Some).collect(),
        _ => (0..b).map(|_| None).collect(),
    };
    let results: Vec<Result<RowResult, SamplingError>> =
        if b >= 2 && b * v >= parallel_min_elements() {
            let work = || {
                outs.into_par_iter()
                    .enumerate()
                    .map(|(i, out)| with_scratch(|s| process_row_dispatch(req, i, s, out)))
                    .collect()
            };
            match current_pool() {
                Some(pool) => pool.install(work),
                None => work(),
            }
        } else {
            with_scratch(|s| {
                outs.into_iter()
                    .enumerate()
                    .map(|(i, out)| process_row_dispatch(req, i, s, out))
                    .collect()
            })
        };
    results.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::{PARAMS, PARAM_NAMES};

    fn req<'a, T>(rows: &'a [&'a [T]], params: &'a [RowParams]) -> BatchRequest<'a, T> {
        BatchRequest {
            rows,
            params,
            history: None,
            bias_ids: None,
            bias_values: &[],
            seeds: Seeds::Shared(7),
            step: 0,
            want_raw_logprob: false,
            top_n: 0,
        }
    }

    fn params(temperature: f64, top_k: usize, top_p: f64, min_p: f64) -> RowParams {
        RowParams {
            temperature,
            top_k,
            top_p,
            min_p,
            ..Default::default()
        }
    }

    /// Top-p rows without top-k: the nucleus decided from the first read's mass estimate
    /// (top_n = 0) gives the ids and log-probabilities of the exact path (top_n = 1 forces
    /// it), for f32 and bf16 rows, peaked and flat, with plateaus, -inf and min-p; lengths
    /// off every block and vector boundary.
    #[test]
    fn estimated_nucleus_equals_the_exact_one() {
        let mut rnd = crate::test_util::uniforms(0x9e37_79b9_7f4a_7c15u64);
        for case in 0..96 {
            let n = [130_003, 50_257, 4_099][case % 3];
            let kind = case / 3 % 6;
            let row: Vec<f32> = (0..n)
                .map(|_| {
                    let g = ((0..4).map(|_| rnd()).sum::<f64>() - 2.0) * 3.0;
                    let v = match kind {
                        0 => {
                            g + if rnd() < 2e-4 {
                                14.0 + 10.0 * rnd()
                            } else {
                                0.0
                            }
                        }
                        1 => g,
                        2 => (g + if rnd() < 1e-3 { 12.0 } else { 0.0 }).round(),
                        // Heads holding about p of the mass: the cut is sensitive to the
                        // rest of the row, which only the estimate sees.
                        3 => g + if rnd() < 1e-3 { 9.0 + 5.0 * rnd() } else { 0.0 },
                        4 => 0.5 * g + if rnd() < 3e-4 { 9.0 + 3.0 * rnd() } else { 0.0 },
                        _ => {
                            if rnd() < 0.2 {
                                f64::NEG_INFINITY
                            } else {
                                g + if rnd() < 1e-4 { 20.0 } else { 0.0 }
                            }
                        }
                    };
                    v as f32
                })
                .collect();
            let bf: Vec<half::bf16> = row.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let t = [0.3, 1.0, 2.5, 1e-3][case / 6 % 4];
            let top_p = [0.5, 0.9, 0.99][case / 2 % 3];
            let min_p = if case % 5 == 0 { 0.05 } else { 0.0 };
            // Now and then a dense top-k, whose floor the estimate must not be used with.
            let k = if case % 7 == 0 { n / 2 } else { 0 };
            let ps = [params(t, k, top_p, min_p)];
            for step in 0..4 {
                let (rows32, rows16) = ([&row[..]], [&bf[..]]);
                let mut fast32 = req(&rows32, &ps);
                let mut fast16 = req(&rows16, &ps);
                fast32.step = step;
                fast16.step = step;
                let (mut exact32, mut exact16) = (fast32, fast16);
                exact32.top_n = 1;
                exact16.top_n = 1;
                for (a, b) in [
                    (run_batch(&fast32, None), run_batch(&exact32, None)),
                    (run_batch(&fast16, None), run_batch(&exact16, None)),
                ] {
                    let (a, b) = (&a.unwrap()[0], &b.unwrap()[0]);
                    assert_eq!(a.id, b.id, "case {case} kind {kind} step {step}");
                    let d = (a.logprob - b.logprob).abs();
                    assert!(
                        d <= 1e-9,
                        "case {case} kind {kind}: {} {}",
                        a.logprob,
                        b.logprob
                    );
                }
            }
        }
    }

    /// The estimate's bound where it matters: a head of 1 + 40 x 0.1 and a rest of equal small
    /// weights whose total sweeps the target across the head's cut boundaries in steps finer
    /// than the estimate's error. The estimated path must keep what the exact path keeps
    /// (the log-probability shows the kept mass) or decline.
    #[test]
    fn estimated_nucleus_near_cut_boundaries() {
        let n = 20_011usize;
        for s in 0..3000 {
            let rest = 0.05 + 0.45 * s as f64 / 3000.0; // total weight of the n - 41 others
            let eps = rest / (n - 41) as f64;
            let row: Vec<f32> = (0..n)
                .map(|j| match j {
                    0 => 10.0,
                    1..=40 => (10.0 + 0.1f64.ln()) as f32,
                    // Distinct, or the head would take in every tie of the rest.
                    _ => (10.0 + eps.ln() + 0.02 * ((j % 97) as f64 / 97.0 - 0.5)) as f32,
                })
                .collect();
            let ps = [params(1.0, 0, 0.9, 0.0)];
            let rows = [&row[..]];
            let fast = req(&rows, &ps);
            let mut exact = fast;
            exact.top_n = 1;
            let (a, b) = (
                run_batch(&fast, None).unwrap(),
                run_batch(&exact, None).unwrap(),
            );
            assert_eq!(a[0].id, b[0].id, "rest {rest}");
            assert!((a[0].logprob - b[0].logprob).abs() <= 1e-9, "rest {rest}");
        }
    }

    /// The AVX-512 first scan's mass estimate is, block by block, the sum of `approx_exp`
    /// against the reference it records, including blocks redone after a jump of the maximum
    /// and a leading run of -inf.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn first_scan_estimate_sums_approx_exp_per_block() {
        let n = 5 * BLOCK + 37;
        let row: Vec<f32> = (0..n)
            .map(|j| match j {
                0..=20 => f32::NEG_INFINITY,
                _ if j == 3 * BLOCK + 5 => 200.0, // far above everything before
                _ => ((j * 7919 % 1000) as f32 / 100.0) - 5.0,
            })
            .collect();
        for inv_t in [0.5f32, 1.0, 3.0] {
            let (mut cand, mut sel, mut est) = (Vec::new(), Vec::new(), MassEstimate::default());
            let (_, filled) = first_scan(
                &row,
                None,
                HEAD,
                &mut cand,
                &mut sel,
                Some((inv_t, &mut est)),
            );
            if !filled {
                return; // no AVX-512 here: nothing to check
            }
            assert_eq!(est.blocks.len(), n.div_ceil(BLOCK));
            let c2 = inv_t * EST_SCALE;
            for (b, &(r, got)) in est.blocks.iter().enumerate() {
                let want: f64 = row[b * BLOCK..((b + 1) * BLOCK).min(n)]
                    .iter()
                    .map(|&x| approx_exp(x, r, c2) as f64)
                    .sum();
                assert!(
                    (got - want).abs() <= 1e-5 * want,
                    "inv_t {inv_t} block {b}: {got} {want}"
                );
            }
        }
    }

    #[test]
    fn k_scaling_worked_example() {
        // docs/design.md section 2: probabilities [0.2651, 0.3213, 0.1737, 0.2399].
        let x = [0.8f64, 0.9, 0.1, 0.4];
        let rows = [&x[..]];
        let p = [RowParams {
            frequency_scale: 1.1,
            presence_scale: 1.2,
            ..Default::default()
        }];
        let hist = [0i64, 1, 0, 2, 0, 0];
        let mut r = req(&rows, &p);
        r.history = Some(IdRows {
            ids: &hist,
            width: 6,
        });
        let mut probs = vec![0.0f64; 4];
        run_batch(&r, Some(&mut probs)).unwrap();
        for (g, w) in probs.iter().zip([0.2651, 0.3213, 0.1737, 0.2399]) {
            assert!((g - w).abs() < 1e-4, "{probs:?}");
        }
    }

    #[test]
    fn greedy_is_argmax_of_penalised_logits() {
        let x = [1.0f32, 5.0, 5.0, 2.0];
        let rows = [&x[..]];
        let p = [params(0.0, 0, 1.0, 0.0)];
        let mut probs = vec![0.0f32; 4];
        let out = run_batch(&req(&rows, &p), Some(&mut probs)).unwrap();
        assert_eq!(out[0].id, 1);
        assert_eq!(probs, vec![0.0, 1.0, 0.0, 0.0]);
    }

    #[test]
    fn top_n_beyond_vocabulary_and_slack_is_an_error_not_an_allocation() {
        let x = [1.0f32, 2.0, 3.0];
        let rows = [&x[..]];
        let p = [params(1.0, 0, 1.0, 0.0)];
        let mut r = req(&rows, &p);
        r.top_n = TOP_N_SLACK; // past V = 3, within the slack: padded, fine
        let out = run_batch(&r, None).unwrap();
        assert_eq!(out[0].top.len(), TOP_N_SLACK);
        assert_eq!(out[0].top[3], (-1, f64::NEG_INFINITY));
        for n in [TOP_N_SLACK + 1, 1 << 62, usize::MAX] {
            r.top_n = n;
            assert!(
                matches!(run_batch(&r, None), Err(SamplingError::Shape(_))),
                "{n}"
            );
        }
    }

    #[test]
    fn errors_name_the_row() {
        let a = [1.0f32, 2.0];
        let b = [f32::NAN, 2.0];
        let c = [f32::NEG_INFINITY, f32::NEG_INFINITY];
        let p = [params(1.0, 0, 1.0, 0.0)];
        let rows = [&a[..], &b[..]];
        assert_eq!(
            run_batch(&req(&rows, &p), None).unwrap_err(),
            SamplingError::NanInRow { row: 1 }
        );
        let rows = [&a[..], &a[..], &c[..]];
        assert_eq!(
            run_batch(&req(&rows, &p), None).unwrap_err(),
            SamplingError::AllMasked { row: 2 }
        );
        for (name, bad) in [
            ("temperature", -1.0),
            ("top_k", 0.5),
            ("top_p", 0.0),
            ("min_p", 1.0),
            ("repetition_penalty", 0.0),
            ("frequency_penalty", f64::NAN),
            ("frequency_scale", 0.9),
        ] {
            let mut vals = PARAMS.map(|p| p.default);
            vals[PARAM_NAMES.iter().position(|&n| n == name).unwrap()] = bad;
            match RowParams::from_values(&vals, 3) {
                Err(SamplingError::InvalidParameter {
                    name: n, row: 3, ..
                }) => assert_eq!(n, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[test]
    fn bans_and_bias() {
        let x = [3.0f64, 1.0, 0.0];
        let rows = [&x[..]];
        let p = [params(0.0, 0, 1.0, 0.0)];
        let ids = [0i64, 2];
        let vals = [f64::NEG_INFINITY, 10.0];
        let mut r = req(&rows, &p);
        r.bias_ids = Some(IdRows {
            ids: &ids,
            width: 2,
        });
        r.bias_values = &vals;
        assert_eq!(run_batch(&r, None).unwrap()[0].id, 2);
    }

    #[test]
    fn same_seed_same_ids_any_thread_count_and_position() {
        let v = 5000;
        let rows_data: Vec<Vec<f32>> = (0..16)
            .map(|r| {
                (0..v)
                    .map(|j| ((j * 7919 + r * 104_729) % 1000) as f32 / 300.0)
                    .collect()
            })
            .collect();
        let rows: Vec<&[f32]> = rows_data.iter().map(|r| &r[..]).collect();
        let p = [params(1.0, 0, 1.0, 0.0)];
        let seeds: Vec<u64> = (0..16).map(|i| 1000 + i).collect();
        let mut r = req(&rows, &p);
        r.seeds = Seeds::PerRow(&seeds);
        set_num_threads(1).unwrap();
        let one = run_batch(&r, None).unwrap();
        set_num_threads(2).unwrap();
        let two = run_batch(&r, None).unwrap();
        set_num_threads(0).unwrap();
        let ids = |r: &[RowResult]| r.iter().map(|x| (x.id, x.logprob)).collect::<Vec<_>>();
        assert_eq!(ids(&one), ids(&two));
        let single_rows = [rows[5]];
        let single_seed = [seeds[5]];
        let mut r1 = req(&single_rows, &p);
        r1.seeds = Seeds::PerRow(&single_seed);
        assert_eq!(ids(&run_batch(&r1, None).unwrap()), ids(&one[5..6]));
    }
}
