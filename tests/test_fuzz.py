"""Fuzzing the public API (issue #6): any input gives a valid result or a clear error.

Hypothesis draws calls of ``ts.sample``, ``ts.probs`` and ``ts.Sampler.__call__`` with
arbitrary shapes (0-length batches, 1 x 1, a few very wide 262,144-logit rows), dtypes (numpy
float16/32/64, torch bfloat16/float16/32/64, and invalid ones: ints, bool, complex, object),
layouts (transposed, sliced, negative strides, zero-stride broadcast rows, big-endian), NaN /
+-inf / huge / subnormal patterns, and odd parameters (negative, NaN, inf, huge, numpy
scalars, None, per-row sequences of the wrong length). Every call must either

- return a valid result: the input's array type; ids int64 of shape () / (B,) (or (B, 1)
  with ``keepdim``) inside ``0..V`` and in the support (positive probability under
  ``ts.probs`` with the same arguments, logit not -inf, not banned); probabilities of the
  logits' shape, float64 for float64 input else float32, in [0, 1], rows summing to 1; the
  same bits as the same call on a contiguous copy; or
- raise ``ValueError`` / ``TypeError`` (docs/design.md section 6), and must raise for inputs
  the contract rejects (NaN logits, invalid dtypes, V = 0, out-of-range parameters, history
  ids >= V, ...).

Never a ``pyo3_runtime.PanicException``, a ``RuntimeError`` (a caught kernel panic), another
exception type, an abort, a wrong shape, or a modified input.

Known bugs are recognised by ``known_bug`` (input signature + symptom) and tolerated there so
the fuzz keeps looking for new ones; each has a strict-xfail regression test at the end of
this file. When a bug is fixed its regression test XPASSes (and fails the suite): delete the
xfail mark and the matching ``known_bug`` arm together.

``TOKENSAMPLER_MAX_EXAMPLES`` sets the example count (default 300: about 20 s here).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tokensampler as ts
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sampling_cases import PER_ROW_KEYS

try:
    import torch
except ImportError:  # the numpy-only job: fuzz numpy inputs only
    torch = None

MAX_EXAMPLES = int(os.environ.get("TOKENSAMPLER_MAX_EXAMPLES", "300"))
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
WIDE = 262_144
NAN, INF = math.nan, math.inf
REGRESSIONS = Path(__file__).resolve().parent.parent / "fuzz" / "regressions"

# ==== the calls =================================================================================

NP_VALID = {"np.float16": np.float16, "np.float32": np.float32, "np.float64": np.float64}
NP_INVALID = {
    "np.int32": np.int32,
    "np.int64": np.int64,
    "np.uint8": np.uint8,
    "np.bool": np.bool_,
    "np.complex64": np.complex64,
    "np.object": object,
    "np.longdouble": np.longdouble,
}
if torch is not None:
    TORCH_VALID = {
        "torch.bfloat16": torch.bfloat16,
        "torch.float16": torch.float16,
        "torch.float32": torch.float32,
        "torch.float64": torch.float64,
    }
    TORCH_INVALID = {
        "torch.int64": torch.int64,
        "torch.int8": torch.int8,
        "torch.bool": torch.bool,
        "torch.complex64": torch.complex64,
    }
else:
    TORCH_VALID, TORCH_INVALID = {}, {}


@dataclass
class Call:
    """One public call plus what is needed to judge its outcome."""

    fn: str  # "sample" | "probs" | "sampler"
    logits: Any
    values: np.ndarray | None  # the logits as float64 (B, V); None for an invalid dtype/shape
    dtype: str
    layout: str
    is_torch: bool
    one_d: bool
    b: int
    v: int
    params: dict[str, Any] = field(default_factory=dict)
    history: Any = None
    bias: Any = None
    bias_at_call: bool = True  # Sampler: logit_bias given to the call, not the constructor
    seed: Any = None
    logprobs: bool = False
    top_logprobs: Any = 0
    keepdim: bool = False
    clean: bool = False  # draw only in-range arguments (the logits may still be anything)
    must_fail: list[str] = field(default_factory=list)  # why the contract rejects the call
    tags: set[str] = field(default_factory=set)  # odd inputs that known bugs key on
    banned: list[set[int]] = field(default_factory=list)  # ids biased to -inf, per row

    def run(self, logits: Any = None) -> Any:
        """Makes the call (on `logits` instead of the call's own when given)."""
        x = self.logits if logits is None else logits
        if self.fn == "probs":
            return ts.probs(x, **self.params, history=self.history, logit_bias=self.bias)
        if self.fn == "sample":
            return ts.sample(
                x,
                **self.params,
                history=self.history,
                logit_bias=self.bias,
                seed=self.seed,
                logprobs=self.logprobs,
                top_logprobs=self.top_logprobs,
            )
        s = ts.Sampler(
            **self.params,
            logit_bias=None if self.bias_at_call else self.bias,
            seed=self.seed,
            logprobs=self.logprobs,
            top_logprobs=self.top_logprobs,
        )
        return s(
            x,
            history=self.history,
            logit_bias=self.bias if self.bias_at_call else None,
            keepdim=self.keepdim,
        )

    def probs_of_same(self) -> Any:
        """`ts.probs` with this call's distribution arguments, for the support check. Without
        mirostat (stateful, a Sampler's only): its truncation only narrows that support."""
        params = {k: v for k, v in self.params.items() if k != "mirostat"}
        return ts.probs(self.logits, **params, history=self.history, logit_bias=self.bias)


def _weighted(draw: Any, table: list[tuple[int, Any]]) -> Any:
    """Picks from (weight, value) pairs (hypothesis has no weighted sampled_from); a weight of
    0 switches an option off."""
    total = sum(w for w, _ in table)
    r = draw(st.integers(0, total - 1))
    for w, value in table:
        if r < w:
            return value
        r -= w
    raise AssertionError


SPECIALS = [NAN, INF, -INF, 0.0, -0.0, 1e308, -1e308, 65504.0, 3.0e38, 1e-45, 1e-310]


def _values(draw: Any, b: int, v: int) -> tuple[np.ndarray, list[str]]:
    """(B, V) float64 logits: bulk from a seeded numpy Generator, specials from hypothesis."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1.0, 3.0, 30.0, 1e4]))
    x = rng.standard_normal((b, v)) * scale
    notes = []
    if draw(st.booleans()):
        x = np.round(x)  # ties everywhere: top-k / top-p boundaries and argmax ties
    if b and v:
        for _ in range(draw(st.integers(0, 4))):
            r, c = draw(st.integers(0, b - 1)), draw(st.integers(0, v - 1))
            x[r, c] = draw(st.sampled_from(SPECIALS))
        pattern = draw(
            st.sampled_from(["none"] * 6 + ["all-inf", "all+inf", "const", "one-finite"])
        )
        r = draw(st.integers(0, b - 1))
        if pattern == "all-inf":
            x[r] = -INF
        elif pattern == "all+inf":
            x[r] = INF
        elif pattern == "const":
            x[r] = x[r, 0] if np.isfinite(x[r, 0]) else 0.0
        elif pattern == "one-finite":
            keep = draw(st.integers(0, v - 1))
            x[r] = -INF
            x[r, keep] = 1.0
        notes.append(pattern)
    return x, notes


def _convert(x: np.ndarray, dtype: str) -> tuple[Any, np.ndarray | None]:
    """The logits in `dtype`, and their float64 values (None for invalid dtypes)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dtype in NP_VALID:
            a = x.astype(NP_VALID[dtype])
            return a, a.astype(np.float64)
        if dtype in NP_INVALID:
            safe = np.nan_to_num(np.clip(x, -100, 100))
            t = NP_INVALID[dtype]
            a = safe > 0 if t is np.bool_ else safe.astype(t)
            return a, None
        src = torch.from_numpy(x)
        if dtype in TORCH_VALID:
            t = src.to(TORCH_VALID[dtype])
            return t, t.double().numpy()
        safe = torch.from_numpy(np.nan_to_num(np.clip(x, -100, 100)))
        return safe.to(TORCH_INVALID[dtype]), None


def _layout(draw: Any, a: Any, is_torch: bool) -> tuple[Any, str]:
    """The same logical (B, V) array `a` laid out in memory in another way."""
    if is_torch:
        options = ["contiguous", "sliced-cols", "sliced-rows", "transposed", "expanded"]
    else:
        options = [
            "contiguous",
            "sliced-cols",
            "sliced-rows",
            "transposed",
            "neg-rows",
            "neg-cols",
            "broadcast",
            "big-endian",
            "readonly",
        ]
    layout = draw(st.sampled_from(options))
    if layout == "contiguous":
        return a, layout
    if layout == "sliced-cols":
        big = (torch if is_torch else np).zeros((a.shape[0], 2 * a.shape[1]), dtype=a.dtype)
        big[:, ::2] = a
        return big[:, ::2], layout
    if layout == "sliced-rows":
        big = (torch if is_torch else np).zeros((2 * a.shape[0], a.shape[1]), dtype=a.dtype)
        big[::2] = a
        return big[::2], layout
    if layout == "transposed":
        if is_torch:
            return a.t().contiguous().t(), layout
        return np.asfortranarray(a), layout
    if layout == "neg-rows":
        return a[::-1].copy()[::-1], layout
    if layout == "neg-cols":
        return a[:, ::-1].copy()[:, ::-1], layout
    if layout in ("broadcast", "expanded"):
        # Zero-stride rows: every row is row 0 (the caller checks against the same values).
        if a.shape[0] == 0:
            return a, "contiguous"
        if is_torch:
            return a[0:1].expand(a.shape[0], a.shape[1]), layout
        return np.broadcast_to(a[0], a.shape), layout
    if layout == "big-endian":
        if a.dtype.kind not in "fiuc":
            return a, "contiguous"
        return a.astype(a.dtype.newbyteorder(">")), layout
    a = a.copy()
    a.flags.writeable = False
    return a, "readonly"


# Parameter values. VALID are in range; ODD are out of range or odd types; each gets a "bad"
# flag so the call is known to have to fail.
VALID = {
    "temperature": [0.0, 0.5, 1.0, 2.0, 1e-30, 1e30, 5e-324],
    "top_k": [None, 0, 1, 2, 5, 50, 10**6, 2**64],
    "top_p": [None, 1.0, 0.9, 0.5, 1e-9, 5e-324],
    "min_p": [None, 0.0, 0.05, 0.5, 0.999],
    "repetition_penalty": [None, 1.0, 1.3, 0.5, 1e-3, 1e3, 1e39, 1e-50],
    "frequency_penalty": [None, 0.0, 0.5, -0.5, 2.0, 1e30, -1e308],
    "presence_penalty": [None, 0.0, 0.5, -0.5, 2.0, 1e30, 1e308],
    "frequency_scale": [None, 1.0, 1.1, 2.0, 1e30, 1e308],
    "presence_scale": [None, 1.0, 1.2, 3.0, 1e39],
    "dynatemp_range": [None, 0.0, 0.5, 2.0, 1e30],
    "dynatemp_exponent": [None, 1.0, 0.0, 0.5, 3.0, 1e30],
    "top_n_sigma": [None, 0.0, 0.5, 1.0, 3.0, 1e30],
    "typical_p": [None, 1.0, 0.9, 0.2, 1e-9, 5e-324],
    "epsilon_cutoff": [None, 0.0, 3e-4, 0.5, 0.999],
    "eta_cutoff": [None, 0.0, 1e-3, 0.5, 0.999],
    "xtc_probability": [None, 0.0, 0.5, 1.0],
    "xtc_threshold": [None, 0.0, 0.1, 0.5, 1.0],
    "min_tokens_to_keep": [None, 0, 1, 2, 50, 10**6],
    "penalty_last_n": [None, -1, 0, 1, 3, 64, 10**6],
    "dry_multiplier": [None, 0.0, 0.8, 2.0, 1e30],
    "dry_base": [None, 1.0, 1.75, 3.0, 1e30],
    "dry_allowed_length": [None, 0, 1, 2, 5],
    "dry_penalty_last_n": [None, -1, 0, 2, 64],
    "no_repeat_ngram_size": [None, 0, 1, 2, 3, 10**6],
    "mirostat": [None, 0, 1, 2],
    "mirostat_tau": [None, 0.0, 5.0, 1e30],
    "mirostat_eta": [None, 0.0, 0.1, 1e30],
}


def param_ok(name: str, value: float) -> bool:
    """The accepted range of each parameter (docs/design.md section 6, docs/semantics.md)."""
    if value is None:
        return True
    x = float(value)
    if math.isnan(x):
        return False
    return {
        "temperature": math.isfinite(x) and x >= 0,
        "top_k": math.isfinite(x) and x >= 0 and x == int(x),
        "top_p": 0 < x <= 1,
        "min_p": 0 <= x < 1,
        "repetition_penalty": math.isfinite(x) and x > 0,
        "frequency_penalty": math.isfinite(x),
        "presence_penalty": math.isfinite(x),
        "frequency_scale": math.isfinite(x) and x >= 1,
        "presence_scale": math.isfinite(x) and x >= 1,
        "dynatemp_range": math.isfinite(x) and x >= 0,
        "dynatemp_exponent": math.isfinite(x) and x >= 0,
        "top_n_sigma": math.isfinite(x) and x >= 0,
        "typical_p": 0 < x <= 1,
        "epsilon_cutoff": 0 <= x < 1,
        "eta_cutoff": 0 <= x < 1,
        "xtc_probability": 0 <= x <= 1,
        "xtc_threshold": 0 <= x <= 1,
        "min_tokens_to_keep": math.isfinite(x) and x >= 0 and x == int(x),
        "penalty_last_n": math.isfinite(x) and x >= -1 and x == int(x),
        "dry_multiplier": math.isfinite(x) and x >= 0,
        "dry_base": math.isfinite(x) and x >= 1,
        "dry_allowed_length": math.isfinite(x) and x >= 0 and x == int(x),
        "dry_penalty_last_n": math.isfinite(x) and x >= -1 and x == int(x),
        "no_repeat_ngram_size": math.isfinite(x) and x >= 0 and x == int(x),
        "mirostat": x in (0, 1, 2),
        "mirostat_tau": math.isfinite(x) and x >= 0,
        "mirostat_eta": math.isfinite(x) and x >= 0,
    }[name]


ODD_SCALARS = [-1, -1e-300, NAN, INF, -INF, 1e308, -1e308, 10**30, 1.5, 7, True]


def _scalar(draw: Any, name: str, call: Call) -> Any:
    bad = 0 if call.clean else 1
    value = _weighted(
        draw,
        [
            (8, ("valid", None)),
            (3 * bad, ("odd", None)),
            (bad, ("int-overflow", None)),
            (bad, ("complex", None)),
            (bad, ("string", None)),
        ],
    )[0]
    if value == "valid":
        x = draw(st.sampled_from(VALID[name]))
    elif value == "odd":
        x = draw(st.sampled_from(ODD_SCALARS))
    elif value == "int-overflow":
        call.must_fail.append(f"{name} is an int beyond float range")
        return 10**400
    elif value == "complex":
        call.must_fail.append(f"{name} is complex")
        return 0.5 + 1j
    else:
        call.must_fail.append(f"{name} is a string")
        return draw(st.sampled_from(["abc", "0.5"]))
    form = draw(st.sampled_from(["python", "python", "np.float64", "np.float32", "np.int64"]))
    y: Any = x
    if x is None or isinstance(x, bool) or form == "python":
        pass
    elif form == "np.int64":
        if isinstance(x, int) and abs(x) < 2**63:
            y = np.int64(x)
    elif form == "np.float32":
        with np.errstate(over="ignore", under="ignore"):
            y = np.float32(x)  # may round out of range (1e39 -> inf) or into it (-1e-300 -> -0)
    else:
        y = np.float64(x)
    # An empty batch may skip the range checks (there is no row to apply them to).
    if y is not None and not param_ok(name, float(y)) and call.b:
        call.must_fail.append(f"{name}={y!r} out of range")
    return y


def _any_on(value: Any) -> bool:
    """Whether a drawn parameter value (scalar or per-row, any container) is non-zero
    somewhere; False for values that cannot be read as numbers (the call fails anyway)."""
    if value is None:
        return False
    if hasattr(value, "cpu"):
        value = value.cpu().numpy()
    if isinstance(value, (list, tuple)):
        value = [0 if x is None else x for x in value]
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        return False
    return bool(np.any((a != 0) & ~np.isnan(a)))


def _param(draw: Any, name: str, call: Call) -> Any:
    """A parameter as a scalar or a per-row sequence (right or wrong length)."""
    bad = 0 if call.clean else 1
    form = _weighted(draw, [(6, "scalar"), (2, "per-row"), (bad, "wrong-length"), (bad, "2-D")])
    if form == "scalar":
        return _scalar(draw, name, call)
    n = call.b
    if form == "wrong-length":
        n = draw(st.sampled_from([0, 1, 2, 7]))
        if n == call.b or (n == 1 and call.b == 1):
            n = call.b + 1
        call.must_fail.append(f"{name} has {n} values for {call.b} rows")
    values = [draw(st.sampled_from(VALID[name])) for _ in range(n)]
    if n and not call.clean and draw(st.integers(0, 4)) == 0:
        values[draw(st.integers(0, n - 1))] = draw(st.sampled_from(ODD_SCALARS))
    for x in values:
        if not param_ok(name, x) and call.b:
            call.must_fail.append(f"{name} row value {x!r} out of range")
    container = draw(st.sampled_from(["list", "tuple", "np", "torch"]))
    if form == "2-D":
        call.must_fail.append(f"{name} is 2-D")
        return np.array([[0.5 if x is None else float(x) for x in values]] * 2)
    if container == "list":
        return values
    if container == "tuple":
        return tuple(values)
    arr = np.array([np.nan if x is None else float(x) for x in values], dtype=np.float64)
    if None in values:
        return values  # None per row only exists in Python sequences
    if container == "torch" and torch is not None:
        return torch.from_numpy(arr)
    return arr


def _history(draw: Any, call: Call) -> Any:
    b, v = call.b, call.v
    kind = _weighted(
        draw,
        [
            (4, None),
            (3, "2-D"),
            (2, "rows"),
            (2 if b == 1 or not call.clean else 0, "1-D"),
            (0 if call.clean else 1, "float"),
            (1, "torch"),
            (0 if call.clean else 1, "bad"),
        ],
    )
    if kind is None:
        return None
    length = draw(st.integers(0, 6))

    def ids(n: int) -> list[int]:
        pool = [-1, -5, 0, max(v - 1, 0), -(2**63)]
        if not call.clean:
            pool += [v, 2**40]
        out = []
        for _ in range(n):
            if draw(st.integers(0, 3)):
                out.append(draw(st.integers(0, max(v - 1, 0))))
            else:
                out.append(draw(st.sampled_from(pool)))
        return out

    if kind == "1-D":
        h = ids(length)
        if b != 1:
            call.must_fail.append(f"1-D history for {b} rows")
        elif any(i >= v for i in h):
            call.must_fail.append("history id >= V")
        return draw(st.sampled_from([list, np.array]))(h) if h else h
    if kind == "float":
        if b:  # an empty float array holds no id to reject
            call.must_fail.append("float history")
        return np.zeros((b, max(length, 1))) + 0.5
    if kind == "bad":
        call.must_fail.append("history of the wrong batch size or ndim")
        return draw(st.sampled_from([np.zeros((b + 1, 2), np.int64), np.zeros((b, 1, 1), int)]))
    rows = [ids(draw(st.integers(0, 6)) if kind == "rows" else length) for _ in range(b)]
    if any(i >= v for r in rows for i in r):
        call.must_fail.append("history id >= V")  # rows exist: b > 0
    if kind == "rows":
        if not rows:
            # An empty list means "no history rows", i.e. a (1, 0) history.
            return None
        return [np.array(r, dtype=np.int64) if draw(st.booleans()) else r for r in rows]
    arr = np.array(rows, dtype=np.int64).reshape(b, length)
    if kind == "torch" and torch is not None:
        return torch.from_numpy(arr)
    return arr.astype(draw(st.sampled_from([np.int64, np.int32]))) if (arr < 2**31).all() else arr


def _bias(draw: Any, call: Call) -> Any:
    b, v = call.b, call.v
    kind = _weighted(
        draw,
        [
            (5, None),
            (3, "dict"),
            (2, "dicts"),
            (2, "dense"),
            (1, "dense-rows"),
            (0 if call.clean else 1, "bad"),
        ],
    )
    call.banned = [set() for _ in range(b)]
    values = [-INF, 1.0, -5.0, 100.0, INF, 0.0, -1e308]

    def one_dict(row: int | None) -> dict[int, float]:
        d = {}
        for _ in range(draw(st.integers(0, 3))):
            k = v if not call.clean and draw(st.integers(0, 5)) == 0 else None
            if k is None:
                k = draw(st.integers(0, max(v - 1, 0)))
            val = draw(st.sampled_from(values))
            if not call.clean and draw(st.integers(0, 15)) == 0:
                val = NAN
            if k >= v and b > 0:  # ids are checked per row: no rows, no check
                call.must_fail.append("bias id >= V")
            d[k] = val
            rows = range(b) if row is None else [row]
            for r in rows:
                if val == -INF and k < v:
                    call.banned[r].add(k)
                else:
                    call.banned[r].discard(k)
        if any(math.isnan(x) for x in d.values()):  # a later key may have replaced the NaN
            call.must_fail.append("NaN bias")
        return d

    if kind is None:
        return None
    if kind == "dict":
        return one_dict(None)
    if kind == "dicts":
        if b == 0:
            return None
        return [one_dict(r) for r in range(b)]
    if kind in ("dense", "dense-rows"):
        shape = (v,) if kind == "dense" else (b, v)
        dense = np.zeros(shape)
        for _ in range(draw(st.integers(0, 3))):
            if v == 0 or (kind == "dense-rows" and b == 0):
                break
            pos = draw(st.integers(0, v - 1))
            val = draw(st.sampled_from(values))
            if kind == "dense":
                dense[pos] = val
            else:
                dense[draw(st.integers(0, b - 1)), pos] = val
        for r in range(b):
            row = dense if kind == "dense" else dense[r]
            call.banned[r] = set(np.flatnonzero(row == -INF).tolist())
        if torch is not None and draw(st.booleans()):
            with np.errstate(over="ignore"):  # -1e308 becomes -inf in float32: fine
                return torch.from_numpy(dense.astype(np.float32))
        return dense
    call.must_fail.append("logit_bias of a wrong shape or type")
    return draw(st.sampled_from([np.zeros(v + 1), np.zeros((b + 2, v)), {"a": 1.0}, "abc"]))


@st.composite
def calls(draw: Any) -> Call:
    is_torch = torch is not None and draw(st.integers(0, 2)) == 0
    valid = draw(st.integers(0, 9)) > 0
    table = (
        (TORCH_VALID if valid else TORCH_INVALID)
        if is_torch
        else (NP_VALID if valid else NP_INVALID)
    )
    dtype = draw(st.sampled_from(sorted(table)))
    shape_kind = _weighted(draw, [(60, "2-D"), (30, "1-D"), (2, "0-D"), (2, "3-D"), (3, "wide")])
    v = _weighted(
        draw, [(20, 1), (10, 2), (10, 3), (20, 17), (20, 64), (10, 100), (5, 1000), (2, 0)]
    )
    b = _weighted(draw, [(5, 0), (20, 1), (20, 2), (20, 4), (5, 9)])
    if shape_kind == "wide":
        v, b = WIDE, draw(st.integers(1, 2))
    if shape_kind == "1-D":
        b = 1
    if shape_kind == "0-D":
        b, v = 1, 1
    x, _notes = _values(draw, b, v)
    arr, values = _convert(x, dtype)
    # Layouts act on the (B, V) array; 1-D / 0-D / 3-D logits are views of it, so a 1-D row
    # can be strided or reversed too.
    arr, layout = _layout(draw, arr, is_torch)
    if layout in ("broadcast", "expanded") and values is not None:
        values = np.broadcast_to(values[0], values.shape).copy()
    call = Call(
        fn=draw(st.sampled_from(["sample", "probs", "sampler"])),
        logits=arr,
        values=values,
        dtype=dtype,
        layout=layout,
        is_torch=is_torch,
        one_d=shape_kind == "1-D",
        b=b,
        v=v,
        # Most calls keep their arguments in range, so that the pipeline itself (not only
        # argument checking) sees odd logits, layouts and dtypes.
        clean=draw(st.integers(0, 9)) < 6,
    )
    if shape_kind == "1-D":
        call.logits = arr[0]
    elif shape_kind == "0-D":
        call.logits = arr[0, 0]
        call.must_fail.append("0-d logits")
        call.values = None
    elif shape_kind == "3-D":
        call.logits = arr[None]
        call.must_fail.append("3-D logits")
        call.values = None
    b, v = call.b, call.v
    if not valid:
        call.must_fail.append(f"invalid dtype {dtype}")
    if v == 0:
        call.must_fail.append("V = 0")
    if call.values is not None and np.isnan(call.values).any():
        call.must_fail.append("NaN logits")

    for name in PER_ROW_KEYS:
        if draw(st.integers(0, 2)) == 0:
            call.params[name] = _param(draw, name, call)
    if call.fn != "sampler" and call.b and _any_on(call.params.get("mirostat")):
        # Mirostat keeps a state per row: only a Sampler takes it.
        call.must_fail.append("mirostat without a Sampler")
    call.history = _history(draw, call)
    call.bias = _bias(draw, call)
    call.bias_at_call = draw(st.booleans())
    if call.fn != "probs":
        seed_kind = _weighted(
            draw,
            [
                (6, "int"),
                (2, "per-row"),
                (1, "none"),
                (0 if call.clean else 1, "odd"),
                (0 if call.clean else 1, "wrong-len"),
            ],
        )
        if seed_kind == "int":
            call.seed = draw(st.sampled_from([0, 1, -1, 2**64 + 5, 2**70, np.uint64(7)]))
        elif seed_kind == "per-row":
            seeds = [draw(st.integers(-(2**63), 2**64)) for _ in range(b)]
            call.seed = (
                np.array(seeds, dtype=np.uint64)
                if all(0 <= s < 2**64 for s in seeds) and draw(st.booleans())
                else seeds
            )
        elif seed_kind == "odd":
            call.seed = draw(st.sampled_from([NAN, INF, "ab", 1.5, None]))
            if call.seed is not None:  # seeds are ints: a float one is refused, not truncated
                call.must_fail.append(f"seed={call.seed!r}")
        elif seed_kind == "wrong-len":
            call.seed = [1] * (b + 1)
            call.must_fail.append("seed of the wrong length")
        call.logprobs = draw(st.booleans())
        bad = 0 if call.clean else 1
        call.top_logprobs = _weighted(
            draw,
            [(6, 0), (2, 1), (2, 3), (1, v + 2), (bad, -1), (bad, 1.5), (1, np.int64(2))],
        )
        if call.top_logprobs in (-1, 1.5):
            call.must_fail.append(f"top_logprobs={call.top_logprobs!r}")
        call.keepdim = draw(st.booleans())
    if call.fn == "probs" and b == 0 and call.v > 0:
        call.tags.add("empty-batch-probs")
    return call


# ==== judging the outcome ========================================================================


def _snapshot(obj: Any) -> Any:
    """Raw bytes of every array inside `obj` (for the "inputs untouched" check)."""
    if torch is not None and isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        return ("torch", tuple(t.shape), t.numpy().tobytes())
    if isinstance(obj, np.ndarray):
        return (
            "np",
            obj.shape,
            str(obj.dtype),
            obj.tobytes() if obj.dtype != object else repr(obj.tolist()),
        )
    if isinstance(obj, dict):
        return ("dict", repr(sorted(obj.items(), key=repr)))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, [_snapshot(o) for o in obj])
    return repr(obj)


def known_bug(call: Call, exc: BaseException | None, out: Any) -> str | None:
    """The known bug this outcome is, if any: each gets a strict xfail regression test below
    and an arm here, so that the fuzz keeps looking for new ones (none open today)."""
    return None


def _as_np(a: Any) -> np.ndarray:
    if torch is not None and isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _check_type(call: Call, a: Any, what: str) -> None:
    if call.is_torch:
        assert isinstance(a, torch.Tensor), f"{what}: torch in, {type(a)} out"
    else:
        assert isinstance(a, (np.ndarray, np.generic)), f"{what}: numpy in, {type(a)} out"


def check_probs(call: Call, p: Any) -> np.ndarray:
    _check_type(call, p, "probs")
    arr = _as_np(p)
    want_shape = (call.v,) if call.one_d else (call.b, call.v)
    assert arr.shape == want_shape, f"probs shape {arr.shape}, want {want_shape}"
    f64 = call.dtype in ("np.float64", "torch.float64")
    assert arr.dtype == (np.float64 if f64 else np.float32), f"probs dtype {arr.dtype}"
    rows = arr.reshape(call.b, call.v).astype(np.float64)
    assert np.isfinite(rows).all(), "non-finite probability"
    assert (rows >= 0).all() and (rows <= 1 + 1e-6).all(), "probability outside [0, 1]"
    np.testing.assert_allclose(rows.sum(axis=1), 1.0, rtol=0, atol=1e-4)
    for r in range(call.b):
        if call.values is not None:
            # -inf logits and banned ids have no mass.
            assert not rows[r][call.values[r] == -INF].any(), f"row {r}: mass on a -inf logit"
        for j in call.banned[r] if call.banned else ():
            assert rows[r, j] == 0, f"row {r}: mass on banned id {j}"
    return rows


def check_ids(call: Call, ids: Any) -> np.ndarray:
    _check_type(call, ids, "ids")
    arr = _as_np(ids)
    want = () if call.one_d else (call.b,)
    if call.fn == "sampler" and call.keepdim:
        want = (*want, 1)
    assert arr.shape == want, f"ids shape {arr.shape}, want {want}"
    assert arr.dtype == np.int64, f"ids dtype {arr.dtype}"
    flat = arr.reshape(-1)
    assert ((flat >= 0) & (flat < call.v)).all(), f"ids {flat} outside 0..{call.v}"
    for r, j in enumerate(flat):
        if call.values is not None:
            assert call.values[r, j] != -INF, f"row {r}: id {j} has a -inf logit"
        assert not call.banned or j not in call.banned[r], f"row {r}: banned id {j}"
    return flat


def check_output(call: Call, out: Any) -> None:
    if call.fn == "probs":
        check_probs(call, out)
        return
    if call.logprobs or (call.top_logprobs not in (0, None) and int(call.top_logprobs) > 0):
        assert isinstance(out, ts.SampleOutput), f"{type(out)} instead of SampleOutput"
        flat = check_ids(call, out.ids)
        lps = _as_np(out.logprobs).reshape(-1)
        assert lps.shape == (call.b,) and not np.isnan(lps).any() and (lps <= 1e-6).all()
        if call.logprobs:
            raw = _as_np(out.raw_logprobs).reshape(-1)
            assert raw.shape == (call.b,) and not np.isnan(raw).any() and (raw <= 1e-6).all()
        n = int(call.top_logprobs)
        tid, tlp = _as_np(out.top_ids), _as_np(out.top_logprobs)
        want = (n,) if call.one_d else (call.b, n)
        assert tid.shape == want and tlp.shape == want, f"top shapes {tid.shape}, {tlp.shape}"
        tid, tlp = tid.reshape(call.b, n), tlp.reshape(call.b, n)
        assert ((tid >= -1) & (tid < call.v)).all()
        assert not np.isnan(tlp).any()
        assert ((tid == -1) == (tlp == -INF)).all(), "padding slots must pair -1 with -inf"
        assert (tlp[:, 1:] <= tlp[:, :-1] + 1e-12).all(), "top log-probabilities not sorted"
    else:
        flat = check_ids(call, out)
    if call.b == 0:
        return
    # The drawn id is in the support of the distribution `probs` reports for the same call.
    p = call.probs_of_same()
    rows = check_probs(call, p)
    for r, j in enumerate(flat):
        assert rows[r, j] > 0, f"row {r}: drew id {j} of probability 0"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, ts.SampleOutput):
        return all(_same(x, y) for x, y in zip(a, b))
    if a is None or b is None:
        return a is b
    return np.array_equal(_as_np(a), _as_np(b), equal_nan=True)


def _contiguous(x: Any) -> Any:
    if torch is not None and isinstance(x, torch.Tensor):
        return x.contiguous()
    return np.ascontiguousarray(x)


def judge(call: Call) -> str:
    """Runs the call and asserts the contract on its outcome, which it returns in words
    ("valid result", "error: ValueError", "known bug: ...") for scripts/reliability.py."""
    before = [_snapshot(o) for o in (call.logits, call.history, call.bias, call.params)]
    exc: BaseException | None = None
    out = None
    with warnings.catch_warnings():
        # Under pytest's filterwarnings=error a warning is an exception of its own type; make
        # it so here too, whatever the runner's settings, so it is judged like one.
        warnings.simplefilter("error")
        try:
            out = call.run()
        except BaseException as e:  # noqa: BLE001 - PanicException is a BaseException
            exc = e
    after = [_snapshot(o) for o in (call.logits, call.history, call.bias, call.params)]
    assert before == after, "an input was modified by the call"

    bug = known_bug(call, exc, out)
    if bug is not None:
        event(f"known bug: {bug}")
        return f"known bug: {bug}"
    if exc is not None:
        if not isinstance(exc, (ValueError, TypeError)) or type(exc).__name__ == "PanicException":
            raise AssertionError(
                f"{type(exc).__module__}.{type(exc).__name__} is not ValueError/TypeError"
            ) from exc
        event(f"error: {type(exc).__name__}")
        return f"error: {type(exc).__name__}"
    assert not call.must_fail, f"accepted input the contract rejects: {call.must_fail}"
    check_output(call, out)
    event("valid result")
    # Layout must not matter: a contiguous copy gives the same bits (fixed seeds only).
    deterministic = call.fn == "probs" or call.seed is not None
    if call.layout != "contiguous" and deterministic:
        again = call.run(_contiguous(call.logits))
        assert _same(out, again), f"{call.layout} layout differs from its contiguous copy"
    return "valid result"


@FUZZ_SETTINGS
@given(calls())
def test_fuzz_public_calls(call: Call) -> None:
    judge(call)


@FUZZ_SETTINGS
@given(st.lists(calls(), min_size=2, max_size=4))
def test_fuzz_interpreter_survives_sequences(seq: list[Call]) -> None:
    """Errors leave no state behind: a failing call does not poison the next one."""
    for call in seq:
        judge(call)
    ids = ts.sample(np.array([0.0, 1.0, 2.0]), seed=0, temperature=0)
    assert int(ids) == 2


@FUZZ_SETTINGS
@given(st.integers(0, 8), calls())
def test_fuzz_thread_count(n: int, call: Call) -> None:
    """set_num_threads / get_num_threads: any small count works and changes no result."""
    ts.set_num_threads(0)
    default = ts.get_num_threads()  # rayon's default, whatever an earlier test left behind
    try:
        ts.set_num_threads(n)
        assert ts.get_num_threads() == (n or default)
        judge(call)
    finally:
        ts.set_num_threads(0)
    assert ts.get_num_threads() == default


@pytest.mark.parametrize("bad", [-1.5, "2", None, [2], 2.0])
def test_set_num_threads_rejects_non_counts(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        ts.set_num_threads(bad)
    assert ts.get_num_threads() >= 1


# ==== replays of the cargo-fuzz regressions =====================================================


# Inputs of fuzz/regressions that hit a known bug, with the reason (strict xfail until fixed).
KNOWN_RUST_REGRESSIONS: dict[str, str] = {}


def _regression_files() -> list[Any]:
    files = sorted(p for p in REGRESSIONS.iterdir() if p.is_file() and p.suffix != ".md")
    return [
        pytest.param(
            p,
            id=p.name,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_RUST_REGRESSIONS[p.name])]
            if p.name in KNOWN_RUST_REGRESSIONS
            else [],
        )
        for p in files
    ]


def test_regression_inputs_exist() -> None:
    assert len(_regression_files()) >= 1


@pytest.mark.parametrize("path", _regression_files())
def test_rust_fuzz_regression_replays_through_python(path: Path) -> None:
    """Each input the Rust fuzzer keeps goes through the Python extension (tests/fuzz_replay.py
    decodes it exactly like the Rust target) in a subprocess: no panic, no abort, valid output
    or the kernels' SamplingError (a TypeError would be the replay misusing the binding)."""
    replay = Path(__file__).resolve().parent / "fuzz_replay.py"
    r = subprocess.run(
        [sys.executable, str(replay), str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RUST_BACKTRACE": "0"},
    )
    assert r.returncode == 0, f"replay failed (rc {r.returncode}):\n{r.stdout}\n{r.stderr[-2000:]}"
    assert "-> ok" in r.stdout or "-> error: SamplingError: " in r.stdout, r.stdout


# ==== regressions of the bugs the fuzz found (strict xfail until fixed) =========================

BUG = "bug (issue #6 fuzz): "


def test_bug_probs_of_empty_batch_keeps_vocab_axis() -> None:
    p = ts.probs(np.zeros((0, 5), np.float32))
    assert p.shape == (0, 5)


def test_bug_huge_top_logprobs_panics() -> None:
    # A caught kernel panic surfaces as RuntimeError; the contract asks for ValueError.
    with pytest.raises(ValueError):
        ts.sample(np.zeros(3), seed=1, top_logprobs=2**62)


def test_bug_huge_top_logprobs_aborts_process() -> None:
    # The allocation of top_n slots fails and Rust aborts (SIGABRT): run it in a subprocess.
    code = (
        "import numpy as np, tokensampler as ts\n"
        "try:\n"
        "    ts.sample(np.zeros(3), seed=1, top_logprobs=10**13)\n"
        "except ValueError:\n"
        "    pass\n"
        "print('alive')\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "alive" in r.stdout, r.stderr[-500:]


def test_bug_top_logprobs_beyond_u64_is_overflow_error() -> None:
    with pytest.raises((ValueError, TypeError)):
        ts.sample(np.zeros(3), seed=1, top_logprobs=2**64)


@pytest.mark.parametrize("per_row", [False, True])
def test_bug_int_parameter_beyond_float_range(per_row: bool) -> None:
    top_k = [10**400, 1] if per_row else 10**400
    with pytest.raises((ValueError, TypeError)):
        ts.probs(np.zeros((2, 3)), top_k=top_k)


def test_bug_infinite_seed_is_overflow_error() -> None:
    with pytest.raises((ValueError, TypeError)):
        ts.sample(np.zeros(3), seed=INF)


def test_bug_complex_parameter() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError):
            ts.probs(np.zeros(3), temperature=1 + 5j)


def test_bug_complex_dense_bias() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(TypeError):
            ts.probs(np.zeros(3), logit_bias=np.array([1j, 0, 0]))


def test_bug_string_parameter_accepted() -> None:
    with pytest.raises(TypeError):
        ts.probs(np.zeros(3), temperature="0.5")


def test_bug_bias_list_with_non_dict() -> None:
    with pytest.raises((ValueError, TypeError)):
        ts.probs(np.zeros((2, 3)), logit_bias=[{1: 1.0}, 5])


@pytest.mark.parametrize("key", [2**70, -1])
def test_bug_bias_key_beyond_int64_or_negative(key: int) -> None:
    # A negative key would read as the kernels' padding and be ignored silently.
    with pytest.raises(ValueError, match=f"logit_bias token ids must be >= 0 and < V, got {key}"):
        ts.probs(np.zeros(3), logit_bias={key: 1.0})


@pytest.mark.parametrize("form", ["uint64", "list"])
def test_bug_history_id_beyond_int64_is_ignored(form: str) -> None:
    h = np.array([2**63], dtype=np.uint64) if form == "uint64" else [2**63]
    with pytest.raises(ValueError):
        ts.sample(np.zeros(3), seed=1, history=h, repetition_penalty=2.0)


def test_bug_bfloat16_dense_bias() -> None:
    if torch is None:
        pytest.skip("torch not installed")
    x = torch.zeros(3, dtype=torch.bfloat16)
    p = ts.probs(x, logit_bias=torch.tensor([0.0, -INF, 0.0], dtype=torch.bfloat16))
    assert p.tolist() == [0.5, 0.0, 0.5]


def test_bug_negative_thread_count() -> None:
    with pytest.raises(ValueError):
        ts.set_num_threads(-1)


@pytest.mark.parametrize("seed", [1.5, 1.0, [1.5], np.array([3.0]), "5", ["5"], [1, None]])
def test_non_integer_seed_is_refused_not_truncated(seed: Any) -> None:
    with pytest.raises(TypeError, match="seed must be an int"):
        ts.sample(np.zeros(3), seed=seed)


@pytest.mark.parametrize("seed", [7, np.uint64(7), [7], np.array([7], dtype=np.int32), 2**64 + 7])
def test_integer_seeds_of_any_form_agree(seed: Any) -> None:
    """Any int is a seed, taken mod 2**64, so all these forms are the same seed as 7."""
    x = np.linspace(0.0, 1.0, 50)
    assert int(ts.sample(x, seed=seed)) == int(ts.sample(x, seed=7))


def test_per_row_seed_lists_mix_small_and_huge_ints() -> None:
    """A list of per-row seeds may mix ints below and above 2**63 (numpy alone would read
    such a list as float64): each row gets its own seed mod 2**64, as with a uint64 array."""
    x = np.tile(np.linspace(0.0, 1.0, 50), (3, 1))
    want = ts.sample(x, seed=np.array([0, 2**64 - 1, 5], dtype=np.uint64))
    np.testing.assert_array_equal(ts.sample(x, seed=[0, 2**64 - 1, 5]), want)
    np.testing.assert_array_equal(ts.sample(x, seed=(2**64, -1, 2**64 + 5)), want)
    assert ts.Sampler(seed=[5, 2**63])(x[:2]).shape == (2,)


def test_number_like_parameters_still_accepted() -> None:
    """The stricter checks refuse strings and complex numbers, not numpy scalars, bools,
    0-d arrays or big-but-finite ints."""
    x = np.linspace(0.0, 2.0, 8)
    want = ts.probs(x, temperature=0.5, top_k=3)
    for t, k in [(np.float32(0.5), np.int64(3)), (np.array(0.5), 3.0), (0.5, [3])]:
        np.testing.assert_array_equal(ts.probs(x, temperature=t, top_k=k), want)
    np.testing.assert_array_equal(ts.probs(x, top_k=10**300), ts.probs(x))  # keeps all 8
    with pytest.raises(TypeError, match="logit_bias keys"):
        ts.probs(x, logit_bias={"3": 1.0})
    with pytest.raises(TypeError, match="logit_bias values"):
        ts.probs(x, logit_bias={3: "1.0"})
