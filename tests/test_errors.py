"""docs/design.md section 6, row by row: bad input gets a clear error, never a crash.

After every error a normal call must still succeed (``still_works``). Every raised error must
be a ValueError / TypeError (``ts.SamplingError`` subclasses ValueError); a Rust panic would
surface as ``pyo3_runtime.PanicException``, a BaseException that ``pytest.raises`` does not
catch, so it fails the test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tokensampler as ts

NAN, INF = float("nan"), float("inf")
GOOD = np.array([[1.0, 2.0, 3.0], [0.5, 0.25, -1.0]], dtype=np.float32)


def still_works():
    ids = ts.sample(GOOD, seed=0, top_k=2)
    assert ids.shape == (2,)
    p = ts.probs(GOOD, top_p=0.9)
    assert np.allclose(p.sum(axis=1), 1.0)
    assert ts.Sampler(seed=1)(GOOD).shape == (2,)


@pytest.fixture(autouse=True)
def _check_recovers():
    yield
    still_works()


def raises_everywhere(exc, match, logits, **kw):
    """The error comes out of ts.probs, ts.sample and a Sampler alike."""
    with pytest.raises(exc, match=match):
        ts.probs(logits, **kw)
    still_works()
    with pytest.raises(exc, match=match):
        ts.sample(logits, seed=0, **kw)
    still_works()
    hist = kw.pop("history", None)
    with pytest.raises(exc, match=match):
        ts.Sampler(seed=0, **kw)(logits, history=hist)


def test_sampling_error_is_value_error():
    assert issubclass(ts.SamplingError, ValueError)


# -- NaN / -inf / +inf rows --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("row", [0, 2, 3])
def test_nan_row_names_the_row(dtype, row):
    x = np.random.default_rng(row).standard_normal((4, 50)).astype(dtype)
    x[row, 17] = NAN
    raises_everywhere(ValueError, rf"\brow {row}\b", x)


def test_nan_1d():
    x = np.array([1.0, NAN, 2.0])
    raises_everywhere(ValueError, r"\brow 0\b", x)


def test_nan_hidden_by_filter_still_an_error():
    # NaN in a token that top-k or greedy decoding would not pick is still a NaN in the row
    x = np.array([[5.0, 4.0, NAN, -3.0]])
    raises_everywhere(ValueError, r"\brow 0\b", x, top_k=1)
    raises_everywhere(ValueError, r"\brow 0\b", x, temperature=0.0)


def test_nan_in_banned_token_still_an_error():
    x = np.array([[5.0, 4.0, NAN, -3.0]])
    raises_everywhere(ValueError, r"\brow 0\b", x, logit_bias={2: -INF})


@pytest.mark.parametrize("row", [1, 2])
def test_all_neg_inf_row_names_the_row(row):
    x = np.ones((3, 5), dtype=np.float32)
    x[row] = -INF
    raises_everywhere(ValueError, rf"\brow {row}\b", x)
    raises_everywhere(ValueError, rf"\brow {row}\b", x, temperature=0.0)


def test_all_neg_inf_after_bans_names_the_row():
    x = np.array([[1.0, 2.0, 3.0], [-INF, 2.0, -INF]], dtype=np.float32)
    bias = [{}, {1: -INF}]
    raises_everywhere(ValueError, r"\brow 1\b", x, logit_bias=bias)
    dense = np.zeros((2, 3))
    dense[1, 1] = -INF
    raises_everywhere(ValueError, r"\brow 1\b", x, logit_bias=dense)
    # every token banned for every row, 1-D
    raises_everywhere(ValueError, r"\brow 0\b", np.array([1.0, 2.0]), logit_bias={0: -INF, 1: -INF})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pos_inf_tokens_share_the_mass(dtype):
    x = np.array([[1.0, INF, 2.0, INF, -INF], [INF, 0.0, 0.0, 0.0, 0.0]], dtype=dtype)
    p = ts.probs(x)
    np.testing.assert_array_equal(p, [[0, 0.5, 0, 0.5, 0], [1, 0, 0, 0, 0]])
    ids = ts.sample(np.repeat(x[:1], 2000, axis=0), seed=3)
    counts = np.bincount(ids, minlength=5)
    assert set(np.flatnonzero(counts)) == {1, 3}
    assert 800 < counts[1] < 1200  # 1000 expected, sd ~22
    # at any temperature > 0, and greedy picks the first +inf
    np.testing.assert_array_equal(ts.probs(x, temperature=0.3), p)
    np.testing.assert_array_equal(ts.sample(x, temperature=0.0, seed=0), [1, 0])


# -- shapes and dtypes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "logits",
    [
        np.zeros((0,), np.float32),
        np.zeros((3, 0), np.float32),
        np.zeros((0, 0), np.float64),
    ],
    ids=["V0-1d", "V0-2d", "B0V0"],
)
def test_empty_vocab(logits):
    raises_everywhere(ValueError, None, logits)


@pytest.mark.parametrize(
    "logits",
    [
        pytest.param(np.array(1.0, np.float32), id="ndim0"),
        pytest.param(np.zeros((2, 3, 4), np.float32), id="ndim3"),
        pytest.param(np.zeros((1, 1, 1, 5)), id="ndim4"),
    ],
)
def test_bad_ndim(logits):
    raises_everywhere(ValueError, None, logits)


def test_ndim0_probs_and_sample():
    # the functional API part of the ndim0 case above (which fails only in Sampler)
    x = np.array(1.0, np.float32)
    with pytest.raises(ValueError):
        ts.probs(x)
    still_works()
    with pytest.raises(ValueError):
        ts.sample(x, seed=0)


@pytest.mark.parametrize(
    "dtype", [np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.complex128, object]
)
def test_bad_dtype(dtype):
    x = np.ones((2, 4)).astype(dtype)
    raises_everywhere(TypeError, None, x)


# -- parameters ----------------------------------------------------------------------------------

BAD_PARAMS = [
    ("temperature", -0.5),
    ("temperature", -1e-30),
    ("temperature", NAN),
    ("top_p", 0.0),
    ("top_p", -0.1),
    ("top_p", 1.5),
    ("top_p", NAN),
    ("min_p", -0.1),
    ("min_p", 1.0),
    ("min_p", 2.0),
    ("min_p", NAN),
    ("top_k", -1),
    ("repetition_penalty", NAN),
    ("frequency_penalty", NAN),
    ("presence_penalty", NAN),
    ("frequency_scale", NAN),
    ("presence_scale", NAN),
    ("frequency_scale", 0.5),
    ("presence_scale", 0.999),
    ("frequency_scale", 0.0),
]


@pytest.mark.parametrize(("name", "value"), BAD_PARAMS, ids=[f"{n}={v}" for n, v in BAD_PARAMS])
@pytest.mark.parametrize("form", ["scalar", "per_row"])
def test_bad_parameter_names_the_parameter(name, value, form):
    if form == "per_row":  # one bad value among good ones
        good = {"top_k": 2, "top_p": 0.9, "min_p": 0.1, "temperature": 1.0}.get(name, 1.0)
        if "penalty" in name and name != "repetition_penalty":
            good = 0.0
        value = [good, value]
    raises_everywhere(ValueError, name, GOOD, **{name: value})


# -- a Sampler validates at construction (docs/design.md section 6) ------------------------------

# Issue #13's list; every BAD_PARAMS entry is checked too.
BAD_AT_CONSTRUCTION = [
    ("temperature", -1),
    ("top_p", 0),
    ("top_p", 1.5),
    ("min_p", 1),
    ("top_k", -1),
    ("repetition_penalty", NAN),
    ("frequency_scale", 0.5),
] + BAD_PARAMS
GOOD_AT_CONSTRUCTION = [
    ("temperature", 0),
    ("temperature", 1e30),
    ("top_k", 0),
    ("top_k", 2**62),
    ("top_p", 1),
    ("top_p", 1e-300),
    ("min_p", 0),
    ("min_p", 0.999),
    ("repetition_penalty", 1e-30),
    ("frequency_penalty", -2.0),
    ("presence_penalty", 2.0),
    ("frequency_scale", 1.0),
    ("presence_scale", 1e300),
]


def per_row(name, value):
    """`value` in row 1 of a per-row list for GOOD's two rows (row 0 holds a valid value)."""
    good = {"top_k": 2, "top_p": 0.9, "min_p": 0.1, "temperature": 1.0}.get(name, 1.0)
    return [0.0 if name in ("frequency_penalty", "presence_penalty") else good, value]


@pytest.mark.parametrize(
    ("name", "value"), BAD_AT_CONSTRUCTION, ids=[f"{n}={v}" for n, v in BAD_AT_CONSTRUCTION]
)
@pytest.mark.parametrize("form", ["scalar", "per_row"])
def test_sampler_rejects_bad_parameter_at_construction(name, value, form):
    if form == "per_row":
        value = per_row(name, value)
    with pytest.raises(ValueError, match=rf"\b{name}\b") as err:
        ts.Sampler(**{name: value})
    if form == "per_row":  # the dummy batch has the caller's rows: the message names row 1
        assert "row 1" in str(err.value)


@pytest.mark.parametrize(
    ("name", "value"), GOOD_AT_CONSTRUCTION, ids=[f"{n}={v}" for n, v in GOOD_AT_CONSTRUCTION]
)
@pytest.mark.parametrize("form", ["scalar", "per_row"])
def test_sampler_accepts_good_parameter(name, value, form):
    if form == "per_row":
        value = per_row(name, value)
    s = ts.Sampler(seed=0, **{name: value})
    assert s(GOOD).shape == (2,)


def test_sampler_rejects_per_row_lengths_that_fit_no_batch():
    with pytest.raises(ValueError, match=r"temperature has 2, top_p has 3"):
        ts.Sampler(temperature=[1.0, 0.5], top_p=[0.5, 0.5, 0.5])
    # One length is fine, and so is a scalar beside it.
    ts.Sampler(temperature=[1.0, 0.5], top_p=[0.5, 0.9], min_p=0.1)


@pytest.mark.parametrize(
    ("bias", "exc", "match"),
    [
        ({-1: 1.0}, ValueError, "-1"),
        ({0: NAN}, ValueError, "NaN"),
        ({"a": 1.0}, TypeError, "keys"),
        ([{0: 1.0}, 5], TypeError, "one dict per row"),
        (np.zeros((2, 2, 3)), ValueError, "dense logit_bias"),
        (np.array(["x", "y", "z"]), TypeError, "dense logit_bias"),
    ],
    ids=["negative-id", "nan", "str-key", "list-not-dicts", "dense-3d", "dense-str"],
)
def test_sampler_rejects_bad_logit_bias_at_construction(bias, exc, match):
    with pytest.raises(exc, match=match):
        ts.Sampler(logit_bias=bias)


def test_sampler_defers_what_needs_the_logits():
    """Ids >= V, the batch size of per-row values and of a list of dicts: checked per call."""
    for kw in (
        {"logit_bias": {3: 1.0}},  # GOOD has V = 3
        {"logit_bias": np.zeros(4)},
        {"logit_bias": [{0: 1.0}]},
        {"temperature": [1.0, 1.0, 1.0]},
    ):
        s = ts.Sampler(seed=0, **kw)
        with pytest.raises(ValueError):
            s(GOOD)
    assert ts.Sampler(seed=0, logit_bias={2: 1.0}, temperature=[0.5, 1.0])(GOOD).shape == (2,)


def test_sampler_rejects_bad_seed_and_top_logprobs_at_construction():
    with pytest.raises(TypeError, match="seed"):
        ts.Sampler(seed="abc")
    with pytest.raises(TypeError, match="seed"):
        ts.Sampler(seed=[1, 2.5])
    with pytest.raises(ValueError, match="top_logprobs"):
        ts.Sampler(top_logprobs=-1)
    s = ts.Sampler(seed=[1, 2])
    with pytest.raises(TypeError, match="seed"):
        s.reset(seed=1.5)
    assert s.seed == (1, 2)  # per-row seeds are stored as a tuple (SamplingParams)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("temperature", [1.0, 1.0, 1.0]),
        ("top_k", [1]),
        ("top_p", [0.5, 0.5, 0.5]),
        ("min_p", np.zeros(3)),
        ("repetition_penalty", [1.1]),
        ("frequency_penalty", [0.1, 0.1, 0.1]),
        ("presence_penalty", np.zeros(5)),
        ("frequency_scale", [1.0, 1.0, 1.0]),
        ("presence_scale", [1.2]),
    ],
)
def test_per_row_parameter_wrong_length(name, value):
    raises_everywhere(ValueError, None, GOOD, **{name: value})


def test_seed_array_wrong_length():
    with pytest.raises(ValueError):
        ts.sample(GOOD, seed=[1, 2, 3])
    still_works()
    with pytest.raises(ValueError):
        ts.Sampler(seed=[1, 2, 3])(GOOD)


@pytest.mark.parametrize(
    "history",
    [
        np.zeros((3, 4), np.int64),  # B = 3 for 2 rows
        np.zeros((1, 4), np.int64),
        [np.array([0]), np.array([1]), np.array([2])],
        [np.array([0])],
    ],
    ids=["2d-B3", "2d-B1", "list3", "list1"],
)
def test_history_batch_mismatch(history):
    raises_everywhere(ValueError, None, GOOD, history=history, repetition_penalty=1.2)


@pytest.mark.parametrize(
    "history",
    [
        np.array([[0, 3], [1, 2]]),  # V = 3: id 3 is out of range
        np.array([[0, 1], [1, 1000]]),
        [np.array([0]), np.array([2, 3])],
        [[0], [2**40]],
    ],
)
def test_history_id_out_of_range(history):
    raises_everywhere(ValueError, None, GOOD, history=history, repetition_penalty=1.2)


def test_history_id_out_of_range_even_without_penalties():
    raises_everywhere(ValueError, None, GOOD, history=np.array([[0, 3], [1, 2]]))


def test_negative_history_ids_are_padding():
    h = np.array([[-1, -5, 0], [-(2**40), 1, -1]])
    clean = [np.array([0]), np.array([1])]
    np.testing.assert_array_equal(
        ts.probs(GOOD, history=h, repetition_penalty=1.5, frequency_penalty=0.3),
        ts.probs(GOOD, history=clean, repetition_penalty=1.5, frequency_penalty=0.3),
    )


# -- anything else: an error or a result, never a crash ------------------------------------------


def no_crash(fn):
    try:
        fn()
    except (ValueError, TypeError):
        pass
    still_works()


@pytest.mark.parametrize(
    "kw",
    [
        {"logit_bias": {3: 1.0}},  # id >= V
        {"logit_bias": {-1: 1.0}},
        {"logit_bias": np.zeros(4)},  # wrong dense shape
        {"logit_bias": np.zeros((3, 3))},
        {"logit_bias": [{0: 1.0}]},  # wrong number of dicts
        {"logit_bias": {0: NAN}},
        {"logit_bias": {0: INF}},
        {"temperature": INF},
        {"temperature": 1e-300},
        {"temperature": 1e300},
        {"top_k": 2**62},
        {"top_k": 2.5},
        {"top_p": 1e-300},
        {"repetition_penalty": 0.0},
        {"repetition_penalty": -1.0},
        {"repetition_penalty": INF},
        {"frequency_penalty": INF},
        {"frequency_scale": INF},
        {"frequency_scale": 1e300, "history": np.array([[0, 0], [1, 1]])},
        {"seed": -1},
        {"seed": 2**64},
        {"seed": "abc"},
        {"history": np.array([[0.5, 1.0], [0, 1]])},
        {"history": np.zeros((2, 2, 2), np.int64)},
        {"history": "abc"},
        {"top_logprobs": 10},
        {"top_logprobs": -1},
    ],
    ids=lambda kw: ",".join(f"{k}={v!r}"[:40] for k, v in kw.items()),
)
def test_unspecified_inputs_never_crash(kw):
    no_crash(lambda: ts.sample(GOOD, **kw))
    kw = {k: v for k, v in kw.items() if k not in ("seed", "top_logprobs")}
    no_crash(lambda: ts.probs(GOOD, **kw))


def test_extreme_values_give_valid_distributions():
    big = np.array([[3e38, -3e38, 0.0], [1e-45, -1e-45, 0.0]], dtype=np.float32)
    for kw in ({}, {"temperature": 1e-30}, {"temperature": 1e30}, {"frequency_scale": 2.0}):
        p = ts.probs(big, **kw)
        assert np.all(np.isfinite(p)) and np.allclose(p.sum(axis=1), 1.0), (kw, p)
    assert ts.sample(big, seed=0, temperature=0.0).tolist()[0] == 0
    assert math.isclose(float(ts.probs(big)[0, 0]), 1.0)
