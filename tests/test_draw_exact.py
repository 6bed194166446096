"""The draw is exact: chi-square goodness of fit of >= 200,000 draws.

The exact draw is step 8 of docs/design.md section 2. Draws come from three kinds of
independent streams (docs/design.md section 4): one int seed over a batch of identical rows
(row i uses lane i), a length-B array of per-row seeds, and the steps of a ``Sampler``
(B rows x S calls, and a single row over many calls). Expected counts come from the float64
oracle. Cells with expected count < 5 are merged (adjacent in descending probability); the
1e-4 token is its own cell (20 expected at 200k draws). Seeds are fixed, so each test is
deterministic; a correct sampler fails a given one with probability 1e-3.
``test_chisquare_has_power`` shows that these statistics do reject a wrong distribution and a
sampler with a float32 noise floor (one that never draws the 1e-4 token).
"""

from __future__ import annotations

import numpy as np
import pytest
import tokensampler as ts
from oracle import oracle_probs
from scipy.stats import chisquare

N_DRAWS = 200_000
P_MIN = 1e-3

TAIL = np.array([0.5, 0.3, 0.1999, 1e-4])


def merged_cells(probs: np.ndarray, n: int, keep: tuple[int, ...] = ()):
    """Cells (lists of token ids) with expected count >= 5: tokens sorted by descending
    probability, consecutive small ones merged; ids in ``keep`` stay single cells."""
    ids = [int(j) for j in np.argsort(-probs, kind="stable") if probs[j] > 0]
    cells, cur, mass = [], [], 0.0
    for j in ids:
        if j in keep:
            cells.append([j])
            continue
        cur.append(j)
        mass += probs[j]
        if mass * n >= 5:
            cells.append(cur)
            cur, mass = [], 0.0
    if cur:  # a light remainder joins the last multi-token cell
        if cells:
            cells[-1] = cells[-1] + cur
        else:
            cells.append(cur)
    return cells


def gof_pvalue(ids: np.ndarray, probs: np.ndarray, keep=()) -> float:
    """Chi-square p-value of the draws ``ids`` against ``probs`` (masked tokens must be 0)."""
    ids = np.asarray(ids).ravel()
    n = ids.size
    counts = np.bincount(ids, minlength=probs.size)
    assert counts[probs == 0].sum() == 0, (
        f"drew masked tokens {np.flatnonzero(counts * (probs == 0))[:10]}"
    )
    cells = merged_cells(probs, n, keep)
    obs = np.array([counts[c].sum() for c in cells], dtype=np.float64)
    exp = np.array([probs[c].sum() for c in cells]) * n
    exp *= obs.sum() / exp.sum()  # float64 rounding of the oracle's sum
    assert all(e >= 5 for e in exp)
    return float(chisquare(obs, exp).pvalue)


# -- the streams --------------------------------------------------------------------------------


def _tile_history(kw, n):
    if kw.get("history") is not None:
        kw = dict(kw, history=np.tile(kw["history"], (n, 1)))
    return kw


def draws_int_seed(logits, n, seed, **kw):
    return ts.sample(np.tile(logits, (n, 1)), seed=seed, **_tile_history(kw, n))


def draws_row_seeds(logits, n, seed, **kw):
    seeds = np.random.default_rng(seed).integers(0, 2**63, size=n)
    return ts.sample(np.tile(logits, (n, 1)), seed=seeds, **_tile_history(kw, n))


def draws_sampler_steps(logits, n, seed, batch=1000, **kw):
    history = kw.pop("history", None)
    sampler = ts.Sampler(seed=seed, **kw)
    x = np.tile(logits, (batch, 1))
    h = None if history is None else np.tile(history, (batch, 1))
    return np.concatenate([sampler(x, history=h) for _ in range(n // batch)])


def draws_single_row_steps(logits, n, seed, **kw):
    history = kw.pop("history", None)
    sampler = ts.Sampler(seed=seed, **kw)
    return np.array([int(sampler(logits, history=history)) for _ in range(n)])


STREAMS = {
    "int_seed_lanes": draws_int_seed,
    "per_row_seeds": draws_row_seeds,
    "sampler_steps": draws_sampler_steps,
}


# -- distributions ------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", STREAMS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tail_token_1e4(stream, dtype):
    logits = np.log(TAIL).astype(dtype)
    probs = oracle_probs(logits)
    ids = STREAMS[stream](logits, N_DRAWS, seed=20240)
    assert ids.dtype == np.int64 and ids.shape == (N_DRAWS,)
    assert gof_pvalue(ids, probs, keep=(3,)) > P_MIN
    assert (ids == 3).sum() > 0, "the 1e-4 token must be reachable"


def test_tail_token_single_row_sampler():
    logits = np.log(TAIL)
    ids = draws_single_row_steps(logits, N_DRAWS, seed=77)
    assert gof_pvalue(ids, oracle_probs(logits), keep=(3,)) > P_MIN


def zipf_logits(vocab=512, seed=0):
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab + 1) ** 1.1
    return np.log(rng.permutation(p / p.sum())).astype(np.float32)


@pytest.mark.parametrize("stream", STREAMS)
def test_zipf_512(stream):
    logits = zipf_logits()
    ids = STREAMS[stream](logits, N_DRAWS, seed=5)
    assert gof_pvalue(ids, oracle_probs(logits)) > P_MIN


def filtered_case():
    """V = 64 with -inf entries, bans, a repetition history, temperature, top-k/p, min-p."""
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(64) * 2).astype(np.float32)
    x[[5, 17, 40]] = -np.inf
    x[[1, 2, 3]] = x.max()  # a plateau at the top
    kw = {
        "temperature": 0.7,
        "top_k": 40,
        "top_p": 0.95,
        "min_p": 0.01,
        "repetition_penalty": 1.3,
        "presence_penalty": 0.2,
        "logit_bias": {0: -np.inf, 9: -np.inf, 12: 1.5},
        "history": np.array([1, 1, 7, 30, -1, 12]),
    }
    return x, kw


@pytest.mark.parametrize("stream", STREAMS)
def test_filtered_distribution(stream):
    x, kw = filtered_case()
    probs = oracle_probs(x, **kw)
    masked = np.flatnonzero(probs == 0)
    assert {0, 5, 9, 17, 40} <= set(masked.tolist()) and masked.size > 30  # the case filters
    ids = STREAMS[stream](x, N_DRAWS, seed=3, **dict(kw))
    assert not np.isin(ids, masked).any(), "a masked token was drawn"
    assert gof_pvalue(ids, probs) > P_MIN


def test_top_p_boundary_tie_never_drawn():
    # [.5, .25, .25], p = .6 keeps {0, 1}: the tied id 2 is filtered and must never appear
    logits = np.log([0.5, 0.25, 0.25])
    ids = draws_int_seed(logits, N_DRAWS, seed=8, top_p=0.6)
    assert gof_pvalue(ids, np.array([2 / 3, 1 / 3, 0.0])) > P_MIN


def test_plateau_uniform_large_vocab():
    # 1024 tokens, 3 of them in a top plateau with total mass ~ 0.5, a 1e-4 token
    p = np.full(1024, 0.0)
    p[[10, 20, 30]] = 0.5 / 3
    p[1000] = 1e-4
    rest = np.setdiff1d(np.arange(1024), [10, 20, 30, 1000])
    p[rest] = (0.5 - 1e-4) / rest.size
    logits = np.log(p).astype(np.float32)
    ids = draws_sampler_steps(logits, N_DRAWS, seed=31, batch=100)
    pv = gof_pvalue(ids, oracle_probs(logits), keep=(1000,))
    assert pv > P_MIN


# -- independence of lanes / steps --------------------------------------------------------------


def joint_pvalue(a, b, probs):
    """Chi-square of the pairs (a_i, b_i) against the product distribution."""
    v = probs.size
    counts = np.bincount(a * v + b, minlength=v * v)
    return gof_pvalue(np.repeat(np.arange(v * v), counts), np.outer(probs, probs).ravel())


def test_adjacent_lanes_independent():
    logits = np.log([0.4, 0.3, 0.2, 0.1])
    ids = draws_int_seed(logits, 2 * N_DRAWS, seed=4)
    assert joint_pvalue(ids[0::2], ids[1::2], oracle_probs(logits)) > P_MIN


def test_consecutive_steps_independent():
    logits = np.log([0.4, 0.3, 0.2, 0.1])
    sampler = ts.Sampler(seed=6)
    x = np.tile(logits, (N_DRAWS // 4, 1))
    s1, s2 = sampler(x), sampler(x)
    assert joint_pvalue(s1, s2, oracle_probs(logits)) > P_MIN


def test_adjacent_row_seeds_independent():
    # per-row seeds 0, 1, 2, ...: neighbouring seeds must not give correlated draws
    logits = np.log([0.4, 0.3, 0.2, 0.1])
    ids = ts.sample(np.tile(logits, (2 * N_DRAWS, 1)), seed=np.arange(2 * N_DRAWS))
    assert joint_pvalue(ids[0::2], ids[1::2], oracle_probs(logits)) > P_MIN


# -- the statistics can fail ----------------------------------------------------------------------


def test_chisquare_has_power():
    logits = np.log(TAIL)
    ids = draws_int_seed(logits, N_DRAWS, seed=20240)
    assert gof_pvalue(ids, TAIL, keep=(3,)) > P_MIN
    # 1 % of the mass moved between the two largest tokens
    wrong = np.array([0.49, 0.31, 0.1999, 1e-4])
    assert gof_pvalue(ids, wrong, keep=(3,)) < P_MIN
    # the tail token at 4x its probability (80 expected against ~20 observed)
    wrong = np.array([0.5, 0.3, 0.1996, 4e-4])
    assert gof_pvalue(ids, wrong, keep=(3,)) < P_MIN
    # a float32 noise-floor sampler that never reaches the 1e-4 token
    floor = np.random.default_rng(0).choice(3, size=N_DRAWS, p=TAIL[:3] / TAIL[:3].sum())
    assert gof_pvalue(floor, TAIL, keep=(3,)) < P_MIN
    # and a masked token that is drawn is reported
    with pytest.raises(AssertionError, match="masked"):
        gof_pvalue(np.array([0, 1, 2, 3]), np.array([0.5, 0.5, 0.0, 0.0]))
