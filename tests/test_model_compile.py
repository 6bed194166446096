"""`DecoderLM.compile_decode`: decode steps through torch.compile give the eager logits.

The oracle is the same model run eagerly (attention through SDPA): compiled, inductor fuses
the norms, RoPE, attention (written as products and sums) and residuals into C++ kernels
that sum in another order, so the logits agree to float32 rounding, not bit for bit.
Tolerance: ATOL = 1e-4 on logits of magnitude ~1 to ~20, as in the other model tests. Each
compiled model must really have been compiled, with no graph break (a silent fallback to
eager would make the comparison vacuous).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from model_helpers import ATOL, left_pad, random_model, tiny_gpt2_config, tiny_llama_config

torch = pytest.importorskip("torch")
dynamo_utils = pytest.importorskip("torch._dynamo.utils")

CONFIGS = {
    "llama-gqa": tiny_llama_config(attention_bias=True, tie_word_embeddings=False),
    "llama-mha": tiny_llama_config(n_kv_head=4),
    "gpt2": tiny_gpt2_config(),
}
PROMPTS = {"one-row": [[5, 6, 7]], "padded-batch": [[5, 6, 7, 8, 9], [11, 12], [13, 14, 15]]}


def _decode(model, rows: list[list[int]], steps: list[list[int]]) -> torch.Tensor:
    """Logits (steps, B, V) of the decode steps after a prefill of the left-padded rows."""
    idx, pad = left_pad(rows)
    cache = model.new_kv_cache(len(rows), idx.size(1) + len(steps))
    out = []
    with torch.inference_mode():
        model(idx, kv_cache=cache, pad=pad)
        for ids in steps:
            out.append(model(torch.tensor(ids).view(-1, 1), kv_cache=cache)[:, -1])
    return torch.stack(out)


# Each case compiles (a few seconds each): the mask and no-mask paths of both Llama attention
# forms, and GPT-2 with a mask.
CASES = [("llama-gqa", "padded-batch"), ("llama-mha", "one-row"), ("gpt2", "padded-batch")]


@pytest.mark.parametrize(("name", "prompts"), CASES)
def test_compiled_decode_equals_eager(name: str, prompts: str) -> None:
    rows = PROMPTS[prompts]
    g = torch.Generator().manual_seed(3)
    steps = torch.randint(0, 300, (6, len(rows)), generator=g).tolist()
    model = random_model(CONFIGS[name], seed=1, scale=20)
    eager = _decode(model, rows, steps)

    dynamo_utils.counters.clear()
    model.compile_decode()
    compiled = _decode(model, rows, steps)
    assert dynamo_utils.counters["stats"]["unique_graphs"] >= 1, "nothing was compiled"
    assert not dynamo_utils.counters["graph_break"], dict(dynamo_utils.counters["graph_break"])
    torch.testing.assert_close(compiled, eager, atol=ATOL, rtol=0)
    # A second generation reuses the graphs (same shapes), and still agrees.
    torch.testing.assert_close(_decode(model, rows, steps), eager, atol=ATOL, rtol=0)

    model.compile_decode(False)
    assert torch.equal(_decode(model, rows, steps), eager)  # eager again, bit for bit


def test_one_graph_serves_every_prompt_length() -> None:
    """The slot is dynamic from the first compile and generate rounds the cache length up,
    so prompts of other lengths (and the steps of each) reuse the one graph: a new prompt
    length costs no compile, in this process or, through inductor's cache, in the next."""
    from tokensampler.generate import generate

    model = random_model(CONFIGS["llama-gqa"], seed=2, scale=20)
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [15, 16]]
    kw = {"max_new_tokens": 5, "temperature": 0.0, "ignore_eos": True}
    eager = [generate(model, None, p, **kw).token_ids for p in prompts]
    dynamo_utils.counters.clear()
    model.compile_decode()
    assert [generate(model, None, p, **kw).token_ids for p in prompts] == eager
    assert dynamo_utils.counters["stats"]["unique_graphs"] == 1, dict(dynamo_utils.counters)


def test_models_compiled_in_one_process_keep_their_own_graphs() -> None:
    """Dynamo allows a few graphs per code object (8 by default; 1 here, so that two models
    show it). Each model compiles its own copy of the step function, so the second model is
    compiled too instead of silently running eager."""
    dynamo_config = pytest.importorskip("torch._dynamo.config")
    limit = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    rows, steps = PROMPTS["one-row"], [[1], [2], [3]]
    # The config's own patch, as for the C++ compiler below: each model needs one graph.
    with dynamo_config.patch({limit: 1}):
        for seed in range(2):
            model = random_model(tiny_llama_config(n_embd=32 + 8 * seed, n_layer=1), seed=seed)
            eager = _decode(model, rows, steps)
            dynamo_utils.counters.clear()
            model.compile_decode()
            torch.testing.assert_close(_decode(model, rows, steps), eager, atol=ATOL, rtol=0)
            assert dynamo_utils.counters["stats"]["unique_graphs"] == 1, f"model {seed} ran eager"


def test_no_cpp_compiler_is_one_clear_error() -> None:
    inductor_config = pytest.importorskip("torch._inductor.config")
    model = random_model(CONFIGS["llama-mha"])
    # inductor's own patch: monkeypatch's undo of a torch config attribute deletes the
    # setting, and later compiles in the process failed ("cpp.cxx does not exist").
    with (
        inductor_config.patch({"cpp.cxx": (None, "/nonexistent/g++")}),
        pytest.raises(RuntimeError, match="needs a C\\+\\+ compiler"),
    ):
        model.compile_decode()
    fresh = random_model(CONFIGS["llama-mha"])  # never compiled
    assert torch.equal(_decode(model, [[5, 6]], [[1]]), _decode(fresh, [[5, 6]], [[1]]))


def test_torch_without_nested_compile_regions_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch < 2.8 has no `torch.compiler.nested_compile_region`, which keeps the compile
    time of the one-graph step to that of one block."""
    monkeypatch.delattr(torch.compiler, "nested_compile_region")
    with pytest.raises(RuntimeError, match="needs torch 2.8 or newer"):
        random_model(CONFIGS["llama-mha"]).compile_decode()


def test_unsupported_dynamo_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    eval_frame = pytest.importorskip("torch._dynamo.eval_frame")

    def unsupported() -> None:
        raise RuntimeError("Python 9.9 not yet supported for torch.compile")

    monkeypatch.setattr(eval_frame, "check_if_dynamo_supported", unsupported)
    with pytest.raises(RuntimeError, match="torch.compile does not run here: Python 9.9"):
        random_model(CONFIGS["llama-mha"]).compile_decode()


def test_cli_compile_option() -> None:
    """`--compile` runs the default model, and a missing compiler is one error line, exit 2."""
    cmd = [sys.executable, "-m", "tokensampler", "generate", "Hi", "--no-chat", "--compile"]
    ok = subprocess.run(
        [*cmd, "--max-new-tokens", "3", "--ignore-eos", "--seed", "1"], check=False,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("Hi")
    assert "[3 tokens," in ok.stderr.strip().splitlines()[-1]

    bad = subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=600,
        env={**os.environ, "CXX": "/nonexistent/g++"},
    )  # fmt: skip
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tokensampler: error: --compile:"), lines
