#!/usr/bin/env bash
# Fuzzes the Rust pipeline entry (tokensampler::pipeline::run_batch) with libFuzzer for a fixed
# time. Not part of CI: it needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly-only
# compiler flag (-Zsanitizer); RUSTC_BOOTSTRAP=1 lets the stable toolchain accept it.
#
#   scripts/fuzz.sh [seconds] [extra libFuzzer flags...]     default: 300 seconds
#
# The corpus and crash artifacts go to fuzz/corpus/pipeline and fuzz/artifacts/pipeline
# (ignored by git). A crash found here becomes a file in fuzz/regressions/ plus a Python test
# that replays the same input through the API (tests/test_fuzz.py), and a report to the lead.
# Replay one input: scripts/fuzz.sh replay fuzz/artifacts/pipeline/crash-...
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$TS_ROOT/fuzz"
command -v cargo-fuzz >/dev/null || { echo "fuzz: cargo-fuzz not found (cargo install cargo-fuzz)" >&2; exit 1; }
export RUSTC_BOOTSTRAP=1
# Keep the fuzz build out of the clone and apart from the main target dir (other RUSTFLAGS).
export CARGO_TARGET_DIR="$TS_CACHE/fuzz-target"
# Release + debug assertions: overflow checks catch arithmetic bugs the release build hides.
build=(--release --debug-assertions --sanitizer "${TS_FUZZ_SANITIZER:-none}")

if [[ "${1:-}" == "replay" ]]; then
  shift
  exec cargo fuzz run "${build[@]}" pipeline "$@"
fi

seconds="${1:-300}"
shift || true
mkdir -p corpus/pipeline
# Seed the corpus with the regression inputs so known edges are explored first.
cp -n regressions/* corpus/pipeline/ 2>/dev/null || true
# -rss_limit_mb: a wrong allocation size shows as a crash instead of swapping the machine.
cargo fuzz run "${build[@]}" pipeline corpus/pipeline -- \
  -max_total_time="$seconds" -rss_limit_mb=4096 -max_len=4096 -len_control=0 \
  -print_final_stats=1 "$@"
