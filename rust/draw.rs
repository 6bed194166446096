//! The final choice of a token: greedy argmax, or an exact draw from the kept weights.

use crate::elem::Real;

/// Index of the first maximum of a NaN-free row: the lowest id wins a tie.
pub fn argmax<F: Real>(y: &[F]) -> usize {
    let mut best = 0;
    for (j, &v) in y.iter().enumerate() {
        if v > y[best] {
            best = j;
        }
    }
    best
}

/// Draws an index with probability `w[j] / total` given a uniform `u` in `[0, 1)`.
///
/// Inverse-CDF over the weights in id order with an `f64` running sum: a token of mass `q`
/// owns an interval of length `q` of the unit interval (up to `f64` rounding), so even tail
/// tokens are drawn at their true frequency. Rounding that leaves `u * total` beyond the last
/// partial sum falls back to the last token with weight.
pub fn draw<F: Real>(w: &[F], total: f64, u: f64) -> usize {
    let target = u * total;
    let mut acc = 0.0f64;
    let mut last = 0;
    for (j, &v) in w.iter().enumerate() {
        if v > F::zero() {
            acc += v.wide();
            last = j;
            if acc > target {
                return j;
            }
        }
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_lowest_index_wins() {
        assert_eq!(argmax(&[1.0f32, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f64::NEG_INFINITY, -1.0]), 1);
    }

    #[test]
    fn draw_inverts_the_cdf() {
        let w = [0.0f64, 1.0, 0.0, 3.0];
        assert_eq!(draw(&w, 4.0, 0.0), 1);
        assert_eq!(draw(&w, 4.0, 0.2499), 1);
        assert_eq!(draw(&w, 4.0, 0.25), 3);
        assert_eq!(draw(&w, 4.0, 0.999_999), 3);
        // Masked tokens are never returned, even at the edges.
        assert_eq!(draw(&[1.0f32, 0.0], 1.0, 0.999_999_9), 0);
    }

    #[test]
    fn draw_frequencies_match_weights() {
        // Stratified u: every token gets exactly its share of a fine grid of u values.
        let w = [1e-4f64, 0.3, 0.6999];
        let n = 1_000_000;
        let mut counts = [0usize; 3];
        for i in 0..n {
            counts[draw(&w, 1.0, (i as f64 + 0.5) / n as f64)] += 1;
        }
        assert_eq!(counts, [100, 300_000, 699_900]);
    }
}
