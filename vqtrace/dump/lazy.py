"""GuestMemory whose bytes are fetched on first access: a running process, a kdump file.

Each region is backed by a private anonymous mapping that costs nothing until a
page is touched (``MAP_NORESERVE``); the first read of a page asks the region's
loader for it (``pread`` of ``/proc/PID/mem``, or decompressing one kdump page)
and keeps it, so a 16 GiB guest costs the pages that are looked at, and later
reads see one consistent copy. Everything goes through GuestMemory's public
read/view methods, so ring readers work unchanged. :meth:`LazyMemory.stream`
reads a range without keeping it (the scanner walks all of memory with it).
"""

from __future__ import annotations

import mmap
import platform
from collections.abc import Callable

from ..errors import GuestMemoryError
from ..memory import GuestMemory, Region

LAZY_PAGE = 4096
# Not exported by Python's mmap module; this value holds on x86 and arm64 (asm-generic/mman-common.h).
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000 if platform.machine() in ("x86_64", "aarch64") else 0)

#: ``loader(region, offset, into)`` fills ``into`` with the bytes at ``offset`` of ``region``.
Loader = Callable[[Region, int, memoryview], None]


class LazyMemory(GuestMemory):
    """GuestMemory whose regions are filled page by page on first read."""

    def __init__(self) -> None:
        super().__init__()
        self._lazy: dict[int, tuple[mmap.mmap, bytearray, Loader]] = {}  # region start -> (mapping, loaded, loader)

    def add_lazy(self, guest_addr: int, size: int, loader: Loader, *, name: str = "") -> Region:
        """A region of ``size`` bytes at ``guest_addr`` whose pages ``loader`` provides."""
        if size <= 0:
            raise GuestMemoryError(f"bad lazy region of {size} bytes", address=guest_addr)
        try:
            mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE,
                                prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, OverflowError) as err:
            raise GuestMemoryError(f"cannot reserve {size} bytes of address space: {err}", address=guest_addr) from None
        region = Region(guest_addr, size, memoryview(mapping).toreadonly(), None, name, mapping)
        self.add(region)
        pages = (size + LAZY_PAGE - 1) // LAZY_PAGE
        self._lazy[guest_addr] = (mapping, bytearray(pages), loader)
        return region

    def loaded_bytes(self) -> int:
        """How many bytes have been fetched so far."""
        return sum(loaded.count(1) for _, loaded, _ in self._lazy.values()) * LAZY_PAGE

    def _ensure(self, addr: int, length: int) -> None:
        """Fetch every page of ``[addr, addr + length)`` not fetched yet (unmapped parts are left to the caller)."""
        end = addr + max(length, 1)
        here = addr
        while here < end:
            region = self.region_at(here)
            if region is None:
                return
            stop = min(end, region.end)
            state = self._lazy.get(region.guest_addr)
            if state is not None:
                self._fill(region, state, here - region.guest_addr, stop - region.guest_addr)
            here = stop

    @staticmethod
    def _fill(region: Region, state: tuple[mmap.mmap, bytearray, Loader], start: int, stop: int) -> None:
        mapping, loaded, loader = state
        first, last = start // LAZY_PAGE, (stop - 1) // LAZY_PAGE
        page = first
        while page <= last:
            if loaded[page]:
                page += 1
                continue
            run_end = page
            while run_end + 1 <= last and not loaded[run_end + 1]:
                run_end += 1
            offset = page * LAZY_PAGE
            length = min((run_end + 1) * LAZY_PAGE, region.size) - offset
            loader(region, offset, memoryview(mapping)[offset:offset + length])
            loaded[page:run_end + 1] = b"\x01" * (run_end + 1 - page)
            page = run_end + 1

    def view(self, addr: int, length: int) -> memoryview:
        self._ensure(addr, length)
        return super().view(addr, length)

    def read(self, addr: int, length: int) -> bytes:
        self._ensure(addr, length)
        return super().read(addr, length)

    def stream(self, region: Region, offset: int, into: memoryview) -> None:
        """Fill ``into`` with the bytes at ``offset`` of ``region`` without keeping them."""
        state = self._lazy.get(region.guest_addr)
        if state is None:
            into[:] = region.data[offset:offset + len(into)]
            return
        mapping, loaded, loader = state
        first, last = offset // LAZY_PAGE, (offset + len(into) - 1) // LAZY_PAGE
        if all(loaded[first:last + 1]):
            into[:] = mapping[offset:offset + len(into)]
        else:
            loader(region, offset, into)

    def is_lazy(self, region: Region) -> bool:
        return region.guest_addr in self._lazy

    def close(self) -> None:
        self._lazy.clear()
        super().close()

