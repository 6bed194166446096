//! tokensampler: exact, fast next-token sampling kernels.
//!
//! The crate is pure Rust; the Python bindings live in `py.rs` behind the `python` feature so
//! `cargo test` and `cargo bench` need no Python. The per-row pipeline is defined in
//! [`pipeline`], its parameters in [`params`]; each step lives in the module named after it.

pub mod draw;
pub mod elem;
pub mod error;
pub mod filter;
pub mod params;
pub mod penalty;
pub mod pipeline;
pub mod rng;
mod simd;
pub mod softmax;

#[cfg(feature = "python")]
mod py;

pub use error::SamplingError;
pub use params::RowParams;
pub use pipeline::{run_batch, BatchRequest, RowResult};

/// What the modules' unit tests share.
#[cfg(test)]
pub(crate) mod test_util {
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
}
