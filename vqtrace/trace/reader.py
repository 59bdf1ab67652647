"""Read a vqtrace pcapng trace lazily: a million events cost what is looked at.

The file is memory-mapped; an index of packet-block offsets grows only as far as
a caller looks (``reader[n]`` scans to frame n, ``len(reader)`` to the end; block
headers only, no record is decoded), as Toolong indexes lines. A truncated or
corrupt block is reported in :attr:`TraceReader.problems` with its byte offset and
the scan resynchronises on the next sound block. Frames are numbered from 1, as
Wireshark numbers them.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..dissectors.record import LINKTYPE_VQTRACE
from ..errors import TraceFileError
from ..events import Event
from . import pcapng
from .pcapng import Problem
from .record import decode

_PCAP_MAGICS = {b"\xa1\xb2\xc3\xd4", b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\x3c\x4d", b"\x4d\x3c\xb2\xa1"}


@dataclass(frozen=True)
class Interface:
    """One interface of the trace: an event source."""

    index: int  # over the whole file (sections add up)
    name: str
    description: str
    linktype: int
    snaplen: int
    ts_num: int  # timestamp unit = ts_num / ts_den seconds
    ts_den: int
    ts_offset: int  # seconds added to every timestamp (if_tsoffset)
    section: int

    def ns(self, ticks: int) -> int:
        """Nanoseconds since the epoch for a timestamp in this interface's units."""
        if self.ts_den == 1_000_000_000 and self.ts_num == 1:
            value = ticks
        else:
            value = ticks * self.ts_num * 1_000_000_000 // self.ts_den
        return value + self.ts_offset * 1_000_000_000


class Frame:
    """One packet block: its number, where it is, its interface, time and bytes."""

    __slots__ = ("data", "interface", "number", "offset", "orig_len", "time_ns")

    def __init__(self, number: int, offset: int, interface: Interface, time_ns: int, data: bytes,
                 orig_len: int) -> None:
        self.number = number
        self.offset = offset
        self.interface = interface
        self.time_ns = time_ns
        self.data = data
        self.orig_len = orig_len

    @property
    def source(self) -> str:
        return self.interface.name

    def event(self) -> Event:
        """The event the record holds (TraceFileError names this frame when it is malformed)."""
        if self.interface.linktype != LINKTYPE_VQTRACE:
            raise TraceFileError(f"frame {self.number} is of link type {self.interface.linktype}, not a vqtrace "
                                 f"record ({LINKTYPE_VQTRACE})")
        try:
            return decode(self.data, self.time_ns, self.interface.name)
        except TraceFileError as err:
            raise TraceFileError(f"frame {self.number}: {err.message}", offset=self.offset) from None

    def __repr__(self) -> str:
        return f"Frame({self.number}, {self.interface.name!r}, {len(self.data)} bytes @{self.offset})"


def _tsresol(value: bytes) -> tuple[int, int]:
    code = value[0] if value else 6
    exponent = code & 0x7F
    if code & 0x80:
        return 1, 1 << min(exponent, 63)
    return 1, 10 ** min(exponent, 30)


class TraceReader:
    """A trace file opened for reading (a context manager; :meth:`close` unmaps it)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as err:
            raise TraceFileError(f"cannot open: {err.strerror}", path=self.path) from None
        try:
            size = os.fstat(fd).st_size
            self._map: Any = mmap.mmap(fd, size, access=mmap.ACCESS_READ) if size else b""
        except (OSError, ValueError) as err:
            raise TraceFileError(f"cannot read: {err}", path=self.path) from None
        finally:
            os.close(fd)
        self._data = memoryview(self._map) if size else memoryview(b"")
        self.size = size
        head = bytes(self._data[:4])
        if size == 0:
            raise TraceFileError("empty file: not a pcapng trace", path=self.path)
        if head in _PCAP_MAGICS:
            raise TraceFileError("a pcap (libpcap) file, not pcapng: vqtrace traces are pcapng", path=self.path)
        if head != b"\x0a\x0d\x0d\x0a":
            raise TraceFileError(f"not a pcapng file (it starts with {head.hex(' ')}, a pcapng file with "
                                 "0a 0d 0d 0a)", path=self.path)
        endian = pcapng.section_endian(self._data, 0)
        if endian is None:
            raise TraceFileError("not a pcapng file (bad byte-order magic in the section header)", path=self.path)
        self.problems: list[Problem] = []
        self.interfaces: list[Interface] = []
        self._section_ifaces: list[Interface] = []
        self._section = -1
        self._offsets = array("Q")
        self._ifaces = array("H")
        self._endian = endian
        self._pos = 0
        self._done = False

    # -- scanning -----------------------------------------------------------------------------

    def _scan(self, want: int | None) -> None:
        """Index packet blocks until there are ``want`` of them (None: all).

        The common case (a sound block in the current byte order) is a tight loop; anything
        else (a section header, a bad length) goes through :func:`pcapng.walk`, which reports
        problems and resynchronises.
        """
        if self._done:
            return
        offsets, ifaces = self._offsets, self._ifaces
        data, size = self._data, self.size
        pos = self._pos
        endian = self._endian
        head = struct.Struct(endian + "III").unpack_from
        word = struct.Struct(endian + "I").unpack_from
        section = self._section_ifaces
        while pos < size:
            if pos + 12 <= size:
                btype, length, iface = head(data, pos)
                if (btype != pcapng.SHB_TYPE and length >= 12 and not length & 3 and pos + length <= size
                        and length <= pcapng.MAX_BLOCK and word(data, pos + length - 4)[0] == length):
                    if btype == pcapng.EPB_TYPE:
                        if length < 32:
                            self.problems.append(Problem(pos, f"packet block of {length} bytes is too short"))
                        elif iface >= len(section):
                            self.problems.append(Problem(pos, f"packet block names interface {iface}, but the "
                                                              f"section has {len(section)}"))
                        else:
                            offsets.append(pos)
                            ifaces.append(section[iface].index)
                            pos += length
                            if want is not None and len(offsets) >= want:
                                self._pos = pos
                                return
                            continue
                    elif btype == pcapng.IDB_TYPE:
                        self._interface(pcapng.Block(pos, btype, length, endian))
                    pos += length
                    continue
            # the slow path: one block through walk(), which handles sections, problems and resync
            blk = next(pcapng.walk(data, pos, endian, self.problems), None)
            if blk is None:
                pos = size
                break
            if blk.type == pcapng.SHB_TYPE:
                self._section += 1
                self._section_ifaces = section = []
                if blk.endian != endian:
                    endian = self._endian = blk.endian
                    head = struct.Struct(endian + "III").unpack_from
                    word = struct.Struct(endian + "I").unpack_from
                pos = blk.offset + blk.length
                continue
            if blk.offset == pos or blk.type not in (pcapng.EPB_TYPE, pcapng.IDB_TYPE):
                pos = blk.offset + blk.length  # (never loop on one block)
            else:
                pos = blk.offset  # a sound block after a resync: the fast loop takes it
        self._pos = pos
        self._done = True

    def _interface(self, blk: pcapng.Block) -> None:
        data, endian = self._data, blk.endian
        if blk.length < 20:
            self.problems.append(Problem(blk.offset, f"interface block of {blk.length} bytes is too short"))
            return
        linktype, _, snaplen = struct.unpack_from(endian + "HHI", data, blk.offset + 8)
        opts = dict(reversed(pcapng.parse_options(data[blk.offset + 16:blk.offset + blk.length - 4], endian)))
        name = opts.get(pcapng.IF_NAME, b"").decode("utf-8", "replace").rstrip("\0")
        text = opts.get(pcapng.IF_DESCRIPTION, b"").decode("utf-8", "replace").rstrip("\0")
        num, den = _tsresol(opts.get(pcapng.IF_TSRESOL, b"\x06"))
        raw_offset = opts.get(14, b"")  # if_tsoffset: seconds
        ts_offset = struct.unpack(endian + "q", raw_offset)[0] if len(raw_offset) == 8 else 0
        iface = Interface(len(self.interfaces), name or f"interface {len(self.interfaces)}", text, linktype, snaplen,
                          num, den, ts_offset, self._section)
        self.interfaces.append(iface)
        self._section_ifaces.append(iface)

    # -- access -------------------------------------------------------------------------------

    def __len__(self) -> int:
        self._scan(None)
        return len(self._offsets)

    @property
    def indexed(self) -> int:
        """How many frames the index holds so far (no scanning)."""
        return len(self._offsets)

    def frame(self, number: int) -> Frame:
        """Frame ``number`` (1-based); IndexError past the last one."""
        if number < 1:
            raise IndexError(number)
        if number > len(self._offsets):
            self._scan(number)
        if number > len(self._offsets):
            raise IndexError(number)
        return self._make(number)

    def __getitem__(self, index: int) -> Frame:
        """Frame at 0-based ``index`` (negative counts from the end)."""
        if index < 0:
            index += len(self)
        return self.frame(index + 1)

    def _make(self, number: int) -> Frame:
        offset = self._offsets[number - 1]
        iface = self.interfaces[self._ifaces[number - 1]]
        data = self._data
        # the block's byte order is its section's: the type field (6) tells it
        btype_le = struct.unpack_from("<I", data, offset)[0]
        endian = "<" if btype_le == pcapng.EPB_TYPE else ">"
        length, _, hi, lo, caplen, orig = struct.unpack_from(endian + "IIIIII", data, offset + 4)
        room = length - 32
        if caplen > room:
            self.problems.append(Problem(offset, f"frame {number}: captured length {caplen} is more than the "
                                                 f"{room} bytes of its block"))
            caplen = max(room, 0)
        body = bytes(data[offset + 28:offset + 28 + caplen])
        return Frame(number, offset, iface, iface.ns(hi << 32 | lo), body, orig)

    def __iter__(self) -> Iterator[Frame]:
        """Every frame in order (indexing as it goes)."""
        number = 1
        while True:
            if number > len(self._offsets):
                self._scan(number)
                if number > len(self._offsets):
                    return
            yield self._make(number)
            number += 1

    def events(self) -> Iterator[Event]:
        """The events of every frame (TraceFileError at the first malformed record)."""
        for frame in self:
            yield frame.event()

    def close(self) -> None:
        self._data.release()
        if isinstance(self._map, mmap.mmap):
            with contextlib.suppress(BufferError):  # a view still held: the map goes with it
                self._map.close()

    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
