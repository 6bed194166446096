//! tokensampler: exact, fast next-token sampling kernels.
//!
//! The crate is pure Rust; the Python bindings live in `py.rs` behind the `python` feature so
//! `cargo test` and `cargo bench` need no Python. The entry is [`pipeline`] (the batched
//! driver of [`batch`]); a row's plan and the stages its plans share are in `plan.rs`, its
//! parameters in [`params`]; each step's kernels live in the module named after it, and the
//! SIMD-able scans are methods of the element traits in [`elem`].

pub mod batch;
pub mod bitmask;
pub mod draw;
pub mod dry;
pub mod elem;
pub mod error;
pub mod filter;
mod ngram;
pub mod params;
mod patch;
pub mod penalty;
pub mod pipeline;
mod plan;
pub mod rng;
mod scratch;
mod simd;
pub mod softmax;
pub mod stages;
pub mod verify;

#[cfg(feature = "python")]
mod py;

pub use batch::{run_batch, BatchRequest, RowResult};
pub use error::SamplingError;
pub use params::RowParams;

/// What the modules' unit tests share.
#[cfg(test)]
pub(crate) mod test_util {
    use crate::batch::{BatchRequest, Seeds};
    use crate::params::RowParams;

    /// A seeded xorshift stream of uniforms in [0, 1): reproducible rows without a
    /// dependency.
    pub(crate) fn uniforms(seed: u64) -> impl FnMut() -> f64 {
        let mut state = seed;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    pub(crate) fn req<'a, T>(rows: &'a [&'a [T]], params: &'a [RowParams]) -> BatchRequest<'a, T> {
        BatchRequest {
            seeds: Seeds::Shared(7),
            ..BatchRequest::new(rows, params)
        }
    }

    pub(crate) fn params(temperature: f64, top_k: usize, top_p: f64, min_p: f64) -> RowParams {
        RowParams {
            temperature,
            top_k,
            top_p,
            min_p,
            ..Default::default()
        }
    }
}
