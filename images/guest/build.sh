#!/usr/bin/env bash
# Build the local lab guest from Debian packages: a debug lab kernel (bzImage,
# vmlinux, and its build tree for out-of-tree modules) and a busybox initramfs
# with an ssh server, strace, kmod and kexec.
#
# Each half is cached under $KVS_CACHE_DIR/guest by a hash of its inputs, so a
# warm run only checks hashes. The result is the directory
# $KVS_CACHE_DIR/guest/current (a symlink) holding bzImage, vmlinux,
# initramfs.cpio.gz and kdir, which LocalVMSpawner uses by default.
#
# usage: images/guest/build.sh [--print-dir | --dir-if-built]
#   --print-dir     build if needed, then print the guest's directory
#   --dir-if-built  build nothing: print the directory this checkout's guest
#                   has if it is built (exit 0), else exit 1
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
if [ -z "${KVS_CACHE_DIR:-}" ]; then
  if [ "$(id -u)" = 0 ]; then KVS_CACHE_DIR=/var/cache/kubevirt-spawner
  else KVS_CACHE_DIR=${XDG_CACHE_HOME:-$HOME/.cache}/kubevirt-spawner; fi
fi
out=$KVS_CACHE_DIR/guest
jobs=${KVS_BUILD_JOBS:-$(nproc)}
umask 022

die() { echo "build-guest: $*" >&2; exit 1; }
log() { echo "build-guest: $*" >&2; }

need_pkgs=(linux-source-6.1 patch busybox-static dropbear-bin strace kmod kexec-tools flex bison bc libelf-dev libssl-dev cpio)
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] || die "missing Debian packages; run: apt-get install -y ${missing[*]}"

pkgver() { dpkg-query -W -f='${Package}=${Version}\n' "$@"; }

kernel_key=$( { pkgver linux-source-6.1 gcc; cat "$here/lab-kernel.config" "$here"/patches/*.patch; sed -n '/^build_kernel()/,/^}/p' "$0"; } | sha256sum | cut -c1-16)
rootfs_key=$( { pkgver busybox-static dropbear-bin strace kmod kexec-tools libc6; cat "$here"/rootfs/*; sed -n '/^build_rootfs()/,/^}/p' "$0"; } | sha256sum | cut -c1-16)
kdir=$out/kernel-$kernel_key
rdir=$out/rootfs-$rootfs_key
gdir=$out/guest-$kernel_key-$rootfs_key
case "${1:-}" in
  ""|--print-dir) ;;
  --dir-if-built) if [ -d "$gdir" ]; then echo "$gdir"; exit 0; fi; exit 1 ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "build-guest: unknown argument $1; usage: $0 [--print-dir | --dir-if-built]" >&2; exit 2 ;;
esac

build_kernel() {
  # Built in its final directory (not renamed afterwards): vmlinux's debug
  # info and vmlinux-gdb.py name absolute paths in it. bzImage.lab, copied
  # last, marks a finished build; an interrupted one resumes incrementally.
  if [ ! -f "$kdir/Makefile" ]; then
    rm -rf "$kdir"; mkdir -p "$kdir"
    log "extracting linux-source into $kdir"
    tar -xJf /usr/src/linux-source-6.1.tar.xz -C "$kdir" --strip-components=1
    # Course patches (images/guest/patches): lab 4's reserved syscall slot.
    local p
    for p in "$here"/patches/*.patch; do patch -s -p1 -d "$kdir" < "$p" || die "patch $p failed"; done
  fi
  cd "$kdir"
  make -s tinyconfig >/dev/null
  scripts/kconfig/merge_config.sh -m -O . .config "$here/lab-kernel.config" >/dev/null
  make -s olddefconfig
  # Every option asked for must have survived dependency resolution.
  local bad=0 line
  while IFS= read -r line; do
    case "$line" in CONFIG_*=*) grep -qxF "$line" .config || { log "option not set: $line"; bad=1; } ;; esac
  done < "$here/lab-kernel.config"
  [ $bad = 0 ] || die "lab-kernel.config asks for options the kernel would not take"
  log "building kernel with -j$jobs (about 5 minutes on 2 cores)"
  make -s -j"$jobs" bzImage modules scripts_gdb KBUILD_BUILD_TIMESTAMP='2024-01-01' KBUILD_BUILD_USER=lab KBUILD_BUILD_HOST=kubevirt-spawner
  make -s kernelrelease > kernelrelease
  cp arch/x86/boot/bzImage bzImage.lab
  cd /
}

# copy_bin ROOT BIN...: copy binaries and every library ldd names into ROOT
copy_bin() {
  local root=$1; shift
  local b lib
  for b in "$@"; do
    install -D -m 0755 "$b" "$root$b"
    for lib in $(ldd "$b" | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
      [ -e "$root$lib" ] || install -D -m 0755 "$lib" "$root$lib"
    done
  done
}

build_rootfs() {
  local tmp=$rdir.tmp root
  rm -rf "$tmp"; mkdir -p "$tmp/root"; root=$tmp/root
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/dropbear,proc,sys,dev,tmp,root/.ssh,run,var/log,lib/modules}
  chmod 1777 "$root/tmp"; chmod 0700 "$root/root" "$root/root/.ssh"
  install -m 0755 /bin/busybox "$root/bin/busybox"
  chroot_applets=$(/bin/busybox --list-full)
  for a in $chroot_applets; do
    [ -e "$root/$a" ] || ln -s /bin/busybox "$root/$a"
  done
  copy_bin "$root" /usr/sbin/dropbear /usr/bin/strace /usr/bin/kmod /usr/sbin/kexec
  for a in insmod rmmod lsmod modinfo modprobe depmod; do ln -sf /usr/bin/kmod "$root/sbin/$a"; done
  install -m 0755 "$here/rootfs/init" "$root/init"
  install -m 0755 "$here/rootfs/rcS" "$root/etc/rcS"
  install -m 0644 "$here/rootfs/inittab" "$root/etc/inittab"
  install -m 0644 "$here/rootfs/profile" "$root/etc/profile"
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
  printf 'root:x:0:\n' > "$root/etc/group"
  printf '/bin/sh\n' > "$root/etc/shells"
  echo labvm > "$root/etc/hostname"
  (cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --reproducible 2>/dev/null) | gzip -9n > "$tmp/initramfs.cpio.gz"
  rm -rf "$root"
  mv "$tmp" "$rdir"
}

mkdir -p "$out"
# One build at a time per cache: two `make` runs must not compile in the same tree.
exec 9>"$out/.lock"
flock -w 3600 9 || die "another guest build holds $out/.lock"
start=$(date +%s)
if [ -f "$kdir/bzImage.lab" ]; then log "kernel $kernel_key cached"; else build_kernel; fi
if [ -f "$rdir/initramfs.cpio.gz" ]; then log "rootfs $rootfs_key cached"; else build_rootfs; fi

if [ ! -d "$gdir" ]; then
  mkdir -p "$gdir.tmp"
  ln -sfn "$kdir/bzImage.lab" "$gdir.tmp/bzImage"
  ln -sfn "$kdir/vmlinux" "$gdir.tmp/vmlinux"
  ln -sfn "$kdir" "$gdir.tmp/kdir"
  ln -sfn "$rdir/initramfs.cpio.gz" "$gdir.tmp/initramfs.cpio.gz"
  cp "$kdir/kernelrelease" "$gdir.tmp/kernelrelease"
  echo x86_64 > "$gdir.tmp/arch"
  mv "$gdir.tmp" "$gdir"
fi
ln -sfn "$(basename "$gdir")" "$out/current.tmp" && mv -T "$out/current.tmp" "$out/current"
log "guest ready in $(( $(date +%s) - start ))s: $out/current -> $(basename "$gdir")"
if [ "${1:-}" = --print-dir ]; then echo "$gdir"; fi
