"""Events to vqtrace records and back (the layout is dissectors/record.py; docs/trace-format.md).

:func:`encode` is the writer's path for every event (``struct``, no construct); the
header of a record comes from :data:`HEADERS` (one per event context: the kind,
direction, queue, device type, features, flags... that events of one queue repeat)
and a chain's part from :data:`CHAINS` (packed for its AVAIL record, taken again by
its USED record). ``encode(event, cached=False)`` packs everything and is the
reference the caches are held to (tests/test_record_cache.py). :func:`decode` turns a
record back into an :class:`~vqtrace.events.Event` with its chain, used element or
anomaly. Tests hold both equal to the construct layout.
"""

from __future__ import annotations

import itertools
import struct

from ..dissectors import record as layout
from ..errors import TraceFileError
from ..events import Direction, Event, EventKind
from ..model import Anomaly, Chain, Descriptor, UsedElem
from .roles import queue_role

_M64 = (1 << 64) - 1
_HEADER = layout.HEADER
_USED = layout.USED_STRUCT
_CHAIN = layout.CHAIN_STRUCT
_DESC = layout.DESC_STRUCT
_SIZE = layout.SIZE_STRUCT
_CONFIG = layout.CONFIG_STRUCT
_ANOMALY = layout.ANOMALY_STRUCT
_U64 = struct.Struct("<Q")
_PARAM_VALUE = struct.Struct("<QQ")
HEADER_SIZE = layout.HEADER_SIZE
#: Descriptor is a NamedTuple whose fields are in the record's order (then ``pack(*d)`` is the fast path).
_TUPLE_ORDER = getattr(Descriptor, "_fields", None) == ("addr", "len", "flags", "index", "next", "id", "in_indirect")

VHOST_USER, KICK, CALL, AVAIL, USED, CONFIG, ANOMALY, DATA = (int(k) for k in EventKind)


_FLAG_QUEUE, _FLAG_PACKED, _FLAG_XEN_MMAP, _FLAG_TRUNCATED = (layout.FLAG_QUEUE, layout.FLAG_PACKED,
                                                            layout.FLAG_XEN_MMAP, layout.FLAG_TRUNCATED)
_VERSION, _NO_QUEUE, _CHAIN_WRAP, _CHAIN_UNKNOWN = (layout.RECORD_VERSION, layout.NO_QUEUE, layout.CHAIN_WRAP,
                                                    layout.CHAIN_UNKNOWN)
_EMPTY_SIZE = struct.pack("<I", 0)


def encode(event: Event, snaplen: int = 0, *, cached: bool = True) -> bytes:
    """The record of ``event``; ``snaplen`` (0: no limit) caps each byte area it carries.

    ``cached`` (the default) takes the header and a chain's bytes from the caches
    (:data:`HEADERS`, :data:`CHAINS`); ``cached=False`` packs every field, and is the
    reference the caches are tested against: the bytes are the same either way.
    """
    kind = event.kind
    if kind in (AVAIL, USED):
        body, cut = _chain_body(event, kind, snaplen, cached)
    elif kind in (KICK, CALL):
        data = event.data
        body, cut = (data[:8] if len(data) >= 8 else b""), False
    else:
        data = event.data
        cut = bool(snaplen) and len(data) > snaplen
        if cut:
            data = data[:snaplen]
        if kind == VHOST_USER:
            body = data
        elif kind == CONFIG:
            body = _CONFIG.pack(event.offset, len(data)) + data
        elif kind == ANOMALY:
            body = _anomaly_body(event.anomaly)
        elif kind == DATA:
            body = _data_body(event.layer, event.params or {}, data)
        else:
            raise ValueError(f"unknown event kind {kind}")
    return (header(event, cut) if cached else pack_header(event, cut)) + body


def pack_header(event: Event, cut: bool = False) -> bytes:
    """The record header of ``event``, every field packed (``cut``: a snap length cut its bytes)."""
    queue = event.queue
    params = event.params
    flags = 0 if queue is None else _FLAG_QUEUE
    if event.packed:
        flags |= _FLAG_PACKED
    if event.truncated or cut:
        flags |= _FLAG_TRUNCATED
    cdb_size = sense_size = 0
    num_queues = None
    if params:
        if params.get("xen_mmap"):
            flags |= _FLAG_XEN_MMAP
        cdb_size = params.get("cdb_size", 0)
        sense_size = params.get("sense_size", 0)
        num_queues = params.get("num_queues")
    role = event.role
    if role is None:
        role = queue_role(event.device_type, queue, event.features, num_queues)
    features = event.features
    if features >> 64:
        lo, hi = features & _M64, (features >> 64) & _M64
    else:
        lo, hi = features, 0
    return _HEADER.pack(_VERSION, event.kind, event.direction, flags, HEADER_SIZE,
                        _NO_QUEUE if queue is None else queue & 0xFFFF, event.device_type & 0xFFFF,
                        role & 0xFF, event.channel & 0xFF, min(event.fds, 255), lo, hi, cdb_size & 0xFFFF,
                        sense_size & 0xFFFF)


# ---------------------------------------------------------------------------------------------
# Caches. Events of one queue repeat their whole header context, and a chain is encoded twice
# (its AVAIL event, then its USED event: the same Chain object). Both caches are bounded: when
# one is full it is emptied (a miss costs one packing; the bytes never change).

#: Most headers kept (distinct contexts: kind, direction, queue, device type, features, flags, ...).
HEADERS_MAX = 1024
#: header key (see :func:`header_key`) -> the packed header.
HEADERS: dict[tuple, bytes] = {}
#: Most chains kept: the chains in flight of every queue written, made available and not used yet.
CHAINS_MAX = 4096
#: ``id(chain)`` -> (the chain, its packed chain part). The entry holds the chain, so its id cannot
#: be reused by another object while the entry lives. A chain is not changed once an event carries it
#: (ring readers finish it before; ``Chain`` compares by identity).
CHAINS: dict[int, tuple[Chain, bytes]] = {}


def header_key(event: Event, truncated: object) -> tuple:
    """What the header of ``event`` depends on (``truncated``: its TRUNCATED flag is set): equal keys
    give equal headers. Callers on the hot path build the same tuple inline."""
    params = event.params
    if params:
        return (event.kind, event.direction, event.queue, event.device_type, event.features, event.role,
                event.channel, event.fds, event.packed, truncated, bool(params.get("xen_mmap")),
                params.get("cdb_size", 0), params.get("sense_size", 0), params.get("num_queues"))
    return (event.kind, event.direction, event.queue, event.device_type, event.features, event.role,
            event.channel, event.fds, event.packed, truncated)


def header(event: Event, cut: bool = False) -> bytes:
    """The record header of ``event`` (``cut``: a snap length cut its bytes), from :data:`HEADERS`."""
    key = header_key(event, cut or event.truncated)
    head = HEADERS.get(key)
    if head is None:
        head = new_header(key, event, cut)
    return head


def new_header(key: tuple, event: Event, cut: bool = False) -> bytes:
    """Pack the header of ``event`` and keep it in :data:`HEADERS` under ``key``."""
    head = pack_header(event, cut)
    if len(HEADERS) >= HEADERS_MAX:
        HEADERS.clear()
    HEADERS[key] = head
    return head


def chain_bytes(chain: Chain, keep: bool = True) -> bytes:
    """The chain part of a record (the chain, then its descriptors), from :data:`CHAINS`.

    ``keep``: an AVAIL event's chain, kept for its USED event; ``keep=False`` (a USED
    event) takes the entry out: the chain's last record.
    """
    entry = CHAINS.get(id(chain)) if keep else CHAINS.pop(id(chain), None)
    if entry is not None and entry[0] is chain:
        return entry[1]
    out = pack_chain(chain)
    if keep:
        keep_chain(chain, out)
    return out


def keep_chain(chain: Chain, data: bytes) -> None:
    """Keep the packed chain part of ``chain`` in :data:`CHAINS` (emptied first when full)."""
    if len(CHAINS) >= CHAINS_MAX:
        CHAINS.clear()
    CHAINS[id(chain)] = (chain, data)


def clear_caches() -> None:
    """Forget every cached header and chain (the bytes written are the same with or without them)."""
    HEADERS.clear()
    CHAINS.clear()


def _pack_desc(d: Descriptor) -> bytes:
    return _DESC.pack(d.addr & _M64, d.len & 0xFFFFFFFF, d.flags & 0xFFFF, d.index & 0xFFFF, d.next & 0xFFFF,
                      d.id & 0xFFFF, 1 if d.in_indirect else 0)


def pack_chain(chain: Chain) -> bytes:
    """The chain part of a record, every field packed: the chain, then its descriptors."""
    items = chain.descriptors
    count = len(items)
    wrap = _CHAIN_WRAP if chain.wrap else 0
    if _TUPLE_ORDER and count <= _CHAIN_STRUCTS_MAX:
        whole = _CHAIN_STRUCTS.get(count)
        if whole is None:
            whole = _CHAIN_STRUCTS[count] = struct.Struct(_CHAIN.format + _DESC.format.lstrip("<") * count)
        try:  # the NamedTuple's fields are the record's order: one pack of the chain and its descriptors
            return whole.pack(chain.id, chain.avail_idx, wrap, count, chain.readable_len, chain.writable_len,
                              *_flatten(items))
        except (struct.error, TypeError):  # a value out of its field's range: masked below
            pass
    return _CHAIN.pack(chain.id & 0xFFFF, chain.avail_idx & 0xFFFF, wrap, count & 0xFFFF,
                       chain.readable_len & 0xFFFFFFFF, chain.writable_len & 0xFFFFFFFF) + \
        b"".join([_pack_desc(d) for d in items])


#: Chains of up to this many descriptors are packed by one struct (one per descriptor count).
_CHAIN_STRUCTS_MAX = 64
_CHAIN_STRUCTS: dict[int, struct.Struct] = {}
_flatten = itertools.chain.from_iterable


def _chain_body(event: Event, kind: int, snaplen: int, cached: bool = True) -> tuple[bytes, bool]:
    readable = event.data
    written = event.written if kind == USED else b""
    cut = False
    tail = b""
    if snaplen:
        if len(readable) > snaplen:
            readable, cut = readable[:snaplen], True
        if len(written) > snaplen:
            tail = written[-layout.TAIL_SIZE:]
            written, cut = written[:snaplen], True
    chain = event.chain
    if chain is None:
        used_id = event.used.id if event.used is not None else 0
        chain_part = _CHAIN.pack(used_id & 0xFFFF, 0, _CHAIN_UNKNOWN, 0, 0, 0)
    elif cached:
        chain_part = chain_bytes(chain, kind == AVAIL)
    else:
        chain_part = pack_chain(chain)
    tail_part = _SIZE.pack(len(tail)) + tail if tail else _EMPTY_SIZE
    if kind == USED:
        used = event.used
        if used is None:
            raise ValueError("a USED event needs its used element")
        head = _USED.pack(used.id & 0xFFFFFFFF, used.len & 0xFFFFFFFF, used.used_idx & 0xFFFF)
        return b"".join((head, chain_part, _SIZE.pack(len(readable)), readable, _SIZE.pack(len(written)), written,
                         tail_part)), cut
    return b"".join((chain_part, _SIZE.pack(len(readable)), readable, _EMPTY_SIZE, tail_part)), cut


def _anomaly_body(anomaly: Anomaly | None) -> bytes:
    if anomaly is None:
        raise ValueError("an ANOMALY event needs its anomaly")
    code = anomaly.code.encode()[:255]
    section = anomaly.section.encode()[:255]
    message = anomaly.message.encode()[:65535]
    flags = (layout.ANOMALY_HAS_ID if anomaly.id is not None else 0) | \
            (layout.ANOMALY_HAS_ADDRESS if anomaly.address is not None else 0)
    return _ANOMALY.pack(flags, len(code), len(section), len(message), (anomaly.id or 0) & 0xFFFFFFFF,
                         (anomaly.address or 0) & _M64) + code + section + message


def _data_body(name: str, params: dict[str, int], data: bytes) -> bytes:
    raw = name.encode()[:255]
    items = [(key.encode()[:255], int(value)) for key, value in params.items() if isinstance(value, int)]
    out = [bytes([len(raw)]), raw, bytes([len(items)])]
    for key, value in items[:255]:
        value &= (1 << 128) - 1
        out.append(bytes([len(key)]) + key + _PARAM_VALUE.pack(value & _M64, value >> 64))
    out.append(data)
    return b"".join(out)


# ---------------------------------------------------------------------------------------------
# Decoding


class RecordHeader:
    """The header fields of a record (see dissectors/record.py)."""

    __slots__ = ("cdb_size", "channel", "device_type", "direction", "fds", "features", "flags", "hdr_len",
                 "kind", "queue", "role", "sense_size", "version")

    def __init__(self, data: bytes | memoryview) -> None:
        if len(data) < 1:
            raise TraceFileError("empty record")
        self.version = data[0]
        if self.version != layout.RECORD_VERSION:
            raise TraceFileError(f"unknown record version {self.version} (this vqtrace reads version "
                                 f"{layout.RECORD_VERSION})")
        if len(data) < HEADER_SIZE:
            raise TraceFileError(f"record of {len(data)} bytes is shorter than its {HEADER_SIZE}-byte header")
        (_, self.kind, self.direction, self.flags, self.hdr_len, queue, self.device_type, self.role,
         self.channel, self.fds, lo, hi, self.cdb_size, self.sense_size) = _HEADER.unpack_from(data)
        if self.hdr_len < HEADER_SIZE or self.hdr_len > len(data):
            raise TraceFileError(f"bad record header length {self.hdr_len}")
        self.queue = queue if self.flags & layout.FLAG_QUEUE else None
        self.features = lo | hi << 64


class _Cursor:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos

    def take(self, st: struct.Struct) -> tuple:
        if self.pos + st.size > len(self.data):
            raise TraceFileError(f"record truncated at byte {self.pos} (needs {st.size} more)")
        values = st.unpack_from(self.data, self.pos)
        self.pos += st.size
        return values

    def bytes(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise TraceFileError(f"record truncated at byte {self.pos} ({size} bytes announced, "
                                 f"{len(self.data) - self.pos} left)")
        out = self.data[self.pos:self.pos + size]
        self.pos += size
        return out

    def text(self, size: int) -> str:
        return self.bytes(size).decode("utf-8", "replace")


def decode(data: bytes, time_ns: int = 0, source: str = "") -> Event:
    """The event a record holds; TraceFileError when it is malformed or of an unknown version."""
    data = bytes(data)
    head = RecordHeader(data)
    kind = head.kind
    try:
        event_kind = EventKind(kind)
    except ValueError:
        raise TraceFileError(f"unknown event kind {kind}") from None
    params: dict[str, int] = {}
    if head.cdb_size:
        params["cdb_size"] = head.cdb_size
    if head.sense_size:
        params["sense_size"] = head.sense_size
    if head.flags & layout.FLAG_XEN_MMAP:
        params["xen_mmap"] = 1
    event = Event(event_kind, time_ns, source, head.queue, Direction(head.direction) if head.direction < 3
                  else Direction.NONE, device_type=head.device_type, channel=head.channel, fds=head.fds,
                  role=head.role, features=head.features, packed=bool(head.flags & layout.FLAG_PACKED),
                  truncated=bool(head.flags & layout.FLAG_TRUNCATED))
    cur = _Cursor(data, head.hdr_len)
    if kind == VHOST_USER:
        event.data = data[cur.pos:]
    elif kind in (KICK, CALL):
        event.data = data[cur.pos:cur.pos + 8] if len(data) - cur.pos >= 8 else b""
    elif kind in (AVAIL, USED):
        queue = head.queue if head.queue is not None else 0
        if kind == USED:
            uid, ulen, uidx = cur.take(_USED)
            event.used = UsedElem(queue, uid, ulen, uidx)
        cid, avail_idx, cflags, ndesc, _rlen, _wlen = cur.take(_CHAIN)
        descs = []
        for _ in range(ndesc):
            addr, length, dflags, index, nxt, bid, indirect = cur.take(_DESC)
            descs.append(Descriptor(addr=addr, len=length, flags=dflags, index=index, next=nxt, id=bid,
                                    in_indirect=bool(indirect)))
        if not cflags & layout.CHAIN_UNKNOWN:
            event.chain = Chain(queue, cid, avail_idx, descs, wrap=bool(cflags & layout.CHAIN_WRAP))
        (size,) = cur.take(_SIZE)
        event.data = cur.bytes(size)
        (size,) = cur.take(_SIZE)
        event.written = cur.bytes(size)
        (size,) = cur.take(_SIZE)
        cur.bytes(size)  # the written tail of a cut capture (dissection uses it; the event holds the head)
    elif kind == CONFIG:
        offset, size = cur.take(_CONFIG)
        event.offset = offset
        event.data = cur.bytes(size)
    elif kind == ANOMALY:
        aflags, code_len, section_len, message_len, aid, address = cur.take(_ANOMALY)
        event.anomaly = Anomaly(cur.text(code_len), cur.text(section_len), cur.text(message_len), head.queue,
                                aid if aflags & layout.ANOMALY_HAS_ID else None,
                                address if aflags & layout.ANOMALY_HAS_ADDRESS else None)
    elif kind == DATA:
        (name_len,) = cur.take(_U8)
        event.layer = cur.text(name_len)
        (count,) = cur.take(_U8)
        for _ in range(count):
            (key_len,) = cur.take(_U8)
            key = cur.text(key_len)
            lo, hi = cur.take(_PARAM_VALUE)
            params[key] = lo | hi << 64
        event.data = data[cur.pos:]
    event.params = params or None
    return event


_U8 = struct.Struct("<B")
