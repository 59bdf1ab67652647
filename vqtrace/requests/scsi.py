"""SCSI host device requests (virtio 1.4, 5.6.6): request queues, controlq, eventq.

Request queues: ``virtio_scsi.cmd_req`` readable (lun, id, task attribute, the CDB in
``cdb_size`` bytes, dataout), ``virtio_scsi.cmd_resp`` writable (sense_len, residual,
status, response, ``sense_size`` bytes of sense, datain). The datain of a successful
INQUIRY, READ CAPACITY (10)/(16) or REPORT LUNS is also shown decoded
(``virtio_scsi.inquiry``, ...). The controlq carries task management functions and
asynchronous notification queries/subscriptions (5.6.6.2), the eventq events (5.6.6.3).
"""

from __future__ import annotations

import struct

from ..dissectors import scsi as layout
from ..dissectors import scsi_cdb as t10
from ..dissectors.errors import DissectError
from ..dissectors.layers import get_layer
from .context import VIRTIO_SCSI_F_T10_PI
from .request import DeviceRequest, Parts, dissect, raw_tree

REQUEST_SECTION = "virtio 1.4, 5.6.6.1"
CONTROL_SECTION = "virtio 1.4, 5.6.6.2"
EVENT_SECTION = "virtio 1.4, 5.6.6.3"
_RESPONSES = {value: name.removeprefix("VIRTIO_SCSI_S_") for name, value in layout.RESPONSES.items()}
_TMF_RESPONSES = {**_RESPONSES, 0: "FUNCTION_COMPLETE"}
_STATUS = {value: name for name, value in t10.SCSI_STATUS.items()}
_RESP = struct.Struct("<IIHBB")  # sense_len, residual, status_qualifier, status, response
OP = t10.OPCODES
# The read/write CDBs summarised without a tree: opcode -> CDB length
_RW = {
    OP["READ(6)"]: 6, OP["WRITE(6)"]: 6,
    OP["READ(10)"]: 10, OP["WRITE(10)"]: 10,
    OP["READ(12)"]: 12, OP["WRITE(12)"]: 12,
    OP["READ(16)"]: 16, OP["WRITE(16)"]: 16,
}
# A successful command whose datain has a layout: (opcode, service action or None) -> layer
_DATAIN_LAYERS = {
    (OP["INQUIRY"], None): "virtio_scsi.inquiry",
    (OP["READ CAPACITY(10)"], None): "virtio_scsi.read_capacity10",
    (OP["SERVICE ACTION IN(16)"], t10.READ_CAPACITY_16): "virtio_scsi.read_capacity16",
    (OP["REPORT LUNS"], None): "virtio_scsi.report_luns",
}


def lun_text(lun: bytes) -> str:
    """``lun=0``, ``lun=2:5`` or ``lun=REPORT_LUNS`` from the 8-byte lun field, as the layer's summary writes it."""
    fmt, target = lun[0], lun[1]
    if fmt == layout.LUN_FORMATS["WELL_KNOWN_LU"]:
        return "lun=REPORT_LUNS" if target == 1 else f"lun=W-LUN:{target}"
    number = struct.unpack_from(">H", lun, 2)[0] & 0x3FFF
    return f"lun={target}:{number}" if target else f"lun={number}"


def rw_cdb_text(cdb: bytes) -> str | None:
    """``READ(10) lba=2048 len=8`` for a READ/WRITE (6/10/12/16) CDB, None for any other command."""
    size = _RW.get(cdb[0]) if cdb else None
    if size is None or len(cdb) < size:
        return None
    name = t10.OPCODE_NAMES[cdb[0]]
    if size == 6:
        lba = int.from_bytes(cdb[1:4], "big") & 0x1FFFFF
        return f"{name} lba={lba} len={cdb[4] or 256}"
    if size == 10:
        lba, length = struct.unpack_from(">I", cdb, 2)[0], struct.unpack_from(">H", cdb, 7)[0]
    elif size == 12:
        lba, length = struct.unpack_from(">II", cdb, 2)
    else:
        lba, length = struct.unpack_from(">QI", cdb, 2)
    text = f"{name} lba={lba} len={length}"
    return text + " fua" if cdb[1] & t10.CDB_FLAGS["FUA"] else text


def _params(parts: Parts, pi_bytesin: int = 0) -> dict:
    ctx = parts.ctx
    params = {"cdb_size": ctx.cdb_size, "sense_size": ctx.sense_size, "pi_bytesin": pi_bytesin}
    if ctx.features is not None:
        params["features"] = ctx.features
    return params


def decode_request(req: DeviceRequest, parts: Parts) -> None:
    ctx = parts.ctx
    readable = parts.readable
    pi = ctx.has(VIRTIO_SCSI_F_T10_PI)
    cdb_at = layout.CMD_REQ_HDR_SIZE + (layout.PI_FIELDS_SIZE if pi else 0)
    need = cdb_at + max(ctx.cdb_size, 0)
    if len(readable) < need:
        req.problem("SHORT_HEADER", f"virtio_scsi_req_cmd needs {need} device-readable bytes (the CDB takes "
                    f"cdb_size={ctx.cdb_size}), the chain has {len(readable)}", REQUEST_SECTION, 0)
        req.summary = f"scsi ? (request of {len(readable)} bytes)"
        if readable:
            req.defer(lambda r: raw_tree(readable, 0, "SCSI request, short"), readable, 0)
        _response(req, parts, None, 0)
        return
    lun, tag = readable[:8], struct.unpack_from("<Q", readable, 8)[0]
    pi_bytesout, pi_bytesin = struct.unpack_from("<II", readable, layout.CMD_REQ_HDR_SIZE) if pi else (0, 0)
    cdb = readable[cdb_at:need]
    dataout = max(max(parts.readable_total, len(readable)) - need - pi_bytesout, 0)
    req.info.update(opcode=cdb[0] if cdb else None, id=tag, data_out=dataout)
    params = _params(parts, pi_bytesin)
    fast = rw_cdb_text(cdb)
    if fast is not None:
        req.summary = f"scsi {fast} {lun_text(lun)}" + (f" id={tag}" if tag else "")
        req.defer(lambda r: dissect(r, "virtio_scsi.cmd_req", readable, 0, params), readable, 0)
    else:
        tree = dissect(req, "virtio_scsi.cmd_req", readable, 0, params)
        if tree.abbrev == "data" or not cdb:
            opcode = f"opcode=0x{cdb[0]:02x}" if cdb else f"no CDB (cdb_size={ctx.cdb_size})"
            req.summary = f"scsi {opcode} {lun_text(lun)}"
        else:
            req.summary = get_layer("virtio_scsi.cmd_req").summary(tree)
        req.defer(lambda r: tree)
    _response(req, parts, cdb, pi_bytesin)


def _response(req: DeviceRequest, parts: Parts, cdb: bytes | None, pi_bytesin: int) -> None:
    ctx = parts.ctx
    writable = parts.writable_len
    if writable is not None and writable < layout.CMD_RESP_HDR_SIZE and parts.writable_lens is not None:
        req.problem("NO_RESPONSE", f"virtio_scsi_req_cmd's device-writable part needs at least "
                    f"{layout.CMD_RESP_HDR_SIZE} bytes, the chain has {writable}", REQUEST_SECTION)
    if not parts.used:
        return
    if parts.written is None:
        req.summary += " -> ?"
        return
    data, base = parts.device_wrote(), parts.written_base
    if len(data) < layout.CMD_RESP_HDR_SIZE:
        req.problem("SHORT_RESPONSE", f"the device wrote {len(data)} bytes, fewer than the "
                    f"{layout.CMD_RESP_HDR_SIZE}-byte response header", REQUEST_SECTION, base)
        req.summary += " -> ?"
        if data:
            req.defer(lambda r: raw_tree(data, base, "SCSI response, short"), data, base)
        return
    sense_len, residual, _qualifier, status, response = _RESP.unpack_from(data)
    req.info.update(status=status, response=response, residual=residual, sense_len=sense_len)
    if response != 0:
        word = _RESPONSES.get(response, f"response={response}")
    else:
        word = _STATUS.get(status, f"status=0x{status:02x}")
    req.response = word
    text = f" -> {word}"
    sense_at = layout.CMD_RESP_HDR_SIZE
    if sense_len:
        sense = data[sense_at:sense_at + min(sense_len, max(ctx.sense_size, 0))]
        if sense:
            try:
                tree = get_layer("virtio_scsi.sense").dissect(sense, base=base + sense_at)
                shown = layout.sense_text(tree, "virtio_scsi.sense")
            except DissectError:
                shown = "sense ?"
            if shown:
                text += f" [{shown}]"
    if residual:
        text += f" residual={residual}"
    datain_at = sense_at + max(ctx.sense_size, 0) + (pi_bytesin if ctx.has(VIRTIO_SCSI_F_T10_PI) else 0)
    datain = data[datain_at:]
    req.info["data_in"] = len(datain)
    if datain:
        text += f" datain={len(datain)}"
    req.summary += text
    params = _params(parts, pi_bytesin)

    def build(r: DeviceRequest) -> list:
        trees = [dissect(r, "virtio_scsi.cmd_resp", data, base, params)]
        if datain and cdb and response == 0 and status == t10.GOOD:
            extra = _datain_tree(r, cdb, datain, base + datain_at)
            if extra is not None:
                trees.append(extra)
        return trees

    req.defer(build, data, base)


def _datain_tree(req: DeviceRequest, cdb: bytes, datain: bytes, base: int):
    key = (cdb[0], None)
    if cdb[0] == OP["SERVICE ACTION IN(16)"] and len(cdb) > 1:
        key = (cdb[0], cdb[1] & 0x1F)
    if cdb[0] == OP["INQUIRY"] and len(cdb) > 1 and cdb[1] & t10.CDB_FLAGS["EVPD"]:
        return None  # a VPD page: its bytes stay in datain
    name = _DATAIN_LAYERS.get(key)
    if name is None:
        return None
    try:
        return get_layer(name).dissect(datain, base=base)
    except DissectError as err:  # short allocation lengths cut these legitimately: a note, the bytes stay in datain
        req.note("DATAIN", f"datain not decoded: {err}", "SPC-4 / SBC-3", err.offset)
        return None


def decode_control(req: DeviceRequest, parts: Parts) -> None:
    readable = parts.readable
    if len(readable) < 4:
        req.problem("SHORT_HEADER", f"a controlq request needs its 4-byte type, the buffer has {len(readable)}",
                    CONTROL_SECTION, 0)
        req.summary = f"scsi ctrl ? ({len(readable)} bytes)"
        trees = [raw_tree(readable, 0, "SCSI control request, short")] if readable else []
        kind = None
    else:
        kind, = struct.unpack_from("<I", readable)
        req.info["type"] = kind
        if kind not in layout.CTRL_TYPES.values():
            req.problem("UNKNOWN_TYPE", f"controlq request type {kind} is none of TMF, AN_QUERY, AN_SUBSCRIBE",
                        CONTROL_SECTION, 0)
        name = layout.ctrl_layer(readable)
        tree = dissect(req, name, readable, 0)
        req.summary = get_layer(name).summary(tree) if tree.abbrev != "data" else f"scsi ctrl type={kind}"
        trees = [tree]
    if parts.used:
        data, base = (parts.device_wrote(), parts.written_base) if parts.written is not None else (b"", 0)
        an = kind in (1, 2)
        at = 4 if an else 0
        if len(data) > at:
            word = (_RESPONSES if an else _TMF_RESPONSES).get(data[at], f"response={data[at]}")
            req.response = word
            req.info["response"] = data[at]
            req.summary += f" -> {word}"
            trees.append(dissect(req, layout.ctrl_resp_layer(kind or 0), data, base))
        else:
            req.summary += " -> ?"
            if parts.written is not None:
                req.problem("SHORT_RESPONSE", f"the device wrote {len(data)} bytes, no response byte",
                            CONTROL_SECTION, base)
    req.defer(lambda r: trees)


def decode_event(req: DeviceRequest, parts: Parts) -> None:
    writable = parts.writable_len
    if parts.readable:
        req.problem("READABLE", f"{len(parts.readable)} device-readable bytes on the eventq, whose buffers must be "
                    "device-writable", "virtio 1.4, 5.6.6.3.1")
    if writable is not None and writable < layout.EVENT_SIZE and parts.writable_lens is not None:
        req.problem("SHORT_BUFFER", f"an eventq buffer must hold struct virtio_scsi_event ({layout.EVENT_SIZE} "
                    f"bytes), this one has {writable}", "virtio 1.4, 5.6.6.3.1")
    if not parts.used:
        req.summary = f"scsi eventq buffer {writable or 0} bytes"
        return
    if parts.written is None:
        req.summary = "scsi event (not captured)"
        return
    data, base = parts.device_wrote(), parts.written_base
    if len(data) < layout.EVENT_SIZE:
        req.problem("SHORT_EVENT", f"the device wrote {len(data)} bytes of a {layout.EVENT_SIZE}-byte event",
                    EVENT_SECTION, base)
        req.summary = f"scsi event ? ({len(data)} bytes)"
        if data:
            req.defer(lambda r: raw_tree(data, base, "SCSI event, short"), data, base)
        return
    tree = dissect(req, "virtio_scsi.event", data, base)
    req.info["event"] = struct.unpack_from("<I", data)[0]
    req.summary = get_layer("virtio_scsi.event").summary(tree) if tree.abbrev != "data" else "scsi event ?"
    req.defer(lambda r: tree)
