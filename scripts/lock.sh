#!/usr/bin/env bash
# Regenerates the lock files from requirements-dev.txt (the human-edited list) with uv's
# resolver: exact versions of everything installed, transitive dependencies included, for every
# Python >= 3.10 and platform (universal), so that setup installs the same packages on any
# machine on any day. Run it after editing requirements-dev.txt, then commit both files.
#   requirements-dev.lock             what scripts/setup.sh installs (the test environment)
#   requirements-oldest.lock          from requirements-oldest.txt: the same with the oldest
#                                     transformers we support, for the test job that proves that
#                                     end of the range (scripts/test.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
cd "$TS_ROOT"
[[ -x "$PY" ]] || python3 -m venv "$TS_VENV"
"$PY" -m pip install -q "uv>=0.9"
for name in dev oldest; do
  "$PY" -m uv pip compile --universal --python-version 3.10 --quiet \
    --custom-compile-command "make lock" "requirements-$name.txt" -o "requirements-$name.lock"
done
echo "lock: wrote requirements-dev.lock and requirements-oldest.lock"
