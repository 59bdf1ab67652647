"""The split virtqueue's three areas in guest memory (virtio 1.4, 2.7).

:class:`SplitRing` reads and writes the fields of the descriptor table (2.7.5),
the available ring (2.7.6) and the used ring (2.7.8) of one queue; the driver
(:mod:`vqtrace.driver`), the device side (:mod:`vqtrace.rings.device`) and the
tracker share it. Every access is bounds-checked by :class:`GuestMemory` and
raises :class:`~vqtrace.errors.GuestMemoryError` when an area is unmapped.
"""

from __future__ import annotations

import struct

from ..dissectors.virtqueue import SPLIT_DESC_SIZE, USED_ELEM_SIZE
from ..memory import GuestMemory
from ..model import QueueConfig, RingState
from .chain import DESC_STRUCT

# 2.7.6 struct virtq_avail: le16 flags, le16 idx, le16 ring[size], le16 used_event
AVAIL_FLAGS = 0
AVAIL_IDX = 2
AVAIL_RING = 4
# 2.7.8 struct virtq_used: le16 flags, le16 idx, struct virtq_used_elem ring[size], le16 avail_event
USED_FLAGS = 0
USED_IDX = 2
USED_RING = 4
USED_ELEM_STRUCT = struct.Struct("<II")  # 2.7.8 struct virtq_used_elem: le32 id, le32 len
_U16 = struct.Struct("<H")
_U16X2 = struct.Struct("<HH")


def split_area_sizes(size: int, event_idx: bool = True) -> tuple[int, int, int]:
    """Bytes of the descriptor table, available ring and used ring (2.7, "Virtqueue Part Sizes").

    The table counts ``used_event``/``avail_event`` always (6 + 2n, 6 + 8n);
    without EVENT_IDX the last two bytes of each ring go unused.
    """
    del event_idx  # the spec's sizes include the event fields either way
    return SPLIT_DESC_SIZE * size, 6 + 2 * size, 6 + USED_ELEM_SIZE * size


class SplitRing:
    """Field access to one split queue's descriptor table, available ring and used ring."""

    __slots__ = ("config", "memory", "size")

    def __init__(self, config: QueueConfig, memory: GuestMemory) -> None:
        self.config = config
        self.memory = memory
        self.size = config.size

    # -- available ring (driver area), 2.7.6 ----------------------------------------------
    def avail_flags(self) -> int:
        return self.memory.read_u16(self.config.driver + AVAIL_FLAGS)

    def avail_idx(self) -> int:
        return self.memory.read_u16(self.config.driver + AVAIL_IDX)

    def avail_entry(self, idx: int) -> int:
        """``avail->ring[idx % size]``: the head made available at free-running index ``idx``."""
        return self.memory.read_u16(self.config.driver + AVAIL_RING + 2 * (idx % self.size))

    def avail_ring(self) -> memoryview:
        """The whole ``ring[]`` of the available ring (``2 * size`` bytes)."""
        return self.memory.view(self.config.driver + AVAIL_RING, 2 * self.size)

    def used_event(self) -> int:
        """``used_event``, after ``ring[size]`` (2.7.7, EVENT_IDX)."""
        return self.memory.read_u16(self.config.driver + AVAIL_RING + 2 * self.size)

    def set_avail_flags(self, flags: int) -> None:
        self.memory.write_u16(self.config.driver + AVAIL_FLAGS, flags)

    def set_avail_idx(self, idx: int) -> None:
        self.memory.write_u16(self.config.driver + AVAIL_IDX, idx & 0xFFFF)

    def set_avail_entry(self, idx: int, head: int) -> None:
        self.memory.write_u16(self.config.driver + AVAIL_RING + 2 * (idx % self.size), head & 0xFFFF)

    def set_used_event(self, idx: int) -> None:
        self.memory.write_u16(self.config.driver + AVAIL_RING + 2 * self.size, idx & 0xFFFF)

    # -- used ring (device area), 2.7.8 ----------------------------------------------------
    def used_flags(self) -> int:
        return self.memory.read_u16(self.config.device + USED_FLAGS)

    def used_idx(self) -> int:
        return self.memory.read_u16(self.config.device + USED_IDX)

    def used_elem(self, idx: int) -> tuple[int, int]:
        """``used->ring[idx % size]`` as (id, len)."""
        addr = self.config.device + USED_RING + USED_ELEM_SIZE * (idx % self.size)
        return USED_ELEM_STRUCT.unpack(self.memory.view(addr, USED_ELEM_SIZE))

    def used_ring(self) -> memoryview:
        """The whole ``ring[]`` of the used ring (``8 * size`` bytes)."""
        return self.memory.view(self.config.device + USED_RING, USED_ELEM_SIZE * self.size)

    def avail_event(self) -> int:
        """``avail_event``, after ``ring[size]`` (2.7.10, EVENT_IDX)."""
        return self.memory.read_u16(self.config.device + USED_RING + USED_ELEM_SIZE * self.size)

    def set_used_flags(self, flags: int) -> None:
        self.memory.write_u16(self.config.device + USED_FLAGS, flags)

    def set_used_idx(self, idx: int) -> None:
        self.memory.write_u16(self.config.device + USED_IDX, idx & 0xFFFF)

    def set_used_elem(self, idx: int, id: int, length: int) -> None:
        addr = self.config.device + USED_RING + USED_ELEM_SIZE * (idx % self.size)
        self.memory.write(addr, USED_ELEM_STRUCT.pack(id & 0xFFFFFFFF, length & 0xFFFFFFFF))

    def set_avail_event(self, idx: int) -> None:
        self.memory.write_u16(self.config.device + USED_RING + USED_ELEM_SIZE * self.size, idx & 0xFFFF)

    # -- descriptor table, 2.7.5 -------------------------------------------------------
    def table(self) -> memoryview:
        """The whole descriptor table (``16 * size`` bytes)."""
        return self.memory.view(self.config.desc, SPLIT_DESC_SIZE * self.size)

    def desc(self, index: int) -> tuple[int, int, int, int]:
        """Descriptor ``index`` as (addr, len, flags, next)."""
        return DESC_STRUCT.unpack(self.memory.view(self.config.desc + SPLIT_DESC_SIZE * (index % self.size),
                                                   SPLIT_DESC_SIZE))

    def write_desc(self, index: int, addr: int, length: int, flags: int, next: int = 0) -> None:
        self.memory.write(self.config.desc + SPLIT_DESC_SIZE * (index % self.size),
                          DESC_STRUCT.pack(addr & (1 << 64) - 1, length & 0xFFFFFFFF, flags & 0xFFFF, next & 0xFFFF))

    # -- state -----------------------------------------------------------------------------
    def state(self) -> RingState:
        """Indices, flags and (with EVENT_IDX) event indices as they are in memory now (no in-flight set)."""
        memory, config = self.memory, self.config
        avail_flags, avail_idx = _U16X2.unpack(memory.view(config.driver, 4))
        used_flags, used_idx = _U16X2.unpack(memory.view(config.device, 4))
        used_event = avail_event = None
        if config.event_idx:
            used_event, avail_event = self.used_event(), self.avail_event()
        return RingState(config.index, avail_idx, used_idx, avail_flags=avail_flags, used_flags=used_flags,
                         used_event=used_event, avail_event=avail_event)


def read_split_state(config: QueueConfig, memory: GuestMemory) -> RingState:
    """The split ring's :class:`RingState` as in memory now, without the in-flight set."""
    return SplitRing(config, memory).state()
