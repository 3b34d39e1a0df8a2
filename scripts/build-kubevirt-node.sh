#!/usr/bin/env bash
# Build what the node of the real KubeVirt test cluster runs (scripts/kubevirt-cluster.sh),
# from the Go module proxy and Debian's C toolchain, beside scripts/build-cluster-bins.sh's
# control plane:
#   kubelet, kube-proxy, kubectl   k8s.io/kubernetes via tests/cluster/go/k8s (the same pins)
#   virt-operator, virt-api, virt-controller, virt-handler, virt-launcher,
#   virt-launcher-monitor, virt-chroot, virt-freezer, virt-probe, virt-tail,
#   libvirt-hook-client, sidecar-shim   kubevirt.io/kubevirt via tests/cluster/go/kubevirt
#   operator-manifests             ours: what KubeVirt's kubevirt-operator.yaml installs, from
#                                  virt-operator's own packages (same module)
#   kube-router                    github.com/cloudnativelabs/kube-router/v2 (NetworkPolicy enforcer)
#   coredns                        tests/cluster/go/coredns (CoreDNS, cluster DNS plugins only)
#   container-disk, pause          static C programs from KubeVirt's and Kubernetes' own sources
# into a cache directory keyed by every input, printed as the last line of stdout.
# Independent builds run side by side. Warm: a hash comparison; cold: see docs/cluster.md.
#
# Cache: $KVS_CACHE_DIR, else /var/cache/kubevirt-spawner as root, else
# ~/.cache/kubevirt-spawner (Go's caches are shared with build-cluster-bins.sh).
# virt-launcher links libvirt (cgo): Debian's libvirt-dev must be installed.
#
# Usage: scripts/build-kubevirt-node.sh [--print-dir] [--help]
#   --print-dir   print the directory the current pins map to and exit 0 if it
#                 is complete, 1 if it still needs building (builds nothing)
set -euo pipefail
case $0 in */*) cd "${0%/*}/.." ;; *) cd .. ;; esac  # the repo root (no dirname needed)

# Pins; the go.mod files say the same (checked below).
K8S_VERSION=v1.36.3        # as scripts/build-cluster-bins.sh
KUBEVIRT_VERSION=v1.8.4    # as scripts/build-cluster-bins.sh (its CRDs) and tests/cluster/go/kubevirt
KUBE_ROUTER_VERSION=v2.1.0 # newest the Go module proxy serves
COREDNS_VERSION=v1.12.4

K8S_MOD=tests/cluster/go/k8s
KV_MOD=tests/cluster/go/kubevirt
DNS_MOD=tests/cluster/go/coredns

name=build-kubevirt-node
. scripts/lib/go-build.sh "$@"

check_pins "$K8S_MOD/go.mod:k8s.io/kubernetes $K8S_VERSION" \
           "$K8S_MOD/go.mod:k8s.io/kubernetes/cmd/kubelet" \
           "$KV_MOD/go.mod:kubevirt.io/kubevirt $KUBEVIRT_VERSION" \
           "$KV_MOD/go.mod:kubevirt.io/api => kubevirt.io/api $KUBEVIRT_VERSION" \
           "$DNS_MOD/go.mod:github.com/coredns/coredns $COREDNS_VERSION"
go_env
pkgver() { dpkg-query -W -f='${Package}=${Version}\n' "$@" 2>/dev/null || echo "$* missing"; }

key=$( { echo "$go_version $K8S_VERSION $KUBEVIRT_VERSION $KUBE_ROUTER_VERSION $COREDNS_VERSION"
         pkgver gcc libc6-dev libvirt-dev
         cat "$K8S_MOD/go.mod" "$K8S_MOD/go.sum"
         find "$KV_MOD" "$DNS_MOD" -type f | LC_ALL=C sort | xargs cat
         sed -n '/^# -- build --/,$p' "$0"; } | sha256sum | cut -c1-16)
out=$cache/kubevirt-node/k8s-$K8S_VERSION-kubevirt-$KUBEVIRT_VERSION-$key

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
dpkg-query -W -f='${Status}' libvirt-dev 2>/dev/null | grep -q 'ok installed' \
  || die "virt-launcher needs Debian's libvirt-dev (cgo); run: make deps"
mkdir -p "$cache/kubevirt-node" "$GOMODCACHE" "$GOCACHE"
exec 9>"$cache/kubevirt-node/.lock"
flock 9 # another run may be building the same key: wait for it
if [ -f "$out/.complete" ]; then echo "$out"; exit 0; fi

tmp=$(mktemp -d "$cache/kubevirt-node/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/logs"
start=$SECONDS
ro="-mod=readonly -trimpath -p=2"

# lane NAME CMD...: run a build in the background, its output in logs/NAME.log
pids=()
lane() {
  local name=$1; shift
  ( t0=$SECONDS; "$@" >"$tmp/logs/$name.log" 2>&1 || { echo "FAILED" >>"$tmp/logs/$name.log"; exit 1; }
    echo "build-kubevirt-node: $name built in $((SECONDS - t0)) s" >&2 ) &
  pids+=("$!:$name")
}
gobuild() { # module-dir packages...
  local dir=$1; shift
  (cd "$dir" && GOFLAGS="$ro" nice -n 19 go build -ldflags='-s -w' -o "$tmp/" "$@")
}

lane kubernetes gobuild "$K8S_MOD" k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl
lane kubevirt gobuild "$KV_MOD" ./operator-manifests \
  kubevirt.io/kubevirt/cmd/virt-operator kubevirt.io/kubevirt/cmd/virt-api \
  kubevirt.io/kubevirt/cmd/virt-controller kubevirt.io/kubevirt/cmd/virt-handler \
  kubevirt.io/kubevirt/cmd/virt-launcher kubevirt.io/kubevirt/cmd/virt-launcher-monitor \
  kubevirt.io/kubevirt/cmd/virt-chroot kubevirt.io/kubevirt/cmd/virt-freezer \
  kubevirt.io/kubevirt/cmd/virt-probe kubevirt.io/kubevirt/cmd/virt-tail \
  kubevirt.io/kubevirt/cmd/virt-launcher/libvirt-hook-client kubevirt.io/kubevirt/cmd/sidecars
# kube-router has no replace directives: its own go.mod and the checksum
# database pin everything, so it is installed at its version directly.
lane kube-router env GOBIN="$tmp" GOFLAGS="-trimpath -p=2" nice -n 19 \
  go install -ldflags='-s -w' "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION"
lane coredns gobuild "$DNS_MOD" .

# Two static C programs the images need, compiled from the sources in the
# module cache: KubeVirt's container-disk (runs inside containerDisk images,
# which have no libc) and Kubernetes' pause (every pod's sandbox).
cc_static() { # source output
  local src=$1 dst=$2
  [ -f "$src" ] || die "$src is not in the module cache"
  nice -n 19 gcc -static -O2 -o "$dst" "$src"
}
(cd "$KV_MOD" && GOFLAGS=-mod=readonly go mod download kubevirt.io/kubevirt) \
  || die "cannot download kubevirt.io/kubevirt $KUBEVIRT_VERSION"
(cd "$K8S_MOD" && GOFLAGS=-mod=readonly go mod download k8s.io/kubernetes) \
  || die "cannot download k8s.io/kubernetes $K8S_VERSION"
kv_src=$GOMODCACHE/kubevirt.io/kubevirt@$KUBEVIRT_VERSION
k8s_src=$GOMODCACHE/k8s.io/kubernetes@$K8S_VERSION
cc_static "$kv_src/cmd/container-disk-v2alpha/main.c" "$tmp/container-disk"
cc_static "$k8s_src/build/pause/linux/pause.c" "$tmp/pause"
# Files KubeVirt's own launcher image carries, from the same source tree.
mkdir -p "$tmp/share"
cp "$kv_src/cmd/virt-launcher/node-labeller/node-labeller.sh" "$kv_src/cmd/virt-launcher/qemu.conf" \
   "$kv_src/cmd/virt-launcher/virtqemud.conf" "$kv_src/cmd/virt-launcher/nsswitch.conf" "$tmp/share/"
cp "$kv_src/cmd/virt-launcher/qemu" "$tmp/share/libvirt-qemu-hook"

failed=0
for p in "${pids[@]}"; do
  wait "${p%%:*}" || { failed=1; echo "build-kubevirt-node: ${p#*:} failed; last lines of its log:" >&2
                       tail -n 25 "$tmp/logs/${p#*:}.log" >&2; }
done
[ $failed = 0 ] || die "build failed (GOMODCACHE=$GOMODCACHE, GOCACHE=$GOCACHE)"
mv "$tmp/sidecars" "$tmp/sidecar-shim" # go names it after its directory

for b in kubelet kube-proxy kubectl virt-operator virt-api virt-controller virt-handler virt-launcher \
         virt-launcher-monitor virt-chroot virt-freezer virt-probe virt-tail libvirt-hook-client \
         sidecar-shim operator-manifests kube-router coredns container-disk pause; do
  [ -x "$tmp/$b" ] || die "$b was not built"
done
cat >"$tmp/VERSIONS" <<EOF
go $go_version
k8s.io/kubernetes $K8S_VERSION
kubevirt.io/kubevirt $KUBEVIRT_VERSION
github.com/cloudnativelabs/kube-router/v2 $KUBE_ROUTER_VERSION
github.com/coredns/coredns $COREDNS_VERSION
$(pkgver gcc libvirt-dev)
built in $((SECONDS - start)) s
EOF
touch "$tmp/.complete"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "build-kubevirt-node: built in $((SECONDS - start)) s" >&2
echo "$out"
