# Shared settings of the scripts: where the cached virtualenv and cargo target live. Both are
# outside the clone so a second run (or a fresh clone on the same machine) is fast.
TS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TS_CACHE="${TOKENSAMPLER_CACHE:-$HOME/.cache/tokensampler}"
if [[ "${TOKENSAMPLER_LATEST:-0}" == 1 ]]; then
  # `make test-latest`: the newest releases, in a venv of their own (the locked one stays).
  TS_VENV="${TOKENSAMPLER_VENV:-$HOME/.cache/tokensampler-venv-latest}"
else
  TS_VENV="${TOKENSAMPLER_VENV:-$HOME/.cache/tokensampler-venv}"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$TS_CACHE/target}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY="$TS_VENV/bin/python"
