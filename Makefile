# Developer entry points. `make test` is what CI runs (.ci/run); `make demo` is the main job.
SHELL := /bin/bash
.PHONY: setup build test demo bench lint lock test-latest

setup:
	bash scripts/setup.sh

build:
	bash scripts/setup.sh --build-only

# Every test, in the environment of requirements-dev.lock (exact versions).
test:
	bash scripts/test.sh

demo:
	bash scripts/demo.sh

bench:
	bash scripts/bench.sh

lint:
	bash scripts/lint.sh

# Re-resolve requirements-dev.lock and requirements-oldest.lock from the *.txt lists.
lock:
	bash scripts/lock.sh

# The suite against the newest releases (own venv, ~/.cache/tokensampler-venv-latest): shows
# drift before it reaches the lock. Not part of CI.
test-latest:
	TOKENSAMPLER_LATEST=1 bash scripts/test.sh
