"""Real-sized vocabularies against the float64 oracle.

The property tests keep V <= 5000 for speed; the fast paths only change shape above that:
the streaming top-k's running threshold, top-p's strided-sample bracket (a stride above
1 starts at V = 8192), and typical-p's sampled bracket (rows of 4,096 tokens or more). These cases check those paths on 32k-152k vocabularies with flat,
peaky, plateau and heavy-tailed rows, in float32 and bfloat16.
"""

from __future__ import annotations

import numpy as np
import pytest
import tokensampler as ts
from oracle import EPS32, check_row, check_sampled, check_stage_row, oracle_rows, stage_rows


def _rows(kind: str, b: int, v: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "flat":
        x = rng.standard_normal((b, v)) * 0.3
    elif kind == "normal3":
        x = rng.standard_normal((b, v)) * 3
    elif kind == "peaky":
        x = rng.standard_normal((b, v))
        x[:, rng.integers(0, v, 5)] += 12  # a few tokens hold most of the mass, like an LM
    elif kind == "plateau":
        x = np.floor(rng.standard_normal((b, v)) * 2)  # many exact ties
    else:  # heavy tail: Gumbel-distributed logits
        x = rng.gumbel(size=(b, v)) * 2
    x[:, rng.integers(0, v, 50)] = -np.inf
    return x.astype(np.float32)


CASES = [
    dict(top_p=0.9),
    dict(top_p=0.5, temperature=0.7),
    dict(top_p=0.999),
    dict(top_p=1e-4),
    dict(min_p=0.05),
    dict(top_p=0.95, min_p=0.01, temperature=1.3),
    dict(top_k=50),
    dict(top_k=40, top_p=0.9, temperature=0.8, repetition_penalty=1.2),
    dict(top_k=20000, top_p=0.8),
    dict(temperature=0.0),
]

# Typical-p: a peaked row's threshold comes from a sampled bracket, a flat row's from the
# histogram of every key (rust/stages.rs `key_threshold`).
TYPICAL_CASES = [
    dict(typical_p=0.9, temperature=0.7),
    dict(typical_p=0.5),
    dict(typical_p=0.99, temperature=1.5),
    dict(typical_p=0.2, temperature=0.5),
]


@pytest.mark.parametrize("v", [32000, 128256, 151936])
@pytest.mark.parametrize("kind", ["flat", "normal3", "peaky", "plateau", "gumbel"])
def test_large_vocab_matches_oracle(v: int, kind: str) -> None:
    rng = np.random.default_rng(v + len(kind))
    x = _rows(kind, 2, v, rng)
    hist = rng.integers(0, v, (2, 300))
    for params in CASES:
        got = ts.probs(x, history=hist, **params)
        traces = oracle_rows(x.astype(np.float64), history=hist, **params)
        ids = ts.sample(x, history=hist, seed=7, **params)
        for r, trace in enumerate(traces):
            where = f"V={v} {kind} {params} row {r}"
            check_row(got[r], trace, EPS32, where)
            check_sampled(int(ids[r]), trace, EPS32, where)


@pytest.mark.parametrize("kind", ["normal3", "peaky"])
def test_bfloat16_large_vocab_equals_float32_of_same_values(kind: str) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    t = torch.from_numpy(_rows(kind, 3, 128256, rng)).bfloat16()
    for params in CASES:
        a = ts.probs(t, **params)
        b = ts.probs(t.float(), **params)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("v", [32000, 128256])
@pytest.mark.parametrize("kind", ["flat", "normal3", "peaky", "plateau", "gumbel", "boosted"])
def test_large_vocab_typical_matches_oracle(v: int, kind: str) -> None:
    rng = np.random.default_rng(v + 3 * len(kind))
    if kind == "boosted":
        # As benches/compare.py makes its rows: a bulk of std 2 and 32 boosted tokens per
        # row, of strengths that leave some rows peaked and some not.
        x = rng.standard_normal((6, v)) * 2
        for r in range(6):
            x[r, rng.integers(0, v, 32)] += (0.6 + 0.4 * rng.random()) * (6 + 10 * rng.random(32))
        x = x.astype(np.float32)
    else:
        x = _rows(kind, 3, v, rng)
    for params in TYPICAL_CASES:
        got = ts.probs(x, **params)
        for r, trace in enumerate(stage_rows(x, **params)):
            check_stage_row(got[r], trace, f"V={v} {kind} {params} row {r}")
