"""Independent float64 numpy oracle of the sampling pipeline (docs/design.md section 2).

Written from docs/design.md only, never from the Rust or Python code under test, and kept
deliberately simple: one row at a time, full sorts, float64 throughout.

    probs = oracle_probs(logits, temperature=..., top_k=..., ...)   # same keywords as ts.probs

returns the final distribution (zeros outside the kept set), shape (V,) or (B, V), float64.

``oracle_rows`` returns the per-row intermediate values (``RowTrace``) and ``row_bounds`` /
``check_row`` turn them into a comparison that is sound for an implementation that computes
in float32 (or float64) arithmetic: see ``check_row`` for the error model.

Section 9 (the stages of the peers, and stage orders): ``typical_p``, ``epsilon_cutoff``,
``eta_cutoff``, ``top_n_sigma``, ``xtc_probability`` / ``xtc_threshold``, ``dynatemp_range`` /
``dynatemp_exponent``, ``min_tokens_to_keep`` and ``order`` are accepted by ``oracle_probs`` /
``oracle_rows`` too. A call that passes none of them (and no ``order`` other than "hf") takes
the section 2 path above, bit-identical to what it always was; any other call takes the
general ordered path (``stage_rows``), which returns ``StageTrace`` objects and is compared
with ``check_stage_row`` (see its docstring for the ambiguity guard). XTC's coin comes from
the implementation's random stream, which the oracle does not have: pass ``xtc_coin=True`` /
``False`` (scalar or per row) whenever ``0 < xtc_probability < 1``; ``seed=`` is accepted and
ignored so that the keywords of a ``ts.probs`` call can be passed unchanged.

Issue 16 (the history-aware stages): ``penalty_last_n``, ``dry_multiplier`` / ``dry_base`` /
``dry_allowed_length`` / ``dry_penalty_last_n`` / ``dry_sequence_breakers``,
``no_repeat_ngram_size``, ``bad_words_ids`` and ``sequence_bias`` are accepted by both paths
(they change the penalised logits only: ``history_terms``); without them every result is
what it was. The references, each written from its source: ``dry_penalties`` (llama.cpp
``llama_sampler_dry_apply``), ``no_repeat_ngram_bans`` / ``sequence_bias_amounts`` /
``bad_words_bans`` (HF's processors; ``sequence_bias_rule=`` picks between transformers
5.0.0's and 5.24.0's length rule, see ``sequence_bias_amounts``), ``penalty_window`` and
``mirostat_step`` (llama.cpp's mirostat v1 / v2 and mu update). ``mirostat != 0`` is refused
(ValueError), as by the stateless ``ts.probs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "EPS32",
    "EPS64",
    "HISTORY_KEYWORDS",
    "HISTORY_PARAMS",
    "HISTORY_STRUCTURED",
    "NEW_PARAMS",
    "ORDERS",
    "STAGE_NAMES",
    "MirostatStep",
    "RowTrace",
    "StageTrace",
    "bad_words_bans",
    "check_row",
    "check_sampled",
    "check_stage_row",
    "clean_history",
    "dry_penalties",
    "history_terms",
    "mirostat_step",
    "no_repeat_ngram_bans",
    "oracle_probs",
    "oracle_rows",
    "penalised_logits",
    "penalty_window",
    "resolve_order",
    "row_bounds",
    "sequence_bias_amounts",
    "stage_rows",
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


def penalised_logits(
    x, *, hist=None, bias=None, r=1.0, af=0.0, ap=0.0, sf=1.0, sp=1.0, extra_bias=None, dry=None
):
    """Steps 1-2 of docs/design.md section 2 for one row.

    Returns (x_pen, k, mag) in float64: the penalised logits (shifted by -min when k-scaling
    is on and a finite logit is negative), the k-scaling divisors and the per-token magnitude
    of the operands (used only to bound the rounding error of a float32 implementation).

    Issue 16 (both off by default, and then the result is what it always was): ``extra_bias``
    is a second additive bias of the history-aware bans and biases (sequence_bias,
    bad_words_ids, no_repeat_ngram_size; -inf bans), applied after ``bias``; ``dry`` holds the
    DRY amounts (``dry_penalties``), subtracted after frequency / presence and before
    k-scaling. ``hist`` is the history the penalties count (the caller applies
    ``penalty_last_n``).
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
    if extra_bias is not None:  # issue 16: sequence_bias, bad_words_ids, no-repeat n-grams
        extra_bias = np.asarray(extra_bias, dtype=np.float64)
        ban = np.isneginf(extra_bias)
        finite_extra = np.where(ban, 0.0, extra_bias)
        with np.errstate(invalid="ignore"):
            x = x + finite_extra
        x[ban] = -np.inf
        mag = mag + np.abs(finite_extra)
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
    if dry is not None:  # issue 16: DRY, after frequency / presence, before k-scaling
        dry = np.asarray(dry, dtype=np.float64)
        x = x - dry
        mag = mag + np.abs(dry)
    k = 1.0 + (sf - 1.0) * c + (sp - 1.0) * seen
    if sf != 1.0 or sp != 1.0:
        finite = np.isfinite(x)
        if finite.any():
            lo = x[finite].min()
            if lo < 0:
                x = x - lo
                mag = mag + abs(lo)
    return x, k, mag


def _row_penalties(x, hist, bias, p: dict):
    """`penalised_logits` with a row's penalty parameters (and the issue 16 ones, when the
    row has them: see ``history_terms``)."""
    hist, extra, dry = history_terms(x.shape[0], hist, p)
    return penalised_logits(
        x,
        hist=hist,
        bias=bias,
        extra_bias=extra,
        dry=dry,
        r=float(p["repetition_penalty"]),
        af=float(p["frequency_penalty"]),
        ap=float(p["presence_penalty"]),
        sf=float(p["frequency_scale"]),
        sp=float(p["presence_scale"]),
    )


def _row(x, hist, bias, p: dict) -> RowTrace:
    vocab = x.shape[0]
    T = float(p["temperature"])
    top_k = int(p["top_k"] or 0)
    top_p = float(1.0 if p["top_p"] is None else p["top_p"])
    min_p = float(0.0 if p["min_p"] is None else p["min_p"])
    xp, k, mag = _row_penalties(x, hist, bias, p)
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


def oracle_rows(
    logits, *, logit_bias=None, history=None, order=None, xtc_coin=None, seed=None,
    sequence_bias_rule="prefix", **params,
) -> list:  # fmt: skip
    """Per-row traces of the pipeline; ``logits`` is (V,) or (B, V), any float dtype.

    Calls with only the section 2 keywords (and ``order`` None or "hf") return ``RowTrace``
    objects from the section 2 path; calls with any section 9 keyword or another order return
    ``StageTrace`` objects from ``stage_rows`` (with the unit roundoff of the input's dtype).
    ``seed`` is ignored (see the module docstring).
    """
    unknown = set(params) - set(_DEFAULTS) - set(NEW_PARAMS) - set(HISTORY_KEYWORDS)
    if unknown:
        raise TypeError(f"unknown parameters {unknown}")
    new = {n: v for n, v in params.items() if n in NEW_PARAMS and v is not None}
    if (
        new
        or xtc_coin is not None
        or not (order is None or (isinstance(order, str) and order == "hf"))
    ):
        return stage_rows(
            logits, logit_bias=logit_bias, history=history, order=order, xtc_coin=xtc_coin,
            sequence_bias_rule=sequence_bias_rule, **params,
        )  # fmt: skip
    hist_params = {n: v for n, v in params.items() if n in HISTORY_KEYWORDS}
    params = {n: v for n, v in params.items() if n not in NEW_PARAMS and n not in HISTORY_KEYWORDS}
    x = _as_numpy(logits)
    x2 = np.atleast_2d(x).astype(np.float64)
    batch, vocab = x2.shape
    per_row = {
        name: _per_row(params.get(name, default), batch, _OFF.get(name, default))
        for name, default in _DEFAULTS.items()
    }
    hists = _histories(history, batch)
    biases = _biases(logit_bias, batch, vocab)
    extra = _history_rows(hist_params, batch, vocab, sequence_bias_rule)
    return [
        _row(x2[i], hists[i], biases[i], dict({n: v[i] for n, v in per_row.items()}, **extra[i]))
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


# ---------------------------------------------------------------------------------------------
# Section 9: the peers' stages and stage orders (docs/design.md section 9), one row at a time.
# ---------------------------------------------------------------------------------------------

#: The orderable stages. Bias / bans and the penalties (incl. k-scaling) always run first.
STAGE_NAMES = (
    "temperature",
    "top_n_sigma",
    "top_k",
    "top_p",
    "min_p",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "xtc",
)
ORDERS = {
    "hf": STAGE_NAMES,
    "vllm": ("temperature", "top_n_sigma", "min_p", "top_k", "top_p", "typical_p",
             "epsilon_cutoff", "eta_cutoff", "xtc"),
    "llama.cpp": ("top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "epsilon_cutoff",
                  "eta_cutoff", "xtc", "temperature"),
}  # fmt: skip
#: The section 9 keywords of this oracle and their "off" values.
NEW_PARAMS = {
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "top_n_sigma": 0.0,
    "xtc_probability": 0.0,
    "xtc_threshold": 0.1,
    "dynatemp_range": 0.0,
    "dynatemp_exponent": 1.0,
    "min_tokens_to_keep": 0,
}


def _stage_on(name: str, p: dict) -> bool:
    """Whether a stage does anything in a row with parameters ``p`` (for order validation)."""
    if name == "temperature":
        return float(p["temperature"]) != 1.0 or float(p["dynatemp_range"]) > 0.0
    if name == "top_k":
        return int(p["top_k"] or 0) > 0
    if name == "xtc":
        return float(p["xtc_probability"]) > 0.0
    value = float(p[name])
    return value < 1.0 if name in ("top_p", "typical_p") else value > 0.0


def resolve_order(order, rows: list[dict] | None = None) -> tuple[str, ...]:
    """``order`` (None, a preset name or a sequence of stage names) -> the stage sequence.

    Raises ValueError for an unknown preset or stage name, a duplicate, or (given the per-row
    parameters ``rows``) a stage that is on in some row but missing from a custom sequence.
    """
    if order is None:
        return ORDERS["hf"]
    if isinstance(order, str):
        if order not in ORDERS:
            raise ValueError(f"order: unknown preset {order!r} (expected one of {sorted(ORDERS)})")
        return ORDERS[order]
    seq = tuple(order)
    for name in seq:
        if not isinstance(name, str) or name not in STAGE_NAMES:
            raise ValueError(f"order: unknown stage {name!r}")
    if len(set(seq)) != len(seq):
        raise ValueError(f"order: duplicate stage in {seq}")
    missing = sorted(
        {n for p in rows or [] for n in STAGE_NAMES if n not in seq and _stage_on(n, p)}
    )
    if missing:
        raise ValueError(f"order: stages {missing} are on but not in {seq}")
    return seq


@dataclass
class StageTrace:
    """One row of the general ordered path (``stage_rows``).

    ``ambiguous`` is True when some filter decision of the row lies within the float error
    bound of its threshold for an implementation of unit roundoff ``eps`` (see
    ``check_stage_row``); ``reasons`` says which. ``z`` are the final current logits (-inf
    outside the kept set) and ``dz`` bounds the implementation's absolute error on them.
    """

    probs: np.ndarray
    greedy: bool
    argmax: int
    z: np.ndarray
    keep: np.ndarray
    ambiguous: bool
    reasons: list
    dz: float
    eps: float
    order: tuple
    log: list  # (stage, number of tokens kept after it)
    params: dict = field(default_factory=dict)
    t_dyn: float | None = None
    xtc_applied: bool | None = None


class _Ctx:
    """Per-row error model of the general path (see ``check_stage_row``)."""

    def __init__(self, eps: float, dzm: float, min_keep: int):
        self.eps = eps
        # every relative tolerance is at least this (a float32 implementation: 1e-5)
        self.floor = 1e-5 if eps > EPS64 else 1e-11
        self.dzm = dzm  # error of the current logits from operand magnitudes (scales with 1/T)
        self.min_keep = min_keep
        self.reasons: list[str] = []

    @property
    def dz(self) -> float:  # absolute error bound of a current logit (+ exp's own rounding)
        return self.dzm + 32.0 * self.eps

    @property
    def rp(self) -> float:  # relative error bound of a current probability
        return max(self.floor, math.expm1(min(2.0 * self.dz, 50.0)) + 64.0 * self.eps)

    @property
    def dlogp(self) -> float:  # absolute error bound of a current log-probability
        return max(self.floor, 2.0 * self.dz + 64.0 * self.eps)

    def flag(self, reason: str) -> None:
        self.reasons.append(reason)


def _lsm(cur: np.ndarray) -> np.ndarray:
    """log-softmax over the kept (finite) entries; -inf stays -inf."""
    m = cur.max()
    lse = m + math.log(float(np.exp(cur - m).sum()))
    return cur - lse


def _entropy(lp: np.ndarray) -> float:
    p = np.exp(lp)
    pos = p > 0
    return float(-(p[pos] * lp[pos]).sum())


def _rank(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Indices of ``mask`` sorted by ``values`` ascending, equal values by lower id."""
    idx = np.flatnonzero(mask)
    return idx[np.lexsort((idx, values[idx]))]


def _top_set(cur: np.ndarray, n: int) -> tuple[np.ndarray, float]:
    """The max(n, 1) most probable kept tokens, ties at the boundary kept; and the boundary."""
    vals = np.sort(cur[cur > -np.inf])[::-1]
    kth = float(vals[min(max(n, 1), vals.size) - 1])
    return cur >= kth, kth


def _boundary_near(values, inside, outside, bval, tol, cur) -> bool:
    """A split of a ranking by ``values`` at ``bval`` is ambiguous when a kept and a dropped
    token both lie within ``tol`` of ``bval`` and are not exact ties (equal current logits,
    which any implementation computes identically and splits by the documented tie rule)."""
    with np.errstate(invalid="ignore"):
        w = np.abs(values - bval) <= tol
    wi, wo = w & inside, w & outside
    return bool(wi.any() and wo.any() and np.unique(cur[wi | wo]).size > 1)


# -- the stages: each takes the current logits (-inf = removed) and returns them ---------------


def _st_temperature(cur, p, ctx, row):
    T = float(p["temperature"])
    dr = float(p["dynatemp_range"])
    de = float(p["dynatemp_exponent"])
    fin = cur > -np.inf
    if dr > 0.0:
        n = int(fin.sum())
        if n <= 1:
            return cur
        lp = _lsm(cur)
        H = _entropy(lp)
        ln_n = math.log(n)
        lo_t, hi_t = max(0.0, T - dr), T + dr

        def t_dyn(h: float) -> float:
            return lo_t + (hi_t - lo_t) * (max(h, 0.0) / ln_n) ** de

        td = t_dyn(H)
        row["t_dyn"] = td
        if H == 0.0:  # one-hot in float64, hence in any arithmetic: T_dyn is min_t exactly
            d_td = 0.0
        else:
            dH = ctx.dlogp + ctx.rp * H + 64.0 * ctx.eps * (H + 1.0)
            d_td = max(abs(t_dyn(H + dH) - td), abs(t_dyn(H - dH) - td)) + 4 * ctx.eps * hi_t
        if td - d_td <= 0.0 < td + d_td:
            ctx.flag("dynatemp: T_dyn within rounding of 0")
        elif td > 0.0 and d_td > 1e-3 * td:
            # e.g. H close to 0: the entropy's absolute error is a large relative error of
            # T_dyn, and the implementation's distribution is not pinned down
            ctx.flag(f"dynatemp: T_dyn known to {d_td / td:.2g} (relative) only")
        if td <= 0.0:  # keep only the first argmax
            j = int(np.argmax(cur))
            out = np.full_like(cur, -np.inf)
            out[j] = cur[j]
            return out
        with np.errstate(over="ignore"):
            out = np.where(fin, cur / td, -np.inf)
        if not np.isfinite(out[fin]).all():
            # 1 / T_dyn overflows: the implementation's limit (the largest logits) is not
            # the float64 value's, so the row is not compared.
            ctx.flag("dynatemp: T_dyn too small for the compute type")
            mx = out[fin].max()
            return np.where(out == mx, 0.0, -np.inf)
        mz = float(np.abs(out[fin]).max())
        ctx.dzm = ctx.dzm / td + (d_td / td + 2 * ctx.eps) * mz
        return out
    if T != 1.0:
        out = np.where(fin, cur / T, -np.inf)
        ctx.dzm = ctx.dzm / T + 2 * ctx.eps * float(np.abs(out[fin]).max())
        return out
    return cur


def _st_top_n_sigma(cur, p, ctx, row):
    n = float(p["top_n_sigma"])
    fin = cur > -np.inf
    if n <= 0.0 or fin.sum() <= 1:
        return cur
    v = cur[fin]
    m = float(v.max())
    mu = float(v.mean())
    dev = v - mu
    big = float(np.abs(dev).max()) or 1.0  # scaled: the squares of huge logits overflow
    sd = big * math.sqrt(float(((dev / big) ** 2).mean()))
    t = m - n * sd
    base = fin & (cur >= t)
    top, kth = _top_set(cur, ctx.min_keep)
    keep = base | top
    # error of the threshold: max (dz), sigma (deviations and the mean: 2 dz, sums 64 eps)
    d_sd = 2 * ctx.dz + 64 * ctx.eps * (float(np.abs(v).max()) + sd)
    tol = 2 * ctx.dz + n * d_sd + ctx.floor * max(1.0, abs(t)) + 2 * ctx.eps * (abs(t) + n * sd)
    with np.errstate(invalid="ignore"):
        near = fin & ~top & (cur != m) & (np.abs(cur - t) <= tol)
    if near.any():
        ctx.flag(f"top_n_sigma: logit within {tol:.3g} of max - n*sigma")
    if (top & ~base).any() and _boundary_near(cur, top, fin & ~top, kth, 2 * ctx.dz, cur):
        ctx.flag("top_n_sigma: min_tokens_to_keep boundary near-tie")
    return np.where(keep, cur, -np.inf)


def _st_top_k(cur, p, ctx, row):
    k = int(p["top_k"] or 0)
    if k <= 0:
        return cur
    k = max(k, ctx.min_keep)
    fin = cur > -np.inf
    if k >= fin.sum():
        return cur
    kth = float(np.sort(cur[fin])[::-1][k - 1])
    keep = fin & (cur >= kth)
    if _boundary_near(cur, keep, fin & ~keep, kth, 2 * ctx.dz, cur):
        ctx.flag("top_k: near-tie at the k-th logit")
    return np.where(keep, cur, -np.inf)


def _prefix_tol(ctx, n_kept: int) -> float:
    """Error of a cumulative mass <= 1 (weights: rp relative; sums in float64 or compensated
    float32 as docs/design.md section 2 step 5 requires; the parameter rounded to float32)."""
    return ctx.rp + 64 * ctx.eps + 4 * n_kept * EPS64 + ctx.eps


def _st_top_p(cur, p, ctx, row):
    tp = float(1.0 if p["top_p"] is None else p["top_p"])
    if tp >= 1.0:
        return cur
    fin = cur > -np.inf
    pr = np.exp(_lsm(cur))
    order = _rank(-pr, fin)
    nk = order.size
    cum = np.cumsum(pr[order])
    hit = np.flatnonzero(cum >= tp)
    n = int(hit[0]) + 1 if hit.size else nk
    n = min(max(n, ctx.min_keep), nk)
    keep = np.zeros_like(fin)
    keep[order[:n]] = True
    tol = _prefix_tol(ctx, nk)
    lo = max(ctx.min_keep - 1, 0)  # a crossing before min_keep is overruled by the floor
    if nk > 1 and np.any(np.abs(cum[lo : nk - 1] - tp) <= tol):
        ctx.flag("top_p: a cumulative mass within rounding of top_p")
    if _boundary_near(cur, keep, fin & ~keep, cur[order[n - 1]], 2 * ctx.dz, cur):
        ctx.flag("top_p: near-tie at the boundary")
    return np.where(keep, cur, -np.inf)


def _st_min_p(cur, p, ctx, row):
    mp = float(0.0 if p["min_p"] is None else p["min_p"])
    if mp <= 0.0:
        return cur
    fin = cur > -np.inf
    pr = np.exp(_lsm(cur))
    keep = fin & (pr >= mp * pr.max())
    lr = cur - cur.max()
    tol = 2 * ctx.dz + 64 * ctx.eps + ctx.floor + ctx.eps
    with np.errstate(invalid="ignore"):
        near = fin & (lr != 0.0) & (np.abs(lr - math.log(mp)) <= tol)
    floor_binds = keep.sum() < ctx.min_keep
    if near.any() and not (floor_binds and fin.sum() <= ctx.min_keep):
        ctx.flag("min_p: a probability within rounding of min_p * max")
    if floor_binds:
        order = _rank(-pr, fin)
        keep[order[: ctx.min_keep]] = True
        m = min(ctx.min_keep, order.size)
        if _boundary_near(cur, keep, fin & ~keep, cur[order[m - 1]], 2 * ctx.dz, cur):
            ctx.flag("min_p: min_tokens_to_keep boundary near-tie")
    return np.where(keep, cur, -np.inf)


def _st_typical(cur, p, ctx, row):
    tp = float(p["typical_p"])
    if tp >= 1.0:
        return cur
    fin = cur > -np.inf
    lp = _lsm(cur)
    pr = np.exp(lp)
    H = _entropy(lp)
    key = np.full(cur.shape, np.inf)
    key[fin] = np.abs(-lp[fin] - H)
    order = _rank(key, fin)
    nk = order.size
    cum = np.cumsum(pr[order])
    last = min(int((cum < tp).sum()), nk - 1)
    bkey = key[order[last]]
    keep = fin & (key <= bkey)
    # error of a key: its log-probability and the entropy (weights rp, logs dlogp, sums)
    dH = ctx.dlogp + ctx.rp * H + 64 * ctx.eps * (H + 1.0)
    dkey = ctx.dlogp + dH + ctx.floor * (1.0 + H)
    if nk > ctx.min_keep:
        if _boundary_near(key, keep, fin & ~keep, bkey, 2 * dkey, cur):
            ctx.flag("typical_p: a key within rounding of the boundary key")
        if nk > 1 and np.any(np.abs(cum[: nk - 1] - tp) <= _prefix_tol(ctx, nk)):
            ctx.flag("typical_p: a cumulative mass within rounding of typical_p")
    if keep.sum() < ctx.min_keep:
        keep[order[: ctx.min_keep]] = True
        m = min(ctx.min_keep, nk)
        if _boundary_near(key, keep, fin & ~keep, key[order[m - 1]], 2 * dkey, cur):
            ctx.flag("typical_p: min_tokens_to_keep boundary near-tie")
    return np.where(keep, cur, -np.inf)


def _cutoff(cur, thr, rel_thr, name, ctx):
    """Shared by epsilon and eta: keep p >= thr, or among the min_keep most probable."""
    fin = cur > -np.inf
    pr = np.exp(_lsm(cur))
    base = fin & (pr >= thr)
    top, kth = _top_set(cur, ctx.min_keep)
    keep = base | top
    tol = (2 * ctx.rp + rel_thr + ctx.eps) * thr
    if np.any(fin & ~top & (np.abs(pr - thr) <= tol)):
        ctx.flag(f"{name}: a probability within rounding of the cutoff")
    if (top & ~base).any() and _boundary_near(cur, top, fin & ~top, kth, 2 * ctx.dz, cur):
        ctx.flag(f"{name}: min_tokens_to_keep boundary near-tie")
    return np.where(keep, cur, -np.inf)


def _st_epsilon(cur, p, ctx, row):
    e = float(p["epsilon_cutoff"])
    return cur if e <= 0.0 else _cutoff(cur, e, 0.0, "epsilon_cutoff", ctx)


def _st_eta(cur, p, ctx, row):
    e = float(p["eta_cutoff"])
    if e <= 0.0:
        return cur
    lp = _lsm(cur)
    H = _entropy(lp)
    thr = min(e, math.sqrt(e) * math.exp(-H))
    dH = ctx.dlogp + ctx.rp * H + 64 * ctx.eps * (H + 1.0)
    return _cutoff(cur, thr, dH + 8 * ctx.eps, "eta_cutoff", ctx)


def _st_xtc(cur, p, ctx, row):
    prob = float(p["xtc_probability"])
    if prob <= 0.0:
        return cur
    if prob < 1.0:
        coin = row["xtc_coin"]
        if coin is None:
            raise ValueError("0 < xtc_probability < 1: pass xtc_coin= (the oracle has no RNG)")
        if not coin:
            row["xtc_applied"] = False
            return cur
    thr = float(p["xtc_threshold"])
    fin = cur > -np.inf
    pr = np.exp(_lsm(cur))
    S = fin & (pr >= thr)
    if np.any(fin & (np.abs(pr - thr) <= (2 * ctx.rp + ctx.eps) * thr)):
        ctx.flag("xtc: a probability within rounding of xtc_threshold")
    row["xtc_applied"] = False
    if S.sum() < 2:
        return cur
    cmin = float(cur[S].min())
    with np.errstate(invalid="ignore"):
        near_min = S & (cur != cmin) & (np.abs(cur - cmin) <= 2 * ctx.dz)
    if near_min.any():
        ctx.flag("xtc: near-tie at the least probable token above the threshold")
    remove = S & (cur > cmin)
    if fin.sum() - remove.sum() < max(ctx.min_keep, 1):
        return cur
    row["xtc_applied"] = True
    return np.where(remove, -np.inf, cur)


_STAGE_FNS = {
    "temperature": _st_temperature,
    "top_n_sigma": _st_top_n_sigma,
    "top_k": _st_top_k,
    "top_p": _st_top_p,
    "min_p": _st_min_p,
    "typical_p": _st_typical,
    "epsilon_cutoff": _st_epsilon,
    "eta_cutoff": _st_eta,
    "xtc": _st_xtc,
}


def _stage_row(x, hist, bias, p: dict, order: tuple, eps: float, xtc_coin) -> StageTrace:
    vocab = x.shape[0]
    T = float(p["temperature"])
    min_keep = int(p["min_tokens_to_keep"] or 0)
    xp, k, mag = _row_penalties(x, hist, bias, p)
    if np.isposinf(xp).any():
        raise NotImplementedError("the section 9 path of the oracle does not take +inf logits")
    # k-scaling is a penalty: the orderable stages start from y = x / k.
    y = xp / k
    fin = np.isfinite(y)
    ctx = _Ctx(eps, 32.0 * eps * float((mag / k)[fin].max()), min_keep)
    argmax = int(np.argmax(y))
    params = dict(p, xtc_coin=xtc_coin)
    if T == 0.0:  # greedy, whatever else is set, in every order
        ymax = y[argmax]
        with np.errstate(invalid="ignore"):
            if np.any((y != ymax) & (y >= ymax - 2 * ctx.dz)):
                ctx.flag("greedy: near-tie at the maximum")
        probs = np.zeros(vocab)
        probs[argmax] = 1.0
        return StageTrace(
            probs, True, argmax, y, probs > 0, bool(ctx.reasons), ctx.reasons, ctx.dz, eps,
            order, [("greedy", 1)], params,
        )  # fmt: skip
    cur = np.where(fin, y, -np.inf)
    row = {"xtc_coin": xtc_coin, "t_dyn": None, "xtc_applied": None}
    log = []
    for name in order:
        cur = _STAGE_FNS[name](cur, p, ctx, row)
        log.append((name, int((cur > -np.inf).sum())))
    probs = np.exp(_lsm(cur))
    return StageTrace(
        probs, False, argmax, cur, cur > -np.inf, bool(ctx.reasons), ctx.reasons, ctx.dz, eps,
        order, log, params, row["t_dyn"], row["xtc_applied"],
    )  # fmt: skip


def stage_rows(
    logits, *, logit_bias=None, history=None, order=None, xtc_coin=None, eps=None, seed=None,
    sequence_bias_rule="prefix", **params,
) -> list[StageTrace]:  # fmt: skip
    """Per-row traces of the general ordered pipeline (every section 2 and 9 keyword).

    ``eps``: the unit roundoff of the implementation the trace's ambiguity flags are for
    (default: that of the input's dtype, 2^-53 for float64 and 2^-24 otherwise).
    """
    unknown = set(params) - set(_DEFAULTS) - set(NEW_PARAMS) - set(HISTORY_KEYWORDS)
    if unknown:
        raise TypeError(f"unknown parameters {unknown}")
    hist_params = {n: v for n, v in params.items() if n in HISTORY_KEYWORDS}
    params = {n: v for n, v in params.items() if n not in HISTORY_KEYWORDS}
    x = _as_numpy(logits)
    if eps is None:
        eps = compute_eps(x.dtype)
    x2 = np.atleast_2d(x).astype(np.float64)
    batch, vocab = x2.shape
    defaults = dict(_DEFAULTS, **NEW_PARAMS)
    off = dict(_OFF, **NEW_PARAMS)
    per_row = {
        name: _per_row(params.get(name, default), batch, off.get(name, default))
        for name, default in defaults.items()
    }
    extra = _history_rows(hist_params, batch, vocab, sequence_bias_rule)
    rows = [dict({n: v[i] for n, v in per_row.items()}, **extra[i]) for i in range(batch)]
    seq = resolve_order(order, rows)
    coins = _per_row(xtc_coin, batch, None)
    hists = _histories(history, batch)
    biases = _biases(logit_bias, batch, vocab)
    return [
        _stage_row(x2[i], hists[i], biases[i], rows[i], seq, eps, coins[i]) for i in range(batch)
    ]


def check_stage_row(got, trace: StageTrace, where: str = "") -> bool:
    """Assert that one row of ``ts.probs`` matches a ``StageTrace``; return True when the row
    was compared exactly (kept set and values), False when it was ambiguous.

    Error model (the ambiguity guard). An implementation computing in arithmetic of unit
    roundoff ``eps`` (float32 for float32 / float16 / bfloat16 input) has current logits within
    ``dz`` of the oracle's: ``dz`` starts at 32 eps times the largest operand magnitude of the
    row's penalty arithmetic (as in ``_delta``), scales with 1/T at the temperature stage (plus
    the rounding of the division, and for dynatemp the error of T_dyn propagated from the
    error of the entropy) and adds 32 eps for exp. Its probabilities are then within a relative
    ``rp = max(floor, expm1(2 dz) + 64 eps)`` and its log-probabilities within
    ``dlogp = max(floor, 2 dz + 64 eps)``, with ``floor`` = 1e-5 for float32 (1e-11 for
    float64); cumulative masses within ``rp + 64 eps + 4 n 2^-53 + eps`` (sums in float64 or
    compensated float32, docs/design.md section 2 step 5; parameters rounded to float32); the
    entropy within ``dH = dlogp + rp H + 64 eps (H + 1)`` and a typical key within
    ``dlogp + dH``. A row is *ambiguous* when any decision of any stage has a token whose
    decision quantity lies within (twice) that bound of its threshold: a logit near the k-th
    logit, max - n sigma, or log(min_p) + max; a probability near epsilon, the eta cutoff or
    xtc_threshold; a cumulative mass near top_p / typical_p; a key near the boundary key;
    the least probable token above xtc_threshold, or the greedy maximum, near a distinct
    value. Exact ties (equal current logits) are not ambiguous: equal inputs give equal
    outputs in any arithmetic and the documented tie rule decides. If no decision is
    ambiguous, every stage keeps the same set in the oracle and in the implementation, so the
    final kept sets are equal and the final probabilities (a softmax of the final logits) agree
    within ``atol + p (rtol + expm1(2 dz))`` as in ``check_row``. Ambiguous rows only get the
    basic checks (finite, non-negative, sums to 1, greedy rows one-hot).
    """
    got = np.asarray(got, dtype=np.float64)
    eps = trace.eps
    assert np.all(np.isfinite(got)), f"{where}: non-finite probability {got}"
    assert np.all(got >= 0), f"{where}: negative probability"
    sum_tol = 1e-9 if eps == EPS64 else 1e-5
    assert abs(got.sum() - 1.0) <= sum_tol, f"{where}: probabilities sum to {got.sum()}"
    if trace.greedy:
        nz = np.flatnonzero(got)
        assert nz.size == 1 and got[nz[0]] == 1.0, f"{where}: greedy row not one-hot: {nz}"
        if not trace.ambiguous:
            assert nz[0] == trace.argmax, f"{where}: greedy {nz[0]}, argmax {trace.argmax}"
        return not trace.ambiguous
    if trace.ambiguous:
        return False
    q = trace.probs
    extra = np.flatnonzero((got > 0) & ~trace.keep)
    assert extra.size == 0, (
        f"{where}: mass on tokens the oracle drops {extra[:10].tolist()} ({got[extra[:10]]}); "
        f"stages {trace.log}"
    )
    tiny = 1e-300 if eps == EPS64 else 1e-30  # a kept token may underflow to 0 in float32
    missing = np.flatnonzero((got == 0) & trace.keep & (q > tiny))
    assert missing.size == 0, (
        f"{where}: tokens the oracle keeps have probability 0: {missing[:10].tolist()} "
        f"(oracle {q[missing[:10]]}); stages {trace.log}"
    )
    atol, rtol = _tolerances(eps)
    tol = atol + q * (rtol + math.expm1(min(2 * trace.dz, 50.0)))
    bad = np.flatnonzero(np.abs(got - q) > tol)
    assert bad.size == 0, (
        f"{where}: {bad.size} probabilities differ (dz={trace.dz:.3g}); ids {bad[:8].tolist()} "
        f"got {got[bad[:8]]} oracle {q[bad[:8]]}; stages {trace.log}"
    )
    return True


# ---------------------------------------------------------------------------------------------
# Issue 16: the history-aware and stateful stages (docs/design.md section 9's table):
# penalty_last_n, DRY, no_repeat_ngram_size, bad_words_ids, sequence_bias, mirostat.
# Written from the references' definitions (cited per function), float64, plainly.
# ---------------------------------------------------------------------------------------------

#: The issue 16 numeric keywords and their "off" values (each a scalar or one value per row).
HISTORY_PARAMS = {
    "penalty_last_n": -1,
    "dry_multiplier": 0.0,
    "dry_base": 1.75,
    "dry_allowed_length": 2,
    "dry_penalty_last_n": -1,
    "no_repeat_ngram_size": 0,
    "mirostat": 0,
    "mirostat_tau": 5.0,
    "mirostat_eta": 0.1,
}
#: The issue 16 structured keywords: None, one value for every row, or a list of B values.
HISTORY_STRUCTURED = ("dry_sequence_breakers", "bad_words_ids", "sequence_bias")
HISTORY_KEYWORDS = tuple(HISTORY_PARAMS) + HISTORY_STRUCTURED

#: llama.cpp src/llama-sampling.cpp, ``llama_sampler_dry_apply``: ``FLOAT_MAX_LOG``.
DRY_FLOAT_MAX_LOG = 88.7228391
#: llama.cpp ``common_params_sampling::mirostat_m`` / ``llama_sampler_init_mirostat(.., m=100)``.
MIROSTAT_M = 100


def clean_history(hist) -> np.ndarray:
    """The row's history: non-negative ids in order (negative ids are padding, dropped first,
    wherever they sit)."""
    if hist is None:
        return np.zeros(0, dtype=np.int64)
    h = np.asarray(_as_numpy(hist), dtype=np.int64).reshape(-1)
    return h[h >= 0]


def penalty_window(hist, n: int) -> np.ndarray:
    """The ids the repetition / frequency / presence penalties and k-scaling count:
    llama.cpp's ``repeat_last_n`` (``llama_sampler_init_penalties``: a ring buffer of the last
    ``penalty_last_n`` accepted tokens; common/sampling.cpp maps -1 to the context size): -1 =
    the whole history, 0 = none (the penalties are off), n > 0 = the last n ids."""
    h = clean_history(hist)
    n = int(n)
    if n == -1:
        return h
    if n < -1:
        raise ValueError(f"penalty_last_n must be >= -1, got {n}")
    return h[len(h) - min(n, len(h)) :]


def dry_penalties(
    history,
    vocab: int,
    multiplier: float,
    base: float = 1.75,
    allowed_length: int = 2,
    penalty_last_n: int = -1,
    breakers=(),
    context_size: int | None = None,
) -> np.ndarray:
    """Per-token DRY amounts to subtract from the logits, float64, shape (V,).

    A port of llama.cpp ``llama_sampler_dry_apply`` (src/llama-sampling.cpp at commit
    0344068cf112e524eb3fbdbd58c171870b63e56c; the same code at e19fb5f1a30ce42690ad7093ddbd382ac287c9fd)
    with the token breakers of ``llama_sampler_init_dry_testing`` (each breaker: head =
    breaker[0], tail = breaker[1:], no length clamp). Its step 2 (a reversed Z-algorithm) is
    replaced here by the naive O(N^2) suffix match it computes, as an independent check
    (``llama_cpp_vectors.llama_cpp_dry`` is the literal port). ``context_size`` is llama.cpp's
    ``total_context_size``; None = ``len(history)`` (our ``dry_penalty_last_n = -1`` = the
    whole history).

    1. Off when multiplier == 0, base < 1 or penalty_last_n == 0. The window is the last
       N = min(len(history), penalty_last_n (-1: context_size), context_size) ids; nothing
       happens when N <= allowed_length.
    2. rep_limit: scanning back from the last id, the first position i (0 = last) where a
       breaker's head sits and its tail follows it (tail[o] == window[-1 - (i - o - 1)], tail
       length <= i; the longest such breaker) gives rep_limit = i - len(tail); no breaker:
       rep_limit = N. rep_limit < allowed_length: nothing happens.
    3. For each end position e < N - 1 of the window: r = min(longest common suffix of
       window[:e + 1] and the window, rep_limit). If r >= allowed_length, the token
       window[e + 1] would extend a repeat of length r: it gets max_r over such e.
    4. Each token with a max r, unless it is a single-token breaker, gets
       multiplier * base ** min(r - allowed_length, max_exponent), max_exponent =
       int(88.7228391 / ln(base)) when base > 1.000001, else no clamp.
    """
    out = np.zeros(int(vocab), dtype=np.float64)
    multiplier, base = float(multiplier), float(base)
    allowed_length, penalty_last_n = int(allowed_length), int(penalty_last_n)
    if multiplier == 0.0 or base < 1.0 or penalty_last_n == 0:
        return out
    h = [int(t) for t in clean_history(history)]
    ctx_size = len(h) if context_size is None else int(context_size)
    effective = ctx_size if penalty_last_n == -1 else max(penalty_last_n, 0)
    n = min(len(h), effective, ctx_size)
    if n <= allowed_length:
        return out
    w = h[len(h) - n :]

    def rat(i: int) -> int:  # llama.cpp's ring_buffer::rat: the i-th id from the end
        return w[n - 1 - i]

    brk = [tuple(int(t) for t in b) for b in (breakers or ()) if len(b) > 0]
    # step 1: the most recent breaker limits the repeat length
    rep_limit = n
    for i in range(n):
        longest = -1
        for b in brk:
            if b[0] != rat(i):
                continue
            tail = b[1:]
            if (
                len(tail) > longest
                and len(tail) <= i
                and all(tail[o] == rat(i - o - 1) for o in range(len(tail)))
            ):
                longest = len(tail)
        if longest >= 0:
            rep_limit = i - longest
            break
    if rep_limit < allowed_length:
        return out
    # step 2 (naive): repeat[e] = longest common suffix of w[:e + 1] and w, capped at rep_limit
    repeat = [0] * n
    for e in range(n - 1):
        m = 0
        while m <= e and w[e - m] == w[n - 1 - m]:
            m += 1
        repeat[e] = min(m, rep_limit)
    # step 3: the token after each repeat that is long enough
    max_repeat: dict[int, int] = {}
    for e in range(n - 1):
        r = repeat[e]
        if r >= allowed_length:
            tok = w[e + 1]
            if tok not in max_repeat or max_repeat[tok] < r:
                max_repeat[tok] = r
    # step 4
    max_exponent = int(DRY_FLOAT_MAX_LOG / math.log(base)) if base > 1.000001 else 0
    single = {b[0] for b in brk if len(b) == 1}
    for tok, r in max_repeat.items():
        if tok in single or not 0 <= tok < out.size:
            continue
        e = r - allowed_length
        if max_exponent > 0 and e > max_exponent:
            e = max_exponent
        out[tok] = multiplier * base**e
    return out


def no_repeat_ngram_bans(history, n: int) -> set[int]:
    """The ids HF ``NoRepeatNGramLogitsProcessor(n)`` bans after ``history``
    (transformers/generation/logits_process.py, 5.0.0 ``_get_ngrams`` /
    ``_get_generated_ngrams`` and 5.24.0's rewrite agree): every n-gram of the history whose
    first n - 1 ids equal the last n - 1 ids of the history bans its last id. Nothing when
    n <= 0 (off) or the history is shorter than n; n == 1 bans every id of the history."""
    n = int(n)
    h = [int(t) for t in clean_history(history)]
    if n <= 0 or len(h) < n:
        return set()
    prefix = h[len(h) - n + 1 :] if n > 1 else []
    return {h[s + n - 1] for s in range(len(h) - n + 1) if h[s : s + n - 1] == prefix}


def sequence_bias_amounts(history, vocab: int, sequence_bias, rule: str = "prefix") -> np.ndarray:
    """The additive bias HF ``SequenceBiasLogitsProcessor(sequence_bias)`` adds after
    ``history``, float64 (V,); -inf entries ban.

    A length-1 sequence always adds its bias. A sequence of length L > 1 adds its bias to its
    last id when the history ends with its first L - 1 ids, except that it is skipped when
    ``rule == "sequence"``: L > len(history) (transformers 5.0.0 and earlier);
    ``rule == "prefix"``: L - 1 > len(history) (transformers 5.24.0, where the processor was
    vectorised by prefix length, and ours). The two differ only when len(history) == L - 1 and the
    whole history is the prefix. Several matching sequences add up.
    """
    if rule not in ("sequence", "prefix"):
        raise ValueError(f"rule must be 'sequence' or 'prefix', got {rule!r}")
    out = np.zeros(int(vocab), dtype=np.float64)
    h = [int(t) for t in clean_history(history)]
    items = sequence_bias.items() if isinstance(sequence_bias, dict) else sequence_bias
    for seq, bias in items:
        seq = _id_tuple(seq, "sequence_bias", vocab)
        bias = float(bias)
        if len(seq) == 1:
            out[seq[0]] += bias
            continue
        limit = len(seq) if rule == "sequence" else len(seq) - 1
        if limit > len(h):
            continue
        if tuple(h[len(h) - len(seq) + 1 :]) == seq[:-1]:
            out[seq[-1]] += bias
    return out


def bad_words_bans(history, vocab: int, bad_words_ids, rule: str = "prefix") -> np.ndarray:
    """HF ``NoBadWordsLogitsProcessor(bad_words_ids)``: ``sequence_bias_amounts`` with -inf
    for every sequence (it is a SequenceBiasLogitsProcessor with -inf biases)."""
    seqs = {_id_tuple(s, "bad_words_ids", vocab): -np.inf for s in bad_words_ids}
    return sequence_bias_amounts(history, vocab, seqs, rule)


def _is_id(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _id_tuple(seq, name: str, vocab: int | None = None) -> tuple[int, ...]:
    """A token-id sequence (list / tuple / array of ints; an int is a length-1 sequence)."""
    if isinstance(seq, (str, bytes)):
        raise ValueError(f"{name}: strings need a tokenizer (generate / the CLI): {seq!r}")  # noqa: TRY004
    if _is_id(seq):
        seq = (seq,)
    if len(seq) == 0:
        raise ValueError(f"{name}: empty sequence")
    arr = np.asarray(seq)
    if arr.dtype.kind in "USO" and not all(_is_id(t) for t in arr.reshape(-1).tolist()):
        raise ValueError(f"{name}: a sequence holds something other than token ids: {seq!r}")
    if arr.dtype.kind not in "iuO":
        raise ValueError(f"{name}: token ids must be integers: {seq!r}")
    out = tuple(int(t) for t in arr.reshape(-1).tolist())
    if len(out) == 0:
        raise ValueError(f"{name}: empty sequence")
    if any(t < 0 for t in out) or (vocab is not None and any(t >= vocab for t in out)):
        raise ValueError(f"{name}: token id out of range [0, {vocab}): {out}")
    return out


def _depth(obj) -> int | None:
    """0 for an id, 1 for a sequence of ids, 2 for a sequence of sequences; None if empty."""
    if _is_id(obj):
        return 0
    if isinstance(obj, (str, bytes)):
        return 1  # a string breaker / bad word: a sequence (rejected later, naming it)
    if isinstance(obj, np.ndarray):
        return obj.ndim if obj.size else None
    items = list(obj)
    for it in items:
        d = _depth(it)
        if d is not None:
            return d + 1
    return None


def _per_row_sequences(value, batch: int, name: str, vocab: int) -> list[list[tuple]]:
    """None | a sequence of id sequences | a list of B such -> B lists of id tuples."""
    if value is None:
        return [[] for _ in range(batch)]
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{name}: a list of token-id sequences, not a string")  # noqa: TRY004
    items = list(value)
    if _depth(items) == 3:  # one sequence of sequences per row
        if len(items) != batch:
            raise ValueError(f"{name}: {len(items)} per-row entries for {batch} rows")
        return [
            [_id_tuple(s, name, vocab) for s in (row if row is not None else [])] for row in items
        ]
    seqs = [_id_tuple(s, name, vocab) for s in items]
    return [list(seqs) for _ in range(batch)]


def _per_row_bias_dicts(value, batch: int, vocab: int) -> list[dict]:
    if value is None:
        return [{} for _ in range(batch)]
    if isinstance(value, dict):
        rows = [value] * batch
    else:
        rows = list(value)
        if len(rows) != batch or not all(r is None or isinstance(r, dict) for r in rows):
            raise ValueError("sequence_bias: a dict or a list of B dicts")
    return [
        {_id_tuple(k, "sequence_bias", vocab): float(v) for k, v in (r or {}).items()} for r in rows
    ]


def _history_rows(hist_params: dict, batch: int, vocab: int, rule: str) -> list[dict]:
    """The issue 16 keywords -> one dict per row (empty when none is given, so that a call
    without them builds exactly the rows it always did)."""
    rows: list[dict] = [{} for _ in range(batch)]
    if not hist_params:
        return rows
    for name, off in HISTORY_PARAMS.items():
        values = _per_row(hist_params.get(name), batch, off)
        for i, v in enumerate(values):
            rows[i][name] = v
    for i, v in enumerate(rows):
        if int(v["mirostat"]) != 0:
            raise ValueError("mirostat is stateful: the stateless oracle refuses it "
                             "(use mirostat_step), as ts.sample / ts.probs do")  # fmt: skip
        _check_history_values(v)
    breakers = _per_row_sequences(
        hist_params.get("dry_sequence_breakers"), batch, "dry_sequence_breakers", vocab
    )
    bad = _per_row_sequences(hist_params.get("bad_words_ids"), batch, "bad_words_ids", vocab)
    bias = _per_row_bias_dicts(hist_params.get("sequence_bias"), batch, vocab)
    for i in range(batch):
        rows[i]["dry_sequence_breakers"] = breakers[i]
        rows[i]["bad_words_ids"] = bad[i]
        rows[i]["sequence_bias"] = bias[i]
        rows[i]["sequence_bias_rule"] = rule
    return rows


def _whole(v) -> bool:
    return float(v) == int(v)


def _check_history_values(p: dict) -> None:
    """The spec's valid ranges (ts raises ts.SamplingError outside them; so does the oracle,
    as ValueError)."""
    checks = [
        ("penalty_last_n", _whole(p["penalty_last_n"]) and p["penalty_last_n"] >= -1),
        ("dry_multiplier", math.isfinite(p["dry_multiplier"]) and p["dry_multiplier"] >= 0),
        ("dry_base", math.isfinite(p["dry_base"]) and p["dry_base"] >= 1),
        ("dry_allowed_length", _whole(p["dry_allowed_length"]) and p["dry_allowed_length"] >= 0),
        ("dry_penalty_last_n", _whole(p["dry_penalty_last_n"]) and p["dry_penalty_last_n"] >= -1),
        ("no_repeat_ngram_size",
         _whole(p["no_repeat_ngram_size"]) and p["no_repeat_ngram_size"] >= 0),
        ("mirostat", p["mirostat"] in (0, 1, 2)),
        ("mirostat_tau", math.isfinite(p["mirostat_tau"]) and p["mirostat_tau"] >= 0),
        ("mirostat_eta", math.isfinite(p["mirostat_eta"]) and p["mirostat_eta"] >= 0),
    ]  # fmt: skip
    for name, ok in checks:
        if not ok:
            raise ValueError(f"{name}: invalid value {p[name]!r}")


def history_terms(vocab: int, hist, p: dict):
    """One row's issue 16 terms: (the history the penalties count, the extra additive bias or
    None, the DRY amounts or None). With none of the keywords in ``p`` this is
    (``hist``, None, None): the section 2 / 9 results are unchanged.

    Pipeline (the spec of issue 16): logit_bias, then sequence_bias + bad_words_ids + the
    no-repeat-n-gram bans (one additive term, -inf bans) -> repetition -> frequency /
    presence (over the last ``penalty_last_n`` ids) -> DRY (over the whole history, windowed
    by ``dry_penalty_last_n``) -> k-scaling (over the penalty window) -> the stages."""
    if "penalty_last_n" not in p:
        return hist, None, None
    h = clean_history(hist)
    window = penalty_window(h, p["penalty_last_n"])
    extra = np.zeros(vocab, dtype=np.float64)
    rule = p.get("sequence_bias_rule", "prefix")
    if p["sequence_bias"]:
        extra += sequence_bias_amounts(h, vocab, p["sequence_bias"], rule)
    if p["bad_words_ids"]:
        extra += bad_words_bans(h, vocab, p["bad_words_ids"], rule)
    bans = no_repeat_ngram_bans(h, int(p["no_repeat_ngram_size"]))
    if bans:
        extra[sorted(bans)] = -np.inf
    dry = None
    if float(p["dry_multiplier"]) != 0.0:
        d = dry_penalties(h, vocab, p["dry_multiplier"], p["dry_base"], p["dry_allowed_length"],
                          p["dry_penalty_last_n"], p["dry_sequence_breakers"])  # fmt: skip
        dry = d if d.any() else None
    return window, (extra if extra.any() else None), dry


# -- mirostat ---------------------------------------------------------------------------------


@dataclass
class MirostatStep:
    """One mirostat step on a row (see ``mirostat_step``)."""

    probs: np.ndarray  # the renormalised distribution over the kept set (zeros elsewhere)
    keep: np.ndarray  # bool (V,)
    mu: float  # mu before the step
    version: int
    tau: float
    eta: float
    k: float | None = None  # v1: the k of the formula (before int / clamping)
    s_hat: float | None = None  # v1
    ambiguous: bool = False  # the kept set is within rounding of another one
    alternatives: list = field(default_factory=list)  # other kept sets (bool arrays) then

    def new_mu(self, chosen: int, keep: np.ndarray | None = None) -> float:
        """mu <- mu - eta * (-log2(p_chosen) - tau), p_chosen under the renormalised
        distribution of ``keep`` (default: this step's kept set)."""
        q = self.probs if keep is None else _renormalise(self._p, keep)
        pc = float(q[int(chosen)])
        if pc <= 0.0:
            raise ValueError(f"mirostat: chosen id {chosen} is outside the kept set")
        return self.mu - self.eta * (-math.log2(pc) - self.tau)

    def candidate_mus(self, chosen: int) -> list[float]:
        """new_mu for this step's kept set and every alternative that keeps ``chosen``."""
        sets = [self.keep] + list(self.alternatives)
        return [self.new_mu(chosen, s) for s in sets if s[int(chosen)]]

    _p: np.ndarray = field(default=None, repr=False)  # the distribution before truncation


def _renormalise(p: np.ndarray, keep: np.ndarray) -> np.ndarray:
    q = np.where(keep, p, 0.0)
    return q / q.sum()


def mirostat_step(
    logits, mu: float, version: int, tau: float = 5.0, eta: float = 0.1, vocab: int | None = None,
    m: int = MIROSTAT_M, rel_tol: float | None = None,
) -> MirostatStep:  # fmt: skip
    """One mirostat truncation on the logits left after every stage (-inf = removed), float64.

    From llama.cpp src/llama-sampling.cpp (commit 0344068cf112e524eb3fbdbd58c171870b63e56c),
    ``llama_sampler_mirostat_apply`` (v1, m = 100, n_vocab = V) and
    ``llama_sampler_mirostat_v2_apply`` (v2), on the distribution p = softmax of the finite
    logits (our spec: llama.cpp's candidate array also holds -inf entries; we use the n
    finite tokens):

    - v1: sort p descending; s_hat = sum_{i < min(m-1, n-1)} t_i b_i / sum t_i^2 with
      t_i = ln((i+2)/(i+1)), b_i = ln(p_i / p_{i+1}); eps = s_hat - 1;
      k = (eps 2^mu / (1 - V^-eps))^(1/s_hat); keep the top max(int(k), 1) tokens (ties at
      the boundary kept; a non-finite k keeps 1; k > n keeps all).
    - v2: keep the tokens with -log2(p) <= mu, at least the most probable (and its ties).

    Then renormalise; ``new_mu(chosen)`` = mu - eta (-log2 q_chosen - tau). ``ambiguous`` is
    set when a float32 implementation could keep another set: v1 when k lies within
    ``rel_tol`` (relative; default 1e-4) of an integer that changes the count, v2 when a
    surprise lies within ``rel_tol`` (1 + |mu|) of mu (default 2e-5); ``alternatives`` then
    lists the other sets.
    """
    if rel_tol is None:  # float32 probabilities: -log2 p within ~2e-6, k within ~1e-5 (relative)
        rel_tol = 1e-4 if version == 1 else 2e-5
    z = np.asarray(_as_numpy(logits), dtype=np.float64).reshape(-1)
    V = z.size if vocab is None else int(vocab)
    fin = z > -np.inf
    if not fin.any():
        raise ValueError("mirostat: no finite logit")
    zmax = z[fin].max()
    e = np.where(fin, np.exp(np.where(fin, z - zmax, 0.0)), 0.0)
    p = e / e.sum()
    idx = np.flatnonzero(fin)
    order = idx[np.lexsort((idx, -p[idx]))]  # descending p, ties by lower id
    ps = p[order]
    n = order.size

    def top(count: int) -> np.ndarray:
        count = min(max(int(count), 1), n)
        return fin & (p >= ps[count - 1])

    step = MirostatStep(probs=None, keep=None, mu=float(mu), version=int(version),
                        tau=float(tau), eta=float(eta), _p=p)  # fmt: skip
    alts: list[np.ndarray] = []
    if version == 1:
        num = den = 0.0
        for i in range(min(m - 1, n - 1)):
            t = math.log((i + 2) / (i + 1))
            with np.errstate(divide="ignore"):
                b = float(np.log(ps[i] / ps[i + 1])) if ps[i + 1] > 0 else math.inf
            num += t * b
            den += t * t
        with np.errstate(all="ignore"):
            s_hat = np.float64(num) / np.float64(den) if den > 0 else np.float64(np.nan)
            eps_hat = s_hat - 1.0
            k = np.power(eps_hat * np.power(2.0, float(mu)) / (1.0 - np.power(float(V), -eps_hat)),
                         1.0 / s_hat)  # fmt: skip
        k = float(k)
        step.k, step.s_hat = k, float(s_hat)
        count = max(int(k), 1) if math.isfinite(k) else 1
        keep = top(count)
        if math.isfinite(k) and k >= 1.0 - rel_tol:
            lo, hi = math.floor(k * (1 - rel_tol)), math.floor(k * (1 + rel_tol))
            for c in {max(lo, 1), max(hi, 1)} - {count}:
                alt = top(c)
                if not np.array_equal(alt, keep):
                    alts.append(alt)
    elif version == 2:
        with np.errstate(divide="ignore"):
            surprise = np.where(fin, -np.log2(np.where(fin, p, 1.0)), np.inf)
        keep = fin & (surprise <= mu)
        keep |= fin & (p == ps[0])
        tol = rel_tol * (1.0 + abs(float(mu)))
        near = fin & (np.abs(surprise - mu) <= tol) & (p != ps[0])
        if near.any():
            lo = fin & (surprise <= mu - tol) | (fin & (p == ps[0]))
            hi = fin & (surprise <= mu + tol) | (fin & (p == ps[0]))
            for alt in (lo, hi):
                if not np.array_equal(alt, keep):
                    alts.append(alt)
    else:
        raise ValueError(f"mirostat version must be 1 or 2, got {version}")
    step.keep = keep
    step.probs = _renormalise(p, keep)
    step.alternatives = alts
    step.ambiguous = bool(alts)
    return step
