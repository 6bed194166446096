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
fn word(row: &[u32], w: usize, v: usize) -> u32 {
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
fn n_words(row: &[u32], v: usize) -> usize {
    row.len().min(v.div_ceil(32))
}

/// Whether id `j` (below `v`) is allowed.
#[inline(always)]
pub(crate) fn allowed(row: &[u32], j: usize) -> bool {
    row.get(j / 32).is_some_and(|&x| x >> (j % 32) & 1 == 1)
}

/// The number of allowed ids below `v`.
pub(crate) fn count(row: &[u32], v: usize) -> usize {
    (0..n_words(row, v))
        .map(|w| word(row, w, v).count_ones() as usize)
        .sum()
}

/// Copies the allowed logits of `x`, in id order, into `vals` and their ids into `ids`; and
/// into `prefix` the number of allowed ids before each word (for [`Gathered`]).
pub(crate) fn gather<T: Elem>(
    x: &[T],
    row: &[u32],
    vals: &mut Vec<T::C>,
    ids: &mut Vec<u32>,
    prefix: &mut Vec<u32>,
) {
    let v = x.len();
    vals.clear();
    ids.clear();
    prefix.clear();
    for w in 0..n_words(row, v) {
        prefix.push(ids.len() as u32);
        let mut bits = word(row, w, v);
        if bits == u32::MAX {
            // A run of 32 allowed ids: one contiguous copy (dense masks are mostly these).
            let base = w * 32;
            vals.extend(x[base..base + 32].iter().map(|e| e.load()));
            ids.extend(base as u32..base as u32 + 32);
            continue;
        }
        while bits != 0 {
            let j = w * 32 + bits.trailing_zeros() as usize;
            vals.push(x[j].load());
            ids.push(j as u32);
            bits &= bits - 1;
        }
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
    pub(crate) vals: &'a mut [F],
    pub(crate) row: &'a [u32],
    /// Allowed ids before each word.
    pub(crate) prefix: &'a [u32],
}

impl<F: Real> Gathered<'_, F> {
    /// The position of allowed id `j` in the gathered row.
    #[inline(always)]
    fn pos(&self, j: usize) -> Option<usize> {
        let w = j / 32;
        if w >= self.prefix.len() || !allowed(self.row, j) {
            return None;
        }
        let below = self.row[w] & ((1u32 << (j % 32)) - 1);
        Some(self.prefix[w] as usize + below.count_ones() as usize)
    }
}

impl<F: Real> Logits<F> for Gathered<'_, F> {
    #[inline(always)]
    fn get(&self, j: usize) -> F {
        self.pos(j).map_or(F::neg_infinity(), |p| self.vals[p])
    }
    #[inline(always)]
    fn set(&mut self, j: usize, v: F) {
        if let Some(p) = self.pos(j) {
            self.vals[p] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_of(v: usize, allowed_ids: &[usize], words: usize) -> Vec<u32> {
        let mut m = vec![0u32; words];
        for &j in allowed_ids {
            if j / 32 < words {
                m[j / 32] |= 1 << (j % 32);
            }
        }
        let _ = v;
        m
    }

    #[test]
    fn bit_order_short_rows_and_padding_bits() {
        let v = 70; // 3 words, the last one partial
        let ids = [0, 1, 31, 32, 63, 64, 69];
        let m = mask_of(v, &ids, 3);
        for j in 0..v {
            assert_eq!(allowed(&m, j), ids.contains(&j), "{j}");
        }
        assert_eq!(count(&m, v), ids.len());
        // Bits past V are ignored; a short mask bans what it does not reach.
        let mut m2 = m.clone();
        m2[2] |= 1 << 20; // id 84 >= V
        assert_eq!(count(&m2, v), ids.len());
        assert_eq!(count(&m[..2], v), 5);
        assert_eq!(count(&[], v), 0);
    }

    #[test]
    fn gather_and_ban_agree_and_gathered_maps_ids() {
        let v = 100;
        let x: Vec<f32> = (0..v).map(|j| j as f32 * 0.5 - 3.0).collect();
        let ids_in = [3usize, 4, 32, 33, 34, 35, 64, 99];
        let mut m = mask_of(v, &ids_in, 4);
        m[1] = u32::MAX; // a full word takes the run copy
        let (mut vals, mut ids, mut prefix) = (Vec::new(), Vec::new(), Vec::new());
        gather(&x[..], &m, &mut vals, &mut ids, &mut prefix);
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
            row: &m,
            prefix: &prefix,
        };
        for j in 0..v {
            assert_eq!(g.get(j), y[j], "{j}");
        }
        g.set(64, 7.0);
        g.set(5, 7.0); // disallowed: stays -inf
        assert_eq!(g.get(64), 7.0);
        assert_eq!(g.get(5), f32::NEG_INFINITY);
    }
}
