# The entry points the README names. `make demo` and `make test` do all set-up.
SHELL := /bin/bash
PY := .venv/bin/python
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: deps guest demo test test-unit test-local lint bench clean

deps:
	@scripts/install-deps.sh

guest: deps
	@images/guest/build.sh

demo: guest
	$(PY) -m jupyterhub -f hub-config/local_config.py

lint: deps
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

test: lint guest
	$(PY) -m pytest -q tests

test-unit: deps
	$(PY) -m pytest -q tests/unit

test-local: guest
	$(PY) -m pytest -q tests/local

bench: guest
	$(PY) -m tests.bench.local_bench

clean:
	rm -rf .venv *.egg-info
