"""The outputs of docs/design.md section 9: `logprobs_mode`, `logprob_token_ids`,
`SampleOutput.rank` and `on_invalid="skip"`, against float64 numpy written here (raw softmax)
and the oracle (final distribution)."""

from __future__ import annotations

import numpy as np
import pytest
import tokensampler as ts
from oracle import oracle_probs

RNG = np.random.default_rng(1234)


def _rows(b: int, v: int, dtype=np.float32) -> np.ndarray:
    return (RNG.standard_normal((b, v)) * 2.0).astype(dtype)


def _raw_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "kw",
    [
        {"temperature": 0.7, "top_p": 0.9},
        {"temperature": 1.3, "top_k": 20, "min_p": 0.02},
        {"temperature": 0.8, "typical_p": 0.9},
        {"temperature": 0.0},
    ],
)
def test_raw_mode_reports_the_plain_softmax(dtype, kw) -> None:
    x = _rows(5, 300, dtype)
    ids = [[3, 7, 299]] * 5
    out = ts.sample(x, seed=[1, 2, 3, 4, 5], logprobs=True, top_logprobs=4,
                    logprobs_mode="raw", logprob_token_ids=ids, **kw)  # fmt: skip
    lsm = _raw_log_softmax(x)
    rows = np.arange(5)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out.logprobs, lsm[rows, out.ids], atol=tol)
    np.testing.assert_allclose(out.raw_logprobs, lsm[rows, out.ids], atol=tol)
    np.testing.assert_allclose(out.token_logprobs, lsm[:, [3, 7, 299]], atol=tol)
    want_top = np.argsort(-x, axis=-1, kind="stable")[:, :4]
    np.testing.assert_array_equal(out.top_ids, want_top)
    np.testing.assert_allclose(out.top_logprobs, np.take_along_axis(lsm, want_top, -1), atol=tol)
    # The ids are the ones the processed mode draws: the mode changes only what is reported.
    same = ts.sample(x, seed=[1, 2, 3, 4, 5], **kw)
    np.testing.assert_array_equal(out.ids, same)


@pytest.mark.parametrize(
    "kw",
    [
        {"temperature": 0.7, "top_p": 0.9},
        {"temperature": 1.3, "top_k": 20},
        {"temperature": 0.8, "typical_p": 0.9, "order": "llama.cpp"},
        {"temperature": 0.9, "min_p": 0.1, "order": "vllm", "top_p": 0.8},
    ],
)
def test_processed_token_logprobs_are_the_final_distribution(kw) -> None:
    x = _rows(4, 500, np.float64)
    per_row = [[0, 1, 2], [10, 20, 30], [499, 498, 0], [5, 5, 6]]
    out = ts.sample(x, seed=9, logprob_token_ids=per_row, **kw)
    assert isinstance(out, ts.SampleOutput) and out.rank is None
    p = ts.probs(x, **kw)
    with np.errstate(divide="ignore"):
        want = np.log(np.take_along_axis(p, np.array(per_row), -1))
    np.testing.assert_allclose(out.token_logprobs, want, rtol=1e-12, atol=0)
    # The chosen ids' own log-probabilities agree with the same distribution.
    np.testing.assert_allclose(out.logprobs, np.log(p[np.arange(4), out.ids]), rtol=1e-12)
    # And the distribution is the oracle's.
    np.testing.assert_allclose(p, oracle_probs(x, **kw), atol=1e-9)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_rank_is_one_plus_the_number_of_larger_raw_logits(dtype) -> None:
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(_rows(16, 257, np.float64)).to(getattr(torch, dtype))
    x[3, :] = 0.0  # a plateau: every token ranks 1
    out = ts.sample(x, seed=list(range(16)), logprobs=True, temperature=2.0)
    xn = x.double().numpy()
    ids = out.ids.numpy()
    want = 1 + (xn > xn[np.arange(16), ids][:, None]).sum(axis=-1)
    np.testing.assert_array_equal(out.rank.numpy(), want)
    assert out.rank[3] == 1
    # Greedy picks rank 1; a 1-D call gives a 0-d rank.
    g = ts.sample(x[0], temperature=0, logprobs=True)
    assert int(g.rank) == 1


def test_sample_output_still_unpacks_as_five() -> None:
    out = ts.sample(_rows(2, 10), seed=1, logprobs=True)
    ids, lp, raw, top_ids, top_lps = out
    assert (lp is out.logprobs, raw is out.raw_logprobs, top_ids is out.top_ids) == (True,) * 3
    assert top_lps is out.top_logprobs and out.valid.tolist() == [True, True]
    kept = out._replace(ids=ids[..., None])
    assert kept.ids.shape == (2, 1) and kept.rank is out.rank and kept.valid is out.valid


def test_on_invalid_skip_isolates_bad_rows() -> None:
    x = _rows(6, 1000)
    x[1, 17] = np.nan
    x[4, :] = -np.inf
    seeds = [11, 12, 13, 14, 15, 16]
    kw = {"temperature": 0.9, "top_p": 0.95, "typical_p": 0.95}
    with pytest.raises(ts.SamplingError, match="row 1"):
        ts.sample(x, seed=seeds, **kw)
    out = ts.sample(x, seed=seeds, on_invalid="skip", logprobs=True, top_logprobs=3,
                    logprob_token_ids=[0, 1], **kw)  # fmt: skip
    assert out.valid.tolist() == [True, False, True, True, False, True]
    assert out.ids[1] == -1 and out.ids[4] == -1
    assert np.isnan(out.logprobs[1]) and np.isnan(out.token_logprobs[4]).all()
    assert out.top_ids[1].tolist() == [-1, -1, -1]
    # Every other row is sampled exactly as alone (per-row seeds).
    for i in (0, 2, 3, 5):
        alone = ts.sample(x[i : i + 1], seed=[seeds[i]], logprobs=True, **kw)
        assert out.ids[i] == alone.ids[0] and out.logprobs[i] == alone.logprobs[0]
    p = ts.probs(x, on_invalid="skip", **kw)
    assert not p[1].any() and not p[4].any()
    np.testing.assert_array_equal(p[0], ts.probs(x[0], **kw))
    # Plain ids carry the -1; a Sampler skips too.
    assert ts.sample(x, seed=seeds, on_invalid="skip", **kw).tolist()[1] == -1
    s = ts.Sampler(seed=seeds, on_invalid="skip", **kw)
    assert s(x).tolist()[4] == -1
    # Errors that are not about a row's values still raise.
    with pytest.raises(ts.SamplingError, match="logprob_token_ids"):
        ts.sample(x, on_invalid="skip", logprob_token_ids=[1000])


def test_bad_output_options_are_refused() -> None:
    x = _rows(2, 10)
    with pytest.raises(ts.SamplingError, match="logprobs_mode"):
        ts.SamplingParams(logprobs_mode="final")  # type: ignore[arg-type]
    with pytest.raises(ts.SamplingError, match="on_invalid"):
        ts.sample(x, on_invalid="ignore")
    for bad in ([10], [-1]):
        with pytest.raises(ts.SamplingError, match="logprob_token_ids"):
            ts.sample(x, logprob_token_ids=bad)
    with pytest.raises(ValueError, match="same number"):
        ts.SamplingParams(logprob_token_ids=[[1, 2], [3]])
    with pytest.raises(TypeError, match="logprob_token_ids"):
        ts.SamplingParams(logprob_token_ids="12")  # type: ignore[arg-type]
    with pytest.raises(ts.SamplingError, match="rows"):
        ts.sample(x, logprob_token_ids=[[1], [2], [3]])
