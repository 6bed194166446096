//! The filters: top-k on the scaled logits, top-p and min-p on the probabilities. A filter
//! never empties a row: the most probable token always survives.

use crate::elem::Real;
use std::cmp::Ordering;

/// The `k`-th largest value of the NaN-free row `y` (`1 <= k <= y.len()`). Keeping every
/// `y[j] >= kth_largest(y, k)` keeps ties at the boundary, as Hugging Face and nanoGPT do.
pub fn kth_largest<F: Real>(y: &[F], k: usize, buf: &mut Vec<F>) -> F {
    debug_assert!(k >= 1 && k <= y.len());
    buf.clear();
    buf.extend_from_slice(y);
    let desc = |a: &F, b: &F| b.partial_cmp(a).unwrap_or(Ordering::Equal);
    let (_, kth, _) = buf.select_nth_unstable_by(k - 1, desc);
    *kth
}

/// Nucleus filter on the weights `w` (unnormalised probabilities summing to `total`; zero
/// means dropped): keeps the shortest prefix, in order of decreasing probability with ties by
/// lower id, whose mass reaches `p * total`. Returns the mass kept.
pub fn top_p<F: Real>(w: &mut [F], total: f64, p: f64, idx: &mut Vec<u32>) -> f64 {
    idx.clear();
    idx.extend((0..w.len() as u32).filter(|&j| w[j as usize] > F::zero()));
    idx.sort_unstable_by(|a, b| {
        w[*b as usize]
            .partial_cmp(&w[*a as usize])
            .unwrap_or(Ordering::Equal)
            .then(a.cmp(b))
    });
    let target = p * total;
    let mut kept = 0.0f64;
    let mut cut = idx.len();
    for (n, &j) in idx.iter().enumerate() {
        kept += w[j as usize].wide();
        if kept >= target {
            cut = n + 1;
            break;
        }
    }
    for &j in &idx[cut..] {
        w[j as usize] = F::zero();
    }
    kept
}

/// Min-p filter: drops tokens whose weight is below `m` times the largest weight. Returns the
/// mass kept.
pub fn min_p<F: Real>(w: &mut [F], m: f64) -> f64 {
    let top = w.iter().copied().fold(F::zero(), F::max).wide();
    let threshold = m * top;
    let mut kept = 0.0f64;
    for v in w.iter_mut() {
        if v.wide() < threshold {
            *v = F::zero();
        } else {
            kept += v.wide();
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::softmax::{exp_weights, max};

    #[test]
    fn top_k_seed_vector() {
        // DESIGN.md section 2, step 4.
        let y = [4.51f64, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79];
        let mut buf = Vec::new();
        let floor = kth_largest(&y, 3, &mut buf);
        let mut w = Vec::new();
        let s = exp_weights(&y, max(&y), 1.0, floor, &mut w);
        let p: Vec<f64> = w.iter().map(|v| v / s).collect();
        for (j, want) in [(0, 0.0615), (3, 0.5775), (7, 0.3610)] {
            assert!((p[j] - want).abs() < 1e-4, "{p:?}");
        }
        assert_eq!(p.iter().filter(|v| **v > 0.0).count(), 3);
    }

    #[test]
    fn top_k_keeps_ties() {
        let y = [1.0f32, 3.0, 2.0, 2.0, 0.0];
        let mut buf = Vec::new();
        assert_eq!(kth_largest(&y, 2, &mut buf), 2.0);
        assert_eq!(kth_largest(&y, 1, &mut buf), 3.0);
        assert_eq!(kth_largest(&y, 5, &mut buf), 0.0);
    }

    #[test]
    fn top_p_seed_vectors() {
        let mut idx = Vec::new();
        let mut w = [0.5f64, 0.25, 0.125, 0.125];
        assert_eq!(top_p(&mut w, 1.0, 0.75, &mut idx), 0.75);
        assert_eq!(w, [0.5, 0.25, 0.0, 0.0]);
        let mut w = [0.5f64, 0.25, 0.25];
        top_p(&mut w, 1.0, 0.6, &mut idx);
        assert_eq!(w, [0.5, 0.25, 0.0]);
        // Ties at the boundary go to the lower id.
        let mut w = [0.25f64, 0.5, 0.25];
        top_p(&mut w, 1.0, 0.6, &mut idx);
        assert_eq!(w, [0.25, 0.5, 0.0]);
        // A tiny p keeps the single most probable token.
        let mut w = [0.1f64, 0.2, 0.7];
        top_p(&mut w, 1.0, 1e-9, &mut idx);
        assert_eq!(w, [0.0, 0.0, 0.7]);
    }

    #[test]
    fn min_p_threshold() {
        let mut w = [0.5f32, 0.1, 0.25, 0.15];
        let kept = min_p(&mut w, 0.5);
        assert_eq!(w, [0.5, 0.0, 0.25, 0.0]);
        assert!((kept - 0.75).abs() < 1e-7);
    }
}
