"""`ts.SamplingParams`: one frozen, validated value for every entry point, and the converters
from other engines' parameter names.

The field list is checked against the Rust parameter table (`_native.PARAMS`), ranges are
checked at construction by the kernels' own validation, and each converter is checked on the
peer's field names, including the fields it must refuse by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import tokensampler as ts
from tokensampler import _native
from tokensampler.params import PARAM_NAMES, SamplingParams

X = np.array([[0.5, 2.0, 1.0, -1.0, 0.0, 3.0], [1.0, 0.0, 2.5, 2.4, -3.0, 0.1]])


def test_fields_cover_the_rust_table_with_its_off_values() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(SamplingParams)}
    for name, off, integer, help_text in _native.PARAMS:
        assert name in fields, name
        default = fields[name]
        # None means off; otherwise the dataclass default is the table's off value.
        assert default is None or float(default) == off, (name, default, off)
        assert help_text
    assert PARAM_NAMES == tuple(n for n, *_ in _native.PARAMS)


def test_keyword_types_list_every_field() -> None:
    """The TypedDicts mypy checks keywords against name exactly the dataclass fields."""
    from tokensampler.params import KernelKwargs, SamplingKwargs

    fields = {f.name for f in dataclasses.fields(SamplingParams)}
    assert set(SamplingKwargs.__annotations__) | set(KernelKwargs.__annotations__) == fields
    assert fields - set(KernelKwargs.__annotations__) == {
        "logprobs", "top_logprobs", "logprobs_mode", "logprob_token_ids"}  # fmt: skip


def test_frozen_and_replace() -> None:
    p = SamplingParams(temperature=0.7, top_p=0.9)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.temperature = 1.0  # type: ignore[misc]
    q = p.replace(top_k=40)
    assert (q.temperature, q.top_p, q.top_k) == (0.7, 0.9, 40) and p.top_k is None
    assert p.replace() is p
    assert SamplingParams(top_p=0.9) == SamplingParams(top_p=0.9)


@pytest.mark.parametrize(
    ("name", "value"),
    [("temperature", -1.0), ("top_p", 0.0), ("top_p", 1.5), ("min_p", 1.0), ("top_k", -1),
     ("top_k", 2.5), ("repetition_penalty", float("nan")), ("frequency_scale", 0.5),
     ("presence_scale", float("inf")), ("frequency_penalty", float("nan"))],
)  # fmt: skip
def test_bad_values_raise_at_construction_naming_the_parameter(name: str, value: Any) -> None:
    with pytest.raises(ts.SamplingError, match=rf"\b{name}\b"):
        SamplingParams(**{name: value})
    with pytest.raises(ts.SamplingError, match=rf"\b{name}\b.*row 1"):
        SamplingParams(**{name: [None, value]})


def test_bad_types_and_shapes() -> None:
    with pytest.raises(TypeError, match="temperature"):
        SamplingParams(temperature="hot")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature has 2, top_k has 3"):
        SamplingParams(temperature=[1.0, 0.5], top_k=[1, 2, 3])
    with pytest.raises(ValueError, match="shape"):
        SamplingParams(top_p=np.ones((2, 2)))
    with pytest.raises(TypeError, match="seed"):
        SamplingParams(seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top_logprobs"):
        SamplingParams(top_logprobs=-1)
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams(logit_bias={-1: 1.0})
    with pytest.raises(TypeError):
        SamplingParams(0.5)  # type: ignore[misc]  # keyword-only


def test_per_row_values_are_stored_as_tuples() -> None:
    p = SamplingParams(temperature=np.array([0.5, 1.0]), top_k=[None, 3], seed=[1, 2**64 - 1])
    assert p.temperature == (0.5, 1.0)
    assert p.top_k == (0.0, 3.0)  # None in a row is off
    assert p.seed == (1, 2**64 - 1)
    assert p.batch_size == 2 and SamplingParams().batch_size is None
    hash(p)  # immutable all the way down


def test_needs_history_and_greedy() -> None:
    assert not SamplingParams().needs_history
    assert not SamplingParams(repetition_penalty=[1.0, 1.0]).needs_history
    assert SamplingParams(repetition_penalty=[1.0, 1.2]).needs_history
    assert SamplingParams(presence_scale=1.5).needs_history
    assert SamplingParams(temperature=0).is_greedy
    assert not SamplingParams(temperature=[0, 0.5]).is_greedy


# ---- converters ---------------------------------------------------------------------------


def test_from_hf() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GenerationConfig(do_sample=True, temperature=0.2, top_p=0.9, top_k=50)
    p = SamplingParams.from_hf(cfg)
    assert (p.temperature, p.top_p, p.top_k) == (0.2, 0.9, 50)
    assert SamplingParams.from_hf({"temperature": 0.7, "do_sample": False}).temperature == 0.0
    d = {"temperature": 0.6, "top_p": 0.95, "repetition_penalty": 1.1, "min_p": 0.05}
    p = SamplingParams.from_hf(d, seed=3)
    assert (p.repetition_penalty, p.min_p, p.seed) == (1.1, 0.05, 3)
    p = SamplingParams.from_hf({"typical_p": 0.5, "epsilon_cutoff": 3e-4, "eta_cutoff": 1e-3,
                                "min_tokens_to_keep": 2})  # fmt: skip
    assert (p.typical_p, p.epsilon_cutoff, p.eta_cutoff, p.min_tokens_to_keep, p.order) == (
        0.5, 3e-4, 1e-3, 2, "hf")  # fmt: skip
    with pytest.raises(ValueError, match="num_beams=4"):
        SamplingParams.from_hf({"num_beams": 4})
    with pytest.raises(ValueError, match="encoder_no_repeat_ngram_size=3"):
        SamplingParams.from_hf({"encoder_no_repeat_ngram_size": 3})
    # Issue 16's processors map (HF serialises sequence_bias as [[ids, bias], ...]).
    p = SamplingParams.from_hf({"no_repeat_ngram_size": 3, "bad_words_ids": [[5], [1, 2]],
                                "sequence_bias": [[[3, 4], -2.0]]})  # fmt: skip
    assert (p.no_repeat_ngram_size, p.bad_words_ids) == (3, [[5], [1, 2]])
    assert p.sequence_bias == {(3, 4): -2.0}
    assert SamplingParams.from_hf({"num_beams": 1}) == SamplingParams()


def test_from_vllm() -> None:
    p = SamplingParams.from_vllm({"temperature": 0.8, "top_k": -1, "top_p": 0.95, "seed": 7,
                                  "presence_penalty": 0.5, "max_tokens": 16, "stop": ["\n"]})  # fmt: skip
    assert (p.temperature, p.top_k, p.top_p, p.seed, p.presence_penalty) == (
        0.8, None, 0.95, 7, 0.5)  # fmt: skip
    assert SamplingParams.from_vllm({"top_k": 0}).top_k is None
    assert SamplingParams.from_vllm({"top_k": 20}).top_k == 20
    p = SamplingParams.from_vllm({"logprobs": 5, "logit_bias": {"3": -1.0}})
    assert (p.logprobs, p.top_logprobs, p.logit_bias) == (True, 5, {3: -1.0})
    with pytest.raises(ValueError, match="n=2"):
        SamplingParams.from_vllm({"n": 2})
    # vLLM applies min_p before top_p: the converter keeps its order.
    p = SamplingParams.from_vllm({"min_p": 0.3, "top_p": 0.75})
    assert (p.min_p, p.top_p, p.order) == (0.3, 0.75, "vllm")
    x = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    assert np.count_nonzero(ts.probs(x, p)) == 2  # vLLM keeps 2; Hugging Face's order 3
    assert np.count_nonzero(ts.probs(x, p, order="hf")) == 3


def test_from_openai() -> None:
    body = {"model": "x", "messages": [], "temperature": 0.5, "top_p": 0.8, "seed": 11,
            "logit_bias": {"50256": -100, "7": 2}, "logprobs": True, "top_logprobs": 3,
            "frequency_penalty": 0.2, "max_tokens": 5}  # fmt: skip
    p = SamplingParams.from_openai(body)
    assert p.logit_bias == {50256: -100.0, 7: 2.0}
    assert (p.temperature, p.top_p, p.seed, p.logprobs, p.top_logprobs) == (0.5, 0.8, 11, True, 3)
    assert p.frequency_penalty == 0.2
    legacy = SamplingParams.from_openai({"logprobs": 2})
    assert (legacy.logprobs, legacy.top_logprobs) == (True, 2)
    with pytest.raises(ValueError, match="n=3"):
        SamplingParams.from_openai({"n": 3})
    with pytest.raises(ValueError, match="logit_bias"):
        SamplingParams.from_openai({"logit_bias": {"a": 1}})


def test_from_llama_cpp() -> None:
    p = SamplingParams.from_llama_cpp({"temp": 0.0, "top_k": 40, "top_p": 0.95,
                                       "repeat_penalty": 1.1, "repeat_last_n": -1, "seed": -1,
                                       "logit_bias": [[15043, False], [3, 1.5]]})  # fmt: skip
    assert (p.temperature, p.top_k, p.top_p, p.repetition_penalty, p.seed) == (
        0.0, 40, 0.95, 1.1, None)  # fmt: skip
    assert p.logit_bias == {15043: float("-inf"), 3: 1.5}
    assert SamplingParams.from_llama_cpp({"top_k": 0}).top_k is None
    assert SamplingParams.from_llama_cpp({"temperature": 0.7, "top_k": 40}).temperature == 0.7
    assert SamplingParams.from_llama_cpp({"repeat_last_n": 64}).penalty_last_n == 64
    # Mirostat: llama.cpp's chain is temperature + mirostat alone.
    p = SamplingParams.from_llama_cpp({"mirostat": 2, "mirostat_tau": 3.0, "top_k": 40,
                                       "repeat_penalty": 1.3, "temp": 0.7})  # fmt: skip
    assert (p.mirostat, p.mirostat_tau, p.order, p.top_k, p.repetition_penalty) == (
        2, 3.0, ("temperature",), None, 1.0)  # fmt: skip
    p = SamplingParams.from_llama_cpp({"dry_multiplier": 0.8, "dry_base": 2.0,
                                       "dry_sequence_breakers": ["\n"]})  # fmt: skip
    assert (p.dry_multiplier, p.dry_base, p.dry_sequence_breakers) == (0.8, 2.0, ["\n"])
    with pytest.raises(ValueError, match="dry after"):
        SamplingParams.from_llama_cpp({"samplers": "top_k;dry", "dry_multiplier": 0.8})
    # The filters at temperature 1, the temperature last: llama.cpp's default chain.
    p = SamplingParams.from_llama_cpp({"temperature": 0.8, "top_p": 0.9, "min_keep": 2,
                                       "typical_p": 0.95, "top_n_sigma": -1.0,
                                       "xtc_probability": 0.5, "dynatemp_range": 0.2})  # fmt: skip
    assert (p.order, p.min_tokens_to_keep, p.typical_p, p.top_n_sigma) == (
        "llama.cpp", 2, 0.95, None)  # fmt: skip
    assert (p.xtc_probability, p.xtc_threshold, p.dynatemp_range) == (0.5, 0.1, 0.2)
    # A samplers chain is the order; a stage it leaves out is off, as in llama.cpp.
    p = SamplingParams.from_llama_cpp({"samplers": "penalties;dry;top_k;typ_p;temperature",
                                       "top_k": 40, "top_p": 0.9, "typical_p": 0.9})  # fmt: skip
    assert p.order == ("top_k", "typical_p", "temperature", "epsilon_cutoff", "eta_cutoff")
    assert (p.top_k, p.top_p, p.typical_p) == (40, None, 0.9)
    with pytest.raises(ValueError, match="mirostat"):
        SamplingParams.from_llama_cpp({"samplers": ["top_k", "mirostat"]})
    with pytest.raises(ValueError, match="penalties after"):
        SamplingParams.from_llama_cpp({"samplers": "top_k;penalties", "repeat_penalty": 1.1})


def test_converted_params_sample_like_the_keywords() -> None:
    p = SamplingParams.from_openai({"temperature": 0.5, "top_p": 0.8, "seed": 3})
    want = ts.probs(X, temperature=0.5, top_p=0.8)
    np.testing.assert_array_equal(ts.probs(X, p), want)
    assert ts.sample(X, p).tolist() == ts.sample(X, temperature=0.5, top_p=0.8, seed=3).tolist()


def test_keyword_cache_keeps_types_apart() -> None:
    """Scalar keywords are served from a cache; 1.0 == 1 must not let a float seed (refused)
    reuse the int seed's entry, nor an int temperature change a later float's result."""
    x = np.zeros(3)
    ts.sample(x, seed=1)
    with pytest.raises(TypeError, match="seed"):
        ts.sample(x, seed=1.0)
    assert ts.Sampler(seed=2).params.seed == 2
    with pytest.raises(TypeError, match="seed"):
        ts.Sampler(seed=2.0)
