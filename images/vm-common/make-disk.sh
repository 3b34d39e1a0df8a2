#!/bin/sh
# make-disk.sh ROOTFS OUT.qcow2 [SIZE_MIB]: a BIOS-bootable disk image of a
# root filesystem tree, without loop devices or mounts (so it runs inside an
# unprivileged image build): an MBR with one ext4 partition filled by
# `mkfs.ext4 -d`, and GRUB written into the gap before it, as grub-install
# would. Shared by the Debian and openEuler VM images.
#
# The kernel is ROOTFS/boot/vmlinuz (+ ROOTFS/boot/initrd.img if present;
# setup-guest.sh makes both names). The kernel command line is the local
# guest's (kubevirt_spawner.qemu.kernel_cmdline): serial console, nokaslr so
# gdb's vmlinux addresses hold, panic=-1.
set -eu
root=$1 out=$2 size_mib=${3:-4096}
[ -e "$root/boot/vmlinuz" ] || { echo "make-disk: $root/boot/vmlinuz missing" >&2; exit 1; }

grubdir=""
for d in /usr/lib/grub/i386-pc /usr/lib/grub2/i386-pc /usr/share/grub2/i386-pc; do
  [ -f "$d/boot.img" ] && grubdir=$d && break
done
[ -n "$grubdir" ] || { echo "make-disk: GRUB's i386-pc files not found (grub-pc-bin / grub2-pc-modules)" >&2; exit 1; }
mkimage=$(command -v grub-mkimage || command -v grub2-mkimage) || { echo "make-disk: grub-mkimage missing" >&2; exit 1; }

# Fixed disk signature: the root partition is PARTUUID=6c616276-01 ("labv").
disk_id=6c616276
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

args="console=ttyS0 nokaslr panic=-1 printk.devkmsg=on"
[ -f "$root/etc/kernel/cmdline.labvm" ] && args=$(cat "$root/etc/kernel/cmdline.labvm")
initrd=""
[ -e "$root/boot/initrd.img" ] && initrd="initrd /boot/initrd.img"
mkdir -p "$root/boot/grub"
cat > "$root/boot/grub/grub.cfg" <<CFG
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
menuentry 'lab kernel' {
  linux /boot/vmlinuz root=PARTUUID=$disk_id-01 rw rootwait $args
  $initrd
}
CFG

# The files an image build bind-mounts over in its RUN steps can only be set
# here, on the copy: the build host's name must not leak into the image.
echo labvm > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"

raw=$work/disk.raw
truncate -s "${size_mib}M" "$raw"
printf 'label: dos\nlabel-id: 0x%s\nstart=2048, type=83, bootable\n' "$disk_id" | sfdisk -q "$raw"

# GRUB 2.06 refuses ext4's metadata_csum_seed; orphan_file is too new for it
# (and for older kernels). Both are mke2fs 1.47 defaults.
features=^metadata_csum_seed
mke2fs -V 2>&1 | grep -q 'mke2fs 1\.4[7-9]' && features=$features,^orphan_file
mkfs.ext4 -q -F -L labroot -O "$features" -E offset=1048576 -d "$root" "$raw" "$(( (size_mib - 1) * 1024 ))k"

# core.img holds every module it needs, so /boot/grub needs only grub.cfg;
# it sits in sectors 1..2047, where boot.img (MBR code) looks for it.
"$mkimage" -O i386-pc -d "$grubdir" -o "$work/core.img" -p '(hd0,msdos1)/boot/grub' \
  biosdisk part_msdos ext2 normal linux boot configfile echo serial terminal test
[ "$(stat -c %s "$work/core.img")" -lt $(( 2047 * 512 )) ] || { echo "make-disk: core.img too big" >&2; exit 1; }
dd if="$grubdir/boot.img" of="$raw" bs=440 count=1 conv=notrunc status=none
dd if="$work/core.img" of="$raw" bs=512 seek=1 conv=notrunc status=none

mkdir -p "$(dirname "$out")"
qemu-img convert -c -O qcow2 "$raw" "$out"
echo "make-disk: $out ($(du -h "$out" | cut -f1) qcow2, ${size_mib} MiB disk)"
