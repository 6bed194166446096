//! Element types the kernels read natively, and the arithmetic type each one computes in.

use num_traits::Float;

/// The floating type a row is computed in: `f64` for `f64` logits, `f32` for everything else.
pub trait Real: Float + Default + Send + Sync + std::fmt::Debug + 'static {
    /// Converts from `f64` (rounding for `f32`).
    fn of(v: f64) -> Self;
    /// Widens to `f64`.
    fn wide(self) -> f64;
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
}

/// A logit element as stored by the caller. Half types are widened while the row is read,
/// so no separate conversion pass over the caller's buffer is ever made.
pub trait Elem: Copy + Send + Sync + 'static {
    /// The type this element is computed in.
    type C: Real;
    /// Reads one element into the compute type.
    fn load(self) -> Self::C;
}

impl Elem for f32 {
    type C = f32;
    #[inline(always)]
    fn load(self) -> f32 {
        self
    }
}

impl Elem for f64 {
    type C = f64;
    #[inline(always)]
    fn load(self) -> f64 {
        self
    }
}

impl Elem for half::f16 {
    type C = f32;
    #[inline(always)]
    fn load(self) -> f32 {
        self.to_f32()
    }
}

impl Elem for half::bf16 {
    type C = f32;
    #[inline(always)]
    fn load(self) -> f32 {
        self.to_f32()
    }
}
