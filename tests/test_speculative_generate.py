"""Speculative decoding in `tokensampler.generate` (issue #18; docs/design.md section 12).

1. Prompt lookup drafts what transformers' own `PromptLookupCandidateGenerator`
   (transformers 5.24.0, ``generation/candidate_generator.py``) proposes, on random id
   sequences (no eos, no logits processor, a max_length that does not bind).
2. Greedy: with prompt lookup and with the model as its own draft, the tokens are the plain
   greedy loop's, on the real SmolLM2 (a paragraph to repeat, free text, a batch of two
   prompts of different lengths, a repetition penalty reading the history, stop strings and
   streaming).
3. Sampled: the whole loop (prefill, drafts, one forward per step, `verify`, the KV cache
   rewound, batches whose rows accept different counts) draws 3-token continuations with
   exactly the model's distribution. A tiny random Llama (V = 8, so every continuation has a
   cell) and 6,000 rows with per-row seeds; the exact probability of each continuation is
   the product of `ts.probs` of the plain model at each prefix; chi-square goodness of fit
   over cells with an expected count >= 5 (the rest pooled), failing at p < 1e-3.
4. Stats, the CLI summary line, and the options refused with speculation.
"""

from __future__ import annotations

import inspect
import io
import itertools
from contextlib import redirect_stderr, redirect_stdout
from typing import Any

import numpy as np
import pytest
from model_helpers import default_model, random_model, require_default_model, tiny_llama_config

torch = pytest.importorskip("torch")

import tokensampler as ts
from tokensampler.generate import generate, stream
from tokensampler.speculative import PromptLookup

PARAGRAPH = (
    "The old lighthouse stood at the edge of the cliff for more than a century. Sailors "
    "trusted its beam on stormy nights, and the keeper, a quiet man named Elias, climbed its "
    "spiral stairs every evening to light the lamp."
)
REPEAT = "Repeat the following paragraph exactly:\n\n" + PARAGRAPH


# ---- 1. prompt lookup is Hugging Face's ------------------------------------------------------


@pytest.mark.transformers
@pytest.mark.parametrize("max_ngram", [1, 2, 3])
def test_prompt_lookup_drafts_what_hf_proposes(max_ngram: int) -> None:
    from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

    params = inspect.signature(PromptLookupCandidateGenerator.get_candidates).parameters
    rng = np.random.default_rng(max_ngram)
    for trial in range(300):
        n = int(rng.integers(1, 30))
        seq = rng.integers(0, 4, size=n).tolist()
        k = int(rng.integers(1, 6))
        # An eos id that never occurs (transformers 5.0 requires one; it cuts drafts there).
        hf = PromptLookupCandidateGenerator(
            eos_token_id=torch.tensor([999]), num_output_tokens=k,
            max_matching_ngram_size=max_ngram, max_length=10**6,
        )  # fmt: skip
        # transformers 5.0 also takes `is_first_iteration` (which prompt lookup ignores).
        extra = {"is_first_iteration": trial == 0} if "is_first_iteration" in params else {}
        cand, _ = hf.get_candidates(torch.tensor([seq]), **extra)
        want = cand[0, n:].tolist()
        got = PromptLookup(max_ngram).draft([seq], k)[0]
        assert got == want, (trial, seq, k)


def test_prompt_lookup_by_hand() -> None:
    lookup = PromptLookup(2)
    assert lookup.draft([[5, 6, 7, 8, 5, 6]], 3) == [[7, 8, 5]]
    assert lookup.draft([[1, 2, 3]], 3) == [[]]  # no earlier match
    assert lookup.draft([[9, 1, 9, 2, 9]], 2) == [[1, 9]]  # the 1-gram's first match
    assert lookup.draft([[4, 4]], 0) == [[]]
    with pytest.raises(ValueError, match=">= 1"):
        PromptLookup(0)


# ---- 2. greedy equals the plain loop ---------------------------------------------------------


@pytest.fixture(scope="module")
def smol() -> tuple[Any, Any]:
    require_default_model()
    return default_model()


SPECULATIONS = [
    {"speculative": "prompt_lookup"},
    {"speculative": "prompt_lookup", "num_speculative_tokens": 8, "prompt_lookup_max_ngram": 3},
    "self",
]


def _spec(kw: Any, model: Any) -> dict[str, Any]:
    return {"draft_model": model, "num_speculative_tokens": 3} if kw == "self" else dict(kw)


@pytest.mark.parametrize("kw", SPECULATIONS, ids=["lookup", "lookup-k8", "self-draft"])
@pytest.mark.parametrize(
    "prompts, extra",
    [
        (REPEAT, {}),
        ("Write a haiku about rivers.", {}),
        ([REPEAT, "Name three colours."], {}),
        (REPEAT, {"repetition_penalty": 1.3}),
    ],
    ids=["repeat", "free", "batch", "penalty"],
)
def test_greedy_equals_plain_greedy(smol: tuple[Any, Any], kw: Any, prompts: Any,
                                    extra: dict[str, Any]) -> None:  # fmt: skip
    model, tok = smol
    common = {"max_new_tokens": 40, "temperature": 0, "chat": True, **extra}
    plain = generate(model, tok, prompts, **common)
    spec = generate(model, tok, prompts, **common, **_spec(kw, model))
    assert spec.token_ids == plain.token_ids
    assert spec.texts == plain.texts
    assert spec.finish_reasons == plain.finish_reasons
    for a, b in zip(spec.logprobs, plain.logprobs):
        np.testing.assert_allclose(a, b, atol=1e-4)
    if prompts is REPEAT:
        assert spec.stats.drafted > 0 and spec.stats.accepted > 0
        assert spec.stats.steps < plain.stats.steps  # several tokens per forward pass


def test_stop_strings_and_streaming_as_plain(smol: tuple[Any, Any]) -> None:
    model, tok = smol
    common = {"max_new_tokens": 60, "temperature": 0, "chat": True, "stop": ["Elias"]}
    plain = generate(model, tok, REPEAT, **common)
    s = stream(model, tok, REPEAT, **common, speculative="prompt_lookup")
    events = list(s)
    assert plain.finish_reasons == ["stop"] == s.result.finish_reasons
    assert "".join(e.text for e in events) == plain.texts[0] == s.result.texts[0]
    assert [e.token_id for e in events] == plain.token_ids[0]
    assert events[-1].finish_reason == "stop"


# ---- 3. sampled: exactly the model's distribution --------------------------------------------


def test_sampled_continuations_follow_the_model() -> None:
    from scipy import stats as sps

    v, new = 8, 3
    model = random_model(tiny_llama_config(vocab_size=v, max_seq_len=64), seed=3, scale=60)
    prompt = [1, 2, 3, 1, 2, 3, 1, 2]  # prompt lookup drafts 3, 1, 2, ...
    params = {"temperature": 1.0, "max_new_tokens": new, "ignore_eos": True}

    # The exact law of a continuation: the product of the plain model's next-token
    # probabilities (the generate loop's own pipeline, ts.probs) at each prefix.
    @torch.inference_mode()
    def next_probs(prefix: list[int]) -> np.ndarray:
        logits = model(torch.tensor([prefix]))[0, -1]
        return np.asarray(ts.probs(logits.double().numpy(), temperature=1.0))

    exact: dict[tuple[int, ...], float] = {}
    for cont in itertools.product(range(v), repeat=new):
        p, prefix = 1.0, list(prompt)
        for t in cont:
            p *= next_probs(prefix)[t] if p > 0 else 0.0
            prefix.append(t)
        exact[cont] = p
    assert abs(sum(exact.values()) - 1) < 1e-6

    rows, batch = 6000, 500
    counts: dict[tuple[int, ...], int] = {}
    drafted = 0
    for start in range(0, rows, batch):
        g = generate(model, None, [prompt] * batch, seed=list(range(start, start + batch)),
                     speculative="prompt_lookup", num_speculative_tokens=3, **params)  # fmt: skip
        drafted += g.stats.drafted
        for ids in g.token_ids:
            counts[tuple(ids)] = counts.get(tuple(ids), 0) + 1
    assert drafted > 0
    big = [c for c in exact if exact[c] * rows >= 5]
    obs = [counts.get(c, 0) for c in big]
    exp = [exact[c] * rows for c in big]
    rest_obs, rest_exp = rows - sum(obs), rows - sum(exp)
    if rest_exp >= 5:
        obs.append(rest_obs)
        exp.append(rest_exp)
    else:
        assert rest_obs <= 5 + 5 * max(rest_exp, 1) ** 0.5
    chi2 = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    p_value = sps.chi2.sf(chi2, len(obs) - 1)
    assert p_value > 1e-3, (chi2, len(obs), p_value)


# ---- 4. stats, CLI, refusals ----------------------------------------------------------------


def test_cli_summary_reports_drafts(smol: tuple[Any, Any]) -> None:
    from tokensampler.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["generate", REPEAT, "--temperature", "0", "--max-new-tokens", "24",
                     "--speculative", "prompt_lookup", "--num-speculative-tokens", "4"])  # fmt: skip
    assert code == 0
    assert "drafts accepted" in err.getvalue()
    assert PARAGRAPH[:30] in out.getvalue()
    with redirect_stdout(io.StringIO()), redirect_stderr(err := io.StringIO()):
        assert main(["generate", "hi", "--num-speculative-tokens", "0"]) == 2
    assert "--num-speculative-tokens must be >= 1" in err.getvalue()


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"speculative": "ngram"}, "prompt_lookup"),
        ({"speculative": "prompt_lookup", "num_speculative_tokens": 0}, ">= 1"),
        ({"speculative": "prompt_lookup", "mirostat": 2}, "mirostat"),
        ({"speculative": "prompt_lookup", "logprob_token_ids": [1]}, "logprob_token_ids"),
        ({"speculative": "prompt_lookup", "on_invalid": "skip"}, "on_invalid"),
    ],
)
def test_refused_options(kw: dict[str, Any], match: str) -> None:
    model = random_model(tiny_llama_config(vocab_size=16), seed=1)
    with pytest.raises(ValueError, match=match):
        generate(model, None, [1, 2, 3], max_new_tokens=2, **kw)
    with pytest.raises(ValueError, match="not both"):
        generate(model, None, [1, 2, 3], max_new_tokens=2, speculative="prompt_lookup",
                 draft_model=model)  # fmt: skip
