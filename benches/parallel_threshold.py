"""Where should rows go to the thread pool? Times the same calls serially and on 2 threads.

`TOKENSAMPLER_PARALLEL_MIN` (read once per process) moves the size threshold of
`pipeline::run_batch`; this script runs one child process with the threshold at 0 (always
parallel, 2 threads) and one with it out of reach (always serial), on the same logits, and
prints the ratio per batch size B and vocabulary V. The threshold belongs where the ratio
crosses 1. Usage: `python benches/parallel_threshold.py` (about a minute).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np
import tokensampler as ts
ts.set_num_threads(2)
rng = np.random.default_rng(0)
out = {}
for v in (4096, 32000, 128256):
    for b in (2, 4, 8, 16, 32):
        x = (rng.standard_normal((b, v)) * 2).astype(np.float32)
        for name, kw in (("top-k 50", dict(temperature=1.0, top_k=50)), ("T=1", dict(temperature=1.0))):
            for _ in range(20):
                ts.sample(x, seed=1, **kw)
            t = []
            for i in range(max(20, min(200, 20_000_000 // (b * v)))):
                s = time.perf_counter()
                ts.sample(x, seed=i, **kw)
                t.append(time.perf_counter() - s)
            out[f"{name}|{v}|{b}"] = float(np.median(t))
print(json.dumps(out))
"""


def run(threshold: int) -> dict[str, float]:
    env = dict(os.environ, TOKENSAMPLER_PARALLEL_MIN=str(threshold))
    res = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(res.stdout)


def main() -> None:
    par = run(0)
    ser = run(1 << 62)
    print("| pipeline | V | B | B·V | serial (µs) | 2 threads (µs) | serial ÷ parallel |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for key in par:
        name, v, b = key.split("|")
        n = int(v) * int(b)
        print(
            f"| {name} | {v} | {b} | {n:,} | {ser[key] * 1e6:.1f} | {par[key] * 1e6:.1f} | {ser[key] / par[key]:.2f} |"
        )


if __name__ == "__main__":
    main()
