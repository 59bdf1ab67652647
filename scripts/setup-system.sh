#!/usr/bin/env bash
# Install the system packages vqtrace's tests and demo use (Debian 12):
# tshark (Wireshark compatibility), QEMU and qemu-storage-daemon (end-to-end),
# busybox-static, cpio and kmod (the test guest's initramfs), zstd (captures),
# then fetch the end-to-end guest kernel into its cache (scripts/guest/fetch-kernel.sh).
# Needs root for the packages; as another user it says what to install and carries on.
# Non-interactive: safe with no stdin (CI).
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(tshark qemu-system-x86 qemu-system-common qemu-utils busybox-static cpio kmod zstd tmux)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup-system: not root; install these for the full test suite: ${missing[*]}" >&2
        exit 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
fi

# The guest kernel is a download of a few tens of MB, once per machine; without it
# the end-to-end tests fetch it themselves on first use (and fail under CI=true if they cannot).
if ! ./scripts/guest/fetch-kernel.sh </dev/null; then
    echo "setup-system: could not fetch the guest kernel; the end-to-end tests will try again" >&2
fi
