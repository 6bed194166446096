"""Independent float64 numpy oracle of the sampling pipeline (docs/design.md section 2).

Written from docs/design.md only, never from the Rust or Python code under test, and kept
deliberately simple: one row at a time, full sorts, float64 throughout.

    probs = oracle_probs(logits, temperature=..., top_k=..., ...)   # same keywords as ts.probs

returns the final distribution (zeros outside the kept set), shape (V,) or (B, V), float64.

``oracle_rows`` returns the per-row intermediate values (``RowTrace``) and ``row_bounds`` /
``check_row`` turn them into a comparison that is sound for an implementation that computes
in float32 (or float64) arithmetic: see ``check_row`` for the error model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "EPS32",
    "EPS64",
    "RowTrace",
    "check_row",
    "check_sampled",
    "oracle_probs",
    "oracle_rows",
    "penalised_logits",
    "row_bounds",
]

EPS32 = 2.0**-24  # unit roundoff of float32 (the compute type for f32 / f16 / bf16 input)
EPS64 = 2.0**-53  # unit roundoff of float64


# ---------------------------------------------------------------------------------------------
# Parameter normalisation: every numeric parameter is a scalar or a length-B sequence.
# ---------------------------------------------------------------------------------------------


def _as_numpy(a):
    if hasattr(a, "detach") and hasattr(a, "cpu"):  # a torch tensor, without importing torch
        a = a.detach().cpu()
        if str(a.dtype) == "torch.bfloat16":
            a = a.float()
        return a.numpy()
    return np.asarray(a)


def _per_row(value, batch: int, off):
    """A scalar or a length-B sequence -> a list of B Python values (None -> ``off``)."""
    if value is None:
        return [off] * batch
    arr = _as_numpy(value)
    if arr.ndim == 0:
        v = arr.item()
        return [off if v is None else v] * batch
    if arr.shape != (batch,):
        raise ValueError(f"per-row parameter has shape {arr.shape}, expected ({batch},)")
    return [off if v is None else v for v in arr.tolist()]


def _histories(history, batch: int) -> list[np.ndarray]:
    if history is None:
        return [np.zeros(0, dtype=np.int64)] * batch
    if isinstance(history, (list, tuple)) and (len(history) == 0 or not np.isscalar(history[0])):
        if len(history) != batch:
            raise ValueError("history list must have B entries")
        return [np.asarray(_as_numpy(h), dtype=np.int64).reshape(-1) for h in history]
    arr = np.asarray(_as_numpy(history), dtype=np.int64)
    if arr.ndim == 1:
        if batch != 1:
            raise ValueError("1-D history needs B == 1")
        return [arr]
    if arr.shape[0] != batch:
        raise ValueError("history batch size != B")
    return [arr[i] for i in range(batch)]


def _biases(logit_bias, batch: int, vocab: int) -> list[np.ndarray | None]:
    if logit_bias is None:
        return [None] * batch

    def dense_from_dict(d) -> np.ndarray:
        b = np.zeros(vocab, dtype=np.float64)
        for j, v in d.items():
            b[int(j)] += float(v)
        return b

    if isinstance(logit_bias, dict):
        b = dense_from_dict(logit_bias)
        return [b] * batch
    if (
        isinstance(logit_bias, (list, tuple))
        and len(logit_bias)
        and isinstance(logit_bias[0], dict)
    ):
        if len(logit_bias) != batch:
            raise ValueError("list of bias dicts must have B entries")
        return [dense_from_dict(d) for d in logit_bias]
    arr = np.asarray(_as_numpy(logit_bias), dtype=np.float64)
    if arr.shape == (vocab,):
        return [arr] * batch
    if arr.shape == (batch, vocab):
        return [arr[i] for i in range(batch)]
    raise ValueError(f"dense logit_bias of shape {arr.shape}")


# ---------------------------------------------------------------------------------------------
# The pipeline, one row.
# ---------------------------------------------------------------------------------------------


@dataclass
class RowTrace:
    """Every intermediate value of one row, for exact and tolerance-aware comparisons."""

    probs: np.ndarray  # final distribution (float64, zeros outside the kept set)
    greedy: bool  # T == 0
    y: np.ndarray  # penalised logits divided by k (x / k): the greedy criterion
    z: np.ndarray  # tempered logits x / (T k) (equal to y when greedy)
    argmax: int  # greedy choice (lowest index among the maxima of y)
    keep_k: np.ndarray  # bool: survives top-k (all True when top-k is off or greedy)
    p_soft: np.ndarray  # softmax over keep_k (before top-p / min-p)
    keep_p: np.ndarray  # bool: survives top-p
    keep_m: np.ndarray  # bool: survives min-p
    top_k: int
    top_p: float
    min_p: float
    mag: np.ndarray  # per-token magnitude scale of the float arithmetic (error model)
    params: dict = field(default_factory=dict)


def penalised_logits(x, *, hist=None, bias=None, r=1.0, af=0.0, ap=0.0, sf=1.0, sp=1.0):
    """Steps 1-2 of docs/design.md section 2 for one row.

    Returns (x_pen, k, mag) in float64: the penalised logits (shifted by -min when k-scaling
    is on and a finite logit is negative), the k-scaling divisors and the per-token magnitude
    of the operands (used only to bound the rounding error of a float32 implementation).
    """
    x = np.array(x, dtype=np.float64, copy=True)
    vocab = x.shape[0]
    mag = np.abs(x)
    # 1. bias and bans: -inf bias bans the token.
    if bias is not None:
        bias = np.asarray(bias, dtype=np.float64)
        ban = np.isneginf(bias)
        finite_bias = np.where(ban, 0.0, bias)
        with np.errstate(invalid="ignore"):
            x = x + finite_bias
        x[ban] = -np.inf
        mag = mag + np.abs(finite_bias)
    # 2. penalties; c[j] = count of j in the history, negative ids are padding.
    if hist is None:
        hist = np.zeros(0, dtype=np.int64)
    hist = np.asarray(hist, dtype=np.int64).reshape(-1)
    c = np.bincount(hist[hist >= 0], minlength=vocab).astype(np.float64)
    seen = c > 0
    if r != 1.0:
        x = np.where(seen, np.where(x > 0, x / r, x * r), x)
        mag = np.where(seen, mag * max(r, 1.0 / r), mag)
    if af != 0.0 or ap != 0.0:
        x = x - (af * c + ap * seen)
        mag = mag + abs(af) * c + abs(ap) * seen
    k = 1.0 + (sf - 1.0) * c + (sp - 1.0) * seen
    if sf != 1.0 or sp != 1.0:
        finite = np.isfinite(x)
        if finite.any():
            lo = x[finite].min()
            if lo < 0:
                x = x - lo
                mag = mag + abs(lo)
    return x, k, mag


def _row(x, hist, bias, p: dict) -> RowTrace:
    vocab = x.shape[0]
    T = float(p["temperature"])
    top_k = int(p["top_k"] or 0)
    top_p = float(1.0 if p["top_p"] is None else p["top_p"])
    min_p = float(0.0 if p["min_p"] is None else p["min_p"])
    xp, k, mag = penalised_logits(
        x,
        hist=hist,
        bias=bias,
        r=float(p["repetition_penalty"]),
        af=float(p["frequency_penalty"]),
        ap=float(p["presence_penalty"]),
        sf=float(p["frequency_scale"]),
        sp=float(p["presence_scale"]),
    )
    y = xp / k
    argmax = int(np.argmax(y))  # numpy returns the first (lowest) index of a tie
    all_true = np.ones(vocab, dtype=bool)
    if T == 0.0:
        probs = np.zeros(vocab)
        probs[argmax] = 1.0
        return RowTrace(
            probs, True, y, y, argmax, all_true, probs.copy(), all_true, all_true,
            top_k, top_p, min_p, mag / k, dict(p),
        )  # fmt: skip

    # 3. temperature (k-scaled)
    z = xp / (T * k)
    # 4. top-k, ties at the boundary kept.
    keep_k = all_true.copy()
    if 0 < top_k < vocab:
        kth = np.sort(z)[::-1][top_k - 1]
        keep_k = z >= kth
    # 5. softmax over the kept set; +inf tokens share all the mass.
    zk = np.where(keep_k, z, -np.inf)
    zmax = zk.max()
    if np.isposinf(zmax):
        e = (zk == np.inf).astype(np.float64)
    else:
        e = np.exp(zk - zmax)
    p_soft = e / e.sum()
    # 6. top-p: descending probability, ties by lower id; shortest prefix reaching top_p.
    keep_p = all_true.copy()
    if top_p < 1.0:
        order = np.lexsort((np.arange(vocab), -p_soft))
        cum = np.cumsum(p_soft[order])
        reach = np.flatnonzero(cum >= top_p)
        n = reach[0] + 1 if reach.size else vocab
        keep_p = np.zeros(vocab, dtype=bool)
        keep_p[order[:n]] = True
    # 7. min-p, relative to the most probable token.
    keep_m = all_true.copy()
    if min_p > 0.0:
        keep_m = p_soft >= min_p * p_soft.max()
    # 8. renormalise.
    final = np.where(keep_p & keep_m, p_soft, 0.0)
    final = final / final.sum()
    return RowTrace(
        final, False, y, z, argmax, keep_k, p_soft, keep_p, keep_m, top_k, top_p, min_p,
        mag / (T * k), dict(p),
    )  # fmt: skip


_DEFAULTS = {
    "temperature": 1.0,
    "top_k": None,
    "top_p": None,
    "min_p": None,
    "repetition_penalty": 1.0,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
    "frequency_scale": 1.0,
    "presence_scale": 1.0,
}
_OFF = {"top_k": 0, "top_p": 1.0, "min_p": 0.0}


def oracle_rows(logits, *, logit_bias=None, history=None, **params) -> list[RowTrace]:
    """Per-row traces of the pipeline; ``logits`` is (V,) or (B, V), any float dtype."""
    unknown = set(params) - set(_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown parameters {unknown}")
    x = _as_numpy(logits)
    x2 = np.atleast_2d(x).astype(np.float64)
    batch, vocab = x2.shape
    per_row = {
        name: _per_row(params.get(name, default), batch, _OFF.get(name, default))
        for name, default in _DEFAULTS.items()
    }
    hists = _histories(history, batch)
    biases = _biases(logit_bias, batch, vocab)
    return [
        _row(x2[i], hists[i], biases[i], {n: v[i] for n, v in per_row.items()})
        for i in range(batch)
    ]


def oracle_probs(logits, **kwargs) -> np.ndarray:
    """The final distribution per row, float64, shape (V,) or (B, V)."""
    rows = oracle_rows(logits, **kwargs)
    out = np.stack([r.probs for r in rows])
    return out[0] if np.ndim(_as_numpy(logits)) == 1 else out


# ---------------------------------------------------------------------------------------------
# Tolerance-aware comparison against a float32 / float64 implementation.
# ---------------------------------------------------------------------------------------------


def compute_eps(dtype) -> float:
    """Unit roundoff of the arithmetic an implementation uses for this input dtype."""
    name = str(dtype)
    return EPS64 if name in ("float64", "torch.float64", "<class 'numpy.float64'>") else EPS32


def _delta(trace: RowTrace, eps: float) -> float:
    """Bound on |z_impl - z_oracle| (absolute, in logit units) for a row.

    Each of the O(10) float operations of steps 1-3 (bias add, penalty multiply/divide,
    subtraction, shift, T*k and the division, the max-subtraction before exp, the exp itself)
    contributes at most one rounding relative to the magnitude of its operands; 32 eps times
    the largest operand magnitude of the row (+1 for exp's own relative error) bounds them.
    """
    finite = np.isfinite(trace.z)
    m = float(trace.mag[finite].max()) if finite.any() else 0.0
    return 32.0 * eps * (m + 1.0)


def row_bounds(trace: RowTrace, eps: float):
    """Return (sure, maybe, delta): tokens that must / may be in the implementation's kept set.

    With float arithmetic of unit roundoff ``eps`` a filter decision is only certain when the
    oracle's margin exceeds the error bound. Exact ties (equal penalised logits with equal
    treatment) stay exact ties in any arithmetic, so they are decided strictly; near-but-not-
    exact ties at a boundary, and cumulative masses within the summation error of top_p, make
    the affected tokens "maybe". When sure == maybe the comparison is exact-support.
    """
    vocab = trace.z.shape[0]
    delta = _delta(trace, eps)
    if trace.greedy:
        y = trace.y
        ymax = y.max()
        near = (y != ymax) & (y >= ymax - 2 * delta)
        maybe = y >= ymax - 2 * delta if near.any() else np.zeros(vocab, bool)
        sure = np.zeros(vocab, bool)
        if not near.any():
            sure[trace.argmax] = maybe[trace.argmax] = True
        return sure, maybe, delta

    z = trace.z
    # top-k
    sure_k = maybe_k = trace.keep_k
    if 0 < trace.top_k < vocab:
        kth = np.sort(z)[::-1][trace.top_k - 1]
        with np.errstate(invalid="ignore"):  # -inf - -inf: NaN compares False
            near = (z != kth) & (np.abs(z - kth) <= 2 * delta)
        if near.any():
            sure_k = z > kth + 2 * delta
            maybe_k = z >= kth - 2 * delta
    ambiguous_k = bool((sure_k != maybe_k).any())
    if ambiguous_k and (trace.top_p < 1.0 or trace.min_p > 0.0):
        # The probabilities seen by top-p / min-p depend on the unresolved top-k set: only
        # bound the support from above; check_row still checks the renormalised values.
        return np.zeros(vocab, bool), maybe_k.copy(), delta

    p = trace.p_soft
    rel = math.expm1(2 * delta) + 64 * eps  # relative error of a probability
    # top-p
    sure_p = maybe_p = trace.keep_p
    if trace.top_p < 1.0:
        n_kept = int(trace.keep_k.sum())
        tol_s = 64 * eps + 2 * n_kept * eps + rel  # error of a cumulative mass <= 1
        order = np.lexsort((np.arange(vocab), -p))
        ps = p[order]
        cum = np.concatenate([[0.0], np.cumsum(ps)])
        asc = ps[::-1]  # ascending, for searchsorted
        n = ps.size
        # count of tokens with prob > q*(1+rel)  /  >= q*(1-rel)
        above = n - np.searchsorted(asc, ps * (1 + rel), side="right")
        atleast = n - np.searchsorted(asc, ps * (1 - rel), side="left")
        first_eq = n - np.searchsorted(asc, ps, side="right")
        last_eq = n - np.searchsorted(asc, ps, side="left")  # exclusive end
        pos = np.arange(n)
        sure_ahead = cum[above] + (cum[pos] - cum[first_eq])
        max_ahead = cum[atleast] - ps - (cum[last_eq] - cum[pos + 1])
        s_sorted = max_ahead + tol_s < trace.top_p
        m_sorted = sure_ahead - tol_s < trace.top_p
        s_sorted[0] = m_sorted[0] = True  # the most probable token always survives
        sure_p = np.zeros(vocab, bool)
        maybe_p = np.zeros(vocab, bool)
        sure_p[order] = s_sorted
        maybe_p[order] = m_sorted
        # sure_ahead <= (oracle's mass ahead) <= max_ahead, so sure_p <= keep_p <= maybe_p;
        # the two lines below only guard that invariant against float64 rounding.
        sure_p &= trace.keep_p
        maybe_p |= trace.keep_p
    # min-p (in log space: p_j / p_max = exp(z_j - z_max))
    sure_m = maybe_m = trace.keep_m
    if trace.min_p > 0.0:
        zk = np.where(trace.keep_k, z, -np.inf)
        with np.errstate(invalid="ignore"):
            lr = zk - zk.max()
        tol_log = 2 * delta + 64 * eps
        lm = math.log(trace.min_p)
        sure_m = lr > lm + tol_log
        maybe_m = lr >= lm - tol_log
        sure_m |= lr == 0.0
        maybe_m |= trace.keep_m
        sure_m &= trace.keep_m
    sure = sure_k & sure_p & sure_m
    maybe = maybe_k & maybe_p & maybe_m
    return sure, maybe, delta


def _tolerances(eps: float):
    """(atol, rtol) for a final probability, on top of the exponent error bound."""
    if eps == EPS64:
        return 1e-12, 1e-9
    return 1e-6, 1e-5


def check_row(got, trace: RowTrace, eps: float, where: str = "") -> bool:
    """Assert that one row of ``ts.probs`` matches the oracle; return True when the check
    was exact-support (no float-boundary ambiguity), False when only bounded.

    Error model: the implementation's tempered logit z' satisfies |z' - z| <= delta (see
    ``_delta``), so each kept probability satisfies |p' - p| <= atol + p (rtol + expm1(2 delta)).
    The kept set must contain every ``sure`` token and only ``maybe`` tokens; where the
    two differ (a near-tie at a filter boundary) the values are compared with the oracle's
    softmax renormalised over the implementation's own kept set.
    """
    got = np.asarray(got, dtype=np.float64)
    sure, maybe, delta = row_bounds(trace, eps)
    atol, rtol = _tolerances(eps)
    strict = bool((sure == maybe).all())
    assert np.all(np.isfinite(got)), f"{where}: non-finite probability {got}"
    assert np.all(got >= 0), f"{where}: negative probability"
    outside = np.flatnonzero((got != 0) & ~maybe)
    assert outside.size == 0, (
        f"{where}: mass on filtered tokens {outside[:10].tolist()}: got {got[outside[:10]]}, "
        f"oracle {trace.probs[outside[:10]]}"
    )
    if trace.greedy:
        nz = np.flatnonzero(got)
        assert nz.size == 1 and got[nz[0]] == 1.0, f"{where}: greedy row not one-hot: {nz}"
        assert maybe[nz[0]], f"{where}: greedy picked {nz[0]}, oracle argmax {trace.argmax}"
        return strict
    kept = sure | (maybe & (got > 0))
    zk = np.where(kept, trace.z, -np.inf)
    zmax = zk.max()
    assert np.isfinite(zmax), f"{where}: check_row does not handle +inf logits"
    q = np.exp(zk - zmax)
    q /= q.sum()
    if strict:
        # the kept set is the oracle's: compare with the oracle's own final distribution
        q = trace.probs
    tol = atol + q * (rtol + math.expm1(2 * delta))
    err = np.abs(got - q)
    bad = np.flatnonzero(err > tol)
    assert bad.size == 0, (
        f"{where}: {bad.size} probabilities differ (strict={strict}, delta={delta:.3g}); "
        f"ids {bad[:8].tolist()} got {got[bad[:8]]} oracle {q[bad[:8]]}"
    )
    sum_tol = 1e-9 if eps == EPS64 else 1e-5
    assert abs(got.sum() - 1.0) <= sum_tol, f"{where}: probabilities sum to {got.sum()}"
    return strict


def check_sampled(token: int, trace: RowTrace, eps: float, where: str = "") -> None:
    """A sampled id must lie in the oracle's (tolerance-widened) support."""
    sure, maybe, _ = row_bounds(trace, eps)
    assert 0 <= token < trace.z.shape[0], f"{where}: id {token} out of range"
    assert maybe[token], f"{where}: drew {token}, outside the oracle's kept set"
    if trace.greedy and sure.any():
        assert token == trace.argmax, f"{where}: greedy drew {token}, argmax {trace.argmax}"
