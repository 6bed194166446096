//! The filters: top-k on the scaled logits, top-p and min-p on the probabilities. A filter
//! never empties a row: the most probable token always survives.
//!
//! None of them sorts the vocabulary. Top-k streams the row once against a running threshold
//! and only touches the few values above it. Top-p brackets its cut from a strided sample,
//! collects the tokens inside the bracket in one pass and finds the exact cut there with a
//! quickselect on probability mass.

use crate::elem::Real;
use crate::softmax::{sum_wide, BLOCK, LANES};
use std::cmp::Ordering;

#[inline(always)]
fn desc<F: Real>(a: &F, b: &F) -> Ordering {
    b.partial_cmp(a).unwrap_or(Ordering::Equal)
}

/// Order of the nucleus: decreasing weight, ties by lower id.
#[inline(always)]
pub fn by_prob<F: Real>(a: &(F, u32), b: &(F, u32)) -> Ordering {
    desc(&a.0, &b.0).then(a.1.cmp(&b.1))
}

/// The `k`-th largest value of the NaN-free row `y` (`1 <= k <= y.len()`), by selection on a
/// copy. Used when `k` is a large share of the row, where streaming gains nothing.
pub fn kth_largest<F: Real>(y: &[F], k: usize, buf: &mut Vec<F>) -> F {
    buf.clear();
    buf.extend_from_slice(y);
    let (_, kth, _) = buf.select_nth_unstable_by(k - 1, desc);
    *kth
}

/// Keeps the `(value, id)` pairs whose value is at least the `k`-th largest; returns it.
fn compact<F: Real>(cand: &mut Vec<(F, u32)>, k: usize, sel: &mut Vec<F>) -> F {
    sel.clear();
    sel.extend(cand.iter().map(|c| c.0));
    let (_, kth, _) = sel.select_nth_unstable_by(k - 1, desc);
    let t = *kth;
    cand.retain(|c| c.0 >= t);
    t
}

/// Streaming top-k: fills `cand` with every `(y[j], j)` with `y[j]` at least the `k`-th
/// largest value of `y` (so ties at the boundary are all kept, as in Hugging Face and nanoGPT),
/// unordered. Returns whether the row holds a NaN (checked in the same pass).
///
/// A running threshold (the k-th largest value seen so far) rejects most of the row with one
/// SIMD comparison per 16 values; only values at or above it are copied out. Plateaus of equal
/// values grow the buffer instead of looping.
#[inline(always)]
pub fn top_k_candidates<F: Real>(
    y: &[F],
    k: usize,
    cand: &mut Vec<(F, u32)>,
    sel: &mut Vec<F>,
) -> bool {
    cand.clear();
    let mut cap = (4 * k).max(256);
    let mut thr = F::neg_infinity();
    let mut bad = 0u32;
    let mut chunks = y.chunks_exact(LANES);
    let mut base = 0u32;
    for c in &mut chunks {
        let mut hit = 0u32;
        for &v in c {
            hit |= (v >= thr) as u32;
            bad |= v.is_nan() as u32;
        }
        if hit != 0 {
            for (l, &v) in c.iter().enumerate() {
                if v >= thr {
                    cand.push((v, base + l as u32));
                }
            }
            if cand.len() >= cap {
                thr = compact(cand, k, sel);
                if 2 * cand.len() > cap {
                    cap *= 2;
                }
            }
        }
        base += LANES as u32;
    }
    for (l, &v) in chunks.remainder().iter().enumerate() {
        bad |= v.is_nan() as u32;
        if v >= thr {
            cand.push((v, base + l as u32));
        }
    }
    if cand.len() > k {
        compact(cand, k, sel);
    }
    bad != 0
}

/// Finds the end of the shortest prefix, in [`by_prob`] order, of `pairs` whose weight
/// reaches `target`: returns that last pair. Expected linear time (quickselect on mass with a
/// three-way partition, so plateaus of equal weights cost one pass). If rounding leaves
/// `target` above the total, every pair is in the prefix.
pub fn mass_select<F: Real>(pairs: &mut [(F, u32)], target: f64) -> (F, u32) {
    let mut lo = 0;
    let mut hi = pairs.len();
    let mut rem = target;
    loop {
        if hi - lo <= 32 {
            let part = &mut pairs[lo..hi];
            part.sort_unstable_by(by_prob);
            let mut acc = 0.0;
            for p in part.iter() {
                acc += p.0.wide();
                if acc >= rem {
                    return *p;
                }
            }
            return part[part.len() - 1];
        }
        let a = pairs[lo].0;
        let b = pairs[(lo + hi) / 2].0;
        let c = pairs[hi - 1].0;
        let pivot = a.max(b).min(a.min(b).max(c));
        // Three-way partition of pairs[lo..hi] into > pivot | == pivot | < pivot.
        let (mut gt, mut i, mut lt) = (lo, lo, hi);
        let (mut m_gt, mut m_eq) = (0.0f64, 0.0f64);
        while i < lt {
            let v = pairs[i].0;
            if v > pivot {
                m_gt += v.wide();
                pairs.swap(gt, i);
                gt += 1;
                i += 1;
            } else if v < pivot {
                lt -= 1;
                pairs.swap(i, lt);
            } else {
                m_eq += v.wide();
                i += 1;
            }
        }
        if m_gt >= rem {
            hi = gt;
        } else if m_gt + m_eq >= rem {
            // The cut falls among equal weights: the lowest ids come first.
            let eq = &mut pairs[gt..lt];
            eq.sort_unstable_by_key(|p| p.1);
            let mut acc = m_gt;
            for p in eq.iter() {
                acc += p.0.wide();
                if acc >= rem {
                    return *p;
                }
            }
            return eq[eq.len() - 1];
        } else if lt == hi {
            // Nothing below the pivot: rounding left `rem` above the mass; keep everything.
            let eq = &mut pairs[gt..lt];
            return *eq.iter().max_by_key(|p| p.1).unwrap_or(&(pivot, u32::MAX));
        } else {
            rem -= m_gt + m_eq;
            lo = lt;
        }
    }
}

/// The cut of a filter on a dense weight row: keep `w[j]` if `w[j] > tau`, or `w[j] == tau`
/// and `j <= tie_max` (ties at the nucleus boundary go to the lower ids).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cut<F> {
    /// Weight threshold.
    pub tau: F,
    /// Largest id kept among weights equal to `tau`.
    pub tie_max: u32,
}

/// Nucleus cut on a dense weight row summing to `total`: keeps the shortest prefix, by
/// decreasing weight and ties by lower id, whose mass reaches `p * total`.
#[inline(always)]
pub fn top_p_cut<F: Real>(w: &[F], total: f64, p: f64, buf: &mut Vec<(F, u32)>) -> Cut<F> {
    let target = p * total;
    let min_pos = F::min_positive_value();
    // Estimate the cut from a strided sample of ~4096 weights, then bracket it by sample rank
    // (about two standard deviations of a binomial count either side), so the exact pass
    // below collects only a few percent of the row. A wrong bracket is detected and widened.
    let stride = (w.len() / 4096).max(1);
    buf.clear();
    buf.extend(
        w.iter()
            .enumerate()
            .step_by(stride)
            .filter(|(_, &v)| v > F::zero())
            .map(|(j, &v)| (v, j as u32)),
    );
    let (mut lo, mut hi) = (min_pos, F::infinity());
    if !buf.is_empty() {
        let sample_total: f64 = buf.iter().map(|p| p.0.wide()).sum();
        let est = mass_select(buf, p * sample_total);
        let rank = buf
            .iter()
            .filter(|q| by_prob(q, &est) == Ordering::Less)
            .count();
        let margin = 2 * (buf.len() as f64).sqrt() as usize + 8;
        let n = buf.len();
        if rank + margin < n {
            lo = buf.select_nth_unstable_by(rank + margin, by_prob).1 .0;
        }
        if rank >= margin {
            hi = buf.select_nth_unstable_by(rank - margin, by_prob).1 .0;
        }
    }
    let min_pos = F::min_positive_value();
    let mut tries = 0;
    loop {
        tries += 1;
        if tries > 2 {
            // Rounding keeps moving the bracket: take the whole row, which is always right.
            (lo, hi) = (min_pos, F::infinity());
        }
        buf.clear();
        let mut above = [F::zero(); LANES];
        let mut a = 0.0f64;
        let mut chunks = w.chunks_exact(LANES);
        let mut base = 0u32;
        for c in &mut chunks {
            let mut hit = 0u32;
            for l in 0..LANES {
                let v = c[l];
                above[l] = above[l] + if v > hi { v } else { F::zero() };
                hit |= (v >= lo && v <= hi) as u32;
            }
            if base % BLOCK as u32 == 0 {
                // Flush the f32 lanes to f64 once per block, so rounding stays at f64 level.
                a += sum_wide(&above);
                above = [F::zero(); LANES];
            }
            if hit != 0 {
                // Branch-free compaction: the bracket splits the row at random, so a branch per
                // value would mispredict about half the time.
                let n = buf.len();
                buf.resize(n + LANES, (F::zero(), 0));
                let mut k = n;
                for (l, &v) in c.iter().enumerate() {
                    buf[k] = (v, base + l as u32);
                    k += (v >= lo && v <= hi) as usize;
                }
                buf.truncate(k);
            }
            base += LANES as u32;
        }
        a += sum_wide(&above);
        for (l, &v) in chunks.remainder().iter().enumerate() {
            if v > hi {
                a += v.wide();
            } else if v >= lo {
                buf.push((v, base + l as u32));
            }
        }
        let inside: f64 = buf.iter().map(|p| p.0.wide()).sum();
        if tries <= 2 && a >= target && hi < F::infinity() {
            // The cut lies above the bracket.
            (lo, hi) = (hi, F::infinity());
        } else if tries <= 2 && a + inside < target && lo > min_pos {
            // The cut lies below the bracket.
            (lo, hi) = (min_pos, lo);
        } else {
            if buf.is_empty() {
                // Only rounding gets here; keeping every weight >= lo keeps the nucleus.
                return Cut {
                    tau: lo,
                    tie_max: u32::MAX,
                };
            }
            let (tau, id) = mass_select(buf, target - a);
            return Cut { tau, tie_max: id };
        }
    }
}

/// Applies a nucleus cut and a min-p threshold (`w >= floor`) to a dense weight row in one
/// pass, zeroing what they drop, and refreshes the block sums; returns the mass kept.
#[inline(always)]
pub fn apply_cut<F: Real>(w: &mut [F], cut: Cut<F>, floor: F, blocks: &mut Vec<f64>) -> f64 {
    blocks.clear();
    let mut total = 0.0;
    for (bi, wb) in w.chunks_mut(BLOCK).enumerate() {
        let base = (bi * BLOCK) as u32;
        for (l, v) in wb.iter_mut().enumerate() {
            let x = *v;
            let in_nucleus = x > cut.tau || (x == cut.tau && base + l as u32 <= cut.tie_max);
            *v = if in_nucleus && x >= floor {
                x
            } else {
                F::zero()
            };
        }
        let s = sum_wide(wb);
        blocks.push(s);
        total += s;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense_top_p(w: &[f64], p: f64) -> Vec<f64> {
        let mut w = w.to_vec();
        let total: f64 = w.iter().sum();
        let mut buf = Vec::new();
        let cut = top_p_cut(&w, total, p, &mut buf);
        let mut blocks = Vec::new();
        apply_cut(&mut w, cut, 0.0, &mut blocks);
        w
    }

    /// The nucleus by full sort: the definition, for comparison.
    fn reference_top_p(w: &[f64], p: f64) -> Vec<f64> {
        let mut idx: Vec<usize> = (0..w.len()).filter(|&j| w[j] > 0.0).collect();
        idx.sort_by(|&a, &b| w[b].partial_cmp(&w[a]).unwrap().then(a.cmp(&b)));
        let total: f64 = w.iter().sum();
        let mut out = vec![0.0; w.len()];
        let mut acc = 0.0;
        for j in idx {
            out[j] = w[j];
            acc += w[j];
            if acc >= p * total {
                break;
            }
        }
        out
    }

    #[test]
    fn top_p_seed_vectors() {
        assert_eq!(
            dense_top_p(&[0.5, 0.25, 0.125, 0.125], 0.75),
            vec![0.5, 0.25, 0.0, 0.0]
        );
        assert_eq!(dense_top_p(&[0.5, 0.25, 0.25], 0.6), vec![0.5, 0.25, 0.0]);
        // Ties at the boundary go to the lower id.
        assert_eq!(dense_top_p(&[0.25, 0.5, 0.25], 0.6), vec![0.25, 0.5, 0.0]);
        // A tiny p keeps the single most probable token.
        assert_eq!(dense_top_p(&[0.1, 0.2, 0.7], 1e-9), vec![0.0, 0.0, 0.7]);
    }

    #[test]
    fn top_p_matches_the_sort_definition() {
        let mut state = 12345u64;
        let mut rnd = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for case in 0..120 {
            let n = 1 + (rnd() * 6000.0) as usize;
            let spread = 1.0 + rnd() * 30.0;
            let plateau = case % 3 == 0;
            let w: Vec<f64> = (0..n)
                .map(|_| {
                    let z = if plateau {
                        (rnd() * 4.0).floor()
                    } else {
                        rnd() * spread
                    };
                    if rnd() < 0.05 {
                        0.0
                    } else {
                        (-z).exp()
                    }
                })
                .collect();
            if w.iter().all(|&v| v == 0.0) {
                continue;
            }
            for p in [1e-6, 0.1, 0.5, 0.9, 0.999] {
                assert_eq!(
                    dense_top_p(&w, p),
                    reference_top_p(&w, p),
                    "case {case} p {p}"
                );
            }
        }
    }

    #[test]
    fn streaming_top_k_keeps_ties_and_finds_nan() {
        let y: Vec<f32> = (0..10_000).map(|i| ((i * 7919) % 1000) as f32).collect();
        let mut cand = Vec::new();
        let mut sel = Vec::new();
        assert!(!top_k_candidates(&y, 25, &mut cand, &mut sel));
        // Values 999, 998, 997 each appear 10 times: k = 25 keeps all 30.
        assert_eq!(cand.len(), 30);
        assert!(cand.iter().all(|c| c.0 >= 997.0 && y[c.1 as usize] == c.0));
        let flat = vec![1.0f32; 5000];
        top_k_candidates(&flat, 3, &mut cand, &mut sel);
        assert_eq!(cand.len(), 5000);
        let mut y2 = y.clone();
        y2[9_999] = f32::NAN;
        assert!(top_k_candidates(&y2, 5, &mut cand, &mut sel));
    }

    #[test]
    #[allow(clippy::approx_constant)] // 6.28 is DESIGN.md's seed vector, not tau
    fn top_k_seed_vector_threshold() {
        let y = [4.51f64, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79];
        let mut cand = Vec::new();
        let mut sel = Vec::new();
        top_k_candidates(&y, 3, &mut cand, &mut sel);
        let mut ids: Vec<u32> = cand.iter().map(|c| c.1).collect();
        ids.sort();
        assert_eq!(ids, vec![0, 3, 7]);
        assert_eq!(kth_largest(&y, 3, &mut sel), 4.51);
    }

    #[test]
    fn min_p_through_apply_cut() {
        let mut w = [0.5f32, 0.1, 0.25, 0.15];
        let all = Cut {
            tau: 0.0,
            tie_max: u32::MAX,
        };
        let mut blocks = Vec::new();
        let kept = apply_cut(&mut w, all, 0.25, &mut blocks);
        assert_eq!(w, [0.5, 0.0, 0.25, 0.0]);
        assert!((kept - 0.75).abs() < 1e-7);
    }
}
