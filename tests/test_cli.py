"""The `tokensampler` command: runs as a subprocess, streams, is reproducible with --seed, and
fails with one clear line and exit status 2 on bad input (never a traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from model_helpers import require_default_model

pytest.importorskip("torch")

from tokensampler.cli import main

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")


def run(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokensampler", *args],
        check=False, capture_output=True, text=True, timeout=timeout, env=ENV,
    )  # fmt: skip


def assert_one_line_error(stderr: str, *needles: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("tokensampler"), stderr
    assert "error:" in lines[0]
    assert "Traceback" not in stderr
    for n in needles:
        assert n in lines[0], stderr


SEED_ARGS = ["generate", "Every effort moves you", "--no-chat", "--max-new-tokens", "12",
             "--temperature", "1.0", "--top-k", "50", "--seed"]  # fmt: skip


def test_generate_streams_while_running() -> None:
    """A real subprocess: the first text reaches the pipe while it is still generating, and
    the summary line closes stderr."""
    require_default_model()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tokensampler", *SEED_ARGS[:3], "--max-new-tokens", "40",
         "--ignore-eos", "--seed", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
    )  # fmt: skip
    assert proc.stdout is not None
    first = proc.stdout.read1(1 << 16)  # returns as soon as some bytes arrive
    still_running = proc.poll() is None
    rest, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert first.startswith(b"Every effort moves you")  # the prompt is echoed at once...
    assert still_running  # ...while the tokens are still being generated
    assert len(rest) > 10
    summary = err.decode().strip().splitlines()[-1]
    assert "40 tokens" in summary and "tokens/s" in summary and "time to first token" in summary


def test_same_seed_same_text(capsys) -> None:
    """The same --seed gives the same text in a subprocess and in-process; another seed not."""
    require_default_model()
    sub = run(*SEED_ARGS, "7")
    assert sub.returncode == 0, sub.stderr
    assert main([*SEED_ARGS, "7"]) == 0
    same = capsys.readouterr().out
    assert main([*SEED_ARGS, "8"]) == 0
    other = capsys.readouterr().out
    assert sub.stdout == same
    assert len(same) > len("Every effort moves you") + 5
    assert other != same


def test_greedy_chat_answer(capsys) -> None:
    require_default_model()
    assert main(["generate", "What is the capital of France?", "--temperature", "0"]) == 0
    captured = capsys.readouterr()
    assert "Paris" in captured.out
    assert "finish: eos" in captured.err


def test_missing_model_path_subprocess() -> None:
    r = run("generate", "hi", "--model", "/definitely/not/here.gguf", timeout=120)
    assert r.returncode == 2
    assert r.stdout == ""
    assert_one_line_error(r.stderr, "/definitely/not/here.gguf", "no such file")


# In-process error paths (torch is already imported here, so these are fast).


def test_unsupported_architecture(tmp_path, capsys) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert main(["generate", "hi", "--model", str(tmp_path)]) == 2
    assert_one_line_error(capsys.readouterr().err, "unsupported architecture 'bert'")


def test_unsupported_gguf_tensor_type(tmp_path, capsys) -> None:
    import numpy as np
    from model_helpers import byte_vocab, write_gguf

    meta = {
        "block_count": 1, "context_length": 64, "embedding_length": 32,
        "feed_forward_length": 64, "attention.head_count": 2,
    }  # fmt: skip
    tensors = {
        "token_embd.weight": (np.zeros((257, 32), np.float32), "F32"),
        "blk.0.attn_q.weight": (np.zeros((32, 32 // 32 * 18), np.uint8), "IQ4_NL"),
    }
    path = tmp_path / "m.gguf"
    write_gguf(path, "llama", meta, tensors, tokens=[*byte_vocab(), "<eos>"], eos_id=256)
    assert main(["generate", "hi", "--model", str(path)]) == 2
    assert_one_line_error(capsys.readouterr().err, "unsupported GGUF type IQ4_NL")


def test_not_a_model(tmp_path, capsys) -> None:
    junk = tmp_path / "weights.bin"
    junk.write_bytes(b"\x00" * 64)
    assert main(["generate", "hi", "--model", str(junk)]) == 2
    assert_one_line_error(capsys.readouterr().err, "not a model")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--top-p", "1.5"], "top_p"),
        (["--temperature", "-1"], "temperature"),
        (["--min-p", "1"], "min_p"),
        (["--frequency-scale", "0.5"], "frequency_scale"),
        (["--max-new-tokens", "-3"], "max-new-tokens"),
        (["--dtype", "int8"], "--dtype"),
        (["--top-k", "many"], "--top-k"),
    ],
)
def test_bad_options(capsys, args: list[str], needle: str) -> None:
    try:
        rc = main(["generate", "hi", *args])
    except SystemExit as e:  # argparse's own errors exit from parse_args
        rc = e.code
    assert rc == 2
    assert_one_line_error(capsys.readouterr().err, needle)


def test_help_explains_every_option(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["generate", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--model", "--temperature", "--top-k", "--top-p", "--min-p",
                "--repetition-penalty", "--frequency-penalty", "--presence-penalty",
                "--frequency-scale", "--presence-scale", "--seed", "--max-new-tokens",
                "--chat", "--no-chat", "--stop", "--device", "--dtype"):  # fmt: skip
        assert opt in out
    assert main([]) == 2  # no command: usage on stderr


@pytest.mark.transformers
def test_hf_gpt2_folder_without_chat_template(tmp_path, capsys, monkeypatch) -> None:
    """A HF folder model: no chat template, so the prompt is continued as raw text; --stop
    cuts the text; '-' reads the prompt from stdin."""
    import io

    pytest.importorskip("transformers")
    from model_helpers import write_tiny_gpt2_folder

    write_tiny_gpt2_folder(tmp_path)
    args = ["generate", "-", "--model", str(tmp_path), "--max-new-tokens", "20",
            "--temperature", "0", "--ignore-eos", "--dtype", "float32", "--device", "cpu"]  # fmt: skip
    monkeypatch.setattr("sys.stdin", io.StringIO("abc"))
    assert main(args) == 0
    out = capsys.readouterr()
    assert out.out.startswith("abc")
    generated = out.out[3:].rstrip("\n")
    assert "20 tokens" in out.err and "finish: length" in out.err
    assert len(generated) >= 6, generated
    # cut at a stop string taken from the greedy text itself
    stop = generated[3:5]
    monkeypatch.setattr("sys.stdin", io.StringIO("abc"))
    assert main([*args, "--stop", stop]) == 0
    cut = capsys.readouterr()
    assert cut.out == "abc" + generated[: generated.find(stop)] + "\n"
    assert "finish: stop" in cut.err


# ---- --version, empty prompts, --system with --no-chat, the help's order -------------------


def test_version(capsys) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"tokensampler {version('tokensampler')}\n"


@pytest.mark.parametrize(("prompt", "stdin"), [("", None), (" \n\t ", None), ("-", "  \n")])
def test_empty_prompt_is_an_error(capsys, monkeypatch, prompt: str, stdin: str | None) -> None:
    import io

    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert main(["generate", prompt]) == 2  # before any model is loaded
    out = capsys.readouterr()
    assert out.out == ""
    assert_one_line_error(out.err, "empty prompt")


def test_system_with_no_chat_is_an_error(capsys) -> None:
    assert main(["generate", "hi", "--no-chat", "--system", "Be brief."]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert_one_line_error(out.err, "--system", "--no-chat")


def _generate_help() -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit):
        main(["generate", "--help"])
    return buf.getvalue()


def test_help_lists_sampling_options_in_pipeline_order() -> None:
    """The sampling group lists the bans and penalties, then the stages in the default (hf)
    order and mirostat, then the string options, --order and the seed of the draw: the order
    the group title states."""
    import re

    text = _generate_help()
    title = (
        "sampling (applied in --order's order; the default, hf: penalties, temperature, "
        "top-n-sigma, top-k, top-p, min-p, typical-p, epsilon, eta, xtc, draw):"
    )
    assert title in text
    group = text.split(title, 1)[1].split("\n\n", 1)[0]
    listed = re.findall(r"^  (--[a-z-]+)", group, flags=re.MULTILINE)
    assert listed == [
        "--no-repeat-ngram-size", "--repetition-penalty", "--frequency-penalty",
        "--presence-penalty", "--penalty-last-n", "--dry-multiplier", "--dry-base",
        "--dry-allowed-length", "--dry-penalty-last-n", "--frequency-scale", "--presence-scale",
        "--temperature", "--dynatemp-range", "--dynatemp-exponent", "--top-n-sigma",
        "--top-k", "--top-p", "--min-p", "--typical-p", "--epsilon-cutoff", "--eta-cutoff",
        "--xtc-probability", "--xtc-threshold", "--min-tokens-to-keep", "--mirostat",
        "--mirostat-tau", "--mirostat-eta", "--bad-words", "--dry-sequence-breakers",
        "--order", "--seed",
    ]  # fmt: skip


def test_order_option_is_checked_before_loading(capsys) -> None:
    """--order takes a preset or comma-separated stage names; a bad one is a one-line error
    before any model loads."""
    assert main(["generate", "hi", "--top-p", "0.9", "--order", "temperature,top_k"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert_one_line_error(out.err, "top_p", "order")
    assert main(["generate", "hi", "--order", "nonsense"]) == 2
    assert_one_line_error(capsys.readouterr().err, "nonsense")


def test_help_quotes_the_embedded_models_recommended_settings() -> None:
    """The help and epilog quote SmolLM2's recommended values without importing the model
    layer; they must be the ones the loader applies."""
    from tokensampler.model.loading import DEFAULT_MODEL_FILE, EMBEDDED_GENERATION_DEFAULTS

    rec = EMBEDDED_GENERATION_DEFAULTS[DEFAULT_MODEL_FILE]
    assert set(rec) == {"temperature", "top_p"}
    text = " ".join(_generate_help().split())  # argparse wraps lines
    assert f"model's recommended value (SmolLM2: {rec['temperature']}), else 1.0" in text
    assert f"model's recommended value (SmolLM2: {rec['top_p']}), else off" in text
    from tokensampler.cli import _EMBEDDED_RECOMMENDED

    assert rec == _EMBEDDED_RECOMMENDED
    assert f"SmolLM2: temperature {rec['temperature']}, top-p {rec['top_p']})" in text
    assert "else temperature 1.0 with every filter and penalty off" in text


# ---- recommended sampling defaults; flags win ----------------------------------------------


@pytest.fixture
def tiny_cli(monkeypatch):
    """`tokensampler generate` on a tiny random Llama (SmolLM2's vocabulary and tokenizer):
    `load` is replaced, and every Sampler the generate loop builds is recorded."""
    require_default_model()
    import tokensampler.generate as gen
    from model_helpers import default_tokenizer, random_model, tiny_llama_config

    model = random_model(tiny_llama_config(vocab_size=49152, max_seq_len=256), seed=5, scale=30)
    monkeypatch.setattr("tokensampler.model.load", lambda *a, **k: (model, default_tokenizer()))
    seen: list[dict] = []

    class Recording(gen.Sampler):
        def __init__(self, params=None, /, **kw) -> None:
            super().__init__(params, **kw)
            seen.append({f: getattr(self.params, f) for f in SAMPLED})

    monkeypatch.setattr(gen, "Sampler", Recording)
    return model, seen


SAMPLED = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")


@pytest.mark.parametrize(
    ("recommended", "flags", "expected"),
    [
        # the model's recommendations fill what is not given
        ({"temperature": 0.3, "top_p": 0.8}, [], {"temperature": 0.3, "top_p": 0.8}),
        (
            {"top_k": 7, "min_p": 0.1, "repetition_penalty": 1.3},
            [],
            {"temperature": 1.0, "top_k": 7, "min_p": 0.1, "repetition_penalty": 1.3},
        ),
        # explicit flags win, also when they are the fallback values
        (
            {"temperature": 0.3, "top_p": 0.8},
            ["--temperature", "1.0"],
            {"temperature": 1.0, "top_p": 0.8},
        ),
        (
            {"temperature": 0.3, "top_p": 0.8},
            ["--top-p", "1", "--top-k", "0"],
            {"temperature": 0.3, "top_p": 1.0, "top_k": 0},
        ),
        ({"repetition_penalty": 1.3}, ["--repetition-penalty", "1"], {"repetition_penalty": 1.0}),
        # no recommendations: temperature 1.0, everything else off
        ({}, [], {"temperature": 1.0}),
    ],
)
def test_recommended_defaults_and_flags_win(tiny_cli, capsys, recommended, flags, expected):
    model, seen = tiny_cli
    model.generation_defaults = recommended
    args = ["generate", "Hi", "--max-new-tokens", "2", "--seed", "0", *flags]
    assert main(args) == 0, capsys.readouterr().err
    want = {"temperature": 1.0, "top_k": None, "top_p": None, "min_p": None,
            "repetition_penalty": 1.0, **expected}  # fmt: skip
    assert len(seen) == 1
    assert {k: seen[0][k] for k in SAMPLED} == want


def test_compile_time_is_reported_apart_from_tokens_per_second(tiny_cli, capsys, monkeypatch):
    """--compile: the step compiles before generation (a warm-up on a dummy sequence) and the
    summary reports that time apart; tokens/s and time to first token are generation alone.
    The compiled step here is the eager blocks behind a 1 s "compilation" on the first call,
    so the test takes a second, not the minutes of a real first compile."""
    import re
    import time

    from tokensampler.model.common import DecoderLM

    compiled_calls = []

    def fake_compile(self, enabled=True):
        def step(blocks, layers, x, slot, *args):
            if not compiled_calls:
                time.sleep(1.0)
            compiled_calls.append(slot)
            for block, cache in zip(blocks, layers, strict=True):
                x = block(x, *args, cache, slot)
            return x

        self._compiled_step = step if enabled else None

    monkeypatch.setattr(DecoderLM, "compile_decode", fake_compile)
    n = 12
    args = ["generate", "Once upon a time", "--no-chat", "--max-new-tokens", str(n),
            "--ignore-eos", "--seed", "0", "--compile"]  # fmt: skip
    assert main(args) == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    m = re.fullmatch(
        rf"\[{n} tokens, ([\d.]+) tokens/s, compile ([\d.]+) s, time to first token (\d+) ms, "
        r"finish: length; .*\]",
        summary,
    )
    assert m, summary
    rate, compile_s, ttft_ms = float(m[1]), float(m[2]), int(m[3])
    assert compile_s >= 1.0
    assert n / rate < 1.0 and ttft_ms < 1000  # the 1 s is not in the generation's time
    assert len(compiled_calls) == 1 + (n - 1)  # warm-up step, then every decode step


def test_demo_answers_right_for_any_seed() -> None:
    """`make demo`'s question, at the model's recommended settings (the CLI's defaults), is
    answered with Paris for 32 seeds: one batch with per-row seeds, each row drawn as alone."""
    require_default_model()
    import re
    from pathlib import Path

    from model_helpers import default_model
    from tokensampler.generate import generate

    demo = (Path(__file__).resolve().parents[1] / "scripts" / "demo.sh").read_text()
    question = re.search(r'generate "\$\{@:-(.+?)\}"', demo)
    assert question, "scripts/demo.sh no longer says which question it asks"
    model, tok = default_model()
    out = generate(model, tok, [question.group(1)] * 32, chat=True, seed=list(range(32)),
                   max_new_tokens=24)  # fmt: skip
    wrong = [(i, t) for i, t in enumerate(out.texts) if "Paris" not in t]
    assert not wrong, wrong
