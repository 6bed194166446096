"""The stages, orders and output options of issue #15 reach the sampler from every entry point.

Issue #15: "Everything reachable from SamplingParams, the CLI, generate, the HF processor, and
the converters". test_stages.py / test_orders.py check the kernels; this file checks that each
entry point hands the new fields (typical_p, epsilon_cutoff, eta_cutoff, top_n_sigma,
xtc_probability / xtc_threshold, dynatemp_range / dynatemp_exponent, min_tokens_to_keep,
order, logprobs_mode, logprob_token_ids, on_invalid) to the kernels unchanged:

- `tokensampler.generate.generate` / `stream`: the keyword form, ``params=`` and `stream` give
  the same tokens, and those are exactly what a `ts.Sampler` built from the same keywords draws
  from the logits the loop saw (recorded); the same Sampler without the field draws other
  tokens from those very logits, so a dropped field would show. Properties only a working
  stage gives: ``top_n_sigma`` tiny at temperature 5 is greedy, XTC at threshold 0 always
  takes the least probable token, llama.cpp's order keeps only the temperature-1 nucleus.
- `tokensampler.hf`: the processor's distribution is `ts.probs`'s; inside `model.generate`
  the same properties hold; ``draw=True`` inside `model.generate` and `tokensampler.hf.generate`
  draw what a `ts.Sampler` draws from the recorded logits; XTC's coin varies per step.
- the CLI: every new option reaches the loop's `SamplingParams` and gives the text of
  `generate` with the same keywords; ``--top-n-sigma 0.0001 --temperature 5`` is greedy.
- the converters: the params `from_hf` / `from_llama_cpp` / `from_vllm` build sample exactly as
  the equivalent keywords, and each converted field changes the distribution.

Models are tiny and random (ours: a 1-layer Llama over 300 ids; Hugging Face's: a 1-layer
Llama over 97 ids; the CLI: `model_helpers.write_tiny_gpt2_folder`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import tokensampler as ts
from model_helpers import cli_generate, random_model, tiny_llama_config, write_tiny_gpt2_folder

torch = pytest.importorskip("torch")

from tokensampler.generate import generate, stream

SEED = 3
V = 300
PROMPTS = [[5, 6, 7], [9, 10]]  # token ids: no tokenizer, so no eos and no early stop
GEN = {"max_new_tokens": 12, "ignore_eos": True}

# name -> (keywords with the field on, the same keywords without it). Each field is checked
# against a baseline that differs in that field alone.
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "typical_p": ({"temperature": 1.5, "typical_p": 0.5}, {"temperature": 1.5}),
    "epsilon_cutoff": ({"temperature": 1.5, "epsilon_cutoff": 0.02}, {"temperature": 1.5}),
    "eta_cutoff": ({"temperature": 1.5, "eta_cutoff": 0.02}, {"temperature": 1.5}),
    "top_n_sigma": ({"temperature": 1.5, "top_n_sigma": 1.0}, {"temperature": 1.5}),
    "xtc_probability": (
        {"xtc_probability": 0.5, "xtc_threshold": 0.05},
        {"xtc_threshold": 0.05},
    ),
    "xtc_threshold": (
        {"xtc_probability": 1.0, "xtc_threshold": 0.02},
        {"xtc_probability": 1.0},
    ),
    "dynatemp_range": ({"temperature": 1.0, "dynatemp_range": 0.9}, {"temperature": 1.0}),
    "dynatemp_exponent": (
        {"temperature": 1.0, "dynatemp_range": 0.9, "dynatemp_exponent": 3.0},
        {"temperature": 1.0, "dynatemp_range": 0.9},
    ),
    "min_tokens_to_keep": (
        {"temperature": 1.5, "top_k": 1, "min_tokens_to_keep": 8},
        {"temperature": 1.5, "top_k": 1},
    ),
    "order=llama.cpp": (
        {"temperature": 3.0, "top_p": 0.5, "order": "llama.cpp"},
        {"temperature": 3.0, "top_p": 0.5},
    ),
    "order=vllm": (
        {"min_p": 0.1, "top_p": 0.6, "order": "vllm"},
        {"min_p": 0.1, "top_p": 0.6},
    ),
    "order=custom": (
        {"temperature": 3.0, "top_k": 20, "top_p": 0.5, "order": ("top_p", "top_k", "temperature")},
        {"temperature": 3.0, "top_k": 20, "top_p": 0.5},
    ),
}


def replay(steps: list[Any], **kw: Any) -> tuple[list[list[int]], list[Any]]:
    """What a fresh `ts.Sampler(**kw)` draws from recorded (B, V) logits, step after step:
    (ids per row, the SampleOutput of every step)."""
    s = ts.Sampler(logprobs=True, **{"seed": SEED, **kw})
    outs = [s(np.asarray(x)) for x in steps]
    ids = np.stack([np.asarray(o.ids) for o in outs], axis=1)
    return ids.tolist(), outs


def kept(logits: Any, **kw: Any) -> np.ndarray:
    """The ids `ts.probs` keeps, per row: a (B, V) bool array."""
    return np.asarray(ts.probs(np.asarray(logits, dtype=np.float64), **kw)) > 0


# ==============================================================================================
# tokensampler.generate: generate and stream
# ==============================================================================================


@pytest.fixture(scope="module")
def lm() -> Any:
    # scale 30: peaked enough for stages to cut, flat enough for sampling to vary
    return random_model(tiny_llama_config(vocab_size=V, max_seq_len=64, n_layer=1), seed=5,
                        scale=30)  # fmt: skip


class Recorded:
    """A Sampler the loop built: its params, the logits it was called on, the ids it drew."""

    def __init__(self, params: ts.SamplingParams) -> None:
        self.params = params
        self.logits: list[np.ndarray] = []
        self.ids: list[list[int]] = []


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    """Every `ts.Sampler` `tokensampler.generate`'s loop builds (the CLI's included)."""
    import tokensampler.generate as gen

    seen: list[Recorded] = []

    class Recording(gen.Sampler):
        def __init__(self, params: Any = None, /, **kw: Any) -> None:
            super().__init__(params, **kw)
            self.record = Recorded(self.params)
            seen.append(self.record)

        def __call__(self, logits: Any, history: Any = None, logit_bias: Any = None, *,
                     keepdim: bool = False, token_bitmask: Any = None) -> Any:  # fmt: skip
            self.record.logits.append(torch.as_tensor(logits).cpu().numpy().copy())
            res = super().__call__(
                logits, history, logit_bias, keepdim=keepdim, token_bitmask=token_bitmask
            )
            self.record.ids.append(torch.as_tensor(res.ids).cpu().tolist())
            return res

    monkeypatch.setattr(gen, "Sampler", Recording)
    return seen


@pytest.mark.parametrize("case", list(CASES))
def test_generate_applies_the_field(lm: Any, recorded: list[Recorded], case: str) -> None:
    """Keywords, params= and stream give the same tokens: the draws of a Sampler built from
    the keywords on the loop's own logits, which the Sampler without the field does not give."""
    kw, base = CASES[case]
    out = generate(lm, None, PROMPTS, seed=SEED, **GEN, **kw)
    steps = recorded[0].logits
    assert len(steps) == GEN["max_new_tokens"]
    via_params = generate(lm, None, PROMPTS, params=ts.SamplingParams(**kw), seed=SEED, **GEN)
    s = stream(lm, None, PROMPTS, params=ts.SamplingParams(**kw, seed=SEED), **GEN)
    events = list(s)
    assert via_params.token_ids == out.token_ids
    assert s.result.token_ids == out.token_ids
    assert [[e.token_id for e in events if e.row == b] for b in range(2)] == out.token_ids
    for r in recorded:
        assert r.params.replace(seed=None, logprobs=False) == ts.SamplingParams(**kw)

    ids, outs = replay(steps, **kw)
    assert ids == out.token_ids
    lps = np.stack([np.asarray(o.logprobs) for o in outs], axis=1)
    np.testing.assert_allclose(np.array(out.logprobs), lps, rtol=1e-12)
    # The field matters on these very logits: without it the Sampler draws other tokens.
    assert replay(steps, **base)[0] != out.token_ids


def test_generate_top_n_sigma_tiny_is_greedy(lm: Any) -> None:
    greedy = generate(lm, None, PROMPTS, temperature=0, **GEN)
    hot = generate(lm, None, PROMPTS, temperature=5.0, seed=SEED, **GEN)
    assert hot.token_ids != greedy.token_ids
    for order in ("hf", "vllm", "llama.cpp"):
        sigma = generate(lm, None, PROMPTS, temperature=5.0, top_n_sigma=1e-4, order=order,
                         seed=SEED, **GEN)  # fmt: skip
        assert sigma.token_ids == greedy.token_ids, order
        p = ts.SamplingParams(temperature=5.0, top_n_sigma=1e-4, order=order)
        assert generate(lm, None, PROMPTS, params=p, seed=SEED, **GEN).token_ids == (
            greedy.token_ids
        )


def test_generate_xtc_always_at_threshold_0_takes_the_least_probable(
    lm: Any, recorded: list[Recorded]
) -> None:
    """XTC on at every step with threshold 0: every token clears it, so all but the least
    probable are removed; the loop must emit the argmin of each step's logits."""
    out = generate(lm, None, PROMPTS, xtc_probability=1.0, xtc_threshold=0.0, seed=SEED, **GEN)
    argmin = np.stack([x.argmin(axis=1) for x in recorded[0].logits], axis=1).tolist()
    assert out.token_ids == argmin
    assert out.logprobs == [[0.0] * GEN["max_new_tokens"]] * 2  # a point mass each step


def test_generate_min_tokens_to_keep_widens_top_k_1(lm: Any, recorded: list[Recorded]) -> None:
    greedy = generate(lm, None, PROMPTS, temperature=1.5, top_k=1, seed=SEED, **GEN)
    m = 6
    out = generate(lm, None, PROMPTS, temperature=1.5, top_k=1, min_tokens_to_keep=m,
                   seed=SEED, **GEN)  # fmt: skip
    assert out.token_ids != greedy.token_ids
    for k, x in enumerate(recorded[1].logits):
        top_m = np.argsort(-x, axis=1)[:, :m]
        for b in range(2):
            assert out.token_ids[b][k] in top_m[b]


def test_generate_order_llama_cpp_filters_at_temperature_1(
    lm: Any, recorded: list[Recorded]
) -> None:
    """top_p 0.5 at temperature 3: llama.cpp's order takes the nucleus of the temperature-1
    distribution, so every token lies in it; HF's order (the nucleus of the flattened
    distribution) leaves it for this seed."""
    kw = {"temperature": 3.0, "top_p": 0.5, "seed": SEED, **GEN}
    runs = {o: generate(lm, None, PROMPTS, order=o, **kw) for o in ("llama.cpp", "hf")}
    for order, r in zip(runs, recorded, strict=True):
        inside = [
            kept(x, top_p=0.5)[b, runs[order].token_ids[b][k]]
            for k, x in enumerate(r.logits)
            for b in range(2)
        ]
        assert all(inside) if order == "llama.cpp" else not all(inside), order


def test_generate_on_invalid_is_accepted(lm: Any) -> None:
    kw = {"temperature": 1.0, "seed": SEED, **GEN}
    plain = generate(lm, None, PROMPTS, **kw)
    for mode in ("skip", "raise"):
        assert generate(lm, None, PROMPTS, on_invalid=mode, **kw).token_ids == plain.token_ids
        p = ts.SamplingParams(on_invalid=mode)
        assert generate(lm, None, PROMPTS, params=p, **kw).token_ids == plain.token_ids
    with pytest.raises(ValueError, match="on_invalid"):
        generate(lm, None, PROMPTS, on_invalid="ignore", **kw)  # type: ignore[typeddict-item]


def test_generate_on_invalid_skip_ends_only_the_bad_row(lm: Any) -> None:
    """A row with every token banned has nothing to sample: "raise" fails the call; "skip"
    ends that row (finish reason "invalid", no token) and the other row is generated as if
    alone."""
    ban_all = {i: -math.inf for i in range(V)}
    kw = {"temperature": 1.0, "seed": [SEED, SEED + 1], **GEN}
    with pytest.raises(ts.SamplingError):
        generate(lm, None, PROMPTS, logit_bias=[{}, ban_all], **kw)
    out = generate(lm, None, PROMPTS, logit_bias=[{}, ban_all], on_invalid="skip", **kw)
    alone = generate(lm, None, PROMPTS[:1], temperature=1.0, seed=[SEED], **GEN)
    assert out.token_ids[0] == alone.token_ids[0]
    assert out.finish_reasons == ["length", "invalid"]
    assert out.token_ids[1] == [] and out.logprobs[1] == []
    events = list(stream(lm, None, PROMPTS, logit_bias=[{}, ban_all], on_invalid="skip", **kw))
    last = [e for e in events if e.row == 1]
    assert len(last) == 1 and last[0].finish_reason == "invalid" and last[0].token_id == -1


def test_generate_logprobs_mode_and_logprob_token_ids(lm: Any, recorded: list[Recorded]) -> None:
    """logprobs_mode="raw" reports the plain softmax of the loop's logits (top_k=1's processed
    log-probability is 0); logprob_token_ids come back per token (Generation.token_logprobs
    and TokenEvent.token_logprobs), equal to a Sampler's on the same logits."""
    kw = {"temperature": 1.0, "top_k": 1, "seed": SEED, **GEN}
    processed = generate(lm, None, PROMPTS, **kw)
    assert processed.logprobs == [[0.0] * GEN["max_new_tokens"]] * 2
    raw = generate(lm, None, PROMPTS, logprobs_mode="raw", **kw)
    assert raw.token_ids == processed.token_ids
    for k, x in enumerate(recorded[1].logits):
        logp = torch.log_softmax(torch.tensor(x, dtype=torch.float64), dim=-1)
        for b in range(2):
            assert raw.logprobs[b][k] == pytest.approx(float(logp[b, raw.token_ids[b][k]]),
                                                       abs=1e-6)  # fmt: skip
    assert processed.token_logprobs is None
    ids = [0, 7, 299]
    for mode in ("processed", "raw"):
        got = generate(lm, None, PROMPTS, temperature=1.5, logprob_token_ids=ids,
                       logprobs_mode=mode, seed=SEED, **GEN)  # fmt: skip
        _, outs = replay(recorded[-1].logits, temperature=1.5, logprob_token_ids=ids,
                         logprobs_mode=mode)  # fmt: skip
        want = np.stack([np.asarray(o.token_logprobs) for o in outs], axis=1)  # (B, steps, n)
        assert got.token_logprobs is not None
        np.testing.assert_allclose(np.array(got.token_logprobs), want, rtol=1e-12)
    s = stream(lm, None, PROMPTS, temperature=1.5, logprob_token_ids=ids, seed=SEED, **GEN)
    events = list(s)
    assert s.result.token_logprobs is not None
    for b in range(2):
        assert [e.token_logprobs for e in events if e.row == b] == s.result.token_logprobs[b]


# ==============================================================================================
# tokensampler.hf: the LogitsProcessor (inside model.generate) and hf.generate
# ==============================================================================================

HF_V = 97
PAD, BOS, EOS = 0, 1, 2
HF_NEW = 10


@pytest.fixture(scope="module")
def hf_model() -> Any:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=HF_V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(12)  # random init is nearly flat; this is peaked but varied
    return model


@pytest.fixture(scope="module")
def tshf() -> Any:
    pytest.importorskip("transformers")
    import tokensampler.hf

    return tokensampler.hf


# Two prompts, the first left-padded.
IDS = torch.tensor([[PAD, PAD, 5, 17, 5, 9], [11, 3, 40, 40, 7, 23]])
MASK = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


def hf_run(model: Any, proc: Any, **kw: Any) -> Any:
    """`model.generate` with the processor as the only sampling stage; raw logits kept."""
    return model.generate(input_ids=IDS, attention_mask=MASK, max_new_tokens=HF_NEW,
                          eos_token_id=None, output_logits=True, return_dict_in_generate=True,
                          **proc.generate_kwargs(), **kw)  # fmt: skip


def new_ids(out: Any) -> list[list[int]]:
    return out.sequences[:, IDS.shape[1] :].tolist()


@pytest.mark.transformers
@pytest.mark.parametrize("case", list(CASES))
def test_processor_scores_are_the_stage_distribution(tshf: Any, case: str) -> None:
    kw, base = CASES[case]
    torch.manual_seed(1)
    scores = 3 * torch.randn(8, HF_V)
    ids = torch.randint(3, HF_V, (8, 5))
    proc = tshf.TokenSamplerLogitsProcessor(seed=SEED, **kw)
    got = torch.exp(proc(ids, scores.clone())).double()
    want = torch.as_tensor(ts.probs(scores, **kw, seed=SEED)).double()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    p = tshf.TokenSamplerLogitsProcessor(ts.SamplingParams(**kw, seed=SEED))
    torch.testing.assert_close(torch.exp(p(ids, scores.clone())).double(), want)
    assert not torch.allclose(want, torch.as_tensor(ts.probs(scores, **base, seed=SEED)).double())


@pytest.mark.transformers
def test_processor_top_n_sigma_tiny_is_greedy_in_model_generate(hf_model: Any, tshf: Any) -> None:
    greedy = hf_model.generate(input_ids=IDS, attention_mask=MASK, max_new_tokens=HF_NEW,
                               eos_token_id=None, do_sample=False)  # fmt: skip
    torch.manual_seed(0)
    hot = hf_run(hf_model, tshf.TokenSamplerLogitsProcessor(temperature=5.0))
    assert not torch.equal(hot.sequences, greedy)
    for draw in (False, True):
        torch.manual_seed(0)
        proc = tshf.TokenSamplerLogitsProcessor(temperature=5.0, top_n_sigma=1e-4, draw=draw,
                                                seed=SEED if draw else None)  # fmt: skip
        assert torch.equal(hf_run(hf_model, proc).sequences, greedy), draw


@pytest.mark.transformers
def test_processor_order_llama_cpp_in_model_generate(hf_model: Any, tshf: Any) -> None:
    """As for `generate`: with llama.cpp's order every token HF draws lies in the
    temperature-1 nucleus of that step's raw logits; with HF's order some does not."""
    for order in ("llama.cpp", "hf"):
        torch.manual_seed(0)
        proc = tshf.TokenSamplerLogitsProcessor(temperature=3.0, top_p=0.5, order=order)
        out = hf_run(hf_model, proc)
        inside = [
            kept(x, top_p=0.5)[b, new_ids(out)[b][k]]
            for k, x in enumerate(out.logits)
            for b in range(2)
        ]
        assert all(inside) if order == "llama.cpp" else not all(inside), order


@pytest.mark.transformers
@pytest.mark.parametrize("case", list(CASES))
def test_draw_mode_and_hf_generate_apply_the_field(hf_model: Any, tshf: Any, case: str) -> None:
    """draw=True inside `model.generate`, `tokensampler.hf.generate` with keywords and with
    params=: the same tokens, which a Sampler with the keywords draws from the raw logits and
    the Sampler without the field does not."""
    kw, base = CASES[case]
    out = hf_run(hf_model, tshf.TokenSamplerLogitsProcessor(draw=True, seed=SEED, **kw))
    ours = tshf.generate(hf_model, None, IDS, attention_mask=MASK, max_new_tokens=HF_NEW,
                         eos_token_id=None, seed=SEED, **kw)  # fmt: skip
    via_params = tshf.generate(hf_model, None, IDS, attention_mask=MASK, max_new_tokens=HF_NEW,
                               eos_token_id=None, params=ts.SamplingParams(**kw, seed=SEED))  # fmt: skip
    assert torch.equal(ours.sequences, out.sequences)
    assert torch.equal(via_params.sequences, out.sequences)
    steps = [x.numpy() for x in out.logits]
    assert replay(steps, **kw)[0] == new_ids(out)
    assert replay(steps, **base)[0] != new_ids(out)


@pytest.mark.transformers
def test_processor_xtc_coin_is_drawn_per_step(tshf: Any) -> None:
    """xtc_probability 0.5 (threshold 0: when XTC fires only the least probable token stays):
    with draw=False the coin is the stream's at each step, so XTC fires at some steps and not
    at others, reproducibly for a seed (and for torch's seed when none is given), restarting
    with each generation."""
    torch.manual_seed(2)
    scores = 3 * torch.randn(2, HF_V)

    def fired(proc: Any, n: int = 40) -> list[tuple[bool, ...]]:
        pattern = []
        for step in range(n):
            s = proc(torch.zeros(2, 6 + step, dtype=torch.long), scores.clone())
            pattern.append(tuple((torch.isfinite(s).sum(dim=1) == 1).tolist()))
        return pattern

    kw = {"xtc_probability": 0.5, "xtc_threshold": 0.0}
    a = fired(tshf.TokenSamplerLogitsProcessor(seed=SEED, **kw))
    share = np.mean(a)
    assert 0.2 < share < 0.8, share
    # Sampler(seed) draws from the same distributions: the least probable token when fired.
    s = ts.Sampler(seed=SEED, **kw)
    least = scores.argmin(dim=1).tolist()
    for step_fired in a:
        ids = s(scores).tolist()
        for b in range(2):
            if step_fired[b]:
                assert ids[b] == least[b]
    proc = tshf.TokenSamplerLogitsProcessor(seed=SEED, **kw)
    assert fired(proc) == a
    assert fired(proc) == a  # a new generation (shorter input_ids) restarts the stream
    assert fired(tshf.TokenSamplerLogitsProcessor(seed=SEED + 1, **kw)) != a
    torch.manual_seed(5)
    b = fired(tshf.TokenSamplerLogitsProcessor(**kw))
    torch.manual_seed(5)
    assert fired(tshf.TokenSamplerLogitsProcessor(**kw)) == b


@pytest.mark.transformers
def test_hf_routes_take_the_output_options(hf_model: Any, tshf: Any) -> None:
    """logprobs_mode and logprob_token_ids are accepted by the processor (both modes) and,
    with on_invalid, by hf.generate, and leave the tokens unchanged. The processor refuses
    on_invalid="skip": model.generate cannot skip a row."""
    kw = {"temperature": 1.2, "top_p": 0.9}
    with pytest.raises(ValueError, match="on_invalid"):
        tshf.TokenSamplerLogitsProcessor(on_invalid="skip", **kw)
    extra: dict[str, Any] = {"logprobs_mode": "raw", "logprob_token_ids": [3, 4]}
    plain = hf_run(hf_model, tshf.TokenSamplerLogitsProcessor(draw=True, seed=SEED, **kw))
    out = hf_run(hf_model, tshf.TokenSamplerLogitsProcessor(draw=True, seed=SEED, **kw, **extra))
    assert torch.equal(out.sequences, plain.sequences)
    torch.manual_seed(0)
    a = hf_run(hf_model, tshf.TokenSamplerLogitsProcessor(**kw))
    torch.manual_seed(0)
    b = hf_run(hf_model, tshf.TokenSamplerLogitsProcessor(**kw, **extra))
    assert torch.equal(a.sequences, b.sequences)
    gen = {"attention_mask": MASK, "max_new_tokens": HF_NEW, "eos_token_id": None, "seed": SEED}
    ours = tshf.generate(hf_model, None, IDS, **gen, **kw, **extra, on_invalid="skip")
    assert torch.equal(ours.sequences, plain.sequences)


@pytest.mark.transformers
def test_hf_generate_on_invalid_skip_ends_only_the_bad_row(hf_model: Any, tshf: Any) -> None:
    ban_all = {i: -math.inf for i in range(HF_V)}
    gen = {"attention_mask": MASK, "max_new_tokens": HF_NEW, "eos_token_id": None,
           "temperature": 1.0, "seed": [SEED, SEED + 1]}  # fmt: skip
    with pytest.raises(ts.SamplingError):
        tshf.generate(hf_model, None, IDS, logit_bias=[ban_all, {}], **gen)
    out = tshf.generate(hf_model, None, IDS, logit_bias=[ban_all, {}], on_invalid="skip", **gen)
    alone = tshf.generate(hf_model, None, IDS[1:], max_new_tokens=HF_NEW, eos_token_id=None,
                          temperature=1.0, seed=[SEED + 1])  # fmt: skip
    assert out.finish_reasons == ["invalid", "length"]
    assert out.token_ids[0] == [] and out.token_ids[1] == alone.token_ids[0]
    assert (out.sequences[0, IDS.shape[1] :] == PAD).all()


# ==============================================================================================
# the CLI
# ==============================================================================================

CLI_PROMPT = "Every effort"
CLI_CASES: dict[str, tuple[list[str], dict[str, Any], dict[str, Any]]] = {
    # name: (flags, the SamplingParams they give, the same without the option under test)
    "typical-p": (["--typical-p", "0.5", "--temperature", "1.5"],
                  {"typical_p": 0.5, "temperature": 1.5}, {"temperature": 1.5}),
    "epsilon-cutoff": (["--epsilon-cutoff", "0.004"], {"epsilon_cutoff": 0.004}, {}),
    "eta-cutoff": (["--eta-cutoff", "0.02", "--temperature", "0.1"],
                   {"eta_cutoff": 0.02, "temperature": 0.1}, {"temperature": 0.1}),
    "top-n-sigma": (["--top-n-sigma", "1", "--temperature", "2"],
                    {"top_n_sigma": 1.0, "temperature": 2.0}, {"temperature": 2.0}),
    "xtc": (["--xtc-probability", "0.5", "--xtc-threshold", "0.004"],
            {"xtc_probability": 0.5, "xtc_threshold": 0.004}, {}),
    "dynatemp": (["--dynatemp-range", "0.8", "--dynatemp-exponent", "2"],
                 {"dynatemp_range": 0.8, "dynatemp_exponent": 2.0}, {}),
    "min-tokens-to-keep": (["--top-k", "1", "--min-tokens-to-keep", "5"],
                           {"top_k": 1, "min_tokens_to_keep": 5}, {"top_k": 1}),
    "order=llama.cpp": (["--order", "llama.cpp", "--top-p", "0.5", "--temperature", "3"],
                        {"order": "llama.cpp", "top_p": 0.5, "temperature": 3.0},
                        {"top_p": 0.5, "temperature": 3.0}),
    "order=vllm": (["--order", "vllm", "--min-p", "0.8", "--top-p", "0.5"],
                   {"order": "vllm", "min_p": 0.8, "top_p": 0.5},
                   {"min_p": 0.8, "top_p": 0.5}),
    "order=custom": (["--order", "top_p, temperature", "--top-p", "0.5", "--temperature", "3"],
                     {"order": ("top_p", "temperature"), "top_p": 0.5, "temperature": 3.0},
                     {"top_p": 0.5, "temperature": 3.0}),
}  # fmt: skip


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("tiny-gpt2")
    write_tiny_gpt2_folder(path)
    return path


def cli(folder: Any, capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    return cli_generate(folder, capsys, *flags, prompt=CLI_PROMPT)


@pytest.mark.transformers
@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_options_reach_the_loop(gpt2_folder: Any, capsys: Any, recorded: list[Recorded],
                                    case: str) -> None:  # fmt: skip
    """Each option lands in the loop's SamplingParams, and the CLI prints (and draws) what
    `generate` with the same keywords gives; the same run without the option differs."""
    from tokensampler.model import load

    flags, kw, base = CLI_CASES[case]
    text = cli(gpt2_folder, capsys, *flags, "--seed", str(SEED))
    assert recorded[0].params.replace(seed=None, logprobs=False) == ts.SamplingParams(**kw)
    model, tok = load(str(gpt2_folder), device="cpu", dtype="float32")
    want = generate(model, tok, CLI_PROMPT, max_new_tokens=16, ignore_eos=True, seed=SEED, **kw)
    assert recorded[1].ids == recorded[0].ids
    assert text == CLI_PROMPT + want.texts[0] + "\n"
    # The CLI's draws are a Sampler's with the keywords, not without the option.
    steps = recorded[0].logits
    drawn = np.array(recorded[0].ids).T.tolist()
    assert replay(steps, **kw)[0] == drawn
    assert replay(steps, **base)[0] != drawn


@pytest.mark.transformers
def test_cli_top_n_sigma_tiny_is_greedy(gpt2_folder: Any, capsys: Any) -> None:
    greedy = cli(gpt2_folder, capsys, "--temperature", "0")
    hot = cli(gpt2_folder, capsys, "--temperature", "5", "--seed", str(SEED))
    assert hot != greedy
    for order in ("hf", "llama.cpp"):
        sigma = cli(gpt2_folder, capsys, "--temperature", "5", "--top-n-sigma", "0.0001",
                    "--order", order, "--seed", str(SEED))  # fmt: skip
        assert sigma == greedy, order


@pytest.mark.transformers
@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--typical-p", "1.5"], "typical_p"),
        (["--xtc-threshold", "-1"], "xtc_threshold"),
        (["--order", "sideways"], "order"),
        (["--order", "top_k", "--top-p", "0.5"], "top_p"),  # top_p on but not placed
    ],
)
def test_cli_bad_stage_options_fail_in_one_line(gpt2_folder: Any, capsys: Any, flags: list[str],
                                                needle: str) -> None:  # fmt: skip
    from tokensampler.cli import main

    assert main(["generate", CLI_PROMPT, "--model", str(gpt2_folder), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tokensampler: error:") and needle in err[0], err


# ==============================================================================================
# the converters: converted params sample exactly as the equivalent keywords
# ==============================================================================================


def _logits() -> np.ndarray:
    """Rows from flat to peaked, so every truncating stage and the floor have work to do."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((16, 200)) * np.linspace(0.5, 6.0, 16)[:, None]


def assert_same_sampling(p: ts.SamplingParams, kw: dict[str, Any]) -> None:
    x = _logits()
    np.testing.assert_array_equal(ts.probs(x, p), ts.probs(x, **kw))
    for seed in range(5):
        np.testing.assert_array_equal(ts.sample(x, p.replace(seed=seed)),
                                      ts.sample(x, **{**kw, "seed": seed}))  # fmt: skip


def assert_each_field_matters(p: ts.SamplingParams, fields: dict[str, Any]) -> None:
    x = _logits()
    full = ts.probs(x, p)
    for name, off in fields.items():
        assert not np.array_equal(ts.probs(x, p.replace(**{name: off})), full), name


def test_from_hf_samples_like_the_keywords() -> None:
    cfg = {"do_sample": True, "temperature": 0.8, "top_k": 60, "top_p": 0.95,
           "typical_p": 0.8, "epsilon_cutoff": 0.03, "eta_cutoff": 0.05,
           "min_tokens_to_keep": 4, "repetition_penalty": 1.0}  # fmt: skip
    p = ts.SamplingParams.from_hf(cfg)
    kw = {"temperature": 0.8, "top_k": 60, "top_p": 0.95, "typical_p": 0.8,
          "epsilon_cutoff": 0.03, "eta_cutoff": 0.05, "min_tokens_to_keep": 4}  # fmt: skip
    assert_same_sampling(p, kw)
    assert_each_field_matters(p, {"typical_p": None, "epsilon_cutoff": None, "eta_cutoff": None,
                                  "min_tokens_to_keep": None})  # fmt: skip


@pytest.mark.transformers
def test_from_hf_generation_config_samples_like_the_keywords() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GenerationConfig(do_sample=True, temperature=0.8, top_k=60,
                                        typical_p=0.8, epsilon_cutoff=0.03, eta_cutoff=0.05,
                                        min_tokens_to_keep=4)  # fmt: skip
    p = ts.SamplingParams.from_hf(cfg)
    kw = {"temperature": 0.8, "top_k": 60, "typical_p": 0.8, "epsilon_cutoff": 0.03,
          "eta_cutoff": 0.05, "min_tokens_to_keep": 4, "top_p": cfg.top_p,
          "repetition_penalty": cfg.repetition_penalty}  # fmt: skip
    assert_same_sampling(p, kw)
    assert_each_field_matters(p, {"typical_p": None, "epsilon_cutoff": None, "eta_cutoff": None,
                                  "min_tokens_to_keep": None})  # fmt: skip


LLAMA = {"temperature": 0.9, "top_k": 40, "top_p": 0.9, "min_p": 0.02, "typical_p": 0.8,
         "top_n_sigma": 2.0, "xtc_probability": 0.5, "xtc_threshold": 0.05,
         "dynatemp_range": 0.5, "dynatemp_exponent": 1.5, "min_keep": 3, "seed": 11}  # fmt: skip
LLAMA_KW = {"temperature": 0.9, "top_k": 40, "top_p": 0.9, "min_p": 0.02, "typical_p": 0.8,
            "top_n_sigma": 2.0, "xtc_probability": 0.5, "xtc_threshold": 0.05,
            "dynatemp_range": 0.5, "dynatemp_exponent": 1.5, "min_tokens_to_keep": 3,
            "seed": 11}  # fmt: skip


def test_from_llama_cpp_samples_like_the_keywords() -> None:
    p = ts.SamplingParams.from_llama_cpp(LLAMA)
    assert_same_sampling(p, {**LLAMA_KW, "order": "llama.cpp"})
    assert_each_field_matters(p, {"order": "hf", "typical_p": None, "top_n_sigma": None,
                                  "xtc_probability": None, "xtc_threshold": 0.1,
                                  "dynatemp_range": None, "dynatemp_exponent": 1.0,
                                  "min_tokens_to_keep": None})  # fmt: skip


def test_from_llama_cpp_samplers_chain_samples_like_the_keywords() -> None:
    chain = "penalties;dry;top_n_sigma;top_k;typ_p;top_p;min_p;xtc;temperature"
    p = ts.SamplingParams.from_llama_cpp({**LLAMA, "samplers": chain})
    order = ("top_n_sigma", "top_k", "typical_p", "top_p", "min_p", "xtc", "temperature",
             "epsilon_cutoff", "eta_cutoff")  # fmt: skip
    assert_same_sampling(p, {**LLAMA_KW, "order": order})
    # the default chain, spelt out, samples as order="llama.cpp"
    np.testing.assert_array_equal(ts.probs(_logits(), p), ts.probs(_logits(), **LLAMA_KW,
                                                                   order="llama.cpp"))  # fmt: skip
    # A chain that leaves stages out switches them off, as llama.cpp's does.
    short = ts.SamplingParams.from_llama_cpp({**LLAMA, "samplers": ["min_p", "temperature"]})
    kw = {"temperature": 0.9, "dynatemp_range": 0.5, "dynatemp_exponent": 1.5, "min_p": 0.02,
          "xtc_threshold": 0.05, "min_tokens_to_keep": 3, "seed": 11,
          "order": ("min_p", "temperature", "epsilon_cutoff", "eta_cutoff")}  # fmt: skip
    assert_same_sampling(short, kw)
    assert_each_field_matters(short, {"min_p": None, "dynatemp_range": None})


def test_from_vllm_samples_like_the_keywords() -> None:
    d = {"temperature": 0.7, "top_k": 30, "top_p": 0.6, "min_p": 0.2, "seed": 5}
    p = ts.SamplingParams.from_vllm(d)
    assert_same_sampling(p, {**d, "order": "vllm"})
    assert_each_field_matters(p, {"order": "hf"})
    # The issue's example: min_p .3, top_p .75 keep 2 of [.4, .3, .2, .1] in vLLM's order.
    x = np.log([0.4, 0.3, 0.2, 0.1])
    v = ts.SamplingParams.from_vllm({"min_p": 0.3, "top_p": 0.75})
    assert (ts.probs(x, v) > 0).sum() == 2
    assert (ts.probs(x, v.replace(order="hf")) > 0).sum() == 3
