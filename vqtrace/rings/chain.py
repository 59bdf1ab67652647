"""Walking descriptor chains defensively (virtio 1.4, 2.7.5, 2.7.5.3; packed 2.8.5-2.8.7).

Every walk is bounded: by the queue size (a chain may not hold more descriptors,
2.7.5.3.1 / 2.8.17), by a visited set (a NEXT loop ends the walk), and by the
indirect table's length. Whatever the memory holds, a walk ends and returns a
:class:`~vqtrace.model.Chain`; each rule broken is an :class:`~vqtrace.model.Anomaly`
on ``chain.anomalies``. A walk stops where it cannot go on (an index out of range,
a loop, an unmapped table) and keeps what it found before.

Descriptors are read with :mod:`struct` (``DESC_STRUCT``, ``PACKED_DESC_STRUCT``);
tests hold them equal to the construct definitions in ``dissectors/virtqueue.py``.
"""

from __future__ import annotations

import bisect
import struct

from ..dissectors.virtqueue import (
    PACKED_DESC_SIZE,
    SPLIT_DESC_SIZE,
    VIRTQ_DESC_F_AVAIL,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_USED,
    VIRTQ_DESC_F_WRITE,
)
from ..errors import GuestMemoryError
from ..memory import GuestMemory
from ..model import Anomaly, Chain, Descriptor, QueueConfig
from . import anomalies as A

# 2.7.5 struct virtq_desc: le64 addr, le32 len, le16 flags, le16 next
DESC_STRUCT = struct.Struct("<QIHH")
# 2.8.13 struct pvirtq_desc: le64 addr, le32 len, le16 id, le16 flags
PACKED_DESC_STRUCT = struct.Struct("<QIHH")
MAX_QUEUE_SIZE = 0x8000  # 2.7 / 2.8: the largest queue size; bounds any indirect table walk
CHAIN_BYTES_LIMIT = 1 << 32  # 2.7.5.2: no chain longer than 2^32 bytes in total

_new_desc = tuple.__new__  # Descriptor is a NamedTuple: build it without the keyword machinery


class MemoryBounds:
    """A quick "is this range mapped?" test over a GuestMemory's merged ranges.

    Rebuilt automatically when regions are added or removed.
    """

    __slots__ = ("_ends", "_generation", "_memory", "_starts")

    def __init__(self, memory: GuestMemory) -> None:
        self._memory = memory
        self._generation = -1
        self._refresh()

    def _refresh(self) -> None:
        ranges = self._memory.ranges()
        self._starts = [start for start, _ in ranges]
        self._ends = [end for _, end in ranges]
        self._generation = self._memory.generation

    def single(self) -> tuple[int, int] | None:
        """(start, end) when guest memory is one contiguous range (the fast path's check), else None."""
        if self._generation != self._memory.generation:
            self._refresh()
        if len(self._starts) == 1:
            return self._starts[0], self._ends[0]
        return None

    def holds(self, addr: int, length: int) -> bool:
        """Whether ``[addr, addr + length)`` is mapped (an empty range always is)."""
        if length == 0:
            return True
        if self._generation != self._memory.generation:
            self._refresh()
        at = bisect.bisect_right(self._starts, addr) - 1
        return at >= 0 and addr + length <= self._ends[at]


class AreaViews:
    """Views of a queue's fixed areas (descriptor table, driver and device areas), looked up once.

    ``view(addr, length)`` is :meth:`GuestMemory.view`'s answer: the first call for a range
    asks ``memory`` (same checks, same errors); when the range lies in one region, later calls
    slice that region's bytes directly, until a region is added or removed. A range across two
    regions (which ``memory`` answers with a copy) is asked for every time.
    """

    __slots__ = ("_cache", "_generation", "memory")

    def __init__(self, memory: GuestMemory) -> None:
        self.memory = memory
        self._cache: dict[tuple[int, int], tuple[memoryview, int]] = {}
        self._generation = memory.generation

    def view(self, addr: int, length: int) -> memoryview:
        if self._generation != self.memory.generation:
            self._cache.clear()
            self._generation = self.memory.generation
        hit = self._cache.get((addr, length))
        if hit is not None:
            data, offset = hit
            return data[offset:offset + length]
        view = self.memory.view(addr, length)
        region = self.memory.region_at(addr)
        if region is not None and addr + length <= region.end:
            self._cache[(addr, length)] = (region.data, addr - region.guest_addr)
        return view

    def read_u16(self, addr: int) -> int:
        return int.from_bytes(self.view(addr, 2), "little")


class _Walk:
    """The state of one chain walk: descriptors, anomalies and the running checks."""

    __slots__ = ("anomalies", "bounds", "config", "count", "descs", "memory", "packed", "readable", "seen_write",
                 "writable")

    def __init__(self, config: QueueConfig, memory: GuestMemory, bounds: MemoryBounds, packed: bool) -> None:
        self.config = config
        self.memory = memory
        self.bounds = bounds
        self.packed = packed
        self.descs: list[Descriptor] = []
        self.anomalies: list[Anomaly] = []
        self.count = 0  # buffers (data descriptors) so far
        self.readable = 0
        self.writable = 0
        self.seen_write = False

    def flag(self, code: str, message: str, id: int | None = None, address: int | None = None) -> None:
        self.anomalies.append(A.anomaly(code, message, packed=self.packed, queue=self.config.index, id=id,
                                        address=address))

    def buffer(self, desc: Descriptor) -> bool:
        """Account one data descriptor; False when the chain is too long to go on (2.7.5.3.1)."""
        self.descs.append(desc)
        self.count += 1
        addr, length, flags = desc[0], desc[1], desc[2]
        where = f"descriptor {desc.index}" + (" of the indirect table" if desc.in_indirect else "")
        if flags & VIRTQ_DESC_F_WRITE:
            self.seen_write = True
            self.writable += length
        else:
            if self.seen_write:
                self.flag(A.READABLE_AFTER_WRITABLE, f"{where} is device-readable after a device-writable one",
                          id=desc.index)
            self.readable += length
        if not self.bounds.holds(addr, length):
            self.flag(A.DESC_OUT_OF_MEMORY, f"{where}: buffer 0x{addr:x} (+{length} bytes) is outside guest memory",
                      id=desc.index, address=addr)
        if self.count > self.config.size:
            self.flag(A.CHAIN_TOO_LONG, f"the chain has more than {self.config.size} descriptors (the queue size)")
            return False
        return True

    def finish(self, chain: Chain) -> Chain:
        if self.readable + self.writable > CHAIN_BYTES_LIMIT:
            self.flag(A.CHAIN_TOO_BIG, f"the buffers total {self.readable + self.writable} bytes, more than 2^32")
        chain.anomalies = self.anomalies
        return chain

    def indirect_table(self, desc: Descriptor, where: str) -> memoryview | None:
        """The indirect table ``desc`` points to (2.7.5.3), or None when it cannot be read."""
        addr, length = desc[0], desc[1]
        if not self.config.indirect:
            self.flag(A.INDIRECT_NOT_NEGOTIATED, f"{where} is INDIRECT without VIRTIO_F_INDIRECT_DESC",
                      id=desc.index)
        if length == 0 or length % SPLIT_DESC_SIZE:
            self.flag(A.INDIRECT_BAD_LEN, f"{where}: indirect table length {length} is not a non-zero multiple "
                                          f"of 16", id=desc.index, address=addr)
            if length < SPLIT_DESC_SIZE:
                return None
        entries = min(length // SPLIT_DESC_SIZE, MAX_QUEUE_SIZE)
        try:
            return self.memory.view(addr, entries * SPLIT_DESC_SIZE)
        except GuestMemoryError:
            self.flag(A.DESC_OUT_OF_MEMORY, f"{where}: indirect table 0x{addr:x} (+{length} bytes) is outside "
                                            f"guest memory", id=desc.index, address=addr)
            return None


def _walk_indirect_split(walk: _Walk, table: memoryview) -> None:
    """The entries of a split indirect table, linked by ``next`` from entry 0 (2.7.5.3)."""
    entries = len(table) // SPLIT_DESC_SIZE
    unpack = DESC_STRUCT.unpack_from
    seen = {0}
    j = 0
    while True:
        addr, length, flags, nxt = unpack(table, j * SPLIT_DESC_SIZE)
        desc = _new_desc(Descriptor, (addr, length, flags, j, nxt, 0, True))
        if flags & VIRTQ_DESC_F_INDIRECT:
            walk.descs.append(desc)
            walk.flag(A.NESTED_INDIRECT, f"entry {j} of the indirect table is itself INDIRECT", id=j, address=addr)
            return
        if not walk.buffer(desc) or not flags & VIRTQ_DESC_F_NEXT:
            return
        if nxt >= entries:
            walk.flag(A.DESC_INDEX_RANGE, f"entry {j} of the indirect table links to {nxt}, outside its "
                                          f"{entries} entries", id=j)
            return
        if nxt in seen:
            walk.flag(A.DESC_LOOP, f"entry {j} of the indirect table links back to entry {nxt}", id=nxt)
            return
        seen.add(nxt)
        j = nxt


class SplitRows:
    """Lazy descriptors of a split chain: unpacked rows (addr, len, flags, next) and their indices.

    Rows from ``table_from`` on are entries of the indirect table the row before points to.
    """

    __slots__ = ("indices", "rows", "table_from")

    def __init__(self, rows: list[tuple[int, int, int, int]], indices: list[int], table_from: int | None = None
                 ) -> None:
        self.rows, self.indices = rows, indices
        self.table_from = len(indices) if table_from is None else table_from

    @property
    def ring_len(self) -> int:
        return self.table_from

    @property
    def ring_indices(self) -> list[int]:
        return self.indices if self.table_from == len(self.indices) else self.indices[:self.table_from]

    def materialize(self) -> list[Descriptor]:
        cut = self.table_from
        return [_new_desc(Descriptor, (r[0], r[1], r[2], i, r[3], 0, k >= cut))
                for k, (r, i) in enumerate(zip(self.rows, self.indices, strict=True))]


class PackedRows:
    """Lazy descriptors of a packed list: unpacked rows (addr, len, id, flags) and their slots.

    Rows from ``table_from`` on are entries of the indirect table in the slot before.
    """

    __slots__ = ("indices", "rows", "table_from")

    def __init__(self, rows: list[tuple[int, int, int, int]], indices: list[int], table_from: int | None = None
                 ) -> None:
        self.rows, self.indices = rows, indices
        self.table_from = len(indices) if table_from is None else table_from

    @property
    def ring_len(self) -> int:
        return self.table_from

    @property
    def ring_indices(self) -> list[int]:
        return self.indices if self.table_from == len(self.indices) else self.indices[:self.table_from]

    def materialize(self) -> list[Descriptor]:
        cut = self.table_from
        return [_new_desc(Descriptor, (r[0], r[1], r[3], i, 0, r[2], k >= cut))
                for k, (r, i) in enumerate(zip(self.rows, self.indices, strict=True))]


def ring_indices(chain: Chain) -> list[int]:
    """The descriptor table entries (split) or ring slots (packed) ``chain`` occupies, without materializing it."""
    lazy = chain._lazy
    if chain._descriptors is None and lazy is not None:
        return lazy.ring_indices
    return [d.index for d in chain.descriptors if not d.in_indirect]


def _split_fast(table: memoryview | bytes, head: int, size: int, bounds: MemoryBounds, memory: GuestMemory,
                indirect: bool) -> tuple[SplitRows, int, int] | None:
    """The common case, quickly: in order, in memory, no loop, at most one well-formed indirect table.

    None: walk carefully (which finds what is wrong, if anything).
    """
    single = bounds.single()
    if single is None:
        return None
    lo, hi = single
    unpack = DESC_STRUCT.unpack_from
    rows: list[tuple[int, int, int, int]] = []
    indices = [head]
    readable = writable = count = 0
    seen_write = False
    i, entries, table_from = head, size, None
    while True:
        row = unpack(table, i << 4)
        rows.append(row)
        addr, length, flags, nxt = row
        if flags & VIRTQ_DESC_F_INDIRECT:
            # 2.7.5.3: one table, last in the chain, negotiated, a non-zero multiple of 16, in memory
            if (table_from is not None or not indirect or flags & VIRTQ_DESC_F_NEXT or not length
                    or length & 15 or not (lo <= addr and addr + length <= hi) or length > MAX_QUEUE_SIZE * 16):
                return None
            table_from = len(indices)
            table, entries, i = memory.view(addr, length), length >> 4, 0
            indices.append(0)
            continue
        count += 1
        if flags & VIRTQ_DESC_F_WRITE:
            writable += length
            seen_write = True
        elif seen_write:
            return None
        else:
            readable += length
        if length and not (lo <= addr and addr + length <= hi):
            return None
        if not flags & VIRTQ_DESC_F_NEXT:
            if readable + writable > CHAIN_BYTES_LIMIT or count > size:
                return None
            return SplitRows(rows, indices, table_from), readable, writable
        if nxt >= entries or count >= size:
            return None
        if table_from is None:
            if nxt in indices:  # a chain is short: a list search beats a set
                return None
        elif nxt in indices[table_from:]:
            return None
        indices.append(nxt)
        i = nxt


def walk_split_chain(config: QueueConfig, memory: GuestMemory, head: int, *, avail_idx: int = 0,
                     table: memoryview | bytes | None = None, bounds: MemoryBounds | None = None) -> Chain:
    """The chain whose head is descriptor ``head`` of a split ring (2.7.5, 2.7.5.3).

    ``table`` is the descriptor table (``16 * size`` bytes) when the caller has already
    read it, ``bounds`` a reusable :class:`MemoryBounds`; both are read from ``memory``
    otherwise. Never raises for bad ring contents: see ``chain.anomalies``.
    """
    bounds = bounds or MemoryBounds(memory)
    size = config.size
    if table is not None and 0 <= head < size:
        fast = _split_fast(table, head, size, bounds, memory, config.indirect)
        if fast is not None:
            source, readable, writable = fast
            return Chain.lazy(config.index, head, avail_idx, source, readable, writable)
    return careful_split_chain(config, memory, head, avail_idx=avail_idx, table=table, bounds=bounds)


def careful_split_chain(config: QueueConfig, memory: GuestMemory, head: int, *, avail_idx: int = 0,
                        table: memoryview | bytes | None = None, bounds: MemoryBounds | None = None) -> Chain:
    """:func:`walk_split_chain` without the fast path: the reference the fast paths are tested against."""
    bounds = bounds or MemoryBounds(memory)
    walk = _Walk(config, memory, bounds, False)
    chain = Chain(config.index, head, avail_idx, walk.descs, readable_len=0, writable_len=0)
    size = config.size
    if table is None:
        try:
            table = memory.view(config.desc, size * SPLIT_DESC_SIZE)
        except GuestMemoryError:
            walk.flag(A.RING_UNMAPPED, f"the descriptor table 0x{config.desc:x} (+{size * 16} bytes) is not in "
                                       f"guest memory", address=config.desc)
            return walk.finish(chain)
    if not 0 <= head < size:
        walk.flag(A.DESC_INDEX_RANGE, f"head {head} is not below the queue size {size}", id=head)
        return walk.finish(chain)
    unpack = DESC_STRUCT.unpack_from
    seen = {head}
    i = head
    while True:
        addr, length, flags, nxt = unpack(table, i * SPLIT_DESC_SIZE)
        desc = _new_desc(Descriptor, (addr, length, flags, i, nxt, 0, False))
        if flags & VIRTQ_DESC_F_INDIRECT:
            # 2.7.5.3.2: zero or more chained descriptors, then one INDIRECT one, which ends the chain.
            walk.descs.append(desc)
            where = f"descriptor {i}"
            if flags & VIRTQ_DESC_F_NEXT:
                walk.flag(A.INDIRECT_WITH_NEXT, f"{where} has both INDIRECT and NEXT", id=i)
            indirect = walk.indirect_table(desc, where)
            if indirect is not None:
                _walk_indirect_split(walk, indirect)
            break
        if not walk.buffer(desc) or not flags & VIRTQ_DESC_F_NEXT:
            break
        if nxt >= size:
            walk.flag(A.DESC_INDEX_RANGE, f"descriptor {i} links to {nxt}, not below the queue size {size}", id=i)
            break
        if nxt in seen:
            walk.flag(A.DESC_LOOP, f"descriptor {i} links back to descriptor {nxt} of the chain", id=nxt)
            break
        seen.add(nxt)
        i = nxt
    chain.readable_len, chain.writable_len = walk.readable, walk.writable
    return walk.finish(chain)


def packed_desc_available(flags: int, wrap: bool) -> bool:
    """Whether a packed descriptor's flags mark it available for wrap counter ``wrap`` (2.8.1)."""
    return bool(flags & VIRTQ_DESC_F_AVAIL) == wrap and bool(flags & VIRTQ_DESC_F_USED) != wrap


def packed_desc_used(flags: int, wrap: bool) -> bool:
    """Whether a packed descriptor's flags mark it used for wrap counter ``wrap`` (2.8.1)."""
    return bool(flags & VIRTQ_DESC_F_AVAIL) == wrap and bool(flags & VIRTQ_DESC_F_USED) == wrap


def _walk_indirect_packed(walk: _Walk, table: memoryview) -> None:
    """A packed indirect table: entries one after another, no links (2.8.7)."""
    unpack = PACKED_DESC_STRUCT.unpack_from
    for j in range(len(table) // PACKED_DESC_SIZE):
        addr, length, buffer_id, flags = unpack(table, j * PACKED_DESC_SIZE)
        desc = _new_desc(Descriptor, (addr, length, flags, j, 0, buffer_id, True))
        if flags & VIRTQ_DESC_F_INDIRECT:
            walk.descs.append(desc)
            walk.flag(A.NESTED_INDIRECT, f"entry {j} of the indirect table is itself INDIRECT", id=j, address=addr)
            return
        if not walk.buffer(desc):
            return


def _packed_fast(ring: memoryview | bytes, slot: int, wrap: bool, size: int, bounds: MemoryBounds,
                 memory: GuestMemory, indirect: bool) -> tuple[PackedRows, int, int, int] | None:
    """The common case, quickly: all available, in memory, or one well-formed indirect table. None: walk carefully."""
    single = bounds.single()
    if single is None:
        return None
    lo, hi = single
    unpack = PACKED_DESC_STRUCT.unpack_from
    rows: list[tuple[int, int, int, int]] = []
    indices: list[int] = []
    readable = writable = 0
    seen_write = False
    i, w = slot, wrap
    while True:
        row = unpack(ring, i << 4)
        addr, length, buffer_id, flags = row
        if flags & VIRTQ_DESC_F_INDIRECT:
            # 2.8.7: a list of one descriptor pointing to a table of pvirtq_desc, entries one after another
            if (indices or not indirect or flags & VIRTQ_DESC_F_NEXT or not length or length & 15
                    or not (lo <= addr and addr + length <= hi) or length >> 4 > size):
                return None
            rows.append(row)
            indices.append(i)
            table = memory.view(addr, length)
            for j in range(length >> 4):
                entry = unpack(table, j << 4)
                e_addr, e_len, _, e_flags = entry
                if e_flags & VIRTQ_DESC_F_INDIRECT or (e_len and not (lo <= e_addr and e_addr + e_len <= hi)):
                    return None
                if e_flags & VIRTQ_DESC_F_WRITE:
                    writable += e_len
                    seen_write = True
                elif seen_write:
                    return None
                else:
                    readable += e_len
                rows.append(entry)
                indices.append(j)
            if buffer_id >= size or readable + writable > CHAIN_BYTES_LIMIT:
                return None
            return PackedRows(rows, indices, 1), readable, writable, buffer_id
        if flags & VIRTQ_DESC_F_WRITE:
            writable += length
            seen_write = True
        elif seen_write:
            return None
        else:
            readable += length
        if length and not (lo <= addr and addr + length <= hi):
            return None
        rows.append(row)
        indices.append(i)
        if not flags & VIRTQ_DESC_F_NEXT:
            break
        if len(indices) >= size:
            return None
        i += 1
        if i == size:
            i, w = 0, not w
        nflags = unpack(ring, i << 4)[3]
        if bool(nflags & VIRTQ_DESC_F_AVAIL) != w or bool(nflags & VIRTQ_DESC_F_USED) == w:
            return None
    if buffer_id >= size or readable + writable > CHAIN_BYTES_LIMIT:
        return None
    return PackedRows(rows, indices), readable, writable, buffer_id


def walk_packed_chain(config: QueueConfig, memory: GuestMemory, slot: int, wrap: bool, *,
                      ring: memoryview | bytes | None = None, bounds: MemoryBounds | None = None) -> Chain:
    """The descriptor list that starts at ring ``slot``, made available with wrap counter ``wrap`` (2.8.5-2.8.7).

    The caller has seen the first descriptor available. The list follows NEXT into the
    following slots (wrapping at the ring end, where the expected AVAIL/USED bits flip);
    its buffer id is in the last descriptor (2.8.6). ``chain.ring_len`` is the number
    of slots it occupies. Never raises for bad ring contents: see ``chain.anomalies``.
    """
    bounds = bounds or MemoryBounds(memory)
    size = config.size
    if ring is not None and 0 <= slot < size:
        fast = _packed_fast(ring, slot, wrap, size, bounds, memory, config.indirect)
        if fast is not None:
            source, readable, writable, buffer_id = fast
            return Chain.lazy(config.index, buffer_id, slot, source, readable, writable, wrap=wrap)
    return careful_packed_chain(config, memory, slot, wrap, ring=ring, bounds=bounds)


def careful_packed_chain(config: QueueConfig, memory: GuestMemory, slot: int, wrap: bool, *,
                         ring: memoryview | bytes | None = None, bounds: MemoryBounds | None = None) -> Chain:
    """:func:`walk_packed_chain` without the fast path: the reference the fast paths are tested against."""
    bounds = bounds or MemoryBounds(memory)
    walk = _Walk(config, memory, bounds, True)
    chain = Chain(config.index, 0, slot, walk.descs, wrap=wrap, readable_len=0, writable_len=0)
    size = config.size
    if ring is None:
        try:
            ring = memory.view(config.desc, size * PACKED_DESC_SIZE)
        except GuestMemoryError:
            walk.flag(A.RING_UNMAPPED, f"the descriptor ring 0x{config.desc:x} (+{size * 16} bytes) is not in "
                                       f"guest memory", address=config.desc)
            return walk.finish(chain)
    if not 0 <= slot < size:
        walk.flag(A.DESC_INDEX_RANGE, f"slot {slot} is not below the queue size {size}", id=slot)
        return walk.finish(chain)
    unpack = PACKED_DESC_STRUCT.unpack_from
    i, w, slots = slot, wrap, 0
    buffer_id = 0
    while True:
        addr, length, buffer_id, flags = unpack(ring, i * PACKED_DESC_SIZE)
        desc = _new_desc(Descriptor, (addr, length, flags, i, 0, buffer_id, False))
        slots += 1
        if flags & VIRTQ_DESC_F_INDIRECT:
            walk.descs.append(desc)
            where = f"slot {i}"
            if flags & VIRTQ_DESC_F_NEXT or slots > 1:
                walk.flag(A.INDIRECT_WITH_NEXT, f"{where} is INDIRECT inside a list linked by NEXT", id=i)
            indirect = walk.indirect_table(desc, where)
            if indirect is not None:
                _walk_indirect_packed(walk, indirect)
            if not flags & VIRTQ_DESC_F_NEXT:
                break
        elif not walk.buffer(desc) or not flags & VIRTQ_DESC_F_NEXT:
            break
        if slots >= size:
            walk.flag(A.CHAIN_TOO_LONG, f"the list starting at slot {slot} has NEXT set in all {size} slots")
            break
        i += 1
        if i == size:
            i, w = 0, not w
        nflags = PACKED_DESC_STRUCT.unpack_from(ring, i * PACKED_DESC_SIZE)[3]
        if not packed_desc_available(nflags, w):
            walk.flag(A.PACKED_CHAIN_INCOMPLETE, f"slot {i}, next in the list starting at slot {slot}, is not "
                                                 f"available (flags 0x{nflags:04x}, wrap counter {int(w)})", id=i)
            break
    chain.id = buffer_id
    if buffer_id >= size:
        walk.flag(A.PACKED_ID_RANGE, f"buffer id {buffer_id} is not below the queue size {size}", id=buffer_id)
    chain.readable_len, chain.writable_len = walk.readable, walk.writable
    return walk.finish(chain)
