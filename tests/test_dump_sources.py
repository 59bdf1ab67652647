"""Snapshot sources of `vqtrace dump`: ELF cores, raw RAM, compressed copies, kdump; bad files fail in one line."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import struct
import zlib

import pytest
import zstandard

from conftest import run_vqtrace
from vqtrace.dump.compress import cache_path
from vqtrace.dump.elfnotes import parse_notes, summarize_notes
from vqtrace.dump.elfwrite import buffer_reader, encode_notes, prstatus_note, write_elf_file
from vqtrace.dump.snapshot import open_snapshot
from vqtrace.dump.synth import VIRTIO_BLK_T_OUT, SyntheticGuest
from vqtrace.errors import GuestMemoryError, UsageError

MiB = 1 << 20


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Decompressed copies go to a per-test cache (the CLI children inherit the variable)."""
    directory = tmp_path / "cache"
    monkeypatch.setenv("VQTRACE_CACHE_DIR", str(directory))
    return directory


@pytest.fixture
def guest():
    g = SyntheticGuest(4 * MiB, noise=True)
    q = g.blk_queue(0x100000)
    g.blk(q, VIRTIO_BLK_T_OUT, 2048)
    g.ram[0x10000:0x10010] = b"VQTRACE-MARKER!!"
    return g


def test_elf_core_maps_pt_load_at_paddr(tmp_path, guest):
    path = guest.write_elf(tmp_path / "core.elf", cpus=3, split_at=1 * MiB)
    with open_snapshot(path) as snap:
        assert snap.format == "elf" and snap.compression is None
        assert [(e.guest_addr, e.size) for e in snap.extents] == [(0, MiB), (MiB, 3 * MiB)]
        assert snap.memory.read(0x10000, 16) == b"VQTRACE-MARKER!!"
        # a read across the two PT_LOAD segments
        assert snap.memory.read(MiB - 8, 16) == bytes(guest.ram[MiB - 8:MiB + 8])
        assert summarize_notes(snap.notes)["cpus"] == 3


def test_raw_file_needs_base(tmp_path, guest):
    path = guest.write_raw(tmp_path / "ram.bin")
    with pytest.raises(UsageError, match="--base"):
        open_snapshot(path)
    with open_snapshot(path, base=0x40000000) as snap:
        assert snap.format == "raw"
        assert snap.memory.read(0x40010000, 16) == b"VQTRACE-MARKER!!"
        assert not snap.memory.contains(0x10000)


@pytest.mark.parametrize("kind", ["gzip", "zstd", "xz", "bzip2"])
def test_compressed_copies_read_transparently(tmp_path, guest, kind, cache):
    raw = guest.write_elf(tmp_path / "core.elf").read_bytes()
    compress = {"gzip": gzip.compress, "zstd": zstandard.ZstdCompressor().compress, "xz": lzma.compress,
                "bzip2": bz2.compress}[kind]
    path = tmp_path / "core.snapshot"  # the name says nothing: the magic decides
    path.write_bytes(compress(raw))
    with open_snapshot(path) as snap:
        assert snap.format == "elf" and snap.compression == kind
        assert snap.memory.read(0x10000, 16) == b"VQTRACE-MARKER!!"
        assert snap.data_path.startswith(str(cache))
    cached = cache_path(path)
    assert cached.stat().st_size == len(raw)
    mtime = cached.stat().st_mtime_ns
    with open_snapshot(path) as snap:  # decompressed once: the second open reuses the copy
        assert snap.memory.read(0x10000, 16) == b"VQTRACE-MARKER!!"
    assert cached.stat().st_mtime_ns == mtime


def test_decompressed_copy_is_sparse(tmp_path, cache):
    """Zero runs become holes: a mostly-empty guest costs little disk (and scan skips the holes)."""
    data = bytearray(64 * MiB)
    data[5 * MiB:5 * MiB + 4096] = os.urandom(4096)
    path = tmp_path / "ram.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(bytes(data)))
    with open_snapshot(path, base=0) as snap:
        assert snap.memory.read(5 * MiB, 4096) == bytes(data[5 * MiB:5 * MiB + 4096])
        assert snap.total_size == 64 * MiB
    assert os.stat(cache_path(path)).st_blocks * 512 < 4 * MiB


def test_multi_frame_zstd_and_multi_member_gzip(tmp_path):
    a, b = os.urandom(100_000), bytes(300_000)
    for name, blob in (("x.zst", zstandard.ZstdCompressor().compress(a) + zstandard.ZstdCompressor().compress(b)),
                       ("x.gz", gzip.compress(a) + gzip.compress(b))):
        (tmp_path / name).write_bytes(blob)
        with open_snapshot(tmp_path / name, base=0) as snap:
            assert snap.total_size == 400_000
            assert snap.memory.read(99_990, 20) == a[-10:] + bytes(10)


@pytest.mark.parametrize("case", ["truncated-gzip", "truncated-zstd", "corrupt-zstd", "zstd-trailing-garbage",
                                  "truncated-elf", "elf-bad-phdrs", "empty", "garbage", "lz4", "directory",
                                  "missing", "overlap"])
def test_bad_files_one_line_exit_2(tmp_path, case, cache):
    small = SyntheticGuest(256 << 10)
    small.ram[:4] = b"ram!"
    elf = small.write_elf(tmp_path / "good.elf").read_bytes()
    path = tmp_path / "bad"
    if case == "truncated-gzip":
        path.write_bytes(gzip.compress(elf)[:-100])
    elif case == "truncated-zstd":
        path.write_bytes(zstandard.ZstdCompressor().compress(elf)[:-100])
    elif case == "corrupt-zstd":
        blob = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(elf))  # as the zstd tool writes
        blob[len(blob) // 2:len(blob) // 2 + 64] = os.urandom(64)
        path.write_bytes(bytes(blob))
    elif case == "zstd-trailing-garbage":
        path.write_bytes(zstandard.ZstdCompressor().compress(elf) + b"garbage!" * 10)
    elif case == "truncated-elf":
        path.write_bytes(elf[:len(elf) // 2])
    elif case == "elf-bad-phdrs":
        path.write_bytes(elf[:32] + struct.pack("<Q", 1 << 40) + elf[40:])  # e_phoff far beyond the end
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "garbage":
        path.write_bytes(os.urandom(10_000))
    elif case == "lz4":
        path.write_bytes(b"\x04\x22\x4d\x18" + os.urandom(100))
    elif case == "directory":
        path.mkdir()
    elif case == "overlap":
        reader = buffer_reader(bytes(8192))
        write_elf_file(path, [(0x1000, 8192, reader), (0x2000, 8192, reader)])
    command = "scan" if case in ("garbage", "truncated-zstd") else "info"  # both open snapshots the same way
    result = run_vqtrace("dump", command, str(path))
    assert result.returncode == 2, (case, result.stdout, result.stderr)
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vqtrace dump: error:"), (case, lines)
    assert "Traceback" not in result.stderr.decode()
    assert not list(cache.glob("*.part*")), "a failed decompression left a partial cache file"
    assert not list(cache.glob("*")) or case not in ("truncated-gzip", "truncated-zstd", "corrupt-zstd")


def test_info_cli_text_and_json(tmp_path, guest):
    path = guest.write_elf(tmp_path / "core.elf", cpus=2, split_at=MiB)
    text = run_vqtrace("dump", "info", str(path))
    assert text.returncode == 0, text.stderr
    out = text.stdout.decode()
    assert "ELF core, 2 ranges, 4.0 MiB" in out
    assert "0x000000000000-0x0000000fffff" in out and "CPUs: 2 (NT_PRSTATUS notes)" in out
    doc = json.loads(run_vqtrace("dump", "info", str(path), "-T", "json").stdout)
    assert doc["format"] == "elf" and doc["cpus"] == 2 and doc["total_size"] == 4 * MiB
    assert [(r["start"], r["end"]) for r in doc["ranges"]] == [(0, MiB), (MiB, 4 * MiB)]
    assert doc["notes"] == {"CORE NT_PRSTATUS": 2}


def test_elf_notes_parse_bounds():
    notes = [prstatus_note(1), prstatus_note(2)]
    data = encode_notes(notes)
    assert [n.desc for n in parse_notes(data)] == [n.desc for n in notes]
    with pytest.raises(GuestMemoryError, match="runs past"):
        parse_notes(data[:-8])


# -- kdump (makedumpfile's format, as QEMU writes it with format kdump-zlib) ------------------------

def _kdump(ram: bytes, *, flattened: bool, block: int = 4096, skip_pages: tuple[int, ...] = ()) -> bytes:
    """A kdump file of ``ram`` (pages zlib-compressed) in the layout QEMU's dump/dump.c writes."""
    pages = len(ram) // block
    header = bytearray(block)
    header[:8] = b"KDUMP   "
    struct.pack_into("<I", header, 8, 6)
    header[12 + 4 * 65:12 + 4 * 65 + 6] = b"x86_64"
    bitmap_blocks = 2 * max(1, -(-pages // (8 * block)))
    struct.pack_into("<10I", header, 424, 0, block, 1, bitmap_blocks, pages, 0, 0, 0, 0, 1)
    note = encode_notes([prstatus_note(1)])
    data_start = (1 + 1 + bitmap_blocks) * block
    sub = bytearray(block)
    ram_bits = bytearray(bitmap_blocks * block // 2)
    for pfn in range(pages):
        ram_bits[pfn // 8] |= 1 << (pfn % 8)
    dumped_bits = bytearray(ram_bits)
    for pfn in skip_pages:
        dumped_bits[pfn // 8] &= ~(1 << (pfn % 8))
    dumped = [pfn for pfn in range(pages) if pfn not in skip_pages]
    descs_at = data_start
    page_at = descs_at + 24 * len(dumped)
    note_at = page_at
    page_at += len(note)
    descs, blobs = bytearray(), bytearray()
    for pfn in dumped:
        page = ram[pfn * block:(pfn + 1) * block]
        packed = zlib.compress(page)
        flags = 1
        if len(packed) >= block:
            packed, flags = page, 0
        descs += struct.pack("<QIIQ", page_at + len(blobs), len(packed), flags, 0)
        blobs += packed
    struct.pack_into("<QIIQQQQQQQQQQQ", sub, 0, 0, 1, 0, 0, 0, 0, 0, note_at, len(note), 0, 0, 0, pages, pages)
    body = bytes(header) + bytes(sub) + bytes(ram_bits) + bytes(dumped_bits) + bytes(descs) + note + bytes(blobs)
    if not flattened:
        return body
    out = bytearray(b"makedumpfile".ljust(16, b"\0") + struct.pack(">qq", 1, 1))
    out += bytes(4096 - len(out))
    for at in range(0, len(body), 10_000):  # records of any size, in order
        chunk = body[at:at + 10_000]
        out += struct.pack(">qq", at, len(chunk)) + chunk
    return bytes(out + struct.pack(">qq", -1, -1))


@pytest.mark.parametrize("flattened", [False, True])
def test_kdump_reads_pages_on_demand(tmp_path, guest, flattened):
    path = tmp_path / "guest.kdump"
    path.write_bytes(_kdump(bytes(guest.ram), flattened=flattened, skip_pages=(3,)))
    with open_snapshot(path) as snap:
        assert snap.format == "kdump" and snap.details["flattened"] is flattened
        assert snap.total_size == len(guest.ram)
        assert snap.memory.read(0x10000, 16) == b"VQTRACE-MARKER!!"
        assert snap.memory.read(3 * 4096, 4096) == bytes(4096)  # not dumped: reads as zero
        assert snap.memory.read(0x100000, 4096) == bytes(guest.ram[0x100000:0x101000])
        assert snap.memory.loaded_bytes() < 64 * 4096  # only what was looked at was decompressed
        assert summarize_notes(snap.notes)["cpus"] == 1


def test_kdump_truncated_is_one_line(tmp_path, guest):
    path = tmp_path / "guest.kdump"
    path.write_bytes(_kdump(bytes(guest.ram), flattened=True)[:50_000])
    result = run_vqtrace("dump", "info", str(path))
    assert result.returncode == 2
    assert b"truncated flattened kdump" in result.stderr
