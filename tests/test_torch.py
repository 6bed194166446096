"""torch tensors in -> torch tensors out (docs/design.md sections 3 and 5).

- result types: ids int64 of shape () / (B,), probs float32 (float64 for float64 input), on
  the input's device;
- float16 / bfloat16 are read natively: the input's storage bytes are untouched, and the
  result equals the one computed from ``t.float()`` (the same values, exactly representable
  in float32) to float32 rounding (rtol 1e-6, atol 1e-9) and the float64 oracle of those
  values within the float32 error model of tests/oracle.py;
- non-contiguous rows (``x[:, -1, :]`` of a (B, T, V) tensor, transposed, sliced) give the
  same bits as their contiguous copy;
- torch history / logit_bias tensors, requires_grad tensors and ``Sampler(keepdim=True)``.
"""

from __future__ import annotations

import numpy as np
import pytest
import tokensampler as ts
from hypothesis import given
from hypothesis import strategies as st
from oracle import EPS32, check_row, compute_eps, oracle_rows
from sampling_cases import cases

torch = pytest.importorskip("torch")

HALF = [torch.float16, torch.bfloat16]
KW = {
    "temperature": 0.8,
    "top_k": 50,
    "top_p": 0.95,
    "min_p": 0.02,
    "repetition_penalty": 1.2,
    "frequency_penalty": 0.1,
    "presence_scale": 1.3,
}


def rand_logits(b, v, dtype=torch.float32, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, v, generator=g) * scale).to(dtype)


def rand_history(b, length, v, seed=1):
    g = torch.Generator().manual_seed(seed)
    h = torch.randint(-1, v, (b, length), generator=g)
    return h


def storage_bytes(t):
    """A copy of the tensor's raw bytes (bf16 has no numpy dtype: view as int16)."""
    t = t.detach()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    return t.clone()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, *HALF])
@pytest.mark.parametrize("one_d", [False, True])
def test_result_types(dtype, one_d):
    x = rand_logits(4, 300, dtype)
    if one_d:
        x = x[0]
    ids = ts.sample(x, seed=1, **KW)
    assert isinstance(ids, torch.Tensor)
    assert ids.dtype == torch.int64
    if not one_d:  # the 1-D shape () is pinned by test_1d_ids_are_0d below
        assert ids.shape == x.shape[:-1]
    else:
        assert ids.numel() == 1
    assert ids.device == x.device
    p = ts.probs(x, **KW)
    assert isinstance(p, torch.Tensor)
    assert p.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert p.shape == x.shape
    assert p.device == x.device
    s = ts.Sampler(seed=1, **KW)
    out = s(x)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.int64
    torch.testing.assert_close(out, ids, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_1d_ids_are_0d(dtype):
    x = rand_logits(1, 300, dtype)[0]
    assert ts.sample(x, seed=1).shape == ()
    assert ts.Sampler(seed=1)(x).shape == ()
    assert ts.sample(x, seed=1, logprobs=True).ids.shape == ()


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("vocab", [7, 1000, 50257])
def test_half_precision_read_in_place(dtype, vocab):
    x = rand_logits(8, vocab, dtype, seed=vocab)
    h = rand_history(8, 40, vocab)
    before = storage_bytes(x)
    ptr = x.data_ptr()
    p = ts.probs(x, history=h, **KW)
    ids = ts.sample(x, history=h, seed=7, **KW)
    assert x.data_ptr() == ptr
    assert torch.equal(storage_bytes(x), before), "the input's storage was modified"
    # the same values in float32 (bf16/f16 -> f32 is exact): the same computation
    x32 = x.float()
    p32 = ts.probs(x32, history=h, **KW)
    assert p.dtype == torch.float32
    torch.testing.assert_close(p, p32, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ids, ts.sample(x32, history=h, seed=7, **KW), rtol=0, atol=0)
    # and the float64 oracle of those exact values
    kw = dict(KW, history=h.numpy())
    for i, trace in enumerate(oracle_rows(x32.numpy(), **kw)):
        check_row(p[i].numpy(), trace, EPS32, where=f"row {i}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, *HALF])
def test_input_untouched_all_dtypes(dtype):
    x = rand_logits(3, 500, dtype)
    before = storage_bytes(x)
    ts.probs(x, **KW)
    ts.sample(x, seed=0, **KW)
    ts.Sampler(seed=0, **KW)(x)
    assert torch.equal(storage_bytes(x), before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, *HALF])
def test_non_contiguous(dtype):
    g = torch.Generator().manual_seed(3)
    x3 = (torch.randn(4, 5, 700, generator=g) * 2).to(dtype)  # (B, T, V)
    h = rand_history(4, 30, 700)
    last = x3[:, -1, :]  # rows strided by T * V
    xt = (torch.randn(700, 4, generator=g) * 2).to(dtype).T  # elements strided by B
    sliced = (torch.randn(4, 1400, generator=g) * 2).to(dtype)[:, ::2]
    for view in (last, xt, sliced):
        assert not view.is_contiguous()
        want_p = ts.probs(view.contiguous(), history=h, **KW)
        want_ids = ts.sample(view.contiguous(), history=h, seed=11, **KW)
        torch.testing.assert_close(ts.probs(view, history=h, **KW), want_p, rtol=0, atol=0)
        torch.testing.assert_close(
            ts.sample(view, history=h, seed=11, **KW), want_ids, rtol=0, atol=0
        )
        torch.testing.assert_close(
            ts.Sampler(seed=11, **KW)(view, history=h), want_ids, rtol=0, atol=0
        )


def test_torch_history_and_bias_tensors():
    x = rand_logits(3, 200)
    h = rand_history(3, 25, 200)
    bias = torch.zeros(3, 200)
    bias[0, 5] = -float("inf")
    bias[1, 7] = 2.5
    bias[2, :10] = -1.0
    bias_1d = bias[1].clone()
    cases_ = [
        ({"history": h}, {"history": h.numpy()}),
        ({"history": h.to(torch.int32)}, {"history": h.numpy()}),
        ({"history": [r for r in h]}, {"history": [r.numpy() for r in h]}),
        ({"logit_bias": bias}, {"logit_bias": bias.numpy()}),
        ({"logit_bias": bias_1d}, {"logit_bias": bias_1d.numpy()}),
        ({"logit_bias": bias, "history": h}, {"logit_bias": bias.numpy(), "history": h.numpy()}),
    ]
    for kw_t, kw_n in cases_:
        got = ts.probs(x, **kw_t, **KW)
        want = ts.probs(x.numpy(), **kw_n, **KW)
        np.testing.assert_array_equal(got.numpy(), want)
        np.testing.assert_array_equal(
            ts.sample(x, seed=2, **kw_t, **KW).numpy(), ts.sample(x.numpy(), seed=2, **kw_n, **KW)
        )
    assert ts.probs(x, logit_bias=bias, **KW)[0, 5] == 0


def test_requires_grad():
    leaf = rand_logits(4, 100).requires_grad_(True)
    nonleaf = leaf * 1.5
    for t in (leaf, nonleaf):
        p = ts.probs(t, **KW)
        want = ts.probs(t.detach(), **KW)
        torch.testing.assert_close(p, want, rtol=0, atol=0)
        ids = ts.sample(t, seed=4, **KW)
        torch.testing.assert_close(ids, ts.sample(t.detach(), seed=4, **KW), rtol=0, atol=0)
        ts.Sampler(seed=4, **KW)(t)
    assert leaf.grad is None


def test_sampler_keepdim_cat():
    idx = torch.zeros(4, 3, dtype=torch.long)
    s = ts.Sampler(temperature=0.9, top_k=20, seed=5)
    for _ in range(3):
        nxt = s(rand_logits(4, 64, seed=idx.shape[1]), keepdim=True)
        assert nxt.shape == (4, 1) and nxt.dtype == torch.int64
        idx = torch.cat((idx, nxt), dim=1)
    assert idx.shape == (4, 6)


@given(cases(), st.integers(0, 2**63 - 1), st.booleans())
def test_torch_equals_numpy(case, seed, torch_side_args):
    """The torch adapter adds nothing: same bits as the numpy path, for every input form."""
    kw_t = dict(case.kwargs)
    if torch_side_args:
        for key in ("history", "logit_bias"):
            v = kw_t.get(key)
            if isinstance(v, np.ndarray):
                kw_t[key] = torch.from_numpy(v)
    xt = torch.from_numpy(case.logits)
    p = ts.probs(xt, **kw_t)
    assert isinstance(p, torch.Tensor)
    np.testing.assert_array_equal(p.numpy(), ts.probs(case.logits, **case.kwargs))
    ids = ts.sample(xt, seed=seed, **kw_t)
    assert isinstance(ids, torch.Tensor) and ids.dtype == torch.int64
    ids_np = ts.sample(case.logits, seed=seed, **case.kwargs)
    if case.logits.ndim == 2:  # 1-D: see test_1d_ids_are_0d
        assert ids.shape == ids_np.shape
    np.testing.assert_array_equal(ids.numpy().reshape(np.shape(ids_np)), ids_np)
    # one spot check against the oracle (the numpy path is checked in depth elsewhere)
    trace = oracle_rows(case.logits, **case.kwargs)[0]
    check_row(np.atleast_2d(p.numpy())[0], trace, compute_eps(case.logits.dtype))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_round_trip(dtype):
    x = rand_logits(8, 1000, dtype)
    h = rand_history(8, 20, 1000)
    xc = x.cuda()
    ids = ts.sample(xc, history=h.cuda(), seed=9, **KW)
    assert ids.device == xc.device and ids.dtype == torch.int64
    torch.testing.assert_close(ids.cpu(), ts.sample(x, history=h, seed=9, **KW), rtol=0, atol=0)
    p = ts.probs(xc, history=h.cuda(), **KW)
    assert p.device == xc.device
    torch.testing.assert_close(p.cpu(), ts.probs(x, history=h, **KW), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kw",
    [
        dict(temperature=1.0, top_k=50),  # streaming top-k scan (reads bf16 raw on AVX-512)
        dict(temperature=1.0, top_p=0.9),  # head found in the first read, exp widens in its loop
        dict(temperature=0.7, top_p=0.5, min_p=0.02),
        dict(temperature=1.0, top_p=0.9, top_k=15_000),  # dense top-k: a widened copy
        dict(temperature=0.0),  # greedy on the raw row
        dict(temperature=1.0, min_p=0.05),
    ],
)
@pytest.mark.parametrize("with_inf", [False, True])
def test_bf16_equals_its_float32_widening(kw, with_inf):
    """A bfloat16 row is read without a conversion pass where it can be; the result must be
    exactly that of the same values widened to float32 (ties, plateaus and +inf included)."""
    x = rand_logits(3, 20_000, torch.bfloat16, scale=4.0)
    if with_inf:
        x[1, [7, 19_000]] = float("inf")  # the +inf tokens share the mass
    wide = x.float()
    for seed in range(4):
        a = ts.sample(x, seed=seed, logprobs=True, **kw)
        b = ts.sample(wide, seed=seed, logprobs=True, **kw)
        torch.testing.assert_close(a.ids, b.ids, rtol=0, atol=0)
        torch.testing.assert_close(a.logprobs, b.logprobs, rtol=0, atol=0, equal_nan=True)
    bad = x.clone()
    bad[2, 11] = float("nan")
    with pytest.raises(ValueError, match="row 2"):
        ts.sample(bad, seed=0, **kw)
