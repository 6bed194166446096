"""Hypothesis strategies for sampling-pipeline inputs (shared by the property tests).

Hypothesis draws the structure (shapes, dtype, which features and parameter forms are on,
special parameter values); the bulk numbers come from a numpy Generator seeded by a
hypothesis-drawn integer, so V = 5000 rows stay fast and every example still replays exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import strategies as st
from tokensampler.params import PARAM_NAMES

PER_ROW_KEYS = PARAM_NAMES


@dataclass
class Case:
    logits: np.ndarray  # (V,) or (B, V)
    kwargs: dict = field(default_factory=dict)  # keywords of ts.probs (no seed)

    @property
    def batch(self) -> int:
        return 1 if self.logits.ndim == 1 else self.logits.shape[0]

    @property
    def vocab(self) -> int:
        return self.logits.shape[-1]

    def __repr__(self) -> str:  # readable falsifying examples
        with np.printoptions(threshold=40, edgeitems=4, precision=5):
            return f"Case(logits={self.logits.dtype}{self.logits.shape}\n{self.logits!r},\n kwargs={self.kwargs!r})"


def _logits(draw, rng, batch, vocab, dtype):
    scale = draw(st.sampled_from([0.01, 0.5, 1.0, 3.0, 10.0, 100.0, 3000.0]))
    x = rng.standard_normal((batch, vocab)) * scale
    shape = draw(st.sampled_from(["normal", "plateau", "grid", "top-plateau"]))
    if shape == "grid":
        # a coarse power-of-two grid: many exact ties, exact in float32 too
        step = 2.0 ** np.floor(np.log2(scale)) / 2
        x = np.round(x / step) * step
    elif shape == "plateau":
        # a few exact levels shared by random subsets of tokens
        for _ in range(draw(st.integers(1, 4))):
            level = rng.standard_normal() * scale
            x[rng.random((batch, vocab)) < rng.uniform(0.05, 0.5)] = level
    elif shape == "top-plateau":
        # several tokens share the row maximum (greedy / top-k / top-p tie rules)
        for i in range(batch):
            idx = rng.choice(vocab, size=min(vocab, int(rng.integers(1, 6))), replace=False)
            x[i, idx] = x[i].max()
    survivors = rng.integers(0, vocab, size=batch)  # one finite, unbanned token per row
    if draw(st.booleans()):
        mask = rng.random((batch, vocab)) < rng.uniform(0.0, 0.9)
        mask[np.arange(batch), survivors] = False
        x[mask] = -np.inf
    return x.astype(dtype), survivors


def _per_row_or_scalar(draw, rng, batch, scalar_st, row_fn, off_values=()):
    """Returns (present, value): omitted / an 'off' value / a scalar / a length-B sequence."""
    kind = draw(st.sampled_from(["omit", "off", "scalar", "row"] if off_values else
                                ["omit", "scalar", "row"]))  # fmt: skip
    if kind == "omit":
        return False, None
    if kind == "off":
        return True, draw(st.sampled_from(off_values))
    if kind == "scalar":
        return True, draw(scalar_st)
    values = np.array([row_fn() for _ in range(batch)])
    return True, values if draw(st.booleans()) else values.tolist()


@st.composite
def cases(draw, dtypes=(np.float32, np.float64), max_vocab=5000, max_batch=8, greedy=None):
    """A random pipeline input: logits and every kind of parameter (no seed).

    ``greedy``: None (temperature drawn, sometimes 0), True (temperature 0 on every row),
    False (temperature > 0 on every row).
    """
    dtype = draw(st.sampled_from(dtypes))
    batch = draw(st.integers(1, max_batch))
    vocab = draw(
        st.one_of(
            st.integers(1, 8), st.integers(9, 300), st.integers(301, max(301, max_vocab))
        ).map(lambda v: min(v, max_vocab))
    )
    one_d = batch == 1 and draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**63 - 1)))
    x, survivors = _logits(draw, rng, batch, vocab, dtype)
    kw: dict = {}

    def put(name, present_value):
        present, value = present_value
        if present:
            kw[name] = value

    # temperature (incl. 0 = greedy; per-row mixes greedy and sampled rows)
    temps = [0.05, 0.3, 0.7, 1.0, 1.5, 4.0]
    if greedy is True:
        kw["temperature"] = draw(st.sampled_from([0.0, 0, [0.0] * batch]))
    else:
        special = temps if greedy is False else [0.0, *temps]
        put(
            "temperature",
            _per_row_or_scalar(
                draw,
                rng,
                batch,
                st.one_of(st.sampled_from(special), st.floats(0.05, 5.0)),
                lambda: float(rng.choice(special)) if rng.random() < 0.5 else rng.uniform(0.05, 5),
            ),
        )
    # filters
    put(
        "top_k",
        _per_row_or_scalar(
            draw,
            rng,
            batch,
            st.integers(1, vocab + 2),
            lambda: int(rng.integers(0, vocab + 3)),
            off_values=(None, 0, vocab, vocab + 7),
        ),
    )
    put(
        "top_p",
        _per_row_or_scalar(
            draw,
            rng,
            batch,
            st.one_of(st.sampled_from([1e-6, 0.1, 0.5, 0.9, 0.99, 0.999]), st.floats(0.01, 1.0)),
            lambda: 1.0 if rng.random() < 0.2 else float(rng.uniform(1e-3, 1.0)),
            off_values=(None, 1.0),
        ),
    )
    put(
        "min_p",
        _per_row_or_scalar(
            draw,
            rng,
            batch,
            st.one_of(st.sampled_from([1e-4, 0.05, 0.1, 0.3, 0.9]), st.floats(0.0, 0.5)),
            lambda: 0.0 if rng.random() < 0.2 else float(rng.uniform(0.0, 0.6)),
            off_values=(None, 0.0),
        ),
    )
    # penalties
    put(
        "repetition_penalty",
        _per_row_or_scalar(
            draw, rng, batch, st.floats(0.5, 2.5), lambda: float(rng.uniform(0.5, 2.5)), (1.0,)
        ),
    )
    for name in ("frequency_penalty", "presence_penalty"):
        put(
            name,
            _per_row_or_scalar(
                draw, rng, batch, st.floats(-1.0, 2.0), lambda: float(rng.uniform(-1, 2)), (0.0,)
            ),
        )
    for name in ("frequency_scale", "presence_scale"):
        put(
            name,
            _per_row_or_scalar(
                draw, rng, batch, st.floats(1.0, 2.5), lambda: float(rng.uniform(1, 2.5)), (1.0,)
            ),
        )
    # history: (L,), (B, L) with padding, or a list of B 1-D arrays / lists; may exceed V
    hist_kind = draw(st.sampled_from(["none", "2d", "list", "1d"] if batch == 1 else
                                     ["none", "2d", "list"]))  # fmt: skip
    if hist_kind != "none":
        max_len = draw(st.sampled_from([0, 1, 5, 50, 2 * vocab + 3]))

        def one_history(length):
            pool = rng.choice(vocab, size=min(vocab, int(rng.integers(1, 20))))
            ids = (
                rng.choice(pool, size=length)
                if rng.random() < 0.6
                else rng.integers(0, vocab, length)
            )
            pad = rng.random(length) < 0.2
            ids[pad] = rng.choice([-1, -2, -100], size=int(pad.sum()))
            return ids.astype(np.int64)

        if hist_kind == "2d":
            kw["history"] = np.stack([one_history(max_len) for _ in range(batch)])
        elif hist_kind == "1d":
            kw["history"] = one_history(max_len)
        else:
            hs = [one_history(int(rng.integers(0, max_len + 1))) for _ in range(batch)]
            kw["history"] = hs if draw(st.booleans()) else [h.tolist() for h in hs]
    # logit_bias: dict, list of B dicts, dense (V,) or (B, V); -inf bans
    bias_kind = draw(st.sampled_from(["none", "dict", "dicts", "dense1", "dense2"]))
    if bias_kind != "none":
        ban_rate = draw(st.sampled_from([0.0, 0.1, 0.5]))
        bias_scale = draw(st.sampled_from([0.5, 3.0]))

        def dense(protect):
            b = rng.standard_normal(vocab) * bias_scale * (rng.random(vocab) < 0.5)
            ban = rng.random(vocab) < ban_rate
            ban[protect] = False
            b[ban] = -np.inf
            return b

        if bias_kind == "dict" or bias_kind == "dense1":
            b = dense(survivors)
            if bias_kind == "dense1":
                kw["logit_bias"] = b.astype(draw(st.sampled_from([np.float32, np.float64])))
            else:
                nz = np.flatnonzero(b)
                kw["logit_bias"] = {int(j): float(b[j]) for j in nz}
        else:
            rows = [dense(survivors[i]) for i in range(batch)]
            if bias_kind == "dense2":
                kw["logit_bias"] = np.stack(rows).astype(
                    draw(st.sampled_from([np.float32, np.float64]))
                )
            else:
                kw["logit_bias"] = [{int(j): float(r[j]) for j in np.flatnonzero(r)} for r in rows]
    logits = x[0] if one_d else x
    return Case(logits, kw)


def subset_kwargs(kwargs: dict, rows, batch: int) -> dict:
    """The keywords for the sub-batch ``rows`` (any order) of a batch of ``batch`` rows."""
    rows = list(rows)
    out = {}
    for key, value in kwargs.items():
        if key in PER_ROW_KEYS:
            if isinstance(value, (list, np.ndarray)) and np.ndim(value) == 1:
                value = np.asarray(value)[rows]
        elif key == "history":
            if isinstance(value, list):
                value = [value[i] for i in rows]
            elif value.ndim == 2:
                value = value[rows]
            else:
                assert batch == 1
        elif key == "logit_bias":
            if isinstance(value, list):
                value = [value[i] for i in rows]
            elif isinstance(value, np.ndarray) and value.ndim == 2:
                value = value[rows]
        out[key] = value
    return out


# ---- the two implementations a parametrised test runs against -------------------------------


def oracle_impl(x, **kw):
    """`oracle.oracle_probs` with `ts.probs`'s arguments (the seed plays no part)."""
    from oracle import oracle_probs

    kw.pop("seed", None)
    return oracle_probs(x, **kw)


def kernel_impl(x, **kw):
    """`ts.probs` as float64 numpy, whatever the input's array type."""
    import tokensampler as ts

    out = ts.probs(x, **kw)
    if hasattr(out, "detach"):
        out = out.detach().cpu().double().numpy()
    return np.asarray(out, dtype=np.float64)


def impls():
    """The oracle (which must pass on its own) and the kernel, as pytest parameters."""
    import pytest

    return [pytest.param(oracle_impl, id="oracle"), pytest.param(kernel_impl, id="ts")]
