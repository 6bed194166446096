//! Softmax pieces: the row maximum, the unnormalised weights of the kept tokens, and
//! log-probabilities for the outputs. Sums accumulate in `f64` so `f32` rows lose nothing to
//! cancellation over large vocabularies.

use crate::elem::{Elem, Real};

/// Largest value of a NaN-free row (`-inf` for an empty or all-masked row).
pub fn max<F: Real>(y: &[F]) -> F {
    y.iter().copied().fold(F::neg_infinity(), F::max)
}

/// Writes `w[j] = exp((y[j] - m) / t)` for tokens with `y[j] >= floor`, else `0`, and returns
/// the sum of `w` in `f64`.
///
/// `m` is the row maximum. `+inf` logits (`m = +inf`) share the mass equally, as DESIGN.md
/// section 6 requires. Subtracting `m` before dividing keeps a tiny temperature from
/// overflowing `y / t` to `+inf`.
pub fn exp_weights<F: Real>(y: &[F], m: F, t: F, floor: F, w: &mut Vec<F>) -> f64 {
    w.clear();
    w.reserve(y.len());
    let mut total = 0.0f64;
    if m == F::infinity() {
        for &v in y {
            let e = if v == F::infinity() {
                F::one()
            } else {
                F::zero()
            };
            total += e.wide();
            w.push(e);
        }
        return total;
    }
    for &v in y {
        let e = if v < floor || v == F::neg_infinity() {
            F::zero()
        } else {
            let d = v - m;
            if d == F::zero() {
                F::one()
            } else {
                (d / t).exp()
            }
        };
        total += e.wide();
        w.push(e);
    }
    total
}

/// Log-probability of token `id` under the plain softmax of the raw logits `x` (temperature 1,
/// nothing applied), computed in `f64`.
pub fn raw_log_softmax_at<T: Elem>(x: &[T], id: usize) -> f64 {
    let m = x
        .iter()
        .map(|e| e.load().wide())
        .fold(f64::NEG_INFINITY, f64::max);
    let xi = x[id].load().wide();
    if m == f64::INFINITY {
        let n_inf = x
            .iter()
            .filter(|e| e.load().wide() == f64::INFINITY)
            .count();
        return if xi == f64::INFINITY {
            -(n_inf as f64).ln()
        } else {
            f64::NEG_INFINITY
        };
    }
    if m == f64::NEG_INFINITY {
        return f64::NEG_INFINITY;
    }
    let s: f64 = x.iter().map(|e| (e.load().wide() - m).exp()).sum();
    xi - m - s.ln()
}

/// The `n` most probable tokens of the final distribution `w / total`, most probable first,
/// ties by lower id, as `(id, log-probability)`. Slots beyond the kept set are `(-1, -inf)`.
pub fn top_logprobs<F: Real>(w: &[F], total: f64, n: usize, idx: &mut Vec<u32>) -> Vec<(i64, f64)> {
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    idx.clear();
    idx.extend((0..w.len() as u32).filter(|&j| w[j as usize] > F::zero()));
    let by_prob = |a: &u32, b: &u32| {
        w[*b as usize]
            .partial_cmp(&w[*a as usize])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(b))
    };
    if idx.len() > n {
        idx.select_nth_unstable_by(n - 1, by_prob);
        idx.truncate(n);
    }
    idx.sort_unstable_by(by_prob);
    out.extend(
        idx.iter()
            .map(|&j| (j as i64, (w[j as usize].wide() / total).ln())),
    );
    out.resize(n, (-1, f64::NEG_INFINITY));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn softmax(y: &[f64], t: f64) -> Vec<f64> {
        let m = max(y);
        let mut w = Vec::new();
        let s = exp_weights(y, m, t, f64::NEG_INFINITY, &mut w);
        w.iter().map(|v| v / s).collect()
    }

    fn assert_rel(got: &[f64], want: &[f64], rel: f64) {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= rel * w.abs(), "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn temperature_seed_vectors() {
        // DESIGN.md section 2, step 3.
        let x = [6.0, 2.0, 7.0, 0.1, -8.0, 9.0];
        assert_rel(
            &softmax(&x, 1.0),
            &[4.197e-2, 7.688e-4, 1.141e-1, 1.150e-4, 3.490e-8, 8.430e-1],
            1e-3,
        );
        let p = softmax(&x, 0.1);
        assert_rel(
            &p[..5],
            &[9.358e-14, 3.975e-31, 2.061e-9, 2.227e-39, 1.479e-74],
            1e-3,
        );
        assert!((p[5] - (1.0 - 2e-9)).abs() < 1e-10);
        assert_rel(
            &softmax(&x, 10.0),
            &[0.2030, 0.1361, 0.2243, 0.1125, 0.0501, 0.2740],
            1e-3,
        );
    }

    #[test]
    fn positive_infinity_shares_mass() {
        let y = [1.0, f64::INFINITY, 3.0, f64::INFINITY];
        assert_eq!(softmax(&y, 1.0), vec![0.0, 0.5, 0.0, 0.5]);
    }

    #[test]
    fn tiny_temperature_does_not_overflow() {
        let y = [1.0f32, 2.0, 1.5];
        let p = {
            let mut w = Vec::new();
            let s = exp_weights(&y, 2.0, 1e-30, f32::NEG_INFINITY, &mut w);
            w.iter().map(|v| v.wide() / s).collect::<Vec<_>>()
        };
        assert_eq!(p, vec![0.0, 1.0, 0.0]);
    }

    #[test]
    fn raw_logprob() {
        let x = [0.0f64, 0.0];
        assert!((raw_log_softmax_at(&x, 1) + 2f64.ln()).abs() < 1e-15);
        let x = [f32::INFINITY, 0.0, f32::INFINITY];
        assert!((raw_log_softmax_at(&x, 0) + 2f64.ln()).abs() < 1e-15);
        assert_eq!(raw_log_softmax_at(&x, 1), f64::NEG_INFINITY);
    }

    #[test]
    fn top_logprobs_order_and_padding() {
        let w = [0.25f64, 0.5, 0.0, 0.25];
        let mut idx = Vec::new();
        let t = top_logprobs(&w, 1.0, 5, &mut idx);
        assert_eq!(t[0], (1, 0.5f64.ln()));
        assert_eq!(t[1], (0, 0.25f64.ln()));
        assert_eq!(t[2], (3, 0.25f64.ln()));
        assert_eq!(t[3], (-1, f64::NEG_INFINITY));
        assert_eq!(top_logprobs(&w, 1.0, 1, &mut idx), vec![(1, 0.5f64.ln())]);
    }
}
