//! Softmax pieces: the row maximum, the unnormalised weights of the kept tokens, and
//! log-probabilities for the outputs.
//!
//! Loops run over fixed-width lane arrays so the compiler emits SIMD without fast-math: each
//! lane keeps its own running max or sum (float addition is not associative, so a plain
//! `.sum()` would stay scalar). Sums accumulate in `f64` lanes, so the weights of a 150k-token
//! row add up without visible rounding.

use crate::elem::{Elem, Real};

/// SIMD lanes of the lane arrays (one AVX-512 register of `f32`).
pub const LANES: usize = 16;
/// Tokens per block: the draw finds its block from the block sums, then scans one block.
pub const BLOCK: usize = 1024;

/// `(max, has_nan)` of a row (`-inf` for an empty or all-masked row).
#[inline(always)]
pub fn max_nan<F: Real>(y: &[F]) -> (F, bool) {
    max_nan_by(y, |v| v)
}

/// [`max_nan`] of a row stored as `Y`, widened by `load` in the same loop.
#[inline(always)]
pub fn max_nan_by<Y: Copy, F: Real>(y: &[Y], load: impl Fn(Y) -> F) -> (F, bool) {
    let mut mx = [F::neg_infinity(); LANES];
    let mut bad = [0u32; LANES];
    let mut chunks = y.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let v = load(c[l]);
            bad[l] |= v.is_nan() as u32;
            mx[l] = if v > mx[l] { v } else { mx[l] };
        }
    }
    let mut m = F::neg_infinity();
    let mut nan = bad.iter().any(|&b| b != 0);
    for &v in chunks.remainder() {
        let v = load(v);
        nan |= v.is_nan();
        m = if v > m { v } else { m };
    }
    (mx.iter().fold(m, |a, &b| if b > a { b } else { a }), nan)
}

/// Smallest finite value of a row (`+inf` if none).
#[inline(always)]
pub fn min_finite<F: Real>(y: &[F]) -> F {
    let mut mn = [F::infinity(); LANES];
    let mut chunks = y.chunks_exact(LANES);
    for c in &mut chunks {
        for l in 0..LANES {
            let v = c[l];
            mn[l] = if v < mn[l] && v > F::neg_infinity() {
                v
            } else {
                mn[l]
            };
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(F::infinity(), F::min);
    mn.iter().copied().fold(tail, F::min)
}

/// Index of the first element equal to `m` (the row maximum): the lowest id wins a tie.
#[inline(always)]
pub fn first_index_of<F: Real>(y: &[F], m: F) -> usize {
    first_index_of_by(y, |v| v, m)
}

/// [`first_index_of`] on a row stored as `Y`, widened by `load`.
#[inline(always)]
pub fn first_index_of_by<Y: Copy, F: Real>(y: &[Y], load: impl Fn(Y) -> F, m: F) -> usize {
    let mut chunks = y.chunks_exact(LANES);
    let mut base = 0;
    for c in &mut chunks {
        let mut hit = 0u32;
        for &v in c {
            hit |= (load(v) == m) as u32;
        }
        if hit != 0 {
            return base + c.iter().position(|&v| load(v) == m).unwrap_or(0);
        }
        base += LANES;
    }
    base + chunks
        .remainder()
        .iter()
        .position(|&v| load(v) == m)
        .unwrap_or(0)
}

/// `e^z` for `z <= 0`, with the FMA variant where the caller was compiled with FMA.
#[inline(always)]
pub(crate) fn exp_nonpos<F: Real, const FMA: bool>(z: F) -> F {
    if FMA {
        z.exp_nonpos_fma()
    } else {
        z.exp_nonpos()
    }
}

/// Sum of a slice in `f64`, over 32 independent lanes: they vectorise, and four vector
/// accumulators hide the latency of the adds (one chain would run at a quarter speed).
#[inline(always)]
pub fn sum_wide<F: Real>(w: &[F]) -> f64 {
    let mut acc = [0.0f64; 32];
    let mut chunks = w.chunks_exact(32);
    for c in &mut chunks {
        for l in 0..32 {
            acc[l] += c[l].wide();
        }
    }
    acc.iter().sum::<f64>() + chunks.remainder().iter().map(|v| v.wide()).sum::<f64>()
}

/// Writes `w[j] = exp((y[j] - m) * inv_t)` for tokens with `y[j] >= floor`, else 0; fills
/// `blocks` with the sum of each [`BLOCK`] of `w` and returns the total.
///
/// `m` is the finite row maximum, so every exponent is `<= 0` and the largest weight is
/// exactly 1. Subtracting `m` before scaling keeps a tiny temperature from overflowing. In the
/// portable loop the exp and the `f64` sum are separate loops over one L1-resident block,
/// because mixing `f32` and `f64` lanes in one auto-vectorised loop halves the vector width;
/// the AVX-512 kernel (FMA variant, f32 rows) fuses them by hand, with the same results.
#[inline(always)]
pub fn exp_weights<F: Real, const FMA: bool>(
    y: &[F],
    m: F,
    inv_t: F,
    floor: F,
    w: &mut Vec<F>,
    blocks: &mut Vec<f64>,
) -> f64 {
    F::exp_weights::<FMA, false>(y, m, inv_t, floor, w, blocks).0
}

/// [`exp_weights`] on a row as stored (`T::load` widens each element inside the loop, so a
/// bfloat16 row needs no conversion pass).
#[inline(always)]
pub fn exp_weights_elem<T: Elem, const FMA: bool>(
    x: &[T],
    m: T::C,
    inv_t: T::C,
    floor: T::C,
    w: &mut Vec<T::C>,
    blocks: &mut Vec<f64>,
) -> f64 {
    T::exp_weights_stored::<FMA>(x, m, inv_t, floor, w, blocks)
}

/// [`exp_weights`] on a row stored as `Y` (e.g. bfloat16), widened by `load` inside the same
/// loop, so a half-precision row needs no separate conversion pass; with `ENTROPY`, also the
/// entropy's sum and the smallest live logit of `stages::weights_entropy` (else 0 and
/// infinity), from a second loop over each L1-resident block. `Real::exp_weights`' default
/// and fallback.
#[inline(always)]
pub fn exp_weights_by<Y: Copy, F: Real, const FMA: bool, const ENTROPY: bool>(
    y: &[Y],
    load: impl Fn(Y) -> F + Copy,
    m: F,
    inv_t: F,
    floor: F,
    w: &mut Vec<F>,
    blocks: &mut Vec<f64>,
) -> (f64, f64, F) {
    w.resize(y.len(), F::zero());
    blocks.clear();
    let (mut total, mut xsum, mut low) = (0.0, 0.0, F::infinity());
    for (yb, wb) in y.chunks(BLOCK).zip(w.chunks_mut(BLOCK)) {
        for (o, &v) in wb.iter_mut().zip(yb) {
            let v = load(v);
            let e = exp_weight::<F, FMA>(v, m, inv_t);
            *o = if v >= floor { e } else { F::zero() };
        }
        let s = sum_wide(wb);
        blocks.push(s);
        total += s;
        if ENTROPY {
            let mut lanes = [F::zero(); 32];
            for (i, (&e, &v)) in wb.iter().zip(yb).enumerate() {
                let v = load(v);
                // A weight of 0 gives a product of 0 (an infinite exponent would give NaN).
                let x = ((v - m) * inv_t).max(F::min_value());
                let l = &mut lanes[i % 32];
                *l = if FMA { e.mul_add(x, *l) } else { e * x + *l };
                if v >= floor && v > F::neg_infinity() {
                    low = low.min(v);
                }
            }
            xsum += sum_wide(&lanes);
        }
    }
    (total, xsum, low)
}

/// The weight [`exp_weights_by`] gives a token of logit `v` (the same operations, bit for
/// bit; the AVX-512 exp pass too).
#[inline(always)]
pub fn exp_weight<F: Real, const FMA: bool>(v: F, m: F, inv_t: F) -> F {
    exp_nonpos::<F, FMA>((v - m) * inv_t)
}

/// `2^23 log2(e)`, `127 2^23` and the quadratic of [`approx_exp`].
pub(crate) const EST_SCALE: f32 = std::f32::consts::LOG2_E * 8_388_608.0;
pub(crate) const EST_BIAS: f32 = 1_065_353_216.0;
pub(crate) const EST_POLY: [f32; 3] = [0.337_185_06, -0.016_738_055, 0.681_280_6];
/// Relative error bound of [`approx_exp`] against the exp pass's weights: the quadratic's
/// 0.1728% (its maximum on a 4-million-point grid, evaluated in `f32`) plus the rounding of
/// the scaled argument (< 2e-5) and of the weights' own arguments, with room to spare.
pub(crate) const EST_REL: f64 = 0.0019;
/// Above this `(x - r) inv_t log2(e)`, a block's estimate is redone against its own maximum
/// (the terms would leave `f32`'s exponent range).
pub(crate) const EST_MAX_EXP2: f32 = 64.0;

/// An estimate of `exp((x - r) inv_t)` to 0.19%, several times cheaper than the exp
/// polynomial: with `y = (x - r) inv_t log2(e)`, `2^floor(y)` is the integer `y 2^23 + 127 2^23`
/// masked to its exponent bits (Schraudolph 1999) and `2^frac(y)` a quadratic in `1 + frac(y)`,
/// the same integer's mantissa bits under exponent 0. `c2` is `inv_t * EST_SCALE`. Terms below
/// `2^-126` give 0. The AVX-512 first scan computes the same, lane by lane.
#[inline(always)]
pub(crate) fn approx_exp(x: f32, r: f32, c2: f32) -> f32 {
    let y = (x - r).mul_add(c2, EST_BIAS).max(0.0);
    let i = y as i32 as u32;
    let mf = f32::from_bits((i & 0x007F_FFFF) | 0x3F80_0000);
    let two_floor = f32::from_bits(i & 0xFF80_0000);
    EST_POLY[0]
        .mul_add(mf, EST_POLY[1])
        .mul_add(mf, EST_POLY[2])
        * two_floor
}

/// The row's mass estimated during its first read, per [`BLOCK`]: `(r, s)` with `s` the sum of
/// [`approx_exp`] of the block's logits against the reference `r` (a maximum so far).
#[derive(Default)]
pub struct MassEstimate {
    pub(crate) blocks: Vec<(f32, f64)>,
}

/// Typical-p's mass and entropy sums of a row, taken in its first read (before its maximum
/// is known): per [`BLOCK`] `b`, `(r_b, S_b, X_b)` with `r_b` the largest logit of the
/// blocks up to `b` (this one included), `S_b` the sum of the block's live weights against it,
/// `w_j = exp(x_j)` with `x_j = (z_j - r_b) t` (`Real::exp_sum`: for `f32` a cheaper exp
/// than the weights', to ~4e-7), and `X_b` the sum of `w_j x_j`. Each sum runs in 32 lanes
/// of the compute type (token `i` of a block in lane `i % 32`, the products by fused
/// multiply-add), and the lanes are added in `f64` in lane order ([`sum_wide`]), so the
/// AVX-512 kernel (`simd::typical_scan_f32`) gives the same bits.
/// [`ShiftedSums::entropy`] rescales them to the row's maximum `m`: `total = sum_b S_b
/// e^(d_b)` with `d_b = (r_b - m) t`, and `sum_j w_j (z_j - m) t = sum_b e^(d_b) (X_b + d_b
/// S_b)`. A lane adds 32 terms, so in `f32` a sum's relative error is at most ~2e-6,
/// typically ~1e-7, as the entropy's (see `stages::weights_entropy`). Meaningful for a
/// finite maximum (a row with a `+inf` logit goes another way).
#[derive(Default)]
pub struct ShiftedSums<F> {
    pub(crate) blocks: Vec<(F, f64, f64)>,
    /// The largest logit (NaN aside: the largest live one when any is live, as a floor is
    /// at most that) and the smallest live one (`+inf` when none is).
    pub(crate) max: F,
    pub(crate) min: F,
}

impl<F: Real> ShiftedSums<F> {
    /// The total weight against the row's maximum (`exp((z - max) t)` summed), the entropy
    /// `-sum p log p` and the smallest live logit, for the inverse temperature `t` the sums
    /// were taken with.
    #[inline(always)]
    pub(crate) fn entropy(&self, t: F) -> (f64, f64, F) {
        let (m, t) = (self.max.wide(), t.wide());
        let (mut total, mut xsum) = (0.0f64, 0.0f64);
        for &(r, s, x) in &self.blocks {
            if s > 0.0 {
                let d = (r.wide() - m) * t;
                let e = d.exp();
                total += e * s;
                xsum += e * (x + d * s);
            }
        }
        (total, total.ln() - xsum / total, self.min)
    }
}

/// The portable [`ShiftedSums`] of `y` under `floor` (a token is live when `z >= floor` and
/// `z > -inf`) for the inverse temperature `inv_t`: `Real::typical_scan`'s default and
/// fallback.
#[inline(always)]
pub fn shifted_sums<F: Real, const FMA: bool>(
    y: &[F],
    inv_t: F,
    floor: F,
    out: &mut ShiftedSums<F>,
) {
    out.blocks.clear();
    let live = |v: F| v >= floor && v > F::neg_infinity();
    let (mut r, mut low) = (F::neg_infinity(), F::infinity());
    for yb in y.chunks(BLOCK) {
        r = yb.iter().fold(r, |a, &v| a.max(v));
        if r == F::neg_infinity() {
            out.blocks.push((r, 0.0, 0.0));
            continue;
        }
        let (mut sl, mut xl) = ([F::zero(); 32], [F::zero(); 32]);
        for (i, &v) in yb.iter().enumerate() {
            if !live(v) {
                continue;
            }
            low = low.min(v);
            let x = (v - r) * inv_t;
            let e = x.exp_sum::<FMA>();
            // A weight of 0 gives a product of 0 (a far logit's exponent is finite).
            let x = x.max(F::min_value());
            let l = i % 32;
            sl[l] = sl[l] + e;
            xl[l] = if FMA {
                e.mul_add(x, xl[l])
            } else {
                e * x + xl[l]
            };
        }
        out.blocks.push((r, sum_wide(&sl), sum_wide(&xl)));
    }
    out.max = r;
    out.min = low;
}

/// Weights 1 for tokens equal to `target`, 0 elsewhere: the distribution when the maximum is
/// `+inf` (the `+inf` tokens share the mass) or the temperature is too small to represent.
#[inline(always)]
pub fn indicator_weights<F: Real>(
    y: &[F],
    target: F,
    w: &mut Vec<F>,
    blocks: &mut Vec<f64>,
) -> f64 {
    w.clear();
    w.extend(
        y.iter()
            .map(|&v| if v == target { F::one() } else { F::zero() }),
    );
    block_sums(w, blocks)
}

/// Recomputes the block sums of `w`; returns the total.
#[inline(always)]
pub fn block_sums<F: Real>(w: &[F], blocks: &mut Vec<f64>) -> f64 {
    blocks.clear();
    blocks.extend(
        w.chunks(BLOCK)
            .map(|b| b.iter().map(|v| v.wide()).sum::<f64>()),
    );
    blocks.iter().sum()
}

/// The plain softmax of a raw row (temperature 1, nothing applied), as log-probabilities:
/// what `logprobs_mode="raw"`, the raw log-probability and the rank read.
#[derive(Debug, Clone, Copy)]
pub struct RawLogSoftmax {
    /// The row's maximum.
    m: f64,
    /// `log(sum exp(x - m))`; for a row with `+inf` logits, `log` of how many there are.
    lse: f64,
}

impl RawLogSoftmax {
    /// Loads `x` into `buf` (widened) and computes its log-normaliser.
    #[inline(always)]
    pub fn of<T: Elem, const FMA: bool>(x: &[T], buf: &mut Vec<T::C>) -> Self {
        T::load_row(x, buf);
        let (m, _) = max_nan(buf);
        if m == <T::C as num_traits::Float>::infinity() {
            let n_inf = buf.iter().filter(|&&v| v == m).count();
            return RawLogSoftmax {
                m: f64::INFINITY,
                lse: (n_inf as f64).ln(),
            };
        }
        if m == <T::C as num_traits::Float>::neg_infinity() {
            return RawLogSoftmax {
                m: f64::NEG_INFINITY,
                lse: 0.0,
            };
        }
        let mut acc = [0.0f64; LANES];
        let mut chunks = buf.chunks_exact(LANES);
        for c in &mut chunks {
            for l in 0..LANES {
                let z = c[l] - m;
                acc[l] += exp_nonpos::<_, FMA>(z).wide();
            }
        }
        let s: f64 = acc.iter().sum::<f64>()
            + chunks
                .remainder()
                .iter()
                .map(|&v| exp_nonpos::<_, FMA>(v - m).wide())
                .sum::<f64>();
        RawLogSoftmax {
            m: m.wide(),
            lse: s.ln(),
        }
    }

    /// The log-probability of a token of (widened) raw logit `v`.
    #[inline(always)]
    pub fn at<F: Real>(&self, v: F) -> f64 {
        if self.m == f64::INFINITY {
            return if v == F::infinity() {
                -self.lse
            } else {
                f64::NEG_INFINITY
            };
        }
        if self.m == f64::NEG_INFINITY {
            return f64::NEG_INFINITY;
        }
        // The same rounding as before the struct existed: (x - m) in the compute type.
        (v - F::of(self.m)).wide() - self.lse
    }
}

/// The `n` largest raw logits of the loaded row `buf`, most probable first, ties by lower id,
/// with their raw log-probabilities; `(-1, -inf)` past the vocabulary.
pub fn raw_top_logprobs<F: Real>(
    buf: &[F],
    raw: &RawLogSoftmax,
    n: usize,
    pairs: &mut Vec<(F, u32)>,
    sel: &mut Vec<F>,
) -> Vec<(i64, f64)> {
    let k = n.min(buf.len());
    let mut out = Vec::with_capacity(n);
    if k > 0 {
        crate::filter::top_k_candidates(buf, k, pairs, sel);
        let by_value = |a: &(F, u32), b: &(F, u32)| {
            b.0.partial_cmp(&a.0)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(a.1.cmp(&b.1))
        };
        pairs.sort_unstable_by(by_value);
        out.extend(pairs.iter().take(k).map(|&(v, j)| (j as i64, raw.at(v))));
    }
    out.resize(n, (-1, f64::NEG_INFINITY));
    out
}

/// The `n` most probable of the `(weight, id)` pairs (weight > 0), most probable first, ties
/// by lower id, as `(id, log(weight / total))`; slots past the kept set are `(-1, -inf)`.
pub fn top_logprobs<F: Real>(pairs: &mut [(F, u32)], total: f64, n: usize) -> Vec<(i64, f64)> {
    let mut out = Vec::with_capacity(n);
    if n == 0 {
        return out;
    }
    let by_prob = |a: &(F, u32), b: &(F, u32)| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.1.cmp(&b.1))
    };
    let k = n.min(pairs.len());
    if k > 0 && k < pairs.len() {
        pairs.select_nth_unstable_by(k - 1, by_prob);
    }
    let head = &mut pairs[..k];
    head.sort_unstable_by(by_prob);
    out.extend(
        head.iter()
            .filter(|p| p.0 > F::zero())
            .map(|&(w, j)| (j as i64, (w.wide() / total).ln())),
    );
    out.resize(n, (-1, f64::NEG_INFINITY));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `approx_exp`, rescaled from its reference to the row's maximum, is within `EST_REL` of
    /// the weight the exp pass computes, over the whole normal range of weights.
    #[test]
    fn approx_exp_is_within_its_stated_error() {
        for (inv_t, m, r) in [
            (1.0f32, 3.0f32, 3.0f32),
            (0.3, 10.0, 7.5),
            (2.5, -4.0, -9.0),
        ] {
            let c2 = inv_t * EST_SCALE;
            let scale = ((r as f64 - m as f64) * inv_t as f64).exp();
            for i in 0..200_000 {
                let x = m - (i as f32) * (100.0 / inv_t) / 200_000.0;
                let w = exp_weight::<f32, true>(x, m, inv_t) as f64;
                let a = approx_exp(x, r, c2) as f64 * scale;
                if w > 1e-36 {
                    assert!(
                        (a / w - 1.0).abs() <= EST_REL,
                        "{inv_t} {m} {r} x {x}: {a} {w}"
                    );
                } else {
                    assert!(a <= 1e-35, "{inv_t} {m} {r} x {x}: {a} {w}");
                }
            }
        }
    }

    /// The AVX-512 exp pass (taken by `exp_weights` / `exp_weights_elem` with FMA on such a
    /// CPU) gives the portable FMA loop's weights and block sums bit for bit, for f32 and
    /// bf16 rows: every length class of the tail, floors, -inf and underflowing logits.
    #[test]
    fn simd_exp_pass_equals_the_portable_loop() {
        let mut rnd = crate::test_util::uniforms(0x2545_f491_4f6c_dd1du64);
        for n in [1, 15, 16, 33, 1023, 1024, 1057, 5000, 40_000] {
            let y: Vec<f32> = (0..n)
                .map(|_| match (rnd() * 10.0) as u32 {
                    0 => f32::NEG_INFINITY,
                    1 => -200.0 * rnd() as f32,
                    _ => 30.0 * (rnd() as f32 - 0.5),
                })
                .collect();
            let m = y.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let bf: Vec<half::bf16> = y.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let mb = bf
                .iter()
                .map(|v| v.to_f32())
                .fold(f32::NEG_INFINITY, f32::max);
            for (inv_t, floor) in [(1.0f32, f32::NEG_INFINITY), (1.7, -3.0), (0.05, 2.0)] {
                let (mut w0, mut b0, mut w1, mut b1) = (vec![], vec![], vec![], vec![]);
                let t0 = exp_weights_by::<f32, f32, true, false>(
                    &y,
                    |v| v,
                    m,
                    inv_t,
                    floor,
                    &mut w0,
                    &mut b0,
                )
                .0;
                let t1 = exp_weights::<f32, true>(&y, m, inv_t, floor, &mut w1, &mut b1);
                let bits = |w: &[f32]| w.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&w0),
                    bits(&w1),
                    "f32 n {n} inv_t {inv_t} floor {floor}"
                );
                assert_eq!(
                    (t0, &b0),
                    (t1, &b1),
                    "f32 n {n} inv_t {inv_t} floor {floor}"
                );
                let load = |v: half::bf16| v.to_f32();
                let t0 = exp_weights_by::<_, f32, true, false>(
                    &bf, load, mb, inv_t, floor, &mut w0, &mut b0,
                )
                .0;
                let t1 =
                    exp_weights_elem::<half::bf16, true>(&bf, mb, inv_t, floor, &mut w1, &mut b1);
                assert_eq!(
                    bits(&w0),
                    bits(&w1),
                    "bf16 n {n} inv_t {inv_t} floor {floor}"
                );
                assert_eq!(
                    (t0, &b0),
                    (t1, &b1),
                    "bf16 n {n} inv_t {inv_t} floor {floor}"
                );
            }
        }
    }

    fn softmax(y: &[f64], t: f64) -> Vec<f64> {
        let (m, _) = max_nan(y);
        let mut w = Vec::new();
        let mut b = Vec::new();
        let s = exp_weights::<_, false>(y, m, 1.0 / t, f64::NEG_INFINITY, &mut w, &mut b);
        w.iter().map(|v| v / s).collect()
    }

    fn assert_rel(got: &[f64], want: &[f64], rel: f64) {
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() <= rel * w.abs(), "got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn temperature_seed_vectors() {
        // docs/design.md section 2, step 3.
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
    fn max_min_and_nan_detection() {
        let mut y: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
        y[77] = 5.0;
        y[3] = -7.0;
        y[50] = f32::NEG_INFINITY;
        assert_eq!(max_nan(&y), (5.0, false));
        assert_eq!(min_finite(&y), -7.0);
        assert_eq!(first_index_of(&y, 5.0), 77);
        y[98] = f32::NAN;
        assert!(max_nan(&y).1);
        y[98] = 0.0;
        y[20] = f32::NAN;
        assert!(max_nan(&y).1);
    }

    #[test]
    fn blocks_sum_to_total() {
        let y: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919) % 1000) as f32 / 100.0)
            .collect();
        let (m, _) = max_nan(&y);
        let mut w = Vec::new();
        let mut b = Vec::new();
        let s = exp_weights::<_, false>(&y, m, 1.0, 3.0, &mut w, &mut b);
        assert_eq!(b.len(), 5);
        assert!((b.iter().sum::<f64>() - s).abs() < 1e-9);
        let direct: f64 = y
            .iter()
            .filter(|&&v| v >= 3.0)
            .map(|&v| ((v - m) as f64).exp())
            .sum();
        assert!((s - direct).abs() < 1e-6 * direct, "{s} vs {direct}");
    }

    #[test]
    fn raw_logprob() {
        let at = |x: &[f32], id: usize| {
            let mut buf = Vec::new();
            let raw = RawLogSoftmax::of::<_, false>(x, &mut buf);
            raw.at(buf[id])
        };
        assert!((at(&[0.0, 0.0], 1) + 2f64.ln()).abs() < 1e-15);
        let x = [f32::INFINITY, 0.0, f32::INFINITY];
        assert!((at(&x, 0) + 2f64.ln()).abs() < 1e-15);
        assert_eq!(at(&x, 1), f64::NEG_INFINITY);
        let mut buf = Vec::new();
        let x64 = [0.0f64, 0.0];
        let raw = RawLogSoftmax::of::<_, false>(&x64, &mut buf);
        assert!((raw.at(buf[1]) + 2f64.ln()).abs() < 1e-15);
    }

    #[test]
    fn top_logprobs_order_and_padding() {
        let mut w = vec![(0.25f64, 0u32), (0.5, 1), (0.0, 2), (0.25, 3)];
        let t = top_logprobs(&mut w, 1.0, 5);
        assert_eq!(t[0], (1, 0.5f64.ln()));
        assert_eq!(t[1], (0, 0.25f64.ln()));
        assert_eq!(t[2], (3, 0.25f64.ln()));
        assert_eq!(t[3], (-1, f64::NEG_INFINITY));
        assert_eq!(top_logprobs(&mut w, 1.0, 1), vec![(1, 0.5f64.ln())]);
    }
}
