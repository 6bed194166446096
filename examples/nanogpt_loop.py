"""tokensampler as a drop-in for the sampling lines of nanoGPT's and "Build an LLM" `generate`.

A small GPT in the style of nanoGPT's `model.py` (random weights, char-sized vocabulary) runs
two generate loops, each as published and with its sampling lines replaced by one call:

- nanoGPT (karpathy/nanoGPT `model.py` at 3adf61e, 2025-11-12): `GPT.generate` below is its
  `GPT.generate` verbatim; `GPT.generate_ts` is the same method after the diff of
  docs/dropin.md (and of the README's "Use it in your loop"), plus one thing the diff leaves
  to the reader, a ``seed`` argument handed to the Sampler. The diff replaces the lines from
  ``logits = logits[:, -1, :] / temperature`` to ``torch.multinomial`` with ::

      idx_next = sampler(logits[:, -1, :], history=idx, keepdim=True)

  where ``sampler = tokensampler.Sampler(temperature=temperature, top_k=top_k)`` is made
  once before the loop. ``keepdim=True`` returns (B, 1) int64 on the logits' device, exactly
  what ``torch.multinomial(probs, 1)`` returned, so the ``torch.cat`` line stays as it is.
- "Build a Large Language Model (From Scratch)" (rasbt/LLMs-from-scratch at 28c65cd,
  ``ch05/01_main-chapter-code/gpt_generate.py``): `generate_llm_from_scratch` is its
  `generate` verbatim, and `generate_llm_from_scratch_ts` the same after the diff of
  docs/dropin.md (plus ``seed``): the top-k / temperature / multinomial / argmax block becomes
  the same single call (``temperature=0`` is greedy in tokensampler, so the argmax branch goes
  too). The book's model returns the logits only: `logits_only` adapts our GPT to it.

tests/test_dropin_nanogpt.py checks that the documented diffs turn the verbatim functions into
the ``_ts`` ones, and that the tokens follow the replaced lines' distribution.

Run: ``python examples/nanogpt_loop.py`` (CPU, random weights, no download, ~1 s).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tokensampler
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

    # ---- nanoGPT's generate, verbatim (karpathy/nanoGPT model.py at 3adf61e) ----
    # fmt: off
    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        """
        Take a conditioning sequence of indices idx (LongTensor of shape (b,t)) and complete
        the sequence max_new_tokens times, feeding the predictions back into the model each time.
        Most likely you'll want to make sure to be in model.eval() mode of operation for this.
        """
        for _ in range(max_new_tokens):
            # if the sequence context is growing too long we must crop it at block_size
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            # forward the model to get the logits for the index in the sequence
            logits, _ = self(idx_cond)
            # pluck the logits at the final step and scale by desired temperature
            logits = logits[:, -1, :] / temperature
            # optionally crop the logits to only the top k options
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float('Inf')
            # apply softmax to convert logits to (normalized) probabilities
            probs = F.softmax(logits, dim=-1)
            # sample from the distribution
            idx_next = torch.multinomial(probs, num_samples=1)
            # append sampled index to the running sequence and continue
            idx = torch.cat((idx, idx_next), dim=1)

        return idx

    # ---- the same method after the documented diff (plus seed): six lines became one ----
    @torch.no_grad()
    def generate_ts(self, idx, max_new_tokens, temperature=1.0, top_k=None, seed=None):
        """
        Take a conditioning sequence of indices idx (LongTensor of shape (b,t)) and complete
        the sequence max_new_tokens times, feeding the predictions back into the model each time.
        Most likely you'll want to make sure to be in model.eval() mode of operation for this.
        """
        sampler = tokensampler.Sampler(temperature=temperature, top_k=top_k, seed=seed)
        for _ in range(max_new_tokens):
            # if the sequence context is growing too long we must crop it at block_size
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            # forward the model to get the logits for the index in the sequence
            logits, _ = self(idx_cond)
            # sample from the distribution
            idx_next = sampler(logits[:, -1, :], history=idx, keepdim=True)
            # append sampled index to the running sequence and continue
            idx = torch.cat((idx, idx_next), dim=1)

        return idx
    # fmt: on


# ==== "Build a Large Language Model (From Scratch)", chapter 5 ===============================


def logits_only(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Our GPT as the book's model: its forward returns the logits only."""
    return lambda idx: model(idx)[0]


# The book's generate, verbatim (rasbt/LLMs-from-scratch at 28c65cd,
# ch05/01_main-chapter-code/gpt_generate.py), then the same after the documented diff (+ seed).
# fmt: off
def generate_llm_from_scratch(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None):

    # For-loop is the same as before: Get logits, and only focus on last time step
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]
        with torch.no_grad():
            logits = model(idx_cond)
        logits = logits[:, -1, :]

        # New: Filter logits with top_k sampling
        if top_k is not None:
            # Keep only top_k values
            top_logits, _ = torch.topk(logits, top_k)
            min_val = top_logits[:, -1]
            logits = torch.where(logits < min_val, torch.tensor(float("-inf")).to(logits.device), logits)

        # New: Apply temperature scaling
        if temperature > 0.0:
            logits = logits / temperature

            # New (not in book): numerical stability tip to get equivalent results on mps device
            # subtract rowwise max before softmax
            logits = logits - logits.max(dim=-1, keepdim=True).values

            # Apply softmax to get probabilities
            probs = torch.softmax(logits, dim=-1)  # (batch_size, context_len)

            # Sample from the distribution
            idx_next = torch.multinomial(probs, num_samples=1)  # (batch_size, 1)

        # Otherwise same as before: get idx of the vocab entry with the highest logits value
        else:
            idx_next = torch.argmax(logits, dim=-1, keepdim=True)  # (batch_size, 1)

        if idx_next == eos_id:  # Stop generating early if end-of-sequence token is encountered and eos_id is specified
            break

        # Same as before: append sampled index to the running sequence
        idx = torch.cat((idx, idx_next), dim=1)  # (batch_size, num_tokens+1)

    return idx


def generate_llm_from_scratch_ts(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None, seed=None):

    sampler = tokensampler.Sampler(temperature=temperature, top_k=top_k, seed=seed)
    # For-loop is the same as before: Get logits, and only focus on last time step
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]
        with torch.no_grad():
            logits = model(idx_cond)
        idx_next = sampler(logits[:, -1, :], history=idx, keepdim=True)  # (batch_size, 1)

        if idx_next == eos_id:  # Stop generating early if end-of-sequence token is encountered and eos_id is specified
            break

        # Same as before: append sampled index to the running sequence
        idx = torch.cat((idx, idx_next), dim=1)  # (batch_size, num_tokens+1)

    return idx
# fmt: on


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
    ours = tokensampler.probs(last, temperature=0.8, top_k=10)
    print(f"  first-step distributions differ by at most {(ours - ref).abs().max().item():.1e}")

    print("'Build an LLM from scratch' generate, greedy (temperature=0)")
    book = logits_only(model)
    before = generate_llm_from_scratch(book, idx, 30, context_size=64)
    after = generate_llm_from_scratch_ts(book, idx, 30, context_size=64)
    print("  original lines  :", repr(decode(before[0])))
    print("  tokensampler    :", repr(decode(after[0])))
    assert torch.equal(before, after), "greedy decoding must give the same tokens"
    print("  identical tokens (greedy is deterministic)")
    batch = torch.cat([idx, encode("JULIET:")], dim=0)  # two prompts of the same length
    out = model.generate_ts(batch, 20, temperature=1.0, top_k=5, seed=1)
    print("  a batch of two, top_k=5:", [decode(r[7:]) for r in out])


if __name__ == "__main__":
    main()
