"""`SamplingParams`: every sampling parameter in one frozen, validated value.

Every entry point takes one (`sample`, `probs`, `Sampler`, `tokensampler.generate`,
`tokensampler.hf`, the CLI), and their keyword forms build one. The kernel parameters
(temperature ... presence_scale) are the columns of the Rust parameter table
(`rust/params.rs`, read here through `_native.PARAMS`): their "off" values, whole-number
rule and help come from there, and their ranges are checked by the same Rust code that checks
per-row values in a call (`_native.check_params`), so a bad value raises `SamplingError` at
construction, naming the parameter.

Converters take the parameter names of other engines: `from_hf`, `from_vllm`, `from_openai`,
`from_llama_cpp`. Each refuses by name a field it cannot honour instead of dropping it.

>>> p = SamplingParams(temperature=0.7, top_p=0.9)
>>> p.replace(top_k=40).top_k
40
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol, TypedDict

import numpy as np

from . import _native

__all__ = ["KernelKwargs", "SamplingKwargs", "SamplingParams"]


class _SupportsArray(Protocol):
    """numpy arrays and torch tensors (per-row values): anything with ``__array__``."""

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray: ...


# A kernel parameter: a scalar, or one value per row (None in a row is off); None is off.
RowFloat = float | Sequence[float | None] | _SupportsArray | None
RowInt = int | Sequence[int | None] | _SupportsArray | None
LogitBias = Mapping[int, float] | Sequence[Mapping[int, float]] | _SupportsArray | None
Seed = int | Sequence[int] | _SupportsArray | None
# A preset ("hf", "vllm", "llama.cpp") or a sequence of stage names (`STAGES`).
Order = str | Sequence[str]
LogprobsMode = Literal["processed", "raw"]
OnInvalid = Literal["raise", "skip"]
# Ids whose log-probabilities to report: one list for every row, or one list per row.
TokenIds = Sequence[int] | Sequence[Sequence[int]] | None
# Token-id sequences: one set for every row, or one set per row.
IdSequences = Sequence[Sequence[int]] | Sequence[Sequence[Sequence[int]]] | None
# DRY breakers: id sequences or strings (tokenized by `generate` and the CLI), one set for
# every row or one per row.
Breakers = Sequence[str | Sequence[int]] | Sequence[Sequence[str | Sequence[int]]] | None
# {id sequence: bias} for every row, or one such dict per row.
SequenceBias = Mapping[tuple[int, ...], float] | Sequence[Mapping[tuple[int, ...], float]] | None
# Allowed tokens: (ceil(V/32),) or (B, ceil(V/32)) int32/uint32 words, a numpy array or a
# torch tensor (xgrammar's, llguidance's and outlines-core's format).
TokenBitmask = _SupportsArray | None

#: The order presets and the stage names a custom order takes (from the Rust table).
ORDER_PRESETS: tuple[str, ...] = tuple(_native.ORDER_PRESETS)
STAGES: tuple[str, ...] = tuple(_native.STAGES)


class KernelKwargs(TypedDict, total=False):
    """The keyword form of the fields every call reads (mypy checks `ts.sample(x, **kw)`)."""

    sequence_bias: SequenceBias
    bad_words_ids: IdSequences
    bad_words: Sequence[str] | None
    no_repeat_ngram_size: RowInt
    repetition_penalty: RowFloat
    frequency_penalty: RowFloat
    presence_penalty: RowFloat
    penalty_last_n: RowInt
    dry_multiplier: RowFloat
    dry_base: RowFloat
    dry_allowed_length: RowInt
    dry_penalty_last_n: RowInt
    dry_sequence_breakers: Breakers
    frequency_scale: RowFloat
    presence_scale: RowFloat
    temperature: RowFloat
    dynatemp_range: RowFloat
    dynatemp_exponent: RowFloat
    top_n_sigma: RowFloat
    top_k: RowInt
    top_p: RowFloat
    min_p: RowFloat
    typical_p: RowFloat
    epsilon_cutoff: RowFloat
    eta_cutoff: RowFloat
    xtc_probability: RowFloat
    xtc_threshold: RowFloat
    min_tokens_to_keep: RowInt
    mirostat: RowInt
    mirostat_tau: RowFloat
    mirostat_eta: RowFloat
    order: Order
    logit_bias: LogitBias
    token_bitmask: TokenBitmask
    seed: Seed
    on_invalid: OnInvalid


class SamplingKwargs(KernelKwargs, total=False):
    """Every `SamplingParams` field as a keyword."""

    logprobs: bool
    top_logprobs: int
    logprobs_mode: LogprobsMode
    logprob_token_ids: TokenIds


# The Rust table: name -> (off value, whole numbers only, help), in the kernels' column order.
KERNEL_PARAMS: dict[str, tuple[float, bool, str]] = {
    name: (off, integer, help) for name, off, integer, help in _native.PARAMS
}
PARAM_NAMES: tuple[str, ...] = tuple(KERNEL_PARAMS)
_OFF: tuple[float, ...] = tuple(off for off, _, _ in KERNEL_PARAMS.values())
# The table parameters of the stages that read the history.
_HISTORY_STAGES = (
    "repetition_penalty",
    "frequency_penalty",
    "presence_penalty",
    "frequency_scale",
    "presence_scale",
    "dry_multiplier",
    "no_repeat_ngram_size",
)
# Python ints below this convert to float64 without OverflowError (floats reach ~2**1024).
_FLOAT_SAFE_INT = 2**1000


def _scalar(v: Any) -> bool:
    return v is None or type(v) in (float, bool) or type(v) is int and abs(v) < _FLOAT_SAFE_INT


@dataclasses.dataclass(frozen=True, kw_only=True, eq=True)
class SamplingParams:
    """The sampling parameters of a call, a `Sampler` or a generate loop.

    Fields are listed in the order the pipeline applies them (penalties, temperature, the
    filters, the draw). Every kernel parameter is a scalar or one value per row of the batch;
    None (or the documented "off" value) switches a stage off. Per-row sequences are stored
    as tuples, so a `SamplingParams` is immutable; `replace(**changes)` makes a new one.

    Attributes:
        sequence_bias: Hugging Face's ``{(id, ...): bias}`` (or one such dict per row): a
            one-id sequence always adds its bias to that id; a longer one adds it to its
            last id when the history ends with the others (and is skipped while it is
            longer than the history, as Hugging Face does); biases of matching sequences
            add up and -inf bans.
        bad_words_ids: Hugging Face's multi-token bans (a list of id sequences, or one such
            list per row): a single id is always banned, a longer sequence bans its last id
            when the history ends with the rest (``sequence_bias`` with -inf).
        bad_words: vLLM's bad words as strings; `generate` and the CLI tokenize them (with
            and without a leading space, as vLLM does); the tokenizer-free calls refuse
            strings.
        no_repeat_ngram_size: ban every token that would repeat an n-gram of the history
            (Hugging Face ``NoRepeatNGramLogitsProcessor``; None / 0 = off).
        repetition_penalty: CTRL / Hugging Face multiplicative penalty on every token already
            in the history (> 1 discourages repeats; 1 = off).
        frequency_penalty: OpenAI additive penalty: subtract this times a token's count so
            far (0 = off).
        presence_penalty: OpenAI additive penalty: subtract this once from every token seen
            (0 = off).
        penalty_last_n: the repetition, frequency / presence penalties and k-scaling count
            only the last n ids of the history (llama.cpp ``repeat_last_n``; None / -1 = the
            whole history, 0 = none, so the penalties are off).
        dry_multiplier: DRY (llama.cpp, koboldcpp): a token that would extend a repeat of
            length n >= ``dry_allowed_length`` loses ``dry_multiplier * dry_base ** (n -
            dry_allowed_length)`` from its logit (None / 0 = off).
        dry_base: DRY's base (default 1.75, >= 1).
        dry_allowed_length: DRY: repeats shorter than this are free (default 2).
        dry_penalty_last_n: DRY scans only the last n ids of the history (None / -1 = the
            whole history, 0 = DRY off).
        dry_sequence_breakers: DRY's sequence breakers: token-id sequences, or strings that
            `generate` and the CLI tokenize as llama.cpp does (their default is llama.cpp's
            ``["\\n", ":", "\\"", "*"]``); one set or one per row. The tokenizer-free calls
            (`sample`, `probs`, `Sampler`) take ids only and default to no breakers.
        frequency_scale: k-scaling: a seen token's temperature grows by (scale - 1) per
            occurrence (>= 1; 1 = off).
        presence_scale: k-scaling: every seen token's temperature is multiplied by this
            (>= 1; 1 = off).
        temperature: softmax temperature T >= 0; 0 is greedy (argmax), in every order.
        dynatemp_range: dynamic temperature (llama.cpp ``temp_ext``): the temperature is
            ``lo + (hi - lo) * (H / ln N) ** dynatemp_exponent`` with ``lo = max(0, T -
            range)``, ``hi = T + range``, H the entropy over the N kept tokens (None / 0 =
            off).
        dynatemp_exponent: the exponent of the normalised entropy (default 1).
        top_n_sigma: keep logits >= max - n * sigma, sigma the standard deviation of the
            finite logits (llama.cpp; None / 0 = off).
        top_k: keep the k most likely tokens, ties at the boundary kept (None / 0 = off).
        top_p: nucleus: keep the smallest set whose probability reaches p (None / 1 = off).
        min_p: drop tokens below min_p times the most likely one's probability (None / 0 =
            off).
        typical_p: locally typical sampling: keep the tokens whose ``-log p`` is closest to
            the entropy, up to mass typical_p (Hugging Face; None / 1 = off).
        epsilon_cutoff: drop tokens of probability below it (Hugging Face; None / 0 = off).
        eta_cutoff: drop tokens of probability below ``min(eta, sqrt(eta) * exp(-H))``
            (Hugging Face; None / 0 = off).
        xtc_probability: XTC (llama.cpp): with this probability per row and step (a coin
            from the row's seeded stream), of the tokens with probability >=
            ``xtc_threshold`` all but the least probable are removed, when there are two or
            more (None / 0 = off).
        xtc_threshold: XTC's probability threshold (default 0.1).
        min_tokens_to_keep: the fewest tokens every truncating stage keeps (Hugging Face
            ``min_tokens_to_keep``, llama.cpp ``min_keep``; None / 0 / 1 = no floor).
        mirostat: mirostat 1 or 2 (llama.cpp): after the other stages, truncate to a target
            surprise with a per-row state ``mu`` that a `Sampler` (and `generate`) carries
            from step to step; the stateless `sample` and `probs` refuse it (None / 0 = off).
        mirostat_tau: mirostat's target surprise in bits (default 5; ``mu`` starts at 2 tau).
        mirostat_eta: mirostat's learning rate (default 0.1).
        order: the order of the stages after the penalties: ``"hf"`` (default: temperature,
            top_n_sigma, top_k, top_p, min_p, typical_p, epsilon_cutoff, eta_cutoff, xtc),
            ``"vllm"`` (min_p before top_k / top_p), ``"llama.cpp"`` (top_n_sigma, top_k,
            typical_p, top_p, min_p, epsilon_cutoff, eta_cutoff, xtc, temperature: the
            filters see the temperature-1 distribution), or a sequence of those stage names,
            which must place every stage that is on.
        logit_bias: {id: bias}, one dict per row, or a dense (V,) / (B, V) array, added to
            the logits first; -inf bans a token.
        token_bitmask: the allowed tokens, (ceil(V/32),) or (B, ceil(V/32)) int32 or uint32
            words as xgrammar, llguidance and outlines-core produce them: token j is bit
            j % 32 (least significant first) of word j // 32, 1 = allowed. Applied first,
            like a ban; a shorter mask bans the ids beyond it, extra words are ignored, and a
            row with no allowed token is invalid (see ``on_invalid``).
        seed: None (fresh OS entropy), an int, or one int per row (any int, taken mod
            2**64); a per-row seed makes a row's draw independent of its batch position.
        logprobs: also return the chosen tokens' log-probabilities and their ranks in the
            raw distribution (a `SampleOutput`).
        top_logprobs: also return the n most probable ids per row (a `SampleOutput`).
        logprobs_mode: ``"processed"`` (default): the log-probabilities of the chosen token,
            the top tokens and `logprob_token_ids` are the final distribution's; ``"raw"``:
            the plain softmax's of the unprocessed logits (vLLM's ``raw_logprobs``).
        logprob_token_ids: ids whose log-probabilities to return (in
            ``SampleOutput.token_logprobs``, shape (B, n)): one list for every row, or one
            list per row (all of one length).
        on_invalid: ``"raise"`` (default): a row with NaN or nothing left to sample is an
            error; ``"skip"``: it gets id -1 (``SampleOutput.valid`` False) and every other
            row is sampled exactly as alone.
    """

    sequence_bias: SequenceBias = None
    bad_words_ids: IdSequences = None
    bad_words: Sequence[str] | None = None
    no_repeat_ngram_size: RowInt = None
    repetition_penalty: RowFloat = 1.0
    frequency_penalty: RowFloat = 0.0
    presence_penalty: RowFloat = 0.0
    penalty_last_n: RowInt = None
    dry_multiplier: RowFloat = None
    dry_base: RowFloat = 1.75
    dry_allowed_length: RowInt = 2
    dry_penalty_last_n: RowInt = None
    dry_sequence_breakers: Breakers = None
    frequency_scale: RowFloat = 1.0
    presence_scale: RowFloat = 1.0
    temperature: RowFloat = 1.0
    dynatemp_range: RowFloat = None
    dynatemp_exponent: RowFloat = 1.0
    top_n_sigma: RowFloat = None
    top_k: RowInt = None
    top_p: RowFloat = None
    min_p: RowFloat = None
    typical_p: RowFloat = None
    epsilon_cutoff: RowFloat = None
    eta_cutoff: RowFloat = None
    xtc_probability: RowFloat = None
    xtc_threshold: RowFloat = 0.1
    min_tokens_to_keep: RowInt = None
    mirostat: RowInt = None
    mirostat_tau: RowFloat = 5.0
    mirostat_eta: RowFloat = 0.1
    order: Order = "hf"
    logit_bias: LogitBias = None
    token_bitmask: TokenBitmask = None
    seed: Seed = None
    logprobs: bool = False
    top_logprobs: int = 0
    logprobs_mode: LogprobsMode = "processed"
    logprob_token_ids: TokenIds = None
    on_invalid: OnInvalid = "raise"

    def __post_init__(self) -> None:
        from .sampling import (
            _TOP_N_CAP,
            _bitmask,
            _check_top_n,
            _logit_bias,
            _real_array,
            _seeds,
        )

        rows: dict[str, int] = {}
        for name in PARAM_NAMES:
            v = getattr(self, name)
            if _scalar(v):
                continue
            try:
                a = _real_array(
                    [KERNEL_PARAMS[name][0] if e is None else e for e in v]
                    if isinstance(v, (list, tuple))
                    else v,
                    name,
                )
            except TypeError:
                raise TypeError(f"{name} must be a real number or a sequence of them") from None
            if a.ndim == 0:
                value: Any = a.item()
            elif a.ndim == 1:
                value = tuple(a.tolist())
                rows[name] = len(value)
            else:
                raise ValueError(f"{name} has shape {a.shape}: give a scalar or one value per row")
            object.__setattr__(self, name, value)
        if len(set(rows.values())) > 1:
            given = ", ".join(f"{n} has {k}" for n, k in rows.items())
            raise ValueError(f"per-row parameters must all have one value per row: {given}")
        if isinstance(self.seed, (list, tuple)) or (
            self.seed is not None and not isinstance(self.seed, (int, np.integer))
        ):
            seeds, _ = _seeds(self.seed)
            object.__setattr__(self, "seed", tuple(int(s) for s in seeds))
        elif self.seed is not None:
            _seeds(self.seed)
        if isinstance(self.order, str):
            pass
        elif isinstance(self.order, Sequence) and all(isinstance(o, str) for o in self.order):
            object.__setattr__(self, "order", tuple(self.order))
        else:
            raise TypeError(
                f"order must be one of {', '.join(ORDER_PRESETS)} or a sequence of stage "
                f"names, got {self.order!r:.60}"
            )
        if self.logprob_token_ids is not None:
            object.__setattr__(self, "logprob_token_ids", _token_ids(self.logprob_token_ids))
        _check_top_n(self.top_logprobs)
        object.__setattr__(self, "logprobs", bool(self.logprobs))
        _logit_bias(self.logit_bias, None, None)
        _bitmask(self.token_bitmask, None, None)
        b = next(iter(rows.values()), 1)
        m = self.matrix(b)  # (0, N) for per-row values of no rows: the options still checked
        _native.check_params(
            m,
            self.order_names,
            self.logprobs_mode,
            self.on_invalid,
            max(min(int(self.top_logprobs), _TOP_N_CAP), -1),
        )
        # Scalars give one (1, N) matrix for every batch: kept, since every call reads it.
        object.__setattr__(self, "_scalar_matrix", None if rows else m)
        # The keywords of `_native.run` that differ from its defaults, built once: a call
        # passes only these (a loop's default call pays for none of them).
        options: dict[str, Any] = {}
        if self.order != "hf":
            options["order"] = self.order_names
        if self.logprobs_mode != "processed":
            options["logprobs_mode"] = self.logprobs_mode
        if self.on_invalid != "raise":
            options["on_invalid"] = self.on_invalid
        if self.logprobs:
            options["want_rank"] = True
        if self.logprob_token_ids is not None:
            ids = np.array(self.logprob_token_ids, dtype=np.int64)
            options["token_ids"] = ids.reshape(1, -1) if ids.ndim == 1 else ids
        options.update(self._sequence_options())
        object.__setattr__(self, "_native_options", options)

    def _sequence_options(self) -> dict[str, Any]:
        """The sequence biases, the bad words and the DRY breakers as the kernels take them;
        strings are left for `generate` to tokenize (and recorded for `unresolved_strings`)."""
        bias = _sequence_rows(self.sequence_bias, "sequence_bias")
        bad = _id_rows(self.bad_words_ids, "bad_words_ids", strings=False)
        breakers = _id_rows(self.dry_sequence_breakers, "dry_sequence_breakers", strings=True)
        if self.bad_words is not None:
            if isinstance(self.bad_words, str) or not all(
                isinstance(w, str) for w in self.bad_words
            ):
                raise TypeError("bad_words must be a list of strings (bad_words_ids takes ids)")
            object.__setattr__(self, "bad_words", tuple(self.bad_words))
        unresolved = breakers is not None and any(
            isinstance(s, str) for row in breakers for s in row
        )
        object.__setattr__(
            self,
            "_unresolved",
            "bad_words" if self.bad_words else "dry_sequence_breakers" if unresolved else None,
        )
        options: dict[str, Any] = {}
        if bias is not None:
            options["sequence_bias"] = _seq_arrays(bias)
        if bad is not None:
            options["bad_words"] = _seq_arrays([[(seq, 0.0) for seq in row] for row in bad])
        if breakers is not None and not unresolved:
            options["dry_breakers"] = _seq_arrays([[(s, 0.0) for s in row] for row in breakers])
        return options

    @property
    def unresolved_strings(self) -> str | None:
        """The first field holding strings only a tokenizer can resolve (None if none);
        found at construction, since every call asks."""
        unresolved: str | None = self.__dict__["_unresolved"]
        return unresolved

    @property
    def native_options(self) -> dict[str, Any]:
        """The call options of `_native.run` that differ from its defaults."""
        options: dict[str, Any] = self.__dict__["_native_options"]
        return options

    # ---- what the kernels read ---------------------------------------------------------------

    @property
    def kernel_values(self) -> tuple[Any, ...]:
        """The kernel parameters in the Rust table's column order (None = off)."""
        return tuple(getattr(self, name) for name in PARAM_NAMES)

    @property
    def order_names(self) -> list[str]:
        """The order as the kernels take it: one preset name, or the stage names."""
        return [self.order] if isinstance(self.order, str) else list(self.order)

    @property
    def batch_size(self) -> int | None:
        """The number of rows the per-row values are for; None when all are scalars."""
        for name in PARAM_NAMES:
            v = getattr(self, name)
            if isinstance(v, tuple):
                return len(v)
        return None

    def matrix(self, b: int) -> np.ndarray:
        """The (1, N) parameter matrix when every value is a scalar, else (b, N)."""
        m: np.ndarray | None = self.__dict__.get("_scalar_matrix")
        if m is not None:
            return m
        from .sampling import _param_matrix

        return _param_matrix(self.kernel_values, b)

    @property
    def needs_history(self) -> bool:
        """Whether any row has a stage on that reads the history (the penalties, DRY,
        no-repeat n-grams, a sequence bias or bad word longer than one id)."""
        for name in _HISTORY_STAGES:
            v = getattr(self, name)
            off = KERNEL_PARAMS[name][0]
            values = v if isinstance(v, tuple) else (v,)
            if any(e is not None and e != off for e in values):
                return True
        return bool(self.bad_words) or any(
            seqs is not None and len(seqs[0]) > len(seqs[1])  # a sequence longer than one id
            for seqs in (self.native_options.get(n) for n in ("sequence_bias", "bad_words"))
        )

    @property
    def mirostat_on(self) -> bool:
        """Whether any row turns mirostat on (a `Sampler` then carries its state)."""
        m = self.mirostat
        return any(e not in (None, 0) for e in (m if isinstance(m, tuple) else (m,)))

    @property
    def is_greedy(self) -> bool:
        """Whether every row is greedy (temperature 0)."""
        t = self.temperature
        return all(e == 0 for e in (t if isinstance(t, tuple) else (t,)))

    def replace(self, **changes: Any) -> SamplingParams:
        """A copy with `changes` applied (validated like a new one)."""
        return dataclasses.replace(self, **changes) if changes else self

    # ---- converters --------------------------------------------------------------------------

    @classmethod
    def from_hf(cls, config: Any, **overrides: Any) -> SamplingParams:
        """From a Hugging Face `GenerationConfig` or its dict (generation_config.json).

        ``do_sample=False`` is greedy (temperature 0), as `model.generate` decodes then; HF's
        own defaults for fields the config leaves out (e.g. top_k 50) are not filled in.
        Maps temperature, top_k, top_p, min_p, typical_p, epsilon_cutoff, eta_cutoff,
        min_tokens_to_keep, repetition_penalty, no_repeat_ngram_size, bad_words_ids and
        sequence_bias (a dict or HF's serialised list of ``[ids, bias]`` pairs), in HF's
        order. Refused by name: processors we do not implement when they are switched on
        (encoder_no_repeat_ngram_size, suppress_tokens, num_beams > 1, ...).
        """
        d = _as_dict(config)
        hf_off = {
            "encoder_no_repeat_ngram_size": 0,
            "suppress_tokens": None,
            "begin_suppress_tokens": None,
            "force_words_ids": None,
            "num_beams": 1,
            "num_beam_groups": 1,
            "penalty_alpha": None,
            "guidance_scale": None,
            "watermarking_config": None,
            "top_h": None,
            "dola_layers": None,
        }
        _refuse("from_hf", {k: d.get(k) for k in hf_off}, hf_off)
        out: dict[str, Any] = {}
        for name in (
            "temperature",
            "top_k",
            "top_p",
            "min_p",
            "typical_p",
            "epsilon_cutoff",
            "eta_cutoff",
            "min_tokens_to_keep",
            "repetition_penalty",
            "no_repeat_ngram_size",
            "bad_words_ids",
        ):
            if d.get(name) is not None:
                out[name] = d[name]
        bias = d.get("sequence_bias")
        if bias:
            pairs = bias.items() if isinstance(bias, Mapping) else bias
            out["sequence_bias"] = {tuple(ids): float(b) for ids, b in pairs}
        if d.get("do_sample") is False:
            out["temperature"] = 0.0
        if d.get("output_logits") or d.get("output_scores"):
            out["logprobs"] = True
        return cls(**{**out, **overrides})

    @classmethod
    def from_vllm(cls, params: Any, **overrides: Any) -> SamplingParams:
        """From a vLLM `SamplingParams` (or a dict of its fields).

        ``top_k`` -1 or 0 is off; ``logprobs=n`` asks for the n most probable ids (vLLM's
        meaning); the order is vLLM's (``order="vllm"``: min_p before top_k / top_p);
        ``bad_words`` (strings, tokenized by `generate` as vLLM does). Fields of the
        generation loop (max_tokens, stop, ...) are passed over. Refused by name: n > 1,
        best_of, prompt_logprobs, allowed_token_ids, structured outputs, logits_processors,
        min_tokens.
        """
        d = _as_dict(params)
        vllm_off = {
            "n": 1,
            "best_of": None,
            "prompt_logprobs": None,
            "allowed_token_ids": None,
            "structured_outputs": None,
            "guided_decoding": None,
            "logits_processors": None,
            "min_tokens": 0,
        }
        _refuse("from_vllm", {k: d.get(k, vllm_off[k]) for k in vllm_off}, vllm_off)
        out: dict[str, Any] = {"order": "vllm"}
        for name in (
            "temperature",
            "top_p",
            "min_p",
            "repetition_penalty",
            "frequency_penalty",
            "presence_penalty",
            "seed",
        ):
            if d.get(name) is not None:
                out[name] = d[name]
        k = d.get("top_k")
        if k is not None and k not in (-1, 0):
            out["top_k"] = k
        if d.get("logit_bias"):
            out["logit_bias"] = {int(t): float(b) for t, b in d["logit_bias"].items()}
        if d.get("bad_words"):
            out["bad_words"] = list(d["bad_words"])
        if d.get("logprobs") is not None:
            out["logprobs"] = True
            out["top_logprobs"] = int(d["logprobs"])
        return cls(**{**out, **overrides})

    @classmethod
    def from_openai(cls, body: Mapping[str, Any], **overrides: Any) -> SamplingParams:
        """From an OpenAI chat / completions request body.

        ``logit_bias`` has string keys (token ids as text); ``logprobs`` (bool) and
        ``top_logprobs`` as in the chat API; ``seed``. Refused by name: ``n`` > 1 and
        ``best_of``. Request fields that are not sampling (model, messages, max_tokens,
        stop, stream, ...) are passed over.
        """
        d = dict(body)
        _refuse("from_openai", {"n": d.get("n", 1), "best_of": d.get("best_of")},
                {"n": 1, "best_of": None})  # fmt: skip
        out: dict[str, Any] = {}
        for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed"):
            if d.get(name) is not None:
                out[name] = d[name]
        bias = d.get("logit_bias")
        if bias:
            try:
                out["logit_bias"] = {int(t): float(b) for t, b in bias.items()}
            except (TypeError, ValueError, AttributeError):
                raise ValueError(
                    "from_openai: logit_bias must map token ids (as strings) to numbers"
                ) from None
        lp = d.get("logprobs")
        if isinstance(lp, bool):  # chat: a bool, with top_logprobs
            out["logprobs"] = lp
        elif isinstance(lp, int):  # legacy completions: the number of top log-probs
            out["logprobs"] = True
            out["top_logprobs"] = lp
        if d.get("top_logprobs") is not None:
            out["top_logprobs"] = int(d["top_logprobs"])
        return cls(**{**out, **overrides})

    @classmethod
    def from_llama_cpp(cls, params: Mapping[str, Any], **overrides: Any) -> SamplingParams:
        """From llama.cpp's server request / `common_params_sampling` names.

        ``temperature`` (or ``temp``, <= 0 is greedy), ``dynatemp_range``,
        ``dynatemp_exponent``, ``top_k`` (<= 0 off), ``top_p``, ``min_p``, ``typical_p``,
        ``top_n_sigma`` (<= 0 off), ``xtc_probability``, ``xtc_threshold``, ``min_keep``,
        ``repeat_penalty``, ``frequency_penalty``, ``presence_penalty``, ``repeat_last_n`` /
        ``penalty_last_n`` (-1: the whole history, 0: none), ``dry_multiplier``,
        ``dry_base``, ``dry_allowed_length``, ``dry_penalty_last_n``,
        ``dry_sequence_breakers`` (strings, tokenized by `generate`), ``mirostat``,
        ``mirostat_tau``, ``mirostat_eta``, ``seed`` (-1 or 0xFFFFFFFF: random),
        ``logit_bias`` (a dict or llama.cpp's [[id, bias], ...] list; ``false`` bans), and
        ``samplers`` (a list of names or a ";"-separated string, e.g.
        "penalties;dry;top_k;typ_p;top_p;min_p;temperature"); without it the order is
        llama.cpp's default chain (``order="llama.cpp"``: the filters see the temperature-1
        distribution). With mirostat on, llama.cpp's chain is temperature then mirostat
        alone, so every other stage, the penalties and DRY are off here too. Fields left
        out are not filled with llama.cpp's own defaults (its ``repeat_last_n`` is 64, ours
        -1; its ``dry_base`` 1.75 and ``dry_allowed_length`` 2 are ours too). Refused by
        name: ``n_probs``; a ``samplers`` entry we do not have, or ``penalties`` / ``dry``
        placed after another stage while on (ours always run first).
        """
        d = dict(params)
        _refuse("from_llama_cpp", {k: d[k] for k in ("n_probs",) if k in d}, {"n_probs": 0})
        out: dict[str, Any] = {"order": "llama.cpp"}
        t = d.get("temperature", d.get("temp"))
        if t is not None:
            out["temperature"] = max(float(t), 0.0)  # llama.cpp: <= 0 is greedy
        k = d.get("top_k")
        if k is not None and k > 0:
            out["top_k"] = k
        sigma = d.get("top_n_sigma")
        if sigma is not None and sigma > 0:
            out["top_n_sigma"] = sigma
        for ours_name, theirs in (
            ("dynatemp_range", "dynatemp_range"),
            ("dynatemp_exponent", "dynatemp_exponent"),
            ("top_p", "top_p"),
            ("min_p", "min_p"),
            ("typical_p", "typical_p"),
            ("xtc_probability", "xtc_probability"),
            ("xtc_threshold", "xtc_threshold"),
            ("min_tokens_to_keep", "min_keep"),
            ("repetition_penalty", "repeat_penalty"),
            ("frequency_penalty", "frequency_penalty"),
            ("presence_penalty", "presence_penalty"),
            ("penalty_last_n", "penalty_last_n"),
            ("penalty_last_n", "repeat_last_n"),
            ("dry_multiplier", "dry_multiplier"),
            ("dry_base", "dry_base"),
            ("dry_allowed_length", "dry_allowed_length"),
            ("dry_penalty_last_n", "dry_penalty_last_n"),
            ("dry_sequence_breakers", "dry_sequence_breakers"),
            ("mirostat", "mirostat"),
            ("mirostat_tau", "mirostat_tau"),
            ("mirostat_eta", "mirostat_eta"),
        ):
            if d.get(theirs) is not None:
                out[ours_name] = d[theirs]
        if out.get("xtc_threshold", 0.1) > 0.5:
            # llama.cpp switches XTC off above 0.5 (at most one token can reach it anyway).
            out.pop("xtc_probability", None)
        if out.get("dry_base", 1.75) < 1.0:
            # llama.cpp switches DRY off for a base below 1 (we refuse such a base).
            out.pop("dry_multiplier", None)
            out.pop("dry_base", None)
        # llama.cpp clamps these windows below at 0 (-1 is "the context", our whole history).
        for name in ("penalty_last_n", "dry_penalty_last_n"):
            if name in out and out[name] < -1:
                out[name] = 0
        seed = d.get("seed")
        if seed is not None and seed not in (-1, 0xFFFFFFFF):
            out["seed"] = seed
        bias = d.get("logit_bias")
        if bias:
            pairs = bias.items() if isinstance(bias, Mapping) else bias
            out["logit_bias"] = {
                int(t): float("-inf") if b is False else float(b) for t, b in pairs
            }
        if out.get("mirostat") not in (None, 0):
            # common_sampler_init: temperature (plain, not temp_ext) then mirostat, nothing
            # else but the logit bias.
            kept = ("temperature", "mirostat", "mirostat_tau", "mirostat_eta", "seed",
                    "logit_bias")  # fmt: skip
            out = {n: v for n, v in out.items() if n in kept}
            out["order"] = ("temperature",)
        elif d.get("samplers") is not None:
            on = {
                name: any(out.get(n) not in (None, KERNEL_PARAMS[n][0]) for n in names)
                for name, names in _LLAMA_CPP_PREFIX.items()
            }
            order, prefix = _llama_cpp_order(d["samplers"], on)
            out["order"] = order
            # llama.cpp runs only the samplers its chain names: a stage left out is off.
            stage_params = {
                "temperature": ("temperature", "dynatemp_range"),
                "top_n_sigma": ("top_n_sigma",),
                "top_k": ("top_k",),
                "top_p": ("top_p",),
                "min_p": ("min_p",),
                "typical_p": ("typical_p",),
                "xtc": ("xtc_probability",),
                **_LLAMA_CPP_PREFIX,
            }
            for stage, names in stage_params.items():
                if stage not in order and stage not in prefix:
                    for name in names:
                        out.pop(name, None)
        return cls(**{**out, **overrides})


# llama.cpp's samplers that always run first here (before every stage of the order), and the
# fields that switch each on.
_LLAMA_CPP_PREFIX: dict[str, tuple[str, ...]] = {
    "penalties": ("repetition_penalty", "frequency_penalty", "presence_penalty"),
    "dry": ("dry_multiplier",),
}


# llama.cpp's sampler names (common/sampling.cpp, `common_sampler_type_from_name`, including
# its aliases) -> ours; None: a stage that always runs first here.
_LLAMA_CPP_STAGES: dict[str, str | None] = {
    "penalties": None,
    "dry": None,
    "top_n_sigma": "top_n_sigma",
    "top_k": "top_k",
    "top_p": "top_p",
    "nucleus": "top_p",
    "min_p": "min_p",
    "typ_p": "typical_p",
    "typical_p": "typical_p",
    "typ": "typical_p",
    "typical": "typical_p",
    "xtc": "xtc",
    "temperature": "temperature",
    "temp": "temperature",
}


def _llama_cpp_order(samplers: Any, on: Mapping[str, bool]) -> tuple[tuple[str, ...], set[str]]:
    """Our order for llama.cpp's ``samplers`` (a list of names or a ";"-separated string), and
    which of the samplers that run first here (penalties, dry) it names.

    Stages llama.cpp's chain leaves out are off there; epsilon / eta, which llama.cpp lacks,
    go at the end. ``penalties`` and ``dry`` may only come before every other stage while
    they are on (`on`), since ours always run first (penalties, then DRY).
    """
    names = samplers.split(";") if isinstance(samplers, str) else list(samplers)
    order: list[str] = []
    prefix: set[str] = set()
    for name in (n.strip() for n in names):
        if not name:
            continue
        if name not in _LLAMA_CPP_STAGES:
            raise ValueError(f"from_llama_cpp: not supported: samplers entry {name!r}")
        ours = _LLAMA_CPP_STAGES[name]
        if ours is None:
            dry_first = name == "penalties" and "dry" in prefix and on.get("dry")
            if on.get(name) and (order or dry_first):
                raise ValueError(
                    f"from_llama_cpp: not supported: {name} after another stage "
                    "(ours run first: penalties, then DRY)"
                )
            prefix.add(name)
            continue
        if ours not in order:
            order.append(ours)
    placed = set(order)
    order += [s for s in ("epsilon_cutoff", "eta_cutoff") if s not in placed]
    return tuple(order), prefix


# One set of sequences per row (one row: every row's), each with its value.
_SeqRows = list[list[tuple[tuple[int, ...], float]]]


def _is_seq(x: Any) -> bool:
    return isinstance(x, (Sequence, np.ndarray)) and not isinstance(x, (str, bytes))


def _ids(seq: Any, what: str) -> tuple[int, ...]:
    if not _is_seq(seq) or not all(isinstance(i, numbers.Integral) for i in seq):
        raise TypeError(f"{what}: a sequence must be a list of integer token ids, got {seq!r:.60}")
    ids = tuple(int(i) for i in seq)
    if not ids:
        raise ValueError(f"{what} holds an empty sequence")
    if any(not 0 <= i < 2**63 for i in ids):
        raise ValueError(f"{what}: token ids must be >= 0 and < V, got {ids}")
    return ids


def _id_rows(value: Any, what: str, *, strings: bool) -> list[list[Any]] | None:
    """A list of sequences (every row's), or one list per row, as rows of id tuples (and, when
    `strings`, strings); None for None."""
    if value is None:
        return None
    if not _is_seq(value):
        raise TypeError(f"{what} must be a list of token-id sequences, or one such list per row")

    def one(x: Any) -> Any:
        return x if strings and isinstance(x, str) else _ids(x, what)

    def is_sequence_item(x: Any) -> bool:
        return (strings and isinstance(x, str)) or (
            _is_seq(x) and all(isinstance(i, numbers.Integral) for i in x)
        )

    if all(is_sequence_item(x) for x in value):
        return [[one(x) for x in value]]
    if all(_is_seq(r) for r in value):
        return [[one(x) for x in r] for r in value]
    raise TypeError(f"{what} must be a list of token-id sequences, or one such list per row")


def _sequence_rows(value: Any, what: str) -> _SeqRows | None:
    """`sequence_bias`: a dict {ids: bias} or one per row, as rows of (ids, bias)."""
    if value is None:
        return None
    dicts = [value] if isinstance(value, Mapping) else value
    if not _is_seq(dicts) or not all(isinstance(d, Mapping) for d in dicts):
        raise TypeError(f"{what} must be a dict {{(id, ...): bias}}, or one such dict per row")
    rows: _SeqRows = []
    for d in dicts:
        row = []
        for k, b in d.items():
            seq = (k,) if isinstance(k, numbers.Integral) else k
            if isinstance(b, bool) or not isinstance(b, numbers.Real) or np.isnan(float(b)):
                raise TypeError(f"{what}: a bias must be a number, got {b!r}")
            row.append((_ids(seq, what), float(b)))
        rows.append(row)
    return rows


def _seq_arrays(rows: _SeqRows) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows of (ids, value) as `_native.run` takes a sequence set."""
    seqs = [seq for row in rows for seq, _ in row]
    ids = np.fromiter((i for s in seqs for i in s), dtype=np.int64)
    seq_ends = np.cumsum([len(s) for s in seqs], dtype=np.int64)
    row_ends = np.cumsum([len(row) for row in rows], dtype=np.int64)
    values = np.array([v for row in rows for _, v in row], dtype=np.float64)
    return ids, seq_ends, row_ends, values


def _token_ids(ids: Any) -> tuple[int, ...] | tuple[tuple[int, ...], ...]:
    """`logprob_token_ids` as a tuple of ints (every row) or of equal-length tuples (per row)."""
    err = TypeError("logprob_token_ids must be a sequence of ints, or one such sequence per row")
    if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
        raise err
    if all(isinstance(i, (numbers.Integral)) for i in ids):
        return tuple(int(i) for i in ids)
    if not all(isinstance(r, (Sequence, np.ndarray)) and not isinstance(r, str) for r in ids):
        raise err
    rows = tuple(tuple(int(i) for i in r) for r in ids)
    if len({len(r) for r in rows}) > 1:
        raise ValueError("logprob_token_ids: every row must list the same number of ids")
    return rows


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, Mapping):
        return dict(obj)
    if hasattr(obj, "to_dict"):
        return dict(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    try:
        return dict(vars(obj))
    except TypeError:
        raise TypeError(
            f"expected a mapping or a config object, got {type(obj).__name__}"
        ) from None


def _refuse(who: str, given: Mapping[str, Any], off: Mapping[str, Any]) -> None:
    """Raises naming every field that is switched on although we cannot honour it."""
    on = [f"{k}={v!r}" for k, v in given.items() if v is not None and not _off_value(v, off[k])]
    if on:
        raise ValueError(f"{who}: not supported: {', '.join(on)}")


def _off_value(v: Any, off: Any) -> bool:
    if off is None:
        return v is None or (isinstance(v, (list, tuple, dict)) and not v)
    if isinstance(v, numbers.Real) and isinstance(off, numbers.Real):
        return float(v) == float(off)
    return bool(v == off)
