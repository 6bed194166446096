"""Stage orders (docs/design.md section 9, ``order=``; issue #15).

- The issue's example: [.4, .3, .2, .1], min_p .3, top_p .75 keeps 2 tokens under "vllm"
  (min_p first) and 3 under "hf".
- ``order="llama.cpp"`` equals a numpy port of llama.cpp's default chain
  (tests/llama_cpp_vectors.py: ``common_sampler_init`` of common/sampling.cpp at
  00efb3e184262872916bf136b3df63c1822a19bd, the samplers of src/llama-sampling.cpp at
  0344068cf112e524eb3fbdbd58c171870b63e56c, the default chain of common/common.h at
  001d906a6d86e2490e394361e7cc6f478b100088: penalties, dry, top_n_sigma, top_k, typical_p,
  top_p, min_p, xtc, temperature; then dist). The filters see the temperature-1
  distribution, temperature (temp_ext, incl. dynatemp) comes last. Inputs avoid the
  documented differences (tests/test_stages.py): no ties (top_k, typical, xtc tie rules), no
  typical or dynatemp after an active top_n_sigma (llama.cpp keeps the masked tokens as -inf
  candidates: NaN entropy, and N counting them), T > 0 (T = 0 is plain greedy for us).
- ``order="vllm"`` equals a numpy port of vLLM's v1 sampler (vllm-project/vllm):
  ``vllm/v1/sample/sampler.py`` at 3e342658b2e9c85a30a54d19e64e5ad77b8a26a6 (``Sampler.sample``:
  greedy below temperature 1e-5 on the penalised logits; ``apply_temperature``; the
  argmax-invariant logits processors, i.e. min_p; then ``topk_topp_sampler``),
  ``vllm/v1/sample/logits_processor/builtin.py`` at bf17660a2493b9cec475b6ba790a390afd317e8b
  (``MinPLogitsProcessor.apply``: softmax, drop p < min_p * max p) and
  ``vllm/v1/sample/ops/topk_topp_sampler.py`` at 3babc05a035b42bb9d0ae51b83e102c85e3e5626
  (``apply_top_k_top_p``: sort ascending, top-k drops logits below the k-th largest value,
  so ties stay; top-p drops the ascending prefix whose cumulative mass is <= 1 - p, the last
  token always stays). vLLM's own penalties as in tests/test_hf_equivalence.py.
- test-sampling.cpp's ``test_sampler_queue`` vectors (top_k / top_p / min_p in every order)
  as custom orders.
- Custom orders equal the oracle's composition, and the composition of single-stage calls
  (each stage sees the softmax of the current logits over the tokens still kept).
- Invalid orders raise ``ts.SamplingError`` (ValueError) naming ``order``; calls without
  ``order`` equal ``order="hf"``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tokensampler as ts
from hypothesis import given
from hypothesis import strategies as st
from llama_cpp_vectors import QUEUE_CASES, QUEUE_STAGE, llama_cpp_chain, logits_of, queue_expected
from oracle import (
    EPS32,
    EPS64,
    ORDERS,
    STAGE_NAMES,
    _stage_on,
    oracle_probs,
    resolve_order,
    stage_rows,
)
from test_stages import IMPLS, _kernel, _oracle, check_rows, event, stage_cases

seeds = st.integers(0, 2**63 - 1)


def _eps(impl, x) -> float:
    """Unit roundoff of the arithmetic of ``impl`` on ``x``: the oracle is float64."""
    if impl is _oracle:
        return EPS64
    return EPS64 if np.asarray(x).dtype == np.float64 else EPS32


def compare_with_port(got, want, x, kw, eps, where="") -> int:
    """Rows the oracle finds unambiguous must agree with the port (both sides round: twice
    the single-implementation tolerance); returns the number of rows compared."""
    traces = stage_rows(x, eps=eps, **kw)
    compared = 0
    for i, tr in enumerate(traces):
        if tr.ambiguous:
            continue
        compared += 1
        g, w = got[i], want[i]
        sig = np.maximum(g, w) > 1e-30  # float32 output underflows below ~1e-38
        np.testing.assert_array_equal(g[sig] > 0, w[sig] > 0, err_msg=f"{where} row {i}: kept")
        atol, rtol = (1e-12, 1e-9) if eps == EPS64 else (1e-6, 1e-5)
        tol = 2 * (atol + w * (rtol + math.expm1(2 * tr.dz)))
        bad = np.flatnonzero(np.abs(g - w) > tol)
        assert bad.size == 0, f"{where} row {i}: ids {bad[:8]} got {g[bad[:8]]} port {w[bad[:8]]}"
    return compared


# ---------------------------------------------------------------------------------------------
# The issue's example, and the presets.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("impl", IMPLS)
def test_issue_example(impl):
    x = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    kw = {"min_p": 0.3, "top_p": 0.75}
    vllm = impl(x, order="vllm", **kw)  # min_p drops .1, then top_p on [.44, .33, .22]: 2
    hf = impl(x, order="hf", **kw)  # top_p keeps .4 .3 .2 (.9 >= .75), min_p keeps them: 3
    np.testing.assert_allclose(vllm, [4 / 7, 3 / 7, 0, 0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hf, [4 / 9, 3 / 9, 2 / 9, 0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(impl(x, order="llama.cpp", **kw), hf, rtol=1e-9, atol=1e-12)
    # the default is "hf" (bit-identical for the kernel: test_default_order_is_hf; the
    # oracle's section 2 path and ordered path differ in the last bit)
    np.testing.assert_allclose(impl(x, **kw), hf, rtol=1e-12, atol=1e-15)
    # as sequences
    np.testing.assert_allclose(impl(x, order=["min_p", "top_p"], **kw), vllm, rtol=1e-12)
    np.testing.assert_allclose(impl(x, order=("top_p", "min_p"), **kw), hf, rtol=1e-12)
    np.testing.assert_allclose(impl(x, order=list(ORDERS["vllm"]), **kw), vllm, rtol=1e-12)


def test_presets_are_the_documented_sequences():
    assert ORDERS["hf"] == ("temperature", "top_n_sigma", "top_k", "top_p", "min_p",
                            "typical_p", "epsilon_cutoff", "eta_cutoff", "xtc")  # fmt: skip
    assert ORDERS["vllm"] == ("temperature", "top_n_sigma", "min_p", "top_k", "top_p",
                              "typical_p", "epsilon_cutoff", "eta_cutoff", "xtc")  # fmt: skip
    assert ORDERS["llama.cpp"] == ("top_n_sigma", "top_k", "typical_p", "top_p", "min_p",
                                   "epsilon_cutoff", "eta_cutoff", "xtc", "temperature")  # fmt: skip
    assert set(STAGE_NAMES) == set(ORDERS["hf"]) == set(ORDERS["vllm"]) == set(ORDERS["llama.cpp"])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("preset", ["hf", "vllm", "llama.cpp"])
def test_preset_equals_its_sequence(impl, preset):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4, 100)) * 2).astype(np.float64)
    kw = {"temperature": 0.7, "top_k": 30, "top_p": 0.9, "min_p": 0.05, "typical_p": 0.9,
          "epsilon_cutoff": 1e-3, "eta_cutoff": 1e-3, "top_n_sigma": 2.0,
          "xtc_probability": 1.0, "xtc_threshold": 0.05, "dynatemp_range": 0.3,
          "min_tokens_to_keep": 3}  # fmt: skip
    np.testing.assert_array_equal(impl(x, order=preset, **kw),
                                  impl(x, order=list(ORDERS[preset]), **kw))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# llama.cpp's default chain, ported.
# ---------------------------------------------------------------------------------------------

# (our keywords; the llama.cpp chain takes the same values under its own names)
LLAMA_SETS = [
    {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05},  # the defaults
    {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "typical_p": 0.9},
    {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "top_n_sigma": 1.5},
    {"temperature": 1.0, "top_k": 0, "top_p": 0.9, "min_p": 0.0, "top_n_sigma": 1.0},
    {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "xtc_probability": 1.0,
     "xtc_threshold": 0.1},
    {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "dynatemp_range": 0.5},
    {"temperature": 1.2, "top_k": 0, "top_p": 1.0, "min_p": 0.02, "dynatemp_range": 1.0,
     "dynatemp_exponent": 2.0},
    {"temperature": 0.8, "top_k": 40, "top_p": 0.5, "min_p": 0.05, "typical_p": 0.5,
     "min_tokens_to_keep": 5},
    {"temperature": 1.5, "top_k": 100, "top_p": 0.8, "min_p": 0.1, "xtc_probability": 1.0,
     "xtc_threshold": 0.05, "min_tokens_to_keep": 4, "typical_p": 0.95},
    {"temperature": 0.7, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "repetition_penalty": 1.3,
     "frequency_penalty": 0.4, "presence_penalty": 0.3},
]  # fmt: skip


def _llama_port(x, hist, kw):
    names = {"min_tokens_to_keep": "min_keep"}
    pk = {names.get(k, k): v for k, v in kw.items()}
    return np.stack([llama_cpp_chain(row, history=h, **pk) for row, h in zip(x, hist, strict=True)])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kw", LLAMA_SETS, ids=[str(i) for i in range(len(LLAMA_SETS))])
def test_llama_cpp_order_equals_llama_cpp_chain(impl, kw):
    rng = np.random.default_rng(2024)
    compared = total = 0
    for scale, vocab in ((1.0, 300), (3.0, 1000), (0.3, 64)):
        x = (rng.standard_normal((12, vocab)) * scale).astype(np.float32)
        hist = rng.integers(0, vocab, size=(12, 20))
        want = _llama_port(x.astype(np.float64), hist, kw)
        call = dict(kw, history=hist, order="llama.cpp")
        got = np.atleast_2d(impl(x, **call))
        compared += compare_with_port(got, want, x, call, _eps(impl, x), f"scale {scale}")
        total += x.shape[0]
    assert compared >= 0.75 * total, f"only {compared} of {total} rows compared"


def test_llama_cpp_port_differs_from_hf_order():
    """The chain really is another order: with temperature last, min_p sees the T = 1
    distribution (filters keep more tokens at T < 1 than under "hf")."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 500)) * 2
    kw = {"temperature": 0.5, "top_k": 0, "top_p": 1.0, "min_p": 0.1}
    port = _llama_port(x, np.zeros((1, 0), np.int64), kw)
    assert (port > 0).sum() > (oracle_probs(x, order="hf", **kw) > 0).sum()
    np.testing.assert_allclose(
        oracle_probs(x, order="llama.cpp", **kw), port, rtol=1e-9, atol=1e-15
    )


# ---------------------------------------------------------------------------------------------
# vLLM's sampler, ported.
# ---------------------------------------------------------------------------------------------


def vllm_probs(x, hist, *, temperature=1.0, min_p=0.0, top_k=0, top_p=1.0,
               repetition_penalty=1.0, frequency_penalty=0.0, presence_penalty=0.0):  # fmt: skip
    """vLLM v1 ``Sampler`` on float64 rows (see the module docstring); returns probabilities.

    torch.sort is not stable; the port sorts ascending with equal logits in *descending* id
    order, so the descending view ranks equal logits by lower id (our documented tie rule)."""
    x = np.array(x, dtype=np.float64)
    batch, vocab = x.shape
    out = np.zeros_like(x)
    for i in range(batch):
        z = x[i].copy()
        counts = np.bincount(hist[i][hist[i] >= 0], minlength=vocab)
        seen = counts > 0
        # apply_penalties: repetition on seen tokens, then frequency, then presence
        z = np.where(seen, np.where(z > 0, z / repetition_penalty, z * repetition_penalty), z)
        z = z - frequency_penalty * counts - presence_penalty * seen
        if temperature < 1e-5:  # greedy on the penalised logits
            out[i, int(np.argmax(z))] = 1.0
            continue
        z = z / temperature
        if min_p > 0.0:  # MinPLogitsProcessor.apply
            p = np.exp(z - z.max())
            p /= p.sum()
            z = np.where(p < p.max() * min_p, -np.inf, z)
        k = int(top_k or 0)
        use_k = 0 < k < vocab
        if use_k or top_p < 1.0:  # apply_top_k_top_p
            order = np.lexsort((-np.arange(vocab), z))  # ascending; ties: higher id first
            zs = z[order]
            if use_k:
                zs = np.where(zs < zs[vocab - k], -np.inf, zs)
            if top_p < 1.0:
                ps = np.exp(zs - zs.max())
                ps /= ps.sum()
                mask = np.cumsum(ps) <= 1 - top_p
                mask[-1] = False
                zs = np.where(mask, -np.inf, zs)
            z = np.empty_like(zs)
            z[order] = zs
        p = np.exp(z - z.max())
        out[i] = p / p.sum()
    return out


VLLM_SETS = [
    {"temperature": 0.7, "min_p": 0.05, "top_k": 50, "top_p": 0.9},
    {"temperature": 1.0, "min_p": 0.2, "top_k": 0, "top_p": 0.8},
    {"temperature": 1.3, "min_p": 0.0, "top_k": 20, "top_p": 1.0},
    {"temperature": 0.5, "min_p": 0.1, "top_k": 5, "top_p": 0.6},
    {"temperature": 1.0, "min_p": 0.3, "top_k": 0, "top_p": 0.75},
    {"temperature": 0.0, "min_p": 0.3, "top_k": 3, "top_p": 0.5, "repetition_penalty": 1.5},
    {"temperature": 0.9, "min_p": 0.02, "top_k": 40, "top_p": 0.95, "repetition_penalty": 1.2,
     "frequency_penalty": 0.5, "presence_penalty": -0.3},
]  # fmt: skip


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kw", VLLM_SETS, ids=[str(i) for i in range(len(VLLM_SETS))])
def test_vllm_order_equals_vllm_sampler(impl, kw):
    rng = np.random.default_rng(77)
    compared = total = 0
    for scale, vocab in ((1.0, 300), (4.0, 2000), (0.2, 50)):
        x = (rng.standard_normal((10, vocab)) * scale).astype(np.float32)
        hist = rng.integers(-1, vocab, size=(10, 30))
        want = vllm_probs(x.astype(np.float64), hist, **kw)
        call = dict(kw, history=hist, order="vllm")
        got = np.atleast_2d(impl(x, **call))
        compared += compare_with_port(got, want, x, call, _eps(impl, x), f"scale {scale}")
        total += x.shape[0]
    assert compared >= 0.75 * total, f"only {compared} of {total} rows compared"


def test_vllm_port_ties():
    """vLLM's top-k keeps the ties at the k-th value, as we do (plateau of 3 at the top)."""
    x = np.array([[2.0, 2.0, 2.0, 1.0, 0.0]])
    want = vllm_probs(x, np.zeros((1, 0), np.int64), top_k=2)
    np.testing.assert_allclose(want[0], [1 / 3, 1 / 3, 1 / 3, 0, 0])
    np.testing.assert_allclose(oracle_probs(x, top_k=2, order="vllm"), want)


# ---------------------------------------------------------------------------------------------
# test-sampling.cpp's test_sampler_queue, as custom orders.
# ---------------------------------------------------------------------------------------------


def _queue_logits():
    with np.errstate(divide="ignore"):
        return logits_of(np.arange(10000))  # logf(token_id): token 0 is -inf


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("samplers", "top_k", "top_p", "min_p"), QUEUE_CASES,
                         ids=[f"{s}-{k}-{p}-{m:.6g}" for s, k, p, m in QUEUE_CASES])  # fmt: skip
def test_llama_cpp_sampler_queue(impl, samplers, top_k, top_p, min_p):
    lo, margins = queue_expected(10000, samplers, top_k, top_p, min_p)
    # every top_p / min_p decision is clear of its threshold by more than float32 rounding
    assert all(m > 5e-6 for m in margins), margins
    kw = {"order": [QUEUE_STAGE[c] for c in samplers], "min_tokens_to_keep": 1}
    if "k" in samplers:
        kw["top_k"] = top_k
    if "p" in samplers:
        kw["top_p"] = top_p
    if "m" in samplers:
        kw["min_p"] = min_p
    got = impl(_queue_logits(), **kw)
    kept = np.flatnonzero(got > 0)
    assert kept.size == 10000 - lo and kept[0] == lo and kept[-1] == 9999, (lo, kept[:3], kept.size)
    ids = np.arange(lo, 10000, dtype=np.float64)  # p ~ id over the kept range
    np.testing.assert_allclose(got[lo:], ids / ids.sum(), rtol=2e-5, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Custom orders.
# ---------------------------------------------------------------------------------------------


@st.composite
def custom_order_cases(draw):
    """stage_cases with a custom order: a permutation of every stage, or of exactly the
    stages that are on in some row (plus a random subset of the others)."""
    case = draw(stage_cases(order=False))
    # the per-row parameters, as the oracle reads them
    rows = stage_rows(case.logits, **case.kwargs)
    on = [n for n in STAGE_NAMES if any(_stage_on(n, r.params) for r in rows)]
    extra = draw(st.lists(st.sampled_from(STAGE_NAMES), unique=True))
    names = list(dict.fromkeys(on + extra))
    perm = draw(st.permutations(names))
    case.kwargs["order"] = list(perm) if draw(st.booleans()) else tuple(perm)
    return case


@given(custom_order_cases())
def test_custom_order_matches_oracle(case):
    got = ts.probs(case.logits, **case.kwargs)
    check_rows(got, case.logits, case.kwargs)


def _stage_keywords(stage: str) -> tuple[str, ...]:
    return {
        "temperature": ("temperature", "dynatemp_range", "dynatemp_exponent"),
        "xtc": ("xtc_probability", "xtc_threshold"),
    }.get(stage, (stage,))


FOLD_KW = {
    "temperature": 0.8, "dynatemp_range": 0.4, "dynatemp_exponent": 1.5, "top_n_sigma": 2.5,
    "top_k": 60, "top_p": 0.9, "min_p": 0.03, "typical_p": 0.9, "epsilon_cutoff": 2e-3,
    "eta_cutoff": 1e-3, "xtc_probability": 1.0, "xtc_threshold": 0.08, "min_tokens_to_keep": 4,
}  # fmt: skip


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("seed", range(6))
def test_order_is_a_composition_of_stages(impl, seed):
    """order=[s1, ..., sn] equals applying s1 alone, then s2 alone to log of the result, ...
    (each stage sees the softmax of the current logits over the tokens still kept). float64
    logits; rows where the oracle finds a decision within float64 rounding are skipped."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 400)) * float(rng.choice([0.5, 1.5, 3.0]))
    hist = rng.integers(0, 400, size=(6, 10))
    order = list(rng.permutation(STAGE_NAMES))
    direct = np.atleast_2d(impl(x, order=order, history=hist, repetition_penalty=1.2, **FOLD_KW))
    cur = x
    for j, stage in enumerate(order):
        kw = {k: FOLD_KW[k] for k in _stage_keywords(stage) if k in FOLD_KW}
        kw["min_tokens_to_keep"] = FOLD_KW["min_tokens_to_keep"]
        if j == 0:  # the penalties run once, before every stage
            kw.update(history=hist, repetition_penalty=1.2)
        q = np.atleast_2d(impl(cur, order=[stage], **kw))
        with np.errstate(divide="ignore"):
            cur = np.log(q)
    traces = stage_rows(x, order=order, history=hist, repetition_penalty=1.2, eps=EPS64, **FOLD_KW)
    compared = 0
    for i, tr in enumerate(traces):
        if tr.ambiguous:
            continue
        compared += 1
        np.testing.assert_array_equal(direct[i] > 0, q[i] > 0, err_msg=f"row {i} {order}")
        np.testing.assert_allclose(direct[i], q[i], rtol=1e-9, atol=1e-12, err_msg=f"row {i}")
    assert compared >= 3


# ---------------------------------------------------------------------------------------------
# Invalid orders; the default order.
# ---------------------------------------------------------------------------------------------

X = np.array([[1.0, 2.0, 0.5, -1.0], [0.0, 0.3, 0.2, 0.1]], np.float32)
BAD_ORDERS = [
    ("unknown preset", "bogus", {}),
    ("unknown stage", ["top_k", "bogus"], {"top_k": 2}),
    ("duplicate", ["top_k", "top_p", "top_k"], {"top_k": 2, "top_p": 0.9}),
    ("on but missing", ["top_k"], {"top_k": 2, "top_p": 0.9}),
    ("typical missing", ["top_p"], {"top_p": 0.9, "typical_p": 0.5}),
    ("xtc missing", list(STAGE_NAMES[:-1]), {"xtc_probability": 0.5, "seed": 1}),
    ("temperature missing", ["top_k"], {"top_k": 2, "temperature": 0.5}),
    ("greedy: temperature missing", ["top_k"], {"temperature": 0.0}),
    ("dynatemp: temperature missing", ["top_p"], {"dynatemp_range": 0.5}),
    ("on in one row only", ["top_k"], {"top_k": 2, "top_p": [1.0, 0.9]}),
    ("empty with a stage on", [], {"min_p": 0.1}),
]  # fmt: skip
GOOD_ORDERS = [
    ("off stages may be listed", ["top_k", "typical_p", "xtc"], {"top_k": 2}),
    ("empty, nothing on", [], {}),
    ("temperature 1 needs no entry", ["top_p"], {"top_p": 0.9, "temperature": 1.0}),
    ("min_tokens_to_keep is no stage", ["top_p"], {"top_p": 0.9, "min_tokens_to_keep": 2}),
    ("a tuple", ("min_p", "temperature"), {"min_p": 0.1, "temperature": 0.7}),
]  # fmt: skip


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("what", "order", "kw"), BAD_ORDERS, ids=[b[0] for b in BAD_ORDERS])
def test_invalid_order_raises(impl, what, order, kw):
    with pytest.raises(ValueError, match="order") as err:
        impl(X, order=order, **kw)
    if impl is _kernel:
        assert isinstance(err.value, ts.SamplingError)
        kw = {k: v for k, v in kw.items() if k != "seed"}
        with pytest.raises(ts.SamplingError, match="order"):
            ts.sample(X, order=order, seed=0, **kw)
        with pytest.raises(ts.SamplingError, match="order"):
            ts.Sampler(order=order, **kw)(X)
    if isinstance(order, str) or what in ("unknown stage", "duplicate"):
        with pytest.raises(ValueError, match="order"):
            resolve_order(order)


def test_invalid_order_at_construction():
    for order in ("bogus", ["top_k", "top_k"], ["nope"]):
        with pytest.raises(ts.SamplingError, match="order"):
            ts.SamplingParams(order=order)
    with pytest.raises(ts.SamplingError, match="order"):
        ts.SamplingParams(order=["top_k"], top_p=0.5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize(("what", "order", "kw"), GOOD_ORDERS, ids=[g[0] for g in GOOD_ORDERS])
def test_valid_custom_order(impl, what, order, kw):
    got = np.atleast_2d(impl(X, order=order, **kw))
    want = oracle_probs(X, order=order, **kw)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@given(stage_cases(order=False), seeds)
def test_default_order_is_hf(case, seed):
    kw = case.kwargs
    p = ts.probs(case.logits, **kw)
    np.testing.assert_array_equal(p, ts.probs(case.logits, order="hf", **kw))
    np.testing.assert_array_equal(ts.sample(case.logits, seed=seed, **kw),
                                  ts.sample(case.logits, seed=seed, order="hf", **kw))  # fmt: skip
    history = kw.get("history")
    params = ts.SamplingParams(**{k: v for k, v in kw.items() if k != "history"})
    np.testing.assert_array_equal(ts.probs(case.logits, params, history=history), p)
    np.testing.assert_array_equal(ts.probs(case.logits, params, history=history, order="hf"), p)
    event("compared")


def test_oracle_default_order_is_hf():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 50))
    kw = {"top_p": 0.8, "min_p": 0.1, "typical_p": 0.9, "temperature": 0.7}
    np.testing.assert_array_equal(oracle_probs(x, **kw), oracle_probs(x, order="hf", **kw))
    assert resolve_order(None) == ORDERS["hf"]
