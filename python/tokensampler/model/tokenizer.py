"""Tokenizers: HF `tokenizer.json` folders, GPT-2 `vocab.json` + `merges.txt`, or a GGUF's
own vocabulary, all run by the `tokenizers` package; chat templates rendered with jinja2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as _HFTokenizer

from .config import ModelLoadError

if TYPE_CHECKING:
    from jinja2 import Template  # imported on first use of a chat template, not at import

# Pre-tokenizer split patterns of the llama.cpp `tokenizer.ggml.pre` names we know; anything
# else falls back to GPT-2's regex, which is what the byte-level BPE of GPT-2 itself uses.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_SPLITS = {
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "qwen2": _QWEN2_SPLIT,
}

# llama.cpp token types (gguf.TokenType)
_CONTROL = 3
_USER_DEFINED = 4


def _token_content(value: Any) -> str | None:
    """tokenizer_config.json spells special tokens as a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _raise_exception(message: str) -> None:
    raise ValueError(f"chat template error: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, **kw: Any) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, **kw)


class Tokenizer:
    """Text <-> token ids, plus what generation needs: bos/eos ids and the chat template.

    Args:
        tokenizer: a `tokenizers.Tokenizer` (with its normalizer / pre-tokenizer / decoder).
        bos_token_id / eos_token_ids: special ids; `eos_token_ids` end generation.
        chat_template: a jinja2 template as in HF `tokenizer_config.json`, or None.

    >>> from tokenizers import models
    >>> t = Tokenizer(_HFTokenizer(models.WordLevel({"a": 0, "<eos>": 1}, unk_token="a")),
    ...               eos_token_ids=[1])
    >>> t.eos_token_ids
    (1,)
    """

    def __init__(
        self,
        tokenizer: _HFTokenizer,
        *,
        bos_token_id: int | None = None,
        eos_token_ids: Iterable[int] = (),
        chat_template: str | None = None,
        name: str = "",
    ) -> None:
        self.tokenizer = tokenizer
        self.bos_token_id = bos_token_id
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(int(i) for i in eos_token_ids))
        self.chat_template = chat_template
        self.name = name
        self._template: Template | None = None

    # ---- basic API -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.tokenizer.id_to_token(token_id)

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; `add_special_tokens` adds BOS where the tokenizer does."""
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---- chat ------------------------------------------------------------------------------

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, str]],
        *,
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """Render `messages` ([{"role": ..., "content": ...}]) with the model's template,
        the way transformers does (sandboxed jinja2, trim_blocks, lstrip_blocks).

        Raises:
            ValueError: when the model has no chat template.
        """
        if not self.chat_template:
            raise ValueError(f"{self.name or 'this model'} has no chat template; use chat=False")
        if self._template is None:
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
            )
            env.filters["tojson"] = _tojson
            env.globals["raise_exception"] = _raise_exception
            env.globals["strftime_now"] = _strftime_now
            self._template = env.from_string(self.chat_template)
        bos = self.id_to_token(self.bos_token_id) if self.bos_token_id is not None else None
        eos = self.id_to_token(self.eos_token_ids[0]) if self.eos_token_ids else None
        return self._template.render(
            messages=list(messages),
            add_generation_prompt=add_generation_prompt,
            bos_token=bos or "",
            eos_token=eos or "",
            **kwargs,
        )

    def encode_chat(
        self, messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True
    ) -> list[int]:
        """Render and tokenize; the template writes any BOS itself, so none is added."""
        text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        return self.encode(text, add_special_tokens=False)

    # ---- constructors ----------------------------------------------------------------------

    @classmethod
    def from_folder(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """From a HF model folder: tokenizer.json (or GPT-2's vocab.json + merges.txt),
        tokenizer_config.json, generation_config.json, config.json, chat_template.jinja."""
        path = os.fspath(path)

        def read_json(name: str) -> dict[str, Any]:
            p = os.path.join(path, name)
            if not os.path.isfile(p):
                return {}
            with open(p, encoding="utf-8") as f:
                d: dict[str, Any] = json.load(f)
            return d

        tok_json = os.path.join(path, "tokenizer.json")
        vocab, merges = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
        if os.path.isfile(tok_json):
            tok = _HFTokenizer.from_file(tok_json)
        elif os.path.isfile(vocab) and os.path.isfile(merges):
            tok = _HFTokenizer(models.BPE.from_file(vocab, merges))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            if tok.token_to_id("<|endoftext|>") is not None:
                tok.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
        else:
            raise ModelLoadError(f"no tokenizer.json (or vocab.json + merges.txt) in {path}")

        tcfg = read_json("tokenizer_config.json")
        gcfg = read_json("generation_config.json")
        mcfg = read_json("config.json")

        def as_ids(v: Any) -> list[int]:
            if v is None:
                return []
            return [int(i) for i in v] if isinstance(v, list) else [int(v)]

        eos = as_ids(gcfg.get("eos_token_id")) or as_ids(mcfg.get("eos_token_id"))
        eos_tok = _token_content(tcfg.get("eos_token"))
        eos_id = tok.token_to_id(eos_tok) if eos_tok is not None else None
        if eos_id is not None:
            eos.append(eos_id)
        bos = gcfg.get("bos_token_id", mcfg.get("bos_token_id"))
        bos_tok = _token_content(tcfg.get("bos_token"))
        if bos is None and bos_tok is not None:
            bos = tok.token_to_id(bos_tok)

        template = tcfg.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default") or next(iter(named.values()), None)
        jinja = os.path.join(path, "chat_template.jinja")
        if template is None and os.path.isfile(jinja):
            with open(jinja, encoding="utf-8") as f:
                template = f.read()
        return cls(
            tok,
            bos_token_id=None if bos is None else int(bos),
            eos_token_ids=eos,
            chat_template=template,
            name=os.path.basename(os.path.normpath(path)),
        )

    @classmethod
    def from_gguf_metadata(cls, meta: dict[str, Any], name: str = "") -> Tokenizer:
        """From a GGUF's `tokenizer.ggml.*` metadata: byte-level BPE vocabularies
        (`tokenizer.ggml.model == "gpt2"`: GPT-2, SmolLM, Llama 3, Qwen) and sentencepiece
        BPE ones (`"llama"`: Llama 2, TinyLlama, Mistral)."""
        kind = meta.get("tokenizer.ggml.model")
        if kind not in ("gpt2", "llama"):
            raise ModelLoadError(
                f"unsupported GGUF tokenizer model {kind!r} (supported: gpt2 byte-level BPE, "
                "llama sentencepiece BPE)"
            )
        tokens: list[str] = list(meta["tokenizer.ggml.tokens"])
        vocab = {t: i for i, t in enumerate(tokens)}
        types = meta.get("tokenizer.ggml.token_type") or []
        if kind == "llama":
            tok = _sentencepiece_bpe(meta, tokens, vocab)
            return cls._finish_gguf(tok, meta, tokens, types, name, default_add_bos=True)
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        tok = _HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
        pre = meta.get("tokenizer.ggml.pre", "default")
        if pre in _SPLITS:
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(_SPLITS[pre]), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        elif pre == "smollm":
            # SmolLM's own tokenizer.json: every digit is its own word, then GPT-2's regex.
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Digits(individual_digits=True),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                ]
            )
        else:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        return cls._finish_gguf(tok, meta, tokens, types, name, default_add_bos=False)

    @classmethod
    def _finish_gguf(
        cls,
        tok: _HFTokenizer,
        meta: dict[str, Any],
        tokens: list[str],
        types: Sequence[int],
        name: str,
        default_add_bos: bool,
    ) -> Tokenizer:
        """Special tokens, BOS post-processing, ids and chat template, for either kind."""
        special = [
            AddedToken(t, special=True, normalized=False)
            for t, ty in zip(tokens, types)
            if ty == _CONTROL
        ]
        user = [
            AddedToken(t, special=False, normalized=False)
            for t, ty in zip(tokens, types)
            if ty == _USER_DEFINED
        ]
        if special:
            tok.add_special_tokens(special)
        if user:
            tok.add_tokens(user)
        bos = meta.get("tokenizer.ggml.bos_token_id")
        eos = meta.get("tokenizer.ggml.eos_token_id")
        eot = meta.get("tokenizer.ggml.eot_token_id")  # end of turn, Llama 3 style chat models
        # llama.cpp adds BOS to sentencepiece vocabularies unless the file says otherwise.
        add_bos = meta.get("tokenizer.ggml.add_bos_token", default_add_bos)
        if add_bos and bos is not None:
            bos_tok = tokens[int(bos)]
            tok.post_processor = processors.TemplateProcessing(
                single=f"{bos_tok} $A",
                pair=f"{bos_tok} $A {bos_tok} $B",
                special_tokens=[(bos_tok, int(bos))],
            )
        return cls(
            tok,
            bos_token_id=None if bos is None else int(bos),
            eos_token_ids=[int(i) for i in (eos, eot) if i is not None],
            chat_template=meta.get("tokenizer.chat_template"),
            name=name,
        )


def _sentencepiece_bpe(
    meta: dict[str, Any], tokens: list[str], vocab: dict[str, int]
) -> _HFTokenizer:
    """A sentencepiece BPE vocabulary (pieces spelled with U+2581 for spaces, scores, byte
    tokens <0x00>..<0xFF>) as a `tokenizers` BPE, built as transformers' LlamaTokenizer is:
    merges from the file or, when it has none, recovered from the scores (a piece that splits
    into two pieces is a merge ranked by its score), byte fallback, Metaspace."""
    merges: list[tuple[str, str]]
    if meta.get("tokenizer.ggml.merges"):
        merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    else:
        scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
        found: list[tuple[str, str, float]] = []
        for piece, score in zip(tokens, scores):
            local = [
                (piece[:i], piece[i:], float(score))
                for i in range(1, len(piece))
                if piece[:i] in vocab and piece[i:] in vocab
            ]
            local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
            found.extend(local)
        found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
        merges = [(a, b) for a, b, _ in found]
    unk = meta.get("tokenizer.ggml.unknown_token_id")
    tok = _HFTokenizer(
        models.BPE(
            vocab=vocab,
            merges=merges,
            fuse_unk=True,
            byte_fallback=True,
            unk_token=tokens[int(unk)] if unk is not None else None,
        )
    )
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="\u2581", prepend_scheme="first" if prefix else "never", split=False
    )
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(steps)
    return tok


class IncrementalDecoder:
    """Turns a stream of token ids into text pieces without re-decoding the whole sequence.

    Byte-level BPE tokens may hold part of a UTF-8 character; decoding them alone gives
    U+FFFD. So we decode a short window (from the last clean boundary) and only emit once
    the window no longer ends in an incomplete character: the concatenation of the pieces
    equals `decode(all ids)` (the method of HF's TextStreamer and vLLM's detokenizer).

    >>> from tokenizers import models
    >>> t = Tokenizer(_HFTokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a")))
    >>> d = IncrementalDecoder(t)
    >>> d.push(0), d.push(1)
    ('a', ' b')
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self.ids: list[int] = []
        self.prefix_offset = 0  # window start
        self.read_offset = 0  # end of the part of the window already emitted

    def push(self, token_id: int) -> str:
        """Add one token; return the new text it completes (possibly "")."""
        self.ids.append(int(token_id))
        dec = self.tokenizer.decode
        prefix = dec(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=self.skip)
        full = dec(self.ids[self.prefix_offset :], skip_special_tokens=self.skip)
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset = self.read_offset
            self.read_offset = len(self.ids)
            return full[len(prefix) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        dec = self.tokenizer.decode
        prefix = dec(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=self.skip)
        full = dec(self.ids[self.prefix_offset :], skip_special_tokens=self.skip)
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix) :]
