"""Walking many chains at once (the ring readers' fast path for big polls).

A poll that finds many new chains (a ring's worth after a burst of kicks, a dump, a
trace catching up) copies the descriptor table once and checks every entry with a few
vectorised numpy passes over it, read as the little-endian words of the layout
(``SPLIT_DTYPE``/``PACKED_DTYPE`` come from the construct definitions, via
``dissectors/fastpath.py``): is it INDIRECT, too long, outside guest memory, a link out
of the table, writable and linking to a readable one (2.7.4.2)? numpy calls, not
entries, are what costs here, so the checks run over the whole table at once and only
when one fails is the culprit found. Then:

- split (2.7.5): Python follows the links, a run of entries that each link to the next
  one (as drivers lay chains out) in one step, and sums each chain's readable and
  writable bytes from prefix sums;
- packed (2.8.5, 2.8.6): the lists are runs of slots, found with numpy, their byte
  counts summed with it.

No Descriptor is made then: a chain's descriptors are made, with those of every chain
of the same walk, the first time one of them is read (from the copy: later ring writes
do not show). Only the common case is done here: direct descriptors (or one indirect
table per chain, laid out as Linux does), in memory, readable before writable, no loop,
at most ``MAX_STEPS`` long, buffers under ``SMALL_LEN`` bytes. Any chain that is not (or
might not be) is handed to the walkers of :mod:`vqtrace.rings.chain`, which find and
name the anomaly. Tests (tests/test_chain_fastpath.py, tests/test_rings_batch.py,
hypothesis) hold the results equal to the careful walkers' and the trackers' results
equal with and without these walks.
"""

from __future__ import annotations

from array import array
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

    def __init__(self, rows: np.ndarray, pick: list[int] | None, index: list[int] | np.ndarray, packed: bool,
                 in_indirect: bool = False) -> None:
        self.rows, self.pick, self.index, self.packed, self.in_indirect = rows, pick, index, packed, in_indirect
        self._descs: list[Descriptor] | None = None

    def descs(self) -> list[Descriptor]:
        out = self._descs
        if out is None:
            pick = self.pick
            # (a list of ints to an index array: through array.array, a C loop, quicker than np.array)
            picked = self.rows if pick is None else self.rows.take(np.frombuffer(array("q", pick), dtype=np.int64))
            addr, length, flags = picked["addr"].tolist(), picked["len"].tolist(), picked["flags"].tolist()
            index = self.index.tolist() if isinstance(self.index, np.ndarray) else self.index
            if self.packed:
                cols = zip(addr, length, flags, index, repeat(0), picked["id"].tolist(), repeat(self.in_indirect))
            else:
                cols = zip(addr, length, flags, index, picked["next"].tolist(), repeat(0), repeat(self.in_indirect))
            # tuple.__new__(Descriptor, row) for each row: the quickest way to make many (no partial in between)
            out = self._descs = list(map(tuple.__new__, repeat(Descriptor), cols))
            self.rows = self.pick = None  # the Descriptors hold everything now
        return out


class _TableRows(tuple):
    """Lazy descriptors of one chain of a batch: descriptors ``start .. end - 1`` of its :class:`_Rows`
    (a tuple ``(rows, start, end)``: made in a fraction of an object's time)."""

    __slots__ = ()

    @property
    def ring_len(self) -> int:
        return self[2] - self[1]

    @property
    def ring_indices(self) -> list[int]:
        return self[0].index[self[1]:self[2]]

    def materialize(self) -> list[Descriptor]:
        return self[0].descs()[self[1]:self[2]]


class _IndirectRows(tuple):
    """Lazy descriptors of one INDIRECT descriptor and its table: a tuple ``(head, head_row, entries, start, end,
    packed)``: the descriptor at ring index ``head`` (its row as unpacked), then entries ``start .. end - 1`` of
    ``entries`` (a :class:`_Rows`)."""

    __slots__ = ()

    ring_len = 1

    @property
    def ring_indices(self) -> list[int]:
        return [self[0]]

    def materialize(self) -> list[Descriptor]:
        head, r, entries, start, end, packed = self
        if packed:  # (addr, len, id, flags)
            first = _new_desc((r[0], r[1], r[3], head, 0, r[2], False))
        else:  # (addr, len, flags, next)
            first = _new_desc((r[0], r[1], r[2], head, r[3], 0, False))
        return [first, *entries.descs()[start:end]]


_new_table_rows = partial(tuple.__new__, _TableRows)
_new_indirect_rows = partial(tuple.__new__, _IndirectRows)


def _flat(memory: GuestMemory, lo: int) -> memoryview | None:
    """The bytes of guest memory from ``lo`` when one region holds all of it (slices are then views)."""
    regions = memory.regions
    return regions[0].data if len(regions) == 1 and regions[0].guest_addr == lo else None


def _tables(memory: GuestMemory, dtype: np.dtype, addr: np.ndarray, length: np.ndarray, lo: int
            ) -> tuple[np.ndarray, list[int], np.ndarray, np.ndarray]:
    """The indirect tables at ``addr`` (``length`` bytes each, a multiple of 16, in memory), one array; each
    one's first entry, and its end; each entry's index in its own table.

    Gathered with one numpy ``take`` from guest memory seen as 16-byte records when the tables
    are 16-byte aligned in one region (as drivers allocate them), else joined table by table.
    """
    counts = (length >> np.uint64(4)).astype(np.intp)
    ends = np.cumsum(counts)
    starts = ends - counts
    local = np.arange(int(ends[-1])) - starts.repeat(counts)
    flat = _flat(memory, lo)
    offset = addr - np.uint64(lo)
    if flat is not None and not np.bitwise_or.reduce(offset) & 15:
        records = np.frombuffer(flat, dtype=dtype, count=len(flat) >> 4)
        entries = records.take((offset >> np.uint64(4)).astype(np.intp).repeat(counts) + local)
        del records  # (a view of guest memory: none may outlive the call)
    else:
        views = [flat[a - lo:a - lo + n] if flat is not None else memory.view(a, n)
                 for a, n in zip(addr.tolist(), length.tolist(), strict=True)]
        entries = np.frombuffer(b"".join(views), dtype=dtype)
    return entries, starts.tolist(), ends, local


def _indirect_candidates(picked: np.ndarray, size: int, lo: int, hi: int, packed: bool) -> np.ndarray:
    """Positions in ``picked`` (ring descriptors) of those that can be a whole list by themselves: INDIRECT
    without NEXT, negotiated, a non-zero multiple of 16 long, at most ``size`` entries, inside [lo, hi);
    packed, also a buffer id below ``size`` (2.7.5.3, 2.8.7)."""
    flags = picked["flags"]
    length = picked["len"].astype(np.uint64)
    addr = picked["addr"]
    ok = (flags & (VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT)) == VIRTQ_DESC_F_INDIRECT
    ok &= (length != 0) & ((length & np.uint64(15)) == 0) & (length <= np.uint64(16 * size))
    ok &= (addr >= np.uint64(lo)) & (addr <= np.uint64(hi))
    ok &= addr + length <= np.uint64(hi)  # (addr <= hi: no wrap past 2^64)
    if packed:
        ok &= picked["id"] < size
    return ok.nonzero()[0]


_STOP = 1 << 16  # in a step list: the chain ends here (no NEXT)
_CAREFUL = 1 << 17  # in a step list: a chain through this entry is walked carefully
_M64 = (1 << 64) - 1
_M32 = np.uint64(0xFFFFFFFF)
_U32, _U16, _U48 = np.uint64(32), np.uint64(16), np.uint64(48)
_NEXT, _WRITE = np.uint64(VIRTQ_DESC_F_NEXT), np.uint64(VIRTQ_DESC_F_WRITE)
_CHAINED = np.uint64(VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE)
_ONE = np.uint64(1)
_NOT_WRITE = np.uint64(0xFFFFFFFF & ~VIRTQ_DESC_F_WRITE)
#: Bits of (len | flags << 32 | next << 48) that rule an entry out: INDIRECT, and a len of SMALL_LEN or more.
_RULED_OUT = np.uint64(VIRTQ_DESC_F_INDIRECT << 32 | (0xFFFFFFFF & ~(SMALL_LEN - 1)))
#: Bits of (len | id << 32 | flags << 48) that rule a slot out: INDIRECT, and a len of SMALL_LEN or more.
_PACKED_RULED_OUT = np.uint64(VIRTQ_DESC_F_INDIRECT << 48 | (0xFFFFFFFF & ~(SMALL_LEN - 1)))
_ENTRIES: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # size -> ([1, 2, ..., size] u64, [0, 1, ...] intp)


def _table_verdicts(entries: np.ndarray, firsts: list[int], ends: np.ndarray, local: np.ndarray, lo: int, hi: int,
                    packed: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per indirect table of :func:`_tables` (entries ``firsts[k] .. ends[k] - 1``): whether a batch walk may
    take it, and its readable and writable bytes.

    It may when every entry is in memory, not INDIRECT (2.7.5.3.1, 2.8.7: no table in a table),
    shorter than ``SMALL_LEN``, no readable entry follows a writable one (2.7.4.2), the whole is
    within 2^32 bytes (2.7.5.2), and, split, entries are linked 0 -> 1 -> ... -> last, as Linux
    writes them (2.7.5.3; packed tables have no links, 2.8.7). Otherwise the careful walkers say
    what is wrong. One first look over all the entries; which tables, only when something is wrong.
    """
    words = entries.view(np.uint64)
    addr, meta = words[0::2], words[1::2]
    length = meta & _M32
    lasts = ends - 1
    if packed:  # len | id << 32 | flags << 48
        flags = meta >> _U48
        ruled_out = meta & _PACKED_RULED_OUT
        unlinked = None
    else:  # len | flags << 32 | next << 48
        flags = meta >> _U32  # flags | next << 16
        ruled_out = meta & _RULED_OUT
        link = flags & _NOT_WRITE  # each entry but the last: NEXT, linking to the following one ...
        link[lasts] &= _NEXT  # ... and the last: no NEXT
        expect = (local.astype(np.uint64) + _ONE) << _U16 | _NEXT
        expect[lasts] = 0
        unlinked = link != expect
    write = (flags >> _ONE) & _ONE
    order = write[:-1] > write[1:]  # a readable entry after a writable one ...
    order[lasts[:-1]] = False  # ... of the same table
    end = addr + length
    np.maximum(end, addr, out=end)  # addr + len wrapped past 2^64: addr is the larger
    writable = np.add.reduceat(length * write, firsts)
    readable = np.add.reduceat(length, firsts) - writable
    if (unlinked is not None and unlinked[unlinked.argmax()]) or ruled_out[ruled_out.argmax()] \
            or (len(order) and order[order.argmax()]) or end[end.argmax()] > hi or (lo and addr[addr.argmin()] < lo):
        bad = (ruled_out != 0) | (((end > hi) | (addr < lo)) & (length != 0))
        if unlinked is not None:
            bad |= unlinked
        bad[1:] |= order
        good = ~np.logical_or.reduceat(bad, firsts)
    else:
        good = np.ones(len(firsts), dtype=bool)
    good &= readable + writable <= np.uint64(CHAIN_BYTES_LIMIT)
    return good, readable, writable


#: What :func:`_checked_tables` finds: positions in the rows it was given, those rows, the tables' entries,
#: and per table its first entry, its end, whether a batch walk may take it, its readable and writable bytes.
_Checked = tuple[list[int], np.ndarray, _Rows, list[int], list[int], list[bool], list[int], list[int]]


def _checked_tables(memory: GuestMemory, picked: np.ndarray, size: int, lo: int, hi: int, packed: bool
                    ) -> _Checked | None:
    """Of ring descriptors ``picked``, those that can be a whole list by themselves (:func:`_indirect_candidates`),
    their tables gathered (:func:`_tables`) and checked (:func:`_table_verdicts`); None when there is none."""
    chosen = _indirect_candidates(picked, size, lo, hi, packed)
    if not len(chosen):
        return None
    picked = picked.take(chosen)
    entries, firsts, ends, local = _tables(memory, PACKED_DTYPE if packed else SPLIT_DTYPE, picked["addr"],
                                           picked["len"].astype(np.uint64), lo)
    good, readable, writable = _table_verdicts(entries, firsts, ends, local, lo, hi, packed)
    return (chosen.tolist(), picked, _Rows(entries, None, local, packed, True), firsts, ends.tolist(), good.tolist(),
            readable.tolist(), writable.tolist())


def _indirect_heads(memory: GuestMemory, rows: np.ndarray, heads: Sequence[int], size: int, lo: int, hi: int
                    ) -> list[tuple[int, _IndirectRows, int, int]]:
    """Of split ``heads``, those that are one INDIRECT descriptor with a table linked 0 -> 1 -> ... -> last (as
    Linux writes them, 2.7.5.3), checked together: (position in ``heads``, source, readable, writable) each.

    Anything else (a table the chain leaves early, links out of order, a bad entry) is left
    to the other walkers.
    """
    at = np.frombuffer(array("q", heads), dtype=np.int64)
    inside = (at < size).nonzero()[0]
    every = len(inside) == len(at)
    checked = _checked_tables(memory, rows.take(at if every else at.take(inside)), size, lo, hi, False)
    if checked is None:
        return []
    chosen, picked, table_rows, firsts, ends, good, readable, writable = checked
    positions = chosen if every else inside.take(chosen).tolist()
    head_rows = zip(picked["addr"].tolist(), picked["len"].tolist(), picked["flags"].tolist(), picked["next"].tolist(),
                    strict=True)
    return [(k, _new_indirect_rows((heads[k], row, table_rows, first, end, False)), r, w)
            for k, row, ok, first, end, r, w in zip(positions, head_rows, good, firsts, ends, readable, writable,
                                                    strict=True) if ok]


def _split_entries(raw: bytes, size: int, lo: int, hi: int, runs: bool
                   ) -> tuple[Sequence[int], Sequence[int], Sequence[int] | None, Sequence[int] | None]:
    """Per entry of a split descriptor table (2.7.5): the entry its NEXT links to (``_STOP`` without NEXT,
    ``_CAREFUL`` when a chain through it must be walked carefully: INDIRECT, too long, outside [lo, hi),
    a link out of the table, or writable and linking to a readable one, 2.7.4.2); and its weight:
    ``len << 32`` (readable) or ``len`` (writable), as prefix sums modulo 2^64 (``size + 1`` of them).

    With ``runs``, also the last entry of the run from each one: the entries after it that each link to
    the next one in the table (as a driver that allocates in order lays chains out), so that a walk
    takes a run in one step; and each entry's WRITE flag. Then only the links inside runs are checked
    here for 2.7.4.2 (with two numpy calls, not six): the walk checks the link from a run to the next
    (``write[e]`` and not ``write[i]``: careful).

    Few numpy calls (they, not the entries, cost; ``argmax`` is much cheaper than ``any``/``max``):
    the checks run over the whole table at once and only when one fails is the culprit found.
    """
    words = np.frombuffer(raw, dtype=np.uint64, count=2 * size)
    addr, meta = words[0::2], words[1::2]  # addr; len | flags << 32 | next << 48
    high = meta >> _U32  # flags | next << 16
    nxt = high >> _U16
    step = np.where(high & _NEXT, nxt, _STOP)
    length = meta & _M32
    write = high & _WRITE
    prefix = np.zeros(size + 1, dtype=np.uint64)
    np.add.accumulate(np.where(write, length, length << _U32), out=prefix[1:])  # wraps at 2^64: differences hold
    # INDIRECT, a len of SMALL_LEN or more, or a next out of the table (with NEXT or not: a quick first look)
    suspect = meta & (_RULED_OUT | np.uint64((0xFFFF & -size) << 48) if not size & (size - 1) else _RULED_OUT)
    end = addr + length
    np.maximum(end, addr, out=end)  # addr + len wrapped past 2^64: addr is the larger
    if runs:
        entries = _ENTRIES.get(size)
        if entries is None:
            entries = _ENTRIES[size] = (np.arange(1, size + 1, dtype=np.uint64), np.arange(size, dtype=np.intp))
        apart = step != entries[0]  # entry k does not link to k + 1: a run ends there
        inner = (write[:-1] > write[1:]) > apart[:-1]  # writable, linking to the next entry, which is readable
        reads_after = None
        suspicious = inner[inner.argmax()]
    else:
        reads_after = _reads_after(high, nxt, write, size)
        suspicious = reads_after[reads_after.argmax()]
    if suspect[suspect.argmax()] or end[end.argmax()] > hi or (lo and addr[addr.argmin()] < lo) \
            or suspicious or size & (size - 1):
        if reads_after is None:
            reads_after = _reads_after(high, nxt, write, size)
        link_out = ((high & _NEXT) != 0) & (nxt >= np.uint64(size))
        outside = ((end > hi) | (addr < lo)) & (length != 0)
        step[((meta & _RULED_OUT) != 0) | outside | reads_after | link_out] = _CAREFUL
        if runs:
            apart = step != entries[0]
    if not runs:
        return step.tolist(), prefix.tolist(), None, None
    # the last entry always ends a run: a link to ``size`` is ruled out
    breaks = apart.nonzero()[0]
    # a walk run by run reads a few values per chain: memoryviews give them as ints without converting them all
    return memoryview(step), memoryview(prefix), memoryview(breaks[breaks.searchsorted(entries[1])]), \
        memoryview(write)


def _reads_after(high: np.ndarray, nxt: np.ndarray, write: np.ndarray, size: int) -> np.ndarray:
    """Per entry: NEXT and WRITE, linking to a readable entry (2.7.4.2)."""
    # where a link out of the table points does not matter (it is ruled out): any entry will do
    target = nxt & np.uint64(size - 1) if not size & (size - 1) else np.minimum(nxt, np.uint64(size - 1))
    return ((high & _CHAINED) | (write[target] << _ONE)) == _CHAINED


def walk_split_batch(config: QueueConfig, memory: GuestMemory, heads: Sequence[int], first_idx: int,
                     table: memoryview | bytes, bounds: MemoryBounds) -> list[Chain]:
    """The chains of ``heads``, made available at free-running indices ``first_idx`` on, in order.

    The checks are done once per table entry, with numpy (``_split_entries``); Python then
    only follows the links. A chain that touches a bad entry, or runs longer than
    ``MAX_STEPS`` (a loop does), is walked by the one-by-one walkers.
    """
    return split_batch(config, memory, heads, first_idx, table, bounds)[0]


def split_batch(config: QueueConfig, memory: GuestMemory, heads: Sequence[int], first_idx: int,
                table: memoryview | bytes, bounds: MemoryBounds
                ) -> tuple[list[Chain], list[int], list[tuple[int, int, int] | None]]:
    """:func:`walk_split_batch`, and what the tracker's bookkeeping needs: the table entries the batch's chains
    take, and per chain the part of them that is its own, ``(start, end, first)`` (None: a chain of the
    one-by-one walkers): ``entries[start:end]``, which are ``first, first + 1, ...`` when ``first >= 0``."""
    size, queue = config.size, config.index
    single = bounds.single()
    if single is None:
        return [careful_split_chain(config, memory, h, avail_idx=(first_idx + k) & 0xFFFF, table=table,
                                    bounds=bounds) for k, h in enumerate(heads)], [], [None] * len(heads)
    lo, hi = single
    raw = bytes(table)  # a copy: later ring writes do not show
    runs = len(heads) * 4 <= size  # long chains (on average): walk them run by run
    step, prefix, run_end, write = _split_entries(raw, size, lo, hi, runs)
    walked: list[int] = []
    append, extend = walked.append, walked.extend
    limit = min(MAX_STEPS, size)
    steps = range(limit - 1)
    source = _Rows(np.frombuffer(raw, dtype=SPLIT_DTYPE, count=size), walked, walked, False)
    lazy = Chain.lazy
    chains: list[Chain | None] = []
    parts: list[tuple[int, int, int] | None] = []
    slow: list[tuple[int, int]] = []  # (position, head) of the chains for the one-by-one walkers
    start = 0
    add_chain, add_part = chains.append, parts.append
    for k, head in enumerate(heads, first_idx):
        if head < size and step[head] != _CAREFUL:  # (an INDIRECT head, for one, is _CAREFUL: see below)
            if run_end is not None:  # run by run
                e = run_end[head]
                n = e - head + 1
                if n > limit:
                    i = 0  # longer than MAX_STEPS
                else:
                    total = prefix[e + 1] - prefix[head]
                    if e == head:
                        append(head)
                    else:
                        extend(range(head, e + 1))
                    i = step[e]
                    first = head if i == _STOP else -1  # one run: table entries head, head + 1, ...
                    while i < size:
                        if write[e] and not write[i]:  # 2.7.4.2: readable after writable (the careful walker's)
                            i = 0
                            break
                        e = run_end[i]
                        n += e - i + 1
                        if n > limit:
                            i = 0  # longer than MAX_STEPS (or a loop)
                            break
                        total += prefix[e + 1] - prefix[i]
                        if e == i:
                            append(i)
                        else:
                            extend(range(i, e + 1))
                        i = step[e]
                    total &= _M64
            else:  # descriptor by descriptor
                append(head)
                i = step[head]
                last = head
                if i < size:
                    for _ in steps:
                        append(i)
                        last = i
                        i = step[i]
                        if i >= size:
                            break
                    else:
                        i = 0  # longer than MAX_STEPS (or a loop)
                if i == _STOP:
                    if last == head:
                        total = prefix[head + 1] - prefix[head]
                        first = head
                    else:
                        first = -1
                        total = 0
                        for j in walked[start:]:
                            total += prefix[j + 1] - prefix[j]
                    total &= _M64
            if i == _STOP:
                end = len(walked)
                add_chain(lazy(queue, head, k & 0xFFFF, _new_table_rows((source, start, end)), total >> 32,
                               total & _LOW))
                add_part((start, end, first))
                start = end
                continue
            del walked[start:]
        slow.append((k - first_idx, head))
        add_chain(None)
        add_part(None)
    entries = walked
    # Chains that are one INDIRECT descriptor each (as Linux adds a chain of two buffers or more when
    # VIRTIO_F_INDIRECT_DESC is negotiated): their tables are checked together.
    tables = _indirect_heads(memory, source.rows, [head for _, head in slow], size, lo, hi) \
        if slow and config.indirect else []
    if tables:
        entries = walked.copy()  # the tracker's list: the batch's indirect chains take one entry each
        for n, found, r, w in tables:
            k, head = slow[n]
            chains[k] = lazy(queue, head, (first_idx + k) & 0xFFFF, found, r, w)
            parts[k] = (len(entries), len(entries) + 1, head)
            entries.append(head)
        taken = {n for n, *_ in tables}
        slow = [s for n, s in enumerate(slow) if n not in taken] if len(taken) < len(slow) else []
    for k, head in slow:  # one by one, the scalar fast path first
        chains[k] = walk_split_chain(config, memory, head, avail_idx=(first_idx + k) & 0xFFFF, table=table,
                                     bounds=bounds)
    return chains, entries, parts  # type: ignore[return-value]


_AU = np.uint64(_AVAIL_USED)
_FIRST = np.zeros(1, dtype=np.intp)


def _packed_entries(raw: bytes, size: int, lap: int, expect: int, lo: int, hi: int
                    ) -> tuple[list[int], list[int], list[int], list[bool] | None]:
    """The lists of a packed descriptor ring (2.8.13), in ring order from the tracker's position (``raw``
    rotated so), slots from ``lap`` on in the next lap (2.8.1: the other wrap counter).

    Of the slots available in a row (``expect``: the AVAIL/USED bits of the first lap), returns the
    position of each list's last one (no NEXT), each list's buffer id and ``readable << 32 | writable``
    byte counts, and, when some list must be walked carefully, which ones (else None): INDIRECT, too
    long, outside [lo, hi), or a readable descriptor after a writable one (2.8.4). Few numpy calls:
    the checks run over all the slots at once and only when one fails is the culprit found.
    """
    words = np.frombuffer(raw, dtype=np.uint64, count=2 * size)
    addr, meta = words[0::2], words[1::2]  # addr; len | id << 32 | flags << 48
    high = meta >> _U32  # id | flags << 16
    flags = high >> _U16
    if lap < size:
        flags[lap:] ^= _AU  # the next lap: AVAIL and USED mean the other way round
    available = (flags & _AU) == np.uint64(expect)
    stop = int(available.argmin())
    if available[stop]:
        stop = size  # all available
    last = (flags[:stop] & _NEXT) == 0  # the last slot of a list
    ends = last.nonzero()[0]
    if not len(ends):
        return [], [], [], None
    stop = int(ends[-1]) + 1  # slots after the last list's end are an unfinished list: the careful walker's
    ends_list = ends.tolist()
    starts = np.concatenate((_FIRST, ends[:-1] + 1))
    flags, addr, meta = flags[:stop], addr[:stop], meta[:stop]
    length = meta & _M32
    write = flags & _WRITE
    sums = np.add.reduceat(np.where(write, length, length << _U32), starts).tolist()
    ids = (high[ends] & np.uint64(0xFFFF)).tolist()
    # slot k readable while slot k - 1 is writable and links to it (has NEXT: is not the last of its list)
    reads_after = (write[:-1] > write[1:]) > last[:stop - 1]
    ruled_out = meta & _PACKED_RULED_OUT
    end = addr + length
    np.maximum(end, addr, out=end)  # addr + len wrapped past 2^64: addr is the larger
    bad = None
    if ruled_out[ruled_out.argmax()] or end[end.argmax()] > hi or (lo and addr[addr.argmin()] < lo) \
            or (stop > 1 and reads_after[reads_after.argmax()]):
        wrong = (ruled_out != 0) | (((end > hi) | (addr < lo)) & (length != 0))
        wrong[1:] |= reads_after
        bad = np.logical_or.reduceat(wrong, starts).tolist()
    return ends_list, ids, sums, bad


def scan_packed_batch(config: QueueConfig, memory: GuestMemory, slot: int, wrap: bool, ring: memoryview | bytes,
                      bounds: MemoryBounds) -> list[Chain]:
    """The complete lists made available from ``slot`` (wrap counter ``wrap``) on, in ring order.

    Stops before the first slot not available, and before the first list that needs a
    careful walk (which the caller then does, one list at a time).
    """
    return packed_batch(config, memory, slot, wrap, ring, bounds)[0]


def packed_batch(config: QueueConfig, memory: GuestMemory, slot: int, wrap: bool, ring: memoryview | bytes,
                 bounds: MemoryBounds) -> tuple[list[Chain], int]:
    """:func:`scan_packed_batch`, and the ring slots its lists take."""
    size, queue = config.size, config.index
    single = bounds.single()
    if single is None or not 0 <= slot < size:
        return [], 0
    lo, hi = single
    raw = bytes(ring)  # a copy: later ring writes do not show
    lap = size - slot  # positions from here on are in the next lap
    expect = VIRTQ_DESC_F_AVAIL if wrap else VIRTQ_DESC_F_USED  # 2.8.1: AVAIL = the wrap counter, USED not
    ends, ids, sums, bad = _packed_entries(raw[16 * slot:] + raw[:16 * slot] if slot else raw, size, lap, expect,
                                           lo, hi)
    table = np.frombuffer(raw, dtype=PACKED_DTYPE, count=size)
    count = len(ends)
    tables: dict[int, tuple[_IndirectRows, int, int] | None] = {}
    slot_flags: list[int] | None = None
    q = 0
    for k in range(count):
        e = ends[k]
        if e - q >= MAX_STEPS or ids[k] >= size:  # too long (the byte counts would not fit), or a bad buffer id
            count = k
            break
        if bad is not None and bad[k]:
            if slot_flags is None:
                slot_flags = table["flags"].tolist()
            if e == q and slot_flags[(slot + q) % size] & VIRTQ_DESC_F_INDIRECT and config.indirect:
                tables[k] = None  # one INDIRECT descriptor: its table is checked below
            else:
                count = k
                break
        q = e + 1
    if tables:
        positions = list(tables)
        starts = [0 if k == 0 else ends[k - 1] + 1 for k in positions]
        for k, found in zip(positions, _packed_indirect(config, memory, table, [(slot + q) % size for q in starts],
                                                       lo, hi), strict=True):
            if found is None:  # the table needs a careful walk: the batch ends before it
                count = min(count, k)
                break
            tables[k] = found
    if not count:
        return [], 0
    taken = ends[count - 1] + 1
    slots = [*range(slot, slot + taken)] if slot + taken <= size else [*range(slot, size), *range(slot + taken - size)]
    source = _Rows(table, slots, slots, True)
    chains: list[Chain] = []
    append = chains.append
    lazy = Chain.lazy
    q = 0
    for k in range(count):
        e = ends[k]
        found = tables.get(k) if tables else None
        if found is None:
            total = sums[k]
            append(lazy(queue, ids[k], slots[q], _new_table_rows((source, q, e + 1)), total >> 32, total & _LOW,
                        wrap if q < lap else not wrap))
        else:
            append(lazy(queue, ids[k], slots[q], *found, wrap if q < lap else not wrap))
        q = e + 1
    return chains, taken


def _packed_indirect(config: QueueConfig, memory: GuestMemory, table: np.ndarray, slots: list[int], lo: int, hi: int
                     ) -> list[tuple[_IndirectRows, int, int] | None]:
    """Single INDIRECT descriptors at ring ``slots``, their tables checked together (2.8.7: entries one
    after another, only WRITE valid): per slot (source, readable, writable), or None: walk carefully."""
    size = config.size
    out: list[tuple[_IndirectRows, int, int] | None] = [None] * len(slots)
    checked = _checked_tables(memory, table.take(np.array(slots, dtype=np.intp)), size, lo, hi, True)
    if checked is None:
        return out
    chosen, picked, table_rows, firsts, ends, good, readable, writable = checked
    head_rows = zip(picked["addr"].tolist(), picked["len"].tolist(), picked["id"].tolist(), picked["flags"].tolist(),
                    strict=True)
    for n, row, ok, first, end, r, w in zip(chosen, head_rows, good, firsts, ends, readable, writable, strict=True):
        if ok:
            out[n] = (_new_indirect_rows((slots[n], row, table_rows, first, end, True)), r, w)
    return out
