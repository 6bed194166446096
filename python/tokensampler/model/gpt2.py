"""GPT-2 in plain PyTorch, nanoGPT's `model.py` with a KV cache and left-padded batches.

Weights are `nn.Linear` (out, in); HF checkpoints store GPT-2's Conv1D weights as (in, out)
and the loader transposes them.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .common import DecoderLM, Linear, _embedding, decode_attention, matmul_attention, row_attention
from .config import GPT2Config
from .kv_cache import KVCache, attention_mask, cache_insert, positions


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.c_attn = Linear(config.n_embd, 3 * config.n_embd)  # q | k | v
        self.c_proj = Linear(config.n_embd, config.n_embd)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        pos: int,
        rows: list[int] | None = None,
    ) -> torch.Tensor:
        B, T, C = x.size()
        nh, hs = self.n_head, C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        if cache is not None:
            k, v = cache_insert(cache, pos, k, v)  # (B, nh, S, hs)
        if rows is not None:  # row-invariant mode: each row as if alone
            y = row_attention(q, k, v, rows, pos, _attend)  # (B, nh, T, hs)
        elif T == 1:
            y = decode_attention(q, k, v, mask)  # (B, nh, 1, hs)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        out: torch.Tensor = self.c_proj(y)
        return out


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    is_causal: bool,
) -> torch.Tensor:
    """The attention `CausalSelfAttention.forward` runs for one unpadded row."""
    if q.size(2) == 1:
        return matmul_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)


class MLP(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = Linear(config.n_embd, config.n_inner)
        self.c_proj = Linear(config.n_inner, config.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))
        return out


class Block(nn.Module):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        is_causal: bool,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        pos: int,
        rows: list[int] | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, is_causal, cache, pos, rows)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT2(DecoderLM):
    """GPT-2 causal LM.

    >>> m = GPT2(GPT2Config(vocab_size=10, n_layer=1, n_head=2, n_embd=8, n_inner=32,
    ...                     max_seq_len=16))
    >>> m(torch.tensor([[1, 2, 3]]), last_only=True).shape
    torch.Size([1, 1, 10])
    """

    config: GPT2Config

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        wte = _embedding(config.vocab_size, config.n_embd)
        self.transformer = nn.ModuleDict(
            {
                "wte": wte,
                "wpe": _embedding(config.max_seq_len, config.n_embd),
                "h": nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                "ln_f": nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
            }
        )
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = wte.weight  # weight tying, as in every GPT-2
        if self.lm_head.weight.device.type != "meta":
            self.apply(self._init_weights)

    def init_buffers(self) -> None:
        """No derived buffers (positions are learned); present for the loaders' sake."""

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
        """Logits (B, T, V) for token ids idx (B, T); see `Llama.forward` for the arguments."""
        B, T = idx.size()
        start, pad = self._begin(idx, kv_cache, pad)
        pos = positions(pad, start, T, B, idx.device)  # (B, T)
        mask, is_causal = attention_mask(pad, start, T)
        wte = cast(nn.Embedding, self.transformer.wte)
        wpe = cast(nn.Embedding, self.transformer.wpe)
        ln_f = cast(nn.LayerNorm, self.transformer.ln_f)
        x: torch.Tensor = wte(idx) + wpe(pos)  # (B, T, C)
        x = self._blocks(x, kv_cache, mask, is_causal, rows=self._rows(pad, B))
        if last_only:
            x = x[:, -1:, :]  # (B, 1, C)
        logits: torch.Tensor = self.lm_head(ln_f(x))  # (B, T, V)
        return logits
