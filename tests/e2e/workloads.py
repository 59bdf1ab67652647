"""Guest workloads (busybox shell) and the host-side truth they are checked against.

The blk workload writes known patterns at known sectors with ``dd``, syncs, drops the
page cache, reads them back, compares, and reads a pattern the host put on the disk
before boot. It prints one verdict line: ``VQTRACE-VERDICT PASS blk`` or
``VQTRACE-VERDICT FAIL blk <why>``.

``oflag=direct``/``iflag=direct`` are asked for, but busybox's dd quietly falls back to
the page cache when its buffer is not 512-byte aligned (Linux 6.1 requires it), which
depends on the heap. So every pattern is whole 4 KiB pages at a page-aligned sector: a
write is then one request of exactly that length either way (no read-modify-write), and
a read reaches the device (the cache was dropped) as one request starting at the
sector, possibly longer (readahead).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SECTOR = 512  # virtio 1.4, 5.2.6: sectors are 512 bytes whatever blk_size says


@dataclass(frozen=True)
class Pattern:
    """``length`` bytes at ``sector``: a repeated line naming its origin and sector."""

    sector: int
    length: int
    origin: str = "guest"  # "guest" writes it; "host" puts it on the image before boot

    @property
    def line(self) -> str:
        return f"vqtrace {self.origin} {self.sector:08d}"  # `yes` repeats it, one per line

    def data(self) -> bytes:
        unit = (self.line + "\n").encode()
        return (unit * (self.length // len(unit) + 1))[: self.length]

    @property
    def offset(self) -> int:
        return self.sector * SECTOR


#: Writes of several sizes and places, one request each (the dd block size is the length).
GUEST_PATTERNS = (
    Pattern(2048, 4096),
    Pattern(8, 4096),
    Pattern(10000, 8192),
    Pattern(65000, 12288),
    Pattern(100000, 32768),
)
#: Put on the image by the host before boot; the guest reads and checks it.
HOST_PATTERNS = (Pattern(4096, 4096, "host"),)
DISK_BYTES = 64 << 20


def make_disk(path: Path, size: int = DISK_BYTES, patterns: tuple[Pattern, ...] = HOST_PATTERNS) -> Path:
    """A sparse raw image with the host patterns in place."""
    with open(path, "wb") as f:
        f.truncate(size)
        for pattern in patterns:
            f.seek(pattern.offset)
            f.write(pattern.data())
    return path


def check_disk(path: Path, patterns: tuple[Pattern, ...] = GUEST_PATTERNS) -> list[str]:
    """The guest patterns that are NOT on the image (empty: all arrived at the back-end)."""
    wrong = []
    with open(path, "rb") as f:
        for pattern in patterns:
            f.seek(pattern.offset)
            if f.read(pattern.length) != pattern.data():
                wrong.append(f"sector {pattern.sector} (+{pattern.length})")
    return wrong


WAIT_FOR_DEVICE = """
wait_dev() {  # $1: device node; devtmpfs creates it when the driver has probed
    i=0
    while [ ! -b "$1" ] && [ ! -c "$1" ]; do
        i=$((i + 1)); [ $i -gt 200 ] && { echo "VQTRACE-VERDICT FAIL no $1"; return 1; }
        sleep 0.05
    done
}
"""

BLK_FUNCTIONS = WAIT_FOR_DEVICE + """
fail() { echo "VQTRACE-VERDICT FAIL blk $*"; exit 1; }
pattern() {  # $1 origin, $2 sector, $3 length -> /tmp/pattern
    yes "$(printf 'vqtrace %s %08d' "$1" "$2")" | head -c "$3" > /tmp/pattern
}
write_pattern() {  # $1 device, $2 sector, $3 length: one direct write request
    pattern guest "$2" "$3"
    dd if=/tmp/pattern of="$1" bs="$3" count=1 seek=$(($2 * 512)) oflag=seek_bytes,direct conv=notrunc \\
        status=none || fail "write sector $2"
}
check_pattern() {  # $1 device, $2 origin, $3 sector, $4 length: one direct read request
    pattern "$2" "$3" "$4"
    dd if="$1" of=/tmp/readback bs="$4" count=1 skip=$(($3 * 512)) iflag=skip_bytes,direct status=none \\
        || fail "read sector $3"
    cmp -s /tmp/pattern /tmp/readback || fail "data mismatch at sector $3"
}
"""


def blk_workload(device: str = "/dev/vda", guest: tuple[Pattern, ...] = GUEST_PATTERNS,
                 host: tuple[Pattern, ...] = HOST_PATTERNS) -> str:
    """The guest script: write, flush, read back, check; one verdict line."""
    lines = [BLK_FUNCTIONS, f"wait_dev {device} || exit 1"]
    lines += [f"write_pattern {device} {p.sector} {p.length}" for p in guest]
    lines.append("sync; echo 3 > /proc/sys/vm/drop_caches")
    lines += [f"check_pattern {device} guest {p.sector} {p.length}" for p in guest]
    lines += [f"check_pattern {device} host {p.sector} {p.length}" for p in host]
    lines.append('echo "VQTRACE-VERDICT PASS blk"')
    return "\n".join(lines) + "\n"
