"""The scanner without numpy: the passes of :mod:`.scan` until a chunk has many survivors of pass 1.

A snapshot's pages are looked at through strided ``memoryview`` casts (each page's first
two u64 words, a C loop), so that ``dump scan`` of ordinary memory never imports numpy
(0.1-0.15 s of its start-up). Same results as :mod:`.scan_np`, the scoring texts being
:mod:`.scan_common`'s.
"""

from __future__ import annotations

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
    cast,
    guess_packed,
    guess_split,
    packed_candidate,
    split_areas,
    split_candidate,
    view,
    written,
)

_WORDS = PAGE // 8


def first_pass(chunk: memoryview, addr_limit: int) -> list[int]:
    """Indices of the pages of ``chunk`` whose first 16 bytes can be a used ring's first descriptor.

    The descriptor's address is below the top of RAM, and its flags are valid split (2.7.5) or packed
    (2.8.13) flags; it is not all zero.
    """
    words = cast(chunk[:len(chunk) // PAGE * PAGE], "Q")
    addrs, rests = words[::_WORDS].tolist(), words[1::_WORDS].tolist()
    return [page for page, (addr, rest) in enumerate(zip(addrs, rests, strict=True))
            if (addr or rest) and addr < addr_limit and (not rest & SPLIT_BAD or not rest & PACKED_BAD)]


def _prefix(addrs: list[int], rests: list[int], addr_limit: int, bad: int) -> int:
    """How many leading descriptors have an address below the limit and none of the ``bad`` bits."""
    for i, (addr, rest) in enumerate(zip(addrs, rests, strict=True)):
        if addr >= addr_limit or rest & bad:
            return i
    return len(addrs)


def second_pass(chunk: memoryview, pages: list[int], addr_limit: int) -> list[tuple[int, int, int, bool]]:
    """(page index, split valid prefix, packed valid prefix, AVAIL/USED bits seen) for pages worth a close look.

    A split table of N <= 128 is followed in its page by the available ring, whose flags must be 0 or 1
    (2.7.6); for N >= 256 they are the first u16 of the page N/256 further (viable when past the chunk).
    """
    words = cast(chunk, "Q")
    halves = cast(chunk, "H")
    count = len(chunk) // PAGE
    keep = []
    for page in pages:
        row = words[page * _WORDS:(page + 1) * _WORDS]
        addrs, rests = row[0::2].tolist(), row[1::2].tolist()
        sp = _prefix(addrs, rests, addr_limit, SPLIT_BAD)
        pp = _prefix(addrs, rests, addr_limit, PACKED_BAD)
        au_seen = any(rest & PACKED_AU for rest in rests[:pp])
        viable = False
        for size in SPLIT_SIZES:
            if size <= DESCS_PER_PAGE // 2:
                viable = sp >= size and halves[page * PAGE // 2 + 8 * size] <= 1
            else:
                ahead = page + size // DESCS_PER_PAGE
                viable = sp >= DESCS_PER_PAGE and (ahead >= count or halves[ahead * PAGE // 2] <= 1)
            if viable:
                break
        if not viable:
            sp = 0
        if sp >= SPLIT_SIZES[0] or (pp >= 1 and au_seen):
            keep.append((page, sp, pp, au_seen))
    return keep


# -- pass 3: scoring ---------------------------------------------------------------------------


def score_split(memory: GuestMemory, ram: Ram, desc_addr: int, size: int, align: int,
                floor: float = 0.0) -> Candidate | None:
    """Score a split ring of ``size`` at ``desc_addr`` laid out with ``vring_align`` ``align``; None if impossible."""
    areas = split_areas(memory, desc_addr, size, align, floor)
    if areas is None:
        return None
    halves = cast(areas.desc_raw, "H")  # 2.7.5: le64 addr, le32 len, le16 flags, le16 next
    flags = halves[6::8].tolist()
    if any(f & SPLIT_BAD16 for f in flags):
        return None
    addrs = cast(areas.desc_raw, "Q")[0::2].tolist()
    lens = cast(areas.desc_raw, "I")[2::4].tolist()
    nonzero = [bool(a or n) for a, n in zip(addrs, lens, strict=True)]
    live = sum(nonzero)
    if live == 0:
        return None
    nexts = halves[7::8].tolist()
    ring = cast(areas.avail_raw[4:4 + 2 * size], "H").tolist()  # 2.7.6
    used = cast(areas.used_raw[4:4 + 8 * size], "I")  # 2.7.8: le32 id, le32 len
    used_ids, used_lens = used[0::2].tolist(), used[1::2].tolist()
    links = [f & VIRTQ_DESC_F_NEXT for f in flags]
    in_ram = in_ram_plausible = 0
    for addr, length, live_one in zip(addrs, lens, nonzero, strict=True):
        if live_one and ram.holds(addr, length):
            in_ram += 1
            in_ram_plausible += length <= MAX_PLAUSIBLE_LEN
    avail_idx, used_idx = areas.avail_idx, areas.used_idx
    avail_written = written(avail_idx, size, avail_idx < size and any(ring[avail_idx:]))
    heads = ring[:avail_written]
    bad_heads = sum(h >= size for h in heads)
    used_written = written(used_idx, size, used_idx < size and (any(used_ids[used_idx:]) or
                                                                any(used_lens[used_idx:])))
    counts = SplitCounts(
        live=live, links=sum(1 for link in links if link),
        bad_links=sum(1 for link, nxt in zip(links, nexts, strict=True) if link and nxt >= size),
        in_ram=in_ram, in_ram_plausible=in_ram_plausible,
        written=avail_written, bad_heads=bad_heads, live_heads=0 if bad_heads else sum(nonzero[h] for h in heads),
        used_written=used_written, bad_ids=sum(i >= size for i in used_ids[:used_written]),
        used_plausible=sum(n <= MAX_PLAUSIBLE_LEN for n in used_lens[:used_written]),
        indirect_seen=any(f & VIRTQ_DESC_F_INDIRECT for f in flags),
        device_guess=guess_split(addrs, lens, flags, nexts, ring, avail_idx, avail_written, size, memory))
    return split_candidate(desc_addr, size, align, areas, counts)


def score_packed(memory: GuestMemory, ram: Ram, desc_addr: int, size: int) -> Candidate | None:
    """Score a packed ring of ``size`` at ``desc_addr``; None if impossible."""
    raw = view(memory, desc_addr, 16 * size)
    if raw is None:
        return None
    halves = cast(raw, "H")  # 2.8.13: le64 addr, le32 len, le16 id, le16 flags
    flags = halves[7::8].tolist()
    if any(f & PACKED_BAD16 for f in flags):
        return None
    addrs = cast(raw, "Q")[0::2].tolist()
    lens = cast(raw, "I")[2::4].tolist()
    ids = halves[6::8].tolist()
    nonzero = [bool(a or n or i or f) for a, n, i, f in zip(addrs, lens, ids, flags, strict=True)]
    live = sum(nonzero)
    if live == 0:
        return None
    a = [bool(f & VIRTQ_DESC_F_AVAIL) for f in flags]
    u = [bool(f & VIRTQ_DESC_F_USED) for f in flags]
    if not any(f & (VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED) for f in flags):
        return None
    with_addr = [(addr, length) for addr, length in zip(addrs, lens, strict=True) if addr]
    # The driver's next slot: where the AVAIL bit run of the current lap ends (2.8.1).
    change = next((k for k in range(size - 1) if a[k + 1] != a[k]), None)
    pending = [x != y for x, y in zip(a, u, strict=True)]
    # The first slot of each available list: the slot before it is not an available slot with NEXT.
    chained = [p and bool(f & VIRTQ_DESC_F_NEXT) for p, f in zip(pending, flags, strict=True)]
    heads = [p and not chained[k - 1] for k, p in enumerate(pending)]  # chained[-1]: the ring wraps
    head_ids = [i for i, h in zip(ids, heads, strict=True) if h]
    last = max(k for k, live_one in enumerate(nonzero) if live_one) + 1
    counts = PackedCounts(
        live=live, bad_ids=sum(1 for i, live_one in zip(ids, nonzero, strict=True) if live_one and i >= size),
        with_addr=len(with_addr), in_ram=sum(ram.holds(addr, length) for addr, length in with_addr),
        transitions=sum(a[k] != a[k - 1] for k in range(size)),
        next_avail=change + 1 if change is not None else 0,
        avail_wrap=a[0] if change is not None else not a[0],
        pending=sum(pending), heads=len(head_ids), distinct=len(set(head_ids)) == len(head_ids),
        plausible=sum(1 for n, live_one in zip(lens, nonzero, strict=True) if live_one and n <= MAX_PLAUSIBLE_LEN),
        last=last, all_avail=all(x for x, live_one in zip(a, nonzero, strict=True) if live_one),
        indirect_seen=any(f & VIRTQ_DESC_F_INDIRECT for f in flags),
        device_guess=guess_packed(memory, addrs, lens, flags,
                                  [k for k in range(size) if heads[k] or (nonzero[k] and not pending[k])][:8]))
    return packed_candidate(memory, desc_addr, size, counts)
