"""Which layer dissects which bytes of a chain: the trees of :mod:`vqtrace.requests`, as segments.

``vqtrace.requests`` turns a chain's bytes into a :class:`~vqtrace.requests.DeviceRequest`
whose field trees it builds with the construct walker, about 100 µs a chain. For
``show -T json``, ``-Y`` and ``stats`` over a million events vqtrace needs the same
fields faster: :func:`plan` gives the same trees as a list of :class:`Segment` (a
layer over some bytes, with its parameters; raw bytes as Wireshark's ``data``; an
Ethernet frame), in the same order, and :mod:`vqtrace.trace.fast` dissects them.
The Wireshark plugin runs the same plan (``dissectors/wireshark/plan.py``, its Lua
twin). tests/test_trace_plan.py holds the segments' fields equal to the requests'
trees on every device and queue role.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from ..dissectors import blk as blk_layout
from ..dissectors import net as net_layout
from ..dissectors import scsi as scsi_layout
from ..dissectors import scsi_cdb as t10
from ..dissectors import vsock as vsock_layout
from ..dissectors.record import BALLOON, BLK, CONSOLE, NET, RNG, ROLES, SCSI, VSOCK

READABLE, WRITTEN = "readable", "written"
RAW = "data"  # Wireshark's data protocol: data.data, data.len
ETH = "eth"  # an Ethernet frame (Wireshark's eth dissector; requests.ethernet in vqtrace)
BYTES = "bytes"  # a protocol node with one bytes field (virtio_blk.data of a read)

_R = ROLES
VIRTIO_SCSI_F_T10_PI = 3
VIRTIO_NET_F_MRG_RXBUF = 15
CDB_DEFAULT_SIZE = 32
SENSE_DEFAULT_SIZE = 96


@dataclass(frozen=True, slots=True)
class Segment:
    """One tree: ``kind`` is a layer name, RAW, ETH or BYTES; bytes [start, start + length) of ``part``."""

    kind: str
    part: str
    start: int
    length: int
    params: dict[str, Any] | None = None
    root: str = ""  # BYTES: the protocol node and ...
    field: str = ""  # ... its bytes field
    quiet: bool = False  # a failure leaves no tree at all (requests' scsi datain), not raw bytes


@dataclass(slots=True)
class Chain:
    """What a plan looks at: the device, the queue role, the context and the chain's bytes."""

    device_type: int
    role: int
    readable: bytes
    written: bytes | None  # None while in flight (AVAIL)
    used_len: int | None
    readable_lens: tuple[int, ...] | None
    writable_lens: tuple[int, ...] | None
    features: int | None = None
    cdb_size: int = CDB_DEFAULT_SIZE
    sense_size: int = SENSE_DEFAULT_SIZE
    written_tail: bytes | None = None
    continuation: bool = False  # net receiveq: a buffer that continues a merged packet

    @property
    def used(self) -> bool:
        return self.written is not None or self.used_len is not None

    @property
    def readable_total(self) -> int:
        return sum(self.readable_lens) if self.readable_lens is not None else len(self.readable)

    @property
    def writable_len(self) -> int | None:
        if self.writable_lens is not None:
            return sum(self.writable_lens)
        return len(self.written) if self.written is not None else None

    @property
    def written_whole(self) -> bool:
        if self.written is None:
            return False
        return self.writable_lens is None or len(self.written) >= sum(self.writable_lens)

    def wrote(self) -> int:
        """How many of ``written`` the device wrote (the used length caps it)."""
        data = self.written or b""
        if self.used_len is not None and self.used_len < len(data):
            return max(self.used_len, 0)
        return len(data)

    def has(self, bit: int) -> bool:
        return self.features is not None and bool(self.features >> bit & 1)


def _raw(part: str, start: int, length: int) -> Segment:
    return Segment(RAW, part, start, length)


def _frame(part: str, start: int, length: int) -> list[Segment]:
    """An Ethernet frame; shorter than an Ethernet header, its bytes raw (as requests.ethernet shows it)."""
    if length >= 14:
        return [Segment(ETH, part, start, length)]
    return [_raw(part, start, length)] if length > 0 else []


def plan(c: Chain) -> list[Segment]:
    """The segments of one chain, in the order of the requests' trees."""
    handler = _PLANS.get((c.device_type, c.role))
    if handler is None:
        return _generic(c)
    return handler(c)


def _generic(c: Chain) -> list[Segment]:
    out = []
    if c.readable:
        out.append(_raw(READABLE, 0, len(c.readable)))
    if c.written:
        n = c.wrote()
        if n:
            out.append(_raw(WRITTEN, 0, n))
    return out


def _params(c: Chain) -> dict[str, Any]:
    return {"features": c.features} if c.features is not None else {}


# -- blk (virtio 1.4, 5.2.6) ----------------------------------------------------------------------

def _blk(c: Chain) -> list[Segment]:
    r = c.readable
    out: list[Segment] = []
    if len(r) < blk_layout.REQ_HDR_SIZE:
        if r:
            out.append(_raw(READABLE, 0, len(r)))
        if c.written:
            out.append(_raw(WRITTEN, 0, len(c.written)))
        return out
    rtype = struct.unpack_from("<I", r)[0]
    kind = rtype & ~blk_layout.VIRTIO_BLK_T_BARRIER
    whole = len(r)
    if kind in blk_layout.SEGMENT_TYPES:
        whole = blk_layout.REQ_HDR_SIZE + (len(r) - blk_layout.REQ_HDR_SIZE) // 16 * 16
    out.append(Segment("virtio_blk.req", READABLE, 0, whole))
    if whole < len(r):
        out.append(_raw(READABLE, whole, len(r) - whole))
    if c.used:
        out.extend(_blk_response(c, kind))
    return out


def _blk_response(c: Chain, kind: int) -> list[Segment]:
    status_size = 9 if kind == blk_layout.VIRTIO_BLK_T_ZONE_APPEND else 1
    written = c.written
    writable = c.writable_len or 0
    tail = c.written_tail
    if written is not None and c.written_whole and len(written) >= status_size:
        status_at = len(written) - status_size
        data_len, status = status_at, Segment("virtio_blk.status", WRITTEN, status_at, status_size)
    elif tail is not None and len(tail) >= status_size and c.writable_lens is not None and writable >= status_size:
        status_at = writable - status_size
        data_len = min(status_at, len(written or b""))
        status = Segment("virtio_blk.status", "tail", len(tail) - status_size, status_size)
    else:
        return [_raw(WRITTEN, 0, len(written))] if written else []
    if kind == blk_layout.VIRTIO_BLK_T_ZONE_APPEND:
        status = Segment(status.kind, status.part, status.start, status.length, {"request_type": kind})
    out = []
    if data_len:
        if kind == blk_layout.REQUEST_TYPES["VIRTIO_BLK_T_GET_ID"]:
            out.append(Segment("virtio_blk.get_id", WRITTEN, 0, min(data_len, blk_layout.VIRTIO_BLK_ID_BYTES)))
        elif kind == blk_layout.REQUEST_TYPES["VIRTIO_BLK_T_GET_LIFETIME"]:
            out.append(Segment("virtio_blk.lifetime", WRITTEN, 0, min(data_len, 6)))
        elif kind == blk_layout.REQUEST_TYPES["VIRTIO_BLK_T_ZONE_REPORT"]:
            out.append(Segment("virtio_blk.zone_report", WRITTEN, 0, data_len))
        else:
            out.append(Segment(BYTES, WRITTEN, 0, data_len, root="virtio_blk", field="virtio_blk.data"))
    out.append(status)
    return out


# -- net (virtio 1.4, 5.1.9) ----------------------------------------------------------------------

def _net_tx(c: Chain) -> list[Segment]:
    size = net_layout.net_hdr_size(c.features)
    r = c.readable
    if len(r) < size:
        return [_raw(READABLE, 0, len(r))] if r else []
    return [Segment("virtio_net.hdr", READABLE, 0, size, _params(c)), *_frame(READABLE, size, len(r) - size)]


def _net_rx(c: Chain) -> list[Segment]:
    out = []
    if c.readable:
        out.append(_raw(READABLE, 0, len(c.readable)))
    if not c.used or c.written is None:
        return out
    n = c.wrote()
    if c.continuation:
        if n:
            out.append(_raw(WRITTEN, 0, n))
        return out
    size = net_layout.net_hdr_size(c.features)
    if n < size:
        if n:
            out.append(_raw(WRITTEN, 0, n))
        return out
    out.append(Segment("virtio_net.hdr", WRITTEN, 0, size, _params(c)))
    out.extend(_frame(WRITTEN, size, n - size))
    return out


def _net_ctrl(c: Chain) -> list[Segment]:
    r = c.readable
    out = []
    if len(r) < 2:
        if r:
            out.append(_raw(READABLE, 0, len(r)))
    else:
        out.append(Segment("virtio_net.ctrl", READABLE, 0, len(r)))
    if c.used and c.written is not None:
        n = c.wrote()
        if n:
            params = {"ctrl_class": r[0], "ctrl_command": r[1]} if len(r) >= 2 else {}
            out.append(Segment("virtio_net.ctrl_ack", WRITTEN, 0, n, params))
    return out


# -- console (virtio 1.4, 5.3.6) ------------------------------------------------------------------

def _console_tx(c: Chain) -> list[Segment]:
    return [Segment("virtio_console.data", READABLE, 0, len(c.readable))]


def _console_rx(c: Chain) -> list[Segment]:
    out = []
    if c.readable:
        out.append(_raw(READABLE, 0, len(c.readable)))
    if c.used and c.written is not None:
        out.append(Segment("virtio_console.data", WRITTEN, 0, c.wrote()))
    return out


def _console_ctrl(c: Chain, to_device: bool) -> list[Segment]:
    if to_device:
        part, length = READABLE, len(c.readable)
    else:
        if not c.used or c.written is None:
            return []
        part, length = WRITTEN, c.wrote()
    if length < 8:
        return [_raw(part, 0, length)] if length else []
    return [Segment("virtio_console.ctrl", part, 0, length)]


# -- rng (virtio 1.4, 5.4.6) ----------------------------------------------------------------------

def _rng(c: Chain) -> list[Segment]:
    out = []
    if c.readable:
        out.append(_raw(READABLE, 0, len(c.readable)))
    if c.used and c.written is not None:
        out.append(Segment("virtio_rng.data", WRITTEN, 0, c.wrote()))
    return out


# -- balloon (virtio 1.4, 5.5.6) ------------------------------------------------------------------

def _balloon_array(layer: str, size: int) -> Any:
    def handler(c: Chain) -> list[Segment]:
        r = c.readable
        whole = len(r) // size * size
        out = []
        if whole:
            out.append(Segment(layer, READABLE, 0, whole))
        if whole < len(r):
            out.append(_raw(READABLE, whole, len(r) - whole))
        return out
    return handler


def _balloon_free_page(c: Chain) -> list[Segment]:
    r = c.readable
    if not r:
        return []
    if len(r) < 4:
        return [_raw(READABLE, 0, len(r))]
    out = [Segment("virtio_balloon.free_page_hint", READABLE, 0, 4)]
    if len(r) > 4:
        out.append(_raw(READABLE, 4, len(r) - 4))
    return out


# -- scsi (virtio 1.4, 5.6.6) ---------------------------------------------------------------------

_DATAIN = {
    (t10.op["INQUIRY"], None): "virtio_scsi.inquiry",
    (t10.op["READ CAPACITY(10)"], None): "virtio_scsi.read_capacity10",
    (t10.op["SERVICE ACTION IN(16)"], t10.READ_CAPACITY_16): "virtio_scsi.read_capacity16",
    (t10.op["REPORT LUNS"], None): "virtio_scsi.report_luns",
}


def _scsi_params(c: Chain, pi_bytesin: int) -> dict[str, Any]:
    params: dict[str, Any] = {"cdb_size": c.cdb_size, "sense_size": c.sense_size, "pi_bytesin": pi_bytesin}
    if c.features is not None:
        params["features"] = c.features
    return params


def _scsi_request(c: Chain) -> list[Segment]:
    r = c.readable
    pi = c.has(VIRTIO_SCSI_F_T10_PI)
    cdb_at = scsi_layout.CMD_REQ_HDR_SIZE + (scsi_layout.PI_FIELDS_SIZE if pi else 0)
    need = cdb_at + max(c.cdb_size, 0)
    out = []
    if len(r) < need:
        if r:
            out.append(_raw(READABLE, 0, len(r)))
        out.extend(_scsi_response(c, None, 0))
        return out
    pi_bytesin = struct.unpack_from("<I", r, scsi_layout.CMD_REQ_HDR_SIZE + 4)[0] if pi else 0
    out.append(Segment("virtio_scsi.cmd_req", READABLE, 0, len(r), _scsi_params(c, pi_bytesin)))
    out.extend(_scsi_response(c, r[cdb_at:need], pi_bytesin))
    return out


def _scsi_response(c: Chain, cdb: bytes | None, pi_bytesin: int) -> list[Segment]:
    if not c.used or c.written is None:
        return []
    n = c.wrote()
    data = c.written[:n]
    if n < scsi_layout.CMD_RESP_HDR_SIZE:
        return [_raw(WRITTEN, 0, n)] if n else []
    _sense_len, _residual, _qualifier, status, response = struct.unpack_from("<IIHBB", data)
    out = [Segment("virtio_scsi.cmd_resp", WRITTEN, 0, n, _scsi_params(c, pi_bytesin))]
    datain_at = scsi_layout.CMD_RESP_HDR_SIZE + max(c.sense_size, 0) + \
        (pi_bytesin if c.has(VIRTIO_SCSI_F_T10_PI) else 0)
    if n > datain_at and cdb and response == 0 and status == t10.GOOD:
        key: tuple[int, int | None] = (cdb[0], None)
        if cdb[0] == t10.op["SERVICE ACTION IN(16)"] and len(cdb) > 1:
            key = (cdb[0], cdb[1] & 0x1F)
        evpd = cdb[0] == t10.op["INQUIRY"] and len(cdb) > 1 and cdb[1] & t10.CDB_FLAGS["EVPD"]
        layer = None if evpd else _DATAIN.get(key)
        if layer is not None:
            out.append(Segment(layer, WRITTEN, datain_at, n - datain_at, quiet=True))
    return out


def _scsi_control(c: Chain) -> list[Segment]:
    r = c.readable
    out = []
    kind = None
    if len(r) < 4:
        if r:
            out.append(_raw(READABLE, 0, len(r)))
    else:
        kind = struct.unpack_from("<I", r)[0]
        out.append(Segment(scsi_layout.ctrl_layer(r), READABLE, 0, len(r)))
    if c.used:
        n = c.wrote() if c.written is not None else 0
        at = 4 if kind in (1, 2) else 0
        if n > at:
            out.append(Segment(scsi_layout.ctrl_resp_layer(kind or 0), WRITTEN, 0, n))
    return out


def _scsi_event(c: Chain) -> list[Segment]:
    if not c.used or c.written is None:
        return []
    n = c.wrote()
    if n < scsi_layout.EVENT_SIZE:
        return [_raw(WRITTEN, 0, n)] if n else []
    return [Segment("virtio_scsi.event", WRITTEN, 0, n)]


# -- vsock (virtio 1.4, 5.10.6) -------------------------------------------------------------------

def _vsock_packet(c: Chain, tx: bool) -> list[Segment]:
    out = []
    if tx:
        part, n = READABLE, len(c.readable)
        packet = c.readable
    else:
        if c.readable:
            out.append(_raw(READABLE, 0, len(c.readable)))
        if not c.used or c.written is None:
            return out
        part, n = WRITTEN, c.wrote()
        packet = c.written[:n]
    if n < vsock_layout.HDR_SIZE:
        if n:
            out.append(_raw(part, 0, n))
        return out
    out.append(Segment("virtio_vsock.hdr", part, 0, n))
    length = struct.unpack_from("<I", packet, 24)[0]
    if tx:
        present = max(c.readable_total, n) - vsock_layout.HDR_SIZE
        end = min(vsock_layout.HDR_SIZE + length, n)
        if present > length and n > end:  # (requests shows an empty data tree when the capture stops sooner)
            out.append(_raw(part, end, n - end))
    return out


def _vsock_event(c: Chain) -> list[Segment]:
    if not c.used or c.written is None:
        return []
    n = c.wrote()
    if n < 4:
        return [_raw(WRITTEN, 0, n)] if n else []
    return [Segment("virtio_vsock.event", WRITTEN, 0, 4)]


_PLANS: dict[tuple[int, int], Any] = {
    (BLK, _R["REQUEST"]): _blk,
    (NET, _R["TX"]): _net_tx,
    (NET, _R["RX"]): _net_rx,
    (NET, _R["CONTROL"]): _net_ctrl,
    (CONSOLE, _R["TX"]): _console_tx,
    (CONSOLE, _R["RX"]): _console_rx,
    (CONSOLE, _R["CONTROL_TX"]): lambda c: _console_ctrl(c, True),
    (CONSOLE, _R["CONTROL_RX"]): lambda c: _console_ctrl(c, False),
    (RNG, _R["REQUEST"]): _rng,
    (BALLOON, _R["INFLATE"]): _balloon_array("virtio_balloon.pfns", 4),
    (BALLOON, _R["DEFLATE"]): _balloon_array("virtio_balloon.pfns", 4),
    (BALLOON, _R["STATS"]): _balloon_array("virtio_balloon.stats", 10),
    (BALLOON, _R["FREE_PAGE"]): _balloon_free_page,
    (BALLOON, _R["REPORTING"]): lambda c: [],
    (SCSI, _R["REQUEST"]): _scsi_request,
    (SCSI, _R["CONTROL"]): _scsi_control,
    (SCSI, _R["EVENT"]): _scsi_event,
    (VSOCK, _R["TX"]): lambda c: _vsock_packet(c, True),
    (VSOCK, _R["RX"]): lambda c: _vsock_packet(c, False),
    (VSOCK, _R["EVENT"]): _vsock_event,
}


def rx_buffers(c: Chain) -> int | None:
    """num_buffers of a net receive buffer that starts a packet (5.1.9.4), or None if it has none."""
    if c.device_type != NET or c.role != _R["RX"] or c.continuation or c.written is None:
        return None
    size = net_layout.net_hdr_size(c.features)
    if size < 12 or c.wrote() < size:
        return None
    return struct.unpack_from("<H", c.written, 10)[0]
