"""GuestMemory: guest-physical address ranges mapped to bytes (DESIGN.md, "GuestMemory").

Every read is bounds-checked: a range that runs into an unmapped hole or past the
end raises :class:`~vqtrace.errors.GuestMemoryError` naming the address. A read
may span two adjacent regions. Backings: in-process buffers, an ``mmap`` of a file
descriptor at an offset (read-only unless the caller is a device that must write),
a raw RAM file at a base address, and the PT_LOAD segments of an ELF core as QEMU's
``dump-guest-memory`` writes it (guest-physical addresses in ``p_paddr``).

Address spaces are explicit. A region may carry the front-end's virtual address of
its first byte (``user_addr``, vhost-user "Memory region description"): vring
addresses in VHOST_USER_SET_VRING_ADDR are in that space, descriptors hold
guest-physical addresses. :meth:`GuestMemory.user_to_guest` and
:meth:`GuestMemory.guest_to_user` translate per region.
"""

from __future__ import annotations

import bisect
import contextlib
import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import GuestMemoryError

PAGE_SIZE = mmap.PAGESIZE

# ELF (System V ABI): identification, program header types.
ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1
PT_LOAD = 1
PT_NOTE = 4
_ELF64_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
_ELF64_PHDR = struct.Struct("<IIQQQQQQ")  # type, flags, offset, vaddr, paddr, filesz, memsz, align
_ELF32_HEADER = struct.Struct("<16sHHIIIIIHHHHHH")
_ELF32_PHDR = struct.Struct("<IIIIIIII")  # type, offset, vaddr, paddr, filesz, memsz, flags, align
MAX_ELF_SEGMENTS = 4096  # a QEMU dump has one PT_LOAD per RAM block; bounds a hostile file


@dataclass(eq=False)
class Region:
    """One contiguous guest-physical range and the bytes behind it."""

    guest_addr: int
    size: int
    data: memoryview  # exactly ``size`` bytes; read-only unless ``writable``
    user_addr: int | None = None  # front-end virtual address of the first byte (vhost-user)
    name: str = ""
    _owner: Any = field(default=None, repr=False)  # the mmap to close, if any

    @property
    def end(self) -> int:
        """One past the last guest-physical address."""
        return self.guest_addr + self.size

    @property
    def writable(self) -> bool:
        return not self.data.readonly

    def holds(self, addr: int, length: int = 1) -> bool:
        return self.guest_addr <= addr and addr + length <= self.end

    def describe(self) -> str:
        text = f"0x{self.guest_addr:x}-0x{self.end - 1:x} ({self.size} bytes)"
        if self.user_addr is not None:
            text += f" user 0x{self.user_addr:x}"
        return f"{self.name} {text}" if self.name else text


class GuestMemory:
    """Guest-physical ranges mapped to bytes, every access bounds-checked."""

    def __init__(self, regions: Iterable[Region] = ()) -> None:
        self._regions: list[Region] = []
        self._starts: list[int] = []
        self._generation = 0
        for region in regions:
            self.add(region)

    # -- building ------------------------------------------------------------------------

    def add(self, region: Region) -> Region:
        """Add ``region``; GuestMemoryError when it overlaps one already mapped."""
        if region.size <= 0 or len(region.data) != region.size:
            raise GuestMemoryError(f"region of {region.size} bytes backed by {len(region.data)} bytes",
                                   address=region.guest_addr)
        if region.guest_addr < 0 or region.end > 1 << 64:
            raise GuestMemoryError("region outside the 64-bit address space", address=region.guest_addr)
        for other in self._regions:
            if region.guest_addr < other.end and other.guest_addr < region.end:
                raise GuestMemoryError(f"region {region.describe()} overlaps {other.describe()}",
                                       address=region.guest_addr)
        at = bisect.bisect(self._starts, region.guest_addr)
        self._regions.insert(at, region)
        self._starts.insert(at, region.guest_addr)
        self._generation += 1
        return region

    def add_buffer(self, guest_addr: int, buffer: Any, *, user_addr: int | None = None, name: str = "",
                   writable: bool = True) -> Region:
        """Map an in-process buffer (bytes are read-only; a bytearray may be written)."""
        view = memoryview(buffer).cast("B")
        if not writable and not view.readonly:
            view = view.toreadonly()
        return self.add(Region(guest_addr, len(view), view, user_addr, name))

    def add_fd(self, fd: int, guest_addr: int, size: int, offset: int = 0, *, writable: bool = False,
               user_addr: int | None = None, name: str = "") -> Region:
        """Map ``size`` bytes of ``fd`` from ``offset`` (vhost-user: the region's mmap offset).

        The mapping is shared; read-only unless ``writable``. The fd may be closed afterwards.
        """
        if size <= 0 or offset < 0 or fd < 0:
            raise GuestMemoryError(f"bad mapping: fd {fd}, size {size}, offset {offset}", address=guest_addr)
        aligned = offset - offset % PAGE_SIZE
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        try:
            mapping = mmap.mmap(fd, size + offset - aligned, flags=mmap.MAP_SHARED, prot=prot, offset=aligned)
        except (OSError, ValueError, OverflowError) as err:
            raise GuestMemoryError(f"cannot map {size} bytes at offset {offset} of fd {fd}: {err}",
                                   address=guest_addr) from None
        view = memoryview(mapping)[offset - aligned:]
        if not writable:
            view = view.toreadonly()
        return self.add(Region(guest_addr, size, view, user_addr, name, mapping))

    def add_file(self, path: str | os.PathLike[str], guest_addr: int = 0, *, offset: int = 0,
                 size: int | None = None, writable: bool = False, name: str = "") -> Region:
        """Map a raw RAM file (or ``size`` bytes of it from ``offset``) at ``guest_addr``."""
        flags = os.O_RDWR if writable else os.O_RDONLY
        try:
            fd = os.open(path, flags)
        except OSError as err:
            raise GuestMemoryError(f"cannot open {path}: {err.strerror}") from None
        try:
            total = os.fstat(fd).st_size
            if size is None:
                size = total - offset
            if size <= 0 or offset + size > total:
                raise GuestMemoryError(f"{path}: {total} bytes, cannot map {size} bytes from offset {offset}")
            return self.add_fd(fd, guest_addr, size, offset, writable=writable, name=name or str(path))
        finally:
            os.close(fd)

    @classmethod
    def from_bytes(cls, data: Any, guest_addr: int = 0, *, writable: bool = True) -> GuestMemory:
        """One region over an in-process buffer (tests and the test driver)."""
        memory = cls()
        memory.add_buffer(guest_addr, data, writable=writable)
        return memory

    @classmethod
    def from_elf(cls, path: str | os.PathLike[str]) -> GuestMemory:
        """The PT_LOAD segments of an ELF core, at their ``p_paddr`` (QEMU ``dump-guest-memory``)."""
        memory = cls()
        for segment in elf_load_segments(path):
            if segment.filesz:
                memory.add_file(path, segment.paddr, offset=segment.offset, size=segment.filesz,
                                name=f"PT_LOAD@0x{segment.offset:x}")
        if not memory.regions:
            raise GuestMemoryError(f"{path}: the ELF file has no PT_LOAD segment with data")
        return memory

    def remove(self, guest_addr: int) -> Region:
        """Unmap the region that starts at ``guest_addr`` (VHOST_USER_REM_MEM_REG) and return it."""
        at = bisect.bisect_left(self._starts, guest_addr)
        if at == len(self._starts) or self._starts[at] != guest_addr:
            raise GuestMemoryError("no region starts here", address=guest_addr)
        region = self._regions.pop(at)
        del self._starts[at]
        self._generation += 1
        _release(region)
        return region

    def close(self) -> None:
        """Unmap every region."""
        for region in self._regions:
            _release(region)
        self._regions.clear()
        self._starts.clear()
        self._generation += 1

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- looking up ----------------------------------------------------------------------

    @property
    def regions(self) -> list[Region]:
        """The regions in guest-physical order."""
        return list(self._regions)

    def __iter__(self) -> Iterator[Region]:
        return iter(self._regions)

    @property
    def total_size(self) -> int:
        return sum(region.size for region in self._regions)

    def region_at(self, addr: int) -> Region | None:
        """The region holding guest-physical ``addr``, or None."""
        at = bisect.bisect(self._starts, addr) - 1
        if at >= 0 and addr < self._regions[at].end:
            return self._regions[at]
        return None

    def contains(self, addr: int, length: int = 1) -> bool:
        """Whether every byte of ``[addr, addr + length)`` is mapped."""
        if addr < 0 or length < 0:
            return False
        region = self.region_at(addr)
        if region is None:
            return False
        if addr + length <= region.end:
            return True
        try:
            self._spans(addr, length)
        except GuestMemoryError:
            return False
        return True

    @property
    def generation(self) -> int:
        """A number that changes whenever a region is added or removed (for callers' caches)."""
        return self._generation

    def ranges(self) -> list[tuple[int, int]]:
        """The mapped guest-physical ranges as (start, end) pairs, adjacent regions merged."""
        merged: list[tuple[int, int]] = []
        for region in self._regions:
            if merged and merged[-1][1] == region.guest_addr:
                merged[-1] = (merged[-1][0], region.end)
            else:
                merged.append((region.guest_addr, region.end))
        return merged

    def _spans(self, addr: int, length: int) -> list[tuple[Region, int, int]]:
        """(region, offset in region, bytes) pieces covering the range, or GuestMemoryError."""
        if length < 0 or addr < 0:
            raise GuestMemoryError(f"bad range of {length} bytes", address=addr)
        pieces = []
        here, left = addr, length
        while True:
            region = self.region_at(here)
            if region is None:
                what = "unmapped" if here == addr else f"unmapped (the range of {length} bytes crosses a hole)"
                raise GuestMemoryError(what, address=here)
            take = min(left, region.end - here)
            pieces.append((region, here - region.guest_addr, take))
            left -= take
            here += take
            if left == 0:
                return pieces

    # -- reading and writing ---------------------------------------------------------------

    def view(self, addr: int, length: int) -> memoryview:
        """The bytes at ``addr`` without copying when they lie in one region (else a copy)."""
        pieces = self._spans(addr, length)
        if len(pieces) == 1:
            region, offset, take = pieces[0]
            return region.data[offset:offset + take]
        return memoryview(b"".join(region.data[offset:offset + take] for region, offset, take in pieces))

    def read(self, addr: int, length: int) -> bytes:
        """A copy of ``length`` bytes at guest-physical ``addr``."""
        pieces = self._spans(addr, length)
        if len(pieces) == 1:
            region, offset, take = pieces[0]
            return bytes(region.data[offset:offset + take])
        return b"".join(region.data[offset:offset + take] for region, offset, take in pieces)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``addr``; GuestMemoryError when unmapped or read-only."""
        pieces = self._spans(addr, len(data))
        for region, _, _ in pieces:
            if not region.writable:
                raise GuestMemoryError(f"region {region.describe()} is mapped read-only", address=addr)
        done = 0
        for region, offset, take in pieces:
            region.data[offset:offset + take] = data[done:done + take]
            done += take

    def read_u16(self, addr: int) -> int:
        return int.from_bytes(self.view(addr, 2), "little")

    def read_u32(self, addr: int) -> int:
        return int.from_bytes(self.view(addr, 4), "little")

    def read_u64(self, addr: int) -> int:
        return int.from_bytes(self.view(addr, 8), "little")

    def write_u16(self, addr: int, value: int) -> None:
        self.write(addr, value.to_bytes(2, "little"))

    def write_u32(self, addr: int, value: int) -> None:
        self.write(addr, value.to_bytes(4, "little"))

    def write_u64(self, addr: int, value: int) -> None:
        self.write(addr, value.to_bytes(8, "little"))

    # -- address spaces ------------------------------------------------------------------

    def user_to_guest(self, user_addr: int, length: int = 1) -> int:
        """The guest-physical address of front-end virtual ``user_addr`` (vhost-user ring addresses)."""
        for region in self._regions:
            if region.user_addr is not None and region.user_addr <= user_addr \
                    and user_addr + length <= region.user_addr + region.size:
                return region.guest_addr + (user_addr - region.user_addr)
        raise GuestMemoryError(f"front-end address 0x{user_addr:x} (+{length}) is in no memory region",
                               where=f"user address 0x{user_addr:x}")

    def guest_to_user(self, guest_addr: int) -> int:
        """The front-end virtual address of guest-physical ``guest_addr``."""
        region = self.region_at(guest_addr)
        if region is None or region.user_addr is None:
            raise GuestMemoryError("no front-end address for this guest address", address=guest_addr)
        return region.user_addr + (guest_addr - region.guest_addr)


def _release(region: Region) -> None:
    region.data.release()
    if region._owner is not None:
        # A caller may still hold a view: the mapping then goes when that view does.
        with contextlib.suppress(BufferError):
            region._owner.close()


@dataclass(frozen=True)
class ElfSegment:
    """One program header of an ELF file."""

    type: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int


def elf_segments(path: str | os.PathLike[str]) -> list[ElfSegment]:
    """Every program header of the ELF file at ``path`` (32- or 64-bit little-endian)."""
    name = str(path)
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            ident = file.read(64)
            if len(ident) < 16 or ident[:4] != ELF_MAGIC:
                raise GuestMemoryError(f"{name}: not an ELF file (no \\x7fELF magic)")
            if ident[5] != ELFDATA2LSB:
                raise GuestMemoryError(f"{name}: big-endian ELF is not supported")
            if ident[4] == ELFCLASS64 and len(ident) >= _ELF64_HEADER.size:
                fields = _ELF64_HEADER.unpack_from(ident)
                phoff, phentsize, phnum, phdr = fields[5], fields[9], fields[10], _ELF64_PHDR
            elif ident[4] == ELFCLASS32 and len(ident) >= _ELF32_HEADER.size:
                fields = _ELF32_HEADER.unpack_from(ident)
                phoff, phentsize, phnum, phdr = fields[5], fields[9], fields[10], _ELF32_PHDR
            else:
                raise GuestMemoryError(f"{name}: unknown ELF class {ident[4]} or truncated header")
            if phnum > MAX_ELF_SEGMENTS or phentsize < phdr.size:
                raise GuestMemoryError(f"{name}: implausible program header table ({phnum} x {phentsize} bytes)")
            if phoff + phnum * phentsize > size:
                raise GuestMemoryError(f"{name}: program header table at offset {phoff} runs past the end "
                                       f"of the file ({size} bytes)")
            file.seek(phoff)
            table = file.read(phnum * phentsize)
    except OSError as err:
        raise GuestMemoryError(f"cannot read {name}: {err.strerror}") from None
    segments = []
    for index in range(phnum):
        raw = phdr.unpack_from(table, index * phentsize)
        if phdr is _ELF64_PHDR:
            ptype, _, offset, vaddr, paddr, filesz, memsz, _ = raw
        else:
            ptype, offset, vaddr, paddr, filesz, memsz, _, _ = raw
        if offset + filesz > size:
            raise GuestMemoryError(f"{name}: segment {index} ({filesz} bytes at offset {offset}) runs past "
                                   f"the end of the file ({size} bytes); truncated dump?")
        segments.append(ElfSegment(ptype, offset, vaddr, paddr, filesz, memsz))
    return segments


def elf_load_segments(path: str | os.PathLike[str]) -> list[ElfSegment]:
    """The PT_LOAD segments of an ELF core."""
    return [segment for segment in elf_segments(path) if segment.type == PT_LOAD]
