"""Generate loop benchmark: tokensampler.generate vs Hugging Face `model.generate`.

Same model (the embedded SmolLM2-135M-Instruct GGUF, dequantized to float32 on the CPU, both
sides holding identical weights), same prompt, same sampling settings (temperature, top-k,
top-p), same number of new tokens (eos ignored). Runs alternate between the two so that
drift on a noisy machine hits both; the median of the repeats is reported.

    python benches/bench_generate.py                      # markdown table on stdout
    python benches/bench_generate.py --write docs/generate-bench.md
    python benches/bench_generate.py --speculative        # speculative decoding (issue 18)
    python benches/bench_generate.py --structured         # structured output (issue 17)

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
    ap.add_argument("--new-tokens", type=int, default=None, help="64 (128 with --speculative)")
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
    ap.add_argument(
        "--speculative",
        action="store_true",
        help="instead: greedy speculative decoding (prompt lookup) against the plain loop and "
        "HF's prompt_lookup_num_tokens, on a paragraph to repeat and on free text",
    )
    ap.add_argument("--k", type=int, default=8, help="draft tokens per step (--speculative)")
    ap.add_argument(
        "--hf-k",
        default="16,32,64",
        help="--speculative: HF's prompt_lookup_num_tokens values timed besides --k, so that the "
        "report also compares with HF's best (comma-separated; empty for none)",
    )
    ap.add_argument(
        "--structured",
        action="store_true",
        help="instead: constrained generation (a JSON schema, a regex, a Lark grammar; each "
        "backend) against unconstrained generation of as many tokens with the same seed: "
        "tokens/s, and the grammar backend's milliseconds per step",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.speculative:
        return speculative(args)
    if args.structured:
        return structured(args)

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
    n = args.new_tokens or 64
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


PARAGRAPH = (
    "The old lighthouse stood at the edge of the cliff for more than a century. Sailors "
    "trusted its beam on stormy nights, and the keeper, a quiet man named Elias, climbed its "
    "spiral stairs every evening to light the lamp. When the town finally replaced it with an "
    "automatic beacon, Elias kept visiting, polishing the brass rails and watching the sea. "
    "Children from the village would follow him up the hill, asking for stories about ships "
    "he had saved, and he told them each one slowly, as if the storm were still outside."
)
REWRITE = "Repeat the following paragraph exactly, word for word:\n\n" + PARAGRAPH
FREE = "Write a short story about a dragon who learns to cook."


def speculative(args: Any) -> int:
    """Greedy, `--new-tokens` (default 128 here) tokens, eos banned on both sides (HF:
    min_new_tokens), the chat template applied to both prompts: tokens/s of the plain loop, of prompt lookup, and of HF
    `model.generate(prompt_lookup_num_tokens=K)` on the same weights."""
    import tokensampler as ts
    import transformers
    from tokensampler.generate import generate, prompt_token_ids
    from tokensampler.hf import load_gguf
    from tokensampler.model import default_model_path, load

    n = args.new_tokens or 128
    path = default_model_path()
    model, tok = load(path, device="cpu", dtype="float32")
    hf = load_gguf(path)

    def ours(prompt: str, **kw: Any) -> Callable[[], tuple[float, float]]:
        def run() -> tuple[float, float]:
            t = time.perf_counter()
            # eos banned, as HF's min_new_tokens does: both sides then write the same text
            # (ignore_eos would emit eos and continue with a chat turn instead).
            out = generate(model, tok, prompt, max_new_tokens=n, temperature=0, chat=True,
                           logit_bias={e: float("-inf") for e in tok.eos_token_ids},
                           **kw)  # fmt: skip
            dt = time.perf_counter() - t
            assert out.stats.new_tokens == n
            return n / dt, out.stats.acceptance_rate

        return run

    def theirs(prompt: str, **kw: Any) -> Callable[[], tuple[float, float]]:
        x = torch.tensor(prompt_token_ids(tok, prompt, chat=True))

        def run() -> tuple[float, float]:
            with torch.inference_mode():
                t = time.perf_counter()
                out = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                  max_new_tokens=n, min_new_tokens=n,
                                  pad_token_id=tok.eos_token_ids[0], **kw)  # fmt: skip
                dt = time.perf_counter() - t
            assert out.shape[1] - x.shape[1] == n
            return n / dt, float("nan")

        return run

    k = args.k
    hf_ks = [int(v) for v in args.hf_k.split(",") if v.strip() and int(v) != k]
    runners: dict[str, Callable[[], tuple[float, float]]] = {
        "repeat: tokensampler, plain": ours(REWRITE),
        f"repeat: tokensampler, prompt lookup (K={k})": ours(
            REWRITE, speculative="prompt_lookup", num_speculative_tokens=k
        ),
        "repeat: HF, plain": theirs(REWRITE),
        f"repeat: HF, prompt_lookup_num_tokens={k}": theirs(REWRITE, prompt_lookup_num_tokens=k),
        "free text: tokensampler, plain": ours(FREE),
        f"free text: tokensampler, prompt lookup (K={k})": ours(
            FREE, speculative="prompt_lookup", num_speculative_tokens=k
        ),
    }
    # HF at other K: the ratio at the same K is the issue's; against HF's best K it cannot
    # come from having picked a K that suits us.
    for hk in hf_ks:
        runners[f"repeat: HF, prompt_lookup_num_tokens={hk}"] = theirs(
            REWRITE, prompt_lookup_num_tokens=hk
        )
    for run in runners.values():  # warm-up
        run()
    rows: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, run in runners.items():
            rows[name].append(run())

    def med(name: str, i: int = 0) -> float:
        return statistics.median(r[i] for r in rows[name])

    names = list(runners)
    plain, look, hf_look = med(names[0]), med(names[1]), med(names[3])
    hf_best, hf_best_k = max(
        (med(f"repeat: HF, prompt_lookup_num_tokens={v}"), v) for v in [k, *hf_ks]
    )
    free_plain, free_look = med(names[4]), med(names[5])
    cpu = platform.processor() or platform.machine()
    lines = [
        (
            f"Speculative decoding, greedy, {n} new tokens (eos banned), chat template, "
            f"SmolLM2-135M-Instruct float32 on the CPU ({cpu}, "
            f"{torch.get_num_threads()} threads), torch "
            f"{torch.__version__}, transformers {transformers.__version__}, tokensampler "
            f"{ts.__version__}; median of {args.repeats} alternating runs after a warm-up."
        ),
        "",
        "| run | tokens/s | drafts accepted |",
        "|---|---:|---:|",
    ]
    for name in sorted(names, key=lambda n: not n.startswith("repeat")):  # stable
        rate = med(name, 1)
        acc = "-" if math.isnan(rate) or "plain" in name else f"{rate:.0%}"
        lines.append(f"| {name} | {med(name):.1f} | {acc} |")
    lines += [
        "",
        f"- prompt lookup / plain loop, repeat: **{look / plain:.2f}x** (target >= 1.5x)",
        f"- prompt lookup / HF prompt lookup: **{look / hf_look:.2f}x** (target >= 1.2x)",
        (
            f"- prompt lookup (K={k}) / HF prompt lookup at its best K of "
            f"{', '.join(str(v) for v in [k, *hf_ks])} (K={hf_best_k}): "
            f"**{look / hf_best:.2f}x**"
        ),
        (
            f"- prompt lookup / plain loop, free text: **{free_look / free_plain:.2f}x** "
            "(target >= 0.95x: it costs <= 5%)"
        ),
    ]
    return _report(lines, args.write)


def _report(lines: list[str], path: str | None) -> int:
    """Prints the report (markdown lines) and writes it to `path` when given."""
    text = "\n".join(lines)
    print(text)
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


BENCH_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "maxLength": 40},
        "address": {
            "type": "object",
            "properties": {
                "street": {"type": "string", "maxLength": 32},
                "city": {"type": "string", "maxLength": 24},
                "zip": {"type": "integer", "minimum": 10000, "maximum": 99999},
            },
            "required": ["street", "city", "zip"],
            "additionalProperties": False,
        },
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 4},
        "status": {"enum": ["active", "inactive", "banned"]},
    },
    "required": ["name", "age", "email", "address", "hobbies", "status"],
    "additionalProperties": False,
}
BENCH_LARK = """
start: list
list: "[" [item ("," item)*] "]"
item: NUMBER | list
NUMBER: /[0-9]+/
"""
STRUCTURED_CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("JSON schema (nested object, array, enum)", "Invent a person and describe them as JSON.",
     {"json_schema": BENCH_SCHEMA}),
    ("regex (an ISO date and time)", "When did the first moon landing happen?",
     {"regex": r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z"}),
    ("Lark grammar (nested lists)", "Write a long nested list of numbers, like [1,[2,3],[4]].",
     {"grammar": BENCH_LARK}),
]  # fmt: skip


def structured(args: Any) -> int:
    """Each case, each installed backend: the constrained call (it ends when the grammar is
    complete, after n tokens) and an unconstrained call of the same prompt, seed and n tokens
    (eos ignored), alternating; median tokens/s of each and their ratio; the backend's time
    per step (mask fill + matcher advance, `GenerateStats.mask_ms_per_step`), and the
    sampler's time per token with and without the mask. Setup (reading the vocabulary into
    the backend, compiling the constraint) is timed apart, on a fresh tokenizer object."""
    import importlib.util

    import tokensampler as ts
    from tokensampler.generate import generate
    from tokensampler.model import Tokenizer, default_model_path, load
    from tokensampler.structured import get_backend, row_constraints

    path = default_model_path()
    model, tok = load(path, device="cpu", dtype="float32")
    backends = [b for b in ("llguidance", "xgrammar") if importlib.util.find_spec(b)]
    kw: dict[str, Any] = dict(chat=True, temperature=args.temperature, top_p=args.top_p,
                              seed=[1 + i for i in range(args.batch)])  # fmt: skip
    setup: dict[str, tuple[float, float]] = {}
    for backend in backends:
        fresh = Tokenizer(tok.tokenizer, eos_token_ids=tok.eos_token_ids)
        t = time.perf_counter()
        be = get_backend(backend, fresh, model.vocab_size)
        t_vocab = time.perf_counter() - t
        t = time.perf_counter()
        c = row_constraints(1, json_schema=BENCH_SCHEMA)[0]
        assert c is not None
        be.matcher(c)
        setup[backend] = (t_vocab, time.perf_counter() - t)

    # tokens/s, grammar ms/step, sampler ms/token, the longest row's new tokens
    Result = tuple[float, float, float, int]

    def run(prompt: str, n: int, **extra: Any) -> Result:
        t = time.perf_counter()
        out = generate(model, tok, [prompt] * args.batch, max_new_tokens=n, **kw, **extra)
        dt = time.perf_counter() - t
        st = out.stats
        return (st.new_tokens / dt, st.mask_ms_per_step,
                1000 * st.sample_time / max(st.steps + 1, 1),
                max(len(r) for r in out.token_ids))  # fmt: skip

    lines_rows: list[str] = []
    ratios: list[float] = []
    for label, prompt, constraint in STRUCTURED_CASES:
        for backend in backends:
            con = dict(constraint, structured_backend=backend)
            first = run(prompt, args.new_tokens or 256, **con)  # warm-up; fixes n
            n = first[3]
            run(prompt, n, ignore_eos=True)
            a: list[Result] = []
            b: list[Result] = []
            for _ in range(args.repeats):
                a.append(run(prompt, n + 64, **con))
                b.append(run(prompt, n, ignore_eos=True))
            assert all(r[3] == first[3] for r in a), "constrained output changed between runs"

            def med(rows: list[Result], i: int) -> float:
                return statistics.median(r[i] for r in rows)

            ratio = med(a, 0) / med(b, 0)
            ratios.append(ratio)
            lines_rows.append(
                f"| {label} | {backend} | {n} | {med(a, 0):.1f} | {med(b, 0):.1f} | "
                f"**{ratio:.2f}x** | {med(a, 1):.3f} | {med(a, 2):.2f} / {med(b, 2):.2f} |"
            )
    cpu = platform.processor() or platform.machine()
    load_avg = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        (
            f"Structured output, SmolLM2-135M-Instruct float32 on the CPU ({cpu}, "
            f"{torch.get_num_threads()} threads), batch {args.batch}, chat template, "
            f"temperature {args.temperature}, top-p {args.top_p}, seeds 1..{args.batch}; torch "
            f"{torch.__version__}, tokensampler {ts.__version__}; median of {args.repeats} "
            "alternating runs after a warm-up. The unconstrained call generates as many tokens "
            "(n per row, eos ignored) from the same prompt and seed. Load average at the end: "
            f"{load_avg}."
        ),
        "",
        (
            "| constraint | backend | n | constrained tokens/s | unconstrained tokens/s | ratio "
            "| grammar ms/step | sampler ms/token (masked / free) |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *lines_rows,
        "",
        f"- constrained / unconstrained tokens/s: worst **{min(ratios):.2f}x** (target >= 0.8x)",
        "- setup, once per tokenizer and backend (reading the 49152-token vocabulary, the "
        "vocabulary check) and per constraint (compiling the JSON schema): "
        + "; ".join(f"{name} {v:.2f} s + {c * 1000:.1f} ms" for name, (v, c) in setup.items()),
    ]
    return _report(lines, args.write)


if __name__ == "__main__":
    sys.exit(main())
