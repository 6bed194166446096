"""Llama-family decoder in plain PyTorch (SmolLM2, Llama 2/3, TinyLlama, Mistral).

RMSNorm, rotary position embeddings (plain, linear or Llama 3 scaled), grouped-query
attention through `scaled_dot_product_attention`, SwiGLU MLP, tied or untied lm_head.

q/k/v are one fused Linear and gate/up another: a decode step at batch 1 is bound by
per-op overhead on the CPU, and fewer, larger matmuls are measurably faster. The loaders
concatenate the checkpoint's separate matrices into them.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .common import DecoderLM, Linear, _embedding, decode_attention, matmul_attention, row_attention
from .config import LlamaConfig
from .kv_cache import KVCache, attention_mask, cache_insert, positions


def rope_inv_freq(config: LlamaConfig) -> torch.Tensor:
    """Inverse frequencies (head_dim // 2,) in float32, as transformers computes them for
    rope_type default / linear / llama3 (`modeling_rope_utils.py`)."""
    dim = config.head_dim
    inv_freq = 1.0 / (
        config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)
    )
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    rope_type = scaling["rope_type"]
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])
    if rope_type == "freq_factors":
        # llama.cpp's rope_freqs tensor: each frequency is divided by its factor.
        return inv_freq / torch.tensor(scaling["factors"], dtype=torch.float32)
    if rope_type == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_len = float(scaling.get("original_max_position_embeddings", 8192))
        low_wavelen, high_wavelen = old_len / low, old_len / high
        wavelen = 2 * math.pi / inv_freq
        # Long wavelengths are stretched by `factor`, short ones kept, the band between
        # interpolated smoothly.
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(f"unsupported rope_type {rope_type!r}")


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (i, i + hs/2) of x (B, T, nh, hs) by the angles in cos/sin (B, T, 1, hs).

    This is the "rotate_half" convention of HF checkpoints; GGUF files store q/k rows
    permuted for llama.cpp's interleaved convention and the loader undoes that."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:
            return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)  # one fused op
        # Half precision: normalise in float32 like the reference, then scale in x's dtype.
        y = F.rms_norm(x.float(), (x.size(-1),), eps=self.eps).to(x.dtype)
        return y * self.weight


class CausalSelfAttention(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.head_dim
        qkv = (config.n_head + 2 * config.n_kv_head) * config.head_dim
        self.c_attn = Linear(config.n_embd, qkv, bias=config.attention_bias)  # q | k | v
        self.c_proj = Linear(
            config.n_head * config.head_dim, config.n_embd, bias=config.attention_bias
        )

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        pos: int,
        rows: list[int] | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.size()
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        qk, v = self.c_attn(x).split([(nh + nkv) * hs, nkv * hs], dim=2)
        # q and k heads rotate together: one RoPE pass instead of two.
        qk = apply_rotary(qk.view(B, T, nh + nkv, hs), cos, sin)  # (B, T, nh + nkv, hs)
        q = qk[:, :, :nh].transpose(1, 2)  # (B, nh, T, hs)
        k = qk[:, :, nh:].transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, nkv, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if cache is not None:
            k, v = cache_insert(cache, pos, k, v)  # (B, nkv, S, hs)
        if rows is not None:  # row-invariant mode: each row as if alone
            y = row_attention(q, k, v, rows, pos, self._attend)  # (B, nh, T, hs)
            y = y.transpose(1, 2).reshape(B, T, nh * hs)
        elif T == 1:
            # One query per row: fold the query heads of a group into its "sequence" axis so
            # every kv head is used as is, instead of repeating the cache n_head/n_kv times.
            # A padding mask (B, 1, 1, S) broadcasts over that axis unchanged.
            q = q.reshape(B, nkv, nh // nkv, hs)  # (B, nkv, g, hs)
            y = decode_attention(q, k, v, mask).reshape(B, 1, nh * hs)  # (B, T, nh * hs)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=nkv != nh
            )  # (B, nh, T, hs)
            y = y.transpose(1, 2).reshape(B, T, nh * hs)  # (B, T, nh * hs)
        out: torch.Tensor = self.c_proj(y)
        return out

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
    ) -> torch.Tensor:
        """The attention `forward` runs for one unpadded row: q (1, nh, T, hs) against k, v
        (1, nkv, S, hs), mask / is_causal as `attention_mask` gives them; (1, nh, T, hs)."""
        B, nh, T, hs = q.shape
        nkv = self.n_kv_head
        if T == 1:
            y = matmul_attention(q.reshape(B, nkv, nh // nkv, hs), k, v)  # (B, nkv, g, hs)
            return y.reshape(B, nh, 1, hs)
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, enable_gqa=nkv != nh
        )


class MLP(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.hidden = config.intermediate_size
        self.c_fc = Linear(config.n_embd, 2 * config.intermediate_size, bias=config.mlp_bias)
        self.c_proj = Linear(config.intermediate_size, config.n_embd, bias=config.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.c_fc(x).split(self.hidden, dim=-1)  # gate | up
        out: torch.Tensor = self.c_proj(F.silu(gate) * up)
        return out


class Block(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.ln_1 = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = RMSNorm(config.n_embd, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        pos: int,
        rows: list[int] | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cos, sin, mask, is_causal, cache, pos, rows)
        x = x + self.mlp(self.ln_2(x))
        return x


class Llama(DecoderLM):
    """A Llama-family causal LM.

    >>> m = Llama(LlamaConfig(vocab_size=10, n_layer=1, n_head=2, n_kv_head=1, n_embd=8,
    ...                       head_dim=4, intermediate_size=16, max_seq_len=16))
    >>> m(torch.tensor([[1, 2, 3]])).shape
    torch.Size([1, 3, 10])
    """

    config: LlamaConfig

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        wte = _embedding(config.vocab_size, config.n_embd)
        self.transformer = nn.ModuleDict(
            {
                "wte": wte,
                "h": nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                "ln_f": RMSNorm(config.n_embd, config.rms_norm_eps),
            }
        )
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = wte.weight
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.init_buffers()
        if self.lm_head.weight.device.type != "meta":
            self.apply(self._init_weights)

    def init_buffers(self) -> None:
        """(Re)compute the RoPE tables; call after `to_empty` when built on the meta device."""
        device = cast(nn.Embedding, self.transformer.wte).weight.device
        if device.type == "meta":
            return
        inv_freq = rope_inv_freq(self.config).to(device)  # (hs/2,)
        t = torch.arange(self.config.max_seq_len, device=device, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # (T, hs/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (T, hs)
        # float32 tables, cast per call like the reference (angles lose precision in bf16).
        self.rope_cos = emb.cos()
        self.rope_sin = emb.sin()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self,
        idx: torch.Tensor,
        *,
        kv_cache: KVCache | None = None,
        pad: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Logits (B, T, V) for token ids idx (B, T); (B, 1, V) with `last_only`.

        Args:
            idx: token ids (B, T), left-padded when rows have different lengths.
            kv_cache: if given, idx continues the cached sequence at slot `kv_cache.pos`.
            pad: left padding per row (B,). With a cache, only on its first (prefill) call;
                the cache remembers it for the decode steps.
            last_only: compute the lm_head only for the last position (generation).
        """
        B, T = idx.size()
        start, pad = self._begin(idx, kv_cache, pad)
        wte = cast(nn.Embedding, self.transformer.wte)
        ln_f = cast(RMSNorm, self.transformer.ln_f)
        dtype = wte.weight.dtype
        if pad is None:  # every row at the same positions: a slice, no gather
            cos = self.rope_cos[start : start + T].view(1, T, 1, -1).to(dtype)  # (1, T, 1, hs)
            sin = self.rope_sin[start : start + T].view(1, T, 1, -1).to(dtype)  # (1, T, 1, hs)
        else:
            pos = positions(pad, start, T, B, idx.device)  # (B, T)
            cos = self.rope_cos[pos].unsqueeze(2).to(dtype)  # (B, T, 1, hs)
            sin = self.rope_sin[pos].unsqueeze(2).to(dtype)  # (B, T, 1, hs)
        mask, is_causal = attention_mask(pad, start, T)
        x: torch.Tensor = wte(idx)  # (B, T, C)
        x = self._blocks(x, kv_cache, cos, sin, mask, is_causal, rows=self._rows(pad, B))
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        logits: torch.Tensor = self.lm_head(ln_f(x))  # (B, T, V)
        return logits
