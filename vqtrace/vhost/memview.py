""":class:`LiveMemory`: GuestMemory with a fast path for the live roles' hot loop.

A vhost-user front-end shares guest RAM in a few large regions and the rings of one
queue sit in one of them: almost every access of a poll falls in the region the
previous access used. :meth:`LiveMemory.view` tries that region first (the same
bounds check GuestMemory does, without the lookup), then the general path. Every
access stays bounds-checked; results are identical to GuestMemory's.
"""

from __future__ import annotations

from typing import Any

from ..memory import GuestMemory, Region


class LiveMemory(GuestMemory):
    """Guest memory mapped from vhost-user region fds (see the module docstring)."""

    def __init__(self, regions: Any = ()) -> None:
        self._hot: Region | None = None
        super().__init__(regions)

    def view(self, addr: int, length: int) -> memoryview:
        hot = self._hot
        if hot is not None and length >= 0:
            offset = addr - hot.guest_addr
            if offset >= 0 and offset + length <= hot.size:
                return hot.data[offset:offset + length]
        region = self.region_at(addr) if addr >= 0 else None
        if region is not None and length >= 0 and addr + length <= region.end:
            self._hot = region
            offset = addr - region.guest_addr
            return region.data[offset:offset + length]
        return super().view(addr, length)

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        hot = self._hot
        if hot is not None and not hot.data.readonly:
            offset = addr - hot.guest_addr
            if offset >= 0 and offset + len(data) <= hot.size:
                hot.data[offset:offset + len(data)] = data
                return
        super().write(addr, data)

    def read(self, addr: int, length: int) -> bytes:
        return bytes(self.view(addr, length))

    def read_u16(self, addr: int) -> int:
        return int.from_bytes(self.view(addr, 2), "little")

    def read_u32(self, addr: int) -> int:
        return int.from_bytes(self.view(addr, 4), "little")

    def read_u64(self, addr: int) -> int:
        return int.from_bytes(self.view(addr, 8), "little")

    def add(self, region: Region) -> Region:
        self._hot = None
        return super().add(region)

    def remove(self, guest_addr: int) -> Region:
        self._hot = None
        return super().remove(guest_addr)

    def close(self) -> None:
        self._hot = None
        super().close()
