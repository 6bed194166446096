//! Python bindings: type conversion, error mapping and GIL release only. Every kernel lives in
//! the pure-Rust modules; nothing here computes.

use crate::bitmask::Bitmask;
use crate::elem::Elem;
use crate::error::SamplingError as CoreError;
use crate::params::{RowParams, N_PARAMS, PARAMS, PARAM_NAMES};
use crate::pipeline::{self, BatchRequest, IdRows, RowResult, Seeds, Sequences};
use crate::stages::{check_order, parse_order, Stage};
use crate::verify::{verify_batch, DraftProbs, Drafts};
use numpy::ndarray::ArrayView2;
use numpy::{
    Element, PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyTuple;
use std::panic::{catch_unwind, AssertUnwindSafe};

// ==== errors =================================================================================

pyo3::create_exception!(
    tokensampler._native,
    SamplingError,
    PyValueError,
    "Invalid input to a sampling kernel (a subclass of ValueError)."
);

fn to_py(e: CoreError) -> PyErr {
    SamplingError::new_err(e.to_string())
}

/// Runs a kernel so that a Rust panic (a bug: no input should cause one) becomes a Python
/// `RuntimeError`, an ordinary `Exception`, instead of PyO3's `PanicException` (a
/// `BaseException` that `except Exception` would not catch). rayon re-raises a worker's panic
/// on the calling thread, so this also covers batched calls.
fn guarded<R>(f: impl FnOnce() -> Result<R, CoreError>) -> PyResult<R> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(to_py),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(PyRuntimeError::new_err(format!(
                "internal error in a tokensampler kernel (please report): {msg}"
            )))
        }
    }
}

// ==== conversion helpers =====================================================================

fn rows_of<'a, T>(view: &'a ArrayView2<'a, T>) -> PyResult<Vec<&'a [T]>> {
    (0..view.nrows())
        .map(|i| {
            view.row(i).to_slice().ok_or_else(|| {
                PyValueError::new_err(
                    "logits rows must be contiguous in memory (last axis stride 1); \
                     the Python layer copies such input once",
                )
            })
        })
        .collect()
}

fn id_rows<'a>(a: &'a Option<PyReadonlyArray2<'_, i64>>) -> PyResult<Option<IdRows<'a>>> {
    match a {
        None => Ok(None),
        Some(a) => {
            let width = a.shape()[1];
            let ids = a.as_slice().map_err(|_| {
                PyValueError::new_err("history / logit_bias ids must be C-contiguous int64")
            })?;
            Ok(Some(IdRows { ids, width }))
        }
    }
}

/// A set of id sequences per row as Python passes it: (ids, the end of each sequence, the end
/// of each row's sequences, one value per sequence or none), all 1-D.
type SeqArrays<'py> = (
    PyReadonlyArray1<'py, i64>,
    PyReadonlyArray1<'py, i64>,
    PyReadonlyArray1<'py, i64>,
    Option<PyReadonlyArray1<'py, f64>>,
);

/// The offsets of a [`SeqArrays`], as the kernels index with them.
fn offsets(a: &PyReadonlyArray1<'_, i64>, what: &str) -> PyResult<Vec<usize>> {
    a.as_array()
        .iter()
        .map(|&x| usize::try_from(x))
        .collect::<Result<_, _>>()
        .map_err(|_| PyValueError::new_err(format!("{what}: negative offset")))
}

/// Owned offsets of a sequence set; [`sequences`] borrows them.
type SeqOffsets = Option<(Vec<usize>, Vec<usize>)>;

fn seq_offsets(a: &Option<SeqArrays<'_>>, what: &str) -> PyResult<SeqOffsets> {
    a.as_ref()
        .map(|(_, s, r, _)| Ok((offsets(s, what)?, offsets(r, what)?)))
        .transpose()
}

fn sequences<'a>(
    a: &'a Option<SeqArrays<'_>>,
    off: &'a SeqOffsets,
    what: &str,
) -> PyResult<Option<Sequences<'a>>> {
    let contiguous = |e| PyValueError::new_err(format!("{what} arrays must be contiguous: {e}"));
    match (a, off) {
        (Some((ids, _, _, values)), Some((seq_ends, row_ends))) => Ok(Some(Sequences {
            ids: ids.as_slice().map_err(contiguous)?,
            seq_ends,
            row_ends,
            values: match values {
                Some(v) => v.as_slice().map_err(contiguous)?,
                None => &[],
            },
        })),
        _ => Ok(None),
    }
}

/// The outputs a call asks for besides the ids and their log-probabilities.
#[derive(Debug, Clone, Copy)]
struct Want {
    /// The final distribution of each row (B × V).
    probs: bool,
    /// The log-probability of each chosen id under the raw softmax.
    raw_logprob: bool,
    /// How many top log-probabilities per row.
    top_n: usize,
    /// Log-probabilities of the raw softmax instead of the final distribution.
    raw_mode: bool,
    /// The chosen ids' ranks in the raw distribution.
    rank: bool,
    /// How many `token_ids` per row.
    n_token_ids: Option<usize>,
    /// Invalid rows are skipped, so the validity of each row is an output.
    skip: bool,
    /// Each row's mirostat state after the step.
    mirostat: bool,
}

/// What a call takes besides the logit rows (which carry the element type).
#[derive(Debug, Clone, Copy)]
struct Inputs<'a> {
    params: &'a [RowParams],
    history: Option<IdRows<'a>>,
    bias_ids: Option<IdRows<'a>>,
    bias_values: &'a [f64],
    seeds: Seeds<'a>,
    step: u64,
    order: &'a [Stage],
    token_ids: Option<IdRows<'a>>,
    skip_invalid: bool,
    sequence_bias: Option<Sequences<'a>>,
    bad_words: Option<Sequences<'a>>,
    dry_breakers: Option<Sequences<'a>>,
    mirostat_mu: Option<&'a [f64]>,
    /// A speculative verification's drafts (the rows are then B × (K + 1) positions).
    drafts: Option<Drafts<'a>>,
    token_bitmask: Option<Bitmask<'a>>,
}

/// The outputs of a batch, as owned buffers that cross to Python without a copy.
struct Outputs<F> {
    results: Vec<RowResult>,
    probs: Option<Vec<F>>,
    /// A verification's accepted drafts per row.
    accepted: Option<Vec<usize>>,
}

fn run_rows<T: Elem>(
    py: Python<'_>,
    rows: &[&[T]],
    inputs: &Inputs<'_>,
    want: Want,
) -> PyResult<Outputs<T::C>> {
    let req = BatchRequest {
        rows,
        params: inputs.params,
        history: inputs.history,
        bias_ids: inputs.bias_ids,
        bias_values: inputs.bias_values,
        seeds: inputs.seeds,
        step: inputs.step,
        want_raw_logprob: want.raw_logprob,
        top_n: want.top_n,
        order: inputs.order,
        raw_mode: want.raw_mode,
        want_rank: want.rank,
        token_ids: inputs.token_ids,
        skip_invalid: inputs.skip_invalid,
        sequence_bias: inputs.sequence_bias,
        bad_words: inputs.bad_words,
        dry_breakers: inputs.dry_breakers,
        mirostat_mu: inputs.mirostat_mu,
        dry_index: &[],
        token_bitmask: inputs.token_bitmask,
    };
    let v = rows.first().map_or(0, |r| r.len());
    // Callers must not mutate the inputs while the GIL is released (documented in sampling.py).
    py.detach(|| {
        guarded(|| {
            let mut probs = want
                .probs
                .then(|| vec![<T::C as num_traits::Zero>::zero(); rows.len() * v]);
            if let Some(drafts) = &inputs.drafts {
                let (results, accepted) = verify_batch(&req, drafts)?;
                return Ok(Outputs {
                    results,
                    probs: None,
                    accepted: Some(accepted),
                });
            }
            let results = pipeline::run_batch(&req, probs.as_deref_mut())?;
            Ok(Outputs {
                results,
                probs,
                accepted: None,
            })
        })
    })
}

fn vec2<'py, E: Element>(
    py: Python<'py>,
    data: Vec<E>,
    b: usize,
    n: usize,
) -> PyResult<Bound<'py, PyArray2<E>>> {
    PyArray1::from_vec(py, data).reshape([b, n])
}

/// Validates a (rows, N_PARAMS) parameter matrix row by row; errors name the row.
fn param_rows(view: ArrayView2<'_, f64>) -> PyResult<Vec<RowParams>> {
    if view.ncols() != N_PARAMS {
        return Err(PyValueError::new_err(format!(
            "params must have {N_PARAMS} columns, got {}",
            view.ncols()
        )));
    }
    (0..view.nrows())
        .map(|i| {
            let row: Vec<f64> = view.row(i).iter().copied().collect();
            RowParams::from_values(&row, i)
        })
        .collect::<Result<_, _>>()
        .map_err(to_py)
}

// ==== entry points ===========================================================================

/// What `run` returns: numpy arrays, `None` where not asked for.
#[pyclass(frozen, get_all, module = "tokensampler._native")]
struct RunResult {
    /// The chosen ids, (B,) int64.
    ids: Py<PyArray1<i64>>,
    /// Their log-probabilities under the final distribution, (B,) float64.
    logprobs: Py<PyArray1<f64>>,
    /// Their log-probabilities under the raw softmax, (B,) float64, or None.
    raw_logprobs: Option<Py<PyArray1<f64>>>,
    /// The top ids of each row, (B, top_n) int64, -1 past the kept set.
    top_ids: Py<PyArray2<i64>>,
    /// Their log-probabilities, (B, top_n) float64, -inf past the kept set.
    top_logprobs: Py<PyArray2<f64>>,
    /// The final distributions, (B, V) float32 (float64 for float64 logits), or None.
    probs: Option<Py<PyAny>>,
    /// The chosen ids' ranks in the raw distribution, (B,) int64 (1 = most probable), or None.
    ranks: Option<Py<PyArray1<i64>>>,
    /// The log-probabilities of `token_ids`, (B, n) float64, or None.
    token_logprobs: Option<Py<PyArray2<f64>>>,
    /// Whether each row was sampled (False: skipped as invalid, id -1), (B,) bool; None
    /// unless `on_invalid="skip"` (every row is then valid).
    valid: Option<Py<PyArray1<bool>>>,
    /// Each row's mirostat state after this step, (B,) float64 (NaN where mirostat is off),
    /// or None unless states were given.
    mirostat_mu: Option<Py<PyArray1<f64>>>,
    /// A verification's accepted drafts per row, (B,) int64, or None for a plain call.
    accepted: Option<Py<PyArray1<i64>>>,
}

#[pymethods]
impl RunResult {
    fn __repr__(&self, py: Python<'_>) -> String {
        let b = self.ids.bind(py).len();
        let n = self.top_ids.bind(py).shape()[1];
        format!(
            "RunResult(rows={b}, raw_logprobs={}, top_n={n}, probs={})",
            self.raw_logprobs.is_some(),
            self.probs.is_some()
        )
    }
}

/// Runs the sampling pipeline on a (B, V) logits array. See `_native.pyi` for the contract.
#[pyfunction]
#[pyo3(signature = (
    logits,
    *,
    is_bf16 = false,
    params,
    history = None,
    bias_ids = None,
    bias_values = None,
    seeds,
    per_row_seeds = false,
    step = 0,
    want_probs = false,
    want_raw_logprob = false,
    top_n = 0,
    order = None,
    logprobs_mode = "processed",
    want_rank = false,
    token_ids = None,
    on_invalid = "raise",
    sequence_bias = None,
    bad_words = None,
    dry_breakers = None,
    mirostat_mu = None,
    lanes = None,
    spec_k = 0,
    draft_ids = None,
    draft_probs = None,
    token_bitmask = None,
))]
#[allow(clippy::too_many_arguments)]
fn run<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    is_bf16: bool,
    params: PyReadonlyArray2<'py, f64>,
    history: Option<PyReadonlyArray2<'py, i64>>,
    bias_ids: Option<PyReadonlyArray2<'py, i64>>,
    bias_values: Option<PyReadonlyArray2<'py, f64>>,
    seeds: PyReadonlyArray1<'py, u64>,
    per_row_seeds: bool,
    step: u64,
    want_probs: bool,
    want_raw_logprob: bool,
    top_n: usize,
    order: Option<Vec<String>>,
    logprobs_mode: &str,
    want_rank: bool,
    token_ids: Option<PyReadonlyArray2<'py, i64>>,
    on_invalid: &str,
    sequence_bias: Option<SeqArrays<'py>>,
    bad_words: Option<SeqArrays<'py>>,
    dry_breakers: Option<SeqArrays<'py>>,
    mirostat_mu: Option<PyReadonlyArray1<'py, f64>>,
    lanes: Option<PyReadonlyArray1<'py, u64>>,
    spec_k: usize,
    draft_ids: Option<PyReadonlyArray1<'py, i64>>,
    draft_probs: Option<Bound<'py, PyAny>>,
    token_bitmask: Option<PyReadonlyArray2<'py, u32>>,
) -> PyResult<RunResult> {
    let params = param_rows(params.as_array())?;
    let order = order_of(order)?;
    let raw_mode = choice("logprobs_mode", logprobs_mode, &["processed", "raw"])? == 1;
    let skip_invalid = choice("on_invalid", on_invalid, &["raise", "skip"])? == 1;
    let bias_values = match &bias_values {
        Some(a) => a
            .as_slice()
            .map_err(|_| PyValueError::new_err("logit_bias values must be C-contiguous float64"))?,
        None => &[],
    };
    let seeds_slice = seeds
        .as_slice()
        .map_err(|_| PyValueError::new_err("seeds must be contiguous uint64"))?;
    let lanes_slice = match &lanes {
        Some(l) => Some(
            l.as_slice()
                .map_err(|_| PyValueError::new_err("lanes must be contiguous uint64"))?,
        ),
        None => None,
    };
    let q32 = match &draft_probs {
        Some(q) => q.cast::<PyArray1<f32>>().ok().map(|a| a.readonly()),
        None => None,
    };
    let q64 = match &draft_probs {
        Some(q) if q32.is_none() => Some(
            q.cast::<PyArray1<f64>>()
                .map_err(|_| {
                    PyTypeError::new_err("draft_probs must cross as a 1-D float32 or float64 array")
                })?
                .readonly(),
        ),
        _ => None,
    };
    let contiguous = |_| PyValueError::new_err("draft arrays must be contiguous");
    let drafts = match &draft_ids {
        Some(ids) => Some(Drafts {
            k: spec_k,
            ids: ids.as_slice().map_err(contiguous)?,
            probs: match (&q32, &q64) {
                (Some(q), _) => Some(DraftProbs::F32(q.as_slice().map_err(contiguous)?)),
                (None, Some(q)) => Some(DraftProbs::F64(q.as_slice().map_err(contiguous)?)),
                (None, None) => None,
            },
        }),
        None => None,
    };
    let seeds = if let Some(lanes) = lanes_slice {
        Seeds::Lanes {
            seeds: seeds_slice,
            lanes,
        }
    } else if per_row_seeds {
        Seeds::PerRow(seeds_slice)
    } else {
        Seeds::Shared(
            *seeds_slice
                .first()
                .ok_or_else(|| PyValueError::new_err("no seed given"))?,
        )
    };
    let sb_off = seq_offsets(&sequence_bias, "sequence_bias")?;
    let bw_off = seq_offsets(&bad_words, "bad_words_ids")?;
    let br_off = seq_offsets(&dry_breakers, "dry_sequence_breakers")?;
    let inputs = Inputs {
        params: &params,
        history: id_rows(&history)?,
        bias_ids: id_rows(&bias_ids)?,
        bias_values,
        seeds,
        step,
        order: order.as_deref().unwrap_or(&crate::stages::HF_ORDER),
        token_ids: id_rows(&token_ids)?,
        skip_invalid,
        sequence_bias: sequences(&sequence_bias, &sb_off, "sequence_bias")?,
        bad_words: sequences(&bad_words, &bw_off, "bad_words_ids")?,
        dry_breakers: sequences(&dry_breakers, &br_off, "dry_sequence_breakers")?,
        mirostat_mu: match &mirostat_mu {
            Some(a) => Some(
                a.as_slice()
                    .map_err(|_| PyValueError::new_err("mirostat_mu must be contiguous"))?,
            ),
            None => None,
        },
        drafts,
        token_bitmask: match &token_bitmask {
            Some(m) => Some(Bitmask {
                words: m.as_slice().map_err(|_| {
                    PyValueError::new_err("token_bitmask must be C-contiguous uint32")
                })?,
                width: m.shape()[1],
                rows: m.shape()[0],
            }),
            None => None,
        },
    };
    let want = Want {
        probs: want_probs,
        raw_logprob: want_raw_logprob,
        top_n,
        raw_mode,
        rank: want_rank,
        n_token_ids: inputs.token_ids.map(|t| t.width),
        skip: skip_invalid,
        mirostat: inputs.mirostat_mu.is_some(),
    };

    macro_rules! go {
        ($t:ty, $arr:expr, $cast:expr) => {{
            let ro = $arr.readonly();
            let view = ro.as_array();
            let raw = rows_of(&view)?;
            let rows: Vec<&[$t]> = raw.into_iter().map($cast).collect();
            let out = run_rows(py, &rows, &inputs, want)?;
            let v = rows.first().map_or(0, |r| r.len());
            let probs = match out.probs {
                Some(p) => Some(vec2(py, p, rows.len(), v)?.into_any().unbind()),
                None => None,
            };
            let mut result = finish(py, out.results, want, probs)?;
            result.accepted = out.accepted.map(|a| {
                PyArray1::from_vec(py, a.into_iter().map(|n| n as i64).collect()).unbind()
            });
            Ok(result)
        }};
    }

    if is_bf16 {
        if let Ok(a) = logits.cast::<PyArray2<u16>>() {
            use half::slice::HalfBitsSliceExt;
            return go!(half::bf16, a, |r: &[u16]| r
                .reinterpret_cast::<half::bf16>());
        }
        return Err(PyTypeError::new_err(
            "bfloat16 logits must cross as a 2-D uint16 view",
        ));
    }
    if let Ok(a) = logits.cast::<PyArray2<f32>>() {
        return go!(f32, a, |r| r);
    }
    if let Ok(a) = logits.cast::<PyArray2<f64>>() {
        return go!(f64, a, |r| r);
    }
    if let Ok(a) = logits.cast::<PyArray2<half::f16>>() {
        return go!(half::f16, a, |r| r);
    }
    Err(PyTypeError::new_err(
        "logits must be a 2-D float32, float64, float16 or bfloat16 array",
    ))
}

fn finish(
    py: Python<'_>,
    results: Vec<RowResult>,
    want: Want,
    probs: Option<Py<PyAny>>,
) -> PyResult<RunResult> {
    let (b, top_n) = (results.len(), want.top_n);
    let mut ids = Vec::with_capacity(b);
    let mut logprobs = Vec::with_capacity(b);
    let mut raw = Vec::with_capacity(b);
    let mut top_ids = Vec::with_capacity(b * top_n);
    let mut top_lps = Vec::with_capacity(b * top_n);
    let (mut ranks, mut valid, mut token_lps) = (Vec::new(), Vec::new(), Vec::new());
    let mut mu = Vec::new();
    for r in results {
        ids.push(r.id);
        logprobs.push(r.logprob);
        raw.push(r.raw_logprob);
        // Only what was asked for: a plain call builds no more than before these existed.
        if want.rank {
            ranks.push(r.rank);
        }
        if want.skip {
            valid.push(r.valid);
        }
        if want.mirostat {
            mu.push(r.mirostat_mu);
        }
        if want.n_token_ids.is_some() {
            token_lps.extend(r.token_logprobs);
        }
        for (id, lp) in r.top {
            top_ids.push(id);
            top_lps.push(lp);
        }
    }
    Ok(RunResult {
        ids: PyArray1::from_vec(py, ids).unbind(),
        logprobs: PyArray1::from_vec(py, logprobs).unbind(),
        raw_logprobs: want
            .raw_logprob
            .then(|| PyArray1::from_vec(py, raw).unbind()),
        top_ids: vec2(py, top_ids, b, top_n)?.unbind(),
        top_logprobs: vec2(py, top_lps, b, top_n)?.unbind(),
        probs,
        ranks: want.rank.then(|| PyArray1::from_vec(py, ranks).unbind()),
        token_logprobs: match want.n_token_ids {
            Some(n) => Some(vec2(py, token_lps, b, n)?.unbind()),
            None => None,
        },
        valid: want.skip.then(|| PyArray1::from_vec(py, valid).unbind()),
        mirostat_mu: want.mirostat.then(|| PyArray1::from_vec(py, mu).unbind()),
        accepted: None,
    })
}

/// The stage order of a call: the default (`None`), a preset, or stage names.
/// `None` (the default order) costs no allocation: it is the common call.
fn order_of(order: Option<Vec<String>>) -> PyResult<Option<Vec<Stage>>> {
    order
        .map(|names| parse_order(&names).map_err(to_py))
        .transpose()
}

/// Which of `options` the call option `name` is (an error naming it otherwise).
fn choice(name: &str, value: &str, options: &[&str]) -> PyResult<usize> {
    options.iter().position(|&o| o == value).ok_or_else(|| {
        let quoted: Vec<String> = options.iter().map(|o| format!("{o:?}")).collect();
        to_py(CoreError::Choice(format!(
            "{name} must be {}, got {value:?}",
            quoted.join(" or ")
        )))
    })
}

/// Validates a (rows, N_PARAMS) float64 parameter matrix (or a sequence of rows), a stage
/// order and the call options as `run` does, with the same errors naming the row; returns
/// None.
#[pyfunction]
#[pyo3(signature = (
    params, order = None, logprobs_mode = "processed", on_invalid = "raise", top_logprobs = 0
))]
fn check_params(
    params: &Bound<'_, PyAny>,
    order: Option<Vec<String>>,
    logprobs_mode: &str,
    on_invalid: &str,
    top_logprobs: i64,
) -> PyResult<()> {
    if top_logprobs < 0 {
        return Err(to_py(CoreError::InvalidParameter {
            name: "top_logprobs",
            row: 0,
            value: top_logprobs as f64,
            expected: "a whole number >= 0",
        }));
    }
    choice("logprobs_mode", logprobs_mode, &["processed", "raw"])?;
    choice("on_invalid", on_invalid, &["raise", "skip"])?;
    let order = order_of(order)?;
    if let Ok(a) = params.cast::<PyArray2<f64>>() {
        let rows = param_rows(a.readonly().as_array())?;
        let order = order.as_deref().unwrap_or(&crate::stages::HF_ORDER);
        return check_order(order, &rows).map_err(to_py);
    }
    let rows: Vec<Vec<f64>> = params.extract().map_err(|_| {
        PyTypeError::new_err(format!(
            "params must be a 2-D float64 array or a sequence of rows of {N_PARAMS} numbers"
        ))
    })?;
    if let Some(r) = rows.iter().find(|r| r.len() != N_PARAMS) {
        return Err(PyValueError::new_err(format!(
            "params must have {N_PARAMS} columns, got {}",
            r.len()
        )));
    }
    let rows = rows
        .iter()
        .enumerate()
        .map(|(i, row)| RowParams::from_values(row, i))
        .collect::<Result<Vec<_>, _>>()
        .map_err(to_py)?;
    check_order(order.as_deref().unwrap_or(&crate::stages::HF_ORDER), &rows).map_err(to_py)
}

/// Sets the number of worker threads for batched calls (0 = one per core).
#[pyfunction]
fn set_num_threads(n: usize) -> PyResult<()> {
    pipeline::set_num_threads(n).map_err(to_py)
}

/// The number of worker threads batched calls use.
#[pyfunction]
fn get_num_threads() -> usize {
    pipeline::num_threads()
}

/// Panics on purpose inside the same guard as the kernels (on a pool thread when
/// `on_worker`), so tests can check that a panic surfaces as `RuntimeError` and leaves the
/// interpreter usable. Not part of the public API.
#[pyfunction]
fn _debug_panic(py: Python<'_>, on_worker: bool) -> PyResult<()> {
    py.detach(|| {
        guarded(|| {
            if on_worker {
                pipeline::debug_panic_on_worker();
            }
            panic!("deliberate panic from _debug_panic");
        })
    })
}

/// The compiled kernels of tokensampler.
#[pymodule(gil_used = false)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("SamplingError", m.py().get_type::<SamplingError>())?;
    m.add("PARAM_NAMES", PARAM_NAMES.to_vec())?;
    let params = PARAMS.map(|p| (p.name, p.default, p.integer, p.help));
    m.add("PARAMS", PyTuple::new(m.py(), params)?)?;
    m.add("TOP_N_SLACK", pipeline::TOP_N_SLACK)?;
    m.add("ORDER_PRESETS", crate::stages::PRESETS.to_vec())?;
    let stages: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
    m.add("STAGES", stages)?;
    m.add_class::<RunResult>()?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(check_params, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(_debug_panic, m)?)?;
    Ok(())
}
