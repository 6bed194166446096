"""Speculative decoding for the generate loop: drafters and the verified step.

A step feeds the target model the last emitted token plus K drafted tokens in one forward
pass (on the CPU a forward is bound by reading the weights, so K + 1 tokens cost little more
than one), and `tokensampler.verify` decides which drafts to keep and which token follows
them, so that the emitted tokens are distributed exactly as the plain loop's (docs/design.md
section 12). Drafters:

- `PromptLookup`: the continuation of the latest earlier occurrence of the text's last
  n-gram, in the prompt or the text so far (no second model; Hugging Face's
  ``prompt_lookup_num_tokens``, `PromptLookupCandidateGenerator`, is the reference).
- `DraftModel`: a second (smaller) `tokensampler.model` that samples K tokens with the same
  parameters; its probabilities are the ``q`` of the verification.

Batches: rows accept different numbers of drafts, but a KV cache holds one length for all
rows, so every row emits the smallest count of the step (a row that accepted more keeps only
that many of its accepted drafts; they are samples of the target all the same, and the rest
is drafted again). Back-off: when drafts keep failing (a moving average of the accepted share
below 20%), drafting pauses except for a short probe now and then, so text without repeats
costs little.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .sampling import probs as ts_probs
from .sampling import sample as ts_sample
from .verify import verify

if TYPE_CHECKING:
    from .model.common import DecoderLM
    from .model.kv_cache import KVCache
    from .params import SamplingParams

__all__ = ["DraftModel", "PromptLookup", "SpeculativeStep"]

# The back-off (`SpeculativeStep.step`): the weight of the newest step in the moving average
# of the accepted share of the drafts; below PAUSE_BELOW drafting pauses, except for a probe
# of PROBE_TOKENS drafts after PROBE_EVERY steps (the wait doubles after each failed probe).
RATE_WEIGHT = 0.3
PAUSE_BELOW = 0.2
PROBE_EVERY = 16
PROBE_TOKENS = 2


class PromptLookup:
    """Drafts by prompt lookup: the tokens that followed the first earlier occurrence of the
    row's last n-gram (n from `max_ngram` down to 1), as Hugging Face's
    `PromptLookupCandidateGenerator` takes the first match in the sequence.

    >>> PromptLookup(3).draft([[5, 6, 7, 8, 5, 6]], 3)
    [[7, 8, 5]]
    """

    def __init__(self, max_ngram: int = 2) -> None:
        if max_ngram < 1:
            raise ValueError(f"the prompt-lookup n-gram size must be >= 1, got {max_ngram}")
        self.max_ngram = max_ngram

    def draft(self, seqs: Sequence[Sequence[int]], k: int) -> list[list[int]]:
        """Up to `k` drafted ids per row (none where the n-gram has no earlier match)."""
        return [self._row(list(s), k) for s in seqs]

    def _row(self, s: list[int], k: int) -> list[int]:
        n_tokens = len(s)
        if k <= 0:
            return []
        for n in range(min(self.max_ngram, n_tokens - 1), 0, -1):
            tail = s[-n:]
            # Windows that end before the tail itself, first match first (Hugging Face).
            for start in range(n_tokens - n):
                if s[start : start + n] == tail:
                    follow = s[start + n : start + n + k]
                    if follow:
                        return follow
        return []


class DraftModel:
    """Drafts with a second model (same vocabulary), sampling K tokens from its distribution
    under the same parameters (greedy at temperature 0); its KV cache follows the target's.
    """

    def __init__(self, model: DecoderLM) -> None:
        self.model = model
        self.cache: KVCache | None = None
        self.pad: torch.Tensor | None = None
        self.fed = 0  # columns of the (left-padded) sequence the draft cache holds

    def start(self, batch_size: int, cache_len: int, pad: torch.Tensor) -> None:
        self.cache = self.model.new_kv_cache(batch_size, cache_len)
        self.pad = pad
        self.fed = 0

    def draft(
        self,
        tokens: torch.Tensor,
        k: int,
        params: SamplingParams,
        history: np.ndarray | None,
        seed: int,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(B, k) drafted ids after `tokens` (B, n) (the left-padded sequence so far) and,
        unless greedy, the (B, k, V) distributions they were drawn from."""
        b = tokens.shape[0]
        if k == 0 or self.cache is None:
            return np.zeros((b, 0), np.int64), None
        device = self.model.device
        todo = tokens[:, self.fed :].to(device)
        first = self.fed == 0
        logits = self.model(todo, kv_cache=self.cache, pad=self.pad if first else None,
                            last_only=True)[:, -1, :]  # fmt: skip
        greedy = params.is_greedy
        params = params.replace(logprobs=False, top_logprobs=0)  # the ids alone
        ids = np.zeros((b, k), np.int64)
        qs: list[np.ndarray] = []
        hist = history
        for i in range(k):
            if greedy:
                tok = np.asarray(torch.as_tensor(ts_sample(logits, params, history=hist)).cpu())
            else:
                q = np.asarray(torch.as_tensor(ts_probs(logits, params, history=hist)).cpu(),
                               dtype=np.float64)  # fmt: skip
                qs.append(q)
                # A draw from q itself (float64 log-probabilities are exact enough that the
                # kernel's draw follows q), seeded per step and position.
                with np.errstate(divide="ignore"):
                    tok = np.asarray(ts_sample(np.log(q), temperature=1.0, seed=seed + i))
            tok = tok.reshape(-1).astype(np.int64)
            ids[:, i] = tok
            if hist is not None:
                hist = np.concatenate([hist, tok[:, None]], axis=1)
            if i + 1 < k:
                step = torch.as_tensor(tok, dtype=torch.long, device=device).view(-1, 1)
                logits = self.model(step, kv_cache=self.cache)[:, -1, :]
        self.fed = tokens.shape[1] + k - 1
        return ids, None if greedy else np.stack(qs, axis=1)


@dataclass
class SpeculativeStats:
    drafted: int = 0  # drafted tokens verified (summed over rows)
    accepted: int = 0  # of those, accepted
    verify_time: float = 0.0  # seconds in `verify`


class SpeculativeStep:
    """One verified step at a time on a target model and its KV cache.

    `step(last, seqs, finished, history)` feeds the target `last` (the last emitted token of
    each row, not yet in the cache) plus the drafts, verifies, rewinds the cache to what all
    rows keep, and returns each row's emitted (id, log-probability) pairs.
    """

    def __init__(
        self,
        model: DecoderLM,
        cache: KVCache,
        params: SamplingParams,
        seed: Any,
        drafter: PromptLookup | DraftModel,
        k: int,
    ) -> None:
        if k < 0:
            raise ValueError(f"num_speculative_tokens must be >= 0, got {k}")
        self.model, self.cache, self.params, self.seed = model, cache, params, seed
        self.drafter, self.k = drafter, k
        self.k_now = min(k, PROBE_TOKENS)  # the current draft length (back-off)
        self.rate = PAUSE_BELOW  # moving average of the accepted share of the drafts
        self.probe_every = PROBE_EVERY  # steps between probes while paused (doubling)
        self.next_probe = 0
        self.calls = 0  # the step of the verification streams
        self.stats = SpeculativeStats()

    def _draft(
        self, tokens: torch.Tensor, seqs: list[list[int]], history: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(B, K) drafted ids and, for a sampling draft model, their (B, K, V) q."""
        k = self.k_now
        if isinstance(self.drafter, DraftModel):
            # The draft model's own draws: seeded by the loop's seed and the step, apart
            # from the verification's streams (any independent draws keep q exact).
            base = zlib.crc32(repr(self.seed).encode())
            seed = ((base << 24) + self.calls * 64) & (2**62 - 1)
            return self.drafter.draft(tokens, k, self.params, history, seed)
        rows = self.drafter.draft(seqs, k)
        width = max((len(r) for r in rows), default=0)
        ids = np.zeros((len(seqs), width), dtype=np.int64)
        for i, r in enumerate(rows):
            # Rows with fewer drafts repeat their last id: any deterministic draft is exact
            # (accepted with its target probability), it just rarely helps.
            ids[i, : len(r)] = r
            if r and len(r) < width:
                ids[i, len(r) :] = r[-1]
        return ids, None

    def step(
        self,
        tokens: torch.Tensor,
        seqs: list[list[int]],
        finished: Sequence[bool],
        history: np.ndarray | None,
    ) -> list[list[tuple[int, float]]]:
        """Feeds the last column of `tokens` (B, n: the left-padded sequences so far; `seqs`
        the same without padding) plus the drafts, verifies, and returns per row the emitted
        (id, log-probability) pairs (the same count for every row still running)."""
        ids, q = self._draft(tokens, seqs, history)
        last = tokens[:, -1]
        kd = ids.shape[1]
        device = self.model.device
        inp = torch.cat([last.view(-1, 1).to(device), torch.as_tensor(ids, device=device)], dim=1)
        pos = self.cache.pos
        logits = self.model(inp, kv_cache=self.cache)  # (B, kd + 1, V)
        t0 = time.perf_counter()
        out = verify(logits, ids, q, self.params, history=history, step=self.calls,
                     seed=self.seed)  # fmt: skip
        self.stats.verify_time += time.perf_counter() - t0
        self.calls += 1
        emitted = np.asarray(torch.as_tensor(out.ids).cpu())
        lps = np.asarray(torch.as_tensor(out.logprobs).cpu())
        acc = np.asarray(torch.as_tensor(out.accepted).cpu()).reshape(-1)
        running = [i for i, f in enumerate(finished) if not f] or list(range(len(finished)))
        m = int(min(acc[i] for i in running)) + 1
        self.cache.pos = pos + m  # `last` and the drafts every row keeps
        d = self.drafter
        if isinstance(d, DraftModel) and d.cache is not None:
            # The draft cache keeps what the target keeps: the sequence plus m - 1 drafts.
            d.fed = min(d.fed, tokens.shape[1] + m - 1)
            d.cache.pos = d.fed
        if kd:
            kept = sum(min(int(acc[i]), kd) for i in running)
            self.stats.drafted += kd * len(running)
            self.stats.accepted += kept
            # Back-off: a moving average of the accepted share of the drafts. Drafting pays
            # while it is high; below PAUSE_BELOW a failing draft only adds tokens to the
            # forward pass, so drafting pauses and probes with PROBE_TOKENS drafts every
            # PROBE_EVERY steps (the first step is such a probe too).
            # A failed probe doubles the wait for the next (up to 16 times PROBE_EVERY), so
            # long text without repeats pays for few of them.
            rate = kept / (kd * len(running))
            self.rate = (1 - RATE_WEIGHT) * self.rate + RATE_WEIGHT * rate
            if self.rate >= PAUSE_BELOW:
                self.k_now, self.probe_every = self.k, PROBE_EVERY
            else:
                self.k_now = 0
                self.next_probe = self.calls + self.probe_every
                self.probe_every = min(2 * self.probe_every, 16 * PROBE_EVERY)
        elif self.k_now == 0 and self.calls >= self.next_probe:
            self.k_now = min(self.k, PROBE_TOKENS)
        return [
            [(int(emitted[r, j]), float(lps[r, j])) for j in range(m)] for r in range(len(seqs))
        ]
