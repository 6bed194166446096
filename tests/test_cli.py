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


def test_hf_gpt2_folder_without_chat_template(tmp_path, capsys, monkeypatch) -> None:
    """A HF folder model: no chat template, so the prompt is continued as raw text; --stop
    cuts the text; '-' reads the prompt from stdin."""
    import io

    transformers = pytest.importorskip("transformers")
    import torch
    from model_helpers import write_byte_tokenizer

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=257, n_positions=64, n_embd=32, n_layer=1,
                                  n_head=2, bos_token_id=256, eos_token_id=256)  # fmt: skip
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    write_byte_tokenizer(tmp_path)
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
