"""One chain as a device sees it: a readable byte stream in, a writable byte stream out.

A thin stateful wrapper over :mod:`vqtrace.rings.buffers` (which reads and writes a
chain's buffers in place): it knows both streams' lengths, which buffers lie
outside guest memory, and how far into the writable stream the device has
written, which is the used length it reports (virtio 1.4, 2.7.8.2: "The device
MUST write at least len bytes to descriptor, beginning at the first
device-writable buffer"). It never writes a readable buffer (2.7.5.1).
"""

from __future__ import annotations

from ..errors import GuestMemoryError
from ..memory import GuestMemory
from ..model import Chain
from ..rings.buffers import Span, read_readable, readable_spans, writable_spans, write_response


class ChainIO:
    """The readable and writable streams of ``chain`` in ``memory``."""

    __slots__ = ("chain", "memory", "readable", "readable_len", "unmapped", "writable", "writable_len", "written")

    def __init__(self, memory: GuestMemory, chain: Chain) -> None:
        self.memory = memory
        self.chain = chain
        self.readable = readable_spans(chain)
        self.writable = writable_spans(chain)
        self.readable_len = sum(s.len for s in self.readable)
        self.writable_len = sum(s.len for s in self.writable)
        #: Buffers not (entirely) inside guest memory.
        self.unmapped: list[Span] = [s for s in (*self.readable, *self.writable) if not memory.contains(*s)]
        #: One past the highest writable offset written so far: the used length.
        self.written = 0

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the readable stream from ``offset`` (fewer at its end)."""
        length = min(length, self.readable_len - offset)
        if length <= 0:
            return b""
        return read_readable(self.memory, self.chain, limit=length, offset=offset)

    def write(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` into the writable stream at ``offset``; returns the bytes that fit."""
        if offset >= self.writable_len or not len(data):
            return 0
        done = write_response(self.memory, self.chain, data, offset)
        if done:
            self.written = max(self.written, offset + done)
        return done

    def fill(self, offset: int, length: int, byte: int = 0) -> int:
        """Write ``length`` copies of ``byte`` at ``offset``, in bounded pieces."""
        length = max(0, min(length, self.writable_len - offset))
        chunk = bytes([byte]) * min(length, 1 << 16)
        done = 0
        while done < length:
            done += self.write(offset + done, chunk[:length - done])
        return done

    def writable_ok(self, offset: int, length: int) -> bool:
        """Whether ``[offset, offset + length)`` of the writable stream lies in mapped memory."""
        return _window_ok(self.memory, self.writable, offset, length)

    def readable_ok(self, offset: int, length: int) -> bool:
        """Whether ``[offset, offset + length)`` of the readable stream lies in mapped memory."""
        return _window_ok(self.memory, self.readable, offset, length)

    def fault(self) -> GuestMemoryError | None:
        """A GuestMemoryError naming the first buffer outside guest memory, or None."""
        if not self.unmapped:
            return None
        addr, length = self.unmapped[0]
        return GuestMemoryError(f"buffer of {length} bytes is not in guest memory", address=addr)


def _window_ok(memory: GuestMemory, spans: list[Span], offset: int, length: int) -> bool:
    at = 0
    for addr, size in spans:
        lo, hi = max(offset, at), min(offset + length, at + size)
        if lo < hi and not memory.contains(addr + lo - at, hi - lo):
            return False
        at += size
    return True
