"""Strings -> token-id sequences for the two sampling options that users give as text: DRY
sequence breakers (llama.cpp) and bad words (vLLM).

The kernels work on token ids only (`ts.sample` has no tokenizer), so `generate`, the CLI and
the Hugging Face processor turn strings into id sequences here, once per request, with the
same rules as the engines whose options these are; a string given to another engine gives
the same ids here.

Works with `tokensampler.model.Tokenizer` and with Hugging Face tokenizers (anything with
``encode(text, add_special_tokens=False)``, ``decode(ids, skip_special_tokens=False)`` and
``len()`` or ``vocab_size``).

>>> class Toy:  # four tokens: "a", "b", "a:", ":"
...     pieces = ["a", "b", "a:", ":"]
...     def __len__(self): return len(self.pieces)
...     def decode(self, ids, skip_special_tokens=False):
...         return "".join(self.pieces[i] for i in ids)
...     def encode(self, text, add_special_tokens=False): return [self.pieces.index(text)]
>>> dry_breaker_sequences(Toy(), [":", "b:", [1, 0]])
[[2], [3], [1, 3], [1, 0]]
"""

from __future__ import annotations

import operator
import threading
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .params import SamplingParams

__all__ = [
    "DEFAULT_DRY_BREAKERS",
    "MAX_BREAKER_BYTES",
    "MAX_BREAKER_TAIL",
    "bad_words_sequences",
    "dry_breaker_sequences",
    "resolve_strings",
]

# llama.cpp's defaults for `dry_sequence_breakers`: common/common.h, struct
# common_params_sampling (ggml-org/llama.cpp @ 001d906a6d86e2490e394361e7cc6f478b100088).
DEFAULT_DRY_BREAKERS: tuple[str, ...] = ("\n", ":", '"', "*")

# llama_sampler_init_dry's MAX_CHAR_LEN (compared with std::string::size(), so UTF-8 bytes)
# and MAX_SEQ_LEN (the longest tail kept), src/llama-sampling.cpp
# (ggml-org/llama.cpp @ 0344068cf112e524eb3fbdbd58c171870b63e56c).
MAX_BREAKER_BYTES = 40
MAX_BREAKER_TAIL = 20

_RESULTS_PER_TOKENIZER = 256  # string breakers remembered per tokenizer (LRU)


# ---- the vocabulary, decoded once per tokenizer -------------------------------------------


class _Vocab:
    """Every token's text, and the ids grouped by their text's last character (the only
    tokens that can end with a given prefix of a breaker), plus the breakers already built
    from strings. Built once per tokenizer object: decoding SmolLM2's 49k tokens one by one
    costs ~35 ms (~120 ms through transformers' own `decode`), too much for every request."""

    def __init__(self, tokenizer: Any) -> None:
        self.size = _vocab_size(tokenizer)
        self.pieces = _decode_all(tokenizer, self.size)
        by_last: defaultdict[str, list[int]] = defaultdict(list)
        for i, piece in enumerate(self.pieces):
            if piece:
                by_last[piece[-1]].append(i)
        self.by_last = dict(by_last)
        self.results: OrderedDict[str, tuple[tuple[int, ...], ...]] = OrderedDict()
        self.lock = threading.Lock()


# Keyed by the tokenizer object itself, so the entry goes with the tokenizer; id() keys could
# be reused by a later object. Tokenizers that refuse weak references are decoded every call.
_VOCABS: weakref.WeakKeyDictionary[Any, _Vocab] = weakref.WeakKeyDictionary()
_VOCABS_LOCK = threading.Lock()


def _vocab_size(tokenizer: Any) -> int:
    """`len()` first: Hugging Face's `vocab_size` leaves out added tokens (e.g. <|im_end|>),
    which llama.cpp's `n_tokens()` scan includes; our `Tokenizer` only has `vocab_size`."""
    if hasattr(tokenizer, "__len__"):
        return len(tokenizer)
    return int(tokenizer.vocab_size)


def _decode_all(tokenizer: Any, size: int) -> list[str]:
    """Each token decoded alone with special tokens rendered (llama.cpp's
    `vocab.detokenize({id}, true)`). A Hugging Face tokenizer's Rust backend is used when it
    has one: it skips transformers' per-call overhead and its `clean_up_tokenization_spaces`,
    which would rewrite a lone " ." to "." where llama.cpp keeps the token's own text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decode = backend.decode if backend is not None else tokenizer.decode
    try:
        return [str(decode([i], skip_special_tokens=False)) for i in range(size)]
    except TypeError:  # a decode without the Hugging Face keyword
        return [str(decode([i])) for i in range(size)]


def _vocab(tokenizer: Any) -> _Vocab:
    """The cached `_Vocab` of `tokenizer`, rebuilt when its size changed (tokens added)."""
    try:
        with _VOCABS_LOCK:
            vocab = _VOCABS.get(tokenizer)
    except TypeError:  # not weak-referenceable (or unhashable): no cache
        return _Vocab(tokenizer)
    if vocab is not None and vocab.size == _vocab_size(tokenizer):
        return vocab
    vocab = _Vocab(tokenizer)  # outside the lock: two threads may both build, harmlessly
    with _VOCABS_LOCK:
        _VOCABS[tokenizer] = vocab
    return vocab


def _encode(tokenizer: Any, text: str) -> list[int]:
    return [int(i) for i in tokenizer.encode(text, add_special_tokens=False)]


# ---- DRY sequence breakers ------------------------------------------------------------------


def _truncate_utf8(text: str, limit: int) -> str:
    """llama.cpp cuts a breaker at 40 bytes (`std::string::resize`); we cut at the last whole
    character within those bytes, since a partial character cannot be tokenized as text (and
    llama.cpp's tokenizer would read it as U+FFFD anyway). Same result for ASCII."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", errors="ignore")


def _string_breakers(tokenizer: Any, text: str) -> tuple[tuple[int, ...], ...]:
    """llama.cpp's `get_overlapping_token_sequences(vocab, text, ..., MAX_SEQ_LEN)` for one
    (already truncated, non-empty) string, as (head, *tail) tuples, heads in id order."""
    vocab = _vocab(tokenizer)
    with vocab.lock:
        hit = vocab.results.get(text)
        if hit is not None:
            vocab.results.move_to_end(text)
            return hit
    pieces = vocab.pieces
    # A token whose text contains the string breaks a repeat alone (empty tail).
    single = {i for i, piece in enumerate(pieces) if text in piece}
    # Otherwise every way the token's text ends with a proper prefix text[:k] of the string
    # gives a breaker head + tokens(text[k:]). llama.cpp walks the match positions left to
    # right, i.e. the longest overlap first; per head, equal tails are kept once.
    tails: dict[int, list[tuple[int, ...]]] = {}
    tail_of_rest: dict[int, tuple[int, ...]] = {}
    for k in range(len(text) - 1, 0, -1):
        prefix = text[:k]
        for i in vocab.by_last.get(text[k - 1], ()):
            if i in single or not pieces[i].endswith(prefix):
                continue
            tail = tail_of_rest.get(k)
            if tail is None:
                tail = tail_of_rest[k] = tuple(_encode(tokenizer, text[k:])[:MAX_BREAKER_TAIL])
            seen = tails.setdefault(i, [])
            if tail not in seen:
                seen.append(tail)
    out: list[tuple[int, ...]] = []
    for i in sorted(single.union(tails)):
        if i in single:
            out.append((i,))
        else:
            out.extend((i, *tail) for tail in tails[i])
    result = tuple(out)
    with vocab.lock:
        vocab.results[text] = result
        if len(vocab.results) > _RESULTS_PER_TOKENIZER:
            vocab.results.popitem(last=False)
    return result


def _id_breaker(breaker: Iterable[Any]) -> tuple[int, ...]:
    if isinstance(breaker, (bytes, bytearray)):
        raise TypeError(
            "a DRY sequence breaker is a string or a sequence of token ids, not bytes; "
            f"decode it first ({breaker!r})"
        )
    try:
        items = list(breaker)
    except TypeError:
        raise TypeError(
            f"a DRY sequence breaker is a string or a sequence of token ids, got {breaker!r}"
        ) from None
    ids: list[int] = []
    for x in items:
        if isinstance(x, bool):
            raise TypeError(f"a DRY sequence breaker's token ids must be integers, got {x!r}")
        try:
            i = operator.index(x)
        except TypeError:
            raise TypeError(
                f"a DRY sequence breaker's token ids must be integers, got {x!r}"
            ) from None
        if i < 0:
            raise ValueError(f"a DRY sequence breaker's token ids must be >= 0, got {i}")
        ids.append(i)
    return tuple(ids)


def dry_breaker_sequences(
    tokenizer: Any, breakers: Sequence[str | Sequence[int]]
) -> list[list[int]]:
    """DRY sequence breakers as token-id sequences, built the way llama.cpp builds them from
    strings, so that ``dry_sequence_breakers=["\\n", ":"]`` stops the same repeats here and in
    llama.cpp.

    Port of `get_overlapping_token_sequences` and the breaker loop of `llama_sampler_init_dry`
    (src/llama-sampling.cpp, ggml-org/llama.cpp @ 0344068cf112e524eb3fbdbd58c171870b63e56c,
    itself from koboldcpp PR #982). For each string breaker:

    * empty strings are skipped; longer ones are cut to `MAX_BREAKER_BYTES` (40) UTF-8 bytes,
      llama.cpp's ``MAX_CHAR_LEN`` (a byte count there), at a character boundary;
    * every token of the whole vocabulary (special tokens included, rendered as their text)
      whose text contains the string is a single-token breaker ``[id]``: the model can
      write the string inside one token, and a token-level match has to see that;
    * every other token whose text ends with a proper prefix ``s[:k]`` of the string is the
      head of a breaker ``[id, *tail]``, ``tail = encode(s[k:])`` without special tokens,
      cut to `MAX_BREAKER_TAIL` (20) ids (llama.cpp's ``MAX_SEQ_LEN``, which keeps the
      kernel's backward scan linear); one entry per distinct tail of a head.

    Token-id breakers (any sequence of ints, e.g. a list or a numpy array) are taken as
    given, llama.cpp's `llama_sampler_init_dry_testing`; empty ones are skipped like there.

    Returns:
        The breakers as id lists, head first (the kernel reads ``breaker[0]`` as the head and
        ``breaker[1:]`` as the tail, llama.cpp's processed multimap), in input order and, for
        a string, in head-id order; exact duplicates (which change nothing) appear once.

    Text, not bytes: llama.cpp compares the raw bytes of each token; here each token's
    decoded text is compared, where a byte-level token holding part of a UTF-8 character
    reads as U+FFFD. For breakers without U+FFFD this finds the same breakers: UTF-8 is
    self-synchronizing, so a whole character occurs in the bytes exactly when it occurs in
    the lossy text, and a token ending with whole characters of the string ends with them in
    both. The only entries llama.cpp has and we do not are heads ending inside a multi-byte
    character of the string; their tails are tokenized from bytes starting mid-character,
    which llama.cpp's tokenizer reads as U+FFFD (src/unicode.cpp `unicode_cpts_from_utf8`),
    so those entries match no real continuation. ASCII breakers (all the defaults) give
    exactly llama.cpp's set. Also: tails come from ``encode(..., add_special_tokens=False)``,
    which in Hugging Face tokenizers still matches special-token text (llama.cpp passes
    ``parse_special=false``); only a breaker spelling a special token after its first
    character is affected.

    The vocabulary is decoded once per tokenizer object and kept while the tokenizer lives
    (rebuilt if its size changes); the breakers of each string are cached with it.

    Args:
        tokenizer: `tokensampler.model.Tokenizer` or a Hugging Face tokenizer.
        breakers: strings and/or token-id sequences. A bare string is refused: it would be
            read as one breaker per character.

    Raises:
        TypeError: `breakers` is a string, or a breaker is neither a string nor integers.
        ValueError: a negative token id.
    """
    if isinstance(breakers, (str, bytes)):
        raise TypeError(
            "dry_sequence_breakers is a list of breakers; wrap a single string in a list "
            f"([{breakers!r}])"
        )
    out: list[list[int]] = []
    seen: set[tuple[int, ...]] = set()
    for breaker in breakers:
        if isinstance(breaker, str):
            text = _truncate_utf8(breaker, MAX_BREAKER_BYTES)
            seqs: Iterable[tuple[int, ...]] = _string_breakers(tokenizer, text) if text else ()
        else:
            ids = _id_breaker(breaker)
            seqs = (ids,) if ids else ()
        for seq in seqs:
            if seq not in seen:
                seen.add(seq)
                out.append(list(seq))
    return out


# ---- bad words -----------------------------------------------------------------------------


def bad_words_sequences(tokenizer: Any, words: Sequence[str]) -> list[list[int]]:
    """vLLM's `bad_words` as token-id sequences (for `bad_words_ids`), with vLLM's rule, so
    that a word list bans the same sequences here and in vLLM.

    vLLM (`get_bad_words_logits_processors`, vllm/logits_process.py, vllm-project/vllm @
    aaa9f1786cb7a5ce2ee74ad3c8af559a609d3f6e; the same loop is now
    `SamplingParams.update_from_tokenizer`) bans each word both at the start of the text and
    after a space, because BPE vocabularies spell the two differently: for each word

    * ``encode(word.lstrip(), add_special_tokens=False)`` is always kept;
    * ``encode(" " + word.lstrip(), add_special_tokens=False)`` is kept only when its first
      id differs from the first variant's and both have the same length (a prefix space that
      merely adds a separate space token would ban the wrong thing).

    Word order is kept and nothing is deduplicated, as in vLLM. Trailing whitespace is part
    of the word (vLLM strips the left side only).

    Raises:
        TypeError: `words` is a string, or a word is not a string.
        ValueError: a word that is empty or only whitespace (or tokenizes to nothing), for
            which vLLM fails with an IndexError.
    """
    if isinstance(words, (str, bytes)):
        raise TypeError(
            f"bad_words is a list of strings; wrap a single word in a list ([{words!r}])"
        )
    out: list[list[int]] = []
    for word in words:
        if not isinstance(word, str):
            raise TypeError(f"bad_words must be strings, got {word!r}")
        stripped = word.lstrip()
        plain = _encode(tokenizer, stripped) if stripped else []
        if not plain:
            raise ValueError(f"bad word {word!r} is empty once stripped (no tokens to ban)")
        out.append(plain)
        spaced = _encode(tokenizer, " " + stripped)
        if spaced and spaced[0] != plain[0] and len(spaced) == len(plain):
            out.append(spaced)
    return out


def resolve_strings(params: SamplingParams, tokenizer: Any) -> SamplingParams:
    """`params` with its strings turned into token ids for `tokenizer`: `bad_words` join
    `bad_words_ids` and string DRY breakers become id sequences; with DRY on and no breakers
    given, llama.cpp's defaults (`DEFAULT_DRY_BREAKERS`) apply, as in llama.cpp's server.
    Without a tokenizer `params` is returned as is (strings are then refused by the call).
    """
    from .params import _id_rows

    if tokenizer is None:
        return params

    def one_or_per_row(rows: list[list[Any]]) -> list[Any]:
        return rows[0] if len(rows) == 1 else rows

    changes: dict[str, Any] = {}
    if params.bad_words:
        ids = bad_words_sequences(tokenizer, params.bad_words)
        rows = _id_rows(params.bad_words_ids, "bad_words_ids", strings=False) or [[]]
        changes["bad_words_ids"] = one_or_per_row([[list(s) for s in r] + ids for r in rows])
        changes["bad_words"] = None
    breakers = _id_rows(params.dry_sequence_breakers, "dry_sequence_breakers", strings=True)
    m = params.dry_multiplier
    dry_on = any(e not in (None, 0) for e in (m if isinstance(m, tuple) else (m,)))
    if breakers is None and dry_on:
        changes["dry_sequence_breakers"] = dry_breaker_sequences(tokenizer, DEFAULT_DRY_BREAKERS)
    elif breakers is not None and any(isinstance(b, str) for r in breakers for b in r):
        changes["dry_sequence_breakers"] = one_or_per_row(
            [dry_breaker_sequences(tokenizer, r) for r in breakers]
        )
    return params.replace(**changes)
