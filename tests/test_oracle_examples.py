"""The worked examples of docs/design.md section 2, for the oracle and for ``ts.probs``.

Each example is run through both the float64 oracle (tests/oracle.py) and the implementation
(float64 in -> float64 out). The vectors of docs/design.md are printed to 4 significant
digits, so they are compared at that precision; the implementation is also compared with the
oracle tightly.
"""

from __future__ import annotations

import numpy as np
import pytest
import tokensampler as ts
from hypothesis import given
from oracle import oracle_probs
from sampling_cases import cases


def both(logits, **kw):
    """(oracle, implementation) probabilities for float64 logits."""
    logits = np.asarray(logits, dtype=np.float64)
    got = ts.probs(logits, **kw)
    assert isinstance(got, np.ndarray)
    assert got.dtype == np.float64, "float64 in -> float64 out"
    assert got.shape == logits.shape
    want = oracle_probs(logits, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)
    return want, got


def assert_4sig(p, expected):
    """Agreement with a vector printed to 4 significant digits."""
    np.testing.assert_allclose(p, expected, rtol=6e-4, atol=0)


# -- step 2: k-scaling -------------------------------------------------------------------------


def test_k_scaling_worked_example():
    # vocab [a, b, c, d]; history a, b, a, c, a, a; s_f = 1.1, s_p = 1.2; T = 1.
    kw = {"frequency_scale": 1.1, "presence_scale": 1.2, "history": np.array([0, 1, 0, 2, 0, 0])}
    for p in both([0.8, 0.9, 0.1, 0.4], **kw):
        np.testing.assert_allclose(p, [0.2651, 0.3213, 0.1737, 0.2399], atol=6e-5)
    # the intermediate values of the example: k and the scaled logits
    scaled = np.array([0.8 / 1.6, 0.9 / 1.3, 0.1 / 1.3, 0.4 / 1.0])
    np.testing.assert_allclose(scaled, [0.5, 0.6923, 0.0769, 0.4], atol=6e-5)
    e = np.exp(scaled - scaled.max())
    np.testing.assert_allclose(both([0.8, 0.9, 0.1, 0.4], **kw)[1], e / e.sum(), rtol=1e-12)


def test_k_scaling_shift_rule():
    # A negative finite logit shifts the row by -min over finite entries before dividing by
    # T*k; -inf entries are ignored by the min and stay at probability 0.
    x = np.array([-1.0, 2.0, -np.inf, 0.5])
    h = np.array([1, 1, 3])
    kw = {"frequency_scale": 1.5, "presence_scale": 1.0, "history": h}
    want, _ = both(x, **kw)
    shifted = x + 1.0  # min finite = -1
    k = np.array([1.0, 2.0, 1.0, 1.5])  # c = [0, 2, 0, 1]
    z = shifted / k
    e = np.exp(z - np.nanmax(z[np.isfinite(z)]))
    np.testing.assert_allclose(want, e / e.sum(), rtol=1e-12)
    # all logits >= 0: no shift
    x = np.array([0.0, 2.0, 1.0])
    want, _ = both(x, frequency_scale=2.0, history=np.array([1]))
    z = np.array([0.0, 1.0, 1.0])
    np.testing.assert_allclose(want, np.exp(z) / np.exp(z).sum(), rtol=1e-12)


def test_k_scaling_greedy_uses_x_over_k():
    # T = 0 with k-scaling: argmax of x / k, not of x.
    x = np.array([3.0, 2.0, 1.0])
    kw = {"temperature": 0.0, "frequency_scale": 2.0, "history": np.array([0, 0])}  # k0 = 3
    want, _ = both(x, **kw)
    np.testing.assert_array_equal(want, [0.0, 1.0, 0.0])


# -- step 2: repetition and additive penalties -----------------------------------------------


def test_repetition_penalty_by_hand():
    x = np.array([2.0, -2.0, 1.0, 0.0])
    want, _ = both(x, repetition_penalty=2.0, history=np.array([0, 1, 0, -1, 3]))
    z = np.array([1.0, -4.0, 1.0, 0.0])  # 2/2, -2*2, untouched, 0 either way
    np.testing.assert_allclose(want, np.exp(z) / np.exp(z).sum(), rtol=1e-12)


def test_additive_penalties_by_hand():
    x = np.array([1.0, 1.0, 1.0])
    kw = {"frequency_penalty": 0.5, "presence_penalty": 0.25, "history": np.array([0, 0, 1, -3])}
    want, _ = both(x, **kw)
    z = np.array([1.0 - 1.0 - 0.25, 1.0 - 0.5 - 0.25, 1.0])
    np.testing.assert_allclose(want, np.exp(z) / np.exp(z).sum(), rtol=1e-12)


def test_bias_and_bans_by_hand():
    x = np.array([1.0, 2.0, 3.0])
    want, _ = both(x, logit_bias={0: 1.5, 2: -np.inf})
    z = np.array([2.5, 2.0, -np.inf])
    np.testing.assert_allclose(want, np.exp(z) / np.exp(z).sum(), rtol=1e-12)


# -- step 3: temperature seed vectors ----------------------------------------------------------

SEED = [6.0, 2.0, 7.0, 0.1, -8.0, 9.0]


def test_temperature_seed_vector_t1():
    for p in both(SEED, temperature=1.0):
        assert_4sig(p, [4.197e-2, 7.688e-4, 1.141e-1, 1.150e-4, 3.490e-8, 8.430e-1])


def test_temperature_seed_vector_t01():
    for p in both(SEED, temperature=0.1):
        assert_4sig(p[:5], [9.358e-14, 3.975e-31, 2.061e-9, 2.227e-39, 1.479e-74])
        assert abs(p[5] - (1 - 2e-9)) < 1e-10
        assert 0 < 1 - p[5] < 2.1e-9


def test_temperature_seed_vector_t10():
    for p in both(SEED, temperature=10.0):
        np.testing.assert_allclose(p, [0.2030, 0.1361, 0.2243, 0.1125, 0.0501, 0.2740], atol=6e-5)


def test_temperature_zero_is_argmax():
    for p in both(SEED, temperature=0.0):
        np.testing.assert_array_equal(p, [0, 0, 0, 0, 0, 1])
    # lowest index wins a tie
    for p in both([1.0, 3.0, 3.0, -1.0], temperature=0.0):
        np.testing.assert_array_equal(p, [0, 1, 0, 0])


# -- step 4: top-k -----------------------------------------------------------------------------

TOPK = [4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79]


def test_top_k_seed_vector():
    for p in both(TOPK, top_k=3, temperature=1.0):
        assert set(np.flatnonzero(p)) == {0, 3, 7}
        np.testing.assert_allclose(p[[0, 3, 7]], [0.0615, 0.5775, 0.3610], atol=6e-5)


def test_top_k_keeps_boundary_ties():
    for p in both([1.0, 2.0, 2.0, 0.0, 2.0], top_k=2):
        assert set(np.flatnonzero(p)) == {1, 2, 4}
        np.testing.assert_allclose(p[[1, 2, 4]], 1 / 3, rtol=1e-12)


@pytest.mark.parametrize("k", [0, None, 9, 10, 1000])
def test_top_k_off(k):
    both(TOPK, top_k=k)
    np.testing.assert_allclose(oracle_probs(TOPK, top_k=k), oracle_probs(TOPK), rtol=0)


# -- step 6: top-p -----------------------------------------------------------------------------


def test_top_p_vector_one():
    # [.5, .25, .125, .125] with p = .75 keeps 2 (the prefix reaching p exactly)
    for p in both(np.log([0.5, 0.25, 0.125, 0.125]), top_p=0.75):
        np.testing.assert_allclose(p, [2 / 3, 1 / 3, 0, 0], rtol=1e-12)


def test_top_p_vector_two():
    # [.5, .25, .25] with p = .6 keeps 2: of the tied pair the lower id survives
    for p in both(np.log([0.5, 0.25, 0.25]), top_p=0.6):
        np.testing.assert_allclose(p, [2 / 3, 1 / 3, 0], rtol=1e-12)


def test_top_p_crossing_token_included_and_one_survives():
    for p in both(np.log([0.1, 0.6, 0.3]), top_p=0.61):
        np.testing.assert_allclose(p, [0, 2 / 3, 1 / 3], rtol=1e-12)
    for p in both(np.log([0.1, 0.6, 0.3]), top_p=1e-9):
        np.testing.assert_array_equal(p, [0, 1, 0])


# -- step 7: min-p -----------------------------------------------------------------------------


def test_min_p_by_hand():
    # threshold 0.2 * 0.5 = 0.1: keeps .5, .3, .15
    for p in both(np.log([0.15, 0.5, 0.05, 0.3]), min_p=0.2):
        np.testing.assert_allclose(p, np.array([0.15, 0.5, 0, 0.3]) / 0.95, rtol=1e-12)


def test_filter_order_topk_topp_minp():
    # top-k 3 keeps .4 .3 .2 (renormalised .4/.9 ...); top-p .7 keeps the first two
    # (.444 + .333 >= .7); min-p .8 then keeps only the top one (.333 < .8 * .444)
    x = np.log([0.4, 0.3, 0.2, 0.1])
    for p in both(x, top_k=3, top_p=0.7):
        np.testing.assert_allclose(p, [4 / 7, 3 / 7, 0, 0], rtol=1e-12)
    for p in both(x, top_k=3, top_p=0.7, min_p=0.8):
        np.testing.assert_array_equal(p, [1, 0, 0, 0])


# -- the oracle's own invariants (its tolerance analysis never contradicts its decisions) ------


@given(cases())
def test_oracle_bounds_bracket_its_own_decision(case):
    from oracle import EPS32, oracle_rows, row_bounds

    for trace in oracle_rows(case.logits, **case.kwargs):
        assert np.isclose(trace.probs.sum(), 1.0)
        kept = trace.probs > 0 if trace.greedy else trace.keep_k & trace.keep_p & trace.keep_m
        for eps in (EPS32, 2.0**-53):
            sure, maybe, _ = row_bounds(trace, eps)
            assert not (sure & ~kept).any()
            assert not (kept & ~maybe).any()
        # the most probable token always survives
        assert trace.probs[int(np.argmax(np.where(trace.keep_k, trace.z, -np.inf)))] > 0
