"""tokensampler as a drop-in for the sampling lines of nanoGPT's and "Build an LLM" `generate`.

A small GPT in the style of nanoGPT's `model.py` (random weights, char-sized vocabulary) runs
two generate loops, each as published and with its sampling lines replaced by one call:

nanoGPT (karpathy/nanoGPT `model.py`, `GPT.generate`)::

    -            logits = logits[:, -1, :] / temperature
    -            if top_k is not None:
    -                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
    -                logits[logits < v[:, [-1]]] = -float('Inf')
    -            probs = F.softmax(logits, dim=-1)
    -            idx_next = torch.multinomial(probs, num_samples=1)
    +            idx_next = sampler(logits[:, -1, :], history=idx, keepdim=True)
                 idx = torch.cat((idx, idx_next), dim=1)

with ``sampler = ts.Sampler(temperature=temperature, top_k=top_k, seed=seed)`` made once
before the loop. ``keepdim=True`` returns (B, 1) int64 on the logits' device, exactly what
``torch.multinomial(probs, 1)`` returned, so the ``torch.cat`` line stays as it is.

"Build a Large Language Model (From Scratch)" (rasbt/LLMs-from-scratch, ch05 `generate`):
the top-k / temperature / multinomial / argmax block becomes the same single call
(``temperature=0`` is greedy in tokensampler, so the argmax branch goes too).

Run: ``python examples/nanogpt_loop.py`` (CPU, random weights, no download, ~1 s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import tokensampler as ts
import torch
from torch import nn
from torch.nn import functional as F

# ==== a small GPT, as in nanoGPT model.py ====================================================


@dataclass
class GPTConfig:
    block_size: int = 64  # longest context the position table covers
    vocab_size: int = 65  # the Shakespeare-char vocabulary size of nanoGPT's small example
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.n_head = config.n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.size()
        q, k, v = self.c_attn(x).split(c, dim=2)
        q = q.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(config.n_embd, 4 * config.n_embd),
            nn.GELU(),
            nn.Linear(4 * config.n_embd, config.n_embd),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Random weights give a nearly flat next-token distribution; a larger init on the
        # head makes the distribution peaked enough for top-k and temperature to matter.
        nn.init.normal_(self.lm_head.weight, std=2.0 / math.sqrt(config.n_embd))

    def forward(self, idx: torch.Tensor, targets: Any = None) -> tuple[torch.Tensor, None]:
        t = idx.size(1)
        pos = torch.arange(t, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x)), None  # (B, T, V) logits, no loss

    # ---- nanoGPT's generate, verbatim (except the type hints) ----
    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
    ) -> torch.Tensor:
        for _ in range(max_new_tokens):
            bs = self.config.block_size
            idx_cond = idx if idx.size(1) <= bs else idx[:, -bs:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("Inf")
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx

    # ---- the same loop with tokensampler: six lines became one ----
    @torch.no_grad()
    def generate_ts(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int | None = None,
    ) -> torch.Tensor:
        sampler = ts.Sampler(temperature=temperature, top_k=top_k, seed=seed)
        for _ in range(max_new_tokens):
            bs = self.config.block_size
            idx_cond = idx if idx.size(1) <= bs else idx[:, -bs:]
            logits, _ = self(idx_cond)
            idx_next = sampler(logits[:, -1, :], history=idx, keepdim=True)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


# ==== "Build a Large Language Model (From Scratch)", chapter 5 ===============================


def generate_llm_from_scratch(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_size: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = None,
) -> torch.Tensor:
    """The book's `generate`, verbatim except that our GPT's forward returns (logits, loss)."""
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]
        with torch.no_grad():
            logits, _ = model(idx_cond)
        logits = logits[:, -1, :]
        if top_k is not None:
            top_logits, _ = torch.topk(logits, top_k)
            min_val = top_logits[:, -1]
            logits = torch.where(
                logits < min_val, torch.tensor(float("-inf")).to(logits.device), logits
            )
        if temperature > 0.0:
            logits = logits / temperature
            probs = torch.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)
        else:
            idx_next = torch.argmax(logits, dim=-1, keepdim=True)
        if idx_next == eos_id:
            break
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


def generate_llm_from_scratch_ts(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    context_size: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
) -> torch.Tensor:
    """The same function with tokensampler: the whole sampling block is one call."""
    sampler = ts.Sampler(temperature=temperature, top_k=top_k, seed=seed)
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]
        with torch.no_grad():
            logits, _ = model(idx_cond)
        idx_next = sampler(logits[:, -1, :], history=idx, keepdim=True)
        if idx_next == eos_id:
            break
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


# ==== demo ===================================================================================

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # nanoGPT's 65


def decode(ids: torch.Tensor) -> str:
    return "".join(CHARS[i] for i in ids.tolist())


def encode(text: str) -> torch.Tensor:
    return torch.tensor([[CHARS.index(c) for c in text]], dtype=torch.long)


def build_model(seed: int = 1337) -> GPT:
    """The example's fixed model: seeded random weights, eval mode, CPU."""
    torch.manual_seed(seed)
    return GPT(GPTConfig()).eval()


def main() -> None:
    model = build_model()
    idx = encode("ROMEO:\n")
    print("nanoGPT generate, temperature=0.8, top_k=10")
    torch.manual_seed(0)
    before = model.generate(idx, 40, temperature=0.8, top_k=10)
    after = model.generate_ts(idx, 40, temperature=0.8, top_k=10, seed=0)
    print("  original lines  :", repr(decode(before[0])))
    print("  tokensampler    :", repr(decode(after[0])))
    assert after.shape == before.shape and after.dtype == before.dtype == torch.long
    # Same model, same settings: the next-token distribution is the same; only the random
    # streams differ (torch's global generator versus tokensampler's seeded Philox lanes).
    logits, _ = model(idx)
    last = logits[:, -1, :]
    v, _ = torch.topk(last / 0.8, 10)
    ref = F.softmax(torch.where(last / 0.8 < v[:, [-1]], -float("inf"), last / 0.8), dim=-1)
    ours = ts.probs(last, temperature=0.8, top_k=10)
    print(f"  first-step distributions differ by at most {(ours - ref).abs().max().item():.1e}")

    print("'Build an LLM from scratch' generate, greedy (temperature=0)")
    before = generate_llm_from_scratch(model, idx, 30, context_size=64)
    after = generate_llm_from_scratch_ts(model, idx, 30, context_size=64)
    print("  original lines  :", repr(decode(before[0])))
    print("  tokensampler    :", repr(decode(after[0])))
    assert torch.equal(before, after), "greedy decoding must give the same tokens"
    print("  identical tokens (greedy is deterministic)")
    batch = torch.cat([idx, encode("JULIET:")], dim=0)  # two prompts of the same length
    out = model.generate_ts(batch, 20, temperature=1.0, top_k=5, seed=1)
    print("  a batch of two, top_k=5:", [decode(r[7:]) for r in out])


if __name__ == "__main__":
    main()
