"""What the Llama and GPT-2 models share: device/dtype helpers and cache plumbing."""

from __future__ import annotations

import platform
import types
from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from .kv_cache import KVCache, attention_mask


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
    if not hasattr(torch.compiler, "nested_compile_region"):
        raise RuntimeError(
            "compiling the decode step needs torch 2.8 or newer "
            f"(torch.compiler.nested_compile_region); this is torch {torch.__version__}"
        )
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
    return types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


_SLOT_SOURCE = "L['_ts_slot']"  # dynamo's name of the step's slot argument


def _decode_step() -> Callable[..., torch.Tensor]:
    """A fresh function running x (B, 1, C) through every block of a one-token step, for
    `torch.compile` to turn into one graph. The block is a nested compile region: dynamo
    traces it once and reuses it for every layer (each layer's weights and cache views are
    that region's inputs), so a 30-layer model compiles in about the time of one block."""
    block_region = torch.compiler.nested_compile_region(_own_copy(_call_block))

    def step(
        blocks: nn.ModuleList, layers: list[Any], x: torch.Tensor, _ts_slot: int, *args: Any
    ) -> torch.Tensor:
        for block, cache in zip(blocks, layers, strict=True):
            x = block_region(block, x, *args, cache, _ts_slot)
        return x

    return _own_copy(step)


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Attention of one query position: q (B, H, G, hs) against keys/values (B, H, S, hs),
    the G query heads of a group sharing kv head H (G = 1 without GQA); mask None or a
    boolean (B, 1, 1, S), True = may attend. Returns (B, H, G, hs).

    Eagerly this is SDPA. Under `torch.compile` it is written as broadcast products and
    sums instead: inductor fuses those with RoPE and the cache write into one C++ kernel,
    where SDPA would stay a separate call costing more than its arithmetic (~70 us a layer
    on this CPU for a few hundred keys)."""
    if not torch.compiler.is_compiling():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q.unsqueeze(3) * k.unsqueeze(2)).sum(-1) * (q.size(-1) ** -0.5)  # (B, H, G, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    p = torch.softmax(scores, dim=-1)  # (B, H, G, S)
    return (p.unsqueeze(-1) * v.unsqueeze(2)).sum(-2)  # (B, H, G, hs)


# `Linear`'s float32 CPU kernels, measured as whole SmolLM2-135M forward passes of T positions
# on a 2-core AVX-512 AMD EPYC (torch 2.15). `F.linear` (MKL) took 38 ms at T = 1, 57-65 at
# T = 2-9, 95 at T = 33 and 210 for a 150-token prefill: its one-row product is a
# matrix-vector kernel on one thread, and at prefill sizes it reached ~185 GFLOP/s where
# oneDNN reached 350-400. oneDNN took 22.5, 25-30, 48-53 and 110 ms; the weight-on-the-left
# product 20, 20-23 at T = 2-4, then 28-44 at T = 5-8. So: weight-on-the-left up to FEW_ROWS
# rows, oneDNN above.
FEW_ROWS = 4
# oneDNN's dense-weight linear, the kernel inductor's CPU linear fusions call; not on other
# architectures (not measured there) or a torch built without oneDNN.
_ONEDNN = (
    platform.machine().lower() in ("x86_64", "amd64")
    and torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
)


class Linear(nn.Linear):
    """The models' `nn.Linear`: the same parameters, results equal to float32 rounding, and
    faster float32 kernels on an x86 CPU (`FEW_ROWS` has the figures).

    Few rows (a decode step: one per sequence; a short speculative step) are written as
    W @ x^T, a (N, K) @ (K, M) product with N in the thousands: MKL blocks it over every
    thread, where `F.linear` runs one row on one thread and two or three rows at two to
    three times its cost. One row is padded to two so that it is a matrix product too. More
    rows (prefill, longer speculative steps) go to oneDNN's kernels. Other dtypes (already
    oneDNN in `F.linear`), other devices, and products that autograd must differentiate are
    `F.linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if not _own_kernels(w):
            return F.linear(x, w, self.bias)
        k = x.size(-1)
        m = x.numel() // k
        if not 0 < m <= FEW_ROWS:
            return _onednn_linear(x, w, self.bias)
        flat = _pad_rows(x.reshape(m, k), 1 if m == 1 else 0)  # one row: a 2-column product
        y = torch.mm(w, flat.t())[:, :m].t()  # (m, N), a transposed view
        if self.bias is not None:
            y = y + self.bias
        return y.contiguous().view(*x.shape[:-1], y.size(-1))


def _own_kernels(w: torch.Tensor) -> bool:
    """Whether `Linear`'s (and `RowInvariantLinear`'s) own kernels serve weight w: float32 on
    an x86 CPU with oneDNN, and no gradient to take (the oneDNN op has no backward)."""
    return (
        _ONEDNN
        and w.numel() > 0  # oneDNN refuses an empty weight (in_features 0)
        and w.dtype == torch.float32
        and w.device.type == "cpu"
        and not (w.requires_grad and torch.is_grad_enabled())
    )


def _pad_rows(flat: torch.Tensor, extra: int) -> torch.Tensor:
    """flat (M, K) with `extra` rows of zeros below it."""
    return torch.cat([flat, flat.new_zeros(extra, flat.size(1))]) if extra else flat


def _onednn_linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")
    return out


# Row-invariant mode (`DecoderLM.set_row_invariant`): every matmul gets a multiple of this many
# rows. Measured on an AVX-512 EPYC with torch 2.15: MKL's product (`F.linear`) gives a row
# bit-identical results at every M >= 4 that is a multiple of 4, with 1 to 4 threads, and
# different results at M = 1 (a matrix-vector kernel), 2 and 3 (and, with 2 threads, at
# M = 5-7 and 9-11). oneDNN's float32 linear, which this mode uses where `Linear` would
# (`_own_kernels`), gave a row the bits of its padded 4-row product at every M from 6 to 69,
# with 1 to 4 threads, on SmolLM2's shapes with and without bias.
ROW_MULTIPLE = 4


class RowInvariantLinear(nn.Linear):
    """An `nn.Linear` whose result for a row does not depend on the other rows of the call:
    the rows are padded with zeros to a multiple of `ROW_MULTIPLE` (see there) and run as one
    2-D product. `set_row_invariant` swaps the class of a model's linears in and out; the
    parameters are the same objects."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.size(-1))
        m = flat.size(0)
        flat = _pad_rows(flat, -m % ROW_MULTIPLE)
        product = _onednn_linear if _own_kernels(self.weight) else F.linear
        y = product(flat.contiguous(), self.weight, self.bias)
        return y[:m].reshape(*x.shape[:-1], y.size(-1))


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Unmasked attention of q (B, H, G, hs) over k, v (B, H, S, hs) as two matrix products
    and a softmax: `row_attention`'s one-query case. SDPA's CPU kernel splits the keys of
    so small a problem across threads, so its rounding changed with the thread count (at
    S >= 8 on 2-4 threads, measured); this form gave the same bits on 1-4 threads."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.size(-1) ** -0.5)  # (B, H, G, S)
    return torch.matmul(torch.softmax(scores, dim=-1), v)  # (B, H, G, hs)


AttendFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, bool], torch.Tensor
]


def row_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    rows: list[int],
    start: int,
    attend: AttendFn,
) -> torch.Tensor:
    """Attention of left-padded rows, one row at a time over that row's own slots, so that
    every row runs exactly the call it would run alone (B = 1, no padding): the same shapes,
    the same kernel, the same summation order, whatever its neighbours and their lengths.

    q (B, nh, T, hs) at slots start..start+T; k, v (B, nkv, start+T, hs); rows[b] the first
    real slot of row b (its left padding). `attend(q, k, v, mask, is_causal)` is the model's
    attention of one unpadded row. Returns (B, nh, T, hs); a padding query's output is zero
    (no real token attends to it)."""
    y = q.new_zeros(q.shape)
    T = q.size(2)
    for b, first in enumerate(rows):
        q_from = max(0, first - start)  # the row's first real query
        if q_from >= T:
            continue
        # The mask of this row alone, started at slot 0 of its own cache.
        mask, is_causal = attention_mask(None, start + q_from - first, T - q_from)
        y[b : b + 1, :, q_from:] = attend(
            q[b : b + 1, :, q_from:], k[b : b + 1, :, first:], v[b : b + 1, :, first:],
            mask, is_causal,
        )  # fmt: skip
    return y


class DecoderLM(nn.Module):
    """Base class: a causal LM whose forward is `(idx, *, kv_cache, pad, last_only) -> logits`."""

    config: object
    # wte, h (an nn.ModuleList of blocks), ln_f, and wpe for GPT-2. torch types a submodule
    # reached by attribute as `Tensor | Module`, so the users of an entry `cast` it.
    transformer: nn.ModuleDict
    lm_head: nn.Linear
    # All blocks of a one-token step with a cache, compiled by `compile_decode`; None: eager.
    _compiled_step: Callable[..., torch.Tensor] | None = None
    # `set_row_invariant`: each row's logits independent of the rest of the batch.
    row_invariant: bool = False

    def __init__(self) -> None:
        super().__init__()
        # The sampling settings the model's authors recommend, by `generate`'s argument names
        # (temperature, top_k, top_p, min_p, repetition_penalty): set by the loaders from a
        # GGUF's `general.sampling.*` keys or a HF folder's generation_config.json (see
        # `tokensampler.model.loading.generation_defaults_*`); {} when there are none.
        # `generate` / `stream` / the CLI use them for the arguments not given.
        self.generation_defaults: dict[str, float] = {}

    def init_buffers(self) -> None:
        """(Re)compute the buffers derived from the config rather than loaded; the loaders call
        it after building the model on the meta device and assigning its weights."""
        raise NotImplementedError

    def compile_decode(self, enabled: bool = True) -> None:
        """Run the blocks of one-token decode steps through `torch.compile` (inductor).

        On the CPU a batch-1 decode step is the matmuls' weight reads plus per-op overhead;
        compiled, the norms, RoPE, cache writes, attention, SiLU and residual adds of a block
        are a few fused C++ kernels between the matmuls, and the whole step is one graph
        call. The block is a nested compile region, traced once for all layers, and the slot
        is dynamic from the start, so the first step takes seconds (~4 s with inductor's
        on-disk cache warm, 30-60 s the first time on a machine) and later prompts of any
        length reuse the graph (`generate` rounds its cache length up, so that the cache
        size rarely changes either); prefill and the lm_head stay eager. Needs torch >= 2.8
        and, on the CPU, a C++ compiler at run time. The logits match the eager ones to
        float32 rounding (fused kernels sum in another order), not bit for bit.
        `enabled=False` goes back to eager."""
        if not enabled:
            self._compiled_step = None
            return
        if self.row_invariant:
            raise ValueError("compile_decode does not work in row-invariant mode")
        _check_compile_support(self.device)
        # Only the slot is dynamic from the start; other sizes follow automatic dynamic shapes
        # (a second value makes them dynamic). `dynamic=True` would make every size
        # symbolic, the hidden size too, and its kernels slower (~6% of a step here).
        # The slot is dynamic from the first compile (by its source name, unique to this
        # function): otherwise the first graph is specialised to the prompt length, and every
        # new prompt length would cost a compile instead of a hit in inductor's cache.
        sources = torch.compiler.config.dynamic_sources
        if _SLOT_SOURCE not in sources.split(","):
            torch.compiler.config.dynamic_sources = f"{sources},{_SLOT_SOURCE}".lstrip(",")
        self._compiled_step = torch.compile(_decode_step())

    def set_row_invariant(self, enabled: bool = True) -> None:
        """Make every row's logits bit-identical to what that row gives alone (B = 1, no
        padding), whatever the other rows of the batch, their number and their lengths.

        Batched inference is not row-invariant by default: a matrix product's kernel (and so
        its rounding) changes with the number of rows, and a left-padded row's attention
        sums over other slots than it does alone. In this mode every `nn.Linear` pads its
        rows to a multiple of `ROW_MULTIPLE` (`RowInvariantLinear`) and attention runs one
        row at a time over the row's own slots (`row_attention`); the rest of a forward pass
        (norms, RoPE, activations) is already row-wise. Used by `tokensampler.batch`, whose
        output must not depend on which records share a batch. Costs: one attention call
        per row and layer, and batch-1 matmuls run as 4-row ones. Not with
        `compile_decode` (its fused kernels sum in their own order). `enabled=False` goes
        back to the batched kernels."""
        if enabled and self._compiled_step is not None:
            raise ValueError("row-invariant mode does not work with compile_decode")
        cls = RowInvariantLinear if enabled else Linear
        for m in self.modules():
            if isinstance(m, nn.Linear):
                m.__class__ = cls
        self.row_invariant = enabled

    def _rows(self, pad: torch.Tensor | None, batch: int) -> list[int] | None:
        """Per-row first slots for `row_attention` in row-invariant mode, else None."""
        if not self.row_invariant:
            return None
        return [0] * batch if pad is None else [int(p) for p in pad.tolist()]

    def _blocks(
        self, x: torch.Tensor, kv_cache: KVCache | None, *args: Any, rows: list[int] | None = None
    ) -> torch.Tensor:
        """Run x (B, T, C) through every block, each with its own cache views, then move the
        cache past the T slots written. `rows`: row-invariant attention (`_rows`)."""
        T = x.size(1)
        blocks = cast(nn.ModuleList, self.transformer.h)
        if kv_cache is None:
            for block in blocks:
                x = block(x, *args, None, 0, rows)
            return x
        pos = kv_cache.pos
        if T == 1 and self._compiled_step is not None:
            x = self._compiled_step(blocks, kv_cache.layers, x, pos, *args)
        else:
            for block, cache in zip(blocks, kv_cache.layers, strict=True):
                x = block(x, *args, cache, pos, rows)
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
