# tchcv: every target runs the idempotent set-up first (project venv with torch 2.11.0).
VENV ?= $(CURDIR)/.venv
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
export TCHCV_PYTHON := $(VENV)/bin/python
CARGO ?= cargo

.PHONY: all setup build test demo bench fmt clippy lint clean

all: build

setup:
	@scripts/setup

build: setup
	$(CARGO) build --release

# Every test, in release (they do real tensor work), including the PyTorch parity suites.
test: setup
	@rm -f target/test-skips.log
	$(CARGO) test --release --no-fail-fast -- --test-threads 1
	$(TCHCV_PYTHON) tests/reference/losses.py selftest
	$(TCHCV_PYTHON) tests/reference/voc_eval.py selftest
	$(TCHCV_PYTHON) tests/reference/coco_eval.py selftest
	@echo "== skipped (each with its reason):"; sort -u target/test-skips.log 2>/dev/null || echo "   none"

demo: build
	scripts/demo.sh

# tchcv and PyTorch side by side on this machine (CPU); see BENCHMARKS.md.
bench: build
	scripts/bench.sh cpu

fmt:
	$(CARGO) fmt --all

clippy: setup
	$(CARGO) clippy --release --all-targets -- -D warnings

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings

clean:
	$(CARGO) clean
