"""Text generation: a model from `tokensampler.model`, a KV cache, and the Rust sampler.

>>> from tokensampler.model import load  # doctest: +SKIP
>>> from tokensampler.generate import generate  # doctest: +SKIP
>>> model, tok = load()  # doctest: +SKIP
>>> out = generate(model, tok, "What is the capital of France?", chat=True,
...                temperature=0, max_new_tokens=16)  # doctest: +SKIP
>>> out.texts[0]  # doctest: +SKIP
'The capital of France is Paris.'

Decisions (docs/model.md has the long form):

- Without `params`, sampling starts from what the model recommends
  (`model.generation_defaults`, read at load time), else temperature 1.0 with everything
  else off; keyword arguments always win.
- A batch of prompts is left-padded; the model keeps per-row positions and masks the padding,
  so every row generates exactly what it would generate alone (up to float rounding).
- The penalties see `history` = prompt ids + generated ids (`penalize_prompt=True`, what HF
  does for `repetition_penalty`); with `penalize_prompt=False` only generated ids (what vLLM
  and OpenAI do for the frequency / presence penalties).
- A row stops at an eos id (finish_reason "eos"; the id is kept in `token_ids`, not in the
  text), at a stop string ("stop"; the text is cut before the stop string, the ids keep the
  token that completed it) or after `max_new_tokens` ("length"); with `on_invalid="skip"`, a
  row left with nothing to sample (NaN logits, every token banned) stops there ("invalid",
  no token added) while the other rows go on as if alone.
- Every logit row goes through `tokensampler.Sampler` (Rust); on CUDA only the (B, V)
  last-position logits cross to the host, the sampled ids come back on the device.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .model.common import DecoderLM
from .model.tokenizer import IncrementalDecoder, Tokenizer
from .params import SamplingParams
from .sampling import Sampler, _params
from .words import resolve_strings

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .params import SamplingKwargs

Prompt = str | Sequence[int]
Prompts = str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]] | torch.Tensor
CACHE_ROUND = 256  # KV caches hold a multiple of this many slots (capped at the context)


def sampling_params(
    model: DecoderLM, params: SamplingParams | None = None, **overrides: Any
) -> SamplingParams:
    """The `SamplingParams` a generate loop uses: `params` or, when None, the settings the
    model recommends (`model.generation_defaults`, e.g. temperature 0.2 and top-p 0.9 for the
    embedded SmolLM2; every other field off), with the keyword `overrides` on top (an
    explicit None switches a stage off).

    >>> sampling_params(model, top_p=0.5)  # doctest: +SKIP
    SamplingParams(..., temperature=0.2, top_k=None, top_p=0.5, ...)
    """
    if params is None:
        params = SamplingParams(**(getattr(model, "generation_defaults", None) or {}))
    return _params(params, overrides)


@dataclass
class TokenEvent:
    """One generated token of one row, as the streaming form yields it.

    `text` is the new text this token completes; it may be "" (half a UTF-8 character, or
    text held back because it could be the start of a stop string). Joining the `text` of
    a row's events gives exactly that row's final text.
    """

    row: int
    token_id: int  # -1 when the row ends as "invalid" (on_invalid="skip")
    text: str
    # log-probability under the final (filtered) distribution; the unprocessed softmax's
    # with logprobs_mode="raw"
    logprob: float
    finish_reason: str | None = None  # "eos" | "stop" | "length" | "invalid" on the last token
    # the log-probabilities of `logprob_token_ids` at this step, when those were asked for
    token_logprobs: list[float] | None = None


@dataclass
class GenerateStats:
    prompt_tokens: int = 0  # sum over rows, padding excluded
    new_tokens: int = 0  # sum over rows of generated tokens (eos included)
    steps: int = 0  # forward passes after the prefill
    time_to_first_token: float = 0.0  # seconds from the call to the first sampled token
    total_time: float = 0.0  # seconds, tokenization to last token
    sample_time: float = 0.0  # seconds inside the sampler (Rust kernels + adapters)

    @property
    def tokens_per_second(self) -> float:
        """New tokens per second of the whole call (prefill included)."""
        return self.new_tokens / self.total_time if self.total_time > 0 else 0.0

    @property
    def sample_share(self) -> float:
        """Fraction of the wall time spent sampling."""
        return self.sample_time / self.total_time if self.total_time > 0 else 0.0


@dataclass
class Generation:
    """What `generate` returns; always lists with one entry per prompt row."""

    texts: list[str]
    token_ids: list[list[int]]
    logprobs: list[list[float]]
    finish_reasons: list[str]
    prompt_token_ids: list[list[int]]
    stats: GenerateStats = field(default_factory=GenerateStats)
    # with `logprob_token_ids`: per row, per generated token, the log-probabilities of those
    # ids (`logprobs_mode` applies); None when they were not asked for
    token_logprobs: list[list[list[float]]] | None = None


class GenerationStream:
    """Iterator of `TokenEvent`s; `result` holds the `Generation` once it is exhausted."""

    def __init__(self, events: Iterator[TokenEvent], box: list[Generation]) -> None:
        self._events = events
        self._box = box

    def __iter__(self) -> GenerationStream:
        return self

    def __next__(self) -> TokenEvent:
        return next(self._events)

    @property
    def result(self) -> Generation:
        if not self._box:
            raise RuntimeError("the stream has not finished yet")
        return self._box[0]

    def close(self) -> None:
        """Stop generating (frees the cache); `result` stays unset."""
        close = getattr(self._events, "close", None)
        if close is not None:
            close()


# ==============================================================================================
# prompts
# ==============================================================================================


def _prompt_ids(
    tokenizer: Tokenizer | None,
    prompts: Prompts,
    chat: bool,
    system: str | None,
) -> list[list[int]]:
    """Token ids per row from a string, strings, a list of ids, lists of ids, or a tensor."""
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() == 1:
            prompts = prompts[None]
        if prompts.dim() != 2 or prompts.dtype not in (torch.int64, torch.int32):
            raise ValueError("a tensor prompt must be (T,) or (B, T) integer token ids")
        rows: list[Prompt] = [r for r in prompts.tolist()]
    elif isinstance(prompts, str):
        rows = [prompts]
    elif len(prompts) > 0 and all(isinstance(p, (int, np.integer)) for p in prompts):
        rows = [list(prompts)]  # type: ignore[arg-type]
    else:
        rows = list(prompts)  # type: ignore[arg-type]
    if not rows:
        raise ValueError("no prompts given")
    out: list[list[int]] = []
    for p in rows:
        if isinstance(p, str):
            if tokenizer is None:
                raise ValueError("text prompts need a tokenizer")
            if chat:
                messages = [{"role": "system", "content": system}] if system else []
                messages.append({"role": "user", "content": p})
                ids = tokenizer.encode_chat(messages)
            else:
                ids = tokenizer.encode(p)
        else:
            if chat:
                raise ValueError("chat=True needs text prompts, not token ids")
            ids = [int(i) for i in p]
        if not ids:
            bos = tokenizer.bos_token_id if tokenizer is not None else None
            if bos is None:
                raise ValueError("empty prompt (and the tokenizer has no BOS token to start from)")
            ids = [bos]
        out.append(ids)
    return out


def prompt_token_ids(
    tokenizer: Tokenizer | None,
    prompts: Prompts,
    *,
    chat: bool = False,
    system: str | None = None,
) -> list[list[int]]:
    """The token ids `generate` / `stream` feed the model for `prompts`, one list per row
    (chat template applied with chat=True; an empty prompt is [BOS])."""
    return _prompt_ids(tokenizer, prompts, chat, system)


def _cache_len(prompt_tokens: int, max_new_tokens: int) -> int:
    # Rounded up: a compiled decode step (`compile_decode`) is specialised to the cache
    # length, so nearby lengths share a graph. Eager steps only read the filled slots.
    return -(-(prompt_tokens + max_new_tokens) // CACHE_ROUND) * CACHE_ROUND


@torch.inference_mode()
def warm_up(
    model: DecoderLM, prompt_tokens: int, max_new_tokens: int, batch_size: int = 1
) -> float:
    """Run one decode step on a dummy sequence, with a KV cache sized as `generate` sizes it
    for `batch_size` unpadded prompts of `prompt_tokens` tokens and `max_new_tokens`; returns
    the seconds taken. After `model.compile_decode()` this is where the step compiles (or
    loads from inductor's cache), so that a following `generate` of that shape times only
    generation. Eager models just run the step (milliseconds)."""
    t0 = time.perf_counter()
    n = _cache_len(prompt_tokens, max_new_tokens)
    cache = model.new_kv_cache(batch_size, n)
    # A 2-token prefill, then a one-token step at slot 2: the step's slot is dynamic (a
    # prefill of one token would run the compiled step at slot 0, which dynamo specialises).
    idx = torch.zeros(batch_size, 2, dtype=torch.long, device=model.device)
    model(idx, kv_cache=cache, last_only=True)
    model(idx[:, :1], kv_cache=cache)
    return time.perf_counter() - t0


def _holdback(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of a stop string:
    that much text may still turn into a stop string and must not be streamed yet."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best


# ==============================================================================================
# the loop
# ==============================================================================================


def stream(
    model: DecoderLM,
    tokenizer: Tokenizer | None,
    prompts: Prompts,
    *,
    params: SamplingParams | None = None,
    max_new_tokens: int = 64,
    stop: str | Sequence[str] | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    ignore_eos: bool = False,
    chat: bool = False,
    system: str | None = None,
    penalize_prompt: bool = True,
    **overrides: Unpack[SamplingKwargs],
) -> GenerationStream:
    """Generate, yielding one `TokenEvent` per row per token as soon as it is sampled.

    Arguments are those of `generate`. The `Generation` is in `.result` afterwards.

    >>> s = stream(model, tok, "Once upon a time", max_new_tokens=8)  # doctest: +SKIP
    >>> for ev in s: print(ev.text, end="", flush=True)  # doctest: +SKIP
    >>> s.result.stats.tokens_per_second  # doctest: +SKIP
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    t0 = time.perf_counter()
    ids = _prompt_ids(tokenizer, prompts, chat, system)
    stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
    if stops and tokenizer is None:
        raise ValueError("stop strings need a tokenizer")
    if eos_token_id is None:
        eos = set(tokenizer.eos_token_ids) if tokenizer is not None else set()
    elif isinstance(eos_token_id, int):
        eos = {eos_token_id}
    else:
        eos = {int(i) for i in eos_token_id}
    if ignore_eos:
        eos = set()
    P = max(len(r) for r in ids)
    if P + max_new_tokens > model.max_seq_len:
        raise ValueError(
            f"prompt ({P} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
            f"context length {model.max_seq_len}"
        )
    # Strings (bad words, DRY breakers; llama.cpp's default breakers when DRY is on) become
    # token ids of this tokenizer.
    sp = resolve_strings(sampling_params(model, params, **overrides), tokenizer)
    sampler = Sampler(sp, logprobs=True)
    box: list[Generation] = []
    events = _loop(
        model, tokenizer, ids, sampler, max_new_tokens, eos, stops, penalize_prompt,
        sp.needs_history, t0, box,
    )  # fmt: skip
    return GenerationStream(events, box)


@torch.inference_mode()
def _loop(
    model: DecoderLM,
    tokenizer: Tokenizer | None,
    ids: list[list[int]],
    sampler: Sampler,
    max_new_tokens: int,
    eos: set[int],
    stops: list[str],
    penalize_prompt: bool,
    penalties: bool,
    t0: float,
    box: list[Generation],
) -> Iterator[TokenEvent]:
    B, P = len(ids), max(len(r) for r in ids)
    device = model.device
    stats = GenerateStats(prompt_tokens=sum(len(r) for r in ids))
    # Left padding: pad slots hold token 0 (any valid id; the mask hides them) in the model
    # input and -1 (ignored) in the penalty history.
    idx = torch.zeros(B, P, dtype=torch.long)
    history = np.full((B, P + max_new_tokens), -1, dtype=np.int64) if penalties else None
    for b, r in enumerate(ids):
        idx[b, P - len(r) :] = torch.tensor(r, dtype=torch.long)
        if history is not None and penalize_prompt:
            history[b, P - len(r) : P] = r
    pad = torch.tensor([P - len(r) for r in ids], dtype=torch.long)

    out_ids: list[list[int]] = [[] for _ in range(B)]
    out_lps: list[list[float]] = [[] for _ in range(B)]
    want_tls = sampler.params.logprob_token_ids is not None
    out_tls: list[list[list[float]]] = [[] for _ in range(B)]
    # on_invalid="skip": a row with nothing to sample gets id -1, which must not reach the model
    skip = sampler.params.on_invalid == "skip"
    texts = [""] * B  # decoded text so far (before any stop-string cut)
    emitted = [0] * B  # characters of texts[b] already streamed
    finish: list[str | None] = [None] * B
    decoders = [IncrementalDecoder(tokenizer) for _ in range(B)] if tokenizer else []

    def finished() -> Generation:
        stats.total_time = time.perf_counter() - t0
        for b in range(B):
            if finish[b] is None:  # max_new_tokens == 0
                finish[b] = "length"
        return Generation(
            texts=[texts[b][: emitted[b]] for b in range(B)],
            token_ids=out_ids,
            logprobs=out_lps,
            finish_reasons=[f or "length" for f in finish],
            prompt_token_ids=ids,
            stats=stats,
            token_logprobs=out_tls if want_tls else None,
        )

    if max_new_tokens == 0:
        box.append(finished())
        return

    cache = model.new_kv_cache(B, _cache_len(P, max_new_tokens))
    logits = model(idx.to(device), kv_cache=cache, pad=pad.to(device), last_only=True)
    for step in range(max_new_tokens):
        ts = time.perf_counter()
        res = sampler(logits[:, -1, :], history=history)  # (B, V) logits -> (B,) ids
        stats.sample_time += time.perf_counter() - ts
        next_ids = res.ids  # (B,) on the model's device
        id_list = next_ids.tolist()
        lp_list = res.logprobs.tolist()
        tl_list = res.token_logprobs.tolist() if want_tls else None
        if step == 0:
            stats.time_to_first_token = time.perf_counter() - t0
        last_step = step == max_new_tokens - 1
        for b in range(B):
            if finish[b] is not None:
                continue
            tok, lp = int(id_list[b]), float(lp_list[b])
            tls = [float(v) for v in tl_list[b]] if tl_list is not None else None
            reason: str | None = None
            if tok < 0:  # on_invalid="skip" and nothing to sample: the row ends, no token
                reason = "invalid"
            else:
                out_ids[b].append(tok)
                out_lps[b].append(lp)
                if tls is not None:
                    out_tls[b].append(tls)
                stats.new_tokens += 1
                if history is not None:
                    history[b, P + step] = tok
                if tok in eos:
                    reason = "eos"
                elif decoders:
                    texts[b] += decoders[b].push(tok)
            text = texts[b]
            cut = len(text)
            if stops and reason is None:
                # Only the tail can hold a new match: the old text was checked already.
                lo = max(0, emitted[b] - max(len(s) for s in stops))
                hits = [i for i in (text.find(s, lo) for s in stops) if i >= 0]
                if hits:
                    cut, reason = min(hits), "stop"
                    texts[b] = text = text[:cut]
            if reason is None and last_step:
                reason = "length"
            if reason is None:
                if decoders:
                    cut = len(text) - (_holdback(text, stops) if stops else 0)
            elif decoders and reason != "stop":
                texts[b] = text = text + decoders[b].flush()
                cut = len(text)
            piece = text[emitted[b] : cut] if cut > emitted[b] else ""
            emitted[b] = max(emitted[b], cut)
            finish[b] = reason
            yield TokenEvent(row=b, token_id=tok, text=piece, logprob=lp, finish_reason=reason,
                             token_logprobs=tls)  # fmt: skip
        if all(f is not None for f in finish):
            break
        if skip:
            next_ids = next_ids.clamp(min=0)  # an ended row's input is never read again
        logits = model(next_ids.view(B, 1), kv_cache=cache)  # (B, 1, V)
        stats.steps += 1
    box.append(finished())


def generate(
    model: DecoderLM,
    tokenizer: Tokenizer | None,
    prompts: Prompts,
    *,
    params: SamplingParams | None = None,
    max_new_tokens: int = 64,
    stop: str | Sequence[str] | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    ignore_eos: bool = False,
    chat: bool = False,
    system: str | None = None,
    penalize_prompt: bool = True,
    **overrides: Unpack[SamplingKwargs],
) -> Generation:
    """Generate continuations of one or more prompts.

    Args:
        model, tokenizer: from `tokensampler.model.load` (tokenizer may be None for id
            prompts without stop strings; texts are then empty).
        prompts: a string, a list of strings, a list of token ids, a list of lists of ids,
            or a (T,) / (B, T) integer tensor. Rows may have different lengths.
        max_new_tokens: tokens to generate per row at most.
        params: a `tokensampler.SamplingParams`; None starts from the model's recommended
            settings (`model.generation_defaults`, e.g. temperature 0.2 and top_p 0.9 for
            the embedded SmolLM2), else temperature 1.0 with every other stage off.
        **overrides: `SamplingParams` fields on top of that (temperature=0 is greedy; an
            explicit None switches a stage off): scalars or one value per row. seed: None
            (random), an int, or one int per row (a row's draws then do not depend on the
            other rows).
        stop: stop string(s); the text is cut before the first one found.
        eos_token_id: ids that end a row; default the tokenizer's eos ids.
        ignore_eos: never stop at eos (benchmarks).
        chat: render each text prompt as a user message with the model's chat template.
        system: system message for chat (default: whatever the template does).
        penalize_prompt: the penalties also count the prompt's tokens (HF's convention).

    Returns:
        A `Generation`: texts, token_ids, logprobs, finish_reasons, prompt_token_ids, stats
        and (with `logprob_token_ids`) token_logprobs; lists with one entry per row even for
        a single prompt.
    """
    s = stream(
        model, tokenizer, prompts, params=params, max_new_tokens=max_new_tokens, stop=stop,
        eos_token_id=eos_token_id, ignore_eos=ignore_eos, chat=chat, system=system,
        penalize_prompt=penalize_prompt, **overrides,
    )  # fmt: skip
    for _ in s:
        pass
    return s.result
