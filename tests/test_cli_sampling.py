"""The sampling options `tokensampler generate` and `tokensampler batch` share (cli.py's
`add_sampling_options` and `sampling_fields`): both commands list the same options, parse them
alike (--order above all) and hand the sampler the same SamplingParams, batch's as run defaults
that a record's own fields override and that --resume compares.

The commands run a tiny random Llama with SmolLM2's tokenizer in place of the model (one or
two new tokens), so the file takes seconds; every Sampler a generate loop builds is recorded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from model_helpers import default_tokenizer, random_model, require_default_model, tiny_llama_config

pytest.importorskip("torch")

from tokensampler import batch
from tokensampler.cli import main
from tokensampler.params import SamplingParams
from tokensampler.words import bad_words_sequences, dry_breaker_sequences


def _help(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return capsys.readouterr().out


def _group_options(text: str, title: str) -> list[str]:
    group = text.split(title, 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^  (--[a-z-]+)", group, flags=re.MULTILINE)


def test_both_commands_list_the_same_sampling_options(capsys: pytest.CaptureFixture[str]) -> None:
    """The same options in the same order (the kernel fields, the strings, --order), each
    command's --seed last; the --order help is the same text."""
    gen = _group_options(_help("generate", capsys), "sampling (applied in --order's order")
    bat = _group_options(_help("batch", capsys), "sampling defaults (")
    assert gen == bat
    assert gen[-4:] == ["--bad-words", "--dry-sequence-breakers", "--order", "--seed"]


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[SamplingParams]:
    """Both commands load a tiny random Llama over SmolLM2's vocabulary and tokenizer; the
    list receives the params of every Sampler their generate loops build."""
    require_default_model()
    import tokensampler.generate as gen

    model = random_model(tiny_llama_config(vocab_size=49152, max_seq_len=64), seed=5)
    monkeypatch.setattr("tokensampler.model.load", lambda *a, **k: (model, default_tokenizer()))
    seen: list[SamplingParams] = []

    class Recording(gen.Sampler):
        def __init__(self, params: Any = None, /, **kw: Any) -> None:
            super().__init__(params, **kw)
            seen.append(self.params)

    monkeypatch.setattr(gen, "Sampler", Recording)
    return seen


def generate_params(
    recorded: list[SamplingParams], capsys: pytest.CaptureFixture[str], *flags: str
) -> SamplingParams:
    """The SamplingParams `tokensampler generate` samples with, given `flags` (seed aside)."""
    args = ["generate", "Hi", "--no-chat", "--max-new-tokens", "1", "--seed", "0", *flags]
    assert main(args) == 0, capsys.readouterr().err
    assert len(recorded) == 1
    return recorded.pop().replace(seed=None)


def batch_params(
    recorded: list[SamplingParams],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    records: list[dict[str, Any]],
    *flags: str,
) -> list[SamplingParams]:
    """The SamplingParams of every generate call of `tokensampler batch` on `records` (each
    record alone in its batch here), seeds aside; every record must succeed."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["batch", str(inp), "-o", str(out), "--no-chat", "--max-new-tokens", "1", *flags]
    assert main(args) == 0, capsys.readouterr().err
    done = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r.get("error") for r in done] == [None] * len(records)
    params = [p.replace(seed=None) for p in recorded]
    recorded.clear()
    return params


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        (" vllm", "vllm"),
        ("vllm, ", "vllm"),
        (" top_k , temperature", ("top_k", "temperature")),
        ("top_k,,temperature ", ("top_k", "temperature")),
    ],
)
def test_order_is_parsed_alike_by_both_commands(
    recorded: list[SamplingParams],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    order: str,
    expected: str | tuple[str, ...],
) -> None:
    """Every name is stripped and empty ones dropped: one name is a preset, several a custom
    order, in generate and in batch."""
    gen = generate_params(recorded, capsys, "--order", order)
    (bat,) = batch_params(recorded, capsys, tmp_path, [{"prompt": "Hi"}], "--order", order)
    assert gen.order == bat.order == expected


def test_the_same_flags_reach_the_sampler_of_both_commands(
    recorded: list[SamplingParams], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Kernel fields, --order, and the strings tokenized with the model's tokenizer: batch's
    records are sampled with what generate samples with; a bare --dry-sequence-breakers
    means no breakers in both."""
    tok = default_tokenizer()
    flags = ["--temperature", "0.7", "--top-k", "5", "--order", " top_k , temperature",
             "--dry-multiplier", "0.8", "--bad-words", "hello", "world",
             "--dry-sequence-breakers", "ab", ";"]  # fmt: skip
    gen = generate_params(recorded, capsys, *flags)
    (bat,) = batch_params(recorded, capsys, tmp_path, [{"prompt": "Hi"}], *flags)
    assert bat == gen
    assert (gen.temperature, gen.top_k, gen.dry_multiplier) == (0.7, 5, 0.8)
    assert gen.order == ("top_k", "temperature")
    assert [list(s) for s in gen.dry_sequence_breakers] == dry_breaker_sequences(tok, ["ab", ";"])
    assert [list(s) for s in gen.bad_words_ids] == bad_words_sequences(tok, ["hello", "world"])
    none = ["--dry-multiplier", "0.8", "--dry-sequence-breakers"]
    gen = generate_params(recorded, capsys, *none)
    (bat,) = batch_params(recorded, capsys, tmp_path, [{"prompt": "Hi"}], *none)
    assert bat == gen
    assert gen.dry_sequence_breakers is not None and not any(gen.dry_sequence_breakers)


def test_a_records_own_fields_override_the_run_defaults(
    recorded: list[SamplingParams], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The options are batch's run defaults: a record's own breakers or order win, the
    others keep the command line's (each record is a batch of its own: they differ in
    fields a generate call shares)."""
    tok = default_tokenizer()
    records = [
        {"id": 1, "prompt": "Hi"},
        {"id": 2, "prompt": "Hi", "dry_sequence_breakers": ["x"]},
        {"id": 3, "prompt": "Hi", "order": "hf"},
    ]
    flags = ["--dry-multiplier", "0.8", "--dry-sequence-breakers", "ab", ";", "--order", "vllm, "]
    plain, breakers, order = batch_params(recorded, capsys, tmp_path, records, *flags)
    run_breakers = dry_breaker_sequences(tok, ["ab", ";"])
    assert [list(s) for s in plain.dry_sequence_breakers] == run_breakers
    assert plain.order == breakers.order == "vllm"
    assert [list(s) for s in breakers.dry_sequence_breakers] == dry_breaker_sequences(tok, ["x"])
    assert [list(s) for s in order.dry_sequence_breakers] == run_breakers
    assert order.order == "hf"


def test_resume_refuses_other_sampling_strings(
    recorded: list[SamplingParams],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--dry-sequence-breakers is part of the run's settings: an interrupted run resumes
    with the same breakers, and is refused with others."""
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text(json.dumps({"prompt": "Hi"}) + "\n")

    def interrupted(worker: batch.Worker, planned: batch.Record) -> list[batch.Record]:
        raise KeyboardInterrupt

    args = ["batch", str(inp), "-o", str(out), "--no-chat", "--max-new-tokens", "1"]
    with monkeypatch.context() as m:
        m.setattr(batch.Worker, "run", interrupted)
        assert main([*args, "--dry-sequence-breakers", "ab"]) == 130
    assert Path(f"{out}.partial").exists()
    capsys.readouterr()
    assert main([*args, "--resume", "--dry-sequence-breakers", "cd"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main([*args, "--resume", "--dry-sequence-breakers", "ab"]) == 0
    assert "error" not in json.loads(out.read_text())


@pytest.mark.parametrize("order", ["", " , "])
def test_an_empty_order_is_a_one_line_error_in_both_commands(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, order: str
) -> None:
    """Before any model loads or any record is read."""
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps({"prompt": "Hi"}) + "\n")
    message = "--order needs a preset or stage names, got an empty value"
    for args in (["generate", "Hi"], ["batch", str(inp), "-o", str(tmp_path / "out.jsonl")]):
        assert main([*args, "--order", order]) == 2
        assert capsys.readouterr().err == f"tokensampler: error: {message}\n"
    assert not (tmp_path / "out.jsonl.partial").exists()
