//! Per-thread scratch buffers, so a row costs no allocation.

use crate::elem::Real;
use crate::softmax::{MassEstimate, ShiftedSums};

/// Reusable buffers of one thread. They live in a thread-local for the thread's lifetime, so
/// a call costs no allocation and, more to the point, no page faults: fresh 512 KB buffers
/// come from `mmap` and touching them cost more than the whole pipeline on a 128k row.
#[derive(Default)]
pub(crate) struct Scratch<F> {
    pub(crate) y: Vec<F>,
    pub(crate) w: Vec<F>,
    pub(crate) sel: Vec<F>,
    pub(crate) blocks: Vec<f64>,
    pub(crate) pairs: Vec<(F, u32)>,
    pub(crate) hist: Vec<u32>,
    /// Keys and weights of the tokens near typical-p's threshold (`stages::list_threshold`).
    pub(crate) keyed: Vec<(F, F)>,
    /// The row's history ids (padding dropped), oldest first.
    pub(crate) seq: Vec<u32>,
    pub(crate) dry: crate::dry::DryScratch,
    /// The new values of the ids a modified row's stages touched, when its plan reads the
    /// stored row (`patch.rs`).
    pub(crate) patch: crate::patch::PatchBuf<F>,
    pub(crate) counts: Vec<(u32, u32)>,
    pub(crate) keys: Vec<u64>,
    /// The row's mass estimated in its first read (top-p rows).
    pub(crate) est: MassEstimate,
    /// Typical-p's mass and entropy sums of the row, from its first read.
    pub(crate) sums: ShiftedSums<F>,
    /// A bfloat16 row widened after its first scan (the dense path); the raw row of the
    /// raw log-probabilities.
    pub(crate) wide: Vec<F>,
    /// The final distribution when the caller wants token log-probabilities but no `probs`.
    pub(crate) dist: Vec<F>,
    /// A masked row's allowed logits and their ids (`bitmask.rs`).
    pub(crate) gathered: Vec<F>,
    pub(crate) gathered_ids: Vec<u32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<(Scratch<f32>, Scratch<f64>)> = Default::default();
}

/// Runs `f` with this thread's scratch for the compute type `F` (a fresh one if the thread's
/// is already in use).
pub(crate) fn with_scratch<F: Real, R>(f: impl FnOnce(&mut Scratch<F>) -> R) -> R {
    use std::any::Any;
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut pair) => {
            let (s32, s64) = &mut *pair;
            if let Some(s) = (s32 as &mut dyn Any).downcast_mut::<Scratch<F>>() {
                f(s)
            } else if let Some(s) = (s64 as &mut dyn Any).downcast_mut::<Scratch<F>>() {
                f(s)
            } else {
                f(&mut Scratch::default())
            }
        }
        Err(_) => f(&mut Scratch::default()),
    })
}
