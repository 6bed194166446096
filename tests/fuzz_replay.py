"""Replays a cargo-fuzz input (fuzz/fuzz_targets/pipeline.rs) through the Python extension.

The bytes are decoded exactly as the Rust target's ``Case::decode`` does (keep the two in
step), and the case goes through ``tokensampler._native.run``, the binding of
``pipeline::run_batch`` that every public call ends in. A Rust regression found by the fuzzer
is kept as a file in fuzz/regressions/ and replayed by tests/test_fuzz.py in a subprocess (an
abort must not take pytest down), so the lead's ``cargo test``-free Python suite still covers
it.

    python tests/fuzz_replay.py FILE...     # prints each decoded case and its outcome

Two things the binding cannot express are dropped: a ``probs`` buffer of the wrong length
(the binding allocates its own) and nothing else; the case is otherwise the same call.
"""

from __future__ import annotations

import math
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokensampler import _native

# The Rust target reads "off" from the parameter table too (PARAMS[col].default).
OFF = tuple(off for _, off, _, _ in _native.PARAMS)
N_PARAMS = len(OFF)
EDGES = (
    0.0,
    1.0,
    0.5,
    2.0,
    -1.0,
    -0.0,
    math.nan,
    math.inf,
    -math.inf,
    1e308,
    -1e308,
    1e39,
    -1e39,
    1e-50,
    5e-324,
    1e-300,
    0.999_999_999_999,
    1.000_000_000_001,
    3.0,
    50.0,
    1e18,
    sys.float_info.max,
    sys.float_info.min,
    0.1,
)
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
U64 = 2**64 - 1
DTYPES = ("f32", "f64", "f16", "bf16")


class Bytes:
    """Front-to-back reader; zeros past the end (as in the Rust target)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u8(self) -> int:
        b = self.data[self.pos] if self.pos < len(self.data) else 0
        self.pos += 1
        return b

    def u16(self) -> int:
        lo = self.u8()
        return lo | self.u8() << 8

    def u64(self) -> int:
        return sum(self.u8() << (8 * i) for i in range(8))

    def f64_bits(self) -> float:
        return struct.unpack("<d", struct.pack("<Q", self.u64()))[0]


def _i8(b: int) -> int:
    return b - 256 if b >= 128 else b


def _param_value(b: Bytes, col: int) -> float:
    sel = b.u8()
    k = sel % 8
    if k <= 2:
        return OFF[col]
    if k in (3, 4):
        return EDGES[b.u8() % len(EDGES)]
    if k == 5:
        if col == 1:
            return float(b.u8() % 70)
        if col in (2, 3):
            return b.u8() / 255.0
        return 1.0 + b.u8() / 32.0
    if k == 6:
        return -b.u8() / 16.0 + 4.0
    return b.f64_bits()


def _logit(b: Bytes) -> float:
    c = b.u8()
    k = c % 24
    if k <= 13:
        return _i8(b.u8()) / 8.0
    if k == 14:
        return math.inf
    if k in (15, 16):
        return -math.inf
    if k == 17:
        return math.nan
    if k == 18:
        return b.f64_bits()
    if k == 19:
        return 3.0e38 * (-1.0 if c & 0x80 else 1.0)
    if k == 20:
        return 65504.0 * (-1.0 if c & 0x80 else 1.0)
    if k == 21:
        return 1e-42
    if k == 22:
        u = b.u16()
        return (u - 65536 if u >= 32768 else u) * 1e3
    return 0.0


def _token_id(b: Bytes, v: int) -> int:
    c = b.u8() % 16
    if c <= 9:
        return b.u8() % max(v, 1)
    if c == 15:
        return -(b.u8() + 1)
    return {10: -1, 11: v - 1, 12: v, 13: I64_MIN, 14: I64_MAX}[c]


@dataclass
class Case:
    """One decoded call of run_batch (fields as in the Rust `Case`)."""

    dtype: str
    b: int
    v: int
    logits: list[float]
    params: list[list[float]]
    history: tuple[list[int], int] | None
    bias: tuple[list[int], list[float], int] | None
    seeds: int | list[int]  # an int: one shared seed; a list: per-row seeds
    step: int
    want_raw: bool
    top_n: int
    probs_len: int | None


def decode(data: bytes) -> Case:
    """Mirrors `Case::decode` of fuzz/fuzz_targets/pipeline.rs."""
    b = Bytes(data)
    dtype = DTYPES[b.u8() & 3]
    batch = b.u8() % 6
    wide = b.u8()
    if wide == 0xFF:
        v = 16_384 + b.u16() % 16_384
    elif 0xF0 <= wide <= 0xFD:
        v = 1 + b.u16() % 4096
    elif wide == 0xFE:
        v = 0
    else:
        v = 1 + b.u8() % 48
    if wide == 0xFF:
        batch = 4

    logits: list[float] = []
    if v > 64:
        state = b.u64() | 1
        specials = []
        for _ in range(b.u8() % 8):
            pos = b.u16() % max(batch * v, 1)
            specials.append((pos, _logit(b)))
        mask = 2**64 - 1
        for _ in range(batch * v):
            state = (state * 6_364_136_223_846_793_005 + 1) & mask
            logits.append(((state >> 40) - (1 << 23)) / float(1 << 20))
        for i, x in specials:
            if i < len(logits):
                logits[i] = x
    else:
        logits = [_logit(b) for _ in range(batch * v)]

    flags = b.u8()
    n_param_rows = batch if flags & 1 and batch > 1 else 1
    params = [[_param_value(b, col) for col in range(N_PARAMS)] for _ in range(n_param_rows)]

    history = None
    if flags & 2:
        width = b.u8() % 12
        rows = b.u8() % 6 if b.u8() % 8 == 0 else batch
        history = ([_token_id(b, v) for _ in range(rows * width)], width)
    bias = None
    if flags & 4:
        width = b.u8() % 6
        rows = 1 if b.u8() % 3 == 0 else batch
        ids = [_token_id(b, v) for _ in range(rows * width)]
        vals = []
        for _ in ids:
            k = b.u8() % 4
            if k == 0:
                vals.append(-math.inf)
            elif k == 1:
                vals.append(EDGES[b.u8() % len(EDGES)])
            else:
                vals.append(_i8(b.u8()) / 4.0)
        if b.u8() % 8 != 0:
            vals = [0.0 if math.isnan(x) else x for x in vals]
        if b.u8() % 16 == 0 and vals:
            vals.pop()
        bias = (ids, vals, width)
    if flags & 8:
        n = b.u8() % 6 if b.u8() % 8 == 0 else batch
        seeds: int | list[int] = [b.u64() for _ in range(n)]
    else:
        seeds = b.u64()
    step = b.u64() if flags & 16 else b.u8()
    want_raw = bool(flags & 32)
    top_sel = b.u8()
    k = top_sel % 8
    if k <= 3:
        top_n = 0
    elif k <= 6:
        top_n = b.u8() % (v + 3)
    else:
        top_n = v + b.u8()
    if top_sel == 0xFF:
        top_n = 1 << 62
    probs_len = None
    if flags & 64:
        probs_len = batch * v + 1 if b.u8() % 16 == 0 else batch * v
    return Case(dtype, batch, v, logits, params, history, bias, seeds, step, want_raw, top_n,
                probs_len)  # fmt: skip


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """float64 -> bfloat16 bit patterns, rounded once to nearest-even like half::bf16."""
    out = np.empty(x.shape, dtype=np.uint16)
    for i, val in enumerate(x.reshape(-1)):
        val = float(val)
        if math.isnan(val):
            bits = 0x7FC0
        elif math.isinf(val) or val == 0.0:
            bits = int(np.float32(val).view(np.uint32)) >> 16
        else:
            m, e = math.frexp(val)
            if e <= -126:  # subnormal range of bfloat16: a fixed step of 2**-133
                q = round(val / 2.0**-133) * 2.0**-133
            else:
                q = round(m * 256) / 256 * 2.0**e
            bits = (
                (0xFF80 if val < 0 else 0x7F80)
                if abs(q) > 3.3895313892515355e38
                else int(np.float32(q).view(np.uint32)) >> 16
            )
        out.reshape(-1)[i] = bits
    return out


def native_args(case: Case) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The arguments of `tokensampler._native.run` for this case."""
    x = np.array(case.logits, dtype=np.float64).reshape(case.b, case.v)
    with np.errstate(all="ignore"):
        if case.dtype == "f32":
            logits = x.astype(np.float32)
        elif case.dtype == "f64":
            logits = x
        elif case.dtype == "f16":
            logits = x.astype(np.float16)
        else:
            logits = _bf16_bits(x)
    params = np.array(case.params, dtype=np.float64).reshape(-1, N_PARAMS)
    hist = None
    if case.history is not None:
        ids, width = case.history
        rows = len(ids) // width if width else 1
        hist = np.array(ids, dtype=np.int64).reshape(rows, width)
    bias_ids = bias_vals = None
    if case.bias is not None:
        ids, vals, width = case.bias
        rows = len(ids) // width if width else 1
        bias_ids = np.array(ids, dtype=np.int64).reshape(rows, width)
        # The kernel reads the values as one flat slice, so a short one crosses as (1, n).
        bias_vals = np.array(vals, dtype=np.float64).reshape(1, -1)
    if isinstance(case.seeds, list):
        seeds, per_row = np.array(case.seeds, dtype=np.uint64), True
    else:
        seeds, per_row = np.array([case.seeds], dtype=np.uint64), False
    return (logits,), dict(
        is_bf16=case.dtype == "bf16",
        params=params,
        history=hist,
        bias_ids=bias_ids,
        bias_values=bias_vals,
        seeds=seeds,
        per_row_seeds=per_row,
        step=case.step,
        want_probs=case.probs_len is not None,
        want_raw_logprob=case.want_raw,
        top_n=case.top_n,
    )


def check_outcome(case: Case, out: Any) -> None:
    """The output contract the Rust target asserts, on the binding's outputs."""
    ids, lps, raw, top_ids, top_lps, probs = (
        out.ids,
        out.logprobs,
        out.raw_logprobs,
        out.top_ids,
        out.top_logprobs,
        out.probs,
    )
    assert np.asarray(top_lps).shape == (case.b, case.top_n)
    ids = np.asarray(ids)
    assert ids.shape == (case.b,), f"ids shape {ids.shape}"
    assert ((ids >= 0) & (ids < case.v)).all(), f"ids {ids} outside 0..{case.v}"
    assert not np.isnan(lps).any() and (np.asarray(lps) <= 1e-6).all(), f"logprobs {lps}"
    if case.want_raw:
        assert not np.isnan(raw).any() and (np.asarray(raw) <= 1e-6).all(), f"raw {raw}"
    assert np.asarray(top_ids).shape == (case.b, case.top_n)
    if probs is not None and case.b:
        p = np.asarray(probs, dtype=np.float64)
        assert p.shape == (case.b, case.v), f"probs shape {p.shape}"
        assert np.isfinite(p).all() and (p >= 0).all() and (p <= 1 + 1e-6).all()
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-3)
        assert (p[np.arange(case.b), ids] > 0).all(), "drew an id of probability 0"


def replay(data: bytes) -> str:
    """Runs one input; returns "ok" or "error: ..." or raises AssertionError on a bad result
    (a kernel panic arrives as RuntimeError and is raised as-is)."""
    from tokensampler import _native

    case = decode(data)
    try:
        args, kwargs = native_args(case)
        out = _native.run(*args, **kwargs)
    except (ValueError, TypeError) as e:
        return f"error: {type(e).__name__}: {e}"
    check_outcome(case, out)
    return "ok"


def main(paths: list[str]) -> int:
    for p in paths:
        data = Path(p).read_bytes()
        case = decode(data)
        short = {k: (v if k != "logits" or len(v) <= 32 else f"<{len(v)} values>")
                 for k, v in case.__dict__.items()}  # fmt: skip
        print(f"{p}: {short}")
        print(f"  -> {replay(data)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
