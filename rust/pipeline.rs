//! The per-row pipeline of docs/design.md section 2 and the batched driver: the public paths
//! (`pipeline::run_batch` and its types) kept for the bindings, the benches and the fuzz target.
//!
//! Order: bias and bans → penalties → temperature (T = 0 is greedy) → top-k → softmax →
//! top-p → min-p → renormalise and draw. Rows are independent; large batches run on rayon.
//! The code lives by concept: [`crate::batch`] (requests, shape checks, the thread pool),
//! `plan.rs` (one row: its plan and the stages the plans share), `scratch.rs` (per-thread
//! buffers).

pub use crate::batch::{
    debug_panic_on_worker, num_threads, run_batch, set_num_threads, BatchRequest, IdRows,
    RowResult, Seeds, Sequences, PARALLEL_MIN_ELEMENTS, TOP_N_SLACK,
};
