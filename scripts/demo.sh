#!/usr/bin/env bash
# Sets everything up, then runs the main job: the default model answers a question (the
# arguments, if any, replace the prompt and options: `scripts/demo.sh "Hello" --seed 1`).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$TS_ROOT/scripts/setup.sh"
cd "$TS_ROOT"
# The model's recommended settings (T 0.2, top-p 0.9) are the defaults. Asked only "What is
# the capital of France?", this 135M Q4 model starts with "The" or "L'" about 60:40 and goes
# on in French 6 times in 20; asked for one English sentence it said Paris for 200 of 200
# seeds (tests/test_cli.py keeps checking 32 of them).
exec "$PY" -m tokensampler generate "${@:-What is the capital of France? Answer in one English sentence.}"
