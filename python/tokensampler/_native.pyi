"""Hand-written stub of the compiled module (checked by `python -m mypy.stubtest`)."""

import numpy as np
import numpy.typing as npt

__all__ = [
    "PARAM_NAMES",
    "TOP_N_SLACK",
    "SamplingError",
    "_debug_panic",
    "get_num_threads",
    "run",
    "set_num_threads",
]

PARAM_NAMES: list[str]
TOP_N_SLACK: int

class SamplingError(ValueError):
    """Invalid input to a sampling kernel (a subclass of ValueError)."""

def run(
    logits: npt.NDArray[np.floating] | npt.NDArray[np.uint16],
    is_bf16: bool,
    params: npt.NDArray[np.float64],
    history: npt.NDArray[np.int64] | None,
    bias_ids: npt.NDArray[np.int64] | None,
    bias_values: npt.NDArray[np.float64] | None,
    seeds: npt.NDArray[np.uint64],
    per_row_seeds: bool,
    step: int,
    want_probs: bool,
    want_raw_logprob: bool,
    top_n: int,
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.float64],
    npt.NDArray[np.float64] | None,
    npt.NDArray[np.int64],
    npt.NDArray[np.float64],
    npt.NDArray[np.floating] | None,
]:
    """Runs the pipeline on (B, V) logits (a bfloat16 batch crosses as a uint16 view with
    `is_bf16`). `params` is (1 or B, 9) in PARAM_NAMES order; `history`/`bias_ids` are
    (rows, width) int64 with negative padding; `seeds` is (1,) shared or (B,) per row.
    Returns (ids, logprobs, raw_logprobs | None, top_ids (B, n), top_logprobs (B, n),
    probs (B, V) | None)."""

def set_num_threads(n: int) -> None:
    """Sets the number of worker threads for batched calls (0 = one per core)."""

def get_num_threads() -> int:
    """The number of worker threads batched calls use."""

def _debug_panic(on_worker: bool) -> None:
    """Panics on purpose inside the kernels' guard (tests only): raises RuntimeError."""
