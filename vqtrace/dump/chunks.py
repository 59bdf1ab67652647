"""Walk all of a snapshot's guest memory in page-aligned chunks, skipping file holes.

File-backed snapshots (ELF cores, raw files, decompressed cache files) are read
through their mappings, zero-copy, and the holes of a sparse file (``SEEK_DATA``
/ ``SEEK_HOLE``) are skipped: they are zero and hold no ring. Lazy memories
(``--pid``, kdump) are streamed into one reusable buffer, so walking a 16 GiB
guest keeps nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from .lazy import LazyMemory
from .snapshot import Snapshot

PAGE = 4096
CHUNK = 16 << 20


def data_runs(path: str, offset: int, size: int) -> list[tuple[int, int]]:
    """(start, end) file offsets holding data within ``[offset, offset + size)``; holes left out."""
    end = offset + size
    runs = []
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return [(offset, end)]
    try:
        here = offset
        while here < end:
            try:
                start = os.lseek(fd, here, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after here; EINVAL: no SEEK_DATA support
                if here == offset and not runs:
                    try:
                        os.lseek(fd, here, os.SEEK_HOLE)
                    except OSError:
                        return [(offset, end)]
                break
            if start >= end:
                break
            stop = min(os.lseek(fd, start, os.SEEK_HOLE), end)
            runs.append((start, stop))
            here = stop
    finally:
        os.close(fd)
    return runs


def page_ranges(snapshot: Snapshot) -> list[tuple[int, int]]:
    """Guest-physical (start, end) ranges worth scanning, page-aligned, holes removed."""
    ranges: list[tuple[int, int]] = []
    for extent in snapshot.extents:
        if snapshot.file_backed:
            assert snapshot.data_path is not None
            pieces = [(extent.guest_addr + start - extent.offset, extent.guest_addr + stop - extent.offset)
                      for start, stop in data_runs(snapshot.data_path, extent.offset, extent.size)]
        else:
            pieces = [(extent.guest_addr, extent.end)]
        for start, stop in pieces:
            start = -(-start // PAGE) * PAGE
            stop = stop // PAGE * PAGE
            if stop > start:
                if ranges and ranges[-1][1] == start:
                    ranges[-1] = (ranges[-1][0], stop)
                else:
                    ranges.append((start, stop))
    return ranges


def iter_chunks(snapshot: Snapshot, ranges: list[tuple[int, int]] | None = None,
                chunk: int = CHUNK) -> Iterator[tuple[int, memoryview]]:
    """(guest address, bytes) for every page of ``ranges`` (default: :func:`page_ranges`), in order.

    A lazy memory's chunk buffer is reused: consume it before asking for the next.
    """
    memory = snapshot.memory
    lazy = memory if isinstance(memory, LazyMemory) else None
    buffer = bytearray(chunk) if lazy is not None else None
    for start, stop in ranges if ranges is not None else page_ranges(snapshot):
        here = start
        while here < stop:
            region = memory.region_at(here)
            if region is None:  # pragma: no cover - ranges come from the regions
                break
            take = min(chunk, stop - here, region.end - here)
            take -= take % PAGE
            if take <= 0:  # a region ending inside a page: go on at the next page boundary
                here = -(-region.end // PAGE) * PAGE
                continue
            if lazy is not None and lazy.is_lazy(region):
                assert buffer is not None
                view = memoryview(buffer)[:take]
                lazy.stream(region, here - region.guest_addr, view)
                yield here, view
            else:
                yield here, memory.view(here, take)
            here += take
