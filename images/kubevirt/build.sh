#!/usr/bin/env bash
# Build the container images of the real KubeVirt test cluster
# (scripts/kubevirt-cluster.sh) with buildah, no daemon and no registry, in the
# image store images/build.sh uses and on its debootstrap base:
#   localhost/kvs-kubevirt/virt-{operator,api,controller,handler,launcher}:<tag>
#   localhost/kvs-kubevirt/sidecar-shim:<tag>   (runs the debug hook ConfigMap)
#   localhost/kvs-kubevirt/pause:<tag>          (the pods' sandbox image)
#   localhost/kvs-kubevirt/blank-disk:<tag>     (a containerDisk with nothing to boot)
# The names follow KubeVirt's own (<registry>/virt-<component>:<tag>): virt-operator
# derives every other image from its own name. <tag> is the KubeVirt version and
# a hash of every input; the list is written to $KVS_CACHE_DIR/images/kubevirt.json.
# The commands come from scripts/build-kubevirt-node.sh (run here if needed).
#
# usage: images/kubevirt/build.sh [--print-index]
set -euo pipefail

print_index=0
for a in "$@"; do
  case "$a" in
    --print-index) print_index=1 ;;
    -h|--help) sed -n '2,/^set -e/ s/^# \{0,1\}//p' "$0" | sed '$d'; exit 0 ;;
    *) echo "build-kubevirt-images: unknown argument '$a' (try --help)" >&2; exit 2 ;;
  esac
done

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
if [ -z "${KVS_CACHE_DIR:-}" ]; then
  if [ "$(id -u)" = 0 ]; then KVS_CACHE_DIR=/var/cache/kubevirt-spawner
  else KVS_CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/kubevirt-spawner; fi
fi
export KVS_CACHE_DIR
out=$KVS_CACHE_DIR/images
registry=localhost/kvs-kubevirt
umask 022

die() { echo "build-kubevirt-images: $*" >&2; exit 1; }
log() { echo "build-kubevirt-images: $*" >&2; }

[ "$(id -u)" = 0 ] || die "needs root (buildah's chroot isolation without user namespaces)"
for p in buildah qemu-utils; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' \
    || die "missing Debian package $p; run: make deps"
done

store=(--root "$out/storage" --runroot "$out/run" --storage-driver overlay)
bh() { buildah "${store[@]}" "$@"; }
has_image() { bh inspect --type image "$1" >/dev/null 2>&1; }
hash16() { sha256sum | cut -c1-16; }
fn_text() { sed -n "/^$1()/,/^}/p" "$0"; }

# The node's commands, and images/build.sh's Debian base (each builds if missing).
node=$("$repo/scripts/build-kubevirt-node.sh" | tail -n 1) || die "scripts/build-kubevirt-node.sh failed"
[ -f "$node/.complete" ] || die "scripts/build-kubevirt-node.sh printed $node, which is incomplete"
base_tag=$("$repo/images/build.sh" --print-index base | python3 -c 'import json,sys; print(json.load(sys.stdin)["base"])') \
  || die "images/build.sh base failed"
kv_version=$(sed -n 's/^kubevirt.io\/kubevirt //p' "$node/VERSIONS")
[ -n "$kv_version" ] || die "$node/VERSIONS names no KubeVirt version"

key=$( { echo "$base_tag $(basename "$node")"; cat "$here/Dockerfile" "$here/virtqemud" "$here/virtlogd.conf"
         fn_text assemble; fn_text commit_component; fn_text build_small; } | hash16)
tag=$kv_version-$key
components=(virt-operator virt-api virt-controller virt-handler virt-launcher sidecar-shim)

# assemble DIR: the build context (Dockerfile + rootfs/)
assemble() {
  local c=$1 r=$1/rootfs b
  rm -rf "$c"; mkdir -p "$r/usr/bin" "$r/usr/sbin" "$r/etc/libvirt/hooks"
  cp "$here/Dockerfile" "$c/"
  for b in virt-operator virt-api virt-controller virt-handler virt-launcher virt-launcher-monitor \
           virt-chroot virt-freezer virt-probe virt-tail libvirt-hook-client container-disk; do
    install -m 0755 "$node/$b" "$r/usr/bin/$b"
  done
  install -m 0755 "$node/sidecar-shim" "$r/sidecar-shim"
  install -m 0755 "$node/share/node-labeller.sh" "$r/usr/bin/node-labeller.sh"
  install -m 0755 "$here/virtqemud" "$r/usr/sbin/virtqemud"
  install -m 0644 "$node/share/qemu.conf" "$node/share/virtqemud.conf" "$here/virtlogd.conf" "$r/etc/libvirt/"
  install -m 0644 "$node/share/nsswitch.conf" "$r/etc/nsswitch.conf"
  install -m 0755 -o 107 -g 107 "$node/share/libvirt-qemu-hook" "$r/etc/libvirt/hooks/qemu"
}

# commit_component BASE NAME: NAME's image from the shared root filesystem
commit_component() {
  local from=$1 name=$2 user=0 entry ctr
  case "$name" in
    virt-operator|virt-api|virt-controller) user=1001 ;;
  esac
  entry="/usr/bin/$name"
  [ "$name" = sidecar-shim ] && entry=/sidecar-shim
  ctr=$(bh from --pull-never "$from")
  bh config --cmd '' "$ctr"
  bh config --user "$user" --entrypoint "[\"$entry\"]" --label "io.kubevirt-spawner.kubevirt=$kv_version" "$ctr"
  bh commit -q --rm "$ctr" "$registry/$name:$tag" >/dev/null
}

# build_small: the pause image and the blank containerDisk (both FROM scratch)
build_small() {
  local ctr mnt d
  ctr=$(bh from scratch); mnt=$(bh mount "$ctr")
  install -D -m 0755 "$node/pause" "$mnt/pause"
  bh umount "$ctr" >/dev/null
  bh config --entrypoint '["/pause"]' "$ctr"
  bh commit -q --rm "$ctr" "$registry/pause:$tag" >/dev/null
  # A containerDisk KubeVirt accepts (a qcow2 in /disk, owned by qemu) whose
  # disk has no boot sector: the VM runs and the guest never becomes ready.
  d=$(mktemp -d)
  qemu-img create -q -f qcow2 "$d/blank.qcow2" 64M
  ctr=$(bh from scratch); mnt=$(bh mount "$ctr")
  install -D -m 0644 -o 107 -g 107 "$d/blank.qcow2" "$mnt/disk/blank.qcow2"
  bh umount "$ctr" >/dev/null
  rm -rf "$d"
  bh commit -q --rm "$ctr" "$registry/blank-disk:$tag" >/dev/null
}

mkdir -p "$out/logs" "$out/cache/apt/partial"
exec 9>"$out/.kubevirt.lock"
flock 9
start=$(date +%s)
missing=0
for c in "${components[@]}" pause blank-disk; do has_image "$registry/$c:$tag" || missing=1; done
if [ $missing = 1 ]; then
  ctx=$out/ctx/kubevirt
  assemble "$ctx"
  base_img=localhost/kvs-kubevirt-base:$tag
  log "building $base_img (Debian libvirt + QEMU + KubeVirt $kv_version)"
  bh bud --isolation chroot --layers --force-rm --network host \
    --volume "$out/cache/apt:/var/cache/kvs-apt" \
    --build-arg "APT_OPTS=-o Dir::Cache::Archives=/var/cache/kvs-apt" \
    --build-arg "BASE=$base_tag" -f "$ctx/Dockerfile" -t "$base_img" "$ctx" \
    >"$out/logs/kubevirt.log" 2>&1 || { tail -n 40 "$out/logs/kubevirt.log" >&2; die "image build failed (log: $out/logs/kubevirt.log)"; }
  for c in "${components[@]}"; do commit_component "$base_img" "$c"; done
  build_small
  rm -rf "$ctx"
  log "images $tag built in $(( $(date +%s) - start ))s"
else
  log "images $tag cached"
fi

# Older builds of these images only take disk space (their shared layers stay).
for ref in $(bh images --format '{{.Name}}:{{.Tag}}' 2>/dev/null | grep -E "^(localhost/kvs-kubevirt/|localhost/kvs-kubevirt-base:)" || true); do
  case "$ref" in *":$tag") ;; *) bh rmi "$ref" >/dev/null 2>&1 || true ;; esac
done

{
  printf '{\n  "storage": {"root": "%s", "runroot": "%s", "driver": "overlay"},\n' "$out/storage" "$out/run"
  printf '  "kubevirt_version": "%s",\n  "registry": "%s",\n  "tag": "%s",\n  "node": "%s",\n' \
    "$kv_version" "$registry" "$tag" "$node"
  printf '  "images": {'
  sep=""
  for c in "${components[@]}" pause blank-disk; do printf '%s\n    "%s": "%s"' "$sep" "$c" "$registry/$c:$tag"; sep=","; done
  printf '\n  }\n}\n'
} >"$out/kubevirt.json.tmp"
mv "$out/kubevirt.json.tmp" "$out/kubevirt.json"
[ $print_index = 0 ] || cat "$out/kubevirt.json"
