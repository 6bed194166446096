"""Batch generation benchmark (issue 19): records/s of `tokensampler.batch.run`.

    python benches/bench_batch.py                      # markdown table on stdout
    python benches/bench_batch.py --write benches/results/issue-19/bench_batch.md

One prompt file (chat prompts of different lengths; eos ignored, so every record generates
exactly --new-tokens tokens), the embedded SmolLM2-135M-Instruct in float32 on the CPU, and
these runs, each once (the machine is shared; run it when it is otherwise idle):

- in process, batch size 1 and batch size 8, one torch thread;
- with --threads-run, in process, batch size 8, a torch thread per core (one process using
  every core);
- Ray Data on a local cluster, 1 worker and 2 workers, one CPU and one torch thread each,
  batch size 8.

Records/s are steady-state rates (`BatchSummary.steady_records_per_second`: from the moment
every worker has returned its first batch to the last batch, so model loading and Ray's
start-up are left out); the wall time of each whole run is reported too. Every run must write
the same bytes (the batch size 1 run covers the first --records-b1 records, compared with
those lines of the others). Also measured: what row invariance costs, as one `generate` call
of 8 prompts with `set_row_invariant` on and off (median of 3 alternating runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOPICS = [
    "the sea",
    "a lighthouse",
    "autumn leaves",
    "a busy market",
    "the moon",
    "a red bicycle",
    "bread",
    "a mountain village",
    "rain on a window",
    "an old map",
    "a violin",
    "the desert",
    "a library at night",
    "a cat asleep",
    "snow",
    "a train station",
]
TASKS = [
    "Write one sentence about {}.",
    "Describe {} to a child who has never seen it, in two sentences.",
    "Give three adjectives for {}.",
    (
        "Write the opening line of a short story set near {}, in the style of a 19th-century "
        "novel, with a long and winding sentence."
    ),
]


def prompts(n: int) -> list[dict[str, Any]]:
    return [
        {"id": i, "prompt": TASKS[i % len(TASKS)].format(TOPICS[i % len(TOPICS)])} for i in range(n)
    ]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def invariance_cost(new_tokens: int, repeats: int = 3) -> tuple[float, float]:
    """Median seconds of one generate call of 8 prompts, row invariance off and on."""
    import torch
    from tokensampler.generate import generate
    from tokensampler.model import load

    torch.set_num_threads(1)
    model, tok = load(None, device="cpu", dtype="float32")
    batch = [r["prompt"] for r in prompts(8)]
    kw: dict[str, Any] = dict(
        max_new_tokens=new_tokens, chat=True, ignore_eos=True, seed=list(range(8))
    )
    times: dict[bool, list[float]] = {False: [], True: []}
    generate(model, tok, batch, **kw)  # warm-up
    for _ in range(repeats):
        for on in (False, True):
            model.set_row_invariant(on)
            t = time.perf_counter()
            generate(model, tok, batch, **kw)
            times[on].append(time.perf_counter() - t)
    model.set_row_invariant(False)
    return statistics.median(times[False]), statistics.median(times[True])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    # 16 batches of 8: a steady rate needs several batches per worker after the warm-up.
    ap.add_argument("--records", type=int, default=128, help="records of the batch-8 runs")
    ap.add_argument("--records-b1", type=int, default=12, help="records of the batch-1 run")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument(
        "--threads-run",
        action="store_true",
        help="also run in process with a torch thread per core (slow when other processes "
        "hold cores: OpenMP threads then wait on each other)",
    )
    ap.add_argument(
        "--ray-only",
        action="store_true",
        help="only the two Ray runs (1 and 2 workers) and their ratio",
    )
    ap.add_argument("--write", metavar="FILE", help="also write the markdown to FILE")
    args = ap.parse_args(argv)

    import ray
    import tokensampler
    import torch
    from tokensampler.batch import run

    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    src = tmp / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in prompts(args.records)))
    src1 = tmp / "in1.jsonl"
    src1.write_text("".join(json.dumps(r) + "\n" for r in prompts(args.records_b1)))
    n = cores()
    runs: list[tuple[str, Path, dict[str, Any]]] = [
        ("in process, batch 1, 1 thread", src1, dict(batch_size=1, cpus_per_worker=1)),
        ("in process, batch 8, 1 thread", src, dict(batch_size=8, cpus_per_worker=1)),
    ]
    if args.threads_run:
        runs.append(
            (f"in process, batch 8, {n} threads", src, dict(batch_size=8, cpus_per_worker=n))
        )
    runs += [
        (
            "Ray, 1 worker x 1 thread, batch 8",
            src,
            dict(batch_size=8, ray=True, workers=1, cpus_per_worker=1),
        ),
        (
            "Ray, 2 workers x 1 thread, batch 8",
            src,
            dict(batch_size=8, ray=True, workers=2, cpus_per_worker=1),
        ),
    ]
    if args.ray_only:
        runs = runs[-2:]
    results: list[tuple[str, Any, dict[str, Any]]] = []
    outputs: list[bytes] = []
    for name, inp, kw in runs:
        out = tmp / f"out{len(results)}.jsonl"
        print(f"running: {name} ...", file=sys.stderr, flush=True)
        s = run(inp, out, max_new_tokens=args.new_tokens, ignore_eos=True, **kw)
        results.append((name, s, kw))
        outputs.append(out.read_bytes())
        print(
            f"  {s.line()}; steady {s.steady_records_per_second:.3f} records/s",
            file=sys.stderr,
            flush=True,
        )
    if args.ray_only:
        same = outputs[0] == outputs[1]
    else:
        first_lines = b"".join(outputs[1].splitlines(keepends=True)[: args.records_b1])
        same = outputs[0] == first_lines and all(o == outputs[1] for o in outputs[2:])
        off, on = invariance_cost(args.new_tokens)
    load_after = os.getloadavg()

    rate = {name: s.steady_records_per_second for name, s, _ in results}
    header = (
        f"Batch generation (issue 19): SmolLM2-135M-Instruct float32 on the CPU ({cpu_model()}, "
        f"{n} cores), {args.new_tokens} new tokens per record (eos ignored), chat prompts; "
        f"python {platform.python_version()}, torch {torch.__version__}, ray {ray.__version__}, "
        f"tokensampler {tokensampler.__version__}; each run once. Load average (1 min) before "
        f"{load_before[0]:.2f}, after {load_after[0]:.2f} (other processes count too)."
    )
    lines = [
        header,
        "",
        "| run | records | steady records/s | steady tokens/s | wall s (all included) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s, _ in results:
        lines.append(
            f"| {name} | {s.records} | {s.steady_records_per_second:.3f} | "
            f"{s.steady_tokens_per_second:.1f} | {s.seconds:.1f} |"
        )
    r1, r2 = rate[runs[-2][0]], rate[runs[-1][0]]
    lines += ["", f"- Ray 2 workers / 1 worker: **{r2 / r1:.2f}x** records/s (target >= 1.6x)"]
    if not args.ray_only:
        b1, b8 = rate[runs[0][0]], rate[runs[1][0]]
        lines.append(
            f"- in process, batch 8 / batch 1: **{b8 / b1:.2f}x** records/s (target >= 2x)"
        )
    lines.append(f"- every run wrote the same bytes: **{'yes' if same else 'NO'}**")
    if not args.ray_only:
        lines.append(
            f"- row invariance: one generate call of 8 prompts takes {on:.2f} s with it, "
            f"{off:.2f} s without (**{on / off:.2f}x**; median of 3, 1 thread)"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        Path(args.write).write_text(text)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
