"""Block device requests (virtio 1.4, 5.2.6).

Readable part: the 16-byte header (``virtio_blk.req``: type, reserved, sector), then
the data of OUT / ZONE_APPEND or the 16-byte segments of DISCARD / WRITE_ZEROES /
SECURE_ERASE. Writable part: the data of IN (``virtio_blk.data``), GET_ID
(``virtio_blk.get_id``), GET_LIFETIME (``virtio_blk.lifetime``) or ZONE_REPORT
(``virtio_blk.zone_report``), then the status: the last writable byte, preceded for
ZONE_APPEND by ``append_sector`` (``virtio_blk.status``, 9 bytes).
"""

from __future__ import annotations

import struct

from ..dissectors import blk as layout
from .context import VIRTIO_F_ANY_LAYOUT
from .request import DeviceRequest, Parts, bytes_node, dissect, protocol_node, raw_tree

SECTION = "virtio 1.4, 5.2.6"
_HDR = struct.Struct("<IIQ")
_TYPE_NAMES = {value: name for name, value in layout.TYPE_NAMES.items()}
_STATUS_NAMES = {value: name for name, value in layout.STATUS_NAMES.items()}
_EOL_NAMES = {value: name for name, value in layout.PRE_EOL_INFO.items()}
T = layout.REQUEST_TYPES
IN, OUT = T["VIRTIO_BLK_T_IN"], T["VIRTIO_BLK_T_OUT"]
GET_ID, GET_LIFETIME = T["VIRTIO_BLK_T_GET_ID"], T["VIRTIO_BLK_T_GET_LIFETIME"]
ZONE_APPEND, ZONE_REPORT = T["VIRTIO_BLK_T_ZONE_APPEND"], T["VIRTIO_BLK_T_ZONE_REPORT"]
SCSI_TYPES = frozenset({T["VIRTIO_BLK_T_SCSI_CMD"], T["VIRTIO_BLK_T_SCSI_CMD_OUT"]})
#: Requests whose writable part carries data before the status (5.2.6)
READ_TYPES = frozenset({IN, GET_ID, GET_LIFETIME, ZONE_REPORT}) | SCSI_TYPES
LIFETIME_SIZE = 6  # 5.2.6: struct virtio_blk_lifetime


def type_name(value: int) -> str:
    """``OUT``, ``FLUSH|BARRIER``, or the number, as the virtio_blk.req summary names a type."""
    name = _TYPE_NAMES.get(value)
    if name is None:
        return str(value)
    return "|".join(part.removeprefix("VIRTIO_BLK_T_") for part in name.split("|"))


def status_name(value: int) -> str:
    name = _STATUS_NAMES.get(value)
    return name.removeprefix("VIRTIO_BLK_S_") if name else f"status={value}"


def decode(req: DeviceRequest, parts: Parts) -> None:
    readable = parts.readable
    if len(readable) < layout.REQ_HDR_SIZE:
        req.problem("SHORT_HEADER", f"the request header (type, reserved, sector) needs {layout.REQ_HDR_SIZE} "
                    f"device-readable bytes, the chain has {len(readable)}", SECTION, 0)
        req.summary = f"blk ? (header of {len(readable)} bytes)"
        if readable:
            req.defer(lambda r: raw_tree(readable, 0, "Block request header, short"), readable, 0)
        _raw_written(req, parts)
        return
    rtype, _reserved, sector = _HDR.unpack_from(readable)
    kind = rtype & ~layout.VIRTIO_BLK_T_BARRIER
    req.info.update(type=rtype, sector=sector)
    text = f"blk {type_name(rtype)}"
    if kind in layout.SECTOR_TYPES:
        text += f" sector={sector}"
    payload_len = len(readable) - layout.REQ_HDR_SIZE
    payload_total = max(parts.readable_total - layout.REQ_HDR_SIZE, payload_len)  # a capture may hold fewer
    if kind in layout.WRITE_TYPES:
        req.info["data_len"] = payload_total
        text += f" len={payload_total}"
    elif kind in layout.SEGMENT_TYPES:
        text += _segments(req, readable, payload_len)
    elif payload_total and kind not in SCSI_TYPES:
        req.problem("EXTRA_READABLE", f"{payload_total} device-readable bytes after the header: a "
                    f"{type_name(rtype)} request has no readable data", SECTION, layout.REQ_HDR_SIZE)
    _framing(req, parts)

    status_size = 9 if kind == ZONE_APPEND else 1
    writable = parts.writable_len
    data_len = None if writable is None else max(writable - status_size, 0)
    if kind in READ_TYPES and data_len is not None:
        req.info["data_len"] = data_len
        if kind in (IN, ZONE_REPORT):
            text += f" len={data_len}"
    elif data_len:
        req.note("EXTRA_WRITABLE", f"{data_len} device-writable bytes before the status: a {type_name(rtype)} "
                 "request writes the status only", SECTION)
    if writable is not None and writable < status_size and (parts.writable_lens is not None or parts.used):
        what = "append_sector and status (9 bytes)" if status_size == 9 else "the status byte"
        req.problem("NO_STATUS", f"no device-writable room for {what}: the chain has {writable} writable bytes",
                    SECTION)
    whole = len(readable)
    if kind in layout.SEGMENT_TYPES:  # whole segments only: a partial one stays raw (the problem is told)
        whole = layout.REQ_HDR_SIZE + payload_len // layout.DWZ_SEG_SIZE * layout.DWZ_SEG_SIZE
    req.defer(lambda r: dissect(r, "virtio_blk.req", readable[:whole], 0), readable, 0)
    if whole < len(readable):
        tail = readable[whole:]
        req.defer(lambda r: raw_tree(tail, whole, "Partial segment"), tail, whole)
    if parts.used:
        text += _response(req, parts, kind, status_size)
    req.summary = text


def _segments(req: DeviceRequest, readable: bytes, payload_len: int) -> str:
    count, rest = divmod(payload_len, layout.DWZ_SEG_SIZE)
    req.info["segments"] = count
    if rest:
        req.problem("SEGMENTS", f"{payload_len} bytes of segments is not a multiple of {layout.DWZ_SEG_SIZE}",
                    SECTION, layout.REQ_HDR_SIZE + count * layout.DWZ_SEG_SIZE)
    if count == 0:
        req.problem("SEGMENTS", "no segment: the data of discard, write zeroes and secure erase is one or more "
                    "segments", SECTION, layout.REQ_HDR_SIZE)
        return " segments=0"
    first, = struct.unpack_from("<Q", readable, layout.REQ_HDR_SIZE)
    total = sum(struct.unpack_from("<I", readable, layout.REQ_HDR_SIZE + 16 * i + 8)[0] for i in range(count))
    req.info["num_sectors"] = total
    return f" segments={count} sector={first} num_sectors={total}"


def _framing(req: DeviceRequest, parts: Parts) -> None:
    """5.2.6.4: a legacy driver without ANY_LAYOUT puts the header and the status in descriptors of their own."""
    ctx = parts.ctx
    if not ctx.legacy or ctx.has(VIRTIO_F_ANY_LAYOUT):
        return
    section = "virtio 1.4, 5.2.6.4"
    if parts.readable_lens and parts.readable_lens[0] != layout.REQ_HDR_SIZE:
        req.problem("FRAMING", f"legacy framing: the header must be a descriptor of its own "
                    f"({layout.REQ_HDR_SIZE} bytes), the first is {parts.readable_lens[0]}", section)
    if parts.writable_lens and parts.writable_lens[-1] != 1:
        req.problem("FRAMING", f"legacy framing: the status must be a separate 1-byte descriptor, the last is "
                    f"{parts.writable_lens[-1]} bytes", section)


def _response(req: DeviceRequest, parts: Parts, kind: int, status_size: int) -> str:
    written = parts.written
    base = parts.written_base
    writable = parts.writable_len or 0
    legacy = parts.ctx.legacy
    if parts.used_len is not None and not legacy and writable >= status_size and parts.used_len < writable:
        req.note("USED_LEN_SHORT", f"used length {parts.used_len} does not cover the status byte at writable "
                 f"offset {writable - 1}: a driver must not rely on bytes beyond it", "virtio 1.4, 2.7.8.3")
    tail = parts.written_tail
    if written is not None and parts.written_whole and len(written) >= status_size:
        status_at = len(written) - status_size  # the status closes the writable part
        data, status_bytes = written[:status_at], written[status_at:]
    elif tail is not None and len(tail) >= status_size and parts.writable_lens is not None \
            and writable >= status_size:
        status_at = writable - status_size  # a capture of the start and of the end of the writable part
        data, status_bytes = (written or b"")[:status_at], tail[-status_size:]
    else:
        if written is not None and writable >= status_size:
            req.note("NOT_CAPTURED", f"the capture holds {len(written)} of the {writable} device-writable bytes: "
                     "no status byte", SECTION)
        if written:
            req.defer(lambda r: raw_tree(written, base, "Written data"), written, base)
        return " -> ?"
    status = status_bytes[-1]
    req.response = status_name(status)
    req.info["status"] = status
    text = f" -> {req.response}"
    if kind == ZONE_APPEND:
        append_sector, = struct.unpack_from("<Q", status_bytes)
        req.info["append_sector"] = append_sector
        if status == 0:
            text += f" append_sector={append_sector}"
    elif kind == GET_ID and data:
        ident = data[:layout.VIRTIO_BLK_ID_BYTES].split(b"\0", 1)[0].decode("utf-8", "replace")
        req.info["id"] = ident
        if status == 0:
            text += f" id={ident!r}"
    elif kind == GET_LIFETIME and len(data) >= LIFETIME_SIZE and status == 0:
        eol, a, b = struct.unpack_from("<HHH", data)
        text += f" {_EOL_NAMES.get(eol, str(eol)).removeprefix('VIRTIO_BLK_PRE_EOL_INFO_')} a={a} b={b}"
    elif kind == ZONE_REPORT and len(data) >= 8 and status == 0:
        nr_zones, = struct.unpack_from("<Q", data)
        req.info["nr_zones"] = nr_zones
        text += f" nr_zones={nr_zones}"

    params = {"request_type": ZONE_APPEND} if kind == ZONE_APPEND else None

    def build(r: DeviceRequest) -> list:
        trees = []
        if data:
            trees.append(_data_tree(r, kind, data, base))
        trees.append(dissect(r, "virtio_blk.status", status_bytes, base + status_at, params))
        return trees

    req.defer(build, written or status_bytes, base)
    return text


def _data_tree(req: DeviceRequest, kind: int, data: bytes, base: int):
    """The data before the status: a layout for GET_ID / GET_LIFETIME / ZONE_REPORT, else the bytes read."""
    if kind == GET_ID:
        return dissect(req, "virtio_blk.get_id", data[:layout.VIRTIO_BLK_ID_BYTES], base)
    if kind == GET_LIFETIME:
        return dissect(req, "virtio_blk.lifetime", data[:LIFETIME_SIZE], base)
    if kind == ZONE_REPORT:
        return dissect(req, "virtio_blk.zone_report", data, base)
    node = bytes_node("virtio_blk.data", "Data", data, base)
    return protocol_node("virtio_blk", f"Virtio block data read ({len(data)} bytes)", base, [node])


def _raw_written(req: DeviceRequest, parts: Parts) -> None:
    if parts.written:
        written, base = parts.written, parts.written_base
        req.defer(lambda r: raw_tree(written, base, "Written data"), written, base)
