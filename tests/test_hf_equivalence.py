"""``ts.probs`` equals the reference implementations it claims to reproduce.

1. Hugging Face transformers: ``RepetitionPenaltyLogitsProcessor`` -> ``TemperatureLogitsWarper``
   -> ``TopKLogitsWarper`` -> ``TopPLogitsWarper`` -> ``MinPLogitsWarper`` -> softmax, on float32
   torch tensors (HF's default warper order, docs/design.md section 2).
2. vLLM's additive penalties (``apply_penalties``: repetition over the seen tokens, then
   ``logits -= frequency * counts``, then ``logits -= presence * (counts > 0)``), reimplemented
   in a few lines of torch below, followed by temperature and softmax.

Both sides compute in float32. Logits are continuous (no exact ties: HF's ``torch.sort`` orders
ties arbitrarily, so tie rules are left to the oracle tests). A row is compared only when the
float64 oracle says no filter boundary lies within float32 rounding of a decision
(``oracle.row_bounds`` sure == maybe); otherwise either side may legitimately flip a
near-boundary token. Rows compared: |ts - hf| <= 2 (atol + p (rtol + expm1(2 delta))) with
atol = 1e-6, rtol = 1e-5 (twice the single-implementation bound: both sides round).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tokensampler as ts
from hypothesis import event, given
from hypothesis import strategies as st
from oracle import EPS32, oracle_rows, row_bounds

torch = pytest.importorskip("torch")
lp = pytest.importorskip("transformers.generation.logits_process")
pytestmark = pytest.mark.transformers


def hf_chain(logits, history, *, repetition_penalty, temperature, top_k, top_p, min_p):
    procs = []
    if repetition_penalty != 1.0:
        procs.append(lp.RepetitionPenaltyLogitsProcessor(penalty=repetition_penalty))
    if temperature != 1.0:
        procs.append(lp.TemperatureLogitsWarper(temperature))
    if top_k:
        procs.append(lp.TopKLogitsWarper(top_k=top_k))
    if top_p < 1.0:
        procs.append(lp.TopPLogitsWarper(top_p=top_p))
    if min_p > 0.0:
        procs.append(lp.MinPLogitsWarper(min_p=min_p))
    scores = logits.clone()
    for p in procs:
        scores = p(history, scores)
    return torch.softmax(scores, dim=-1)


def assert_rows_match(got, want, logits_np, kwargs):
    """Compare the rows whose float32 filter decisions are unambiguous; return their count."""
    traces = oracle_rows(logits_np, **kwargs)
    compared = 0
    for i, trace in enumerate(traces):
        sure, maybe, delta = row_bounds(trace, EPS32)
        if not (sure == maybe).all():
            event("row skipped: a filter boundary within float32 rounding")
            continue
        compared += 1
        g, w = got[i].double().numpy(), want[i].double().numpy()
        np.testing.assert_array_equal(g > 0, w > 0, err_msg=f"row {i}: kept sets differ")
        tol = 2 * (1e-6 + w * (1e-5 + math.expm1(2 * delta)))
        bad = np.flatnonzero(np.abs(g - w) > tol)
        assert bad.size == 0, f"row {i}: ids {bad[:8]} ts {g[bad[:8]]} reference {w[bad[:8]]}"
    return compared


@given(
    st.integers(1, 6),
    st.sampled_from([2, 7, 50, 1000, 5000]),
    st.integers(0, 2**63 - 1),
    st.sampled_from([1.0, 1.1, 1.5, 3.0]),
    st.sampled_from([0.3, 0.7, 1.0, 2.0]),
    st.sampled_from([0, 1, 5, 50, 10_000]),
    st.sampled_from([1.0, 0.95, 0.9, 0.5, 0.05]),
    st.sampled_from([0.0, 0.01, 0.1, 0.5]),
    st.sampled_from([0.5, 2.0, 8.0]),
)
def test_matches_hf_processor_chain(batch, vocab, seed, r, temp, top_k, top_p, min_p, scale):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((batch, vocab)) * scale).astype(np.float32)
    hist = rng.integers(0, vocab, size=(batch, int(rng.integers(1, 3 * vocab + 2))))
    logits, history = torch.from_numpy(x), torch.from_numpy(hist)
    kw = {
        "repetition_penalty": r,
        "temperature": temp,
        "top_k": top_k,
        "top_p": top_p,
        "min_p": min_p,
    }
    want = hf_chain(logits, history, **kw)
    got = ts.probs(logits, history=history, **kw)
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    assert torch.equal(logits, torch.from_numpy(x)), "input modified"
    assert_rows_match(got, want, x, dict(kw, history=hist))


def test_matches_hf_fixed_vector():
    x = torch.tensor([[4.51, 0.89, -1.90, 6.75, 1.63, -1.62, -1.89, 6.28, 1.79]])
    h = torch.tensor([[3, 3, 0]])
    kw = {"repetition_penalty": 1.3, "temperature": 0.8, "top_k": 5, "top_p": 0.9, "min_p": 0.05}
    want = hf_chain(x, h, **kw)
    got = ts.probs(x, history=h, **kw)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


# -- vLLM-style additive penalties ----------------------------------------------------------------


def vllm_apply_penalties(logits, output_tokens, presence, frequency, repetition):
    """vLLM ``apply_penalties`` semantics (prompt empty, the history as output tokens);
    ``output_tokens`` is (B, L) padded with ``vocab`` (an id no token has)."""
    num_seqs, vocab = logits.shape
    counts = torch.zeros((num_seqs, vocab + 1), dtype=torch.long)
    counts.scatter_add_(1, output_tokens, torch.ones_like(output_tokens))
    counts = counts[:, :vocab]
    mask = counts > 0
    rep = repetition[:, None].repeat(1, vocab)
    rep[~mask] = 1.0
    logits = torch.where(logits > 0, logits / rep, logits * rep)
    logits = logits - frequency[:, None] * counts
    logits = logits - presence[:, None] * mask
    return logits


@given(
    st.integers(1, 6),
    st.sampled_from([3, 64, 4000]),
    st.integers(0, 2**63 - 1),
    st.booleans(),
)
def test_matches_vllm_penalties(batch, vocab, seed, per_row):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((batch, vocab)) * 3).astype(np.float32)
    hist = rng.integers(0, vocab, size=(batch, int(rng.integers(1, 2 * vocab + 2))))
    hist[rng.random(hist.shape) < 0.2] = -1  # padding for us; vocab for vLLM
    n = batch if per_row else 1
    pres = rng.uniform(-1, 2, n).astype(np.float32)
    freq = rng.uniform(-1, 2, n).astype(np.float32)
    rep = rng.uniform(0.8, 2, n).astype(np.float32)
    temp = float(rng.choice([0.5, 1.0, 1.7]))
    padded = torch.from_numpy(np.where(hist < 0, vocab, hist))

    def expand(a):
        return torch.from_numpy(np.broadcast_to(a, (batch,)).copy())

    pen = vllm_apply_penalties(torch.from_numpy(x), padded, expand(pres), expand(freq), expand(rep))
    want = torch.softmax(pen / temp, dim=-1)

    def param(a):
        return a.tolist() if per_row else float(a[0])

    kw = {
        "presence_penalty": param(pres),
        "frequency_penalty": param(freq),
        "repetition_penalty": param(rep),
        "temperature": temp,
        "history": hist,
    }
    got = ts.probs(torch.from_numpy(x), **kw)
    assert assert_rows_match(got, want, x, kw) == batch
