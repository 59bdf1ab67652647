"""A chain's bytes: its readable buffers and writable spans, read or written in place.

Readers copy only what they are asked for: ``limit``/``offset`` select a window of
the readable bytes (a request header, say), :func:`iter_readable` yields memoryviews
without copying when a buffer lies in one region. The device-writable part is
addressed as one byte stream across the writable descriptors, in chain order
(virtio 1.4, 2.7.8.2: "beginning at the first device-writable buffer").

Reading a buffer that lies outside guest memory raises
:class:`~vqtrace.errors.GuestMemoryError` (the walk has flagged it as
``DESC_OUT_OF_MEMORY`` already).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from ..dissectors.virtqueue import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_WRITE
from ..memory import GuestMemory
from ..model import Chain

__all__ = [
    "Span",
    "iter_readable",
    "read_readable",
    "read_written",
    "readable_spans",
    "writable_spans",
    "write_response",
]


class Span(NamedTuple):
    """One guest-physical range of a chain: ``addr`` and ``len`` bytes."""

    addr: int
    len: int


def readable_spans(chain: Chain) -> list[Span]:
    """The device-readable buffers of ``chain``, in order."""
    return [Span(d.addr, d.len) for d in chain.descriptors
            if not d.flags & (VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_INDIRECT)]


def writable_spans(chain: Chain) -> list[Span]:
    """The device-writable buffers of ``chain``, in order."""
    return [Span(d.addr, d.len) for d in chain.descriptors
            if d.flags & VIRTQ_DESC_F_WRITE and not d.flags & VIRTQ_DESC_F_INDIRECT]


def _window(spans: list[Span], offset: int, limit: int | None) -> Iterator[Span]:
    """The parts of ``spans`` covering bytes ``offset .. offset + limit`` of their concatenation."""
    if offset < 0 or (limit is not None and limit < 0):
        raise ValueError(f"bad window: offset {offset}, limit {limit}")
    left = limit
    for addr, length in spans:
        if offset >= length:
            offset -= length
            continue
        take = length - offset
        if left is not None:
            if left == 0:
                return
            take = min(take, left)
            left -= take
        yield Span(addr + offset, take)
        offset = 0


def iter_readable(memory: GuestMemory, chain: Chain, limit: int | None = None, offset: int = 0
                  ) -> Iterator[memoryview]:
    """Views of the readable bytes ``offset .. offset + limit`` (zero-copy within one region)."""
    for addr, length in _window(readable_spans(chain), offset, limit):
        yield memory.view(addr, length)


def read_readable(memory: GuestMemory, chain: Chain, limit: int | None = None, offset: int = 0) -> bytes:
    """The device-readable bytes of ``chain`` from ``offset``, at most ``limit`` of them."""
    return b"".join(memory.view(addr, length) for addr, length in _window(readable_spans(chain), offset, limit))


def read_written(memory: GuestMemory, chain: Chain, length: int, offset: int = 0) -> bytes:
    """The first ``length`` bytes the device wrote (the used element's ``len``), from ``offset``.

    ``length`` is capped at the writable bytes the chain has.
    """
    return b"".join(memory.view(addr, n) for addr, n in _window(writable_spans(chain), offset, max(length, 0)))


def write_response(memory: GuestMemory, chain: Chain, data: bytes | bytearray | memoryview, offset: int = 0) -> int:
    """Write ``data`` into the writable buffers of ``chain`` from ``offset``; the bytes written.

    Data beyond the writable space is not written (the count says how much was): a
    device then reports the smaller length in its used element.
    """
    view = memoryview(data).cast("B")
    done = 0
    for addr, length in _window(writable_spans(chain), offset, len(view)):
        memory.write(addr, view[done:done + length])
        done += length
    return done
