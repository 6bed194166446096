#!/usr/bin/env python
"""Prints the reliability figures of docs/reliability.md (the README's "Reliability" section).

It runs the same checks as the hardening tests (tests/test_fuzz.py, test_concurrency.py,
test_memory.py, test_panic.py), counting instead of asserting, and prints a markdown table:

    python scripts/reliability.py                        # ~3 minutes on 2 cores
    python scripts/reliability.py --examples 500 --calls 20000      # quick look
    python scripts/reliability.py --cargo-fuzz 300       # also 5 minutes of cargo fuzz

Figures: fuzzed calls and their outcomes (valid result / ValueError / TypeError / known
bug / contract violation), concurrent calls compared bit for bit with serial ones, the
two-thread speed-up, RSS growth over many calls of each public function, leaked references,
caught panics, and optionally libFuzzer executions of the Rust pipeline.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np
import tokensampler as ts
from hypothesis import HealthCheck, given, settings


def fuzz(examples: int) -> dict[str, Any]:
    """Hypothesis-driven calls of sample / probs / Sampler, tallied by outcome."""
    import test_fuzz

    outcomes: collections.Counter[str] = collections.Counter()
    failures: list[str] = []

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(test_fuzz.calls())
    def run(call: Any) -> None:
        try:
            outcomes[test_fuzz.judge(call)] += 1
        except AssertionError as e:
            outcomes["CONTRACT VIOLATION"] += 1
            failures.append(f"{e}"[:300])

    t0 = time.perf_counter()
    run()
    return {"outcomes": outcomes, "failures": failures, "seconds": time.perf_counter() - t0}


def concurrency() -> dict[str, Any]:
    import test_concurrency as tc

    shared = np.random.default_rng(1).standard_normal((8, 16_000)).astype(np.float32) * 2
    shared.flags.writeable = False
    jobs = tc._jobs(shared, np.random.default_rng(0))
    serial = [job() for job in jobs]
    work = jobs * 3
    mismatches = 0
    rounds = 3
    for _ in range(rounds):
        got = tc._run_concurrently(work, tc.N_THREADS)
        mismatches += sum(not tc._equal(r, serial[i % len(jobs)]) for i, r in enumerate(got))

    # One Sampler shared by 8 threads: the multiset of results of steps 0..N-1.
    from concurrent.futures import ThreadPoolExecutor

    n = 2_000
    x = np.zeros((4, 1000), dtype=np.float32)
    serial_s = ts.Sampler(seed=1234, top_k=900)
    want = collections.Counter(tuple(serial_s(x).tolist()) for _ in range(n))
    shared_s = ts.Sampler(seed=1234, top_k=900)
    with ThreadPoolExecutor(tc.N_THREADS) as ex:
        got_s = collections.Counter(ex.map(lambda _: tuple(shared_s(x).tolist()), range(n)))

    big = np.random.default_rng(4).standard_normal(1 << 20).astype(np.float32)
    tc._speedup_once(big, 3)
    speedups = [tc._speedup_once(big, 12) for _ in range(5)]
    return {
        "threads": tc.N_THREADS,
        "calls": rounds * len(work),
        "mismatches": mismatches,
        "sampler_calls": n,
        "sampler_ok": got_s == want and shared_s.step == n,
        "speedup_best": max(speedups),
        "speedup_median": float(np.median(speedups)),
    }


def memory(calls: int) -> dict[str, Any]:
    import test_memory as tm

    growth = {}
    for name, (fn, n) in sorted(tm.LEAK_CASES.items()):
        n = max(1, n * calls // tm.CALLS)
        growth[name] = (n, tm.rss_growth(fn, n))
    kinds = ("numpy", "torch") if tm.torch is not None else ("numpy",)
    leaks = sum(len(tm.refcount_drift(kind)) for kind in kinds)
    gen = None
    if tm.torch is not None and tm.HAS_GENERATE:
        from model_helpers import random_model, tiny_llama_config
        from tokensampler.generate import generate

        model = random_model(tiny_llama_config(vocab_size=300, max_seq_len=64), seed=0)
        threads = tm.torch.get_num_threads()
        tm.torch.set_num_threads(1)
        try:

            def gen_call() -> None:
                generate(model, None, [[1, 2, 3]], max_new_tokens=40, ignore_eos=True, seed=1)

            for _ in range(3):  # warm-up
                gen_call()
            gc.collect()
            before = tm.rss_bytes()
            for _ in range(50):  # 50 x 40 = 2,000 steps
                gen_call()
            gc.collect()
            gen = tm.rss_bytes() - before
        finally:
            tm.torch.set_num_threads(threads)
    return {"growth": growth, "ref_leaks": leaks, "generate": gen}


def panics(n: int = 1000) -> dict[str, Any]:
    from tokensampler import _native

    caught = 0
    # Rust's panic hook prints each (caught) panic to stderr, with a backtrace when
    # RUST_BACKTRACE is set: silence fd 2 for these deliberate ones.
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        for i in range(n):
            try:
                _native._debug_panic(i % 2 == 0)
            except RuntimeError:
                caught += 1
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    ok = int(ts.sample(np.array([0.0, 2.0, 1.0]), temperature=0)) == 1
    return {"panics": n, "caught": caught, "usable_after": ok}


def cargo_fuzz(seconds: int) -> dict[str, Any]:
    r = subprocess.run(
        ["bash", str(ROOT / "scripts" / "fuzz.sh"), str(seconds)],
        check=False,
        capture_output=True,
        text=True,
    )
    out = r.stdout + r.stderr
    m = re.search(r"Done (\d+) runs in (\d+) second", out)
    return {
        "ok": r.returncode == 0,
        "runs": int(m.group(1)) if m else None,
        "seconds": int(m.group(2)) if m else seconds,
        "tail": out[-1500:] if r.returncode else "",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=3000, help="fuzzed calls (hypothesis)")
    ap.add_argument("--calls", type=int, default=100_000, help="calls per memory check")
    ap.add_argument("--cargo-fuzz", type=int, default=0, metavar="SECONDS")
    args = ap.parse_args()

    print(f"tokensampler {ts.__version__}, Python {platform.python_version()}, "
          f"numpy {np.__version__}, {os.cpu_count()} cores, {platform.machine()}", flush=True)  # fmt: skip
    f = fuzz(args.examples)
    c = concurrency()
    m = memory(args.calls)
    p = panics()
    cf = cargo_fuzz(args.cargo_fuzz) if args.cargo_fuzz else None

    out = f["outcomes"]
    errors = sum(v for k, v in out.items() if k.startswith("error"))
    bugs = sum(v for k, v in out.items() if k.startswith("known bug"))
    print()
    print("| check | figure |")
    print("|---|---|")
    print(
        f"| fuzzed public calls (hypothesis) | {sum(out.values()):,} calls: "
        f"{out['valid result']:,} valid results, {errors:,} ValueError/TypeError, "
        f"{bugs:,} known bugs, {out['CONTRACT VIOLATION']:,} contract violations "
        f"({f['seconds']:.0f} s) |"
    )
    if cf:
        runs = f"{cf['runs']:,}" if cf["runs"] else "?"
        print(
            f"| cargo fuzz of `run_batch` (libFuzzer) | {runs} inputs in {cf['seconds']} s, "
            f"{'no crash' if cf['ok'] else 'CRASH'} |"
        )
    print(
        f"| concurrent calls vs serial | {c['threads']} threads, {c['calls']:,} calls, "
        f"{c['mismatches']} mismatches |"
    )
    print(
        f"| one Sampler shared by {c['threads']} threads | {c['sampler_calls']:,} calls = "
        f"steps 0..{c['sampler_calls'] - 1}: {'exact' if c['sampler_ok'] else 'MISMATCH'} |"
    )
    print(
        f"| GIL released (2 threads vs 1, 1M-logit rows) | {c['speedup_best']:.2f}x best, "
        f"{c['speedup_median']:.2f}x median of 5 |"
    )
    for name, (n, g) in m["growth"].items():
        print(f"| RSS growth, `{name}` | {g / 2**20:+.2f} MB over {n:,} calls |")
    if m["generate"] is not None:
        print(f"| RSS growth, `generate` (tiny random Llama) | {m['generate'] / 2**20:+.2f} MB "
              "over 2,000 steps |")  # fmt: skip
    print(f"| leaked references (inputs, history, bias) | {m['ref_leaks']} |")
    print(
        f"| deliberate kernel panics | {p['caught']:,}/{p['panics']:,} caught as RuntimeError, "
        f"interpreter {'usable' if p['usable_after'] else 'BROKEN'} |"
    )
    for fail in f["failures"][:5]:
        print("violation:", fail)
    if cf and cf["tail"]:
        print(cf["tail"])
    bad = out["CONTRACT VIOLATION"] or c["mismatches"] or not c["sampler_ok"] or m["ref_leaks"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
