"""The engine's vocabulary (DESIGN.md): QueueConfig, Descriptor, Chain, UsedElem, RingState, Anomaly.

These are plain values shared by the ring readers, the devices, the trace files,
live tracing and dump analysis. They hold no memory and do no I/O: a Chain knows
its descriptors and byte counts; reading its bytes takes a GuestMemory.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple

# virtio 1.4, 2.7.5: descriptor flags. Declared again here (not imported from
# dissectors.virtqueue) so the model does not pull construct into every command;
# tests/test_startup.py holds them equal to the layout's.
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4

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

    @property
    def packed(self) -> bool:
        return self.layout is Layout.PACKED

    def problem(self) -> str | None:
        """Why the ring cannot be read at all (a bad size or misaligned area), or None.

        Split sizes are powers of 2 up to 32768 (2.7); packed sizes up to 2^15, any value
        (2.8). Areas must meet the alignment tables of 2.7 and 2.8.10.1.
        """
        if self.packed:
            if not 0 < self.size <= 0x8000:
                return f"packed queue size {self.size} is not in 1..32768"
            aligns = (16, 4, 4)
        else:
            if not 0 < self.size <= 0x8000 or self.size & (self.size - 1):
                return f"split queue size {self.size} is not a power of 2 in 1..32768"
            aligns = (16, 2, 4)
        for name, addr, align in zip(("descriptor", "driver", "device"), (self.desc, self.driver, self.device),
                                     aligns, strict=True):
            if addr % align:
                return f"{name} area 0x{addr:x} is not {align}-byte aligned"
        return None


class Descriptor(NamedTuple):
    """One descriptor of a chain, as read from the ring or an indirect table.

    ``index`` is its slot (in the descriptor table, the packed ring, or the
    indirect table when ``in_indirect``); ``next`` is the split NEXT link and
    ``id`` the packed buffer id (each 0 where the format has none).

    A NamedTuple (immutable, cheap to build: ring readers make millions); build it
    with keywords, the positional order is not part of the API.
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


class Chain:
    """What the driver made available: a head and its descriptors, flattened.

    An indirect descriptor stays in ``descriptors`` (so the table is remembered)
    followed by the table's entries, marked ``in_indirect``; ``buffers`` are the
    descriptors that carry data (every one but indirect-table pointers), in order:
    readable ones first, then writable ones (2.7.4 "Message Framing").
    ``avail_idx`` is the free-running available index at which it was found
    (split) or its first ring slot (packed); ``id`` is the head index (split) or the
    buffer id (packed), the value the device will put in the used element.

    ``anomalies`` are the rules the chain breaks (a loop, an unmapped buffer, ...):
    a chain with anomalies may be cut short where its walk had to stop.
    ``readable_len``/``writable_len`` are computed from the descriptors when not given.
    Chains compare by identity (two chains with equal contents are still two buffers).

    Ring readers may build ``descriptors`` lazily (from a copy of the table taken when
    the chain was read, so later ring writes do not change it): reading the attribute
    is the same either way. (A lazy source has ``materialize()`` and ``ring_len``, which
    must equal the count of the descriptors it makes that are not ``in_indirect``.)
    """

    __slots__ = ("_descriptors", "_lazy", "_ring_len", "anomalies", "avail_idx", "id", "queue", "readable_len",
                 "wrap", "writable_len")

    def __init__(self, queue: int, id: int, avail_idx: int, descriptors: list[Descriptor] | None = None,
                 wrap: bool = False, anomalies: list[Anomaly] | None = None, readable_len: int = -1,
                 writable_len: int = -1) -> None:
        self.queue = queue
        self.id = id
        self.avail_idx = avail_idx
        self._descriptors = [] if descriptors is None else descriptors
        self._lazy: Any = None  # an object whose materialize() returns the descriptors
        self._ring_len = -1  # ring_len, once counted from the descriptors
        self.wrap = wrap  # packed: the driver ring wrap counter it was made available with
        self.anomalies = [] if anomalies is None else anomalies
        self.readable_len = readable_len
        self.writable_len = writable_len
        if readable_len < 0 or writable_len < 0:
            self._count()

    @classmethod
    def lazy(cls, queue: int, id: int, avail_idx: int, source: Any, readable_len: int, writable_len: int,
             wrap: bool = False) -> Chain:
        """A chain whose descriptors ``source.materialize()`` returns when first read (ring readers' fast path)."""
        chain = cls.__new__(cls)
        chain.queue, chain.id, chain.avail_idx, chain.wrap = queue, id, avail_idx, wrap
        chain._descriptors, chain._lazy, chain._ring_len = None, source, -1
        chain.anomalies = []
        chain.readable_len, chain.writable_len = readable_len, writable_len
        return chain

    def _count(self) -> None:
        readable = writable = 0
        for d in self.descriptors:
            if d.flags & VIRTQ_DESC_F_INDIRECT:
                continue
            if d.flags & VIRTQ_DESC_F_WRITE:
                writable += d.len
            else:
                readable += d.len
        self.readable_len, self.writable_len = readable, writable

    @property
    def descriptors(self) -> list[Descriptor]:
        if self._descriptors is None:
            lazy = self._lazy
            self._descriptors = lazy.materialize()
            self._ring_len = lazy.ring_len  # the source knows it (its ring indices), the descriptors would count it
            self._lazy = None
        return self._descriptors

    @descriptors.setter
    def descriptors(self, value: list[Descriptor]) -> None:
        self._descriptors, self._lazy, self._ring_len = value, None, -1

    @property
    def head(self) -> int:
        """Split: the head descriptor index (the same as ``id``)."""
        return self.id

    @property
    def buffers(self) -> list[Descriptor]:
        return [d for d in self.descriptors if not d.flags & VIRTQ_DESC_F_INDIRECT]

    @property
    def readable(self) -> list[Descriptor]:
        return [d for d in self.buffers if not d.is_write]

    @property
    def writable(self) -> list[Descriptor]:
        return [d for d in self.buffers if d.is_write]

    @property
    def ring_len(self) -> int:
        """Descriptors it occupies in the descriptor table / packed ring (indirect entries excluded).

        A packed-ring device skips this many slots after writing its used descriptor
        (virtio 1.4, 2.8.6); an IN_ORDER split device frees this many table entries.
        """
        if self._descriptors is None:
            return self._lazy.ring_len
        count = self._ring_len
        if count < 0:  # counted once (a packed tracker asks for it at every use)
            count = self._ring_len = sum(1 for d in self._descriptors if not d.in_indirect)
        return count

    @property
    def ok(self) -> bool:
        """Whether the walk found nothing wrong."""
        return not self.anomalies

    def __repr__(self) -> str:
        text = (f"Chain(queue={self.queue}, id={self.id}, avail_idx={self.avail_idx}, "
                f"descs={len(self.descriptors)}, readable={self.readable_len}, writable={self.writable_len}")
        if self.anomalies:
            text += f", anomalies={[a.code for a in self.anomalies]}"
        return text + ")"


class UsedElem(NamedTuple):
    """A used element: the chain ``id`` the device returned and the bytes it wrote.

    ``used_idx`` is the free-running used index (split) or the ring slot (packed)
    where it was found; ``wrap`` the packed device ring wrap counter it was written
    with. ``implied`` marks a chain of an IN_ORDER batch that no used element names:
    a later element covered it and the device used it completely (2.7.9 / 2.8.8);
    its ``len`` is then the chain's writable length.

    A NamedTuple (immutable, cheap to build: ring readers make one per used element, as many as
    chains); build it with keywords or in field order.
    """

    queue: int
    id: int
    len: int
    used_idx: int
    wrap: bool = False
    implied: bool = False


@dataclass
class RingState:
    """Indices, wrap counters and in-flight heads of one queue at one instant.

    Split: ``avail_idx``/``used_idx`` are ``avail->idx``/``used->idx``; ``avail_flags``
    and ``used_flags`` the two rings' ``flags``; ``used_event``/``avail_event`` the
    EVENT_IDX fields (None without VIRTIO_F_EVENT_IDX).
    Packed: ``avail_idx``/``avail_wrap`` the next slot the driver will fill and its
    Driver Ring Wrap Counter, ``used_idx``/``used_wrap`` the next slot the device will
    write and its Device Ring Wrap Counter; ``avail_flags``/``used_event`` are the driver
    event suppression structure (driver area: ``flags`` and ``desc`` = offset | wrap << 15),
    ``used_flags``/``avail_event`` the device's (device area), virtio 1.4, 2.8.14.
    """

    queue: int
    avail_idx: int  # split: avail->idx; packed: next slot the driver will fill
    used_idx: int  # split: used->idx; packed: next slot the device will write
    avail_wrap: bool = True  # packed: driver ring wrap counter
    used_wrap: bool = True  # packed: device ring wrap counter
    avail_flags: int = 0
    used_flags: int = 0
    used_event: int | None = None
    avail_event: int | None = None
    in_flight: dict[int, Chain] = field(default_factory=dict)  # chain id -> chain, in the order made available

    @property
    def pending(self) -> int:
        """Split: how many chains the driver has made available and the device not used (mod 2^16)."""
        return (self.avail_idx - self.used_idx) & 0xFFFF


@dataclass(frozen=True)
class Anomaly:
    """Something the driver or device did that the specification forbids.

    ``code`` is a stable upper-case identifier (``DESC_LOOP``) that filters and
    tests use; ``section`` cites the rule broken (``virtio 1.4, 2.7.5.3.1``).
    :mod:`vqtrace.rings.anomalies` lists every code the ring readers raise.
    """

    code: str
    section: str
    message: str
    queue: int | None = None
    id: int | None = None  # the chain id or descriptor index concerned, if any
    address: int | None = None  # the guest address concerned, if any

    def __str__(self) -> str:
        where = f"queue {self.queue}: " if self.queue is not None else ""
        return f"{where}{self.code} ({self.section}): {self.message}"
