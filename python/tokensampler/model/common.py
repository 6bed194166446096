"""What the Llama and GPT-2 models share: device/dtype helpers and cache plumbing."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .kv_cache import KVCache


def default_device() -> torch.device:
    """`cuda` when there is a GPU, else `cpu`."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """float32 on the CPU (fastest there and exact), bfloat16 on a GPU that has it."""
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype} (float32, bfloat16, float16)")
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r} (float32, bfloat16, float16)") from None


def _embedding(num: int, dim: int) -> nn.Embedding:
    """An nn.Embedding whose constructor skips its random init (the model's `_init_weights`
    does it): on the meta device that init alone imports torch._refs and costs ~4 s."""
    return nn.Embedding(num, dim, _weight=torch.empty(num, dim))


def _check_compile_support(device: torch.device) -> None:
    """Fail now, with one clear line, rather than inside the first compiled step. The
    helpers are torch internals: where one is missing, torch.compile reports it itself."""
    try:
        from torch._dynamo.eval_frame import check_if_dynamo_supported
    except ImportError:
        pass
    else:
        try:
            check_if_dynamo_supported()  # e.g. a Python newer than this torch supports
        except RuntimeError as e:
            raise RuntimeError(f"torch.compile does not run here: {e}") from None
    if device.type != "cpu":
        return
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:
        return
    try:
        get_cpp_compiler()
    except RuntimeError as e:
        raise RuntimeError(
            "compiling the decode step on the CPU needs a C++ compiler (g++ or clang++ on "
            f"PATH, or $CXX): {e}"
        ) from None


def _call_block(block: nn.Module, *args: Any) -> torch.Tensor:
    return block(*args)  # type: ignore[no-any-return]


def _own_copy(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A copy of `fn` with its own code object. Dynamo keeps compiled graphs, and its
    recompile budget (8), per code object: without a copy, every model compiled in one
    process would share them, and a third or fourth model would silently run eager."""
    code = fn.__code__.replace()
    return types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__)


class DecoderLM(nn.Module):
    """Base class: a causal LM whose forward is `(idx, *, kv_cache, pad, last_only) -> logits`."""

    config: object
    # The block runner of one-token steps: eager, or compiled by `compile_decode`.
    _decode_block: Callable[..., torch.Tensor] = staticmethod(_call_block)

    def compile_decode(self, enabled: bool = True) -> None:
        """Run the blocks of one-token decode steps through `torch.compile` (inductor).

        On the CPU a batch-1 decode step is the matmuls' weight reads plus per-op overhead;
        inductor cuts the overhead by fusing each block's norms, RoPE, cache writes, SiLU
        and residual adds into a few C++ kernels. Only the block is compiled, once for all
        layers (each gets its own cache views), so the first steps take seconds, not the
        ~30 s of a whole-model graph; prefill and the lm_head stay eager. Needs a C++ compiler at run time. The logits
        match the eager ones to float32 rounding (fused kernels sum in another order), not
        bit for bit. `enabled=False` goes back to eager."""
        if not enabled:
            self._decode_block = _call_block
            return
        _check_compile_support(self.device)
        # Automatic dynamic shapes: the first graph is specialised to the first step; the
        # second step's new cache length marks just that size dynamic, and the graph
        # compiled then serves every later step. `dynamic=True` instead would make every
        # size symbolic (the hidden size too) and its kernels slower (~6% of a step here).
        self._decode_block = torch.compile(_own_copy(_call_block))

    def _blocks(self, x: torch.Tensor, kv_cache: KVCache | None, *args: Any) -> torch.Tensor:
        """Run x (B, T, C) through every block, each with its own cache views, then move the
        cache past the T slots written."""
        T = x.size(1)
        run = self._decode_block if T == 1 else _call_block
        pos = 0 if kv_cache is None else kv_cache.pos
        for i, block in enumerate(self.transformer.h):  # type: ignore[arg-type]
            x = run(block, x, *args, None if kv_cache is None else kv_cache.layer(i), pos)
        if kv_cache is not None:
            kv_cache.advance(T)
        return x

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    @property
    def max_seq_len(self) -> int:
        return int(self.config.max_seq_len)  # type: ignore[attr-defined]

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)  # type: ignore[attr-defined]

    def new_kv_cache(self, batch_size: int, max_seq_len: int | None = None) -> KVCache:
        """A cache for `batch_size` rows of up to `max_seq_len` tokens (default: the model's
        context length; pass the real need, prompt + new tokens, to save memory)."""
        c = self.config
        n = self.max_seq_len if max_seq_len is None else min(max_seq_len, self.max_seq_len)
        return KVCache(
            c.n_layer,  # type: ignore[attr-defined]
            batch_size,
            c.n_kv_head,  # type: ignore[attr-defined]
            n,
            c.head_dim,  # type: ignore[attr-defined]
            device=self.device,
            dtype=self.dtype,
        )

    def _begin(
        self, idx: torch.Tensor, kv_cache: KVCache | None, pad: torch.Tensor | None
    ) -> tuple[int, torch.Tensor | None]:
        """(first slot, effective padding) of a forward call; records pad on prefill."""
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
        if kv_cache is None:
            start = 0
        else:
            start = kv_cache.pos
            if start == 0:
                kv_cache.set_pad(pad)
            elif pad is not None:
                raise ValueError("pad is only given on the first (prefill) call of a cache")
            pad = kv_cache.pad if kv_cache.has_pad else None
        if kv_cache is not None:
            kv_cache.check_room(idx.size(1))
        if start + idx.size(1) > self.max_seq_len:
            raise ValueError(
                f"sequence of {start + idx.size(1)} tokens exceeds the model's context "
                f"length {self.max_seq_len}"
            )
        if pad is not None and kv_cache is None and not bool(pad.any()):
            pad = None
        return start, pad
