"""Find split and packed virtqueues in a whole snapshot, without being told where they are.

Where to look comes from how Linux lays rings out: every ring is allocated with
``dma_alloc_coherent`` (zeroed, page-aligned), so a descriptor table (split,
virtio 1.4, 2.7.5) or descriptor ring (packed, 2.8.13) starts on a page boundary;
a split ring's available ring follows the table directly and its used ring
follows at the next ``vring_align`` boundary (``vring_init``: 64 bytes,
SMP_CACHE_BYTES, for virtio-pci modern; 4096 for legacy virtio-pci, virtio-mmio
and SeaBIOS). Descriptor 0 is the first a driver fills, so a ring that was ever
used has a non-zero first descriptor.

Three passes:

1. numpy over every page (one cache line each): the first descriptor must be
   non-zero, its address below the top of guest RAM, its flags valid for split
   (only NEXT|WRITE|INDIRECT) or packed (plus AVAIL|USED). Random data and zero
   pages stop here. Sparse-file holes are never read (:mod:`.chunks`).
2. numpy over the surviving pages: how many leading descriptors look valid, and
   whether an available ring header (flags 0 or 1) can follow a table of N.
3. per (page, queue size, alignment) that is left, a scored check of the whole
   ring: every descriptor's flags and NEXT link, buffers inside guest RAM, avail
   and used flags, ``avail.idx - used.idx`` within the queue size (2.7.13),
   avail heads and used ids below the queue size, used lengths plausible, the
   EVENT_IDX fields near the indices, untouched entries still zero; for packed
   rings, buffer ids below the size, the AVAIL bits forming the two runs that
   two wrap counters give (2.8.1), in-flight ids distinct.

Each candidate carries a confidence (points earned / points possible) and the
evidence behind it; candidates whose areas overlap a better one are dropped.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import GuestMemoryError
from ..memory import GuestMemory
from ..model import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_VERSION_1,
    Layout,
    QueueConfig,
)
from .chunks import PAGE, iter_chunks, page_ranges
from .progress import Progress
from .snapshot import Snapshot

# Descriptor flags (2.7.5; 2.8.1 the packed AVAIL and USED flags): dissectors.virtqueue's values
# (tests/test_startup.py checks), not imported from there, which would load construct for `dump scan`.
VIRTQ_DESC_F_NEXT = 1
F_WRITE = 2  # VIRTQ_DESC_F_WRITE
VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_DESC_F_AVAIL = 1 << 7
VIRTQ_DESC_F_USED = 1 << 15

DESC_DTYPE = np.dtype([("addr", "<u8"), ("len", "<u4"), ("flags", "<u2"), ("next", "<u2")])  # 2.7.5
PACKED_DTYPE = np.dtype([("addr", "<u8"), ("len", "<u4"), ("id", "<u2"), ("flags", "<u2")])  # 2.8.13
USED_DTYPE = np.dtype([("id", "<u4"), ("len", "<u4")])  # 2.7.8

SPLIT_FLAG_BITS = VIRTQ_DESC_F_NEXT | F_WRITE | VIRTQ_DESC_F_INDIRECT
PACKED_FLAG_BITS = SPLIT_FLAG_BITS | VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED
# The second 8 bytes of a descriptor: len (bits 0-31), then split flags/next or packed id/flags.
_SPLIT_BAD = (~SPLIT_FLAG_BITS & 0xFFFF) << 32
_PACKED_BAD = (~PACKED_FLAG_BITS & 0xFFFF) << 48
_SPLIT_BAD16 = np.uint16(~SPLIT_FLAG_BITS & 0xFFFF)
_PACKED_BAD16 = np.uint16(~PACKED_FLAG_BITS & 0xFFFF)
_AU16 = np.uint16(VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED)
_PACKED_AU = (VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED) << 48

# 2.7: a power of 2, at most 32768 (2.8: any size up to 32768). Linux takes the device's queue size and QEMU's
# devices offer 8 (rng) to 1024; smaller rings hold too little to tell from noise, so they are not looked for.
SPLIT_SIZES = tuple(1 << k for k in range(2, 16))
PACKED_SIZES = tuple(1 << k for k in range(3, 16))
VRING_ALIGNS = (64, 4096)  # vring_init's used-ring alignment: SMP_CACHE_BYTES (modern PCI), 4096 (legacy)
MAX_PLAUSIBLE_LEN = 1 << 26  # a buffer longer than 64 MiB is not a Linux virtio buffer
DEFAULT_MIN_SCORE = 0.6
DESCS_PER_PAGE = PAGE // 16

_U16X2 = struct.Struct("<HH")


@dataclass
class Candidate:
    """A ring the scanner found, its confidence and why."""

    layout: Layout
    size: int
    desc: int
    driver: int  # split: the available ring; packed: 0 (the event suppression areas cannot be found)
    device: int  # split: the used ring; packed: 0
    score: float
    evidence: list[str]
    problems: list[str] = field(default_factory=list)
    align: int | None = None  # split: the vring_align the used ring matched
    state: dict[str, int] = field(default_factory=dict)  # indices as found
    device_guess: str | None = None  # "blk", "net", "scsi" when the chains' shapes say so
    indirect_seen: bool = False
    event_idx_seen: bool = False
    first_lap: bool = False  # packed: the ring never wrapped, so its size is a guess
    number: int = 0

    @property
    def end(self) -> int:
        """One past the last byte of the ring's contiguous areas."""
        if self.layout is Layout.PACKED:
            return self.desc + 16 * self.size
        return self.device + 6 + 8 * self.size

    def features(self) -> int:
        """The feature bits the ring's contents imply (for analysing it without QMP)."""
        bits = 1 << VIRTIO_F_VERSION_1
        if self.layout is Layout.PACKED:
            bits |= 1 << VIRTIO_F_RING_PACKED
        if self.indirect_seen:
            bits |= 1 << VIRTIO_F_INDIRECT_DESC
        if self.event_idx_seen:
            bits |= 1 << VIRTIO_F_EVENT_IDX
        return bits

    def config(self, *, index: int | None = None, features: int | None = None, device_type: int = 0) -> QueueConfig:
        return QueueConfig(self.number if index is None else index, self.size, self.desc, self.driver, self.device,
                           self.layout, self.features() if features is None else features, device_type)

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number, "layout": self.layout.value, "size": self.size, "desc": self.desc,
            "driver": self.driver, "device": self.device, "align": self.align, "score": round(self.score, 3),
            "state": self.state, "device_guess": self.device_guess, "features": self.features(),
            "evidence": self.evidence, "problems": self.problems,
        }


class _Ram:
    """Vectorised "is [addr, addr+len) in guest RAM" over the memory's merged ranges."""

    def __init__(self, memory: GuestMemory) -> None:
        ranges = memory.ranges() if hasattr(memory, "ranges") else [(r.guest_addr, r.end) for r in memory]
        self.starts = np.array([start for start, _ in ranges], dtype=np.uint64)
        self.ends = np.array([end for _, end in ranges], dtype=np.uint64)
        top = int(self.ends.max()) if len(self.ends) else 0
        self.limit = 1 << max(top - 1, 1).bit_length()  # addresses at or above cannot be RAM

    def holds(self, addr: np.ndarray, length: np.ndarray) -> np.ndarray:
        addr = addr.astype(np.uint64)
        at = np.searchsorted(self.starts, addr, side="right").astype(np.int64) - 1
        ok = at >= 0
        at = np.maximum(at, 0)
        end = addr + length.astype(np.uint64)
        return ok & (end <= self.ends[at]) & (end >= addr)


# -- passes 1 and 2 ------------------------------------------------------------------------------


def first_pass(chunk: memoryview, addr_limit: int) -> np.ndarray:
    """Indices of the pages of ``chunk`` whose first 16 bytes can be a used ring's first descriptor."""
    pages = len(chunk) // PAGE
    words = np.frombuffer(chunk, dtype="<u8", count=pages * PAGE // 8).reshape(pages, PAGE // 8)
    addr, rest = words[:, 0], words[:, 1]
    ok = ((addr | rest) != 0) & (addr < np.uint64(addr_limit))
    ok &= ((rest & np.uint64(_SPLIT_BAD)) == 0) | ((rest & np.uint64(_PACKED_BAD)) == 0)
    return np.flatnonzero(ok)


def second_pass(chunk: memoryview, pages: np.ndarray, addr_limit: int) -> list[tuple[int, int, int, bool]]:
    """(page index, split valid prefix, packed valid prefix, AVAIL/USED bits seen) for pages worth a close look."""
    if not len(pages):
        return []
    words = np.frombuffer(chunk, dtype="<u8").reshape(-1, PAGE // 8)[pages]
    addr, rest = words[:, 0::2], words[:, 1::2]
    addr_ok = addr < np.uint64(addr_limit)
    split_ok = addr_ok & ((rest & np.uint64(_SPLIT_BAD)) == 0)
    packed_ok = addr_ok & ((rest & np.uint64(_PACKED_BAD)) == 0)
    split_prefix = np.where(split_ok.all(axis=1), DESCS_PER_PAGE, np.argmin(split_ok, axis=1))
    packed_prefix = np.where(packed_ok.all(axis=1), DESCS_PER_PAGE, np.argmin(packed_ok, axis=1))
    au = (rest & np.uint64(_PACKED_AU)) != 0
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


class _Score:
    def __init__(self) -> None:
        self.points = 0.0
        self.possible = 0.0
        self.evidence: list[str] = []
        self.problems: list[str] = []

    def add(self, weight: float, fraction: float, text: str) -> None:
        self.possible += weight
        self.points += weight * max(0.0, min(1.0, fraction))
        (self.evidence if fraction >= 0.999 else self.problems).append(text)

    @property
    def value(self) -> float:
        return self.points / self.possible if self.possible else 0.0


def _view(memory: GuestMemory, addr: int, length: int) -> memoryview | None:
    try:
        return memory.view(addr, length)
    except GuestMemoryError:
        return None


def _written(ring_nonzero: np.ndarray, idx: int, size: int) -> int:
    """Entries of a ring written so far: ``idx`` in the first lap (the rest still zero), else all."""
    if idx < size and not ring_nonzero[idx:].any():
        return idx
    return size


INACTIVE_MAX = 0.47  # the best score a split ring with both indices at zero can reach (penalty 0.6)


def score_split(memory: GuestMemory, ram: _Ram, desc_addr: int, size: int, align: int,
                floor: float = 0.0) -> Candidate | None:
    """Score a split ring of ``size`` at ``desc_addr`` laid out with ``vring_align`` ``align``; None if impossible."""
    avail = desc_addr + 16 * size
    used = -(-(avail + 6 + 2 * size) // align) * align
    # The cheap tests first: the two ring headers (2.7.6 / 2.7.8: only bit 0 of flags is defined).
    avail_raw = _view(memory, avail, 6 + 2 * size)
    if avail_raw is None or avail_raw[1] or avail_raw[0] > 1:
        return None
    used_raw = _view(memory, used, 6 + 8 * size)
    if used_raw is None or used_raw[1] or used_raw[0] > 1:
        return None
    raw = _view(memory, desc_addr, 16 * size)
    if raw is None:
        return None
    table = np.frombuffer(raw, dtype=DESC_DTYPE)
    if (table["flags"] & _SPLIT_BAD16).any():
        return None
    avail_flags, avail_idx = _U16X2.unpack_from(avail_raw, 0)
    used_flags, used_idx = _U16X2.unpack_from(used_raw, 0)
    if not (avail_idx or used_idx) and floor > INACTIVE_MAX:
        return None  # could not reach the floor anyway
    nonzero = (table["addr"] != 0) | (table["len"] != 0)
    live = int(nonzero.sum())
    if live == 0:
        return None
    ring = np.frombuffer(avail_raw, dtype="<u2", count=size, offset=4)
    used_event = int.from_bytes(avail_raw[4 + 2 * size:6 + 2 * size], "little")
    uring = np.frombuffer(used_raw, dtype=USED_DTYPE, count=size, offset=4)
    avail_event = int.from_bytes(used_raw[4 + 8 * size:6 + 8 * size], "little")

    s = _Score()
    links = table["flags"] & VIRTQ_DESC_F_NEXT != 0
    bad_links = int((links & (table["next"] >= size)).sum())
    s.add(20, 1 - bad_links / max(int(links.sum()), 1),
          f"{size} descriptors with valid flags, {live} non-zero"
          + (f", {bad_links} NEXT links out of range" if bad_links else ", NEXT links in range"))
    in_ram = ram.holds(table["addr"][nonzero], table["len"][nonzero])
    plausible = table["len"][nonzero] <= MAX_PLAUSIBLE_LEN
    s.add(15, float((in_ram & plausible).mean()),
          f"{int(in_ram.sum())}/{live} buffers inside guest RAM, lengths plausible")
    pending = (avail_idx - used_idx) & 0xFFFF
    active = bool(avail_idx or used_idx)
    s.add(15, (1.0 if active else 0.3) if pending <= size else 0.0,
          f"avail.idx {avail_idx} - used.idx {used_idx} = {pending} in flight"
          + ("" if pending <= size else f", more than the queue size {size}") + ("" if active else " (never used?)"))
    penalty = 1.0 if active else 0.6  # both indices zero: a ring never used, or not a ring
    if pending > size:
        penalty *= 0.5
    written = _written(ring != 0, avail_idx, size)
    if written:
        heads = ring[:written]
        ok = heads < size
        if not ok.all():
            penalty *= 0.5
            s.add(15, 0.0, f"{int((~ok).sum())}/{written} avail entries are not descriptor indices")
        else:
            live_heads = nonzero[heads]
            s.add(15, float(live_heads.mean()), f"{int(live_heads.sum())}/{written} avail heads name non-zero "
                                                f"descriptors")
    else:
        s.add(15, 0.0, "the available ring is empty")
    uwritten = _written((uring["id"] != 0) | (uring["len"] != 0), used_idx, size)
    if uwritten:
        elems = uring[:uwritten]
        ok = elems["id"] < size
        if not ok.all():
            penalty *= 0.5
            s.add(15, 0.0, f"{int((~ok).sum())}/{uwritten} used ids are not descriptor indices")
        else:
            plausible = elems["len"] <= MAX_PLAUSIBLE_LEN
            s.add(15, float(plausible.mean()), f"{uwritten} used elements with ids below {size}, "
                                               f"{int(plausible.sum())} with plausible lengths")
    elif used_idx == 0 and 0 < pending <= size:
        s.add(15, 0.5, "the used ring is empty: the device has used nothing yet")
    else:
        s.add(15, 0.0, "the used ring is empty")
        if used_idx:
            penalty *= 0.5
    near = (abs((used_event - used_idx + 0x8000) % 0x10000 - 0x8000) <= size
            and abs((avail_event - avail_idx + 0x8000) % 0x10000 - 0x8000) <= size)
    event_idx = near and bool(used_event or avail_event)
    if event_idx:
        s.add(10, 1.0, f"used_event {used_event} and avail_event {avail_event} track the indices (EVENT_IDX)")
    elif used_event == 0 and avail_event == 0:
        s.add(10, 0.3, "used_event and avail_event are zero (no EVENT_IDX?)")
    else:
        s.add(10, 0.0, f"used_event {used_event} / avail_event {avail_event} far from the indices")
    first_lap = written == avail_idx and uwritten == used_idx
    s.add(10, 1.0 if active else 0.0,
          ("first lap: entries past the indices still zero" if first_lap else "ring wrapped at least once")
          + f"; used ring at vring_align {align}")
    s.points *= penalty
    candidate = Candidate(Layout.SPLIT, size, desc_addr, avail, used, s.value, s.evidence, s.problems, align,
                          {"avail_idx": avail_idx, "used_idx": used_idx, "avail_flags": avail_flags,
                           "used_flags": used_flags, "used_event": used_event, "avail_event": avail_event})
    candidate.indirect_seen = bool((table["flags"] & VIRTQ_DESC_F_INDIRECT).any())
    candidate.event_idx_seen = bool(event_idx)
    candidate.device_guess = _guess_split(table, ring, avail_idx, written, size, memory)
    return candidate


def _shape_guess(lens: list[int], writes: list[bool]) -> str | None:
    """The device a chain's buffer lengths suggest (Linux drivers' request layouts)."""
    if len(lens) >= 2 and lens[0] == 16 and not writes[0] and writes[-1] and lens[-1] == 1:
        return "blk"  # 5.2.6: struct virtio_blk_req header (16 bytes), data, status byte
    if len(lens) >= 2 and lens[0] in (19, 51) and not writes[0] and writes[-1]:
        return "scsi"  # 5.6.6: virtio_scsi_req_cmd with a 32-byte CDB (51), or a TMF request (19)
    if lens and not any(writes) and lens[0] in (10, 12, 20):
        return "net"  # 5.1.6: a transmit chain starting with struct virtio_net_hdr
    return None


def _indirect_shape(memory: GuestMemory, addr: int, length: int) -> tuple[list[int], list[bool]]:
    """Lengths and WRITE flags of an indirect table's first entries (2.7.5.3), or empty."""
    count = min(length // 16, 64)
    raw = _view(memory, addr, 16 * count) if count and length % 16 == 0 else None
    if raw is None:
        return [], []
    table = np.frombuffer(raw, dtype=DESC_DTYPE)
    return [int(x) for x in table["len"]], [bool(f & F_WRITE) for f in table["flags"]]


def _guess_split(table: np.ndarray, ring: np.ndarray, avail_idx: int, written: int, size: int,
                 memory: GuestMemory | None = None) -> str | None:
    """The device type the shapes of the latest chains suggest."""
    votes: dict[str, int] = {}
    for back in range(1, min(written, 8) + 1):
        head = int(ring[(avail_idx - back) % size])
        if head >= size:
            continue
        lens, writes, index = [], [], head
        for _ in range(size):
            entry = table[index]
            if entry["flags"] & VIRTQ_DESC_F_INDIRECT and memory is not None:
                more_lens, more_writes = _indirect_shape(memory, int(entry["addr"]), int(entry["len"]))
                lens += more_lens
                writes += more_writes
            else:
                lens.append(int(entry["len"]))
                writes.append(bool(entry["flags"] & F_WRITE))
            if not entry["flags"] & VIRTQ_DESC_F_NEXT or int(entry["next"]) >= size:
                break
            index = int(entry["next"])
        guess = _shape_guess(lens, writes)
        if guess:
            votes[guess] = votes.get(guess, 0) + 1
    return max(votes, key=votes.__getitem__) if votes else None


def _guess_packed(memory: GuestMemory, ring: np.ndarray, heads: np.ndarray) -> str | None:
    votes: dict[str, int] = {}
    for slot in np.flatnonzero(heads)[:8].tolist():
        entry = ring[slot]
        if entry["flags"] & VIRTQ_DESC_F_INDIRECT:
            lens, writes = _indirect_shape(memory, int(entry["addr"]), int(entry["len"]))
        else:
            lens, writes, k = [], [], slot
            while k < len(ring) and len(lens) < 64:
                lens.append(int(ring[k]["len"]))
                writes.append(bool(ring[k]["flags"] & F_WRITE))
                if not ring[k]["flags"] & VIRTQ_DESC_F_NEXT:
                    break
                k += 1
        guess = _shape_guess(lens, writes)
        if guess:
            votes[guess] = votes.get(guess, 0) + 1
    return max(votes, key=votes.__getitem__) if votes else None


def score_packed(memory: GuestMemory, ram: _Ram, desc_addr: int, size: int) -> Candidate | None:
    """Score a packed ring of ``size`` at ``desc_addr``; None if impossible."""
    raw = _view(memory, desc_addr, 16 * size)
    if raw is None:
        return None
    ring = np.frombuffer(raw, dtype=PACKED_DTYPE)
    flags = ring["flags"]
    if (flags & _PACKED_BAD16).any():
        return None
    nonzero = (ring["addr"] != 0) | (ring["len"] != 0) | (ring["id"] != 0) | (flags != 0)
    live = int(nonzero.sum())
    if live == 0:
        return None
    a = (flags & VIRTQ_DESC_F_AVAIL) != 0
    u = (flags & VIRTQ_DESC_F_USED) != 0
    if not (a | u).any():
        return None
    s = _Score()
    bad_ids = int((nonzero & (ring["id"] >= size)).sum())
    s.add(20, 1 - bad_ids / live, f"{size} slots with valid flags, {live} non-zero"
          + (f", {bad_ids} buffer ids out of range" if bad_ids else ", buffer ids below the size"))
    with_addr = ring["addr"] != 0
    if with_addr.any():
        in_ram = ram.holds(ring["addr"][with_addr], ring["len"][with_addr])
        s.add(15, float(in_ram.mean()), f"{int(in_ram.sum())}/{int(with_addr.sum())} buffers inside guest RAM")
    else:
        s.add(15, 0.0, "no buffer addresses")
    transitions = int((a != np.roll(a, 1)).sum())
    if transitions <= 2:
        s.add(15, 1.0, "AVAIL bits form at most two runs (one driver wrap counter boundary)")
    else:
        s.add(15, 0.0, f"AVAIL bits change {transitions} times around the ring")
    # The driver's next slot: where the AVAIL bit run of the current lap ends (2.8.1).
    change = np.flatnonzero(a[1:] != a[:-1])
    next_avail = int(change[0]) + 1 if len(change) else 0
    wrap = bool(a[0]) if len(change) else not bool(a[0])
    pending = a != u
    # The first slot of each available list: the slot before it is not an available slot with NEXT.
    chained = pending & ((flags & VIRTQ_DESC_F_NEXT) != 0)
    heads = pending & ~np.roll(chained, 1)
    ids = ring["id"][heads]
    distinct = len(set(ids.tolist())) == len(ids)  # np.unique would import numpy.ma (10 ms)
    s.add(15, 1.0 if distinct else 0.3, f"{int(pending.sum())} slots available and not used, {int(heads.sum())} "
          f"lists" + (", buffer ids distinct" if distinct else ", with repeated buffer ids"))
    lens = ring["len"][nonzero]
    s.add(15, float((lens <= MAX_PLAUSIBLE_LEN).mean()), "buffer lengths plausible")
    last = int(np.flatnonzero(nonzero)[-1]) + 1
    tight = last > size // 2 or size == 2
    tail_raw = _view(memory, desc_addr + 16 * size, PAGE - (16 * size) % PAGE) if (16 * size) % PAGE else None
    # No tail when the ring ends on a page boundary: Linux gives it whole pages, what follows is unrelated.
    tail_zero = tail_raw is None or not any(bytes(tail_raw))
    follower = _view(memory, desc_addr + 16 * size, 16)
    continues = False
    if follower is not None and any(bytes(follower)):
        next_slot = np.frombuffer(follower, dtype=PACKED_DTYPE)[0]
        continues = (not next_slot["flags"] & _PACKED_BAD16 and bool(next_slot["flags"] & _AU16)
                     and int(next_slot["id"]) < 2 * size)
    if continues and tail_raw is None:
        s.add(10, 0.5, "a descriptor-like slot starts the next page")
    elif tail_zero:
        s.add(10, 1.0 if tight else 0.5, "the ring fills its pages (the rest of the last page is zero)")
    elif continues:
        s.add(10, 0.0, "a descriptor-like slot follows: the ring may be longer")
    else:
        s.add(10, 0.5, "other bytes follow the ring")
    s.add(10, 1.0, "page-aligned descriptor ring (Linux vring_alloc_queue_packed)")
    candidate = Candidate(Layout.PACKED, size, desc_addr, 0, 0, s.value, s.evidence, s.problems, None,
                          {"next_avail": next_avail, "avail_wrap": int(wrap), "pending_slots": int(pending.sum())})
    # First lap: every written slot carries wrap counter 1 (2.8.1: it starts at 1) and the rest is zero.
    candidate.first_lap = bool(a[nonzero].all()) and not nonzero[last:].any() and tail_zero
    if candidate.first_lap:
        candidate.problems.append(f"first lap: only slots 0..{last - 1} were ever used, so the queue size is "
                                  f"not known (taken as {size})")
    candidate.indirect_seen = bool((flags & VIRTQ_DESC_F_INDIRECT).any())
    candidate.device_guess = _guess_packed(memory, ring, heads | (nonzero & ~pending))
    return candidate


def _best(candidates: list[Candidate]) -> Candidate | None:
    candidates = [c for c in candidates if c is not None]
    return max(candidates, key=lambda c: (round(c.score, 6), -c.size)) if candidates else None


def evaluate_page(memory: GuestMemory, ram: _Ram, addr: int, split_prefix: int, packed_prefix: int,
                  au_seen: bool, first_page: memoryview | None = None,
                  page_heads: Callable[[int], int | None] | None = None, floor: float = 0.0) -> Candidate | None:
    """The best ring that can start at page ``addr``, or None.

    ``page_heads(n)``, when given, is the first u16 of the page ``n`` pages further (None if not at hand):
    for a table of 256 or more descriptors that is the available ring's flags, so most sizes are ruled out
    without reading anything.
    """
    options: list[Candidate | None] = []
    if split_prefix >= SPLIT_SIZES[0]:
        for size in SPLIT_SIZES:
            if size <= DESCS_PER_PAGE // 2:
                if size > split_prefix:
                    break
                if first_page is not None and int.from_bytes(first_page[16 * size:16 * size + 2], "little") > 1:
                    continue  # the avail ring's flags would not be 0 or 1
            elif split_prefix < DESCS_PER_PAGE:
                break
            elif page_heads is not None:
                head = page_heads(size // DESCS_PER_PAGE)
                if head is not None and head > 1:
                    continue
            for align in VRING_ALIGNS:
                options.append(score_split(memory, ram, addr, size, align, floor))
            if any(c is not None and c.score >= 0.999 for c in options):
                break  # a larger size could only tie, and ties go to the smaller
    if au_seen and packed_prefix >= 1:
        packed: list[Candidate] = []
        for size in PACKED_SIZES:
            if size <= DESCS_PER_PAGE and size > packed_prefix:
                break
            if size > DESCS_PER_PAGE and packed_prefix < DESCS_PER_PAGE:
                break
            candidate = score_packed(memory, ram, addr, size)
            if candidate is None and size > DESCS_PER_PAGE:
                break
            if candidate is not None:
                packed.append(candidate)
        best = _best(packed)
        if best is not None and best.first_lap:
            # Never wrapped: any size covering the used slots fits. Linux gives each ring its own zeroed
            # pages, so take the largest size that fills the ring's first page (QEMU's usual 256).
            fill = [c for c in packed if c.size >= best.size and c.size <= DESCS_PER_PAGE and c.first_lap
                    and round(c.score, 6) >= round(best.score, 6) - 0.11]
            best = max(fill, key=lambda c: c.size) if fill else best
        options.append(best)
    return _best([c for c in options if c is not None])


def scan(snapshot: Snapshot, *, min_score: float = DEFAULT_MIN_SCORE, progress: bool | None = None,
         on_candidate: Callable[[Candidate], None] | None = None) -> list[Candidate]:
    """Every ring candidate scoring at least ``min_score``, best first, numbered from 1."""
    memory = snapshot.memory
    ram = _Ram(memory)
    ranges = page_ranges(snapshot)
    total = sum(stop - start for start, stop in ranges)
    found: list[Candidate] = []
    done = 0
    with Progress("scanning", total, enabled=progress if progress is not None else None) as bar:
        for base, chunk in iter_chunks(snapshot, ranges):
            survivors = first_pass(chunk, ram.limit)
            heads = np.frombuffer(chunk, dtype="<u2").reshape(-1, PAGE // 2)[:, 0]
            for page, split_prefix, packed_prefix, au_seen in second_pass(chunk, survivors, ram.limit):
                at = page * PAGE

                def page_heads(ahead: int, page: int = page, heads: np.ndarray = heads) -> int | None:
                    return int(heads[page + ahead]) if page + ahead < len(heads) else None

                candidate = evaluate_page(memory, ram, base + at, split_prefix, packed_prefix, au_seen,
                                          chunk[at:at + PAGE], page_heads, min_score)
                if candidate is not None and candidate.score >= min_score:
                    found.append(candidate)
                    if on_candidate is not None:
                        on_candidate(candidate)
            done += len(chunk)
            bar.update(done)
    return number(dedupe(found))


def dedupe(candidates: list[Candidate]) -> list[Candidate]:
    """Drop candidates whose areas overlap a better one."""
    kept: list[Candidate] = []
    for candidate in sorted(candidates, key=lambda c: (-c.score, c.desc)):
        if all(candidate.end <= other.desc or other.end <= candidate.desc for other in kept):
            kept.append(candidate)
    return kept


def number(candidates: list[Candidate]) -> list[Candidate]:
    """Number candidates from 1, best first (ties by address)."""
    ordered = sorted(candidates, key=lambda c: (-round(c.score, 3), c.desc))
    for index, candidate in enumerate(ordered, 1):
        candidate.number = index
    return ordered
