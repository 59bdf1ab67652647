"""The engine's vocabulary (DESIGN.md): QueueConfig, Descriptor, Chain, UsedElem.

These are plain values shared by the ring readers, the devices, the trace files,
live tracing and dump analysis. They hold no memory and do no I/O: a Chain knows
its descriptors and byte counts; reading its bytes takes a GuestMemory.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .dissectors.virtqueue import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE

# Transport feature bits the ring readers depend on (virtio 1.4, 6 "Reserved Feature Bits").
VIRTIO_F_INDIRECT_DESC = 28
VIRTIO_F_EVENT_IDX = 29
VIRTIO_F_VERSION_1 = 32
VIRTIO_F_RING_PACKED = 34
VIRTIO_F_IN_ORDER = 35


class Layout(enum.Enum):
    """Virtqueue format: split (virtio 1.4, 2.7) or packed (2.8)."""

    SPLIT = "split"
    PACKED = "packed"


@dataclass(frozen=True)
class QueueConfig:
    """One virtqueue as the driver set it up.

    ``desc``, ``driver`` and ``device`` are the guest-physical addresses of the
    descriptor area, the driver area (split: available ring; packed: driver event
    suppression) and the device area (split: used ring; packed: device event
    suppression), virtio 1.4, 2.6 "Virtqueues".
    """

    index: int
    size: int
    desc: int
    driver: int
    device: int
    layout: Layout = Layout.SPLIT
    features: int = 0  # the negotiated feature bits
    device_type: int = 0  # virtio device ID (5 "Device Types"); 0 when unknown

    def has(self, bit: int) -> bool:
        return bool(self.features >> bit & 1)

    @property
    def event_idx(self) -> bool:
        return self.has(VIRTIO_F_EVENT_IDX)

    @property
    def indirect(self) -> bool:
        return self.has(VIRTIO_F_INDIRECT_DESC)

    @property
    def in_order(self) -> bool:
        return self.has(VIRTIO_F_IN_ORDER)


@dataclass(frozen=True, slots=True)
class Descriptor:
    """One descriptor of a chain, as read from the ring or an indirect table.

    ``index`` is its slot (in the descriptor table, the packed ring, or the
    indirect table when ``in_indirect``); ``next`` is the split NEXT link and
    ``id`` the packed buffer id (each 0 where the format has none).
    """

    addr: int
    len: int
    flags: int
    index: int
    next: int = 0
    id: int = 0
    in_indirect: bool = False

    @property
    def is_write(self) -> bool:
        return bool(self.flags & VIRTQ_DESC_F_WRITE)

    @property
    def has_next(self) -> bool:
        return bool(self.flags & VIRTQ_DESC_F_NEXT)

    @property
    def is_indirect(self) -> bool:
        return bool(self.flags & VIRTQ_DESC_F_INDIRECT)


@dataclass(slots=True)
class Chain:
    """What the driver made available: a head and its descriptors, flattened.

    An indirect descriptor stays in ``descriptors`` (so the table is remembered)
    followed by the table's entries, marked ``in_indirect``; ``buffers`` are the
    descriptors that carry data (every one but indirect-table pointers), in order:
    readable ones first, then writable ones (2.7.4 "Message Framing").
    ``avail_idx`` is the free-running available index at which it was found
    (split) or its ring slot (packed); ``id`` is the head index (split) or the
    buffer id (packed), the value the device will put in the used element.
    """

    queue: int
    id: int
    avail_idx: int
    descriptors: list[Descriptor]
    wrap: bool = False  # packed: the driver ring wrap counter it was made available with

    @property
    def buffers(self) -> list[Descriptor]:
        return [d for d in self.descriptors if not d.is_indirect]

    @property
    def readable(self) -> list[Descriptor]:
        return [d for d in self.buffers if not d.is_write]

    @property
    def writable(self) -> list[Descriptor]:
        return [d for d in self.buffers if d.is_write]

    @property
    def readable_len(self) -> int:
        return sum(d.len for d in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(d.len for d in self.writable)


@dataclass(frozen=True, slots=True)
class UsedElem:
    """A used element: the chain ``id`` the device returned and the bytes it wrote.

    ``used_idx`` is the free-running used index (split) or the ring slot (packed)
    where it was found.
    """

    queue: int
    id: int
    len: int
    used_idx: int


@dataclass
class RingState:
    """Indices, wrap counters and in-flight heads of one queue at one instant."""

    queue: int
    avail_idx: int  # split: avail->idx; packed: next slot the driver will fill
    used_idx: int  # split: used->idx; packed: next slot the device will write
    avail_wrap: bool = True  # packed: driver ring wrap counter
    used_wrap: bool = True  # packed: device ring wrap counter
    avail_flags: int = 0
    used_flags: int = 0
    used_event: int | None = None
    avail_event: int | None = None
    in_flight: dict[int, Chain] = field(default_factory=dict)  # chain id -> chain


@dataclass(frozen=True)
class Anomaly:
    """Something the driver or device did that the specification forbids.

    ``code`` is a stable upper-case identifier (``DESC_LOOP``) that filters and
    tests use; ``section`` cites the rule broken (``virtio 1.4, 2.7.5.3.1``).
    """

    code: str
    section: str
    message: str
    queue: int | None = None
    id: int | None = None  # the chain id or descriptor index concerned, if any
    address: int | None = None  # the guest address concerned, if any
