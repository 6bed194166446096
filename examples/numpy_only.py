"""tokensampler without torch: a character bigram "model" in numpy and a `ts.sample` loop.

The model is a table of log-counts of which character follows which in a few lines of text;
its "forward" is one row lookup. The loop samples a batch of three rows with per-row
temperatures, top-p and a repetition penalty, reproducibly from one seed. torch is never
imported (the script checks that at the end).

Run: ``python examples/numpy_only.py`` (well under a second).
"""

from __future__ import annotations

import sys

import numpy as np
import tokensampler as ts

TEXT = """\
First Citizen: Before we proceed any further, hear me speak.
All: Speak, speak.
First Citizen: You are all resolved rather to die than to famish?
All: Resolved. resolved.
First Citizen: First, you know Caius Marcius is chief enemy to the people.
All: We know't, we know't.
First Citizen: Let us kill him, and we'll have corn at our own price.
"""


def bigram_logits(text: str, alpha: float = 0.1) -> tuple[np.ndarray, list[str]]:
    """(V, V) float32 logits: row a holds log P(next | a), smoothed by `alpha`."""
    vocab = sorted(set(text))
    index = {c: i for i, c in enumerate(vocab)}
    ids = np.array([index[c] for c in text])
    counts = np.zeros((len(vocab), len(vocab)))
    np.add.at(counts, (ids[:-1], ids[1:]), 1.0)
    counts += alpha
    logp = np.log(counts / counts.sum(axis=1, keepdims=True))
    return logp.astype(np.float32), vocab


def generate(
    table: np.ndarray, prompts: np.ndarray, max_new_tokens: int, seed: int, **params: object
) -> np.ndarray:
    """The generate loop: logits of the last token of each row, one `ts.sample` call, append.

    Args:
        table: the (V, V) bigram logits.
        prompts: (B, L) int64 prompt ids.
        max_new_tokens: tokens to add to each row.
        seed: seeds the sampler's random streams (the same seed gives the same text).
        **params: sampling parameters for `ts.Sampler`, scalars or one value per row.

    Returns:
        (B, L + max_new_tokens) int64 ids.
    """
    sampler = ts.Sampler(seed=seed, **params)
    idx = prompts
    for _ in range(max_new_tokens):
        logits = table[idx[:, -1]]  # (B, V): the bigram model's "forward"
        idx_next = sampler(logits, history=idx, keepdim=True)  # (B, 1) int64
        idx = np.concatenate([idx, idx_next], axis=1)
    return idx


def main() -> None:
    table, vocab = bigram_logits(TEXT)
    enc = {c: i for i, c in enumerate(vocab)}
    prompts = np.array([[enc[c] for c in "All: "]] * 3, dtype=np.int64)
    temperatures = [0.0, 0.7, 1.2]  # greedy, focused, adventurous: one call, per-row values
    out = generate(
        table, prompts, 60, seed=7, temperature=temperatures, top_p=0.95, repetition_penalty=1.2
    )
    for t, row in zip(temperatures, out):
        print(f"T={t:<4}", repr("".join(vocab[i] for i in row)))
    again = generate(
        table, prompts, 60, seed=7, temperature=temperatures, top_p=0.95, repetition_penalty=1.2
    )
    assert np.array_equal(out, again), "the same seed must give the same text"
    p = ts.probs(table[enc["k"]], temperature=0.7, top_p=0.95)
    top = np.argsort(-p)[:3]
    print("after 'k', T=0.7, top_p=0.95:", {vocab[i]: round(float(p[i]), 3) for i in top})
    assert "torch" not in sys.modules, "this example must not import torch"
    print("torch was never imported")


if __name__ == "__main__":
    main()
