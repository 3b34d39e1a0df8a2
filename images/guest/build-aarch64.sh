#!/usr/bin/env bash
# Build the arm64 lab guest: the same lab kernel as build.sh, cross-built for
# arm64 (Image, vmlinux, and its build tree for cross-built out-of-tree
# modules), and the same busybox initramfs made from Debian's arm64 packages
# (fetched with `apt-get download`, never installed on the host).
#
# Cached like the x86_64 guest, by a hash of its own inputs (this script's
# build_*_aarch64 functions, both config fragments, the package versions), so
# it never touches the x86_64 cache keys. The result is
# $KVS_CACHE_DIR/guest/current-aarch64 (a symlink) holding Image, vmlinux,
# initramfs.cpio.gz, kdir, kernelrelease and arch.
#
# Needs: gcc-aarch64-linux-gnu, and arm64 enabled in apt
# (`dpkg --add-architecture arm64 && apt-get update`; scripts/install-deps.sh
# does both).
#
# usage: images/guest/build-aarch64.sh [--print-dir | --dir-if-built]
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

die() { echo "build-guest-aarch64: $*" >&2; exit 1; }
log() { echo "build-guest-aarch64: $*" >&2; }

case "${1:-}" in
  ""|--print-dir|--dir-if-built) ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "build-guest-aarch64: unknown argument ${1}; usage: $0 [--print-dir | --dir-if-built]" >&2; exit 2 ;;
esac

need_pkgs=(linux-source-6.1 gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu busybox-static flex bison bc libelf-dev libssl-dev cpio)
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] || die "missing Debian packages; run: apt-get install -y ${missing[*]}"
dpkg --print-foreign-architectures | grep -qx arm64 \
  || die "apt does not know arm64 packages; run: dpkg --add-architecture arm64 && apt-get update"

# The guest's userland, as arm64 .debs: the tools, then the libraries their
# ELF NEEDED entries name (the copy below fails if one is missing here).
# kexec-tools links libxenctrl, hence the Xen libraries.
rootfs_debs=(
  busybox-static dropbear-bin strace kmod kexec-tools
  libc6 libcrypt1 libtomcrypt1 libtommath1 libgmp10 zlib1g liblzma5 libssl3 libzstd1
  libxenmisc4.17 libxentoollog1 libxencall1 libxenevtchn1 libxengnttab1
  libxenforeignmemory1 libxendevicemodel1 libxentoolcore1
)

pkgver() { dpkg-query -W -f='${Package}=${Version}\n' "$@"; }
# "pkg:arm64=candidate version" per package, from apt's lists (one apt-cache call).
arm64ver() {
  local listed
  listed=$(apt-cache policy "${@/%/:arm64}" 2>/dev/null \
    | awk '/^[^ ].*:$/ {p=substr($0, 1, length($0)-1)} /Candidate:/ && $2 != "(none)" {print p "=" $2}')
  [ "$(wc -l <<<"$listed")" = $# ] || die "not every arm64 package of rootfs_debs is in apt's lists; run: apt-get update"
  echo "$listed"
}
fn_text() { sed -n "/^$1()/,/^}/p" "$0"; }

kernel_key=$( { pkgver linux-source-6.1 gcc-aarch64-linux-gnu; cat "$here/lab-kernel.config" "$here/lab-kernel-aarch64.config"; fn_text build_kernel_aarch64; } | sha256sum | cut -c1-16)
rootfs_key=$( { arm64ver "${rootfs_debs[@]}"; cat "$here"/rootfs/*; fn_text build_rootfs_aarch64; fn_text copy_elf_aarch64; } | sha256sum | cut -c1-16)
kdir=$out/kernel-aarch64-$kernel_key
rdir=$out/rootfs-aarch64-$rootfs_key

build_kernel_aarch64() {
  # As build.sh: built in its final directory (vmlinux's debug info names
  # absolute paths in it); Image.lab, copied last, marks a finished build.
  if [ ! -f "$kdir/Makefile" ]; then
    rm -rf "$kdir"; mkdir -p "$kdir"
    log "extracting linux-source into $kdir"
    tar -xJf /usr/src/linux-source-6.1.tar.xz -C "$kdir" --strip-components=1
  fi
  cd "$kdir"
  local mk=(make -s ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-)
  "${mk[@]}" tinyconfig >/dev/null
  # The shared fragment minus the options that exist only on x86.
  # (DMI: SMBIOS for the x86 VM disk; on arm64 it needs EFI.)
  grep -vxF -e 'CONFIG_EARLY_PRINTK=y' -e 'CONFIG_DMI=y' -e 'CONFIG_DMIID=y' "$here/lab-kernel.config" > .lab-fragment
  cat "$here/lab-kernel-aarch64.config" >> .lab-fragment
  ARCH=arm64 scripts/kconfig/merge_config.sh -m -O . .config .lab-fragment >/dev/null
  "${mk[@]}" olddefconfig
  local bad=0 line
  while IFS= read -r line; do
    case "$line" in CONFIG_*=*) grep -qxF "$line" .config || { log "option not set: $line"; bad=1; } ;; esac
  done < .lab-fragment
  [ $bad = 0 ] || die "the lab kernel fragments ask for options the arm64 kernel would not take"
  log "cross-building the arm64 kernel with -j$jobs (about 6 minutes on 2 cores)"
  "${mk[@]}" -j"$jobs" Image modules scripts_gdb KBUILD_BUILD_TIMESTAMP='2024-01-01' KBUILD_BUILD_USER=lab KBUILD_BUILD_HOST=kubevirt-spawner
  "${mk[@]}" kernelrelease > kernelrelease
  cp arch/arm64/boot/Image Image.lab
  cd /
}

# copy_elf_aarch64 PKGROOT ROOT PATH...: copy arm64 binaries from the unpacked
# packages into ROOT, with their program interpreter and, transitively, every
# library their NEEDED entries name (looked up in the multiarch directories).
copy_elf_aarch64() {
  local src=$1 root=$2; shift 2
  local queue=("$@") done_=" " f lib found d interp
  while [ ${#queue[@]} -gt 0 ]; do
    f=${queue[0]}; queue=("${queue[@]:1}")
    case "$done_" in *" $f "*) continue ;; esac
    done_+="$f "
    install -D -m 0755 "$src$f" "$root$f"
    interp=$(aarch64-linux-gnu-readelf -l "$src$f" | sed -n 's/.*program interpreter: \(.*\)]/\1/p')
    if [ -n "$interp" ] && [ ! -e "$root$interp" ]; then
      # Debian's /lib/ld-linux-aarch64.so.1 is a relative symlink into the multiarch dir.
      install -D -m 0755 "$(readlink -f "$src$interp")" "$root$interp"
    fi
    for lib in $(aarch64-linux-gnu-readelf -d "$src$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
      found=
      for d in /lib/aarch64-linux-gnu /usr/lib/aarch64-linux-gnu; do
        if [ -e "$src$d/$lib" ]; then found=$d/$lib; break; fi
      done
      [ -n "$found" ] || die "$f needs $lib, which no package in rootfs_debs provides"
      queue+=("$found")
    done
  done
}

build_rootfs_aarch64() {
  local tmp=$rdir.tmp root pkgs deb a
  rm -rf "$tmp"; mkdir -p "$tmp/root" "$tmp/debs" "$tmp/pkgs"; root=$tmp/root; pkgs=$tmp/pkgs
  log "fetching arm64 packages: ${rootfs_debs[*]}"
  # _apt cannot write into a root-only directory; let it, to keep apt's sandbox.
  chown _apt "$tmp/debs" 2>/dev/null || true
  (cd "$tmp/debs" && apt-get download -q "${rootfs_debs[@]/%/:arm64}" >/dev/null) || die "apt-get download failed"
  for deb in "$tmp"/debs/*.deb; do dpkg-deb -x "$deb" "$pkgs"; done
  # The applet list comes from the host's busybox-static: the arm64 binary
  # cannot run here. Same source version, same Debian config, same applets.
  local hostv armv
  hostv=$(dpkg-query -W -f='${source:Version}' busybox-static)
  armv=$(dpkg-deb -f "$tmp"/debs/busybox-static_*.deb Version); armv=${armv%+b*}
  [ "$hostv" = "$armv" ] || die "host busybox-static ($hostv) and arm64 ($armv) differ; install the same version"
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/dropbear,proc,sys,dev,tmp,root/.ssh,run,var/log,lib/modules}
  chmod 1777 "$root/tmp"; chmod 0700 "$root/root" "$root/root/.ssh"
  install -m 0755 "$pkgs/bin/busybox" "$root/bin/busybox"
  for a in $(/bin/busybox --list-full); do
    [ -e "$root/$a" ] || ln -s /bin/busybox "$root/$a"
  done
  # Debian's packages install into /bin and /sbin (usrmerge aliases them);
  # the guest has no alias, so put each tool where the x86_64 guest has it.
  mkdir -p "$pkgs/usr/bin" "$pkgs/usr/sbin"
  cp -a "$pkgs/bin/kmod" "$pkgs/usr/bin/kmod"; cp -a "$pkgs/sbin/kexec" "$pkgs/usr/sbin/kexec"
  copy_elf_aarch64 "$pkgs" "$root" /usr/sbin/dropbear /usr/bin/strace /usr/bin/kmod /usr/sbin/kexec
  for a in insmod rmmod lsmod modinfo modprobe depmod; do ln -sf /usr/bin/kmod "$root/sbin/$a"; done
  install -m 0755 "$here/rootfs/init" "$root/init"
  install -m 0755 "$here/rootfs/rcS" "$root/etc/rcS"
  # QEMU virt's console is the PL011, ttyAMA0, where x86 has ttyS0.
  sed 's/^ttyS0::/ttyAMA0::/' "$here/rootfs/inittab" > "$root/etc/inittab"
  grep -q '^ttyAMA0::' "$root/etc/inittab" || die "rootfs/inittab has no ttyS0 line to move to ttyAMA0"
  install -m 0644 "$here/rootfs/profile" "$root/etc/profile"
  printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
  printf 'root:x:0:\n' > "$root/etc/group"
  printf '/bin/sh\n' > "$root/etc/shells"
  echo labvm > "$root/etc/hostname"
  (cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --owner=0:0 --reproducible 2>/dev/null) | gzip -9n > "$tmp/initramfs.cpio.gz"
  rm -rf "$root" "$pkgs" "$tmp/debs"
  mv "$tmp" "$rdir"
}

gdir=$out/guest-aarch64-$kernel_key-$rootfs_key
if [ "${1:-}" = --dir-if-built ]; then
  if [ -d "$gdir" ]; then echo "$gdir"; exit 0; fi
  exit 1
fi

mkdir -p "$out"
# One arm64 guest build at a time per cache; its own lock, not build.sh's:
# the trees differ, and an x86 guest (what `make demo` needs) must not wait
# for an arm64 kernel to compile.
exec 9>"$out/.lock-aarch64"
flock -w 3600 9 || die "another arm64 guest build holds $out/.lock-aarch64"
start=$(date +%s)
if [ -f "$kdir/Image.lab" ]; then log "kernel $kernel_key cached"; else build_kernel_aarch64; fi
if [ -f "$rdir/initramfs.cpio.gz" ]; then log "rootfs $rootfs_key cached"; else build_rootfs_aarch64; fi

if [ ! -d "$gdir" ]; then
  rm -rf "$gdir.tmp"; mkdir -p "$gdir.tmp"
  ln -sfn "$kdir/Image.lab" "$gdir.tmp/Image"
  ln -sfn "$kdir/vmlinux" "$gdir.tmp/vmlinux"
  ln -sfn "$kdir" "$gdir.tmp/kdir"
  ln -sfn "$rdir/initramfs.cpio.gz" "$gdir.tmp/initramfs.cpio.gz"
  cp "$kdir/kernelrelease" "$gdir.tmp/kernelrelease"
  echo aarch64 > "$gdir.tmp/arch"
  mv "$gdir.tmp" "$gdir"
fi
ln -sfn "$(basename "$gdir")" "$out/current-aarch64.tmp" && mv -T "$out/current-aarch64.tmp" "$out/current-aarch64"
log "guest ready in $(( $(date +%s) - start ))s: $out/current-aarch64 -> $(basename "$gdir")"
if [ "${1:-}" = --print-dir ]; then echo "$gdir"; fi
