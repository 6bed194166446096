"""The sampling API: `sample`, `probs` and `Sampler` on numpy arrays and torch tensors.

This module only checks and normalises arguments; every computation runs in the Rust kernels
(`tokensampler._native`) with the GIL released. Callers must not mutate the logits (or the
history / bias arrays) from another thread while a call is running.

Buffers: numpy arrays and CPU tensors are read in place (no copy) as long as their last axis
is contiguous; otherwise the rows are copied once. bfloat16 tensors cross as a zero-copy
uint16 view. Tensors on a device go through `tokensampler.device.BRIDGE`: one copy of the
logits to a reused (pinned) host buffer in their own dtype, the synchronization of the device
type, and one copy back of the outputs asked for, on the tensor's device.
"""

from __future__ import annotations

import functools
import numbers
import secrets
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, overload

import numpy as np

from . import _native
from .device import BRIDGE
from .params import _OFF, PARAM_NAMES, SamplingParams, _scalar

if TYPE_CHECKING:
    from typing import TypeAlias

    import torch
    from typing_extensions import Self, Unpack

    from .params import KernelKwargs, SamplingKwargs

    # What the calls read: a numpy array or a torch tensor (a list is read as numpy reads it).
    LogitsIn: TypeAlias = "np.ndarray | torch.Tensor"

_U64 = (1 << 64) - 1
# top_logprobs may exceed V (padding) up to _native.TOP_N_SLACK; the kernels refuse more.
# Larger top_logprobs cross as this (refused by the kernels all the same): any Python int fits.
_TOP_N_CAP = 2**62


class _SampleTuple(NamedTuple):
    ids: Any
    logprobs: Any
    raw_logprobs: Any
    top_ids: Any
    top_logprobs: Any


class SampleOutput(_SampleTuple):
    """What `sample` returns when log-probabilities are asked for.

    A 5-tuple (ids, logprobs, raw_logprobs, top_ids, top_logprobs), with `rank`,
    `token_logprobs` and `valid` as further attributes (so code that unpacks five values
    keeps working).

    Attributes:
        ids: chosen token ids, int64, shape () or (B,); -1 for a row skipped as invalid.
        logprobs: log-probability of each chosen id under the final distribution (under
            `logprobs_mode="raw"`, the raw softmax's).
        raw_logprobs: its log-probability under the plain softmax of the unprocessed logits
            (None unless `logprobs=True`).
        top_ids: the `top_logprobs` most probable ids (of the final distribution, or the
            raw one under `logprobs_mode="raw"`), most probable first, ties by lower id; -1
            past the kept set. Shape (..., n).
        top_logprobs: their log-probabilities (-inf past the kept set).
        rank: each chosen id's rank in the raw distribution, 1 = most probable (vLLM's
            `Logprob.rank`); None unless `logprobs=True`.
        token_logprobs: the log-probabilities of `logprob_token_ids`, shape (..., n); None
            unless asked for.
        valid: bool per row: False for a row skipped under `on_invalid="skip"`.
    """

    rank: Any
    token_logprobs: Any
    valid: Any

    def __new__(
        cls,
        ids: Any,
        logprobs: Any,
        raw_logprobs: Any,
        top_ids: Any,
        top_logprobs: Any,
        rank: Any = None,
        token_logprobs: Any = None,
        valid: Any = None,
    ) -> Self:
        self = super().__new__(cls, ids, logprobs, raw_logprobs, top_ids, top_logprobs)
        self.rank, self.token_logprobs, self.valid = rank, token_logprobs, valid
        return self

    def _replace(self, **changes: Any) -> SampleOutput:
        extra = {k: changes.pop(k, getattr(self, k)) for k in ("rank", "token_logprobs", "valid")}
        return SampleOutput(*super()._replace(**changes), **extra)


# ==== buffer adapters =========================================================================


def _torch() -> Any:
    # torch stays optional: only look at it if the caller already imported it.
    return sys.modules.get("torch")


class _Logits:
    """A (B, V) numpy view of the caller's logits plus what is needed to return results."""

    __slots__ = ("array", "device", "is_bf16", "is_torch", "squeeze")

    def __init__(self, logits: Any) -> None:
        torch = _torch()
        self.is_bf16 = False
        self.device = None
        self.is_torch = torch is not None and isinstance(logits, torch.Tensor)
        if self.is_torch:
            arr = self._from_torch(torch, logits)
        elif isinstance(logits, np.ndarray):
            arr = logits
        else:
            arr = np.asarray(logits)
        if not self.is_bf16 and (arr.dtype.kind != "f" or arr.dtype.itemsize not in (2, 4, 8)):
            raise TypeError(
                f"logits must be float32, float64, float16 or bfloat16 (torch), got {arr.dtype}"
            )
        if arr.ndim not in (1, 2):
            raise ValueError(f"logits must have shape (V,) or (B, V), got shape {arr.shape}")
        if arr.shape[-1] == 0:
            raise ValueError("logits have a vocabulary of size 0 (last axis is empty)")
        self.squeeze = arr.ndim == 1
        if self.squeeze:
            arr = arr[None, :]
        if arr.strides[1] != arr.itemsize:
            # The kernels read rows as slices; a strided last axis costs one copy.
            arr = np.ascontiguousarray(arr)
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        self.array = arr

    def _from_torch(self, torch: Any, t: Any) -> np.ndarray:
        if t.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            raise TypeError(f"logits must be float32, float64, float16 or bfloat16, got {t.dtype}")
        t = t.detach()
        if BRIDGE.is_device(t):
            # One copy in the logits' own dtype into a reused (pinned) host buffer, and the
            # synchronization of the device's type, before numpy reads it.
            self.device = t.device
            t = BRIDGE.to_host(t)
        if t.dtype == torch.bfloat16:
            self.is_bf16 = True
            bits: np.ndarray = t.view(torch.int16).numpy().view(np.uint16)
            return bits
        arr: np.ndarray = t.numpy()
        return arr

    def wrap(self, a: np.ndarray | None) -> Any:
        """Returns a kernel output in the caller's array type, squeezed for 1-D logits."""
        return self.wrap_all([a])[0]

    def wrap_all(self, arrays: list[np.ndarray | None]) -> list[Any]:
        """`wrap` of several outputs; for device logits, all of them go back in one copy."""
        if self.squeeze:
            # 0-d arrays, not numpy scalars, so torch keeps shape ()
            arrays = [None if a is None else a[0, ...] for a in arrays]
        if not self.is_torch:
            return [None if a is None else a[()] if a.ndim == 0 else a for a in arrays]
        return BRIDGE.to_device(arrays, self.device)


def _as_numpy(x: Any) -> np.ndarray:
    torch = _torch()
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        # numpy has no bfloat16; float32 holds every bfloat16 value exactly.
        host: np.ndarray = (x.float() if x.dtype == torch.bfloat16 else x).numpy()
        return host
    return np.asarray(x)


def _real_array(x: Any, what: str) -> np.ndarray:
    """x as a float64 array, refusing what numpy would quietly convert: strings ("0.5" would
    parse), complex numbers (the imaginary part would be dropped), and ints beyond float
    range (an OverflowError otherwise)."""
    a = _as_numpy(x)
    if a.dtype.kind == "O":  # e.g. Python ints too big for int64
        if not all(isinstance(e, numbers.Real) for e in a.reshape(-1).tolist()):
            raise TypeError(f"{what} must be real numbers")
    elif a.dtype.kind not in "biuf":
        raise TypeError(f"{what} must be real numbers, got dtype {a.dtype}")
    try:
        return a.astype(np.float64, copy=False)
    except OverflowError:
        raise ValueError(f"{what} holds an integer beyond the float range") from None


# ==== argument normalisation ==================================================================


@functools.lru_cache(maxsize=256)
def _scalar_matrix(values: tuple[float | None, ...]) -> np.ndarray:
    # Cached: a generate loop calls with the same scalars every step, and building the array
    # costs more than the kernel on a small vocabulary. Read-only, since it is shared.
    m = np.array([[off if v is None else v for v, off in zip(values, _OFF)]], dtype=np.float64)
    m.setflags(write=False)
    return m


def _param_matrix(values: tuple[Any, ...], b: int) -> np.ndarray:
    """(1, 9) for scalar parameters, (B, 9) when any parameter is per row."""
    if all(_scalar(v) for v in values):
        return _scalar_matrix(values)
    out = np.empty((b, len(values)), dtype=np.float64)
    for col, (name, v, off) in enumerate(zip(PARAM_NAMES, values, _OFF)):
        if v is None:
            out[:, col] = off
            continue
        if isinstance(v, (list, tuple)):
            v = [off if e is None else e for e in v]
        try:
            a = _real_array(v, name)
        except TypeError:
            raise TypeError(f"{name} must be a real number or a sequence of them") from None
        if a.ndim == 0 or a.ndim == 1 and a.shape[0] == b:
            out[:, col] = a
        else:
            raise ValueError(
                f"{name} has shape {a.shape}: give a scalar or {b} values, one per row"
            )
    return out


def _param_column(pm: np.ndarray, b: int, name: str) -> np.ndarray:
    """Parameter `name` of each of `b` rows, float64, from a (1, N) or (b, N) matrix (another
    row count is the kernels' error to report: the first row stands in until then)."""
    col = pm[:, PARAM_NAMES.index(name)]
    return np.asarray(col if len(col) == b else np.full(b, col[0]), dtype=np.float64)


def _pad_rows(rows: list[np.ndarray], fill: float, dtype: Any) -> np.ndarray:
    width = max((len(r) for r in rows), default=0)
    out = np.full((len(rows), width), fill, dtype=dtype)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _int_ids(a: np.ndarray, what: str) -> np.ndarray:
    if a.size and a.dtype.kind not in "iu":
        raise TypeError(f"{what} must hold integer token ids, got dtype {a.dtype}")
    if a.size and a.dtype.kind == "u" and a.max() > np.iinfo(np.int64).max:
        # Cast to int64 it would wrap negative, which reads as padding: refuse it instead,
        # like any other id >= V.
        raise ValueError(f"{what} holds token id {int(a.max())}, beyond any vocabulary")
    return np.ascontiguousarray(a, dtype=np.int64)


def _history(history: Any, b: int) -> np.ndarray | None:
    if history is None:
        return None
    if isinstance(history, (list, tuple)) and history and not np.isscalar(history[0]):
        rows = [_int_ids(_as_numpy(h).reshape(-1), "history") for h in history]
        h = _pad_rows(rows, -1, np.int64)
    else:
        h = _int_ids(_as_numpy(history), "history")
    if h.ndim == 1:
        # A 1-D history is one row's (its layout says so); other counts the kernels check.
        if b != 1:
            raise ValueError(
                f"history of shape {h.shape} is for one row; give shape (B, L) or a list of "
                f"B arrays for a batch of {b}"
            )
        h = h[None, :]
    if h.ndim != 2:
        raise ValueError(f"history must be (L,), (B, L) or a list of B arrays, got {h.shape}")
    return h


def _bias_from_dicts(dicts: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    id_rows, val_rows = [], []
    for d in dicts:
        if not isinstance(d, Mapping):
            raise TypeError(f"logit_bias as a list must hold one dict per row, got {d!r:.60}")
        keys = list(d.keys())
        if not all(isinstance(k, numbers.Integral) for k in keys):
            raise TypeError("logit_bias keys must be integer token ids")
        bad = [int(k) for k in keys if not 0 <= int(k) < 2**63]
        if bad:
            # Negative ids would read as the kernels' row padding and be ignored silently.
            raise ValueError(f"logit_bias token ids must be >= 0 and < V, got {bad[0]}")
        id_rows.append(np.array(keys, dtype=np.int64))
        val_rows.append(_real_array(list(d.values()), "logit_bias values").reshape(-1))
    return _pad_rows(id_rows, -1, np.int64), _pad_rows(val_rows, 0.0, np.float64)


def _logit_bias(
    bias: Any, b: int | None, v: int | None
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(ids, values) rows of a logit_bias. b and v are the batch and vocabulary sizes; None
    (before any logits exist, see `SamplingParams`) skips the checks that need them."""
    if bias is None:
        return None, None
    if isinstance(bias, Mapping):
        ids, vals = _bias_from_dicts([bias])
    elif isinstance(bias, (list, tuple)) and bias and isinstance(bias[0], Mapping):
        # A list is one dict per row: the kernels would broadcast a one-row list.
        if b is not None and len(bias) != b:
            raise ValueError(f"logit_bias has {len(bias)} dicts for a batch of {b}")
        ids, vals = _bias_from_dicts(bias)
    else:
        dense = _real_array(bias, "a dense logit_bias")
        if dense.ndim == 1:
            dense = dense[None, :]
        if (
            dense.ndim != 2
            or (v is not None and dense.shape[1] != v)
            or (b is not None and dense.shape[0] not in (1, b))
        ):
            want = "(V,) or (B, V)" if v is None or b is None else f"({v},) or ({b}, {v})"
            raise ValueError(f"a dense logit_bias must have shape {want}, got {dense.shape}")
        rows = [np.flatnonzero(r) for r in dense]
        ids = _pad_rows(rows, -1, np.int64)
        vals = _pad_rows([r[nz] for r, nz in zip(dense, rows)], 0.0, np.float64)
    if np.isnan(vals).any():
        raise ValueError("logit_bias contains NaN")
    return ids, vals


def _bitmask(mask: Any, b: int | None, v: int | None) -> np.ndarray | None:
    """A `token_bitmask` as the kernels take it: (rows, W) uint32, rows 1 or B. b and v are
    the batch and vocabulary sizes; None (in `SamplingParams`) skips the checks needing them."""
    if mask is None:
        return None
    a = _as_numpy(mask)
    if a.dtype not in (np.int32, np.uint32):
        raise TypeError(
            "token_bitmask must be int32 or uint32 words (the (B, ceil(V/32)) bitmask of "
            f"xgrammar, llguidance and outlines-core), got {a.dtype}"
        )
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim == 3 and b is None:
        return a  # verify's (B, K + 1, W), one mask per position: verify.py checks it
    if a.ndim != 2:
        raise ValueError(f"token_bitmask must be (W,) or (B, W), W = ceil(V/32); got {a.shape}")
    if b is not None and a.shape[0] not in (1, b):
        raise ValueError(f"token_bitmask has {a.shape[0]} rows for a batch of {b}")
    if v is not None and a.shape[1] >= v > 32:
        # Extra words are allowed (a tokenizer's mask over a smaller model vocabulary), but
        # one word per token is a per-token mask given where 32 tokens share a word.
        raise ValueError(
            f"token_bitmask has {a.shape[1]} words for a vocabulary of {v}: a bitmask holds 32 "
            f"tokens per word ({-(-v // 32)} words); this looks like one entry per token"
        )
    return np.ascontiguousarray(a).view(np.uint32)


def _check_top_n(top_n: Any) -> None:
    # The type here; the range (>= 0) with the other parameters, in Rust.
    if isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)):
        raise TypeError(f"top_logprobs must be a whole number >= 0, got {top_n!r}")


def _seeds(seed: Any) -> tuple[np.ndarray, bool]:
    """(seeds, per_row): one shared seed, or one per row (the kernels check the count)."""
    if seed is None:
        return np.array([secrets.randbits(64)], dtype=np.uint64), False
    if isinstance(seed, (int, np.integer)):
        return np.array([int(seed) & _U64], dtype=np.uint64), False
    # Integers only (taken mod 2**64, like numpy's SeedSequence takes any int): a float seed
    # would be truncated, and inf or a string has no integer value at all.
    # A list is read as is: numpy would turn [0, 2**64 - 1] into float64.
    values = list(seed) if isinstance(seed, (list, tuple)) else _as_numpy(seed).reshape(-1).tolist()
    if not all(isinstance(s, numbers.Integral) for s in values):
        raise TypeError(f"seed must be an int or a sequence of ints, one per row, got {seed!r:.60}")
    seeds = [int(s) & _U64 for s in values]
    return np.array(seeds, dtype=np.uint64), True


# ==== the calls ===============================================================================


@functools.lru_cache(maxsize=256)
def _cached_params(items: tuple[tuple[str, type, Any], ...]) -> SamplingParams:
    return SamplingParams(**{name: value for name, _, value in items})


def _params(params: SamplingParams | None, overrides: dict[str, Any]) -> SamplingParams:
    """`params` with the keyword `overrides` applied; keywords alone build one.

    A generate loop passes the same scalar keywords every step: those `SamplingParams` come
    from a cache, since building and validating one costs more than a small kernel call.
    """
    if params is None:
        try:
            # Keyed by type too: seed=1.0 (refused) must not find seed=1's entry. Not sorted:
            # a loop passes its keywords in one order, and another order is just another entry.
            return _cached_params(tuple([(k, type(v), v) for k, v in overrides.items()]))
        except TypeError as e:  # an unhashable value (a list, an array, a dict of biases)
            if "unhashable" not in str(e):
                raise
            return SamplingParams(**overrides)
    if not isinstance(params, SamplingParams):
        raise TypeError(
            f"params must be a tokensampler.SamplingParams, got {type(params).__name__} "
            "(keyword arguments build one)"
        )
    return params.replace(**overrides)


def _run(
    logits: Any,
    p: SamplingParams,
    *,
    history: Any,
    seeds: tuple[np.ndarray, bool] | None = None,
    step: int = 0,
    want_probs: bool = False,
    want_raw: bool = False,
    top_n: int = 0,
    param_matrix: np.ndarray | None = None,
    logit_bias: Any = None,
    mirostat_mu: np.ndarray | None = None,
    want_rank: bool = True,
    token_bitmask: Any = None,
) -> tuple[_Logits, _native.RunResult]:
    unresolved = p.unresolved_strings
    if unresolved is not None:
        raise ValueError(
            f"{unresolved} holds strings, which need a tokenizer: pass token-id sequences "
            "(tokensampler.words turns strings into them), or use tokensampler.generate"
        )
    lg = _Logits(logits)
    b, v = lg.array.shape
    # Types and layout here; the kernels check every count against the batch (parameter
    # rows, history, logit_bias, seeds) and top_logprobs against V before allocating.
    pm = param_matrix if param_matrix is not None else p.matrix(b)
    hist = _history(history, b)
    bias_ids, bias_vals = _logit_bias(p.logit_bias if logit_bias is None else logit_bias, b, v)
    s, per_row = seeds if seeds is not None else _seeds(p.seed)
    mask = _bitmask(p.token_bitmask if token_bitmask is None else token_bitmask, b, v)
    out = _native.run(
        lg.array,
        is_bf16=lg.is_bf16,
        params=pm,
        history=hist,
        bias_ids=bias_ids,
        bias_values=bias_vals,
        seeds=s,
        per_row_seeds=per_row,
        step=step,
        want_probs=want_probs,
        want_raw_logprob=want_raw,
        top_n=min(int(top_n), _TOP_N_CAP),
        mirostat_mu=mirostat_mu,
        token_bitmask=mask,
        **(p.native_options if want_rank else _without_rank(p.native_options)),
    )
    return lg, out


def _without_rank(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k != "want_rank"}


@overload
def sample(
    logits: np.ndarray,
    params: SamplingParams | None = None,
    /,
    *,
    history: Any = None,
    logprobs: Literal[False] = False,
    top_logprobs: Literal[0] = 0,
    **overrides: Unpack[KernelKwargs],
) -> np.ndarray: ...
@overload
def sample(
    logits: torch.Tensor,
    params: SamplingParams | None = None,
    /,
    *,
    history: Any = None,
    logprobs: Literal[False] = False,
    top_logprobs: Literal[0] = 0,
    **overrides: Unpack[KernelKwargs],
) -> torch.Tensor: ...
@overload
def sample(
    logits: LogitsIn,
    params: SamplingParams | None = None,
    /,
    *,
    history: Any = None,
    logprobs: Literal[True],
    top_logprobs: int = 0,
    **overrides: Unpack[KernelKwargs],
) -> SampleOutput: ...
@overload
def sample(
    logits: LogitsIn,
    params: SamplingParams | None = None,
    /,
    *,
    history: Any = None,
    logprobs: bool = False,
    top_logprobs: int = 0,
    **overrides: Unpack[KernelKwargs],
) -> SampleOutput | Any: ...
def sample(
    logits: LogitsIn,
    params: SamplingParams | None = None,
    /,
    *,
    history: Any = None,
    **overrides: Any,
) -> Any:
    """Samples one token id per row of `logits`.

    Args:
        logits: numpy array or torch tensor, (V,) or (B, V), float32/float64/float16/bfloat16.
            Read in place, never modified.
        params: a `SamplingParams`; None builds one from the keywords.
        history: token ids seen per row ((L,), (B, L) with negative padding, or a list).
        **overrides: any `SamplingParams` field, applied on top of `params`:
            temperature (T >= 0; 0 is greedy), top_k (None/0 off), top_p (None/1 off),
            min_p (None/0 off), repetition_penalty, frequency_penalty, presence_penalty,
            frequency_scale, presence_scale (penalties; off at 1, 0, 0, 1, 1), logit_bias
            ({id: bias}, a list of B dicts, or a dense (V,)/(B, V) array; -inf bans), seed
            (None: OS entropy; an int; or B per-row ints, any int taken mod 2**64), logprobs
            and top_logprobs (then a `SampleOutput` is returned). Every numeric parameter is
            a scalar or one value per row.

    Returns:
        int64 ids, shape () or (B,), in the input's array type and on its device; or a
        `SampleOutput` when `logprobs` or `top_logprobs` is set.

    >>> import numpy as np
    >>> int(sample(np.array([1.0, 3.0, 2.0]), temperature=0))
    1
    """
    p = _params(params, overrides)
    lg, out = _run(logits, p, history=history, want_raw=p.logprobs, top_n=p.top_logprobs)
    return _result(lg, out, p)


def _result(lg: _Logits, out: _native.RunResult, p: SamplingParams) -> Any:
    if not p.logprobs and not p.top_logprobs and p.logprob_token_ids is None:
        return lg.wrap(out.ids)
    valid = out.valid if out.valid is not None else np.ones(out.ids.shape[0], dtype=bool)
    # The outputs asked for (None where not), back on the logits' device in one copy.
    return SampleOutput(
        *lg.wrap_all(
            [
                out.ids,
                out.logprobs,
                out.raw_logprobs,
                out.top_ids,
                out.top_logprobs,
                out.ranks,
                out.token_logprobs,
                valid,
            ]
        )
    )


@overload
def probs(
    logits: np.ndarray,
    params: SamplingParams | None = None,
    /,
    *,
    history: Any = None,
    **overrides: Unpack[KernelKwargs],
) -> np.ndarray: ...
@overload
def probs(
    logits: torch.Tensor,
    params: SamplingParams | None = None,
    /,
    *,
    history: Any = None,
    **overrides: Unpack[KernelKwargs],
) -> torch.Tensor: ...
def probs(
    logits: LogitsIn,
    params: SamplingParams | None = None,
    /,
    *,
    history: Any = None,
    **overrides: Any,
) -> Any:
    """The final sampling distribution of each row (zeros outside the kept set).

    Takes the arguments of `sample`. Its log-probability fields play no part, and its seed
    only XTC's: with `xtc_probability` between 0 and 1, the distribution is the one `sample`
    with that seed draws from (seed 0 when none is given).
    Returns an array shaped like `logits`: float64 for float64 input, float32 otherwise, in
    the input's array type.

    >>> import numpy as np
    >>> probs(np.array([0.0, 0.0]), temperature=1.0).tolist()
    [0.5, 0.5]
    """
    p = _params(params, overrides)
    seeds = None if p.seed is not None else (np.zeros(1, dtype=np.uint64), False)
    lg, out = _run(logits, p, history=history, seeds=seeds, want_probs=True)
    pr = out.probs
    if lg.array.shape[0] == 0:  # no rows: keep the vocabulary axis
        f64 = lg.array.dtype == np.float64
        pr = np.zeros(lg.array.shape, dtype=np.float64 if f64 else np.float32)
    return lg.wrap(pr)


class Sampler:
    """Sampling parameters plus random streams, for a generate loop.

    Each call advances the step of the streams, so a loop never reuses a random number; the
    first call draws exactly what `sample(params, seed=seed)` draws. A Sampler may be shared
    by threads: the step is taken under a lock, so concurrent calls get distinct steps.

    Takes a `SamplingParams` and/or its fields as keywords, validated at construction (a bad
    value raises here, naming it). What needs the logits (the batch size of per-row values,
    logit_bias ids >= V) is checked per call. Without a seed, one is drawn from the OS.

    With mirostat on, the Sampler also carries each row's state ``mu`` (`mirostat_mu`, set
    to ``2 * mirostat_tau`` on the first call and updated by every call). `state_dict` and
    `load_state_dict` save and restore the seed, the step and ``mu``, so that a paused
    generation resumes bit-identically.

    >>> import numpy as np
    >>> s = Sampler(temperature=0.0)
    >>> int(s(np.array([0.5, 2.0, 1.0])))
    1
    """

    def __init__(
        self, params: SamplingParams | None = None, /, **overrides: Unpack[SamplingKwargs]
    ) -> None:
        self.params: SamplingParams = _params(params, dict(overrides))
        seed = self.params.seed
        self.seed: Any = secrets.randbits(64) if seed is None else seed
        self.step = 0
        self._lock = threading.Lock()
        self._matrix: dict[int, np.ndarray] = {}
        self._seeds: dict[int, tuple[np.ndarray, bool]] = {}
        self._mu: np.ndarray | None = None
        # A generate loop reads the ids and their log-probabilities only: it switches off the
        # raw log-probability and the rank, which `logprobs=True` would otherwise compute.
        self._lean = False

    @property
    def mirostat_mu(self) -> np.ndarray | None:
        """Each row's mirostat state (a copy), or None before the first call or without
        mirostat."""
        return None if self._mu is None else self._mu.copy()

    def state_dict(self) -> dict[str, Any]:
        """What the Sampler's draws depend on besides its parameters: the seed, the step and
        the mirostat states (plain Python values)."""
        with self._lock:
            seed = list(self.seed) if isinstance(self.seed, tuple) else self.seed
            if not isinstance(seed, (int, list)):
                seed = _seeds(seed)[0].tolist()
            mu = None if self._mu is None else self._mu.tolist()
            return {"seed": seed, "step": self.step, "mirostat_mu": mu}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores what `state_dict` saved (into a Sampler of the same parameters)."""
        missing = {"seed", "step", "mirostat_mu"} - set(state)
        if missing:
            raise ValueError(f"state_dict is missing {sorted(missing)}")
        seed, step, mu = state["seed"], state["step"], state["mirostat_mu"]
        _seeds(seed)
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"state_dict step must be a whole number >= 0, got {step!r}")
        # Without mirostat there is no state to restore (mirostat_mu stays None).
        mu_arr = None
        if mu is not None and self.params.mirostat_on:
            mu_arr = np.array(mu, dtype=np.float64).reshape(-1)
        with self._lock:
            self.seed = seed
            self._seeds.clear()
            self.step = int(step)
            self._mu = mu_arr

    @property
    def logprobs(self) -> bool:
        return self.params.logprobs

    @property
    def top_logprobs(self) -> int:
        return self.params.top_logprobs

    @property
    def logit_bias(self) -> Any:
        return self.params.logit_bias

    def reset(self, seed: Any = None) -> None:
        """Restarts the streams at step 0 (with a new seed when one is given)."""
        if seed is not None:
            _seeds(seed)
        with self._lock:
            if seed is not None:
                self.seed = seed
                self._seeds.clear()
            self.step = 0
            self._mu = None

    def __call__(
        self,
        logits: Any,
        history: Any = None,
        logit_bias: Any = None,
        *,
        keepdim: bool = False,
        token_bitmask: Any = None,
    ) -> Any:
        """Samples the next ids for `logits` ((V,) or (B, V)).

        Args:
            logits: the last-position logits, numpy or torch.
            history: the ids so far per row (e.g. nanoGPT's `idx`), for the penalties.
            logit_bias: overrides the Sampler's own logit_bias for this call.
            keepdim: return shape (B, 1) instead of (B,), so that
                `torch.cat((idx, idx_next), dim=1)` works unchanged.
            token_bitmask: this step's allowed tokens (a grammar matcher's bitmask),
                overriding the Sampler's own.
        """
        if self.params.mirostat_on:
            # Each step's mu depends on the last one's draw: the steps run one at a time.
            with self._lock:
                return self._call(
                    logits, history, logit_bias, token_bitmask, keepdim, self.step, True
                )
        with self._lock:
            step = self.step
            self.step += 1
        return self._call(logits, history, logit_bias, token_bitmask, keepdim, step, False)

    def _call(
        self,
        logits: Any,
        history: Any,
        logit_bias: Any,
        token_bitmask: Any,
        keepdim: bool,
        step: int,
        locked: bool,
    ) -> Any:
        shape = np.shape(logits) if not hasattr(logits, "shape") else tuple(logits.shape)
        # Other shapes are rejected by _run with a ValueError; b only keys the caches.
        b = shape[0] if len(shape) == 2 else 1
        pm = self._matrix.get(b)
        if pm is None:
            pm = self._matrix.setdefault(b, self.params.matrix(b))
        seeds = self._seeds.get(b)
        if seeds is None:
            seeds = self._seeds.setdefault(b, _seeds(self.seed))
        p = self.params
        mu = None
        if locked:
            mu = self._mu
            if mu is not None and len(mu) != b:
                raise ValueError(
                    f"this Sampler holds mirostat states for {len(mu)} rows, and the logits "
                    f"have {b}: reset() it for a new batch"
                )
            if mu is None:
                mu = 2.0 * _param_column(pm, b, "mirostat_tau")  # llama.cpp's start
        lg, out = _run(
            logits,
            p,
            history=history,
            logit_bias=logit_bias,
            seeds=seeds,
            step=step,
            want_raw=p.logprobs and not self._lean,
            top_n=p.top_logprobs,
            param_matrix=pm,
            mirostat_mu=mu,
            want_rank=not self._lean,
            token_bitmask=token_bitmask,
        )
        if locked:
            self._mu = out.mirostat_mu
            self.step = step + 1
        res = _result(lg, out, p)
        if keepdim:
            if isinstance(res, SampleOutput):
                return res._replace(ids=res.ids[..., None])
            return res[..., None]
        return res


def set_num_threads(n: int) -> None:
    """Sets the number of worker threads for batched calls (0 = one per core).

    >>> set_num_threads(0)
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"set_num_threads takes a whole number >= 0, got {n!r}")
    _native.set_num_threads(int(n))
