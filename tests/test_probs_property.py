"""Property tests of ``ts.probs`` / ``ts.sample`` / ``ts.Sampler`` against the float64 oracle.

Inputs (tests/sampling_cases.py): float32 and float64 logits, V in 1..5000, B in 1..8, with
plateaus of exactly equal logits, -inf entries (never a whole row), magnitudes up to ~1e4;
every parameter as omitted / explicit "off" value / scalar / per-row sequence (temperature
incl. 0, top_k incl. 0 / None / >= V, top_p incl. 1 and 1e-6, min_p, all five penalties
with histories of every accepted form incl. padding and length > V, logit_bias as dict,
list of dicts, dense (V,) and (B, V) incl. -inf bans).

Tolerance (see oracle.check_row): the implementation's tempered logit may differ from the
oracle's by delta = 32 eps (M + 1), eps the unit roundoff of the compute type (2^-24 for
float32 input, 2^-53 for float64) and M the largest operand magnitude of the row's float ops.
Every kept probability must then agree within atol + p (rtol + expm1(2 delta)) with
(atol, rtol) = (1e-6, 1e-5) for float32 and (1e-12, 1e-9) for float64. Filter boundaries:
exact ties are decided strictly (equal inputs stay equal in any arithmetic); a near-but-not-
exact tie within 2 delta of a top-k / min-p / greedy boundary, or a top-p cumulative mass
within the summation error of p, makes only the affected tokens "maybe kept": the support
must still contain every clearly-kept token and no clearly-dropped one, and the values must
be the oracle's softmax renormalised over the implementation's own support. Rows without
such a near-tie (nearly all of them: see the hypothesis "strict" event) are exact-support.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import tokensampler as ts
from hypothesis import event, given
from hypothesis import strategies as st
from oracle import check_row, check_sampled, compute_eps, oracle_rows, penalised_logits, row_bounds
from sampling_cases import cases, subset_kwargs

seeds = st.integers(0, 2**63 - 1)


def _check_probs(case, got):
    traces = oracle_rows(case.logits, **case.kwargs)
    eps = compute_eps(case.logits.dtype)
    got2 = np.atleast_2d(got)
    strict = all(check_row(got2[i], traces[i], eps, where=f"row {i}") for i in range(case.batch))
    event("strict (exact-support) comparison" if strict else "bounded (near-tie) comparison")
    return traces, eps


@given(cases())
def test_probs_matches_oracle(case):
    got = ts.probs(case.logits, **case.kwargs)
    assert isinstance(got, np.ndarray)
    assert got.shape == case.logits.shape
    assert got.dtype == (np.float64 if case.logits.dtype == np.float64 else np.float32)
    _check_probs(case, got)


@given(cases(), seeds)
def test_sample_in_support_and_reproducible(case, seed):
    ids = ts.sample(case.logits, seed=seed, **case.kwargs)
    # shape () for 1-D logits (a numpy int64 scalar or a 0-d array), (B,) otherwise
    assert isinstance(ids, (np.ndarray, np.integer))
    assert ids.dtype == np.int64
    assert np.shape(ids) == case.logits.shape[:-1]
    traces = oracle_rows(case.logits, **case.kwargs)
    eps = compute_eps(case.logits.dtype)
    got = np.atleast_2d(ts.probs(case.logits, **case.kwargs))
    for i, token in enumerate(np.atleast_1d(ids)):
        check_sampled(int(token), traces[i], eps, where=f"row {i}")
        assert got[i, token] > 0, f"row {i}: drew {token} with probs() = 0"
    np.testing.assert_array_equal(ts.sample(case.logits, seed=seed, **case.kwargs), ids)
    # a per-row seed array is reproducible too
    row_seeds = np.random.default_rng(seed).integers(0, 2**63, size=case.batch)
    if case.logits.ndim == 2:
        a = ts.sample(case.logits, seed=row_seeds, **case.kwargs)
        np.testing.assert_array_equal(
            ts.sample(case.logits, seed=list(row_seeds), **case.kwargs), a
        )


@contextlib.contextmanager
def threads_restored():
    n = ts.get_num_threads()
    try:
        yield
    finally:
        ts.set_num_threads(n)


@given(cases(max_batch=8), seeds)
def test_thread_count_does_not_change_results(case, seed):
    results = []
    with threads_restored():
        for n in (1, 2):
            ts.set_num_threads(n)
            assert ts.get_num_threads() == n
            results.append(
                (
                    ts.sample(case.logits, seed=seed, **case.kwargs),
                    ts.probs(case.logits, **case.kwargs),
                )
            )
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_large_batch(dtype):
    # a batch large enough that rows really run in parallel
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((256, 4096)) * 3).astype(dtype)
    h = rng.integers(-1, 4096, size=(256, 64))
    kw = {
        "temperature": 0.8,
        "top_k": 200,
        "top_p": 0.9,
        "min_p": 0.01,
        "repetition_penalty": 1.2,
        "history": h,
    }
    out = []
    with threads_restored():
        for n in (1, 2, 1):
            ts.set_num_threads(n)
            out.append((ts.sample(x, seed=99, **kw), ts.probs(x, **kw)))
    for ids, p in out[1:]:
        np.testing.assert_array_equal(ids, out[0][0])
        np.testing.assert_array_equal(p, out[0][1])


@given(cases(), seeds, st.data())
def test_row_position_does_not_change_draw(case, seed, data):
    """Per-row seeds: a row draws the same token whatever its position or batch size."""
    x = np.atleast_2d(case.logits)
    kwargs = case.kwargs
    if case.logits.ndim == 1 and "history" in kwargs and not isinstance(kwargs["history"], list):
        kwargs = dict(kwargs, history=np.atleast_2d(kwargs["history"]))
    batch = x.shape[0]
    row_seeds = np.random.default_rng(seed).integers(0, 2**63, size=batch)
    ids = ts.sample(x, seed=row_seeds, **kwargs)
    perm = data.draw(st.permutations(range(batch)))
    moved = ts.sample(x[perm], seed=row_seeds[perm], **subset_kwargs(kwargs, perm, batch))
    np.testing.assert_array_equal(moved, ids[perm])
    # a sub-batch (incl. a single row) in another order
    sub = data.draw(
        st.lists(st.sampled_from(range(batch)), min_size=1, max_size=batch, unique=True)
    )
    got = ts.sample(x[sub], seed=row_seeds[sub], **subset_kwargs(kwargs, sub, batch))
    np.testing.assert_array_equal(got, ids[sub])


@given(cases(greedy=True), seeds)
def test_greedy_is_argmax_of_penalised_logits(case, seed):
    """T = 0: the id is numpy's argmax of the penalised logits (x / k under k-scaling),
    lowest index on a tie; top-k / top-p / min-p have no effect."""
    ids = np.atleast_1d(ts.sample(case.logits, seed=seed, **case.kwargs))
    traces = oracle_rows(case.logits, **case.kwargs)
    eps = compute_eps(case.logits.dtype)
    for i, trace in enumerate(traces):
        # recompute independently of the trace: penalised logits / k, numpy argmax
        p = trace.params
        want = int(np.argmax(trace.y))  # trace.y = penalised logits / k, float64
        sure, maybe, _ = row_bounds(trace, eps)
        if sure.any():
            assert ids[i] == want, f"row {i}: got {ids[i]}, argmax {want} ({p})"
        else:  # a float32 near-tie (within rounding) at the maximum
            assert maybe[ids[i]]
    # filters are skipped under greedy decoding
    plain = {k: v for k, v in case.kwargs.items() if k not in ("top_k", "top_p", "min_p")}
    np.testing.assert_array_equal(
        np.atleast_1d(ts.sample(case.logits, seed=seed + 1, **plain)), ids
    )
    np.testing.assert_array_equal(
        ts.probs(case.logits, **plain), ts.probs(case.logits, **case.kwargs)
    )


def test_greedy_penalised_argmax_by_hand():
    x = np.array([[5.0, 4.0, 4.5, -1.0], [1.0, 2.0, 2.0, 3.0]], dtype=np.float32)
    h = np.array([[0, 0, -1], [3, -1, -1]])
    # row 0: 5/2 = 2.5 < 4.5 -> 2; row 1: 3/2 = 1.5 < 2 -> 1 (lowest index of the 2.0 tie)
    ids = ts.sample(x, temperature=0.0, repetition_penalty=2.0, history=h, seed=0)
    np.testing.assert_array_equal(ids, [2, 1])
    xp = [penalised_logits(x[i], hist=h[i], r=2.0)[0] for i in range(2)]
    np.testing.assert_array_equal(ids, [np.argmax(r) for r in xp])


@given(cases(dtypes=(np.float32,), max_vocab=2000), seeds)
def test_sampler_first_call_equals_sample(case, seed):
    kwargs = dict(case.kwargs)
    history = kwargs.pop("history", None)
    sampler = ts.Sampler(seed=seed, **kwargs)
    first = sampler(case.logits, history=history)
    np.testing.assert_array_equal(
        first, ts.sample(case.logits, seed=seed, history=history, **kwargs)
    )
    second = sampler(case.logits, history=history)
    # a fresh Sampler replays the same sequence
    replay = ts.Sampler(seed=seed, **kwargs)
    np.testing.assert_array_equal(replay(case.logits, history=history), first)
    np.testing.assert_array_equal(replay(case.logits, history=history), second)
    # the second step draws from the same distribution: still inside the support
    traces = oracle_rows(case.logits, history=history, **kwargs)
    for i, token in enumerate(np.atleast_1d(second)):
        check_sampled(int(token), traces[i], compute_eps(case.logits.dtype), where=f"row {i}")


@pytest.mark.parametrize("seed", [0, 1, 123, 2**40 + 7, [5, 6, 7, 8] * 16])
def test_sampler_steps_differ(seed):
    """Each call advances the stream: step 2 is not a replay of step 1."""
    x = np.zeros((64, 1000), dtype=np.float32)  # uniform: a replay would repeat all 64 ids
    sampler = ts.Sampler(seed=seed)
    steps = [sampler(x) for _ in range(3)]
    assert not np.array_equal(steps[0], steps[1])
    assert not np.array_equal(steps[1], steps[2])
    np.testing.assert_array_equal(steps[0], ts.sample(x, seed=seed))
    assert not np.array_equal(steps[1], ts.sample(x, seed=seed))


def test_int_seed_lanes_differ():
    """An int seed gives each row its own lane: identical rows draw different tokens."""
    x = np.zeros((64, 1000), dtype=np.float32)
    ids = ts.sample(x, seed=42)
    assert len(set(ids.tolist())) > 32


@given(cases(), seeds)
def test_non_contiguous_numpy(case, seed):
    """Strided, reversed and Fortran-ordered rows give bit-identical results."""
    x = np.atleast_2d(case.logits)
    kwargs = case.kwargs
    if case.logits.ndim == 1 and "history" in kwargs and not isinstance(kwargs["history"], list):
        kwargs = dict(kwargs, history=np.atleast_2d(kwargs["history"]))
    want_p = ts.probs(x, **kwargs)
    want_ids = ts.sample(x, seed=seed, **kwargs)
    wide = np.zeros((x.shape[0], 2 * x.shape[1]), dtype=x.dtype)
    wide[:, ::2] = x
    for view in (wide[:, ::2], np.asfortranarray(x), np.ascontiguousarray(x[:, ::-1])[:, ::-1]):
        assert not view.flags.c_contiguous or view.shape[0] == 1 or view.shape[1] == 1
        np.testing.assert_array_equal(ts.probs(view, **kwargs), want_p)
        np.testing.assert_array_equal(ts.sample(view, seed=seed, **kwargs), want_ids)


@given(cases(), seeds, st.integers(1, 6))
def test_logprobs_outputs(case, seed, n_top):
    """SampleOutput: the chosen id's log-prob under the final and the raw distributions, and
    the top-n of the final distribution (most probable first; id -1 / -inf past the kept set)."""
    out = ts.sample(case.logits, seed=seed, logprobs=True, top_logprobs=n_top, **case.kwargs)
    assert isinstance(out, ts.SampleOutput)
    np.testing.assert_array_equal(out.ids, ts.sample(case.logits, seed=seed, **case.kwargs))
    batch_shape = case.logits.shape[:-1]
    assert np.shape(out.logprobs) == batch_shape and np.shape(out.raw_logprobs) == batch_shape
    assert np.shape(out.top_ids) == (*batch_shape, n_top)
    assert np.shape(out.top_logprobs) == (*batch_shape, n_top)
    assert np.asarray(out.top_ids).dtype == np.int64
    assert np.asarray(out.logprobs).dtype == np.float64
    ids = np.atleast_1d(out.ids)
    lps, raws = np.atleast_1d(out.logprobs), np.atleast_1d(out.raw_logprobs)
    top_ids, top_lps = np.atleast_2d(out.top_ids), np.atleast_2d(out.top_logprobs)
    traces = oracle_rows(case.logits, **case.kwargs)
    eps = compute_eps(case.logits.dtype)
    x = np.atleast_2d(case.logits).astype(np.float64)
    for i, trace in enumerate(traces):
        sure, maybe, delta = row_bounds(trace, eps)
        slack = 2 * delta + (1e-9 if eps < 1e-10 else 1e-5)
        # raw: log-softmax of the unprocessed logits
        row = x[i]
        finite = np.isfinite(row)
        raw_delta = 32 * eps * (np.abs(row[finite]).max() + 1)
        m = row[finite].max()
        raw = row[ids[i]] - m - np.log(np.exp(row[finite] - m).sum())
        assert abs(raws[i] - raw) <= 2 * raw_delta + slack, (i, raws[i], raw)
        if not (sure == maybe).all():
            continue  # kept set not pinned by the oracle at this precision
        q = trace.probs
        if q[ids[i]] > 1e-30:
            assert abs(lps[i] - np.log(q[ids[i]])) <= slack, (i, lps[i], np.log(q[ids[i]]))
        n_kept = int((q > 0).sum()) if not trace.greedy else 1
        want_sorted = np.sort(q)[::-1]
        for j in range(n_top):
            if j < n_kept and want_sorted[j] > 1e-30:
                tok = top_ids[i, j]
                assert 0 <= tok < q.size and q[tok] > 0, (i, j, tok)
                assert abs(top_lps[i, j] - np.log(want_sorted[j])) <= slack, (i, j)
                assert abs(np.log(q[tok]) - np.log(want_sorted[j])) <= 2 * slack, (i, j)
            elif j >= n_kept:
                assert top_ids[i, j] == -1 and top_lps[i, j] == -np.inf, (i, j, top_ids[i])
        assert np.all(np.diff(top_lps[i][np.isfinite(top_lps[i])]) <= 0)
