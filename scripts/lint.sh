#!/usr/bin/env bash
# Static checks: rustfmt, clippy (warnings are errors), one pyo3 in the graph, ruff, the
# hand-written _native.pyi checked against the compiled module by mypy's stubtest, and mypy
# --strict on the whole package.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$TS_ROOT/scripts/setup.sh"
cd "$TS_ROOT"
cargo fmt --check
cargo clippy --all-targets --all-features -- -D warnings
test "$(cargo tree -i pyo3 --features python --prefix none 2>/dev/null | grep -c '^pyo3 v')" = 1
"$PY" -m ruff check python tests benches examples scripts
"$PY" -m mypy.stubtest tokensampler._native --allowlist .mypy-stubtest-allowlist
# Strict typing of the whole package: the sampling API (what users' type checkers see), the
# model layer, hf, the generate loop and the CLI. pyproject.toml's [tool.mypy] holds the
# exceptions for third-party code.
"$PY" -m mypy --strict python/tokensampler
