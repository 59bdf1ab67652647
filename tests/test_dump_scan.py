"""`vqtrace dump scan`: rings planted in noise are found where they are, with nothing else; the numpy
layouts equal the construct definitions; analyze takes a candidate by number."""

from __future__ import annotations

import gzip
import io
import json
import os
import pty
import struct
import subprocess
import sys

import numpy as np
import pytest
import zstandard

from conftest import run_vqtrace
from vqtrace.dissectors.virtqueue import packed_desc, split_desc, used_elem
from vqtrace.dump.progress import Progress
from vqtrace.dump.scan import scan
from vqtrace.dump.scan_np import DESC_DTYPE, PACKED_DTYPE, USED_DTYPE, first_pass
from vqtrace.dump.snapshot import open_snapshot
from vqtrace.dump.synth import VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, SyntheticGuest
from vqtrace.model import Layout

MiB = 1 << 20


def _noise(guest: SyntheticGuest, rng: np.random.Generator) -> None:
    """Things that look a little like rings: page tables, small counters, text, random bytes."""
    ram = guest.ram
    for page in range(64):  # x86-64 page-table pages: entries = physical address | present/rw/accessed/dirty
        entries = (rng.integers(0, guest.size // 4096, 512, dtype=np.uint64) << np.uint64(12)) | np.uint64(0x63)
        ram[0x400000 + page * 4096:0x400000 + (page + 1) * 4096] = entries.tobytes()
    for page in range(64):  # arrays of small counters
        ram[0x500000 + page * 4096:0x500000 + (page + 1) * 4096] = rng.integers(0, 300, 1024, np.uint32).tobytes()
    text = (b"The quick brown fox jumps over the lazy dog. " * 100)[:4096]
    for page in range(16):
        ram[0x600000 + page * 4096:0x600000 + (page + 1) * 4096] = text
    ram[0x700000:0x780000] = os.urandom(0x80000)


def _planted() -> tuple[SyntheticGuest, list[tuple[Layout, int, int, int, int]]]:
    """A 16 MiB guest with five blk rings as Linux lays them out, in noise; (layout, size, desc, avail, used)."""
    guest = SyntheticGuest(16 * MiB, noise=True)
    _noise(guest, np.random.default_rng(7))
    rings = []
    specs = [(0x100000, 256, False, 64), (0x110000, 8, False, 4096), (0x120000, 1024, False, 64),
             (0x130000, 32, False, 64), (0x140000, 256, True, 0), (0x150000, 16, True, 0)]
    for number, (addr, size, packed, align) in enumerate(specs):
        queue = guest.blk_queue(addr, size, packed=packed, align=align or 64)
        rounds = 3 if not (packed and size == 16) else 7  # the 16-slot packed ring wraps
        for k in range(rounds):  # completed and taken back, completed, in flight
            guest.blk(queue, VIRTIO_BLK_T_OUT if k % 2 else VIRTIO_BLK_T_IN, 100 * number + 8 * k, 512)
            if k < rounds - 1:
                guest.complete(queue, 1)
            if k < rounds - 2:
                queue.get_used()
        c = queue.config
        rings.append((c.layout, size, c.desc, c.driver, c.device))
    return guest, rings


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    guest, rings = _planted()
    path = guest.write_elf(tmp_path_factory.mktemp("scan") / "guest.elf")
    return path, rings


def test_scan_finds_every_planted_ring_and_nothing_else(planted):
    path, rings = planted
    with open_snapshot(path) as snap:
        found = scan(snap, progress=False)
    split = {(c.desc, c.driver, c.device, c.size) for c in found if c.layout is Layout.SPLIT}
    assert split == {(d, a, u, n) for layout, n, d, a, u in rings if layout is Layout.SPLIT}
    packed = {c.desc: c for c in found if c.layout is Layout.PACKED}
    assert set(packed) == {d for layout, _, d, _, _ in rings if layout is Layout.PACKED}
    assert packed[0x150000].size == 16  # wrapped: the size is exact
    assert packed[0x140000].size == 256  # first lap: taken as filling its page
    assert packed[0x150000].state["avail_wrap"] == 0 and not packed[0x150000].first_lap
    for c in found:
        assert c.score >= 0.85, (hex(c.desc), c.score, c.problems)
        assert c.device_guess in ("blk", None)
    assert [c.number for c in found] == list(range(1, len(found) + 1))


def test_scan_reports_indices_and_layout_evidence(planted):
    path, _ = planted
    with open_snapshot(path) as snap:
        (ring,) = [c for c in scan(snap, progress=False) if c.desc == 0x100000]
    assert ring.state["avail_idx"] == 3 and ring.state["used_idx"] == 2
    assert ring.align == 64 and ring.device_guess == "blk"
    assert any("vring_align 64" in text for text in ring.evidence)
    assert any("EVENT_IDX" in text for text in ring.evidence) and ring.event_idx_seen
    with open_snapshot(path) as snap:
        (legacy,) = [c for c in scan(snap, progress=False) if c.desc == 0x110000]
    assert legacy.align == 4096 and legacy.device == 0x111000


def test_random_and_zero_memory_hold_no_ring(tmp_path):
    path = tmp_path / "noise.bin"
    with open(path, "wb") as out:
        out.write(os.urandom(8 * MiB))
        out.write(bytes(8 * MiB))
    with open_snapshot(path, base=0) as snap:
        assert scan(snap, progress=False) == []


def test_sparse_compressed_snapshot_is_scanned(tmp_path, monkeypatch, planted):
    monkeypatch.setenv("VQTRACE_CACHE_DIR", str(tmp_path / "cache"))
    path, rings = planted
    blob = tmp_path / "guest.elf.zst"
    blob.write_bytes(zstandard.ZstdCompressor().compress(path.read_bytes()))
    with open_snapshot(blob) as snap:
        assert {c.desc for c in scan(snap, progress=False)} == {d for _, _, d, _, _ in rings}


def test_first_pass_skips_random_and_zero_pages():
    chunk = bytearray(os.urandom(64 * 4096)) + bytearray(64 * 4096)
    struct.pack_into("<QIHH", chunk, 5 * 4096, 0x1000, 16, 1, 1)  # a plausible split descriptor
    struct.pack_into("<QIHH", chunk, 70 * 4096, 0x2000, 16, 0, 0x8080 >> 0 & 0x80)  # packed, AVAIL
    pages = first_pass(memoryview(bytes(chunk)), 1 << 24)
    assert pages.tolist() == [5, 70] or (set(pages.tolist()) >= {5, 70} and len(pages) <= 3)


def test_numpy_layouts_equal_the_construct_definitions():
    raw = os.urandom(16 * 64)
    for dtype, layout, names in ((DESC_DTYPE, split_desc, ("addr", "len", "flags", "next")),
                                 (PACKED_DTYPE, packed_desc, ("addr", "len", "id", "flags")),
                                 (USED_DTYPE, used_elem, ("id", "len"))):
        fast = np.frombuffer(raw, dtype=dtype)
        for k in range(len(fast)):
            parsed = layout.parse(raw[k * dtype.itemsize:(k + 1) * dtype.itemsize])
            for name in names:
                value = parsed[name]
                value = getattr(value, "value", value)
                assert int(fast[k][name]) == int(value), (dtype, name)


def test_cli_scan_then_analyze_candidate(planted):
    path, _ = planted
    result = run_vqtrace("dump", "scan", str(path), "-T", "json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""  # no progress bar when stderr is not a terminal
    doc = json.loads(result.stdout)
    number = next(c["number"] for c in doc["candidates"] if c["desc"] == 0x100000)
    text = run_vqtrace("dump", "scan", str(path)).stdout.decode()
    assert f"#{number:<3}" in text and "+ 256 descriptors with valid flags" in text
    result = run_vqtrace("dump", "analyze", str(path), "--scan", "--candidate", str(number))
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert f"candidate {number}: split, size 256" in out
    assert "blk IN sector=16 len=512 in flight" in out
    assert "used[1] id" in out and "blk OUT sector=8 len=512 -> OK" in out
    missing = run_vqtrace("dump", "analyze", str(path), "--scan", "--candidate", "99")
    assert missing.returncode == 2 and b"found" in missing.stderr


def test_progress_bar_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        with Progress("scanning", 100, stream=stream) as bar:
            bar._drawn = -1.0  # due now
            bar.update(50)
    assert "scanning [" in tty.getvalue() and "50.0%" in tty.getvalue()
    assert tty.getvalue().endswith("\r\x1b[K")  # erased at the end
    assert pipe.getvalue() == ""


def test_cli_progress_bar_on_a_terminal_stderr(planted, tmp_path):
    """With stderr on a terminal (a pty here), scan and decompression draw their bars there; stdout is clean."""
    path, _ = planted
    blob = tmp_path / "guest.elf.gz"
    blob.write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
    leader, follower = pty.openpty()
    env = dict(os.environ, VQTRACE_CACHE_DIR=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "vqtrace", "dump", "scan", str(blob), "-q"], stdout=subprocess.PIPE,
                          stderr=follower, env=env, timeout=120)
    os.close(follower)
    drawn = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    assert proc.returncode == 0
    assert b"decompressing guest.elf.gz [" in drawn and b"scanning [" in drawn
    assert b"\x1b[K" in drawn and b"scanning" not in proc.stdout


@pytest.mark.parametrize("kind", ["page-tables", "next-chains"])
def test_descriptor_like_memory_everywhere_gives_no_ring(kind):
    """The worst case for the first two passes: every page looks like a descriptor table."""
    from vqtrace.dump.snapshot import Extent, Snapshot
    from vqtrace.memory import GuestMemory

    rng = np.random.default_rng(3)
    size = 8 * MiB
    if kind == "page-tables":
        data = ((rng.integers(0, size // 4096, size // 8, dtype=np.uint64) << np.uint64(12)) | np.uint64(0x61))
    else:
        data = np.zeros(size // 16, dtype=DESC_DTYPE)
        data["addr"], data["len"], data["flags"] = 0x1000, 16, 1
        data["next"] = rng.integers(0, 256, len(data))
    memory = GuestMemory.from_bytes(bytearray(data.tobytes()), writable=False)
    with Snapshot("noise", "raw", memory, [Extent(0, size, 0)]) as snap:
        assert scan(snap, progress=False) == []
