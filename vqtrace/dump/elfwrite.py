"""Write guest memory as an ELF core in the shape QEMU's dump-guest-memory gives (paging=false).

ELF64 little-endian, ``ET_CORE``; one PT_NOTE segment first (the notes given,
e.g. the ``CORE``/``NT_PRSTATUS`` notes of each CPU), then one PT_LOAD per
guest-physical range with ``p_paddr`` = the guest-physical address (``p_vaddr``
0, as QEMU writes without paging). ``vqtrace dump save`` uses it to keep a copy
of a running guest's RAM (or of any snapshot) as a plain ELF file; tests use it
to build snapshots. Data is copied in bounded chunks and zero runs are left as
holes, so a big, mostly empty guest writes quickly and stays sparse.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from typing import BinaryIO

from ..memory import PT_LOAD, PT_NOTE
from .elfnotes import ElfNote

ET_CORE = 4
EM_X86_64 = 62
EV_CURRENT = 1
PF_R, PF_W, PF_X = 4, 2, 1
_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR = struct.Struct("<IIQQQQQQ")
_HOLE_BLOCK = 64 << 10
_ZERO = bytes(_HOLE_BLOCK)
COPY_CHUNK = 4 << 20

#: ``read(offset, length) -> bytes`` of one range, relative to its start.
Reader = Callable[[int, int], bytes]


def encode_notes(notes: Iterable[ElfNote]) -> bytes:
    """The bytes of a PT_NOTE segment holding ``notes`` (4-byte aligned name and descriptor)."""
    out = bytearray()
    for note in notes:
        name = note.name.encode() + b"\0"
        out += struct.pack("<III", len(name), len(note.desc), note.type)
        out += name + bytes(-len(name) % 4)
        out += note.desc + bytes(-len(note.desc) % 4)
    return bytes(out)


def prstatus_note(pid: int = 1, size: int = 336) -> ElfNote:
    """An x86-64 ``NT_PRSTATUS`` note (``struct elf_prstatus``, 336 bytes) with ``pr_pid`` set, registers zero."""
    desc = bytearray(size)
    struct.pack_into("<I", desc, 32, pid)  # pr_pid follows pr_info (12), pr_cursig (2 + 2 pad), sigpend, sighold
    return ElfNote("CORE", 1, bytes(desc))


def write_elf_core(out: BinaryIO, ranges: list[tuple[int, int, Reader]], notes: Iterable[ElfNote] = (), *,
                   machine: int = EM_X86_64, progress: Callable[[int], None] | None = None) -> int:
    """Write an ELF core of ``ranges`` ((guest address, size, reader)) to ``out``; the bytes written."""
    note_bytes = encode_notes(notes)
    phnum = 1 + len(ranges)
    table_end = _HEADER.size + phnum * _PHDR.size
    offset = table_end + len(note_bytes)
    offset += -offset % 4096  # page-align the memory, as QEMU does not but mmap likes
    phdrs = [_PHDR.pack(PT_NOTE, 0, table_end, 0, 0, len(note_bytes), len(note_bytes), 1)]
    placed = []
    for guest_addr, size, reader in ranges:
        phdrs.append(_PHDR.pack(PT_LOAD, PF_R | PF_W | PF_X, offset, 0, guest_addr, size, size, 0))
        placed.append((offset, size, reader))
        offset += size
    ident = b"\x7fELF" + bytes([2, 1, EV_CURRENT]) + bytes(9)
    out.write(_HEADER.pack(ident, ET_CORE, machine, EV_CURRENT, 0, _HEADER.size, 0, 0, _HEADER.size, _PHDR.size,
                           phnum, 0, 0, 0))
    out.write(b"".join(phdrs))
    out.write(note_bytes)
    done = 0
    for file_offset, size, reader in placed:
        at = 0
        while at < size:
            take = min(COPY_CHUNK, size - at)
            _write_sparse(out, file_offset + at, reader(at, take))
            at += take
            done += take
            if progress is not None:
                progress(done)
    out.truncate(offset)
    return offset


def _write_sparse(out: BinaryIO, at: int, data: bytes) -> None:
    for start in range(0, len(data), _HOLE_BLOCK):
        block = data[start:start + _HOLE_BLOCK]
        if len(block) == _HOLE_BLOCK and block == _ZERO:
            continue
        out.seek(at + start)
        out.write(block)


def write_elf_file(path: str | os.PathLike[str], ranges: list[tuple[int, int, Reader]],
                   notes: Iterable[ElfNote] = (), **kwargs: object) -> int:
    """:func:`write_elf_core` into a new file at ``path``."""
    with open(path, "wb") as out:
        return write_elf_core(out, ranges, notes, **kwargs)  # type: ignore[arg-type]


def buffer_reader(data: bytes | bytearray | memoryview) -> Reader:
    """A :data:`Reader` over an in-memory buffer."""
    view = memoryview(data)
    return lambda offset, length: bytes(view[offset:offset + length])
