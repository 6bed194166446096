"""Structured output (issue #17): `generate(json_schema= / regex= / grammar=)`, `stream`, the
CLI and the Hugging Face processor, with the real SmolLM2-135M-Instruct and its 49152-token
vocabulary; both backends (llguidance, the default, and xgrammar); batches that mix
constraints and free rows; bad input.

- Outputs are checked by tools that did not produce them: `json.loads` + `jsonschema`,
  `re.fullmatch`, a hand-written parser for the grammar's language.
- The masks are checked bit by bit against a brute force over the vocabulary (each token's
  own decoded text against the regular expression), which pins the bit order that the
  sampler's ``token_bitmask=`` reads.
- A constrained row in a batch gives exactly the tokens it gives alone (per-row seeds), and a
  free row next to it is untouched.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import numpy as np
import pytest
from model_helpers import (
    byte_vocab,
    default_model,
    default_tokenizer,
    random_model,
    require_default_model,
    tiny_llama_config,
)

torch = pytest.importorskip("torch")
pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")
require_default_model()

from tokensampler.generate import generate, stream
from tokensampler.model import Tokenizer
from tokensampler.structured import (
    BackendName,
    RowMasks,
    StepBitmask,
    StructuredOutputError,
    get_backend,
    row_constraints,
)

V = 49152

SCHEMAS: dict[str, dict[str, Any]] = {
    "nested": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 16},
            "address": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 16},
                    "zip": {"type": "integer", "minimum": 10000, "maximum": 99999},
                },
                "required": ["city", "zip"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "address"],
        "additionalProperties": False,
    },
    "enums": {
        "type": "object",
        "properties": {
            "color": {"enum": ["red", "green", "blue"]},
            "size": {"type": "string", "enum": ["S", "M", "L"]},
        },
        "required": ["color", "size"],
        "additionalProperties": False,
    },
    "array": {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 100},
        "minItems": 2,
        "maxItems": 5,
    },
    "integers": {
        "type": "object",
        "properties": {
            "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
            "count": {"type": "integer"},
        },
        "required": ["year", "count"],
        "additionalProperties": False,
    },
}
SCHEMA_PROMPTS = [
    "Give a person's name and address as JSON.",
    "Pick a T-shirt color and size, as JSON.",
    "List a few small numbers as a JSON array.",
    "A year and a count, as JSON.",
]
REGEXES = [
    r"20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])",
    r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}",
    r"(yes|no)",
]
REGEX_PROMPTS = ["What is today's date? (YYYY-MM-DD)", "Phone number?", "Yes or no?"]
# Nested lists of numbers: a context-free language (no regular expression describes it).
LARK = """
start: list
list: "[" [item ("," item)*] "]"
item: NUMBER | list
NUMBER: /[0-9]+/
"""
GBNF = """
root ::= list
list ::= "[" (item ("," item)*)? "]"
item ::= [0-9]+ | list
"""


@pytest.fixture(scope="module")
def smol() -> tuple[Any, Any]:
    return default_model()


def _parse_nested_list(text: str) -> list[Any]:
    """A recursive-descent parser for LARK's language; raises ValueError otherwise."""
    pos = 0

    def item() -> Any:
        nonlocal pos
        if pos < len(text) and text[pos] == "[":
            return lst()
        m = re.compile(r"[0-9]+").match(text, pos)
        if m is None:
            raise ValueError(f"expected a number or a list at {pos} in {text!r}")
        pos = m.end()
        return int(m.group())

    def lst() -> list[Any]:
        nonlocal pos
        if text[pos : pos + 1] != "[":
            raise ValueError(f"expected '[' at {pos} in {text!r}")
        pos += 1
        out: list[Any] = []
        if text[pos : pos + 1] == "]":
            pos += 1
            return out
        out.append(item())
        while text[pos : pos + 1] == ",":
            pos += 1
            out.append(item())
        if text[pos : pos + 1] != "]":
            raise ValueError(f"expected ',' or ']' at {pos} in {text!r}")
        pos += 1
        return out

    result = lst()
    if pos != len(text):
        raise ValueError(f"trailing text at {pos} in {text!r}")
    return result


def _allowed(mask_row: np.ndarray, n: int) -> set[int]:
    """The allowed ids of one mask row, read as the contract says: bit j % 32 (least
    significant first) of word j // 32."""
    words = mask_row.astype(np.int64) & 0xFFFFFFFF
    return {j for j in range(n) if (words[j // 32] >> (j % 32)) & 1}


@pytest.fixture(scope="module")
def token_texts() -> list[str]:
    tok = default_tokenizer()
    return [tok.tokenizer.decode([i], skip_special_tokens=False) for i in range(V)]


def _backend_param(name: str) -> Any:
    marks = [pytest.mark.transformers] if name == "xgrammar" else []  # xgrammar imports it
    return pytest.param(name, marks=marks)


BACKENDS = [_backend_param("llguidance"), _backend_param("xgrammar")]


def _need(backend: str) -> None:
    if backend == "xgrammar":
        pytest.importorskip("xgrammar")


# ==== the masks, without a model ==============================================================


@pytest.mark.parametrize("backend", BACKENDS)
def test_masks_equal_a_brute_force_over_the_vocabulary(backend: str, token_texts) -> None:
    """Regex [0-9]{2}: at the start the allowed tokens are exactly those whose text is one or
    two digits; after one digit, exactly the single digits; after two, only eos, and the row
    is complete. Free rows are all ones."""
    _need(backend)
    tok = default_tokenizer()
    masks = RowMasks(get_backend(backend, tok, V), row_constraints(2, regex=["[0-9]{2}", None]))
    expect = {i for i, t in enumerate(token_texts) if re.fullmatch(r"[0-9]{1,2}", t)}
    mask = masks.fill()
    assert mask.shape == (2, V // 32) and mask.dtype == np.int32
    assert (mask[1] == -1).all()
    assert _allowed(mask[0], V) == expect
    one = tok.token_to_id("1")
    assert not masks.advance(0, one)
    assert _allowed(masks.fill()[0], V) == {i for i in expect if len(token_texts[i]) == 1}
    assert masks.advance(0, tok.token_to_id("2"))  # complete: the row ends here
    assert _allowed(masks.fill()[0], V) == set(tok.eos_token_ids)


@pytest.mark.parametrize("backend", BACKENDS)
def test_special_tokens_are_never_text(backend: str) -> None:
    """Inside a JSON string any text is allowed, but not a special token (<|im_start|>...):
    its text would vanish from the decoded output. (xgrammar's own from_huggingface keeps
    their strings and allows them here.)"""
    _need(backend)
    tok = default_tokenizer()
    be = get_backend(backend, tok, V)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    masks = RowMasks(be, row_constraints(1, json_schema=schema))
    for t in tok.encode('{"a": "x', add_special_tokens=False):
        masks.fill()
        masks.advance(0, t)
    allowed = _allowed(masks.fill()[0], V)
    assert len(allowed) > 40000  # almost any token continues a string
    assert be.vocab.special_ids and not allowed & be.vocab.special_ids


@pytest.mark.parametrize("backend", BACKENDS)
def test_matcher_accepting_rollback_reset(backend: str) -> None:
    _need(backend)
    tok = default_tokenizer()
    be = get_backend(backend, tok, V)
    c = row_constraints(1, regex="[0-9]{1,3}")[0]
    assert c is not None
    m = be.matcher(c)

    def mask() -> set[int]:
        words = np.zeros(V // 32, dtype=np.int32)
        m.fill(words)
        return _allowed(words, V)

    start = mask()
    assert not m.is_accepting() and not set(tok.eos_token_ids) & start
    assert m.consume(tok.token_to_id("1")) and m.is_accepting() and not m.is_finished()
    after_one = mask()
    assert set(tok.eos_token_ids) <= after_one  # accepting: eos is allowed
    assert m.consume(tok.token_to_id("2")) and m.consume(tok.token_to_id("3"))
    assert m.is_finished() and mask() == set(tok.eos_token_ids)
    assert not m.consume(tok.token_to_id("4"))  # not allowed
    m2 = be.matcher(c)  # a second row: its own state
    assert m2.consumed == [] and not m2.is_accepting()
    m2.consume(tok.token_to_id("1"))
    m2.rollback(1)
    assert m2.consumed == [] and not m2.is_accepting()
    m2.consume(tok.token_to_id("1"))
    m2.consume(tok.token_to_id("2"))
    m2.rollback(1)
    m = m2
    assert m.consumed == [tok.token_to_id("1")] and mask() == after_one
    m.reset()
    assert m.consumed == [] and mask() == start


@pytest.mark.parametrize("backend", BACKENDS)
def test_padded_vocabulary_is_banned_in_constrained_rows(backend: str) -> None:
    _need(backend)
    be = get_backend(backend, default_tokenizer(), V + 50)
    mask = RowMasks(be, row_constraints(2, regex=[None, "[a-z]+"])).fill()
    assert mask.shape == (2, -(-(V + 50) // 32))
    assert (mask[0] == -1).all()  # a free row: anything, as without structured output
    assert (mask[1, V // 32 :] == 0).all() and mask[1, : V // 32].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_byte_fallback_vocabulary(backend: str) -> None:
    """A sentencepiece GGUF vocabulary (<0xNN> byte tokens, U+2581 spaces): the backend reads
    it as its decoder does (checked at setup), and a character without a piece of its own is
    reachable through its byte tokens."""
    _need(backend)
    pieces = ["▁", "h", "e", "l", "o", "w", "r", "d", "t", "▁h", "he", "ll", "lo", "llo",
              "▁he", "▁hello", "▁w", "or", "▁wor", "ld", "▁world", "▁t", "th", "▁the", "el"]  # fmt: skip
    tokens = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], *pieces]
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * len(pieces),
        "tokenizer.ggml.scores": [0.0] * 259 + [-float(i) for i in range(len(pieces))],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }
    tok = Tokenizer.from_gguf_metadata(meta)
    masks = RowMasks(get_backend(backend, tok, len(tokens)), row_constraints(1, regex="hé"))
    c3, a9 = tokens.index("<0xC3>"), tokens.index("<0xA9>")
    assert tokens.index("h") in _allowed(masks.fill()[0], len(tokens))
    masks.advance(0, tokens.index("h"))
    assert _allowed(masks.fill()[0], len(tokens)) == {c3}
    masks.advance(0, c3)
    assert _allowed(masks.fill()[0], len(tokens)) == {a9}
    assert masks.advance(0, a9)


def test_row_constraints() -> None:
    rows = row_constraints(
        3, json_schema=[None, {"type": "object"}, None], regex=["a+", None, None]
    )
    assert [c and c.kind for c in rows] == ["regex", "json_schema", None]
    assert all(c is not None and c.kind == "grammar" for c in row_constraints(2, grammar=LARK))
    with pytest.raises(ValueError, match="row 0 has both json_schema and regex"):
        row_constraints(1, json_schema={"type": "object"}, regex="a")
    with pytest.raises(ValueError, match="regex has 2 entries for 3 rows"):
        row_constraints(3, regex=["a", "b"])
    with pytest.raises(StructuredOutputError, match="json_schema is not valid JSON"):
        row_constraints(1, json_schema='{"type": ')
    with pytest.raises(ValueError, match="structured_backend must be one of"):
        get_backend("outlines", default_tokenizer(), V)


# ==== generation with SmolLM2 =================================================================


@pytest.mark.parametrize("seed", [0, 1])
def test_json_schemas_validate(smol, seed: int) -> None:
    """Four schemas (nested objects, enums, an array, integers with bounds) in one batch,
    one per row: each output parses and validates, and ends when the JSON is complete."""
    model, tok = smol
    out = generate(model, tok, SCHEMA_PROMPTS, chat=True, json_schema=list(SCHEMAS.values()),
                   max_new_tokens=64, seed=[10 * seed + i for i in range(4)])  # fmt: skip
    for text, ids, reason, schema in zip(out.texts, out.token_ids, out.finish_reasons,
                                         SCHEMAS.values()):  # fmt: skip
        assert reason == "stop", text
        assert not set(ids) & set(tok.eos_token_ids)  # the grammar ended it, not an eos
        jsonschema.validate(json.loads(text), schema)
    assert out.stats.mask_steps > 0 and out.stats.mask_time > 0


def test_regex_outputs_fullmatch(smol) -> None:
    model, tok = smol
    out = generate(model, tok, REGEX_PROMPTS, chat=True, regex=REGEXES, max_new_tokens=24,
                   seed=[5, 6, 7])  # fmt: skip
    for text, pattern, reason in zip(out.texts, REGEXES, out.finish_reasons):
        assert reason == "stop"
        assert re.fullmatch(pattern, text), (pattern, text)


def test_grammar_outputs_parse(smol) -> None:
    """The same nested-list language as a Lark grammar (rows 0, 1) and as GBNF (row 2)."""
    model, tok = smol
    prompt = "Write a nested list of numbers, like [1,[2,3]]."
    out = generate(model, tok, [prompt] * 3, chat=True, grammar=[LARK, LARK, GBNF],
                   max_new_tokens=48, seed=[3, 4, 5])  # fmt: skip
    for text, reason in zip(out.texts, out.finish_reasons):
        assert reason == "stop", text
        _parse_nested_list(text)
    with pytest.raises(ValueError):
        _parse_nested_list("[1,[2]")  # the parser can fail


def test_mixed_batch_rows_equal_alone(smol) -> None:
    """A constrained row next to a free row (and a row with another constraint) gives
    exactly what it gives alone; so does the free row."""
    model, tok = smol
    prompts = [SCHEMA_PROMPTS[1], "Tell me a joke.", REGEX_PROMPTS[0]]
    kw: dict[str, Any] = dict(chat=True, max_new_tokens=24, temperature=0.8)
    batch = generate(model, tok, prompts, json_schema=[SCHEMAS["enums"], None, None],
                     regex=[None, None, REGEXES[0]], seed=[21, 22, 23], **kw)  # fmt: skip
    alone = [
        generate(model, tok, prompts[0], json_schema=SCHEMAS["enums"], seed=[21], **kw),
        generate(model, tok, prompts[1], seed=[22], **kw),
        generate(model, tok, prompts[2], regex=REGEXES[0], seed=[23], **kw),
    ]
    for b, a in enumerate(alone):
        assert batch.token_ids[b] == a.token_ids[0], b
        assert batch.finish_reasons[b] == a.finish_reasons[0]
    assert batch.finish_reasons[0] == batch.finish_reasons[2] == "stop"
    json.loads(batch.texts[0])


@pytest.mark.transformers
def test_backends_agree(smol) -> None:
    """A regular language has one set of allowed tokens per step, whoever computes it: with
    the same seed both backends write the same tokens. xgrammar's JSON output validates."""
    pytest.importorskip("xgrammar")
    model, tok = smol
    kw: dict[str, Any] = dict(chat=True, max_new_tokens=24, seed=[5, 6], temperature=1.0)
    ours = generate(model, tok, REGEX_PROMPTS[:2], regex=REGEXES[:2], **kw)
    theirs = generate(model, tok, REGEX_PROMPTS[:2], regex=REGEXES[:2],
                      structured_backend="xgrammar", **kw)  # fmt: skip
    assert ours.token_ids == theirs.token_ids
    assert all(re.fullmatch(p, t) for p, t in zip(REGEXES, theirs.texts))
    out = generate(model, tok, SCHEMA_PROMPTS[0], chat=True, json_schema=SCHEMAS["nested"],
                   structured_backend="xgrammar", max_new_tokens=64, seed=2)  # fmt: skip
    assert out.finish_reasons == ["stop"]
    jsonschema.validate(json.loads(out.texts[0]), SCHEMAS["nested"])


def test_stream_events(smol) -> None:
    model, tok = smol
    s = stream(model, tok, SCHEMA_PROMPTS[3], chat=True, json_schema=SCHEMAS["integers"],
               max_new_tokens=48, seed=1)  # fmt: skip
    events = list(s)
    assert "".join(e.text for e in events) == s.result.texts[0]
    assert [e.finish_reason for e in events[:-1]] == [None] * (len(events) - 1)
    assert events[-1].finish_reason == "stop"
    jsonschema.validate(json.loads(s.result.texts[0]), SCHEMAS["integers"])
    assert s.result.stats.mask_steps == len(events)


def test_eos_ends_an_accepting_row(smol) -> None:
    """A grammar that may go on or stop: the model's eos (allowed once the text matches)
    ends the row as usual ("eos", the id kept); with ignore_eos the eos is still what
    completes the grammar, so the row ends as "stop"."""
    model, tok = smol
    pattern = r"[A-Za-z ,.!']+"
    out = generate(model, tok, "Say hello in one short sentence.", chat=True, regex=pattern,
                   max_new_tokens=40, temperature=0)  # fmt: skip
    assert out.finish_reasons == ["eos"]
    assert out.token_ids[0][-1] in tok.eos_token_ids
    assert re.fullmatch(pattern, out.texts[0])
    ign = generate(model, tok, "Say hello in one short sentence.", chat=True, regex=pattern,
                   max_new_tokens=40, temperature=0, ignore_eos=True)  # fmt: skip
    assert ign.finish_reasons == ["stop"] and ign.token_ids == out.token_ids


def test_padded_model_vocabulary() -> None:
    """A model with more logits than the tokenizer has ids (a padded embedding): constrained
    rows never get the padding ids; a tokenizer with more ids than the model is refused."""
    tok = default_tokenizer()
    model = random_model(tiny_llama_config(vocab_size=V + 40, max_seq_len=128), seed=1, scale=30)
    # Make the padding ids the most likely ones: an unmasked row would draw them.
    with torch.no_grad():
        model.lm_head.weight[V:] = model.lm_head.weight[:40] * 50
    free = generate(model, tok, "Hi", max_new_tokens=8, temperature=1.0, seed=0, ignore_eos=True)
    assert max(free.token_ids[0]) >= V
    out = generate(model, tok, "Hi", regex="[a-z]{6}", max_new_tokens=8, temperature=1.0, seed=0)
    assert max(out.token_ids[0]) < V and re.fullmatch("[a-z]{6}", out.texts[0])
    small = random_model(tiny_llama_config(vocab_size=V - 152, max_seq_len=64), seed=1)
    with pytest.raises(StructuredOutputError, match=f"{V} token ids but the model's logits have"):
        generate(small, tok, "Hi", regex="[a-z]+", max_new_tokens=4)


# ==== bad input ===============================================================================


@pytest.mark.parametrize("backend", BACKENDS)
def test_rejected_constraints_name_themselves(smol, backend: BackendName, monkeypatch) -> None:
    _need(backend)
    model, tok = smol
    calls = {"n": 0}
    forward = model.forward

    def counting(*a: Any, **k: Any) -> Any:
        calls["n"] += 1
        return forward(*a, **k)

    bad: list[tuple[dict[str, Any], str]] = [
        (dict(json_schema={"type": "strin"}), r"json_schema \{\"type\": \"strin\"\}.*strin"),
        (dict(regex="[0-9"), r"regex '\[0-9'.*"),
        # a grammar this tokenizer cannot satisfy: it has no such special token
        (dict(grammar='start: "a" <|no_such_token|>'), r"grammar 'start: .*no_such_token"),
        (dict(grammar="root ::= undefined_rule"), r"grammar 'root ::= undefined_rule'.*"),
    ]
    monkeypatch.setattr(model, "forward", counting)
    for kw, pattern in bad:
        with pytest.raises(StructuredOutputError, match=pattern) as err:
            stream(model, tok, "Hi", structured_backend=backend, **kw)
        assert backend in str(err.value) and "\n" not in str(err.value)
    assert calls["n"] == 0  # refused before the first forward pass


def test_constraint_the_tokenizer_cannot_satisfy() -> None:
    """A vocabulary without digits cannot write [0-9]+: an error at setup naming it, not
    an empty row at the first step."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as RawTokenizer

    letters = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyzĠ")}
    letters["<eos>"] = len(letters)
    raw = RawTokenizer(models.BPE(vocab=letters, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.add_special_tokens([AddedToken("<eos>", special=True)])
    tok = Tokenizer(raw, eos_token_ids=[len(letters) - 1])
    model = random_model(tiny_llama_config(vocab_size=32, max_seq_len=64), seed=0)
    with pytest.raises(StructuredOutputError, match=r"regex '\[0-9\]\+' cannot be satisfied"):
        generate(model, tok, "ab", regex="[0-9]+", max_new_tokens=4)
    # ... and one that dead-ends later: an error naming the row and the text so far
    with pytest.raises(StructuredOutputError, match=r"row 0: .*regex 'ab\[0-9\]' after 'ab'"):
        generate(model, tok, "ab", regex="ab[0-9]", max_new_tokens=4)


def test_tokenizer_the_backend_misreads() -> None:
    """A byte-level vocabulary whose decoder does not undo the byte-level alphabet: the
    backend would check other bytes than the text shows, so setup refuses it."""
    from tokenizers import AddedToken, models, pre_tokenizers
    from tokenizers import Tokenizer as RawTokenizer

    vocab = {t: i for i, t in enumerate(byte_vocab())}
    vocab["<eos>"] = 256
    raw = RawTokenizer(models.BPE(vocab=vocab, merges=[]))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.add_special_tokens([AddedToken("<eos>", special=True)])
    with pytest.raises(StructuredOutputError, match="llguidance cannot read this tokenizer"):
        get_backend("llguidance", raw, 257, [256])
    if "xgrammar" in sys.modules or _has("xgrammar"):
        with pytest.raises(StructuredOutputError, match="reads this tokenizer's tokens differ"):
            get_backend("xgrammar", raw, 257, [256])


def _has(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_refused_combinations(smol) -> None:
    model, tok = smol
    with pytest.raises(ValueError, match="does not support speculative decoding"):
        generate(model, tok, "Hi", regex="a+", speculative="prompt_lookup")
    with pytest.raises(ValueError, match="row 1 has both"):
        generate(model, tok, ["a", "b"], regex=[None, "a"], grammar=[None, LARK])
    with pytest.raises(ValueError, match="needs the tokenizer"):
        generate(model, None, [1, 2, 3], regex="a+")


@pytest.mark.parametrize(
    ("package", "extra"), [("llguidance", "model"), ("xgrammar", "structured")]
)
def test_missing_backend_names_its_extra(monkeypatch, package: str, extra: str) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # import fails
    fresh = Tokenizer(default_tokenizer().tokenizer, eos_token_ids=[2])  # not in the cache
    with pytest.raises(ImportError, match=re.escape(f"pip install 'tokensampler[{extra}]'")):
        get_backend(package, fresh, V)


# ==== the command line ========================================================================


def _cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    from tokensampler.cli import main

    code = main(["generate", *args, "--device", "cpu", "--dtype", "float32"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def cli_model(smol, monkeypatch) -> None:
    """The CLI gets the already loaded model (loading is tests/test_cli.py's subject)."""
    import tokensampler.model

    monkeypatch.setattr(tokensampler.model, "load", lambda *a, **k: smol)


def test_cli_json_schema_regex_grammar(tmp_path, capsys, cli_model) -> None:
    schema = tmp_path / "cat.schema.json"
    schema.write_text(json.dumps(SCHEMAS["enums"]))
    code, out, err = _cli(capsys, SCHEMA_PROMPTS[1], "--json-schema", str(schema), "--seed", "1")
    assert code == 0, err
    jsonschema.validate(json.loads(out), SCHEMAS["enums"])
    assert "finish: stop" in err and "grammar" in err and "ms/step" in err
    code, out, err = _cli(capsys, REGEX_PROMPTS[1], "--regex", REGEXES[1], "--seed", "2")
    assert code == 0, err
    assert re.fullmatch(REGEXES[1], out.strip())
    grammar = tmp_path / "lists.lark"
    grammar.write_text(LARK)
    code, out, err = _cli(capsys, "Write a nested list of numbers, like [1,[2,3]].",
                          "--grammar", str(grammar), "--seed", "3")  # fmt: skip
    assert code == 0, err
    _parse_nested_list(out.strip())


def test_cli_bad_input(tmp_path, capsys, cli_model) -> None:
    def fails(*args: str, needle: str) -> None:
        code, _, err = _cli(capsys, "Hi", *args)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and needle in lines[0], err

    fails("--json-schema", str(tmp_path / "missing.json"), needle="missing.json")
    (tmp_path / "bad.json").write_text('{"type": ')
    fails("--json-schema", str(tmp_path / "bad.json"), needle="is not valid JSON")
    (tmp_path / "strin.json").write_text('{"type": "strin"}')
    fails(
        "--json-schema",
        str(tmp_path / "strin.json"),
        needle='rejects json_schema {"type": "strin"}',
    )
    fails("--regex", "a+", "--speculative", "prompt_lookup", needle="speculative")
    with pytest.raises(SystemExit):
        _cli(capsys, "Hi", "--regex", "a", "--grammar", "x.lark")  # one constraint at most
    assert "not allowed with argument" in capsys.readouterr().err


# ==== the Hugging Face route ==================================================================


@pytest.fixture(scope="module")
def hf_smol() -> Any:
    pytest.importorskip("transformers")
    from tokensampler.hf import load_gguf
    from tokensampler.model import default_model_path

    return load_gguf(default_model_path())


@pytest.mark.transformers
def test_hf_processor_constrains_model_generate(smol, hf_smol) -> None:
    """`model.generate` with the processor: JSON that validates and ends with eos (draw=True:
    tokensampler draws; greedy gives the tokens `tokensampler.generate` gives), and a regex
    through a `StepBitmask` callback with draw=False (Hugging Face draws from our
    distribution)."""
    from tokensampler.generate import prompt_token_ids
    from tokensampler.hf import TokenSamplerLogitsProcessor

    model, tok = smol
    eos = tok.eos_token_ids[0]
    x = torch.tensor(prompt_token_ids(tok, SCHEMA_PROMPTS[0], chat=True))
    n = x.shape[1]

    def run(proc: TokenSamplerLogitsProcessor, **kw: Any) -> list[int]:
        with torch.inference_mode():
            y = hf_smol.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=64,
                                 eos_token_id=eos, pad_token_id=eos,
                                 **proc.generate_kwargs(), **kw)  # fmt: skip
        return [int(i) for i in y[0, n:]]

    proc = TokenSamplerLogitsProcessor(tokenizer=tok, json_schema=SCHEMAS["nested"], draw=True,
                                       temperature=0)  # fmt: skip
    ids = run(proc)
    assert ids[-1] == eos
    jsonschema.validate(json.loads(tok.decode(ids)), SCHEMAS["nested"])
    ours = generate(model, tok, SCHEMA_PROMPTS[0], chat=True, json_schema=SCHEMAS["nested"],
                    max_new_tokens=64, temperature=0)  # fmt: skip
    assert ids[:-1] == ours.token_ids[0]  # ours ends at the grammar, HF with its eos
    torch.manual_seed(0)
    fn = StepBitmask(tok, regex=REGEXES[0])
    x = torch.tensor(prompt_token_ids(tok, REGEX_PROMPTS[0], chat=True))
    n = x.shape[1]
    ids = run(TokenSamplerLogitsProcessor(token_bitmask_fn=fn, temperature=0.8))
    assert ids[-1] == eos and re.fullmatch(REGEXES[0], tok.decode(ids))
    with pytest.raises(StructuredOutputError, match="strin"):
        TokenSamplerLogitsProcessor(tokenizer=tok, json_schema={"type": "strin"})
    with pytest.raises(ValueError, match="need the model's tokenizer"):
        TokenSamplerLogitsProcessor(regex="a+")
