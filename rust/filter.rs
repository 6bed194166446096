//! The filters: top-k on the scaled logits, top-p and min-p on the probabilities. A filter
//! never empties a row: the most probable token always survives.
//!
//! None of them sorts the vocabulary. Top-k streams the row once against a running threshold
//! and only touches the few values above it. Top-p first looks among the 64 heaviest tokens
//! (where the nucleus of a peaked row lies); otherwise a strided sample brackets the cut, one
//! pass sums the exact mass above four thresholds, a second collects the one region that
//! holds the cut, and a quickselect on probability mass (radix-narrowed) finds it exactly.
//! A cut is applied by the draw itself ([`cut_block_sums`], [`Cut::keeps`]) unless the caller
//! wants the filtered row.

use crate::elem::Real;
use crate::softmax::{sum_wide, BLOCK, LANES};
use std::cmp::Ordering;

/// Calls `f` with each position of `items` whose item passes `pred`, in order, for scans
/// that find few of many (an id in a history, a bucket's tokens in a row): `pred` runs on 16
/// items at once without branches (it vectorizes), and only a chunk with a hit is walked.
#[inline(always)]
pub(crate) fn each_position_where<T: Copy>(
    items: &[T],
    pred: impl Fn(T) -> bool,
    mut f: impl FnMut(usize),
) {
    let mut chunks = items.chunks_exact(16);
    let mut base = 0;
    for c in &mut chunks {
        if c.iter().fold(false, |any, &x| any | pred(x)) {
            for (o, &x) in c.iter().enumerate() {
                if pred(x) {
                    f(base + o);
                }
            }
        }
        base += 16;
    }
    for (o, &x) in chunks.remainder().iter().enumerate() {
        if pred(x) {
            f(base + o);
        }
    }
}

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

/// Top-p on candidates sorted by probability ([`by_prob`]): the shortest prefix reaching
/// `top_p` of their mass.
#[inline(always)]
pub(crate) fn sorted_nucleus<F: Real>(pairs: &mut Vec<(F, u32)>, top_p: f64) {
    let target = top_p * pairs.iter().map(|c| c.0.wide()).sum::<f64>();
    let mut acc = 0.0;
    let mut cut = pairs.len();
    for (n, c) in pairs.iter().enumerate() {
        acc += c.0.wide();
        if acc >= target {
            cut = n + 1;
            break;
        }
    }
    pairs.truncate(cut);
}

/// Keeps the `(value, id)` pairs whose value is at least the `k`-th largest; returns it.
pub(crate) fn compact<F: Real>(cand: &mut Vec<(F, u32)>, k: usize, sel: &mut Vec<F>) -> F {
    sel.clear();
    sel.extend(cand.iter().map(|c| c.0));
    let (_, kth, _) = sel.select_nth_unstable_by(k - 1, desc);
    let t = *kth;
    // Branch-free: a scan drops about three candidates in four, in no predictable order
    // (`retain`'s branch mispredicted on about half of them: most of a compaction's time).
    let mut kept = 0;
    for i in 0..cand.len() {
        let c = cand[i];
        cand[kept] = c;
        kept += (c.0 >= t) as usize;
    }
    cand.truncate(kept);
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
    F::top_k_scan(y, k, cand, sel, None).0
}

/// The portable loop of [`top_k_candidates`] on a row stored as `Y`, widened by `load` as it
/// is read (`Real::top_k_scan`'s default and fallback).
#[inline(always)]
pub(crate) fn top_k_portable<Y: Copy, F: Real>(
    y: &[Y],
    load: impl Fn(Y) -> F,
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
            let v = load(v);
            hit |= (v >= thr) as u32;
            bad |= v.is_nan() as u32;
        }
        if hit != 0 {
            for (l, &v) in c.iter().enumerate() {
                let v = load(v);
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
        let v = load(v);
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

/// Above this many pairs, [`mass_select`] first narrows by a histogram of mass.
const RADIX_MIN: usize = 512;
/// Buckets of that histogram.
const RADIX_BUCKETS: usize = 1024;

/// One histogram pass of mass over the weights' bit patterns (which order non-negative floats):
/// finds the bucket where the cumulative mass from the top reaches `target`, moves its pairs to
/// the front and returns their number and the mass still needed among them. Equal weights share
/// a bucket, so the tie order is left to the caller. `None` when it cannot narrow (one bucket,
/// or rounding leaves the target above the total).
fn radix_narrow<F: Real>(pairs: &mut [(F, u32)], target: f64) -> Option<(usize, f64)> {
    let (kmin, kmax) = pairs.iter().fold((u64::MAX, 0u64), |(a, b), p| {
        let k = p.0.key();
        (a.min(k), b.max(k))
    });
    let span = kmax - kmin;
    if span == 0 {
        return None;
    }
    let bits = 64 - span.leading_zeros();
    let shift = bits.saturating_sub(RADIX_BUCKETS.trailing_zeros());
    let mut hist = [0.0f64; RADIX_BUCKETS];
    for p in pairs.iter() {
        hist[((p.0.key() - kmin) >> shift) as usize] += p.0.wide();
    }
    let mut acc = 0.0;
    let mut found = None;
    for b in (0..RADIX_BUCKETS).rev() {
        if acc + hist[b] >= target && hist[b] > 0.0 {
            found = Some(b as u64);
            break;
        }
        acc += hist[b];
    }
    let b = found?;
    let mut n = 0;
    for j in 0..pairs.len() {
        if (pairs[j].0.key() - kmin) >> shift == b {
            pairs.swap(n, j);
            n += 1;
        }
    }
    Some((n, target - acc))
}

/// Finds the end of the shortest prefix, in [`by_prob`] order, of `pairs` whose weight
/// reaches `target`: returns that last pair. Expected linear time (quickselect on mass with a
/// three-way partition, so plateaus of equal weights cost one pass). If rounding leaves
/// `target` above the total, every pair is in the prefix.
pub fn mass_select<F: Real>(pairs: &mut [(F, u32)], target: f64) -> (F, u32) {
    if pairs.len() > RADIX_MIN {
        if let Some((n, rem)) = radix_narrow(pairs, target) {
            return mass_select(&mut pairs[..n], rem);
        }
    }
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

/// Tokens whose weights the nucleus cut finds exactly before estimating anything: a peaked
/// row (the common case) has its whole nucleus among them.
pub const HEAD: usize = 64;
/// Size of the strided sample that brackets the cut of a flat row.
const SAMPLE: usize = 4096;

/// Every how many tokens the nucleus cut samples a row of `n` weights.
fn sample_stride(n: usize) -> usize {
    (n / SAMPLE).max(1)
}

/// What [`top_p_cut`] leaves in its buffers besides the cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nucleus {
    /// `buf` holds every `(weight, id)` pair with weight at least the cut's (the whole
    /// nucleus): a caller can draw from `buf` instead of the row.
    Head,
    /// `buf` holds every pair whose weight lies in the region around the cut that the last
    /// pass collected, and `blocks` the exact mass of each [`BLOCK`] above that region:
    /// [`region_block_sums`] turns them into the kept block sums without another pass.
    Region,
}

/// Nucleus cut on a dense weight row summing to `total`: keeps the shortest prefix, by
/// decreasing weight and ties by lower id, whose mass reaches `p * total`. The [`Nucleus`]
/// says what `buf` (and `blocks`) hold afterwards.
///
/// With `head_ready`, `buf` holds on entry the ids (with any values) of every token whose
/// logit is at least the [`HEAD`]-th largest, found by the caller in its first read of the
/// row; their weights are then read from `w` instead of scanning it.
///
/// First the [`HEAD`] heaviest tokens are found by the streaming top-k; if they hold the
/// target mass, the cut is among them. Otherwise the cut lies below them and a strided sample
/// of the rest estimates it: a histogram of the sample (no sort) gives the rank where the
/// sample holds the needed share of mass, and thresholds 3 binomial standard deviations
/// either side plus two inner splits. One exact pass sums the mass above each threshold,
/// which names the region holding the cut; a second pass collects that region's tokens and a
/// quickselect on mass (radix-narrowed) finds the exact cut among them.
// The four buffers are the pipeline's scratch, shared with its other stages.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn top_p_cut<F: Real>(
    w: &[F],
    total: f64,
    p: f64,
    head_ready: bool,
    buf: &mut Vec<(F, u32)>,
    sel: &mut Vec<F>,
    sample: &mut Vec<u64>,
    blocks: &mut Vec<f64>,
) -> (Cut<F>, Nucleus) {
    let target = p * total;
    let n = w.len();
    if head_ready {
        for q in buf.iter_mut() {
            q.0 = w[q.1 as usize];
        }
    } else {
        top_k_candidates(w, HEAD.min(n), buf, sel);
    }
    let head: f64 = buf.iter().map(|q| q.0.wide()).sum();
    let head_min = buf.iter().fold(F::infinity(), |a, q| a.min(q.0));
    if head >= target || buf.len() == n {
        let (tau, id) = mass_select(buf, target);
        if tau > head_min || !head_ready || buf.len() == n {
            return (Cut { tau, tie_max: id }, Nucleus::Head);
        }
        // Distinct logits can round to equal weights: a token outside the head may tie with
        // the cut, so find the head again on the weights themselves (rare).
        return top_p_cut(w, total, p, false, buf, sel, sample, blocks);
    }
    // Every token outside the head weighs at most `head_min`, and the cut is at most it.
    // Branch-free (which values pass follows no pattern), and with no length update per
    // value, so the strided loads overlap.
    let stride = sample_stride(n);
    sample.clear();
    sample.resize(n.div_ceil(stride), 0);
    let mut k = 0;
    for j in (0..n).step_by(stride) {
        let v = w[j];
        sample[k] = v.key();
        k += (v > F::zero() && v < head_min) as usize;
    }
    sample.truncate(k);
    // The sample stands for the mass outside the head: the cut should sit where its prefix
    // (from the heavy end) holds the share of that mass the cut still needs.
    let rest = (total - head).max(f64::MIN_POSITIVE);
    let hist = SampleHistogram::new::<F>(sample);
    let rank = hist.rank_of_mass_share((target - head) / rest);
    // Thresholds, heaviest first: the bracket (3 binomial standard deviations in sample
    // rank either side) and two inner splits, so the exact pass below leaves a third of it.
    let margin = 3.0 * (rank + 1.0).sqrt() + 4.0;
    let th = [
        hist.upper_value_at::<F>(rank - margin).min(head_min),
        hist.lower_value_at::<F>(rank - margin / 3.0).min(head_min),
        hist.lower_value_at::<F>(rank + margin / 3.0).min(head_min),
        hist.lower_value_at::<F>(rank + margin).min(head_min),
    ];
    let above = masses_above(w, &th);
    // The region (lower, upper] that holds the cut: mass above `upper` < target <= mass above
    // `lower`.
    let mut lower = F::zero();
    let mut upper = th[3];
    for i in 0..4 {
        if target <= above[i] {
            lower = th[i];
            upper = if i == 0 { head_min } else { th[i - 1] };
            break;
        }
    }
    let lo = F::from_key(lower.key() + 1);
    let (mut a, inside) = mass_above_and_collect(w, lo, upper, buf, blocks);
    if !(a < target && a + inside >= target) {
        // Only rounding at a threshold gets here: take the whole row, which is always right.
        let lo = F::min_positive_value();
        mass_above_and_collect(w, lo, F::infinity(), buf, blocks);
        if buf.is_empty() {
            let cut = Cut {
                tau: lo,
                tie_max: u32::MAX,
            };
            return (cut, Nucleus::Region);
        }
        a = 0.0;
    }
    let (tau, id) = mass_select(buf, target - a);
    (Cut { tau, tie_max: id }, Nucleus::Region)
}

/// Buckets of [`SampleHistogram`].
const SAMPLE_BUCKETS: usize = 1024;

/// Counts and mass of a sample of weights (given as [`Real::key`]s) in buckets of equal key
/// width: enough to read off ranks and mass shares without sorting the sample.
struct SampleHistogram {
    kmin: u64,
    shift: u32,
    /// Per bucket, heaviest first: (count, mass); the first `nb` are in use.
    buckets: [(u32, f64); SAMPLE_BUCKETS],
    nb: usize,
    mass: f64,
}

impl SampleHistogram {
    fn new<F: Real>(keys: &[u64]) -> Self {
        let (kmin, kmax) = keys
            .iter()
            .fold((u64::MAX, 0u64), |(a, b), &k| (a.min(k), b.max(k)));
        let span = kmax.saturating_sub(kmin);
        let bits = 64 - span.leading_zeros();
        let shift = bits.saturating_sub(SAMPLE_BUCKETS.trailing_zeros());
        let nb = if keys.is_empty() {
            0
        } else {
            (span >> shift) as usize + 1
        };
        let mut buckets = [(0u32, 0.0f64); SAMPLE_BUCKETS];
        for &k in keys {
            let b = &mut buckets[nb - 1 - ((k - kmin) >> shift) as usize];
            b.0 += 1;
            b.1 += F::from_key(k).wide();
        }
        // Summed here rather than in the loop above, where it would chain every add.
        let mass = buckets[..nb].iter().map(|b| b.1).sum();
        SampleHistogram {
            kmin,
            shift,
            buckets,
            nb,
            mass,
        }
    }

    /// The (fractional) rank, from the heavy end, where the prefix holds `share` of the mass.
    fn rank_of_mass_share(&self, share: f64) -> f64 {
        let goal = share * self.mass;
        let (mut acc, mut count) = (0.0, 0.0);
        for &(c, m) in &self.buckets[..self.nb] {
            if m > 0.0 && acc + m >= goal {
                return count + c as f64 * ((goal - acc) / m).clamp(0.0, 1.0);
            }
            acc += m;
            count += c as f64;
        }
        count
    }

    /// Index (heaviest first) of the bucket holding rank `r`, if the sample reaches it.
    fn bucket_at(&self, r: f64) -> Option<usize> {
        if r < 0.0 {
            return None;
        }
        let mut count = 0.0;
        for (i, &(c, _)) in self.buckets[..self.nb].iter().enumerate() {
            count += c as f64;
            if count > r {
                return Some(i);
            }
        }
        None
    }

    fn key_range(&self, i: usize) -> (u64, u64) {
        let from_low = (self.nb - 1 - i) as u64;
        let lo = self.kmin + (from_low << self.shift);
        (lo, lo + (1u64 << self.shift) - 1)
    }

    /// An upper bound of the value at rank `r` (`+inf` above the sample's top).
    fn upper_value_at<F: Real>(&self, r: f64) -> F {
        match self.bucket_at(r) {
            Some(i) => F::from_key(self.key_range(i).1),
            None if r < 0.0 => F::infinity(),
            None => F::zero(),
        }
    }

    /// A lower bound of the value at rank `r` (0 past the sample's end).
    fn lower_value_at<F: Real>(&self, r: f64) -> F {
        match self.bucket_at(r) {
            Some(i) => F::from_key(self.key_range(i).0),
            None if r < 0.0 => F::infinity(),
            None => F::zero(),
        }
    }
}

/// The exact mass of the weights above each threshold, in one pass.
#[inline(always)]
pub fn masses_above<F: Real>(w: &[F], th: &[F; 4]) -> [f64; 4] {
    F::masses_above(w, th)
}

/// The portable loop of [`masses_above`] (`Real::masses_above`'s default and fallback).
#[inline(always)]
pub(crate) fn masses_above_portable<F: Real>(w: &[F], th: &[F; 4]) -> [f64; 4] {
    let mut out = [0.0f64; 4];
    for block in w.chunks(BLOCK) {
        for (o, &t) in out.iter_mut().zip(th) {
            let mut lanes = [F::zero(); LANES];
            let mut chunks = block.chunks_exact(LANES);
            for c in &mut chunks {
                for l in 0..LANES {
                    lanes[l] = lanes[l] + if c[l] > t { c[l] } else { F::zero() };
                }
            }
            *o += sum_wide(&lanes)
                + chunks
                    .remainder()
                    .iter()
                    .filter(|&&v| v > t)
                    .map(|v| v.wide())
                    .sum::<f64>();
        }
    }
    out
}

/// One pass over `w`: the exact mass of the weights above `hi` (returned first, and per
/// [`BLOCK`] into `blocks`), and the `(weight, id)` pairs with `lo <= weight <= hi` collected
/// into `buf` (their mass second).
#[inline(always)]
pub fn mass_above_and_collect<F: Real>(
    w: &[F],
    lo: F,
    hi: F,
    buf: &mut Vec<(F, u32)>,
    blocks: &mut Vec<f64>,
) -> (f64, f64) {
    blocks.clear();
    F::mass_above_and_collect(w, lo, hi, buf, blocks)
}

/// The portable loop of [`mass_above_and_collect`] (`Real::mass_above_and_collect`'s default
/// and fallback); `blocks` is already cleared.
#[inline(always)]
pub(crate) fn mass_above_and_collect_portable<F: Real>(
    w: &[F],
    lo: F,
    hi: F,
    buf: &mut Vec<(F, u32)>,
    blocks: &mut Vec<f64>,
) -> (f64, f64) {
    buf.clear();
    buf.reserve(w.len());
    let out = buf.spare_capacity_mut();
    let mut k = 0usize;
    let mut above = [0.0f64; LANES];
    let mut a = 0.0f64;
    let mut base = 0u32;
    for block in w.chunks(BLOCK) {
        let mut tail = 0.0f64;
        let mut chunks = block.chunks_exact(LANES);
        for c in &mut chunks {
            let mut mask = 0u32;
            for l in 0..LANES {
                let v = c[l];
                above[l] += if v > hi { v.wide() } else { 0.0 };
                mask |= ((v >= lo && v <= hi) as u32) << l;
            }
            // Visit only the lanes inside the bracket: one bit per hit, no branch per value.
            while mask != 0 {
                let l = mask.trailing_zeros();
                out[k].write((c[l as usize], base + l));
                k += 1;
                mask &= mask - 1;
            }
            base += LANES as u32;
        }
        for &v in chunks.remainder() {
            if v > hi {
                tail += v.wide();
            } else if v >= lo {
                out[k].write((v, base));
                k += 1;
            }
            base += 1;
        }
        let s = above.iter().sum::<f64>() + tail;
        blocks.push(s);
        a += s;
        above = [0.0f64; LANES];
    }
    // SAFETY: the loops above initialised the first `k` slots of the spare capacity.
    unsafe { buf.set_len(k) };
    let inside = buf.iter().map(|q| q.0.wide()).sum();
    (a, inside)
}

/// Typical-p's key of a logit: `|c - v|` for a live token (`v >= lo`, finite), `+inf` for
/// the others (`stages::typical_threshold` says why it is the distance `|-log p - H|`).
#[derive(Debug, Clone, Copy)]
pub struct TypicalKey<F> {
    pub(crate) lo: F,
    pub(crate) c: F,
}

impl<F: Real> TypicalKey<F> {
    /// The key of logit `v`.
    #[inline(always)]
    pub(crate) fn of(&self, v: F) -> F {
        if v >= self.lo && v > F::neg_infinity() {
            (self.c - v).abs()
        } else {
            F::infinity()
        }
    }
}

/// A bracket `[b0, b1)` of scaled typical-p keys `key * scale` (`open`: no upper end) for
/// [`key_bracket`]; keys above `kmax` (the infinite ones) count nowhere.
#[derive(Debug, Clone, Copy)]
pub struct KeyBracket<F> {
    pub(crate) key: TypicalKey<F>,
    pub(crate) kmax: F,
    pub(crate) scale: F,
    pub(crate) b0: F,
    pub(crate) b1: F,
    pub(crate) open: bool,
}

impl<F: Real> KeyBracket<F> {
    /// The key of `v`, and whether it lies below the bracket, and inside it.
    #[inline(always)]
    pub(crate) fn place(&self, v: F) -> (F, bool, bool) {
        let k = self.key.of(v);
        let x = k * self.scale;
        let fin = k <= self.kmax;
        let inside = fin & (x >= self.b0) & ((x < self.b1) | self.open);
        (k, fin & (x < self.b0), inside)
    }
}

/// One read of the row `z` and its weights `w`: the weight of the tokens whose key lies
/// below the bracket `r`, per [`BLOCK`] into `blocks` (16 `f64` lanes each, so every kernel
/// sums alike) and in all (returned), and the `(key, id)` pairs of the tokens inside it, in
/// id order, into `buf`.
#[inline(always)]
pub(crate) fn key_bracket<F: Real>(
    z: &[F],
    w: &[F],
    r: &KeyBracket<F>,
    buf: &mut Vec<(F, u32)>,
    blocks: &mut Vec<f64>,
) -> f64 {
    buf.clear();
    blocks.clear();
    F::key_bracket(z, w, r, buf, blocks)
}

/// The portable loop of [`key_bracket`] (`Real::key_bracket`'s default and fallback); `buf`
/// and `blocks` are already cleared.
#[inline(always)]
pub(crate) fn key_bracket_portable<F: Real>(
    z: &[F],
    w: &[F],
    r: &KeyBracket<F>,
    buf: &mut Vec<(F, u32)>,
    blocks: &mut Vec<f64>,
) -> f64 {
    let mut total = 0.0;
    for (b, (zb, wb)) in z.chunks(BLOCK).zip(w.chunks(BLOCK)).enumerate() {
        let base = b * BLOCK;
        let mut under = [0.0f64; 16];
        let mut zc = zb.chunks_exact(16);
        let mut wc = wb.chunks_exact(16);
        for (c, (zs, ws)) in (&mut zc).zip(&mut wc).enumerate() {
            let mut any = false;
            for l in 0..16 {
                let (_, below, inside) = r.place(zs[l]);
                under[l] += (ws[l] * if below { F::one() } else { F::zero() }).wide();
                any |= inside;
            }
            if any {
                for (l, &v) in zs.iter().enumerate() {
                    let (k, _, inside) = r.place(v);
                    if inside {
                        buf.push((k, (base + 16 * c + l) as u32));
                    }
                }
            }
        }
        let at = base + zb.len() / 16 * 16;
        for (l, (&v, &wj)) in zc.remainder().iter().zip(wc.remainder()).enumerate() {
            let (k, below, inside) = r.place(v);
            if below {
                under[0] += wj.wide();
            }
            if inside {
                buf.push((k, (at + l) as u32));
            }
        }
        let sum = under.iter().sum::<f64>();
        blocks.push(sum);
        total += sum;
    }
    total
}

/// Zeroes the weights `w` of the tokens whose key (of `z`) is above `tau`, and sums
/// what is left per [`BLOCK`] into `blocks` (as `sum_wide` sums, bit for bit what the exp
/// pass would give the kept tokens); returns the total.
#[inline(always)]
pub(crate) fn keep_keys_within<F: Real>(
    w: &mut [F],
    z: &[F],
    key: &TypicalKey<F>,
    tau: F,
    blocks: &mut Vec<f64>,
) -> f64 {
    blocks.clear();
    F::keep_keys_within(w, z, key, tau, blocks)
}

/// Zeroes the weights `w` of the tokens that `keep(logit, weight)` rejects and sums what is
/// left per [`BLOCK`] into `blocks`, as [`weights`] fills them; returns the total. A stage
/// that is the last one keeps the weights it computed instead of cutting the row and having
/// [`weights`] compute them again.
#[inline(always)]
pub(crate) fn zero_weights_where<F: Real>(
    w: &mut [F],
    z: &[F],
    keep: impl Fn(F, F) -> bool,
    blocks: &mut Vec<f64>,
) -> f64 {
    blocks.clear();
    let mut kept = 0.0;
    for (wb, zb) in w.chunks_mut(BLOCK).zip(z.chunks(BLOCK)) {
        for (wj, &v) in wb.iter_mut().zip(zb) {
            *wj = if keep(v, *wj) { *wj } else { F::zero() };
        }
        let sum = sum_wide(wb);
        blocks.push(sum);
        kept += sum;
    }
    kept
}

/// The portable loop of [`keep_keys_within`] (`Real::keep_keys_within`'s default and
/// fallback); `blocks` is already cleared.
#[inline(always)]
pub(crate) fn keep_keys_within_portable<F: Real>(
    w: &mut [F],
    z: &[F],
    key: &TypicalKey<F>,
    tau: F,
    blocks: &mut Vec<f64>,
) -> f64 {
    zero_weights_where(w, z, |v, _| key.of(v) <= tau, blocks)
}

impl<F: Real> Cut<F> {
    /// Whether token `j` of weight `x` survives the cut and the min-p threshold `floor`.
    #[inline(always)]
    pub fn keeps(&self, x: F, j: u32, floor: F) -> bool {
        (x > self.tau || (x == self.tau && j <= self.tie_max)) && x >= floor
    }
}

/// The block sums of the weights that survive a cut and a min-p threshold, without touching
/// the row (the draw then applies the same test to the one block it scans); returns the mass
/// kept. Saves [`apply_cut`]'s write pass when nothing else reads the filtered row.
#[inline(always)]
pub fn cut_block_sums<F: Real>(w: &[F], cut: Cut<F>, floor: F, blocks: &mut Vec<f64>) -> f64 {
    blocks.clear();
    let mut total = 0.0;
    // Kept for sure: above the cut and at or above the floor. Weights equal to the cut's are
    // rare (exact ties) and are added one by one with their ids.
    let lower = if floor > cut.tau { floor } else { cut.tau };
    let strict = floor <= cut.tau;
    for (bi, wb) in w.chunks(BLOCK).enumerate() {
        let base = (bi * BLOCK) as u32;
        let mut acc = [0.0f64; 2 * LANES];
        let mut ties = false;
        let mut chunks = wb.chunks_exact(2 * LANES);
        for c in &mut chunks {
            // Three plain loops (select, widen-and-add, tie check) each vectorise; one fused
            // loop does not.
            let mut t = [F::zero(); 2 * LANES];
            for l in 0..2 * LANES {
                let x = c[l];
                let sure = if strict { x > lower } else { x >= lower };
                t[l] = if sure { x } else { F::zero() };
            }
            for l in 0..2 * LANES {
                acc[l] += t[l].wide();
            }
            let mut eq = 0u32;
            for &x in c {
                eq |= (x == cut.tau) as u32;
            }
            ties |= eq != 0;
        }
        let mut s = acc.iter().sum::<f64>();
        for &x in chunks.remainder() {
            let sure = if strict { x > lower } else { x >= lower };
            ties |= x == cut.tau;
            if sure {
                s += x.wide();
            }
        }
        if ties && strict {
            // Kept ties are the ones up to `tie_max`: a prefix of the block.
            let limit = (cut.tie_max as u64 + 1).saturating_sub(base as u64);
            let limit = limit.min(wb.len() as u64) as usize;
            let n_eq = wb[..limit].iter().filter(|&&x| x == cut.tau).count();
            s += n_eq as f64 * cut.tau.wide();
        }
        blocks.push(s);
        total += s;
    }
    total
}

/// The kept block sums of a cut that [`top_p_cut`] found in a [`Nucleus::Region`], into
/// `blocks` (which holds the mass above the region per [`BLOCK`], all of it kept): adds the
/// tokens of the region that the cut keeps. Returns the mass kept. Replaces
/// [`cut_block_sums`]'s pass over the row when no min-p floor applies.
#[inline(always)]
pub fn region_block_sums<F: Real>(blocks: &mut [f64], region: &[(F, u32)], cut: Cut<F>) -> f64 {
    for &(x, j) in region {
        if cut.keeps(x, j, F::zero()) {
            blocks[j as usize / BLOCK] += x.wide();
        }
    }
    blocks.iter().sum()
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
            *v = if cut.keeps(x, base + l as u32, floor) {
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
    use crate::test_util::uniforms;

    /// `top_p_cut` then `apply_cut` on a whole row of weights: the kept weights, the rest 0.
    fn dense_top_p(w: &[f64], p: f64) -> Vec<f64> {
        let mut w = w.to_vec();
        let total: f64 = w.iter().sum();
        let mut buf = Vec::new();
        let (cut, _) = top_p_cut(
            &w,
            total,
            p,
            false,
            &mut buf,
            &mut Vec::new(),
            &mut Vec::new(),
            &mut Vec::new(),
        );
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

    /// f32 rows large enough for every stage of the cut (head, sampled bracket, the SIMD
    /// passes, radix narrowing), checked against the sort definition. Sums of f32 lanes round
    /// differently from the reference's f64 running sum, so a kept set may differ only where
    /// the reference's cumulative mass is within 1e-6 of the target.
    #[test]
    fn top_p_on_large_f32_rows_matches_the_sort_definition() {
        let mut rnd = uniforms(987_654_321);
        for case in 0..24 {
            let n = [5_000, 40_000, 130_000][case % 3];
            let kind = case / 3 % 4;
            let y: Vec<f64> = (0..n)
                .map(|_| {
                    let g = (0..4).map(|_| rnd()).sum::<f64>() - 2.0;
                    match kind {
                        0 => 3.0 * g,                                         // flat
                        1 => 3.0 * g + if rnd() < 3e-4 { 25.0 } else { 0.0 }, // peaked
                        2 => (4.0 * g).round(),                               // plateaus
                        _ => {
                            if rnd() < 0.3 {
                                f64::NEG_INFINITY
                            } else {
                                8.0 * g
                            }
                        }
                    }
                })
                .collect();
            let m = y.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let w: Vec<f32> = y.iter().map(|&v| ((v - m) as f32).exp()).collect();
            let total: f64 = w.iter().map(|&v| v as f64).sum();
            for p in [0.05, 0.5, 0.9, 0.99] {
                let (mut buf, mut sel, mut keys) = (Vec::new(), Vec::new(), Vec::new());
                let mut blocks = Vec::new();
                let (cut, nucleus) = top_p_cut(
                    &w,
                    total,
                    p,
                    false,
                    &mut buf,
                    &mut sel,
                    &mut keys,
                    &mut blocks,
                );
                if nucleus == Nucleus::Region {
                    // The kept block sums from the region equal a pass over the row.
                    let kept = region_block_sums(&mut blocks, &buf, cut);
                    let mut want_blocks = Vec::new();
                    let want = cut_block_sums(&w, cut, 0.0, &mut want_blocks);
                    assert!((kept - want).abs() <= 1e-12 * want, "case {case} p {p}");
                    for (b, (x, y)) in blocks.iter().zip(&want_blocks).enumerate() {
                        assert!((x - y).abs() <= 1e-12 * want, "case {case} p {p} block {b}");
                    }
                }
                let ours: Vec<usize> = (0..n)
                    .filter(|&j| cut.keeps(w[j], j as u32, 0.0) && w[j] > 0.0)
                    .collect();
                let mut idx: Vec<usize> = (0..n).filter(|&j| w[j] > 0.0).collect();
                idx.sort_by(|&a, &b| w[b].partial_cmp(&w[a]).unwrap().then(a.cmp(&b)));
                let mut acc = 0.0;
                let mut want = idx.len();
                for (r, &j) in idx.iter().enumerate() {
                    acc += w[j] as f64;
                    if acc >= p * total {
                        want = r + 1;
                        break;
                    }
                }
                let mut want_set: Vec<usize> = idx[..want].to_vec();
                want_set.sort_unstable();
                if ours != want_set {
                    let near: f64 = idx[..ours.len().min(idx.len())]
                        .iter()
                        .map(|&j| w[j] as f64)
                        .sum();
                    assert!(
                        (near - p * total).abs() <= 1e-6 * total,
                        "case {case} n {n} kind {kind} p {p}: kept {} want {want}",
                        ours.len()
                    );
                }
            }
        }
    }

    #[test]
    fn cut_block_sums_agree_with_the_rewritten_row() {
        // Plateaus so the cut often falls on tied weights; floors above and below the cut.
        let w: Vec<f32> = (0..5000u32)
            .map(|j| [1.0f32, 0.5, 0.25, 0.125, 0.0][(j * 7919 % 23 % 5) as usize])
            .collect();
        for (tau, tie_max, floor) in [
            (0.25f32, 2500u32, 0.0f32),
            (0.25, 0, 0.0),
            (0.25, u32::MAX, 0.3),
            (0.5, 4999, 0.125),
            (0.0, u32::MAX, 0.2),
        ] {
            let cut = Cut { tau, tie_max };
            let mut want_blocks = Vec::new();
            let mut rewritten = w.clone();
            let want = apply_cut(&mut rewritten, cut, floor, &mut want_blocks);
            let mut blocks = Vec::new();
            let got = cut_block_sums(&w, cut, floor, &mut blocks);
            assert_eq!(got, want, "{tau} {tie_max} {floor}");
            assert_eq!(blocks, want_blocks, "{tau} {tie_max} {floor}");
        }
    }

    #[test]
    fn top_p_matches_the_sort_definition() {
        let mut rnd = uniforms(12345);
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
    #[allow(clippy::approx_constant)] // 6.28 is a docs/design.md seed vector, not tau
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
