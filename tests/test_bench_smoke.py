"""Smoke test of the comparison benchmark harness (benches/compare.py, issue #3).

Runs the harness on a tiny grid (V=1000, B=2, one rep) in a subprocess, so that a change in
the API or in a peer library that breaks the benchmark shows up in `make test`, without
spending benchmark time. It checks the exit code and the report, not any timing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

COMPARE = Path(__file__).resolve().parent.parent / "benches" / "compare.py"


def test_compare_smoke_writes_report(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(COMPARE), "--smoke", "--no-plot", "--out-dir", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,  # the run takes ~15 s, mostly importing torch and transformers
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    md = (tmp_path / "compare.md").read_text(encoding="utf-8")
    assert md.strip() == proc.stdout.strip()  # the report is also printed
    for needle in ("## Targets", "## Medians", "tokensampler (torch)", "HF chain", "torch.amax"):
        assert needle in md
    assert not (tmp_path / "compare.png").exists()  # --no-plot
    raw = json.loads((tmp_path / "compare.json").read_text(encoding="utf-8"))
    cols = raw["timings"]["columns"]
    timings = [dict(zip(cols, r)) for r in raw["timings"]["rows"]]
    ok = [t for t in timings if t["status"] == "ok"]
    assert ok and all(t["median_s"] > 0 for t in ok)
    # Every pipeline was timed for tokensampler on both dtypes.
    assert {
        (t["what"], t["dtype"])
        for t in ok
        if t["impl"] == "ts_torch" and t["what"] in ("a", "b", "c", "d")
    } == {(p, d) for p in "abcd" for d in ("float32", "bfloat16")}
    # The stage and order rows of issue #15 (float32 only): timed when the installed
    # tokensampler has their keywords, n/a otherwise; and their section of the report.
    import tokensampler as ts

    has_stages = hasattr(ts, "SamplingParams") and "typical_p" in {
        f.name for f in dataclasses.fields(ts.SamplingParams)
    }
    stage_keys = {"e", "f", "g", "h", "i", "j", "j-vllm", "j-llama.cpp", "k", "k-custom"}
    new = {t["what"]: t for t in timings if t["impl"] == "ts_torch" and t["what"] in stage_keys}
    assert set(new) == stage_keys
    assert {t["dtype"] for t in new.values()} == {"float32"}
    assert {t["status"] for t in new.values()} == {"ok" if has_stages else "n/a"}
    assert "## Stages and orders (issue #15)" in md
    assert 'order="llama.cpp"' in md


def _load_compare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compare", COMPARE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["compare"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    return mod


def test_compare_stages_na_without_keywords() -> None:
    """An older tokensampler (no typical_p / order): the issue #15 rows are n/a, not errors,
    and the rows of pipelines (a)-(d) pass no keyword that such a build lacks."""
    try:
        mod = _load_compare()
        mod.HAS_STAGES = False
        for p in mod.PIPELINES:
            assert set(p.ts_kwargs()) == {"temperature", "top_k", "top_p", "repetition_penalty"}
        grid = mod.Grid((1000,), (2,), ("float32",), 0.0, 1, 1, 10**9, 10**9, "test")
        res = mod.Results()
        mod.run_stages(grid, res)
        assert res.timings and {t.status for t in res.timings.values()} == {"n/a"}
        assert mod.check_stages() == []
        targets = mod.stage_targets(grid, res)
        assert targets and all(t.ok is None for t in targets)
        assert "All rows n/a" in "\n".join(mod.render_stages(grid, res))
    finally:
        sys.modules.pop("compare", None)


def test_compare_plot(tmp_path: Path) -> None:
    """The plot code on made-up medians (the subprocess run above skips it)."""
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("compare", COMPARE)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["compare"] = mod  # dataclasses look their module up by name
    try:
        spec.loader.exec_module(mod)
        res = mod.Results()
        for i, v in enumerate((1000, 2000)):
            for p in mod.PIPELINES:
                for impl in mod.IMPLS:
                    res.timings[(p.key, impl.key, "float32", v, 2)] = mod.Timing(1e-5 * (i + 1))
            for fk in mod.FLOORS:
                res.timings[("floor", fk, "float32", v, 2)] = mod.Timing(1e-6 * (i + 1))
        grid = mod.Grid((1000, 2000), (2,), ("float32",), 0.0, 1, 1, 10**9, 10**9, "test")
        out = tmp_path / "plot.png"
        mod.write_plot(grid, res, out)
        assert out.stat().st_size > 1000
    finally:
        sys.modules.pop("compare", None)
