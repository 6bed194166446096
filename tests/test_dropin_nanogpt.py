"""The one-line drop-in for plain generate loops draws from the distribution it replaces.

The fixed model is the small random-weight GPT of ``examples/nanogpt_loop.py`` (imported from
the example so that the test and the documentation show the same loop). Two claims:

1. ``ts.probs(logits[:, -1, :], temperature=T, top_k=k)`` equals what nanoGPT's lines compute
   (``/ temperature``, top-k masking, softmax) and what the "Build an LLM from scratch" lines
   compute (top-k masking, ``/ temperature``, softmax), within float32 rounding.
2. Tokens drawn through the drop-in line, ``sampler(logits[:, -1, :], history=idx,
   keepdim=True)``, follow that distribution: a chi-square test on >= 50,000 draws (fixed
   seeds, p > 1e-3), both from a repeated batch in one call and from repeated calls.

And the documented diffs (README.md, docs/dropin-readme-section.md, docs/dropin.md) are the
ones the example shows: applied to the example's verbatim copies of nanoGPT's ``generate`` and
the book's ``generate``, they give the example's ``_ts`` versions (which add only a ``seed``).
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import tokensampler as ts

torch = pytest.importorskip("torch")
F = torch.nn.functional
stats = pytest.importorskip("scipy.stats")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "nanogpt_loop.py"
P_MIN = 1e-3


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nanogpt_loop_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    # dataclasses resolve the module's annotations through sys.modules.
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def ex() -> ModuleType:
    return _load_example()


@pytest.fixture(scope="module")
def model(ex: ModuleType) -> torch.nn.Module:
    return ex.build_model()


@pytest.fixture(scope="module")
def idx(ex: ModuleType) -> torch.Tensor:
    return torch.cat([ex.encode("ROMEO:\n"), ex.encode("JULIET:"), ex.encode("KING: a")], dim=0)


@pytest.fixture(scope="module")
def last_logits(model: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits, _ = model(idx)
    return logits[:, -1, :].contiguous()  # (B, V) float32


def nanogpt_lines(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """nanoGPT's sampling lines, up to the softmax (input: the last-position logits)."""
    logits = logits / temperature
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        logits[logits < v[:, [-1]]] = -float("Inf")
    return F.softmax(logits, dim=-1)


def llm_from_scratch_lines(
    logits: torch.Tensor, temperature: float, top_k: int | None
) -> torch.Tensor:
    """The book's lines (top-k before temperature), up to the softmax, one row at a time.

    The book compares against ``top_logits[:, -1]`` of shape (B,), which only broadcasts
    correctly for B = 1, so rows go through one by one as in its own examples.
    """
    rows = []
    for row in logits:
        x = row[None, :]
        if top_k is not None:
            top_logits, _ = torch.topk(x, top_k)
            min_val = top_logits[:, -1]
            x = torch.where(x < min_val, torch.tensor(float("-inf")), x)
        rows.append(torch.softmax(x / temperature, dim=-1))
    return torch.cat(rows, dim=0)


@pytest.mark.parametrize("temperature", [0.5, 0.8, 1.0, 1.7])
@pytest.mark.parametrize("top_k", [None, 1, 5, 20, 65, 200])
def test_probs_equal_nanogpt_lines(
    last_logits: torch.Tensor, temperature: float, top_k: int | None
) -> None:
    ref = nanogpt_lines(last_logits.clone(), temperature, top_k)
    ours = ts.probs(last_logits, temperature=temperature, top_k=top_k)
    assert ours.dtype == torch.float32 and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)
    assert torch.equal(ours > 0, ref > 0), "the kept sets differ"


@pytest.mark.parametrize("temperature", [0.6, 1.0, 1.4])
@pytest.mark.parametrize("top_k", [None, 3, 25])
def test_probs_equal_llm_from_scratch_lines(
    last_logits: torch.Tensor, temperature: float, top_k: int | None
) -> None:
    ref = llm_from_scratch_lines(last_logits, temperature, top_k)
    ours = ts.probs(last_logits, temperature=temperature, top_k=top_k)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


def _chisquare(draws: np.ndarray, p: np.ndarray) -> float:
    """p-value of a chi-square goodness-of-fit test of `draws` against `p`.

    Tokens the distribution excludes must never be drawn (checked exactly); kept tokens with
    an expected count below 5 are pooled into one bin so that the test's approximation holds.
    """
    n = draws.size
    counts = np.bincount(draws, minlength=p.size)
    assert counts[p == 0].sum() == 0, "drew a token outside the kept set"
    expected = n * p
    small = (expected < 5) & (p > 0)
    big = expected >= 5
    obs = list(counts[big])
    exp = list(expected[big])
    if small.any():
        obs.append(counts[small].sum())
        exp.append(expected[small].sum())
    exp_a = np.asarray(exp)
    exp_a *= n / exp_a.sum()  # float64 p sums to 1 only up to rounding
    return float(stats.chisquare(obs, exp_a).pvalue)


CASES = [(0.8, 10, 11), (1.0, None, 12), (1.3, 5, 13), (0.7, 65, 14)]


@pytest.mark.parametrize(("temperature", "top_k", "seed"), CASES)
def test_dropin_line_draws_follow_original_distribution(
    last_logits: torch.Tensor, idx: torch.Tensor, temperature: float, top_k: int | None,
    seed: int,
) -> None:  # fmt: skip
    """One call on a repeated batch: 60,000 rows, the prompt of row 0."""
    n = 60_000
    logits = last_logits[:1].repeat(n, 1)  # the model's (1, V) logits, n times
    history = idx[:1].repeat(n, 1)
    sampler = ts.Sampler(temperature=temperature, top_k=top_k, seed=seed)
    idx_next = sampler(logits, history=history, keepdim=True)  # the drop-in line
    assert idx_next.shape == (n, 1) and idx_next.dtype == torch.int64
    assert idx_next.device == logits.device
    grown = torch.cat((history, idx_next), dim=1)  # nanoGPT's next line, unchanged
    assert grown.shape == (n, history.shape[1] + 1) and grown.dtype == torch.int64
    p = nanogpt_lines(last_logits[:1].double(), temperature, top_k)[0].numpy()
    assert _chisquare(idx_next[:, 0].numpy(), p) > P_MIN


def test_dropin_line_repeated_calls_follow_original_distribution(
    last_logits: torch.Tensor, idx: torch.Tensor
) -> None:
    """Repeated calls of one Sampler (its step advances): 5 calls x 3 prompts x 4,000 rows.

    60,000 draws in all, tested per prompt (20,000 each) against that prompt's distribution.
    """
    reps, calls = 4_000, 5
    logits = last_logits.repeat_interleave(reps, dim=0)  # (3 * reps, V)
    history = idx.repeat_interleave(reps, dim=0)
    sampler = ts.Sampler(temperature=0.9, top_k=12, seed=2024)
    draws = torch.cat([sampler(logits, history=history, keepdim=True) for _ in range(calls)], 1)
    ref = nanogpt_lines(last_logits.double(), 0.9, 12).numpy()
    for row in range(3):
        d = draws[row * reps : (row + 1) * reps].reshape(-1).numpy()
        assert d.size == reps * calls == 20_000
        assert _chisquare(d, ref[row]) > P_MIN
    assert draws.numel() == 60_000
    # Successive calls must not repeat each other's random numbers.
    assert not torch.equal(draws[:, 0], draws[:, 1])


def test_generate_loop_end_to_end(ex: ModuleType, model: torch.nn.Module) -> None:
    """The example's one-line-changed nanoGPT loop: shapes, dtype, reproducibility, greedy."""
    prompt = ex.encode("ROMEO:\n").repeat(4, 1)
    a = model.generate_ts(prompt, 12, temperature=0.8, top_k=10, seed=5)
    b = model.generate_ts(prompt, 12, temperature=0.8, top_k=10, seed=5)
    assert a.shape == (4, prompt.shape[1] + 12) and a.dtype == torch.int64
    assert torch.equal(a, b)
    assert torch.equal(a[:, : prompt.shape[1]], prompt)
    # Rows draw from independent lanes of the seed's stream.
    assert len({tuple(r) for r in a[:, prompt.shape[1] :].tolist()}) > 1
    book = ex.logits_only(model)
    greedy_ref = ex.generate_llm_from_scratch(book, prompt[:1], 16, context_size=64)
    greedy_ts = ex.generate_llm_from_scratch_ts(book, prompt[:1], 16, context_size=64)
    assert torch.equal(greedy_ref, greedy_ts)


def test_first_generated_token_follows_original_distribution(
    ex: ModuleType, model: torch.nn.Module
) -> None:
    """The whole drop-in generate (model forward + sampler + cat) on a repeated prompt.

    A one-token prompt keeps the 50,000-row forward pass cheap.
    """
    n = 50_000
    prompt = ex.encode("K")
    out = model.generate_ts(prompt.repeat(n, 1), 1, temperature=1.2, top_k=30, seed=77)
    with torch.no_grad():
        logits, _ = model(prompt)
    p = nanogpt_lines(logits[:, -1, :].double(), 1.2, 30)[0].numpy()
    assert _chisquare(out[:, -1].numpy(), p) > P_MIN


def test_keepdim_shapes() -> None:
    """keepdim=True gives (B, 1) for torch and numpy; without it (B,); 1-D logits give () and,
    with keepdim, (1,)."""
    s = ts.Sampler(temperature=0.0)
    x = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]])
    assert s(x, keepdim=True).tolist() == [[1], [0]]
    assert s(x).shape == (2,)
    assert s(x.numpy(), keepdim=True).shape == (2, 1)
    assert s(x.numpy()[0], keepdim=True).shape == (1,)
    assert s(x.numpy()[0]).shape == ()
    assert s(x[0], keepdim=True).shape == (1,) and s(x[0], keepdim=True).tolist() == [1]
    assert s(x[0]).shape == ()


# ---- the documented diffs -------------------------------------------------------------------

DIFF_DOCS = ["README.md", "docs/dropin-readme-section.md", "docs/dropin.md"]
NANOGPT = "model.py"
BOOK = "ch05/01_main-chapter-code/gpt_generate.py"
# karpathy/nanoGPT model.py at 3adf61e, the lines around its imports (the example has its own).
NANOGPT_IMPORTS = [
    "import torch",
    "import torch.nn as nn",
    "from torch.nn import functional as F",
    "",
    "class LayerNorm(nn.Module):",
    '    """ LayerNorm but with an optional bias. PyTorch doesn\'t support simply bias=False """',
]
Hunk = list[tuple[str, str]]  # (" " | "-" | "+", line)


def _diffs(doc: str) -> dict[str, list[Hunk]]:
    """The unified diffs in `doc`'s ```diff blocks that have file headers: hunks by path."""
    out: dict[str, list[Hunk]] = {}
    text = (ROOT / doc).read_text(encoding="utf-8")
    for block in re.findall(r"^```diff\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
        lines = block.split("\n")[:-1]
        if not lines[0].startswith("--- a/"):
            continue
        path = lines[0][len("--- a/") :]
        assert lines[1] == f"+++ b/{path}", doc
        assert path not in out, f"{doc}: two diffs of {path}"
        headers: list[list[int]] = []
        hunks: list[Hunk] = []
        for line in lines[2:]:
            if m := re.fullmatch(r"@@ -(\d+),(\d+) \+(\d+),(\d+) @@", line):
                headers.append([int(g) for g in m.groups()])
                hunks.append([])
            else:  # an empty line is an empty context line (editors strip the space)
                assert line[:1] in ("", " ", "-", "+"), f"{doc}: {line!r}"
                hunks[-1].append((line[:1] or " ", line[1:]))
        offset = 0
        for (old_start, old_n, new_start, new_n), h in zip(headers, hunks):
            # The header's counts and offsets must be right, or git apply refuses the diff.
            where = f"{doc}: {path} hunk at -{old_start}"
            assert old_n == sum(tag != "+" for tag, _ in h), where
            assert new_n == sum(tag != "-" for tag, _ in h), where
            assert new_start == old_start + offset, where
            offset += new_n - old_n
        out[path] = hunks
    return out


def _apply(lines: list[str], hunk: Hunk) -> list[str]:
    """`lines` with `hunk` applied; its old side must occur exactly once."""
    old = [t for tag, t in hunk if tag != "+"]
    new = [t for tag, t in hunk if tag != "-"]
    at = [i for i in range(len(lines) - len(old) + 1) if lines[i : i + len(old)] == old]
    assert len(at) == 1, f"the diff's old side is found {len(at)} times"
    return lines[: at[0]] + new + lines[at[0] + len(old) :]


def _without_seed(src: str, name: str, upstream_name: str) -> list[str]:
    """The example's `_ts` function as the diff makes it: upstream's name, no `seed`."""
    src = src.replace(f"def {name}(", f"def {upstream_name}(", 1)
    src = src.replace(", seed=None):", "):", 1).replace("top_k=top_k, seed=seed)", "top_k=top_k)")
    return src.split("\n")


def _check_imports(hunks: list[Hunk]) -> None:
    added = [t for h in hunks for tag, t in h if tag == "+"]
    assert "import tokensampler" in added, "the diff uses tokensampler without importing it"
    assert all("seed=seed" not in t for t in added), "the upstream function has no seed"


@pytest.mark.parametrize("doc", DIFF_DOCS)
def test_nanogpt_diff_turns_upstream_generate_into_the_example(ex: ModuleType, doc: str) -> None:
    imports, gen = _diffs(doc)[NANOGPT]
    _check_imports([imports, gen])
    want_imports = [*NANOGPT_IMPORTS[:3], "import tokensampler", *NANOGPT_IMPORTS[3:]]
    assert _apply(NANOGPT_IMPORTS, imports) == want_imports
    upstream = inspect.getsource(ex.GPT.generate).split("\n")
    want = _without_seed(inspect.getsource(ex.GPT.generate_ts), "generate_ts", "generate")
    assert _apply(upstream, gen) == want


def test_book_diff_turns_upstream_generate_into_the_example(ex: ModuleType) -> None:
    hunks = _diffs("docs/dropin.md")[BOOK]
    _check_imports(hunks)
    # The function hunk starts at the blank line above `def generate`.
    src = inspect.getsource(ex.generate_llm_from_scratch)
    upstream = ["", *src.replace("def generate_llm_from_scratch(", "def generate(").split("\n")]
    src_ts = inspect.getsource(ex.generate_llm_from_scratch_ts)
    want = ["", *_without_seed(src_ts, "generate_llm_from_scratch_ts", "generate")]
    assert _apply(upstream, hunks[-1]) == want
