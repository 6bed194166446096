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
from typing import Any, Protocol, TypedDict

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


class KernelKwargs(TypedDict, total=False):
    """The keyword form of the fields every call reads (mypy checks `ts.sample(x, **kw)`)."""

    repetition_penalty: RowFloat
    frequency_penalty: RowFloat
    presence_penalty: RowFloat
    frequency_scale: RowFloat
    presence_scale: RowFloat
    temperature: RowFloat
    top_k: RowInt
    top_p: RowFloat
    min_p: RowFloat
    logit_bias: LogitBias
    seed: Seed


class SamplingKwargs(KernelKwargs, total=False):
    """Every `SamplingParams` field as a keyword."""

    logprobs: bool
    top_logprobs: int


# The Rust table: name -> (off value, whole numbers only, help), in the kernels' column order.
KERNEL_PARAMS: dict[str, tuple[float, bool, str]] = {
    name: (off, integer, help) for name, off, integer, help in _native.PARAMS
}
PARAM_NAMES: tuple[str, ...] = tuple(KERNEL_PARAMS)
_OFF: tuple[float, ...] = tuple(off for off, _, _ in KERNEL_PARAMS.values())
_PENALTIES = (
    "repetition_penalty",
    "frequency_penalty",
    "presence_penalty",
    "frequency_scale",
    "presence_scale",
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
        repetition_penalty: CTRL / Hugging Face multiplicative penalty on every token already
            in the history (> 1 discourages repeats; 1 = off).
        frequency_penalty: OpenAI additive penalty: subtract this times a token's count so
            far (0 = off).
        presence_penalty: OpenAI additive penalty: subtract this once from every token seen
            (0 = off).
        frequency_scale: k-scaling: a seen token's temperature grows by (scale - 1) per
            occurrence (>= 1; 1 = off).
        presence_scale: k-scaling: every seen token's temperature is multiplied by this
            (>= 1; 1 = off).
        temperature: softmax temperature T >= 0; 0 is greedy (argmax).
        top_k: keep the k most likely tokens, ties at the boundary kept (None / 0 = off).
        top_p: nucleus: keep the smallest set whose probability reaches p (None / 1 = off).
        min_p: drop tokens below min_p times the most likely one's probability (None / 0 =
            off).
        logit_bias: {id: bias}, one dict per row, or a dense (V,) / (B, V) array, added to
            the logits first; -inf bans a token.
        seed: None (fresh OS entropy), an int, or one int per row (any int, taken mod
            2**64); a per-row seed makes a row's draw independent of its batch position.
        logprobs: also return the chosen tokens' log-probabilities (a `SampleOutput`).
        top_logprobs: also return the n most probable ids per row (a `SampleOutput`).
    """

    repetition_penalty: RowFloat = 1.0
    frequency_penalty: RowFloat = 0.0
    presence_penalty: RowFloat = 0.0
    frequency_scale: RowFloat = 1.0
    presence_scale: RowFloat = 1.0
    temperature: RowFloat = 1.0
    top_k: RowInt = None
    top_p: RowFloat = None
    min_p: RowFloat = None
    logit_bias: LogitBias = None
    seed: Seed = None
    logprobs: bool = False
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        from .sampling import _check_top_n, _logit_bias, _real_array, _seeds

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
            seeds, _ = _seeds(self.seed, None)
            object.__setattr__(self, "seed", tuple(int(s) for s in seeds))
        elif self.seed is not None:
            _seeds(self.seed, None)
        _check_top_n(self.top_logprobs)
        object.__setattr__(self, "logprobs", bool(self.logprobs))
        _logit_bias(self.logit_bias, None, None)
        b = next(iter(rows.values()), 1)
        m = self.matrix(b) if b else None
        if m is not None:
            _native.check_params(m)
        # Scalars give one (1, N) matrix for every batch: kept, since every call reads it.
        object.__setattr__(self, "_scalar_matrix", None if rows else m)

    # ---- what the kernels read ---------------------------------------------------------------

    @property
    def kernel_values(self) -> tuple[Any, ...]:
        """The kernel parameters in the Rust table's column order (None = off)."""
        return tuple(getattr(self, name) for name in PARAM_NAMES)

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
        """Whether any row has a penalty on: only the penalties read the history."""
        for name in _PENALTIES:
            v = getattr(self, name)
            off = KERNEL_PARAMS[name][0]
            values = v if isinstance(v, tuple) else (v,)
            if any(e is not None and e != off for e in values):
                return True
        return False

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
        Refused by name: processors we do not implement when they are switched on
        (typical_p, epsilon_cutoff, eta_cutoff, no_repeat_ngram_size, bad_words_ids,
        sequence_bias, num_beams > 1, ...).
        """
        d = _as_dict(config)
        hf_off = {
            "typical_p": 1.0,
            "epsilon_cutoff": 0.0,
            "eta_cutoff": 0.0,
            "no_repeat_ngram_size": 0,
            "encoder_no_repeat_ngram_size": 0,
            "bad_words_ids": None,
            "sequence_bias": None,
            "suppress_tokens": None,
            "begin_suppress_tokens": None,
            "force_words_ids": None,
            "num_beams": 1,
            "num_beam_groups": 1,
            "penalty_alpha": None,
            "guidance_scale": None,
            "watermarking_config": None,
            "min_tokens_to_keep": 1,
            "top_h": None,
            "dola_layers": None,
        }
        _refuse("from_hf", {k: d.get(k) for k in hf_off}, hf_off)
        out: dict[str, Any] = {}
        for name in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty"):
            if d.get(name) is not None:
                out[name] = d[name]
        if d.get("do_sample") is False:
            out["temperature"] = 0.0
        if d.get("output_logits") or d.get("output_scores"):
            out["logprobs"] = True
        return cls(**{**out, **overrides})

    @classmethod
    def from_vllm(cls, params: Any, **overrides: Any) -> SamplingParams:
        """From a vLLM `SamplingParams` (or a dict of its fields).

        ``top_k`` -1 or 0 is off; ``logprobs=n`` asks for the n most probable ids (vLLM's
        meaning). Fields of the generation loop (max_tokens, stop, ...) are passed over.
        Refused by name: n > 1, best_of, prompt_logprobs, allowed_token_ids, bad_words,
        structured outputs, logits_processors, min_tokens; and min_p together with top_k or
        top_p, since vLLM applies min_p before them and our order applies it after.
        """
        d = _as_dict(params)
        vllm_off = {
            "n": 1,
            "best_of": None,
            "prompt_logprobs": None,
            "allowed_token_ids": None,
            "bad_words": None,
            "structured_outputs": None,
            "guided_decoding": None,
            "logits_processors": None,
            "min_tokens": 0,
        }
        _refuse("from_vllm", {k: d.get(k, vllm_off[k]) for k in vllm_off}, vllm_off)
        min_p_on = d.get("min_p") not in (None, 0, 0.0)
        if min_p_on and (d.get("top_k") not in (None, -1, 0) or d.get("top_p") not in (None, 1)):
            raise ValueError(
                "from_vllm: not supported: min_p with top_k / top_p (vLLM applies min_p first)"
            )
        out: dict[str, Any] = {}
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

        ``temperature`` (or ``temp``), ``top_k`` (<= 0 off), ``top_p``, ``min_p``,
        ``repeat_penalty``, ``frequency_penalty``, ``presence_penalty``, ``seed`` (-1 or
        0xFFFFFFFF: random), ``logit_bias`` (a dict or llama.cpp's [[id, bias], ...] list;
        ``false`` bans). Fields left out are not filled with llama.cpp's own defaults.
        Refused by name when switched on: ``repeat_last_n`` other than -1 (our penalties
        read the whole history; llama.cpp's default is 64), ``min_keep``, ``typical_p``,
        ``dry_multiplier``, ``xtc_probability``, ``mirostat``, ``top_n_sigma``,
        ``dynatemp_range``, ``n_probs``, a ``samplers`` order, and a temperature other than
        0 or 1 with top_p / min_p (llama.cpp filters first and applies the temperature
        last, which our order cannot reproduce).
        """
        d = dict(params)
        off = {
            "repeat_last_n": -1,
            "penalty_last_n": -1,
            "min_keep": 0,
            "typical_p": 1.0,
            "dry_multiplier": 0.0,
            "xtc_probability": 0.0,
            "mirostat": 0,
            "top_n_sigma": -1.0,
            "dynatemp_range": 0.0,
            "n_probs": 0,
            "samplers": None,
        }
        _refuse("from_llama_cpp", {k: d[k] for k in off if k in d}, off)
        t = d.get("temperature", d.get("temp"))
        filters_on = d.get("top_p") not in (None, 1) or d.get("min_p") not in (None, 0)
        if t is not None and 0 < float(t) != 1 and filters_on:
            # llama.cpp's chain filters at temperature 1 and applies the temperature last.
            raise ValueError(
                "from_llama_cpp: not supported: temperature other than 0 or 1 together with "
                "top_p / min_p (llama.cpp applies the temperature after the filters)"
            )
        out: dict[str, Any] = {}
        if t is not None:
            out["temperature"] = max(float(t), 0.0)  # llama.cpp: <= 0 is greedy
        k = d.get("top_k")
        if k is not None and k > 0:
            out["top_k"] = k
        for ours_name, theirs in (
            ("top_p", "top_p"),
            ("min_p", "min_p"),
            ("repetition_penalty", "repeat_penalty"),
            ("frequency_penalty", "frequency_penalty"),
            ("presence_penalty", "presence_penalty"),
        ):
            if d.get(theirs) is not None:
                out[ours_name] = d[theirs]
        seed = d.get("seed")
        if seed is not None and seed not in (-1, 0xFFFFFFFF):
            out["seed"] = seed
        bias = d.get("logit_bias")
        if bias:
            pairs = bias.items() if isinstance(bias, Mapping) else bias
            out["logit_bias"] = {
                int(t): float("-inf") if b is False else float(b) for t, b in pairs
            }
        return cls(**{**out, **overrides})


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
