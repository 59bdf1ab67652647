"""kdump-compressed dumps (makedumpfile's format; QEMU ``dump-guest-memory`` with ``format: kdump-zlib``).

Layout (makedumpfile's diskdump format, as QEMU writes it in ``dump/dump.c``),
in blocks of ``block_size`` bytes (the guest page size):

- block 0: ``disk_dump_header`` (``"KDUMP   "``, version, utsname, ``block_size``,
  ``sub_hdr_size``, ``bitmap_blocks``, ``max_mapnr``, ``nr_cpus``);
- block 1: ``kdump_sub_header`` (``offset_note``/``note_size``: the ELF notes;
  version 6 adds the 64-bit ``max_mapnr_64``);
- ``bitmap_blocks`` blocks: two bitmaps of ``max_mapnr`` bits (LSB first), the
  first marking the page frames that are RAM, the second those that were dumped;
- one ``page_desc`` (offset, size, flags, page_flags: 24 bytes) per dumped page, in
  frame order, then the page data, each page compressed (zlib, lzo, snappy or
  zstd, per its flags) or stored.

QEMU 7.2 writes the *flattened* variant (``makedumpfile`` header, then records of
big-endian ``{offset, size}`` followed by data, ending with offset -1), which is
reassembled once into a sparse cache file. Pages are decompressed on demand
(:mod:`.lazy`): only the pages looked at are decompressed.
"""

from __future__ import annotations

import contextlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import GuestMemoryError
from ..memory import Region
from .compress import cache_path
from .elfnotes import ElfNote, parse_notes
from .lazy import LazyMemory
from .progress import Progress

if TYPE_CHECKING:
    import numpy as np

KDUMP_SIGNATURES = (b"KDUMP   ", b"DISKDUMP")
FLAT_SIGNATURE = b"makedumpfile"
FLAT_HEADER_SIZE = 4096  # MAX_SIZE_MDF_HEADER
_FLAT_RECORD = struct.Struct(">qq")  # offset, buf_size: big-endian in the flattened format

DUMP_DH_COMPRESSED_ZLIB = 0x1
DUMP_DH_COMPRESSED_LZO = 0x2
DUMP_DH_COMPRESSED_SNAPPY = 0x4
DUMP_DH_COMPRESSED_INCOMPLETE = 0x8
DUMP_DH_EXCLUDED_VMEMMAP = 0x10
DUMP_DH_COMPRESSED_ZSTD = 0x20

# disk_dump_header (64-bit): signature[8], header_version, utsname (6 x 65), timestamp (padded to 22), then:
_UTSNAME_AT, _UTSNAME_FIELD = 12, 65
_HEADER_TAIL = struct.Struct("<10I")  # status, block_size, sub_hdr_size, bitmap_blocks, max_mapnr, ...
_HEADER_TAIL_AT = 424
# kdump_sub_header (64-bit)
_SUB_HEADER = struct.Struct("<QIIQQQQQQQQQQQ")
_PAGE_DESC = struct.Struct("<QIIQ")  # offset, size, flags, page_flags
MAX_BLOCK_SIZE = 1 << 20
MAX_NOTES = 64 << 20


@dataclass
class KdumpHeader:
    version: int
    release: str
    machine: str
    block_size: int
    sub_hdr_size: int
    bitmap_blocks: int
    max_mapnr: int
    nr_cpus: int
    phys_base: int
    offset_note: int
    note_size: int

    @property
    def bitmap_at(self) -> int:
        return (1 + self.sub_hdr_size) * self.block_size

    @property
    def bitmap_bytes(self) -> int:
        return self.bitmap_blocks * self.block_size // 2

    @property
    def descriptors_at(self) -> int:
        return (1 + self.sub_hdr_size + self.bitmap_blocks) * self.block_size


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def read_header(file: Any, size: int, name: str) -> KdumpHeader:
    head = file.read(_HEADER_TAIL_AT + _HEADER_TAIL.size)
    if len(head) < _HEADER_TAIL_AT + _HEADER_TAIL.size:
        raise GuestMemoryError(f"{name}: truncated kdump header ({len(head)} bytes)")
    version = struct.unpack_from("<I", head, 8)[0]
    uts = [head[_UTSNAME_AT + i * _UTSNAME_FIELD:_UTSNAME_AT + (i + 1) * _UTSNAME_FIELD] for i in range(6)]
    _, block_size, sub_hdr_size, bitmap_blocks, max_mapnr, _, _, _, _, nr_cpus = _HEADER_TAIL.unpack_from(
        head, _HEADER_TAIL_AT)
    if block_size < 512 or block_size > MAX_BLOCK_SIZE or block_size & (block_size - 1):
        raise GuestMemoryError(f"{name}: implausible kdump block size {block_size}")
    if not 1 <= sub_hdr_size <= 1024 or bitmap_blocks == 0 or bitmap_blocks % 2:
        raise GuestMemoryError(f"{name}: implausible kdump header (sub header {sub_hdr_size} blocks, "
                               f"bitmap {bitmap_blocks} blocks)")
    file.seek(block_size)
    sub = file.read(_SUB_HEADER.size)
    if len(sub) < _SUB_HEADER.size:
        raise GuestMemoryError(f"{name}: truncated kdump sub-header")
    fields = _SUB_HEADER.unpack(sub)
    phys_base, offset_note, note_size = fields[0], fields[7], fields[8]
    if version >= 6 and fields[13]:
        max_mapnr = fields[13]
    header = KdumpHeader(version, _text(uts[2]), _text(uts[4]), block_size, sub_hdr_size, bitmap_blocks,
                         max_mapnr, nr_cpus, phys_base, offset_note if version >= 4 else 0,
                         note_size if version >= 4 else 0)
    if header.bitmap_bytes * 8 < max_mapnr:
        raise GuestMemoryError(f"{name}: the kdump bitmap ({header.bitmap_bytes} bytes) is too small for "
                               f"{max_mapnr} page frames")
    if header.descriptors_at > size:
        raise GuestMemoryError(f"{name}: truncated kdump file (bitmaps end at {header.descriptors_at}, "
                               f"the file has {size} bytes)")
    return header


class KdumpMemory(LazyMemory):
    """The RAM of a kdump file; pages decompressed when first read."""

    def __init__(self, path: Path, header: KdumpHeader, dumped_bitmap: np.ndarray, name: str) -> None:
        import numpy as np

        super().__init__()
        self.header = header
        self.name = name
        self._file = open(path, "rb")  # noqa: SIM115 - closed with the memory
        self._size = os.fstat(self._file.fileno()).st_size
        words = np.zeros((len(dumped_bitmap) + 7) // 8 * 8, dtype=np.uint8)
        words[:len(dumped_bitmap)] = dumped_bitmap
        self._dumped = words.view("<u8")
        counts = np.unpackbits(words).reshape(-1, 64).sum(axis=1, dtype=np.int64)
        self._rank = np.concatenate(([0], np.cumsum(counts)))  # dumped pages before each 64-frame word
        self.compressions: set[str] = set()

    def _rank_of(self, pfn: int) -> int:
        word, bit = divmod(pfn, 64)
        return int(self._rank[word]) + (int(self._dumped[word]) & ((1 << bit) - 1)).bit_count()

    def _is_dumped(self, pfn: int) -> bool:
        word, bit = divmod(pfn, 64)
        return word < len(self._dumped) and bool(int(self._dumped[word]) >> bit & 1)

    def load(self, region: Region, offset: int, into: memoryview) -> None:
        block = self.header.block_size
        addr = region.guest_addr + offset
        done = 0
        while done < len(into):
            pfn, within = divmod(addr + done, block)
            take = min(block - within, len(into) - done)
            page = self._page(pfn)
            into[done:done + take] = page[within:within + take] if page else bytes(take)
            done += take

    def _page(self, pfn: int) -> bytes:
        if not self._is_dumped(pfn):
            return b""
        block = self.header.block_size
        self._file.seek(self.header.descriptors_at + self._rank_of(pfn) * _PAGE_DESC.size)
        raw = self._file.read(_PAGE_DESC.size)
        if len(raw) < _PAGE_DESC.size:
            raise GuestMemoryError(f"{self.name}: truncated kdump file (no page descriptor for frame {pfn})",
                                   address=pfn * block)
        offset, size, flags, _ = _PAGE_DESC.unpack(raw)
        if size > block or offset + size > self._size:
            raise GuestMemoryError(f"{self.name}: bad kdump page descriptor for frame {pfn} ({size} bytes at "
                                   f"offset {offset}; the file has {self._size})", address=pfn * block)
        self._file.seek(offset)
        data = self._file.read(size)
        try:
            if flags & DUMP_DH_COMPRESSED_ZLIB:
                self.compressions.add("zlib")
                data = zlib.decompress(data)
            elif flags & DUMP_DH_COMPRESSED_ZSTD:
                import zstandard

                self.compressions.add("zstd")
                data = zstandard.ZstdDecompressor().decompress(data, max_output_size=block)
            elif flags & (DUMP_DH_COMPRESSED_LZO | DUMP_DH_COMPRESSED_SNAPPY):
                kind = "lzo" if flags & DUMP_DH_COMPRESSED_LZO else "snappy"
                raise GuestMemoryError(f"{self.name}: {kind}-compressed kdump pages are not supported; "
                                       f"dump with format kdump-zlib or elf", address=pfn * block)
        except zlib.error as err:
            raise GuestMemoryError(f"{self.name}: corrupt page for frame {pfn} ({err})", address=pfn * block) from None
        except GuestMemoryError:
            raise
        except Exception as err:  # zstandard.ZstdError
            raise GuestMemoryError(f"{self.name}: corrupt page for frame {pfn} ({err})", address=pfn * block) from None
        if len(data) != block:
            raise GuestMemoryError(f"{self.name}: the page for frame {pfn} holds {len(data)} bytes, not {block}",
                                   address=pfn * block)
        return data

    def close(self) -> None:
        super().close()
        self._file.close()


def _runs(bits: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """(first, count) of each run of set bits among the first ``limit``."""
    import numpy as np

    flags = np.unpackbits(bits, bitorder="little")[:limit].astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate(([0], flags, [0]))))
    return [(int(start), int(stop - start)) for start, stop in zip(edges[::2], edges[1::2], strict=True)]


def open_kdump(path: Path, source: str) -> tuple[KdumpMemory, list[tuple[int, int]], list[ElfNote], dict[str, object]]:
    """The memory of a kdump file: (memory, [(guest address, size)], notes, details for `dump info`)."""
    import numpy as np

    name = source
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            header = read_header(file, size, name)
            file.seek(header.bitmap_at)
            ram_bits = np.frombuffer(file.read(header.bitmap_bytes), dtype=np.uint8)
            dumped_bits = np.frombuffer(file.read(header.bitmap_bytes), dtype=np.uint8)
            notes: list[ElfNote] = []
            if header.note_size and header.offset_note + header.note_size <= size and header.note_size < MAX_NOTES:
                file.seek(header.offset_note)
                notes = parse_notes(file.read(header.note_size), name, header.offset_note)
    except OSError as err:
        raise GuestMemoryError(f"cannot read {name}: {err.strerror}") from None
    if len(dumped_bits) < header.bitmap_bytes:
        raise GuestMemoryError(f"{name}: truncated kdump bitmap")
    memory = KdumpMemory(path, header, dumped_bits, name)
    block = header.block_size
    ranges = []
    try:
        for first, count in _runs(ram_bits, header.max_mapnr):
            memory.add_lazy(first * block, count * block, memory.load, name=f"pfn {first:#x}+{count:#x}")
            ranges.append((first * block, count * block))
    except BaseException:
        memory.close()
        raise
    if not ranges:
        memory.close()
        raise GuestMemoryError(f"{name}: the kdump bitmap marks no page as RAM")
    details: dict[str, object] = {
        "kdump_version": header.version, "release": header.release, "machine": header.machine,
        "block_size": block, "max_mapnr": header.max_mapnr, "nr_cpus": header.nr_cpus,
        "dumped_pages": int(memory._rank[-1]),
    }
    return memory, ranges, notes, details


def reassemble_flat(path: str | os.PathLike[str]) -> Path:
    """The kdump file a flattened makedumpfile stream describes, rebuilt once in the cache."""
    target = cache_path(path)
    target = target.with_name(target.name + ".kdump")
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.part{os.getpid()}")
    name = str(path)
    try:
        with open(path, "rb") as src, open(partial, "wb") as dst:
            size = os.fstat(src.fileno()).st_size
            src.seek(FLAT_HEADER_SIZE)
            with Progress(f"reassembling {Path(name).name}", size) as bar:
                while True:
                    record = src.read(_FLAT_RECORD.size)
                    if len(record) < _FLAT_RECORD.size:
                        raise GuestMemoryError(f"{name}: truncated flattened kdump (no end record)")
                    offset, length = _FLAT_RECORD.unpack(record)
                    if offset == -1:
                        break
                    if offset < 0 or length < 0:
                        raise GuestMemoryError(f"{name}: bad flattened kdump record at offset "
                                               f"{src.tell() - _FLAT_RECORD.size} ({length} bytes to {offset})")
                    if src.tell() + length > size:
                        raise GuestMemoryError(f"{name}: truncated flattened kdump (the record at offset "
                                               f"{src.tell() - _FLAT_RECORD.size} runs past the end)")
                    dst.seek(offset)
                    while length:
                        chunk = src.read(min(length, 1 << 20))
                        dst.write(chunk)
                        length -= len(chunk)
                    bar.update(src.tell())
        os.replace(partial, target)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise GuestMemoryError(f"cannot reassemble {name}: {err.strerror or err}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise
    return target

