"""Walking many chains at once with numpy (the ring readers' fast path for big polls).

A poll that finds many new chains (a dump, a trace catching up, a benchmark) walks
them all together: step ``k`` reads the ``k``-th descriptor of every chain still
going, so the Python cost is per step, not per descriptor. Only the common case is
done here: direct descriptors, in memory, readable before writable, no loop and at
most ``MAX_STEPS`` long. Any chain that is not (or might not be) is handed back to
the careful walkers of :mod:`vqtrace.rings.chain`, which find and name the anomaly.
Tests hold the results equal to the careful walkers'.

The descriptor layout comes from ``dissectors/virtqueue.py`` (``split_desc`` and
``packed_desc``); ``SPLIT_DTYPE``/``PACKED_DTYPE`` are tested equal to it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..dissectors.virtqueue import (
    VIRTQ_DESC_F_AVAIL,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_USED,
    VIRTQ_DESC_F_WRITE,
)
from ..memory import GuestMemory
from ..model import Chain, Descriptor, QueueConfig
from .chain import CHAIN_BYTES_LIMIT, MemoryBounds, careful_split_chain, walk_split_chain

SPLIT_DTYPE = np.dtype([("addr", "<u8"), ("len", "<u4"), ("flags", "<u2"), ("next", "<u2")])
PACKED_DTYPE = np.dtype([("addr", "<u8"), ("len", "<u4"), ("id", "<u2"), ("flags", "<u2")])
MAX_STEPS = 64  # longer chains go to the careful walker
MIN_BATCH = 16  # below this many chains the scalar walker is quicker

_new_desc = tuple.__new__


class _TableRows:
    """Lazy descriptors read from a numpy copy of the table: the entries at ``indices``."""

    __slots__ = ("indices", "packed", "table")

    def __init__(self, table: np.ndarray, indices: list[int], packed: bool) -> None:
        self.table, self.indices, self.packed = table, indices, packed

    @property
    def ring_len(self) -> int:
        return len(self.indices)

    @property
    def ring_indices(self) -> list[int]:
        return self.indices

    def materialize(self) -> list[Descriptor]:
        rows = self.table[self.indices].tolist()
        if self.packed:
            return [_new_desc(Descriptor, (r[0], r[1], r[3], i, 0, r[2], False))
                    for r, i in zip(rows, self.indices, strict=True)]
        return [_new_desc(Descriptor, (r[0], r[1], r[2], i, r[3], 0, False))
                for r, i in zip(rows, self.indices, strict=True)]


def _in_bounds(addr: np.ndarray, length: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Per descriptor: the buffer is empty or inside [lo, hi).

    ``addr <= hi`` first: then ``addr + length`` cannot overflow 64 bits (hi is a real
    memory end, far below 2^64 - 2^32).
    """
    return (length == 0) | ((addr >= lo) & (addr <= hi) & (addr + length <= hi))


class _IndirectRows:
    """Lazy descriptors of one INDIRECT descriptor and its table: ``entries[start:end]``."""

    __slots__ = ("end", "entries", "head", "head_row", "packed", "start")

    def __init__(self, head: int, head_row: tuple, entries: np.ndarray, start: int, end: int,
                 packed: bool = False) -> None:
        self.head, self.head_row, self.entries, self.start, self.end = head, head_row, entries, start, end
        self.packed = packed

    ring_len = 1

    @property
    def ring_indices(self) -> list[int]:
        return [self.head]

    def materialize(self) -> list[Descriptor]:
        r, entries = self.head_row, self.entries[self.start:self.end].tolist()
        if self.packed:  # rows are (addr, len, id, flags)
            out = [_new_desc(Descriptor, (r[0], r[1], r[3], self.head, 0, r[2], False))]
            return out + [_new_desc(Descriptor, (e[0], e[1], e[3], j, 0, e[2], True)) for j, e in enumerate(entries)]
        out = [_new_desc(Descriptor, (r[0], r[1], r[2], self.head, r[3], 0, False))]
        return out + [_new_desc(Descriptor, (e[0], e[1], e[2], j, e[3], 0, True)) for j, e in enumerate(entries)]


def _flat(memory: GuestMemory, lo: int) -> memoryview | None:
    """The bytes of guest memory from ``lo`` when one region holds all of it (slices are then views)."""
    regions = memory.regions
    return regions[0].data if len(regions) == 1 and regions[0].guest_addr == lo else None


def _indirect_batch(config: QueueConfig, memory: GuestMemory, rows: np.ndarray, heads: Sequence[int],
                    starts: list[int], ends: list[int], walked: list[int], lo: int, hi: int
                    ) -> dict[int, tuple[_IndirectRows, int, int]]:
    """Chains that are one INDIRECT descriptor with a table linked 0 -> 1 -> ... -> last (as Linux writes
    them, 2.7.5.3), checked together: {position in ``heads``: (source, readable, writable)}.

    Anything else (a table the chain leaves early, links out of order, a bad entry) is left
    to the one-by-one walkers.
    """
    size = config.size
    singles = [k for k in range(len(heads)) if ends[k] - starts[k] == 1 and heads[k] < size]
    if not singles:
        return {}
    picked = rows[[walked[starts[k]] for k in singles]]
    flags, length, addr = picked["flags"].tolist(), picked["len"].tolist(), picked["addr"].tolist()
    chosen, views = [], []
    flat = _flat(memory, lo)
    for n, k in enumerate(singles):
        f, ln, a = flags[n], length[n], addr[n]
        if (f & (VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT)) == VIRTQ_DESC_F_INDIRECT and ln and not ln & 15 \
                and ln >> 4 <= size and lo <= a and a + ln <= hi:
            chosen.append((k, n))
            views.append(flat[a - lo:a - lo + ln] if flat is not None else memory.view(a, ln))
    if not chosen:
        return {}
    entries = np.frombuffer(b"".join(views), dtype=SPLIT_DTYPE)
    counts = [len(v) >> 4 for v in views]
    seg_starts = np.cumsum([0, *counts[:-1]]).tolist()
    seg = np.repeat(np.arange(len(counts)), counts)
    local = np.arange(len(entries)) - np.asarray(seg_starts)[seg]
    last = local == np.asarray(counts)[seg] - 1
    e_flags = entries["flags"]
    e_next = ((e_flags & VIRTQ_DESC_F_NEXT) != 0)
    write = (e_flags & VIRTQ_DESC_F_WRITE) != 0
    bad = ((e_flags & VIRTQ_DESC_F_INDIRECT) != 0) | ~_in_bounds(entries["addr"], entries["len"], lo, hi)
    bad |= e_next == last  # NEXT on all but the last entry ...
    bad |= e_next & (entries["next"] != local + 1)  # ... each linking to the following one
    bad[1:] |= write[:-1] & ~write[1:] & (seg[1:] == seg[:-1])  # 2.7.4.2
    length64 = entries["len"].astype(np.uint64)
    readable = np.add.reduceat(np.where(write, 0, length64), seg_starts).tolist()
    writable = np.add.reduceat(np.where(write, length64, 0), seg_starts).tolist()
    flagged = np.logical_or.reduceat(bad, seg_starts).tolist()
    out = {}
    for m, (k, n) in enumerate(chosen):
        if flagged[m] or readable[m] + writable[m] > CHAIN_BYTES_LIMIT:
            continue
        head_row = (addr[n], length[n], flags[n], int(picked["next"][n]))
        out[k] = (_IndirectRows(heads[k], head_row, entries, seg_starts[m], seg_starts[m] + counts[m]), readable[m],
                  writable[m])
    return out


def walk_split_batch(config: QueueConfig, memory: GuestMemory, heads: Sequence[int], first_idx: int,
                     table: memoryview | bytes, bounds: MemoryBounds) -> list[Chain]:
    """The chains of ``heads``, made available at free-running indices ``first_idx`` on, in order.

    The checks are done once per table entry, with numpy: an entry is bad when it is
    INDIRECT, outside memory, links outside the table, or is writable and links to a
    readable one (2.7.4.2). Python then only follows the links; a chain that touches a
    bad entry, or runs longer than ``MAX_STEPS`` (a loop does), is walked carefully.
    """
    size, queue = config.size, config.index
    single = bounds.single()
    if single is None:
        return [careful_split_chain(config, memory, h, avail_idx=(first_idx + k) & 0xFFFF, table=table,
                                    bounds=bounds) for k, h in enumerate(heads)]
    lo, hi = single
    rows = np.frombuffer(bytes(table), dtype=SPLIT_DTYPE, count=size)  # a copy: later ring writes do not show
    flags_col, next_col = rows["flags"], rows["next"]
    next_list = next_col.tolist()
    more = (((flags_col & VIRTQ_DESC_F_NEXT) != 0) & (next_col < size)).tolist()
    limit = min(MAX_STEPS, size)
    walked: list[int] = []
    starts: list[int] = []
    too_long: list[bool] = []
    append = walked.append
    for head in heads:
        starts.append(len(walked))
        if head >= size:
            append(0)
            too_long.append(True)
            continue
        i, n = head, 1
        append(i)
        while more[i]:
            i = next_list[i]
            append(i)
            n += 1
            if n > limit:
                break
        too_long.append(n > limit)
    # The checks, over the walked descriptors only (contiguous arrays: quick).
    index = np.asarray(walked, dtype=np.int64)
    picked = rows[index]
    flags, length = picked["flags"], picked["len"]
    write = (flags & VIRTQ_DESC_F_WRITE) != 0
    bad = ((flags & VIRTQ_DESC_F_INDIRECT) != 0) | ~_in_bounds(picked["addr"], length, lo, hi)
    bad |= ((flags & VIRTQ_DESC_F_NEXT) != 0) & (picked["next"] >= size)  # a link out of the table
    first = np.zeros(len(walked), dtype=bool)
    first[starts] = True
    bad[1:] |= write[:-1] & ~write[1:] & ~first[1:]  # 2.7.4.2: a writable then a readable one
    length64 = length.astype(np.uint64)
    readable = np.add.reduceat(np.where(write, 0, length64), starts).tolist()
    writable = np.add.reduceat(np.where(write, length64, 0), starts).tolist()
    flagged = np.logical_or.reduceat(bad, starts).tolist()
    ends = [*starts[1:], len(walked)]
    indirect = _indirect_batch(config, memory, rows, heads, starts, ends, walked, lo, hi) if config.indirect else {}
    chains = []
    lazy = Chain.lazy
    for k, head in enumerate(heads):
        avail_idx = (first_idx + k) & 0xFFFF
        found = indirect.get(k)
        if found is not None:
            source, r_len, w_len = found
            chains.append(lazy(queue, head, avail_idx, source, r_len, w_len))
        elif flagged[k] or too_long[k] or readable[k] + writable[k] > CHAIN_BYTES_LIMIT:
            # indirect chains (or anything odd): one by one, the scalar fast path first
            chains.append(walk_split_chain(config, memory, head, avail_idx=avail_idx, table=table, bounds=bounds))
        else:
            chains.append(lazy(queue, head, avail_idx, _TableRows(rows, walked[starts[k]:ends[k]], False),
                               readable[k], writable[k]))
    return chains


def scan_packed_batch(config: QueueConfig, memory: GuestMemory, slot: int, wrap: bool, ring: memoryview | bytes,
                      bounds: MemoryBounds) -> list[Chain]:
    """The complete lists made available from ``slot`` (wrap counter ``wrap``) on, in ring order.

    Stops before the first slot not available, and before the first list that needs a
    careful walk (which the caller then does, one list at a time).
    """
    size, queue = config.size, config.index
    single = bounds.single()
    if single is None:
        return []
    lo, hi = single
    rows = np.frombuffer(bytes(ring), dtype=PACKED_DTYPE, count=size)
    order = (np.arange(size) + slot) % size
    lap = np.arange(size) + slot >= size  # positions past the ring end: the other wrap counter
    flags = rows["flags"][order]
    expect = np.where(lap, not wrap, wrap)
    avail_bit = (flags & VIRTQ_DESC_F_AVAIL) != 0
    used_bit = (flags & VIRTQ_DESC_F_USED) != 0
    available = (avail_bit == expect) & (used_bit != expect)
    stop = int(np.argmin(available)) if not available.all() else size
    if stop == 0:
        return []
    flags = flags[:stop]
    ends = np.flatnonzero((flags & VIRTQ_DESC_F_NEXT) == 0)
    if not len(ends):
        return []
    ends = ends.tolist()
    starts = [0, *[e + 1 for e in ends[:-1]]]
    stop = ends[-1] + 1  # an unfinished list at the end is the careful walker's
    flags = flags[:stop]
    positions = order[:stop]
    length = rows["len"][positions]
    write = (flags & VIRTQ_DESC_F_WRITE) != 0
    indirect = _packed_indirect(config, memory, rows, positions, flags, starts, ends, lo, hi)
    is_table = (flags & VIRTQ_DESC_F_INDIRECT) != 0
    if indirect:
        is_table = is_table.copy()
        is_table[[starts[k] for k in indirect]] = False  # checked with their tables below
        write = write.copy()
        write[[starts[k] for k in indirect]] = False  # 2.8.7: WRITE is reserved on the table's descriptor
    bad = is_table | ~_in_bounds(rows["addr"][positions], length, lo, hi)
    # readable after writable inside a list: a write seen earlier in the same list
    seg = np.zeros(stop, dtype=np.int64)
    seg[[e + 1 for e in ends[:-1]]] = 1
    seg = np.cumsum(seg)
    writes_before = np.cumsum(write) - write
    first_of_seg = np.asarray(starts, dtype=np.int64)
    writes_before_seg = writes_before[first_of_seg][seg]
    bad |= ~write & (writes_before - writes_before_seg > 0)
    length64 = length.astype(np.uint64)
    w_sum = np.add.reduceat(np.where(write, length64, 0), first_of_seg).tolist()
    r_sum = np.add.reduceat(np.where(write, 0, length64), first_of_seg).tolist()
    bad_list = np.logical_or.reduceat(bad, first_of_seg).tolist()
    ids = rows["id"][positions[ends]].tolist()
    pos_list = positions.tolist()
    lap_list = lap[:stop].tolist()
    chains: list[Chain] = []
    lazy = Chain.lazy
    for k, (start, end) in enumerate(zip(starts, ends, strict=True)):
        if bad_list[k] or end - start + 1 > size or ids[k] >= size or r_sum[k] + w_sum[k] > CHAIN_BYTES_LIMIT:
            break
        first = pos_list[start]
        chain_wrap = (not wrap) if lap_list[start] else wrap
        found = indirect.get(k)
        if found is not None:
            source, r_len, w_len = found
            if source is None:
                break
            chains.append(lazy(queue, ids[k], first, source, r_len, w_len, wrap=chain_wrap))
            continue
        chains.append(lazy(queue, ids[k], first, _TableRows(rows, pos_list[start:end + 1], True), r_sum[k],
                           w_sum[k], wrap=chain_wrap))
    return chains


def _packed_indirect(config: QueueConfig, memory: GuestMemory, rows: np.ndarray, positions: np.ndarray,
                     flags: np.ndarray, starts: list[int], ends: list[int], lo: int, hi: int
                     ) -> dict[int, tuple[_IndirectRows | None, int, int]]:
    """Lists that are one INDIRECT descriptor, their tables checked together (2.8.7: entries one after
    another, only WRITE valid): {list number: (source, readable, writable)}; source None: walk carefully."""
    candidates = [k for k, (start, end) in enumerate(zip(starts, ends, strict=True))
                  if start == end and flags[start] & VIRTQ_DESC_F_INDIRECT]
    if not candidates or not config.indirect:
        return {k: (None, 0, 0) for k in candidates}
    size = config.size
    slots = positions[[starts[k] for k in candidates]]
    picked = rows[slots]
    addr, length, ids, f = (picked[name].tolist() for name in ("addr", "len", "id", "flags"))
    flat = _flat(memory, lo)
    out: dict[int, tuple[_IndirectRows | None, int, int]] = {}
    chosen, views = [], []
    for n, k in enumerate(candidates):
        a, ln = addr[n], length[n]
        if f[n] & VIRTQ_DESC_F_NEXT or not ln or ln & 15 or ln >> 4 > size or not (lo <= a and a + ln <= hi):
            out[k] = (None, 0, 0)
            continue
        chosen.append((k, n))
        views.append(flat[a - lo:a - lo + ln] if flat is not None else memory.view(a, ln))
    if not chosen:
        return out
    entries = np.frombuffer(b"".join(views), dtype=PACKED_DTYPE)
    counts = [len(v) >> 4 for v in views]
    seg_starts = np.cumsum([0, *counts[:-1]]).tolist()
    seg = np.repeat(np.arange(len(counts)), counts)
    e_flags = entries["flags"]
    write = (e_flags & VIRTQ_DESC_F_WRITE) != 0
    bad = ((e_flags & VIRTQ_DESC_F_INDIRECT) != 0) | ~_in_bounds(entries["addr"], entries["len"], lo, hi)
    bad[1:] |= write[:-1] & ~write[1:] & (seg[1:] == seg[:-1])  # readable after writable
    length64 = entries["len"].astype(np.uint64)
    readable = np.add.reduceat(np.where(write, 0, length64), seg_starts).tolist()
    writable = np.add.reduceat(np.where(write, length64, 0), seg_starts).tolist()
    flagged = np.logical_or.reduceat(bad, seg_starts).tolist()
    slot_list = slots.tolist()
    for m, (k, n) in enumerate(chosen):
        if flagged[m] or readable[m] + writable[m] > CHAIN_BYTES_LIMIT:
            out[k] = (None, 0, 0)
            continue
        head_row = (addr[n], length[n], ids[n], f[n])
        out[k] = (_IndirectRows(slot_list[n], head_row, entries, seg_starts[m], seg_starts[m] + counts[m], True),
                  readable[m], writable[m])
    return out

