"""DRY and mirostat in `tokensampler.generate` with the real embedded SmolLM2 (issue #16).

- DRY stops a loop: the prompt "the cat sat on the mat." three times, continued greedily
  (temperature 0, so the test is deterministic; no chat template, eos ignored, 64 new tokens),
  makes SmolLM2 repeat itself: its generated ids hold 8-grams that already occurred among them
  (15 when this test was written). With ``dry_multiplier=0.8`` (llama.cpp's default breakers,
  tokenized with SmolLM2's tokenizer) there is none. Only the first claim ("some repeat")
  and the second ("none") are asserted, not the count.
- mirostat 2 carries a state per row through the loop: the same seed gives the same text, and
  a `Sampler` paused mid-generation (`state_dict`) and restored into a fresh one
  (`load_state_dict`) continues with exactly the ids of the uninterrupted run, driving the
  model's forward step by step here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from model_helpers import default_model, require_default_model

torch = pytest.importorskip("torch")
require_default_model()

import tokensampler as ts
from tokensampler.generate import generate, prompt_token_ids, sampling_params

PROMPT = "the cat sat on the mat. the cat sat on the mat. the cat sat on the mat."
LOOP = {"chat": False, "temperature": 0, "ignore_eos": True, "max_new_tokens": 64}
N = 8  # the n-gram length the issue names
MIRO = {"temperature": 1.0, "top_p": None, "mirostat": 2, "mirostat_tau": 3.0}
MIRO_NEW = 24


@pytest.fixture(scope="module")
def smol() -> tuple[Any, Any]:
    return default_model()


def repeated_ngrams(ids: list[int], n: int = N) -> int:
    """How many n-grams of `ids` (by start position) already occurred earlier in `ids`."""
    seen: set[tuple[int, ...]] = set()
    count = 0
    for i in range(len(ids) - n + 1):
        gram = tuple(ids[i : i + n])
        count += gram in seen
        seen.add(gram)
    return count


def test_repeated_ngrams_by_hand() -> None:
    assert repeated_ngrams([1, 2, 3, 1, 2, 3, 1], 3) == 2  # (1 2 3) and (2 3 1) again
    assert repeated_ngrams(list(range(20)), 3) == 0


def test_dry_stops_the_loop(smol: tuple[Any, Any]) -> None:
    model, tok = smol
    plain = generate(model, tok, PROMPT, **LOOP)
    assert len(plain.token_ids[0]) == LOOP["max_new_tokens"]
    assert repeated_ngrams(plain.token_ids[0]) > 0, plain.texts[0]
    dry = generate(model, tok, PROMPT, dry_multiplier=0.8, **LOOP)
    assert len(dry.token_ids[0]) == LOOP["max_new_tokens"]
    assert repeated_ngrams(dry.token_ids[0]) == 0, dry.texts[0]


def test_mirostat_generate_is_reproducible(smol: tuple[Any, Any]) -> None:
    model, tok = smol
    kw = {"chat": False, "ignore_eos": True, "max_new_tokens": MIRO_NEW, **MIRO}
    a = generate(model, tok, PROMPT, seed=11, **kw)
    b = generate(model, tok, PROMPT, seed=11, **kw)
    assert a.texts == b.texts and a.token_ids == b.token_ids
    assert generate(model, tok, PROMPT, seed=12, **kw).token_ids != a.token_ids
    # mirostat acts: the same seed without it draws other tokens
    plain = {k: v for k, v in kw.items() if not k.startswith("mirostat")}
    assert generate(model, tok, PROMPT, seed=11, **plain).token_ids != a.token_ids


@torch.inference_mode()
def _run(model: Any, ids: list[int], sampler: ts.Sampler, steps: int,
         pause_at: int | None = None) -> list[int]:  # fmt: skip
    """Our own decode loop over the model's forward (prefill, then one token per step through
    its KV cache). With `pause_at`, the Sampler's state is saved after that many tokens and
    the rest is drawn by a fresh Sampler of the same parameters that loaded it."""
    cache = model.new_kv_cache(1, len(ids) + steps)
    idx = torch.tensor([ids], dtype=torch.long)
    logits = model(idx, kv_cache=cache, pad=torch.zeros(1, dtype=torch.long), last_only=True)
    out: list[int] = []
    for step in range(steps):
        if step == pause_at:
            state = sampler.state_dict()
            assert state["step"] == step and state["mirostat_mu"] is not None
            sampler = ts.Sampler(sampler.params.replace(seed=None))
            sampler.load_state_dict(state)
        nxt = sampler(logits[:, -1, :])
        out.append(int(nxt[0]))
        logits = model(nxt.view(1, 1), kv_cache=cache)
    return out


def test_mirostat_paused_sampler_resumes_identically(smol: tuple[Any, Any]) -> None:
    model, tok = smol
    prompt_ids = prompt_token_ids(tok, PROMPT, chat=False)[0]  # what generate feeds
    params = sampling_params(model, None, seed=11, **MIRO)  # what generate builds
    want = generate(model, tok, PROMPT, chat=False, ignore_eos=True, max_new_tokens=MIRO_NEW,
                    seed=11, **MIRO).token_ids[0]  # fmt: skip
    whole = ts.Sampler(params)
    assert _run(model, prompt_ids, whole, MIRO_NEW) == want
    mu_end = whole.mirostat_mu
    assert mu_end is not None and np.isfinite(mu_end).all()
    assert mu_end[0] != 2 * MIRO["mirostat_tau"]  # mu moved
    paused = ts.Sampler(params)
    assert _run(model, prompt_ids, paused, MIRO_NEW, pause_at=MIRO_NEW // 2) == want
