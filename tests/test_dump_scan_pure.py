"""The scanner's two engines (pure Python, numpy) give identical candidates, and `dump scan` of ordinary
memory does not import numpy."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from vqtrace.dump import scan_np, scan_pure
from vqtrace.dump.scan import scan
from vqtrace.dump.scan_common import Ram
from vqtrace.dump.snapshot import Extent, Snapshot
from vqtrace.dump.synth import VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, SyntheticGuest
from vqtrace.memory import GuestMemory

MiB = 1 << 20
PAGE = 4096


def _scan(guest: SyntheticGuest, pure_max: int | None = None) -> list[dict]:
    """The candidates of a scan, as JSON (everything a user sees), plus the exact score and first_lap."""
    memory = GuestMemory.from_bytes(bytes(guest.ram), guest.base, writable=False)  # closed with the snapshot
    with Snapshot("synthetic", "raw", memory, [Extent(guest.base, guest.size, 0)]) as snap:
        return [c.to_json() | {"first_lap": c.first_lap, "score_exact": c.score}
                for c in scan(snap, progress=False, pure_max=pure_max, min_score=0.0)]


def _both(guest: SyntheticGuest) -> tuple[list[dict], list[dict]]:
    """The candidates found by each engine: pure Python for every chunk, numpy for every chunk."""
    return _scan(guest, 1 << 30), _scan(guest, -1)


def _traffic(guest: SyntheticGuest, queue, rounds: int, rng: random.Random, *, indirect: bool = False) -> None:
    for _ in range(rounds):
        kind = VIRTIO_BLK_T_OUT if rng.random() < 0.5 else VIRTIO_BLK_T_IN
        kwargs = {"indirect": True} if indirect else {}
        try:
            guest.blk(queue, kind, rng.randrange(1 << 20), rng.choice((16, 512, 4096)), **kwargs)
        except Exception:  # the ring is full: the device catches up
            guest.complete(queue, queue.config.size)
            queue.get_used()
            continue
        if rng.random() < 0.7:
            guest.complete(queue, 1)
        if rng.random() < 0.5:
            queue.get_used()


def _page_tables(ram: bytearray, at: int, pages: int, rng: random.Random, top: int) -> None:
    for page in range(pages):
        entries = [(rng.randrange(top // PAGE) << 12) | 0x63 for _ in range(512)]
        ram[at + page * PAGE:at + (page + 1) * PAGE] = struct.pack("<512Q", *entries)


def _descriptor_like(ram: bytearray, at: int, pages: int, rng: random.Random) -> None:
    """Pages of plausible split descriptors with NEXT chains, some avail-ring-like headers."""
    for page in range(pages):
        for k in range(256):
            struct.pack_into("<QIHH", ram, at + page * PAGE + 16 * k, 0x1000 * rng.randrange(1, 64),
                             rng.choice((0, 16, 512)), rng.choice((0, 1, 2, 3, 0x80, 0x8081)), rng.randrange(300))


SIZES = [(s, packed, align) for packed in (False, True) for s in (4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
         for align in ((64,) if packed else (64, 4096)) if not (packed and s == 4)]


@pytest.mark.parametrize("size,packed,align", SIZES)
def test_engines_agree_on_every_ring_size(size, packed, align):
    rng = random.Random(size * 7 + packed + align)
    guest = SyntheticGuest(8 * MiB, noise=True)
    queue = guest.blk_queue(0x100000, size, packed=packed, align=align)
    _traffic(guest, queue, min(3 * size, 300), rng, indirect=size % 3 == 1)
    pure, numpy_ = _both(guest)
    assert pure == numpy_
    assert any(c["desc"] == 0x100000 for c in pure)


def test_engines_agree_on_noise_page_tables_and_anomalies():
    rng = random.Random(11)
    guest = SyntheticGuest(16 * MiB, noise=True)
    for number, (addr, size, packed) in enumerate([(0x100000, 256, False), (0x120000, 8, True),
                                                   (0x130000, 64, False), (0x140000, 1024, True)]):
        queue = guest.blk_queue(addr, size, packed=packed)
        _traffic(guest, queue, 40 + number, rng)
    # Anomalies: an index past the size, a used id out of range, a broken NEXT link, a bad avail head.
    struct.pack_into("<H", guest.ram, 0x130000 + 16 * 64 + 2, 0x9000)
    struct.pack_into("<I", guest.ram, 0x130000 + 16 * 64 + 6 + 2 * 64 + 58 + 4, 5000)
    struct.pack_into("<HH", guest.ram, 0x100000 + 16 * 3 + 12, 1, 999)
    struct.pack_into("<H", guest.ram, 0x100000 + 16 * 256 + 4, 700)
    _page_tables(guest.ram, 0x400000, 48, rng, guest.size)
    _descriptor_like(guest.ram, 0x500000, 32, rng)
    pure, numpy_ = _both(guest)
    assert pure == numpy_
    assert len(pure) >= 4


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 1 << 30), size=st.sampled_from([8, 16, 32, 64, 128, 256]), packed=st.booleans(),
       rounds=st.integers(0, 80), corrupt=st.lists(st.tuples(st.integers(0, 3 * PAGE - 2), st.integers(0, 0xFFFF)),
                                                   max_size=6))
def test_engines_agree_on_random_rings_and_corruption(seed, size, packed, rounds, corrupt):
    rng = random.Random(seed)
    guest = SyntheticGuest(2 * MiB)
    queue = guest.blk_queue(0x40000, size, packed=packed, align=rng.choice((64, 4096)))
    _traffic(guest, queue, rounds, rng)
    for offset, value in corrupt:  # u16 anywhere in the ring's first pages
        struct.pack_into("<H", guest.ram, 0x40000 + offset, value)
    _descriptor_like(guest.ram, 0x80000, 4, rng)
    guest.ram[0xC0000:0xC0000 + 16 * PAGE] = rng.randbytes(16 * PAGE)
    pure, numpy_ = _both(guest)
    assert pure == numpy_


@settings(max_examples=30, deadline=None)
@given(words=st.lists(st.tuples(st.integers(0, 4 * PAGE // 8 - 1), st.integers(0, (1 << 64) - 1)), max_size=64),
       seed=st.integers(0, 1000), limit=st.sampled_from([1 << 20, 1 << 32, 1 << 48]))
def test_first_and_second_passes_agree(words, seed, limit):
    rng = random.Random(seed)
    chunk = bytearray(rng.randbytes(PAGE)) + bytearray(3 * PAGE)
    _descriptor_like(chunk, PAGE, 1, rng)
    _page_tables(chunk, 2 * PAGE, 1, rng, limit)
    for index, value in words:  # split/packed-like first descriptors, avail flags, anything
        struct.pack_into("<Q", chunk, 8 * index, value)
    view = memoryview(bytes(chunk))
    pages = scan_pure.first_pass(view, limit)
    assert pages == scan_np.first_pass(view, limit).tolist()
    assert scan_pure.second_pass(view, pages, limit) == scan_np.second_pass(view, np.array(pages), limit)
    every = list(range(len(chunk) // PAGE))
    assert scan_pure.second_pass(view, every, limit) == scan_np.second_pass(view, np.array(every), limit)


def test_ram_holds_agrees():
    guest = SyntheticGuest(1 * MiB, base=0x10000)
    ram = Ram(guest.memory)
    addrs = [0, 0xFFFF, 0x10000, 0x10000 + MiB - 1, 0x10000 + MiB, (1 << 64) - 1, 1 << 40]
    lens = [0, 1, MiB, 1, 0, 1 << 31]
    expected = [ram.holds(a, n) for a in addrs for n in lens]
    got = scan_np.holds(ram, np.array([a for a in addrs for _ in lens], dtype=np.uint64),
                        np.array(lens * len(addrs), dtype=np.uint32))
    assert got.tolist() == expected


def test_dump_scan_of_a_ring_does_not_import_numpy(tmp_path):
    guest = SyntheticGuest(4 * MiB, noise=True)
    queue = guest.blk_queue(0x100000, 256)
    _traffic(guest, queue, 20, random.Random(1))
    path = guest.write_raw(tmp_path / "guest.raw")
    probe = ("import sys, contextlib, io\nfrom vqtrace import cli\nout = io.StringIO()\n"
             "with contextlib.redirect_stdout(out):\n"
             f"    code = cli.main(['dump', 'scan', {str(path)!r}, '--base', '0', '-q'])\n"
             "assert code == 0, code\nassert '0x100000' in out.getvalue(), out.getvalue()\n"
             "assert 'numpy' not in sys.modules, 'numpy imported'\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=120,
                            env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr + result.stdout


def test_many_survivors_use_numpy_with_the_same_result(tmp_path):
    rng = random.Random(5)
    guest = SyntheticGuest(4 * MiB)
    _page_tables(guest.ram, 0x200000, 300, rng, guest.size)  # more survivors than PURE_MAX in one chunk
    queue = guest.blk_queue(0x100000, 128)
    _traffic(guest, queue, 20, rng)
    pure, numpy_ = _both(guest)
    assert pure == numpy_ and any(c["desc"] == 0x100000 for c in pure)
    assert _scan(guest) == pure  # the default: numpy for the page-table chunk


def test_after_a_chunk_of_many_survivors_later_chunks_give_the_same_result():
    """The scan goes over to numpy at the first crowded chunk and stays there: rings in later chunks
    (16 MiB each) come out as either engine alone finds them."""
    rng = random.Random(11)
    guest = SyntheticGuest(40 * MiB)
    _page_tables(guest.ram, 0x200000, 300, rng, guest.size)  # chunk 1: more survivors than PURE_MAX
    queue = guest.blk_queue(36 * MiB, 256)  # chunk 3
    _traffic(guest, queue, 20, rng)
    pure, numpy_ = _both(guest)
    assert pure == numpy_ and any(c["desc"] == 36 * MiB for c in pure)
    assert _scan(guest) == pure
