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
- Structured output (`json_schema=`, `regex=`, `grammar=`; tokensampler.structured): each
  constrained row's matcher fills its words of a (B, ceil(V/32)) token bitmask before every
  step (free rows are all ones) and the sampler applies it with the bans, before any other
  stage; the sampled token then advances the matcher. A row whose grammar is complete (only
  eos could follow) ends there with finish_reason "stop", without an eos token; an eos the
  grammar allowed ends it as "eos", as usual.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from .model.common import DecoderLM
from .model.tokenizer import IncrementalDecoder, Tokenizer
from .params import SamplingParams
from .sampling import SampleOutput, Sampler, _params
from .speculative import DraftModel, PromptLookup, SpeculativeStep
from .structured import BackendName, JsonSchemas, RowMasks, get_backend, row_constraints
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
    # "eos" | "stop" (a stop string, or the row's grammar complete) | "length" | "invalid",
    # on the last token
    finish_reason: str | None = None
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
    drafted: int = 0  # speculative decoding: drafted tokens verified (summed over rows)
    accepted: int = 0  # of those, accepted
    # structured output: seconds in the grammar backend (filling the constrained rows' mask
    # words, advancing their matchers), and the steps that had a mask
    mask_time: float = 0.0
    mask_steps: int = 0

    @property
    def mask_ms_per_step(self) -> float:
        """Milliseconds in the grammar backend per masked step (0 without structured output)."""
        return 1000 * self.mask_time / self.mask_steps if self.mask_steps else 0.0

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tokens (0 without speculation)."""
        return self.accepted / self.drafted if self.drafted else 0.0

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
    speculative: Literal["prompt_lookup"] | None = None,
    draft_model: DecoderLM | None = None,
    num_speculative_tokens: int = 8,
    prompt_lookup_max_ngram: int = 2,
    json_schema: JsonSchemas = None,
    regex: str | Sequence[str | None] | None = None,
    grammar: str | Sequence[str | None] | None = None,
    structured_backend: BackendName = "llguidance",
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
    sampler._lean = True  # the loop reads ids and log-probabilities, not ranks or raw ones
    box: list[Generation] = []
    drafter = _drafter(sp, speculative, draft_model, num_speculative_tokens,
                       prompt_lookup_max_ngram)  # fmt: skip
    masks = _row_masks(model, tokenizer, len(ids), eos, sp, json_schema, regex, grammar,
                       structured_backend)  # fmt: skip
    if masks is not None and drafter is not None:
        raise ValueError(
            "structured output (json_schema / regex / grammar) does not support speculative "
            "decoding: give one or the other"
        )
    if drafter is not None:
        events = _speculative_loop(
            model, tokenizer, ids, sampler, max_new_tokens, eos, stops, penalize_prompt,
            sp.needs_history, t0, box, drafter, num_speculative_tokens,
        )  # fmt: skip
        return GenerationStream(events, box)
    events = _loop(
        model, tokenizer, ids, sampler, max_new_tokens, eos, stops, penalize_prompt,
        sp.needs_history, t0, box, masks,
    )  # fmt: skip
    return GenerationStream(events, box)


def _row_masks(
    model: DecoderLM,
    tokenizer: Tokenizer | None,
    b: int,
    eos: set[int],
    sp: SamplingParams,
    json_schema: JsonSchemas,
    regex: str | Sequence[str | None] | None,
    grammar: str | Sequence[str | None] | None,
    backend: str,
) -> RowMasks | None:
    """The batch's structured-output masks, or None when no row is constrained. Everything
    is checked here, before the first forward pass: the constraints (compiled once each),
    the backend, and that the tokenizer fits the model (tokensampler.structured)."""
    constraints = row_constraints(b, json_schema=json_schema, regex=regex, grammar=grammar)
    if all(c is None for c in constraints):
        return None
    if tokenizer is None:
        raise ValueError("structured output (json_schema / regex / grammar) needs the tokenizer")
    # The backend's stop tokens are the loop's eos ids (the tokenizer's when eos is ignored:
    # the grammar still needs an end); the tokenizer's own set shares the cached backend.
    stop = None if not eos or eos == set(tokenizer.eos_token_ids) else sorted(eos)
    be = get_backend(backend, tokenizer, model.vocab_size, stop)
    return RowMasks(be, constraints, empty_is_error=sp.on_invalid == "raise")


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
    masks: RowMasks | None = None,
) -> Iterator[TokenEvent]:
    from .device import BRIDGE  # the one device bridge (copies, pinned buffers, syncs)

    B, P = len(ids), max(len(r) for r in ids)
    device = model.device
    stats = GenerateStats(prompt_tokens=sum(len(r) for r in ids))
    idx, pad, history = _prompt_block(ids, max_new_tokens, penalties, penalize_prompt)
    want_tls = sampler.params.logprob_token_ids is not None
    rows = _Rows(ids, tokenizer, history, eos, stops, max_new_tokens, stats, want_tls)
    # on_invalid="skip": a row with nothing to sample gets id -1, which must not reach the model
    skip = sampler.params.on_invalid == "skip"
    if max_new_tokens == 0:
        box.append(rows.result(t0))
        return

    cache = model.new_kv_cache(B, _cache_len(P, max_new_tokens))
    logits = model(idx.to(device), kv_cache=cache, pad=pad.to(device), last_only=True)
    for step in range(max_new_tokens):
        mask = None
        running = [f is None for f in rows.finish]
        if masks is not None and masks.constrains(running):
            # Before the logits' copy (and its sync): on a GPU the mask is computed on the
            # host while the forward pass still runs. Once the constrained rows have ended,
            # the free rows left need no mask.
            tm = time.perf_counter()
            mask = masks.fill(running)
            stats.mask_time += time.perf_counter() - tm
            stats.mask_steps += 1
        ts = time.perf_counter()
        # Per step, through the device bridge: the (B, V) logits go down in one copy (their
        # own dtype) and one sync, the sampler reads them there and its outputs stay on the
        # host with the bookkeeping; only the next input ids go up, in one copy, below.
        host_logits = BRIDGE.to_host(logits[:, -1, :])
        # (B, V) logits -> (B,) ids, on the host; the mask is applied first, with the bans
        res = sampler(host_logits, history=history, token_bitmask=mask)
        stats.sample_time += time.perf_counter() - ts
        id_arr = res.ids.numpy()
        id_list = id_arr.tolist()
        lp_list = res.logprobs.tolist()
        tl_list = res.token_logprobs.tolist() if want_tls else None
        if step == 0:
            stats.time_to_first_token = time.perf_counter() - t0
        for b in range(B):
            if rows.finish[b] is None:
                tls = [float(v) for v in tl_list[b]] if tl_list is not None else None
                tok = int(id_list[b])
                complete = False
                if masks is not None and tok >= 0 and tok not in eos:
                    tm = time.perf_counter()
                    complete = masks.advance(b, tok)
                    stats.mask_time += time.perf_counter() - tm
                yield rows.push(b, tok, float(lp_list[b]), tls, complete)
        if all(f is not None for f in rows.finish):
            break
        if skip:
            id_arr = np.maximum(id_arr, 0)  # an ended row's input is never read again
        ts = time.perf_counter()
        next_ids = BRIDGE.to_device([id_arr.reshape(B, 1)], device)[0]
        stats.sample_time += time.perf_counter() - ts
        logits = model(next_ids, kv_cache=cache)  # (B, 1, V)
        stats.steps += 1
    box.append(rows.result(t0))


def _prompt_block(
    ids: list[list[int]], max_new_tokens: int, penalties: bool, penalize_prompt: bool
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
    """The left-padded prompts (B, P), their padding (B,), and the history for the stages
    that read it (B, P + max_new_tokens, -1 where empty) or None.

    Pad slots hold token 0 in the model input (any valid id: the mask hides them) and -1
    (ignored) in the history.
    """
    b, p = len(ids), max(len(r) for r in ids)
    idx = torch.zeros(b, p, dtype=torch.long)
    history = np.full((b, p + max_new_tokens), -1, dtype=np.int64) if penalties else None
    for i, r in enumerate(ids):
        idx[i, p - len(r) :] = torch.tensor(r, dtype=torch.long)
        if history is not None and penalize_prompt:
            history[i, p - len(r) : p] = r
    pad = torch.tensor([p - len(r) for r in ids], dtype=torch.long)
    return idx, pad, history


def _drafter(
    sp: SamplingParams,
    speculative: str | None,
    draft_model: DecoderLM | None,
    k: int,
    max_ngram: int,
) -> PromptLookup | DraftModel | None:
    """The drafter `stream`'s speculative options ask for, after checking they fit."""
    if speculative is None and draft_model is None:
        return None
    if speculative not in (None, "prompt_lookup"):
        raise ValueError(f"speculative must be 'prompt_lookup' or None, got {speculative!r}")
    if speculative is not None and draft_model is not None:
        raise ValueError("give speculative='prompt_lookup' or a draft_model, not both")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"num_speculative_tokens must be a whole number >= 1, got {k!r}")
    refused = {
        "mirostat": sp.mirostat_on,
        "logprob_token_ids": sp.logprob_token_ids is not None,
        'logprobs_mode="raw"': sp.logprobs_mode != "processed",
        'on_invalid="skip"': sp.on_invalid != "raise",
    }
    on = [name for name, is_on in refused.items() if is_on]
    if on:
        raise ValueError(f"speculative decoding does not support {', '.join(on)}")
    if draft_model is not None:
        return DraftModel(draft_model)
    return PromptLookup(max_ngram)


class _Rows:
    """The per-row bookkeeping of a generate loop: ids, log-probabilities, history for the
    penalties, decoded text, stop strings, finish reasons, and the `TokenEvent` of every
    token, one token at a time (the speculative loop emits several per step)."""

    def __init__(
        self,
        ids: list[list[int]],
        tokenizer: Tokenizer | None,
        history: np.ndarray | None,
        eos: set[int],
        stops: list[str],
        max_new_tokens: int,
        stats: GenerateStats,
        want_token_logprobs: bool = False,
    ) -> None:
        b = len(ids)
        self.prompt_ids, self.history, self.eos, self.stops = ids, history, eos, stops
        self.p = max(len(r) for r in ids)
        self.max_new_tokens, self.stats = max_new_tokens, stats
        self.out_ids: list[list[int]] = [[] for _ in range(b)]
        self.out_lps: list[list[float]] = [[] for _ in range(b)]
        self.want_tls = want_token_logprobs
        self.out_tls: list[list[list[float]]] = [[] for _ in range(b)]
        self.texts = [""] * b  # decoded text so far (before any stop-string cut)
        self.emitted = [0] * b  # characters of texts[b] already streamed
        self.finish: list[str | None] = [None] * b
        self.decoders = [IncrementalDecoder(tokenizer) for _ in range(b)] if tokenizer else []

    def push(
        self, b: int, tok: int, lp: float, tls: list[float] | None = None, complete: bool = False
    ) -> TokenEvent:
        """Row b's next token (-1: nothing to sample, under on_invalid="skip"): its event,
        with the finish reason when the row ends here. `complete`: the row's grammar is
        complete with this token (structured output), so the row ends with "stop"."""
        reason: str | None = None
        if tok < 0:  # the row ends, no token
            reason = "invalid"
        else:
            self.out_ids[b].append(tok)
            self.out_lps[b].append(lp)
            if tls is not None:
                self.out_tls[b].append(tls)
            self.stats.new_tokens += 1
            if self.history is not None:
                self.history[b, self.p + len(self.out_ids[b]) - 1] = tok
            if tok in self.eos:
                reason = "eos"
            elif self.decoders:
                self.texts[b] += self.decoders[b].push(tok)
        text = self.texts[b]
        cut = len(text)
        stops = self.stops
        stopped_by_string = False
        if stops and reason is None:
            # Only the tail can hold a new match: the old text was checked already.
            lo = max(0, self.emitted[b] - max(len(s) for s in stops))
            hits = [i for i in (text.find(s, lo) for s in stops) if i >= 0]
            if hits:
                cut, reason, stopped_by_string = min(hits), "stop", True
                self.texts[b] = text = text[:cut]
        if reason is None and complete:
            reason = "stop"  # before "length": the output is whole even on the last token
        if reason is None and len(self.out_ids[b]) >= self.max_new_tokens:
            reason = "length"
        if reason is None:
            if self.decoders:
                cut = len(text) - (_holdback(text, stops) if stops else 0)
        elif self.decoders and not stopped_by_string:
            self.texts[b] = text = text + self.decoders[b].flush()
            cut = len(text)
        piece = text[self.emitted[b] : cut] if cut > self.emitted[b] else ""
        self.emitted[b] = max(self.emitted[b], cut)
        self.finish[b] = reason
        return TokenEvent(row=b, token_id=tok, text=piece, logprob=lp, finish_reason=reason,
                          token_logprobs=tls)  # fmt: skip

    def sequences(self) -> list[list[int]]:
        """Each row's prompt plus what it generated."""
        return [p + o for p, o in zip(self.prompt_ids, self.out_ids)]

    def result(self, t0: float) -> Generation:
        self.stats.total_time = time.perf_counter() - t0
        b = len(self.out_ids)
        return Generation(
            texts=[self.texts[i][: self.emitted[i]] for i in range(b)],
            token_ids=self.out_ids,
            logprobs=self.out_lps,
            finish_reasons=[f or "length" for f in self.finish],
            prompt_token_ids=self.prompt_ids,
            stats=self.stats,
            token_logprobs=self.out_tls if self.want_tls else None,
        )


@torch.inference_mode()
def _speculative_loop(
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
    drafter: PromptLookup | DraftModel,
    k: int,
) -> Iterator[TokenEvent]:
    """The generate loop with speculative steps (tokensampler.speculative): the first token
    is sampled from the prefill as usual, then every step verifies drafts."""
    b, p = len(ids), max(len(r) for r in ids)
    device = model.device
    stats = GenerateStats(prompt_tokens=sum(len(r) for r in ids))
    idx, pad, history = _prompt_block(ids, max_new_tokens, penalties, penalize_prompt)
    rows = _Rows(ids, tokenizer, history, eos, stops, max_new_tokens, stats)
    if max_new_tokens == 0:
        box.append(rows.result(t0))
        return
    cache_len = _cache_len(p, max_new_tokens + k + 1)
    cache = model.new_kv_cache(b, cache_len)
    if isinstance(drafter, DraftModel):
        drafter.start(b, cache_len, pad.to(drafter.model.device))
    logits = model(idx.to(device), kv_cache=cache, pad=pad.to(device), last_only=True)
    ts_ = time.perf_counter()
    first = sampler(logits[:, -1, :], history=history)
    assert isinstance(first, SampleOutput)
    stats.sample_time += time.perf_counter() - ts_
    stats.time_to_first_token = time.perf_counter() - t0
    spec = SpeculativeStep(model, cache, sampler.params, sampler.seed, drafter, k)
    emitted = [[(int(t), float(lp))] for t, lp in zip(first.ids.tolist(), first.logprobs.tolist())]
    while True:
        for row in range(b):
            for tok, lp in emitted[row]:
                if rows.finish[row] is None:
                    yield rows.push(row, tok, lp)
        if all(f is not None for f in rows.finish):
            break
        finished = [f is not None for f in rows.finish]
        emitted = spec.step(_full(idx, rows), rows.sequences(), finished, history)
        stats.steps += 1
    stats.sample_time += spec.stats.verify_time
    stats.drafted, stats.accepted = spec.stats.drafted, spec.stats.accepted
    box.append(rows.result(t0))


def _full(idx: torch.Tensor, rows: _Rows) -> torch.Tensor:
    """The left-padded prompts plus every row's generated ids (rows of one length: the
    speculative loop keeps running rows in step)."""
    n = max(len(o) for o in rows.out_ids)
    gen = torch.tensor([o + [0] * (n - len(o)) for o in rows.out_ids], dtype=torch.long)
    return torch.cat([idx, gen.view(len(rows.out_ids), n)], dim=1)


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
    speculative: Literal["prompt_lookup"] | None = None,
    draft_model: DecoderLM | None = None,
    num_speculative_tokens: int = 8,
    prompt_lookup_max_ngram: int = 2,
    json_schema: JsonSchemas = None,
    regex: str | Sequence[str | None] | None = None,
    grammar: str | Sequence[str | None] | None = None,
    structured_backend: BackendName = "llguidance",
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
        speculative: "prompt_lookup" drafts by matching the text's last n-gram (up to
            `prompt_lookup_max_ngram` tokens) against the prompt and the text so far;
            `draft_model` (another `tokensampler.model` with the same vocabulary) drafts
            instead. Either way `num_speculative_tokens` (K) drafts are verified per forward
            pass with `tokensampler.verify`: the text has exactly the plain loop's
            distribution (greedy: the plain greedy tokens), and `stats` counts the drafted
            and accepted tokens. Not with mirostat, `logprob_token_ids`,
            ``logprobs_mode="raw"`` or ``on_invalid="skip"``, nor with structured output.
        json_schema, regex, grammar: structured output (tokensampler.structured): a JSON
            schema (a dict or its JSON text), a regular expression (the whole output matches
            it), or a grammar (Lark when it defines ``start:``, else GBNF). Each is one value
            for every row or a list with one per row, None for a free row; a row takes at
            most one. A constrained row ends with finish_reason "stop" when its grammar is
            complete (or "eos" when it samples an eos the grammar allows); a constraint the
            backend rejects or that no token of the tokenizer can start raises
            `tokensampler.structured.StructuredOutputError` (a ValueError) naming it, before
            the first forward pass.
        structured_backend: "llguidance" (default; the ``model`` extra) or "xgrammar" (the
            ``structured`` extra).

    Returns:
        A `Generation`: texts, token_ids, logprobs, finish_reasons, prompt_token_ids, stats
        and (with `logprob_token_ids`) token_logprobs; lists with one entry per row even for
        a single prompt.
    """
    s = stream(
        model, tokenizer, prompts, params=params, max_new_tokens=max_new_tokens, stop=stop,
        eos_token_id=eos_token_id, ignore_eos=ignore_eos, chat=chat, system=system,
        penalize_prompt=penalize_prompt, speculative=speculative, draft_model=draft_model,
        num_speculative_tokens=num_speculative_tokens,
        prompt_lookup_max_ngram=prompt_lookup_max_ngram, json_schema=json_schema, regex=regex,
        grammar=grammar, structured_backend=structured_backend, **overrides,
    )  # fmt: skip
    for _ in s:
        pass
    return s.result
