#!/usr/bin/env bash
# Sets everything up, then runs every test: cargo test (pure Rust) and pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash "$TS_ROOT/scripts/setup.sh"
cd "$TS_ROOT"
echo "== cargo test"
cargo test --quiet
echo "== pytest"
# Derandomized hypothesis (the "ci" profile) so a run is reproducible; set
# TOKENSAMPLER_HYPOTHESIS_PROFILE=default to explore new examples.
export TOKENSAMPLER_HYPOTHESIS_PROFILE="${TOKENSAMPLER_HYPOTHESIS_PROFILE:-ci}"
# pytest exits 5 when it collects no test: that is a failure for us, and set -e catches it.
"$PY" -m pytest -q -p no:cacheprovider "$@"
