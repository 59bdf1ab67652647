"""Walking many chains at once (the ring readers' fast path for big polls).

A poll that finds many new chains (a ring's worth after a burst of kicks, a dump, a
trace catching up) reads the descriptor table once, into a numpy copy with the
structured dtype derived from the construct definitions (``dissectors/fastpath.py``),
and checks every entry with a few vectorised passes: is it INDIRECT, outside guest
memory, a link out of the table, writable and linking to a readable one (2.7.4.2)?
Python then only follows the links, one list lookup per descriptor. The descriptors of
all the chains of one walk are built together, the first time one chain's are read.

Only the common case is done here: direct descriptors (or one indirect table per chain,
laid out as Linux does), in memory, readable before writable, no loop, at most
``MAX_STEPS`` long, buffers under ``SMALL_LEN`` bytes. Any chain that is not (or might
not be) is handed back to the walkers of :mod:`vqtrace.rings.chain`, which find and
name the anomaly. Tests (tests/test_chain_fastpath.py, hypothesis) hold the results
equal to the careful walkers'.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from itertools import repeat

import numpy as np

from ..dissectors.fastpath import PACKED_DESC, SPLIT_DESC
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

#: ``struct virtq_desc`` (2.7.5) and ``struct pvirtq_desc`` (2.8.13), from the construct definitions.
SPLIT_DTYPE = SPLIT_DESC.dtype()
PACKED_DTYPE = PACKED_DESC.dtype()
MAX_STEPS = 64  # longer chains go to the one-by-one walkers
MIN_BATCH = 16  # below this many chains the scalar walker is quicker
#: Buffers this long or longer go to the one-by-one walkers. Below it, the readable and the writable
#: byte counts of a chain of at most MAX_STEPS descriptors each fit in 32 bits, so one Python integer
#: per descriptor carries both (readable << 32 | writable) and the 2^32 limit (2.7.5.2) cannot be reached.
SMALL_LEN = 1 << 24
_LOW = 0xFFFFFFFF
_AVAIL_USED = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED

_new_desc = partial(tuple.__new__, Descriptor)  # Descriptor is a NamedTuple: build it from a tuple in field order


class _Rows:
    """The descriptors of every chain of one batch walk, made together on first use.

    ``rows`` is the numpy copy of the table (or of the indirect tables) taken when the walk
    was done; ``pick`` the rows walked, in chain order (None: all of ``rows``, in order);
    ``index`` each one's ``Descriptor.index``: its table entry or ring slot, or its entry in
    its own indirect table (``in_indirect``).
    """

    __slots__ = ("_descs", "in_indirect", "index", "packed", "pick", "rows")

    def __init__(self, rows: np.ndarray, pick: list[int] | None, index: list[int], packed: bool,
                 in_indirect: bool = False) -> None:
        self.rows, self.pick, self.index, self.packed, self.in_indirect = rows, pick, index, packed, in_indirect
        self._descs: list[Descriptor] | None = None

    def descs(self) -> list[Descriptor]:
        out = self._descs
        if out is None:
            picked = self.rows if self.pick is None else self.rows[self.pick]
            addr, length, flags = picked["addr"].tolist(), picked["len"].tolist(), picked["flags"].tolist()
            if self.packed:
                cols = zip(addr, length, flags, self.index, repeat(0), picked["id"].tolist(), repeat(self.in_indirect))
            else:
                cols = zip(addr, length, flags, self.index, picked["next"].tolist(), repeat(0),
                           repeat(self.in_indirect))
            out = self._descs = list(map(_new_desc, cols))
            self.rows = self.pick = None  # the Descriptors hold everything now
        return out


class _TableRows:
    """Lazy descriptors of one chain of a batch: descriptors ``start .. end - 1`` of its :class:`_Rows`."""

    __slots__ = ("end", "rows", "start")

    def __init__(self, rows: _Rows, start: int, end: int) -> None:
        self.rows, self.start, self.end = rows, start, end

    @property
    def ring_len(self) -> int:
        return self.end - self.start

    @property
    def ring_indices(self) -> list[int]:
        return self.rows.index[self.start:self.end]

    def materialize(self) -> list[Descriptor]:
        return self.rows.descs()[self.start:self.end]


class _IndirectRows:
    """Lazy descriptors of one INDIRECT descriptor and its table: entries ``start .. end - 1`` of ``entries``."""

    __slots__ = ("end", "entries", "head", "head_row", "packed", "start")

    def __init__(self, head: int, head_row: tuple, entries: _Rows, start: int, end: int,
                 packed: bool = False) -> None:
        self.head, self.head_row, self.entries, self.start, self.end = head, head_row, entries, start, end
        self.packed = packed

    ring_len = 1

    @property
    def ring_indices(self) -> list[int]:
        return [self.head]

    def materialize(self) -> list[Descriptor]:
        r = self.head_row
        if self.packed:  # (addr, len, id, flags)
            first = _new_desc((r[0], r[1], r[3], self.head, 0, r[2], False))
        else:  # (addr, len, flags, next)
            first = _new_desc((r[0], r[1], r[2], self.head, r[3], 0, False))
        return [first, *self.entries.descs()[self.start:self.end]]


def _in_bounds(addr: np.ndarray, length: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Per descriptor: the buffer is empty or inside [lo, hi).

    ``addr <= hi`` first: then ``addr + length`` cannot overflow 64 bits (hi is a real
    memory end, far below 2^64 - 2^32).
    """
    return (length == 0) | ((addr >= lo) & (addr <= hi) & (addr + length <= hi))


def _flat(memory: GuestMemory, lo: int) -> memoryview | None:
    """The bytes of guest memory from ``lo`` when one region holds all of it (slices are then views)."""
    regions = memory.regions
    return regions[0].data if len(regions) == 1 and regions[0].guest_addr == lo else None


def _weights(write: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Per descriptor ``len << 32`` (readable) or ``len`` (writable): summed, the chain's two byte counts."""
    length = length.astype(np.uint64)
    return np.where(write, length, length << np.uint64(32))


def _sums(write: np.ndarray, length: np.ndarray, starts: list[int]) -> tuple[list[int], list[int]]:
    """Per segment from each of ``starts``: the readable and the writable bytes."""
    length = length.astype(np.uint64)
    return (np.add.reduceat(np.where(write, 0, length), starts).tolist(),
            np.add.reduceat(np.where(write, length, 0), starts).tolist())


def _tables(memory: GuestMemory, dtype: np.dtype, picked: list[tuple[int, int]], lo: int
            ) -> tuple[np.ndarray, list[int], list[int]]:
    """The indirect tables at (addr, len) ``picked``, one array; each one's first entry; the local index of each."""
    flat = _flat(memory, lo)
    views = [flat[a - lo:a - lo + n] if flat is not None else memory.view(a, n) for a, n in picked]
    entries = np.frombuffer(b"".join(views), dtype=dtype)
    counts = [n >> 4 for _, n in picked]
    firsts, local, at = [], [], 0
    for count in counts:
        firsts.append(at)
        local.extend(range(count))
        at += count
    return entries, firsts, local


def _indirect_batch(config: QueueConfig, memory: GuestMemory, rows: np.ndarray, candidates: list[tuple[int, int]],
                    lo: int, hi: int) -> dict[int, tuple[_IndirectRows, int, int]]:
    """Chains ``(position, head)`` that are one INDIRECT descriptor with a table linked 0 -> 1 -> ... -> last
    (as Linux writes them, 2.7.5.3), checked together: {position: (source, readable, writable)}.

    Anything else (a table the chain leaves early, links out of order, a bad entry) is left
    to the one-by-one walkers.
    """
    size = config.size
    picked = rows[[head for _, head in candidates]]
    flags, length, addr = picked["flags"].tolist(), picked["len"].tolist(), picked["addr"].tolist()
    chosen = []
    for n, (k, _) in enumerate(candidates):
        f, ln, a = flags[n], length[n], addr[n]
        if (f & (VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT)) == VIRTQ_DESC_F_INDIRECT and ln and not ln & 15 \
                and ln >> 4 <= size and lo <= a and a + ln <= hi:
            chosen.append((k, n))
    if not chosen:
        return {}
    entries, firsts, local = _tables(memory, SPLIT_DTYPE, [(addr[n], length[n]) for _, n in chosen], lo)
    total = len(entries)
    local_a = np.asarray(local)
    ends = np.asarray([*firsts[1:], total])
    last = np.zeros(total, dtype=bool)
    last[ends - 1] = True
    e_flags, e_len = entries["flags"], entries["len"]
    e_next = (e_flags & VIRTQ_DESC_F_NEXT) != 0
    write = (e_flags & VIRTQ_DESC_F_WRITE) != 0
    bad = ((e_flags & VIRTQ_DESC_F_INDIRECT) != 0) | ~_in_bounds(entries["addr"], e_len, lo, hi)
    bad |= e_next == last  # NEXT on all but the last entry ...
    bad |= e_next & (entries["next"] != local_a + 1)  # ... each linking to the following one
    bad[1:] |= write[:-1] & ~write[1:] & ~last[:-1]  # 2.7.4.2: a writable entry, then a readable one
    readable, writable = _sums(write, e_len, firsts)
    flagged = np.logical_or.reduceat(bad, firsts).tolist()
    table_rows = _Rows(entries, None, local, False, True)
    nexts = picked["next"].tolist()
    ends_list = ends.tolist()
    out = {}
    for m, (k, n) in enumerate(chosen):
        if flagged[m] or readable[m] + writable[m] > CHAIN_BYTES_LIMIT:
            continue
        head_row = (addr[n], length[n], flags[n], nexts[n])
        out[k] = (_IndirectRows(candidates[n][1], head_row, table_rows, firsts[m], ends_list[m]), readable[m],
                  writable[m])
    return out


def walk_split_batch(config: QueueConfig, memory: GuestMemory, heads: Sequence[int], first_idx: int,
                     table: memoryview | bytes, bounds: MemoryBounds) -> list[Chain]:
    """The chains of ``heads``, made available at free-running indices ``first_idx`` on, in order.

    The checks are done once per table entry, with numpy (an entry is bad when it is INDIRECT,
    outside memory, too long, links outside the table, or is writable and links to a readable
    one, 2.7.4.2); Python then only follows the links. A chain that touches a bad entry, or
    runs longer than ``MAX_STEPS`` (a loop does), is walked by the one-by-one walkers.
    """
    size, queue = config.size, config.index
    single = bounds.single()
    if single is None:
        return [careful_split_chain(config, memory, h, avail_idx=(first_idx + k) & 0xFFFF, table=table,
                                    bounds=bounds) for k, h in enumerate(heads)]
    lo, hi = single
    rows = np.frombuffer(bytes(table), dtype=SPLIT_DTYPE, count=size)  # a copy: later ring writes do not show
    flags, nxt, length = rows["flags"], rows["next"], rows["len"]
    write = (flags & VIRTQ_DESC_F_WRITE) != 0
    link = (flags & VIRTQ_DESC_F_NEXT) != 0
    inside = nxt < size
    more = link & inside
    good = ((flags & VIRTQ_DESC_F_INDIRECT) == 0) & (length < SMALL_LEN) & _in_bounds(rows["addr"], length, lo, hi)
    good &= inside | ~link  # a link out of the table
    good &= ~(more & write & ~write[np.minimum(nxt, size - 1)])  # 2.7.4.2: writable, then a readable one
    # Per entry: the entry it links to; -1: the chain ends here; -2: walk carefully.
    step = np.where(good, np.where(more, nxt.astype(np.int32), -1), -2).tolist()
    weight = _weights(write, length).tolist()
    walked: list[int] = []
    append = walked.append
    steps = range(min(MAX_STEPS, size) - 1)
    source = _Rows(rows, walked, walked, False)
    lazy = Chain.lazy
    chains: list[Chain | None] = []
    slow: list[tuple[int, int]] = []  # (position, head) of the chains for the one-by-one walkers
    end = 0
    for k, head in enumerate(heads):
        if head >= size:
            chains.append(None)
            slow.append((k, head))
            continue
        start = end
        append(head)
        total = weight[head]
        i = step[head]
        if i >= 0:
            for _ in steps:
                append(i)
                total += weight[i]
                i = step[i]
                if i < 0:
                    break
            else:
                i = -2  # longer than MAX_STEPS (or a loop)
        end = len(walked)
        if i == -1:
            chains.append(lazy(queue, head, (first_idx + k) & 0xFFFF, _TableRows(source, start, end), total >> 32,
                               total & _LOW))
        else:
            del walked[start:]
            end = start
            chains.append(None)
            slow.append((k, head))
    if slow:
        indirect = _indirect_batch(config, memory, rows, [s for s in slow if s[1] < size], lo, hi) \
            if config.indirect else {}
        for k, head in slow:
            found = indirect.get(k)
            avail_idx = (first_idx + k) & 0xFFFF
            if found is not None:
                chains[k] = lazy(queue, head, avail_idx, *found)
            else:  # one by one, the scalar fast path first
                chains[k] = walk_split_chain(config, memory, head, avail_idx=avail_idx, table=table, bounds=bounds)
    return chains  # type: ignore[return-value]


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
    table = np.frombuffer(bytes(ring), dtype=PACKED_DTYPE, count=size)
    rows = np.concatenate((table[slot:], table[:slot]))  # in ring order from ``slot`` (a copy)
    flags = rows["flags"]
    lap = size - slot  # positions from here on are in the next lap: the other wrap counter (2.8.1)
    want = np.full(size, VIRTQ_DESC_F_AVAIL if wrap else VIRTQ_DESC_F_USED, dtype=np.uint16)
    want[lap:] = VIRTQ_DESC_F_USED if wrap else VIRTQ_DESC_F_AVAIL
    available = (flags & _AVAIL_USED) == want
    stop = size if available.all() else int(np.argmin(available))
    if stop == 0:
        return []
    rows, flags = rows[:stop], flags[:stop]
    link = (flags & VIRTQ_DESC_F_NEXT) != 0
    ends = np.flatnonzero(~link)
    if not len(ends):
        return []
    stop = int(ends[-1]) + 1  # an unfinished list at the end is the careful walker's
    rows, flags, link = rows[:stop], flags[:stop], link[:stop]
    length = rows["len"]
    write = (flags & VIRTQ_DESC_F_WRITE) != 0
    table_desc = (flags & VIRTQ_DESC_F_INDIRECT) != 0
    bad = table_desc | ~_in_bounds(rows["addr"], length, lo, hi)
    bad[1:] |= link[:-1] & write[:-1] & ~write[1:]  # 2.7.4.2: a writable descriptor, then a readable one
    ends = ends.tolist()
    starts = [0, *[e + 1 for e in ends[:-1]]]
    readable, writable = _sums(write, length, starts)
    flagged = np.logical_or.reduceat(bad, starts).tolist()
    ids = rows["id"][ends].tolist()
    indirect = {}
    if table_desc.any():
        candidates = [k for k, (start, end) in enumerate(zip(starts, ends, strict=True))
                      if start == end and flags[start] & VIRTQ_DESC_F_INDIRECT]
        if candidates:
            indirect = _packed_indirect(config, memory, rows, starts, candidates, slot, lo, hi)
    slots = [*range(slot, size), *range(slot)][:stop] if slot else list(range(stop))
    source = _Rows(rows, None, slots, True)
    chains: list[Chain] = []
    append = chains.append
    lazy = Chain.lazy
    for k, start in enumerate(starts):
        end = ends[k]
        if k in indirect:
            found = indirect[k]
            if found is None:
                break
            append(lazy(queue, ids[k], slots[start], *found, wrap=wrap if start < lap else not wrap))
            continue
        if flagged[k] or ids[k] >= size or readable[k] + writable[k] > CHAIN_BYTES_LIMIT:
            break
        append(lazy(queue, ids[k], slots[start], _TableRows(source, start, end + 1), readable[k], writable[k],
                    wrap=wrap if start < lap else not wrap))
    return chains


def _packed_indirect(config: QueueConfig, memory: GuestMemory, rows: np.ndarray, starts: list[int],
                     candidates: list[int], slot: int, lo: int, hi: int
                     ) -> dict[int, tuple[_IndirectRows, int, int] | None]:
    """Lists that are one INDIRECT descriptor, their tables checked together (2.8.7: entries one after
    another, only WRITE valid): {list number: (source, readable, writable)}; None: walk carefully."""
    out: dict[int, tuple[_IndirectRows, int, int] | None] = {k: None for k in candidates}
    if not config.indirect:
        return out
    size = config.size
    picked = rows[[starts[k] for k in candidates]]
    addr, length, ids, f = (picked[name].tolist() for name in ("addr", "len", "id", "flags"))
    chosen = []
    for n, k in enumerate(candidates):
        a, ln = addr[n], length[n]
        if f[n] & VIRTQ_DESC_F_NEXT or not ln or ln & 15 or ln >> 4 > size or not (lo <= a and a + ln <= hi) \
                or ids[n] >= size:
            continue
        chosen.append((k, n))
    if not chosen:
        return out
    entries, firsts, local = _tables(memory, PACKED_DTYPE, [(addr[n], length[n]) for _, n in chosen], lo)
    total = len(entries)
    last = np.zeros(total, dtype=bool)
    last[np.asarray([*firsts[1:], total]) - 1] = True
    e_flags, e_len = entries["flags"], entries["len"]
    write = (e_flags & VIRTQ_DESC_F_WRITE) != 0
    bad = ((e_flags & VIRTQ_DESC_F_INDIRECT) != 0) | ~_in_bounds(entries["addr"], e_len, lo, hi)
    bad[1:] |= write[:-1] & ~write[1:] & ~last[:-1]  # readable after writable
    readable, writable = _sums(write, e_len, firsts)
    flagged = np.logical_or.reduceat(bad, firsts).tolist()
    table_rows = _Rows(entries, None, local, True, True)
    ends = [*firsts[1:], total]
    for m, (k, n) in enumerate(chosen):
        if flagged[m] or readable[m] + writable[m] > CHAIN_BYTES_LIMIT:
            continue
        head_row = (addr[n], length[n], ids[n], f[n])
        out[k] = (_IndirectRows((slot + starts[k]) % size, head_row, table_rows, firsts[m], ends[m], True),
                  readable[m], writable[m])
    return out
