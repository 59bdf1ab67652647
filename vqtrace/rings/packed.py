"""The packed virtqueue's areas in guest memory (virtio 1.4, 2.8).

:class:`PackedRing` reads and writes the descriptor ring (2.8.13) and the two
event suppression structures (2.8.14): the driver area holds the *driver* event
suppression (read by the device, it controls used buffer notifications), the
device area the *device* event suppression (it controls available buffer
notifications). Ring positions (next slot, wrap counter) are not stored in
memory: each side keeps its own, and a tracker follows them (2.8.1).
"""

from __future__ import annotations

import struct

from ..dissectors.virtqueue import PACKED_DESC_SIZE, VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_USED
from ..memory import GuestMemory
from ..model import QueueConfig
from .chain import PACKED_DESC_STRUCT

EVENT_STRUCT = struct.Struct("<HH")  # 2.8.14 struct pvirtq_event_suppress: le16 desc, le16 flags
PACKED_FLAGS_OFFSET = 14  # offsetof(struct pvirtq_desc, flags)


def packed_area_sizes(size: int) -> tuple[int, int, int]:
    """Bytes of the descriptor ring and the two event suppression areas (2.8.10.1)."""
    return PACKED_DESC_SIZE * size, EVENT_STRUCT.size, EVENT_STRUCT.size


def avail_flags_for(wrap: bool) -> int:
    """The AVAIL/USED bits a driver sets to make a descriptor available with wrap counter ``wrap`` (2.8.1)."""
    return VIRTQ_DESC_F_AVAIL if wrap else VIRTQ_DESC_F_USED


def used_flags_for(wrap: bool) -> int:
    """The AVAIL/USED bits a device sets to mark a descriptor used with wrap counter ``wrap`` (2.8.1)."""
    return VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED if wrap else 0


def advance(slot: int, wrap: bool, count: int, size: int) -> tuple[int, bool]:
    """``count`` slots on from ``slot``, flipping the wrap counter at each ring end (2.8.1)."""
    slot += count
    while slot >= size:
        slot -= size
        wrap = not wrap
    return slot, wrap


def event_desc(off: int, wrap: bool) -> int:
    """``pvirtq_event_suppress.desc`` for offset ``off`` and wrap counter ``wrap`` (2.8.14)."""
    return (off & 0x7FFF) | (0x8000 if wrap else 0)


class PackedRing:
    """Field access to one packed queue's descriptor ring and event suppression structures."""

    __slots__ = ("config", "memory", "size")

    def __init__(self, config: QueueConfig, memory: GuestMemory) -> None:
        self.config = config
        self.memory = memory
        self.size = config.size

    def ring(self) -> memoryview:
        """The whole descriptor ring (``16 * size`` bytes)."""
        return self.memory.view(self.config.desc, PACKED_DESC_SIZE * self.size)

    def desc(self, slot: int) -> tuple[int, int, int, int]:
        """The descriptor in ``slot`` as (addr, len, id, flags)."""
        return PACKED_DESC_STRUCT.unpack(self.memory.view(self.config.desc + PACKED_DESC_SIZE * (slot % self.size),
                                                          PACKED_DESC_SIZE))

    def flags(self, slot: int) -> int:
        return self.memory.read_u16(self.config.desc + PACKED_DESC_SIZE * (slot % self.size) + PACKED_FLAGS_OFFSET)

    def write_desc(self, slot: int, addr: int, length: int, id: int, flags: int) -> None:
        """Write a whole descriptor (flags last within the one write; callers order multi-slot writes)."""
        self.memory.write(self.config.desc + PACKED_DESC_SIZE * (slot % self.size),
                          PACKED_DESC_STRUCT.pack(addr & (1 << 64) - 1, length & 0xFFFFFFFF, id & 0xFFFF,
                                                  flags & 0xFFFF))

    def write_desc_body(self, slot: int, addr: int, length: int, id: int) -> None:
        """Write addr, len and id, leaving flags (2.8.21.1: flags are written last)."""
        self.memory.write(self.config.desc + PACKED_DESC_SIZE * (slot % self.size),
                          struct.pack("<QIH", addr & (1 << 64) - 1, length & 0xFFFFFFFF, id & 0xFFFF))

    def set_flags(self, slot: int, flags: int) -> None:
        self.memory.write_u16(self.config.desc + PACKED_DESC_SIZE * (slot % self.size) + PACKED_FLAGS_OFFSET, flags)

    def driver_event(self) -> tuple[int, int]:
        """The driver event suppression structure (driver area) as (desc, flags)."""
        return EVENT_STRUCT.unpack(self.memory.view(self.config.driver, EVENT_STRUCT.size))

    def device_event(self) -> tuple[int, int]:
        """The device event suppression structure (device area) as (desc, flags)."""
        return EVENT_STRUCT.unpack(self.memory.view(self.config.device, EVENT_STRUCT.size))

    def set_driver_event(self, desc: int, flags: int) -> None:
        self.memory.write(self.config.driver, EVENT_STRUCT.pack(desc & 0xFFFF, flags & 0xFFFF))

    def set_device_event(self, desc: int, flags: int) -> None:
        self.memory.write(self.config.device, EVENT_STRUCT.pack(desc & 0xFFFF, flags & 0xFFFF))
