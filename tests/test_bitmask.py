"""`token_bitmask` (issue 17, docs/design.md section 11): the format of xgrammar, llguidance
and outlines-core, read by the kernels with the bans.

The semantics are checked against the two backends' own appliers (xgrammar's CPU kernel
`apply_token_bitmask_inplace`, llguidance's `llguidance.numpy.apply_token_bitmask_inplace`)
and a bit unpacking written here; the distributions against the float64 oracle, which sees
the mask as what it is, a ban (a -inf logit bias) on every disallowed id.

Two kernel paths apply a mask: rows whose outputs live in the allowed ids are gathered into a
short row (`rust/bitmask.rs`), others (`probs`, raw log-probabilities, ranks) are loaded and
banned. `probs` covers the second; greedy ids, `top_logprobs` and a chi-square test of the
draw cover the first.
"""

from __future__ import annotations

import numpy as np
import pytest
import tokensampler as ts
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import oracle_probs
from scipy import stats

llguidance_np = pytest.importorskip("llguidance.numpy")
xgrammar = pytest.importorskip("xgrammar")


def allowed_of(mask: np.ndarray, v: int) -> np.ndarray:
    """(rows, V) bool: token j of row r is bit j % 32 of word j // 32, least significant
    first; ids past the mask's words are banned."""
    m = np.atleast_2d(mask).astype(np.uint32)
    bits = np.unpackbits(m.view(np.uint8).reshape(m.shape[0], -1), axis=1, bitorder="little")
    out = np.zeros((m.shape[0], v), dtype=bool)
    n = min(v, bits.shape[1])
    out[:, :n] = bits[:, :n].astype(bool)
    return out


def random_mask(rng: np.random.Generator, b: int, v: int, density: float, words: int | None = None):
    allowed = rng.random((b, v)) < density
    w = -(-v // 32) if words is None else words
    m = np.zeros((b, w), dtype=np.uint32)
    for j in range(min(v, 32 * w)):
        m[:, j // 32] |= allowed[:, j].astype(np.uint32) << np.uint32(j % 32)
    return m.view(np.int32)


def ban_bias(allowed: np.ndarray) -> np.ndarray:
    return np.where(allowed, 0.0, -np.inf)


@pytest.mark.parametrize("v", [100, 1024, 32000, 32003])
@pytest.mark.parametrize("density", [0.002, 0.05, 0.5, 1.0])
def test_bits_mean_what_xgrammar_and_llguidance_apply(v, density):
    rng = np.random.default_rng(v)
    b = 4
    x = rng.standard_normal((b, v)).astype(np.float32)
    m = random_mask(rng, b, v, density)
    m[:, 0] |= 1  # at least one allowed token per row
    lg = x.copy()
    llguidance_np.apply_token_bitmask_inplace(lg, m.copy())
    ours = allowed_of(m, v)
    np.testing.assert_array_equal(np.isfinite(lg), ours)
    if v % 32 == 0:
        # xgrammar 0.2.9's CPU kernel writes past the row when V is not a multiple of 32
        # (the next row's id 0 turns -inf; with bits set past V the heap is corrupted), so
        # it is compared on whole words only.
        xg = torch.from_numpy(x.copy())
        xgrammar.apply_token_bitmask_inplace(xg, torch.from_numpy(m.copy()))
        np.testing.assert_array_equal(np.isfinite(xg.numpy()), ours)
    # The kernels: the support of the distribution, its values, and the greedy id.
    p = ts.probs(x, token_bitmask=m)
    np.testing.assert_array_equal(p > 0, ours)
    np.testing.assert_allclose(p, oracle_probs(x, logit_bias=ban_bias(ours)), rtol=2e-5, atol=1e-9)
    greedy = ts.sample(x, temperature=0, token_bitmask=m)
    np.testing.assert_array_equal(greedy, lg.argmax(axis=1))


def test_short_mask_bans_the_rest_and_extra_words_are_ignored():
    rng = np.random.default_rng(1)
    v = 1000
    x = rng.standard_normal((3, v)).astype(np.float32)
    short = random_mask(rng, 3, v, 0.5, words=20)  # covers ids 0..639
    ref = x.copy()
    llguidance_np.apply_token_bitmask_inplace(ref, short.copy())  # bans past the words
    p = ts.probs(x, token_bitmask=short)
    np.testing.assert_array_equal(p > 0, np.isfinite(ref))
    assert not p[:, 640:].any()
    # Extra words (and bits past V in the last word) change nothing.
    full = random_mask(rng, 3, v, 0.3)
    wide = np.concatenate([full, np.full((3, 5), -1, np.int32)], axis=1)
    wide[:, -6] = -1  # the last real word: ids 992..999 plus 24 bits past V
    narrow = wide[:, :32].copy()
    np.testing.assert_array_equal(
        ts.probs(x, token_bitmask=wide), ts.probs(x, token_bitmask=narrow)
    )
    for seed in range(5):
        a = ts.sample(x, token_bitmask=wide, seed=seed, top_k=5)
        np.testing.assert_array_equal(a, ts.sample(x, token_bitmask=narrow, seed=seed, top_k=5))


def test_all_zero_row_is_invalid_and_skip_leaves_the_others_alone():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 200)).astype(np.float32)
    m = random_mask(rng, 3, 200, 0.1)
    m[1] = 0
    with pytest.raises(ValueError, match="row 1 .*nothing can be sampled"):
        ts.sample(x, token_bitmask=m)
    with pytest.raises(ValueError, match="row 1"):
        ts.probs(x, token_bitmask=m)
    seeds = [11, 12, 13]
    out = ts.sample(x, token_bitmask=m, seed=seeds, on_invalid="skip", top_logprobs=2)
    assert out.ids[1] == -1 and not out.valid[1]
    for i in (0, 2):
        alone = ts.sample(x[i], token_bitmask=m[i], seed=seeds[i])
        assert out.ids[i] == alone and out.valid[i]
    # A mask with no words at all allows nothing.
    with pytest.raises(ValueError, match="nothing can be sampled"):
        ts.sample(x, token_bitmask=np.zeros((3, 0), np.int32))


def test_masked_nan_is_not_read():
    x = np.array([[np.nan, 1.0, 2.0, np.nan]], dtype=np.float32)
    m = np.array([0b0110], dtype=np.int32)
    assert ts.sample(x, temperature=0, token_bitmask=m)[0] == 2
    np.testing.assert_allclose(ts.probs(x, token_bitmask=m)[0, 1:3].sum(), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        ts.sample(x, token_bitmask=np.array([0b0011], dtype=np.int32))


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    v=st.sampled_from([40, 300, 5000]),
    density=st.sampled_from([0.01, 0.1, 0.6]),
    temperature=st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    top_k=st.sampled_from([None, 1, 3, 50]),
    top_p=st.sampled_from([None, 0.5, 0.9]),
    min_p=st.sampled_from([None, 0.1]),
    penalty=st.sampled_from([None, "rep", "freq", "bias"]),
)
def test_gathered_rows_equal_the_oracle(
    seed, v, density, temperature, top_k, top_p, min_p, penalty
):
    """The gathered path (no probs asked for) against the oracle: the greedy id and the
    top log-probabilities, with bias and penalties written through the gathered row."""
    rng = np.random.default_rng(seed)
    b = 3
    x = (rng.standard_normal((b, v)) * 2).astype(np.float32)
    m = random_mask(rng, b, v, density)
    m[:, 0] |= 1 << 3
    kw: dict = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)
    history = rng.integers(0, v, size=(b, 30))
    bias = None
    if penalty == "rep":
        kw["repetition_penalty"] = 1.5
    elif penalty == "freq":
        kw.update(frequency_penalty=0.7, presence_penalty=0.3)
    elif penalty == "bias":
        ids = rng.integers(0, v, size=10)
        bias = {int(j): float(rng.normal() * 5) for j in ids}
        bias[int(ids[0])] = float("-inf")
        kw["logit_bias"] = bias
    allowed = allowed_of(m, v)
    dense_bias = np.zeros(v)
    for j, val in (bias or {}).items():
        dense_bias[j] += val
    oracle_kw = {k: v_ for k, v_ in kw.items() if k != "logit_bias"}
    total = np.where(allowed, dense_bias[None, :], -np.inf)
    if np.isneginf(total).all(axis=1).any():
        with pytest.raises(ValueError, match="nothing can be sampled"):
            ts.sample(x, token_bitmask=m, history=history, **kw)
        return
    want = oracle_probs(x, history=history, logit_bias=total, **oracle_kw)
    out = ts.sample(x, token_bitmask=m, history=history, top_logprobs=3, seed=seed, **kw)
    for i in range(b):
        kept = want[i] > 0
        assert kept[int(out.ids[i])], (i, int(out.ids[i]))
        n = min(3, int(kept.sum()))
        got_ids, got_lp = out.top_ids[i][:n], out.top_logprobs[i][:n]
        np.testing.assert_allclose(got_lp, np.log(want[i][got_ids]), rtol=1e-4, atol=1e-4)
        # The top ids are the n largest of the oracle (ties may swap).
        kth = np.sort(want[i])[::-1][n - 1]
        assert (want[i][got_ids] >= kth * (1 - 1e-4)).all()
        if temperature == 0:
            assert out.ids[i] == int(np.argmax(np.where(kept, want[i], -1)))


def test_gathered_draw_follows_the_distribution_chi_square():
    """20,000 rows of one logits row (each its own stream lane) under a mask of 12 tokens:
    the counts against ts.probs' distribution (the banned path, independently checked against
    the oracle above), chi-square p > 1e-3."""
    rng = np.random.default_rng(5)
    v = 4096
    x = rng.standard_normal(v).astype(np.float32) * 1.5
    ids = rng.choice(v, size=12, replace=False)
    allowed = np.zeros(v, bool)
    allowed[ids] = True
    m = np.zeros(v // 32, np.uint32)
    for j in ids:
        m[j // 32] |= np.uint32(1) << np.uint32(j % 32)
    m = m.view(np.int32)
    n = 20_000
    kw = dict(temperature=0.8, top_p=0.95)
    p = ts.probs(x, token_bitmask=m, **kw).astype(np.float64)
    got = ts.sample(np.broadcast_to(x, (n, v)), token_bitmask=m, seed=77, **kw)
    assert allowed[got].all()
    counts = np.bincount(got, minlength=v)[p > 0]
    expected = p[p > 0] / p[p > 0].sum() * n
    assert counts.sum() == n
    assert stats.chisquare(counts, expected).pvalue > 1e-3


@pytest.mark.parametrize("dtype", [np.float64, np.float16, "bfloat16"])
def test_dtypes_and_torch(dtype):
    rng = np.random.default_rng(3)
    x32 = rng.standard_normal((2, 500)).astype(np.float32)
    m = random_mask(rng, 2, 500, 0.2)
    allowed = allowed_of(m, 500)
    if dtype == "bfloat16":
        x = torch.from_numpy(x32).to(torch.bfloat16)
        ref = x.float().numpy()
        mt = torch.from_numpy(m)
        ids = ts.sample(x, temperature=0, token_bitmask=mt)
        assert isinstance(ids, torch.Tensor)
        ids = ids.numpy()
        p = ts.probs(x, token_bitmask=mt).numpy()
    else:
        x = x32.astype(dtype)
        ref = x.astype(np.float64)
        ids = ts.sample(x, temperature=0, token_bitmask=m.view(np.uint32))
        p = ts.probs(x, token_bitmask=m)
    np.testing.assert_array_equal(ids, np.where(allowed, ref, -np.inf).argmax(axis=1))
    np.testing.assert_array_equal(p > 0, allowed)


def test_params_sampler_and_broadcast():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 300)).astype(np.float32)
    one = random_mask(rng, 1, 300, 0.1)[0]
    params = ts.SamplingParams(temperature=0.7, token_bitmask=one, seed=[1, 2, 3, 4])
    a = ts.sample(x, params)
    assert allowed_of(one, 300)[0][a].all()
    np.testing.assert_array_equal(a, ts.sample(x, temperature=0.7, seed=[1, 2, 3, 4],
                                               token_bitmask=np.tile(one, (4, 1))))  # fmt: skip
    s = ts.Sampler(temperature=0.7, seed=9)
    per_step = random_mask(rng, 4, 300, 0.05)
    per_step[:, 1] |= 1
    got = s(x, token_bitmask=per_step)
    assert allowed_of(per_step, 300)[np.arange(4), got].all()
    # The Sampler's own mask applies when the call gives none.
    s2 = ts.Sampler(params)
    assert allowed_of(one, 300)[0][s2(x)].all()


def test_verify_takes_a_mask_per_position():
    rng = np.random.default_rng(6)
    v, k = 64, 3
    x = rng.standard_normal((2, k + 1, v)).astype(np.float32)
    drafts = np.array([[5, 6, 7], [8, 9, 10]])
    m = np.full((2, k + 1, 2), -1, np.int32)
    m[0, 1, 0] &= ~np.int32(1 << 6)  # row 0's second draft is disallowed where it stands
    for seed in range(20):
        out = ts.verify(x, drafts, temperature=1.0, seed=seed, token_bitmask=m)
        assert out.accepted[0] <= 1
        assert out.ids[0, 1] != 6
    greedy = ts.verify(x, drafts, temperature=0, token_bitmask=m[:, 0])  # (B, W): every position
    np.testing.assert_array_equal(greedy.ids[:, 0], x[:, 0].argmax(axis=1))
    with pytest.raises(ValueError, match="per-position token_bitmask"):
        ts.verify(x, drafts, token_bitmask=np.full((2, k, 2), -1, np.int32))


@pytest.mark.parametrize(
    "mask, err, match",
    [
        (np.full((2, 4), 1.0, np.float32), TypeError, "int32 or uint32"),
        (np.full((2, 4), 1, np.int64), TypeError, "int32 or uint32"),
        (np.ones((2, 100), bool), TypeError, "int32 or uint32"),
        (np.full((3, 4), -1, np.int32), ValueError, "3 rows for a batch of 2"),
        (np.full((2, 2, 4), -1, np.int32), ValueError, r"\(W,\) or \(B, W\)"),
        (np.ones((2, 100), np.int32), ValueError, "one entry per token"),
    ],
)
def test_bad_masks_are_clear_errors(mask, err, match):
    x = np.zeros((2, 100), np.float32)
    with pytest.raises(err, match=match):
        ts.sample(x, token_bitmask=mask)
    if mask.dtype not in (np.int32, np.uint32):
        with pytest.raises(err, match=match):
            ts.SamplingParams(token_bitmask=mask)


@pytest.mark.parametrize("density", [0.3, 0.9])
@pytest.mark.parametrize("route", ["scan", "gather"])
def test_dense_masks_on_both_routes_equal_the_oracle(density, route):
    """A float32 top-k row with many allowed ids is read under its mask by the first scan;
    the same row with a logit bias (which the scan does not take) is gathered. Both against
    the oracle's top log-probabilities, at a vocabulary where the plan is the sparse top-k."""
    rng = np.random.default_rng(int(density * 10))
    b, v = 4, 32000
    x = (rng.standard_normal((b, v)) * 2).astype(np.float32)
    m = random_mask(rng, b, v, density)
    allowed = allowed_of(m, v)
    bias = {7: 0.5} if route == "gather" else None
    kw = dict(temperature=0.8, top_k=50, top_p=0.9)
    want = oracle_probs(x, logit_bias=np.where(allowed, 0.5 * (np.arange(v) == 7), -np.inf)
                        if bias else ban_bias(allowed), **kw)  # fmt: skip
    out = ts.sample(x, token_bitmask=m, logit_bias=bias, top_logprobs=5, seed=3, **kw)
    for i in range(b):
        assert want[i][int(out.ids[i])] > 0
        np.testing.assert_allclose(
            out.top_logprobs[i], np.log(want[i][out.top_ids[i]]), rtol=1e-4, atol=1e-5
        )
        np.testing.assert_array_equal(np.sort(out.top_ids[i]), np.sort(np.argsort(-want[i])[:5]))
