//! Errors of the sampling pipeline. No PyO3 here: `py.rs` maps these to Python exceptions.

use std::fmt;

/// Everything the pipeline can reject. Each variant names the row (and parameter) at fault so
/// the caller can fix the input without guessing.
#[derive(Debug, Clone, PartialEq)]
pub enum SamplingError {
    /// A logit of the row is NaN.
    NanInRow {
        /// Row index in the batch.
        row: usize,
    },
    /// Every logit of the row is `-inf` after bias and bans: there is nothing to sample.
    AllMasked {
        /// Row index in the batch.
        row: usize,
    },
    /// A sampling parameter is out of its range.
    InvalidParameter {
        /// Parameter name as the Python API spells it.
        name: &'static str,
        /// Row the value belongs to.
        row: usize,
        /// The offending value.
        value: f64,
        /// The accepted range, in words.
        expected: &'static str,
    },
    /// A history (or logit-bias) token id is not below the vocabulary size.
    TokenOutOfRange {
        /// `"history"` or `"logit_bias"`.
        what: &'static str,
        /// Row index in the batch.
        row: usize,
        /// The offending id.
        id: i64,
        /// Vocabulary size of the logits.
        vocab: usize,
    },
    /// The stage order is not a preset or a valid sequence of stage names, or leaves out a
    /// stage that a row turns on.
    Order(String),
    /// A call option (`logprobs_mode`, `on_invalid`) is none of its values.
    Choice(String),
    /// A stateful stage (mirostat) was asked of a call that holds no state.
    State(String),
    /// Shapes of the inputs do not agree.
    Shape(String),
    /// The worker thread pool could not be started (`set_num_threads`).
    ThreadPool(String),
}

impl fmt::Display for SamplingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NanInRow { row } => write!(f, "row {row} of logits contains NaN"),
            Self::AllMasked { row } => write!(
                f,
                "row {row} of logits is all -inf (after logit_bias and bans): nothing can be sampled"
            ),
            Self::InvalidParameter {
                name,
                row,
                value,
                expected,
            } => write!(f, "{name} = {value} (row {row}) is invalid: expected {expected}"),
            Self::TokenOutOfRange {
                what,
                row,
                id,
                vocab,
            } => write!(
                f,
                "{what} token id {id} in row {row} is out of range for a vocabulary of {vocab}"
            ),
            Self::Order(msg)
            | Self::Choice(msg)
            | Self::State(msg)
            | Self::Shape(msg)
            | Self::ThreadPool(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for SamplingError {}
