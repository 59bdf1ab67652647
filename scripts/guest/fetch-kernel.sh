#!/usr/bin/env bash
# Fetch the end-to-end tests' guest kernel: Debian's cloud kernel, downloaded
# with `apt-get download` and unpacked with `dpkg -x` (never installed), into
#   ${VQTRACE_GUEST_CACHE:-$HOME/.cache/vqtrace/guest}/<version>/
# with `depmod` run on its modules so `modprobe -d DIR -S VER --show-depends`
# gives the load order. The file `current` in the cache names the version.
#
# Non-interactive and idempotent: does nothing when the cached kernel is complete.
# VQTRACE_GUEST_KERNEL=linux-image-<ver>-cloud-amd64 pins a package; by default
# the one that the meta-package linux-image-cloud-amd64 depends on today.
set -euo pipefail

cache="${VQTRACE_GUEST_CACHE:-${HOME:-/root}/.cache/vqtrace/guest}"
meta=linux-image-cloud-amd64

log() { echo "fetch-kernel: $*" >&2; }

if [ -f "$cache/current" ]; then
    have="$(cat "$cache/current")"
    if [ -f "$cache/$have/.complete" ] && [ -z "${VQTRACE_GUEST_KERNEL:-}" ]; then
        log "cached: $have in $cache"
        exit 0
    fi
fi

for tool in apt-get apt-cache dpkg depmod; do
    command -v "$tool" >/dev/null || { log "$tool not found (Debian needed)"; exit 1; }
done

apt_updated=0
apt_update() {
    [ "$apt_updated" -eq 1 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        log "not root: cannot run apt-get update"
        return 1
    fi
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
    apt_updated=1
}

resolve() {
    if [ -n "${VQTRACE_GUEST_KERNEL:-}" ]; then
        echo "$VQTRACE_GUEST_KERNEL"
        return 0
    fi
    apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}'
}

package="$(resolve)"
if [ -z "$package" ]; then
    apt_update
    package="$(resolve)"
fi
[ -n "$package" ] || { log "no package found for $meta"; exit 1; }

version="${package#linux-image-}"
dest="$cache/$version"
if [ -f "$dest/.complete" ]; then
    echo "$version" >"$cache/current"
    log "cached: $version in $cache"
    exit 0
fi

mkdir -p "$cache"
work="$(mktemp -d "$cache/.fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

download() { (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$package" >&2); }
if ! download; then
    # A stale package list names a version the mirror no longer has.
    apt_update
    package="$(resolve)"
    version="${package#linux-image-}"
    dest="$cache/$version"
    download
fi
deb="$(ls "$work"/*.deb)"
log "unpacking $(basename "$deb")"
dpkg -x "$deb" "$work/root"
rm -f "$deb"
[ -f "$work/root/boot/vmlinuz-$version" ] || { log "no vmlinuz-$version in $package"; exit 1; }
depmod -b "$work/root" "$version"

rm -rf "$dest"
mv "$work/root" "$dest"
touch "$dest/.complete"
echo "$version" >"$cache/current"
log "ready: $version in $cache"
