"""Hand-written stub of the compiled module (checked by `python -m mypy.stubtest`)."""

from collections.abc import Sequence
from typing import TypeAlias, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "ORDER_PRESETS",
    "PARAMS",
    "PARAM_NAMES",
    "STAGES",
    "TOP_N_SLACK",
    "RunResult",
    "SamplingError",
    "_debug_panic",
    "check_params",
    "get_num_threads",
    "run",
    "set_num_threads",
]

PARAM_NAMES: list[str]
# (name, off default, whole number only, one line of help) per parameter, in column order.
PARAMS: tuple[tuple[str, float, bool, str], ...]
TOP_N_SLACK: int
# The order presets ("hf", "vllm", "llama.cpp") and the stage names a custom order takes.
ORDER_PRESETS: list[str]
STAGES: list[str]

class SamplingError(ValueError):
    """Invalid input to a sampling kernel (a subclass of ValueError)."""

@final
class RunResult:
    """What `run` returns: numpy arrays, `None` where not asked for."""

    @property
    def ids(self) -> npt.NDArray[np.int64]:
        """The chosen ids, (B,) int64."""
    @property
    def logprobs(self) -> npt.NDArray[np.float64]:
        """Their log-probabilities under the final distribution, (B,) float64."""
    @property
    def raw_logprobs(self) -> npt.NDArray[np.float64] | None:
        """Their log-probabilities under the raw softmax, (B,) float64, or None."""
    @property
    def top_ids(self) -> npt.NDArray[np.int64]:
        """The top ids of each row, (B, top_n) int64, -1 past the kept set."""
    @property
    def top_logprobs(self) -> npt.NDArray[np.float64]:
        """Their log-probabilities, (B, top_n) float64, -inf past the kept set."""
    @property
    def probs(self) -> npt.NDArray[np.floating] | None:
        """The final distributions, (B, V) float32 (float64 for float64 logits), or None."""
    @property
    def ranks(self) -> npt.NDArray[np.int64] | None:
        """The chosen ids' ranks in the raw distribution, (B,) int64 (1 = most probable), or None."""
    @property
    def token_logprobs(self) -> npt.NDArray[np.float64] | None:
        """The log-probabilities of `token_ids`, (B, n) float64, or None."""
    @property
    def valid(self) -> npt.NDArray[np.bool_] | None:
        """Whether each row was sampled (False: skipped as invalid, id -1), (B,) bool; None
        unless `on_invalid="skip"` (every row is then valid)."""
    @property
    def accepted(self) -> npt.NDArray[np.int64] | None:
        """A verification's accepted drafts per row, (B,) int64, or None for a plain call."""
    @property
    def mirostat_mu(self) -> npt.NDArray[np.float64] | None:
        """Each row's mirostat state after this step, (B,) float64 (NaN where mirostat is off),
        or None unless states were given."""

# A set of id sequences per row: (ids, the end of each sequence, the end of each row's
# sequences, one value per sequence or None), 1-D int64 / float64.
_SeqArrays: TypeAlias = tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.float64] | None,
]

def run(
    logits: npt.NDArray[np.floating] | npt.NDArray[np.uint16],
    *,
    is_bf16: bool = False,
    params: npt.NDArray[np.float64],
    history: npt.NDArray[np.int64] | None = None,
    bias_ids: npt.NDArray[np.int64] | None = None,
    bias_values: npt.NDArray[np.float64] | None = None,
    seeds: npt.NDArray[np.uint64],
    per_row_seeds: bool = False,
    step: int = 0,
    want_probs: bool = False,
    want_raw_logprob: bool = False,
    top_n: int = 0,
    order: Sequence[str] | None = None,
    logprobs_mode: str = "processed",
    want_rank: bool = False,
    token_ids: npt.NDArray[np.int64] | None = None,
    on_invalid: str = "raise",
    sequence_bias: _SeqArrays | None = None,
    bad_words: _SeqArrays | None = None,
    dry_breakers: _SeqArrays | None = None,
    mirostat_mu: npt.NDArray[np.float64] | None = None,
    lanes: npt.NDArray[np.uint64] | None = None,
    spec_k: int = 0,
    draft_ids: npt.NDArray[np.int64] | None = None,
    draft_probs: npt.NDArray[np.float32] | npt.NDArray[np.float64] | None = None,
    token_bitmask: npt.NDArray[np.uint32] | None = None,
) -> RunResult:
    """Runs the pipeline on (B, V) logits (a bfloat16 batch crosses as a uint16 view with
    `is_bf16`). `params` is (1 or B, len(PARAMS)) in PARAM_NAMES order; `history`/`bias_ids`
    are (rows, width) int64 with negative padding; `seeds` is (1,) shared or (B,) per row.
    `order` is one preset name or a sequence of stage names (empty: "hf"). `raw_logprobs`
    and `probs` of the result are None unless asked for. `sequence_bias` (values: the biases,
    -inf bans), `bad_words` (bans; values unused) and `dry_breakers` (values unused) hold one set of sequences, or one per row;
    `mirostat_mu` is (B,), required when a row turns mirostat on. `lanes` (with one seed per
    row) gives every row its own stream lane. With `draft_ids` ((B * spec_k,)) the rows are
    B x (spec_k + 1) positions of a speculative verification (`draft_probs`: (B * spec_k * V,)
    or None for one-hot drafts): `ids` / `logprobs` then hold each position's emitted token
    (-1 / NaN after the last) and `accepted` each row's accepted drafts. `token_bitmask` is
    (1 or B, W) uint32: row j's token t is allowed when bit t % 32 of word t // 32 is set."""

def check_params(
    params: npt.NDArray[np.float64] | Sequence[Sequence[float]],
    order: Sequence[str] | None = None,
    logprobs_mode: str = "processed",
    on_invalid: str = "raise",
    top_logprobs: int = 0,
) -> None:
    """Validates a (rows, len(PARAMS)) parameter matrix, a stage order and the call options
    (`top_logprobs` >= 0) as `run` does:
    raises SamplingError naming the row and parameter or stage (ValueError for a wrong column
    count)."""

def set_num_threads(n: int) -> None:
    """Sets the number of worker threads for batched calls (0 = one per core)."""

def get_num_threads() -> int:
    """The number of worker threads batched calls use."""

def _debug_panic(on_worker: bool) -> None:
    """Panics on purpose inside the kernels' guard (tests only): raises RuntimeError."""
