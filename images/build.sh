#!/usr/bin/env bash
# Build the cluster images with daemonless tools (debootstrap + buildah with
# chroot isolation), no Docker and no registry: the Dockerfiles under
# images/*/ take their base as the build argument BASE, so the same files
# build in a registry (BASE=docker.io/library/debian:bookworm, the default)
# and here (BASE=a local image committed from a debootstrap tree).
#
# Targets, each cached by a hash of its inputs under $KVS_CACHE_DIR/images:
#   base       localhost/kvs-debian-base:<key>     debootstrap --variant=minbase bookworm
#   vm-kernel  vmkernel-<key>/                      the lab kernel (images/guest/build.sh), staged
#   vm-debian  localhost/kubevirt-spawner-vm-debian:<key>  containerDisk (/disk/disk.qcow2)
#   notebook   localhost/kubevirt-spawner-notebook:<key>   JupyterLab, gdb, toolchain, LAB_KDIR trees
#   hub        localhost/kubevirt-spawner-hub:<key>        hub base + this package
# Image storage is buildah's, rooted at $KVS_CACHE_DIR/images/storage; the
# list of what is current is $KVS_CACHE_DIR/images/current.json (tests read it).
#
# usage: images/build.sh [--print-index] [TARGET...]      (no TARGET: all)
set -euo pipefail

# Arguments first, so --help and mistakes need neither root nor packages.
print_index=0
targets=()
for a in "$@"; do
  case "$a" in
    --print-index) print_index=1 ;;
    base|vm-kernel|vm-debian|notebook|hub) targets+=("$a") ;;
    -h|--help) sed -n '2,/^set -e/ s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "build-images: unknown target '$a' (base, vm-kernel, vm-debian, notebook, hub)" >&2; exit 2 ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(vm-debian notebook hub)

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
if [ -z "${KVS_CACHE_DIR:-}" ]; then
  if [ "$(id -u)" = 0 ]; then KVS_CACHE_DIR=/var/cache/kubevirt-spawner
  else KVS_CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/kubevirt-spawner; fi
fi
out=$KVS_CACHE_DIR/images
jobs=${KVS_BUILD_JOBS:-$(nproc)}
mirror=${KVS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
umask 022

die() { echo "build-images: $*" >&2; exit 1; }
log() { echo "build-images: $*" >&2; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, and buildah's chroot isolation without user namespaces)"
need_pkgs=(buildah debootstrap linux-source-6.1 flex bison bc libelf-dev libssl-dev rsync python3-venv)
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] || die "missing Debian packages; run: apt-get install -y ${missing[*]}"

store=(--root "$out/storage" --runroot "$out/run" --storage-driver overlay)
bh() { buildah "${store[@]}" "$@"; }
has_image() { bh inspect --type image "$1" >/dev/null 2>&1; }
pkgver() { dpkg-query -W -f='${Package}=${Version}\n' "$@"; }
fn_text() { sed -n "/^$1()/,/^}/p" "$0"; }
hash16() { sha256sum | cut -c1-16; }
# hash_tree DIR...: content hash of the files under DIR (names and bytes)
hash_tree() { (cd "$repo" && find "$@" -name __pycache__ -prune -o -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | hash16; }

# Shared caches, mounted into build containers: .deb files and pip's cache.
# The Dockerfiles clean only apt's default archive directory, so a registry
# build leaves nothing behind and a local one keeps what it downloaded.
apt_cache=$out/cache/apt
pip_cache=$out/cache/pip
mkdir -p "$apt_cache/partial" "$pip_cache"
# pip also gets this machine's CA bundle: where HTTPS goes through an
# intercepting proxy, the image's own bundle does not know its CA.
cache_args=(
  --volume "$apt_cache:/var/cache/kvs-apt"
  --volume "$pip_cache:/var/cache/kvs-pip"
  --volume /etc/ssl/certs/ca-certificates.crt:/var/cache/kvs-host-ca.crt:ro
  --build-arg "APT_OPTS=-o Dir::Cache::Archives=/var/cache/kvs-apt"
  --build-arg "PIP_OPTS=--cache-dir=/var/cache/kvs-pip --cert=/var/cache/kvs-host-ca.crt"
)

# bud NAME TAG CONTEXT [ARGS...]: buildah bud with chroot isolation
bud() {
  local name=$1 tag=$2 ctx=$3; shift 3
  local t0; t0=$(date +%s)
  log "building $tag"
  bh bud --isolation chroot --layers --force-rm --network host "${cache_args[@]}" \
    --build-arg "BASE=$base_tag" -f "$ctx/Dockerfile" -t "$tag" "$@" "$ctx" \
    > "$out/logs/$name.log" 2>&1 || { tail -n 40 "$out/logs/$name.log" >&2; die "$name failed (log: $out/logs/$name.log)"; }
  log "$tag built in $(( $(date +%s) - t0 ))s"
}

# -- base: Debian minbase from debootstrap, committed as an image ---------
base_key=$( { echo "$suite $mirror"; pkgver debootstrap; fn_text build_base; } | hash16)
base_tag=localhost/kvs-debian-base:$base_key
build_base() {
  local root=$out/debootstrap-$base_key ctr mnt
  rm -rf "$root"
  log "debootstrap --variant=minbase $suite (about a minute)"
  debootstrap --variant=minbase --cache-dir="$apt_cache" "$suite" "$root" "$mirror" \
    > "$out/logs/debootstrap.log" 2>&1 || { tail -n 20 "$out/logs/debootstrap.log" >&2; die "debootstrap failed"; }
  cat > "$root/etc/apt/sources.list" <<EOF
deb $mirror $suite main
deb $mirror $suite-updates main
deb ${mirror%/debian}/debian-security $suite-security main
EOF
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  ctr=$(bh from scratch)
  mnt=$(bh mount "$ctr")
  cp -a "$root/." "$mnt/"
  bh umount "$ctr" >/dev/null
  bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$ctr"
  bh commit -q --rm "$ctr" "$base_tag" >/dev/null
  rm -rf "$root"
}

# -- the lab kernel ----------------------------------------------------------
# One x86_64 kernel serves the local guest (initramfs) and the VM disk (ext4
# root through GRUB): images/guest/build.sh builds and caches it (seconds when
# warm). Here it is only staged: modules installed for the disk, and the
# trimmed tree (export_kdir) that the notebook image bakes as LAB_KDIR.
src_kdir=$(readlink -f "$("$repo/images/guest/build.sh" --print-dir)/kdir") \
  || die "the lab kernel (images/guest/build.sh) failed"
kernel_key=$( { basename "$src_kdir"; fn_text stage_vm_kernel; fn_text export_kdir; } | hash16)
kdir=$out/vmkernel-$kernel_key
stage_vm_kernel() {
  local tmp=$kdir.tmp
  rm -rf "$tmp"; mkdir -p "$tmp"
  make -s -C "$src_kdir" modules_install INSTALL_MOD_PATH="$tmp/staging" INSTALL_MOD_STRIP=1 >/dev/null
  export_kdir "$src_kdir" "$tmp/export"
  cp "$src_kdir/kernelrelease" "$tmp/kernelrelease"
  rm -rf "$kdir"; mv "$tmp" "$kdir"
  touch "$kdir/kernel.done"
}

# export_kdir TREE DEST: the part of a built kernel tree that out-of-tree
# module builds and gdb need (what Debian's linux-headers package keeps),
# plus vmlinux and the gdb scripts: about 150 MB instead of the whole tree.
export_kdir() {
  local src=$1 dest=$2
  rm -rf "$dest"; mkdir -p "$dest"
  (cd "$src" && rsync -a --prune-empty-dirs \
    --include='/.config' --include='/Makefile' --include='/Module.symvers' --include='/System.map' \
    --include='/vmlinux' --include='/kernelrelease' --include='/modules.builtin*' \
    --include='/include/***' --include='/arch/' --include='/arch/x86/' --include='/arch/x86/include/***' \
    --include='/arch/x86/Makefile*' --include='/arch/x86/tools/***' \
    --exclude='/scripts/**.o' --exclude='/scripts/**.cmd' --include='/scripts/***' \
    --include='/tools/' --include='/tools/objtool/' --include='/tools/objtool/objtool' \
    --exclude='*' . "$dest/")
  # The tree's vmlinux-gdb.py is an absolute symlink into this build directory.
  cp -L "$src/vmlinux-gdb.py" "$dest/vmlinux-gdb.py"
}

# -- images ----------------------------------------------------------------
# ctx NAME: a fresh build-context directory for NAME
ctx() { local d=$out/ctx/$1; rm -rf "$d"; mkdir -p "$d"; echo "$d"; }

# Built from the working tree: what `pip install .` would install.
wheel_key=$(hash_tree kubevirt_spawner setup.cfg pyproject.toml)
make_wheel() {
  local dest=$1 src
  src=$(mktemp -d)
  # A copy, so the build leaves nothing in the working tree.
  (cd "$repo" && rsync -a --exclude=__pycache__ kubevirt_spawner setup.cfg pyproject.toml README.md "$src/")
  mkdir -p "$dest"
  "$repo/.venv/bin/python" -m pip wheel -q --no-deps -w "$dest" "$src" \
    || die "could not build the kubevirt-spawner wheel (run: make deps)"
  rm -rf "$src"
}

vmd_key=$( { echo "$base_key $kernel_key"; hash_tree images/vm-debian images/vm-common; fn_text build_vm_debian; } | hash16)
vmd_tag=localhost/kubevirt-spawner-vm-debian:$vmd_key
build_vm_debian() {
  local c rel
  c=$(ctx vm-debian)
  rel=$(cat "$kdir/kernelrelease")
  cp "$here/vm-debian/Dockerfile" "$c/"
  cp -r "$here/vm-common" "$c/vm-common"
  mkdir -p "$c/kernel/boot" "$c/kernel/usr/lib/modules"
  cp "$src_kdir/arch/x86/boot/bzImage" "$c/kernel/boot/vmlinuz-$rel"
  cp "$src_kdir/System.map" "$c/kernel/boot/System.map-$rel"
  cp "$src_kdir/.config" "$c/kernel/boot/config-$rel"
  cp -a "$kdir/staging/lib/modules/$rel" "$c/kernel/usr/lib/modules/"
  rm -f "$c/kernel/usr/lib/modules/$rel/build" "$c/kernel/usr/lib/modules/$rel/source"
  bud vm-debian "$vmd_tag" "$c"
}

nb_key=$( { echo "$base_key $kernel_key $wheel_key"; hash_tree images/notebook; fn_text build_notebook; } | hash16)
nb_tag=localhost/kubevirt-spawner-notebook:$nb_key
build_notebook() {
  local c k
  c=$(ctx notebook)
  cp "$here/notebook/Dockerfile" "$c/"
  make_wheel "$c/dist"
  # The paths hub-config/values.yaml names for debian-12 (vmlinux, kdir).
  k=$c/kernels/debian-12/x86_64
  mkdir -p "$k"
  cp -al "$kdir/export" "$k/build"
  ln -s build/vmlinux "$k/vmlinux"
  bud notebook "$nb_tag" "$c"
}

hubbase_key=$( { echo "$base_key"; cat "$here/hub/Dockerfile.local-base"; } | hash16)
hubbase_tag=localhost/kvs-hub-base:$hubbase_key
hub_key=$( { echo "$hubbase_key $wheel_key"; hash_tree images/hub; fn_text build_hub; } | hash16)
hub_tag=localhost/kubevirt-spawner-hub:$hub_key
build_hub() {
  local c
  if ! has_image "$hubbase_tag"; then
    c=$(ctx hub-base)
    cp "$here/hub/Dockerfile.local-base" "$c/Dockerfile"
    bud hub-base "$hubbase_tag" "$c"
  fi
  c=$(ctx hub)
  cp "$here/hub/Dockerfile" "$c/"
  make_wheel "$c/dist"
  # Not the z2jh hub image (no registry here): a stand-in with the same
  # layout (Python on PATH, jupyterhub installed, user 1000). See docs/images.md.
  local saved=$base_tag; base_tag=$hubbase_tag
  bud hub "$hub_tag" "$c"
  base_tag=$saved
}

write_index() {
  local rel=""
  [ -f "$kdir/kernel.done" ] && rel=$(cat "$kdir/kernelrelease")
  cat > "$out/current.json.tmp" <<EOF
{
  "storage": {"root": "$out/storage", "runroot": "$out/run", "driver": "overlay"},
  "base": "$base_tag",
  "vm_kernel": {"dir": "$src_kdir", "release": "$rel"},
  "vm-debian": "$vmd_tag",
  "notebook": "$nb_tag",
  "hub": "$hub_tag"
}
EOF
  mv "$out/current.json.tmp" "$out/current.json"
}


mkdir -p "$out/logs"
# One build at a time per cache (engineers and CI share it): `make test`
# started twice waits here instead of building the same thing twice.
exec 9> "$out/.lock"
flock 9
start=$(date +%s)
want() { local t; for t in "${targets[@]}"; do [ "$t" = "$1" ] && return 0; done; return 1; }
need_base() { has_image "$base_tag" && log "base $base_key cached" || { t0=$(date +%s); build_base; log "base built in $(( $(date +%s) - t0 ))s"; }; }
need_kernel() { [ -f "$kdir/kernel.done" ] && log "VM kernel $kernel_key staged" || { t0=$(date +%s); stage_vm_kernel; log "VM kernel staged in $(( $(date +%s) - t0 ))s"; }; }

if want base || want vm-debian || want notebook || want hub; then need_base; fi
if want vm-kernel || want vm-debian || want notebook; then need_kernel; fi
if want vm-debian; then has_image "$vmd_tag" && log "vm-debian $vmd_key cached" || build_vm_debian; fi
if want notebook; then has_image "$nb_tag" && log "notebook $nb_key cached" || build_notebook; fi
if want hub; then has_image "$hub_tag" && log "hub $hub_key cached" || build_hub; fi
# Older builds of our images only take disk space: untag them (layers the
# current ones share stay, and so does the layer cache).
prune_old() {
  local keep=" $base_tag $hubbase_tag $vmd_tag $nb_tag $hub_tag " ref
  for ref in $(bh images --format '{{.Name}}:{{.Tag}}' 2>/dev/null | grep -E '^localhost/(kvs-debian-base|kvs-hub-base|kubevirt-spawner-(vm-debian|notebook|hub)):' || true); do
    case "$keep" in *" $ref "*) ;; *) bh rmi "$ref" >/dev/null 2>&1 || true ;; esac
  done
}
[ ${#targets[@]} -lt 3 ] || prune_old
write_index
log "images ready in $(( $(date +%s) - start ))s ($out/current.json)"
[ $print_index = 0 ] || cat "$out/current.json"
