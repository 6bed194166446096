#!/usr/bin/env bash
# Sets everything up, then runs the main job: the default model answers a question (the
# arguments, if any, replace the prompt and options: `scripts/demo.sh "Hello" --seed 1`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$TS_ROOT/scripts/setup.sh"
cd "$TS_ROOT"
exec "$PY" -m tokensampler generate "${@:-What is the capital of France?}"
