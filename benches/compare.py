#!/usr/bin/env python
"""Comparison benchmarks of tokensampler against its peers (docs/design.md section 7, issue #3).

One process, one run, the same logits for everybody. For each vocabulary size V, batch size
B, dtype and pipeline it times, as medians of adaptive repeat counts:

- tokensampler: ``ts.sample`` on a numpy float32 array and on a torch CPU tensor (float32 or
  bfloat16) -- the whole Python call, argument checks and result wrapping included;
- the nanoGPT loop lines (``logits / T``, ``torch.topk`` masking, ``F.softmax``,
  ``torch.multinomial``);
- the Hugging Face processor chain (``transformers.generation.logits_process``) +
  ``F.softmax`` + ``torch.multinomial``, as ``GenerationMixin._sample`` runs it;
- a vLLM-style sort-based top-k/top-p in torch with an exponential-race draw (written here);
- a plain numpy implementation (argpartition / argsort + softmax + inverse-CDF draw);
- the floors ``torch.amax`` (one read of the logits), ``torch.softmax`` and ``torch.topk(50)``.

Then (issue #15), at B=64 and every V of the grid, float32: the newer stages (typical-p,
epsilon and eta cutoffs, top-n-sigma, min-p + XTC) against ``torch.softmax`` and, where
transformers has the processor, the Hugging Face chain; and the same stages under the preset
orders ``"vllm"`` / ``"llama.cpp"`` and a custom order, as ratios to the default order. These
rows are ``n/a`` when the installed tokensampler lacks those keywords.

Then (issue #16), at B=64, V=128256, float32, with a 4,096-token history per row (random ids
with copied spans, so DRY and the n-gram ban find repeats): pipeline (c)'s stages and a light
base (T 0.8 + top-k 50), each with and without DRY (0.8, token-id breakers) and
``no_repeat_ngram_size=3``, and (c)'s stages with ``sequence_bias`` / ``bad_words_ids``;
ratios to the base in one interleaved set, and the Hugging Face chain where transformers has
the processor (it has no DRY).

Then (issue #18), row (o): ``ts.verify`` at B=8, K=4, V=128256 (else the grid's largest V),
float32 torch input, T=1, one-hot drafts (a prompt-lookup drafter), in two regimes on the
same peaked target -- the drafts are the target's argmax tokens (all accepted; the rate is
measured and stated) and random drafts (rejected at once) -- against ``ts.sample`` over the
same B*(K+1) rows, in one interleaved set; a drafter with probabilities (``draft_probs``,
random drafts from a random q) is reported alongside.

Usage::

    python benches/compare.py [--quick | --smoke] [--no-plot] [--out-dir benches/results]

Writes ``compare.md`` (also printed), ``compare.json`` (raw medians) and ``compare.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tokensampler as ts
import torch
import torch.nn.functional as F
import transformers
from transformers.generation.logits_process import (
    EpsilonLogitsWarper,
    EtaLogitsWarper,
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

REPO = Path(__file__).resolve().parent.parent
HISTORY_LEN = 256  # tokens of history per row for the repetition penalty of pipeline (c)
SEED = 1234  # seeds the logits, the histories and every sampler that takes a seed
TORCH_THREADS = 2
TS_THREADS = 0  # 0 = tokensampler's default (one worker per core)
FLOOR_K = 50
ROUNDS = 5  # round-robin rounds per cell (see `measure`)
SPENT_CAP = 3.0  # a contender stops after this many times min_time (once it has min_reps)
THREAD_ROUNDS = 5  # alternating 1-thread / 2-thread rounds of the thread-scaling figure
EXPONENT_MIN_LOGITS = 1_000_000  # growth exponent: only cells where the kernel dominates

# (what, impl, dtype, V, B): `what` is a pipeline key, "floor", or STAGE_FLOOR (a floor re-timed
# among the stage and order rows of issue #15).
Key = tuple[str, str, str, int, int]

# ==== grid and pipelines ======================================================================


# Keywords of `ts.sample` that pipelines (a)-(d) never pass (min_p and the stages and orders of
# issue #15): a pipeline passes them only when it sets them (None = not passed).
EXTRA_FIELDS = (
    "min_p",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "top_n_sigma",
    "xtc_probability",
    "xtc_threshold",
    "order",
)


@dataclass(frozen=True)
class Pipeline:
    """One sampling configuration, applied identically by every implementation."""

    key: str
    title: str
    short: str  # plot panel title (stage and order rows: their label in the tables)
    temperature: float
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    # EXTRA_FIELDS (issue #15): None = not passed to ts.sample, so (a)-(d) make the same calls
    # as before, which an older tokensampler also accepts.
    min_p: float | None = None
    typical_p: float | None = None
    epsilon_cutoff: float | None = None
    eta_cutoff: float | None = None
    top_n_sigma: float | None = None
    xtc_probability: float | None = None
    xtc_threshold: float | None = None
    order: str | tuple[str, ...] | None = None  # None: tokensampler's default ("hf")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def extra(self) -> dict[str, Any]:
        """The EXTRA_FIELDS this pipeline sets."""
        values = {k: getattr(self, k) for k in EXTRA_FIELDS}
        return {k: v for k, v in values.items() if v is not None}

    def ts_kwargs(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
            **self.extra,
        }


PIPELINES: tuple[Pipeline, ...] = (
    Pipeline("a", "(a) T=1 + top-k 50", "(a) top-k 50", 1.0, top_k=50),
    Pipeline("b", "(b) T=1 + top-p 0.9", "(b) top-p 0.9", 1.0, top_p=0.9),
    Pipeline(
        "c",
        "(c) rep. penalty 1.2 (256-token history) + T 0.8 + top-k 50 + top-p 0.9",
        "(c) penalty + T 0.8 + top-k 50 + top-p 0.9",
        0.8,
        top_k=50,
        top_p=0.9,
        repetition_penalty=1.2,
    ),
    Pipeline("d", "(d) greedy (argmax)", "(d) greedy", 0.0),
)

# Issue #15, timed apart from the grid (`run_stages`) at float32 and B = TARGET_B: the newer
# stages, each after a temperature (HF builds no temperature warper at T = 1) ...
STAGE_T = 0.7
STAGE_PIPELINES: tuple[Pipeline, ...] = (
    Pipeline("e", "(e) T=0.7 + typical-p 0.9", "(e) typical-p 0.9", STAGE_T, typical_p=0.9),
    Pipeline(
        "f",
        "(f) T=0.7 + epsilon cutoff 3e-4",
        "(f) epsilon cutoff 3e-4",
        STAGE_T,
        epsilon_cutoff=3e-4,
    ),
    Pipeline("g", "(g) T=0.7 + eta cutoff 1e-3", "(g) eta cutoff 1e-3", STAGE_T, eta_cutoff=1e-3),
    Pipeline("h", "(h) T=0.7 + top-n-sigma 1.0", "(h) top-n-sigma 1.0", STAGE_T, top_n_sigma=1.0),
    Pipeline(
        "i",
        "(i) T=0.7 + min-p 0.05 + XTC (probability 1, threshold 0.1)",
        "(i) min-p 0.05 + XTC",
        STAGE_T,
        min_p=0.05,
        xtc_probability=1.0,
        xtc_threshold=0.1,
    ),
)


@dataclass(frozen=True)
class OrderGroup:
    """The same stages under several orders, each variant reported as a ratio to `default`."""

    title: str  # the target's name
    stages: str  # the table's heading
    default: Pipeline  # no `order` keyword: tokensampler's default ("hf")
    variants: tuple[Pipeline, ...]
    goal: float | None  # each variant ≤ goal × the default; None: reported only
    same_distribution: bool  # the orders give the same distribution (checked before timing)


CUSTOM_ORDER = ("top_k", "temperature", "top_p")
ORDER_GROUPS: tuple[OrderGroup, ...] = (
    OrderGroup(
        "(j) preset orders vs the default order, T=0.7 + top-p 0.9 + min-p 0.05",
        "(j) T=0.7 + top-p 0.9 + min-p 0.05: preset orders",
        Pipeline(
            "j",
            "(j) T=0.7 + top-p 0.9 + min-p 0.05",
            'order="hf" (default)',
            STAGE_T,
            top_p=0.9,
            min_p=0.05,
        ),
        tuple(
            Pipeline(
                f"j-{o}",
                f'(j) T=0.7 + top-p 0.9 + min-p 0.05, order="{o}"',
                f'order="{o}"',
                STAGE_T,
                top_p=0.9,
                min_p=0.05,
                order=o,
            )
            for o in ("vllm", "llama.cpp")
        ),
        1.10,
        False,  # vLLM's min-p sees the untruncated row; llama.cpp filters at T = 1
    ),
    OrderGroup(
        "(k) custom order vs the default order, top-k 50 + T=0.7 + top-p 0.9",
        "(k) top-k 50 + T=0.7 + top-p 0.9: a custom order",
        Pipeline(
            "k", "(k) top-k 50 + T=0.7 + top-p 0.9", "default order", STAGE_T, top_k=50, top_p=0.9
        ),
        (
            Pipeline(
                "k-custom",
                f"(k) top-k 50 + T=0.7 + top-p 0.9, order={CUSTOM_ORDER}",
                "order=(" + ", ".join(f'"{n}"' for n in CUSTOM_ORDER) + ")",
                STAGE_T,
                top_k=50,
                top_p=0.9,
                order=CUSTOM_ORDER,
            ),
        ),
        None,
        True,  # top-k commutes with the temperature: only the code path differs
    ),
)
ORDER_PIPELINES = tuple(p for g in ORDER_GROUPS for p in (g.default, *g.variants))
STAGE_FLOOR = "stages-floor"  # `what` of torch.softmax re-timed among these rows


def _ts_fields() -> frozenset[str]:
    """The keywords of the installed tokensampler's `SamplingParams` (none for an old build)."""
    if not hasattr(ts, "SamplingParams"):
        return frozenset()
    try:
        return frozenset(f.name for f in dataclasses.fields(ts.SamplingParams))
    except TypeError:
        return frozenset()


TS_FIELDS = _ts_fields()
HAS_STAGES = "typical_p" in TS_FIELDS  # the build has the stages and orders of issue #15
NO_STAGES = "the installed tokensampler has no typical_p / order keywords of issue #15"


def ts_supports(p: Pipeline) -> bool:
    """Whether the installed tokensampler takes every keyword of `p` (else its rows are n/a)."""
    return HAS_STAGES and set(p.ts_kwargs()) <= TS_FIELDS


@dataclass(frozen=True)
class Grid:
    """What to measure and how long to spend on each measurement."""

    vocab: tuple[int, ...]
    batch: tuple[int, ...]
    dtypes: tuple[str, ...]
    min_time: float  # seconds of repeats per measurement (after the warm-up call)
    min_reps: int
    max_reps: int
    # The peers (nanoGPT lines, HF chain, vLLM-style, numpy) are skipped for pipelines (a)-(c)
    # above this many logits per call (B*V), except where a target needs them (HF_TARGET):
    # at B=256, V=151936 one HF top-p call alone takes ~10 s on the 2-core machine, and the
    # full run must stay under 10 minutes. The float32 limit keeps every peer at B=64 (the
    # plot); bf16 gets a lower one, as HF and vLLM-style only add a cast to their f32 path.
    peer_max_logits: int
    peer_max_logits_bf16: int
    name: str


FULL = Grid(
    (32000, 50257, 128256, 151936), (1, 8, 64, 256), ("float32", "bfloat16"),
    0.25, 3, 2000, 9_800_000, 4_200_000, "full",
)  # fmt: skip
QUICK = Grid(
    (32000, 128256), (1, 64), ("float32", "bfloat16"), 0.03, 3, 500, 9_800_000, 2_100_000, "quick"
)
SMOKE = Grid((1000,), (2,), ("float32", "bfloat16"), 0.0, 1, 1, 10**9, 10**9, "smoke")

# The cells the targets are judged on (section "Targets" of the report).
TARGET_V, TARGET_B = 128256, 64
OVERHEAD_V, OVERHEAD_B = 50257, 1
# A target needs the HF chain at this cell, so it is measured even above `peer_max_logits`.
HF_TARGET = ("c", "hf", "float32", TARGET_V, TARGET_B)

# ==== the logits ==============================================================================


@dataclass
class Case:
    """The inputs of one (V, B, dtype) cell, shared by every implementation."""

    vocab: int
    batch: int
    dtype: str
    logits: torch.Tensor  # (B, V) in `dtype`
    logits_np: np.ndarray | None  # the same memory as `logits` when float32, else None
    history: torch.Tensor  # (B, HISTORY_LEN) int64
    history_np: np.ndarray

    @property
    def n(self) -> int:
        return self.vocab * self.batch


def make_logits(vocab: int, batch: int, seed: int = SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic next-token logits with LLM-like shape, plus a token history per row.

    A Gaussian bulk (std 2) plus 32 boosted "plausible" tokens per row whose boost is scaled by
    a per-row sharpness in [0.6, 1]: most rows are peaked (top-p 0.9 keeps a handful of
    tokens), about a quarter are flat (it keeps thousands). Pure N(0, s) logits would make every
    row flat, which is neither realistic nor what the filters are tuned for.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + vocab * 1009 + batch)
    x = torch.randn(batch, vocab, generator=g) * 2.0
    ids = torch.randint(0, vocab, (batch, 32), generator=g)
    sharp = 0.6 + 0.4 * torch.rand(batch, 1, generator=g)
    x.scatter_add_(1, ids, sharp * (6.0 + 10.0 * torch.rand(batch, 32, generator=g)))
    history = torch.randint(0, vocab, (batch, HISTORY_LEN), generator=g)
    return x.contiguous(), history


def make_case(vocab: int, batch: int, dtype: str, base: torch.Tensor, hist: torch.Tensor) -> Case:
    if dtype == "float32":
        return Case(vocab, batch, dtype, base, base.numpy(), hist, hist.numpy())
    t = base.to(torch.bfloat16)
    return Case(vocab, batch, dtype, t, None, hist, hist.numpy())


# ==== the implementations =====================================================================

# Each builder returns a zero-argument callable that does one full sampling step on the case's
# logits, or None when the implementation does not apply (e.g. nanoGPT has no top-p).
Builder = Callable[[Case, Pipeline], Callable[[], Any] | None]


def build_ts_numpy(case: Case, p: Pipeline) -> Callable[[], Any] | None:
    if case.logits_np is None:  # numpy has no bfloat16
        return None
    x, kw = case.logits_np, p.ts_kwargs()
    hist = case.history_np if p.repetition_penalty != 1.0 else None
    return lambda: ts.sample(x, history=hist, seed=SEED, **kw)


def build_ts_torch(case: Case, p: Pipeline) -> Callable[[], Any] | None:
    x, kw = case.logits, p.ts_kwargs()
    hist = case.history if p.repetition_penalty != 1.0 else None
    return lambda: ts.sample(x, history=hist, seed=SEED, **kw)


def build_nanogpt(case: Case, p: Pipeline) -> Callable[[], Any] | None:
    """nanoGPT `model.generate`'s sampling lines, on the logits' own dtype (bf16 under autocast).

    nanoGPT has no top-p and no penalty, so (b) and (c) do not apply; for greedy it is what such
    a loop writes for temperature 0 (nanochat's `sample_next_token`): an argmax.
    """
    x = case.logits
    if p.extra:
        return None
    if p.greedy:
        return lambda: torch.argmax(x, dim=-1, keepdim=True)
    if p.top_p is not None or p.repetition_penalty != 1.0 or p.top_k is None:
        return None
    temperature, top_k = p.temperature, p.top_k

    def step() -> torch.Tensor:
        logits = x / temperature
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float("Inf")
        probs = F.softmax(logits, dim=-1)
        return torch.multinomial(probs, num_samples=1)

    return step


def hf_applies(p: Pipeline) -> bool:
    """transformers has no top-n-sigma or XTC processor, and its order is fixed (`generate`'s)."""
    return p.top_n_sigma is None and p.xtc_probability is None and p.order is None


def build_hf(case: Case, p: Pipeline) -> Callable[[], Any] | None:
    """`GenerationMixin._sample`: float32 copy of the logits, processor list, softmax, draw.

    Only the processors `generate` would build for these settings (no temperature warper at
    T = 1, none at all for greedy), in its order.
    """
    if not hf_applies(p):
        return None
    x, input_ids = case.logits, case.history
    procs: list[LogitsProcessor] = []
    if p.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(p.repetition_penalty))
    if not p.greedy:
        if p.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(p.temperature))
        if p.top_k is not None:
            procs.append(TopKLogitsWarper(p.top_k))
        if p.top_p is not None:
            procs.append(TopPLogitsWarper(p.top_p))
        if p.min_p is not None:
            procs.append(MinPLogitsWarper(p.min_p))
        if p.typical_p is not None:
            procs.append(TypicalLogitsWarper(p.typical_p))
        if p.epsilon_cutoff is not None:
            procs.append(EpsilonLogitsWarper(p.epsilon_cutoff))
        if p.eta_cutoff is not None:
            procs.append(EtaLogitsWarper(p.eta_cutoff))
    chain = LogitsProcessorList(procs)
    greedy = p.greedy

    def step() -> torch.Tensor:
        logits = x.to(copy=True, dtype=torch.float32)
        scores = chain(input_ids, logits)
        if greedy:
            return torch.argmax(scores, dim=-1)
        probs = F.softmax(scores, dim=-1)
        return torch.multinomial(probs, num_samples=1).squeeze(1)

    return step


def build_vllm_style(case: Case, p: Pipeline) -> Callable[[], Any] | None:
    """vLLM-v1-style sampler written in plain torch (not vLLM's code).

    float32 cast; repetition penalty through a (B, V) seen-token mask; temperature; top-k and
    top-p by sorting the whole row and masking by rank and by cumulative probability; scatter
    back; softmax; and the exponential race `argmax(p / q)`, q ~ Exp(1), instead of
    `torch.multinomial`.
    """
    x, hist = case.logits, case.history
    b, v = case.batch, case.vocab
    r, temperature, top_k, top_p = p.repetition_penalty, p.temperature, p.top_k, p.top_p
    if p.extra:
        return None

    if p.greedy:
        return lambda: x.to(torch.float32).argmax(dim=-1)

    def step() -> torch.Tensor:
        logits = x.to(torch.float32)
        if r != 1.0:
            seen = torch.zeros(b, v, dtype=torch.bool).scatter_(1, hist, True)
            logits = torch.where(seen, torch.where(logits > 0, logits / r, logits * r), logits)
        if temperature != 1.0:
            # vLLM divides in place on its own float32 copy; here `logits` may still be the
            # caller's float32 tensor, so divide out of place.
            logits = logits / temperature
        if top_k is not None or top_p is not None:
            srt, idx = logits.sort(dim=-1, descending=False)
            if top_k is not None and top_k < v:
                kth = srt[:, v - top_k : v - top_k + 1]  # k-th largest value per row
                srt.masked_fill_(srt < kth, -float("inf"))
            if top_p is not None:
                cum = srt.softmax(dim=-1).cumsum(dim=-1)
                drop = cum <= 1.0 - top_p
                drop[:, -1] = False  # the most probable token always survives
                srt.masked_fill_(drop, -float("inf"))
            logits = torch.empty_like(srt).scatter_(-1, idx, srt)
        probs = logits.softmax(dim=-1)
        q = torch.empty_like(probs).exponential_()
        return probs.div_(q).argmax(dim=-1)

    return step


def build_numpy(case: Case, p: Pipeline) -> Callable[[], Any] | None:
    """The same pipeline in plain numpy (float32), batched over rows, inverse-CDF draw."""
    if case.logits_np is None or p.extra:
        return None
    x, hist = case.logits_np, case.history_np
    b, v = x.shape
    rows = np.arange(b)[:, None]
    rng = np.random.default_rng(SEED)
    r, temperature, top_k, top_p = p.repetition_penalty, p.temperature, p.top_k, p.top_p

    if p.greedy:
        return lambda: np.argmax(x, axis=-1)

    def draw(order: np.ndarray, z: np.ndarray) -> np.ndarray:
        # z: (B, n) logits in descending order, order: their token ids.
        e = np.exp(z - z[:, :1])
        cdf = np.cumsum(e, axis=-1)
        cdf /= cdf[:, -1:]
        n_keep = np.full(b, z.shape[1])
        if top_p is not None:
            n_keep = np.minimum((cdf < top_p).sum(axis=-1) + 1, z.shape[1])
        mass = cdf[np.arange(b), n_keep - 1]
        u = rng.random(b) * mass
        j = np.minimum((cdf < u[:, None]).sum(axis=-1), n_keep - 1)
        return order[np.arange(b), j]

    def step() -> np.ndarray:
        logits = x
        if r != 1.0:
            logits = x.copy()  # never modify the caller's logits
            seen = logits[rows, hist]
            logits[rows, hist] = np.where(seen > 0, seen / r, seen * r)
        if top_k is not None and top_k < v:
            part = np.argpartition(logits, v - top_k, axis=-1)[:, v - top_k :]
            vals = np.take_along_axis(logits, part, axis=-1)
            srt = np.argsort(-vals, axis=-1)
            order = np.take_along_axis(part, srt, axis=-1)
            z = np.take_along_axis(vals, srt, axis=-1)
        else:
            order = np.argsort(-logits, axis=-1)
            z = np.take_along_axis(logits, order, axis=-1)
        if temperature != 1.0:
            z = z / np.float32(temperature)  # monotone: dividing after the ranking is the same
        return draw(order, z)

    return step


@dataclass(frozen=True)
class Impl:
    """One implementation: a column of the report."""

    key: str
    label: str
    build: Builder
    slow: bool  # subject to Grid.peer_max_logits
    expected_shape: Callable[[int], tuple[int, ...]] = lambda b: (b,)


TS_NUMPY = Impl("ts_np", "tokensampler (numpy)", build_ts_numpy, False)
TS_TORCH = Impl("ts_torch", "tokensampler (torch)", build_ts_torch, False)
HF = Impl("hf", "HF chain + multinomial", build_hf, True)
IMPLS: tuple[Impl, ...] = (
    TS_NUMPY,
    TS_TORCH,
    Impl("nanogpt", "nanoGPT lines", build_nanogpt, True, lambda b: (b, 1)),
    HF,
    Impl("vllm", "vLLM-style sort + race", build_vllm_style, True),
    Impl("numpy", "numpy", build_numpy, True),
)
PEERS = IMPLS[2:]
# The peers' contenders in any section (`measure` times them apart); xgrammar + HF is "hf".
PEER_KEYS = frozenset(i.key for i in PEERS)
# The contenders of the issue #15 rows: the stages against HF (n/a where it has no such
# processor); the orders only among themselves, on the torch tensor.
STAGE_IMPLS: tuple[Impl, ...] = (TS_NUMPY, TS_TORCH, HF)
ORDER_IMPLS: tuple[Impl, ...] = (TS_TORCH,)
STAGE_ROWS: tuple[tuple[Pipeline, tuple[Impl, ...]], ...] = tuple(
    (p, STAGE_IMPLS) for p in STAGE_PIPELINES
) + tuple((p, ORDER_IMPLS) for p in ORDER_PIPELINES)

FLOORS: dict[str, tuple[str, Callable[[torch.Tensor], Any]]] = {
    "amax": ("torch.amax", lambda x: torch.amax(x, -1)),
    "softmax": ("torch.softmax", lambda x: torch.softmax(x, -1)),
    "topk": (f"torch.topk({FLOOR_K})", lambda x: torch.topk(x, FLOOR_K)),
}

# ==== timing ==================================================================================


@dataclass
class Timing:
    """Median seconds per call over `reps` timed calls (None when not run) and why not."""

    median: float | None
    reps: int = 0
    status: str = "ok"  # "ok", "skipped" or "n/a"
    spent: float = 0.0  # seconds spent on it, warm-up included (to budget the run)


def measure(fns: dict[Key, Callable[[], Any]], grid: Grid) -> dict[Key, Timing]:
    """Medians of adaptive, interleaved repeats of several callables (one cell's contenders).

    Each callable gets at least `min_reps` timed calls and at least `min_time` seconds of them
    (at most `max_reps`). The calls are spread over `ROUNDS` round-robin rounds, alternating
    direction, so that a burst of load from another process hits every contender of the cell
    rather than one of them: the ratios stay meaningful on a noisy machine even when the
    absolute times drift. A warm-up call comes first (allocator, page faults, lazy init);
    when that call alone is slow (> 50 ms) it counts as the first rep instead, since the
    median discards one slow outlier anyway and the slowest peers would otherwise cost a
    fourth call. The repeat count is planned from the warm-up call, so a contender that turns
    out much slower than planned (a loaded machine) stops after `SPENT_CAP` × `min_time`.

    The peers' contenders (`PEER_KEYS`: their Python chains) run their rounds after the
    others' (tokensampler's and the torch floors'): a call right after one of theirs finds
    the cell's logits evicted from the cache (a 32 MB cell: +35-40% measured), so in one
    round-robin that cost would fall on whichever contender follows them, always the same
    one.
    """
    times: dict[Key, list[float]] = {}
    spent: dict[Key, float] = {}
    want: dict[Key, int] = {}
    for k, fn in fns.items():
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        times[k] = [first] if first > 0.05 else []
        spent[k] = first
        need = math.ceil(grid.min_time / max(first, 1e-7))
        want[k] = min(max(need, grid.min_reps), grid.max_reps)
    cap = SPENT_CAP * grid.min_time
    ours = [k for k in fns if k[1] not in PEER_KEYS]
    peers = [k for k in fns if k[1] in PEER_KEYS]
    for keys in (ours, peers):
        rounds = min(ROUNDS, max((want[k] for k in keys), default=1))
        for r in range(rounds):
            for k in keys if r % 2 == 0 else reversed(keys):
                fn, ts_k = fns[k], times[k]
                chunk = math.ceil((want[k] - len(ts_k)) / (rounds - r))
                for _ in range(chunk):
                    if len(ts_k) >= grid.min_reps and spent[k] > cap:
                        break
                    t0 = time.perf_counter()
                    fn()
                    dt = time.perf_counter() - t0
                    ts_k.append(dt)
                    spent[k] += dt
    return {k: Timing(float(np.median(t)), len(t), spent=spent[k]) for k, t in times.items()}


# ==== correctness guard =======================================================================


def check_correctness() -> list[str]:
    """On one small case, every implementation returns ids of the right shape and range,
    tokensampler's greedy ids equal torch.argmax, and top-k draws fall in the top-k set.

    Sampled ids are not compared across implementations: different random streams. Returns
    warnings (kept-set checks of (b)/(c) that are sensitive to rounding); raises on errors.
    """
    warnings: list[str] = []
    v, b = 1000, 4
    base, hist = make_logits(v, b, seed=SEED + 1)
    for dtype in ("float32", "bfloat16"):
        case = make_case(v, b, dtype, base, hist)
        x64 = case.logits.to(torch.float64)
        for p in PIPELINES:
            for impl in IMPLS:
                fn = impl.build(case, p)
                if fn is None:
                    continue
                for _ in range(3):
                    where = f"{impl.label}, {dtype}, pipeline {p.key}"
                    ids = _checked_ids(fn(), impl, b, v, where)
                    if p.greedy and not torch.equal(ids, torch.argmax(case.logits, -1)):
                        raise AssertionError(f"{where}: greedy ids differ from torch.argmax")
                    if p.key == "a":
                        kth = torch.topk(x64, 50).values[:, -1:]
                        if not bool((x64.gather(1, ids[:, None]) >= kth).all()):
                            raise AssertionError(f"{where}: a drawn id is outside the top-50")
                    if p.key in ("b", "c"):
                        kept = ts.probs(case.logits, history=case.history, **_probs_kw(p)) > 0
                        if not bool(kept.gather(1, ids[:, None]).all()):
                            warnings.append(f"{where}: drew an id outside tokensampler's kept set")
    return warnings


def _checked_ids(got: Any, impl: Any, b: int, v: int, where: str) -> torch.Tensor:
    """A contender's ids as a flat tensor, after the shape, dtype and range checks."""
    out = got if torch.is_tensor(got) else torch.from_numpy(np.asarray(got))
    if tuple(out.shape) != impl.expected_shape(b):
        raise AssertionError(f"{where}: ids shape {tuple(out.shape)}")
    if out.dtype not in (torch.int64, torch.int32):
        raise AssertionError(f"{where}: ids dtype {out.dtype}")
    ids = out.reshape(-1)
    if not bool(((ids >= 0) & (ids < v)).all()):
        raise AssertionError(f"{where}: ids out of range {ids.tolist()}")
    return ids


def _probs_kw(p: Pipeline) -> dict[str, Any]:
    kw = p.ts_kwargs()
    if p.repetition_penalty == 1.0:
        kw.pop("repetition_penalty")
    return kw


def check_stages() -> list[str]:
    """The guard of `check_correctness` for the issue #15 rows (float32, same small case).

    Ids of the right shape, dtype and range (errors); a draw outside tokensampler's kept set
    and an order group that should give one distribution but does not (warnings). Nothing to
    check when the installed tokensampler lacks these keywords (their rows are n/a).
    """
    warnings: list[str] = []
    v, b = 1000, 4
    base, hist = make_logits(v, b, seed=SEED + 1)
    case = make_case(v, b, "float32", base, hist)
    for p, impls in STAGE_ROWS:
        if not ts_supports(p):
            continue
        kept = ts.probs(case.logits, seed=SEED, **_probs_kw(p)) > 0
        for impl in impls:
            fn = impl.build(case, p)
            if fn is None:
                continue
            for _ in range(3):
                where = f"{impl.label}, float32, pipeline {p.key}"
                ids = _checked_ids(fn(), impl, b, v, where)
                if not bool(kept.gather(1, ids[:, None]).all()):
                    warnings.append(f"{where}: drew an id outside tokensampler's kept set")
    for g in ORDER_GROUPS:
        if not g.same_distribution or not all(map(ts_supports, (g.default, *g.variants))):
            continue
        ref = ts.probs(case.logits, **_probs_kw(g.default))
        for var in g.variants:
            got = ts.probs(case.logits, **_probs_kw(var))
            if not torch.allclose(got, ref, rtol=1e-4, atol=1e-6):
                warnings.append(
                    f"pipeline {var.key}: {var.short} gives another distribution than the "
                    f"default order (max |Δp| {float((got - ref).abs().max()):.2e})"
                )
    return warnings


# ==== the run =================================================================================


@dataclass
class Results:
    """All medians of one run, keyed by (what, impl, dtype, V, B); `what` is a pipeline key
    or "floor"."""

    timings: dict[Key, Timing] = field(default_factory=dict)
    threads: dict[int, float] = field(default_factory=dict)  # ts threads -> median seconds
    threads_logits: int = 0  # B * V of the thread-scaling cell
    warnings: list[str] = field(default_factory=list)
    wall: float = 0.0
    others_before: float = math.nan  # CPU share used by other processes just before the run
    others_during: float = math.nan  # ... and during the run
    load: tuple[float, float] = (math.nan, math.nan)  # 1-min load average at start, at end
    verify_acceptance: dict[str, float] = field(default_factory=dict)  # row (o): rate per regime

    def get(self, what: str, impl: str, dtype: str, v: int, b: int) -> Timing:
        return self.timings.get((what, impl, dtype, v, b), Timing(None, 0, "n/a"))

    def sec(self, what: str, impl: str, dtype: str, v: int, b: int) -> float | None:
        return self.get(what, impl, dtype, v, b).median


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class CpuMeter:
    """How much of the machine other processes used while we ran (from /proc/stat).

    The machines this runs on are shared: when another job takes a core, torch's OpenMP
    barriers and rayon's workers both wait for a descheduled thread and times inflate by
    orders of magnitude. The report states this figure so a reader can discard such a run.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        """(machine busy CPU-seconds, machine total CPU-seconds, our CPU-seconds)."""
        try:
            with open("/proc/stat", encoding="ascii") as f:
                fields = [float(x) for x in f.readline().split()[1:]]
        except OSError:
            return (math.nan, math.nan, math.nan)
        hz = os.sysconf("SC_CLK_TCK")
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        total = sum(fields[:8])  # guest time is already counted in user
        own = os.times()
        return ((total - idle) / hz, total / hz, own.user + own.system)

    def others(self) -> float:
        """Fraction of all CPU time since construction used by other processes."""
        busy, total, own = (b - a for a, b in zip(self.start, self._sample()))
        return max(0.0, (busy - own) / total) if total > 0 else math.nan


def wait_idle(max_wait: float, threshold: float = 0.15) -> float:
    """Waits (up to `max_wait` s) until others use < `threshold` of the CPUs over 2 s."""
    deadline = time.monotonic() + max_wait
    while True:
        meter = CpuMeter()
        time.sleep(2.0)
        busy = meter.others()
        if busy < threshold or time.monotonic() > deadline:
            return busy
        log(f"  machine busy ({busy:.0%} of the CPUs used by others); waiting ...")


def too_big(grid: Grid, case: Case, p: Pipeline) -> bool:
    """Peers are skipped above `peer_max_logits` (greedy is one argmax: never)."""
    limit = grid.peer_max_logits if case.dtype == "float32" else grid.peer_max_logits_bf16
    return not p.greedy and case.n > limit


def run_grid(grid: Grid, res: Results) -> None:
    """Every (V, B) cell: both dtypes' floors and implementations, interleaved (`measure`)."""
    start = time.perf_counter()
    for v in grid.vocab:
        for b in grid.batch:
            base, hist = make_logits(v, b)
            fns: dict[Key, Callable[[], Any]] = {}
            for dtype in grid.dtypes:
                case = make_case(v, b, dtype, base, hist)
                for fk, (_, f) in FLOORS.items():
                    fns[("floor", fk, dtype, v, b)] = lambda f=f, x=case.logits: f(x)
                for p in PIPELINES:
                    for impl in IMPLS:
                        fn = impl.build(case, p)
                        key = (p.key, impl.key, dtype, v, b)
                        if fn is None:
                            res.timings[key] = Timing(None, 0, "n/a")
                        elif impl.slow and too_big(grid, case, p) and key != HF_TARGET:
                            res.timings[key] = Timing(None, 0, "skipped")
                        else:
                            fns[key] = fn
            res.timings.update(measure(fns, grid))
            del fns
            elapsed = time.perf_counter() - start
            log(f"  V={v:>6} B={b:>3} done ({elapsed:6.1f} s)")


def run_threads(grid: Grid, res: Results) -> None:
    """tokensampler at B=64 (or the grid's largest B), V=128256, pipeline (c), 1 vs 2 threads.

    Alternates the two settings `THREAD_ROUNDS` times and keeps the per-setting median, so a
    noisy stretch hits both.
    """
    v = TARGET_V if TARGET_V in grid.vocab else max(grid.vocab)
    b = TARGET_B if TARGET_B in grid.batch else max(grid.batch)
    base, hist = make_logits(v, b)
    case = make_case(v, b, "float32", base, hist)
    fn = build_ts_numpy(case, PIPELINES[2])
    assert fn is not None
    samples: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(THREAD_ROUNDS):
        for n in (1, 2):
            ts.set_num_threads(n)
            t = measure({("c", "ts_np", "float32", v, b): fn}, grid)
            samples[n].append(t[("c", "ts_np", "float32", v, b)].median or math.nan)
    ts.set_num_threads(TS_THREADS)
    res.threads = {n: float(np.median(s)) for n, s in samples.items()}
    res.threads_logits = v * b


def stage_batch(grid: Grid) -> int:
    return TARGET_B if TARGET_B in grid.batch else max(grid.batch)


def run_stages(grid: Grid, res: Results) -> None:
    """The stage and order rows of issue #15: float32, B = `stage_batch`, every V of the grid.

    Timed after the grid and the thread scaling, so the earlier rows are measured exactly as
    before; per V one `measure` of these rows with torch.softmax re-timed among them (key
    STAGE_FLOOR), so their ratios are interleaved like the grid's. The HF chain obeys
    `peer_max_logits` except at the target cell. All n/a when tokensampler lacks the keywords.
    """
    b, f32 = stage_batch(grid), "float32"
    start = time.perf_counter()
    for v in grid.vocab:
        fns: dict[Key, Callable[[], Any]] = {}
        case: Case | None = None
        if any(ts_supports(p) for p, _ in STAGE_ROWS):
            base, hist = make_logits(v, b)
            case = make_case(v, b, f32, base, hist)
            f = FLOORS["softmax"][1]
            fns[(STAGE_FLOOR, "softmax", f32, v, b)] = lambda f=f, x=case.logits: f(x)
        else:
            res.timings[(STAGE_FLOOR, "softmax", f32, v, b)] = Timing(None, 0, "n/a")
        for p, impls in STAGE_ROWS:
            for impl in impls:
                key = (p.key, impl.key, f32, v, b)
                fn = impl.build(case, p) if case is not None and ts_supports(p) else None
                if fn is None:
                    res.timings[key] = Timing(None, 0, "n/a")
                elif (
                    impl.slow
                    and case is not None
                    and too_big(grid, case, p)
                    and (v, b) != (TARGET_V, TARGET_B)
                ):
                    res.timings[key] = Timing(None, 0, "skipped")
                else:
                    fns[key] = fn
        if fns:
            res.timings.update(measure(fns, grid))
        del fns, case
        log(f"  V={v:>6} B={b:>3} done ({time.perf_counter() - start:6.1f} s)")


# ==== history-aware stages (issue #16) ========================================================

# At float32, V = TARGET_V (else the grid's largest V) and B = `stage_batch`, with a history of
# HIST16_LEN ids per row: one call of a base pipeline, and the same call with one history stage
# added (DRY, no-repeat n-grams, sequence biases, multi-token bans). Each history stage is timed
# as a ratio to its base in the same interleaved set, and where transformers has the processor,
# against the Hugging Face chain `generate` builds for the same settings.
HIST16_LEN = 4096
# Token ids standing in for llama.cpp's default breakers ("\n", ":", '"', "*"; one id each, as
# the single-token breakers a tokenizer gives them) and a two-id breaker; the history uses them.
HIST16_BREAKERS: tuple[tuple[int, ...], ...] = ((198,), (25,), (1,), (9,), (510, 25))
HIST16_BREAKER_EVERY = 60  # about one breaker id per this many history ids
HIST16_SEQUENCES = 64  # sequences of the sequence_bias / bad_words_ids rows
HIST16_DRY = 0.8
HIST16_NGRAM = 3


@dataclass(frozen=True)
class HistRow:
    """One call of the issue #16 rows: a base pipeline, plus at most one history stage."""

    key: str
    title: str  # the table's label
    base: str  # the key of the row without the history stage (itself for a base row)
    stage: str | None  # "dry" | "ngram" | "sequence_bias" | "bad_words" | None (a base row)
    light: bool  # the light base (T 0.8 + top-k 50) instead of pipeline (c)'s stages


def _hist_rows() -> tuple[HistRow, ...]:
    rows = []
    for light, tag, label in ((False, "", "(c) stages"), (True, "0", "T 0.8 + top-k 50")):
        base = f"hist{tag}"
        rows.append(HistRow(base, f"{label}, {HIST16_LEN}-token history", base, None, light))
        rows.append(HistRow(f"l{tag}", f"{label} + DRY {HIST16_DRY}", base, "dry", light))
        rows.append(
            HistRow(f"m{tag}", f"{label} + no_repeat_ngram_size {HIST16_NGRAM}", base, "ngram",
                    light)
        )  # fmt: skip
        if not light:
            rows.append(
                HistRow(f"n-bias{tag}", f"{label} + sequence_bias ({HIST16_SEQUENCES} seqs)",
                        base, "sequence_bias", light)
            )  # fmt: skip
            rows.append(
                HistRow(f"n-bad{tag}", f"{label} + bad_words_ids ({HIST16_SEQUENCES} seqs)",
                        base, "bad_words", light)
            )  # fmt: skip
    return tuple(rows)


HIST_ROWS = _hist_rows()
HAS_HISTORY = "dry_multiplier" in TS_FIELDS  # the build has the stages of issue #16
NO_HISTORY = "the installed tokensampler has no dry_multiplier / no_repeat_ngram_size keywords"


@dataclass
class HistCase:
    """The inputs of the issue #16 rows: the logits of `make_logits`, a long history with
    repeats, and the sequences of the sequence_bias / bad_words_ids rows."""

    vocab: int
    batch: int
    logits: torch.Tensor
    logits_np: np.ndarray
    history: torch.Tensor  # (B, HIST16_LEN) int64
    history_np: np.ndarray
    breakers: list[list[int]]
    sequences: list[list[int]]  # one set for every row (HF takes one set)
    biases: list[float]


def make_history(vocab: int, batch: int, length: int, seed: int = SEED) -> np.ndarray:
    """(batch, length) ids like a model's output with repeats: runs of fresh random ids
    (8-64 long) alternate with copies of earlier spans (4-64 long), breaker ids are sprinkled
    in like newlines, and every row ends inside a copied span, so DRY finds a repeat at the
    end and no_repeat_ngram_size bans tokens."""
    rng = np.random.default_rng(seed * 7919 + vocab + batch)
    heads = [b[0] for b in HIST16_BREAKERS if b[0] < vocab]
    out = np.empty((batch, length), dtype=np.int64)
    for r in range(batch):
        row: list[int] = []
        while len(row) < length - 32:
            if len(row) >= 64 and rng.random() < 0.5:
                start = int(rng.integers(0, len(row) - 4))
                n = int(rng.integers(4, 65))
                row.extend(row[start : start + n])
            else:
                fresh = rng.integers(0, vocab, int(rng.integers(8, 65))).tolist()
                if heads:
                    hit = rng.random(len(fresh)) < 1.0 / HIST16_BREAKER_EVERY
                    fresh = [int(rng.choice(heads)) if h else t for t, h in zip(fresh, hit)]
                row.extend(fresh)
        start = int(rng.integers(0, max(1, len(row) - 64)))
        while len(row) < length:  # end inside a repeat of an earlier span
            row.extend(row[start : start + (length - len(row))])
        out[r] = row[:length]
    return out


def make_hist_case(vocab: int, batch: int) -> HistCase:
    base, _ = make_logits(vocab, batch)
    hist = make_history(vocab, batch, HIST16_LEN)
    rng = np.random.default_rng(SEED + vocab)
    breakers = [list(b) for b in HIST16_BREAKERS if max(b) < vocab]
    # A quarter single ids; the rest 2-4 ids, of which some end like a row's history (so they
    # apply there) and the others at random spans of it.
    seqs: list[list[int]] = []
    for i in range(HIST16_SEQUENCES):
        if i < HIST16_SEQUENCES // 4:
            seqs.append([int(rng.integers(0, vocab))])
            continue
        n = int(rng.integers(2, 5))
        r = i % batch
        end = HIST16_LEN if i % 4 == 0 else int(rng.integers(n, HIST16_LEN))
        seqs.append(hist[r, end - n + 1 : end].tolist() + [int(rng.integers(0, vocab))])
    biases = rng.uniform(-4.0, 4.0, len(seqs)).round(2).tolist()
    t = torch.from_numpy(hist)
    return HistCase(vocab, batch, base, base.numpy(), t, hist, breakers, seqs, biases)


def hist_ts_kwargs(case: HistCase, row: HistRow) -> dict[str, Any]:
    kw: dict[str, Any] = {"temperature": 0.8, "top_k": 50}
    if not row.light:
        kw.update(repetition_penalty=1.2, top_p=0.9)
    if row.stage == "dry":
        kw.update(dry_multiplier=HIST16_DRY, dry_sequence_breakers=case.breakers)
    elif row.stage == "ngram":
        kw["no_repeat_ngram_size"] = HIST16_NGRAM
    elif row.stage == "sequence_bias":
        kw["sequence_bias"] = {tuple(s): b for s, b in zip(case.sequences, case.biases)}
    elif row.stage == "bad_words":
        kw["bad_words_ids"] = case.sequences
    return kw


def build_hist_ts(case: HistCase, row: HistRow, numpy_input: bool) -> Callable[[], Any]:
    # The params are built once, as a generate loop's Sampler does; the call is timed.
    p = ts.SamplingParams(**hist_ts_kwargs(case, row), seed=SEED)
    x, h = (case.logits_np, case.history_np) if numpy_input else (case.logits, case.history)
    return lambda: ts.sample(x, p, history=h)


def hf_hist_processors(case: HistCase, row: HistRow) -> list[LogitsProcessor] | None:
    """What `generate` builds for these settings, in its order (sequence bias first, then the
    repetition penalty, the n-gram ban, the bad words, then the warpers); None for DRY."""
    from transformers.generation.logits_process import (
        NoBadWordsLogitsProcessor,
        NoRepeatNGramLogitsProcessor,
        SequenceBiasLogitsProcessor,
    )

    if row.stage == "dry":
        return None
    procs: list[LogitsProcessor] = []
    if row.stage == "sequence_bias":
        pairs = [[s, b] for s, b in zip(case.sequences, case.biases)]
        procs.append(SequenceBiasLogitsProcessor(sequence_bias=pairs))
    if not row.light:
        procs.append(RepetitionPenaltyLogitsProcessor(1.2))
    if row.stage == "ngram":
        procs.append(NoRepeatNGramLogitsProcessor(HIST16_NGRAM))
    if row.stage == "bad_words":
        procs.append(NoBadWordsLogitsProcessor(case.sequences))
    procs += [TemperatureLogitsWarper(0.8), TopKLogitsWarper(50)]
    if not row.light:
        procs.append(TopPLogitsWarper(0.9))
    return procs


def build_hist_hf(case: HistCase, row: HistRow) -> Callable[[], Any] | None:
    procs = hf_hist_processors(case, row)
    if procs is None:
        return None
    chain, x, input_ids = LogitsProcessorList(procs), case.logits, case.history

    def step() -> torch.Tensor:
        scores = chain(input_ids, x.to(copy=True, dtype=torch.float32))
        return torch.multinomial(F.softmax(scores, dim=-1), num_samples=1).squeeze(1)

    return step


HIST_IMPLS: tuple[tuple[str, str], ...] = (
    ("ts_np", "tokensampler (numpy)"),
    ("ts_torch", "tokensampler (torch)"),
    ("hf", "HF chain + multinomial"),
)


def build_hist(case: HistCase, row: HistRow, impl: str) -> Callable[[], Any] | None:
    if impl == "hf":
        return build_hist_hf(case, row)
    return build_hist_ts(case, row, numpy_input=impl == "ts_np")


def hist_cell(grid: Grid) -> tuple[int, int]:
    return (TARGET_V if TARGET_V in grid.vocab else max(grid.vocab)), stage_batch(grid)


def check_history() -> list[str]:
    """The guard of the issue #16 rows, on a small case (V = 1000, B = 4, the full history):
    ids of the right shape and range (errors); the history makes every stage act, i.e. each
    history stage changes tokensampler's distribution (else the row would time a no-op), and a
    Hugging Face draw outside tokensampler's kept set (warnings)."""
    warnings: list[str] = []
    if not HAS_HISTORY:
        return warnings
    v, b = 1000, 4
    case = make_hist_case(v, b)
    for row in HIST_ROWS:
        kw = hist_ts_kwargs(case, row)
        pr = ts.probs(case.logits, history=case.history, **kw)
        if row.stage is not None:
            # The stage alone (at T = 1, no filter to hide its effect) changes every row.
            base = next(r for r in HIST_ROWS if r.key == row.base)
            alone = {k: x for k, x in kw.items() if k not in hist_ts_kwargs(case, base)}
            got = ts.probs(case.logits, history=case.history, **alone)
            acts = (got != ts.probs(case.logits)).any(dim=1)
            if not bool(acts.all()):
                warnings.append(
                    f"row {row.key}: {row.stage} changes nothing in rows "
                    f"{(~acts).nonzero().flatten().tolist()} of the guard's history"
                )
        for impl, label in HIST_IMPLS:
            fn = build_hist(case, row, impl)
            if fn is None:
                continue
            for _ in range(3):
                where = f"{label}, float32, row {row.key}"
                ids = _checked_ids(fn(), TS_TORCH, b, v, where)
                if not bool((pr > 0).gather(1, ids[:, None]).all()):
                    warnings.append(f"{where}: drew an id outside tokensampler's kept set")
    return warnings


def run_history(grid: Grid, res: Results) -> None:
    """The issue #16 rows: one cell (`hist_cell`), every row and contender in one interleaved
    `measure`, so each ratio to its base is taken in one run. All n/a without the keywords."""
    v, b = hist_cell(grid)
    f32 = "float32"
    if not HAS_HISTORY:
        for row in HIST_ROWS:
            for impl, _ in HIST_IMPLS:
                res.timings[(row.key, impl, f32, v, b)] = Timing(None, 0, "n/a")
        return
    start = time.perf_counter()
    case = make_hist_case(v, b)
    fns: dict[Key, Callable[[], Any]] = {}
    for row in HIST_ROWS:
        for impl, _ in HIST_IMPLS:
            fn = build_hist(case, row, impl)
            if fn is None:
                res.timings[(row.key, impl, f32, v, b)] = Timing(None, 0, "n/a")
            else:
                fns[(row.key, impl, f32, v, b)] = fn
    res.timings.update(measure(fns, grid))
    log(f"  V={v:>6} B={b:>3} done ({time.perf_counter() - start:6.1f} s)")


def history_targets(grid: Grid, res: Results) -> list[Target]:
    """Issue #16: DRY and no_repeat_ngram_size over the 4,096-token history add ≤ 25 % to the
    same call without them (judged on pipeline (c)'s stages; the light base, where the stage
    is a larger share, is shown), and the n-gram ban is ≥ 50× faster than the HF chain. DRY
    has no Hugging Face processor (reported alone); the sequence bias and bad words rows are
    reported against Hugging Face without a goal."""
    out: list[Target] = []
    v, b = hist_cell(grid)
    f32 = "float32"
    here = v == TARGET_V and b == TARGET_B
    cell = f"B={b}, V={v}, f32, {HIST16_LEN}-token history"

    def t(key: str, impl: str = "ts_torch") -> Timing:
        return res.get(key, impl, f32, v, b)

    def missing(*ts_: Timing) -> str:
        status = next((x.status for x in ts_ if x.median is None), "n/a")
        return f"n/a ({NO_HISTORY})" if status == "n/a" and not HAS_HISTORY else status

    for key, name in (
        ("l", f"(l) DRY {HIST16_DRY}"),
        ("m", f"(m) no_repeat_ngram_size {HIST16_NGRAM}"),
    ):
        with_, without = t(key).median, t("hist").median
        r = _ratio(with_, without)
        r0 = _ratio(t(f"{key}0").median, t("hist0").median)
        if with_ is not None and without is not None:
            ns = (with_ - without) / b / HIST16_LEN * 1e9
            measured = (
                f"{with_ / without:.2f}× ({_us(with_)} vs {_us(without)} µs/call; "
                f"+{ns:.1f} ns per history id and row)"
                + (f"; light base (T 0.8 + top-k 50): {r0:.2f}×" if r0 is not None else "")
            )
        else:
            measured = missing(t(key), t("hist"))
        out.append(
            Target(
                f"{name} vs the same call without it (pipeline (c)'s stages): {cell}",
                "≤ 1.25×",
                measured,
                (r <= 1.25 if here else None) if r is not None else None,
            )
        )
    dry = t("l")
    out.append(
        Target(
            f"(l) DRY {HIST16_DRY} vs Hugging Face: {cell}",
            "reported: transformers has no DRY processor (no peer installed)",
            f"{_us(dry.median)} µs/call, {_us(dry.median / b)} µs/row"
            if dry.median is not None
            else missing(dry),
            None,
        )
    )
    for key, name, goal in (
        ("m", f"(m) no_repeat_ngram_size {HIST16_NGRAM}", 50.0),
        ("n-bias", f"(n) sequence_bias ({HIST16_SEQUENCES} sequences)", None),
        ("n-bad", f"(n) bad_words_ids ({HIST16_SEQUENCES} sequences)", None),
    ):
        ours, hf = t(key), t(key, "hf")
        r = _ratio(hf.median, ours.median)
        out.append(
            Target(
                f"{name}, pipeline (c)'s stages: {cell} vs HF chain + multinomial",
                f"≥ {goal:.0f}× faster" if goal is not None else "reported (no goal)",
                f"{r:.1f}× faster ({_us(hf.median)} vs {_us(ours.median)} µs/call)"
                if r is not None
                else missing(ours, hf),
                (r >= goal if here else None) if r is not None and goal is not None else None,
            )
        )
    return out


def render_history(grid: Grid, res: Results) -> list[str]:
    """The section of the issue #16 rows (`run_history`)."""
    v, b = hist_cell(grid)
    f32 = "float32"
    L = ["", "## History-aware stages (issue #16)", ""]
    L.append(
        f"float32, B = {b}, V = {v}, a {HIST16_LEN}-token history per row (random ids with "
        "copied spans and breaker ids, each row ending inside a repeat, so DRY and the n-gram "
        "ban have work to do); all rows and contenders in one interleaved set. Cells are µs "
        "per row; in parentheses: HF ÷ tokensampler (torch) (>1 = tokensampler faster), and "
        "for a history stage tokensampler (torch) ÷ the same call without it. Bases: pipeline "
        "(c)'s stages (repetition penalty 1.2, T 0.8, top-k 50, top-p 0.9) and a light one "
        f"(T 0.8 + top-k 50). DRY: multiplier {HIST16_DRY}, base 1.75, allowed length 2, "
        f"breakers {[list(x) for x in HIST16_BREAKERS]} (token ids standing in for llama.cpp's "
        f"defaults); sequence_bias / bad_words_ids: {HIST16_SEQUENCES} sequences of 1-4 ids. "
        "The HF chain is what `generate` builds (`SequenceBiasLogitsProcessor`, "
        "`RepetitionPenaltyLogitsProcessor`, `NoRepeatNGramLogitsProcessor`, "
        "`NoBadWordsLogitsProcessor`, then the warpers), softmax, `torch.multinomial`; "
        "transformers has no DRY (`n/a`)."
    )
    if not HAS_HISTORY:
        L += ["", f"**All rows n/a: {NO_HISTORY}.**"]
    L.append("")
    head = ["row", "V", "B"] + [label for _, label in HIST_IMPLS] + ["÷ without the stage"]
    L.append("| " + " | ".join(head) + " |")
    L.append("|---|" + "---:|" * (len(head) - 1))
    for row in HIST_ROWS:
        cells = [row.title, f"{v}", f"{b}"]
        t_ts = res.sec(row.key, "ts_torch", f32, v, b)
        for impl, _ in HIST_IMPLS:
            t = res.get(row.key, impl, f32, v, b)
            if t.median is None:
                cells.append(t.status)
                continue
            rr = _ratio(t.median, t_ts) if impl == "hf" else None
            cells.append(_us(t.median / b) + (f" ({_fmt_ratio(rr)})" if rr is not None else ""))
        rb = _ratio(t_ts, res.sec(row.base, "ts_torch", f32, v, b)) if row.stage else None
        cells.append(f"{rb:.2f}×" if rb is not None else "–")
        L.append("| " + " | ".join(cells) + " |")
    return L


# ==== speculative verification (issue #18) ===================================================

# ts.verify at B = VERIFY_B rows of VERIFY_K drafts each (B * (K + 1) target positions), V =
# TARGET_V (else the grid's largest V), float32 torch input, T = 1; the baseline is ts.sample
# over the same B * (K + 1) rows, in the same interleaved set.
VERIFY_B, VERIFY_K = 8, 4
VERIFY_BOOST = 12.0  # added to each position's argmax: p(argmax) ~ 1, so its drafts stay
HAS_VERIFY = hasattr(ts, "verify")
NO_VERIFY = "the installed tokensampler has no ts.verify (issue #18)"


@dataclass(frozen=True)
class VerifyRow:
    """One regime of row (o)."""

    key: str
    title: str
    drafts: str  # "argmax" | "random"
    draft_probs: bool  # a drafter with probabilities (random q) instead of one-hot drafts
    goal: float | None  # ≤ goal × ts.sample over the same rows; None: reported only


VERIFY_ROWS: tuple[VerifyRow, ...] = (
    VerifyRow("o-acc", "(o) verify, drafts = the target's argmax (accepted)", "argmax", False,
              1.5),
    VerifyRow("o-rej", "(o) verify, random drafts (rejected at once)", "random", False, 1.5),
    VerifyRow("o-rej-q", "(o) verify, random drafts + draft_probs (rejected at once)", "random",
              True, None),
)  # fmt: skip
VERIFY_SAMPLE = "o-sample"  # `what` of the baseline: ts.sample over the B * (K + 1) rows


@dataclass
class VerifyCase:
    """The inputs of row (o): a peaked (B, K + 1, V) target, drafts and a random q."""

    vocab: int
    target: torch.Tensor  # (B, K + 1, V) float32
    drafts: dict[str, torch.Tensor]  # "argmax" / "random": (B, K) int64
    q: torch.Tensor  # (B, K, V) float32, rows summing to 1


def verify_cell(grid: Grid) -> int:
    return TARGET_V if TARGET_V in grid.vocab else max(grid.vocab)


def make_verify_case(vocab: int) -> VerifyCase:
    b, k = VERIFY_B, VERIFY_K
    base, _ = make_logits(vocab, b * (k + 1))
    target = base.reshape(b, k + 1, vocab).clone()
    best = target.argmax(-1)
    target.scatter_add_(2, best[..., None], torch.full((b, k + 1, 1), VERIFY_BOOST))
    g = torch.Generator().manual_seed(SEED + 18)
    random = torch.randint(0, vocab, (b, k), generator=g)
    random = torch.where(random == best[:, :k], (random + 1) % vocab, random)
    q = torch.softmax(torch.randn(b, k, vocab, generator=g) * 2.0, -1)
    return VerifyCase(vocab, target.contiguous(), {"argmax": best[:, :k], "random": random}, q)


def build_verify(case: VerifyCase, row: VerifyRow) -> Callable[[], Any]:
    x, d = case.target, case.drafts[row.drafts]
    q = case.q if row.draft_probs else None
    return lambda: ts.verify(x, d, q, seed=SEED)


def build_verify_sample(case: VerifyCase) -> Callable[[], Any]:
    x = case.target.reshape(-1, case.vocab)
    return lambda: ts.sample(x, seed=SEED)


def verify_acceptance(case: VerifyCase, row: VerifyRow) -> float:
    """The share of drafts accepted (at the timed call's seed: the same every call)."""
    return float(build_verify(case, row)().accepted.double().mean()) / VERIFY_K


def check_verify() -> list[str]:
    """The guard of row (o), on a small case (V = 1000): shapes and ranges (errors); greedy
    verification of the argmax drafts keeps them all and gives the argmax bonus, and the
    regimes accept what they are meant to (warnings)."""
    warnings: list[str] = []
    if not HAS_VERIFY:
        return warnings
    b, k, v = VERIFY_B, VERIFY_K, 1000
    case = make_verify_case(v)
    best = case.target.argmax(-1)
    out = ts.verify(case.target, case.drafts["argmax"], temperature=0, seed=SEED)
    if tuple(out.ids.shape) != (b, k + 1) or tuple(out.accepted.shape) != (b,):
        raise AssertionError(f"ts.verify: shapes {tuple(out.ids.shape)}, {out.accepted.shape}")
    if not torch.equal(out.ids, best) or not bool((out.accepted == k).all()):
        raise AssertionError("ts.verify at T=0: argmax drafts not kept, or the bonus differs")
    for row in VERIFY_ROWS:
        got = build_verify(case, row)()
        ids = got.ids
        if not bool(((ids >= -1) & (ids < v)).all()):
            raise AssertionError(f"row {row.key}: ids out of range {ids.tolist()}")
        rate = verify_acceptance(case, row)
        if (row.drafts == "argmax") != (rate > 0.5):
            warnings.append(f"row {row.key}: acceptance {rate:.0%} on the guard's case")
    return warnings


def run_verify(grid: Grid, res: Results) -> dict[str, float]:
    """Row (o): the regimes and the ts.sample baseline in one interleaved `measure`. Returns
    each regime's acceptance rate (empty when n/a)."""
    v, b, f32 = verify_cell(grid), VERIFY_B, "float32"
    if not HAS_VERIFY:
        for key in (*(r.key for r in VERIFY_ROWS), VERIFY_SAMPLE):
            res.timings[(key, "ts_torch", f32, v, b)] = Timing(None, 0, "n/a")
        return {}
    start = time.perf_counter()
    case = make_verify_case(v)
    fns: dict[Key, Callable[[], Any]] = {
        (VERIFY_SAMPLE, "ts_torch", f32, v, b): build_verify_sample(case)
    }
    for row in VERIFY_ROWS:
        fns[(row.key, "ts_torch", f32, v, b)] = build_verify(case, row)
    res.timings.update(measure(fns, grid))
    log(f"  V={v:>6} B={b:>3} K={VERIFY_K} done ({time.perf_counter() - start:6.1f} s)")
    return {row.key: verify_acceptance(case, row) for row in VERIFY_ROWS}


def verify_targets(grid: Grid, res: Results) -> list[Target]:
    """Issue #18: ts.verify ≤ 1.5× ts.sample over the same B·(K+1) rows, in both regimes
    (judged at V = TARGET_V); the draft_probs regime is reported."""
    out: list[Target] = []
    v, b, f32 = verify_cell(grid), VERIFY_B, "float32"
    here = v == TARGET_V
    base = res.get(VERIFY_SAMPLE, "ts_torch", f32, v, b)
    for row in VERIFY_ROWS:
        t = res.get(row.key, "ts_torch", f32, v, b)
        r = _ratio(t.median, base.median)
        rate = res.verify_acceptance.get(row.key)
        acc = f"; acceptance {rate:.0%}" if rate is not None else ""
        out.append(
            Target(
                f"{row.title}: B={b}, K={VERIFY_K}, V={v}, f32 vs ts.sample over the same "
                f"{b * (VERIFY_K + 1)} rows",
                f"≤ {row.goal:.1f}×" if row.goal is not None else "reported (no goal)",
                f"{r:.2f}× ({_us(t.median)} vs {_us(base.median)} µs/call{acc})"
                if r is not None
                else (NO_VERIFY if not HAS_VERIFY else t.status),
                (r <= row.goal if here else None) if r is not None and row.goal else None,
            )
        )
    return out


def render_verify(grid: Grid, res: Results) -> list[str]:
    """The section of row (o) (`run_verify`)."""
    v, b, k, f32 = verify_cell(grid), VERIFY_B, VERIFY_K, "float32"
    L = ["", "## Speculative verification (issue #18)", ""]
    L.append(
        f"`ts.verify`, float32 torch input, B = {b}, K = {k} drafts per row (B·(K+1) = "
        f"{b * (k + 1)} target positions), V = {v}, T = 1, against `ts.sample` over the same "
        f"{b * (k + 1)} rows, all in one interleaved set. The target is `make_logits`' rows "
        f"with {VERIFY_BOOST:g} added to each position's argmax (p(argmax) ≈ 1). Regimes: the "
        "drafts are the target's argmax tokens, one-hot (a prompt-lookup drafter whose drafts "
        "hold: every position is processed and a bonus drawn), and random one-hot drafts "
        "(rejected at the first position: one position processed, one residual draw); a "
        "drafter with probabilities (random drafts, `draft_probs` = a random q) is reported "
        "alongside. Acceptance: accepted drafts ÷ drafted, at the timed seed."
    )
    if not HAS_VERIFY:
        L += ["", f"**All rows n/a: {NO_VERIFY}.**"]
    L.append("")
    L.append("| regime | V | B | K | acceptance | µs / call | µs / row (÷ B) | ÷ ts.sample |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = res.get(VERIFY_SAMPLE, "ts_torch", f32, v, b)
    rows: list[tuple[str, str, Timing, float | None]] = [
        (f"ts.sample over the {b * (k + 1)} rows", VERIFY_SAMPLE, base, None)
    ]
    for row in VERIFY_ROWS:
        t = res.get(row.key, "ts_torch", f32, v, b)
        rows.append((row.title, row.key, t, _ratio(t.median, base.median)))
    for title, key, t, r in rows:
        rate = res.verify_acceptance.get(key)
        if t.median is None:
            L.append(f"| {title} | {v} | {b} | {k} | – | {t.status} | – | – |")
            continue
        L.append(
            f"| {title} | {v} | {b} | {k} | {f'{rate:.0%}' if rate is not None else '–'} | "
            f"{_us(t.median)} | {_us(t.median / b)} | {f'{r:.2f}×' if r is not None else '–'} |"
        )
    return L


# ==== token bitmasks (issue #17) ==============================================================

# At float32, B = TARGET_B and V = TARGET_V (else the grid's largest V): two bases, each
# unmasked and under a token bitmask allowing MASK16_ALLOWED ids per row (a grammar's few
# choices) or half the vocabulary (a free-text state). Against the CPU route structured
# output takes today: xgrammar's `apply_token_bitmask_inplace` (CPU kernel) writing -inf into
# a copy of the logits, then the Hugging Face chain + softmax + `torch.multinomial`.
MASK16_ALLOWED = 16
MASK_BASES: tuple[Pipeline, ...] = (
    Pipeline("p", "(p) T 0.8 + top-k 50 + top-p 0.9", "(p) T 0.8 + top-k 50 + top-p 0.9", 0.8,
             top_k=50, top_p=0.9),
    Pipeline("q", "(q) T 1 + top-p 0.9", "(q) top-p 0.9", 1.0, top_p=0.9),
)  # fmt: skip
MASKS = (("16", f"{MASK16_ALLOWED} allowed ids"), ("half", "half the vocabulary allowed"))
HAS_BITMASK = "token_bitmask" in getattr(ts.SamplingParams, "__dataclass_fields__", {})
NO_BITMASK = "the installed tokensampler has no token_bitmask (issue #17)"
try:
    import xgrammar

    HAS_XGRAMMAR = True
except ImportError:  # the optional backend: its rows are n/a without it
    HAS_XGRAMMAR = False


def make_masks(vocab: int, batch: int, seed: int = SEED) -> dict[str, torch.Tensor]:
    """(B, ceil(V/32)) int32 masks: MASK16_ALLOWED random ids per row, and random halves."""
    g = np.random.default_rng(seed + 17)
    words = -(-vocab // 32)
    out = {}
    for name, n in (("16", MASK16_ALLOWED), ("half", vocab // 2)):
        m = np.zeros((batch, words), dtype=np.uint32)
        for b in range(batch):
            ids = g.choice(vocab, size=n, replace=False)
            np.bitwise_or.at(
                m[b], ids // 32, np.left_shift(np.uint32(1), (ids % 32).astype(np.uint32))
            )
        out[name] = torch.from_numpy(m.view(np.int32))
    return out


def build_masked_hf(case: Case, p: Pipeline, mask: torch.Tensor) -> Callable[[], Any] | None:
    if not HAS_XGRAMMAR or not hf_applies(p):
        return None
    x = case.logits
    procs: list[LogitsProcessor] = []
    if p.temperature != 1.0:
        procs.append(TemperatureLogitsWarper(p.temperature))
    if p.top_k is not None:
        procs.append(TopKLogitsWarper(p.top_k))
    if p.top_p is not None:
        procs.append(TopPLogitsWarper(p.top_p))
    hf_chain = LogitsProcessorList(procs)

    def step() -> torch.Tensor:
        logits = x.to(copy=True, dtype=torch.float32)
        xgrammar.apply_token_bitmask_inplace(logits, mask)
        scores = hf_chain(case.history, logits)
        return torch.multinomial(F.softmax(scores, dim=-1), num_samples=1).squeeze(1)

    return step


def mask_cell(grid: Grid) -> tuple[int, int]:
    return (TARGET_V if TARGET_V in grid.vocab else max(grid.vocab)), TARGET_B


def check_bitmask() -> list[str]:
    """The guard of rows (p)/(q) on a small case: masked draws are allowed ids (errors)."""
    if not HAS_BITMASK:
        return []
    v, b = 1000, 8
    base, hist = make_logits(v, b)
    case = make_case(v, b, "float32", base, hist)
    allowed = {}
    for name, m in make_masks(v, b).items():
        bits = ((m[:, :, None] >> torch.arange(32, dtype=torch.int32)) & 1).reshape(b, -1)[:, :v]
        allowed[name] = bits.bool()
        for p in MASK_BASES:
            ids = ts.sample(case.logits, token_bitmask=m, seed=SEED, **p.ts_kwargs())
            if not bool(allowed[name][torch.arange(b), ids].all()):
                raise AssertionError(f"row ({p.key}) mask {name}: a disallowed id was drawn")
    return []


def run_bitmask(grid: Grid, res: Results) -> None:
    """Rows (p)/(q): per base, unmasked, both masks, and xgrammar + HF, in one interleaved
    `measure` per base."""
    v, b = mask_cell(grid)
    f32 = "float32"
    keys = [(f"{p.key}-{m}", impl) for p in MASK_BASES for m in ("none", *dict(MASKS))
            for impl in ("ts_torch", "hf")]  # fmt: skip
    if not HAS_BITMASK:
        for what, impl in keys:
            res.timings[(what, impl, f32, v, b)] = Timing(None, 0, "n/a")
        return
    start = time.perf_counter()
    base, hist = make_logits(v, b)
    case = make_case(v, b, f32, base, hist)
    masks = make_masks(v, b)
    x = case.logits
    for p in MASK_BASES:
        kw = p.ts_kwargs()
        plain = ts.SamplingParams(seed=SEED, **kw)
        fns: dict[Key, Callable[[], Any]] = {
            (f"{p.key}-none", "ts_torch", f32, v, b): lambda pr=plain: ts.sample(x, pr)
        }
        for name, m in masks.items():
            params = plain.replace(token_bitmask=m)
            fns[(f"{p.key}-{name}", "ts_torch", f32, v, b)] = lambda pr=params: ts.sample(x, pr)
            hf = build_masked_hf(case, p, m)
            if hf is not None:
                fns[(f"{p.key}-{name}", "hf", f32, v, b)] = hf
            else:
                res.timings[(f"{p.key}-{name}", "hf", f32, v, b)] = Timing(None, 0, "n/a")
        res.timings.update(measure(fns, grid))
    log(f"  V={v:>6} B={b:>3} done ({time.perf_counter() - start:6.1f} s)")


def bitmask_targets(grid: Grid, res: Results) -> list[Target]:
    """Issue #17, judged on base (p) at B = TARGET_B, V = TARGET_V: a mask of 16 ids ≤ 0.5×
    the unmasked call and ≥ 5× faster than xgrammar + the HF chain; half the vocabulary
    ≤ 1.1× the unmasked call. Base (q) is reported."""
    out: list[Target] = []
    v, b = mask_cell(grid)
    f32 = "float32"
    here = v == TARGET_V and b in grid.batch
    for p in MASK_BASES:
        judged = p.key == "p"
        none = res.get(f"{p.key}-none", "ts_torch", f32, v, b)
        for name, label, goal in (("16", MASKS[0][1], 0.5), ("half", MASKS[1][1], 1.1)):
            t = res.get(f"{p.key}-{name}", "ts_torch", f32, v, b)
            r = _ratio(t.median, none.median)
            out.append(
                Target(
                    f"{p.title}, {label}: B={b}, V={v}, f32 vs the same call unmasked",
                    f"≤ {goal}×" if judged else "reported (no goal)",
                    f"{r:.2f}× ({_us(t.median)} vs {_us(none.median)} µs/call)"
                    if r is not None
                    else (NO_BITMASK if not HAS_BITMASK else t.status),
                    (r <= goal if here else None) if r is not None and judged else None,
                )
            )
        t = res.get(f"{p.key}-16", "ts_torch", f32, v, b)
        hf = res.get(f"{p.key}-16", "hf", f32, v, b)
        r = _ratio(hf.median, t.median)
        out.append(
            Target(
                f"{p.title}, {MASKS[0][1]}: B={b}, V={v}, f32 vs xgrammar "
                "apply_token_bitmask_inplace (CPU) + HF chain + multinomial",
                "≥ 5× faster" if judged else "reported (no goal)",
                f"{r:.1f}× faster ({_us(hf.median)} vs {_us(t.median)} µs/call)"
                if r is not None
                else ("n/a (xgrammar not installed)" if not HAS_XGRAMMAR else hf.status),
                (r >= 5.0 if here else None) if r is not None and judged else None,
            )
        )
    return out


def render_bitmask(grid: Grid, res: Results) -> list[str]:
    """The section of rows (p)/(q) (`run_bitmask`)."""
    v, b = mask_cell(grid)
    f32 = "float32"
    L = ["", "## Token bitmasks (issue #17)", ""]
    L.append(
        f"float32 torch input, B = {b}, V = {v}; per base, the call unmasked and under an int32 "
        f"(B, ceil(V/32)) token bitmask allowing {MASK16_ALLOWED} random ids per row or a "
        "random half of the vocabulary, all in one interleaved set. xgrammar + HF: "
        "`xgrammar.apply_token_bitmask_inplace` (its CPU kernel) on a float32 copy, then the "
        "Hugging Face warpers, softmax and `torch.multinomial`. Cells are µs per row; in "
        "parentheses ÷ the unmasked call (tokensampler) and xgrammar + HF ÷ tokensampler."
    )
    if not HAS_BITMASK:
        L += ["", f"**All rows n/a: {NO_BITMASK}.**"]
    L.append("")
    L.append("| base | mask | tokensampler (torch) | xgrammar + HF chain |")
    L.append("|---|---|---:|---:|")
    for p in MASK_BASES:
        none = res.sec(f"{p.key}-none", "ts_torch", f32, v, b)
        for name, label in (("none", "none"), *MASKS):
            t = res.get(f"{p.key}-{name}", "ts_torch", f32, v, b)
            hf = res.get(f"{p.key}-{name}", "hf", f32, v, b)
            if t.median is None:
                L.append(f"| {p.title} | {label} | {t.status} | {hf.status} |")
                continue
            r = _ratio(t.median, none) if name != "none" else None
            rh = _ratio(hf.median, t.median)
            cell = _us(t.median / b) + (f" ({r:.2f}×)" if r is not None else "")
            hcell = (_us(hf.median / b) + f" ({_fmt_ratio(rh)})") if hf.median else "–"
            L.append(f"| {p.title} | {label} | {cell} | {hcell} |")
    return L


# ==== analysis ================================================================================


def fit_linear(grid: Grid, res: Results, key: str, impl: str, dtype: str) -> dict[str, float]:
    """Least squares time = a + s * (B * V) over the grid; s in ns per logit, a in µs."""
    xs, ys = [], []
    for v in grid.vocab:
        for b in grid.batch:
            t = res.sec(key, impl, dtype, v, b)
            if t is not None:
                xs.append(float(v * b))
                ys.append(t)
    if len(xs) < 2 or len(set(xs)) < 2:
        nan = math.nan
        return {"a_us": nan, "s_ns": nan, "r2": nan, "beta": nan, "n": float(len(xs))}
    x, y = np.array(xs), np.array(ys)
    s, a = np.polyfit(x, y, 1)
    pred = a + s * x
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else math.nan
    # Growth exponent: time ∝ (B·V)^beta over the cells where the kernel, not the per-call
    # overhead, dominates. beta ≈ 1 is linear; < 1 means per-logit cost falls with size.
    big = x >= EXPONENT_MIN_LOGITS
    beta = math.nan
    if big.sum() >= 2 and len(set(x[big])) >= 2:
        beta = float(np.polyfit(np.log(x[big]), np.log(y[big]), 1)[0])
    return {"a_us": a * 1e6, "s_ns": s * 1e9, "r2": r2, "beta": beta, "n": float(len(xs))}


@dataclass
class Target:
    name: str
    goal: str
    measured: str
    ok: bool | None  # None: not measured in this grid


def _ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return num / den


def evaluate_targets(grid: Grid, res: Results) -> list[Target]:
    out: list[Target] = []
    tv, tb, f32 = TARGET_V, TARGET_B, "float32"

    def cell(v: int, b: int) -> bool:
        return v in grid.vocab and b in grid.batch

    here = cell(tv, tb)
    nm = "not in this grid"
    ts_c = res.sec("c", "ts_torch", f32, tv, tb)
    r = _ratio(ts_c, res.sec("floor", "topk", f32, tv, tb))
    out.append(
        Target(
            f"(c) B={tb}, V={tv}, f32 vs torch.topk(50)",
            "tokensampler ≤ 1.0× torch.topk",
            f"{r:.2f}× ({_us(ts_c)} vs {_us(res.sec('floor', 'topk', f32, tv, tb))} µs/call)"
            if r is not None
            else nm,
            r <= 1.0 if r is not None else None,
        )
    )
    hf = res.get("c", "hf", f32, tv, tb)
    r = _ratio(hf.median, ts_c)
    out.append(
        Target(
            f"(c) B={tb}, V={tv}, f32 vs HF chain + multinomial",
            "≥ 50× faster",
            f"{r:.1f}× faster" if r is not None else (hf.status if here else nm),
            r >= 50.0 if r is not None else None,
        )
    )
    ts_b = res.sec("b", "ts_torch", f32, tv, tb)
    sm = res.sec("floor", "softmax", f32, tv, tb)
    r = _ratio(ts_b, sm)
    bf = _ratio(
        res.sec("b", "ts_torch", "bfloat16", tv, tb),
        res.sec("floor", "softmax", "bfloat16", tv, tb),
    )
    out.append(
        Target(
            f"(b) B={tb}, V={tv}, f32 vs torch.softmax",
            "tokensampler ≤ 1.0× torch.softmax",
            (f"{r:.2f}× ({_us(ts_b)} vs {_us(sm)} µs/call)" + (f"; bf16: {bf:.2f}×" if bf else ""))
            if r is not None
            else nm,
            r <= 1.0 if r is not None else None,
        )
    )
    ov, ob = OVERHEAD_V, OVERHEAD_B
    ts_a = res.sec("a", "ts_torch", f32, ov, ob)
    am = res.sec("floor", "amax", f32, ov, ob)
    r = _ratio(ts_a, am)
    rn = _ratio(res.sec("a", "ts_np", f32, ov, ob), am)
    out.append(
        Target(
            f"(a) B={ob}, V={ov}, whole Python call vs one torch.amax call",
            "≤ 3×",
            (
                f"{r:.2f}× ({_us(ts_a)} vs {_us(am)} µs; numpy input: {rn:.2f}×)"
                if r is not None and rn is not None
                else nm
            ),
            r <= 3.0 if r is not None else None,
        )
    )
    parts, oks = [], []
    for p in PIPELINES:
        rs = []
        for v in grid.vocab:
            for b in grid.batch:
                if b < 8 and max(grid.batch) >= 8:
                    continue  # B=1 is call overhead, not the kernel: noise decides its ratio
                rr = _ratio(
                    res.sec(p.key, "ts_torch", "bfloat16", v, b),
                    res.sec(p.key, "ts_torch", f32, v, b),
                )
                if rr is not None:
                    rs.append(rr)
        if rs:
            gm = float(np.exp(np.mean(np.log(rs))))
            parts.append(f"{p.key}: {gm:.2f} (worst {max(rs):.2f})")
            oks.append(gm <= 1.0)
    out.append(
        Target(
            "bf16 input no slower than f32 (torch input, same pipeline)",
            "geomean bf16/f32 ≤ 1.00 over B ≥ 8, each pipeline",
            "; ".join(parts) if parts else nm,
            all(oks) if oks else None,
        )
    )
    if res.threads:
        sp = res.threads[1] / res.threads[2]
        cells = res.threads_logits
        out.append(
            Target(
                f"(c) 2 threads vs 1 ({cells:,} logits per call)",
                "≥ 1.7×",
                f"{sp:.2f}× ({_us(res.threads[1])} → {_us(res.threads[2])} µs/call)",
                sp >= 1.7,
            )
        )
    # One read of the logits (torch.amax) is not linear either on a real machine: small cells
    # are served from cache, large ones from DRAM. Its exponent is the memory hierarchy's
    # share, so an algorithm is "linear" when it grows no faster than that floor.
    floor_beta = fit_linear(grid, res, "floor", "amax", f32)["beta"]
    limit = 1.05 if math.isnan(floor_beta) else max(1.05, floor_beta + 0.05)
    parts, oks = [], []
    for p in PIPELINES:
        fit = fit_linear(grid, res, p.key, "ts_np", f32)
        if not math.isnan(fit["beta"]):
            parts.append(f"{p.key}: s = {fit['s_ns']:.2f} ns/logit, β = {fit['beta']:.2f}")
            oks.append(fit["beta"] <= limit)
    if not math.isnan(floor_beta):
        parts.append(f"torch.amax (one read): β = {floor_beta:.2f}")
    out.append(
        Target(
            "linear growth in B·V (f32, numpy input)",
            "report slope s; no worse than linear: time ∝ (B·V)^β with β ≤ max(1.05, β of "
            "torch.amax + 0.05)",
            "; ".join(parts) if parts else nm,
            all(oks) if oks else None,
        )
    )
    out.extend(stage_targets(grid, res))
    out.extend(history_targets(grid, res))
    out.extend(verify_targets(grid, res))
    out.extend(bitmask_targets(grid, res))
    return out


def stage_targets(grid: Grid, res: Results) -> list[Target]:
    """Issue #15: each stage row ≤ 1.0× torch.softmax (re-timed among these rows) and, where
    HF has the processor, ≥ 50× faster than its chain; preset orders within 10 % of the
    default order; the custom order's cost relative to the default, reported only."""
    out: list[Target] = []
    tv, tb, f32 = TARGET_V, TARGET_B, "float32"
    here = tv in grid.vocab and tb in grid.batch

    def missing(*ts_: Timing) -> str:
        if not here:
            return "not in this grid"
        status = next((t.status for t in ts_ if t.median is None), "n/a")
        return f"n/a ({NO_STAGES})" if status == "n/a" and not HAS_STAGES else status

    sm = res.get(STAGE_FLOOR, "softmax", f32, tv, tb)
    for p in STAGE_PIPELINES:
        t = res.get(p.key, "ts_torch", f32, tv, tb)
        r = _ratio(t.median, sm.median)
        out.append(
            Target(
                f"{p.short}: B={tb}, V={tv}, f32 vs torch.softmax",
                "tokensampler ≤ 1.0× torch.softmax",
                f"{r:.2f}× ({_us(t.median)} vs {_us(sm.median)} µs/call)"
                if r is not None
                else missing(t, sm),
                r <= 1.0 if r is not None else None,
            )
        )
        if hf_applies(p):
            hf = res.get(p.key, "hf", f32, tv, tb)
            r = _ratio(hf.median, t.median)
            out.append(
                Target(
                    f"{p.short}: B={tb}, V={tv}, f32 vs HF chain + multinomial",
                    "≥ 50× faster",
                    f"{r:.1f}× faster" if r is not None else missing(t, hf),
                    r >= 50.0 if r is not None else None,
                )
            )
    for g in ORDER_GROUPS:
        d = res.get(g.default.key, "ts_torch", f32, tv, tb)
        parts, oks = [], []
        for var in g.variants:
            t = res.get(var.key, "ts_torch", f32, tv, tb)
            r = _ratio(t.median, d.median)
            if r is None:
                continue
            parts.append(f"{var.short}: {r:.2f}× ({_us(t.median)} µs/call)")
            if g.goal is not None:
                oks.append(r <= g.goal)
        measured = (
            "; ".join(parts) + f"; {g.default.short}: {_us(d.median)} µs/call"
            if parts
            else missing(d, *(res.get(var.key, "ts_torch", f32, tv, tb) for var in g.variants))
        )
        out.append(
            Target(
                f"{g.title}: B={tb}, V={tv}, f32",
                f"each ≤ {g.goal:.2f}× the default order"
                if g.goal is not None
                else "reported (no goal): variant ÷ default order",
                measured,
                all(oks) if oks else None,
            )
        )
    return out


# ==== report ==================================================================================


def _us(sec: float | None) -> str:
    if sec is None:
        return "–"
    us = sec * 1e6
    return f"{us:,.0f}" if us >= 100 else f"{us:.3g}" if us >= 0.01 else f"{us:.2e}"


def _fmt_ratio(r: float | None) -> str:
    if r is None:
        return ""
    return f"{r:.0f}×" if r >= 100 else f"{r:.1f}×" if r >= 10 else f"{r:.2f}×"


def _cmd(args: list[str]) -> str:
    try:
        return subprocess.run(
            args, check=False, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment() -> list[tuple[str, str]]:
    lscpu = _cmd(["lscpu"])
    model = next(
        (ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if ln.startswith("Model name")),
        platform.processor() or "?",
    )
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]  # type: ignore[index]
        blas_s = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except (TypeError, KeyError, AttributeError):  # older numpy: no dict mode; only informative
        blas_s = "?"
    native = Path(ts._native.__file__)
    built = datetime.datetime.fromtimestamp(native.stat().st_mtime).isoformat(timespec="seconds")
    commit = _cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]) or "?"
    return [
        ("date", datetime.datetime.now().astimezone().isoformat(timespec="seconds")),
        ("machine", f"{model}; {os.cpu_count()} logical CPUs ({platform.machine()})"),
        ("python", platform.python_version()),
        ("numpy", f"{np.__version__} (BLAS: {blas_s})"),
        ("torch", f"{torch.__version__} (`torch.set_num_threads({TORCH_THREADS})`)"),
        ("transformers", transformers.__version__),
        (
            "tokensampler",
            (
                f"{ts.__version__} (`ts.set_num_threads({TS_THREADS})` = default, "
                f"{ts.get_num_threads()} threads; extension built {built}; repo {commit})"
            ),
        ),
        ("OPENBLAS_CORETYPE", os.environ.get("OPENBLAS_CORETYPE", "unset")),
    ]


def render(grid: Grid, res: Results, targets: list[Target]) -> str:
    L: list[str] = []
    L.append("# tokensampler comparison benchmarks")
    L.append("")
    L.append(
        f"Generated by `benches/compare.py` ({grid.name} grid) in one process on the same "
        f"logits; wall time {res.wall:.0f} s. Methodology: `docs/benchmarks.md`."
    )
    L.append("")
    L.append(
        f"Contention: other processes used {res.others_before:.0%} of the CPUs just before "
        f"the run and {res.others_during:.0%} during it (1-min load average "
        f"{res.load[0]:.1f} → {res.load[1]:.1f} on {os.cpu_count()} CPUs)."
        + (
            " **The machine was shared during this run: absolute times are inflated and "
            "ratios are less reliable; re-run on an idle machine.**"
            if res.others_during > 0.10
            else ""
        )
    )
    L.append("")
    L.append("| | |")
    L.append("|---|---|")
    for k, val in environment():
        L.append(f"| {k} | {val} |")
    L.append("")
    L.append("## Targets")
    L.append("")
    L.append("| target | goal | measured | result |")
    L.append("|---|---|---|---|")
    for t in targets:
        verdict = "PASS" if t.ok else "MISS" if t.ok is not None else "–"
        L.append(f"| {t.name} | {t.goal} | {t.measured} | **{verdict}** |")
    L.append("")
    L.append("## Medians")
    L.append("")
    L.append(
        "Cells are **µs per row** (median time of one call ÷ B). In parentheses: for peers, "
        "peer ÷ tokensampler (>1 = tokensampler faster; the torch peers are compared with "
        "tokensampler on the same torch tensor, numpy with tokensampler on the numpy array); "
        "for floors, tokensampler (torch) ÷ floor (≤1 = tokensampler beats the floor). "
        "`n/a`: the implementation has no such feature or dtype; `skipped`: too slow at this "
        f"size (B·V > {grid.peer_max_logits:,} in float32, > {grid.peer_max_logits_bf16:,} "
        "in bfloat16), not run. bf16: tokensampler reads bf16 "
        "natively, nanoGPT lines and floors run in bf16, HF and vLLM-style cast to float32 "
        "first as their samplers do."
    )
    floor_cols = list(FLOORS)
    for dtype in grid.dtypes:
        for p in PIPELINES:
            L.append("")
            L.append(f"### {p.title} — {dtype}")
            L.append("")
            head = ["V", "B"] + [i.label for i in IMPLS] + [FLOORS[f][0] for f in floor_cols]
            L.append("| " + " | ".join(head) + " |")
            L.append("|" + "---:|" * len(head))
            for v in grid.vocab:
                for b in grid.batch:
                    row = [f"{v}", f"{b}"]
                    t_ts = res.sec(p.key, "ts_torch", dtype, v, b)
                    t_np = res.sec(p.key, "ts_np", dtype, v, b)
                    for impl in IMPLS:
                        t = res.get(p.key, impl.key, dtype, v, b)
                        if t.median is None:
                            row.append(t.status)
                            continue
                        s = _us(t.median / b)
                        if impl in PEERS:
                            ref = t_np if impl.key == "numpy" else t_ts
                            rr = _ratio(t.median, ref)
                            s += f" ({_fmt_ratio(rr)})" if rr is not None else ""
                        row.append(s)
                    for fk in floor_cols:
                        tf = res.sec("floor", fk, dtype, v, b)
                        s = _us(tf / b) if tf is not None else "–"
                        rr = _ratio(t_ts, tf)
                        row.append(s + (f" ({_fmt_ratio(rr)})" if rr is not None else ""))
                    L.append("| " + " | ".join(row) + " |")
    L.append("")
    L.append("## Linear fit: time per call ≈ a + s·(B·V), tokensampler")
    L.append("")
    L.append(
        "Ordinary least squares over the grid's (V, B) cells (dominated by the large cells, "
        "where the slope is; `a` is only roughly the per-call overhead). β: exponent of a "
        f"log-log fit over the cells with B·V ≥ {EXPONENT_MIN_LOGITS:,} (time ∝ (B·V)^β; "
        "1 = linear, < 1 = per-logit cost falls with size)."
    )
    L.append("")
    L.append("| pipeline | input | s (ns / logit) | a (µs) | R² | β | cells |")
    L.append("|---|---|---:|---:|---:|---:|---:|")
    for p in PIPELINES:
        for impl, dtype in (
            ("ts_np", "float32"),
            ("ts_torch", "float32"),
            ("ts_torch", "bfloat16"),
        ):
            if dtype not in grid.dtypes:
                continue
            fit = fit_linear(grid, res, p.key, impl, dtype)
            label = "numpy f32" if impl == "ts_np" else f"torch {dtype}"
            L.append(
                f"| {p.key} | {label} | {fit['s_ns']:.3f} | {fit['a_us']:.1f} | "
                f"{fit['r2']:.4f} | {fit['beta']:.2f} | {int(fit['n'])} |"
            )
    if res.threads:
        L.append("")
        L.append("## Thread scaling")
        L.append("")
        cells = res.threads_logits
        L.append(
            f"tokensampler, pipeline (c), float32 numpy input, {cells:,} logits per call; "
            f"medians of {THREAD_ROUNDS} alternating rounds."
        )
        L.append("")
        L.append("| ts.set_num_threads | µs / call | speed-up |")
        L.append("|---:|---:|---:|")
        for n in (1, 2):
            L.append(f"| {n} | {_us(res.threads[n])} | {res.threads[1] / res.threads[n]:.2f}× |")
    L.extend(render_stages(grid, res))
    L.extend(render_history(grid, res))
    L.extend(render_verify(grid, res))
    L.extend(render_bitmask(grid, res))
    if res.warnings:
        L.append("")
        L.append("## Warnings of the correctness guard")
        L.append("")
        L.extend(f"- {w}" for w in res.warnings)
    L.append("")
    return "\n".join(L)


def render_stages(grid: Grid, res: Results) -> list[str]:
    """The section of the issue #15 rows (`run_stages`)."""
    b, f32 = stage_batch(grid), "float32"
    L = ["", "## Stages and orders (issue #15)", ""]
    L.append(
        f"float32, B = {b}, every V of the grid; timed after the grid and the thread scaling, "
        "per V in one interleaved set with `torch.softmax` re-timed among them (its column "
        "here). Cells are µs per row; in parentheses: HF ÷ tokensampler (torch) (>1 = "
        "tokensampler faster), tokensampler (torch) ÷ torch.softmax (≤1 = tokensampler beats "
        "the floor), and for the orders variant ÷ default order. The HF chain is what "
        "`generate` builds: `TemperatureLogitsWarper`, then `TypicalLogitsWarper` / "
        "`EpsilonLogitsWarper` / `EtaLogitsWarper`, softmax, `torch.multinomial`; transformers "
        "has no top-n-sigma or XTC processor (`n/a`)."
    )
    if not HAS_STAGES:
        L += ["", f"**All rows n/a: {NO_STAGES}.**"]
    L.append("")
    L.append(f"### Stages — {f32}")
    L.append("")
    head = ["pipeline", "V", "B"] + [i.label for i in STAGE_IMPLS] + [FLOORS["softmax"][0]]
    L.append("| " + " | ".join(head) + " |")
    L.append("|---|" + "---:|" * (len(head) - 1))
    for p in STAGE_PIPELINES:
        for v in grid.vocab:
            row = [p.title, f"{v}", f"{b}"]
            t_ts = res.sec(p.key, "ts_torch", f32, v, b)
            for impl in STAGE_IMPLS:
                t = res.get(p.key, impl.key, f32, v, b)
                if t.median is None:
                    row.append(t.status)
                    continue
                s = _us(t.median / b)
                rr = _ratio(t.median, t_ts) if impl in PEERS else None
                row.append(s + (f" ({_fmt_ratio(rr)})" if rr is not None else ""))
            row.append(_floor_cell(res, t_ts, v, b))
            L.append("| " + " | ".join(row) + " |")
    for g in ORDER_GROUPS:
        L.append("")
        L.append(f"### {g.stages} — {f32}, tokensampler (torch)")
        L.append("")
        head = ["V", "B"] + [p.short for p in (g.default, *g.variants)] + [FLOORS["softmax"][0]]
        L.append("| " + " | ".join(head) + " |")
        L.append("|" + "---:|" * len(head))
        for v in grid.vocab:
            row = [f"{v}", f"{b}"]
            t_d = res.sec(g.default.key, "ts_torch", f32, v, b)
            for p in (g.default, *g.variants):
                t = res.get(p.key, "ts_torch", f32, v, b)
                if t.median is None:
                    row.append(t.status)
                    continue
                rr = _ratio(t.median, t_d) if p is not g.default else None
                row.append(_us(t.median / b) + (f" ({_fmt_ratio(rr)})" if rr is not None else ""))
            row.append(_floor_cell(res, t_d, v, b))
            L.append("| " + " | ".join(row) + " |")
    return L


def _floor_cell(res: Results, t_ts: float | None, v: int, b: int) -> str:
    """torch.softmax re-timed among the issue #15 rows, and tokensampler ÷ it."""
    t = res.get(STAGE_FLOOR, "softmax", "float32", v, b)
    if t.median is None:
        return t.status
    rr = _ratio(t_ts, t.median)
    return _us(t.median / b) + (f" ({_fmt_ratio(rr)})" if rr is not None else "")


# One fixed style per line, so a line keeps its colour in every panel.
PLOT_STYLE: dict[str, tuple[str, str]] = {
    "ts_np": ("o-", "tab:blue"),
    "ts_torch": ("s-", "tab:orange"),
    "nanogpt": ("^-", "tab:green"),
    "hf": ("v-", "tab:red"),
    "vllm": ("D-", "tab:purple"),
    "numpy": ("x-", "tab:brown"),
    "amax": (":", "black"),
    "softmax": ("--", "tab:gray"),
    "topk": ("-.", "tab:olive"),
}


def write_plot(grid: Grid, res: Results, path: Path, batch: int = TARGET_B) -> None:
    """Time per row vs V (log-log), one panel per pipeline, float32, at B = `batch`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b = batch if batch in grid.batch else max(grid.batch)
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5), sharex=True)
    for ax, p in zip(axes.flat, PIPELINES):
        lines = [(p.key, i.key, i.label) for i in IMPLS]
        lines += [("floor", fk, lab) for fk, (lab, _) in FLOORS.items()]
        for what, key, label in lines:
            pts = [
                (v, t / b * 1e6)
                for v in grid.vocab
                if (t := res.sec(what, key, "float32", v, b)) is not None
            ]
            if pts:
                style, color = PLOT_STYLE[key]
                xs, ys = zip(*pts)
                ax.plot(xs, ys, style, color=color, label=label, markersize=4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(p.short)
        ax.set_ylabel("µs per row")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("vocabulary size V")
    handles: dict[str, Any] = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=5, fontsize=8)
    fig.suptitle(f"tokensampler vs peers: time per row at B={b}, float32 (lower is better)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_json(grid: Grid, res: Results, targets: list[Target]) -> dict[str, Any]:
    return {
        "grid": grid.name,
        "environment": dict(environment()),
        "wall_s": res.wall,
        "others_cpu_share": {"before": res.others_before, "during": res.others_during},
        "loadavg_1min": list(res.load),
        # A table rather than a list of objects: a third of the size in git.
        "timings": {
            "columns": ["what", "impl", "dtype", "V", "B", "median_s", "reps", "status", "spent_s"],
            "rows": [
                [*k, t.median, t.reps, t.status, round(t.spent, 4)] for k, t in res.timings.items()
            ],
        },
        "threads": {str(k): v for k, v in res.threads.items()},
        "threads_logits": res.threads_logits,
        "targets": [t.__dict__ for t in targets],
        "verify_acceptance": res.verify_acceptance,
        "warnings": res.warnings,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="reduced grid, < 2 minutes")
    mode.add_argument("--smoke", action="store_true", help="tiny grid (V=1000, B=2), one rep")
    ap.add_argument("--out-dir", type=Path, default=REPO / "benches" / "results")
    ap.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib)")
    ap.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to SECONDS for other processes to leave the CPUs idle",
    )
    ap.add_argument(
        "--min-time",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds of timed calls per contender and cell (default: the grid's)",
    )
    args = ap.parse_args(argv)
    grid = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.min_time is not None:
        grid = dataclasses.replace(grid, min_time=args.min_time)

    torch.set_num_threads(TORCH_THREADS)
    ts.set_num_threads(TS_THREADS)
    res = Results()
    if args.wait_idle > 0:
        res.others_before = wait_idle(args.wait_idle)
    else:
        meter = CpuMeter()
        time.sleep(0.5)
        res.others_before = meter.others()
    load0 = os.getloadavg()[0]
    meter = CpuMeter()
    t0 = time.perf_counter()
    log(f"compare.py: {grid.name} grid; correctness guard ...")
    res.warnings = (
        check_correctness() + check_stages() + check_history() + check_verify() + check_bitmask()
    )
    for w in res.warnings:
        log(f"  warning: {w}")
    log("timing the grid ...")
    run_grid(grid, res)
    log("thread scaling ...")
    run_threads(grid, res)
    log("stages and orders (issue #15) ..." if HAS_STAGES else f"stages and orders: {NO_STAGES}")
    run_stages(grid, res)
    log("history-aware stages (issue #16) ..." if HAS_HISTORY else f"history stages: {NO_HISTORY}")
    run_history(grid, res)
    log("speculative verification (issue #18) ..." if HAS_VERIFY else f"verify: {NO_VERIFY}")
    res.verify_acceptance = run_verify(grid, res)
    log("token bitmasks (issue #17) ..." if HAS_BITMASK else f"bitmasks: {NO_BITMASK}")
    run_bitmask(grid, res)
    res.wall = time.perf_counter() - t0
    res.others_during = meter.others()
    res.load = (load0, os.getloadavg()[0])
    targets = evaluate_targets(grid, res)
    md = render(grid, res, targets)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "compare.md").write_text(md, encoding="utf-8")
    raw = to_json(grid, res, targets)
    rows = raw["timings"].pop("rows")
    text = json.dumps(raw, indent=1, ensure_ascii=False)
    # One timing per line: readable, and a re-run shows up as a line diff.
    body = ",\n".join("   " + json.dumps(r) for r in rows)
    text = text.replace('"columns": [', f'"rows": [\n{body}\n  ],\n  "columns": [', 1)
    (args.out_dir / "compare.json").write_text(text + "\n", encoding="utf-8")
    if not args.no_plot:
        write_plot(grid, res, args.out_dir / "compare.png")
    print(md)
    log(f"wrote {args.out_dir}/compare.md in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
