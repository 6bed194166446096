"""The history-aware and stateful fields of issue #16 reach the sampler from every entry point.

Issue #16: "All of it per row, with per-row values, reachable from SamplingParams, the CLI,
generate and the HF processor, and mapped by from_hf / from_llama_cpp / from_vllm".
test_history_stages.py checks the kernels' results against the oracle and the reference
engines; this file checks that each entry point hands the new fields (penalty_last_n,
dry_multiplier / dry_base / dry_allowed_length / dry_penalty_last_n / dry_sequence_breakers,
no_repeat_ngram_size, bad_words_ids, bad_words, sequence_bias, mirostat / mirostat_tau /
mirostat_eta) to the kernels, with the history, and that they act:

- `ts.sample` / `ts.probs` / `ts.Sampler`: keywords and a `SamplingParams` give the same
  results, each field changes the distribution (one small property each, by hand), per-row
  values act per row; the stateless calls refuse mirostat and strings; bad counts, values and
  ids >= V raise.
- `tokensampler.generate` / `stream`: keywords, ``params=`` and `stream` give the same tokens,
  which are exactly what a `ts.Sampler` built from the same keywords draws from the logits and
  histories the loop passed (recorded); without the field the Sampler's log-probabilities on
  those very steps differ. Strings (bad words, DRY breakers, llama.cpp's default breakers)
  are tokenized with the embedded SmolLM2's tokenizer.
- `tokensampler.hf`: the processor (draw=False) returns log(ts.probs) with the history; with
  mirostat its ``mu`` follows llama.cpp's rule on the ids Hugging Face drew; draw=True and
  `tokensampler.hf.generate` draw what a Sampler draws; the tokenizer route resolves strings.
- the CLI: each option lands in the loop's `SamplingParams`; bad values fail in one line.
- the converters: `from_hf` (dict and list sequence_bias), `from_vllm` (bad_words),
  `from_llama_cpp` (repeat_last_n, dry_*, mirostat*, the samplers string, and the mirostat
  rule: temperature then mirostat only).

Models are tiny and random (ours: a 1-layer Llama over 300 ids, and one over SmolLM2's
vocabulary for the tokenizer routes; Hugging Face's: a 1-layer Llama over 97 ids; the CLI: the
byte-level GPT-2 folder of `model_helpers.write_tiny_gpt2_folder`).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
import tokensampler as ts
from model_helpers import cli_generate, default_tokenizer, random_model, tiny_llama_config
from model_helpers import write_tiny_gpt2_folder as _write_gpt2

torch = pytest.importorskip("torch")

from tokensampler.generate import generate, stream
from tokensampler.words import DEFAULT_DRY_BREAKERS, bad_words_sequences, dry_breaker_sequences

SEED = 3
V = 300
# Prompts with repeats, so DRY, the n-gram ban and the multi-token sequences have matches.
PROMPTS = [[5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [9, 10, 11, 9, 10, 11, 9, 10]]
GEN = {"max_new_tokens": 10, "ignore_eos": True}

DRY_ON = {"dry_multiplier": 0.3, "dry_allowed_length": 1}  # the prompts end in repeats of 6-7 ids
# name -> (keywords with the field on, the same keywords without it).
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "penalty_last_n": (
        {"repetition_penalty": 3.0, "penalty_last_n": 2},
        {"repetition_penalty": 3.0},
    ),
    "dry_multiplier": (DRY_ON, {}),
    "dry_base": ({**DRY_ON, "dry_base": 4.0}, DRY_ON),
    "dry_allowed_length": ({"dry_multiplier": 2.0, "dry_allowed_length": 1},
                           {"dry_multiplier": 2.0, "dry_allowed_length": 4}),
    "dry_penalty_last_n": ({**DRY_ON, "dry_penalty_last_n": 4}, DRY_ON),
    "dry_sequence_breakers": ({**DRY_ON, "dry_sequence_breakers": [[6], [10], [7, 8], [17], [3, 40]]}, DRY_ON),
    "no_repeat_ngram_size": ({"no_repeat_ngram_size": 2}, {}),
    "bad_words_ids": ({"bad_words_ids": [[5, 6], [10, 11], [40]]}, {}),
    "sequence_bias": ({"sequence_bias": {(6, 7): 6.0, (10, 11): -math.inf, (40,): 4.0}}, {}),
    "mirostat=1": ({"mirostat": 1, "mirostat_tau": 3.0}, {}),
    "mirostat=2": ({"mirostat": 2, "mirostat_tau": 3.0}, {}),
    "mirostat_tau": ({"mirostat": 2, "mirostat_tau": 2.0}, {"mirostat": 2}),
    "mirostat_eta": ({"mirostat": 2, "mirostat_tau": 3.0, "mirostat_eta": 0.9},
                     {"mirostat": 2, "mirostat_tau": 3.0}),
}  # fmt: skip
STATELESS = [c for c in CASES if not c.startswith("mirostat")]


def fresh_bigrams(seq: list[int], start: int) -> bool:
    """Whether no bigram ending at a position >= `start` of `seq` occurred before it."""
    return all(
        (seq[j - 1], seq[j]) not in set(itertools.pairwise(seq[:j])) for j in range(start, len(seq))
    )


def replay(steps: list[Any], hists: list[Any], **kw: Any) -> tuple[list[list[int]], np.ndarray]:
    """What a fresh `ts.Sampler(**kw)` draws from recorded (B, V) logits and histories, step
    after step: (ids per row, log-probabilities (B, steps))."""
    s = ts.Sampler(logprobs=True, **{"seed": SEED, **kw})
    outs = [s(np.asarray(x), history=h) for x, h in zip(steps, hists, strict=True)]
    ids = np.stack([np.asarray(o.ids) for o in outs], axis=1)
    lps = np.stack([np.asarray(o.logprobs) for o in outs], axis=1)
    return ids.tolist(), lps


# ==============================================================================================
# ts.sample, ts.probs, ts.Sampler
# ==============================================================================================


def _x(b: int = 2, v: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((b, v))


HIST = np.array([[1, 2, 3, 1, 2], [-1, 4, 5, 4, 5]])  # row 1 padded


@pytest.mark.parametrize("case", STATELESS)
def test_sample_probs_take_keywords_and_params(case: str) -> None:
    """Keywords and a SamplingParams give the same distribution and draws, the first draw of
    a Sampler is sample's, and the field changes the distribution on this history."""
    kw, base = CASES[case]
    x, h = _x(2, 50), np.array([[5, 6, 7, 8, 5, 6, 7, 8, 5, 6], [9, 10, 11, 9, 10, 11, 9, 10,
                                                                 -1, -1]])  # fmt: skip
    p = ts.SamplingParams(**kw)
    np.testing.assert_array_equal(ts.probs(x, p, history=h), ts.probs(x, history=h, **kw))
    for seed in range(4):
        want = ts.sample(x, history=h, seed=seed, **kw)
        np.testing.assert_array_equal(ts.sample(x, p, history=h, seed=seed), want)
        np.testing.assert_array_equal(ts.Sampler(p, seed=seed)(x, history=h), want)
    assert not np.array_equal(ts.probs(x, history=h, **kw), ts.probs(x, history=h, **base))
    # torch in, torch out, same numbers
    got = ts.probs(torch.from_numpy(x), history=torch.from_numpy(h), **kw)
    np.testing.assert_array_equal(got.numpy(), ts.probs(x, history=h, **kw))


def _logp(x: np.ndarray, **kw: Any) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(ts.probs(x, **kw))


def test_each_field_by_hand() -> None:
    """One property per field that only a working stage gives (V = 12, two rows)."""
    x = _x()
    d = _logp(x) - _logp(x)[:, :1]  # log-odds against token 0, no stage

    def odds(**kw: Any) -> np.ndarray:
        lp = _logp(x, history=HIST, **kw)
        return lp - lp[:, :1]

    # no_repeat_ngram_size 2: row 0 ends with 2, which was followed by 3; row 1 ends with 5,
    # followed by 4 (the padding is dropped).
    p = ts.probs(x, history=HIST, no_repeat_ngram_size=2)
    assert p[0, 3] == 0 and p[1, 4] == 0 and (p > 0).sum() == 2 * 12 - 2
    # bad_words_ids: [3] always; [2, 4] when the history ends with 2 (row 0 only).
    p = ts.probs(x, history=HIST, bad_words_ids=[[3], [2, 4]])
    assert p[0, 3] == p[1, 3] == 0 and p[0, 4] == 0 and p[1, 4] > 0
    # sequence_bias: a length-1 bias always adds, (5, 7) only where the history ends with 5.
    o = odds(sequence_bias={(9,): 1.5, (5, 7): -2.0})
    np.testing.assert_allclose(o[:, 9], d[:, 9] + 1.5, atol=1e-5)
    np.testing.assert_allclose(o[:, 7], d[:, 7] + [0.0, -2.0], atol=1e-5)
    # penalty_last_n 1: only the last id is penalised (presence penalty 1 on logits).
    o = odds(presence_penalty=1.0, penalty_last_n=1)
    np.testing.assert_allclose(o[0, 2], d[0, 2] - 1.0, atol=1e-5)
    np.testing.assert_allclose(o[0, [1, 3]], d[0, [1, 3]], atol=1e-5)
    o = odds(presence_penalty=1.0, penalty_last_n=0)
    np.testing.assert_allclose(o, d, atol=1e-5)
    # DRY, row 0 [1 2 3 1 2]: the suffix "1 2" repeats and was followed by 3, so 3 loses
    # multiplier * base ** (2 - allowed_length) = 0.7 * 1.75 ** 0. Row 1 [4 5 4 5]: "4 5"
    # repeats and was followed by 4 (the padding is dropped), so 4 loses 0.7 too.
    o = odds(dry_multiplier=0.7)
    np.testing.assert_allclose(o[0, 3], d[0, 3] - 0.7, atol=1e-5)
    np.testing.assert_allclose(o[1, 4], d[1, 4] - 0.7, atol=1e-5)
    np.testing.assert_allclose(o[0, 4:], d[0, 4:], atol=1e-5)
    o = odds(dry_multiplier=0.7, dry_base=3.0, dry_allowed_length=1)
    np.testing.assert_allclose(o[0, 3], d[0, 3] - 0.7 * 3.0, atol=1e-5)
    # a breaker 2 (a single-token breaker) stops row 0's match; the window of 2 ids, too
    o = odds(dry_multiplier=0.7, dry_sequence_breakers=[[2]])
    np.testing.assert_allclose(o[0, 3], d[0, 3], atol=1e-5)
    o = odds(dry_multiplier=0.7, dry_penalty_last_n=2)
    np.testing.assert_allclose(o[0], d[0], atol=1e-5)


def test_per_row_values_act_per_row() -> None:
    """Per-row values of each new table field and per-row sequence sets: each row is the row
    of the call where that row's value applies to every row."""
    x, h = _x(2, 12), HIST
    per_row: list[dict[str, Any]] = [
        {"no_repeat_ngram_size": [2, 0]},
        {"penalty_last_n": [1, -1], "presence_penalty": 1.0},
        {"dry_multiplier": [0.0, 0.7]},
        {"dry_multiplier": 0.7, "dry_base": [1.75, 3.0]},
        {"dry_multiplier": 0.7, "dry_allowed_length": [1, 2]},
        {"dry_multiplier": 0.7, "dry_penalty_last_n": [2, -1]},
        {"dry_multiplier": 0.7, "dry_sequence_breakers": [[[2]], [[4]]]},
        {"bad_words_ids": [[[3]], [[2, 4], [7]]]},
        {"sequence_bias": [{(9,): 1.5}, {(5, 7): -2.0}]},
    ]
    for kw in per_row:
        got = ts.probs(x, history=h, **kw)
        for r in range(2):
            one = {k: (v[r] if isinstance(v, list) and len(v) == 2 else v) for k, v in kw.items()}
            np.testing.assert_array_equal(got[r], ts.probs(x, history=h, **one)[r], str(kw))


@pytest.mark.parametrize("fn", [ts.sample, ts.probs])
@pytest.mark.parametrize("version", [1, 2, [0, 2]])
def test_stateless_calls_refuse_mirostat(fn: Any, version: Any) -> None:
    with pytest.raises(ValueError, match="mirostat"):
        fn(_x(), mirostat=version)
    with pytest.raises(ValueError, match="mirostat"):
        fn(_x(), ts.SamplingParams(mirostat=version))


def test_sampler_mirostat_state() -> None:
    """mu starts at 2 tau, moves by llama.cpp's update on the drawn token (v2: the kept set
    is -log2 p <= mu), per row: a row with mirostat 0 keeps no update and samples as without
    it; state_dict / load_state_dict resume the draws bit-identically."""
    x = _x(2, 200, seed=4) * 2
    tau, eta = 3.0, 0.3
    s = ts.Sampler(mirostat=[0, 2], mirostat_tau=tau, mirostat_eta=eta, seed=SEED, logprobs=True)
    plain = ts.Sampler(seed=SEED)
    assert s.mirostat_mu is None
    mu = 2 * tau
    for _step in range(6):
        lp = np.log(ts.probs(x))[1]
        kept = np.flatnonzero(-lp / math.log(2) <= mu)
        out = s(x)
        ids = np.asarray(out.ids)
        assert ids[0] == plain(x)[0]  # row 0: mirostat off, the plain draw
        assert ids[1] in kept or ids[1] == np.argmax(lp)
        p_renorm = math.exp(float(out.logprobs[1]))
        mu = mu - eta * (-math.log2(p_renorm) - tau)
        got = s.mirostat_mu
        assert got is not None and got[1] == pytest.approx(mu, abs=1e-9)
    state = s.state_dict()
    after = [np.asarray(s(x).ids).tolist() for _ in range(5)]
    fresh = ts.Sampler(mirostat=[0, 2], mirostat_tau=tau, mirostat_eta=eta, logprobs=True)
    fresh.load_state_dict(state)
    assert [np.asarray(fresh(x).ids).tolist() for _ in range(5)] == after
    with pytest.raises(ValueError, match="missing"):
        fresh.load_state_dict({"seed": 1, "step": 0})
    with pytest.raises(ValueError, match="step"):
        fresh.load_state_dict({**state, "step": -1})


def test_bad_input_is_refused() -> None:
    """Strings without a tokenizer, per-row counts that do not match the batch, invalid values
    and ids >= V in every id-taking field, whichever entry point gets them."""
    x = _x(2, 12)
    for kw in ({"bad_words": ["cat"]}, {"dry_multiplier": 0.8, "dry_sequence_breakers": ["\n"]}):
        for call in (lambda **k: ts.sample(x, **k), lambda **k: ts.probs(x, **k),
                     lambda **k: ts.Sampler(**k)(x)):  # fmt: skip
            with pytest.raises(ValueError, match="tokenizer"):
                call(**kw)
    for kw in (
        {"no_repeat_ngram_size": [2, 2, 2]},
        {"dry_multiplier": [0.1, 0.2, 0.3]},
        {"sequence_bias": [{(1,): 1.0}] * 3},
        {"bad_words_ids": [[[1]], [[2]], [[3]]]},
        {"dry_multiplier": 0.5, "dry_sequence_breakers": [[[1]], [[2]], [[3]]]},
    ):
        with pytest.raises(ValueError, match="3"):
            ts.sample(x, history=HIST, **kw)
        with pytest.raises(ValueError, match="3"):
            ts.Sampler(**kw)(x, history=HIST)
    for name, bad in (("penalty_last_n", -2), ("penalty_last_n", 1.5), ("dry_multiplier", -1.0),
                      ("dry_base", 0.5), ("dry_allowed_length", -1), ("dry_penalty_last_n", -3),
                      ("no_repeat_ngram_size", -1), ("mirostat", 3), ("mirostat_tau", math.nan),
                      ("mirostat_eta", -0.1), ("mirostat_tau", math.inf)):  # fmt: skip
        with pytest.raises(ValueError, match=name):
            ts.SamplingParams(**{name: bad})
        with pytest.raises(ValueError, match=name):
            ts.Sampler(**{name: bad})
    for kw in (
        {"sequence_bias": {(12,): 1.0}},
        {"sequence_bias": {(1, 40): 1.0}},
        {"bad_words_ids": [[3], [2, 12]]},
        {"dry_multiplier": 0.5, "dry_sequence_breakers": [[2], [1, 12]]},
    ):
        with pytest.raises(ValueError, match="vocabulary of 12"):
            ts.sample(x, history=HIST, **kw)
    for kw in ({"sequence_bias": {(1,): "a"}}, {"sequence_bias": {(1,): math.nan}},
               {"bad_words_ids": [["a"]]}, {"bad_words_ids": [[]]},
               {"bad_words_ids": [[-1]]}, {"bad_words": "cat"}):  # fmt: skip
        with pytest.raises((TypeError, ValueError)):
            ts.SamplingParams(**kw)


# ==============================================================================================
# tokensampler.generate: generate and stream
# ==============================================================================================


@pytest.fixture(scope="module")
def lm() -> Any:
    return random_model(tiny_llama_config(vocab_size=V, max_seq_len=64, n_layer=1), seed=5,
                        scale=30)  # fmt: skip


class Recorded:
    """A Sampler the loop built: its params, the logits and histories it was called on."""

    def __init__(self, params: ts.SamplingParams) -> None:
        self.params = params
        self.logits: list[np.ndarray] = []
        self.hists: list[Any] = []


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[Recorded]:
    """Every `ts.Sampler` `tokensampler.generate`'s loop builds (the CLI's included)."""
    import tokensampler.generate as gen

    seen: list[Recorded] = []

    class Recording(gen.Sampler):
        def __init__(self, params: Any = None, /, **kw: Any) -> None:
            super().__init__(params, **kw)
            self.record = Recorded(self.params)
            seen.append(self.record)

        def __call__(self, logits: Any, history: Any = None, logit_bias: Any = None, *,
                     keepdim: bool = False, token_bitmask: Any = None) -> Any:  # fmt: skip
            self.record.logits.append(torch.as_tensor(logits).cpu().numpy().copy())
            self.record.hists.append(None if history is None else np.array(history))
            return super().__call__(
                logits, history, logit_bias, keepdim=keepdim, token_bitmask=token_bitmask
            )

    monkeypatch.setattr(gen, "Sampler", Recording)
    return seen


@pytest.mark.parametrize("case", list(CASES))
def test_generate_applies_the_field(lm: Any, recorded: list[Recorded], case: str) -> None:
    """Keywords, params= and stream give the same tokens: the draws of a Sampler built from
    the keywords on the loop's own logits and histories; without the field the Sampler's
    log-probabilities on those steps differ (mirostat: the loop carries mu)."""
    kw, base = CASES[case]
    out = generate(lm, None, PROMPTS, seed=SEED, **GEN, **kw)
    rec = recorded[0]
    assert len(rec.logits) == GEN["max_new_tokens"]
    assert rec.params.replace(seed=None, logprobs=False) == ts.SamplingParams(**kw)
    assert (rec.hists[0] is not None) == ts.SamplingParams(**kw).needs_history
    via_params = generate(lm, None, PROMPTS, params=ts.SamplingParams(**kw), seed=SEED, **GEN)
    s = stream(lm, None, PROMPTS, params=ts.SamplingParams(**kw, seed=SEED), **GEN)
    events = list(s)
    assert via_params.token_ids == out.token_ids
    assert s.result.token_ids == out.token_ids
    assert [[e.token_id for e in events if e.row == b] for b in range(2)] == out.token_ids
    ids, lps = replay(rec.logits, rec.hists, **kw)
    assert ids == out.token_ids
    np.testing.assert_allclose(np.array(out.logprobs), lps, rtol=1e-12)
    # the histories the loop passed: each row's prompt and the ids drawn so far
    if rec.hists[0] is not None:
        last = rec.hists[-1]
        for b, prompt in enumerate(PROMPTS):
            row = [int(i) for i in last[b] if i >= 0]
            assert row == prompt + out.token_ids[b][:-1]
    base_ids, base_lps = replay(rec.logits, rec.hists, **base)
    assert base_ids != ids or not np.allclose(base_lps, lps)


def test_generate_bans_hold(lm: Any) -> None:
    """Over many sampled tokens: no generated bigram repeats one of the row's text with
    no_repeat_ngram_size=2, and a banned pair never appears."""
    kw = {"temperature": 1.5, "seed": SEED, "max_new_tokens": 40, "ignore_eos": True}
    out = generate(lm, None, PROMPTS, no_repeat_ngram_size=2, **kw)
    for b, prompt in enumerate(PROMPTS):
        seq = prompt + out.token_ids[b]
        assert fresh_bigrams(seq, len(prompt)), seq
    plain = generate(lm, None, PROMPTS, **kw)
    top = [max(set(r), key=r.count) for r in plain.token_ids]  # each row's commonest token
    banned = generate(lm, None, PROMPTS, bad_words_ids=[[t] for t in top], **kw)
    assert not any(t in row for t in top for row in banned.token_ids)


def test_generate_per_row_values(lm: Any) -> None:
    """Per-row values: row 0 off, row 1 on; each row is the run where its value applies to
    both rows (the same batch position, so the same random stream)."""
    kw = {"seed": SEED, **GEN}
    for on in ({"dry_multiplier": [0.0, 3.0], "dry_allowed_length": 1},
               {"mirostat": [0, 2], "mirostat_tau": 2.0},
               {"no_repeat_ngram_size": [0, 2], "temperature": 2.0}):  # fmt: skip
        both = generate(lm, None, PROMPTS, **on, **kw)
        row1 = {k: v[1] if isinstance(v, list) else v for k, v in on.items()}
        row0 = {k: v[0] if isinstance(v, list) else v for k, v in on.items()}
        assert both.token_ids[0] == generate(lm, None, PROMPTS, **row0, **kw).token_ids[0]
        assert both.token_ids[1] == generate(lm, None, PROMPTS, **row1, **kw).token_ids[1]


@pytest.fixture(scope="module")
def smol_tok() -> Any:
    from model_helpers import require_default_model

    require_default_model()
    return default_tokenizer()


@pytest.fixture(scope="module")
def smol_lm(smol_tok: Any) -> Any:
    """A tiny random Llama over SmolLM2's vocabulary: the real tokenizer, a fast model."""
    cfg = tiny_llama_config(vocab_size=smol_tok.vocab_size, max_seq_len=64, n_layer=1)
    return random_model(cfg, seed=7, scale=30)


def test_generate_resolves_strings(smol_lm: Any, smol_tok: Any,
                                   recorded: list[Recorded]) -> None:  # fmt: skip
    """bad_words and string DRY breakers become the tokenizer's id sequences (vLLM's and
    llama.cpp's rules); with DRY on and no breakers, llama.cpp's defaults apply; a loop with
    ids only (no tokenizer) does not add them."""
    prompt = "the cat sat on the mat. the cat sat on"
    kw = {"seed": SEED, "max_new_tokens": 6, "ignore_eos": True}
    generate(smol_lm, smol_tok, prompt, bad_words=["mat", "dog house"], **kw)
    p = recorded[-1].params
    assert p.bad_words is None
    assert [list(s) for s in p.bad_words_ids] == bad_words_sequences(smol_tok,
                                                                     ["mat", "dog house"])  # fmt: skip
    generate(smol_lm, smol_tok, prompt, dry_multiplier=0.8, **kw)
    want = dry_breaker_sequences(smol_tok, DEFAULT_DRY_BREAKERS)
    assert [list(s) for s in recorded[-1].params.dry_sequence_breakers] == want
    generate(smol_lm, smol_tok, prompt, dry_multiplier=0.8, dry_sequence_breakers=["cat", [5]],
             **kw)  # fmt: skip
    got = [list(s) for s in recorded[-1].params.dry_sequence_breakers]
    assert got == dry_breaker_sequences(smol_tok, ["cat", [5]])
    # DRY off: no default breakers are added; ids only: none either
    generate(smol_lm, smol_tok, prompt, **kw)
    assert recorded[-1].params.dry_sequence_breakers is None
    generate(smol_lm, None, [smol_tok.encode(prompt)], dry_multiplier=0.8, **kw)
    assert recorded[-1].params.dry_sequence_breakers is None
    with pytest.raises(ValueError, match="tokenizer"):
        generate(smol_lm, None, [[1, 2, 3]], bad_words=["mat"], **kw)
    # The bad word never comes out, on a model pushed towards it (its ids biased up).
    mat = bad_words_sequences(smol_tok, ["mat"])
    bias = {s[0]: 20.0 for s in mat if len(s) == 1}
    pushed = generate(smol_lm, smol_tok, prompt, logit_bias=bias, **kw)
    assert any(t in bias for t in pushed.token_ids[0])
    banned = generate(smol_lm, smol_tok, prompt, logit_bias=bias, bad_words=["mat"], **kw)
    assert not any(t in bias for t in banned.token_ids[0])


# ==============================================================================================
# tokensampler.hf: the LogitsProcessor (inside model.generate) and hf.generate
# ==============================================================================================

HF_V = 97
PAD, BOS, EOS = 0, 1, 2
HF_NEW = 10
IDS = torch.tensor([[PAD, PAD, 5, 17, 5, 17], [11, 3, 40, 11, 3, 40]])
MASK = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])


@pytest.fixture(scope="module")
def hf_model() -> Any:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=HF_V, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(12)
    return model


@pytest.fixture(scope="module")
def tshf() -> Any:
    pytest.importorskip("transformers")
    import tokensampler.hf

    return tokensampler.hf


def hf_run(model: Any, proc: Any, **kw: Any) -> Any:
    return model.generate(input_ids=IDS, attention_mask=MASK, max_new_tokens=HF_NEW,
                          eos_token_id=None, output_logits=True, return_dict_in_generate=True,
                          **proc.generate_kwargs(), **kw)  # fmt: skip


def hf_hists(out: Any) -> list[np.ndarray]:
    """The history at each step: the sequence so far, the left padding as -1."""
    seq = out.sequences.numpy().copy()
    seq[:, : MASK.shape[1]][MASK.numpy() == 0] = -1
    return [seq[:, : IDS.shape[1] + k] for k in range(len(out.logits))]


def new_ids(out: Any) -> list[list[int]]:
    return out.sequences[:, IDS.shape[1] :].tolist()


@pytest.mark.transformers
@pytest.mark.parametrize("case", STATELESS)
def test_processor_scores_are_the_distribution(tshf: Any, case: str) -> None:
    kw, base = CASES[case]
    torch.manual_seed(1)
    scores = 3 * torch.randn(2, HF_V)
    proc = tshf.TokenSamplerLogitsProcessor(seed=SEED, pad_token_id=PAD, **kw)
    got = torch.exp(proc(IDS, scores.clone())).double()
    hist = np.where(MASK.numpy() == 1, IDS.numpy(), -1)
    want = torch.as_tensor(ts.probs(scores, history=hist, **kw)).double()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    p = tshf.TokenSamplerLogitsProcessor(ts.SamplingParams(**kw), pad_token_id=PAD)
    torch.testing.assert_close(torch.exp(p(IDS, scores.clone())).double(), want)
    assert not torch.allclose(want, torch.as_tensor(ts.probs(scores, history=hist,
                                                             **base)).double())  # fmt: skip


@pytest.mark.transformers
@pytest.mark.parametrize("version", [1, 2])
def test_processor_mirostat_mu_follows_the_ids_hf_drew(hf_model: Any, tshf: Any,
                                                       version: int) -> None:  # fmt: skip
    """draw=False: Hugging Face draws from the processor's distribution; the next step's
    truncation must use llama.cpp's update of mu for the id it drew. Checked on v2's kept
    set (-log2 p <= mu, the top token always) with mu computed here from the returned
    distributions and the drawn ids; v1 against the same mu trajectory through its k."""
    tau, eta = 3.0, 0.5
    proc = tshf.TokenSamplerLogitsProcessor(mirostat=version, mirostat_tau=tau,
                                            mirostat_eta=eta, temperature=1.0)  # fmt: skip
    seen: list[torch.Tensor] = []
    orig = proc.__call__

    class Spy:
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            out = orig(input_ids, scores)
            seen.append(out.clone())
            return out

    kwargs = proc.generate_kwargs()
    from transformers import LogitsProcessorList

    kwargs["logits_processor"] = LogitsProcessorList([Spy()])
    torch.manual_seed(0)
    out = hf_model.generate(input_ids=IDS, attention_mask=MASK, max_new_tokens=HF_NEW,
                            eos_token_id=None, output_logits=True, return_dict_in_generate=True,
                            **kwargs)  # fmt: skip
    drawn = new_ids(out)
    mu = np.full(2, 2 * tau)
    for k, (raw, ret) in enumerate(zip(out.logits, seen, strict=True)):
        p_raw = torch.softmax(raw.double(), dim=-1).numpy()
        kept = torch.isfinite(ret).numpy()
        for b in range(2):
            if version == 2:
                want = -np.log2(p_raw[b]) <= mu[b]
                want[np.argmax(p_raw[b])] = True
                np.testing.assert_array_equal(kept[b], want, f"step {k} row {b}")
            else:  # llama.cpp's k from mu and the estimated Zipf exponent s_hat
                srt = np.sort(p_raw[b])[::-1]
                i = np.arange(min(100, HF_V) - 1)
                t = np.log((i + 2) / (i + 1))
                s_hat = (t * np.log(srt[i] / srt[i + 1])).sum() / (t * t).sum()
                eps = s_hat - 1
                kf = (eps * 2 ** mu[b] / (1 - HF_V ** (-eps))) ** (1 / s_hat)
                n = max(int(kf), 1) if math.isfinite(kf) else 1
                assert kept[b].sum() == min(n, HF_V), f"step {k} row {b}"
                assert kept[b][np.argsort(-p_raw[b], kind="stable")[:n]].all()
            p_chosen = math.exp(float(ret[b, drawn[b][k]]))
            mu[b] -= eta * (-math.log2(p_chosen) - tau)
    assert len({int(torch.isfinite(r).sum()) for r in seen}) > 1  # mu moves the cut


@pytest.mark.transformers
@pytest.mark.parametrize("case", list(CASES))
def test_draw_mode_and_hf_generate_apply_the_field(hf_model: Any, tshf: Any, case: str) -> None:
    """draw=True inside `model.generate` (padding left out of the history),
    `tokensampler.hf.generate` with keywords and with params=: the same tokens, which a
    Sampler with the keywords draws from the raw logits and histories."""
    kw, base = CASES[case]
    out = hf_run(hf_model, tshf.TokenSamplerLogitsProcessor(draw=True, seed=SEED,
                                                            pad_token_id=PAD, **kw))  # fmt: skip
    gen = {"attention_mask": MASK, "max_new_tokens": HF_NEW, "eos_token_id": None}
    ours = tshf.generate(hf_model, None, IDS, seed=SEED, **gen, **kw)
    via_params = tshf.generate(hf_model, None, IDS, params=ts.SamplingParams(**kw, seed=SEED),
                               **gen)  # fmt: skip
    assert torch.equal(ours.sequences, out.sequences)
    assert torch.equal(via_params.sequences, out.sequences)
    steps, hists = [x.numpy() for x in out.logits], hf_hists(out)
    ids, lps = replay(steps, hists, **kw)
    assert ids == new_ids(out)
    base_ids, base_lps = replay(steps, hists, **base)
    assert base_ids != ids or not np.allclose(base_lps, lps)


@pytest.mark.transformers
def test_hf_bans_hold_in_model_generate(hf_model: Any, tshf: Any) -> None:
    """no_repeat_ngram_size 2 through both processor routes and hf.generate: no bigram of a
    row's sequence (padding excluded) repeats; bad_words_ids never complete."""
    kw = {"no_repeat_ngram_size": 2, "temperature": 2.0}
    runs = []
    torch.manual_seed(0)
    runs.append(hf_run(hf_model, tshf.TokenSamplerLogitsProcessor(pad_token_id=PAD, **kw)))
    runs.append(hf_run(hf_model, tshf.TokenSamplerLogitsProcessor(draw=True, seed=SEED,
                                                                  pad_token_id=PAD, **kw)))  # fmt: skip
    runs.append(tshf.generate(hf_model, None, IDS, attention_mask=MASK, max_new_tokens=HF_NEW,
                              eos_token_id=None, seed=SEED, **kw))  # fmt: skip
    for out in runs:
        for b in range(2):
            seq = [int(t) for t, m in zip(out.sequences[b], MASK[b].tolist() + [1] * HF_NEW)
                   if m]  # fmt: skip
            assert fresh_bigrams(seq, len(seq) - HF_NEW), seq
    bad = [[17, 5], [40, 11], [23]]
    for draw in (False, True):
        torch.manual_seed(1)
        proc = tshf.TokenSamplerLogitsProcessor(bad_words_ids=bad, temperature=2.0, draw=draw,
                                                seed=SEED)  # fmt: skip
        seq = hf_run(hf_model, proc).sequences[:, IDS.shape[1] - 1 :].tolist()
        for row in seq:
            assert 23 not in row[1:]
            pairs = set(itertools.pairwise(row))
            assert (17, 5) not in pairs and (40, 11) not in pairs


@pytest.mark.transformers
def test_hf_routes_resolve_strings(tmp_path: Any, tshf: Any) -> None:
    """tokenizer= on the processor and on hf.generate turns bad_words and string breakers into
    ids (llama.cpp's default breakers with DRY on); the banned word never appears in
    model.generate's output. A byte-level tokenizer over a tiny GPT-2: "e" is one token."""
    transformers = pytest.importorskip("transformers")
    _write_gpt2(tmp_path)
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    e = tok.encode("e", add_special_tokens=False)
    assert len(e) == 1
    proc = tshf.TokenSamplerLogitsProcessor(tokenizer=tok, bad_words=["e"], dry_multiplier=0.8)
    assert proc.params.bad_words is None
    assert [list(s) for s in proc.params.bad_words_ids] == bad_words_sequences(tok, ["e"])
    want = dry_breaker_sequences(tok, DEFAULT_DRY_BREAKERS)
    assert [list(s) for s in proc.params.dry_sequence_breakers] == want
    with pytest.raises(ValueError, match="tokenizer"):
        tshf.TokenSamplerLogitsProcessor(bad_words=["e"])(torch.tensor([[5, 6]]),
                                                           torch.zeros(1, 257))  # fmt: skip
    ids = torch.tensor([tok.encode("hello there", add_special_tokens=False)])
    bias = torch.zeros(257)
    bias[e[0]] = 6.0  # push the model towards "e"
    common = {"temperature": 1.0, "logit_bias": bias.numpy()}
    torch.manual_seed(0)
    free = tshf.TokenSamplerLogitsProcessor(**common)
    out = model.generate(input_ids=ids, max_new_tokens=20, eos_token_id=None, pad_token_id=256,
                         **free.generate_kwargs())  # fmt: skip
    assert e[0] in out[0, ids.shape[1] :].tolist()
    for draw in (False, True):
        torch.manual_seed(0)
        proc = tshf.TokenSamplerLogitsProcessor(tokenizer=tok, bad_words=["e"], draw=draw,
                                                seed=SEED, **common)  # fmt: skip
        out = model.generate(input_ids=ids, max_new_tokens=20, eos_token_id=None,
                             pad_token_id=256, **proc.generate_kwargs())  # fmt: skip
        assert e[0] not in out[0, ids.shape[1] :].tolist(), draw
    res = tshf.generate(model, tok, "hello there", max_new_tokens=20, eos_token_id=None,
                        bad_words=["e"], seed=SEED, **common)  # fmt: skip
    assert e[0] not in res.token_ids[0] and "e" not in (res.texts or [""])[0]


@pytest.mark.transformers
def test_hf_generate_mirostat_is_reproducible(hf_model: Any, tshf: Any) -> None:
    gen = {"attention_mask": MASK, "max_new_tokens": HF_NEW, "eos_token_id": None,
           "mirostat": 2, "mirostat_tau": 2.0}  # fmt: skip
    a = tshf.generate(hf_model, None, IDS, seed=SEED, **gen)
    assert torch.equal(tshf.generate(hf_model, None, IDS, seed=SEED, **gen).sequences,
                       a.sequences)  # fmt: skip
    s = ts.Sampler(mirostat=2, mirostat_tau=2.0, seed=SEED)
    b = tshf.generate(hf_model, None, IDS, sampler=s, attention_mask=MASK,
                      max_new_tokens=HF_NEW, eos_token_id=None)  # fmt: skip
    assert torch.equal(b.sequences, a.sequences)
    assert s.mirostat_mu is not None and s.state_dict()["step"] == HF_NEW


# ==============================================================================================
# the CLI
# ==============================================================================================

CLI_PROMPT = "Every effort"
CLI_CASES: dict[str, tuple[list[str], dict[str, Any]]] = {
    "penalty-last-n": (["--repetition-penalty", "2", "--penalty-last-n", "4"],
                       {"repetition_penalty": 2.0, "penalty_last_n": 4}),
    "dry": (["--dry-multiplier", "0.8", "--dry-base", "2", "--dry-allowed-length", "3",
             "--dry-penalty-last-n", "32"],
            {"dry_multiplier": 0.8, "dry_base": 2.0, "dry_allowed_length": 3,
             "dry_penalty_last_n": 32}),
    "no-repeat-ngram-size": (["--no-repeat-ngram-size", "2"], {"no_repeat_ngram_size": 2}),
    "mirostat": (["--mirostat", "2", "--mirostat-tau", "4", "--mirostat-eta", "0.2"],
                 {"mirostat": 2, "mirostat_tau": 4.0, "mirostat_eta": 0.2}),
}  # fmt: skip


@pytest.fixture(scope="module")
def gpt2_folder(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("transformers")
    path = tmp_path_factory.mktemp("tiny-gpt2")
    _write_gpt2(path)
    return path


def cli(folder: Any, capsys: pytest.CaptureFixture[str], *flags: str) -> str:
    return cli_generate(folder, capsys, *flags, prompt=CLI_PROMPT)


@pytest.mark.transformers
@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_options_reach_the_loop(gpt2_folder: Any, capsys: Any, recorded: list[Recorded],
                                    case: str) -> None:  # fmt: skip
    """Each option lands in the loop's SamplingParams (with llama.cpp's default breakers,
    tokenized, when DRY is on), and the CLI prints what `generate` gives with them."""
    from tokensampler.model import load

    flags, kw = CLI_CASES[case]
    text = cli(gpt2_folder, capsys, *flags, "--seed", str(SEED))
    model, tok = load(str(gpt2_folder), device="cpu", dtype="float32")
    want_params = ts.SamplingParams(**kw)
    got = recorded[0].params.replace(seed=None, logprobs=False)
    assert got.replace(dry_sequence_breakers=None) == want_params.replace(
        dry_sequence_breakers=None
    )
    if "dry_multiplier" in kw:
        breakers = [list(s) for s in got.dry_sequence_breakers]
        assert breakers == dry_breaker_sequences(tok, DEFAULT_DRY_BREAKERS)
    want = generate(model, tok, CLI_PROMPT, max_new_tokens=16, ignore_eos=True, seed=SEED, **kw)
    assert text == CLI_PROMPT + want.texts[0] + "\n"


@pytest.mark.transformers
def test_cli_strings(gpt2_folder: Any, capsys: Any, recorded: list[Recorded]) -> None:
    """--bad-words and --dry-sequence-breakers are tokenized with the model's tokenizer; a
    bare --dry-sequence-breakers means no breakers; a banned word never prints."""
    from tokensampler.model import load

    _, tok = load(str(gpt2_folder), device="cpu", dtype="float32")
    plain = cli(gpt2_folder, capsys, "--temperature", "0")
    # the commonest ASCII letter or digit of the greedy text, banned
    gen = [c for c in plain[len(CLI_PROMPT) :] if c.isascii() and c.isalnum()]
    assert gen, plain
    word = max(set(gen), key=gen.count)
    banned = cli(gpt2_folder, capsys, "--temperature", "0", "--bad-words", word)
    assert word not in banned[len(CLI_PROMPT) :]
    assert [list(s) for s in recorded[-1].params.bad_words_ids] == bad_words_sequences(tok,
                                                                                      [word])  # fmt: skip
    cli(gpt2_folder, capsys, "--dry-multiplier", "0.8", "--dry-sequence-breakers", "ab", ";",
        "--seed", "1")  # fmt: skip
    got = [list(s) for s in recorded[-1].params.dry_sequence_breakers]
    assert got == dry_breaker_sequences(tok, ["ab", ";"])
    cli(gpt2_folder, capsys, "--dry-multiplier", "0.8", "--dry-sequence-breakers", "--seed", "1")
    breakers = recorded[-1].params.dry_sequence_breakers
    assert breakers is not None and not [s for s in breakers if s]


@pytest.mark.transformers
@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--penalty-last-n", "-2"], "penalty_last_n"),
        (["--dry-multiplier", "-1"], "dry_multiplier"),
        (["--dry-base", "0.5"], "dry_base"),
        (["--dry-allowed-length", "-1"], "dry_allowed_length"),
        (["--no-repeat-ngram-size", "-1"], "no_repeat_ngram_size"),
        (["--mirostat", "3"], "mirostat"),
        (["--mirostat-tau", "-1"], "mirostat_tau"),
        (["--bad-words", " "], "bad word"),
    ],
)
def test_cli_bad_history_options_fail_in_one_line(gpt2_folder: Any, capsys: Any,
                                                  flags: list[str], needle: str) -> None:  # fmt: skip
    from tokensampler.cli import main

    args = ["generate", CLI_PROMPT, "--model", str(gpt2_folder), "--max-new-tokens", "4"]
    assert main([*args, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tokensampler: error:") and needle in err[0], err


# ==============================================================================================
# the converters
# ==============================================================================================


def _hx() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 60)) * 2
    h = np.array([[5, 6, 7, 5, 6, 7, 5, 6]] * 2 + [[1, 2, 3, 4, 1, 2, 3, 4]] * 2)
    return x, h


def assert_same_sampling(p: ts.SamplingParams, kw: dict[str, Any]) -> None:
    x, h = _hx()
    if p.mirostat_on:
        a, b = ts.Sampler(p, seed=1), ts.Sampler(**kw, seed=1)
        for _ in range(4):
            np.testing.assert_array_equal(a(x, history=h), b(x, history=h))
        return
    np.testing.assert_array_equal(ts.probs(x, p, history=h), ts.probs(x, history=h, **kw))
    for seed in range(3):
        np.testing.assert_array_equal(ts.sample(x, p.replace(seed=seed), history=h),
                                      ts.sample(x, history=h, **{**kw, "seed": seed}))  # fmt: skip


def assert_field_matters(p: ts.SamplingParams, **off: Any) -> None:
    x, h = _hx()
    assert not np.array_equal(ts.probs(x, p, history=h), ts.probs(x, p.replace(**off), history=h))


def test_from_hf_history_fields() -> None:
    cfg = {"do_sample": True, "temperature": 0.9, "no_repeat_ngram_size": 2,
           "bad_words_ids": [[6, 7], [11]], "sequence_bias": {(3, 4): 2.5, (9,): -1.0}}  # fmt: skip
    p = ts.SamplingParams.from_hf(cfg)
    kw = {"temperature": 0.9, "no_repeat_ngram_size": 2, "bad_words_ids": [[6, 7], [11]],
          "sequence_bias": {(3, 4): 2.5, (9,): -1.0}}  # fmt: skip
    assert_same_sampling(p, kw)
    for name, off in (("no_repeat_ngram_size", None), ("bad_words_ids", None),
                      ("sequence_bias", None)):  # fmt: skip
        assert_field_matters(p, **{name: off})
    # HF's serialised form: a list of [ids, bias] pairs
    listed = ts.SamplingParams.from_hf({**cfg, "sequence_bias": [[[3, 4], 2.5], [[9], -1.0]]})
    assert listed == p


@pytest.mark.transformers
def test_from_hf_generation_config() -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GenerationConfig(do_sample=True, temperature=0.9, no_repeat_ngram_size=2,
                                        bad_words_ids=[[6, 7], [11]],
                                        sequence_bias=[[[3, 4], 2.5], [[9], -1.0]])  # fmt: skip
    p = ts.SamplingParams.from_hf(cfg)
    assert p.no_repeat_ngram_size == 2
    assert_same_sampling(p.replace(top_p=None, top_k=None, repetition_penalty=1.0),
                         {"temperature": 0.9, "no_repeat_ngram_size": 2,
                          "bad_words_ids": [[6, 7], [11]],
                          "sequence_bias": {(3, 4): 2.5, (9,): -1.0}})  # fmt: skip


def test_from_vllm_bad_words(smol_tok: Any) -> None:
    p = ts.SamplingParams.from_vllm({"temperature": 0.7, "bad_words": ["cat", "the mat"]})
    assert p.bad_words == ("cat", "the mat") and p.order == "vllm"
    assert p.unresolved_strings == "bad_words"
    with pytest.raises(ValueError, match="tokenizer"):
        ts.sample(_hx()[0], p)
    from tokensampler.words import resolve_strings

    r = resolve_strings(p, smol_tok)
    assert [list(s) for s in r.bad_words_ids] == bad_words_sequences(smol_tok,
                                                                     ["cat", "the mat"])  # fmt: skip


LLAMA_H = {"temperature": 0.8, "repeat_penalty": 1.3, "repeat_last_n": 3,
           "dry_multiplier": 0.9, "dry_base": 2.0, "dry_allowed_length": 1,
           "dry_penalty_last_n": 7, "dry_sequence_breakers": [[3]], "seed": 11}  # fmt: skip
LLAMA_H_KW = {"temperature": 0.8, "repetition_penalty": 1.3, "penalty_last_n": 3,
              "dry_multiplier": 0.9, "dry_base": 2.0, "dry_allowed_length": 1,
              "dry_penalty_last_n": 7, "dry_sequence_breakers": [[3]], "seed": 11}  # fmt: skip


def test_from_llama_cpp_history_fields() -> None:
    p = ts.SamplingParams.from_llama_cpp(LLAMA_H)
    assert_same_sampling(p, {**LLAMA_H_KW, "order": "llama.cpp"})
    for off in ({"penalty_last_n": None}, {"dry_multiplier": None}, {"dry_base": 1.75},
                {"dry_allowed_length": 2}, {"dry_penalty_last_n": None},
                {"dry_sequence_breakers": None}):  # fmt: skip
        assert_field_matters(p, **off)
    # penalty_last_n is llama.cpp's other name; below -1 is clamped to 0 as llama.cpp does
    assert ts.SamplingParams.from_llama_cpp({"penalty_last_n": 3}).penalty_last_n == 3
    assert ts.SamplingParams.from_llama_cpp({"repeat_last_n": -5}).penalty_last_n == 0
    assert ts.SamplingParams.from_llama_cpp({"dry_penalty_last_n": -5}).dry_penalty_last_n == 0
    # strings pass through, for generate to tokenize
    s = ts.SamplingParams.from_llama_cpp({"dry_multiplier": 0.8, "dry_sequence_breakers": ["\n"]})
    assert s.unresolved_strings == "dry_sequence_breakers"


def test_from_llama_cpp_samplers_with_penalties_and_dry() -> None:
    chain = "penalties;dry;top_k;temperature"
    p = ts.SamplingParams.from_llama_cpp({**LLAMA_H, "samplers": chain})
    assert_same_sampling(p, {**LLAMA_H_KW, "order": ("top_k", "temperature", "epsilon_cutoff",
                                                     "eta_cutoff")})  # fmt: skip
    # a chain without "dry" / "penalties" switches them off, as llama.cpp's does
    q = ts.SamplingParams.from_llama_cpp({**LLAMA_H, "samplers": "top_k;temperature"})
    assert q.dry_multiplier is None and q.repetition_penalty == 1.0
    np.testing.assert_array_equal(
        ts.probs(_hx()[0], q, history=_hx()[1]),
        ts.probs(_hx()[0], temperature=0.8, seed=11,
                 order=("top_k", "temperature", "epsilon_cutoff", "eta_cutoff")),
    )  # fmt: skip
    q = ts.SamplingParams.from_llama_cpp({**LLAMA_H, "samplers": ["penalties", "top_k",
                                                                 "temperature"]})  # fmt: skip
    assert q.dry_multiplier is None and q.repetition_penalty == 1.3
    with pytest.raises(ValueError, match="dry"):
        ts.SamplingParams.from_llama_cpp({**LLAMA_H, "samplers": "top_k;dry;temperature"})
    with pytest.raises(ValueError, match="penalties"):
        ts.SamplingParams.from_llama_cpp({**LLAMA_H, "samplers": "dry;penalties;top_k"})


def test_from_llama_cpp_mirostat_runs_temperature_then_mirostat() -> None:
    """llama.cpp's common_sampler_init with mirostat: temperature, then mirostat, nothing else
    (the logit bias stays): every other stage, the penalties and DRY are off."""
    d = {**LLAMA_H, "top_p": 0.5, "min_p": 0.1, "mirostat": 2, "mirostat_tau": 4.0,
         "mirostat_eta": 0.2, "logit_bias": [[7, -2.0]], "samplers": "top_k;top_p"}  # fmt: skip
    p = ts.SamplingParams.from_llama_cpp(d)
    assert p.order == ("temperature",)
    assert (p.mirostat, p.mirostat_tau, p.mirostat_eta) == (2, 4.0, 0.2)
    assert p.top_k is None and p.top_p is None and p.min_p is None
    assert p.dry_multiplier is None and p.repetition_penalty == 1.0 and p.penalty_last_n is None
    assert p.temperature == 0.8 and p.seed == 11 and p.logit_bias == {7: -2.0}
    assert_same_sampling(p, {"temperature": 0.8, "mirostat": 2, "mirostat_tau": 4.0,
                             "mirostat_eta": 0.2, "logit_bias": {7: -2.0},
                             "order": ("temperature",)})  # fmt: skip
    assert ts.SamplingParams.from_llama_cpp({"mirostat": 0, "top_k": 5}).top_k == 5


def test_bad_words_errors_name_bad_words_ids() -> None:
    """Bad words and sequence biases are separate kernel options, so an error names the
    field the caller set."""
    x = np.zeros((2, 12), np.float32)
    with pytest.raises(ts.SamplingError, match="bad_words_ids token id 12"):
        ts.sample(x, bad_words_ids=[[3], [2, 12]], seed=0)
    with pytest.raises(ts.SamplingError, match="bad_words_ids has 3 rows for a batch of 2"):
        ts.sample(x, bad_words_ids=[[[1]], [[2]], [[3]]], seed=0)
    with pytest.raises(ts.SamplingError, match="sequence_bias token id 12"):
        ts.sample(x, sequence_bias={(12,): 1.0}, seed=0)


def test_mirostat_state_checks() -> None:
    """A Sampler's mirostat states belong to one batch size (another one is an error, not a
    silent restart), and without mirostat there is no state to save or restore."""
    x = np.zeros((2, 8), np.float32)
    s = ts.Sampler(mirostat=2, seed=1)
    s(x)
    with pytest.raises(ValueError, match="mirostat states for 2 rows"):
        s(np.zeros((3, 8), np.float32))
    s.reset()
    s(np.zeros((3, 8), np.float32))  # reset() starts over for any batch
    r = ts.Sampler(mirostat=2, seed=1)
    r.load_state_dict({"seed": 1, "step": 0, "mirostat_mu": [1.0, 2.0, 3.0]})
    with pytest.raises(ValueError, match="mirostat states for 3 rows"):
        r(x)
    off = ts.Sampler(seed=1)
    off.load_state_dict({"seed": 1, "step": 4, "mirostat_mu": [1.0, 2.0]})
    off(x)
    assert off.mirostat_mu is None and off.state_dict()["mirostat_mu"] is None
    assert off.state_dict()["step"] == 5


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_in_place_sparse_top_k_equals_the_ordered_plan(dtype: Any) -> None:
    """A sparse top-k row that bias, bans, penalties or DRY change is read in place with
    those changes as a patch (rust/patch.rs, `merge_patch` in plan.rs). The same row through
    the ordered plan (forced by a min_tokens_to_keep floor below k, which keeps the same set)
    loads and rewrites the row: the distributions agree, and the drawn ids are in them."""
    rng = np.random.default_rng(5)
    b, v = 6, 4096
    x = (rng.standard_normal((b, v)) * 2).astype(dtype)
    hist = rng.integers(0, 40, size=(b, 300))
    hist[:, 150:] = hist[:, :150]  # repeats for DRY and the n-gram bans
    # Boost the history's ids so that the patched ids compete for the top k.
    x[np.arange(b)[:, None], hist[:, :20]] += 6
    kw: dict[str, Any] = {
        "top_k": 12, "temperature": 0.9, "repetition_penalty": 1.4,
        "frequency_penalty": 0.3, "dry_multiplier": 0.8, "no_repeat_ngram_size": 3,
        "logit_bias": {int(hist[0, 0]): 3.0, 7: -np.inf}, "bad_words_ids": [[1], [2, 3]],
        "sequence_bias": {(int(hist[0, -1]), 9): 5.0},
    }  # fmt: skip
    fast = ts.probs(x, history=hist, **kw)
    ordered = ts.probs(x, history=hist, **kw, min_tokens_to_keep=2)
    np.testing.assert_allclose(fast, ordered, rtol=1e-5, atol=1e-7)
    assert ((fast > 0).sum(axis=1) >= 12).all()
    # The draw is the sparse plan's own (its pairs), only its support is the plans' common
    # ground (the ordered plan draws by inverse CDF in id order: another coupling).
    ids = ts.Sampler(**kw, seed=list(range(b)))(x, history=hist)
    assert (fast[np.arange(b), ids] > 0).all()
