"""The scanner's numpy half: the passes of :mod:`.scan` from the first chunk where many pages pass pass 1.

Page-table-like memory can make every page of a chunk a survivor; numpy looks at them all
at once. Same results as :mod:`.scan_pure` (the scoring texts are :mod:`.scan_common`'s).
"""

from __future__ import annotations

import numpy as np

from ..memory import GuestMemory
from .chunks import PAGE
from .scan_common import (
    DESCS_PER_PAGE,
    MAX_PLAUSIBLE_LEN,
    PACKED_AU,
    PACKED_BAD,
    PACKED_BAD16,
    SPLIT_BAD,
    SPLIT_BAD16,
    SPLIT_SIZES,
    VIRTQ_DESC_F_AVAIL,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_USED,
    Candidate,
    PackedCounts,
    Ram,
    SplitCounts,
    guess_packed,
    guess_split,
    packed_candidate,
    split_areas,
    split_candidate,
    view,
    written,
)

DESC_DTYPE = np.dtype([("addr", "<u8"), ("len", "<u4"), ("flags", "<u2"), ("next", "<u2")])  # 2.7.5
PACKED_DTYPE = np.dtype([("addr", "<u8"), ("len", "<u4"), ("id", "<u2"), ("flags", "<u2")])  # 2.8.13
USED_DTYPE = np.dtype([("id", "<u4"), ("len", "<u4")])  # 2.7.8


def holds(ram: Ram, addr: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Vectorised :meth:`Ram.holds`."""
    if ram.arrays is None:
        ram.arrays = (np.array(ram.starts, dtype=np.uint64), np.array(ram.ends, dtype=np.uint64))
    starts, ends = ram.arrays
    addr = addr.astype(np.uint64)
    at = np.searchsorted(starts, addr, side="right").astype(np.int64) - 1
    ok = at >= 0
    at = np.maximum(at, 0)
    end = addr + length.astype(np.uint64)
    return ok & (end <= ends[at]) & (end >= addr)


# -- passes 1 and 2 ------------------------------------------------------------------------------


def first_pass(chunk: memoryview, addr_limit: int) -> np.ndarray:
    """Indices of the pages of ``chunk`` whose first 16 bytes can be a used ring's first descriptor."""
    pages = len(chunk) // PAGE
    words = np.frombuffer(chunk, dtype="<u8", count=pages * PAGE // 8).reshape(pages, PAGE // 8)
    addr, rest = words[:, 0], words[:, 1]
    ok = ((addr | rest) != 0) & (addr < np.uint64(addr_limit))
    ok &= ((rest & np.uint64(SPLIT_BAD)) == 0) | ((rest & np.uint64(PACKED_BAD)) == 0)
    return np.flatnonzero(ok)


def second_pass(chunk: memoryview, pages: np.ndarray | list[int], addr_limit: int
                ) -> list[tuple[int, int, int, bool]]:
    """(page index, split valid prefix, packed valid prefix, AVAIL/USED bits seen) for pages worth a close look."""
    if not len(pages):
        return []
    pages = np.asarray(pages, dtype=np.intp)
    words = np.frombuffer(chunk, dtype="<u8").reshape(-1, PAGE // 8)[pages]
    addr, rest = words[:, 0::2], words[:, 1::2]
    addr_ok = addr < np.uint64(addr_limit)
    split_ok = addr_ok & ((rest & np.uint64(SPLIT_BAD)) == 0)
    packed_ok = addr_ok & ((rest & np.uint64(PACKED_BAD)) == 0)
    split_prefix = np.where(split_ok.all(axis=1), DESCS_PER_PAGE, np.argmin(split_ok, axis=1))
    packed_prefix = np.where(packed_ok.all(axis=1), DESCS_PER_PAGE, np.argmin(packed_ok, axis=1))
    au = (rest & np.uint64(PACKED_AU)) != 0
    col = np.arange(DESCS_PER_PAGE)
    au_seen = (au & (col[None, :] < packed_prefix[:, None])).any(axis=1)
    split_viable = _split_sizes_viable(chunk, pages, split_prefix)
    keep = []
    for i, page in enumerate(pages.tolist()):
        sp, pp = int(split_prefix[i]), int(packed_prefix[i])
        if not split_viable[i]:
            sp = 0
        if sp >= SPLIT_SIZES[0] or (pp >= 1 and au_seen[i]):
            keep.append((page, sp, pp, bool(au_seen[i])))
    return keep


def _split_sizes_viable(chunk: memoryview, pages: np.ndarray, prefix: np.ndarray) -> np.ndarray:
    """Per page: whether some split size can fit, judging by where the available ring's flags would be.

    Size N <= 128: the avail ring starts in the same page at byte 16N; N >= 256: it starts the page N/256
    pages further (unknown, so viable, past the chunk). Its flags must be 0 or 1 (2.7.6).
    """
    halves = np.frombuffer(chunk, dtype="<u2").reshape(-1, PAGE // 2)
    rows = halves[pages]
    viable = np.zeros(len(pages), dtype=bool)
    for size in SPLIT_SIZES:
        if size <= DESCS_PER_PAGE // 2:
            viable |= (prefix >= size) & (rows[:, 8 * size] <= 1)
        else:
            ahead = pages + size // DESCS_PER_PAGE
            inside = ahead < len(halves)
            flags = np.where(inside, halves[np.minimum(ahead, len(halves) - 1), 0], 0)
            viable |= (prefix >= DESCS_PER_PAGE) & (flags <= 1)
    return viable


# -- pass 3: scoring ---------------------------------------------------------------------------


def _written(nonzero: np.ndarray, idx: int, size: int) -> int:
    return written(idx, size, idx < size and bool(nonzero[idx:].any()))


def score_split(memory: GuestMemory, ram: Ram, desc_addr: int, size: int, align: int,
                floor: float = 0.0) -> Candidate | None:
    """Score a split ring of ``size`` at ``desc_addr`` laid out with ``vring_align`` ``align``; None if impossible."""
    areas = split_areas(memory, desc_addr, size, align, floor)
    if areas is None:
        return None
    table = np.frombuffer(areas.desc_raw, dtype=DESC_DTYPE)
    flags = table["flags"]
    if (flags & SPLIT_BAD16).any():
        return None
    nonzero = (table["addr"] != 0) | (table["len"] != 0)
    live = int(nonzero.sum())
    if live == 0:
        return None
    ring = np.frombuffer(areas.avail_raw, dtype="<u2", count=size, offset=4)
    uring = np.frombuffer(areas.used_raw, dtype=USED_DTYPE, count=size, offset=4)
    links = flags & VIRTQ_DESC_F_NEXT != 0
    in_ram = holds(ram, table["addr"][nonzero], table["len"][nonzero])
    plausible = table["len"][nonzero] <= MAX_PLAUSIBLE_LEN
    avail_written = _written(ring != 0, areas.avail_idx, size)
    heads = ring[:avail_written]
    bad_heads = int((heads >= size).sum())
    used_written = _written((uring["id"] != 0) | (uring["len"] != 0), areas.used_idx, size)
    elems = uring[:used_written]
    bad_ids = int((elems["id"] >= size).sum())
    counts = SplitCounts(
        live=live, links=int(links.sum()), bad_links=int((links & (table["next"] >= size)).sum()),
        in_ram=int(in_ram.sum()), in_ram_plausible=int((in_ram & plausible).sum()),
        written=avail_written, bad_heads=bad_heads, live_heads=0 if bad_heads else int(nonzero[heads].sum()),
        used_written=used_written, bad_ids=bad_ids, used_plausible=int((elems["len"] <= MAX_PLAUSIBLE_LEN).sum()),
        indirect_seen=bool((flags & VIRTQ_DESC_F_INDIRECT).any()),
        device_guess=guess_split(table["addr"], table["len"], flags, table["next"], ring, areas.avail_idx,
                                 avail_written, size, memory))
    return split_candidate(desc_addr, size, align, areas, counts)


def score_packed(memory: GuestMemory, ram: Ram, desc_addr: int, size: int) -> Candidate | None:
    """Score a packed ring of ``size`` at ``desc_addr``; None if impossible."""
    raw = view(memory, desc_addr, 16 * size)
    if raw is None:
        return None
    ring = np.frombuffer(raw, dtype=PACKED_DTYPE)
    flags = ring["flags"]
    if (flags & PACKED_BAD16).any():
        return None
    nonzero = (ring["addr"] != 0) | (ring["len"] != 0) | (ring["id"] != 0) | (flags != 0)
    live = int(nonzero.sum())
    if live == 0:
        return None
    a = (flags & VIRTQ_DESC_F_AVAIL) != 0
    u = (flags & VIRTQ_DESC_F_USED) != 0
    if not (a | u).any():
        return None
    with_addr = ring["addr"] != 0
    in_ram = holds(ram, ring["addr"][with_addr], ring["len"][with_addr]) if with_addr.any() else np.zeros(0, bool)
    # The driver's next slot: where the AVAIL bit run of the current lap ends (2.8.1).
    change = np.flatnonzero(a[1:] != a[:-1])
    pending = a != u
    # The first slot of each available list: the slot before it is not an available slot with NEXT.
    chained = pending & ((flags & VIRTQ_DESC_F_NEXT) != 0)
    heads = pending & ~np.roll(chained, 1)
    ids = ring["id"][heads]
    counts = PackedCounts(
        live=live, bad_ids=int((nonzero & (ring["id"] >= size)).sum()),
        with_addr=int(with_addr.sum()), in_ram=int(in_ram.sum()), transitions=int((a != np.roll(a, 1)).sum()),
        next_avail=int(change[0]) + 1 if len(change) else 0,
        avail_wrap=bool(a[0]) if len(change) else not bool(a[0]),
        pending=int(pending.sum()), heads=int(heads.sum()),
        distinct=len(set(ids.tolist())) == len(ids),  # np.unique would import numpy.ma (10 ms)
        plausible=int((ring["len"][nonzero] <= MAX_PLAUSIBLE_LEN).sum()),
        last=int(np.flatnonzero(nonzero)[-1]) + 1, all_avail=bool(a[nonzero].all()),
        indirect_seen=bool((flags & VIRTQ_DESC_F_INDIRECT).any()),
        device_guess=guess_packed(memory, ring["addr"], ring["len"], flags,
                                  np.flatnonzero(heads | (nonzero & ~pending))[:8].tolist()))
    return packed_candidate(memory, desc_addr, size, counts)
