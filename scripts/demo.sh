#!/usr/bin/env bash
# Sets everything up, then runs the main job: generate text with the default model.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$TS_ROOT/scripts/setup.sh"
cd "$TS_ROOT"
if "$PY" -c "import tokensampler.cli" 2>/dev/null; then
  exec "$PY" -m tokensampler generate "${@:-What is the capital of France?}"
fi
exec "$PY" examples/seed_vectors.py
