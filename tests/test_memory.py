"""Memory (issue #6): no leak of memory or of Python references, in success and error paths.

- RSS grows by less than 10 MB over 100,000 calls of each public function (small inputs,
  V = 64, after a warm-up), including 100,000 calls that raise;
- ``sys.getrefcount`` of the logits, history and bias objects (numpy and torch) is the same
  before and after calls, including calls that raise;
- 2,000 steps of ``tokensampler.generate`` on a tiny randomly initialised model grow RSS by
  less than 10 MB.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tokensampler as ts

try:
    import torch
except ImportError:
    torch = None

CALLS = int(os.environ.get("TOKENSAMPLER_MEMORY_CALLS", "100000"))
WARMUP = 2_000
MAX_GROWTH = 10 * 2**20  # bytes
V = 64
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """Resident set size now (not the peak that `resource` reports)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def rss_growth(fn: Callable[[], Any], calls: int = CALLS) -> int:
    """RSS after `calls` calls of `fn` minus RSS after a warm-up."""
    for _ in range(WARMUP):
        fn()
    gc.collect()
    before = rss_bytes()
    for _ in range(calls):
        fn()
    gc.collect()
    return rss_bytes() - before


RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, V)).astype(np.float32)
X1 = X[0].copy()
HIST = RNG.integers(-1, V, size=(2, 12))
BIAS = {3: -np.inf, 5: 1.5}
DENSE = np.zeros((2, V))
DENSE[:, 7] = -np.inf
BAD = X.copy()
BAD[1, 3] = np.nan
SAMPLER = ts.Sampler(seed=7, temperature=0.8, top_k=20, top_p=0.9, repetition_penalty=1.2)


def _raises(fn: Callable[[], Any]) -> Callable[[], None]:
    def call() -> None:
        try:
            fn()
        except ValueError:
            return
        raise AssertionError("expected a ValueError")

    return call


# name -> (call, number of calls). Each public function gets 100,000 plain calls and 100,000
# failing ones; the option-heavy variants (more Python work per call) get fewer to keep the
# file under a minute: a per-call leak of even one small array would still show as > 10 MB.
LEAK_CASES: dict[str, tuple[Callable[[], Any], int]] = {
    "sample": (lambda: ts.sample(X, seed=1, temperature=0.8, top_p=0.9), CALLS),
    "probs": (lambda: ts.probs(X, top_k=10, min_p=0.1), CALLS),
    "Sampler.__call__": (lambda: SAMPLER(X, history=HIST, keepdim=True), CALLS),
    "sample-raises": (_raises(lambda: ts.sample(BAD, seed=1)), CALLS),
    "probs-raises": (_raises(lambda: ts.probs(X, top_p=0.0)), CALLS),
    "Sampler-raises": (_raises(lambda: SAMPLER(X, history=HIST + V)), CALLS),
    "sample-1d-options": (
        lambda: ts.sample(
            X1,
            seed=1,
            history=HIST[0],
            logit_bias=BIAS,
            logprobs=True,
            top_logprobs=3,
            frequency_penalty=0.5,
            min_p=0.05,
        ),
        CALLS // 4,
    ),
    "probs-options": (
        lambda: ts.probs(X, top_k=10, history=HIST, logit_bias=DENSE, presence_scale=1.5),
        CALLS // 5,
    ),
}
if torch is not None:
    XT = torch.from_numpy(X).to(torch.bfloat16)
    LEAK_CASES["sample-torch-bf16"] = (lambda: ts.sample(XT, seed=1, top_k=5), CALLS // 4)
    LEAK_CASES["probs-torch-bf16"] = (lambda: ts.probs(XT, temperature=0.5), CALLS // 4)


@pytest.mark.parametrize("name", sorted(LEAK_CASES))
def test_rss_flat_over_many_calls(name: str) -> None:
    fn, calls = LEAK_CASES[name]
    growth = rss_growth(fn, calls)
    assert growth < MAX_GROWTH, f"{name}: RSS grew {growth / 2**20:.1f} MB over {calls} calls"


# ==== Python references ========================================================================


def _inputs(kind: str) -> dict[str, Any]:
    x = RNG.standard_normal((3, V)).astype(np.float32)
    h = RNG.integers(-1, V, size=(3, 5))
    dense = np.zeros((3, V))
    dense[:, 2] = -np.inf
    if kind == "torch":
        return {
            "x": torch.from_numpy(x).to(torch.bfloat16),
            "x_view": torch.from_numpy(x).t().contiguous().t(),  # non-contiguous rows
            "h": torch.from_numpy(h),
            "dense": torch.from_numpy(dense),
            "dict": {1: 2.0, 4: -np.inf},
            "rows": [torch.from_numpy(r) for r in h],
        }
    return {
        "x": x,
        "x_view": x[:, ::2],  # non-contiguous: copied inside the call
        "h": h,
        "dense": dense,
        "dict": {1: 2.0, 4: -np.inf},
        "rows": [r.copy() for r in h],
    }


def _calls(d: dict[str, Any]) -> list[Callable[[], Any]]:
    nan = d["x"].clone() if torch is not None and isinstance(d["x"], torch.Tensor) else None
    if nan is None:
        nan = d["x"].copy()
    nan[1, 1] = float("nan")
    d["nan"] = nan
    s = ts.Sampler(seed=3, top_k=5, logit_bias=d["dict"])
    return [
        lambda: ts.sample(
            d["x"], seed=1, history=d["h"], logit_bias=d["dense"], frequency_penalty=0.3
        ),
        lambda: ts.sample(
            d["x_view"],
            seed=[1, 2, 3],
            history=d["rows"],
            logit_bias=d["dict"],
            logprobs=True,
            top_logprobs=2,
            presence_scale=1.5,
        ),
        lambda: ts.probs(d["x"], history=d["h"], logit_bias=[d["dict"]] * 3, top_p=0.5),
        lambda: s(d["x"], history=d["h"]),
        lambda: s(d["x_view"], history=d["rows"], logit_bias=d["dense"], keepdim=True),
        # Calls that raise, in the Python layer and in the kernels:
        lambda: ts.sample(d["nan"], seed=1, history=d["h"], logit_bias=d["dense"]),
        lambda: ts.probs(d["x"], history=d["h"], logit_bias=d["dense"], top_p=-1),
        lambda: ts.sample(d["x"], history=d["h"][:2], logit_bias=d["dict"]),
        lambda: ts.probs(d["x"], history=d["h"] + V, repetition_penalty=2.0),
        lambda: s(d["x"][:, :0], history=d["rows"]),
    ]


def _run_all(calls: list[Callable[[], Any]]) -> None:
    for call in calls:
        try:
            call()
        except ValueError:
            pass


def refcount_drift(kind: str, rounds: int = 50) -> dict[str, tuple[int, int]]:
    """Runs every call of `_calls` `rounds` times on `kind` inputs; returns the inputs whose
    reference count changed, as (before, after). Empty means no leaked reference."""
    d = _inputs(kind)
    calls = _calls(d)
    objs = {k: v for k, v in d.items()}
    # The base arrays of views too (a leaked view would keep its base alive).
    if kind == "numpy":
        objs["x_view.base"] = d["x_view"].base
    _run_all(calls)  # warm-up: lazy caches (the Sampler's parameter matrix) fill here
    gc.collect()
    before = {k: sys.getrefcount(v) for k, v in objs.items()}
    for _ in range(rounds):
        _run_all(calls)
    gc.collect()
    after = {k: sys.getrefcount(v) for k, v in objs.items()}
    return {k: (before[k], after[k]) for k in objs if before[k] != after[k]}


@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_no_reference_leaks(kind: str) -> None:
    if kind == "torch" and torch is None:
        pytest.skip("torch not installed")
    assert refcount_drift(kind) == {}


# ==== generate ================================================================================

HAS_GENERATE = importlib.util.find_spec("tokensampler.generate") is not None


@pytest.mark.skipif(torch is None or not HAS_GENERATE, reason="needs torch and the model layer")
def test_generate_2000_steps_rss_flat() -> None:
    from model_helpers import random_model, tiny_llama_config
    from tokensampler.generate import generate

    model = random_model(tiny_llama_config(vocab_size=300, max_seq_len=64), seed=0)
    steps = 40  # tokens per call: 50 calls make 2,000 generate steps

    def one_call() -> None:
        out = generate(
            model,
            None,
            [[1, 2, 3]],
            max_new_tokens=steps,
            ignore_eos=True,
            seed=1,
            temperature=0.9,
            top_p=0.95,
            repetition_penalty=1.1,
        )
        assert len(out.token_ids[0]) == steps

    # One torch thread: tiny matmuls only lose to thread hand-offs (10x slower on a busy
    # 2-core machine), and RSS is what is measured here, not speed.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(3):
            one_call()
        gc.collect()
        before = rss_bytes()
        for _ in range(2_000 // steps):
            one_call()
        gc.collect()
        growth = rss_bytes() - before
    finally:
        torch.set_num_threads(threads)
    assert growth < MAX_GROWTH, f"generate: RSS grew {growth / 2**20:.1f} MB over 2,000 steps"
