//! The final choice of a token: an exact draw from the kept weights.
//!
//! Inverse CDF with an `f64` running sum: a token of mass `q` owns an interval of length `q`
//! of the unit interval (up to `f64` rounding), so even tail tokens are drawn at their true
//! frequency — there is no `f32` noise floor.

use crate::elem::Real;
use crate::softmax::BLOCK;

/// Draws an index with probability `w[j] / total` given a uniform `u` in `[0, 1)`, finding
/// the block from the per-[`BLOCK`] sums first so only one block is scanned.
pub fn draw_dense<F: Real>(w: &[F], blocks: &[f64], total: f64, u: f64) -> usize {
    draw_dense_by(w, blocks, total, u, |_, _| true)
}

/// [`draw_dense`] over the tokens that pass `keep(weight, id)` (the block sums must count
/// exactly those): the draw of a cut row that was not rewritten.
#[inline(always)]
pub fn draw_dense_by<F: Real>(
    w: &[F],
    blocks: &[f64],
    total: f64,
    u: f64,
    keep: impl Fn(F, u32) -> bool,
) -> usize {
    let target = u * total;
    let mut acc = 0.0f64;
    for (b, &s) in blocks.iter().enumerate() {
        if s <= 0.0 {
            continue;
        }
        if acc + s > target {
            for (l, &v) in w[b * BLOCK..(b * BLOCK + BLOCK).min(w.len())]
                .iter()
                .enumerate()
            {
                if v > F::zero() && keep(v, (b * BLOCK + l) as u32) {
                    acc += v.wide();
                    if acc > target {
                        return b * BLOCK + l;
                    }
                }
            }
        } else {
            acc += s;
        }
    }
    // Rounding left the target past the last partial sum: take the last token with weight.
    w.iter()
        .enumerate()
        .rposition(|(j, &v)| v > F::zero() && keep(v, j as u32))
        .unwrap_or(0)
}

/// Draws from `(weight, id)` pairs with probability `weight / total`; returns the id.
pub fn draw_sparse<F: Real>(pairs: &[(F, u32)], total: f64, u: f64) -> u32 {
    let target = u * total;
    let mut acc = 0.0f64;
    for &(w, j) in pairs {
        if w > F::zero() {
            acc += w.wide();
            if acc > target {
                return j;
            }
        }
    }
    pairs
        .iter()
        .rev()
        .find(|p| p.0 > F::zero())
        .map_or(0, |p| p.1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::softmax::block_sums;

    #[test]
    fn draw_inverts_the_cdf() {
        let w = [0.0f64, 1.0, 0.0, 3.0];
        let mut b = Vec::new();
        let t = block_sums(&w, &mut b);
        assert_eq!(draw_dense(&w, &b, t, 0.0), 1);
        assert_eq!(draw_dense(&w, &b, t, 0.2499), 1);
        assert_eq!(draw_dense(&w, &b, t, 0.25), 3);
        assert_eq!(draw_dense(&w, &b, t, 0.999_999), 3);
        // Masked tokens are never returned, even at the edges.
        let w = [1.0f32, 0.0];
        let t = block_sums(&w, &mut b);
        assert_eq!(draw_dense(&w, &b, t, 0.999_999_9), 0);
        assert_eq!(draw_sparse(&[(1.0f32, 7), (0.0, 9)], 1.0, 0.999_999_9), 7);
    }

    #[test]
    fn draw_frequencies_match_weights_across_blocks() {
        // Stratified u: every token gets exactly its share of a fine grid of u values.
        let mut w = vec![0.0f64; 3 * BLOCK];
        w[5] = 1e-4;
        w[BLOCK + 1] = 0.3;
        w[3 * BLOCK - 1] = 0.6999;
        let mut b = Vec::new();
        let t = block_sums(&w, &mut b);
        let n = 1_000_000;
        let mut counts = [0usize; 3];
        for i in 0..n {
            let j = draw_dense(&w, &b, t, (i as f64 + 0.5) / n as f64);
            counts[[5, BLOCK + 1, 3 * BLOCK - 1]
                .iter()
                .position(|&x| x == j)
                .unwrap()] += 1;
        }
        assert_eq!(counts, [100, 300_000, 699_900]);
    }

    /// A uniform whose target `u * total` lies strictly inside the share of the token
    /// whose running sum goes from `before` to `before + w`: checked, so the tests below
    /// cannot pass by a uniform that misses the interval they mean.
    fn u_inside(before: f64, w: f64, total: f64) -> f64 {
        let u = (before + 0.5 * w) / total;
        let target = u * total;
        assert!(before < target && target < before + w, "{u} {target}");
        assert!((0.0..1.0).contains(&u));
        u
    }

    /// Weights [1, 1e-9, 1e-9] (at `at`, `at + 1`, `at + 2` of an otherwise empty row of
    /// `n`): each tiny token owns an interval of its exact length. A running sum in `f32`
    /// would stay at 1 past the first token (1e-9 is far below its half ulp) and end in the
    /// fallback, the last token: id `at + 2` instead of `at + 1`.
    fn tiny_masses_dense<F: Real>(n: usize, at: usize) {
        let mut w = vec![F::zero(); n];
        w[at] = F::one();
        w[at + 1] = F::of(1e-9);
        w[at + 2] = F::of(1e-9);
        let tiny = w[at + 1].wide();
        let mut b = Vec::new();
        let t = block_sums(&w, &mut b);
        assert_eq!(draw_dense(&w, &b, t, u_inside(0.0, 1.0, t)), at);
        assert_eq!(draw_dense(&w, &b, t, u_inside(1.0, tiny, t)), at + 1);
        assert_eq!(draw_dense(&w, &b, t, u_inside(1.0 + tiny, tiny, t)), at + 2);
        // The cut path's draw (`draw_dense_by`): a heavy token after them that the cut
        // drops is not counted (the block sums are those of the kept tokens).
        if at + 3 < n {
            let mut cut = w.clone();
            cut[at + 3] = F::of(5.0);
            let keep = |_: F, j: u32| j as usize != at + 3;
            let u = u_inside(1.0, tiny, t);
            assert_eq!(draw_dense_by(&cut, &b, t, u, keep), at + 1);
        }
    }

    #[test]
    fn tiny_masses_dense_path() {
        tiny_masses_dense::<f64>(3, 0);
        tiny_masses_dense::<f32>(3, 0);
        tiny_masses_dense::<f64>(4, 0);
        tiny_masses_dense::<f32>(4, 0);
        // Across a block boundary: the first block is skipped by its sum, the tiny tokens
        // are found by the scan of the next one.
        tiny_masses_dense::<f64>(3 * BLOCK, BLOCK - 1);
        tiny_masses_dense::<f32>(3 * BLOCK, BLOCK - 1);
        // A block whose whole sum is a tiny mass: the block step itself must be exact.
        tiny_masses_dense::<f64>(3 * BLOCK, BLOCK - 2);
        tiny_masses_dense::<f32>(3 * BLOCK, BLOCK - 2);
    }

    fn tiny_masses_sparse<F: Real>() {
        for ids in [[0u32, 1, 2], [7, 1000, 70_000]] {
            let pairs = [
                (F::one(), ids[0]),
                (F::of(1e-9), ids[1]),
                (F::of(1e-9), ids[2]),
            ];
            let tiny = pairs[1].0.wide();
            let t: f64 = pairs.iter().map(|p| p.0.wide()).sum();
            assert_eq!(draw_sparse(&pairs, t, u_inside(0.0, 1.0, t)), ids[0]);
            assert_eq!(draw_sparse(&pairs, t, u_inside(1.0, tiny, t)), ids[1]);
            assert_eq!(
                draw_sparse(&pairs, t, u_inside(1.0 + tiny, tiny, t)),
                ids[2]
            );
        }
    }

    #[test]
    fn tiny_masses_sparse_path() {
        tiny_masses_sparse::<f64>();
        tiny_masses_sparse::<f32>();
    }
}
