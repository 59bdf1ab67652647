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

1. over every page (one cache line each, a strided ``memoryview``): the first
   descriptor must be non-zero, its address below the top of guest RAM, its flags
   valid for split (only NEXT|WRITE|INDIRECT) or packed (plus AVAIL|USED). Random
   data and zero pages stop here. Sparse-file holes are never read (:mod:`.chunks`).
2. over the surviving pages: how many leading descriptors look valid, and
   whether an available ring header (flags 0 or 1) can follow a table of N.
3. per (page, queue size, alignment) that is left, a scored check of the whole
   ring: every descriptor's flags and NEXT link, buffers inside guest RAM, avail
   and used flags, ``avail.idx - used.idx`` within the queue size (2.7.13),
   avail heads and used ids below the queue size, used lengths plausible, the
   EVENT_IDX fields near the indices, untouched entries still zero; for packed
   rings, buffer ids below the size, the AVAIL bits forming the two runs that
   two wrap counters give (2.8.1), in-flight ids distinct.

The passes run in pure Python (:mod:`.scan_pure`) until a chunk has more than
:data:`PURE_MAX` pages surviving pass 1 (page-table-like memory); from that chunk on
they run with numpy (:mod:`.scan_np`, imported then). A scan of ordinary memory never
imports numpy. Both give the same candidates (:mod:`.scan_common` scores them).

Each candidate carries a confidence (points earned / points possible) and the
evidence behind it; candidates whose areas overlap a better one are dropped.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType

from ..memory import GuestMemory
from . import scan_pure
from .chunks import PAGE, iter_chunks, page_ranges
from .progress import Progress
from .scan_common import (  # noqa: F401 - the scanner's public names
    DEFAULT_MIN_SCORE,
    DESCS_PER_PAGE,
    F_WRITE,
    PACKED_FLAG_BITS,
    PACKED_SIZES,
    SPLIT_FLAG_BITS,
    SPLIT_SIZES,
    VIRTQ_DESC_F_AVAIL,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_USED,
    VRING_ALIGNS,
    Candidate,
    Ram,
)
from .snapshot import Snapshot

# Survivors of pass 1 in a chunk above which the scan goes over to numpy: a few hundred pages cost
# the pure-Python passes about what numpy's import does (benchmarks/bench_dump.py, docs/dump.md).
# The pure passes read guest words as native memoryview casts: little-endian hosts only (virtio 1.x
# structures are little-endian, 1.4 section 1.4); a big-endian host scans with numpy's explicit "<u8".
PURE_MAX = 256 if sys.byteorder == "little" else -1


def _best(candidates: list[Candidate]) -> Candidate | None:
    candidates = [c for c in candidates if c is not None]
    return max(candidates, key=lambda c: (round(c.score, 6), -c.size)) if candidates else None


def evaluate_page(memory: GuestMemory, ram: Ram, addr: int, split_prefix: int, packed_prefix: int,
                  au_seen: bool, first_page: memoryview | None = None,
                  page_heads: Callable[[int], int | None] | None = None, floor: float = 0.0,
                  engine: ModuleType = scan_pure) -> Candidate | None:
    """The best ring that can start at page ``addr``, or None; ``engine`` scores (:mod:`.scan_pure` or
    :mod:`.scan_np`).

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
                options.append(engine.score_split(memory, ram, addr, size, align, floor))
            if any(c is not None and c.score >= 0.999 for c in options):
                break  # a larger size could only tie, and ties go to the smaller
    if au_seen and packed_prefix >= 1:
        packed: list[Candidate] = []
        for size in PACKED_SIZES:
            if size <= DESCS_PER_PAGE and size > packed_prefix:
                break
            if size > DESCS_PER_PAGE and packed_prefix < DESCS_PER_PAGE:
                break
            candidate = engine.score_packed(memory, ram, addr, size)
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
         on_candidate: Callable[[Candidate], None] | None = None, pure_max: int | None = None) -> list[Candidate]:
    """Every ring candidate scoring at least ``min_score``, best first, numbered from 1.

    ``pure_max``: the scan goes over to numpy at the first chunk with more survivors of pass 1
    than this (default :data:`PURE_MAX`; -1: numpy from the start).
    """
    limit = PURE_MAX if pure_max is None else pure_max
    memory = snapshot.memory
    ram = Ram(memory)
    ranges = page_ranges(snapshot)
    total = sum(stop - start for start, stop in ranges)
    found: list[Candidate] = []
    done = 0
    with Progress("scanning", total, enabled=progress if progress is not None else None) as bar:
        engine: ModuleType = scan_pure
        for base, chunk in iter_chunks(snapshot, ranges):
            survivors = engine.first_pass(chunk, ram.limit)
            if engine is scan_pure and len(survivors) > limit:
                from . import scan_np as engine  # for the rest of the scan: this memory has many survivors
            pages = len(chunk) // PAGE
            for page, split_prefix, packed_prefix, au_seen in engine.second_pass(chunk, survivors, ram.limit):
                at = page * PAGE

                def page_heads(ahead: int, page: int = page, chunk: memoryview = chunk, pages: int = pages
                               ) -> int | None:
                    here = (page + ahead) * PAGE  # the first u16 of a page further on, if in this chunk
                    return int.from_bytes(chunk[here:here + 2], "little") if page + ahead < pages else None

                candidate = evaluate_page(memory, ram, base + at, split_prefix, packed_prefix, au_seen,
                                          chunk[at:at + PAGE], page_heads, min_score, engine)
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
