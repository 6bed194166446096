"""The history-aware and stateful stages of issue 16 (docs/design.md section 9's table) against
the float64 oracle, the references' own test vectors and implementations.

Stages: ``penalty_last_n``; DRY (``dry_multiplier``, ``dry_base``, ``dry_allowed_length``,
``dry_penalty_last_n``, ``dry_sequence_breakers``); ``no_repeat_ngram_size``;
``bad_words_ids``; ``sequence_bias``; mirostat 1 / 2 (``mirostat``, ``mirostat_tau``,
``mirostat_eta``, held by ``Sampler``) and ``Sampler.state_dict`` / ``load_state_dict``.

1. llama.cpp: the vectors of ``tests/test-sampling.cpp`` ``test_dry`` (all five) and
   ``test_penalties`` (all six) at commit f0817df540977d3e3bd9038e7e108fa4f3b4bbde, ported in
   tests/llama_cpp_vectors.py (how the harness's context size / last_n map to our keywords is
   written there), plus derived window vectors; tolerance 1e-5 (the harness's). The oracle's
   ``dry_penalties`` (a naive O(N^2) suffix match written from ``llama_sampler_dry_apply``,
   src/llama-sampling.cpp at 0344068cf112e524eb3fbdbd58c171870b63e56c) is checked against a
   literal port of that function, Z-algorithm included (``llama_cpp_vectors.llama_cpp_dry``),
   on hypothesis histories: equal amounts, exactly.
2. Hugging Face: transformers' own ``NoRepeatNGramLogitsProcessor``,
   ``NoBadWordsLogitsProcessor`` and ``SequenceBiasLogitsProcessor`` on hypothesis histories
   and float32 logits: the oracle's bans / biases equal HF's exactly (float64 vs the float32
   scores: the same -inf set, biases within float32 rounding); ``ts.probs(...,
   temperature=1)`` equals softmax(HF-processed scores) within 2 (atol + p (rtol +
   expm1(2 rel_j))) per token, atol 1e-6, rtol 1e-5, rel_j = 32 eps32 (mag_j + 1) +
   sum_i q_i 32 eps32 (mag_i + 1) (mag: the operand magnitudes of the penalty arithmetic,
   ``RowTrace.mag``), twice the single-implementation bound as in
   tests/test_hf_equivalence.py. **A version difference**: transformers 5.0.0 (our oldest
   supported) skips a sequence of length L > 1 when L > len(history); 5.24.0 (the locked
   version) only when L - 1 > len(history). We follow 5.24.0 (a history that is exactly the
   prefix applies the bias); the oracle takes either (``sequence_bias_rule``), the HF
   comparisons detect the installed rule, and against 5.0.0 ``ts`` is compared with HF only
   on inputs where the two rules agree (the edge case has its own test).
3. DRY, penalty_last_n, n-gram bans, bad words and sequence bias against the oracle on
   hypothesis inputs (small vocabularies, histories built from copied segments so that
   repeats are common, padding (-1) anywhere, breakers of 1-3 ids, every keyword omitted /
   scalar / per-row), with the same per-token bound (1x) for rows without filters, or
   ``oracle.check_row`` / ``check_stage_row`` when other stages are on.
4. Mirostat: ``oracle.mirostat_step`` (from ``llama_sampler_mirostat_apply`` /
   ``_v2_apply``) is first checked against a literal port of llama.cpp's truncation; then a
   ``ts.Sampler(mirostat=1 or 2, seed=...)`` is driven over a fixed sequence of logit rows:
   at each step the chosen id lies in the kept set and the new ``Sampler.mirostat_mu`` equals
   the port's update applied to that id, from the Sampler's own previous mu (absolute 2e-5 +
   relative 1e-5: -log2 of a float32 probability); the whole trajectory of the port, run
   from mu = 2 tau on the Sampler's ids alone, stays within steps x that bound. A step whose
   kept set is within float rounding of another (k within 1e-4 (relative) of an integer, a
   surprise within 2e-5 (1 + |mu|) of mu) accepts either set's update. ``state_dict`` /
   ``load_state_dict``: bit-identical ids and mu after a restore into a fresh Sampler.
5. Bad input: strings reaching ``sample`` / ``probs``, invalid values, ids out of range.

Tests parametrised with ``impl`` run against the oracle (``oracle``, which must pass on its
own) and against the kernel (``ts``).
"""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import tokensampler as ts
from hypothesis import assume, given
from hypothesis import strategies as st
from llama_cpp_vectors import (
    DRY_VECTORS,
    DRY_WHOLE_HISTORY_VECTORS,
    PENALTY_VECTORS,
    PENALTY_WINDOW_VECTORS,
    llama_cpp_dry,
    llama_cpp_mirostat,
    llama_cpp_mirostat_update,
    llama_cpp_mirostat_v2,
    logits_of,
)
from oracle import (
    EPS32,
    EPS64,
    RowTrace,
    bad_words_bans,
    check_row,
    check_stage_row,
    clean_history,
    dry_penalties,
    mirostat_step,
    no_repeat_ngram_bans,
    oracle_probs,
    oracle_rows,
    penalty_window,
    sequence_bias_amounts,
)
from sampling_cases import impls, kernel_impl, oracle_impl

seeds = st.integers(0, 2**63 - 1)


# ---------------------------------------------------------------------------------------------
# The two implementations, and the comparison for rows without filters.
# ---------------------------------------------------------------------------------------------


_oracle, _kernel = oracle_impl, kernel_impl
IMPLS = impls()


def penalty_row_tolerance(trace: RowTrace, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(q, tol) for a row whose only operations are the bias / penalty arithmetic, temperature
    and softmax (no filter): each current logit z_j of an implementation of unit roundoff
    ``eps`` is within d_j = 32 eps (mag_j + 1) of the oracle's (``RowTrace.mag``: the operand
    magnitudes of the row's arithmetic, divided by T k), so log q_j is within
    d_j + sum_i q_i d_i (the log-sum-exp moves by at most the q-weighted errors); banned
    tokens (-inf) have probability exactly 0."""
    atol, rtol = (1e-12, 1e-9) if eps == EPS64 else (1e-6, 1e-5)
    q = trace.probs
    fin = np.isfinite(trace.z)
    d = np.where(fin, 32.0 * eps * (trace.mag + 1.0), 0.0)
    rel = np.minimum(d + float((q * d).sum()), 30.0)
    return q, atol + q * (rtol + np.expm1(2.0 * rel))


def check_rows(got, logits, kw, eps=None, where="") -> None:
    """Every row of ``got`` against the oracle: the per-token bound for rows without filters,
    ``check_row`` / ``check_stage_row`` otherwise."""
    x = np.asarray(logits)
    if eps is None:
        eps = EPS64 if x.dtype == np.float64 else EPS32
    traces = oracle_rows(x, **kw)
    got2 = np.atleast_2d(np.asarray(got, dtype=np.float64))
    for i, tr in enumerate(traces):
        w = f"{where} row {i}"
        if not isinstance(tr, RowTrace):
            check_stage_row(got2[i], tr, where=w)
            continue
        filters = (0 < tr.top_k < x.shape[-1]) or tr.top_p < 1.0 or tr.min_p > 0.0
        if tr.greedy or filters:
            check_row(got2[i], tr, eps, where=w)
            continue
        q, tol = penalty_row_tolerance(tr, eps)
        g = got2[i]
        banned = ~np.isfinite(tr.z)
        assert np.all(g[banned] == 0), f"{w}: mass on banned ids {np.flatnonzero(banned & (g > 0))}"
        bad = np.flatnonzero(np.abs(g - q) > tol)
        assert bad.size == 0, f"{w}: ids {bad[:8]} got {g[bad[:8]]} oracle {q[bad[:8]]}"


# ---------------------------------------------------------------------------------------------
# Hypothesis inputs.
# ---------------------------------------------------------------------------------------------


def build_history(rng, vocab: int, length: int) -> np.ndarray:
    """``length`` ids made of pieces that are fresh random ids or copies of an earlier segment
    (so that repeats of every length are common), from a few "hot" ids some of the time."""
    h: list[int] = []
    pool = rng.integers(0, vocab, size=int(rng.integers(1, 5))) if rng.random() < 0.4 else None
    while len(h) < length:
        if h and rng.random() < 0.55:
            start = int(rng.integers(0, len(h)))
            seg = h[start : start + int(rng.integers(1, 9))]
            h.extend(seg)
        else:
            n = int(rng.integers(1, 5))
            src = rng.choice(pool, size=n) if pool is not None else rng.integers(0, vocab, size=n)
            h.extend(int(t) for t in src)
    return np.array(h[:length], dtype=np.int64)


def pad(rng, h: np.ndarray, p: float) -> np.ndarray:
    """Insert -1 (padding) at random places."""
    out = []
    for t in h:
        while rng.random() < p:
            out.append(-1)
        out.append(int(t))
    while rng.random() < p:
        out.append(-1)
    return np.array(out, dtype=np.int64)


def history_arg(rng, hists: list[np.ndarray], padding: bool):
    """The histories as one of the accepted forms: a (B, L) array padded with -1 (anywhere),
    a list of B arrays / lists, or a 1-D array for B == 1."""
    if padding:
        hists = [pad(rng, h, 0.15) for h in hists]
    form = int(rng.integers(0, 3))
    if form == 0 and len(hists) == 1:
        return hists[0]
    if form == 1:
        width = max((len(h) for h in hists), default=0)
        out = np.full((len(hists), width), -1, dtype=np.int64)
        for i, h in enumerate(hists):
            if padding and rng.random() < 0.5:
                out[i, width - len(h) :] = h  # left padding
            else:
                out[i, : len(h)] = h
        return out
    return [h.tolist() if rng.random() < 0.5 else h for h in hists]


def random_breakers(rng, vocab: int, hist: np.ndarray) -> list[list[int]]:
    out = []
    for _ in range(int(rng.integers(0, 4))):
        n = int(rng.choice([1, 1, 2, 3]))
        if len(hist) >= n and rng.random() < 0.7:  # often a segment of the history itself
            s = int(rng.integers(0, len(hist) - n + 1))
            out.append([int(t) for t in hist[s : s + n]])
        else:
            out.append([int(t) for t in rng.integers(0, vocab, size=n)])
    return out


@st.composite
def dry_cases(draw, max_len=40):
    """(logits, keywords): DRY with every parameter omitted / scalar / per-row."""
    rng = np.random.default_rng(draw(seeds))
    batch = draw(st.integers(1, 4))
    vocab = draw(st.sampled_from([2, 5, 8, 8, 8, 30, 1000]))
    dtype = draw(st.sampled_from([np.float32, np.float32, np.float64]))
    x = (rng.standard_normal((batch, vocab)) * draw(st.sampled_from([0.5, 2.0, 5.0]))).astype(dtype)
    hists = [build_history(rng, vocab, int(rng.integers(0, max_len + 1))) for _ in range(batch)]
    kw: dict = {"history": history_arg(rng, hists, draw(st.booleans()))}

    def put(name, scalar, row):
        kind = draw(st.sampled_from(["omit", "scalar", "row"]))
        if kind == "scalar":
            kw[name] = draw(scalar)
        elif kind == "row":
            values = [row(i) for i in range(batch)]
            kw[name] = np.array(values) if draw(st.booleans()) else values

    kw["dry_multiplier"] = draw(st.sampled_from([0.8, 0.2, 1.0, 2.5, 0.0]))
    if draw(st.booleans()):
        kw["dry_multiplier"] = [float(rng.choice([0.0, 0.3, 0.8, 1.7])) for _ in range(batch)]
    put("dry_base", st.sampled_from([1.0, 1.000001, 1.1, 1.5, 1.75, 2.0]),
        lambda i: float(rng.choice([1.0, 1.2, 1.75, 2.0])))  # fmt: skip
    put("dry_allowed_length", st.sampled_from([0, 1, 2, 3, 5]),
        lambda i: int(rng.integers(0, 5)))  # fmt: skip
    put("dry_penalty_last_n", st.sampled_from([-1, 0, 1, 2, 3, 7, 20, 1000]),
        lambda i: int(rng.choice([-1, 0, int(rng.integers(1, len(hists[i]) + 3))])))  # fmt: skip
    kind = draw(st.sampled_from(["omit", "none", "shared", "row"]))
    if kind == "none":
        kw["dry_sequence_breakers"] = None
    elif kind == "shared":
        kw["dry_sequence_breakers"] = random_breakers(rng, vocab, hists[0])
    elif kind == "row":
        rows = [random_breakers(rng, vocab, h) for h in hists]
        # every row empty would read as one empty breaker ([[]], an error): None instead
        kw["dry_sequence_breakers"] = rows if any(rows) else None
    if draw(st.booleans()):  # with the other penalties (DRY comes after them)
        kw["repetition_penalty"] = float(rng.choice([1.0, 1.3]))
        kw["frequency_penalty"] = float(rng.choice([0.0, 0.4]))
        kw["presence_penalty"] = float(rng.choice([0.0, -0.5, 0.7]))
        kw["penalty_last_n"] = int(rng.choice([-1, 0, 3, 10]))
    if draw(st.booleans()):
        kw["temperature"] = float(rng.choice([0.7, 1.3]))
    return x, kw


# ---------------------------------------------------------------------------------------------
# 0. The oracle: its history path changes nothing when off; DRY equals the literal port.
# ---------------------------------------------------------------------------------------------


def test_oracle_history_keywords_off_change_nothing():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 20)).astype(np.float32)
    h = rng.integers(-1, 20, size=(3, 12))
    base = {"history": h, "repetition_penalty": 1.3, "frequency_penalty": 0.2,
            "frequency_scale": 1.1, "top_k": 7}  # fmt: skip
    want = oracle_probs(x, **base)
    offs = {"penalty_last_n": -1, "dry_multiplier": 0.0, "dry_base": 1.75,
            "dry_allowed_length": 2, "dry_penalty_last_n": -1, "no_repeat_ngram_size": 0,
            "mirostat": 0, "mirostat_tau": 5.0, "mirostat_eta": 0.1,
            "dry_sequence_breakers": None, "bad_words_ids": None, "sequence_bias": None}  # fmt: skip
    for name, off in offs.items():
        np.testing.assert_array_equal(oracle_probs(x, **base, **{name: off}), want, err_msg=name)
    np.testing.assert_array_equal(oracle_probs(x, **base, **offs), want)
    # and on the ordered path
    want9 = oracle_probs(x, **base, typical_p=0.9)
    np.testing.assert_array_equal(oracle_probs(x, **base, typical_p=0.9, **offs), want9)


def test_oracle_refuses_mirostat():
    with pytest.raises(ValueError, match="mirostat"):
        oracle_probs(np.zeros(4), mirostat=1)


@given(seeds, st.integers(1, 12), st.integers(0, 60))
def test_oracle_dry_equals_literal_port(seed, vocab, length):
    """The naive suffix match equals llama.cpp's reversed Z-algorithm (with its Z-box reuse
    of the capped counts), for every window, allowed length, base and breaker set."""
    rng = np.random.default_rng(seed)
    h = build_history(rng, vocab, length)
    for _ in range(6):
        brk = random_breakers(rng, vocab, h)
        args = (float(rng.choice([0.5, 1.0, 2.0])), float(rng.choice([1.0, 1.1, 1.75, 3.0])),
                int(rng.integers(0, 5)), int(rng.choice([-1, 0, 1, 2, 5, length, length + 3])))  # fmt: skip
        np.testing.assert_array_equal(
            dry_penalties(h, vocab, *args, brk),
            llama_cpp_dry(h, vocab, *args, brk),
            err_msg=f"{h.tolist()} {args} {brk}",
        )
        # llama.cpp's context size only bounds the window, like dry_penalty_last_n
        ctx = int(rng.integers(1, length + 2))
        np.testing.assert_array_equal(
            dry_penalties(h, vocab, *args, brk, context_size=ctx),
            llama_cpp_dry(h, vocab, *args, brk, context_size=ctx),
        )


def test_oracle_dry_by_hand():
    # llama.cpp's own example: a b c c b c y a b c -> c: 3 -> 4 ... (a=0, b=1, c=2, y=3)
    h = [0, 1, 2, 2, 1, 2, 3, 0, 1, 2]
    d = dry_penalties(h, 5, 1.0, 2.0, 1)
    # c (2) extends "a b c" (3), b (1) extends "c" (1), y (3) extends "b c" (2)
    np.testing.assert_array_equal(d, [0, 2.0**0, 2.0**2, 2.0**1, 0])
    # allowed_length 2: only c (3 >= 2) and y (2 >= 2)
    np.testing.assert_array_equal(dry_penalties(h, 5, 1.0, 2.0, 2), [0, 0, 2.0**1, 2.0**0, 0])
    # a breaker y (3) two ids from the end limits every repeat to 3 ids: rep_limit 3
    np.testing.assert_array_equal(dry_penalties(h, 5, 1.0, 2.0, 2, breakers=[[3]]),
                                  [0, 0, 2.0, 0, 0])  # fmt: skip
    # a two-id breaker (y, a): its tail follows the head; rep_limit = 3 - 1 = 2; y is not a
    # single-token breaker, so it is penalised (its repeat "b c" has length 2)
    np.testing.assert_array_equal(dry_penalties(h, 5, 1.0, 2.0, 2, breakers=[[3, 0]]),
                                  [0, 0, 1.0, 1.0, 0])  # fmt: skip
    # (y, b) does not match (y is followed by a): no limit
    np.testing.assert_array_equal(dry_penalties(h, 5, 1.0, 2.0, 2, breakers=[[3, 1]]),
                                  [0, 0, 2.0, 1.0, 0])  # fmt: skip
    # allowed_length 0: every id after position 0 of the window is "extending a repeat of 0"
    d0 = dry_penalties([4, 3, 1], 5, 0.5, 2.0, 0)
    np.testing.assert_array_equal(d0, [0, 0.5, 0, 0.5, 0])
    # the exponent clamp: base 1.75 -> max_exponent int(88.7228391 / ln 1.75) = 158
    assert int(88.7228391 / math.log(1.75)) == 158
    long = [1, 2] * 90  # "1 2 ... 1 2" ends 2 ids before the end with a repeat of 178: next 1
    d = dry_penalties(long, 3, 1.0, 1.75, 2)
    assert d[1] == 1.75**158  # 178 - 2 = 176, clamped to 158
    assert d[0] == d[2] == 0.0  # no repeat ends in 1 (the history ends in 2)


@given(seeds)
def test_oracle_mirostat_equals_literal_port(seed):
    """``mirostat_step`` keeps the count llama.cpp's truncation keeps (continuous logits: no
    ties), and its update is llama.cpp's."""
    rng = np.random.default_rng(seed)
    vocab = int(rng.choice([2, 5, 50, 300]))
    z = rng.standard_normal(vocab) * float(rng.choice([0.5, 2.0, 5.0]))
    mu = float(rng.uniform(0.5, 15.0))
    p = np.exp(z - z.max())
    p /= p.sum()
    desc = np.sort(p)[::-1]
    s1 = mirostat_step(z, mu, 1, 5.0, 0.1, vocab=vocab)
    k, kept = llama_cpp_mirostat(desc, mu, 5.0, 0.1, vocab)
    assert math.isclose(s1.k, k, rel_tol=1e-12) or not math.isfinite(k)
    if not s1.ambiguous:
        assert int(s1.keep.sum()) == kept
    s2 = mirostat_step(z, mu, 2, 5.0, 0.1)
    if not s2.ambiguous:
        assert int(s2.keep.sum()) == llama_cpp_mirostat_v2(desc, mu)
    for s in (s1, s2):
        chosen = int(np.flatnonzero(s.keep)[0])
        want = llama_cpp_mirostat_update(mu, 5.0, 0.1, float(s.probs[chosen]))
        assert math.isclose(s.new_mu(chosen), want, rel_tol=1e-12, abs_tol=1e-12)


def test_oracle_hf_reference_functions_by_hand():
    assert no_repeat_ngram_bans([1, 2, 3, 1, 2], 3) == {3}
    assert no_repeat_ngram_bans([1, 2, 3, 1, 2], 2) == {3}
    assert no_repeat_ngram_bans([1, 2, 1, 2, 1], 2) == {2}
    assert no_repeat_ngram_bans([1, 2, 1, 2, 1], 1) == {1, 2}
    assert no_repeat_ngram_bans([1, 2], 3) == set()
    assert no_repeat_ngram_bans([-1, 1, -1, 2, 1], 2) == {2}  # padding dropped first
    sb = {(1,): 1.5, (2, 3): -2.0, (1, 2, 3): 0.5, (3, 3, 3): -np.inf}
    np.testing.assert_array_equal(sequence_bias_amounts([0, 1, 2], 4, sb), [0, 1.5, 0, -1.5])
    # len(history) == L - 1: transformers 5.0.0 skips ("sequence"), 5.24.0 and we apply
    np.testing.assert_array_equal(sequence_bias_amounts([2], 4, sb, rule="sequence"),
                                  [0, 1.5, 0, 0])  # fmt: skip
    np.testing.assert_array_equal(sequence_bias_amounts([2], 4, sb), [0, 1.5, 0, -2.0])
    np.testing.assert_array_equal(sequence_bias_amounts([3, 3], 4, sb, rule="sequence"),
                                  [0, 1.5, 0, 0])  # fmt: skip
    np.testing.assert_array_equal(sequence_bias_amounts([3, 3], 4, sb), [0, 1.5, 0, -np.inf])
    np.testing.assert_array_equal(bad_words_bans([5, 1], 6, [[0], [1, 2], [4, 1, 3]]),
                                  [-np.inf, 0, -np.inf, 0, 0, 0])  # fmt: skip
    np.testing.assert_array_equal(penalty_window([1, -1, 2, 3, -1], 2), [2, 3])
    np.testing.assert_array_equal(penalty_window([1, 2, 3], 0), np.zeros(0))
    np.testing.assert_array_equal(penalty_window([1, 2, 3], 9), [1, 2, 3])
    np.testing.assert_array_equal(clean_history(np.array([[-1, 4], [2, -1]])), [4, 2])


# ---------------------------------------------------------------------------------------------
# 1. llama.cpp's vectors.
# ---------------------------------------------------------------------------------------------

LLAMA_VECTORS = DRY_VECTORS + DRY_WHOLE_HISTORY_VECTORS + PENALTY_VECTORS + PENALTY_WINDOW_VECTORS


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("name", "line", "probs", "kw", "want"), LLAMA_VECTORS,
                         ids=[v[0] for v in LLAMA_VECTORS])  # fmt: skip
def test_llama_cpp_history_vectors(impl, name, line, probs, kw, want):
    x = logits_of(probs)  # float32, as the harness's logf
    got = impl(x, **kw)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5, err_msg=line)
    # a penalty: the same in every order, and with the history as a (1, L) batch
    for order in ("hf", "vllm", "llama.cpp"):
        np.testing.assert_allclose(impl(x, order=order, **kw), got, rtol=1e-6, atol=1e-7)
    kw2 = dict(kw, history=np.asarray(kw["history"])[None, :])
    np.testing.assert_allclose(impl(x[None, :], **kw2)[0], got, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", IMPLS)
def test_dry_breaker_forms(impl):
    """No breakers: None and [] are the same; a per-row list gives each row its own."""
    x = logits_of([0.2] * 5)
    h = [0, 1, 3, 4, 0, 1]
    kw = {"history": h, "dry_multiplier": 1.0, "dry_base": 1.1, "dry_allowed_length": 2}
    np.testing.assert_allclose(impl(x, dry_sequence_breakers=[], **kw),
                               impl(x, dry_sequence_breakers=None, **kw), atol=1e-7)  # fmt: skip
    np.testing.assert_allclose(impl(x, **kw), impl(x, dry_sequence_breakers=None, **kw), atol=1e-7)
    # without a breaker, 3 is penalised; with [[3]] (a single-token breaker) nothing is
    free = impl(x, **kw)
    assert free[3] < 0.2 - 1e-3
    np.testing.assert_allclose(impl(x, dry_sequence_breakers=[[3]], **kw), [0.2] * 5, atol=1e-6)
    x2 = np.stack([x, x])
    kw2 = dict(kw, history=np.array([h, h]))
    got = impl(x2, dry_sequence_breakers=[[[3]], []], **kw2)
    np.testing.assert_allclose(got[0], [0.2] * 5, atol=1e-6)
    np.testing.assert_allclose(got[1], free, atol=1e-6)
    # a multi-token breaker (4, 0): its head 4 is followed by 0, so it limits the repeat
    got = impl(x, dry_sequence_breakers=[[4, 0]], **kw)
    np.testing.assert_allclose(got, [0.2] * 5, atol=1e-6)  # rep_limit 1 < allowed 2
    # ... and (4, 1) does not match: the breaker changes nothing
    np.testing.assert_allclose(impl(x, dry_sequence_breakers=[[4, 1]], **kw), free, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_dry_window_and_padding(impl):
    x = logits_of([0.25] * 4)
    kw = {"dry_multiplier": 1.0, "dry_base": 1.1, "dry_allowed_length": 2}
    want = oracle_probs(x, history=[0, 1, 2, 0, 1], **kw)
    assert want[2] < 0.2
    # padding is dropped first, wherever it sits
    np.testing.assert_allclose(impl(x, history=[-1, 0, 1, -1, 2, 0, -1, 1, -1], **kw), want,
                               atol=1e-6)  # fmt: skip
    # older ids outside dry_penalty_last_n do not count: last 4 = 1 2 0 1, "0 1" unmatched
    np.testing.assert_allclose(impl(x, history=[0, 1, 2, 0, 1], dry_penalty_last_n=4, **kw),
                               [0.25] * 4, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(impl(x, history=[0, 1, 2, 0, 1], dry_penalty_last_n=0, **kw),
                               [0.25] * 4, atol=1e-6)  # fmt: skip
    # penalty_last_n is not DRY's window
    np.testing.assert_allclose(impl(x, history=[0, 1, 2, 0, 1], penalty_last_n=0, **kw), want,
                               atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("impl", IMPLS)
def test_dry_exponent_clamp(impl):
    """base 1.75, a repeat of 178: the exponent is clamped at 158 (1.75^158 = 2.5e38, still
    finite in float32): token 1 gets probability 0 (underflow), the others share the mass."""
    x = np.zeros(4, np.float32)
    got = impl(x, history=[1, 2] * 90, dry_multiplier=1.0, dry_base=1.75)
    np.testing.assert_allclose(got, [1 / 3, 0, 1 / 3, 1 / 3], atol=1e-7)


# ---------------------------------------------------------------------------------------------
# 2. Hugging Face's processors.
# ---------------------------------------------------------------------------------------------


def _hf():
    torch = pytest.importorskip("torch")
    lp = pytest.importorskip("transformers.generation.logits_process")
    return torch, lp


def hf_sequence_bias_rule() -> str:
    """The installed transformers' length rule (see ``oracle.sequence_bias_amounts``)."""
    torch, lp = _hf()
    proc = lp.SequenceBiasLogitsProcessor(sequence_bias={(1, 2): 5.0})
    out = proc(torch.tensor([[1]]), torch.zeros(1, 3))
    return "prefix" if float(out[0, 2]) == 5.0 else "sequence"


@st.composite
def hf_cases(draw, kind):
    """(float32 logits (B, V), history (B, L) >= 1 id, processor argument, keywords)."""
    rng = np.random.default_rng(draw(seeds))
    batch = draw(st.integers(1, 5))
    vocab = draw(st.sampled_from([3, 8, 8, 20, 300]))
    length = draw(st.integers(1, 30))
    x = (rng.standard_normal((batch, vocab)) * 2.0).astype(np.float32)
    hist = np.stack([build_history(rng, vocab, length) for _ in range(batch)])
    if kind == "ngram":
        arg = draw(st.integers(1, 5))
        kw = {"no_repeat_ngram_size": arg}
    else:
        seqs: list[tuple[int, ...]] = []
        for _ in range(draw(st.integers(1, 6))):
            n = int(rng.choice([1, 2, 2, 3, 4]))
            if rng.random() < 0.6 and length >= n - 1 and n > 1:  # often the history's tail
                row = hist[int(rng.integers(0, batch))]
                s = [int(t) for t in row[length - n + 1 :]] + [int(rng.integers(1, vocab))]
            else:
                s = [int(t) for t in rng.integers(1, vocab, size=n)]
            seqs.append(tuple(max(t, 1) for t in s))  # transformers 5.0.0 refuses id 0
        if kind == "bad":
            arg = [list(s) for s in dict.fromkeys(seqs)]
            kw = {"bad_words_ids": arg}
        else:
            arg = {s: (-np.inf if rng.random() < 0.2 else float(rng.uniform(-5, 5))) for s in seqs}
            kw = {"sequence_bias": arg}
    return x, hist, arg, kw


def hf_process(kind, arg, x, hist):
    torch, lp = _hf()
    if kind == "ngram":
        proc = lp.NoRepeatNGramLogitsProcessor(arg)
    elif kind == "bad":
        proc = lp.NoBadWordsLogitsProcessor(bad_words_ids=arg)
    else:
        proc = lp.SequenceBiasLogitsProcessor(sequence_bias={k: float(v) for k, v in arg.items()})
    return proc(torch.from_numpy(hist), torch.from_numpy(x.copy())).double().numpy()


def oracle_terms(kind, arg, hist_row, vocab, rule):
    if kind == "ngram":
        out = np.zeros(vocab)
        out[sorted(no_repeat_ngram_bans(hist_row, arg))] = -np.inf
        return out
    if kind == "bad":
        return bad_words_bans(hist_row, vocab, arg, rule)
    return sequence_bias_amounts(hist_row, vocab, arg, rule)


def rules_agree(kind, arg, hist, vocab) -> bool:
    if kind == "ngram":
        return True
    return all(
        np.array_equal(
            oracle_terms(kind, arg, h, vocab, "sequence"),
            oracle_terms(kind, arg, h, vocab, "prefix"),
        )
        for h in hist
    )


KINDS = ["ngram", "bad", "bias"]


@pytest.mark.transformers
@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_oracle_matches_hf_processor(kind, data):
    """The oracle's bans / biases (under the installed transformers' length rule) are HF's."""
    x, hist, arg, _ = data.draw(hf_cases(kind))
    rule = hf_sequence_bias_rule()
    got = hf_process(kind, arg, x, hist) - x.astype(np.float64)  # HF's added bias, float32
    for i, h in enumerate(hist):
        want = oracle_terms(kind, arg, h, x.shape[1], rule)
        np.testing.assert_array_equal(np.isneginf(got[i]), np.isneginf(want), err_msg=f"row {i}")
        fin = np.isfinite(want)
        tol = 4 * EPS32 * (np.abs(x[i][fin]) + np.abs(want[fin]) + 1)
        assert np.all(np.abs(got[i][fin] - want[fin]) <= tol), (i, got[i], want)


@pytest.mark.transformers
@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_ts_matches_hf_processor(kind, data):
    """``ts.probs`` equals softmax of the HF-processed scores (T = 1), on inputs where both
    installed transformers' length rule is ours (5.24.0) or the two rules agree; a row HF
    bans entirely makes ``ts.probs`` raise."""
    x, hist, arg, kw = data.draw(hf_cases(kind))
    assume(hf_sequence_bias_rule() == "prefix" or rules_agree(kind, arg, hist, x.shape[1]))
    torch, _ = _hf()
    scores = hf_process(kind, arg, x, hist)
    valid = np.isfinite(scores).any(axis=1)
    if not valid.all():
        with pytest.raises(ValueError):
            ts.probs(x, history=hist, **kw)
        x, hist, scores = x[valid], hist[valid], scores[valid]
        if x.shape[0] == 0:
            return
    want = torch.softmax(torch.from_numpy(scores.astype(np.float32)), dim=-1).double().numpy()
    got = ts.probs(torch.from_numpy(x), history=torch.from_numpy(hist), **kw)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    got = got.double().numpy()
    for i, tr in enumerate(oracle_rows(x, history=hist, **kw)):
        _, tol = penalty_row_tolerance(tr, EPS32)
        np.testing.assert_array_equal(got[i] > 0, want[i] > 0, err_msg=f"row {i}: kept sets")
        bad = np.flatnonzero(np.abs(got[i] - want[i]) > 2 * tol)
        assert bad.size == 0, f"row {i}: ids {bad[:8]} ts {got[i][bad[:8]]} hf {want[i][bad[:8]]}"


@pytest.mark.parametrize("impl", IMPLS)
def test_sequence_bias_length_rule(impl):
    """Our rule (transformers 5.24.0's): a sequence of length L > 1 applies when the history
    ends with its first L - 1 ids, also when the history is exactly those ids (transformers
    5.0.0 skipped a sequence longer than the history). The same for bad words."""
    x = np.zeros(4, np.float32)
    sb = {(1, 2): 3.0}
    e3 = math.exp(3.0)
    want = np.array([1, 1, e3, 1]) / (3 + e3)
    np.testing.assert_allclose(impl(x, history=[1], sequence_bias=sb), want, rtol=1e-5)
    np.testing.assert_allclose(impl(x, history=[0, 1], sequence_bias=sb), want, rtol=1e-5)
    np.testing.assert_allclose(impl(x, history=np.zeros(0, np.int64), sequence_bias=sb),
                               [0.25] * 4, atol=1e-7)  # fmt: skip
    np.testing.assert_allclose(impl(x, history=[1], bad_words_ids=[[1, 2]]),
                               [1 / 3, 1 / 3, 0, 1 / 3], atol=1e-7)  # fmt: skip
    np.testing.assert_allclose(impl(x, history=[3, 1], bad_words_ids=[[1, 2]]),
                               [1 / 3, 1 / 3, 0, 1 / 3], atol=1e-7)  # fmt: skip
    # padding does not count as history: [-1, 1] is a history of length 1
    np.testing.assert_allclose(impl(x, history=[-1, 1], sequence_bias=sb), want, rtol=1e-5)
    np.testing.assert_allclose(impl(x, history=[-1, 3], sequence_bias=sb), [0.25] * 4,
                               atol=1e-7)  # fmt: skip


@pytest.mark.parametrize("impl", IMPLS)
def test_bans_and_biases_by_hand(impl):
    x = np.zeros(5, np.float32)
    h = [1, 2, 3, 1, 2]
    np.testing.assert_allclose(impl(x, history=h, no_repeat_ngram_size=3),
                               [0.25, 0.25, 0.25, 0, 0.25], atol=1e-7)  # fmt: skip
    np.testing.assert_allclose(impl(x, history=h, no_repeat_ngram_size=1),
                               [0.5, 0, 0, 0, 0.5], atol=1e-7)  # fmt: skip
    # several matching sequences add up; a single id always applies
    sb = {(2,): 1.0, (1, 2, 4): 1.0, (2, 4): 0.5}
    got = impl(x, history=h, sequence_bias=sb)
    w = np.exp([0, 0, 1.0, 0, 1.5])  # (2,): +1 on 2; (1, 2, 4) and (2, 4): +1.5 on 4
    np.testing.assert_allclose(got, w / w.sum(), rtol=1e-5)
    # -inf bans; bad words and biases together; and with logit_bias
    got = impl(x, history=h, sequence_bias={(2, 0): -np.inf}, bad_words_ids=[[4]],
               logit_bias={3: 1.0})  # fmt: skip
    w = np.array([0, 1, 1, math.e, 0])
    np.testing.assert_allclose(got, w / w.sum(), rtol=1e-5)
    # per-row
    x2 = np.zeros((2, 5), np.float32)
    # row 0: (2, 3) bans 3 after the final 2; row 1: the history [0] is (0, 1)'s prefix, so
    # 1 is banned (transformers 5.24's rule), and [4] bans 4
    got = impl(x2, history=[h, [0]], bad_words_ids=[[[2, 3]], [[0, 1], [4]]])
    third = 1 / 3
    np.testing.assert_allclose(got, [[0.25, 0.25, 0.25, 0, 0.25], [third, 0, third, third, 0]],
                               atol=1e-7)  # fmt: skip
    got = impl(x2, history=[h, h], sequence_bias=[{(2, 3): 1.0}, {(2,): -np.inf}],
               no_repeat_ngram_size=[0, 2])  # fmt: skip
    w0 = np.exp([0, 0, 0, 1.0, 0])
    np.testing.assert_allclose(got[0], w0 / w0.sum(), rtol=1e-5)
    np.testing.assert_allclose(got[1], [1 / 3, 1 / 3, 0, 0, 1 / 3], atol=1e-7)  # 2 and 3 banned


# ---------------------------------------------------------------------------------------------
# 3. Properties against the oracle.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
@given(data=st.data())
def test_dry_matches_oracle(impl, data):
    x, kw = data.draw(dry_cases())
    got = impl(x, **kw)
    check_rows(got, x, kw, where=str({k: v for k, v in kw.items() if k != "history"}))


def _per_row_breakers(v) -> bool:
    return isinstance(v, list) and any(
        isinstance(r, list) and any(isinstance(b, list) for b in r) for r in v
    )


def row_slice(kw: dict, i: int, batch: int) -> dict:
    """The keywords of row i alone (per-row values, history and breakers travel with it)."""
    one = {}
    for k, v in kw.items():
        if k == "history":
            one[k] = [np.asarray(v[i])] if isinstance(v, list) else np.atleast_2d(v)[i : i + 1]
        elif k == "dry_sequence_breakers":
            if _per_row_breakers(v):
                one[k] = [v[i]] if len(v[i]) else None  # [[]] would be one empty breaker
            else:
                one[k] = v
        elif isinstance(v, (list, np.ndarray)) and k not in ("bad_words_ids",) and len(v) == batch:
            one[k] = [v[i]] if isinstance(v, list) else v[i : i + 1]
        else:
            one[k] = v
    return one


@pytest.mark.parametrize("impl", IMPLS)
@given(dry_cases())
def test_dry_row_independent(impl, case):
    """A row's result does not depend on the other rows (its per-row values, history and
    breakers travel with it)."""
    x, kw = case
    full = impl(x, **kw)
    for i in range(x.shape[0]):
        one = impl(x[i : i + 1], **row_slice(kw, i, x.shape[0]))
        np.testing.assert_allclose(one[0], full[i], rtol=1e-6, atol=1e-7)


@st.composite
def window_cases(draw):
    rng = np.random.default_rng(draw(seeds))
    batch = draw(st.integers(1, 4))
    vocab = draw(st.sampled_from([4, 10, 200]))
    x = (rng.standard_normal((batch, vocab)) * 2).astype(np.float32)
    hists = [build_history(rng, vocab, int(rng.integers(0, 25))) for _ in range(batch)]
    kw = {"history": history_arg(rng, hists, draw(st.booleans()))}
    n = draw(st.sampled_from(["scalar", "row"]))

    def choice(i):
        return int(rng.choice([-1, 0, 1, 2, 5, len(hists[i]), len(hists[i]) + 4]))

    kw["penalty_last_n"] = choice(0) if n == "scalar" else [choice(i) for i in range(batch)]
    kw["repetition_penalty"] = draw(st.sampled_from([1.0, 1.5, 0.8]))
    kw["frequency_penalty"] = draw(st.sampled_from([0.0, 0.5, -0.3]))
    kw["presence_penalty"] = draw(st.sampled_from([0.0, 1.0]))
    if draw(st.booleans()):
        kw["frequency_scale"] = draw(st.sampled_from([1.0, 1.2]))
        kw["presence_scale"] = draw(st.sampled_from([1.0, 1.5]))
    if draw(st.booleans()):
        kw["top_k"] = draw(st.sampled_from([1, 3]))
    return x, kw, hists


@pytest.mark.parametrize("impl", IMPLS)
@given(window_cases())
def test_penalty_last_n_matches_oracle(impl, case):
    x, kw, _ = case
    check_rows(impl(x, **kw), x, kw)


@pytest.mark.parametrize("impl", IMPLS)
@given(window_cases())
def test_penalty_last_n_is_the_window(impl, case):
    """penalty_last_n = n equals the whole-history call on the last n ids; 0 equals no
    history; -1 and n >= len(history) equal the whole history (every penalty, k-scaling too)."""
    x, kw, hists = case
    n = np.broadcast_to(np.asarray(kw["penalty_last_n"]), (x.shape[0],))
    windows = [penalty_window(h, int(k)) for h, k in zip(hists, n, strict=True)]
    base = {k: v for k, v in kw.items() if k not in ("history", "penalty_last_n")}
    got = impl(x, **kw)
    want = impl(x, history=windows, **base)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@st.composite
def mixed_cases(draw):
    """Every issue 16 penalty at once (except mirostat) with the section 2 / 9 keywords."""
    x, kw = draw(dry_cases(max_len=30))
    rng = np.random.default_rng(draw(seeds))
    batch, vocab = x.shape
    hists = [clean_history(h) for h in _rows_of(kw["history"], batch)]
    if draw(st.booleans()):
        kw["no_repeat_ngram_size"] = draw(st.sampled_from([0, 1, 2, 3, 6]))
    if draw(st.booleans()):
        kw["bad_words_ids"] = [[int(t) for t in rng.integers(0, vocab, size=int(rng.integers(1, 3)))]
                               for _ in range(2)]  # fmt: skip
    if draw(st.booleans()):
        rows = []
        for h in hists:
            d = {(int(rng.integers(0, vocab)),): float(rng.uniform(-2, 2))}
            if len(h):
                d[(int(h[-1]), int(rng.integers(0, vocab)))] = float(rng.uniform(-3, 3))
            rows.append(d)
        kw["sequence_bias"] = rows if draw(st.booleans()) else rows[0]
    if draw(st.booleans()):
        kw["logit_bias"] = {int(rng.integers(0, vocab)): float(rng.uniform(-2, 2))}
    extra = draw(st.sampled_from([{}, {"top_k": 3}, {"top_p": 0.8}, {"min_p": 0.1},
                                  {"typical_p": 0.9}, {"top_k": 5, "order": "llama.cpp"},
                                  {"temperature": 0.0}, {"frequency_scale": 1.2}]))  # fmt: skip
    kw.update(extra)
    # a row the bans empty is an error for ts (and the oracle): keep the case valid
    for i, h in enumerate(_rows_of(kw["history"], batch)):
        one = row_slice(kw, i, batch)
        extra = np.zeros(vocab)
        if kw.get("bad_words_ids"):
            extra += bad_words_bans(h, vocab, kw["bad_words_ids"])
        sb = one.get("sequence_bias")
        if sb:
            extra += sequence_bias_amounts(h, vocab, sb if isinstance(sb, dict) else sb[0])
        n = np.atleast_1d(np.asarray(one.get("no_repeat_ngram_size", 0)))[0]
        extra[sorted(no_repeat_ngram_bans(h, int(n)))] = -np.inf
        lb = kw.get("logit_bias") or {}
        for j, v in lb.items():
            extra[j] += v
        assume(np.isfinite(x[i] + extra).any())
    return x, kw


def _rows_of(history, batch):
    if isinstance(history, list):
        return history
    h = np.asarray(history)
    return [h] if h.ndim == 1 else list(h)


@pytest.mark.parametrize("impl", IMPLS)
@given(mixed_cases())
def test_all_history_stages_match_oracle(impl, case):
    x, kw = case
    check_rows(impl(x, **kw), x, kw)


@pytest.mark.parametrize("impl", IMPLS)
def test_pipeline_order_by_hand(impl):
    """bias -> repetition -> frequency / presence -> DRY -> k-scaling, on one row: the
    repetition penalty divides the logit *before* DRY subtracts (llama.cpp: penalties, then
    dry)."""
    x = np.array([2.0, 0.0, 0.0], np.float32)
    h = [0, 1, 0, 1]  # DRY: "0 1" repeats, 0 would extend it (length 2 >= 2): 0.5 * 1.5^0
    got = impl(x, history=h, repetition_penalty=2.0, dry_multiplier=0.5, dry_base=1.5)
    z = np.array([2.0 / 2 - 0.5, 0.0 * 2, 0.0])
    np.testing.assert_allclose(got, np.exp(z) / np.exp(z).sum(), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# 4. Mirostat.
# ---------------------------------------------------------------------------------------------

MU_ATOL, MU_RTOL = 2e-5, 1e-5


def _mirostat_rows(seed, steps, batch, vocab, scale=2.0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch, vocab)) * scale).astype(np.float32) for _ in range(steps)]


MIROSTAT_CASES = [
    (1, {"temperature": 1.0}, 40),
    (1, {"temperature": 0.7, "mirostat_tau": 3.0, "mirostat_eta": 0.2}, 40),
    (1, {"temperature": 1.0, "mirostat_tau": [2.0, 5.0, 8.0]}, 40),
    (2, {"temperature": 1.0}, 40),
    (2, {"temperature": 0.8, "mirostat_tau": 2.5, "mirostat_eta": 0.3}, 40),
    (2, {"temperature": 1.2, "top_k": 20, "mirostat_eta": [0.1, 0.0, 0.5]}, 40),
    (1, {"temperature": 1.0, "top_p": 0.9, "repetition_penalty": 1.2}, 30),
]


@pytest.mark.parametrize(("version", "kw", "steps"), MIROSTAT_CASES,
                         ids=[f"v{v}-{i}" for i, (v, _, _) in enumerate(MIROSTAT_CASES)])  # fmt: skip
@pytest.mark.parametrize("seed", [0, 7])
def test_mirostat_mu_trajectory(version, kw, steps, seed):
    batch, vocab = 3, 300
    rows = _mirostat_rows(seed + 100, steps, batch, vocab, scale=float([1.0, 3.0][seed % 2]))
    s = ts.Sampler(mirostat=version, seed=seed, **kw)
    assert s.mirostat_mu is None
    tau = np.broadcast_to(np.asarray(kw.get("mirostat_tau", 5.0), dtype=np.float64), (batch,))
    eta = np.broadcast_to(np.asarray(kw.get("mirostat_eta", 0.1), dtype=np.float64), (batch,))
    stage_kw = {k: v for k, v in kw.items() if not k.startswith("mirostat")}
    hist = np.zeros((batch, 0), dtype=np.int64)
    mu_port = 2.0 * tau.copy()
    ambiguous_steps = 0
    for t, x in enumerate(rows):
        mu_before = 2.0 * tau if s.mirostat_mu is None else s.mirostat_mu.copy()
        ids = np.asarray(s(x, hist))
        mu_after = s.mirostat_mu
        assert isinstance(mu_after, np.ndarray) and mu_after.dtype == np.float64
        assert mu_after.shape == (batch,)
        left = np.atleast_2d(oracle_probs(x, history=hist, **stage_kw))
        for i in range(batch):
            with np.errstate(divide="ignore"):
                z = np.log(left[i])
            step = mirostat_step(z, float(mu_before[i]), version, tau[i], eta[i], vocab=vocab)
            sets = [step.keep] + step.alternatives
            assert any(k[ids[i]] for k in sets), f"step {t} row {i}: id {ids[i]} not kept"
            cands = step.candidate_mus(int(ids[i]))
            err = min(abs(c - mu_after[i]) for c in cands)
            assert err <= MU_ATOL + MU_RTOL * abs(mu_after[i]), (t, i, cands, mu_after[i])
            ambiguous_steps += step.ambiguous
            # the port's own trajectory (from 2 tau, on the Sampler's ids only)
            sp = mirostat_step(z, float(mu_port[i]), version, tau[i], eta[i], vocab=vocab)
            pc = [sp.keep] + sp.alternatives
            if any(k[ids[i]] for k in pc):
                mu_port[i] = min(sp.candidate_mus(int(ids[i])), key=lambda c: abs(c - mu_after[i]))
        hist = np.concatenate([hist, ids.reshape(batch, 1)], axis=1)
    assert np.all(np.abs(mu_port - s.mirostat_mu) <= steps * (MU_ATOL + MU_RTOL * np.abs(mu_port)))
    assert ambiguous_steps <= steps * batch // 4  # the fixed rows are mostly unambiguous


@pytest.mark.parametrize("version", [1, 2])
def test_mirostat_greedy(version):
    """T = 0: greedy with p = 1 (surprise 0): mu <- mu + eta tau each step; the argmax."""
    s = ts.Sampler(mirostat=version, temperature=0.0, mirostat_tau=4.0, mirostat_eta=0.25, seed=1)
    x = np.array([[0.0, 3.0, 1.0], [2.0, 0.0, -1.0]], np.float32)
    mu = np.full(2, 8.0)
    for _ in range(5):
        np.testing.assert_array_equal(s(x), [1, 0])
        mu = mu + 0.25 * 4.0
        np.testing.assert_allclose(s.mirostat_mu, mu, rtol=1e-12)


def test_mirostat_v2_keeps_the_top_token():
    """v2 with mu below every surprise keeps the most probable token only (llama.cpp: size 0
    -> 1)."""
    s = ts.Sampler(mirostat=2, mirostat_tau=0.0, mirostat_eta=0.0, seed=5)  # mu stays 0
    x = np.log(np.array([[0.3, 0.5, 0.2]], np.float32))
    for _ in range(20):
        assert int(np.asarray(s(x))[0]) == 1
    np.testing.assert_array_equal(s.mirostat_mu, [0.0])


def test_mirostat_off_has_no_mu():
    s = ts.Sampler(seed=3)
    s(np.zeros((2, 4), np.float32))
    assert s.mirostat_mu is None
    assert s.state_dict()["mirostat_mu"] is None


@pytest.mark.parametrize("fn", [ts.sample, ts.probs], ids=["sample", "probs"])
@pytest.mark.parametrize("version", [1, 2])
def test_mirostat_refused_by_stateless_calls(fn, version):
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(ValueError, match="mirostat"):
        fn(x, mirostat=version, seed=0)
    fn(x, mirostat=0, seed=0)  # off: fine


@pytest.mark.parametrize("kw", [{"mirostat": 1}, {"mirostat": 2, "mirostat_tau": [2.0, 6.0]},
                                {}, {"temperature": 0.7, "dry_multiplier": 0.8}])  # fmt: skip
def test_state_dict_resumes_bit_identically(kw):
    rows = _mirostat_rows(3, 24, 2, 50)
    a = ts.Sampler(seed=1234, **kw)
    hist = np.zeros((2, 0), np.int64)
    for x in rows[:10]:
        ids = np.asarray(a(x, hist))
        hist = np.concatenate([hist, ids.reshape(2, 1)], axis=1)
    state = a.state_dict()
    assert {"seed", "step", "mirostat_mu"} <= set(state)
    assert state["step"] == 10
    saved = pickle.loads(pickle.dumps(copy.deepcopy(state)))
    rest_a, mus_a = [], []
    h_a = hist.copy()
    for x in rows[10:]:
        ids = np.asarray(a(x, h_a))
        h_a = np.concatenate([h_a, ids.reshape(2, 1)], axis=1)
        rest_a.append(ids)
        mus_a.append(None if a.mirostat_mu is None else a.mirostat_mu.copy())
    b = ts.Sampler(seed=999, **kw)  # another seed: the state brings the seed back
    b.load_state_dict(saved)
    assert b.step == 10
    h_b = hist.copy()
    for t, x in enumerate(rows[10:]):
        ids = np.asarray(b(x, h_b))
        h_b = np.concatenate([h_b, ids.reshape(2, 1)], axis=1)
        np.testing.assert_array_equal(ids, rest_a[t])
        if mus_a[t] is None:
            assert b.mirostat_mu is None
        else:
            assert np.array_equal(b.mirostat_mu, mus_a[t]), (t, b.mirostat_mu, mus_a[t])
    # the state dict is a snapshot: later calls on `a` did not change it
    assert saved["step"] == 10


# ---------------------------------------------------------------------------------------------
# 5. Bad input.
# ---------------------------------------------------------------------------------------------

X4 = np.zeros((2, 4), np.float32)
H4 = np.array([[0, 1, 2], [3, 2, 1]])


@pytest.mark.parametrize("fn", [ts.sample, ts.probs], ids=["sample", "probs"])
@pytest.mark.parametrize("kw", [
    {"dry_multiplier": 0.8, "dry_sequence_breakers": ["\n", ":"]},
    {"dry_multiplier": 0.8, "dry_sequence_breakers": [[1], "*"]},
    {"bad_words": ["foo"]},
    {"bad_words_ids": ["foo"]},
], ids=["breakers-strings", "breakers-mixed", "bad_words", "bad_words_ids-strings"])  # fmt: skip
def test_strings_need_a_tokenizer(fn, kw):
    # bad_words_ids is an id field: a string there may be a TypeError (a wrong type)
    with pytest.raises((TypeError, ValueError) if "bad_words_ids" in kw else ValueError):
        fn(X4, history=H4, seed=0, **kw)


BAD_VALUES = [
    ("penalty_last_n", -2), ("penalty_last_n", 1.5), ("dry_base", 0.5), ("dry_base", float("nan")),
    ("dry_multiplier", -1.0), ("dry_multiplier", float("inf")), ("dry_allowed_length", -1),
    ("dry_penalty_last_n", -2), ("no_repeat_ngram_size", -1), ("mirostat", 3),
    ("mirostat", -1), ("mirostat_tau", -1.0), ("mirostat_eta", float("nan")),
]  # fmt: skip


@pytest.mark.parametrize(("name", "value"), BAD_VALUES, ids=[f"{n}={v}" for n, v in BAD_VALUES])
def test_bad_value_raises(name, value):
    with pytest.raises(ts.SamplingError, match=rf"\b{name}\b"):
        ts.probs(X4, history=H4, **{name: value})
    with pytest.raises(ts.SamplingError, match=rf"\b{name}\b"):
        ts.SamplingParams(**{name: value})
    with pytest.raises(ts.SamplingError, match=rf"\b{name}\b"):
        ts.Sampler(**{name: value})
    assert issubclass(ts.SamplingError, ValueError)


BAD_IDS = [
    ("bad_words_ids-negative", {"bad_words_ids": [[-1]]}),
    ("bad_words_ids-negative-tail", {"bad_words_ids": [[1, -2]]}),
    ("bad_words_ids>=V", {"bad_words_ids": [[4]]}),
    ("sequence_bias-negative", {"sequence_bias": {(-1,): 1.0}}),
    ("sequence_bias>=V", {"sequence_bias": {(0, 7): 1.0}}),
    ("breakers-negative", {"dry_multiplier": 0.8, "dry_sequence_breakers": [[-3]]}),
    ("breakers>=V", {"dry_multiplier": 0.8, "dry_sequence_breakers": [[1, 4]]}),
]


@pytest.mark.parametrize("kw", [k for _, k in BAD_IDS], ids=[n for n, _ in BAD_IDS])
def test_bad_ids_raise(kw):
    with pytest.raises(ValueError):
        ts.probs(X4, history=H4, **kw)
    with pytest.raises(ValueError):
        ts.sample(X4, history=H4, seed=0, **kw)
    with pytest.raises(ValueError):  # the oracle refuses them too
        oracle_probs(X4, history=H4, **kw)


def test_good_values_accepted():
    for kw in ({"penalty_last_n": 0}, {"penalty_last_n": 10**6}, {"dry_base": 1.0},
               {"dry_multiplier": 0.0, "dry_base": 1.0}, {"dry_allowed_length": 0},
               {"dry_penalty_last_n": 0}, {"no_repeat_ngram_size": 0}, {"mirostat": 0},
               {"mirostat_tau": 0.0}, {"mirostat_eta": 0.0}):  # fmt: skip
        p = _kernel(X4, history=H4, **kw)
        np.testing.assert_allclose(
            p, oracle_probs(X4, history=H4, **kw), atol=1e-7, err_msg=str(kw)
        )
        assert ts.SamplingParams(**kw) is not None
