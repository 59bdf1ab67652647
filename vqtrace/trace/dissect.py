"""A record's fields, summary and trees: what ``show``, ``stats`` and the TUI read from a frame.

A record dissects in three steps, the same in vqtrace and in the Wireshark plugin:
the header (layer ``record``), the body of its kind (``record.avail`` ...), then the
bytes the body carries: the vhost-user message (``vhost_user.msg``), a chain's
device request (:mod:`vqtrace.trace.plan` segments), a configuration access (the
device's ``.config`` layer, when it starts at offset 0), or a DATA record's layer.
A layer that refuses its bytes leaves ``vqtrace.malformed`` (the layer's name) and
the bytes as Wireshark's ``data``.

:meth:`Dissector.pairs` gives the fields fast (``(abbreviation, value)`` in tree
order); :meth:`Dissector.trees` the field trees (the construct walker and
:mod:`vqtrace.requests`, for ``-V``); :meth:`Dissector.summary` the one-line info.
A Dissector keeps the per-queue state a trace needs in order (merged receive buffers
of virtio-net): feed it the frames in order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from ..dissectors import record as layout
from ..dissectors.errors import DissectError
from ..dissectors.layers import get_layer
from ..dissectors.tree import Field
from . import plan as planner
from .fast import Pairs, fast_layer, tree_pairs

VHOST_USER, KICK, CALL, AVAIL, USED, CONFIG, ANOMALY, DATA = range(1, 9)
KIND_NAMES = {value: name for name, value in layout.KINDS.items()}
CONFIG_LAYERS = {layout.NET: "virtio_net.config", layout.BLK: "virtio_blk.config", layout.CONSOLE:
                 "virtio_console.config", layout.BALLOON: "virtio_balloon.config", layout.SCSI: "virtio_scsi.config",
                 layout.VSOCK: "virtio_vsock.config"}
PROTOCOLS = {layout.NET: "virtio-net", layout.BLK: "virtio-blk", layout.CONSOLE: "virtio-console",
             layout.RNG: "virtio-rng", layout.BALLOON: "virtio-balloon", layout.SCSI: "virtio-scsi",
             layout.VSOCK: "virtio-vsock"}
_DEVICE_WORDS = {layout.NET: "net", layout.BLK: "blk", layout.CONSOLE: "console", layout.RNG: "rng",
                 layout.BALLOON: "balloon", layout.SCSI: "scsi", layout.VSOCK: "vsock"}
_VIRTIO_NET_F_MRG_RXBUF = 15
_HEADER = layout.HEADER


class RecordError(Exception):
    """A record that does not dissect (bad version, short header): the message, and the pairs there are."""

    def __init__(self, message: str, pairs: Pairs) -> None:
        super().__init__(message)
        self.pairs = pairs


@dataclass(slots=True)
class Record:
    """The parts of one record, located (offsets in the record's bytes)."""

    data: bytes
    kind: int
    hdr_len: int
    header: tuple
    body: dict[str, Any]  # a few body values the payload step needs
    readable_at: int = 0
    written_at: int = 0
    tail_at: int = 0
    plan_chain: planner.Chain | None = None  # computed once per record (merged receive buffers advance once)


def _raw_pairs(data: bytes) -> Pairs:
    """Bytes no layout took, as Wireshark's data dissector shows them (nothing for no bytes)."""
    if not data:
        return []
    return [("data", None), ("data.data", data), ("data.len", len(data))]


class Dissector:
    """Dissects the records of one trace, in order (see the module docstring)."""

    def __init__(self) -> None:
        self._rx_pending: dict[tuple[str, int], int] = {}
        self._last: tuple[Any, Any] | None = None  # (data, result or RecordError) of the last record located
        self._contexts: dict[tuple, tuple[Any, Any]] = {}

    # -- locating ---------------------------------------------------------------------------------

    def locate(self, data: bytes) -> tuple[Record, Pairs, Pairs]:
        """The record's parts, its header pairs and its body pairs; RecordError if it does not dissect.

        The same ``data`` object twice in a row (one frame's fields, then its summary, then its
        trees) is located once.
        """
        last = self._last
        if last is not None and last[0] is data:
            if isinstance(last[1], RecordError):
                raise last[1]
            return last[1]
        try:
            result = self._locate(data)
        except RecordError as err:
            self._last = (data, err)
            raise
        self._last = (data, result)
        return result

    def _locate(self, data: bytes) -> tuple[Record, Pairs, Pairs]:
        if not data:
            raise RecordError("empty record", [("vqtrace", None)])
        version = data[0]
        if version != layout.RECORD_VERSION:
            raise RecordError(f"unknown record version {version} (this vqtrace reads version "
                              f"{layout.RECORD_VERSION})", [("vqtrace", None), ("vqtrace.version", version)])
        try:
            head = fast_layer("record").pairs(data)
        except DissectError as err:
            raise RecordError(f"bad record header: {err}", [("vqtrace", None), ("vqtrace.malformed", "record"),
                                                            *_raw_pairs(data)]) from None
        header = _HEADER.unpack_from(data)
        kind, hdr_len = header[1], header[4]
        rec = Record(data, kind, hdr_len, header, {})
        name = layout.BODY_LAYERS.get(kind)
        if name is None:
            return rec, head, [("vqtrace.malformed", "record"), *_raw_pairs(data[hdr_len:])]
        try:
            body = fast_layer(name).pairs(data[hdr_len:], base=hdr_len)[1:]
        except DissectError:
            return rec, head, [("vqtrace.malformed", name), *_raw_pairs(data[hdr_len:])]
        self._note_body(rec, body)
        return rec, head, body

    @staticmethod
    def _note_body(rec: Record, body: Pairs) -> None:
        """Positions and values of the body the payload step uses (from the fixed layouts)."""
        data, at = rec.data, rec.hdr_len
        kind = rec.kind
        if kind in (AVAIL, USED):
            if kind == USED:
                _uid, ulen, _uidx = struct.unpack_from("<IIH", data, at)
                rec.body["used_len"] = ulen
                at += layout.USED_STRUCT.size
            _cid, _avail_idx, cflags, ndesc, _rl, _wl = layout.CHAIN_STRUCT.unpack_from(data, at)
            at += layout.CHAIN_STRUCT.size
            readable_lens: list[int] = []
            writable_lens: list[int] = []
            for _ in range(ndesc):
                _addr, length, dflags = struct.unpack_from("<QIH", data, at)
                if not dflags & 4:
                    (writable_lens if dflags & 2 else readable_lens).append(length)
                at += layout.DESC_SIZE
            known = not cflags & layout.CHAIN_UNKNOWN
            rec.body["readable_lens"] = tuple(readable_lens) if known else None
            rec.body["writable_lens"] = tuple(writable_lens) if known else None
            (size,) = struct.unpack_from("<I", data, at)
            rec.readable_at = at + 4
            rec.body["readable_size"] = size
            at += 4 + size
            (size,) = struct.unpack_from("<I", data, at)
            rec.written_at = at + 4
            rec.body["written_size"] = size
            at += 4 + size
            (size,) = struct.unpack_from("<I", data, at)
            rec.tail_at = at + 4
            rec.body["tail_size"] = size
        elif kind == CONFIG:
            offset, size = struct.unpack_from("<II", data, at)
            rec.body["offset"] = offset
            rec.readable_at = at + 8
            rec.body["size"] = size
        elif kind == DATA:
            values = dict(body)
            rec.body["layer"] = values.get("vqtrace.layer", "")
            names = [v for a, v in body if a == "vqtrace.param.name"]
            los = [v for a, v in body if a == "vqtrace.param.value"]
            his = [v for a, v in body if a == "vqtrace.param.value_hi"]
            rec.body["params"] = {n: lo | hi << 64 for n, lo, hi in zip(names, los, his, strict=True)}
            rec.readable_at = len(data) - len(values.get("vqtrace.data", b""))

    # -- fields -----------------------------------------------------------------------------------

    def pairs(self, data: bytes, source: str = "") -> Pairs:
        """Every field of the record, in tree order; RecordError (with the pairs there are) if it is bad."""
        rec, head, body = self.locate(data)
        out = head + body
        if body and body[0][0] == "vqtrace.malformed":
            return out
        out.extend(self.payload_pairs(rec, source))
        return out

    def payload_pairs(self, rec: Record, source: str) -> Pairs:
        kind = rec.kind
        if kind == VHOST_USER:
            return _layer_pairs("vhost_user.msg", rec.data[rec.hdr_len:], rec.hdr_len, _vhost_params(rec))
        if kind in (AVAIL, USED):
            return self._chain_pairs(rec, source)
        if kind == CONFIG:
            name = CONFIG_LAYERS.get(rec.header[6])
            if name is None or rec.body["offset"] != 0:
                return []
            return _layer_pairs(name, rec.data[rec.readable_at:rec.readable_at + rec.body["size"]], rec.readable_at)
        if kind == DATA:
            name = rec.body["layer"]
            try:
                get_layer(name)
            except DissectError:
                return [("vqtrace.malformed", name), *_raw_pairs(rec.data[rec.readable_at:])]
            return _layer_pairs(name, rec.data[rec.readable_at:], rec.readable_at, rec.body["params"])
        return []

    def chain(self, rec: Record, source: str, *, advance: bool = True) -> planner.Chain:
        """The plan's view of an AVAIL or USED record (merged receive buffers followed, once per record)."""
        if rec.plan_chain is not None:
            return rec.plan_chain
        h = rec.header
        data = rec.data
        readable = data[rec.readable_at:rec.readable_at + rec.body["readable_size"]]
        written = data[rec.written_at:rec.written_at + rec.body["written_size"]] if rec.kind == USED else None
        features = h[10] | h[11] << 64
        c = planner.Chain(h[6], h[7], readable, written, rec.body.get("used_len"), rec.body["readable_lens"],
                          rec.body["writable_lens"], features or None, h[12] or planner.CDB_DEFAULT_SIZE,
                          h[13] or planner.SENSE_DEFAULT_SIZE)
        if rec.body.get("tail_size"):
            c.written_tail = data[rec.tail_at:rec.tail_at + rec.body["tail_size"]]
        if rec.kind == USED and c.device_type == layout.NET and c.role == layout.ROLES["RX"]:
            key = (source, h[5])
            pending = self._rx_pending.get(key, 0)
            if pending > 0:
                c.continuation = True
                if advance:
                    self._rx_pending[key] = pending - 1
            elif advance and c.has(_VIRTIO_NET_F_MRG_RXBUF):
                buffers = planner.rx_buffers(c)
                if buffers is not None and buffers > 1:
                    self._rx_pending[key] = buffers - 1
        if advance:
            rec.plan_chain = c
        return c

    def _chain_pairs(self, rec: Record, source: str) -> Pairs:
        c = self.chain(rec, source)
        out: Pairs = []
        for seg in planner.plan(c):
            if seg.part == planner.READABLE:
                at = rec.readable_at
                data = c.readable
            elif seg.part == "tail":
                at = rec.tail_at
                data = c.written_tail or b""
            else:
                at = rec.written_at
                data = c.written or b""
            chunk = data[seg.start:seg.start + seg.length]
            base = at + seg.start
            if seg.kind == planner.RAW:
                out.extend(_raw_pairs(chunk))
            elif seg.kind == planner.BYTES:
                out.append((seg.root, None))
                out.append((seg.field, chunk))
            elif seg.kind == planner.ETH:
                out.extend(_ethernet_pairs(chunk, base))
            else:
                out.extend(_layer_pairs(seg.kind, chunk, base, seg.params, quiet=seg.quiet))
        return out

    # -- trees and summaries ----------------------------------------------------------------------

    def trees(self, data: bytes, source: str = "") -> list[Field]:
        """The field trees of the record (the record, then what it carries), for ``show -V``."""
        try:
            rec, _head, body = self.locate(data)
        except RecordError:
            return []
        try:
            root = get_layer("record").dissect(data)
            name = layout.BODY_LAYERS.get(rec.kind)
            if name is not None and not (body and body[0][0] == "vqtrace.malformed"):
                extra = get_layer(name).dissect(data[rec.hdr_len:], base=rec.hdr_len)
                root.children.extend(extra.children)
                root.length = len(data)
        except DissectError:
            return []
        trees = [root]
        kind = rec.kind
        try:
            if kind == VHOST_USER:
                trees.append(get_layer("vhost_user.msg").dissect(data[rec.hdr_len:], base=rec.hdr_len,
                                                                 params=_vhost_params(rec)))
            elif kind in (AVAIL, USED):
                trees.extend(self.request(rec, source, advance=False).trees)
            elif kind == CONFIG:
                name = CONFIG_LAYERS.get(rec.header[6])
                if name is not None and rec.body["offset"] == 0:
                    trees.append(get_layer(name).dissect(data[rec.readable_at:rec.readable_at + rec.body["size"]],
                                                         base=rec.readable_at))
            elif kind == DATA:
                trees.append(get_layer(rec.body["layer"]).dissect(data[rec.readable_at:], base=rec.readable_at,
                                                                  params=rec.body["params"]))
        except DissectError as err:
            trees.append(Field("vqtrace.malformed", "Malformed", str(err.layer), str(err), err.offset, 0))
        return trees

    def request(self, rec: Record, source: str, *, advance: bool = True) -> Any:
        """The :class:`vqtrace.requests.DeviceRequest` of an AVAIL or USED record (trees built lazily)."""
        from ..requests import QueueContext
        from ..requests.decode import decode_parts
        from ..requests.request import Parts

        c = self.chain(rec, source, advance=advance)
        device = _DEVICE_WORDS.get(c.device_type, c.device_type)
        h = rec.header
        key = (device, h[5] if h[3] & layout.FLAG_QUEUE else 0, c.features, c.cdb_size, c.sense_size, c.role)
        known = self._contexts.get(key)
        if known is None:
            ctx = QueueContext(device, key[1], c.features, cdb_size=c.cdb_size, sense_size=c.sense_size)
            known = self._contexts[key] = (ctx, _role(device, c.role, ctx))
        ctx, role = known
        parts = Parts(ctx, role, c.readable, c.written, c.used_len, c.readable_lens, c.writable_lens,
                      None, c.written_tail)
        return decode_parts(parts, lazy=True, continuation=c.continuation) if device == "net" and \
            c.role == layout.ROLES["RX"] else decode_parts(parts, lazy=True)

    def summary(self, data: bytes, source: str = "") -> tuple[str, str]:
        """(protocol, info) for the one-line view, like tshark's Protocol and Info columns."""
        try:
            rec, _head, body = self.locate(data)
        except RecordError as err:
            return "vqtrace", str(err)
        h = rec.header
        kind, device = rec.kind, h[6]
        queue = h[5] if h[3] & layout.FLAG_QUEUE else None
        proto = PROTOCOLS.get(device, "vqtrace")
        if body and body[0][0] == "vqtrace.malformed":
            return "vqtrace", f"malformed {KIND_NAMES.get(kind, kind)} record"
        if kind == VHOST_USER:
            layer = get_layer("vhost_user.msg")
            try:
                tree = layer.dissect(data[rec.hdr_len:], params=_vhost_params(rec))
            except DissectError as err:
                return "vhost-user", f"malformed vhost-user message: {err.message}"
            text = layer.summary(tree)
            return "vhost-user", text + (" (back-end channel)" if h[8] == 1 else "")
        if kind in (KICK, CALL):
            word = "kick" if kind == KICK else "call"
            text = f"{word} q={queue}" if queue is not None else word
            if len(data) >= rec.hdr_len + 8:
                text += f" count={struct.unpack_from('<Q', data, rec.hdr_len)[0]}"
            return proto, text
        if kind in (AVAIL, USED):
            req = self.request(rec, source)
            word = "avail" if kind == AVAIL else "used"
            return proto, f"{word} {req.summary}"
        if kind == CONFIG:
            access = "write" if h[2] == 1 else "read"
            text = f"config {access} offset={rec.body['offset']} size={rec.body['size']}"
            name = CONFIG_LAYERS.get(device)
            if name is not None and rec.body["offset"] == 0:
                try:
                    layer = get_layer(name)
                    chunk = data[rec.readable_at:rec.readable_at + rec.body["size"]]
                    text += " " + (layer.summary(layer.dissect(chunk)) if layer.summary else "")
                except DissectError:
                    text += " (malformed)"
            return proto, text.rstrip()
        if kind == ANOMALY:
            values = dict(body)
            code = values.get("vqtrace.anomaly.code", "?")
            return "vqtrace", f"anomaly {code}: {values.get('vqtrace.anomaly.message', '')} " \
                              f"({values.get('vqtrace.anomaly.section', '')})"
        if kind == DATA:
            name = rec.body["layer"]
            try:
                layer = get_layer(name)
                tree = layer.dissect(data[rec.readable_at:], params=rec.body["params"])
                return name.split(".", 1)[0].replace("_", "-"), layer.summary(tree) if layer.summary else name
            except DissectError as err:
                return "vqtrace", f"{name}: {err.message}"
        return "vqtrace", KIND_NAMES.get(kind, str(kind))


def _vhost_params(rec: Record) -> dict[str, Any]:
    h = rec.header
    params: dict[str, Any] = {"channel": h[8]}
    if h[3] & layout.FLAG_PACKED:
        params["packed"] = 1
    if h[3] & layout.FLAG_XEN_MMAP:
        params["xen_mmap"] = 1
    return params


def _layer_pairs(name: str, data: bytes, base: int, params: dict[str, Any] | None = None, *,
                 quiet: bool = False) -> Pairs:
    try:
        return fast_layer(name).pairs(data, params, base)
    except DissectError:
        if quiet:
            return []
        return [("vqtrace.malformed", name), *_raw_pairs(data)]


def _ethernet_pairs(frame: bytes, base: int) -> Pairs:
    from ..requests.ethernet import frame_trees

    trees, _problems = frame_trees(frame, base)
    if not trees:
        return _raw_pairs(frame) if frame else []
    out: Pairs = []
    for tree in trees:
        out.extend(tree_pairs(tree))
    return out


_ROLE_KINDS = {
    "REQUEST": "requestq", "CONTROL": "controlq", "INFLATE": "inflateq", "DEFLATE": "deflateq", "STATS": "statsq",
    "FREE_PAGE": "free_page_vq", "REPORTING": "reporting_vq", "CONTROL_RX": "control receiveq",
    "CONTROL_TX": "control transmitq",
}


def _role(device: Any, role: int, ctx: Any) -> Any:
    """The requests Role for a record's role number (the spec's queue names)."""
    from ..requests import Role, queue_role

    name = layout.ROLE_NAMES.get(role, "UNKNOWN")
    if device == "vsock":
        kind = {"RX": "rx", "TX": "tx", "EVENT": "event"}.get(name, "unknown")
    elif device == "scsi" and name == "EVENT":
        kind = "eventq"
    elif name in ("RX", "TX"):
        kind = "receiveq" if name == "RX" else "transmitq"
    else:
        kind = _ROLE_KINDS.get(name, "unknown")
    guess = queue_role(ctx)
    if guess.kind == kind:
        return guess
    return Role(kind, kind, guess.number if kind == guess.kind else None)
