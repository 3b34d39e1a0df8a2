#!/usr/bin/env bash
# Build the pinned control-plane binaries tests/cluster runs, from Go modules:
#   etcd                     go.etcd.io/etcd/server/v3   (version chosen by k8s.io/kubernetes' go.mod)
#   kube-apiserver, kube-controller-manager, kube-scheduler   k8s.io/kubernetes
#   kwok                     sigs.k8s.io/kwok (plays the kubelet: nodes, pod phases, pod IPs)
#   kubevirt-crds            ours: prints KubeVirt's CRDs from kubevirt.io/kubevirt's virt-operator code
#                            (tests/cluster/go/kubevirt/crds; the module the real cluster's KubeVirt
#                            is built from too, scripts/build-kubevirt-node.sh: one version throughout)
# into a cache directory keyed by every input, and print that directory as the
# last line of stdout. A warm cache costs seconds; a cold one is a long Go build
# (see docs/cluster-apiserver.md, "Testing against a real control plane").
#
# Cache: $KVS_CACHE_DIR, else /var/cache/kubevirt-spawner as root, else
# ~/.cache/kubevirt-spawner. Go's module and build caches live there too so
# repeated CI runs on one machine reuse them.
#
# Usage: scripts/build-cluster-bins.sh [--print-dir] [--help]
#   --print-dir   print the directory the current pins map to and exit 0 if it
#                 is complete, 1 if it still needs building (builds nothing)
set -euo pipefail
case $0 in */*) cd "${0%/*}/.." ;; *) cd .. ;; esac  # the repo root (no dirname needed)

# Pins. The go.mod files under tests/cluster/go/ say the same; the check below
# refuses to build when they disagree.
K8S_VERSION=v1.36.3     # k8s.io/kubernetes; go.mod says go 1.26.0
K8S_STAGING=v0.36.3     # the staging modules' tag for that release
ETCD_VERSION=v3.6.8     # what k8s.io/kubernetes v1.36.3 requires
KWOK_VERSION=v0.8.0     # newest whose go.mod fits go1.26
KUBEVIRT_VERSION=v1.8.4 # kubevirt.io/kubevirt, /api, /client-go (exact tags; the proxy lists none)
                        # >= v1.8.1: v1.8.0 cannot start a VM under useEmulation without a usable /dev/kvm

K8S_MOD=tests/cluster/go/k8s
KV_MOD=tests/cluster/go/kubevirt

name=build-cluster-bins
. scripts/lib/go-build.sh "$@"

check_pins "$K8S_MOD/go.mod:k8s.io/kubernetes $K8S_VERSION" \
           "$K8S_MOD/go.mod:go.etcd.io/etcd/server/v3 $ETCD_VERSION" \
           "$K8S_MOD/go.mod:sigs.k8s.io/kwok $KWOK_VERSION" \
           "$K8S_MOD/go.mod:k8s.io/api => k8s.io/api $K8S_STAGING" \
           "$KV_MOD/go.mod:kubevirt.io/kubevirt $KUBEVIRT_VERSION" \
           "$KV_MOD/go.mod:kubevirt.io/api => kubevirt.io/api $KUBEVIRT_VERSION"
go_env
export GOFLAGS="${GOFLAGS:--p=2} -mod=readonly -trimpath"

key=$( { echo "$go_version $K8S_VERSION $ETCD_VERSION $KWOK_VERSION $KUBEVIRT_VERSION"
         cat "$K8S_MOD/go.mod" "$K8S_MOD/go.sum" "$KV_MOD"/go.mod "$KV_MOD"/go.sum "$KV_MOD"/crds/*.go
         sed -n '/^# -- build --/,$p' "$0"; } | sha256sum | cut -c1-16)
out=$cache/cluster-bins/k8s-$K8S_VERSION-kubevirt-$KUBEVIRT_VERSION-$key

if [ "$print_only" = 1 ]; then
  echo "$out"
  [ -f "$out/.complete" ]
  exit
fi
if [ -f "$out/.complete" ]; then
  echo "$out"
  exit 0
fi

# -- build -- (everything below is part of the cache key)
mkdir -p "$cache/cluster-bins" "$GOMODCACHE" "$GOCACHE"
exec 9>"$cache/cluster-bins/.lock"
flock 9 # another run may be building the same key: wait for it
if [ -f "$out/.complete" ]; then echo "$out"; exit 0; fi

tmp=$(mktemp -d "$cache/cluster-bins/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
build() { # module-dir output-dir packages...
  local dir=$1 dest=$2; shift 2
  echo "build-cluster-bins: go build in $dir: $*" >&2
  (cd "$dir" && nice -n 19 go build -ldflags='-s -w' -o "$dest/" "$@") >&2 \
    || die "go build failed in $dir (GOMODCACHE=$GOMODCACHE, GOCACHE=$GOCACHE)"
}
build "$K8S_MOD" "$tmp" go.etcd.io/etcd/server/v3 \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler sigs.k8s.io/kwok/cmd/kwok
mv "$tmp/server" "$tmp/etcd" # go names the binary of go.etcd.io/etcd/server/v3 "server"
build "$KV_MOD" "$tmp" ./crds
mv "$tmp/crds" "$tmp/kubevirt-crds"

# Generated artefacts the harness loads: KubeVirt's CRDs, and KWOK's own
# default node and pod stages (the standalone kwok binary starts with none;
# kwokctl would pass these same files).
"$tmp/kubevirt-crds" >"$tmp/kubevirt-crds.json" || die "kubevirt-crds failed"
stages=$GOMODCACHE/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage
for f in node/fast/node-initialize.yaml node/heartbeat/node-heartbeat.yaml \
         pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
  [ -f "$stages/$f" ] || die "KWOK stage $stages/$f missing"
  cat "$stages/$f"; echo "---"
done >"$tmp/kwok-stages.yaml"

for b in etcd kube-apiserver kube-controller-manager kube-scheduler kwok kubevirt-crds; do
  [ -x "$tmp/$b" ] || die "$b was not built"
done
cat >"$tmp/VERSIONS" <<EOF
go $go_version
k8s.io/kubernetes $K8S_VERSION (staging $K8S_STAGING)
go.etcd.io/etcd/server/v3 $ETCD_VERSION
sigs.k8s.io/kwok $KWOK_VERSION
kubevirt.io/kubevirt $KUBEVIRT_VERSION
built in $((SECONDS - start)) s
EOF
touch "$tmp/.complete"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "build-cluster-bins: built in $((SECONDS - start)) s" >&2
echo "$out"
