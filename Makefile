# Developer entry points. `make test` is what CI runs (.ci/run); `make demo` is the main job.
SHELL := /bin/bash
.PHONY: setup build test demo bench lint

setup:
	bash scripts/setup.sh

build:
	bash scripts/setup.sh --build-only

test:
	bash scripts/test.sh

demo:
	bash scripts/demo.sh

bench:
	bash scripts/bench.sh

lint:
	bash scripts/lint.sh
