"""Trace blocks of one queue's ring events without Event objects: the live proxy's hot path.

A live proxy writes, per request, an AVAIL and a USED record (and a KICK or CALL per
notification), all of one queue: their record headers differ only in kind and the
TRUNCATED flag, so :class:`QueueBlocks` packs them once, and builds each whole pcapng
Enhanced Packet Block (the block header, the record, padding, the trailer) in one
join. The bytes are those of :meth:`vqtrace.trace.writer.TraceWriter.block` for the
same event (``tests/test_vhost_records.py`` holds them equal, byte for byte, and the
records equal to :func:`vqtrace.trace.record.encode`). Layouts: dissectors/record.py
(docs/trace-format.md); the block: draft-ietf-opsawg-pcapng, "Enhanced Packet Block".
"""

from __future__ import annotations

import struct

from ..dissectors import record as layout
from ..events import Direction, EventKind
from ..trace.roles import queue_role

_M64 = (1 << 64) - 1
EPB_TYPE = 6  # pcapng Enhanced Packet Block
_EPB = "IIIIIII"  # type, total length, interface, timestamp high, low, captured length, original length
_EPB_HDR = EPB_HEAD = struct.Struct("<" + _EPB + "40s")  # ... then the 40-byte record header
_EPB_HDR_USED = EPB_HEAD_USED = struct.Struct("<" + _EPB + "40s" + layout.USED_STRUCT.format.lstrip("<"))
_U32 = struct.Struct("<I")
_CHAIN_FMT = layout.CHAIN_STRUCT.format.lstrip("<")
# A chain's descriptors as the record stores them (DESC_STRUCT: addr, len, flags, index, next, id,
# in_indirect, 3 padding): for a split chain read from the table id and in_indirect are 0.
_SPLIT_DESC_FMT = "QIHHH6x"
_EMPTY = b""
# What ends a block: the record's last sizes (AVAIL: written and tail, 0; USED: tail, 0), the
# padding to 4 bytes, the block's total length again.
_AVAIL_TAIL = AVAIL_TAILS = [struct.Struct(f"<8x{pad}xI") for pad in range(4)]
_USED_TAIL = USED_TAILS = [struct.Struct(f"<4x{pad}xI") for pad in range(4)]
AVAIL, USED, KICK, CALL = int(EventKind.AVAIL), int(EventKind.USED), int(EventKind.KICK), int(EventKind.CALL)
_HEAD_SIZE = layout.HEADER_SIZE
# A record's length beyond its chain part (and readable bytes), its written bytes: AVAIL (header, the
# written and tail sizes), USED (header, used element, tail size).
AVAIL_FIXED = _HEAD_SIZE + 8
USED_FIXED = _HEAD_SIZE + 12 + 4
assert struct.calcsize("<" + _SPLIT_DESC_FMT) == layout.DESC_SIZE


def _split_chain_struct(ndesc: int) -> struct.Struct:
    return struct.Struct("<" + _CHAIN_FMT + _SPLIT_DESC_FMT * ndesc)


_CHAIN_STRUCTS = [_split_chain_struct(n) for n in range(9)]
# An entry of an indirect table: the same, with in_indirect (1) given.
_TABLE_DESC_FMT = "QIHHH2xB3x"
assert struct.calcsize("<" + _TABLE_DESC_FMT) == layout.DESC_SIZE
_CHAIN_AND_SIZE: dict[tuple[int, int], struct.Struct] = {}


def chain_and_size(ring: int, table: int) -> struct.Struct:
    """The chain part of a split chain of ``ring`` descriptors, then ``table`` entries of an indirect
    table, followed by the u32 size of the readable bytes kept (what the AVAIL and USED records of a
    chain share, before those bytes: see :func:`chain_and_readable`). Its values: id, avail idx,
    flags, ndesc, readable and writable lengths, ``addr, len, flags, index, next`` of each ring
    descriptor, the same and 1 (in_indirect) for each table entry, the size."""
    st = _CHAIN_AND_SIZE.get((ring, table))
    if st is None:
        st = _CHAIN_AND_SIZE[ring, table] = struct.Struct(
            "<" + _CHAIN_FMT + _SPLIT_DESC_FMT * ring + _TABLE_DESC_FMT * table + "I")
    return st


CHAIN_AND_SIZE = [chain_and_size(n, 0) for n in range(9)]


def split_chain_bytes(head: int, avail_idx: int, readable_len: int, writable_len: int, ndesc: int,
                      args: list[int]) -> bytes:
    """The record's chain part of a split chain of direct descriptors: ``args`` holds ``addr, len,
    flags, index, next`` of each of its ``ndesc`` descriptors, in order."""
    st = _CHAIN_STRUCTS[ndesc] if ndesc < 9 else _split_chain_struct(ndesc)
    return st.pack(head & 0xFFFF, avail_idx & 0xFFFF, 0, ndesc & 0xFFFF, readable_len & 0xFFFFFFFF,
                   writable_len & 0xFFFFFFFF, *args)


def chain_bytes(chain) -> bytes:
    """The record's chain part of any :class:`~vqtrace.model.Chain` (indirect tables, packed lists)."""
    items = chain.descriptors
    desc = layout.DESC_STRUCT.pack
    return layout.CHAIN_STRUCT.pack(
        chain.id & 0xFFFF, chain.avail_idx & 0xFFFF, layout.CHAIN_WRAP if chain.wrap else 0, len(items) & 0xFFFF,
        chain.readable_len & 0xFFFFFFFF, chain.writable_len & 0xFFFFFFFF) + b"".join(
        [desc(d.addr & _M64, d.len & 0xFFFFFFFF, d.flags & 0xFFFF, d.index & 0xFFFF, d.next & 0xFFFF,
              d.id & 0xFFFF, 1 if d.in_indirect else 0) for d in items])


class QueueBlocks:
    """The blocks of one queue's ring and notification events (one source, device type, feature set).

    ``packed`` is the layout flag ring events carry; notifications (KICK, CALL) carry the
    features but not the flag, as the proxy records them. ``snaplen`` is what the recorder
    cut the bytes at (a writer with a smaller one would cut them further).
    """

    __slots__ = ("_notify", "avail_head", "avail_head_cut", "device_type", "features", "packed", "queue",
                 "snaplen", "source", "used_head", "used_head_cut")

    def __init__(self, source: str, queue: int, device_type: int, features: int, packed: bool,
                 snaplen: int = 0) -> None:
        self.source, self.queue, self.device_type, self.features, self.packed = (source, queue, device_type,
                                                                                 features, packed)
        self.snaplen = snaplen  # the snap length the recorder cut the bytes at (0: none)
        role = queue_role(device_type, queue, features, None)

        def header(kind: int, direction: int, flags: int, channel: int = 0) -> bytes:
            return layout.HEADER.pack(layout.RECORD_VERSION, kind, direction, flags, _HEAD_SIZE, queue & 0xFFFF,
                                      device_type & 0xFFFF, role & 0xFF, channel, 0, features & _M64,
                                      (features >> 64) & _M64, 0, 0)

        ring = layout.FLAG_QUEUE | (layout.FLAG_PACKED if packed else 0)
        cut = ring | layout.FLAG_TRUNCATED
        # the record headers of this queue's AVAIL and USED records (_cut: TRUNCATED ones)
        self.avail_head = header(AVAIL, Direction.TO_DEVICE, ring)
        self.avail_head_cut = header(AVAIL, Direction.TO_DEVICE, cut)
        self.used_head = header(USED, Direction.TO_DRIVER, ring)
        self.used_head_cut = header(USED, Direction.TO_DRIVER, cut)
        self._notify = {(kind, channel): header(kind, direction, layout.FLAG_QUEUE, channel)
                        for kind, direction in ((KICK, Direction.TO_DEVICE), (CALL, Direction.TO_DRIVER))
                        for channel in (0, 1)}

    def avail(self, out: list, iface: int, ts_hi: int, ts_lo: int, chain_and_readable: bytes, readable_len: int,
              cut: bool) -> None:
        """Append the block of an AVAIL record to ``out``, in pieces: ``chain_and_readable`` is the
        chain part of the record, the size of the readable bytes kept and those bytes
        (:func:`chain_and_readable`)."""
        size = _HEAD_SIZE + len(chain_and_readable) + 8
        pad = -size & 3
        total = 32 + size + pad
        head = self.avail_head_cut if cut else self.avail_head
        out += (_EPB_HDR.pack(EPB_TYPE, total, iface, ts_hi, ts_lo, size, size, head), chain_and_readable,
                _AVAIL_TAIL[pad].pack(total))

    def used(self, out: list, iface: int, ts_hi: int, ts_lo: int, used_id: int, used_len: int, used_idx: int,
             chain_and_readable: bytes, sized_written: bytes, cut: bool) -> None:
        """Append the block of a USED record (of a chain in flight) to ``out``, in pieces:
        ``sized_written`` is the size of the written bytes kept, then those bytes."""
        size = _HEAD_SIZE + 12 + len(chain_and_readable) + len(sized_written) + 4
        pad = -size & 3
        total = 32 + size + pad
        out += (_EPB_HDR_USED.pack(EPB_TYPE, total, iface, ts_hi, ts_lo, size, size,
                                   self.used_head_cut if cut else self.used_head, used_id & 0xFFFFFFFF,
                                   used_len & 0xFFFFFFFF, used_idx & 0xFFFF),
                chain_and_readable, sized_written, _USED_TAIL[pad].pack(total))

    def notify(self, out: list, iface: int, ts_hi: int, ts_lo: int, kind: int, channel: int, data: bytes) -> None:
        """Append the block of a KICK or CALL record (``data``: the 8-byte eventfd counter, or empty in band)."""
        body = data[:8] if len(data) >= 8 else _EMPTY
        size = _HEAD_SIZE + len(body)
        total = 32 + size  # 40 or 48: a multiple of 4
        out += (_EPB_HDR.pack(EPB_TYPE, total, iface, ts_hi, ts_lo, size, size, self._notify[kind, channel & 1]),
                body, _U32.pack(total))


def chain_and_readable(chain: bytes, readable: bytes) -> bytes:
    """What AVAIL and USED records of one chain share: its chain part, the size of the readable bytes, the bytes."""
    return b"".join((chain, _U32.pack(len(readable)), readable))


def sized(data: bytes | memoryview) -> bytes:
    """``data`` after its u32 size (the written bytes of a USED record)."""
    return _U32.pack(len(data)) + data
