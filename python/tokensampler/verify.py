"""`verify`: exact speculative verification of drafted tokens against the target model.

A drafter (prompt lookup, a small model) proposes K tokens; one forward pass of the target
gives its logits at the K + 1 positions (after the prefix, and after each draft); `verify`
decides, per row, how many drafts to keep and which token follows them, such that the
emitted tokens are distributed exactly as sampling from the target alone (Leviathan et al.
2023; Chen et al. 2023; docs/design.md section 12). The kernel is Rust (`rust/verify.rs`).

>>> import numpy as np, tokensampler as ts
>>> target = np.log(np.array([[[0.1, 0.9], [0.9, 0.1]]]))  # (B=1, K+1=2, V=2)
>>> out = ts.verify(target, np.array([[1]]), temperature=0)  # the draft is the argmax
>>> out.ids.tolist(), out.accepted.tolist()
([[1, 0]], [1])
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from . import _native
from .params import SamplingParams
from .sampling import (
    _as_numpy,
    _bitmask,
    _history,
    _logit_bias,
    _Logits,
    _params,
    _seeds,
    _torch,
)

__all__ = ["VerifyOutput", "verify"]

# A position's lane: rows keep the low bits (their batch index under a shared seed), the
# position (1 + i) sits above bit 40; the kernel sets bit 39 for the acceptance uniforms.
_POSITION_LANE_SHIFT = 40


class VerifyOutput(NamedTuple):
    """What `verify` returns, in the target logits' array type (and device).

    Attributes:
        ids: (B, K + 1) emitted ids per row: the accepted drafts, then the token drawn at the
            first rejection (from ``norm(max(0, p - q))``) or, when all K were accepted, the
            bonus token from the last position; -1 after that.
        accepted: (B,) how many drafts each row accepted (it emits ``accepted + 1`` tokens).
        logprobs: (B, K + 1) each emitted token's log-probability under the target's
            distribution at its position (NaN in the padding).
    """

    ids: Any
    accepted: Any
    logprobs: Any


def verify(
    target_logits: Any,
    draft_ids: Any,
    draft_probs: Any = None,
    params: SamplingParams | None = None,
    /,
    *,
    history: Any = None,
    step: int = 0,
    **overrides: Any,
) -> VerifyOutput:
    """Verifies K drafted tokens per row against the target's logits.

    Args:
        target_logits: (B, K + 1, V) (or (K + 1, V) for one row) logits of the target model
            at each position, numpy or torch, float32 / float64 / float16 / bfloat16.
        draft_ids: (B, K) (or (K,)) the drafted ids.
        draft_probs: (B, K, V) the drafter's probabilities of each position (the
            distribution it drew ``draft_ids`` from), or None for a deterministic drafter
            (prompt lookup, greedy drafting: one-hot at the draft).
        params: a `SamplingParams`; every position's logits go through its whole pipeline
            (penalties, temperature, filters), so p is the distribution plain sampling would
            draw from. Mirostat is refused (its state follows every emitted token).
        history: the ids before the first position, per row, for the history stages (the
            drafts are appended for the later positions).
        step: the step of the random streams (a generate loop advances it per call).
        **overrides: `SamplingParams` fields; ``seed`` (an int, or one per row: a row's
            result then does not depend on its batch position). ``token_bitmask`` may be
            (W,) or (B, W) (the same allowed tokens at every position), or (B, K + 1, W)
            ((K + 1, W) for one row): each position's own mask, from a grammar matcher
            advanced through the drafts before it.

    Returns:
        A `VerifyOutput` (ids, accepted, logprobs). With ``temperature=0`` the emitted tokens
        are exactly the target's greedy tokens.
    """
    p = _params(params, overrides)
    torch = _torch()
    is_torch = torch is not None and isinstance(target_logits, torch.Tensor)
    shape = tuple(target_logits.shape) if hasattr(target_logits, "shape") else None
    if shape is None:
        target_logits = np.asarray(target_logits)
        shape = target_logits.shape
    single = len(shape) == 2
    if single:
        target_logits = target_logits[None]
        shape = (1, *shape)
    if len(shape) != 3 or shape[1] < 1:
        raise ValueError(
            f"target_logits must have shape (B, K + 1, V) or (K + 1, V), got {tuple(shape)}"
        )
    b, positions, v = shape
    k = positions - 1
    flat = target_logits.reshape(b * positions, v)
    lg = _Logits(flat)
    ids = _draft_ids(draft_ids, b, k, single)
    q = _draft_probs(draft_probs, b, k, v, single)

    m = p.matrix(b)
    pm = np.repeat(m, positions, axis=0) if m.shape[0] == b and b != 1 else m
    hist = _position_history(_history(history, b), ids, b, k) if p.needs_history else None
    bias_ids, bias_vals = _logit_bias(p.logit_bias, b, v)
    if bias_ids is not None and bias_vals is not None and bias_ids.shape[0] == b and b > 1:
        bias_ids, bias_vals = (np.repeat(a, positions, axis=0) for a in (bias_ids, bias_vals))
    seeds, per_row = _seeds(p.seed)
    if per_row and len(seeds) != b:
        raise ValueError(f"seed has {len(seeds)} values for a batch of {b}")
    row_lane = np.zeros(b, np.uint64) if per_row else np.arange(b, dtype=np.uint64)
    pos_lane = np.arange(1, positions + 1, dtype=np.uint64) << np.uint64(_POSITION_LANE_SHIFT)
    lanes = (row_lane[:, None] + pos_lane[None, :]).reshape(-1)
    flat_seeds = np.repeat(seeds if per_row else np.repeat(seeds, b), positions)
    mask = _position_mask(p.token_bitmask, b, positions, v, single)
    options = {
        name: value
        for name, value in p.native_options.items()
        if name in ("order", "sequence_bias", "bad_words", "dry_breakers")
    }
    for name in ("sequence_bias", "bad_words", "dry_breakers"):
        if name in options:
            options[name] = _repeat_rows(options[name], positions)
    out = _native.run(
        lg.array,
        is_bf16=lg.is_bf16,
        params=pm,
        history=hist,
        bias_ids=bias_ids,
        bias_values=bias_vals,
        seeds=np.ascontiguousarray(flat_seeds, dtype=np.uint64),
        lanes=np.ascontiguousarray(lanes, dtype=np.uint64),
        step=int(step),
        spec_k=k,
        draft_ids=ids.reshape(-1),
        draft_probs=q,
        token_bitmask=mask,
        **options,
    )
    out_ids = out.ids.reshape(b, positions)
    out_lps = out.logprobs.reshape(b, positions)
    accepted = out.accepted if out.accepted is not None else np.zeros(b, np.int64)
    if single:
        out_ids, out_lps, accepted = out_ids[0], out_lps[0], accepted[0]
    if not is_torch:
        return VerifyOutput(out_ids, accepted, out_lps)
    device = target_logits.device

    def back(a: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return VerifyOutput(back(out_ids), back(np.asarray(accepted)), back(out_lps))


def _position_mask(mask: Any, b: int, positions: int, v: int, single: bool) -> np.ndarray | None:
    """The token bitmask as rows of the B x (K + 1) positions (one row broadcasts)."""
    if mask is None:
        return None
    a = _as_numpy(mask)
    per_position = a.ndim == (2 if single else 3)
    if per_position:
        if a.shape[-2] != positions or (not single and a.shape[0] != b):
            want = f"({positions}, W)" if single else f"({b}, {positions}, W)"
            raise ValueError(f"a per-position token_bitmask must be {want}, got {a.shape}")
        a = a.reshape(-1, a.shape[-1])
    rows = _bitmask(a, b * positions if per_position else b, v)
    if rows is None or per_position or rows.shape[0] == 1:
        return rows
    return np.repeat(rows, positions, axis=0)


def _draft_ids(draft_ids: Any, b: int, k: int, single: bool) -> np.ndarray:
    ids = _as_numpy(draft_ids)
    if ids.size and ids.dtype.kind not in "iu":
        raise TypeError(f"draft_ids must be integer token ids, got dtype {ids.dtype}")
    want = (k,) if single else (b, k)
    if ids.shape != want and not (ids.size == 0 and k == 0):
        raise ValueError(f"draft_ids must have shape {want} (K + 1 positions), got {ids.shape}")
    return np.ascontiguousarray(ids.reshape(b, k), dtype=np.int64)


def _draft_probs(draft_probs: Any, b: int, k: int, v: int, single: bool) -> np.ndarray | None:
    if draft_probs is None:
        return None
    q = _as_numpy(draft_probs)
    want = (k, v) if single else (b, k, v)
    if q.shape != want:
        raise ValueError(f"draft_probs must have shape {want}, got {q.shape}")
    if q.dtype.kind != "f":
        raise TypeError(f"draft_probs must be floating point, got dtype {q.dtype}")
    dtype = np.float64 if q.dtype == np.float64 else np.float32
    out: np.ndarray = np.ascontiguousarray(q, dtype=dtype).reshape(-1)
    if not np.isfinite(out).all() or bool(np.any(out < 0)):
        raise ValueError("draft_probs must be finite and >= 0")
    # A distribution, or acceptance (u < p / q) and the residual (p - q) are not the
    # drafter's: float32 rows of a softmax sum to 1 within ~1e-6 * sqrt(V).
    sums = out.reshape(-1, v).sum(axis=1, dtype=np.float64)
    if v and bool(np.any(np.abs(sums - 1.0) > 1e-3)):
        worst = float(sums[np.argmax(np.abs(sums - 1.0))])
        raise ValueError(f"draft_probs rows must each sum to 1 (a distribution), got {worst:.6g}")
    return out


def _position_history(base: np.ndarray | None, ids: np.ndarray, b: int, k: int) -> np.ndarray:
    """Row b's position i sees its history plus the first i drafts (padding -1 after)."""
    width = 0 if base is None else base.shape[1]
    hist = np.full((b, k + 1, width + k), -1, dtype=np.int64)
    if base is not None:
        hist[:, :, :width] = base[:, None, :]
    for i in range(1, k + 1):
        hist[:, i, width : width + i] = ids[:, :i]
    return hist.reshape(b * (k + 1), width + k)


def _repeat_rows(arrays: tuple[np.ndarray, ...], reps: int) -> tuple[np.ndarray, ...]:
    """A per-row sequence set (ids, sequence ends, row ends, values) with every row repeated
    `reps` times (one set for every row stays as it is)."""
    ids, seq_ends, row_ends, values = arrays
    if len(row_ends) <= 1:
        return arrays
    seq_starts = np.concatenate([[0], seq_ends[:-1]])
    row_starts = np.concatenate([[0], row_ends[:-1]])
    order = np.concatenate(
        [np.arange(lo, hi) for lo, hi in zip(row_starts, row_ends) for _ in range(reps)]
    ).astype(np.int64)
    lengths = (seq_ends - seq_starts)[order] if order.size else np.zeros(0, np.int64)
    new_ids = (
        np.concatenate([ids[seq_starts[s] : seq_ends[s]] for s in order])
        if order.size
        else np.zeros(0, np.int64)
    )
    counts = np.repeat(row_ends - row_starts, reps)
    new_values = values[order] if values is not None and len(values) else values
    return (
        new_ids.astype(np.int64),
        np.cumsum(lengths).astype(np.int64),
        np.cumsum(counts).astype(np.int64),
        new_values,
    )
