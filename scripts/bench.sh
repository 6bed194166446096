#!/usr/bin/env bash
# Sets everything up, then runs the comparison benchmarks (benches/compare.py, issue #3):
# tokensampler against the nanoGPT lines, the Hugging Face processor chain, a vLLM-style torch
# sampler, numpy and the torch floors. Writes benches/results/compare.{md,json,png}.
# Arguments go to compare.py: --quick (reduced grid), --wait-idle 120, --out-dir DIR, ...
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$TS_ROOT/scripts/setup.sh"
cd "$TS_ROOT"
exec "$PY" benches/compare.py "$@"
