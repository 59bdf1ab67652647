"""Write events to a vqtrace pcapng trace, block by block (docs/trace-format.md).

One section; one interface (IDB, link type LINKTYPE_USER0, nanosecond timestamps)
per event source, written before the first event of that source; one enhanced
packet block per event. Nothing is buffered in the process across calls: each call
ends with its bytes handed to the kernel, whole blocks in order, so a recorder killed
with SIGKILL leaves a file that is readable up to its last complete block.

- :meth:`TraceWriter.write`: one event, one block, one ``write``;
- :meth:`TraceWriter.write_many`: a batch of events (live capture gives it each
  wakeup's events; conversions whole files), their blocks in one ``write`` per
  ``batch`` blocks; a new source's interface block goes out at once, ahead of the
  blocks made before it (readers do not mind: blocks refer to interfaces by number,
  and every block still follows its interface);
- :meth:`TraceWriter.write_blocks`: blocks made already (:meth:`TraceWriter.block`,
  the live proxy's own records), in one ``write``.

The per-event path is short: AVAIL, USED (with their chain), KICK and CALL events no
snap length cuts are one ``pack`` of one cached ``struct.Struct`` (the enhanced packet
block and the record at once, keyed by the lengths of its variable parts), with the
record header cached per event context and the chain's bytes cached from its AVAIL
record to its USED record (:mod:`vqtrace.trace.record`: HEADERS, CHAINS). Other
events: :func:`vqtrace.trace.record.encode`, then the block packed by one cached
struct per record length. Tests hold the blocks equal to
``pcapng.enhanced_packet(iface, time, encode(event, snaplen, cached=False))``
(tests/test_record_cache.py, test_trace_writer.py).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO

from .. import __version__
from ..dissectors.record import DEVICE_NAMES, LINKTYPE_VQTRACE
from ..errors import TraceFileError
from ..events import Event, EventKind
from . import pcapng
from .record import CHAINS as _CHAINS
from .record import HEADER_SIZE, encode, header_key, keep_chain, new_header, pack_chain
from .record import HEADERS as _HEADERS

_EPB_HEAD = struct.Struct("<IIIIIII")
_TRAILER = struct.Struct("<I")
_PAD = (b"", b"\0", b"\0\0", b"\0\0\0")
_KICK, _CALL, _AVAIL, _USED = (int(k) for k in (EventKind.KICK, EventKind.CALL, EventKind.AVAIL, EventKind.USED))
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


# -- the fast framing --------------------------------------------------------------------------
# The common events (AVAIL and USED with their chain, KICK and CALL) whose bytes no snap length
# cuts: the whole block, framing and record, is one pack of one cached struct (keyed by the
# lengths of the block's variable parts), with the record header and the chain part from the
# record caches (vqtrace.trace.record.HEADERS, CHAINS). tests/test_record_cache.py holds the
# blocks equal to pcapng.enhanced_packet(iface, time, encode(event, cached=False)).

_AVAIL_FRAMES: dict[int, struct.Struct] = {}  # chain part length << 16 | readable size -> framing
_USED_FRAMES: dict[int, struct.Struct] = {}  # (chain part length << 16 | readable size) << 16 | written size
_H = HEADER_SIZE


def _avail_framing(chain_len: int, size: int) -> struct.Struct:
    """An AVAIL event's block: the EPB head (type, total length, interface, timestamp high and low,
    captured and original length), the record header, the chain part, the readable size and bytes,
    written size 0, tail size 0, the padding, the total length."""
    return struct.Struct(f"<7I{_H}s{chain_len}sI{size}s8x{-(_H + chain_len + size) % 4}xI")


def _used_framing(chain_len: int, size: int, written: int) -> struct.Struct:
    """A USED event's block: the EPB head, the record header, the used element (id, len, idx, 2 padding),
    the chain part, the readable size and bytes, the written size and bytes, tail size 0, the padding,
    the total length."""
    return struct.Struct(f"<7I{_H}sIIHxx{chain_len}sI{size}sI{written}s4x{-(_H + chain_len + size + written) % 4}xI")


_FAST_KINDS = frozenset((_AVAIL, _USED, _KICK, _CALL))
_NOTIFY = (struct.Struct(f"<7I{_H}sI"), struct.Struct(f"<7I{_H}s8sI"))  # KICK, CALL: without, with a count
_NOTIFY_SIZES = ((_H, _NOTIFY[0].size), (_H + 8, _NOTIFY[1].size))  # their record and block lengths


def _block(event: Event, iface: int, snaplen: int) -> bytes:
    """The enhanced packet block of ``event`` on interface ``iface``: the bytes of
    ``pcapng.enhanced_packet(iface, event.time_ns, encode(event, snaplen))``."""
    kind = event.kind
    if kind in _FAST_KINDS:
        params = event.params
        if params:
            key = header_key(event, event.truncated)
        else:  # header_key, inline
            key = (kind, event.direction, event.queue, event.device_type, event.features, event.role,
                   event.channel, event.fds, event.packed, event.truncated)
        data = event.data
        size = len(data)
        ts = event.time_ns
        try:
            if kind == _AVAIL:
                chain = event.chain
                if chain is not None and size < _FRAMED_MAX and (not snaplen or size <= snaplen):
                    head = _HEADERS.get(key) or new_header(key, event)
                    entry = _CHAINS.get(id(chain))
                    if entry is not None and entry[0] is chain:
                        part = entry[1]
                    else:
                        part = pack_chain(chain)
                        keep_chain(chain, part)
                    clen = len(part)
                    framing = _AVAIL_FRAMES.get(clen << 16 | size)
                    if framing is None:
                        if len(_AVAIL_FRAMES) >= _FRAMES_MAX:
                            _AVAIL_FRAMES.clear()
                        framing = _AVAIL_FRAMES[clen << 16 | size] = _avail_framing(clen, size)
                    total = framing.size
                    record = _H + 12 + clen + size
                    return framing.pack(6, total, iface, (ts >> 32) & _M32, ts & _M32, record, record, head,
                                        part, size, data, total)
            elif kind == _USED:
                chain = event.chain
                used = event.used
                written = event.written
                wsize = len(written)
                if chain is not None and used is not None and size < _FRAMED_MAX and wsize < _FRAMED_MAX and \
                        (not snaplen or (size <= snaplen and wsize <= snaplen)):
                    head = _HEADERS.get(key) or new_header(key, event)
                    entry = _CHAINS.pop(id(chain), None)  # the chain's last record
                    part = entry[1] if entry is not None and entry[0] is chain else pack_chain(chain)
                    clen = len(part)
                    fkey = (clen << 16 | size) << 16 | wsize
                    framing = _USED_FRAMES.get(fkey)
                    if framing is None:
                        if len(_USED_FRAMES) >= _FRAMES_MAX:
                            _USED_FRAMES.clear()
                        framing = _USED_FRAMES[fkey] = _used_framing(clen, size, wsize)
                    total = framing.size
                    record = _H + 24 + clen + size + wsize
                    return framing.pack(6, total, iface, (ts >> 32) & _M32, ts & _M32, record, record, head,
                                        used.id & _M32, used.len & _M32, used.used_idx & 0xFFFF, part, size, data,
                                        wsize, written, total)
            else:  # KICK, CALL: the eventfd count (8 bytes) or nothing
                head = _HEADERS.get(key) or new_header(key, event)
                counted = size >= 8
                record, total = _NOTIFY_SIZES[counted]
                if counted:
                    return _NOTIFY[1].pack(6, total, iface, (ts >> 32) & _M32, ts & _M32, record, record, head,
                                           data, total)  # ("8s" takes the first 8 bytes)
                return _NOTIFY[0].pack(6, total, iface, (ts >> 32) & _M32, ts & _M32, record, record, head, total)
        except struct.error:  # bytes given as another buffer type (a memoryview), a value out of range
            pass
    record = encode(event, snaplen)
    size = len(record)
    framing = _FRAMES.get(size)
    if framing is None:
        return _frame(iface, event.time_ns, record)
    total = framing.size
    ts = event.time_ns
    return framing.pack(6, total, iface, (ts >> 32) & _M32, ts & _M32, size, size, record, total)


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
        return _block(event, iface, self.snaplen)

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
        interfaces, snaplen = self._interfaces, self.snaplen
        try:
            for event in events:  # self.block(event), inline
                iface = interfaces.get(event.source)
                if iface is None:  # (its interface block is written at once, before the blocks made so far)
                    iface = self.interface(event.source, _auto_description(event, self._descriptions))
                add(_block(event, iface, snaplen))
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

    def write_blocks(self, blocks: Sequence[bytes]) -> None:
        """Write already-made whole blocks (as :meth:`block` returns them), in order, in one system call.

        For a caller that builds its blocks itself (the live proxy's records of a wakeup): their
        interfaces must have been written (:meth:`interface`); :attr:`count` is the caller's to add to.
        Nothing is kept back: when this returns, the kernel has every byte.
        """
        if blocks:
            self._emit(blocks[0] if len(blocks) == 1 else b"".join(blocks))

    def _emit(self, data: bytes) -> None:
        """Hand ``data`` to the kernel: one ``write`` (more only when the kernel takes part of it)."""
        if self._fd is None and self._file is None:
            raise TraceFileError("the trace is closed", path=self.path)
        try:
            if self._fd is not None:
                done = os.write(self._fd, data)
                if done != len(data):
                    view = memoryview(data)[done:]
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
