//! Element types the kernels read natively, and the arithmetic type each one computes in.

use crate::filter::{
    keep_keys_within_portable, key_bracket_portable, mass_above_and_collect_portable,
    masses_above_portable, top_k_portable, KeyBracket, TypicalKey,
};
use crate::simd::{simd_level, Simd};
use crate::softmax::{exp_weights_by, shifted_sums, MassEstimate, ShiftedSums};
use half::slice::HalfFloatSliceExt;
use num_traits::Float;

/// The floating type a row is computed in: `f64` for `f64` logits, `f32` for everything else.
pub trait Real: Float + Default + Send + Sync + std::fmt::Debug + 'static + Elem<C = Self> {
    /// Converts from `f64` (rounding for `f32`).
    fn of(v: f64) -> Self;
    /// Widens to `f64`.
    fn wide(self) -> f64;
    /// `e^x` for `x <= 0`; `-inf` gives 0. The `f32` version is a branch-free polynomial that
    /// the compiler vectorises (std's `expf` is a libm call per element).
    fn exp_nonpos(self) -> Self;
    /// [`Real::exp_nonpos`] with fused multiply-adds: only for code compiled with the `fma`
    /// target feature (elsewhere `mul_add` is a libm call per element).
    fn exp_nonpos_fma(self) -> Self;
    /// `exp(self)` for `self <= 0`, for sums only (typical-p's `softmax::ShiftedSums`):
    /// `f32` takes [`exp_sum_f32`] (~4e-7, three operations fewer than the weights'
    /// exp), `f64` its weights' exp.
    #[inline(always)]
    fn exp_sum<const FMA: bool>(self) -> Self {
        crate::softmax::exp_nonpos::<Self, FMA>(self)
    }
    /// The bit pattern, which orders non-negative values like the values themselves (sorting
    /// integers is several times faster than sorting floats by a comparator).
    fn key(self) -> u64;
    /// Inverse of [`Real::key`].
    fn from_key(k: u64) -> Self;

    // The SIMD-able scans. Each default is the portable loop; a type with hand-written
    // kernels (`f32`: AVX-512, in `simd.rs`) overrides it, checks the CPU's level (detected
    // once, cached) and falls back to the default. Every kernel gives the portable result.

    /// [`crate::filter::top_k_candidates`] of `y`, returning (NaN seen, `est` filled). `est`
    /// (the inverse temperature and where to put the row's [`MassEstimate`]) is filled only
    /// by kernels that can do it in the same read; the default leaves it.
    #[inline(always)]
    fn top_k_scan(
        y: &[Self],
        k: usize,
        cand: &mut Vec<(Self, u32)>,
        sel: &mut Vec<Self>,
        est: Option<(f32, &mut MassEstimate)>,
    ) -> (bool, bool) {
        let _ = est;
        (top_k_portable(y, |v| v, k, cand, sel), false)
    }
    /// Whether [`Real::top_k_scan_masked`] has a kernel on this CPU (`f32` with AVX-512);
    /// elsewhere a masked row is gathered (`bitmask.rs`).
    #[inline(always)]
    fn scans_masked() -> bool {
        false
    }
    /// The candidates of [`Real::top_k_scan`] of `y` with the ids the token bitmask row
    /// `words` disallows read as `-inf`, in the same read (a kernel reads 16 mask bits with
    /// each 16 logits). Returns whether an allowed NaN was seen. The default masks a copy.
    fn top_k_scan_masked(
        y: &[Self],
        words: &[u32],
        k: usize,
        cand: &mut Vec<(Self, u32)>,
        sel: &mut Vec<Self>,
    ) -> bool {
        let mut masked = y.to_vec();
        crate::bitmask::ban_disallowed(&mut masked, words);
        Self::top_k_scan(&masked, k, cand, sel, None).0
    }
    /// [`crate::softmax::exp_weights`]: the weights of `y` under `floor` and their block sums;
    /// with `ENTROPY`, also the entropy's sum and the smallest live logit
    /// (`stages::weights_entropy`).
    #[inline(always)]
    fn exp_weights<const FMA: bool, const ENTROPY: bool>(
        y: &[Self],
        m: Self,
        inv_t: Self,
        floor: Self,
        w: &mut Vec<Self>,
        blocks: &mut Vec<f64>,
    ) -> (f64, f64, Self) {
        exp_weights_by::<Self, Self, FMA, ENTROPY>(y, |v| v, m, inv_t, floor, w, blocks)
    }
    /// Typical-p's first read of `y`: [`crate::filter::top_k_candidates`] (`k` of them, into
    /// `cand`) and the row's [`ShiftedSums`] under `floor` for the inverse temperature
    /// `inv_t`; returns whether the row holds a NaN. A kernel does both in one read.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn typical_scan<const FMA: bool>(
        y: &[Self],
        inv_t: Self,
        floor: Self,
        k: usize,
        cand: &mut Vec<(Self, u32)>,
        sel: &mut Vec<Self>,
        sums: &mut ShiftedSums<Self>,
    ) -> bool {
        shifted_sums::<Self, FMA>(y, inv_t, floor, sums);
        top_k_portable(y, |v| v, k, cand, sel)
    }
    /// [`crate::filter::masses_above`].
    #[inline(always)]
    fn masses_above(w: &[Self], th: &[Self; 4]) -> [f64; 4] {
        masses_above_portable(w, th)
    }
    /// [`crate::filter::mass_above_and_collect`] (`blocks` already cleared).
    #[inline(always)]
    fn mass_above_and_collect(
        w: &[Self],
        lo: Self,
        hi: Self,
        buf: &mut Vec<(Self, u32)>,
        blocks: &mut Vec<f64>,
    ) -> (f64, f64) {
        mass_above_and_collect_portable(w, lo, hi, buf, blocks)
    }
    /// [`crate::filter::key_bracket`] (`buf` and `blocks` already cleared).
    #[inline(always)]
    fn key_bracket(
        z: &[Self],
        w: &[Self],
        r: &KeyBracket<Self>,
        buf: &mut Vec<(Self, u32)>,
        blocks: &mut Vec<f64>,
    ) -> f64 {
        key_bracket_portable(z, w, r, buf, blocks)
    }
    /// [`crate::filter::keep_keys_within`] (`blocks` already cleared).
    #[inline(always)]
    fn keep_keys_within(
        w: &mut [Self],
        z: &[Self],
        key: &TypicalKey<Self>,
        tau: Self,
        blocks: &mut Vec<f64>,
    ) -> f64 {
        keep_keys_within_portable(w, z, key, tau, blocks)
    }
}

/// Whether the AVX-512 kernels may run (the level is detected once and cached).
#[inline(always)]
fn avx512() -> bool {
    simd_level() == Simd::Avx512
}

impl Real for f32 {
    #[inline(always)]
    fn of(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn wide(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn exp_nonpos(self) -> f32 {
        exp_f32(self)
    }
    #[inline(always)]
    fn exp_nonpos_fma(self) -> f32 {
        exp_f32_fma(self)
    }
    #[inline(always)]
    fn exp_sum<const FMA: bool>(self) -> f32 {
        exp_sum_f32::<FMA>(self)
    }
    #[inline(always)]
    fn key(self) -> u64 {
        self.to_bits() as u64
    }
    #[inline(always)]
    fn from_key(k: u64) -> f32 {
        f32::from_bits(k as u32)
    }
    #[inline(always)]
    fn top_k_scan(
        y: &[f32],
        k: usize,
        cand: &mut Vec<(f32, u32)>,
        sel: &mut Vec<f32>,
        est: Option<(f32, &mut MassEstimate)>,
    ) -> (bool, bool) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            let filled = est.is_some();
            // SAFETY: the CPU has AVX-512 (avx512()).
            return (
                unsafe { crate::simd::top_k_candidates(y, k, cand, sel, est) },
                filled,
            );
        }
        let _ = est;
        (top_k_portable(y, |v| v, k, cand, sel), false)
    }
    #[inline(always)]
    fn scans_masked() -> bool {
        cfg!(target_arch = "x86_64") && avx512()
    }
    #[inline(always)]
    fn top_k_scan_masked(
        y: &[f32],
        words: &[u32],
        k: usize,
        cand: &mut Vec<(f32, u32)>,
        sel: &mut Vec<f32>,
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: the CPU has AVX-512 (avx512()).
            return unsafe { crate::simd::top_k_candidates_masked(y, words, k, cand, sel) };
        }
        let mut masked = y.to_vec();
        crate::bitmask::ban_disallowed(&mut masked, words);
        top_k_portable(&masked, |v| v, k, cand, sel)
    }
    #[inline(always)]
    fn exp_weights<const FMA: bool, const ENTROPY: bool>(
        y: &[f32],
        m: f32,
        inv_t: f32,
        floor: f32,
        w: &mut Vec<f32>,
        blocks: &mut Vec<f64>,
    ) -> (f64, f64, f32) {
        // The kernel is the FMA variant: only for code compiled with FMA.
        #[cfg(target_arch = "x86_64")]
        if FMA && avx512() {
            // SAFETY: the CPU has AVX-512 (avx512()).
            return unsafe {
                crate::simd::exp_weights_f32::<ENTROPY>(y, m, inv_t, floor, w, blocks)
            };
        }
        exp_weights_by::<f32, f32, FMA, ENTROPY>(y, |v| v, m, inv_t, floor, w, blocks)
    }
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn typical_scan<const FMA: bool>(
        y: &[f32],
        inv_t: f32,
        floor: f32,
        k: usize,
        cand: &mut Vec<(f32, u32)>,
        sel: &mut Vec<f32>,
        sums: &mut ShiftedSums<f32>,
    ) -> bool {
        // The kernel's exp is the FMA variant: only for code compiled with FMA.
        #[cfg(target_arch = "x86_64")]
        if FMA && avx512() {
            // SAFETY: the CPU has AVX-512 (avx512()).
            return unsafe { crate::simd::typical_scan_f32(y, inv_t, floor, k, cand, sel, sums) };
        }
        shifted_sums::<f32, FMA>(y, inv_t, floor, sums);
        top_k_portable(y, |v| v, k, cand, sel)
    }
    #[inline(always)]
    fn masses_above(w: &[f32], th: &[f32; 4]) -> [f64; 4] {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: the CPU has AVX-512 (avx512()).
            return unsafe { crate::simd::masses_above(w, th) };
        }
        masses_above_portable(w, th)
    }
    #[inline(always)]
    fn mass_above_and_collect(
        w: &[f32],
        lo: f32,
        hi: f32,
        buf: &mut Vec<(f32, u32)>,
        blocks: &mut Vec<f64>,
    ) -> (f64, f64) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: the CPU has AVX-512 (avx512()).
            return unsafe { crate::simd::mass_above_and_collect(w, lo, hi, buf, blocks) };
        }
        mass_above_and_collect_portable(w, lo, hi, buf, blocks)
    }
    #[inline(always)]
    fn key_bracket(
        z: &[f32],
        w: &[f32],
        r: &KeyBracket<f32>,
        buf: &mut Vec<(f32, u32)>,
        blocks: &mut Vec<f64>,
    ) -> f64 {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: the CPU has AVX-512 (avx512()).
            return unsafe { crate::simd::key_bracket(z, w, r, buf, blocks) };
        }
        key_bracket_portable(z, w, r, buf, blocks)
    }
    #[inline(always)]
    fn keep_keys_within(
        w: &mut [f32],
        z: &[f32],
        key: &TypicalKey<f32>,
        tau: f32,
        blocks: &mut Vec<f64>,
    ) -> f64 {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: the CPU has AVX-512 (avx512()).
            return unsafe { crate::simd::keep_keys_within(w, z, key, tau, blocks) };
        }
        keep_keys_within_portable(w, z, key, tau, blocks)
    }
}

impl Real for f64 {
    #[inline(always)]
    fn of(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn wide(self) -> f64 {
        self
    }
    #[inline(always)]
    fn exp_nonpos(self) -> f64 {
        self.exp()
    }
    #[inline(always)]
    fn exp_nonpos_fma(self) -> f64 {
        self.exp()
    }
    #[inline(always)]
    fn key(self) -> u64 {
        self.to_bits()
    }
    #[inline(always)]
    fn from_key(k: u64) -> f64 {
        f64::from_bits(k)
    }
}

// Constants of the exp reduction shared by both variants (and the AVX-512 kernel).
pub(crate) const LOG2E: f32 = std::f32::consts::LOG2_E;
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
// 1.5 * 2^23: adding and subtracting it rounds to the nearest integer.
pub(crate) const ROUND: f32 = 12_582_912.0;
/// [`exp_sum_f32`]'s polynomial: `e^r ~ 1 + r + r^2 (c[3] + r (c[2] + r (c[1] + r c[0])))` on
/// `|r| <= ln(2) / 2`, fitted by least squares of the relative error on Chebyshev nodes
/// (at most 1.7e-7 in `f32`).
pub(crate) const SUM_POLY: [f32; 4] = [8.333_84e-3, 4.189_858e-2, 0.166_668_86, 0.499_991_42];
/// Coefficients of the `e^r` polynomial, highest first (Cephes `expf`).
pub(crate) const EXP_POLY: [f32; 6] = [
    1.987_569_2e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// `e^x` for `x <= 0` in single precision, within 2 ulp of the true value for
/// `x >= -87` and 0 below (where `e^x < 1.7e-38`, past the normal range of `f32`).
///
/// Cephes' `expf` reduction: `x = n ln2 + r`, `|r| <= ln2 / 2`, a degree-7 polynomial for
/// `e^r`, and `2^n` built from the exponent bits. Written without branches so a loop over a
/// row compiles to SIMD.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    let xc = x.max(-87.0);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p * r + c;
    }
    p = p * r * r + r + 1.0;
    times_two_to_n(p, t, x)
}

/// The last step of [`exp_f32`], [`exp_f32_fma`] and [`exp_sum_f32`]: `p 2^n`, with `n` in
/// the low mantissa bits of `t = x log2(e) + ROUND`, and 0 below -87.
#[inline(always)]
fn times_two_to_n(p: f32, t: f32, x: f32) -> f32 {
    // Build 2^n from `t`'s bits with integer ops only (a float-to-int cast saturates in Rust
    // and keeps the loop from vectorising).
    let scale = f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23);
    if x < -87.0 {
        0.0
    } else {
        p * scale
    }
}

/// [`exp_f32`] with fused multiply-adds: 14 vector operations per 16 values instead of 25.
/// The result can differ from [`exp_f32`] in the last bit, so every SIMD level keeps to one
/// variant for a whole call.
#[inline(always)]
pub fn exp_f32_fma(x: f32) -> f32 {
    let xc = x.max(-87.0);
    let t = xc.mul_add(LOG2E, ROUND);
    let n = t - ROUND;
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, xc));
    let mut p = EXP_POLY[0];
    for &c in &EXP_POLY[1..] {
        p = p.mul_add(r, c);
    }
    p = (p * r).mul_add(r, r) + 1.0;
    times_two_to_n(p, t, x)
}

/// `exp(x)` for `x <= 0` (0 below -87, as [`exp_f32`]) to ~4e-7 relative, for sums that
/// need not equal the weights' exp (typical-p's `softmax::ShiftedSums`): a degree-5
/// polynomial ([`SUM_POLY`]) and (with FMA) one `ln 2` in the range reduction, three
/// operations fewer per 16 values than [`exp_f32_fma`]. `FMA`: fused multiply-adds, as the
/// AVX-512 kernel (`simd::typical_scan_f32`) does lane by lane.
#[inline(always)]
pub fn exp_sum_f32<const FMA: bool>(x: f32) -> f32 {
    let fma = |a: f32, b: f32, c: f32| if FMA { a.mul_add(b, c) } else { a * b + c };
    let xc = x.max(-87.0);
    let t = fma(xc, LOG2E, ROUND);
    let n = t - ROUND;
    // With FMA the product is exact in `fma`; without, `n ln 2` must be split (as `exp_f32`).
    let r = if FMA {
        (-n).mul_add(std::f32::consts::LN_2, xc)
    } else {
        xc - n * LN2_HI - n * LN2_LO
    };
    let mut p = SUM_POLY[0];
    for &c in &SUM_POLY[1..] {
        p = fma(p, r, c);
    }
    p = fma(p * r, r, r) + 1.0;
    times_two_to_n(p, t, x)
}

/// A logit element as stored by the caller.
pub trait Elem: Copy + Send + Sync + 'static {
    /// The type this element is computed in.
    type C: Real;
    /// Reads one element into the compute type.
    fn load(self) -> Self::C;
    /// Reads a whole row into `dst` (resized to the row's length). Half types are widened with
    /// SIMD conversions in this same pass, so there is never a separate conversion pass.
    fn load_row(src: &[Self], dst: &mut Vec<Self::C>) {
        dst.clear();
        dst.extend(src.iter().map(|e| e.load()));
    }
    /// The row itself when it is already in the compute type (no conversion needed).
    fn as_compute(_src: &[Self]) -> Option<&[Self::C]> {
        None
    }
    /// The logits a token bitmask row allows, in id order, into `vals` and their ids into
    /// `ids` (`bitmask.rs`).
    #[inline(always)]
    fn gather_allowed(x: &[Self], words: &[u32], vals: &mut Vec<Self::C>, ids: &mut Vec<u32>) {
        crate::bitmask::gather_portable(x, words, vals, ids)
    }
    /// Whether [`Elem::load`] is cheap enough (a shift) for a pass to widen as it reads,
    /// instead of converting the row first.
    const WIDENS_IN_PLACE: bool = false;

    /// Whether this CPU has kernels that scan a row of this type as stored
    /// ([`Elem::top_k_scan_stored`], [`Elem::exp_weights_stored`] at their fastest), so an
    /// unmodified row needs no conversion pass before its first scan (bfloat16: AVX-512).
    #[inline(always)]
    fn scans_as_stored() -> bool {
        false
    }
    /// [`Real::top_k_scan`] on the row as stored, widened as it is read: the candidates equal
    /// those of the scan of [`Elem::load_row`]'s row.
    #[inline(always)]
    fn top_k_scan_stored(
        x: &[Self],
        k: usize,
        cand: &mut Vec<(Self::C, u32)>,
        sel: &mut Vec<Self::C>,
        est: Option<(f32, &mut MassEstimate)>,
    ) -> (bool, bool) {
        let _ = est;
        (top_k_portable(x, Self::load, k, cand, sel), false)
    }
    /// [`Real::exp_weights`] on the row as stored, widened as it is read (no conversion
    /// pass).
    #[inline(always)]
    fn exp_weights_stored<const FMA: bool>(
        x: &[Self],
        m: Self::C,
        inv_t: Self::C,
        floor: Self::C,
        w: &mut Vec<Self::C>,
        blocks: &mut Vec<f64>,
    ) -> f64 {
        exp_weights_by::<Self, Self::C, FMA, false>(x, Self::load, m, inv_t, floor, w, blocks).0
    }
}

impl Elem for f32 {
    type C = f32;
    #[inline(always)]
    fn load(self) -> f32 {
        self
    }
    #[inline(always)]
    fn load_row(src: &[f32], dst: &mut Vec<f32>) {
        dst.clear();
        dst.extend_from_slice(src);
    }
    #[inline(always)]
    fn as_compute(src: &[f32]) -> Option<&[f32]> {
        Some(src)
    }
    #[inline(always)]
    fn gather_allowed(x: &[f32], words: &[u32], vals: &mut Vec<f32>, ids: &mut Vec<u32>) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            // SAFETY: the CPU has AVX-512 (avx512()).
            return unsafe { crate::simd::gather_allowed_f32(x, words, vals, ids) };
        }
        crate::bitmask::gather_portable(x, words, vals, ids)
    }
}

impl Elem for f64 {
    type C = f64;
    #[inline(always)]
    fn load(self) -> f64 {
        self
    }
    #[inline(always)]
    fn load_row(src: &[f64], dst: &mut Vec<f64>) {
        dst.clear();
        dst.extend_from_slice(src);
    }
    #[inline(always)]
    fn as_compute(src: &[f64]) -> Option<&[f64]> {
        Some(src)
    }
}

impl Elem for half::f16 {
    type C = f32;
    #[inline(always)]
    fn load(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn load_row(src: &[half::f16], dst: &mut Vec<f32>) {
        dst.resize(src.len(), 0.0);
        // half picks F16C / NEON conversions at run time for whole slices.
        src.convert_to_f32_slice(dst);
    }
}

impl Elem for half::bf16 {
    type C = f32;
    #[inline(always)]
    fn load(self) -> f32 {
        // bf16 is the top half of an f32: a shift, which vectorises.
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    const WIDENS_IN_PLACE: bool = true;
    #[inline(always)]
    fn load_row(src: &[half::bf16], dst: &mut Vec<f32>) {
        dst.clear();
        // bf16 is the top half of an f32: a shift, which vectorises.
        dst.extend(
            src.iter()
                .map(|b| f32::from_bits((b.to_bits() as u32) << 16)),
        );
    }
    #[inline(always)]
    fn scans_as_stored() -> bool {
        cfg!(target_arch = "x86_64") && avx512()
    }
    #[inline(always)]
    fn top_k_scan_stored(
        x: &[half::bf16],
        k: usize,
        cand: &mut Vec<(f32, u32)>,
        sel: &mut Vec<f32>,
        est: Option<(f32, &mut MassEstimate)>,
    ) -> (bool, bool) {
        #[cfg(target_arch = "x86_64")]
        if avx512() {
            let filled = est.is_some();
            // SAFETY: the CPU has AVX-512 (avx512()).
            return (
                unsafe {
                    crate::simd::top_k_candidates_bf16(x.reinterpret_cast(), k, cand, sel, est)
                },
                filled,
            );
        }
        let _ = est;
        (top_k_portable(x, Self::load, k, cand, sel), false)
    }
    #[inline(always)]
    fn exp_weights_stored<const FMA: bool>(
        x: &[half::bf16],
        m: f32,
        inv_t: f32,
        floor: f32,
        w: &mut Vec<f32>,
        blocks: &mut Vec<f64>,
    ) -> f64 {
        // The kernel is the FMA variant: only for code compiled with FMA.
        #[cfg(target_arch = "x86_64")]
        if FMA && avx512() {
            // SAFETY: the CPU has AVX-512 (avx512()).
            let raw = x.reinterpret_cast();
            return unsafe { crate::simd::exp_weights_bf16(raw, m, inv_t, floor, w, blocks) };
        }
        exp_weights_by::<_, f32, FMA, false>(x, Self::load, m, inv_t, floor, w, blocks).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_accurate_on_the_whole_range() {
        type Exp = fn(f32) -> f32;
        let variants: [(&str, Exp, f64); 4] = [
            ("plain", exp_f32, 2.4e-7),
            ("fma", exp_f32_fma, 2.4e-7),
            ("sum", exp_sum_f32::<false>, 5e-7),
            ("sum fma", exp_sum_f32::<true>, 5e-7),
        ];
        for (name, exp, bound) in variants {
            assert_eq!(exp(0.0), 1.0);
            assert_eq!(exp(f32::NEG_INFINITY), 0.0);
            assert_eq!(exp(-100.0), 0.0);
            let mut worst = 0.0f64;
            let mut x = -87.0f32;
            while x <= 0.0 {
                let got = exp(x) as f64;
                let want = (x as f64).exp();
                worst = worst.max(((got - want) / want).abs());
                x += 0.001_37;
            }
            // 2 ulp of f32 is 2.4e-7 relative.
            assert!(worst < bound, "{name}: worst relative error {worst}");
        }
    }

    /// The trait methods (the AVX-512 kernels on a CPU that has them, under the level
    /// detected once) give the portable loops' results: the top-k scan of f32 rows and of
    /// bfloat16 rows read as stored, the masses above thresholds, the collect pass.
    #[test]
    fn simd_methods_equal_the_portable_loops() {
        let mut rnd = crate::test_util::uniforms(0x51_7cc1_b727_220au64);
        for n in [1usize, 15, 16, 63, 64, 1000, 1024, 4097, 40_000] {
            let y: Vec<f32> = (0..n)
                .map(|_| match (rnd() * 20.0) as u32 {
                    0 => f32::NEG_INFINITY,
                    1 => 3.0, // plateaus
                    _ => 10.0 * (rnd() as f32 - 0.5),
                })
                .collect();
            let bf: Vec<half::bf16> = y.iter().map(|&v| half::bf16::from_f32(v)).collect();
            let mut wide = Vec::new();
            half::bf16::load_row(&bf, &mut wide);
            let sorted = |mut c: Vec<(f32, u32)>| {
                c.sort_unstable_by_key(|p| p.1);
                c
            };
            for k in [1usize, 5, 64, n] {
                let (mut c0, mut c1, mut sel) = (Vec::new(), Vec::new(), Vec::new());
                let nan0 = top_k_portable(&y, |v| v, k, &mut c0, &mut sel);
                let (nan1, _) = f32::top_k_scan(&y, k, &mut c1, &mut sel, None);
                assert_eq!((nan0, sorted(c0)), (nan1, sorted(c1)), "f32 n {n} k {k}");
                let (mut c0, mut c1) = (Vec::new(), Vec::new());
                let nan0 = top_k_portable(&wide, |v| v, k, &mut c0, &mut sel);
                let (nan1, _) = half::bf16::top_k_scan_stored(&bf, k, &mut c1, &mut sel, None);
                assert_eq!((nan0, sorted(c0)), (nan1, sorted(c1)), "bf16 n {n} k {k}");
            }
            let w: Vec<f32> = y.iter().map(|&v| exp_f32(v - 5.0)).collect();
            let th = [0.0f32, 1e-3, 0.05, 0.5];
            let (a, b) = (masses_above_portable(&w, &th), f32::masses_above(&w, &th));
            for (x, z) in a.iter().zip(&b) {
                assert!(
                    (x - z).abs() <= 1e-9 * x.abs().max(1e-30),
                    "n {n}: {a:?} {b:?}"
                );
            }
            let (mut b0, mut b1, mut k0, mut k1) = (vec![], vec![], vec![], vec![]);
            let r0 = mass_above_and_collect_portable(&w, 1e-3, 0.05, &mut b0, &mut k0);
            let r1 = f32::mass_above_and_collect(&w, 1e-3, 0.05, &mut b1, &mut k1);
            assert_eq!(b0, b1, "n {n}");
            assert!(
                (r0.0 - r1.0).abs() <= 1e-9 * r0.0.max(1e-30),
                "n {n}: {r0:?} {r1:?}"
            );
            assert!(
                (r0.1 - r1.1).abs() <= 1e-9 * r0.1.max(1e-30),
                "n {n}: {r0:?} {r1:?}"
            );
            assert_eq!(k0.len(), k1.len());
        }
    }

    /// Typical-p's first read (`Real::typical_scan`: the AVX-512 kernel where the CPU has
    /// it) gives the portable loops' results bit for bit (the NaN flag, every block's
    /// maximum and sums, the row's maximum and minimum, the candidates as a set), and its
    /// total and entropy equal a float64 computation from the definition.
    #[test]
    fn typical_scan_equals_the_portable_loops() {
        let mut rnd = crate::test_util::uniforms(0x51_ed5c_a77e_0b1du64);
        let sizes = [
            1usize, 15, 16, 17, 63, 64, 65, 1000, 1024, 1040, 2065, 4097, 40_000,
        ];
        for (case, n) in sizes.into_iter().enumerate() {
            for shape in 0..4 {
                let z: Vec<f32> = (0..n)
                    .map(|j| match (shape, (rnd() * 20.0) as u32) {
                        (_, 0) => f32::NEG_INFINITY,
                        (_, 1) => 1.5, // plateaus
                        (1, 2) if case % 3 == 0 => f32::NAN,
                        // Rising: the running maximum moves in every block.
                        (2, _) => j as f32 * 0.01 + 4.0 * rnd() as f32,
                        // A wide range: far logits' weights underflow to 0.
                        (3, _) => 400.0 * (rnd() as f32 - 0.5),
                        _ => 12.0 * (rnd() as f32 - 0.5),
                    })
                    .collect();
                for (lo, inv_t) in [
                    (f32::NEG_INFINITY, 1.0f32),
                    (f32::NEG_INFINITY, 1.0 / 0.7),
                    (-2.0, 0.25),
                    (1.5, 3.0),
                ] {
                    let (mut c0, mut s0, mut q0) = (vec![], vec![], ShiftedSums::default());
                    let (mut c1, mut s1, mut q1) = (vec![], vec![], ShiftedSums::default());
                    shifted_sums::<f32, true>(&z, inv_t, lo, &mut q0);
                    let nan0 = top_k_portable(&z, |v| v, 64, &mut c0, &mut s0);
                    let nan1 =
                        f32::typical_scan::<true>(&z, inv_t, lo, 64, &mut c1, &mut s1, &mut q1);
                    let at = format!("n {n} shape {shape} floor {lo} inv_t {inv_t}");
                    assert_eq!(nan0, nan1, "{at}");
                    let bits = |q: &ShiftedSums<f32>| {
                        let b = q
                            .blocks
                            .iter()
                            .map(|&(r, s, x)| (r.to_bits(), s.to_bits(), x.to_bits()));
                        (b.collect::<Vec<_>>(), q.max.to_bits(), q.min.to_bits())
                    };
                    assert_eq!(bits(&q0), bits(&q1), "{at}");
                    let sorted = |mut c: Vec<(f32, u32)>| {
                        c.sort_by_key(|q| q.1);
                        c.iter().map(|q| (q.0.to_bits(), q.1)).collect::<Vec<_>>()
                    };
                    assert_eq!(sorted(c0), sorted(c1), "{at}");
                    // The definition in float64: live tokens, weights against the maximum.
                    let live: Vec<f64> = z
                        .iter()
                        .filter(|&&v| v >= lo && v > f32::NEG_INFINITY)
                        .map(|&v| v as f64)
                        .collect();
                    let m = live.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v));
                    if !live.is_empty() {
                        assert_eq!(q1.max as f64, m, "{at}");
                    }
                    assert_eq!(
                        q1.min as f64,
                        live.iter().fold(f64::INFINITY, |a, &v| a.min(v))
                    );
                    if live.is_empty() {
                        continue;
                    }
                    let x: Vec<f64> = live.iter().map(|&v| (v - m) * inv_t as f64).collect();
                    let total: f64 = x.iter().map(|&x| x.exp()).sum();
                    let h = -x
                        .iter()
                        .map(|&x| x.exp() / total * (x - total.ln()))
                        .sum::<f64>();
                    let (t1, h1, _) = q1.entropy(inv_t);
                    assert!(
                        (t1 - total).abs() <= 2e-6 * total,
                        "{at}: total {t1} vs {total}"
                    );
                    assert!(
                        (h1 - h).abs() <= 2e-6 * h.abs().max(1.0),
                        "{at}: H {h1} vs {h}"
                    );
                }
            }
        }
    }

    /// Typical-p's kernels (the exp pass with the entropy, the bracket read, the cut's zeroing) give the
    /// portable loops' results bit for bit: sums, block sums, lists and weights.
    #[test]
    fn typical_kernels_equal_the_portable_loops() {
        let mut rnd = crate::test_util::uniforms(0x7e_a1c4_11b0_93d5u64);
        for n in [1usize, 15, 16, 17, 1000, 1024, 1040, 4097, 40_000] {
            let z: Vec<f32> = (0..n)
                .map(|_| match (rnd() * 20.0) as u32 {
                    0 => f32::NEG_INFINITY,
                    1 => 1.5, // plateaus, ties of keys
                    _ => 12.0 * (rnd() as f32 - 0.5),
                })
                .collect();
            let w: Vec<f32> = z.iter().map(|&v| (v - 6.0).exp()).collect();
            for (lo, c) in [(f32::NEG_INFINITY, 1.0f32), (-2.0, 0.25), (1.5, 3.0)] {
                let key = TypicalKey { lo, c };
                // The exp pass with the entropy's products and the smallest live logit.
                for inv_t in [1.0f32, 1.0 / 0.7] {
                    let (mut w0, mut w1, mut b0, mut b1) = (vec![], vec![], vec![], vec![]);
                    let x0 = exp_weights_by::<f32, f32, true, true>(
                        &z,
                        |v| v,
                        6.0,
                        inv_t,
                        lo,
                        &mut w0,
                        &mut b0,
                    );
                    let x1 = f32::exp_weights::<true, true>(&z, 6.0, inv_t, lo, &mut w1, &mut b1);
                    assert_eq!(x0.0.to_bits(), x1.0.to_bits(), "n {n}");
                    assert_eq!(x0.1.to_bits(), x1.1.to_bits(), "n {n}");
                    assert_eq!(x0.2.to_bits(), x1.2.to_bits(), "n {n}");
                    assert_eq!(w0, w1, "n {n}");
                    assert_eq!(b0, b1, "n {n}");
                    // The same weights and block sums as the exp pass alone.
                    let (mut w2, mut b2) = (vec![], vec![]);
                    let t2 =
                        f32::exp_weights::<true, false>(&z, 6.0, inv_t, lo, &mut w2, &mut b2).0;
                    assert_eq!(
                        (x1.0.to_bits(), &w1, &b1),
                        (t2.to_bits(), &w2, &b2),
                        "n {n}"
                    );
                    // The smallest live logit, and the products' sum to f32 accuracy (an
                    // f64 sum of the f64 products).
                    let live = z.iter().filter(|&&v| v >= lo && v > f32::NEG_INFINITY);
                    let least = live.fold(f32::INFINITY, |a, &v| a.min(v));
                    assert_eq!(x1.2.to_bits(), least.to_bits(), "n {n}");
                    let want: f64 = z
                        .iter()
                        .zip(&w1)
                        .filter(|&(_, &wj)| wj > 0.0)
                        .map(|(&v, &wj)| wj as f64 * (v as f64 - 6.0) * inv_t as f64)
                        .sum();
                    assert!((x1.1 - want).abs() <= 1e-5 * want.abs().max(1e-30), "n {n}");
                }
                let kmax = 7.0;
                let scale = 511.0 / kmax;
                for (b0, b1, open) in [
                    (40.0f32, 41.0, false),
                    (0.0, 100.0, false),
                    (300.0, 511.0, true),
                ] {
                    let r = KeyBracket {
                        key,
                        kmax,
                        scale,
                        b0,
                        b1,
                        open,
                    };
                    let (mut l0, mut l1, mut k0, mut k1) = (vec![], vec![], vec![], vec![]);
                    let t0 = key_bracket_portable(&z, &w, &r, &mut l0, &mut k0);
                    let t1 = f32::key_bracket(&z, &w, &r, &mut l1, &mut k1);
                    assert_eq!(t0.to_bits(), t1.to_bits(), "n {n}");
                    assert_eq!(k0, k1, "n {n}");
                    assert_eq!(l0, l1, "n {n}");
                }
                for tau in [0.0f32, 1.25, 4.0, f32::INFINITY] {
                    let (mut w0, mut w1) = (w.clone(), w.clone());
                    let (mut k0, mut k1) = (vec![], vec![]);
                    let t0 = keep_keys_within_portable(&mut w0, &z, &key, tau, &mut k0);
                    let t1 = f32::keep_keys_within(&mut w1, &z, &key, tau, &mut k1);
                    assert_eq!(t0.to_bits(), t1.to_bits(), "n {n}");
                    assert_eq!(k0, k1, "n {n}");
                    assert_eq!(w0, w1, "n {n}");
                }
            }
        }
    }

    #[test]
    fn half_rows_load_exactly() {
        let src: Vec<half::bf16> = [1.5f32, -2.25, f32::INFINITY, f32::NEG_INFINITY]
            .iter()
            .map(|&v| half::bf16::from_f32(v))
            .collect();
        let mut dst = Vec::new();
        half::bf16::load_row(&src, &mut dst);
        assert_eq!(dst, vec![1.5, -2.25, f32::INFINITY, f32::NEG_INFINITY]);
        let src: Vec<half::f16> = [0.5f32, -3.0, 65504.0]
            .iter()
            .map(|&v| half::f16::from_f32(v))
            .collect();
        half::f16::load_row(&src, &mut dst);
        assert_eq!(dst, vec![0.5, -3.0, 65504.0]);
    }
}
