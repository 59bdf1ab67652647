#!/usr/bin/env bash
# Install the system packages vqtrace's tests and demo use (Debian 12):
# tshark (Wireshark compatibility), QEMU and qemu-storage-daemon (end-to-end),
# busybox-static, cpio and kmod (the test guest's initramfs).
# Needs root; as another user it says what to install and carries on.
set -euo pipefail

packages=(tshark qemu-system-x86 qemu-system-common qemu-utils busybox-static cpio kmod zstd tmux)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-system: not root; install these for the full test suite: ${missing[*]}" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
