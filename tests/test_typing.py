"""The public functions carry real type hints: mypy, run on a small user program, sees numpy
in -> ndarray out, torch in -> Tensor out, logprobs=True -> SampleOutput, and refuses a
string temperature or an unknown keyword."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("mypy")
pytest.importorskip("torch")

PROGRAM = """\
import numpy as np
import torch
import tokensampler as ts

x = np.zeros(4, dtype=np.float32)
reveal_type(ts.sample(x, temperature=0.5))
reveal_type(ts.sample(torch.zeros(4), top_p=0.9))
reveal_type(ts.sample(x, logprobs=True))
reveal_type(ts.probs(x, ts.SamplingParams(top_k=3)))
reveal_type(ts.Sampler(top_p=0.9)(x))
ts.sample(x, temperature="hot")
ts.sample(x, temprature=0.5)
"""


def test_mypy_sees_the_api(tmp_path: Path) -> None:
    prog = tmp_path / "user.py"
    prog.write_text(textwrap.dedent(PROGRAM))
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--cache-dir", str(tmp_path / "c"),
         str(prog)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    lines = r.stdout.splitlines()
    revealed = [ln.split('Revealed type is "', 1)[1] for ln in lines if "Revealed type" in ln]
    assert len(revealed) == 5, r.stdout + r.stderr
    assert revealed[0].startswith("numpy.ndarray")
    assert revealed[1] == 'torch._tensor.Tensor"'
    assert revealed[2].endswith('fallback=tokensampler.sampling.SampleOutput]"'), revealed[2]
    assert revealed[3].startswith("numpy.ndarray")
    errors = [ln for ln in lines if ": error:" in ln]
    assert any('"temperature"' in e and '"str"' in e for e in errors), r.stdout
    assert any("temprature" in e for e in errors), r.stdout
    # Only the two bad calls (lines 11 and 12) are errors, each reported once or twice.
    assert {e.split(":")[1] for e in errors} == {"11", "12"}, r.stdout
