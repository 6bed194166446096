#!/usr/bin/env bash
# Builds the wheel with `pip wheel .`, installs it into a fresh virtualenv that has numpy but
# no torch, and samples from numpy arrays there. Usage: scripts/check_wheel.sh [workdir]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
# Build from a clean copy of the tracked files so the check sees what a user's checkout has.
git -C "$TS_ROOT" archive --format=tar HEAD | tar -x -C "$work" --one-top-level=src
# Uncommitted edits of the working tree are part of what is being checked, too.
git -C "$TS_ROOT" diff HEAD | (cd "$work/src" && git apply --allow-empty 2>/dev/null || true)
"$PY" -m pip wheel "$work/src" --no-deps -q -w "$work/dist"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q "$work"/dist/tokensampler-*.whl
cd "$work"
"$work/venv/bin/python" - <<'PY'
import sys

import numpy as np

import tokensampler as ts

assert "torch" not in sys.modules, "the core must not import torch"
x = np.array([[0.0, 5.0, 1.0], [3.0, 0.0, 0.0]], dtype=np.float32)
assert ts.sample(x, temperature=0).tolist() == [1, 0]
p = ts.probs(np.array([0.0, 0.0]))
assert p.tolist() == [0.5, 0.5], p
ids = ts.sample(np.random.default_rng(0).standard_normal((4, 1000), dtype=np.float32),
                top_p=0.9, seed=1)
assert ids.shape == (4,) and ids.dtype == np.int64
print("wheel ok:", ts.__version__, ids.tolist())
PY
