"""tokensampler.hf: the LogitsProcessor inside `model.generate`, and our own generate loop.

Tiny GPT-2 and Llama models are built from configs with random weights (seeded), vocabulary
larger than Hugging Face's default ``top_k=50`` so that a warper applied twice would show.
Every batch holds two prompts of different lengths, left-padded with an attention mask.

- The processor's distribution (softmax of its scores) equals Hugging Face's own processor
  chain (``RepetitionPenaltyLogitsProcessor`` with the padding ignored, temperature, top-k,
  top-p, min-p) step by step, on the inputs recorded from real `model.generate` runs, in both
  directions: our processor on HF-generated steps, and HF's chain on steps generated with our
  processor inside `model.generate`.
- ``draw=True`` is reproducible from its seed and draws what `tokensampler.hf.generate` draws.
- `tokensampler.hf.generate` with ``temperature=0`` equals ``model.generate(do_sample=False)``
  token for token, with and without an eos id.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tokensampler as ts

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tshf = pytest.importorskip("tokensampler.hf")
lp = pytest.importorskip("transformers.generation.logits_process")
pytestmark = pytest.mark.transformers

VOCAB = 97
PAD, BOS, EOS = 0, 1, 2


def _gpt2() -> Any:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=2,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(cfg).eval()


def _llama() -> Any:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request: pytest.FixtureRequest) -> Any:
    return _gpt2() if request.param == "gpt2" else _llama()


# Two prompts, left-padded: row 0 has two pad positions. Ids avoid PAD/BOS/EOS.
IDS = torch.tensor([[PAD, PAD, 5, 17, 5, 9], [11, 3, 40, 40, 7, 23]])
MASK = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
L = IDS.shape[1]

SETTINGS = [
    {"temperature": 0.7, "top_k": 20, "top_p": 0.9, "repetition_penalty": 1.3},
    {"temperature": 1.3, "repetition_penalty": 1.5},  # keeps > 50 tokens: no hidden top_k=50
    {"temperature": 0.9, "top_p": 0.8},
    {"temperature": 1.0, "min_p": 0.05, "top_k": 40},
    {"temperature": 0.5, "top_k": 1},
]


def _hf_ignores_padding() -> bool:
    """Whether `model.generate` leaves left padding out of its repetition penalty.

    transformers >= 5.23 does (a per-row ``prompt_ignore_length`` from the attention mask);
    releases before 5.23 only take one int for the whole batch (5.0 to 5.22), and their
    `model.generate` counts the padding as history.
    """
    try:
        lp.RepetitionPenaltyLogitsProcessor(1.5, prompt_ignore_length=torch.tensor([1]))
    except ValueError:
        return False
    return True


HF_IGNORES_PADDING = _hf_ignores_padding()
# Our processor reproduces model.generate's own penalty: padding left out where HF leaves it out.
GENERATE_PAD = PAD if HF_IGNORES_PADDING else None


class _RowwiseRepetitionPenalty:
    """HF's repetition penalty with each row's own number of leading ids ignored, from one
    int-only processor per row (for releases without a per-row ``prompt_ignore_length``)."""

    def __init__(self, penalty: float, ignore: torch.Tensor) -> None:
        self.rows = [lp.RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=int(n))
                     for n in ignore]  # fmt: skip

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(input_ids[i : i + 1], scores[i : i + 1])
                          for i, p in enumerate(self.rows)])  # fmt: skip


def _hf_chain(settings: dict[str, Any]) -> list[Any]:
    """HF's processors for `settings`, in `model.generate`'s order, padding ignored."""
    procs: list[Any] = []
    if settings.get("repetition_penalty", 1.0) != 1.0:
        pad_len = (MASK != 0).int().argmax(dim=1)  # what generate passes
        penalty = settings["repetition_penalty"]
        if HF_IGNORES_PADDING:
            procs.append(lp.RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=pad_len))
        else:
            procs.append(_RowwiseRepetitionPenalty(penalty, pad_len))
    if settings.get("temperature", 1.0) != 1.0:
        procs.append(lp.TemperatureLogitsWarper(settings["temperature"]))
    if settings.get("top_k"):
        procs.append(lp.TopKLogitsWarper(settings["top_k"]))
    if settings.get("top_p", 1.0) < 1.0:
        procs.append(lp.TopPLogitsWarper(settings["top_p"]))
    if settings.get("min_p"):
        procs.append(lp.MinPLogitsWarper(settings["min_p"]))
    return procs


def _assert_same_distribution(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    p, q = torch.softmax(ours.double(), -1), torch.softmax(theirs.double(), -1)
    assert torch.equal(p > 0, q > 0), "the kept sets differ"
    torch.testing.assert_close(p, q, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(s))
def test_processor_equals_hf_warpers_on_hf_steps(model: Any, settings: dict[str, Any]) -> None:
    torch.manual_seed(1)
    out = model.generate(
        input_ids=IDS, attention_mask=MASK, do_sample=True, max_new_tokens=6,
        output_scores=True, output_logits=True, return_dict_in_generate=True,
        **{**tshf.hf_warpers_off(), **settings},  # HF's default top_k=50 off unless set
    )  # fmt: skip
    proc = tshf.TokenSamplerLogitsProcessor(pad_token_id=GENERATE_PAD, **settings)
    assert len(out.scores) == 6
    for t, (raw, hf_scores) in enumerate(zip(out.logits, out.scores)):
        ours = proc(out.sequences[:, : L + t], raw.clone())
        assert ours.dtype == hf_scores.dtype and ours.shape == hf_scores.shape
        _assert_same_distribution(ours, hf_scores)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(s))
def test_generate_with_processor_equals_hf_chain(model: Any, settings: dict[str, Any]) -> None:
    proc = tshf.TokenSamplerLogitsProcessor(pad_token_id=PAD, **settings)
    torch.manual_seed(2)
    out = model.generate(
        input_ids=IDS, attention_mask=MASK, max_new_tokens=6, output_scores=True,
        output_logits=True, return_dict_in_generate=True, eos_token_id=None,
        **proc.generate_kwargs(),
    )  # fmt: skip
    chain = _hf_chain(settings)
    for t, (raw, our_scores) in enumerate(zip(out.logits, out.scores)):
        x = out.sequences[:, : L + t]
        hf_scores = raw.clone()
        for p in chain:
            hf_scores = p(x, hf_scores)
        _assert_same_distribution(our_scores, hf_scores)
        # The drawn token lies in the kept set (no eos: finished rows would get the pad id).
        nxt = out.sequences[:, L + t]
        assert torch.isfinite(our_scores.gather(1, nxt[:, None])).all()


def test_generate_kwargs_switch_hf_warpers_off(model: Any) -> None:
    """Without the neutral settings HF's default top_k=50 would cut our 97-token support."""
    proc = tshf.TokenSamplerLogitsProcessor(temperature=2.0)
    out = model.generate(
        input_ids=IDS, attention_mask=MASK, max_new_tokens=2, output_scores=True,
        return_dict_in_generate=True, **proc.generate_kwargs(),
    )  # fmt: skip
    assert all(bool(torch.isfinite(s).all()) for s in out.scores)
    assert tshf.hf_warpers_off()["top_k"] == 0
    # The same processor without them: HF's defaults filter a second time.
    out = model.generate(
        input_ids=IDS, attention_mask=MASK, max_new_tokens=1, output_scores=True,
        return_dict_in_generate=True, do_sample=True, logits_processor=[proc],
    )  # fmt: skip
    assert torch.isfinite(out.scores[0]).sum(-1).tolist() == [50, 50]


def test_per_row_parameters_in_generate(model: Any) -> None:
    proc = tshf.TokenSamplerLogitsProcessor(temperature=[0.0, 1.0], top_k=[None, 5])
    out = model.generate(
        input_ids=IDS, attention_mask=MASK, max_new_tokens=3, output_scores=True,
        return_dict_in_generate=True, **proc.generate_kwargs(),
    )  # fmt: skip
    for s in out.scores:
        finite = torch.isfinite(s).sum(-1).tolist()
        assert finite[0] == 1 and 1 <= finite[1] <= 5


def test_draw_mode_is_seeded_and_matches_our_loop(model: Any) -> None:
    kw = {"temperature": 0.9, "top_p": 0.95, "repetition_penalty": 1.2}
    proc = tshf.TokenSamplerLogitsProcessor(draw=True, seed=123, pad_token_id=PAD, **kw)
    a = model.generate(input_ids=IDS, attention_mask=MASK, max_new_tokens=8,
                       eos_token_id=None, **proc.generate_kwargs())  # fmt: skip
    torch.manual_seed(99)  # torch's generator plays no part
    b = model.generate(input_ids=IDS, attention_mask=MASK, max_new_tokens=8,
                       eos_token_id=None, **proc.generate_kwargs())  # fmt: skip
    assert torch.equal(a, b)
    ours = tshf.generate(model, None, IDS, attention_mask=MASK, max_new_tokens=8,
                         eos_token_id=None, seed=123, **kw)  # fmt: skip
    assert torch.equal(ours.sequences, a)
    other = tshf.TokenSamplerLogitsProcessor(draw=True, seed=124, pad_token_id=PAD, **kw)
    c = model.generate(input_ids=IDS, attention_mask=MASK, max_new_tokens=8,
                       eos_token_id=None, **other.generate_kwargs())  # fmt: skip
    assert not torch.equal(a, c)


def test_draw_mode_scores_are_one_hot() -> None:
    proc = tshf.TokenSamplerLogitsProcessor(draw=True, seed=0, top_k=3)
    scores = proc(torch.tensor([[4, 5], [6, 7]]), torch.randn(2, 10))
    assert (scores == 0).sum(-1).tolist() == [1, 1]
    assert torch.isinf(scores).sum(-1).tolist() == [9, 9]


# ---- padding and history --------------------------------------------------------------------


def test_pad_token_id_masks_only_left_padding() -> None:
    scores = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]] * 2)
    ids = torch.tensor([[0, 0, 3, 0, 4], [0, 0, 3, 1, 4]])  # pad 0; row 0 has a real 0 later
    plain = tshf.TokenSamplerLogitsProcessor(repetition_penalty=2.0)
    masked = tshf.TokenSamplerLogitsProcessor(repetition_penalty=2.0, pad_token_id=0)
    p_plain = torch.exp(plain(ids, scores))
    p_masked = torch.exp(masked(ids, scores))
    ref_with_0 = ts.probs(scores, repetition_penalty=2.0, history=[[0, 3, 4], [0, 3, 1, 4]])
    ref_no_0 = ts.probs(scores, repetition_penalty=2.0, history=[[3, 0, 4], [3, 1, 4]])
    torch.testing.assert_close(p_plain, ref_with_0)
    # Row 0: the 0 after the prompt start is real history; row 1: only leading pads.
    torch.testing.assert_close(p_masked[0], ref_no_0[0])
    torch.testing.assert_close(p_masked[1], ts.probs(scores[1], repetition_penalty=2.0,
                                                     history=[3, 1, 4]))  # fmt: skip


def test_penalize_prompt_false_counts_generated_tokens_only() -> None:
    proc = tshf.TokenSamplerLogitsProcessor(frequency_penalty=1.0, penalize_prompt=False)
    scores = torch.zeros(1, 6)
    prompt = torch.tensor([[1, 1, 2]])
    # First step: nothing generated yet, so no penalty at all.
    torch.testing.assert_close(torch.exp(proc(prompt, scores)), torch.full((1, 6), 1 / 6))
    step2 = torch.tensor([[1, 1, 2, 3]])
    ref = ts.probs(scores, frequency_penalty=1.0, history=[[3]])
    torch.testing.assert_close(torch.exp(proc(step2, scores)), ref)
    # A new generation (input_ids no longer than before) restarts the prompt length.
    proc(torch.tensor([[4, 4, 4, 4]]), scores)
    ref = ts.probs(scores, frequency_penalty=1.0, history=[[5]])
    torch.testing.assert_close(torch.exp(proc(torch.tensor([[4, 4, 4, 4, 5]]), scores)), ref)


BAD_AT_CONSTRUCTION: list[tuple[str, Any]] = [
    ("temperature", -1.0),
    ("top_p", 0.0),
    ("top_p", 1.5),
    ("min_p", 1.0),
    ("top_k", -1),
    ("repetition_penalty", float("nan")),
    ("frequency_scale", 0.5),
]


@pytest.mark.parametrize(("name", "value"), BAD_AT_CONSTRUCTION)
@pytest.mark.parametrize("cls", ["processor", "Sampler"])
def test_bad_parameters_fail_at_construction(name: str, value: Any, cls: str) -> None:
    """The processor and ts.Sampler share one validation: scalars, per-row values (the bad
    one in row 1 of the generate batch) and logit_bias, all before the first call."""
    make = tshf.TokenSamplerLogitsProcessor if cls == "processor" else ts.Sampler
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        make(**{name: value})
    good = {"top_k": 2, "top_p": 0.9, "min_p": 0.1}.get(name, 1.0)
    with pytest.raises(ValueError, match=rf"\b{name}\b.*row 1"):
        make(**{name: [good, value]})
    make(**{name: [good, good]})


def test_processor_validates_logit_bias_and_row_counts_at_construction() -> None:
    with pytest.raises(ValueError, match="logit_bias"):
        tshf.TokenSamplerLogitsProcessor(logit_bias={-1: 1.0})
    with pytest.raises(ValueError, match="NaN"):
        tshf.TokenSamplerLogitsProcessor(logit_bias={0: float("nan")}, draw=True)
    with pytest.raises(ValueError, match="temperature has 2, top_k has 3"):
        tshf.TokenSamplerLogitsProcessor(temperature=[1.0, 0.5], top_k=[1, 2, 3])
    # Per-row values for the generate batch: fine at construction, checked against it per call.
    proc = tshf.TokenSamplerLogitsProcessor(temperature=[1.0, 0.5], top_k=[1, 2])
    assert proc(torch.tensor([[0], [1]]), torch.zeros(2, 5)).shape == (2, 5)
    with pytest.raises(ValueError, match="temperature"):
        proc(torch.tensor([[0]]), torch.zeros(1, 5))


# ---- our generate loop ----------------------------------------------------------------------


@pytest.mark.parametrize("eos", [None, "found"])
def test_greedy_generate_equals_hf(model: Any, eos: str | None) -> None:
    ref = model.generate(input_ids=IDS, attention_mask=MASK, do_sample=False,
                         max_new_tokens=12, eos_token_id=None)  # fmt: skip
    eos_id = None
    if eos == "found":  # a token row 1 emits at step 3: row 1 stops there, row 0 may go on
        eos_id = int(ref[1, L + 3])
        ref = model.generate(input_ids=IDS, attention_mask=MASK, do_sample=False,
                             max_new_tokens=12, eos_token_id=eos_id)  # fmt: skip
    ours = tshf.generate(model, None, IDS, attention_mask=MASK, max_new_tokens=12,
                         temperature=0, eos_token_id=eos_id)  # fmt: skip
    assert torch.equal(ours.sequences, ref)
    assert ours.prompt_length == L
    if eos_id is not None:
        assert ours.finish_reasons[1] == "eos" and ours.token_ids[1][-1] == eos_id
        assert len(ours.token_ids[1]) <= 4


def test_ragged_lists_equal_padded_tensor(model: Any) -> None:
    rows = [[5, 17, 5, 9], [11, 3, 40, 40, 7, 23]]
    a = tshf.generate(model, None, rows, max_new_tokens=6, temperature=0, eos_token_id=None)
    b = tshf.generate(model, None, IDS, attention_mask=MASK, max_new_tokens=6, temperature=0,
                      eos_token_id=None)  # fmt: skip
    assert torch.equal(a.sequences[:, L:], b.sequences[:, L:])
    # A single unpadded prompt gives what it gives inside the batch.
    c = tshf.generate(model, None, rows[1], max_new_tokens=6, temperature=0, eos_token_id=None)
    assert c.token_ids[0] == b.token_ids[1]


def test_generate_from_strings_with_a_tokenizer() -> None:
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<pad>": PAD, "<s>": BOS, "</s>": EOS}
    for c in "abcdefghijklmnopqrstuvwxyz ":
        vocab[c] = len(vocab)
    t = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<pad>"))
    t.pre_tokenizer = tokenizers.pre_tokenizers.Split(tokenizers.Regex("."), "isolated")
    t.decoder = tokenizers.decoders.Fuse()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=t, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        padding_side="left",
    )  # fmt: skip
    model = _llama()
    out = tshf.generate(model, tok, ["hello there", "hi"], max_new_tokens=5, temperature=0.8,
                        seed=3)  # fmt: skip
    assert out.texts is not None and len(out.texts) == 2
    enc = tok(["hello there", "hi"], return_tensors="pt", padding=True)
    again = tshf.generate(model, tok, enc, max_new_tokens=5, temperature=0.8, seed=3)
    assert torch.equal(out.sequences, again.sequences)
    assert again.texts == [tok.decode(ids, skip_special_tokens=True) for ids in out.token_ids]


def test_generate_penalties_exclude_padding_and_prompt(model: Any) -> None:
    """With a penalty, the first step's distribution is ts.probs of the prompt's logits."""
    sampler = ts.Sampler(temperature=0.0, repetition_penalty=50.0, seed=0)
    out = tshf.generate(model, None, IDS, attention_mask=MASK, max_new_tokens=1,
                        sampler=sampler, eos_token_id=None)  # fmt: skip
    with torch.no_grad():
        pos = (MASK.cumsum(-1) - 1).clamp_min(0)
        logits = model(input_ids=IDS, attention_mask=MASK, position_ids=pos).logits[:, -1]
    hist = [[5, 17, 5, 9], IDS[1].tolist()]
    want = ts.sample(logits, temperature=0.0, repetition_penalty=50.0, history=hist)
    assert out.sequences[:, L].tolist() == want.tolist()
    no_prompt = tshf.generate(model, None, IDS, attention_mask=MASK, max_new_tokens=1,
                              temperature=0.0, repetition_penalty=50.0,
                              penalize_prompt=False, eos_token_id=None)  # fmt: skip
    assert no_prompt.sequences[:, L].tolist() == logits.argmax(-1).tolist()


def test_right_padding_is_rejected(model: Any) -> None:
    with pytest.raises(ValueError, match="left padding"):
        tshf.generate(model, None, IDS.flip(1), attention_mask=MASK.flip(1), max_new_tokens=1)


def test_zero_new_tokens(model: Any) -> None:
    out = tshf.generate(model, None, IDS, attention_mask=MASK, max_new_tokens=0)
    assert torch.equal(out.sequences, IDS)
    assert out.token_ids == [[], []] and out.finish_reasons == ["length", "length"]


def test_processor_keeps_scores_dtype() -> None:
    """The processor keeps the scores' dtype (HF hands float32; bf16 works too)."""
    proc = tshf.TokenSamplerLogitsProcessor(top_k=2)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        s = torch.tensor([[0.0, 1.0, 2.0, 3.0]], dtype=dtype)
        out = proc(torch.tensor([[1]]), s)
        assert out.dtype == dtype
        assert np.isinf(out.float().numpy()).sum() == 2
