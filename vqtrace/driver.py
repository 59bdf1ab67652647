"""A guest driver in Python: lays out virtqueues, adds buffers, kicks, reads used buffers.

It plays the driver's side of virtio 1.4, 2.7 (split) and 2.8 (packed) over a
:class:`~vqtrace.memory.GuestMemory`, the way Linux's ``virtio_ring`` does:

- :func:`split_layout` places the descriptor table, the available ring and the used
  ring in one block as Linux's ``vring_init`` does: the used ring aligned to
  ``align`` (4096 for legacy PCI and MMIO, "Legacy Interfaces: A Note on Virtqueue
  Layout" 2.7.2; Linux's modern PCI driver uses SMP_CACHE_BYTES, 64 on x86-64);
  :func:`packed_layout` puts the descriptor ring then the two 4-byte event
  suppression areas (2.8.10.1).
- :class:`Allocator` hands out guest-physical ranges for rings and buffers.
- :class:`DriverQueue` adds buffers (readable byte strings, writable sizes; chained
  or in one indirect table), decides whether to kick (2.7.10.1 / 2.8.21.2) and
  calls ``kick``, reads used buffers back (IN_ORDER batches included) and sets
  ``used_event`` / driver event suppression (2.7.7 / 2.8.10).
- Corruption hooks build each anomaly on purpose: ``hook`` edits the descriptors
  (:class:`DescSpec`) before they are written; :meth:`DriverQueue.write_desc`,
  :meth:`DriverQueue.expose` and :meth:`DriverQueue.set_avail_idx` write ring fields raw.

:class:`GuestDriver` bundles a memory, an allocator and queues (in a bytearray or a
shared memfd, the latter for vhost-user). Tests, the demo, replay and the vhost-user
front-end use it.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .dissectors.virtqueue import (
    PACKED_DESC_SIZE,
    SPLIT_DESC_SIZE,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
)
from .errors import GuestMemoryError, VqtraceError
from .memory import GuestMemory
from .model import Layout, QueueConfig
from .rings.chain import DESC_STRUCT, PACKED_DESC_STRUCT, packed_desc_used
from .rings.notify import (
    RING_EVENT_FLAGS_DESC,
    RING_EVENT_FLAGS_DISABLE,
    RING_EVENT_FLAGS_ENABLE,
    packed_need_event,
    split_avail_notification_due,
)
from .rings.packed import PackedRing, advance, avail_flags_for, event_desc
from .rings.split import SplitRing, split_area_sizes

__all__ = [
    "LEGACY_ALIGN",
    "LINUX_MODERN_ALIGN",
    "Allocator",
    "DescSpec",
    "DriverQueue",
    "GuestDriver",
    "RingLayout",
    "UsedBuffer",
    "packed_layout",
    "split_layout",
    "vring_size",
]

LEGACY_ALIGN = 4096  # 2.7.2: Queue Align of legacy PCI / MMIO (Linux VIRTIO_PCI_VRING_ALIGN)
LINUX_MODERN_ALIGN = 64  # Linux's modern virtio-pci driver: vring_create_virtqueue(..., SMP_CACHE_BYTES, ...)


def _align_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


@dataclass(frozen=True)
class RingLayout:
    """Where one queue's three areas are, and the bytes the block takes from ``desc``."""

    desc: int
    driver: int
    device: int
    total: int


def vring_size(size: int, align: int = LEGACY_ALIGN) -> int:
    """Bytes of a split ring laid out with ``align`` (2.7.2 ``virtq_size``, Linux ``vring_size``)."""
    desc, avail, used = split_area_sizes(size)
    return _align_up(desc + avail, align) + used


def split_layout(size: int, base: int, align: int = LEGACY_ALIGN) -> RingLayout:
    """A split ring at ``base``: descriptors, then the available ring, then the used ring at ``align``.

    ``base`` must be 16-byte aligned and ``align`` a power of 2 of at least 4 (the
    alignment table of 2.7: 16, 2 and 4 bytes).
    """
    if size <= 0 or size & (size - 1) or size > 0x8000:
        raise VqtraceError(f"split queue size {size} is not a power of 2 in 1..32768")
    if base % 16 or align < 4 or align & (align - 1):
        raise VqtraceError(f"bad split ring placement: base 0x{base:x}, align {align}")
    desc_bytes, avail_bytes, used_bytes = split_area_sizes(size)
    avail = base + desc_bytes
    used = _align_up(avail + avail_bytes, align)
    return RingLayout(base, avail, used, used + used_bytes - base)


def packed_layout(size: int, base: int) -> RingLayout:
    """A packed ring at ``base`` (16-aligned): the descriptor ring, then driver and device event areas (2.8.10.1)."""
    if not 0 < size <= 0x8000:
        raise VqtraceError(f"packed queue size {size} is not in 1..32768")
    if base % 16:
        raise VqtraceError(f"packed ring base 0x{base:x} is not 16-byte aligned")
    driver = base + PACKED_DESC_SIZE * size
    return RingLayout(base, driver, driver + 4, PACKED_DESC_SIZE * size + 8)


class Allocator:
    """First-fit allocator of guest-physical ranges in ``[base, base + size)``.

    Freed ranges are merged with their neighbours. Raises GuestMemoryError when full.
    """

    def __init__(self, base: int, size: int, *, align: int = 16) -> None:
        self.base, self.size, self.align = base, size, align
        self._free: list[tuple[int, int]] = [(base, base + size)]  # sorted (start, end)
        self._used: dict[int, int] = {}  # start -> end

    def alloc(self, size: int, align: int | None = None) -> int:
        """The address of ``size`` (> 0) fresh bytes aligned to ``align`` (default: the allocator's)."""
        align = align or self.align
        size = max(size, 1)
        for k, (start, end) in enumerate(self._free):
            addr = _align_up(start, align)
            if addr + size <= end:
                pieces = [(s, e) for s, e in ((start, addr), (addr + size, end)) if e > s]
                self._free[k:k + 1] = pieces
                self._used[addr] = addr + size
                return addr
        raise GuestMemoryError(f"the allocator has no {size} free bytes aligned to {align} left", address=self.base)

    def reserve(self, addr: int, size: int) -> None:
        """Take ``[addr, addr + size)`` out of the free space (a ring placed at a chosen address).

        Ranges outside the allocator's are ignored; a range already (partly) taken is an error.
        """
        end = addr + max(size, 1)
        if end <= self.base or addr >= self.base + self.size:
            return
        for k, (start, stop) in enumerate(self._free):
            if start <= addr and end <= stop:
                pieces = [(s, e) for s, e in ((start, addr), (end, stop)) if e > s]
                self._free[k:k + 1] = pieces
                self._used[addr] = end
                return
        raise GuestMemoryError(f"cannot reserve {size} bytes: the range is already in use", address=addr)

    def free(self, addr: int) -> None:
        """Give back the range that :meth:`alloc` returned at ``addr``."""
        end = self._used.pop(addr, None)
        if end is None:
            raise GuestMemoryError("free of an address that was not allocated", address=addr)
        at = bisect.bisect(self._free, (addr, end))
        self._free.insert(at, (addr, end))
        # merge with the neighbours
        if at + 1 < len(self._free) and self._free[at][1] == self._free[at + 1][0]:
            self._free[at:at + 2] = [(self._free[at][0], self._free[at + 1][1])]
        if at > 0 and self._free[at - 1][1] == self._free[at][0]:
            self._free[at - 1:at + 1] = [(self._free[at - 1][0], self._free[at][1])]

    @property
    def free_bytes(self) -> int:
        return sum(end - start for start, end in self._free)


@dataclass
class DescSpec:
    """One descriptor as the driver is about to write it; corruption hooks may change any field."""

    addr: int
    len: int
    flags: int
    next: int = 0  # split: the NEXT link
    id: int = 0  # packed: the buffer id


@dataclass
class UsedBuffer:
    """A buffer the device returned: its id, the length it reported and the bytes it wrote.

    ``written`` is the first ``len`` bytes of the writable buffers (capped at their size);
    ``implied``: an IN_ORDER batch member no used element named (2.7.9 / 2.8.8).
    """

    id: int
    len: int
    written: bytes
    token: Any = None
    implied: bool = False


@dataclass
class _Pending:
    """The driver's record of one buffer in flight (what to free, what to read back)."""

    id: int
    descs: list[int]  # split: descriptor table entries; packed: ring slots
    buffers: list[int]  # guest buffers to free
    writable: list[tuple[int, int]]  # (addr, len) spans the device may write
    token: Any
    indirect: int | None = None  # the indirect table's address
    avail_idx: int = 0


Hook = Callable[[list[DescSpec]], None]


class DriverQueue:
    """The driver side of one virtqueue, laid out in ``memory`` by ``allocator``.

    ``kick`` is called with the queue when a notification is due (or forced).
    ``align`` places a split ring's used ring (:func:`split_layout`); ``base`` places the
    ring block at a chosen address instead of allocating it.
    """

    def __init__(self, memory: GuestMemory, allocator: Allocator, *, index: int = 0, size: int = 256,
                 layout: Layout = Layout.SPLIT, features: int = 0, align: int = LEGACY_ALIGN,
                 kick: Callable[[DriverQueue], None] | None = None, base: int | None = None,
                 device_type: int = 0) -> None:
        self.memory = memory
        self.allocator = allocator
        self.kick_callback = kick
        packed = layout is Layout.PACKED
        if base is None:
            total = packed_layout(size, 0).total if packed else split_layout(size, 0, align).total
            base = allocator.alloc(total, align=max(align, 16) if not packed else 16)
            ring = packed_layout(size, base) if packed else split_layout(size, base, align)
        else:
            ring = packed_layout(size, base) if packed else split_layout(size, base, align)
            allocator.reserve(base, ring.total)
        self.layout = ring
        self.config = QueueConfig(index, size, ring.desc, ring.driver, ring.device, layout, features, device_type)
        memory.write(base, bytes(ring.total))  # 2.8.13: the descriptor ring is zero-initialized; 2.7.10.1 flags 0
        self.notifications_enabled = True  # used buffer notifications wanted (see disable_used_notifications)
        self.size = size
        self.packed = packed
        self._pending: dict[int, _Pending] = {}  # id -> record, in the order made available
        self.kicks = 0
        if packed:
            self.ring: SplitRing | PackedRing = PackedRing(self.config, memory)
            self.next_avail, self.avail_wrap = 0, True  # 2.8.1: wrap counters start at 1
            self.next_used, self.used_wrap = 0, True
            self._free_ids = list(range(size))
            self._added_slots = 0  # slots made available since the last kick decision
            self._num_free = size
        else:
            self.ring = SplitRing(self.config, memory)
            self.avail_idx = 0  # the driver's shadow of avail->idx
            self.last_used = 0
            self._kicked_avail = 0  # avail->idx at the last kick decision
            # Free descriptors: a LIFO list as Linux keeps it (or ring order with IN_ORDER, 2.7.5).
            self._free_descs = list(range(size - 1, -1, -1))
            self._next_in_order = 0
            self._num_free = size

    # -- state ----------------------------------------------------------------------------

    @property
    def num_free(self) -> int:
        """Free descriptor table entries (split) or ring slots (packed)."""
        return self._num_free

    @property
    def in_flight(self) -> list[int]:
        """Ids made available and not yet returned, oldest first."""
        return list(self._pending)

    # -- adding buffers ---------------------------------------------------------------------

    def add(self, readable: Sequence[bytes] = (), writable: Sequence[int] = (), *, indirect: bool = False,
            token: Any = None, hook: Hook | None = None, indirect_hook: Hook | None = None,
            expose: bool = True) -> int:
        """Make one buffer available: ``readable`` byte strings then ``writable`` sizes; its id.

        Each element gets its own guest buffer. ``indirect`` puts them in one indirect
        table (2.7.5.3 / 2.8.7). ``hook`` may edit the ring descriptors and
        ``indirect_hook`` the table entries before they are written (to build anomalies).
        ``expose=False`` writes the descriptors but does not make the chain available
        (split: no avail entry; packed: the first descriptor's flags are not written).
        Raises VqtraceError when the ring has no room.
        """
        elements: list[tuple[int, int, int]] = []  # addr, len, flags
        buffers: list[int] = []
        writable_spans: list[tuple[int, int]] = []
        for data in readable:
            addr = self.allocator.alloc(len(data))
            self.memory.write(addr, data)
            buffers.append(addr)
            elements.append((addr, len(data), 0))
        for length in writable:
            addr = self.allocator.alloc(length)
            self.memory.write(addr, bytes(length))
            buffers.append(addr)
            elements.append((addr, length, VIRTQ_DESC_F_WRITE))
            writable_spans.append((addr, length))
        if not elements:
            raise VqtraceError("a buffer needs at least one element (2.7.13.1)")
        try:
            return self.add_elements(elements, indirect=indirect, token=token, hook=hook,
                                     indirect_hook=indirect_hook, buffers=buffers, expose=expose)
        except VqtraceError:
            for addr in buffers:
                self.allocator.free(addr)
            raise

    def add_elements(self, elements: Sequence[tuple[int, int, int]], *, indirect: bool = False, token: Any = None,
                     hook: Hook | None = None, indirect_hook: Hook | None = None, buffers: Iterable[int] = (),
                     expose: bool = True) -> int:
        """Like :meth:`add` for buffers already in guest memory: (addr, len, flags) elements; the id.

        ``flags`` is 0 or VIRTQ_DESC_F_WRITE; ``buffers`` are allocations to free when used.
        """
        specs = [DescSpec(addr, length, flags & VIRTQ_DESC_F_WRITE) for addr, length, flags in elements]
        writable = [(s.addr, s.len) for s in specs if s.flags & VIRTQ_DESC_F_WRITE]
        table_addr = None
        if indirect:
            if indirect_hook is not None:
                indirect_hook(specs)
            table_addr = self.allocator.alloc(SPLIT_DESC_SIZE * len(specs))
            self._write_indirect_table(table_addr, specs)
            specs = [DescSpec(table_addr, SPLIT_DESC_SIZE * len(specs), VIRTQ_DESC_F_INDIRECT)]
        if len(specs) > self._num_free:
            if table_addr is not None:
                self.allocator.free(table_addr)
            raise VqtraceError(f"queue {self.config.index}: {len(specs)} descriptors needed, {self._num_free} free")
        record = _Pending(0, [], list(buffers), writable, token, table_addr)
        if self.packed:
            self._add_packed(specs, record, hook, expose)
        else:
            self._add_split(specs, record, hook, expose)
        return record.id

    def _write_indirect_table(self, addr: int, specs: list[DescSpec]) -> None:
        body = bytearray()
        for k, spec in enumerate(specs):
            if self.packed:
                body += PACKED_DESC_STRUCT.pack(spec.addr, spec.len, spec.id, spec.flags)  # 2.8.7: no links
            else:
                flags = spec.flags | (VIRTQ_DESC_F_NEXT if k + 1 < len(specs) else 0)
                nxt = k + 1 if k + 1 < len(specs) else 0  # 2.7.5.3: chained by next from entry 0
                if spec.next or spec.flags & VIRTQ_DESC_F_NEXT:  # a hook set them: keep its values
                    flags, nxt = spec.flags, spec.next
                body += DESC_STRUCT.pack(spec.addr & (1 << 64) - 1, spec.len & 0xFFFFFFFF, flags & 0xFFFF,
                                         nxt & 0xFFFF)
        self.memory.write(addr, bytes(body))

    def _take_descs(self, count: int) -> list[int]:
        if self.config.in_order:
            start = self._next_in_order
            self._next_in_order = (start + count) % self.size
            taken = [(start + k) % self.size for k in range(count)]
            for index in taken:
                self._free_descs.remove(index)
            return taken
        return [self._free_descs.pop() for _ in range(count)]

    def _add_split(self, specs: list[DescSpec], record: _Pending, hook: Hook | None, expose: bool) -> None:
        indices = self._take_descs(len(specs))
        for k, spec in enumerate(specs):
            if k + 1 < len(specs):
                spec.flags |= VIRTQ_DESC_F_NEXT  # 2.7.13.1 step 5
                spec.next = indices[k + 1]
        if hook is not None:
            hook(specs)
        for index, spec in zip(indices, specs, strict=True):
            self.ring.write_desc(index, spec.addr, spec.len, spec.flags, spec.next)
        self._num_free -= len(indices)
        record.id, record.descs = indices[0], indices
        self._pending[record.id] = record
        if expose:
            self.expose(record.id)

    def expose(self, head: int) -> None:
        """Split: put ``head`` in the next avail ring entry and publish it (2.7.13.2, 2.7.13.3), raw."""
        ring: SplitRing = self.ring  # type: ignore[assignment]
        ring.set_avail_entry(self.avail_idx, head)
        if head in self._pending:
            self._pending[head].avail_idx = self.avail_idx
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        ring.set_avail_idx(self.avail_idx)

    def set_avail_idx(self, value: int) -> None:
        """Split: write ``avail->idx`` raw (corruption tests); the driver's shadow follows."""
        self.avail_idx = value & 0xFFFF
        self.ring.set_avail_idx(value)  # type: ignore[union-attr]

    def write_desc(self, index: int, addr: int, length: int, flags: int, next_or_id: int = 0) -> None:
        """Write descriptor ``index`` raw: split (addr, len, flags, next), packed (addr, len, id, flags)."""
        if self.packed:
            self.ring.write_desc(index, addr, length, next_or_id, flags)  # type: ignore[call-arg]
        else:
            self.ring.write_desc(index, addr, length, flags, next_or_id)  # type: ignore[call-arg]

    def _add_packed(self, specs: list[DescSpec], record: _Pending, hook: Hook | None, expose: bool) -> None:
        ring: PackedRing = self.ring  # type: ignore[assignment]
        if not self._free_ids:
            raise VqtraceError(f"queue {self.config.index}: no free buffer id")
        buffer_id = self._free_ids.pop(0)
        first, wrap = self.next_avail, self.avail_wrap
        slots, flags_list = [], []
        slot, w = first, wrap
        for k, spec in enumerate(specs):
            spec.flags |= avail_flags_for(w)  # 2.8.21.1: AVAIL = wrap counter, USED = its inverse
            if k + 1 < len(specs):
                spec.flags |= VIRTQ_DESC_F_NEXT
            spec.id = buffer_id  # 2.8.6: the id is required in the last one; Linux writes it in all
            slots.append(slot)
            slot, w = advance(slot, w, 1, self.size)
        if hook is not None:
            hook(specs)
        for k, spec in enumerate(specs):
            ring.write_desc_body(slots[k], spec.addr, spec.len, spec.id)
            flags_list.append(spec.flags)
            if k:
                ring.set_flags(slots[k], spec.flags)
        if expose:
            ring.set_flags(slots[0], flags_list[0])  # the first descriptor last (2.8.6, 2.8.17)
        self.next_avail, self.avail_wrap = slot, w
        self._added_slots += len(specs)
        self._num_free -= len(specs)
        record.id, record.descs, record.avail_idx = buffer_id, slots, first
        self._pending[buffer_id] = record
        self._deferred_first = (slots[0], flags_list[0])

    def publish_first(self) -> None:
        """Packed: write the held-back first flags of the last ``add(..., expose=False)``."""
        slot, flags = self._deferred_first
        self.ring.set_flags(slot, flags)  # type: ignore[union-attr]

    # -- notifications ------------------------------------------------------------------------

    def kick_due(self) -> bool:
        """Whether the device wants an available buffer notification for what was added (2.7.10.1 / 2.8.21.2)."""
        if self.packed:
            desc, flags = self.ring.device_event()  # type: ignore[union-attr]
            return packed_need_event(event_idx=self.config.event_idx, flags=flags, desc=desc, size=self.size,
                                     old=self.next_avail - self._added_slots, new=self.next_avail,
                                     wrap=self.avail_wrap)
        ring: SplitRing = self.ring  # type: ignore[assignment]
        return split_avail_notification_due(
            event_idx=self.config.event_idx, used_flags=ring.used_flags(),
            avail_event=ring.avail_event() if self.config.event_idx else None, old_avail=self._kicked_avail,
            new_avail=self.avail_idx)

    def kick(self, *, force: bool = False) -> bool:
        """Notify the device (call ``kick``) if it is due or ``force``; whether it was notified."""
        due = self.kick_due() or force
        if self.packed:
            self._added_slots = 0
        else:
            self._kicked_avail = self.avail_idx
        if due:
            self.kicks += 1
            if self.kick_callback is not None:
                self.kick_callback(self)
        return due

    def disable_used_notifications(self) -> None:
        """Advise the device not to notify (2.7.7: NO_INTERRUPT; 2.8.14: DISABLE)."""
        self.notifications_enabled = False
        if self.packed:
            self.ring.set_driver_event(0, RING_EVENT_FLAGS_DISABLE)  # type: ignore[union-attr]
        elif not self.config.event_idx:
            self.ring.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT)  # type: ignore[union-attr]
        # With EVENT_IDX used_event simply stays behind (Linux does the same).

    def enable_used_notifications(self) -> None:
        """Ask for a used buffer notification at the next used buffer (``used_event`` = last seen)."""
        self.notifications_enabled = True
        if self.packed:
            if self.config.event_idx:
                self.ring.set_driver_event(event_desc(self.next_used, self.used_wrap),  # type: ignore[union-attr]
                                           RING_EVENT_FLAGS_DESC)
            else:
                self.ring.set_driver_event(0, RING_EVENT_FLAGS_ENABLE)  # type: ignore[union-attr]
        elif self.config.event_idx:
            self.ring.set_used_event(self.last_used)  # type: ignore[union-attr]
        else:
            self.ring.set_avail_flags(0)  # type: ignore[union-attr]

    # -- used buffers ---------------------------------------------------------------------------

    def get_used(self, limit: int | None = None) -> list[UsedBuffer]:
        """The buffers the device has returned since the last call (their memory is freed).

        Raises VqtraceError when the device returns an id that is not in flight.
        """
        out: list[UsedBuffer] = []
        limit = self.size if limit is None else limit
        while len(out) < limit:
            batch = self._next_used_packed() if self.packed else self._next_used_split()
            if not batch:
                break
            out.extend(batch)
        if self.config.event_idx and self.notifications_enabled and out:
            # as Linux does after reading used buffers: next notification at the next one (2.7.7, 2.8.14)
            self.enable_used_notifications()
        return out

    def _next_used_split(self) -> list[UsedBuffer]:
        ring: SplitRing = self.ring  # type: ignore[assignment]
        if ring.used_idx() == self.last_used:
            return []
        used_id, length = ring.used_elem(self.last_used)
        records = self._batch(used_id)
        for record in records:
            self._free_split(record)
        self.last_used = (self.last_used + len(records)) & 0xFFFF
        return self._returned(records, length)

    def _next_used_packed(self) -> list[UsedBuffer]:
        ring: PackedRing = self.ring  # type: ignore[assignment]
        _, length, used_id, flags = ring.desc(self.next_used)
        if not packed_desc_used(flags, self.used_wrap):
            return []
        if not flags & VIRTQ_DESC_F_WRITE:
            length = 0  # 2.8.4
        records = self._batch(used_id)
        slots = sum(len(r.descs) for r in records)
        self.next_used, self.used_wrap = advance(self.next_used, self.used_wrap, slots, self.size)
        for record in records:
            self._num_free += len(record.descs)
            self._free_ids.append(record.id)
            self._free_buffers(record)
        return self._returned(records, length)

    def _batch(self, used_id: int) -> list[_Pending]:
        if used_id not in self._pending:
            raise VqtraceError(f"queue {self.config.index}: the device used id {used_id}, which is not in flight")
        if not self.config.in_order:
            return [self._pending.pop(used_id)]
        batch = []
        for pending_id in list(self._pending):
            batch.append(self._pending.pop(pending_id))
            if pending_id == used_id:
                return batch
        return batch

    def _returned(self, records: list[_Pending], length: int) -> list[UsedBuffer]:
        out = []
        for k, record in enumerate(records):
            last = k == len(records) - 1
            n = length if last else sum(size for _, size in record.writable)
            out.append(UsedBuffer(record.id, n, self._read_written(record, n), record.token, implied=not last))
        return out

    def _read_written(self, record: _Pending, length: int) -> bytes:
        parts, left = [], length
        for addr, size in record.writable:
            if left <= 0:
                break
            take = min(size, left)
            parts.append(self.memory.read(addr, take))
            left -= take
        return b"".join(parts)

    def _free_split(self, record: _Pending) -> None:
        self._free_descs.extend(reversed(record.descs))
        self._num_free += len(record.descs)
        self._free_buffers(record)

    def _free_buffers(self, record: _Pending) -> None:
        for addr in record.buffers:
            self.allocator.free(addr)
        if record.indirect is not None:
            self.allocator.free(record.indirect)
        record.buffers = []
        record.indirect = None


class GuestDriver:
    """A guest: memory, an allocator over it and its queues.

    :meth:`in_buffer` keeps the RAM in a bytearray; :meth:`in_memfd` in a shared memfd
    (``fd``) that a vhost-user back-end can map.
    """

    def __init__(self, memory: GuestMemory, allocator: Allocator, *, fd: int | None = None) -> None:
        self.memory = memory
        self.allocator = allocator
        self.fd = fd
        self.queues: dict[int, DriverQueue] = {}

    @classmethod
    def in_buffer(cls, size: int = 16 << 20, base: int = 0) -> GuestDriver:
        memory = GuestMemory()
        memory.add_buffer(base, bytearray(size), name="guest RAM")
        return cls(memory, Allocator(base, size))

    @classmethod
    def in_memfd(cls, size: int = 16 << 20, base: int = 0, *, user_addr: int | None = None) -> GuestDriver:
        fd = os.memfd_create("vqtrace-guest", 0)
        try:
            os.ftruncate(fd, size)
            memory = GuestMemory()
            memory.add_fd(fd, base, size, writable=True, user_addr=user_addr, name="guest RAM (memfd)")
        except BaseException:
            os.close(fd)
            raise
        return cls(memory, Allocator(base, size), fd=fd)

    def queue(self, index: int = 0, size: int = 256, *, layout: Layout = Layout.SPLIT, features: int = 0,
              **kwargs: Any) -> DriverQueue:
        """Lay out queue ``index`` (see :class:`DriverQueue` for the keywords)."""
        queue = DriverQueue(self.memory, self.allocator, index=index, size=size, layout=layout, features=features,
                            **kwargs)
        self.queues[index] = queue
        return queue

    def close(self) -> None:
        self.memory.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> GuestDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

