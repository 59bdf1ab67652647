"""What both ring scanners share (:mod:`.scan_pure` with ``struct``, :mod:`.scan_np` with numpy).

The constants, :class:`Candidate`, guest RAM bounds, and the scoring itself: each scanner
reads a candidate ring its own way and counts what it sees (how many descriptors are live,
how many buffers lie in RAM...), then calls :func:`split_candidate` or
:func:`packed_candidate`, which weigh the counts and write the evidence, so both give the
same candidates. No numpy here.
"""

from __future__ import annotations

import struct
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
from .chunks import PAGE

# Descriptor flags (2.7.5; 2.8.1 the packed AVAIL and USED flags): dissectors.virtqueue's values
# (tests/test_startup.py checks), not imported from there, which would load construct for `dump scan`.
VIRTQ_DESC_F_NEXT = 1
F_WRITE = 2  # VIRTQ_DESC_F_WRITE
VIRTQ_DESC_F_INDIRECT = 4
VIRTQ_DESC_F_AVAIL = 1 << 7
VIRTQ_DESC_F_USED = 1 << 15

SPLIT_FLAG_BITS = VIRTQ_DESC_F_NEXT | F_WRITE | VIRTQ_DESC_F_INDIRECT
PACKED_FLAG_BITS = SPLIT_FLAG_BITS | VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED
SPLIT_BAD16 = ~SPLIT_FLAG_BITS & 0xFFFF  # flag bits no split descriptor carries
PACKED_BAD16 = ~PACKED_FLAG_BITS & 0xFFFF
AU16 = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED
# The second 8 bytes of a descriptor as one u64: len (bits 0-31), then split flags/next or packed id/flags.
SPLIT_BAD = SPLIT_BAD16 << 32
PACKED_BAD = PACKED_BAD16 << 48
PACKED_AU = AU16 << 48

# 2.7: a power of 2, at most 32768 (2.8: any size up to 32768). Linux takes the device's queue size and QEMU's
# devices offer 8 (rng) to 1024; smaller rings hold too little to tell from noise, so they are not looked for.
SPLIT_SIZES = tuple(1 << k for k in range(2, 16))
PACKED_SIZES = tuple(1 << k for k in range(3, 16))
VRING_ALIGNS = (64, 4096)  # vring_init's used-ring alignment: SMP_CACHE_BYTES (modern PCI), 4096 (legacy)
MAX_PLAUSIBLE_LEN = 1 << 26  # a buffer longer than 64 MiB is not a Linux virtio buffer
DEFAULT_MIN_SCORE = 0.6
DESCS_PER_PAGE = PAGE // 16
INACTIVE_MAX = 0.47  # the best score a split ring with both indices at zero can reach (penalty 0.6)

_U16X2 = struct.Struct("<HH")
_PACKED_SLOT = struct.Struct("<QIHH")  # 2.8.13: addr, len, id, flags


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


class Ram:
    """"Is [addr, addr+len) in guest RAM" over the memory's merged ranges; numpy's version in :mod:`.scan_np`."""

    def __init__(self, memory: GuestMemory) -> None:
        ranges = memory.ranges() if hasattr(memory, "ranges") else [(r.guest_addr, r.end) for r in memory]
        self.starts = [start for start, _ in ranges]
        self.ends = [end for _, end in ranges]
        top = max(self.ends) if self.ends else 0
        self.limit = 1 << max(top - 1, 1).bit_length()  # addresses at or above cannot be RAM
        self.arrays: Any = None  # (starts, ends) as numpy arrays, made by scan_np when needed

    def holds(self, addr: int, length: int) -> bool:
        at = bisect_right(self.starts, addr) - 1
        return at >= 0 and addr + length <= self.ends[at]


def view(memory: GuestMemory, addr: int, length: int) -> memoryview | None:
    try:
        return memory.view(addr, length)
    except GuestMemoryError:
        return None


def cast(raw: memoryview | bytes, fmt: str) -> memoryview:
    """``raw`` as native (x86: little-endian) words of ``fmt``."""
    return memoryview(raw).cast("B").cast(fmt)


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


# -- split rings (2.7) ---------------------------------------------------------------------------


@dataclass
class SplitAreas:
    """A split ring's three areas (2.7.5, 2.7.6, 2.7.8) as read, their headers already checked."""

    avail: int
    used: int
    desc_raw: memoryview
    avail_raw: memoryview
    used_raw: memoryview
    avail_flags: int
    avail_idx: int
    used_flags: int
    used_idx: int

    @property
    def used_event(self) -> int:  # 2.7.10: after the avail ring's entries
        size = (len(self.avail_raw) - 6) // 2
        return int.from_bytes(self.avail_raw[4 + 2 * size:6 + 2 * size], "little")

    @property
    def avail_event(self) -> int:  # 2.7.10: after the used ring's entries
        size = (len(self.used_raw) - 6) // 8
        return int.from_bytes(self.used_raw[4 + 8 * size:6 + 8 * size], "little")


def split_areas(memory: GuestMemory, desc_addr: int, size: int, align: int, floor: float) -> SplitAreas | None:
    """The areas of a split ring of ``size`` at ``desc_addr``, or None when the cheap tests rule it out."""
    avail = desc_addr + 16 * size
    used = -(-(avail + 6 + 2 * size) // align) * align
    # The two ring headers first (2.7.6 / 2.7.8: only bit 0 of flags is defined).
    avail_raw = view(memory, avail, 6 + 2 * size)
    if avail_raw is None or avail_raw[1] or avail_raw[0] > 1:
        return None
    used_raw = view(memory, used, 6 + 8 * size)
    if used_raw is None or used_raw[1] or used_raw[0] > 1:
        return None
    raw = view(memory, desc_addr, 16 * size)
    if raw is None:
        return None
    avail_flags, avail_idx = _U16X2.unpack_from(avail_raw, 0)
    used_flags, used_idx = _U16X2.unpack_from(used_raw, 0)
    if not (avail_idx or used_idx) and floor > INACTIVE_MAX:
        return None  # could not reach the floor anyway
    return SplitAreas(avail, used, raw, avail_raw, used_raw, avail_flags, avail_idx, used_flags, used_idx)


@dataclass
class SplitCounts:
    """What a scanner counted in a split ring whose descriptors all have valid flags and one is non-zero."""

    live: int  # non-zero descriptors
    links: int  # descriptors with NEXT
    bad_links: int  # ... whose next is not below the size
    in_ram: int  # live descriptors whose buffer is inside guest RAM
    in_ram_plausible: int  # ... and not longer than MAX_PLAUSIBLE_LEN
    written: int  # avail entries written (see written())
    bad_heads: int  # of those, not below the size
    live_heads: int  # of those, naming a non-zero descriptor (when bad_heads is 0)
    used_written: int
    bad_ids: int  # used ids not below the size
    used_plausible: int  # used lengths not above MAX_PLAUSIBLE_LEN (when bad_ids is 0)
    indirect_seen: bool
    device_guess: str | None


def written(idx: int, size: int, rest_nonzero: bool) -> int:
    """Entries of a ring written so far: ``idx`` in the first lap (``rest_nonzero``: any entry from ``idx`` on
    is non-zero), else all."""
    return idx if idx < size and not rest_nonzero else size


def split_candidate(desc_addr: int, size: int, align: int, areas: SplitAreas, n: SplitCounts) -> Candidate:
    """Weigh what was counted in a split ring: its confidence and evidence."""
    avail_idx, used_idx = areas.avail_idx, areas.used_idx
    used_event, avail_event = areas.used_event, areas.avail_event
    s = _Score()
    s.add(20, 1 - n.bad_links / max(n.links, 1),
          f"{size} descriptors with valid flags, {n.live} non-zero"
          + (f", {n.bad_links} NEXT links out of range" if n.bad_links else ", NEXT links in range"))
    s.add(15, n.in_ram_plausible / n.live, f"{n.in_ram}/{n.live} buffers inside guest RAM, lengths plausible")
    pending = (avail_idx - used_idx) & 0xFFFF  # 2.7.13: at most the queue size in flight
    active = bool(avail_idx or used_idx)
    s.add(15, (1.0 if active else 0.3) if pending <= size else 0.0,
          f"avail.idx {avail_idx} - used.idx {used_idx} = {pending} in flight"
          + ("" if pending <= size else f", more than the queue size {size}") + ("" if active else " (never used?)"))
    penalty = 1.0 if active else 0.6  # both indices zero: a ring never used, or not a ring
    if pending > size:
        penalty *= 0.5
    if n.written:
        if n.bad_heads:
            penalty *= 0.5
            s.add(15, 0.0, f"{n.bad_heads}/{n.written} avail entries are not descriptor indices")
        else:
            s.add(15, n.live_heads / n.written, f"{n.live_heads}/{n.written} avail heads name non-zero descriptors")
    else:
        s.add(15, 0.0, "the available ring is empty")
    if n.used_written:
        if n.bad_ids:
            penalty *= 0.5
            s.add(15, 0.0, f"{n.bad_ids}/{n.used_written} used ids are not descriptor indices")
        else:
            s.add(15, n.used_plausible / n.used_written, f"{n.used_written} used elements with ids below {size}, "
                                                         f"{n.used_plausible} with plausible lengths")
    elif used_idx == 0 and 0 < pending <= size:
        s.add(15, 0.5, "the used ring is empty: the device has used nothing yet")
    else:
        s.add(15, 0.0, "the used ring is empty")
        if used_idx:
            penalty *= 0.5
    near = (abs((used_event - used_idx + 0x8000) % 0x10000 - 0x8000) <= size
            and abs((avail_event - avail_idx + 0x8000) % 0x10000 - 0x8000) <= size)
    event_idx = near and bool(used_event or avail_event)  # 2.7.10
    if event_idx:
        s.add(10, 1.0, f"used_event {used_event} and avail_event {avail_event} track the indices (EVENT_IDX)")
    elif used_event == 0 and avail_event == 0:
        s.add(10, 0.3, "used_event and avail_event are zero (no EVENT_IDX?)")
    else:
        s.add(10, 0.0, f"used_event {used_event} / avail_event {avail_event} far from the indices")
    first_lap = n.written == avail_idx and n.used_written == used_idx
    s.add(10, 1.0 if active else 0.0,
          ("first lap: entries past the indices still zero" if first_lap else "ring wrapped at least once")
          + f"; used ring at vring_align {align}")
    s.points *= penalty
    candidate = Candidate(Layout.SPLIT, size, desc_addr, areas.avail, areas.used, s.value, s.evidence, s.problems,
                          align, {"avail_idx": avail_idx, "used_idx": used_idx, "avail_flags": areas.avail_flags,
                                  "used_flags": areas.used_flags, "used_event": used_event,
                                  "avail_event": avail_event})
    candidate.indirect_seen = n.indirect_seen
    candidate.event_idx_seen = bool(event_idx)
    candidate.device_guess = n.device_guess
    return candidate


# -- packed rings (2.8) --------------------------------------------------------------------------


@dataclass
class PackedCounts:
    """What a scanner counted in a packed ring whose slots all have valid flags, one non-zero, one AVAIL/USED."""

    live: int  # non-zero slots
    bad_ids: int  # live slots whose buffer id is not below the size
    with_addr: int  # slots with a buffer address
    in_ram: int  # ... inside guest RAM
    transitions: int  # AVAIL bit changes going round the ring
    next_avail: int
    avail_wrap: bool
    pending: int  # slots available and not used (AVAIL != USED)
    heads: int  # first slots of the pending lists
    distinct: bool  # the heads' buffer ids are distinct
    plausible: int  # live slots with lengths not above MAX_PLAUSIBLE_LEN
    last: int  # one past the last live slot
    all_avail: bool  # every live slot has its AVAIL bit set
    indirect_seen: bool
    device_guess: str | None


def packed_candidate(memory: GuestMemory, desc_addr: int, size: int, n: PackedCounts) -> Candidate:
    """Weigh what was counted in a packed ring, and what follows it: its confidence and evidence."""
    s = _Score()
    s.add(20, 1 - n.bad_ids / n.live, f"{size} slots with valid flags, {n.live} non-zero"
          + (f", {n.bad_ids} buffer ids out of range" if n.bad_ids else ", buffer ids below the size"))
    if n.with_addr:
        s.add(15, n.in_ram / n.with_addr, f"{n.in_ram}/{n.with_addr} buffers inside guest RAM")
    else:
        s.add(15, 0.0, "no buffer addresses")
    if n.transitions <= 2:
        s.add(15, 1.0, "AVAIL bits form at most two runs (one driver wrap counter boundary)")
    else:
        s.add(15, 0.0, f"AVAIL bits change {n.transitions} times around the ring")
    s.add(15, 1.0 if n.distinct else 0.3, f"{n.pending} slots available and not used, {n.heads} "
          f"lists" + (", buffer ids distinct" if n.distinct else ", with repeated buffer ids"))
    s.add(15, n.plausible / n.live, "buffer lengths plausible")
    tight = n.last > size // 2 or size == 2
    tail_raw = view(memory, desc_addr + 16 * size, PAGE - (16 * size) % PAGE) if (16 * size) % PAGE else None
    # No tail when the ring ends on a page boundary: Linux gives it whole pages, what follows is unrelated.
    tail_zero = tail_raw is None or not any(bytes(tail_raw))
    follower = view(memory, desc_addr + 16 * size, 16)
    continues = False
    if follower is not None and any(bytes(follower)):
        _, _, next_id, next_flags = _PACKED_SLOT.unpack(follower)
        continues = not next_flags & PACKED_BAD16 and bool(next_flags & AU16) and next_id < 2 * size
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
                          {"next_avail": n.next_avail, "avail_wrap": int(n.avail_wrap), "pending_slots": n.pending})
    # First lap: every written slot carries wrap counter 1 (2.8.1: it starts at 1) and the rest is zero.
    candidate.first_lap = n.all_avail and tail_zero
    if candidate.first_lap:
        candidate.problems.append(f"first lap: only slots 0..{n.last - 1} were ever used, so the queue size is "
                                  f"not known (taken as {size})")
    candidate.indirect_seen = n.indirect_seen
    candidate.device_guess = n.device_guess
    return candidate


# -- device guesses from the chains' shapes ------------------------------------------------------


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
    raw = view(memory, addr, 16 * count) if count and length % 16 == 0 else None
    if raw is None:
        return [], []
    halves = cast(raw, "H")
    return cast(raw, "I")[2::4].tolist(), [bool(f & F_WRITE) for f in halves[6::8].tolist()]


def _vote(votes: dict[str, int], lens: list[int], writes: list[bool]) -> None:
    guess = _shape_guess(lens, writes)
    if guess:
        votes[guess] = votes.get(guess, 0) + 1


def guess_split(addrs: Sequence[int], lens: Sequence[int], flags: Sequence[int], nexts: Sequence[int],
                ring: Sequence[int], avail_idx: int, written: int, size: int,
                memory: GuestMemory | None = None) -> str | None:
    """The device type the shapes of the latest chains suggest (a split ring's table fields as sequences)."""
    votes: dict[str, int] = {}
    for back in range(1, min(written, 8) + 1):
        head = int(ring[(avail_idx - back) % size])
        if head >= size:
            continue
        chain_lens: list[int] = []
        writes: list[bool] = []
        index = head
        for _ in range(size):
            entry_flags = int(flags[index])
            if entry_flags & VIRTQ_DESC_F_INDIRECT and memory is not None:
                more_lens, more_writes = _indirect_shape(memory, int(addrs[index]), int(lens[index]))
                chain_lens += more_lens
                writes += more_writes
            else:
                chain_lens.append(int(lens[index]))
                writes.append(bool(entry_flags & F_WRITE))
            if not entry_flags & VIRTQ_DESC_F_NEXT or int(nexts[index]) >= size:
                break
            index = int(nexts[index])
        _vote(votes, chain_lens, writes)
    return max(votes, key=votes.__getitem__) if votes else None


def guess_packed(memory: GuestMemory, addrs: Sequence[int], lens: Sequence[int], flags: Sequence[int],
                 slots: list[int]) -> str | None:
    """The device type the lists starting at ``slots`` (at most 8 looked at) suggest."""
    votes: dict[str, int] = {}
    for slot in slots[:8]:
        if int(flags[slot]) & VIRTQ_DESC_F_INDIRECT:
            chain_lens, writes = _indirect_shape(memory, int(addrs[slot]), int(lens[slot]))
        else:
            chain_lens, writes, k = [], [], slot
            while k < len(flags) and len(chain_lens) < 64:
                chain_lens.append(int(lens[k]))
                writes.append(bool(int(flags[k]) & F_WRITE))
                if not int(flags[k]) & VIRTQ_DESC_F_NEXT:
                    break
                k += 1
        _vote(votes, chain_lens, writes)
    return max(votes, key=votes.__getitem__) if votes else None
