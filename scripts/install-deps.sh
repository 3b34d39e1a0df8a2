#!/usr/bin/env bash
# Install what kubevirt-spawner needs on a Debian/Ubuntu machine: system
# packages (apt, when root; else print the one command to run), a .venv with
# the package and its test tools, and configurable-http-proxy (npm) for the hub.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  # the local VM and its guest build
  qemu-system-x86 qemu-utils linux-source-6.1 build-essential flex bison bc
  libelf-dev libssl-dev cpio xz-utils rsync patch busybox-static dropbear-bin strace kmod kexec-tools
  # the aarch64 VM: its QEMU, the cross compiler for its kernel, students'
  # modules and programs (static, so libc6-dev-arm64-cross), gdb for arm64
  qemu-system-arm gcc-aarch64-linux-gnu libc6-dev-arm64-cross gdb-multiarch
  # the student's side: ssh client, gdb, socat for the gdb and console sockets
  openssh-client gdb socat
  # the hub
  python3-venv
  # the KubeVirt debug hook's local test: real libvirtd + QEMU, schema validator
  libvirt-daemon-system libvirt-clients libxml2-utils
  # the lab manager's browser test (headless Chromium driven by Playwright)
  chromium chromium-driver
  # container images without a daemon (images/build.sh) and the NoCloud seed of their test
  buildah debootstrap genisoimage
  # the real KubeVirt test cluster (docs/cluster.md): virt-launcher links libvirt
  # (scripts/build-kubevirt-node.sh), the node runs containerd + runc, kube-router
  # needs ipset, kube-proxy conntrack
  libvirt-dev containerd runc ipset conntrack
)

# configurable-http-proxy needs Node.js and npm: Debian's, unless the machine
# already has a Node.js of its own (NodeSource's nodejs conflicts with
# Debian's npm package).
command -v npm >/dev/null || APT_PACKAGES+=(nodejs npm)

# The aarch64 guest's root filesystem is made from Debian's arm64 packages,
# which images/guest/build-aarch64.sh fetches with `apt-get download`.
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  if [ "$(id -u)" = 0 ]; then
    echo "install-deps: dpkg --add-architecture arm64"
    dpkg --add-architecture arm64
    apt-get update -q
  else
    echo "install-deps: apt must know arm64 packages. Run as root:" >&2
    echo "  dpkg --add-architecture arm64 && apt-get update" >&2
    exit 1
  fi
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "install-deps: apt-get install ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  else
    echo "install-deps: missing system packages. Run as root:" >&2
    echo "  apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

# Where the Python environment lives. Students' servers and the course
# account run its python and import this package from it, so every account
# must be able to read it. A clone other accounts cannot enter (under /root,
# in a `mktemp -d`) gets its environment under /var/lib/kubevirt-spawner,
# with .venv a link to it and the package installed as a copy: an editable
# install would point back into the private clone. The copy is refreshed
# whenever the package's files change (every make target runs this first).
repo=$(pwd -P)
private=0
if [ "$(id -u)" = 0 ] && ! runuser -u nobody -- test -r "$repo/setup.cfg" 2>/dev/null; then
  private=1
  venv_home=/var/lib/kubevirt-spawner/venvs/$(printf '%s' "$repo" | sha256sum | cut -c1-12)
  if [ "$(readlink .venv 2>/dev/null)" != "$venv_home" ]; then
    echo "install-deps: $repo is private to root; the Python environment goes to $venv_home"
    rm -rf .venv
    install -d -m 0755 /var/lib/kubevirt-spawner /var/lib/kubevirt-spawner/venvs
    ln -sfn "$venv_home" .venv
  fi
  mkdir -p -m 0755 "$venv_home"
elif [ -L .venv ]; then
  # The clone became readable (or was moved): an environment of its own again.
  rm -f .venv
fi

stamp=.venv/.installed
inputs=$(cat setup.cfg pyproject.toml scripts/install-deps.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$inputs" ]; then
  # Debian's /usr/bin/python3, not a per-user interpreter (pyenv, conda in
  # /root): students' notebook servers run this Python under their own
  # accounts, so it must be readable by every user.
  # By its real path: venv refuses a link, and the scripts' #! lines then
  # name a path every account can follow.
  [ -x .venv/bin/python ] || /usr/bin/python3 -m venv "$(readlink -f .venv)"
  .venv/bin/pip install -q -U pip
  if [ $private = 1 ]; then
    .venv/bin/pip install -q '.[test,kubernetes,course]'
  else
    .venv/bin/pip install -q -e '.[test,kubernetes,course]'
  fi
  rm -f .venv/.package
  echo "$inputs" > "$stamp"
fi
if [ $private = 1 ]; then
  pkg=$(find kubevirt_spawner -name __pycache__ -prune -o -type f -print0 | LC_ALL=C sort -z \
        | xargs -0 sha256sum | sha256sum | cut -c1-16)
  if [ "$(cat .venv/.package 2>/dev/null)" != "$pkg" ]; then
    .venv/bin/pip install -q --no-deps --force-reinstall .
    echo "$pkg" > .venv/.package
  fi
fi

if [ ! -x .venv/node/node_modules/.bin/configurable-http-proxy ]; then
  npm install --silent --no-fund --no-audit --prefix .venv/node configurable-http-proxy@4
fi
echo "install-deps: ready"
