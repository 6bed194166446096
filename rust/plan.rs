//! The per-row pipeline of docs/design.md sections 2 and 9.
//!
//! Bias and bans → penalties → the stages in the call's order (by default temperature
//! (T = 0 is greedy) → top-k → top-p → min-p → ...) → renormalise and draw. The fast plans
//! compute temperature, top-k, top-p and min-p in that order without writing the row; any
//! other stage or order runs [`Plan::Ordered`] (the stages of `stages.rs`, one by one).

use crate::batch::{BatchRequest, RowResult, Seeds};
use crate::bitmask::{self, Gathered};
use crate::draw::{draw_dense, draw_dense_by, draw_sparse};
use crate::dry::{self, Breakers};
use crate::elem::{Elem, Real};
use crate::error::SamplingError;
use crate::filter::{
    apply_cut, by_prob, cut_block_sums, each_position_where, kth_largest, mass_select,
    region_block_sums, sorted_nucleus, top_k_candidates, top_p_cut, Cut, Nucleus, HEAD,
};
use crate::ngram::{add_bias, no_repeat_ngram, sequence_bias};
use crate::params::RowParams;
use crate::patch::{Logits, Patch, PatchBuf};
use crate::penalty::{apply_additive, apply_scaling, count_ids, valid_history, window};
use crate::scratch::Scratch;
#[cfg(target_arch = "x86_64")]
use crate::simd::{simd_level, Simd};
use crate::softmax::{
    approx_exp, exp_weight, exp_weights, exp_weights_elem, first_index_of, first_index_of_by,
    indicator_weights, max_nan, max_nan_by, raw_top_logprobs, sum_wide, top_logprobs, MassEstimate,
    RawLogSoftmax, BLOCK, EST_REL, EST_SCALE,
};
use crate::stages::{self, Stage, HF_ORDER};
use num_traits::{Float, One, Zero};

/// Top-k runs on the streaming path (candidates only) while `k` is at most this share of V;
/// above it, a selection on a copy and the dense path are cheaper.
const SPARSE_TOP_K_DIVISOR: usize = 8;

/// A sparse top-k row modified in at most this many ids is read in place with a patch; beyond,
/// widening the top-k scan by the patch costs more than loading the row (a repetition
/// penalty over 256 distinct ids made pipeline (c) 40% slower read in place).
const MAX_PATCH: usize = 32;

/// Whether bias, bans, penalties or another history stage change row `i` (otherwise it can
/// be read in place).
fn modifies_row<T>(req: &BatchRequest<'_, T>, i: usize, p: &RowParams) -> bool {
    req.bias_ids
        .is_some_and(|b| b.row(i).iter().any(|&id| id >= 0))
        || req.sequence_bias.is_some_and(|sb| sb.any(i))
        || req.bad_words.is_some_and(|bw| bw.any(i))
        || (req.history.is_some() && p.reads_history())
}

/// Applies bias, bans, penalties and DRY to row `i` (of length `v`) through `y` (the loaded
/// row, or a [`Patch`] over the stored one), in the order of docs/design.md section 9: logit
/// bias, sequence bias and bad words, no-repeat n-grams, repetition and frequency/presence
/// penalties, DRY. Returns whether the history counts for k-scaling are in `s.counts` (the
/// caller applies it: it shifts the whole row). When [`modifies_row`] is false it only
/// validates the ids.
#[inline(always)]
fn modify_row<T: Elem>(
    req: &BatchRequest<'_, T>,
    i: usize,
    p: &RowParams,
    v: usize,
    y: &mut (impl Logits<T::C> + ?Sized),
    s: &mut Scratch<T::C>,
) -> Result<bool, SamplingError> {
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
            let mut e = y.get(id as usize);
            add_bias(&mut e, req.bias_values[start + n]);
            y.set(id as usize, e);
        }
    }
    // Bad ids are an error even when no stage reads them, so a bug in the caller's
    // bookkeeping surfaces on the first call, not when a penalty is switched on.
    s.seq.clear();
    if let Some(h) = req.history {
        valid_history(h.row(i), v, i, &mut s.seq)?;
    }
    if let Some(sb) = req.sequence_bias {
        sequence_bias(y, &s.seq, sb.row(i));
    }
    if let Some(bw) = req.bad_words {
        let ban = f64::NEG_INFINITY;
        sequence_bias(y, &s.seq, bw.row(i).map(|(seq, _)| (seq, ban)));
    }
    if req.history.is_none() || !p.reads_history() {
        return Ok(false);
    }
    no_repeat_ngram(y, &s.seq, p.no_repeat_ngram_size);
    let counted = p.penalties_on();
    if counted {
        count_ids(window(&s.seq, p.penalty_last_n), &mut s.hist, &mut s.counts);
        apply_additive(y, &s.counts, &p.penalties());
    }
    let dry = p.dry();
    if dry.is_on() {
        let r = if req.dry_index.len() == 1 { 0 } else { i };
        let none = Breakers::default();
        let breakers = req.dry_index.get(r).unwrap_or(&none);
        dry::apply(y, &s.seq, breakers, &dry, &mut s.dry);
    }
    Ok(counted)
}

/// [`modify_row`] on the loaded row `s.y`, k-scaling included.
#[inline(always)]
fn modify_loaded<T: Elem>(
    req: &BatchRequest<'_, T>,
    i: usize,
    p: &RowParams,
    v: usize,
    s: &mut Scratch<T::C>,
) -> Result<(), SamplingError> {
    let mut y = std::mem::take(&mut s.y);
    let counted = modify_row(req, i, p, v, &mut y[..], s);
    if let Ok(true) = counted {
        apply_scaling(&mut y, &s.counts, &p.penalties());
    }
    s.y = y;
    counted.map(|_| ())
}

/// The streaming top-k of a row: on the row as stored (`x`) when `stored`, else on `y`
/// (under the token bitmask row `mask` when given). Returns (NaN seen, `est` filled): `est`
/// (the inverse temperature and where to put the row's [`MassEstimate`]) is only filled by
/// the AVX-512 scans, in the same read.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn first_scan<T: Elem>(
    y: &[T::C],
    x: &[T],
    stored: bool,
    mask: Option<&[u32]>,
    k: usize,
    cand: &mut Vec<(T::C, u32)>,
    sel: &mut Vec<T::C>,
    est: Option<(f32, &mut MassEstimate)>,
) -> (bool, bool) {
    if let Some(words) = mask {
        (T::C::top_k_scan_masked(y, words, k, cand, sel), false)
    } else if stored {
        T::top_k_scan_stored(x, k, cand, sel, est)
    } else {
        T::C::top_k_scan(y, k, cand, sel, est)
    }
}

/// At most this many tokens are collected as a row's min-p set by [`collect_min_p_set`]: a
/// larger set is left to the exact path (its sort by id would cost more than that path).
const MIN_P_SET_MAX: usize = 1024;

/// Appends to `cand` every token of `x` whose weight `exp((x - m) inv_t)` can reach the min-p
/// floor `min_p`, with its exact weight (the exp pass's), and says whether that set was
/// complete (at most [`MIN_P_SET_MAX`] tokens, a floor the weights can represent). The
/// threshold on the logits sits 1e-3 (plus 1e-4 relative) below the floor's in the exponent,
/// far more than the exp's and the scaled difference's rounding, and is rounded down, so no
/// token the exact path keeps is missed; the caller filters the weights by the floor itself.
#[inline(always)]
fn collect_min_p_set<Y: Copy, F: Real, const FMA: bool>(
    x: &[Y],
    load: &impl Fn(Y) -> F,
    m: F,
    inv_t: F,
    min_p: f64,
    cand: &mut Vec<(F, u32)>,
) -> bool {
    if min_p < 1e-30 {
        return false; // near the weights' underflow
    }
    let arg = min_p.ln() * (1.0 + 1e-4) - 1e-3;
    let exact = m.wide() + arg / inv_t.wide();
    let mut thr = F::of(exact);
    if !thr.is_finite() {
        return false;
    }
    if thr.wide() > exact {
        // The next value down (`key` is the bit pattern: a negative value's grows downwards).
        thr = if thr > F::zero() {
            F::from_key(thr.key() - 1)
        } else if thr < F::zero() {
            F::from_key(thr.key() + 1)
        } else {
            -F::min_positive_value()
        };
    }
    let weight = |v: Y| exp_weight::<F, FMA>(load(v), m, inv_t);
    push_at_least(x, load, thr, MIN_P_SET_MAX, weight, cand)
}

/// Appends `(value(x_j), j)` to `pairs` for every `j` with `load(x_j) >= thr`, in id order,
/// and says whether they were at most `max` (beyond it nothing more is appended): the one
/// compare pass that lists the tokens above a floor.
#[inline(always)]
fn push_at_least<Y: Copy, F: Real>(
    x: &[Y],
    load: impl Fn(Y) -> F,
    thr: F,
    max: usize,
    value: impl Fn(Y) -> F,
    pairs: &mut Vec<(F, u32)>,
) -> bool {
    let start = pairs.len();
    let mut over = false;
    each_position_where(
        x,
        |v| load(v) >= thr,
        |j| {
            if pairs.len() - start < max {
                pairs.push((value(x[j]), j as u32));
            } else {
                over = true;
            }
        },
    );
    !over
}

/// The nucleus of a peaked row (top-p without top-k) decided without the exact exp pass.
///
/// `cand` holds on entry the ids of the head, every token whose logit is at least the
/// [`HEAD`]-th largest; `est` the row's [`MassEstimate`] from the same first read. The head's
/// exact weights (the exp pass's, bit for bit) and the estimate bound the row's total mass:
/// each estimated term is within `EST_REL` of its weight, the lane sums within 1e-5. When the
/// head holds `top_p` of even the largest possible total and the cut among the head is the
/// same at both ends of the bound, that is the cut the exact total gives (the cut only moves
/// with the target). With min-p after top-p the row is also decided when the tokens at or
/// above min-p's floor hold less than top_p of even the smallest possible total: min-p alone
/// keeps them (a flat row's case; [`collect_min_p_set`] finds them when the head is too
/// short). Then `cand` is left holding the kept pairs in id order and their mass is
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
    let floor = F::of(p.min_p);
    if p.min_p > 0.0 {
        // Min-p after top-p keeps the nucleus's tokens at or above the floor. When those
        // tokens hold less than top_p of even the smallest possible total, the nucleus
        // extends past them all and min-p alone decides: the common case for a flat row,
        // whose nucleus is thousands of tokens and its min-p set a few. The min-p set is in
        // the head when a head token is under the floor; otherwise it is collected after the
        // head by one compare pass over the row.
        let n_head = cand.len();
        if head_min >= floor && !collect_min_p_set::<_, _, FMA>(x, &load, m, inv_t, p.min_p, cand) {
            cand.truncate(n_head);
        } else {
            let from = if cand.len() > n_head { n_head } else { 0 };
            let kept: f64 = cand[from..]
                .iter()
                .filter(|c| c.0 >= floor)
                .map(|c| c.0.wide())
                .sum();
            // The margin covers the exact path's different summation order.
            if kept < p.top_p * lo * (1.0 - 1e-9) {
                cand.drain(..from);
                cand.retain(|c| c.0 >= floor);
                cand.sort_unstable_by_key(|c| c.1);
                return Some(cand.iter().map(|c| c.0.wide()).sum());
            }
            cand.truncate(n_head);
        }
    }
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
    cand.retain(|c| cut.keeps(c.0, c.1, floor));
    cand.sort_unstable_by_key(|c| c.1);
    Some(cand.iter().map(|c| c.0.wide()).sum())
}

/// How a row is computed: chosen once per row from its parameters, before the row is read.
/// Each plan has one function below; all of them share the stage functions after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Plan {
    /// `temperature = 0`: the first index of the largest logit, in one read of the row.
    Greedy,
    /// `0 < top_k <= V / 8`: a streaming top-k scan keeps the candidates, and every later
    /// stage (softmax, top-p, min-p, draw) runs on them alone, in the order `order` says.
    SparseTopK {
        /// The candidates' stage order (vLLM's and llama.cpp's are cheap here).
        order: FastOrder,
    },
    /// Top-p without a sparse top-k: the first read of the row also finds its [`HEAD`]
    /// heaviest tokens, where the nucleus cut looks first. With `estimate`, that read also
    /// estimates the row's mass, so a peaked row's nucleus is decided from the head without
    /// the exp pass ([`peaked_nucleus`]); when the bound cannot decide (or the CPU has no
    /// AVX-512, which the estimate needs), the dense stages run.
    Nucleus {
        /// No dense top-k and no distribution asked for: the estimate may decide the cut.
        estimate: bool,
    },
    /// Everything else: a max pass, the exp pass (under a dense top-k's floor), min-p, draw.
    Dense,
    /// Temperature + top-p (+ min-p) in vLLM's or llama.cpp's order without a sparse top-k:
    /// decided from the [`HEAD`] largest logits when provable ([`head_nucleus`], one read of
    /// a peaked row), else [`Plan::Ordered`].
    HeadNucleus {
        /// The order of temperature, top-p and min-p.
        order: FastOrder,
    },
    /// Temperature with logit floors (top-nσ, min-p) and then XTC, nothing else: the floors
    /// keep few tokens on a real row, so they are listed (from the head, or by one compare
    /// pass when they reach past it) and XTC and the draw run on the list ([`listed`]): no
    /// row copy, no exp pass. More than [`LIST_MAX`] kept tokens leave the row to
    /// [`Plan::Ordered`].
    Listed,
    /// Temperature and then typical-p, nothing else, no keep floor: typical-p's passes and
    /// the draw on the row as it lies ([`typical_last`]: no row copy); a row whose largest
    /// logit typical-p cuts goes to [`Plan::Ordered`].
    TypicalLast,
    /// A stage the fast plans lack (typical-p, top-nσ, XTC, ...), a `min_tokens_to_keep`
    /// floor, or an order they do not follow: each stage in the call's order on the whole
    /// row ([`ordered`]), then the dense draw.
    Ordered,
}

impl Plan {
    /// Whether the first read is a top-k scan, which can read an unmodified row as stored
    /// ([`Elem::scans_as_stored`]).
    #[inline(always)]
    fn scans_first(self) -> bool {
        matches!(self, Plan::SparseTopK { .. } | Plan::Nucleus { .. })
    }
}

/// How temperature, top-p and min-p are ordered for a row the fast plans can compute (top-k
/// commutes with temperature and min-p, so only its place before top-p matters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct FastOrder {
    /// Min-p before top-p (vLLM): top-p's mass is that of the tokens min-p kept.
    pub(crate) min_p_first: bool,
    /// Temperature after top-p and min-p (llama.cpp): they see the temperature-1
    /// distribution, and the kept tokens are drawn at the temperature.
    pub(crate) temperature_last: bool,
}

/// How the fast plans compute row `p` under `order`, or `None` if they cannot: they know
/// temperature, top-k, top-p and min-p (no `min_tokens_to_keep` floor), with temperature
/// before or after both filters and min-p before or after top-p.
#[inline(always)]
fn fast_order(p: &RowParams, order: &[Stage]) -> Option<FastOrder> {
    let new_stage = p.dynatemp_range > 0.0
        || p.mirostat > 0
        || [
            Stage::TopNSigma,
            Stage::TypicalP,
            Stage::EpsilonCutoff,
            Stage::EtaCutoff,
            Stage::Xtc,
        ]
        .iter()
        .any(|s| s.is_on(p));
    let filters = p.top_k > 0 || p.top_p < 1.0 || p.min_p > 0.0;
    if new_stage || (p.min_tokens_to_keep > 1 && filters) {
        return None;
    }
    if order == HF_ORDER {
        return Some(FastOrder::default()); // the common call: no positions to compare
    }
    // Every stage that is on has a place (checked per call); an off stage needs none.
    let at = |s: Stage| order.iter().position(|&o| o == s);
    let on = |s: Stage| s.is_on(p);
    let before = |a: Stage, b: Stage| !(on(a) && on(b)) || at(a) < at(b);
    if !before(Stage::TopK, Stage::TopP) {
        return None;
    }
    let t_first =
        before(Stage::Temperature, Stage::TopP) && before(Stage::Temperature, Stage::MinP);
    let t_last = before(Stage::TopP, Stage::Temperature) && before(Stage::MinP, Stage::Temperature);
    if !(t_first || t_last) {
        return None;
    }
    Some(FastOrder {
        min_p_first: !before(Stage::TopP, Stage::MinP),
        temperature_last: !t_first,
    })
}

/// Whether the row's stages are a plain temperature, logit floors (top-nσ, min-p; one at
/// least) and XTC after them, with no keep floor ([`Plan::Listed`]).
#[inline(always)]
fn listable(p: &RowParams, order: &[Stage]) -> bool {
    let others = [
        Stage::TopK,
        Stage::TopP,
        Stage::TypicalP,
        Stage::EpsilonCutoff,
        Stage::EtaCutoff,
    ];
    let floors = [Stage::TopNSigma, Stage::MinP];
    let at = |s: Stage| order.iter().position(|&o| o == s);
    let xtc_last = !Stage::Xtc.is_on(p)
        || floors
            .iter()
            .all(|&f| !f.is_on(p) || at(f) < at(Stage::Xtc));
    p.temperature > 0.0
        && p.dynatemp_range <= 0.0
        && p.mirostat == 0
        && p.min_tokens_to_keep <= 1
        && floors.iter().any(|f| f.is_on(p))
        && !others.iter().any(|s| s.is_on(p))
        && xtc_last
}

/// Whether the row's stages are typical-p, after the temperature if any, and nothing else,
/// with no keep floor ([`Plan::TypicalLast`]).
#[inline(always)]
fn typical_last_only(p: &RowParams, order: &[Stage]) -> bool {
    let at = |s: Stage| order.iter().position(|&o| o == s);
    let others = Stage::ALL
        .iter()
        .any(|&s| s != Stage::Temperature && s != Stage::TypicalP && s.is_on(p));
    p.temperature > 0.0
        && p.dynatemp_range <= 0.0
        && p.mirostat == 0
        && p.min_tokens_to_keep <= 1
        && Stage::TypicalP.is_on(p)
        && !others
        && (!Stage::Temperature.is_on(p) || at(Stage::Temperature) < at(Stage::TypicalP))
}

/// The plan of a row of `v` logits computed in `F` under the stage `order`. `wants_dist`:
/// the caller asked for the final distribution (`probs` or top log-probabilities), which the
/// estimate cannot give.
#[inline(always)]
pub(crate) fn plan<F: Real>(p: &RowParams, v: usize, wants_dist: bool, order: &[Stage]) -> Plan {
    if p.temperature == 0.0 {
        return Plan::Greedy;
    }
    if listable(p, order) {
        return Plan::Listed;
    }
    if typical_last_only(p, order) {
        return Plan::TypicalLast;
    }
    let Some(fast) = fast_order(p, order) else {
        return Plan::Ordered;
    };
    if p.temperature > 0.0 && p.top_k > 0 && p.top_k <= v / SPARSE_TOP_K_DIVISOR {
        return Plan::SparseTopK { order: fast };
    }
    // The dense plans follow Hugging Face's order only.
    if fast != FastOrder::default() {
        let no_k = p.top_k == 0 || p.top_k >= v;
        return if p.temperature > 0.0 && p.top_p < 1.0 && no_k {
            Plan::HeadNucleus { order: fast }
        } else {
            Plan::Ordered
        };
    }
    if p.temperature > 0.0 && p.top_p < 1.0 {
        // The estimate only pays where a decided nucleus saves the exp pass: top-p without a
        // (dense) top-k, whose floor the estimate would not see.
        let no_k = p.top_k == 0 || p.top_k >= v;
        // A temperature so small that the estimate's scale leaves f32 gets no estimate.
        let it = (F::one() / F::of(p.temperature)).wide() as f32;
        let scaled = (it * EST_SCALE).is_finite();
        return Plan::Nucleus {
            estimate: no_k && scaled && !wants_dist,
        };
    }
    Plan::Dense
}

/// What a plan returns: the id, its log-probability, the top log-probabilities.
type Drawn = (usize, f64, Vec<(i64, f64)>);

/// One row as the plans see it.
struct Row<'r, T> {
    /// Its index in the batch.
    i: usize,
    p: &'r RowParams,
    /// The row as given.
    x: &'r [T],
    /// An unmodified row read as stored by its first scan and exp pass (bfloat16 with
    /// AVX-512: half the bytes, no conversion pass).
    stored: bool,
    /// An unmodified bfloat16 row read in place by the greedy plan (widened as it is read).
    greedy_raw: bool,
    /// How many top log-probabilities to report.
    top_n: usize,
    /// The row's mirostat state (NaN without one).
    mu: f64,
    /// A token bitmask row the sparse top-k plan's scan reads with the logits (only for an
    /// otherwise unmodified row that plan takes: see `scans_mask`).
    mask: Option<&'r [u32]>,
}

#[inline(always)]
fn process_row<T: Elem, const FMA: bool>(
    req: &BatchRequest<'_, T>,
    i: usize,
    s: &mut Scratch<T::C>,
    probs: Option<&mut [T::C]>,
    mask: Option<&[u32]>,
) -> Result<RowResult, SamplingError> {
    let x = req.rows[i];
    let v = x.len();
    // Processed log-probabilities of given ids are read from the final distribution.
    let mut dist = std::mem::take(&mut s.dist);
    let want_dist = req.token_ids.is_some() && !req.raw_mode;
    let mut probs = match probs {
        None if want_dist => {
            dist.clear();
            dist.resize(v, T::C::zero());
            Some(&mut dist[..])
        }
        probs => probs,
    };
    // A match, not `Result::map`: a closure is compiled outside this function's target
    // features, and the FMA exp inside it became a libm call per element (25x slower).
    let out = match draw_row::<T, FMA>(req, i, s, probs.as_deref_mut(), mask) {
        Ok((id, logprob, top)) => {
            let mut out = row_outputs::<T, FMA>(req, i, s, probs.as_deref(), id, logprob, top);
            let p = &req.params[if req.params.len() == 1 { 0 } else { i }];
            if p.mirostat > 0 {
                // llama.cpp's update: mu moves against the error of the chosen token's
                // surprise (in bits, under the final distribution) from the target tau.
                let mu = req.mirostat_mu.map_or(f64::NAN, |mu| mu[i]);
                let surprise = -logprob / std::f64::consts::LN_2;
                out.mirostat_mu = mu - p.mirostat_eta * (surprise - p.mirostat_tau);
            }
            Ok(out)
        }
        Err(e) => Err(e),
    };
    s.dist = dist;
    out
}

/// The outputs of row `i` beyond its id, for the id drawn from the final distribution
/// `probs` (when it was computed): the raw log-probability, the rank, and under
/// `logprobs_mode="raw"` the log-probabilities of the raw softmax.
#[inline(always)]
fn row_outputs<T: Elem, const FMA: bool>(
    req: &BatchRequest<'_, T>,
    i: usize,
    s: &mut Scratch<T::C>,
    probs: Option<&[T::C]>,
    id: usize,
    logprob: f64,
    top: Vec<(i64, f64)>,
) -> RowResult {
    let ids = req.token_ids.map(|t| t.row(i));
    let mut out = RowResult {
        id: id as i64,
        logprob,
        raw_logprob: f64::NAN,
        top,
        rank: 0,
        token_logprobs: Vec::new(),
        valid: true,
        mirostat_mu: f64::NAN,
    };
    let raw_out = req.raw_mode && (req.top_n > 0 || ids.is_some());
    if req.want_raw_logprob || req.want_rank || req.raw_mode {
        let raw = RawLogSoftmax::of::<T, FMA>(req.rows[i], &mut s.wide);
        let xid = s.wide[id];
        out.raw_logprob = raw.at(xid);
        if req.want_rank {
            out.rank = 1 + s.wide.iter().filter(|&&v| v > xid).count() as i64;
        }
        if req.raw_mode {
            out.logprob = out.raw_logprob;
        }
        if raw_out {
            if req.top_n > 0 {
                out.top = raw_top_logprobs(&s.wide, &raw, req.top_n, &mut s.pairs, &mut s.sel);
            }
            if let Some(ids) = ids {
                out.token_logprobs = ids.iter().map(|&j| raw.at(s.wide[j as usize])).collect();
            }
        }
        if !req.want_raw_logprob {
            out.raw_logprob = f64::NAN;
        }
    }
    if let (Some(ids), Some(dist), false) = (ids, probs, req.raw_mode) {
        out.token_logprobs = ids.iter().map(|&j| dist[j as usize].wide().ln()).collect();
    }
    out
}

/// Row `i` through its plan: the id, its log-probability under the final distribution, the
/// top log-probabilities, and the distribution into `probs` when given.
#[inline(always)]
fn draw_row<T: Elem, const FMA: bool>(
    req: &BatchRequest<'_, T>,
    i: usize,
    s: &mut Scratch<T::C>,
    probs: Option<&mut [T::C]>,
    mask: Option<&[u32]>,
) -> Result<Drawn, SamplingError> {
    let x = req.rows[i];
    let v = x.len();
    let p = &req.params[if req.params.len() == 1 { 0 } else { i }];
    let plan = plan::<T::C>(p, v, probs.is_some() || req.top_n > 0, req.order);
    // An unmodified f32/f64 row is read where it lies: a copy would be one more pass through
    // memory for nothing. An unmodified bf16 row whose first pass is a top-k scan is scanned
    // as bf16 (half the bytes); the dense path widens it afterwards, from cache. The ordered
    // plan rewrites its row, so it always works on the loaded copy.
    // A sparse top-k row that bias, bans, penalties or DRY change (not k-scaling, which
    // shifts the whole row) is still read where it lies: those stages write a patch of the
    // ids they touch, which the top-k scan merges (`merge_patch`). A larger patch (a
    // repetition penalty over a long history) would widen the scan more than loading the
    // row costs: then the row is loaded and the patch written into it.
    // A row with a token bitmask here has it banned in its loaded copy, unless its scan
    // reads the mask (`mask`, on a row nothing else modifies: `scans_mask`); gathered rows
    // arrive as a request of their own, without one.
    let banned = req.token_bitmask.filter(|_| mask.is_none());
    let modifies = banned.is_some() || modifies_row(req, i, p);
    let in_place = matches!(plan, Plan::SparseTopK { .. })
        && banned.is_none()
        && !p.penalties().scales_active()
        && (T::as_compute(x).is_some() || T::scans_as_stored());
    let mut patch = std::mem::take(&mut s.patch);
    patch.reset(v);
    if modifies && in_place {
        let mut row = Patch { x, buf: &mut patch };
        if let Err(e) = modify_row(req, i, p, v, &mut row, s) {
            s.patch = patch;
            return Err(e);
        }
    }
    let patched = modifies && in_place && patch.len() <= MAX_PATCH;
    let direct = if (modifies && !patched) || plan == Plan::Ordered {
        None
    } else {
        T::as_compute(x)
    };
    let stored = plan.scans_first() && (!modifies || patched) && T::scans_as_stored();
    // Greedy on an unmodified bf16 row reads the raw row too (widened as it is read).
    let greedy_raw = plan == Plan::Greedy && !modifies && direct.is_none() && T::WIDENS_IN_PLACE;
    if direct.is_none() && !stored && !greedy_raw {
        T::load_row(x, &mut s.y);
    }
    // NaN in the input stays NaN through bias and penalties, so one check after them suffices.
    if modifies && in_place && !patched {
        for (&j, &value) in patch.ids.iter().zip(&patch.vals) {
            s.y[j as usize] = value;
        }
    } else if !patched {
        if let Some(m) = banned {
            // The mask first, with the bans (docs/design.md section 11).
            bitmask::ban_disallowed(&mut s.y[..v], m.row(i));
        }
        if let Err(e) = modify_loaded(req, i, p, v, s) {
            s.patch = patch;
            return Err(e);
        }
    }
    let patch_ref = if patched { Some(&patch) } else { None };

    // The row's two uniforms of this step: the draw's, and a gambling stage's coin (XTC).
    let stream = || req.seeds.uniforms(i, req.step);
    let u = || stream().0;
    let row = Row {
        i,
        p,
        x,
        stored,
        greedy_raw,
        top_n: req.top_n,
        mu: req.mirostat_mu.map_or(f64::NAN, |mu| mu[i]),
        mask,
    };
    // The loaded row leaves the scratch while the plan borrows the rest (a move, no copy).
    let mut loaded = std::mem::take(&mut s.y);
    let mut probs = probs;
    let drawn = match (plan, direct) {
        (Plan::Ordered, _) => ordered::<T, FMA>(&row, &mut loaded, req.order, s, probs, stream),
        (Plan::HeadNucleus { .. } | Plan::Listed | Plan::TypicalLast, direct) => {
            let y = direct.unwrap_or(&loaded);
            let head = match plan {
                Plan::HeadNucleus { order } => {
                    head_nucleus::<T, FMA>(&row, y, order, s, probs.as_deref_mut(), &stream)
                }
                Plan::TypicalLast => {
                    typical_last::<T, FMA>(&row, y, s, probs.as_deref_mut(), &stream)
                }
                _ => listed::<T, FMA>(&row, y, req.order, s, probs.as_deref_mut(), &stream),
            };
            match head {
                Ok(Some(drawn)) => Ok(drawn),
                Ok(None) => {
                    if direct.is_some() {
                        T::load_row(x, &mut loaded); // the stages rewrite their row
                    }
                    ordered::<T, FMA>(&row, &mut loaded, req.order, s, probs, stream)
                }
                Err(e) => Err(e),
            }
        }
        (plan, direct) => {
            let y = direct.unwrap_or(&loaded);
            match plan {
                Plan::Greedy => greedy(&row, y, probs),
                Plan::SparseTopK { order } => sparse_top_k(&row, y, patch_ref, order, s, probs, u),
                _ => dense::<T, FMA>(&row, y, plan, s, probs, u),
            }
        }
    };
    s.y = loaded;
    s.patch = patch;
    drawn
}

// ==== the plans ==============================================================================

/// [`Plan::Greedy`].
#[inline(always)]
fn greedy<T: Elem>(
    row: &Row<'_, T>,
    y: &[T::C],
    probs: Option<&mut [T::C]>,
) -> Result<Drawn, SamplingError> {
    let (m, nan) = if row.greedy_raw {
        max_nan_by(row.x, T::load)
    } else {
        max_nan(y)
    };
    check_max(row.i, nan, m)?;
    let id = if row.greedy_raw {
        first_index_of_by(row.x, T::load, m)
    } else {
        first_index_of(y, m)
    };
    if let Some(out) = probs {
        out.fill(T::C::zero());
        out[id] = T::C::one();
    }
    let mut top = Vec::new();
    if row.top_n > 0 {
        top.push((id as i64, 0.0));
        top.resize(row.top_n, (-1, f64::NEG_INFINITY));
    }
    Ok((id, 0.0, top))
}

/// [`Plan::SparseTopK`]: everything after the selection touches only the candidates.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn sparse_top_k<T: Elem>(
    row: &Row<'_, T>,
    y: &[T::C],
    patch: Option<&PatchBuf<T::C>>,
    order: FastOrder,
    s: &mut Scratch<T::C>,
    probs: Option<&mut [T::C]>,
    u: impl Fn() -> f64,
) -> Result<Drawn, SamplingError> {
    let p = row.p;
    let extra = patch.map_or(0, |m| m.len());
    let nan = first_scan(
        y,
        row.x,
        row.stored,
        row.mask,
        (p.top_k + extra).min(row.x.len()),
        &mut s.pairs,
        &mut s.sel,
        None,
    )
    .0;
    if let Some(patch) = patch {
        merge_patch(&mut s.pairs, patch, p.top_k, &mut s.sel);
    }
    let m = s.pairs.iter().fold(T::C::neg_infinity(), |a, c| a.max(c.0));
    check_max(row.i, nan, m)?;
    let inv_t = inverse_temperature::<T::C>(p);
    let filter_t = if order.temperature_last {
        T::C::one()
    } else {
        inv_t
    };
    candidate_weights(&mut s.pairs, m, filter_t);
    s.pairs.sort_unstable_by(by_prob);
    if p.min_p > 0.0 && order.min_p_first {
        sorted_min_p(&mut s.pairs, p.min_p);
    }
    if p.top_p < 1.0 {
        sorted_nucleus(&mut s.pairs, p.top_p);
    }
    if p.min_p > 0.0 && !order.min_p_first {
        sorted_min_p(&mut s.pairs, p.min_p);
    }
    if order.temperature_last && p.temperature != 1.0 {
        // The kept candidates at the temperature, from their logits.
        for c in s.pairs.iter_mut() {
            let j = c.1 as usize;
            c.0 = match patch.and_then(|m| m.get(j)) {
                Some(v) => v,
                None if row.stored => T::load(row.x[j]),
                None => y[j],
            };
        }
        candidate_weights(&mut s.pairs, m, inv_t);
    }
    let total: f64 = s.pairs.iter().map(|c| c.0.wide()).sum();
    Ok(draw_from_pairs(&mut s.pairs, total, u(), probs, row.top_n))
}

/// Merges the patch of a modified row into the candidates of its unmodified top-(k + P)
/// scan (P patched ids), leaving the patched row's top k, ties at the boundary kept. Exact:
/// an unpatched id at or above the patched row's k-th value has at most k - 1 ids above it
/// there, so at most k - 1 + P in the stored row, and the scan kept it.
#[inline(always)]
fn merge_patch<F: Real>(cand: &mut Vec<(F, u32)>, patch: &PatchBuf<F>, k: usize, sel: &mut Vec<F>) {
    cand.retain(|c| patch.get(c.1 as usize).is_none());
    // Banned ids cannot be among the top k; NaN was already reported by the scan.
    for (&j, &v) in patch.ids.iter().zip(&patch.vals) {
        if v > F::neg_infinity() {
            cand.push((v, j));
        }
    }
    if cand.len() > k {
        sel.clear();
        sel.extend(cand.iter().map(|c| c.0));
        let desc = |a: &F, b: &F| b.partial_cmp(a).unwrap_or(std::cmp::Ordering::Equal);
        let kth = *sel.select_nth_unstable_by(k - 1, desc).1;
        cand.retain(|c| c.0 >= kth);
    }
}

/// [`Plan::Nucleus`] and [`Plan::Dense`]: the weights of the whole row, cut by top-p and
/// min-p, and drawn from; a peaked nucleus decided from the first read's estimate skips all
/// of that.
#[inline(always)]
fn dense<T: Elem, const FMA: bool>(
    row: &Row<'_, T>,
    y: &[T::C],
    plan: Plan,
    s: &mut Scratch<T::C>,
    probs: Option<&mut [T::C]>,
    u: impl Fn() -> f64,
) -> Result<Drawn, SamplingError> {
    type F<T> = <T as Elem>::C;
    let (p, x, v) = (row.p, row.x, row.x.len());
    let inv_t = inverse_temperature::<F<T>>(p);
    // With top-p on, the first read of the row also finds its heaviest tokens (the memory
    // read costs the same), so the nucleus cut need not scan the weights for them.
    let estimate = match plan {
        Plan::Nucleus { estimate } => Some(estimate),
        _ => None,
    };
    let head_ready = estimate.is_some();
    let mut estimated = false;
    let (m, nan) = if let Some(estimate) = estimate {
        let est = estimate.then_some((inv_t.wide() as f32, &mut s.est));
        let (nan, filled) = first_scan(
            y,
            row.x,
            row.stored,
            None,
            HEAD.min(v),
            &mut s.pairs,
            &mut s.sel,
            est,
        );
        estimated = filled;
        let m = s
            .pairs
            .iter()
            .fold(F::<T>::neg_infinity(), |a, c| a.max(c.0));
        (m, nan)
    } else {
        max_nan(y)
    };
    let dense_k = p.top_k > 0 && p.top_k < v;
    let indicator = m == F::<T>::infinity() || !inv_t.is_finite();
    // A row scanned as stored is widened inside the exp pass; only the rare paths below
    // that read the row otherwise get a widened copy.
    let widen = row.stored && (dense_k || indicator);
    if widen {
        T::load_row(x, &mut s.wide);
    }
    let y: &[F<T>] = if widen { &s.wide } else { y };
    let raw = row.stored && !widen;
    check_max(row.i, nan, m)?;
    // Most top-p rows are peaked: their nucleus is decided from the head and the mass
    // estimate of the first read, and the exact exp pass over the row is skipped.
    if estimated && !indicator && !dense_k {
        let total = if raw {
            peaked_nucleus::<_, _, FMA>(x, T::load, m, inv_t, p, &mut s.pairs, &s.est)
        } else {
            peaked_nucleus::<_, _, FMA>(y, |v| v, m, inv_t, p, &mut s.pairs, &s.est)
        };
        if let Some(total) = total {
            return Ok(draw_from_pairs(&mut s.pairs, total, u(), None, 0));
        }
    }
    let mut total = if indicator {
        // +inf logits share the mass; a temperature too small for the compute type
        // leaves the argmax set, the limit of the softmax as T -> 0.
        indicator_weights(y, m, &mut s.w, &mut s.blocks)
    } else if raw {
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
    let wants_dist = probs.is_some() || row.top_n > 0;
    let kept = if p.top_p < 1.0 || p.min_p > 0.0 {
        let (kept, t) = dense_cut(p, head_ready, wants_dist, total, s);
        total = t;
        kept
    } else {
        Kept::Row
    };
    let id = match kept {
        Kept::Row => draw_dense(&s.w, &s.blocks, total, u()),
        Kept::Pairs => draw_sparse(&s.pairs, total, u()) as usize,
        Kept::Cut(cut, floor) => {
            draw_dense_by(&s.w, &s.blocks, total, u(), |x, j| cut.keeps(x, j, floor))
        }
    };
    Ok(dense_outputs(id, s, total, probs, row.top_n))
}

/// What a dense row returns once `id` is drawn from the weights `s.w` (of total `total`):
/// its log-probability, the distribution when asked for, the top log-probabilities.
#[inline(always)]
fn dense_outputs<F: Real>(
    id: usize,
    s: &mut Scratch<F>,
    total: f64,
    probs: Option<&mut [F]>,
    top_n: usize,
) -> Drawn {
    if let Some(out) = probs {
        let inv = 1.0 / total;
        for (o, &wj) in out.iter_mut().zip(&s.w) {
            *o = F::of(wj.wide() * inv);
        }
    }
    let top = if top_n > 0 {
        top_k_candidates(&s.w, top_n.min(s.w.len()), &mut s.pairs, &mut s.sel);
        top_logprobs(&mut s.pairs, total, top_n)
    } else {
        Vec::new()
    };
    (id, (s.w[id].wide() / total).ln(), top)
}

/// [`Plan::Ordered`]: the stages of `order` one after another on the row `z` (loaded, bias
/// and penalties applied). Most stages only narrow the live set ([`stages::Live`]: a floor
/// and the temperature so far); top-p, typical-p and XTC write `-inf` into `z`. Then one
/// exp pass over what is live, and the dense plan's draw and outputs.
#[inline(always)]
fn ordered<T: Elem, const FMA: bool>(
    row: &Row<'_, T>,
    z: &mut [T::C],
    order: &[Stage],
    s: &mut Scratch<T::C>,
    probs: Option<&mut [T::C]>,
    stream: impl Fn() -> (f64, f64),
) -> Result<Drawn, SamplingError> {
    let p = row.p;
    let (m, nan) = max_nan(z);
    check_max(row.i, nan, m)?;
    let live = &mut stages::Live::new(z, m);
    let keep = p.min_tokens_to_keep.max(1);
    let mut active = order.iter().filter(|s| s.is_on(p)).peekable();
    // The draw and outputs from the final weights in `s.w` (of total `total`).
    let finish = |s: &mut Scratch<T::C>, total: f64, probs: Option<&mut [T::C]>| {
        Ok(draw_final(s, total, probs, row.top_n, stream().0))
    };
    while let Some(&stage) = active.next() {
        // The last stage, with no floor or mirostat after it: a cutoff's or typical-p's final
        // weights come from the pass that finds its cut (`cutoff_weights`, `typical_weights`).
        let last = active.peek().is_none() && keep == 1 && p.mirostat == 0;
        if let Some(c) = stages::Cutoff::of(stage, p) {
            if last {
                let total = stages::cutoff_weights::<_, FMA>(z, live, c, s);
                return finish(s, total, probs);
            }
            stages::cutoff::<_, FMA>(z, live, c, keep, s);
            continue;
        }
        if stage == Stage::TypicalP && last {
            // When it keeps the maximum; otherwise the row is cut like `typical_p` cuts it.
            match stages::typical_weights::<_, FMA>(z, live, p.typical_p, false, s) {
                Ok(kept) => return Ok(draw_typical(kept, z, s, probs, row.top_n, stream().0)),
                Err(cut) => cut.apply(z, live),
            }
            continue;
        }
        match stage {
            Stage::Temperature => stages::temperature::<_, FMA>(z, live, p, s),
            Stage::TopNSigma => stages::top_n_sigma(z, live, p.top_n_sigma, keep, s),
            Stage::TopK => stages::top_k(z, live, p.top_k, keep, s),
            Stage::TopP => stages::top_p::<_, FMA>(z, live, p.top_p, keep, s),
            Stage::MinP => stages::min_p::<_, FMA>(z, live, p.min_p, keep, s),
            Stage::TypicalP => stages::typical_p::<_, FMA>(z, live, p.typical_p, keep, s),
            Stage::EpsilonCutoff | Stage::EtaCutoff => {} // a Cutoff, above
            Stage::Xtc => {
                let coin = stream().1;
                let (prob, threshold) = (p.xtc_probability, p.xtc_threshold);
                stages::xtc::<_, FMA>(z, live, prob, threshold, coin, keep, s)
            }
        }
    }
    if p.mirostat > 0 {
        stages::mirostat::<_, FMA>(z, live, p.mirostat, row.mu, s);
    }
    let total = stages::weights::<_, FMA>(z, live, s);
    finish(s, total, probs)
}

/// The dense draw from the final weights `s.w` (of total `total`, block sums `s.blocks`)
/// and its outputs.
#[inline(always)]
fn draw_final<F: Real>(
    s: &mut Scratch<F>,
    total: f64,
    probs: Option<&mut [F]>,
    top_n: usize,
    u: f64,
) -> Drawn {
    let id = draw_dense(&s.w, &s.blocks, total, u);
    dense_outputs(id, s, total, probs, top_n)
}

/// The draw from typical-p's kept set as the last stage (its weights in `s.w`, the cut ones
/// not zeroed): by key over the block sums, or, for outputs that read the final weights,
/// after zeroing the cut ones ([`draw_final`]).
#[inline(always)]
fn draw_typical<F: Real>(
    kept: stages::TypicalKept<F>,
    z: &[F],
    s: &mut Scratch<F>,
    probs: Option<&mut [F]>,
    top_n: usize,
    u: f64,
) -> Drawn {
    if probs.is_some() || top_n > 0 {
        let total = kept.zero_cut(z, s);
        return draw_final(s, total, probs, top_n, u);
    }
    let (w, total) = (&s.w, kept.total);
    let id = draw_dense_by(w, &s.blocks, total, u, |_, j| kept.keeps(z[j as usize]));
    (id, (w[id].wide() / total).ln(), Vec::new())
}

/// [`Plan::TypicalLast`]: the temperature and then typical-p on the row as it lies (no copy:
/// no stage writes it). `Ok(None)` (an infinite logit, or typical-p cutting the largest
/// logit, which rewrites the row) leaves the row to [`ordered`].
#[inline(always)]
fn typical_last<T: Elem, const FMA: bool>(
    row: &Row<'_, T>,
    y: &[T::C],
    s: &mut Scratch<T::C>,
    probs: Option<&mut [T::C]>,
    stream: &impl Fn() -> (f64, f64),
) -> Result<Option<Drawn>, SamplingError> {
    // The first read also takes the row's HEAD largest logits and the sums of typical-p's
    // mass and entropy (`stages::typical_weights`), which need the inverse temperature before
    // the maximum: one too small for the row's type is left to the ordered plan.
    let t = row.p.temperature;
    let inv_t = T::C::one() / T::C::of(t);
    if t <= 0.0 || !inv_t.is_finite() {
        return Ok(None);
    }
    let (pairs, sel, sums) = (&mut s.pairs, &mut s.sel, &mut s.sums);
    let nan = T::C::typical_scan::<FMA>(y, inv_t, T::C::neg_infinity(), HEAD, pairs, sel, sums);
    let m = s.pairs.iter().fold(T::C::neg_infinity(), |a, q| a.max(q.0));
    check_max(row.i, nan, m)?;
    if m == T::C::infinity() {
        return Ok(None);
    }
    let mut live = stages::Live::finite(m);
    live.scale_by(t);
    match stages::typical_weights::<_, FMA>(y, &live, row.p.typical_p, true, s) {
        Ok(kept) => Ok(Some(draw_typical(kept, y, s, probs, row.top_n, stream().0))),
        Err(_) => Ok(None),
    }
}

/// [`Plan::HeadNucleus`]: temperature + top-p (+ min-p) in vLLM's or llama.cpp's order,
/// computed from the [`HEAD`] largest logits when the kept set provably lies among them, as
/// the sparse plan does; `Ok(None)` leaves the row to [`ordered`]. Under min-p first that
/// holds when a head token is under the min-p floor (every token above it is then in the
/// head, and so is the mass top-p is taken of); under top-p first when the first read's mass
/// estimate decides the nucleus among the head ([`peaked_nucleus`]). The kept tokens are
/// drawn in id order, as the dense draw would.
#[inline(always)]
fn head_nucleus<T: Elem, const FMA: bool>(
    row: &Row<'_, T>,
    y: &[T::C],
    order: FastOrder,
    s: &mut Scratch<T::C>,
    probs: Option<&mut [T::C]>,
    stream: &impl Fn() -> (f64, f64),
) -> Result<Option<Drawn>, SamplingError> {
    type F<T> = <T as Elem>::C;
    let p = row.p;
    let v = y.len();
    let inv_t = inverse_temperature::<F<T>>(p);
    let filter_t = if order.temperature_last {
        F::<T>::one()
    } else {
        inv_t
    };
    let head_max =
        |pairs: &[(F<T>, u32)]| pairs.iter().fold(F::<T>::neg_infinity(), |a, c| a.max(c.0));
    if order.min_p_first && p.min_p > 0.0 {
        let nan = top_k_candidates(y, HEAD.min(v), &mut s.pairs, &mut s.sel);
        let m = head_max(&s.pairs);
        check_max(row.i, nan, m)?;
        if m == F::<T>::infinity() || !filter_t.is_finite() {
            return Ok(None);
        }
        candidate_weights(&mut s.pairs, m, filter_t);
        let head_min = s.pairs.iter().fold(F::<T>::infinity(), |a, c| a.min(c.0));
        // Outside the head every weight is at most the head's smallest.
        if s.pairs.len() < v && head_min.wide() >= p.min_p {
            return Ok(None);
        }
        s.pairs.sort_unstable_by(by_prob);
        sorted_min_p(&mut s.pairs, p.min_p);
        sorted_nucleus(&mut s.pairs, p.top_p);
        finish_head::<T>(row, y, m, inv_t, order, s, probs, stream)
    } else {
        // Top-p first: the first read's mass estimate decides a peaked row's nucleus from
        // the head (as the nucleus plan does); a flat row, or no AVX-512, goes to the stages.
        let scaled = (filter_t.wide() as f32 * EST_SCALE).is_finite();
        let est = Some((filter_t.wide() as f32, &mut s.est));
        let (nan, filled) = first_scan(
            y,
            row.x,
            false,
            None,
            HEAD.min(v),
            &mut s.pairs,
            &mut s.sel,
            est,
        );
        let m = head_max(&s.pairs);
        check_max(row.i, nan, m)?;
        if m == F::<T>::infinity() || !inv_t.is_finite() {
            return Ok(None);
        }
        if filled
            && scaled
            && peaked_nucleus::<_, _, FMA>(y, |v| v, m, filter_t, p, &mut s.pairs, &s.est).is_some()
        {
            return finish_head::<T>(row, y, m, inv_t, order, s, probs, stream);
        }
        // A flat row: the filters on the whole row at the filters' temperature, then the kept
        // tokens' weights at the temperature, written over theirs in the same pass.
        let total = exp_weights::<_, FMA>(
            y,
            m,
            filter_t,
            F::<T>::neg_infinity(),
            &mut s.w,
            &mut s.blocks,
        );
        // `s.pairs` still holds the head's ids from the first read.
        let (cut, nucleus) = top_p_cut(
            &s.w,
            total,
            p.top_p,
            true,
            &mut s.pairs,
            &mut s.sel,
            &mut s.keys,
            &mut s.blocks,
        );
        let floor = F::<T>::of(p.min_p);
        if nucleus == Nucleus::Head && probs.is_none() && row.top_n == 0 {
            // The nucleus is among the head (a flat row's estimate was too loose to say so):
            // the kept pairs are drawn without another pass over the row.
            s.pairs.retain(|c| cut.keeps(c.0, c.1, floor));
            return finish_head::<T>(row, y, m, inv_t, order, s, probs, stream);
        }
        s.blocks.clear();
        let mut total = 0.0;
        for (b, (wb, yb)) in s.w.chunks_mut(BLOCK).zip(y.chunks(BLOCK)).enumerate() {
            for (l, (w, &x)) in wb.iter_mut().zip(yb).enumerate() {
                let j = (b * BLOCK + l) as u32;
                let kept =
                    ((*w > cut.tau) | ((*w == cut.tau) & (j <= cut.tie_max))) & (*w >= floor);
                *w = if kept {
                    exp_weight::<_, FMA>(x, m, inv_t)
                } else {
                    F::<T>::zero()
                };
            }
            let sum = sum_wide(wb);
            s.blocks.push(sum);
            total += sum;
        }
        let id = draw_dense(&s.w, &s.blocks, total, stream().0);
        Ok(Some(dense_outputs(id, s, total, probs, row.top_n)))
    }
}

/// The draw of [`head_nucleus`] from the kept pairs (weights at the filters' temperature):
/// reweighted at the temperature when it comes last, then drawn in id order.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn finish_head<T: Elem>(
    row: &Row<'_, T>,
    y: &[T::C],
    m: T::C,
    inv_t: T::C,
    order: FastOrder,
    s: &mut Scratch<T::C>,
    probs: Option<&mut [T::C]>,
    stream: &impl Fn() -> (f64, f64),
) -> Result<Option<Drawn>, SamplingError> {
    if order.temperature_last && row.p.temperature != 1.0 {
        for c in s.pairs.iter_mut() {
            c.0 = y[c.1 as usize];
        }
        candidate_weights(&mut s.pairs, m, inv_t);
    }
    s.pairs.sort_unstable_by_key(|c| c.1);
    Ok(Some(draw_kept(&mut s.pairs, stream().0, probs, row.top_n)))
}

/// The draw from `pairs`, the kept tokens' weights in id order: their total, then
/// [`draw_from_pairs`] (the dense draw's inverse CDF over the kept tokens only).
#[inline(always)]
fn draw_kept<F: Real>(
    pairs: &mut [(F, u32)],
    u: f64,
    probs: Option<&mut [F]>,
    top_n: usize,
) -> Drawn {
    let total = pairs.iter().map(|c| c.0.wide()).sum();
    draw_from_pairs(pairs, total, u, probs, top_n)
}

/// At most this many kept tokens are drawn from a list by [`listed`].
const LIST_MAX: usize = 16_384;

/// [`Plan::Listed`]: the stages in `order` as the ordered plan runs them, the floors on the
/// row as it is (top-nσ's own σ pass, min-p's logit floor: bit for bit the ordered plan's),
/// then XTC and the draw on the list of the tokens at or above the floor, in id order, with
/// their exact weights, drawn as the dense draw would. `Ok(None)` (an infinite logit or
/// inverse temperature, or more than [`LIST_MAX`] kept tokens) leaves the row to [`ordered`].
#[inline(always)]
fn listed<T: Elem, const FMA: bool>(
    row: &Row<'_, T>,
    y: &[T::C],
    order: &[Stage],
    s: &mut Scratch<T::C>,
    probs: Option<&mut [T::C]>,
    stream: &impl Fn() -> (f64, f64),
) -> Result<Option<Drawn>, SamplingError> {
    type F<T> = <T as Elem>::C;
    let p = row.p;
    let nan = top_k_candidates(y, HEAD.min(y.len()), &mut s.pairs, &mut s.sel);
    let m = s
        .pairs
        .iter()
        .fold(F::<T>::neg_infinity(), |a, c| a.max(c.0));
    check_max(row.i, nan, m)?;
    if m == F::<T>::infinity() {
        return Ok(None);
    }
    let mut live = stages::Live {
        lo: F::<T>::neg_infinity(),
        m,
        scale: F::<T>::one(),
    };
    // `s.pairs` holds the head's logits until the list replaces them.
    let mut list_ready = false;
    for &stage in order.iter().filter(|st| st.is_on(p)) {
        match stage {
            Stage::Temperature => {
                live.scale = live.scale / F::<T>::of(p.temperature);
                if !live.scale.is_finite() {
                    return Ok(None);
                }
            }
            Stage::TopNSigma => stages::top_n_sigma(y, &mut live, p.top_n_sigma, 1, s),
            Stage::MinP => live.lo = live.lo.max(stages::logit_of_ratio(&live, p.min_p)),
            Stage::Xtc => {
                if !list_ready && !list_live(y, live.lo, &mut s.pairs) {
                    return Ok(None);
                }
                list_ready = true;
                let coin = stream().1;
                if coin < p.xtc_probability {
                    xtc_on_list::<F<T>, FMA>(&mut live, p.xtc_threshold, s);
                }
            }
            _ => return Ok(None), // not a listed row (see `listable`)
        }
    }
    if !list_ready && !list_live(y, live.lo, &mut s.pairs) {
        return Ok(None);
    }
    for c in s.pairs.iter_mut() {
        c.0 = exp_weight::<F<T>, FMA>(y[c.1 as usize], live.m, live.scale);
    }
    Ok(Some(draw_kept(&mut s.pairs, stream().0, probs, row.top_n)))
}

/// Turns `pairs`, the head of `y` (its [`HEAD`] largest logits and their ties), into the
/// list of every token at or above the finite floor `lo`, in id order, with its logit: from
/// the head when a head token is under the floor (every token outside is under the head's
/// smallest), else by one compare pass over `y`. False when more than [`LIST_MAX`] pass.
#[inline(always)]
fn list_live<F: Real>(y: &[F], lo: F, pairs: &mut Vec<(F, u32)>) -> bool {
    let head_min = pairs.iter().fold(F::infinity(), |a, c| a.min(c.0));
    if head_min < lo || pairs.len() == y.len() {
        pairs.retain(|c| c.0 >= lo && c.0 > F::neg_infinity());
        pairs.sort_unstable_by_key(|c| c.1);
        return true;
    }
    pairs.clear();
    push_at_least(y, |v| v, lo, LIST_MAX, |v| v, pairs)
}

/// [`stages::xtc`] (keep floor 1) on the list `s.pairs` of the live tokens (logits, in id
/// order): the weights and their total as the exp pass gives them, then the tokens at or
/// above `threshold` of the total, all but the least probable, leave the list.
#[inline(always)]
fn xtc_on_list<F: Real, const FMA: bool>(
    live: &mut stages::Live<F>,
    threshold: f64,
    s: &mut Scratch<F>,
) {
    s.sel.clear();
    s.sel.extend(
        s.pairs
            .iter()
            .map(|c| exp_weight::<F, FMA>(c.0, live.m, live.scale)),
    );
    let total: f64 = s.sel.iter().map(|w| w.wide()).sum();
    let t = threshold * total;
    let above = |w: F| w.wide() >= t;
    let n_above = s.sel.iter().filter(|&&w| above(w)).count();
    if n_above < 2 {
        return;
    }
    let least = s
        .pairs
        .iter()
        .zip(&s.sel)
        .filter(|(_, &w)| above(w))
        .fold(F::infinity(), |a, (c, _)| a.min(c.0));
    let mut w = s.sel.iter();
    s.pairs
        .retain(|c| !(w.next().is_some_and(|&wj| above(wj)) && c.0 > least));
    live.m = least;
}

// ==== the stages the plans share =============================================================

/// `1 / T` in the compute type (infinite for T = 0).
#[inline(always)]
fn inverse_temperature<F: Real>(p: &RowParams) -> F {
    F::one() / F::of(p.temperature)
}

/// The row checks after its first read: NaN anywhere, or nothing left to draw.
#[inline(always)]
fn check_max<F: Real>(i: usize, nan: bool, m: F) -> Result<(), SamplingError> {
    if nan {
        return Err(SamplingError::NanInRow { row: i });
    }
    if m == F::neg_infinity() {
        return Err(SamplingError::AllMasked { row: i });
    }
    Ok(())
}

/// Softmax weights of candidate logits against their maximum `m`: `+inf` logits (or a
/// temperature too small for the compute type) share the mass.
#[inline(always)]
fn candidate_weights<F: Real>(pairs: &mut [(F, u32)], m: F, inv_t: F) {
    let indicator = m == F::infinity() || !inv_t.is_finite();
    for c in pairs.iter_mut() {
        c.0 = if indicator {
            if c.0 == m {
                F::one()
            } else {
                F::zero()
            }
        } else {
            ((c.0 - m) * inv_t).exp_nonpos()
        };
    }
}

/// Min-p on candidates sorted by probability: keeps those at least `min_p` times the first.
#[inline(always)]
fn sorted_min_p<F: Real>(pairs: &mut Vec<(F, u32)>, min_p: f64) {
    // The first pair is the most probable (weight 1, or the shared +inf weight).
    let floor = min_p * pairs[0].0.wide();
    pairs.retain(|c| c.0.wide() >= floor);
}

/// The draw from `(weight, id)` pairs in id order whose weights sum to `total`, with the
/// distribution (when asked for) and the top log-probabilities.
#[inline(always)]
fn draw_from_pairs<F: Real>(
    pairs: &mut [(F, u32)],
    total: f64,
    u: f64,
    probs: Option<&mut [F]>,
    top_n: usize,
) -> Drawn {
    let id = draw_sparse(pairs, total, u) as usize;
    if let Some(out) = probs {
        out.fill(F::zero());
        let inv = 1.0 / total;
        for c in pairs.iter() {
            out[c.1 as usize] = F::of(c.0.wide() * inv);
        }
    }
    let w_id = pairs
        .iter()
        .find(|c| c.1 as usize == id)
        .map_or(0.0, |c| c.0.wide());
    let top = top_logprobs(pairs, total, top_n);
    (id, (w_id / total).ln(), top)
}

/// What a dense row's draw keeps after top-p and min-p.
enum Kept<F> {
    /// The whole weight row `w` (no cut, or `w` rewritten to the kept set).
    Row,
    /// The scratch's pairs: the nucleus found among the head, in id order.
    Pairs,
    /// The tokens the cut keeps above the min-p floor; the row was not rewritten, the block
    /// sums are those of the kept tokens.
    Cut(Cut<F>, F),
}

/// Top-p and min-p on a dense weight row (`s.w`, summing to `total`, its largest weight
/// exactly 1): what the draw keeps, and its mass.
#[inline(always)]
fn dense_cut<F: Real>(
    p: &RowParams,
    head_ready: bool,
    wants_dist: bool,
    total: f64,
    s: &mut Scratch<F>,
) -> (Kept<F>, f64) {
    // The largest weight is exactly 1 (the maximum's own exp(0)).
    let floor = F::of(p.min_p);
    let (cut, nucleus) = if p.top_p < 1.0 {
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
        (cut, Some(nucleus))
    } else {
        let all = Cut {
            tau: F::zero(),
            tie_max: u32::MAX,
        };
        (all, None)
    };
    // Unless the filtered row itself is wanted (probs, top log-probs).
    if nucleus == Some(Nucleus::Head) && !wants_dist {
        // A peaked row: the nucleus is among the few heaviest tokens, so the draw runs on
        // them (in id order, as the dense draw would) and the row is not touched again.
        s.pairs.retain(|c| cut.keeps(c.0, c.1, floor));
        s.pairs.sort_unstable_by_key(|c| c.1);
        let total = s.pairs.iter().map(|c| c.0.wide()).sum();
        (Kept::Pairs, total)
    } else if wants_dist {
        (Kept::Row, apply_cut(&mut s.w, cut, floor, &mut s.blocks))
    } else {
        // The cut's region already gave the block sums, unless a min-p floor removes more.
        let total = if nucleus == Some(Nucleus::Region) && p.min_p == 0.0 {
            region_block_sums(&mut s.blocks, &s.pairs, cut)
        } else {
            cut_block_sums(&s.w, cut, floor, &mut s.blocks)
        };
        (Kept::Cut(cut, floor), total)
    }
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
    mask: Option<&[u32]>,
) -> Result<RowResult, SamplingError> {
    process_row::<T, true>(req, i, s, probs, mask)
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
    mask: Option<&[u32]>,
) -> Result<RowResult, SamplingError> {
    process_row::<T, true>(req, i, s, probs, mask)
}

/// Whether row `i`'s mask may be applied by gathering its allowed ids into a short row: when
/// every output the call asks for lives in those ids (the top log-probabilities too, if there
/// are enough of them: checked after the gather), and no stage reads the vocabulary size
/// (mirostat 1) or shifts the whole row (k-scaling).
fn gathers<T>(req: &BatchRequest<'_, T>, i: usize, probs: bool) -> bool {
    let p = &req.params[if req.params.len() == 1 { 0 } else { i }];
    !probs
        && !req.raw_mode
        && !req.want_rank
        && !req.want_raw_logprob
        && req.token_ids.is_none()
        && p.mirostat != 1
        && !p.penalties().scales_active()
}

/// Whether row `i`'s mask `words` is read by the sparse top-k plan's first scan instead
/// (`Real::top_k_scan_masked`): an `f32` row that nothing else modifies, on that plan, with a
/// kernel for the scan, and with more allowed ids than a gather copies cheaply (V/16) and
/// than k (the scan's candidates must be allowed ids).
fn scans_mask<T: Elem>(req: &BatchRequest<'_, T>, i: usize, words: &[u32]) -> bool {
    let x = req.rows[i];
    let v = x.len();
    let p = &req.params[if req.params.len() == 1 { 0 } else { i }];
    T::as_compute(x).is_some()
        && T::C::scans_masked()
        && !modifies_row(req, i, p)
        && matches!(
            plan::<T::C>(p, v, req.top_n > 0, req.order),
            Plan::SparseTopK { .. }
        )
        && bitmask::allows_more_than(words, v, (v / 16).max(p.top_k + req.top_n))
}

/// Row `i` with its allowed logits gathered in `s.gathered` (ids in `s.gathered_ids`): bias,
/// bans, penalties and DRY write through [`Gathered`], then the short row runs as a batch of
/// one with row `i`'s stream, and its ids are mapped back.
fn gathered_row<T: Elem>(
    req: &BatchRequest<'_, T>,
    i: usize,
    s: &mut Scratch<T::C>,
) -> Result<RowResult, SamplingError> {
    let v = req.rows[i].len();
    let p = &req.params[if req.params.len() == 1 { 0 } else { i }];
    let mut vals = std::mem::take(&mut s.gathered);
    let ids = std::mem::take(&mut s.gathered_ids);
    let mut g = Gathered {
        vals: &mut vals,
        ids: &ids,
    };
    let out = match modify_row(req, i, p, v, &mut g, s) {
        Ok(_) => {
            let (seed, lane) = req.seeds.lane(i);
            let (seeds, lanes) = ([seed], [lane]);
            let rows = [&vals[..]];
            let params = std::slice::from_ref(p);
            let sub = BatchRequest {
                seeds: Seeds::Lanes {
                    seeds: &seeds,
                    lanes: &lanes,
                },
                step: req.step,
                top_n: req.top_n,
                order: req.order,
                mirostat_mu: req.mirostat_mu.map(|mu| &mu[i..i + 1]),
                ..BatchRequest::new(&rows, params)
            };
            process_row_dispatch::<T::C>(&sub, 0, s, None)
        }
        Err(e) => Err(e),
    };
    let out = match out {
        Ok(mut r) => {
            let at = |id: i64| if id >= 0 { ids[id as usize] as i64 } else { id };
            r.id = at(r.id);
            for t in r.top.iter_mut() {
                t.0 = at(t.0);
            }
            Ok(r)
        }
        Err(SamplingError::NanInRow { .. }) => Err(SamplingError::NanInRow { row: i }),
        Err(SamplingError::AllMasked { .. }) => Err(SamplingError::AllMasked { row: i }),
        Err(e) => Err(e),
    };
    s.gathered = vals;
    s.gathered_ids = ids;
    out
}

/// One row, compiled for the widest SIMD the CPU has: the same generic code, specialised
/// three times, picked at run time so one wheel serves every x86-64 machine.
pub(crate) fn process_row_dispatch<T: Elem>(
    req: &BatchRequest<'_, T>,
    i: usize,
    s: &mut Scratch<T::C>,
    probs: Option<&mut [T::C]>,
) -> Result<RowResult, SamplingError> {
    let mut mask = None;
    if let Some(m) = req
        .token_bitmask
        .filter(|_| gathers(req, i, probs.is_some()))
    {
        let words = m.row(i);
        if scans_mask(req, i, words) {
            mask = Some(words);
        } else {
            T::gather_allowed(req.rows[i], words, &mut s.gathered, &mut s.gathered_ids);
            let allowed = s.gathered_ids.len();
            if allowed == 0 {
                return Err(SamplingError::AllMasked { row: i });
            }
            if req.top_n <= allowed {
                return gathered_row(req, i, s);
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: each variant is called only when simd_level() found its features.
        match simd_level() {
            Simd::Avx512 => return unsafe { process_row_avx512(req, i, s, probs, mask) },
            Simd::Avx2 => return unsafe { process_row_avx2(req, i, s, probs, mask) },
            Simd::Baseline => {}
        }
    }
    process_row::<T, false>(req, i, s, probs, mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{run_batch, IdRows};
    use crate::stages::{LLAMA_CPP_ORDER, VLLM_ORDER};
    use crate::test_util::{params, req};

    fn sparse(min_p_first: bool, temperature_last: bool) -> Plan {
        Plan::SparseTopK {
            order: FastOrder {
                min_p_first,
                temperature_last,
            },
        }
    }

    /// The sparse and head-nucleus plans under vLLM's and llama.cpp's orders equal the
    /// ordered plan (forced by a top-nσ that keeps everything): kept set, probabilities, and
    /// for the head the ids drawn without a distribution asked for (the estimate's path);
    /// peaked and flat rows.
    #[test]
    fn sparse_orders_equal_the_ordered_plan() {
        let mut rnd = crate::test_util::uniforms(21);
        for case in 0..60 {
            let v = 4000;
            let peaked = case % 5 < 3;
            let row: Vec<f32> = (0..v)
                .map(|_| {
                    let g = ((0..4).map(|_| rnd()).sum::<f64>() - 2.0) * 4.0;
                    let boost = if peaked && rnd() < 0.005 { 14.0 } else { 0.0 };
                    (g + boost) as f32
                })
                .collect();
            let rows = [&row[..]];
            let t = [0.3, 0.7, 1.6, 3.0][case % 4];
            let k = [5, 40, 400, 0][case % 4];
            let fast = [params(
                t,
                k,
                [0.5, 0.9][case % 2],
                [0.05, 0.3][case % 3 % 2],
            )];
            let slow = [RowParams {
                top_n_sigma: 1e30,
                ..fast[0]
            }];
            for order in [&VLLM_ORDER[..], &LLAMA_CPP_ORDER] {
                assert!(matches!(
                    plan::<f32>(&fast[0], v, true, order),
                    Plan::SparseTopK { .. } | Plan::HeadNucleus { .. }
                ));
                let run = |ps: &[RowParams], step: u64, probs: Option<&mut [f32]>| {
                    let mut r = req(&rows, ps);
                    r.order = order;
                    r.step = step;
                    run_batch(&r, probs).unwrap()[0].id
                };
                let (mut a, mut b) = (vec![0.0f32; v], vec![0.0f32; v]);
                run(&fast, 0, Some(&mut a));
                run(&slow, 0, Some(&mut b));
                for (j, (qa, qb)) in a.iter().zip(&b).enumerate() {
                    assert_eq!(*qa > 0.0, *qb > 0.0, "case {case} {j}: {qa} {qb}");
                    assert!((qa - qb).abs() <= 1e-5 * qa.max(*qb), "case {case} {j}");
                }
                // The head draws in id order, as the stages' dense draw (the sparse plan draws
                // its candidates by probability, as in every order).
                if k == 0 {
                    for step in 0..8 {
                        let (a, b) = (run(&fast, step, None), run(&slow, step, None));
                        assert_eq!(a, b, "case {case} step {step}");
                    }
                }
            }
        }
    }

    /// Top-p then min-p (Hugging Face's and llama.cpp's orders) on rows whose nucleus is
    /// large and whose min-p set is a cluster of 3 to 1,030 tokens, four of them near the
    /// floor: the head plans (min-p decides from the head, or from the set collected by a
    /// compare pass, or the flat route's head cut) give the ids and the kept mass (the
    /// log-probability shows it) of the ordered plan (forced by a top-n-sigma that keeps
    /// everything), for f32 and bf16 rows. The ordered min-p compares logits with the floor's
    /// logit, the head plans weights with the floor: the two round differently within an ulp
    /// of it, so against the ordered plan the four sit 1e-4 and 2e-4 either side of the floor
    /// in the exponent; against the Nucleus plan's exact route (top_n = 1), which compares
    /// weights too, they sit 1 and 2 ulps either side.
    #[test]
    fn min_p_after_top_p_decides_flat_rows_as_the_stages_do() {
        let mut rnd = crate::test_util::uniforms(0x005e_ed0f_f1a7);
        let mut case = 0;
        for (v, cluster) in [(20_011, 3), (20_011, 63), (20_011, 65), (20_011, 300)]
            .into_iter()
            .chain([(20_011, 1_030), (130_003, 90)])
        {
            for (t, min_p, m) in [(0.7, 0.05, 5.0), (1.0, 0.3, 3.0), (1.6, 0.05, 8.0)] {
                for (order, ulps) in [(&HF_ORDER[..], false), (&HF_ORDER, true)]
                    .into_iter()
                    .chain([(&LLAMA_CPP_ORDER[..], false)])
                {
                    case += 1;
                    // The filters see the row at the temperature (HF) or at 1 (llama.cpp).
                    let t_filter = if order == HF_ORDER { t } else { 1.0 };
                    let edge = |off: f64| (m + (f64::ln(min_p) + off) * t_filter) as f32;
                    let mut row: Vec<f32> = (0..v)
                        .map(|_| (((0..4).map(|_| rnd()).sum::<f64>() - 2.0) * 2.0) as f32)
                        .collect();
                    for c in 0..cluster {
                        let j = (rnd() * v as f64) as usize % v;
                        let off = [-2.0, -1.0, 1.0, 2.0][c % 4];
                        row[j] = match c {
                            0 => m as f32,
                            1..=4 if ulps => {
                                f32::from_bits((edge(0.0).to_bits() as i64 + off as i64) as u32)
                            }
                            1..=4 => edge(off * 1e-4),
                            _ => (m + f64::ln(min_p) * t_filter * rnd()) as f32,
                        };
                    }
                    let bf: Vec<half::bf16> =
                        row.iter().map(|&x| half::bf16::from_f32(x)).collect();
                    let fast = [params(t, 0, 0.9, min_p)];
                    let ordered = [RowParams {
                        top_n_sigma: 1e30,
                        ..fast[0]
                    }];
                    assert!(matches!(
                        plan::<f32>(&fast[0], v, false, order),
                        Plan::Nucleus { estimate: true } | Plan::HeadNucleus { .. }
                    ));
                    for step in 0..3 {
                        let run = |top_n: usize, ps: &[RowParams], bf16: bool| {
                            let (r32, r16) = ([&row[..]], [&bf[..]]);
                            let out = if bf16 {
                                let mut r = req(&r16, ps);
                                (r.order, r.step, r.top_n) = (order, step, top_n);
                                run_batch(&r, None)
                            } else {
                                let mut r = req(&r32, ps);
                                (r.order, r.step, r.top_n) = (order, step, top_n);
                                run_batch(&r, None)
                            };
                            let out = &out.unwrap()[0];
                            (out.id, out.logprob)
                        };
                        for bf16 in [false, true] {
                            let a = run(0, &fast, bf16);
                            let b = if ulps {
                                run(1, &fast, bf16)
                            } else {
                                run(0, &ordered, bf16)
                            };
                            assert_eq!(a.0, b.0, "case {case} bf16 {bf16} step {step}");
                            let d = (a.1 - b.1).abs();
                            assert!(d <= 1e-6, "case {case} bf16 {bf16}: {} {}", a.1, b.1);
                        }
                    }
                }
            }
        }
    }

    /// Row `row` (f32, and as bf16) under the params `fast` and `slow` (a plan and the
    /// ordered plan it must equal) at `(order, step, top_n)`: the same ids,
    /// log-probabilities and top log-probabilities (to 1e-9).
    fn same_draws(
        row: &[f32],
        fast: &[RowParams],
        slow: &[RowParams],
        (order, step, top_n): (&[Stage], u64, usize),
        what: &str,
    ) {
        let bf: Vec<half::bf16> = row.iter().map(|&x| half::bf16::from_f32(x)).collect();
        let run = |ps: &[RowParams], bf16: bool| {
            let (r32, r16) = ([row], [&bf[..]]);
            let out = if bf16 {
                let mut r = req(&r16, ps);
                (r.order, r.step, r.top_n) = (order, step, top_n);
                run_batch(&r, None)
            } else {
                let mut r = req(&r32, ps);
                (r.order, r.step, r.top_n) = (order, step, top_n);
                run_batch(&r, None)
            };
            out.unwrap()[0].clone()
        };
        for bf16 in [false, true] {
            let (a, b) = (run(fast, bf16), run(slow, bf16));
            assert_eq!(a.id, b.id, "{what} bf16 {bf16}");
            assert!((a.logprob - b.logprob).abs() <= 1e-9, "{what} bf16 {bf16}");
            assert_eq!(a.top.len(), b.top.len(), "{what}");
            for (x, y) in a.top.iter().zip(&b.top) {
                assert_eq!(x.0, y.0, "{what}: {:?} {:?}", a.top, b.top);
                assert!(x.1 == y.1 || (x.1 - y.1).abs() <= 1e-9, "{what}");
            }
        }
    }

    /// Temperature with top-nσ and / or min-p and XTC drawn from the kept list
    /// ([`Plan::Listed`]) gives the ids, log-probabilities and top log-probabilities of the
    /// ordered plan (forced by an epsilon cutoff of 1e-300, which removes nothing here), in
    /// the three preset orders, for f32 and bf16 rows with -inf and ties; kept sets inside
    /// the head, outside it, and past the list's limit (top-nσ 50: all).
    #[test]
    fn listed_plan_equals_the_ordered_plan() {
        let mut rnd = crate::test_util::uniforms(77);
        for case in 0..48 {
            let v = [4_000, 20_011, 130_003][case % 3];
            let peaked = case % 4 < 2;
            let row: Vec<f32> = (0..v)
                .map(|_| {
                    let g = ((0..4).map(|_| rnd()).sum::<f64>() - 2.0) * 3.0;
                    let x = match () {
                        _ if rnd() < 0.05 => f64::NEG_INFINITY,
                        _ if peaked && rnd() < 1e-3 => g + 12.0 * rnd(),
                        _ => g,
                    };
                    // Ties: the row on a grid.
                    (if case % 3 == 1 {
                        (x * 4.0).round() / 4.0
                    } else {
                        x
                    }) as f32
                })
                .collect();
            let t = [0.3, 1.0, 2.5][case / 16 % 3];
            let base = params(t, 0, 1.0, 0.0);
            let fast = [match case / 3 % 6 {
                0 => RowParams {
                    top_n_sigma: [0.5, 1.0, 3.0][case % 3],
                    ..base
                },
                1 => RowParams {
                    top_n_sigma: 50.0,
                    ..base
                },
                2 => RowParams {
                    min_p: 0.05,
                    xtc_probability: 1.0,
                    xtc_threshold: 0.1,
                    ..base
                },
                3 => RowParams {
                    min_p: 0.01,
                    xtc_probability: 0.5,
                    xtc_threshold: 0.02,
                    ..base
                },
                4 => RowParams {
                    top_n_sigma: 2.0,
                    min_p: 0.1,
                    ..base
                },
                _ => RowParams {
                    top_n_sigma: 1.5,
                    xtc_probability: 1.0,
                    xtc_threshold: 0.05,
                    ..base
                },
            }];
            let mut row = row;
            if fast[0].min_p > 0.0 {
                // Two tokens exactly on min-p's floor: at the temperature (HF's and vLLM's
                // orders) and at 1 (llama.cpp's), as the ordered plan computes it.
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x)) as f64;
                let scale = (1.0 / t as f32) as f64;
                row[1] = (m + fast[0].min_p.ln() / scale) as f32;
                row[2] = (m + fast[0].min_p.ln()) as f32;
            }
            let ordered = [RowParams {
                epsilon_cutoff: 1e-300,
                ..fast[0]
            }];
            for order in [&HF_ORDER[..], &VLLM_ORDER, &LLAMA_CPP_ORDER] {
                assert_eq!(plan::<f32>(&fast[0], v, true, order), Plan::Listed);
                for step in 0..3 {
                    let at = (order, step, 2);
                    same_draws(
                        &row,
                        &fast,
                        &ordered,
                        at,
                        &format!("case {case} step {step}"),
                    );
                }
            }
        }
    }

    /// [`Plan::TypicalLast`] (the row as it lies, drawn by key from the bracket read's block
    /// sums, or after zeroing the cut when top log-probabilities are asked for) gives the
    /// ordered plan's draw: the same ids, log-probabilities and top log-probabilities, on
    /// peaked and flat rows (the sampled bracket and the full histogram), ties, `-inf`, f32
    /// and bf16. The ordered plan is forced by an epsilon cutoff that cuts nothing, after
    /// typical-p in Hugging Face's order: it cuts the row and runs the exp pass again.
    #[test]
    fn typical_last_plan_equals_the_ordered_plan() {
        let mut rnd = crate::test_util::uniforms(4242);
        for case in 0..36 {
            let v = [4_000, 20_011, 130_003][case % 3];
            let sharp = [0.0, 0.6, 1.0][case / 3 % 3];
            let mut row: Vec<f32> = (0..v)
                .map(|_| {
                    let (u1, u2) = (1.0 - rnd(), rnd());
                    let g = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                    let x = if rnd() < 0.03 {
                        f64::NEG_INFINITY
                    } else {
                        2.0 * g
                    };
                    // Ties: the row on a grid.
                    (if case % 4 == 1 {
                        (x * 4.0).round() / 4.0
                    } else {
                        x
                    }) as f32
                })
                .collect();
            for _ in 0..32 {
                let j = (rnd() * v as f64) as usize;
                row[j] += (sharp * (6.0 + 10.0 * rnd())) as f32;
            }
            let fast = [RowParams {
                typical_p: [0.2, 0.9, 0.99][case / 9 % 3],
                ..params([0.7, 1.0, 2.5][case % 3], 0, 1.0, 0.0)
            }];
            let ordered = [RowParams {
                epsilon_cutoff: 1e-300,
                ..fast[0]
            }];
            assert_eq!(plan::<f32>(&fast[0], v, true, &HF_ORDER), Plan::TypicalLast);
            assert_eq!(plan::<f32>(&ordered[0], v, true, &HF_ORDER), Plan::Ordered);
            for (step, top_n) in [(0, 0), (1, 0), (2, 3)] {
                let at = (&HF_ORDER[..], step, top_n);
                same_draws(
                    &row,
                    &fast,
                    &ordered,
                    at,
                    &format!("case {case} step {step}"),
                );
            }
        }
    }

    /// Which plan for which parameters: the rules of `plan()`, one case each.
    #[test]
    fn plan_rules() {
        let v = 1000;
        let pl = |t: f64, k: usize, top_p: f64, min_p: f64, dist: bool| {
            plan::<f32>(&params(t, k, top_p, min_p), v, dist, &HF_ORDER)
        };
        // Temperature 0 is greedy whatever else is on.
        assert_eq!(pl(0.0, 0, 1.0, 0.0, false), Plan::Greedy);
        assert_eq!(pl(0.0, 5, 0.5, 0.1, true), Plan::Greedy);
        // A top-k of at most V / 8 streams, with or without top-p / min-p / probs.
        assert_eq!(pl(1.0, 1, 1.0, 0.0, false), sparse(false, false));
        assert_eq!(pl(1.0, 125, 0.9, 0.1, true), sparse(false, false));
        // Top-p otherwise: the head in the first read; the estimate only without a dense
        // top-k, without a distribution asked for, and at a temperature it can scale.
        let est = |estimate| Plan::Nucleus { estimate };
        assert_eq!(pl(1.0, 0, 0.9, 0.0, false), est(true));
        assert_eq!(pl(0.7, 0, 0.9, 0.05, false), est(true));
        assert_eq!(pl(1.0, v, 0.9, 0.0, false), est(true)); // top_k = V is no top-k
        assert_eq!(pl(1.0, 126, 0.9, 0.0, false), est(false)); // a dense top-k
        assert_eq!(pl(1.0, 0, 0.9, 0.0, true), est(false));
        assert_eq!(pl(1e-40, 0, 0.9, 0.0, false), est(false));
        assert_eq!(
            plan::<f64>(&params(1e-40, 0, 0.9, 0.0), v, false, &HF_ORDER),
            est(false)
        );
        // Min-p alone is a logit floor: the listed plan.
        assert_eq!(pl(1.0, 0, 1.0, 0.1, false), Plan::Listed);
        assert_eq!(pl(0.7, 0, 1.0, 0.1, true), Plan::Listed);
        // The rest is dense: no filter, a dense top-k alone.
        assert_eq!(pl(1.0, 0, 1.0, 0.0, false), Plan::Dense);
        assert_eq!(pl(1.0, 126, 1.0, 0.0, true), Plan::Dense);
        // The top-k threshold is V / 8, rounded down.
        assert_eq!(
            plan::<f32>(&params(1.0, 1, 1.0, 0.0), 7, false, &HF_ORDER),
            Plan::Dense
        );
        assert_eq!(
            plan::<f32>(&params(1.0, 1, 1.0, 0.0), 8, false, &HF_ORDER),
            sparse(false, false)
        );
        // A temperature that is neither 0 nor positive (refused by the parameter checks)
        // takes the dense plan, as the row driver always did.
        assert_eq!(pl(f64::NAN, 5, 0.9, 0.0, false), Plan::Dense);
    }

    /// Which orders and stages leave the fast plans.
    #[test]
    fn plan_rules_for_orders_and_new_stages() {
        let v = 1000;
        let pl = |p: RowParams, order: &[Stage]| plan::<f32>(&p, v, false, order);
        let nucleus_min_p = params(0.7, 0, 0.9, 0.1);
        assert_eq!(
            pl(nucleus_min_p, &HF_ORDER),
            Plan::Nucleus { estimate: true }
        );
        // vLLM: min-p before top-p changes the cut; llama.cpp: temperature after them. Both
        // are decided from the head when they can be.
        let head = |min_p_first, temperature_last| Plan::HeadNucleus {
            order: FastOrder {
                min_p_first,
                temperature_last,
            },
        };
        assert_eq!(pl(nucleus_min_p, &VLLM_ORDER), head(true, false));
        assert_eq!(pl(nucleus_min_p, &LLAMA_CPP_ORDER), head(false, true));
        // A dense top-k under llama.cpp's order: the stages. Min-p without top-p: listed.
        assert_eq!(
            pl(params(0.7, 200, 0.9, 0.1), &LLAMA_CPP_ORDER),
            Plan::Ordered
        );
        assert_eq!(pl(params(0.7, 0, 1.0, 0.1), &LLAMA_CPP_ORDER), Plan::Listed);
        // XTC before a floor (a custom order) is not listed; a keep floor neither.
        let min_p_xtc = RowParams {
            xtc_probability: 1.0,
            ..params(0.7, 0, 1.0, 0.1)
        };
        assert_eq!(pl(min_p_xtc, &HF_ORDER), Plan::Listed);
        let xtc_first = [Stage::Xtc, Stage::Temperature, Stage::MinP];
        assert_eq!(pl(min_p_xtc, &xtc_first), Plan::Ordered);
        let keep2 = RowParams {
            min_tokens_to_keep: 2,
            ..min_p_xtc
        };
        assert_eq!(pl(keep2, &HF_ORDER), Plan::Ordered);
        // Where the stages on commute, every preset stays on the fast plans.
        for order in [&HF_ORDER[..], &VLLM_ORDER, &LLAMA_CPP_ORDER] {
            assert_eq!(pl(params(0.7, 50, 1.0, 0.0), order), sparse(false, false));
        }
        let top_k_min_p = params(0.7, 50, 1.0, 0.05);
        assert_eq!(pl(top_k_min_p, &VLLM_ORDER), sparse(false, false));
        assert_eq!(pl(top_k_min_p, &LLAMA_CPP_ORDER), sparse(false, true));
        // With a sparse top-k, the candidates take vLLM's and llama.cpp's orders.
        let all = params(0.7, 50, 0.9, 0.05);
        assert_eq!(pl(all, &VLLM_ORDER), sparse(true, false));
        assert_eq!(pl(all, &LLAMA_CPP_ORDER), sparse(false, true));
        let t_between = [Stage::TopK, Stage::TopP, Stage::Temperature, Stage::MinP];
        assert_eq!(pl(all, &t_between), Plan::Ordered);
        assert_eq!(
            pl(params(1.0, 0, 0.9, 0.1), &LLAMA_CPP_ORDER),
            Plan::Nucleus { estimate: true }
        );
        // Typical-p after the temperature (or alone) reads the row as it lies; before the
        // temperature, with another stage or with a floor, it is ordered.
        let typical = RowParams {
            typical_p: 0.9,
            ..Default::default()
        };
        assert_eq!(pl(typical, &HF_ORDER), Plan::TypicalLast);
        let hot = RowParams {
            temperature: 0.7,
            ..typical
        };
        assert_eq!(pl(hot, &HF_ORDER), Plan::TypicalLast);
        assert_eq!(pl(hot, &LLAMA_CPP_ORDER), Plan::Ordered);
        assert_eq!(pl(typical, &LLAMA_CPP_ORDER), Plan::TypicalLast);
        let typical_k = RowParams { top_k: 40, ..hot };
        assert_eq!(pl(typical_k, &HF_ORDER), Plan::Ordered);
        let typical_keep = RowParams {
            min_tokens_to_keep: 2,
            ..hot
        };
        assert_eq!(pl(typical_keep, &HF_ORDER), Plan::Ordered);
        // A new stage, or a floor on a filter, is ordered; T = 0 stays greedy.
        let eps = RowParams {
            epsilon_cutoff: 3e-4,
            ..Default::default()
        };
        assert_eq!(pl(eps, &HF_ORDER), Plan::Ordered);
        let greedy = RowParams {
            temperature: 0.0,
            ..typical
        };
        assert_eq!(pl(greedy, &HF_ORDER), Plan::Greedy);
        let floor = RowParams {
            min_tokens_to_keep: 3,
            ..params(1.0, 0, 0.9, 0.0)
        };
        assert_eq!(pl(floor, &HF_ORDER), Plan::Ordered);
        let floor_alone = RowParams {
            min_tokens_to_keep: 3,
            ..Default::default()
        };
        assert_eq!(pl(floor_alone, &HF_ORDER), Plan::Dense);
    }

    /// docs/design.md section 9: on probabilities [.4, .3, .2, .1] with min_p 0.3 and top_p
    /// 0.75, Hugging Face's order keeps 3 tokens and vLLM's 2; and the ordered plan on the
    /// stages the fast plans know gives their distribution (up to rounding).
    #[test]
    fn orders_change_the_kept_set_and_the_ordered_plan_equals_the_fast_one() {
        let x: Vec<f32> = [0.4f32, 0.3, 0.2, 0.1].iter().map(|p| p.ln()).collect();
        let rows = [&x[..]];
        let p = [params(1.0, 0, 0.75, 0.3)];
        let kept = |order: &[Stage]| {
            let mut r = req(&rows, &p);
            r.order = order;
            let mut probs = vec![0.0f32; 4];
            run_batch(&r, Some(&mut probs)).unwrap();
            probs
        };
        let hf = kept(&HF_ORDER);
        assert_eq!(hf.iter().filter(|&&q| q > 0.0).count(), 3, "{hf:?}");
        let vllm = kept(&VLLM_ORDER);
        assert_eq!(vllm.iter().filter(|&&q| q > 0.0).count(), 2, "{vllm:?}");
        // The same stages in a custom order that the fast plans follow, forced ordered by a
        // floor of 1 token (which changes nothing).
        let mut rnd = crate::test_util::uniforms(5);
        let row: Vec<f32> = (0..5000).map(|_| (rnd() * 8.0) as f32).collect();
        let rows = [&row[..]];
        for (t, k, top_p, min_p) in [
            (0.7, 0, 0.9, 0.0),
            (1.3, 300, 0.95, 0.02),
            (0.5, 0, 1.0, 0.1),
        ] {
            let fast = [params(t, k, top_p, min_p)];
            let slow = [RowParams {
                min_tokens_to_keep: 2,
                ..fast[0]
            }];
            let (mut a, mut b) = (vec![0.0f32; 5000], vec![0.0f32; 5000]);
            run_batch(&req(&rows, &fast), Some(&mut a)).unwrap();
            run_batch(&req(&rows, &slow), Some(&mut b)).unwrap();
            for (j, (qa, qb)) in a.iter().zip(&b).enumerate() {
                assert!(
                    (qa - qb).abs() <= 1e-5 * qa.max(1e-30) + 1e-9,
                    "{j}: {qa} {qb}"
                );
                assert_eq!(*qa > 0.0, *qb > 0.0, "{j}");
            }
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
        // A head of 1 + 40 x 0.1 and n - 41 others of total weight `rest`.
        let boundary_row = |rest: f64| -> Vec<f32> {
            let n = 20_011usize;
            let eps = rest / (n - 41) as f64;
            (0..n)
                .map(|j| match j {
                    0 => 10.0,
                    1..=40 => (10.0 + 0.1f64.ln()) as f32,
                    // Distinct, or the head would take in every tie of the rest.
                    _ => (10.0 + eps.ln() + 0.02 * ((j % 97) as f64 / 97.0 - 0.5)) as f32,
                })
                .collect()
        };
        for s in 0..3000 {
            let rest = 0.05 + 0.45 * s as f64 / 3000.0;
            let row = boundary_row(rest);
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
        // llama.cpp's order, min-p 0.05 after top-p: the min-p set (the 41) holds top_p of
        // the total where the rest is 5 / 0.9 - 5, so around it the estimate cannot say
        // whether min-p decides, and the flat route cuts the head (where the floor matters:
        // the cut may take in some of the rest). Against the ordered plan (a top-n-sigma that
        // keeps everything forces it).
        for s in 0..600 {
            let rest = 0.53 + 0.05 * s as f64 / 600.0;
            let row = boundary_row(rest);
            let fast = [params(0.7, 0, 0.9, 0.05)];
            let ordered = [RowParams {
                top_n_sigma: 1e30,
                ..fast[0]
            }];
            let rows = [&row[..]];
            let run = |ps: &[RowParams]| {
                let mut r = req(&rows, ps);
                r.order = &LLAMA_CPP_ORDER;
                run_batch(&r, None).unwrap()[0].clone()
            };
            let (a, b) = (run(&fast), run(&ordered));
            assert_eq!(a.id, b.id, "rest {rest}");
            assert!((a.logprob - b.logprob).abs() <= 1e-9, "rest {rest}");
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
            let (_, filled) = first_scan::<f32>(
                &row,
                &row,
                false,
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
}

#[cfg(test)]
mod stage_probe {
    use crate::batch::run_batch;
    use crate::params::RowParams;
    use crate::test_util::{params, req};

    /// For callgrind or a quick timing: 16 rows of 128,256 logits through T 0.7 and each of
    /// typical-p, epsilon, eta, top-n-sigma and min-p + XTC (`cargo test --release --lib
    /// stage_probe -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn stage_cost_probe() {
        let (v, b) = (128_256usize, 16usize);
        let mut rnd = crate::test_util::uniforms(9);
        let rows: Vec<Vec<f32>> = (0..b)
            .map(|_| {
                (0..v)
                    .map(|_| (((0..4).map(|_| rnd()).sum::<f64>() - 2.0) * 3.0) as f32)
                    .collect()
            })
            .collect();
        let refs: Vec<&[f32]> = rows.iter().map(|r| &r[..]).collect();
        let base = params(0.7, 0, 1.0, 0.0);
        let cases: [(&str, RowParams); 6] = [
            ("T only", base),
            (
                "typical 0.9",
                RowParams {
                    typical_p: 0.9,
                    ..base
                },
            ),
            (
                "epsilon 3e-4",
                RowParams {
                    epsilon_cutoff: 3e-4,
                    ..base
                },
            ),
            (
                "eta 1e-3",
                RowParams {
                    eta_cutoff: 1e-3,
                    ..base
                },
            ),
            (
                "top-n-sigma 1",
                RowParams {
                    top_n_sigma: 1.0,
                    ..base
                },
            ),
            (
                "min-p 0.05 + xtc",
                RowParams {
                    min_p: 0.05,
                    xtc_probability: 1.0,
                    xtc_threshold: 0.1,
                    ..base
                },
            ),
        ];
        let only = std::env::var("STAGE").ok();
        for (name, p) in cases {
            if only.as_deref().is_some_and(|o| o != name) {
                continue;
            }
            let ps = [p];
            let mut best = f64::INFINITY;
            for _ in 0..5 {
                let t = std::time::Instant::now();
                run_batch(&req(&refs, &ps), None).unwrap();
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!("{name}: {:.1} us per row", best * 1e6 / b as f64);
        }
    }

    /// Typical-p alone on bench-like rows (a Gaussian bulk of std 2 and 32 boosted tokens, as
    /// `benches/compare.py` makes them), one row per call (one thread), T 0.7: the median
    /// time per row (`cargo test --release --lib typical_probe -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn typical_probe() {
        let (v, b) = (128_256usize, 8usize);
        let mut rnd = crate::test_util::uniforms(5);
        let rows: Vec<Vec<f32>> = (0..b)
            .map(|_| {
                // Box-Muller: the bulk's upper tail carries a flat row's mass, which a sum
                // of uniforms (light-tailed) would not have.
                let mut r: Vec<f32> = (0..v)
                    .map(|_| {
                        let (u1, u2) = (1.0 - rnd(), rnd());
                        let g = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                        (g * 2.0) as f32
                    })
                    .collect();
                let sharp = 0.6 + 0.4 * rnd();
                for _ in 0..32 {
                    let j = (rnd() * v as f64) as usize;
                    r[j] += (sharp * (6.0 + 10.0 * rnd())) as f32;
                }
                r
            })
            .collect();
        let p = RowParams {
            typical_p: 0.9,
            ..params(0.7, 0, 1.0, 0.0)
        };
        let ps = [p];
        let mut times = Vec::new();
        for _ in 0..60 {
            for r in &rows {
                let one = [&r[..]];
                let t = std::time::Instant::now();
                run_batch(&req(&one, &ps), None).unwrap();
                times.push(t.elapsed().as_secs_f64());
            }
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "typical 0.9: {:.1} us per row (median), {:.1} (fastest tenth)",
            times[times.len() / 2] * 1e6,
            times[times.len() / 10] * 1e6
        );
    }
}
