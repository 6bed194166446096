"""Inputs are never modified (issue #6): the bytes of the logits, history and logit_bias
(numpy arrays and torch tensors, and the whole buffer behind a view) are identical before and
after every public call: ``sample`` (with and without log-probabilities), ``probs`` and
``Sampler.__call__``, with every pipeline stage switched on (bias, bans, all penalties
including the k-scaling shift, temperature, top-k/top-p/min-p, greedy), in every layout, and
also when the call raises.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tokensampler as ts

torch = pytest.importorskip("torch")

B, V = 3, 257
ALL_ON = {
    "temperature": 0.7,
    "top_k": 50,
    "top_p": 0.9,
    "min_p": 0.01,
    "repetition_penalty": 1.3,
    "frequency_penalty": 0.2,
    "presence_penalty": 0.1,
    "frequency_scale": 1.1,
    "presence_scale": 1.2,
}
VARIANTS: dict[str, dict[str, Any]] = {
    "all-on": ALL_ON,
    "greedy": {**ALL_ON, "temperature": 0.0},
    "sparse-top-k": {"top_k": 3, "presence_scale": 2.0},
    "per-row": {"temperature": [0.5, 0.0, 2.0], "top_p": np.array([0.5, 1.0, 0.9])},
    "plain": {},
}


def raw_bytes(obj: Any) -> Any:
    """The bytes of `obj` and, for a view, of the whole buffer it lives in."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.dtype in (torch.bfloat16, torch.float16):
            t = t.view(torch.int16)
        storage = torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage()).numpy().tobytes()
        return (t.numpy().tobytes(), storage)
    if isinstance(obj, np.ndarray):
        base = obj
        while isinstance(base.base, np.ndarray):
            base = base.base
        return (obj.tobytes(), base.tobytes())
    if isinstance(obj, dict):
        return repr(sorted(obj.items()))
    if isinstance(obj, (list, tuple)):
        return [raw_bytes(o) for o in obj]
    return repr(obj)


def make_logits(kind: str, layout: str) -> Any:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B, V)) * 3
    # Negative logits (the k-scaling shift), ties, +inf and -inf (bans) all present.
    x[0, :5] = -20.0
    x[1, 10:14] = 1.0
    x[2, 7] = np.inf
    x[2, 8] = -np.inf
    if kind.startswith("np."):
        a = x.astype(getattr(np, kind[3:]))
        if layout == "strided":
            big = np.zeros((B, 2 * V), dtype=a.dtype)
            big[:, ::2] = a
            return big[:, ::2]
        if layout == "transposed":
            return np.asfortranarray(a)
        if layout == "reversed":
            return a[::-1].copy()[::-1]
        return a
    t = torch.from_numpy(x).to(getattr(torch, kind[6:]))
    if layout == "strided":
        big = torch.zeros((B, 2 * V), dtype=t.dtype)
        big[:, ::2] = t
        return big[:, ::2]
    if layout in ("transposed", "reversed"):
        return t.t().contiguous().t()
    return t


def make_history(form: str) -> Any:
    h = np.random.default_rng(1).integers(-1, V, size=(B, 20))
    h[:, 0] = 0  # token 0 (a negative logit in row 0) is always seen
    if form == "torch":
        return torch.from_numpy(h)
    if form == "rows":
        return [h[i, : 5 + i].copy() for i in range(B)]
    return h


def make_bias(form: str) -> Any:
    dense = np.zeros((B, V))
    dense[:, 3] = -np.inf
    dense[:, 9] = 2.5
    if form == "dict":
        return {3: -np.inf, 9: 2.5, 100: -1.0}
    if form == "dicts":
        return [{3: -np.inf}, {9: 2.5}, {}]
    if form == "torch":
        return torch.from_numpy(dense)
    if form == "dense-1d":
        return dense[0].copy()
    return dense


CallFn = Callable[[Any, Any, Any, dict[str, Any]], Any]
CALLS: dict[str, CallFn] = {
    "sample": lambda x, h, b, kw: ts.sample(x, history=h, logit_bias=b, seed=3, **kw),
    "sample-logprobs": lambda x, h, b, kw: ts.sample(
        x, history=h, logit_bias=b, seed=[1, 2, 3], logprobs=True, top_logprobs=4, **kw
    ),
    "probs": lambda x, h, b, kw: ts.probs(x, history=h, logit_bias=b, **kw),
    "Sampler": lambda x, h, b, kw: ts.Sampler(seed=5, logit_bias=b, **kw)(x, history=h),
    "Sampler-call-bias": lambda x, h, b, kw: ts.Sampler(seed=5, logprobs=True, **kw)(
        x, history=h, logit_bias=b, keepdim=True
    ),
}
KINDS = ["np.float16", "np.float32", "np.float64"] + [
    "torch.bfloat16",
    "torch.float16",
    "torch.float32",
    "torch.float64",
]


def check_untouched(call: CallFn, x: Any, h: Any, b: Any, kw: dict[str, Any]) -> bool:
    """Makes the call; asserts every input is byte-identical afterwards. True if it raised."""
    before = [raw_bytes(o) for o in (x, h, b, kw)]
    raised = False
    try:
        call(x, h, b, kw)
    except (ValueError, TypeError):
        raised = True
    after = [raw_bytes(o) for o in (x, h, b, kw)]
    for name, u, w in zip(("logits", "history", "logit_bias", "parameters"), before, after):
        assert u == w, f"{name} modified"
    return raised


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("layout", ["contiguous", "strided", "transposed", "reversed"])
@pytest.mark.parametrize("kind", KINDS)
def test_inputs_untouched(kind: str, layout: str, variant: str) -> None:
    x = make_logits(kind, layout)
    kw = VARIANTS[variant]
    is_torch = kind.startswith("torch")
    for i, (name, call) in enumerate(sorted(CALLS.items())):
        h = make_history(["torch" if is_torch else "array", "rows", "array"][i % 3])
        b = make_bias(["torch" if is_torch else "dense", "dict", "dicts", "dense-1d"][i % 4])
        assert not check_untouched(call, x, h, b, kw), f"{name} raised"


ERRORS: dict[str, Callable[[Any], tuple[Any, Any, Any, dict[str, Any]]]] = {
    # (logits, history, bias, keywords) built from good logits `x`
    "nan-row": lambda x: (_with_nan(x), make_history("array"), make_bias("dense"), ALL_ON),
    "history-id-too-big": lambda x: (x, make_history("array") + V, make_bias("dict"), ALL_ON),
    "bad-parameter": lambda x: (x, make_history("rows"), make_bias("dense"), {"top_p": 0}),
    "per-row-length": lambda x: (x, None, None, {"temperature": np.array([0.5, 1.0])}),
    "bias-shape": lambda x: (x, None, np.zeros(V + 1), {}),
    "all-banned": lambda x: (x, None, np.full((B, V), -np.inf), {}),
}


def _with_nan(x: Any) -> Any:
    y = x.clone() if isinstance(x, torch.Tensor) else x.copy()
    y[1, 2] = float("nan")
    return y


@pytest.mark.parametrize("error", sorted(ERRORS))
@pytest.mark.parametrize("kind", ["np.float32", "np.float16", "torch.bfloat16", "torch.float64"])
def test_inputs_untouched_when_the_call_raises(kind: str, error: str) -> None:
    x, h, b, kw = ERRORS[error](make_logits(kind, "strided"))
    for name, call in sorted(CALLS.items()):
        assert check_untouched(call, x, h, b, kw), f"{name} did not raise for {error}"
