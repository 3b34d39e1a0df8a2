#!/bin/sh
# Turn a distribution root filesystem (with systemd, cloud-init and sshd
# installed) into a lab VM image. Run inside the image build (the rootfs
# stage of images/vm-*/Dockerfile); shared by the Debian and openEuler VMs.
#
# - the kernel in /boot gets stable names (/boot/vmlinuz, /boot/initrd.img)
#   that make-disk.sh's GRUB entry boots;
# - cloud-init reads only NoCloud/ConfigDrive (what KubeVirt offers), so it
#   does not spend minutes probing cloud metadata services;
# - no ssh host key and no machine-id ship in the image: cloud-init installs
#   the host key the spawner pinned, systemd makes a machine-id per boot;
# - "labvm: ssh ready" on the console once cloud-init is done (sshd is up),
#   the same marker the local guest prints.
set -eu

kernel=$(ls /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)
[ -n "$kernel" ] || { echo "setup-guest: no /boot/vmlinuz-* in the image" >&2; exit 1; }
rel=${kernel#/boot/vmlinuz-}
ln -sfn "vmlinuz-$rel" /boot/vmlinuz
for i in "/boot/initrd.img-$rel" "/boot/initramfs-$rel.img"; do
  [ -f "$i" ] && ln -sfn "$(basename "$i")" /boot/initrd.img
done
echo "$rel" > /boot/kernelrelease

mkdir -p /etc/cloud/cloud.cfg.d
cat > /etc/cloud/cloud.cfg.d/90-kubevirt-spawner.cfg <<'CFG'
# KubeVirt gives a lab VM its cloud-init as a NoCloud (or ConfigDrive) disk.
datasource_list: [NoCloud, ConfigDrive, None]
# C.UTF-8 is always there; the distribution default (en_US.UTF-8) would
# need the locales package and a locale-gen run on every first boot.
locale: C.UTF-8
CFG

rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id

# After cloud-final (sshd is up by then); a unit of its own wanted by
# multi-user.target would form a cycle, cloud-final being after that target.
mkdir -p /etc/systemd/system/cloud-final.service.d
cat > /etc/systemd/system/cloud-final.service.d/90-labvm-ready.conf <<'UNIT'
[Service]
ExecStartPost=/bin/sh -c 'echo "labvm: ssh ready ($(uname -r))" > /dev/console'
UNIT
systemctl set-default multi-user.target
