# The entry points the README names. `make demo` and `make test` do all set-up.
SHELL := /bin/bash
PY := .venv/bin/python
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: deps guest guest-aarch64 demo test test-unit test-local lint bench clean cluster-bins test-cluster bench-cluster images

deps:
	@scripts/install-deps.sh

guest: deps
	@images/guest/build.sh

# The arm64 guest (cross-built; cold: see README "aarch64"; warm: seconds).
guest-aarch64: deps
	@images/guest/build-aarch64.sh

demo: guest
	$(PY) -m jupyterhub -f hub-config/local_config.py

lint: deps
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

test: lint guest guest-aarch64 cluster-bins images
	$(PY) -m pytest -q tests

test-unit: deps
	$(PY) -m pytest -q tests/unit

# etcd, kube-apiserver, -controller-manager, -scheduler, kwok and KubeVirt's CRDs,
# built from Go modules into a versioned cache (cold: see README; warm: seconds).
cluster-bins:
	@scripts/build-cluster-bins.sh >/dev/null

test-cluster: deps cluster-bins
	$(PY) -m pytest -q tests/cluster

bench-cluster: deps cluster-bins
	$(PY) tests/cluster/bench_spawn_100.py

# Container images (notebook, hub, VM disk) built with debootstrap + buildah,
# cached by input hash (cold: see README "Images"; warm: seconds).
images: deps
	@images/build.sh

test-local: guest guest-aarch64 images
	$(PY) -m pytest -q tests/local

bench: guest
	$(PY) tests/bench/local_bench.py
	$(PY) tests/bench/lab_bench.py

clean:
	rm -rf .venv *.egg-info
