"""Structured output: JSON schemas, regular expressions and grammars as token bitmasks.

A constraint is compiled once for a tokenizer; each constrained row of a batch then has a
matcher that follows the row's text, fills the row's words of the bitmask before every step
and consumes the token that was sampled. The bitmask is what the sampler's ``token_bitmask=``
reads (the format xgrammar, llguidance and outlines-core all emit): int32 ``(B, ceil(V/32))``,
token ``j`` is bit ``j % 32`` of word ``j // 32``, 1 = allowed. A free row is all ones.

Two backends, behind one small interface (`Backend`, `Matcher`):

- ``"llguidance"`` (default; in the ``model`` extra): an abi3 wheel without dependencies;
- ``"xgrammar"`` (in the ``structured`` extra), imported only when chosen.

Both are built from the model's own vocabulary: the `tokenizers` tokenizer that
`tokensampler.model.load` builds from tokenizer.json or from a GGUF (byte-level and
byte-fallback vocabularies alike), so the bytes a grammar checks are the bytes the text is
decoded from. `get_backend` checks their agreement at setup: a tokenizer with more ids than the
model has logits, or a backend that reads the tokens differently from the tokenizer's own
decoder, is an error there, never wrong output. Ids the model has and the tokenizer lacks (a
padded embedding) are never allowed in a constrained row.

>>> from tokensampler.model import load  # doctest: +SKIP
>>> from tokensampler.generate import generate  # doctest: +SKIP
>>> model, tok = load()  # doctest: +SKIP
>>> out = generate(model, tok, "A JSON object for a cat:", json_schema={"type": "object"})  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import re
import threading
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import numpy as np

if TYPE_CHECKING:
    import llguidance
    import torch
    import xgrammar

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendName",
    "Constraint",
    "JsonSchema",
    "JsonSchemas",
    "Matcher",
    "RowMasks",
    "StepBitmask",
    "StructuredOutputError",
    "Vocabulary",
    "get_backend",
    "row_constraints",
]

BackendName = Literal["llguidance", "xgrammar"]
BACKENDS: tuple[BackendName, ...] = ("llguidance", "xgrammar")
ConstraintKind = Literal["json_schema", "regex", "grammar"]
JsonSchema = Mapping[str, Any] | str | bool
# one schema for every row, or one per row (None: a free row)
JsonSchemas = JsonSchema | Sequence[JsonSchema | None] | None

# Compiled constraints kept per backend (a long-running process sees the same few schemas).
_COMPILED_CACHE = 64


class StructuredOutputError(ValueError):
    """A constraint the backend rejects, one the tokenizer cannot satisfy, or a tokenizer that
    does not agree with the model or the backend. The message names the constraint."""


# ==============================================================================================
# constraints
# ==============================================================================================


@dataclass(frozen=True)
class Constraint:
    """One row's constraint: ``kind`` and its text (a JSON schema as JSON text, a regular
    expression, or a grammar: Lark when it defines ``start:``, else GBNF, llama.cpp's EBNF)."""

    kind: ConstraintKind
    text: str

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any] | str | bool) -> Constraint:
        """From a schema as a dict (or bool) or as JSON text; the text must be valid JSON."""
        if isinstance(schema, str):
            try:
                json.loads(schema)
            except json.JSONDecodeError as e:
                raise StructuredOutputError(f"json_schema is not valid JSON: {e}") from None
            return cls("json_schema", schema)
        if isinstance(schema, (Mapping, bool)):
            try:
                # Key order is kept: it is the order the properties are generated in.
                return cls("json_schema", json.dumps(schema, ensure_ascii=False))
            except (TypeError, ValueError) as e:
                raise StructuredOutputError(f"json_schema cannot be written as JSON: {e}") from None
        raise TypeError(f"json_schema must be a dict or a JSON string, got {type(schema).__name__}")

    def describe(self, width: int = 72) -> str:
        """``kind text`` with the text shortened to `width` characters, for messages."""
        text = " ".join(self.text.split())
        if len(text) > width:
            text = text[: width - 3] + "..."
        return f"{self.kind} {text!r}" if self.kind != "json_schema" else f"json_schema {text}"


def _per_row(value: Any, b: int, name: str, single: Callable[[Any], bool]) -> list[Any]:
    if value is None:
        return [None] * b
    if single(value):
        return [value] * b
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise TypeError(f"{name}: expected one value or one per row, got {type(value).__name__}")
    if len(value) != b:
        raise ValueError(f"{name} has {len(value)} entries for {b} rows (give one per row)")
    return list(value)


def row_constraints(
    batch_size: int,
    *,
    json_schema: JsonSchemas = None,
    regex: str | Sequence[str | None] | None = None,
    grammar: str | Sequence[str | None] | None = None,
) -> list[Constraint | None]:
    """Each row's constraint from `generate`'s keywords.

    Each keyword is one value for every row or a list with one value per row (None: a free
    row); a row may have at most one constraint. A JSON schema is a dict (or its JSON text),
    so a list of them is read as one per row.

    >>> [c and c.kind for c in row_constraints(2, regex=[None, "[0-9]+"])]
    [None, 'regex']
    """

    def is_schema(v: Any) -> bool:
        return isinstance(v, (Mapping, str, bool))

    def is_text(v: Any) -> bool:
        return isinstance(v, str)

    schemas = _per_row(json_schema, batch_size, "json_schema", is_schema)
    regexes = _per_row(regex, batch_size, "regex", is_text)
    grammars = _per_row(grammar, batch_size, "grammar", is_text)
    out: list[Constraint | None] = []
    for b, (s, r, g) in enumerate(zip(schemas, regexes, grammars, strict=True)):
        given = [n for n, v in (("json_schema", s), ("regex", r), ("grammar", g)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"row {b} has both {given[0]} and {given[1]}: give one constraint")
        if s is not None:
            out.append(Constraint.json_schema(s))
        elif r is not None:
            if not isinstance(r, str):
                raise TypeError(f"regex of row {b} must be a string, got {type(r).__name__}")
            out.append(Constraint("regex", r))
        elif g is not None:
            if not isinstance(g, str):
                raise TypeError(f"grammar of row {b} must be a string, got {type(g).__name__}")
            if not g.strip():
                raise StructuredOutputError(f"grammar of row {b} is empty")
            out.append(Constraint("grammar", g))
        else:
            out.append(None)
    return out


_LARK_START = re.compile(r"(?m)^\s*(%llguidance\b|start\s*:)")


def is_lark(grammar: str) -> bool:
    """Lark when the grammar defines ``start:`` (llguidance's own rule); else GBNF."""
    return _LARK_START.search(grammar) is not None


# ==============================================================================================
# the vocabulary both backends are built from
# ==============================================================================================

# Checked at setup: every backend must read these pieces' tokens as the tokenizer decodes them
# (byte-level alphabet, byte-fallback <0xNN> tokens, sentencepiece spaces, multi-byte UTF-8).
_PROBES = (
    "Hello, world!",
    ' {"id": 42, "tags": ["a b", "c"], "ok": true}',
    "\n\tdéjà vu — naïve",
    " 中文 😀 ∑ x² ≤ 3",
)


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """The model's vocabulary as the backends see it.

    Attributes:
        tokenizer: the `tokenizers.Tokenizer` (tokenizer.json, or built from a GGUF).
        size: the tokenizer's ids are 0 .. size - 1.
        vocab_size: V, the width of the model's logits (>= size; larger when the embedding is
            padded, and those ids are never allowed in a constrained row).
        eos_token_ids: the ids that end a row; the backends allow them once the grammar is
            complete.
        special_ids: the tokenizer's special tokens (never text: a grammar cannot produce them
            except at its end, as eos).
    """

    tokenizer: Any
    size: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    special_ids: frozenset[int]

    @property
    def words(self) -> int:
        """ceil(V / 32): the int32 words of one mask row."""
        return -(-self.vocab_size // 32)

    @property
    def tokenizer_words(self) -> int:
        """ceil(size / 32): the words a backend fills (the rest of a constrained row is 0)."""
        return -(-self.size // 32)

    @classmethod
    def from_tokenizer(
        cls,
        tokenizer: Any,
        vocab_size: int | None = None,
        eos_token_ids: Sequence[int] | None = None,
    ) -> Vocabulary:
        """From `tokensampler.model`'s tokenizer, a Hugging Face fast tokenizer, or a
        `tokenizers.Tokenizer` (then give `eos_token_ids`).

        Args:
            vocab_size: the model's logits width V (default: the tokenizer's size).
            eos_token_ids: default the tokenizer's eos ids.

        Raises:
            StructuredOutputError: the tokenizer has more ids than the model has logits, or
                an eos id outside the model's vocabulary.
        """
        tk, eos = _backend_tokenizer(tokenizer)
        if eos_token_ids is not None:
            eos = tuple(int(i) for i in eos_token_ids)
        vocab = tk.get_vocab(with_added_tokens=True)
        size = max(vocab.values()) + 1 if vocab else 0
        if size == 0:
            raise StructuredOutputError("the tokenizer has an empty vocabulary")
        v = size if vocab_size is None else int(vocab_size)
        check_fits(size, v)
        bad = [i for i in eos if not 0 <= i < size]
        if bad:
            raise StructuredOutputError(f"eos id(s) {bad} are outside the tokenizer's {size} ids")
        special = frozenset(
            int(i) for i, t in tk.get_added_tokens_decoder().items() if getattr(t, "special", False)
        )
        return cls(tk, size, v, eos, special)


def check_fits(size: int, vocab_size: int) -> None:
    """Raises `StructuredOutputError` when a tokenizer of `size` ids has more than the
    model's logits (`vocab_size`): it is not this model's tokenizer."""
    if size > vocab_size:
        raise StructuredOutputError(
            f"the tokenizer has {size} token ids but the model's logits have {vocab_size}: ids "
            f"{vocab_size}..{size - 1} could be allowed by a grammar and never sampled. This "
            "tokenizer does not belong to this model"
        )


def _backend_tokenizer(tokenizer: Any) -> tuple[Any, tuple[int, ...]]:
    """(the `tokenizers.Tokenizer`, eos ids) of ours, a HF fast tokenizer, or a raw one."""
    from tokenizers import Tokenizer as RawTokenizer

    if isinstance(tokenizer, RawTokenizer):
        return tokenizer, ()
    inner = getattr(tokenizer, "tokenizer", None)  # tokensampler.model.Tokenizer
    if isinstance(inner, RawTokenizer):
        return inner, tuple(int(i) for i in getattr(tokenizer, "eos_token_ids", ()))
    backend = getattr(tokenizer, "backend_tokenizer", None)  # transformers' fast tokenizers
    if isinstance(backend, RawTokenizer):
        # A copy without padding or truncation: both would change what to_str() describes.
        backend = copy.copy(backend)
        backend.no_padding()
        backend.no_truncation()
        eos = getattr(tokenizer, "eos_token_id", None)
        ids = eos if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos])
        return backend, tuple(int(i) for i in ids)
    raise TypeError(
        "structured output needs a tokenizers-backed tokenizer (tokensampler.model's, a Hugging "
        f"Face fast tokenizer or a tokenizers.Tokenizer), got {type(tokenizer).__name__}"
    )


def _one_line(message: str) -> str:
    """A backend's message on one line: without llguidance's parser-state dump and the
    source-and-caret diagrams both backends draw under a grammar error."""
    message = message.split("<state>", 1)[0]
    lines = [line.strip() for line in message.splitlines()]
    keep = [x for x in lines if x and not re.fullmatch(r"\^+", x) and not re.match(r"\d+ \|", x)]
    return " ".join(keep)


def _decodes(tk: Any, ids: list[int]) -> str:
    return str(tk.decode(ids, skip_special_tokens=False))


# ==============================================================================================
# the backend interface
# ==============================================================================================


class Matcher(ABC):
    """One row's state in one constraint."""

    def __init__(self, constraint: Constraint) -> None:
        self.constraint = constraint
        self.consumed: list[int] = []  # the row's tokens so far (for messages and rollback)

    @abstractmethod
    def fill(self, words: np.ndarray) -> None:
        """Writes the allowed next tokens into `words`: a contiguous int32 array of
        `Vocabulary.tokenizer_words` words."""

    @abstractmethod
    def _consume(self, token: int) -> bool: ...

    def consume(self, token: int) -> bool:
        """Advances past `token`; False (and the matcher is then broken) when it was not
        allowed."""
        ok = self._consume(int(token))
        if ok:
            self.consumed.append(int(token))
        return ok

    @abstractmethod
    def is_finished(self) -> bool:
        """The grammar is complete and nothing but eos may follow."""

    @abstractmethod
    def is_accepting(self) -> bool:
        """The text so far is a complete match (eos is allowed now)."""

    @abstractmethod
    def _rollback(self, n: int) -> None: ...

    def rollback(self, n: int) -> None:
        """Forgets the last `n` consumed tokens."""
        if n > 0:
            self._rollback(n)
            del self.consumed[-n:]

    @abstractmethod
    def _reset(self) -> None: ...

    def reset(self) -> None:
        """Back to the start of the constraint."""
        self._reset()
        self.consumed.clear()

    @abstractmethod
    def error(self) -> str:
        """The backend's error message, "" when there is none."""


class Backend(ABC):
    """A constraint compiler for one vocabulary."""

    name: ClassVar[BackendName]

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self._compiled: OrderedDict[Constraint, Any] = OrderedDict()
        self._lock = threading.Lock()

    @abstractmethod
    def _compile(self, constraint: Constraint) -> Any:
        """The compiled form of `constraint` (raises `StructuredOutputError` naming it)."""

    @abstractmethod
    def _new_matcher(self, constraint: Constraint, compiled: Any) -> Matcher: ...

    @abstractmethod
    def token_bytes(self, ids: Sequence[int]) -> bytes:
        """The bytes the backend reads for these tokens (its view of the vocabulary)."""

    def matcher(self, constraint: Constraint) -> Matcher:
        """A fresh matcher at the start of `constraint`, compiled once per backend.

        Raises:
            StructuredOutputError: the backend rejects the constraint, or no token of the
                vocabulary can start it.
        """
        with self._lock:
            compiled = self._compiled.get(constraint)
            if compiled is not None:
                self._compiled.move_to_end(constraint)
        if compiled is None:
            compiled = self._compile(constraint)
            m = self._new_matcher(constraint, compiled)
            # A constraint no token can start would only fail at the first step, as an
            # empty row; checked once here so that the error names the constraint.
            words = np.zeros(self.vocab.tokenizer_words, dtype=np.int32)
            m.fill(words)
            if not words.any():
                raise StructuredOutputError(
                    f"{constraint.describe()} cannot be satisfied with this tokenizer: no "
                    f"token of its vocabulary can start it ({self.name}"
                    + (f": {_one_line(m.error())})" if m.error() else ")")
                )
            with self._lock:
                self._compiled[constraint] = compiled
                while len(self._compiled) > _COMPILED_CACHE:
                    self._compiled.popitem(last=False)
            return m
        return self._new_matcher(constraint, compiled)

    def check_vocabulary(self) -> None:
        """Raises `StructuredOutputError` when the backend reads the probe texts' tokens as
        other bytes than the tokenizer decodes them to (a vocabulary it misunderstands)."""
        tk = self.vocab.tokenizer
        unk_token = (json.loads(tk.to_str()).get("model") or {}).get("unk_token")
        unk = tk.token_to_id(unk_token) if isinstance(unk_token, str) else None
        for text in _PROBES:
            ids = [int(i) for i in tk.encode(text, add_special_tokens=False).ids]
            if unk is not None and unk in ids:
                continue  # the tokenizer cannot write this text: nothing to agree on
            ours = _decodes(tk, ids)
            theirs = self.token_bytes(ids).decode("utf-8", errors="replace")
            # A sentencepiece vocabulary spells the first word's space, which its decoder strips.
            if theirs not in (ours, " " + ours):
                raise StructuredOutputError(
                    f"{self.name} reads this tokenizer's tokens differently from the "
                    f"tokenizer's own decoder: {ids} decode to {ours!r} but {self.name} sees "
                    f"{theirs!r}; constrained output would not match the text"
                )


# ---- llguidance ------------------------------------------------------------------------------


def _require(package: str, extra: str, what: str) -> None:
    """Imports `package` once, or raises an ImportError that names the extra to install."""
    import importlib

    try:
        importlib.import_module(package)
    except ImportError as e:
        raise ImportError(
            f"{what} needs the {package} package: pip install 'tokensampler[{extra}]'"
        ) from e


class _GuidanceMatcher(Matcher):
    def __init__(self, constraint: Constraint, m: llguidance.LLMatcher) -> None:
        super().__init__(constraint)
        self.m = m

    def fill(self, words: np.ndarray) -> None:
        if words.dtype != np.int32 or not words.flags.c_contiguous:
            raise ValueError("a mask row must be contiguous int32")
        # The pointer form writes straight into the caller's buffer (llguidance.numpy's
        # helper does the same, on a whole 2-D buffer); the size is checked by llguidance.
        self.m.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
        if self.m.is_error():
            # A dead end (no token continues the text) puts llguidance in an error state in
            # which it allows eos, and would accept it: the row must read as empty instead.
            words[:] = 0

    def _consume(self, token: int) -> bool:
        return bool(self.m.consume_token(token))

    def is_finished(self) -> bool:
        return bool(self.m.is_stopped()) and not self.m.is_error()

    def is_accepting(self) -> bool:
        return bool(self.m.is_accepting())

    def _rollback(self, n: int) -> None:
        self.m.rollback(n)

    def _reset(self) -> None:
        self.m.reset()

    def error(self) -> str:
        return str(self.m.get_error())


class GuidanceBackend(Backend):
    """llguidance: an `LLTokenizer` from the tokenizer's JSON, one `LLMatcher` per row."""

    name: ClassVar[BackendName] = "llguidance"

    def __init__(self, vocab: Vocabulary) -> None:
        super().__init__(vocab)
        _require("llguidance", "model", "structured output with the llguidance backend")
        import llguidance

        eos: list[int] | None = list(vocab.eos_token_ids) or None
        try:
            self.tokenizer = llguidance.LLTokenizer(vocab.tokenizer.to_str(), eos_token=eos)
        except Exception as e:  # llguidance raises plain exceptions for what it cannot read
            raise StructuredOutputError(f"llguidance cannot read this tokenizer: {e}") from e
        if self.tokenizer.vocab_size != vocab.size:
            raise StructuredOutputError(
                f"llguidance reads {self.tokenizer.vocab_size} tokens from this tokenizer, "
                f"which has {vocab.size}"
            )

    def _compile(self, constraint: Constraint) -> llguidance.LLMatcher:
        import llguidance as llg

        try:
            if constraint.kind == "json_schema":
                grammar = str(llg.LLMatcher.grammar_from_json_schema(constraint.text))
            elif constraint.kind == "regex":
                grammar = str(llg.LLMatcher.grammar_from_regex(constraint.text))
            else:
                grammar = str(llg.grammar_from("grammar", constraint.text))
        except ValueError as e:
            raise StructuredOutputError(
                f"llguidance rejects {constraint.describe()}: {_one_line(str(e))}"
            ) from None
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
        if is_error:
            raise StructuredOutputError(
                f"llguidance rejects {constraint.describe()}: {_one_line(messages[0])}"
            )
        # The first matcher compiles the grammar; later rows copy it (a deep copy is cheap).
        m = llg.LLMatcher(self.tokenizer, grammar, log_level=0)
        if m.is_error():
            raise StructuredOutputError(
                f"llguidance rejects {constraint.describe()}: {_one_line(m.get_error())}"
            )
        return m

    def _new_matcher(self, constraint: Constraint, compiled: Any) -> Matcher:
        return _GuidanceMatcher(constraint, cast("llguidance.LLMatcher", compiled).deep_copy())

    def token_bytes(self, ids: Sequence[int]) -> bytes:
        return bytes(self.tokenizer.decode_bytes(list(ids)))


# ---- xgrammar --------------------------------------------------------------------------------


def _vocab_type(tokenizer_json: Mapping[str, Any]) -> tuple[str, bool]:
    """(xgrammar's vocabulary type name, add_prefix_space) from a tokenizer.json: the decoder
    says how token strings map to bytes (byte-level alphabet, or <0xNN> byte fallback), the
    pre-tokenizer / normalizer whether a space is prepended (sentencepiece's Metaspace)."""

    def walk(node: Any) -> list[Mapping[str, Any]]:
        if isinstance(node, Mapping):
            found = [node]
            for key in ("decoders", "pretokenizers", "normalizers"):
                for child in node.get(key) or []:
                    found += walk(child)
            return found
        return []

    decoders = walk(tokenizer_json.get("decoder"))
    types = {d.get("type") for d in decoders}
    model = tokenizer_json.get("model") or {}
    if "ByteLevel" in types:
        kind = "BYTE_LEVEL"
    elif "ByteFallback" in types or model.get("byte_fallback"):
        kind = "BYTE_FALLBACK"
    else:
        kind = "RAW"
    prefix = False
    for node in walk(tokenizer_json.get("pre_tokenizer")) + walk(tokenizer_json.get("normalizer")):
        if node.get("type") == "Metaspace":
            prefix = node.get("prepend_scheme", "always") != "never" and node.get(
                "add_prefix_space", True
            )
        elif node.get("type") == "Prepend" and node.get("prepend") == "\u2581":
            prefix = True
    return kind, bool(prefix)


class _XGrammarMatcher(Matcher):
    def __init__(
        self, constraint: Constraint, m: xgrammar.GrammarMatcher, stop_ids: np.ndarray, words: int
    ) -> None:
        super().__init__(constraint)
        self.m = m
        self.stop_ids = stop_ids
        # is_finished computes the next mask to see whether only stop tokens remain; fill
        # then reuses it (the state has not moved).
        self._next: np.ndarray | None = None
        self._words = words

    def fill(self, words: np.ndarray) -> None:
        if self._next is not None:
            words[:] = self._next
            return
        # xgrammar reads a (batch, words) int32 array through DLPack; a row is a (1, W) view.
        self.m.fill_next_token_bitmask(words.reshape(1, -1), 0)

    def _consume(self, token: int) -> bool:
        self._next = None
        return bool(self.m.accept_token(token))

    def is_finished(self) -> bool:
        if self.m.is_terminated():
            return True
        if not self.m.is_completed():
            return False
        nxt = np.zeros(self._words, dtype=np.int32)
        self.m.fill_next_token_bitmask(nxt.reshape(1, -1), 0)
        self._next = nxt
        allowed = np.flatnonzero(np.unpackbits(nxt.view(np.uint8), bitorder="little"))
        return bool(np.isin(allowed, self.stop_ids).all())

    def is_accepting(self) -> bool:
        return bool(self.m.is_completed())

    def _rollback(self, n: int) -> None:
        self._next = None
        self.m.rollback(n)

    def _reset(self) -> None:
        self._next = None
        self.m.reset()

    def error(self) -> str:
        return ""


# xgrammar's C++ errors start with "[hh:mm:ss] /path/file.cc:123: " and may carry the failed
# check's expression: the user needs the message after them.
_XGR_PREFIX = re.compile(r"^\[[0-9:]+\] \S+:\d+: (Check failed: .*? is false: )?")


def _xgrammar_message(e: BaseException) -> str:
    return _one_line(_XGR_PREFIX.sub("", str(e).strip()))


class XGrammarBackend(Backend):
    """xgrammar: a `TokenizerInfo` from the vocabulary's token strings (special tokens
    blanked, so that they are never text), a `GrammarCompiler` with its own cache."""

    name: ClassVar[BackendName] = "xgrammar"

    def __init__(self, vocab: Vocabulary) -> None:
        super().__init__(vocab)
        _require("xgrammar", "structured", "structured_backend='xgrammar'")
        import xgrammar as xgr

        tk = vocab.tokenizer
        kind, prefix = _vocab_type(json.loads(tk.to_str()))
        strings = [""] * vocab.size
        for token, i in tk.get_vocab(with_added_tokens=True).items():
            if i not in vocab.special_ids:
                strings[i] = token
        try:
            self.info = xgr.TokenizerInfo(
                strings,
                xgr.VocabType[kind],
                vocab_size=vocab.size,
                stop_token_ids=list(vocab.eos_token_ids) or None,
                add_prefix_space=prefix,
            )
        except Exception as e:  # xgrammar raises RuntimeError from C++ for what it cannot read
            raise StructuredOutputError(f"xgrammar cannot read this tokenizer: {e}") from e
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=2)
        self._decoded: list[bytes] | None = None
        self.stop_ids = np.array(self.info.stop_token_ids, dtype=np.int64)

    def _compile(self, constraint: Constraint) -> xgrammar.CompiledGrammar:
        c = self.compiler
        try:
            if constraint.kind == "json_schema":
                return c.compile_json_schema(constraint.text, strict_mode=False)
            if constraint.kind == "regex":
                return c.compile_regex(constraint.text)
            if is_lark(constraint.text):
                return c.compile_lark(constraint.text)
            return c.compile_grammar(constraint.text)
        except (RuntimeError, ValueError) as e:
            raise StructuredOutputError(
                f"xgrammar rejects {constraint.describe()}: {_xgrammar_message(e)}"
            ) from None

    def _new_matcher(self, constraint: Constraint, compiled: Any) -> Matcher:
        import xgrammar as xgr

        m = xgr.GrammarMatcher(compiled)
        return _XGrammarMatcher(constraint, m, self.stop_ids, self.vocab.tokenizer_words)

    def token_bytes(self, ids: Sequence[int]) -> bytes:
        if self._decoded is None:
            self._decoded = [bytes(b) for b in self.info.decoded_vocab]
        return b"".join(self._decoded[i] for i in ids)


_BACKEND_CLASSES: dict[str, type[Backend]] = {
    "llguidance": GuidanceBackend,
    "xgrammar": XGrammarBackend,
}

# Building a backend reads the whole vocabulary (0.2-0.5 s for 49k tokens): one per
# (tokenizer, V, eos ids, backend), for as long as the tokenizer object lives.
_BACKENDS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], Backend]] = (
    weakref.WeakKeyDictionary()
)
_BACKENDS_LOCK = threading.Lock()


def get_backend(
    name: str,
    tokenizer: Any,
    vocab_size: int | None = None,
    eos_token_ids: Sequence[int] | None = None,
) -> Backend:
    """The backend `name` for this tokenizer and the model's logits width, built once.

    Raises:
        ValueError: an unknown backend name.
        ImportError: the backend's package is not installed (naming the extra).
        StructuredOutputError: the tokenizer does not fit the model or the backend.
    """
    if name not in _BACKEND_CLASSES:
        raise ValueError(f"structured_backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    key = (name, vocab_size, None if eos_token_ids is None else tuple(eos_token_ids))
    try:
        with _BACKENDS_LOCK:
            cached = _BACKENDS.setdefault(tokenizer, {}).get(key)
    except TypeError:  # not weakly referenceable: built each time
        cached = None
    if cached is not None:
        return cached
    vocab = Vocabulary.from_tokenizer(tokenizer, vocab_size, eos_token_ids)
    backend = _BACKEND_CLASSES[name](vocab)
    backend.check_vocabulary()
    try:
        with _BACKENDS_LOCK:
            _BACKENDS.setdefault(tokenizer, {})[key] = backend
    except TypeError:
        pass
    return backend


# ==============================================================================================
# a batch's masks
# ==============================================================================================


class RowMasks:
    """The bitmask of one batch: a matcher per constrained row, free rows all ones.

    >>> masks = RowMasks(backend, row_constraints(2, regex=[None, "[0-9]+"]))  # doctest: +SKIP
    >>> mask = masks.fill()            # (2, ceil(V/32)) int32, row 0 all ones  # doctest: +SKIP
    >>> done = masks.advance(1, token)  # True once the grammar is complete  # doctest: +SKIP
    """

    def __init__(
        self,
        backend: Backend,
        constraints: Sequence[Constraint | None],
        *,
        empty_is_error: bool = True,
    ) -> None:
        self.backend = backend
        self.constraints = list(constraints)
        self.matchers: list[Matcher | None] = [
            None if c is None else backend.matcher(c) for c in self.constraints
        ]
        vocab = backend.vocab
        self.mask = np.full((len(self.constraints), vocab.words), -1, dtype=np.int32)
        self._tw = vocab.tokenizer_words
        # Ids past the tokenizer (a padded embedding) stay banned in constrained rows.
        for b, m in enumerate(self.matchers):
            if m is not None:
                self.mask[b, self._tw :] = 0
        self.empty_is_error = empty_is_error

    def constrains(self, running: Sequence[bool]) -> bool:
        """Whether any row that `running` marks has a constraint (else no mask is needed)."""
        return any(m is not None and r for m, r in zip(self.matchers, running, strict=True))

    def fill(self, running: Sequence[bool] | None = None) -> np.ndarray:
        """Writes the allowed next tokens of every constrained row (those `running` marks,
        when given; a row that has ended is set to all ones) and returns the mask.

        Raises:
            StructuredOutputError: a row in which no token can continue its constraint
                (with ``empty_is_error``; else the sampler gets an empty row).
        """
        for b, m in enumerate(self.matchers):
            if m is None:
                continue
            if running is not None and not running[b]:
                self.mask[b] = -1
                continue
            row = self.mask[b, : self._tw]
            m.fill(row)
            if self.empty_is_error and not row.any():
                text = self.backend.token_bytes(m.consumed).decode("utf-8", errors="replace")
                raise StructuredOutputError(
                    f"row {b}: no token of this tokenizer can continue "
                    f"{m.constraint.describe()} after {text!r}"
                    + (f" ({_one_line(m.error())})" if m.error() else "")
                )
        return self.mask

    def advance(self, row: int, token: int) -> bool:
        """Row `row` emitted `token`: advances its matcher. True when the row's constraint
        is now complete (nothing but eos could follow); always False for a free row.

        Raises:
            StructuredOutputError: the token was not allowed (the mask was not applied).
        """
        m = self.matchers[row]
        if m is None:
            return False
        if not m.consume(token):
            raise StructuredOutputError(
                f"row {row}: token {token} is not allowed by {m.constraint.describe()}"
                + (f": {_one_line(m.error())}" if m.error() else "")
                + " (was the token bitmask applied?)"
            )
        return m.is_finished()


class StepBitmask:
    """A per-step mask callback for loops that pass the whole ids so far each step, as
    Hugging Face's `model.generate` does: ``mask = fn(input_ids)`` returns the
    (B, ceil(V/32)) int32 mask for the next token. Give it to
    ``tokensampler.hf.TokenSamplerLogitsProcessor(token_bitmask_fn=...)``.

    The first call (or one whose ids are no longer than the last call's, or of another batch
    size) starts a new generation: its ids are the prompts. Each later call consumes the
    ids appended since. A row that emitted an eos id is done and gets all ones from then on
    (Hugging Face pads it).

    Args:
        tokenizer: the model's tokenizer (ours, a Hugging Face fast tokenizer, or a
            `tokenizers.Tokenizer` with `eos_token_ids`).
        vocab_size: the model's logits width V; None: the tokenizer's size (the mask is then
            shorter than a padded vocabulary, and the sampler bans the ids past it).
        json_schema, regex, grammar: as in `tokensampler.generate.generate` (one value, or one
            per row with None for free rows).
        backend: "llguidance" (default) or "xgrammar".
        eos_token_ids: default the tokenizer's.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        vocab_size: int | None = None,
        json_schema: JsonSchemas = None,
        regex: str | Sequence[str | None] | None = None,
        grammar: str | Sequence[str | None] | None = None,
        backend: str = "llguidance",
        eos_token_ids: Sequence[int] | None = None,
    ) -> None:
        if json_schema is None and regex is None and grammar is None:
            raise ValueError("StepBitmask needs a json_schema, regex or grammar")
        self.spec: dict[str, Any] = {"json_schema": json_schema, "regex": regex, "grammar": grammar}
        self.backend = get_backend(backend, tokenizer, vocab_size, eos_token_ids)
        # Compiled now, so that a bad constraint fails here rather than inside model.generate.
        lists = [len(v) for v in self.spec.values() if isinstance(v, (list, tuple))]
        for c in dict.fromkeys(row_constraints(lists[0] if lists else 1, **self.spec)):
            if c is not None:
                self.backend.matcher(c)
        self._eos = frozenset(self.backend.vocab.eos_token_ids)
        self.masks: RowMasks | None = None
        self._seen = 0
        self._done: list[bool] = []

    def reset(self) -> None:
        """The next call starts a new generation, whatever its ids."""
        self.masks = None
        self._seen = 0

    def check_vocab_size(self, vocab_size: int) -> None:
        """Raises `StructuredOutputError` when the tokenizer has more ids than the model's
        logits (`vocab_size`) have: it is not this model's tokenizer."""
        check_fits(self.backend.vocab.size, vocab_size)

    def __call__(self, input_ids: Any) -> np.ndarray:
        ids = _as_id_rows(input_ids)
        b, n = ids.shape
        if self.masks is None or b != len(self._done) or n <= self._seen:
            self.masks = RowMasks(self.backend, row_constraints(b, **self.spec))
            self._done = [False] * b
        else:
            for row in range(b):
                for tok in ids[row, self._seen :].tolist():
                    if self._done[row]:
                        break
                    if tok in self._eos:
                        self._done[row] = True
                    else:
                        self.masks.advance(row, tok)
        self._seen = n
        return self.masks.fill([not d for d in self._done])


def _as_id_rows(input_ids: Any) -> np.ndarray:
    """(B, L) int64 host ids from a tensor or an array."""
    if hasattr(input_ids, "detach"):
        t = cast("torch.Tensor", input_ids)
        arr = t.detach().to("cpu").numpy()
    else:
        arr = np.asarray(input_ids)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"input_ids must be (L,) or (B, L), got shape {arr.shape}")
    return arr.astype(np.int64, copy=False)
