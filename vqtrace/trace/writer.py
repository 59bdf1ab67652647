"""Write events to a vqtrace pcapng trace, block by block (docs/trace-format.md).

One section; one interface (IDB, link type LINKTYPE_USER0, nanosecond timestamps)
per event source, written before the first event of that source; one enhanced
packet block per event. Each block goes to the kernel in one ``write`` as soon as
it is made, so a recorder killed with SIGKILL leaves a file that is readable up to
its last complete block. :meth:`TraceWriter.write_many` hands a batch of whole
blocks to the kernel in one ``write`` (live capture gives it each wakeup's events;
conversions whole files); a new source's interface block goes out at once, ahead of
the batch's blocks made before it (readers do not mind: blocks refer to interfaces by
number, and every block still follows its interface).

The per-event path is short: the record (:func:`vqtrace.trace.record.encode`), then
its enhanced packet block packed by one cached ``struct.Struct`` per record length,
then one ``os.write`` of that single bytes object on the file descriptor (no Python
buffering). Tests hold the blocks equal to :func:`vqtrace.trace.pcapng.enhanced_packet`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from .. import __version__
from ..dissectors.record import DEVICE_NAMES, LINKTYPE_VQTRACE
from ..errors import TraceFileError
from ..events import Event
from . import pcapng
from .record import encode

_EPB_HEAD = struct.Struct("<IIIIIII")
_TRAILER = struct.Struct("<I")
_PAD = (b"", b"\0", b"\0\0", b"\0\0\0")
_M32 = 0xFFFFFFFF
#: Records up to this long get their whole enhanced packet block from one cached ``struct.Struct`` (one
#: allocation, one copy); longer ones are joined from their parts.
_FRAMED_MAX = 8192
_FRAMES_MAX = 2048  # at most this many framing structs are kept (one per record length)
_FRAMES: dict[int, struct.Struct] = {}  # record length -> its block's framing (see _framing), for every writer


def _framing(size: int) -> struct.Struct:
    """The enhanced packet block around a record of ``size`` bytes (draft-ietf-opsawg-pcapng, "Enhanced
    Packet Block"): block type, total length, interface, timestamp high and low, captured and original
    length, the record padded to 32 bits, the total length again."""
    return struct.Struct(f"<7I{size}s{-size % 4}xI")


def _frame(iface: int, ts: int, record: bytes) -> bytes:
    """The enhanced packet block of ``record`` when its length has no framing struct yet (or is too long)."""
    size = len(record)
    if size <= _FRAMED_MAX and len(_FRAMES) < _FRAMES_MAX:
        framing = _FRAMES[size] = _framing(size)
        total = framing.size
        return framing.pack(6, total, iface, (ts >> 32) & _M32, ts & _M32, size, size, record, total)
    pad = -size % 4
    total = 32 + size + pad
    return b"".join((_EPB_HEAD.pack(6, total, iface, (ts >> 32) & _M32, ts & _M32, size, size), record,
                     _PAD[pad], _TRAILER.pack(total)))


class TraceWriter:
    """A vqtrace trace being written. Use as a context manager, or call :meth:`close`.

    ``target`` is a path (created or truncated) or an open binary file (its ``fileno``
    is written to directly when it has one, so the bytes leave the process at once;
    for a pipe, as an extcap capture writes). ``snaplen`` (0: no limit) caps each
    byte area of a record, as a capture's snap length does.
    """

    def __init__(self, target: str | os.PathLike | IO[bytes], *, snaplen: int = 0,
                 application: str | None = None) -> None:
        self.snaplen = snaplen
        self._file: IO[bytes] | None = None
        self._fd: int | None = None
        self._owned = False
        if isinstance(target, str | os.PathLike):
            self.path = str(target)
            try:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0),
                                   0o644)
            except OSError as err:
                raise TraceFileError(f"cannot write the trace: {err.strerror}", path=self.path) from None
            self._owned = True
        else:
            self.path = getattr(target, "name", "<stream>")
            try:
                self._fd = target.fileno()
                target.flush()
            except (AttributeError, OSError, ValueError):
                self._file = target
        self._interfaces: dict[str, int] = {}
        self._descriptions: dict[str, str] = {}
        self.count = 0
        self._emit(pcapng.section_header(application or f"vqtrace {__version__}"))

    # -- interfaces ---------------------------------------------------------------------------

    def describe(self, source: str, description: str) -> None:
        """The description the interface of ``source`` will carry (call before its first event)."""
        self._descriptions[source] = description

    def interface(self, source: str, description: str | None = None) -> int:
        """The interface id of ``source``, written now if it is new."""
        known = self._interfaces.get(source)
        if known is not None:
            return known
        number = len(self._interfaces)
        text = description or self._descriptions.get(source) or f"vqtrace events of {source}"
        self._emit(pcapng.interface_description(LINKTYPE_VQTRACE, source, text))
        self._interfaces[source] = number
        return number

    @property
    def interfaces(self) -> dict[str, int]:
        return dict(self._interfaces)

    # -- events -------------------------------------------------------------------------------

    def block(self, event: Event) -> bytes:
        """The enhanced packet block of ``event`` (its interface is written first if new)."""
        iface = self._interfaces.get(event.source)
        if iface is None:
            iface = self.interface(event.source, _auto_description(event, self._descriptions))
        record = encode(event, self.snaplen)
        size = len(record)
        ts = event.time_ns
        framing = _FRAMES.get(size)
        if framing is not None:
            total = framing.size
            return framing.pack(6, total, iface, (ts >> 32) & _M32, ts & _M32, size, size, record, total)
        return _frame(iface, ts, record)

    def write(self, event: Event) -> None:
        """Write one event: one block, handed to the kernel in one system call."""
        block = self.block(event)
        fd = self._fd
        if fd is not None:
            try:
                done = os.write(fd, block)
            except OSError as err:
                raise TraceFileError(f"cannot write the trace: {err.strerror}", path=self.path) from None
            if done != len(block):
                self._emit(block[done:])
        else:
            self._emit(block)
        self.count += 1

    def write_many(self, events: Iterable[Event], batch: int = 4096) -> int:
        """Write events in batches of whole blocks (each batch in one system call); returns how many.

        Live capture hands each wakeup's events over here. When an event cannot be encoded, the
        blocks before it are written first, then the error is raised.
        """
        written = 0
        blocks: list[bytes] = []
        add = blocks.append
        interfaces, frames, snaplen = self._interfaces, _FRAMES, self.snaplen
        try:
            for event in events:  # self.block(event), inline
                iface = interfaces.get(event.source)
                if iface is None:  # (its interface block is written at once, before the blocks made so far)
                    iface = self.interface(event.source, _auto_description(event, self._descriptions))
                record = encode(event, snaplen)
                size = len(record)
                ts = event.time_ns
                framing = frames.get(size)
                if framing is None:
                    add(_frame(iface, ts, record))
                else:
                    total = framing.size
                    add(framing.pack(6, total, iface, (ts >> 32) & _M32, ts & _M32, size, size, record, total))
                if len(blocks) >= batch:
                    self._emit(b"".join(blocks))
                    written += len(blocks)
                    blocks = []
                    add = blocks.append
        finally:
            if blocks:
                self._emit(b"".join(blocks) if len(blocks) > 1 else blocks[0])
                written += len(blocks)
            self.count += written
        return written

    def _emit(self, data: bytes) -> None:
        if self._fd is None and self._file is None:
            raise TraceFileError("the trace is closed", path=self.path)
        try:
            if self._fd is not None:
                view = memoryview(data)
                while view:
                    done = os.write(self._fd, view)
                    view = view[done:]
            else:
                self._file.write(data)
                self._file.flush()
        except OSError as err:
            raise TraceFileError(f"cannot write the trace: {err.strerror}", path=self.path) from None

    def close(self) -> None:
        if self._owned and self._fd is not None:
            os.close(self._fd)
        self._fd = None
        self._file = None

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _auto_description(event: Event, descriptions: dict[str, str]) -> str:
    known = descriptions.get(event.source)
    if known:
        return known
    device = DEVICE_NAMES.get(event.device_type, "")
    device = device.removeprefix("VIRTIO_ID_").lower() if device else ""
    if event.kind == 1:
        return f"vhost-user messages ({device})" if device else "vhost-user messages"
    if event.queue is not None:
        return f"virtio-{device} queue {event.queue}" if device else f"virtqueue {event.queue}"
    return f"virtio-{device}" if device else f"vqtrace events of {event.source}"


def write_trace(path: str | Path, events: Iterable[Event], *, snaplen: int = 0) -> int:
    """Write ``events`` to a new trace at ``path``; returns how many."""
    with TraceWriter(path, snaplen=snaplen) as writer:
        return writer.write_many(events)
