#!/usr/bin/env bash
# A one-machine Kubernetes cluster with real KubeVirt, for trying the cluster
# backend and for tests/cluster: `scripts/kubevirt-cluster.sh up`, then
# `scripts/kubevirt-cluster.sh kubectl get kubevirt -A`, then `down`.
# --help lists the commands; docs/cluster.md says what runs and what it costs.
# The work is done by tests/harness/kvcluster.py with the project's venv
# (make deps); --help and argument errors need nothing installed.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
py=$repo/.venv/bin/python
[ -x "$py" ] || py=/usr/bin/python3
export PATH=/usr/local/go/bin:$PATH
export PYTHONPATH="$repo/tests${PYTHONPATH:+:$PYTHONPATH}"
exec "$py" -m harness.kvcluster "$@"
