//! Token bitmasks (docs/design.md section 11): the format xgrammar, llguidance and
//! outlines-core produce. Token `j` is bit `j % 32` (least significant first) of word
//! `j / 32`; 1 = allowed. A row with fewer words than `ceil(V / 32)` bans the ids beyond its
//! words (a model's padded vocabulary); words beyond V are ignored.
//!
//! Two ways through the pipeline. A row whose outputs live in the allowed ids alone is
//! *gathered*: its allowed logits are copied, in id order, into a short row that the plans
//! run on as if it were the whole vocabulary (few allowed ids cost their count plus V/32
//! words). Any other row (the full distribution, raw log-probabilities or ranks, whose
//! meaning needs every id) is loaded and its disallowed ids set to `-inf`, like a ban.

use crate::elem::{Elem, Real};
use crate::patch::Logits;

/// The masks of a call: `rows` rows of `width` words each (one row serves every logits row).
#[derive(Debug, Clone, Copy)]
pub struct Bitmask<'a> {
    /// The words, row-major.
    pub words: &'a [u32],
    /// Words per row.
    pub width: usize,
    /// Rows (given apart from the words, so a width of 0 still has rows).
    pub rows: usize,
}

impl<'a> Bitmask<'a> {
    /// The words of logits row `i`.
    #[inline(always)]
    pub fn row(&self, i: usize) -> &'a [u32] {
        let r = if self.rows == 1 { 0 } else { i };
        &self.words[r * self.width..(r + 1) * self.width]
    }
}

/// Word `w` of a row of vocabulary `v`, with the bits of ids `>= v` cleared.
#[inline(always)]
pub(crate) fn word(row: &[u32], w: usize, v: usize) -> u32 {
    let x = row[w];
    let end = v - w * 32; // ids of this word below v (> 0 for the words that matter)
    if end >= 32 {
        x
    } else {
        x & ((1u32 << end) - 1)
    }
}

/// The number of words that can allow an id below `v`.
#[inline(always)]
pub(crate) fn n_words(row: &[u32], v: usize) -> usize {
    row.len().min(v.div_ceil(32))
}

/// Whether more than `limit` ids below `v` are allowed. Counts 256 words (8,192 ids) at a
/// time and stops once past `limit`: deciding a route on a half-allowed row reads a few
/// hundred words, not all V/32.
pub(crate) fn allows_more_than(row: &[u32], v: usize, limit: usize) -> bool {
    let n = n_words(row, v);
    let Some(last) = n.checked_sub(1) else {
        return false;
    };
    let mut allowed = 0;
    for chunk in row[..last].chunks(256) {
        allowed += crate::simd::popcount(chunk);
        if allowed > limit {
            return true;
        }
    }
    allowed + word(row, last, v).count_ones() as usize > limit
}

/// Appends the allowed logits of `x`, in id order, to `vals` and their ids to `ids` (both
/// emptied first): the portable form of [`Elem::gather_allowed`].
pub(crate) fn gather_portable<T: Elem>(
    x: &[T],
    row: &[u32],
    vals: &mut Vec<T::C>,
    ids: &mut Vec<u32>,
) {
    let v = x.len();
    vals.clear();
    ids.clear();
    let n = n_words(row, v);
    // Structured-output masks are mostly zero words: skip them 8 at a time.
    let mut w = 0;
    while w < n {
        if w + 8 <= n && row[w..w + 8].iter().fold(0, |a, &b| a | b) == 0 {
            w += 8;
            continue;
        }
        let mut bits = word(row, w, v);
        let base = w * 32;
        if bits == u32::MAX {
            // 32 allowed ids in a row: one contiguous copy (dense masks are mostly these).
            vals.extend(x[base..base + 32].iter().map(|e| e.load()));
            ids.extend(base as u32..base as u32 + 32);
        }
        while bits != 0 && bits != u32::MAX {
            let j = base + bits.trailing_zeros() as usize;
            vals.push(x[j].load());
            ids.push(j as u32);
            bits &= bits - 1;
        }
        w += 1;
    }
}

/// Sets every disallowed id of the loaded row `y` to `-inf`.
pub(crate) fn ban_disallowed<F: Real>(y: &mut [F], row: &[u32]) {
    let v = y.len();
    let n = n_words(row, v);
    for (w, chunk) in y.chunks_mut(32).enumerate() {
        let bits = if w < n { word(row, w, v) } else { 0 };
        if bits == u32::MAX {
            continue;
        }
        for (b, e) in chunk.iter_mut().enumerate() {
            if bits >> b & 1 == 0 {
                *e = F::neg_infinity();
            }
        }
    }
}

/// A gathered row seen by id: what bias, bans, penalties and DRY read and write. A
/// disallowed id reads `-inf` and ignores writes (every one of those stages leaves `-inf`
/// where it is, so dropping the write is exact).
pub(crate) struct Gathered<'a, F> {
    /// The allowed logits, in id order.
    pub(crate) vals: &'a mut [F],
    /// Their ids (ascending).
    pub(crate) ids: &'a [u32],
}

impl<F: Real> Logits<F> for Gathered<'_, F> {
    #[inline(always)]
    fn get(&self, j: usize) -> F {
        match self.ids.binary_search(&(j as u32)) {
            Ok(p) => self.vals[p],
            Err(_) => F::neg_infinity(),
        }
    }
    #[inline(always)]
    fn set(&mut self, j: usize, v: F) {
        if let Ok(p) = self.ids.binary_search(&(j as u32)) {
            self.vals[p] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elem::Elem;

    fn mask_of(allowed_ids: &[usize], words: usize) -> Vec<u32> {
        let mut m = vec![0u32; words];
        for &j in allowed_ids {
            if j / 32 < words {
                m[j / 32] |= 1 << (j % 32);
            }
        }
        m
    }

    fn gathered(x: &[f32], m: &[u32]) -> (Vec<f32>, Vec<u32>) {
        let (mut vals, mut ids) = (Vec::new(), Vec::new());
        f32::gather_allowed(x, m, &mut vals, &mut ids);
        let (mut pv, mut pi) = (Vec::new(), Vec::new());
        gather_portable(x, m, &mut pv, &mut pi);
        assert_eq!(
            (&vals, &ids),
            (&pv, &pi),
            "SIMD and portable gathers differ"
        );
        (vals, ids)
    }

    #[test]
    fn bit_order_short_rows_and_padding_bits() {
        let v = 70; // 3 words, the last one partial
        let x: Vec<f32> = (0..v).map(|j| j as f32).collect();
        let want = [0u32, 1, 31, 32, 63, 64, 69];
        let m = mask_of(&want.map(|j| j as usize), 3);
        assert_eq!(gathered(&x, &m).1, want);
        // Bits past V are ignored; a short mask bans what it does not reach.
        let mut m2 = m.clone();
        m2[2] |= 1 << 20; // id 84 >= V
        assert_eq!(gathered(&x, &m2).1, want);
        assert_eq!(gathered(&x, &m[..2]).1, &want[..5]);
        assert!(gathered(&x, &[]).1.is_empty());
    }

    #[test]
    fn gather_and_ban_agree_and_gathered_maps_ids() {
        for v in [100usize, 1000, 4133] {
            let x: Vec<f32> = (0..v).map(|j| j as f32 * 0.5 - 3.0).collect();
            let ids_in: Vec<usize> = (0..v)
                .filter(|j| (j * 7919) % 13 < 3 || j / 32 == 1)
                .collect();
            let mut m = mask_of(&ids_in, v.div_ceil(32));
            let zero = 5 % m.len();
            m[zero] = 0;
            let (mut vals, ids) = gathered(&x, &m);
            let mut y = x.clone();
            ban_disallowed(&mut y, &m);
            let kept: Vec<(u32, f32)> = (0..v)
                .filter(|&j| y[j].is_finite())
                .map(|j| (j as u32, y[j]))
                .collect();
            assert_eq!(
                kept,
                ids.iter()
                    .copied()
                    .zip(vals.iter().copied())
                    .collect::<Vec<_>>()
            );
            let mut g = Gathered {
                vals: &mut vals,
                ids: &ids,
            };
            for (j, &yj) in y.iter().enumerate() {
                assert_eq!(g.get(j), yj, "{j}");
            }
            let (a, b) = (
                ids[0] as usize,
                (0..v).find(|&j| !y[j].is_finite()).unwrap(),
            );
            g.set(a, 7.0);
            g.set(b, 7.0); // disallowed: stays -inf
            assert_eq!(g.get(a), 7.0);
            assert_eq!(g.get(b), f32::NEG_INFINITY);
        }
    }

    /// The route check against a bit-by-bit count: at, just below and far from the count,
    /// on short masks and bits past V.
    #[test]
    fn allows_more_than_counts_ids_below_v() {
        let mut rnd = crate::test_util::uniforms(3);
        for case in 0..40 {
            let v = [70usize, 1000, 9000, 40_000][case % 4];
            let words = v.div_ceil(32) - usize::from(case % 3 == 0);
            let density = [0.5, 0.01, 1.0, 0.0, 0.9][case % 5];
            let m: Vec<u32> = (0..words)
                .map(|_| (0..32).fold(0u32, |a, b| a | u32::from(rnd() < density) << b))
                .collect();
            let n = (0..v)
                .filter(|&j| j / 32 < m.len() && m[j / 32] >> (j % 32) & 1 == 1)
                .count();
            for limit in [0, n.saturating_sub(1), n, n + 1, v / 16, v] {
                assert_eq!(
                    allows_more_than(&m, v, limit),
                    n > limit,
                    "case {case} {limit}"
                );
            }
        }
    }

    /// The masked scan equals the unmasked scan of the row with the disallowed ids banned:
    /// candidates and NaN flag, with NaN under disallowed bits (never read), short masks and
    /// rows that end mid-vector and mid-word.
    #[test]
    fn masked_scan_equals_scan_of_banned_row() {
        let mut rnd = crate::test_util::uniforms(17);
        for case in 0..48 {
            let v = [100usize, 1000, 4133, 4096, 7, 65][case % 6];
            let x: Vec<f32> = (0..v)
                .map(|_| ((rnd() * 64.0).floor() / 8.0) as f32)
                .collect();
            let density = [0.5, 0.9, 0.05, 1.0][case % 4];
            let words = v.div_ceil(32) - usize::from(case % 5 == 0 && v > 64);
            let mut m: Vec<u32> = (0..words)
                .map(|_| (0..32).fold(0u32, |a, b| a | u32::from(rnd() < density) << b))
                .collect();
            let mut y = x.clone();
            // A NaN under a disallowed bit is never read; one under an allowed bit is seen.
            let nan_at = (rnd() * v as f64) as usize;
            y[nan_at] = f32::NAN;
            let allowed = nan_at / 32 < m.len() && m[nan_at / 32] >> (nan_at % 32) & 1 == 1;
            if case % 3 == 0 && nan_at / 32 < m.len() {
                m[nan_at / 32] &= !(1 << (nan_at % 32));
            }
            let seen = case % 3 != 0 && allowed;
            let k = [1usize, 5, 50][case % 3];
            let mut banned = y.clone();
            ban_disallowed(&mut banned, &m);
            let (mut c1, mut s1, mut c2, mut s2) = (vec![], vec![], vec![], vec![]);
            let nan1 = f32::top_k_scan_masked(&y, &m, k, &mut c1, &mut s1);
            let (nan2, _) = f32::top_k_scan(&banned, k, &mut c2, &mut s2, None);
            assert_eq!(nan1, seen, "case {case}");
            assert_eq!(nan2, seen, "case {case}");
            if !seen {
                let key = |c: &mut Vec<(f32, u32)>| c.sort_by_key(|p| p.1);
                key(&mut c1);
                key(&mut c2);
                assert_eq!(c1, c2, "case {case}");
            }
        }
    }

    /// For callgrind or a quick timing: the top-k scan of 64 rows of 128,256 logits, unmasked
    /// and under a random half-vocabulary mask (`cargo test --release --lib masked_scan_probe
    /// -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn masked_scan_probe() {
        let (v, b) = (128_256usize, 64usize);
        let mut rnd = crate::test_util::uniforms(5);
        let rows: Vec<Vec<f32>> = (0..b)
            .map(|_| (0..v).map(|_| (rnd() * 8.0) as f32).collect())
            .collect();
        let masks: Vec<Vec<u32>> = (0..b)
            .map(|_| {
                (0..v.div_ceil(32))
                    .map(|_| (rnd() * 4294967296.0) as u32)
                    .collect()
            })
            .collect();
        let (mut c, mut s) = (Vec::new(), Vec::new());
        let mut best = [f64::INFINITY; 3];
        for _ in 0..20 {
            let t = std::time::Instant::now();
            for r in &rows {
                f32::top_k_scan(r, 50, &mut c, &mut s, None);
            }
            best[0] = best[0].min(t.elapsed().as_secs_f64());
            let t = std::time::Instant::now();
            for (r, m) in rows.iter().zip(&masks) {
                f32::top_k_scan_masked(r, m, 50, &mut c, &mut s);
            }
            best[1] = best[1].min(t.elapsed().as_secs_f64());
            let t = std::time::Instant::now();
            let mut n = 0;
            for m in &masks {
                n += usize::from(allows_more_than(m, v, v / 16));
            }
            assert_eq!(n, b);
            best[2] = best[2].min(t.elapsed().as_secs_f64());
        }
        let us = best.map(|t| t * 1e6 / b as f64);
        println!(
            "per row: scan {:.2} us, masked scan {:.2} us ({:.3}x), route check {:.2} us",
            us[0],
            us[1],
            us[1] / us[0],
            us[2]
        );
    }
}
