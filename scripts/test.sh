#!/usr/bin/env bash
# Sets everything up, then runs every test: cargo test (pure Rust) and pytest; both again on
# the portable kernels (TOKENSAMPLER_NO_SIMD=1); and the tests that use Hugging Face
# transformers once more against the oldest transformers we support.
# Arguments go to the main pytest run (e.g. `scripts/test.sh -k hf -x`).
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
"$PY" -c "import transformers; print('(transformers', transformers.__version__ + ')')"

# The portable kernels (no AVX2 / AVX-512), as a CPU without them runs: the same tests must
# hold bit for bit where the contract says so (tests/test_golden.py keeps both sets). The
# model, CLI, wheel, typing, bench, tokenizer-word and device-bridge tests are left out: they
# add no kernel path.
echo "== cargo test, TOKENSAMPLER_NO_SIMD=1"
TOKENSAMPLER_NO_SIMD=1 cargo test --quiet
echo "== pytest, TOKENSAMPLER_NO_SIMD=1"
TOKENSAMPLER_NO_SIMD=1 "$PY" -m pytest -q -p no:cacheprovider \
  --ignore-glob='tests/test_model_*.py' --ignore=tests/test_cli.py \
  --ignore=tests/test_generate.py --ignore=tests/test_examples.py \
  --ignore=tests/test_bench_smoke.py --ignore=tests/test_wheel.py --ignore=tests/test_typing.py \
  --ignore=tests/test_speculative_generate.py --ignore=tests/test_history_generate.py \
  --ignore=tests/test_words.py --ignore=tests/test_device_bridge.py --ignore=tests/test_batch.py

# The oldest end of the supported transformers range (requirements-oldest.lock). Only the
# packages whose locked version differs from the main lock are installed, into a folder that
# goes first on PYTHONPATH, so torch and the rest are shared with the main venv.
oldest="$TS_CACHE/transformers-oldest"
stamp="$(sha256sum requirements-dev.lock requirements-oldest.lock | sha256sum | cut -c1-16)"
if [[ "$(cat "$oldest/.stamp" 2>/dev/null)" != "$stamp" ]]; then
  rm -rf "$oldest"
  # The cache folder exists only if the cargo target went there: not with CARGO_TARGET_DIR set.
  mkdir -p "$TS_CACHE"
  grep -vxFf requirements-dev.lock requirements-oldest.lock | grep -v '^ *#' > "$TS_CACHE/oldest-overlay.txt"
  "$PY" -m pip install -q --no-deps --target "$oldest" -r "$TS_CACHE/oldest-overlay.txt"
  echo "$stamp" > "$oldest/.stamp"
fi
version="$(PYTHONPATH="$oldest" "$PY" -c "import transformers; print(transformers.__version__)")"
echo "== pytest, transformers $version (the oldest supported)"
PYTHONPATH="$oldest" "$PY" -m pytest -q -p no:cacheprovider -m transformers
