//! Element types the kernels read natively, and the arithmetic type each one computes in.

use half::slice::HalfFloatSliceExt;
use num_traits::Float;

/// The floating type a row is computed in: `f64` for `f64` logits, `f32` for everything else.
pub trait Real: Float + Default + Send + Sync + std::fmt::Debug + 'static {
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
    /// The bit pattern, which orders non-negative values like the values themselves (sorting
    /// integers is several times faster than sorting floats by a comparator).
    fn key(self) -> u64;
    /// Inverse of [`Real::key`].
    fn from_key(k: u64) -> Self;
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
    fn key(self) -> u64 {
        self.to_bits() as u64
    }
    #[inline(always)]
    fn from_key(k: u64) -> f32 {
        f32::from_bits(k as u32)
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
    // The low mantissa bits of `t` hold n: build 2^n from them with integer ops only (a
    // float-to-int cast saturates in Rust and keeps the loop from vectorising).
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
    let scale = f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000).wrapping_add(127) << 23);
    if x < -87.0 {
        0.0
    } else {
        p * scale
    }
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
    /// Whether [`Elem::load`] is cheap enough (a shift) for a pass to widen as it reads,
    /// instead of converting the row first.
    const WIDENS_IN_PLACE: bool = false;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_f32_is_accurate_on_the_whole_range() {
        type Exp = fn(f32) -> f32;
        let variants: [(&str, Exp); 2] = [("plain", exp_f32), ("fma", exp_f32_fma)];
        for (name, exp) in variants {
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
            assert!(worst < 2.4e-7, "{name}: worst relative error {worst}");
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
