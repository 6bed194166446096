"""The tokenizer built from the embedded SmolLM2 GGUF's own vocabulary and merges.

Expected ids and chat renderings were produced by transformers 5.23's GGUF tokenizer
(`AutoTokenizer.from_pretrained(folder, gguf_file=...)`), which takes ~20 s to build, so they
are pinned here instead of recomputed.
"""

from __future__ import annotations

import pytest
from model_helpers import default_tokenizer, require_default_model

pytest.importorskip("torch")  # tokensampler.model imports torch
pytest.importorskip("tokenizers")
require_default_model()

EXPECTED = {
    "Hello 12345 world": [19556, 216, 33, 34, 35, 36, 37, 905],
    "Every effort moves you": [8600, 3867, 7488, 346],
    "  leading spaces\n\nand\ttabs": [216, 2899, 5600, 198, 198, 397, 197, 100, 7366],
    "héllo wörld — “quotes” 世界 🎉": [
        88, 2756, 31394, 267, 29989, 400, 1841, 619, 385, 2346, 573, 216, 7906, 240, 178, 239,
        230, 15107, 232, 227,
    ],
    "<|im_start|>user\nhi<|im_end|>": [1, 4093, 198, 6004, 2],
    "don't I'll we've": [12420, 982, 339, 3060, 392, 3543],
    "x=3.14159; print(f'{x:.2f}')": [
        104, 45, 35, 30, 33, 36, 33, 37, 41, 43, 1628, 24, 86, 19225, 104, 17805, 34, 86, 19747,
    ],
}  # fmt: skip

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Bye"},
]
CHAT_TEXT = (
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
    "<|im_start|>assistant\n"
)
CHAT_IDS = [
    1, 9690, 198, 6077, 5453, 30, 2, 198, 1, 4093, 198, 26843, 2, 198, 1, 520, 9531, 198,
    19556, 17, 2, 198, 1, 4093, 198, 3087, 85, 2, 198, 1, 520, 9531, 198,
]  # fmt: skip


@pytest.mark.transformers
@pytest.mark.parametrize("text", list(EXPECTED))
def test_gguf_tokenizer_matches_transformers(text: str) -> None:
    tok = default_tokenizer()
    ids = tok.encode(text)
    assert ids == EXPECTED[text]
    plain = text.replace("<|im_start|>", "").replace("<|im_end|>", "")
    assert tok.decode(ids) == plain  # special tokens skipped by default
    assert tok.decode(ids, skip_special_tokens=False) == text


def test_special_ids_and_chat_template() -> None:
    tok = default_tokenizer()
    assert tok.bos_token_id == 1
    assert tok.eos_token_ids == (2,)  # <|im_end|>: the end of an assistant turn
    assert tok.apply_chat_template(CHAT) == CHAT_TEXT
    assert tok.encode_chat(CHAT) == CHAT_IDS
    # The default system prompt of the template appears when none is given.
    one = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert one.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert one.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert not tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=False
    ).endswith("assistant\n")


def test_no_chat_template_is_a_clear_error() -> None:
    from tokensampler.model import Tokenizer

    tok = default_tokenizer()
    bare = Tokenizer(tok.tokenizer, eos_token_ids=[2], name="bare")
    with pytest.raises(ValueError, match="no chat template"):
        bare.apply_chat_template([{"role": "user", "content": "x"}])


def test_incremental_decoder_pieces_join_to_the_full_text() -> None:
    from tokensampler.model import IncrementalDecoder

    tok = default_tokenizer()
    text = "héllo wörld — “quotes” 世界 🎉 and <|im_end|> done"
    ids = tok.encode(text)
    dec = IncrementalDecoder(tok)
    pieces = [dec.push(i) for i in ids]
    pieces.append(dec.flush())
    assert "".join(pieces) == tok.decode(ids)
    # Byte-level tokens that split a character give "" until the character is complete.
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces


@pytest.mark.transformers
def test_sentencepiece_gguf_vocabulary_matches_transformers() -> None:
    """A `tokenizer.ggml.model = llama` vocabulary (Llama 2 / TinyLlama / Mistral GGUFs):
    merges recovered from the scores, byte fallback, Metaspace; compared with transformers'
    own GGUF tokenizer conversion on the same metadata."""
    gguf_tok = pytest.importorskip("transformers.integrations.gguf.gguf_tokenizer_mapping")
    from tokensampler.model import Tokenizer

    pieces = ["▁", "h", "e", "l", "o", "w", "r", "d", "t", "▁h", "he", "ll", "lo", "llo",
              "▁he", "▁hello", "▁w", "or", "▁wor", "ld", "▁world", "▁t", "th", "▁the", "el"]  # fmt: skip
    tokens = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], *pieces]
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }
    ours = Tokenizer.from_gguf_metadata(meta)
    ref_dict = {"tokenizer_type": "llama", "tokens": tokens, "token_type": types,
                "scores": scores, "bos_token_id": 1, "eos_token_id": 2, "unk_token_id": 0}  # fmt: skip
    ref, _ = gguf_tok.convert_gguf_tokenizer("llama", ref_dict)
    for text in ["hello world", "Hello world", " hello", "hello\nworld", "héllo 😀",
                 "the world hello", "<s>the</s>"]:  # fmt: skip
        ids = ours.encode(text, add_special_tokens=False)
        assert ids == ref.encode(text, add_special_tokens=False).ids, text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=True), text
    assert ours.encode("hello") == [1, tokens.index("▁hello")]  # BOS added, as llama.cpp does
    assert ours.decode(ours.encode("héllo 😀 world")) == "héllo 😀 world"
    assert ours.eos_token_ids == (2,)
    from tokensampler.model import IncrementalDecoder

    dec = IncrementalDecoder(ours)
    ids = ours.encode("hello world the héllo", add_special_tokens=False)
    assert "".join([dec.push(i) for i in ids] + [dec.flush()]) == "hello world the héllo"
