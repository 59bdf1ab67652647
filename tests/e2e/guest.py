"""The test guest: Debian's cloud kernel (unpacked, never installed) and a tiny
busybox-static initramfs holding the virtio modules a scenario needs and its init script.

The kernel lives in ``$VQTRACE_GUEST_CACHE`` (default ``~/.cache/vqtrace/guest``),
filled by ``scripts/guest/fetch-kernel.sh`` (from ``scripts/setup-system.sh``, or
here on first use). Run by hand::

    python tests/e2e/guest.py initramfs --modules virtio_pci virtio_blk --init my-init.sh -o initrd.cpio
    python tests/e2e/guest.py kernel        # prints the vmlinuz path
"""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the sibling modules importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "e2e"

from .procs import HarnessError

ROOT = Path(__file__).resolve().parents[2]
FETCH_KERNEL = ROOT / "scripts" / "guest" / "fetch-kernel.sh"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")

#: Modules every guest loads: the PCI transport (virtio 1.4, 4.1).
BASE_MODULES = ("virtio_pci",)


def cache_dir() -> Path:
    env = os.environ.get("VQTRACE_GUEST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "vqtrace" / "guest"


@dataclass(frozen=True)
class GuestKernel:
    """An unpacked Debian kernel package: ``root`` is what ``dpkg -x`` wrote."""

    version: str
    root: Path

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"

    def module_order(self, names: list[str] | tuple[str, ...]) -> list[Path]:
        """The .ko files to insmod, dependencies first (``modprobe --show-depends``)."""
        order: list[Path] = []
        for name in names:
            proc = subprocess.run([_modprobe(), "-d", str(self.root), "-S", self.version, "--show-depends", name],
                                  capture_output=True, text=True, timeout=30)
            if proc.returncode != 0:
                raise HarnessError(f"modprobe --show-depends {name}: {proc.stderr.strip()}")
            for line in proc.stdout.splitlines():
                words = line.split()
                if len(words) >= 2 and words[0] == "insmod":
                    path = Path(words[1])
                    if path not in order:
                        order.append(path)
                # "builtin NAME" lines need nothing.
        return order


def _modprobe() -> str:
    """kmod's modprobe (in /usr/sbin, which a user's PATH may lack)."""
    for candidate in (shutil.which("modprobe"), "/usr/sbin/modprobe", "/sbin/modprobe"):
        if candidate and Path(candidate).exists():
            return candidate
    raise HarnessError("modprobe not found (install kmod)")


def find_kernel(cache: Path | None = None) -> GuestKernel | None:
    """The cached kernel named by ``cache/current``, if completely unpacked."""
    cache = cache or cache_dir()
    try:
        version = (cache / "current").read_text().strip()
    except OSError:
        return None
    root = cache / version
    kernel = GuestKernel(version, root)
    if not (root / ".complete").exists() or not kernel.vmlinuz.exists():
        return None
    return kernel


def ensure_kernel(cache: Path | None = None, timeout: float = 900) -> GuestKernel:
    """The cached kernel, fetching it first (``scripts/guest/fetch-kernel.sh``) when absent."""
    cache = cache or cache_dir()
    kernel = find_kernel(cache)
    if kernel is not None:
        return kernel
    env = dict(os.environ, VQTRACE_GUEST_CACHE=str(cache))
    try:
        proc = subprocess.run(["bash", str(FETCH_KERNEL)], capture_output=True, text=True, timeout=timeout,
                              env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise HarnessError(f"{FETCH_KERNEL.name} did not finish within {timeout:.0f} s") from None
    kernel = find_kernel(cache)
    if proc.returncode != 0 or kernel is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise HarnessError(f"cannot fetch the guest kernel into {cache}: " + " | ".join(tail))
    return kernel


def find_busybox() -> Path:
    """A statically linked busybox (package busybox-static): the initramfs has no libc."""
    for candidate in BUSYBOX_CANDIDATES:
        path = Path(candidate)
        if path.exists() and _is_static_elf(path):
            return path
    raise HarnessError("no statically linked busybox found (install busybox-static)")


def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a PT_INTERP program header."""
    import struct

    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit only
            return False
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))  # PT_INTERP = 3


# --- initramfs: the "newc" cpio format the kernel unpacks (Documentation/driver-api/early-userspace) ---

class CpioWriter:
    """Writes a newc cpio archive with fixed owner and mtime, so builds are reproducible."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1
        self._names: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        if name in self._names:
            return
        self._names.add(name)
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(b"%08X" % value for value in fields)
        self._ino += 1
        blob = header + encoded
        blob += b"\0" * (-len(blob) % 4)
        blob += data + b"\0" * (-len(data) % 4)
        self._parts.append(blob)

    def directory(self, name: str) -> None:
        parts = name.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            self._entry("/".join(parts[:depth]), stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        name = name.strip("/")
        if "/" in name:
            self.directory(name.rsplit("/", 1)[0])
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name.strip("/"), stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name.strip("/"), stat.S_IFCHR | 0o600, rdev=(major, minor))

    def getvalue(self) -> bytes:
        trailer = CpioWriter()
        trailer._ino = 0
        trailer._entry("TRAILER!!!", 0)
        return b"".join(self._parts) + trailer._parts[0]


INIT_TEMPLATE = """#!/bin/sh
# vqtrace end-to-end guest init (generated by tests/e2e/guest.py)
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp
for m in /lib/modules/*.ko; do
    insmod "$m" || echo "VQTRACE-INSMOD-FAILED $m"
done
echo "VQTRACE-READY"
sh /workload.sh
echo "VQTRACE-EXIT $?"
sync
poweroff -f
"""


def build_initramfs(kernel: GuestKernel, modules: list[str] | tuple[str, ...], workload: str, out: Path,
                    files: dict[str, bytes] | None = None) -> Path:
    """Write an initramfs: busybox, ``/init`` (mounts, insmod, then ``/workload.sh``), the modules.

    ``workload`` is a shell script; it prints its own verdict lines. Afterwards init prints
    ``VQTRACE-EXIT <status>`` and powers the guest off.
    """
    cpio = CpioWriter()
    for name in ("bin", "dev", "proc", "sys", "tmp", "lib/modules", "mnt"):
        cpio.directory(name)
    cpio.char_device("dev/console", 5, 1)  # the kernel opens it for init before devtmpfs exists
    cpio.file("bin/busybox", find_busybox().read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    for index, path in enumerate(kernel.module_order([*BASE_MODULES, *modules])):
        cpio.file(f"lib/modules/{index:02d}-{path.name}", path.read_bytes())
    cpio.file("init", INIT_TEMPLATE.encode(), 0o755)
    cpio.file("workload.sh", workload.encode(), 0o755)
    for name, data in (files or {}).items():
        cpio.file(name, data)
    out.write_bytes(cpio.getvalue())
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the vqtrace end-to-end test guest by hand.")
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("kernel", help="fetch the kernel if needed and print the vmlinuz path")
    ramfs = sub.add_parser("initramfs", help="write an initramfs")
    ramfs.add_argument("--modules", nargs="*", default=["virtio_blk"], help="modules besides virtio_pci")
    ramfs.add_argument("--init", type=Path, help="the workload shell script (default: a shell on the console)")
    ramfs.add_argument("-o", "--output", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        kernel = ensure_kernel()
        if args.what == "kernel":
            print(kernel.vmlinuz)
            return 0
        workload = args.init.read_text() if args.init else "exec setsid cttyhack sh\n"
        build_initramfs(kernel, args.modules, workload, args.output)
        print(args.output)
        return 0
    except (HarnessError, OSError) as err:
        print(f"guest: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

