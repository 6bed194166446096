//! Python bindings: type conversion, error mapping and GIL release only. Every kernel lives in
//! the pure-Rust modules; nothing here computes.

use crate::elem::Elem;
use crate::error::SamplingError as CoreError;
use crate::pipeline::{self, BatchRequest, IdRows, RowParams, RowResult, Seeds, N_PARAMS};
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

/// The outputs of a batch, as owned buffers that cross to Python without a copy.
struct Outputs<F> {
    results: Vec<RowResult>,
    probs: Option<Vec<F>>,
}

#[allow(clippy::too_many_arguments)]
fn run_rows<T: Elem>(
    py: Python<'_>,
    rows: &[&[T]],
    params: &[RowParams],
    history: Option<IdRows<'_>>,
    bias_ids: Option<IdRows<'_>>,
    bias_values: &[f64],
    seeds: Seeds<'_>,
    step: u64,
    want_probs: bool,
    want_raw_logprob: bool,
    top_n: usize,
) -> PyResult<Outputs<T::C>> {
    let req = BatchRequest {
        rows,
        params,
        history,
        bias_ids,
        bias_values,
        seeds,
        step,
        want_raw_logprob,
        top_n,
    };
    let v = rows.first().map_or(0, |r| r.len());
    // Callers must not mutate the inputs while the GIL is released (documented in sampling.py).
    py.detach(|| {
        guarded(|| {
            let mut probs =
                want_probs.then(|| vec![<T::C as num_traits::Zero>::zero(); rows.len() * v]);
            let results = pipeline::run_batch(&req, probs.as_deref_mut())?;
            Ok(Outputs { results, probs })
        })
    })
}

fn vec2<'py, E: Element>(
    py: Python<'py>,
    data: Vec<E>,
    b: usize,
    n: usize,
) -> PyResult<Bound<'py, PyAny>> {
    Ok(PyArray1::from_vec(py, data).reshape([b, n])?.into_any())
}

// ==== entry points ===========================================================================

/// Runs the sampling pipeline on a (B, V) logits array. See `_native.pyi` for the contract.
#[pyfunction]
#[pyo3(signature = (logits, is_bf16, params, history, bias_ids, bias_values, seeds, per_row_seeds, step, want_probs, want_raw_logprob, top_n))]
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
) -> PyResult<Bound<'py, PyTuple>> {
    let pview = params.as_array();
    if pview.ncols() != N_PARAMS {
        return Err(PyValueError::new_err(format!(
            "params must have {N_PARAMS} columns, got {}",
            pview.ncols()
        )));
    }
    let params: Vec<RowParams> = (0..pview.nrows())
        .map(|i| {
            let row: Vec<f64> = pview.row(i).iter().copied().collect();
            RowParams::from_values(&row, i)
        })
        .collect::<Result<_, _>>()
        .map_err(to_py)?;
    let hist = id_rows(&history)?;
    let bias = id_rows(&bias_ids)?;
    let bias_values = match &bias_values {
        Some(a) => a
            .as_slice()
            .map_err(|_| PyValueError::new_err("logit_bias values must be C-contiguous float64"))?,
        None => &[],
    };
    let seeds_slice = seeds
        .as_slice()
        .map_err(|_| PyValueError::new_err("seeds must be contiguous uint64"))?;
    let seeds = if per_row_seeds {
        Seeds::PerRow(seeds_slice)
    } else {
        Seeds::Shared(
            *seeds_slice
                .first()
                .ok_or_else(|| PyValueError::new_err("no seed given"))?,
        )
    };

    macro_rules! go {
        ($t:ty, $arr:expr, $cast:expr) => {{
            let ro = $arr.readonly();
            let view = ro.as_array();
            let raw = rows_of(&view)?;
            let rows: Vec<&[$t]> = raw.into_iter().map($cast).collect();
            let b = rows.len();
            let out = run_rows(
                py,
                &rows,
                &params,
                hist,
                bias,
                bias_values,
                seeds,
                step,
                want_probs,
                want_raw_logprob,
                top_n,
            )?;
            let v = rows.first().map_or(0, |r| r.len());
            let probs = match out.probs {
                Some(p) => vec2(py, p, b, v)?,
                None => py.None().into_bound(py),
            };
            finish(py, out.results, b, top_n, want_raw_logprob, probs)
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

fn finish<'py>(
    py: Python<'py>,
    results: Vec<RowResult>,
    b: usize,
    top_n: usize,
    want_raw_logprob: bool,
    probs: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyTuple>> {
    let mut ids = Vec::with_capacity(b);
    let mut logprobs = Vec::with_capacity(b);
    let mut raw = Vec::with_capacity(b);
    let mut top_ids = Vec::with_capacity(b * top_n);
    let mut top_lps = Vec::with_capacity(b * top_n);
    for r in results {
        ids.push(r.id);
        logprobs.push(r.logprob);
        raw.push(r.raw_logprob);
        for (id, lp) in r.top {
            top_ids.push(id);
            top_lps.push(lp);
        }
    }
    let raw = if want_raw_logprob {
        PyArray1::from_vec(py, raw).into_any()
    } else {
        py.None().into_bound(py)
    };
    PyTuple::new(
        py,
        [
            PyArray1::from_vec(py, ids).into_any(),
            PyArray1::from_vec(py, logprobs).into_any(),
            raw,
            vec2(py, top_ids, b, top_n)?,
            vec2(py, top_lps, b, top_n)?,
            probs,
        ],
    )
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
    m.add("PARAM_NAMES", pipeline::PARAM_NAMES.to_vec())?;
    m.add("TOP_N_SLACK", pipeline::TOP_N_SLACK)?;
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(_debug_panic, m)?)?;
    Ok(())
}
