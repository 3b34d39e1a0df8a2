# The entry points the README names. `make demo` and `make test` do all set-up.
SHELL := /bin/bash
# The environment's real path: when the clone is private, .venv links to a
# readable place (scripts/install-deps.sh), and students' servers run this
# Python by the path the hub was started with.
PY = $(shell readlink -f .venv)/bin/python
# Go's tarball installs to /usr/local/go, which a login shell's PATH may lack.
export PATH := $(CURDIR)/.venv/bin:$(PATH):/usr/local/go/bin

.PHONY: deps guest guest-aarch64 demo test test-unit test-local lint bench clean cluster-bins test-cluster bench-cluster images kubevirt-node kubevirt-images

deps:
	@scripts/install-deps.sh

guest: deps
	@images/guest/build.sh

# The arm64 guest (cross-built; cold: see docs/aarch64.md; warm: seconds).
guest-aarch64: deps
	@images/guest/build-aarch64.sh

# -P: the hub imports the package from its environment, not from this clone
# (a private clone's files are not readable by the students it hands paths to).
demo: guest
	$(PY) -P -m jupyterhub -f hub-config/local_config.py

lint: deps
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

# The builds do not depend on each other (images waits for the guest's kernel
# through its lock): side by side, one's downloads overlap another's compiling.
# -n 2: the local tier on one worker, the cluster tier on the other, unit
# tests between (tests/conftest.py's scheduler); --durations: the slowest
# tests, for the profile of a run (docs/testing.md).
test: lint
	@$(MAKE) --no-print-directory -j4 --output-sync=target guest guest-aarch64 cluster-bins kubevirt-images
	$(PY) -m pytest -q -n 2 --durations=40 tests

test-unit: deps
	$(PY) -m pytest -q tests/unit

# etcd, kube-apiserver, -controller-manager, -scheduler, kwok and KubeVirt's CRDs,
# built from Go modules into a versioned cache (cold: see docs/testing.md; warm: seconds).
cluster-bins:
	@scripts/build-cluster-bins.sh >/dev/null

test-cluster: deps cluster-bins
	$(PY) -m pytest -q tests/cluster

# 100 students on the API-server tier, then 1 and 4 on the real KubeVirt.
bench-cluster: deps cluster-bins
	PYTHONPATH=tests $(PY) tests/bench/bench_spawn_100.py
	PYTHONPATH=tests $(PY) tests/bench/bench_kubevirt.py --groups 1,4

# The real KubeVirt test cluster's node (kubelet, kube-proxy, KubeVirt's commands,
# kube-router, CoreDNS; Go) and KubeVirt's images (buildah, on images' base);
# scripts/kubevirt-cluster.sh builds them too when missing (docs/cluster.md).
kubevirt-node: deps
	@scripts/build-kubevirt-node.sh >/dev/null

kubevirt-images: images kubevirt-node
	@images/kubevirt/build.sh

# Container images (notebook, hub, VM disk) built with debootstrap + buildah,
# cached by input hash (cold: see docs/images.md; warm: seconds).
images: deps
	@images/build.sh

test-local: guest guest-aarch64 images
	$(PY) -m pytest -q tests/local

bench: guest
	PYTHONPATH=tests $(PY) tests/bench/local_bench.py
	PYTHONPATH=tests $(PY) tests/bench/lab_bench.py
	PYTHONPATH=tests $(PY) tests/bench/oops_bench.py
	PYTHONPATH=tests $(PY) tests/bench/vm_cost_bench.py

clean:
	rm -rf .venv *.egg-info
