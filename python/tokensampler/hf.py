"""Hugging Face transformers adapters: tokensampler inside `model.generate`, or our own loop.

Three routes, from least to most change to an existing transformers program:

1. `TokenSamplerLogitsProcessor` (default, ``draw=False``): penalties, temperature and the
   top-k / top-p / min-p filters run in ONE Rust call; the processor returns
   ``log(ts.probs(...))`` (``-inf`` outside the kept set) and Hugging Face still draws with its
   own ``softmax`` + ``torch.multinomial``. Pass ``**processor.generate_kwargs()`` to
   ``model.generate`` so that Hugging Face's default warpers (``top_k=50`` among them) do not
   filter a second time.
2. The same processor with ``draw=True``: it draws with tokensampler's seeded stream and
   returns scores that are ``0`` at the drawn id and ``-inf`` elsewhere, so ``model.generate``
   with ``do_sample=False`` (argmax) emits exactly our token. Generation is then reproducible
   from the processor's seed, independent of torch's global RNG.
3. `generate`: no `LogitsProcessor` at all. Our loop calls the model's forward with its KV
   cache (a ``DynamicCache``, passed as ``cache`` on transformers >= 5.24 and as
   ``past_key_values`` before), left padding, an attention mask and position ids, and draws
   with a `tokensampler.Sampler`.

History and padding: the history handed to the penalties is the row's ``input_ids``: the
prompt plus what has been generated, as in Hugging Face's ``RepetitionPenaltyLogitsProcessor``.
`model.generate` (transformers >= 5.23) leaves left padding out of its own repetition penalty
using the attention mask, but a custom processor never sees that mask, so left padding counts
as history unless ``pad_token_id`` is given: then the leading run of that id in each row is
masked to ``-1`` (transformers 5.0 to 5.22 count the padding in their own penalty: leave
``pad_token_id`` out to reproduce them). Only the leading run, because GPT-2 style models reuse
eos as pad and an eos inside the text is real history; the price is that a prompt which
itself starts with the pad id (a GPT-2 ``<|endoftext|>`` used as bos) loses those first ids
from its history. `generate` knows the attention mask and always excludes exactly the padding. ``penalize_prompt=False``
restricts the history to generated tokens (vLLM's convention for the frequency and presence
penalties); the name and the default match `tokensampler.generate`.

>>> import torch, tokensampler.hf as tshf
>>> p = tshf.TokenSamplerLogitsProcessor(top_k=1)
>>> p(torch.tensor([[0]]), torch.tensor([[0.0, 2.0, 1.0]])).tolist()
[[-inf, 0.0, -inf]]
"""

from __future__ import annotations

import inspect
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

try:
    from transformers import LogitsProcessor, LogitsProcessorList
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "tokensampler.hf needs Hugging Face transformers: pip install transformers"
    ) from e

from .device import BRIDGE
from .params import SamplingParams
from .sampling import SampleOutput, Sampler, _param_column, _params, _run, _seeds
from .structured import JsonSchemas, StepBitmask
from .words import resolve_strings

__all__ = [
    "HFGeneration",
    "TokenSamplerLogitsProcessor",
    "generate",
    "hf_warpers_off",
    "load_gguf",
]

# Hugging Face builds its own warpers from the generation config whenever do_sample=True, and
# its default config has top_k=50: these values switch every one of them (and its repetition
# penalty, a non-warper processor) off so that our processor is the only one that filters.
_HF_OFF: dict[str, Any] = {
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "repetition_penalty": 1.0,
}


def hf_warpers_off() -> dict[str, Any]:
    """`model.generate` keywords that switch off Hugging Face's own sampling warpers.

    Returns:
        A fresh dict: ``temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0,
        epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0``.

    >>> hf_warpers_off()["top_k"]
    0
    """
    return dict(_HF_OFF)


def load_gguf(path: str, dtype: torch.dtype = torch.float32) -> Any:
    """transformers' causal LM for a local GGUF file (e.g. `tokensampler.model`'s default
    SmolLM2), through transformers' own GGUF conversion, in eval mode: the same weights as
    `tokensampler.model.load` reads, for comparing the two. Uses
    ``from_pretrained(gguf_file=...)`` when accelerate is installed (it insists on it) and the
    same conversion by hand otherwise (Llama-family files)."""
    import importlib.util
    import os

    import transformers

    folder, name = os.path.split(path)
    # `to` and `eval` are called on the model held as an nn.Module: transformers wraps its
    # `to` in functools.wraps(nn.Module.to), which mypy reads as taking the model again as
    # first argument, and leaves its `eval` unannotated. Python still runs their overrides.
    model: transformers.PreTrainedModel
    if importlib.util.find_spec("accelerate") is not None:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=dtype
        )
    else:
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        config = transformers.LlamaConfig(**load_gguf_checkpoint(path)["config"])
        model = transformers.LlamaForCausalLM(config)
        parsed = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)
        model.load_state_dict(parsed["tensors"], strict=False)
        model.tie_weights()
        as_module: torch.nn.Module = model
        as_module.to(dtype)
    module: torch.nn.Module = model
    return module.eval()


def _leading_run_masked(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """`input_ids` with each row's leading run of `pad_token_id` (left padding) set to -1."""
    leading = torch.cumprod((input_ids == pad_token_id).to(torch.int8), dim=1).bool()
    if not leading.any():
        return input_ids
    return input_ids.masked_fill(leading, -1)


# ==== route 1 and 2: a LogitsProcessor ========================================================


class TokenSamplerLogitsProcessor(LogitsProcessor):
    """Applies tokensampler's penalties and filters inside Hugging Face `model.generate`.

    With ``draw=False`` (the default) it returns ``log(ts.probs(scores, ...))``: Hugging Face's
    ``softmax`` of that is exactly our final distribution, and its ``torch.multinomial`` draws
    from it. Use it with ``do_sample=True`` and Hugging Face's warpers off:

    >>> proc = TokenSamplerLogitsProcessor(temperature=0.7, top_p=0.9)
    >>> # model.generate(**inputs, **proc.generate_kwargs(), max_new_tokens=20)

    With ``draw=True`` it draws the token itself (tokensampler's seeded counter-based stream)
    and returns ``0`` at that id and ``-inf`` elsewhere; `generate_kwargs` then asks for
    ``do_sample=False``, so Hugging Face's argmax emits our token and no warper runs.

    The processor keeps a little state: the prompt length (for ``penalize_prompt=False``)
    and the step of its random stream (the draw's with ``draw=True``; with ``draw=False`` the
    stream only gives XTC's coin, so ``xtc_probability`` is a chance per row and step). Both
    restart when a call looks like the first step of a new generation (a batch of another
    size, or input_ids no longer than at the previous call), so one processor can serve
    several `model.generate` calls; with an int ``seed`` each of them is reproducible. With
    ``seed=None``, ``draw=True`` gets fresh entropy for each; ``draw=False`` takes XTC's seed
    from torch's generator (only when the coin matters), so that, like Hugging Face's own
    draw, ``torch.manual_seed`` reproduces the generation. `reset` restarts it by hand.

    Args:
        params: a `ts.SamplingParams` (None: built from the keywords).
        pad_token_id: when given, each row's leading run of this id (left padding) is left out
            of the history. None: every input id counts, as in Hugging Face's processors.
        tokenizer: the model's tokenizer (ours or Hugging Face's), to tokenize ``bad_words``
            and string DRY breakers (llama.cpp's default breakers when DRY is on); without
            one, those take token ids only.
        penalize_prompt: False to count only the tokens generated so far.
        draw: draw with tokensampler instead of returning log-probabilities.
        token_bitmask_fn: structured output: called with each step's ``input_ids``, it
            returns that step's allowed tokens, a (B, ceil(V/32)) int32 bitmask (bit j % 32
            of word j // 32 allows token j; a shorter mask bans the ids past it), or None;
            the mask is applied first, with the bans. `tokensampler.structured.StepBitmask`
            is one (a grammar matcher per row), or wrap xgrammar's / llguidance's own.
        json_schema, regex, grammar, structured_backend: the same built in: a
            `StepBitmask` for ``tokenizer`` (required then), as in
            `tokensampler.generate.generate`. The constraint is checked here; once it is
            complete the mask allows only eos, so `model.generate` ends the row there.
        **overrides: `SamplingParams` fields (temperature, top_k, top_p, min_p, the
            penalties, logit_bias, the stages and ``order``: scalars or one value per row of
            the generate batch; seed: the stream's seed (the draw's, and XTC's coin's): None,
            an int or one per row), validated here: a bad value raises at construction. The
            log-probability options (``logprobs``, ``logprobs_mode``, ...) play no part: the
            processor returns scores. ``on_invalid="skip"`` is refused: `model.generate` has
            no way to skip a row (`tokensampler.hf.generate` has).
    """

    def __init__(
        self,
        params: SamplingParams | None = None,
        /,
        *,
        pad_token_id: int | None = None,
        penalize_prompt: bool = True,
        draw: bool = False,
        tokenizer: Any = None,
        token_bitmask_fn: Callable[[torch.Tensor], Any] | None = None,
        json_schema: JsonSchemas = None,
        regex: str | Sequence[str | None] | None = None,
        grammar: str | Sequence[str | None] | None = None,
        structured_backend: str = "llguidance",
        **overrides: Any,
    ) -> None:
        self.params = resolve_strings(_params(params, overrides), tokenizer)
        if json_schema is not None or regex is not None or grammar is not None:
            if token_bitmask_fn is not None:
                raise ValueError("give token_bitmask_fn or json_schema / regex / grammar, not both")
            if tokenizer is None:
                raise ValueError("json_schema / regex / grammar need the model's tokenizer=")
            token_bitmask_fn = StepBitmask(tokenizer, json_schema=json_schema, regex=regex,
                                           grammar=grammar, backend=structured_backend)  # fmt: skip
        self.token_bitmask_fn = token_bitmask_fn
        if self.params.on_invalid != "raise":
            raise ValueError(
                "TokenSamplerLogitsProcessor: on_invalid='skip' is not supported (model.generate "
                "cannot skip a row; tokensampler.hf.generate can)"
            )
        self.pad_token_id = pad_token_id
        self.penalize_prompt = bool(penalize_prompt)
        self.draw = bool(draw)
        self.seed = self.params.seed
        self._sampler: Sampler | None = None
        # draw=False: the step and seeds of the stream XTC's coin comes from
        self._step = 0
        self._coin_seeds: Any = None
        self._prompt_len = 0
        self._last_shape: tuple[int, int] | None = None
        # draw=False with mirostat: each row's state, and the last step's distribution that
        # Hugging Face drew from (the next call sees which id it chose).
        self._mu: np.ndarray | None = None
        self._last_probs: np.ndarray | None = None

    @property
    def needs_history(self) -> bool:
        return self.params.needs_history

    def generate_kwargs(self) -> dict[str, Any]:
        """Keywords for `model.generate` that make this processor the only sampling stage.

        Returns:
            ``logits_processor``, ``do_sample`` (True for ``draw=False``, False for
            ``draw=True``), ``repetition_penalty=1.0`` and, for ``draw=False``,
            `hf_warpers_off`'s other neutral warper settings.
            Merge with your own keywords: ``model.generate(**inputs, **p.generate_kwargs(),
            max_new_tokens=20)``.
        """
        kw: dict[str, Any] = {"logits_processor": LogitsProcessorList([self])}
        if self.draw:
            # Greedy mode builds no warpers, but a repetition penalty from the model's
            # generation config would still run before us.
            kw.update(do_sample=False, repetition_penalty=1.0)
        else:
            kw.update(do_sample=True, **_HF_OFF)
        return kw

    def reset(self, seed: Any = None) -> None:
        """Forgets the prompt length and restarts the draw stream (reseeded when given) and
        the structured-output matchers of a built-in `StepBitmask`.

        Args:
            seed: a new seed for ``draw=True``; None keeps the processor's own rule (the
                constructor's seed, or fresh entropy when that was None).
        """
        if seed is not None:
            self.seed = seed
        self._last_shape = None
        self._sampler = None
        self._coin_seeds = None
        self._mu = None
        if isinstance(self.token_bitmask_fn, StepBitmask):
            self.token_bitmask_fn.reset()

    def _mirostat_mu(self, input_ids: torch.Tensor) -> np.ndarray:
        """Each row's mirostat state for this step (draw=False): 2 tau at the first step,
        then llama.cpp's update for the id Hugging Face drew from our last distribution."""
        b = int(input_ids.shape[0])
        m = self.params.matrix(b)

        def column(name: str) -> np.ndarray:
            return _param_column(m, b, name)

        tau = column("mirostat_tau")
        if self._mu is None or self._last_probs is None:
            return 2.0 * tau
        chosen = input_ids[:, -1].detach().cpu().numpy()
        p = self._last_probs[np.arange(b), chosen].astype(np.float64)
        with np.errstate(divide="ignore"):
            surprise = -np.log2(p)
        mu = self._mu - column("mirostat_eta") * (surprise - tau)
        return np.where(column("mirostat") > 0, mu, self._mu)

    def _history(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        if not self.needs_history:
            return None
        hist = input_ids
        if self.pad_token_id is not None:
            hist = _leading_run_masked(hist, self.pad_token_id)
        if not self.penalize_prompt:
            hist = hist[:, self._prompt_len :]
        return hist

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        """Processes one generation step.

        Args:
            input_ids: (B, L) ids so far (prompt, left padding included, plus generated).
            scores: (B, V) next-token logits.

        Returns:
            (B, V) scores of ``scores``' dtype and device: log-probabilities of our final
            distribution (``draw=False``) or 0 at the drawn id and -inf elsewhere.
        """
        shape = (int(input_ids.shape[0]), int(input_ids.shape[1]))
        last = self._last_shape
        if last is None or shape[0] != last[0] or shape[1] <= last[1]:
            # The first step of a generation: the whole prompt is in input_ids.
            self._prompt_len = shape[1]
            self._sampler = None
            self._coin_seeds = None
            self._mu = None
        self._last_shape = shape
        hist = self._history(input_ids)
        mask = self._bitmask(input_ids, int(scores.shape[-1]))
        if not self.draw:
            # ts.probs, at this step of the stream: XTC's coin is drawn anew at every step.
            if self._coin_seeds is None:
                self._coin_seeds = _seeds(self._coin_seed())
                self._step = 0
            mu = self._mirostat_mu(input_ids) if self.params.mirostat_on else None
            lg, res = _run(scores, self.params, history=hist, seeds=self._coin_seeds,
                           step=self._step, want_probs=True, mirostat_mu=mu,
                           token_bitmask=mask)  # fmt: skip
            self._step += 1
            if mu is not None:
                self._mu, self._last_probs = mu, res.probs
            if lg.device is None:  # CPU scores: the distribution is already where they are
                return torch.log(lg.wrap(res.probs)).to(scores.dtype)
            return _scatter_kept(res.probs, scores, lg.device)
        if self._sampler is None:
            seed = secrets.randbits(64) if self.seed is None else self.seed
            self._sampler = Sampler(self.params, seed=seed)
        ids = self._sampler(scores, history=hist, keepdim=True, token_bitmask=mask)
        if isinstance(ids, SampleOutput):  # logprobs / logprob_token_ids asked: not ours to give
            ids = ids.ids
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(1, ids, 0.0)

    def _bitmask(self, input_ids: torch.Tensor, v: int) -> Any:
        """This step's token bitmask from `token_bitmask_fn`, or None."""
        fn = self.token_bitmask_fn
        if fn is None:
            return None
        if isinstance(fn, StepBitmask):
            fn.check_vocab_size(v)
        return fn(input_ids)

    def _coin_seed(self) -> Any:
        """The seed of XTC's coin with draw=False: the processor's, else one from torch's
        generator when the coin matters (0 < xtc_probability < 1 in some row), else 0."""
        if self.seed is not None:
            return self.seed
        v = self.params.xtc_probability
        if any(e is not None and 0 < e < 1 for e in (v if isinstance(v, tuple) else (v,))):
            return int(torch.randint(0, 2**62, (1,)).item())
        return 0


def _scatter_kept(probs: np.ndarray, scores: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``log(probs)`` as a tensor like `scores` on `device`, built there: only the kept ids
    and their probabilities (B x K, K the largest kept set) go up, in one copy, and are
    scattered into a tensor of -inf (not a dense B x V copy): 8 bytes per kept entry, so
    less than a dense float32 copy while fewer than half the ids are kept."""
    b = probs.shape[0]
    rows, cols = np.nonzero(probs > 0)
    counts = np.bincount(rows, minlength=b)
    k = max(int(counts.max(initial=0)), 1)
    starts = np.cumsum(counts) - counts
    # Short rows repeat their first kept entry (scattering the same value twice is exact); a
    # row with nothing kept (none under on_invalid="raise") gets id 0 at probability 0.
    first = np.zeros(b, dtype=np.int32)  # int32 crosses in half the bytes; V < 2**31
    has = counts > 0
    first[has] = cols[starts[has]]
    ids = np.repeat(first[:, None], k, axis=1)
    vals = np.repeat(probs[np.arange(b), ids[:, 0]][:, None], k, axis=1)
    pos = np.arange(len(rows)) - starts[rows]
    ids[rows, pos] = cols
    vals[rows, pos] = probs[rows, cols]
    ids_d, vals_d = BRIDGE.to_device([ids, vals], device)
    out = torch.full(scores.shape, float("-inf"), dtype=scores.dtype, device=scores.device)
    return out.scatter_(1, ids_d.long(), torch.log(vals_d).to(scores.dtype))


# ==== route 3: our own loop on the model's forward ============================================


@dataclass
class HFGeneration:
    """What `generate` returns.

    Attributes:
        sequences: (B, L + n) int64 on the model's device, the left-padded prompts followed by
            the generated ids; rows that finished early are filled with the pad id (the layout
            of Hugging Face's ``model.generate`` output).
        prompt_length: L, the padded prompt width (``sequences[:, L:]`` is the new part).
        token_ids: per row, the generated ids up to and including the first eos.
        finish_reasons: per row, "eos", "length" or, with ``on_invalid="skip"``, "invalid"
            (nothing left to sample: the row ends there, without a token, and is padded), as
            in `tokensampler.generate`.
        texts: per row, the decoded generated text when a tokenizer was given, else None.
    """

    sequences: torch.Tensor
    prompt_length: int
    token_ids: list[list[int]]
    finish_reasons: list[str]
    texts: list[str] | None = None


def _encode(tokenizer: Any, text: str) -> list[int]:
    if tokenizer is None:
        raise ValueError("give a tokenizer to generate from strings, or pass token ids")
    return [int(i) for i in tokenizer.encode(text)]


def _decode(tokenizer: Any, ids: list[int]) -> str:
    try:
        return str(tokenizer.decode(ids, skip_special_tokens=True))
    except TypeError:  # tokenizers without the Hugging Face keyword
        return str(tokenizer.decode(ids))


def _first_id(x: Any) -> int | None:
    if x is None:
        return None
    if isinstance(x, (list, tuple)):
        return int(x[0]) if x else None
    if isinstance(x, torch.Tensor):
        return int(x.reshape(-1)[0]) if x.numel() else None
    return int(x)


def _eos_ids(model: Any, eos_token_id: Any) -> list[int]:
    if eos_token_id == "model":
        gc = getattr(model, "generation_config", None)
        eos_token_id = getattr(gc, "eos_token_id", None)
        if eos_token_id is None:
            eos_token_id = getattr(model.config, "eos_token_id", None)
    if eos_token_id is None:
        return []
    if isinstance(eos_token_id, torch.Tensor):
        return [int(i) for i in eos_token_id.reshape(-1).tolist()]
    if isinstance(eos_token_id, (list, tuple)):
        return [int(i) for i in eos_token_id]
    return [int(eos_token_id)]


def _pad_id(model: Any, tokenizer: Any, pad_token_id: int | None, eos: list[int]) -> int:
    candidates = [
        pad_token_id,
        getattr(tokenizer, "pad_token_id", None),
        getattr(getattr(model, "generation_config", None), "pad_token_id", None),
        getattr(model.config, "pad_token_id", None),
    ]
    for c in candidates:
        if (i := _first_id(c)) is not None:
            return i
    return eos[0] if eos else 0


def _left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("every prompt needs at least one token")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _prompts(
    inputs: Any, attention_mask: Any, tokenizer: Any, pad: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), both (B, L) int64, left-padded."""
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, Mapping):  # a tokenizer's BatchEncoding
        attention_mask = inputs.get("attention_mask", attention_mask)
        inputs = inputs["input_ids"]
    if isinstance(inputs, (list, tuple)):
        if inputs and isinstance(inputs[0], str):
            return _left_pad([_encode(tokenizer, s) for s in inputs], pad)
        if inputs and isinstance(inputs[0], (int, np.integer)):
            return _left_pad([[int(i) for i in inputs]], pad)
        return _left_pad([[int(i) for i in r] for r in inputs], pad)
    ids = torch.as_tensor(inputs, dtype=torch.long)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"input_ids must have shape (L,) or (B, L), got {tuple(ids.shape)}")
    if attention_mask is None:
        return ids, torch.ones_like(ids)
    mask = torch.as_tensor(attention_mask, dtype=torch.long).reshape(ids.shape)
    # Left padding means each row's mask is non-decreasing and ends in 1.
    if bool((mask[:, 1:] < mask[:, :-1]).any()) or bool((mask[:, -1] == 0).any()):
        raise ValueError(
            "generate needs left padding (attention_mask rows like 0,0,1,1,1); set the "
            "tokenizer's padding_side='left'"
        )
    return ids, mask


@torch.inference_mode()
def generate(
    model: Any,
    tokenizer: Any = None,
    prompts: Any = None,
    *,
    attention_mask: Any = None,
    max_new_tokens: int = 32,
    params: SamplingParams | None = None,
    sampler: Sampler | None = None,
    eos_token_id: Any = "model",
    pad_token_id: int | None = None,
    penalize_prompt: bool = True,
    **overrides: Any,
) -> HFGeneration:
    """Generates with a Hugging Face causal LM, drawing every token with tokensampler.

    The loop is the one `model.generate` runs for sampling, written against the model's
    public forward only: a prefill of the left-padded prompts (attention mask, position ids
    ``cumsum(mask) - 1``), then one token per step through the model's KV cache (the
    ``DynamicCache`` it returns), with ``logits_to_keep=1`` when the model supports it. The
    cache goes in and comes out under the name the model's ``forward`` declares: ``cache``
    on transformers >= 5.24 (which deprecates ``past_key_values``), ``past_key_values``
    before.
    Rows that emit an eos id get the pad id afterwards; the loop stops when all have.

    Args:
        model: a transformers causal LM (e.g. ``GPT2LMHeadModel``, ``LlamaForCausalLM``).
        tokenizer: used to encode string prompts and decode `HFGeneration.texts`; may be None
            when ``inputs`` are token ids.
        prompts: a string or list of strings; a list of id lists (ragged: we left-pad); an id
            tensor (L,) or (B, L) (left-padded, with ``attention_mask``); or a tokenizer's
            BatchEncoding.
        attention_mask: (B, L) 1 for tokens, 0 for left padding (tensor inputs only).
        max_new_tokens: the number of tokens to generate at most.
        params: a `ts.SamplingParams`; None builds one from the keywords.
        sampler: a ready `ts.Sampler` to use instead of `params` and the keywords.
        eos_token_id: an id or ids that end a row; "model" (default) reads the model's
            generation config; None generates ``max_new_tokens`` for every row.
        pad_token_id: the id written into padding; defaults to the tokenizer's, the model's,
            then the first eos id.
        penalize_prompt: False counts only generated tokens in the penalties' history.
        **overrides: `SamplingParams` fields (temperature, top_k, ..., seed), as in
            `ts.Sampler` (``temperature=0`` is greedy). ``on_invalid="skip"`` ends a row that
            has nothing to sample ("invalid") and goes on with the others; the log-probability
            options play no part (`HFGeneration` holds no log-probabilities: use
            `tokensampler.generate` for those).

    Returns:
        An `HFGeneration` (``sequences`` laid out like ``model.generate``'s output).

    >>> # out = tokensampler.hf.generate(model, tok, ["Hello", "Hi there"], top_p=0.9, seed=0)
    """
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    eos = _eos_ids(model, eos_token_id)
    pad = _pad_id(model, tokenizer, pad_token_id, eos)
    ids, mask = _prompts(prompts, attention_mask, tokenizer, pad)
    ids, mask = ids.cpu(), mask.cpu()  # prompts given on a device: read once, on the host
    device = model.device
    if sampler is None:
        sampler = Sampler(resolve_strings(_params(params, overrides), tokenizer))
    elif params is not None or overrides:
        raise TypeError("give either a sampler or sampling parameters, not both")
    b, prompt_len = ids.shape
    needs_history = sampler.params.needs_history
    skip = sampler.params.on_invalid == "skip"
    # The bookkeeping stays on the host, where the sampled ids arrive: per step, the logits go
    # down (one copy, one sync) and the next input ids go up (one copy); nothing else crosses.
    # on_invalid="skip": the step at which a row had nothing to sample (id -1), else -1
    invalid_at = np.full(b, -1, dtype=np.int64)
    # One buffer for the penalties' history: -1 (ignored by the kernels) for padding.
    hist: np.ndarray | None = None
    if needs_history:
        hist = np.full((b, prompt_len + max_new_tokens), -1, dtype=np.int64)
        if penalize_prompt:
            hist[:, :prompt_len] = ids.masked_fill(mask == 0, -1).numpy()
    # An all-ones mask carries no information; Hugging Face drops it too, and without it the
    # attention takes the plain causal path.
    all_ones = bool(mask.all())
    ids, mask = ids.to(device), mask.to(device)
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    full_mask: torch.Tensor | None = None if all_ones else mask
    forward_args = _forward_parameters(model)
    cache_name = _cache_argument(forward_args)
    extra: dict[str, Any] = {}
    if "logits_to_keep" in forward_args:
        extra["logits_to_keep"] = 1

    eos_np = np.array(eos, dtype=np.int64)
    finished = np.zeros(b, dtype=bool)
    new: list[np.ndarray] = []
    cur, past = ids, None
    for step in range(max_new_tokens):
        out = model(
            input_ids=cur,
            attention_mask=full_mask,
            position_ids=position_ids,
            use_cache=True,
            **{cache_name: past},
            **extra,
        )
        past = getattr(out, cache_name)
        logits = BRIDGE.to_host(out.logits[:, -1, :])
        h = hist[:, : prompt_len + step] if hist is not None else None
        res = sampler(logits, history=h)  # host logits: the ids come back on the host
        nxt = np.asarray((res.ids if isinstance(res, SampleOutput) else res).numpy())
        if skip:
            bad = (nxt < 0) & ~finished
            invalid_at[bad] = step
            ended = finished | bad  # every -1 is in a row that ends or has ended
        else:
            ended = finished.copy()
        nxt = np.where(ended, pad, nxt).astype(np.int64)
        new.append(nxt)
        if hist is not None:
            hist[:, prompt_len + step] = np.where(ended, -1, nxt)
        if eos:
            finished |= np.isin(nxt, eos_np)
        finished |= ended
        if ((eos or skip) and bool(finished.all())) or step == max_new_tokens - 1:
            break
        cur = BRIDGE.to_device([nxt[:, None]], device)[0]
        position_ids = position_ids[:, -1:] + 1
        if full_mask is not None:
            full_mask = torch.cat([full_mask, full_mask.new_ones((b, 1))], dim=1)

    gen_np = np.stack(new, axis=1) if new else np.zeros((b, 0), dtype=np.int64)
    gen = BRIDGE.to_device([gen_np], device)[0]
    token_ids: list[list[int]] = []
    finish_reasons: list[str] = []
    eos_set = set(eos)
    for row, at in zip(gen_np.tolist(), invalid_at.tolist(), strict=True):
        if at >= 0:
            token_ids.append(row[:at])
            finish_reasons.append("invalid")
            continue
        kept: list[int] = []
        reason = "length"
        for t in row:
            kept.append(t)
            if t in eos_set:
                reason = "eos"
                break
        token_ids.append(kept)
        finish_reasons.append(reason)
    return HFGeneration(
        sequences=torch.cat([ids, gen], dim=1),
        prompt_length=prompt_len,
        token_ids=token_ids,
        finish_reasons=finish_reasons,
        texts=[_decode(tokenizer, t) for t in token_ids] if tokenizer is not None else None,
    )


def _forward_parameters(model: Any) -> frozenset[str]:
    """The keyword names the model's ``forward`` declares (empty when it cannot be read)."""
    try:
        return frozenset(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def _cache_argument(forward_args: frozenset[str]) -> str:
    """The name under which the model's forward takes and returns its KV cache.

    transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old keyword warns, and is
    announced to go in 5.40); the model outputs carry the cache under the same name. A forward
    that declares neither (``**kwargs`` only) gets the name every release before 5.24 used.
    """
    return "cache" if "cache" in forward_args else "past_key_values"
