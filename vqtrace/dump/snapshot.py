"""Open a guest memory snapshot: an ELF core, a kdump file, raw RAM, compressed or not, or a live QEMU.

:func:`open_snapshot` detects the format from the first bytes (never the file
name): a gzip/zstd/xz/bzip2 file is decompressed once into the cache (see
:mod:`.compress`) and the result detected again; an ELF file maps its PT_LOAD
segments at their guest-physical ``p_paddr`` (QEMU ``dump-guest-memory``,
``virsh dump --memory-only``); a kdump-compressed file (``dump-guest-memory -z``)
is read page by page on demand; anything else is raw RAM, which needs
``base`` (``--base ADDR``) so that a wrong file is not silently taken for RAM.
Everything is mapped, never read whole: a snapshot costs what is looked at.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GuestMemoryError, UsageError
from ..memory import ELF_MAGIC, PT_LOAD, GuestMemory, elf_segments
from .compress import compression_of, decompressed
from .elfnotes import ElfNote, read_notes
from .kdump import FLAT_SIGNATURE, KDUMP_SIGNATURES, open_kdump, reassemble_flat


@dataclass(frozen=True)
class Extent:
    """A guest-physical range and where its bytes are: a file offset, or a host address (``--pid``)."""

    guest_addr: int
    size: int
    offset: int  # in ``Snapshot.data_path``; the host virtual address for a process
    name: str = ""

    @property
    def end(self) -> int:
        return self.guest_addr + self.size


@dataclass
class Snapshot:
    """Guest memory and what it came from."""

    source: str  # what the user named: a path, or "pid N"
    format: str  # "elf", "kdump", "raw", "process"
    memory: GuestMemory
    extents: list[Extent]
    compression: str | None = None  # "gzip", "zstd", ... when the source was compressed
    data_path: str | None = None  # the file that is mapped (the cache file when compressed)
    notes: list[ElfNote] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)  # format-specific facts for `dump info`

    @property
    def total_size(self) -> int:
        return sum(extent.size for extent in self.extents)

    @property
    def file_backed(self) -> bool:
        """Whether extents are plain byte ranges of ``data_path`` (so holes can be skipped)."""
        return self.format in ("elf", "raw") and self.data_path is not None

    def close(self) -> None:
        self.memory.close()

    def __enter__(self) -> Snapshot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _head(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read(64)
    except IsADirectoryError:
        raise GuestMemoryError(f"{path} is a directory, not a snapshot") from None
    except OSError as err:
        raise GuestMemoryError(f"cannot open {path}: {err.strerror}") from None


def open_snapshot(path: str | os.PathLike[str], *, base: int | None = None) -> Snapshot:
    """Open the snapshot at ``path``; ``base`` maps it as raw RAM at that guest-physical address."""
    source = str(path)
    head = _head(path)
    if not head:
        raise GuestMemoryError(f"{source} is empty")
    compression = compression_of(head)
    data_path = Path(path)
    if compression is not None:
        data_path = decompressed(path, compression)
        head = _head(data_path)
        if not head:
            raise GuestMemoryError(f"{source} decompresses to nothing")
    flattened = False
    if base is None and head.startswith(FLAT_SIGNATURE):
        data_path = reassemble_flat(data_path)
        head = _head(data_path)
        flattened = True
    if base is not None:
        snapshot = _open_raw(data_path, base, source)
    elif head.startswith(ELF_MAGIC):
        snapshot = _open_elf(data_path, source)
    elif any(head.startswith(signature) for signature in KDUMP_SIGNATURES):
        memory, ranges, notes, details = open_kdump(data_path, source)
        details["flattened"] = flattened
        extents = [Extent(start, size, start, "RAM") for start, size in ranges]
        snapshot = Snapshot(source, "kdump", memory, extents, data_path=str(data_path), notes=notes,
                            details=details)
    else:
        what = f"{compression}-compressed data" if compression else "file"
        raise UsageError(f"{source}: not an ELF core or kdump file ({what} starts with {head[:8].hex()}); "
                         f"for a raw RAM file give --base ADDR (e.g. --base 0)")
    snapshot.compression = compression
    return snapshot


def _open_raw(path: Path, base: int, source: str) -> Snapshot:
    if base < 0:
        raise UsageError(f"--base must not be negative ({base})")
    size = os.stat(path).st_size
    if size == 0:
        raise GuestMemoryError(f"{source} holds no bytes")
    memory = GuestMemory()
    memory.add_file(path, base, name=Path(source).name)
    return Snapshot(source, "raw", memory, [Extent(base, size, 0, "raw")], data_path=str(path))


def _open_elf(path: Path, source: str) -> Snapshot:
    segments = elf_segments(path)
    memory = GuestMemory()
    extents = []
    try:
        for index, segment in enumerate(segments):
            if segment.type != PT_LOAD or not segment.filesz:
                continue
            memory.add_file(path, segment.paddr, offset=segment.offset, size=segment.filesz,
                            name=f"PT_LOAD[{index}]")
            extents.append(Extent(segment.paddr, segment.filesz, segment.offset, f"PT_LOAD[{index}]"))
    except GuestMemoryError as err:
        memory.close()
        if "overlaps" in str(err):
            raise GuestMemoryError(f"{source}: PT_LOAD segments overlap in guest-physical memory ({err}); "
                                   f"a dump taken with paging=true? Use dump-guest-memory with paging=false") from None
        raise
    if not extents:
        memory.close()
        raise GuestMemoryError(f"{source}: the ELF file has no PT_LOAD segment with data")
    notes = read_notes(path, segments)
    return Snapshot(source, "elf", memory, extents, data_path=str(path), notes=notes,
                    details={"segments": len(segments)})
