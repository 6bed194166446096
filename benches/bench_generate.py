"""Generate loop benchmark: tokensampler.generate vs Hugging Face `model.generate`.

Same model (the embedded SmolLM2-135M-Instruct GGUF, dequantized to float32 on the CPU, both
sides holding identical weights), same prompt, same sampling settings (temperature, top-k,
top-p), same number of new tokens (eos ignored). Runs alternate between the two so that
drift on a noisy machine hits both; the median of the repeats is reported.

    python benches/bench_generate.py                      # markdown table on stdout
    python benches/bench_generate.py --write docs/generate-bench.md

Reports tokens/s (new tokens / wall time of the whole call, prefill included), the ratio,
time to first token, and the share of the wall time spent inside our sampling call.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

PROMPT = "Every effort moves you"
Row = tuple[float, float, float]  # tokens/s, time to first token, sampling share
HF = "HF `model.generate` (sample)"  # the baseline row every ratio is against


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1, help="copies of the prompt per call")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument(
        "--hf-compile",
        action="store_true",
        help="also time HF with a static cache and a torch.compile'd forward (compiles ~30 "
        "layers as one graph: minutes on a small CPU)",
    )
    ap.add_argument("--write", metavar="FILE", help="also write the markdown to FILE")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import tokensampler as ts
    import transformers
    from tokensampler.generate import generate
    from tokensampler.hf import load_gguf
    from tokensampler.model import default_model_path, load

    path = default_model_path()
    model, tok = load(path, device="cpu", dtype="float32")
    compiled, _ = load(path, device="cpu", dtype="float32")
    compiled.compile_decode()
    hf = load_gguf(path)
    ids = tok.encode(PROMPT)
    prompts = [PROMPT] * args.batch
    x = torch.tensor([ids] * args.batch)
    n = args.new_tokens
    kw = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p}

    def ours(m: Any) -> Callable[[], Row]:
        def run() -> Row:
            t = time.perf_counter()
            out = generate(m, tok, prompts, max_new_tokens=n, ignore_eos=True, **kw)
            dt = time.perf_counter() - t
            assert out.stats.new_tokens == n * args.batch
            return n * args.batch / dt, out.stats.time_to_first_token, out.stats.sample_time / dt

        return run

    class FirstToken(transformers.StoppingCriteria):
        """Records when HF has its first new token (it only stops at max_new_tokens)."""

        def __init__(self) -> None:
            self.t: float | None = None

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            if self.t is None:
                self.t = time.perf_counter()
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    def theirs(m: Any, **extra: Any) -> Callable[[], Row]:
        def run() -> Row:
            first = FirstToken()
            with torch.inference_mode():
                t = time.perf_counter()
                out = m.generate(
                    x, attention_mask=torch.ones_like(x), do_sample=True, max_new_tokens=n,
                    min_new_tokens=n, pad_token_id=tok.eos_token_ids[0],
                    stopping_criteria=transformers.StoppingCriteriaList([first]), **kw, **extra,
                )  # fmt: skip
                dt = time.perf_counter() - t
            assert out.shape[1] - x.shape[1] == n
            return n * args.batch / dt, (first.t or t) - t, float("nan")

        return run

    runners: dict[str, Callable[[], Row]] = {
        "tokensampler.generate": ours(model),
        "tokensampler.generate, `model.compile_decode()`": ours(compiled),
        HF: theirs(hf),
    }
    if args.hf_compile:
        # HF's own recipe for a compiled decode: a static cache and a compiled forward.
        hfc = load_gguf(path)
        hfc.forward = torch.compile(hfc.forward)
        runners["HF `model.generate`, static cache + `torch.compile`"] = theirs(
            hfc, cache_implementation="static"
        )
    setup: dict[str, float] = {}
    for name, run in runners.items():  # warm-up: allocations, thread pools, compilation
        t = time.perf_counter()
        run()
        setup[name] = time.perf_counter() - t
    rows: dict[str, list[Row]] = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():
            rows[name].append(run())

    def med(name: str, i: int) -> float:
        return statistics.median(r[i] for r in rows[name])

    tps_h = med(HF, 0)
    lines = [
        (
            f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32), CPU "
            f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
            f"torch {torch.__version__}, transformers {transformers.__version__}, "
            f"tokensampler {ts.__version__}. Prompt {PROMPT!r} ({len(ids)} tokens) x {args.batch}, "
            f"{n} new tokens, temperature {args.temperature}, top-k {args.top_k}, "
            f"top-p {args.top_p}; median of {args.repeats} alternating runs after one warm-up "
            f"run each (the warm-up column: its wall time, which includes any compilation)."
        ),
        "",
        "| generate loop | tokens/s | vs HF | time to first token | sampling share | warm-up run |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in runners:
        share = med(name, 2)
        lines.append(
            f"| {name} | {med(name, 0):.1f} | {med(name, 0) / tps_h:.2f}x | "
            f"{med(name, 1) * 1000:.0f} ms | "
            f"{'-' if math.isnan(share) else f'{share * 100:.1f}%'} | {setup[name]:.1f} s |"
        )
    text = "\n".join(lines)
    print(text)
    if args.write:
        with open(args.write, "w", encoding="utf-8") as f:
            f.write("## Generate loop: tokensampler vs Hugging Face\n\n")
            f.write("`python benches/bench_generate.py` on this project's 2-core CPU machine.\n\n")
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
