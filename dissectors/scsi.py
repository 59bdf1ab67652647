"""SCSI host device layouts (virtio 1.4, 5.6): requests, control queue, events, configuration.

Layers and their context parameters:

- ``virtio_scsi.cmd_req`` (prefix ``virtio_scsi``): the device-readable part of a
  request queue buffer, ``struct virtio_scsi_req_cmd`` (5.6.6.1): ``lun`` (target and
  LUN decoded), ``id`` (the tag), ``task_attr``, ``prio``, ``crn``, ``cdb`` (``cdb_size``
  bytes, parameter, default 32, dissected by operation code; see scsi_cdb), then
  ``dataout``. With VIRTIO_SCSI_F_T10_PI in the parameter ``features``, ``pi_bytesout``
  and ``pi_bytesin`` come *before* the CDB and ``pi_out`` after it: the spec's listing
  puts them after ``cdb``, but Linux (``struct virtio_scsi_cmd_req_pi``, the virtio-scsi
  driver and vhost-scsi), the only implementations, put them before, and so does vqtrace.
- ``virtio_scsi.cmd_resp`` (prefix ``virtio_scsi`` too: the two halves of one struct):
  the device-writable part: ``sense_len``, ``residual``, ``status_qualifier``, ``status``
  (SAM status), ``response`` (VIRTIO_SCSI_S_*), ``sense`` (``sense_size`` bytes,
  parameter, default 96; the sense data decoded when ``sense_len`` > 0), ``pi_in``
  (T10_PI: ``pi_bytesin`` bytes, parameter from the request) and ``datain``.
- ``virtio_scsi.ctrl_tmf`` / ``virtio_scsi.ctrl_tmf_resp``, ``virtio_scsi.ctrl_an`` /
  ``virtio_scsi.ctrl_an_resp``: controlq requests and responses (5.6.6.2);
  :func:`ctrl_layer` picks the request layer from ``type``.
- ``virtio_scsi.event``: ``struct virtio_scsi_event`` (5.6.6.3).
- ``virtio_scsi.config``: ``struct virtio_scsi_config`` (5.6.4).
- T10 data, standing alone: ``virtio_scsi.cdb``, ``virtio_scsi.sense``,
  ``virtio_scsi.inquiry``, ``virtio_scsi.read_capacity10``, ``virtio_scsi.read_capacity16``,
  ``virtio_scsi.report_luns``. Every SCSI field is under ``virtio_scsi.``: a CDB's fields are
  ``virtio_scsi.cdb.*`` and sense data's ``virtio_scsi.sense.*`` whether they stand alone
  or sit in a request or response, so one display filter finds both.
"""

from __future__ import annotations

import struct
from typing import Any

from construct import Bytes, Enum, If, IfThenElse, Padded, Struct

from . import scsi_cdb as t10
from .layers import Layer, register
from .tree import Field
from .types import Bitmask, bytes_left, enum_int, enum_name, le16, le32, le64, more_data, u8

# 5.6.3 Feature bits
VIRTIO_SCSI_F_INOUT = 0
VIRTIO_SCSI_F_HOTPLUG = 1
VIRTIO_SCSI_F_CHANGE = 2
VIRTIO_SCSI_F_T10_PI = 3

VIRTIO_SCSI_CDB_DEFAULT_SIZE = t10.CDB_DEFAULT_SIZE  # 5.6.4: cdb_size after reset
VIRTIO_SCSI_SENSE_DEFAULT_SIZE = t10.SENSE_DEFAULT_SIZE  # 5.6.4: sense_size after reset

# 5.6.6.1 response values of a request, and 5.6.6.2 those of the controlq
RESPONSES = {
    "VIRTIO_SCSI_S_OK": 0,
    "VIRTIO_SCSI_S_OVERRUN": 1,
    "VIRTIO_SCSI_S_ABORTED": 2,
    "VIRTIO_SCSI_S_BAD_TARGET": 3,
    "VIRTIO_SCSI_S_RESET": 4,
    "VIRTIO_SCSI_S_BUSY": 5,
    "VIRTIO_SCSI_S_TRANSPORT_FAILURE": 6,
    "VIRTIO_SCSI_S_TARGET_FAILURE": 7,
    "VIRTIO_SCSI_S_NEXUS_FAILURE": 8,
    "VIRTIO_SCSI_S_FAILURE": 9,
    "VIRTIO_SCSI_S_FUNCTION_SUCCEEDED": 10,
    "VIRTIO_SCSI_S_FUNCTION_REJECTED": 11,
    "VIRTIO_SCSI_S_INCORRECT_LUN": 12,
}
# 5.6.6.2 a TMF's response: 0 is VIRTIO_SCSI_S_FUNCTION_COMPLETE (the same number as OK)
TMF_RESPONSES = {**RESPONSES, "VIRTIO_SCSI_S_FUNCTION_COMPLETE": 0}

# 5.6.6.1 task_attr
TASK_ATTRS = {"VIRTIO_SCSI_S_SIMPLE": 0, "VIRTIO_SCSI_S_ORDERED": 1, "VIRTIO_SCSI_S_HEAD": 2, "VIRTIO_SCSI_S_ACA": 3}

# 5.6.6.2 controlq request types and task management functions
CTRL_TYPES = {"VIRTIO_SCSI_T_TMF": 0, "VIRTIO_SCSI_T_AN_QUERY": 1, "VIRTIO_SCSI_T_AN_SUBSCRIBE": 2}
TMF_SUBTYPES = {
    "VIRTIO_SCSI_T_TMF_ABORT_TASK": 0,
    "VIRTIO_SCSI_T_TMF_ABORT_TASK_SET": 1,
    "VIRTIO_SCSI_T_TMF_CLEAR_ACA": 2,
    "VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET": 3,
    "VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET": 4,
    "VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET": 5,
    "VIRTIO_SCSI_T_TMF_QUERY_TASK": 6,
    "VIRTIO_SCSI_T_TMF_QUERY_TASK_SET": 7,
}
# 5.6.6.2 asynchronous notification events (VIRTIO_SCSI_EVT_ASYNC_*), bit names without the prefix
ASYNC_EVENTS = {
    "OPERATIONAL_CHANGE": 2,
    "POWER_MGMT": 4,
    "EXTERNAL_REQUEST": 8,
    "MEDIA_CHANGE": 16,
    "MULTI_HOST": 32,
    "DEVICE_BUSY": 64,
}

# 5.6.6.3 events; bit 31 reports lost events
VIRTIO_SCSI_T_EVENTS_MISSED = 0x80000000
EVENTS = {
    "VIRTIO_SCSI_T_NO_EVENT": 0,
    "VIRTIO_SCSI_T_TRANSPORT_RESET": 1,
    "VIRTIO_SCSI_T_ASYNC_NOTIFY": 2,
    "VIRTIO_SCSI_T_PARAM_CHANGE": 3,
}
EVENT_NAMES = {
    **EVENTS,
    **{f"{name}|VIRTIO_SCSI_T_EVENTS_MISSED": value | VIRTIO_SCSI_T_EVENTS_MISSED for name, value in EVENTS.items()},
}
RESET_REASONS = {"VIRTIO_SCSI_EVT_RESET_HARD": 0, "VIRTIO_SCSI_EVT_RESET_RESCAN": 1, "VIRTIO_SCSI_EVT_RESET_REMOVED": 2}

# 5.6.6.1: the first byte of lun: 1 addresses target/LUN, 0xC1 (with 0x01) the REPORT LUNS well-known LU
LUN_FORMATS = {"TARGET_LUN": 0x01, "WELL_KNOWN_LU": 0xC1}
REPORT_LUNS_WLUN = bytes([0xC1, 0x01, 0, 0, 0, 0, 0, 0])

CMD_REQ_HDR_SIZE = 19  # 5.6.6.1: lun, id, task_attr, prio, crn (before the CDB)
PI_FIELDS_SIZE = 8  # 5.6.6.1: pi_bytesout, pi_bytesin
CMD_RESP_HDR_SIZE = t10.CMD_RESP_HDR_SIZE  # 5.6.6.1: sense_len, residual, status_qualifier, status, response
SCSI_CONFIG_SIZE = 36  # 5.6.4
EVENT_SIZE = 16  # 5.6.6.3: sizeof(struct virtio_scsi_event)
CTRL_TMF_SIZE = 24  # 5.6.6.2: type, subtype, lun, id
CTRL_AN_SIZE = 16  # 5.6.6.2: type, lun, event_requested


def lun_bytes(target: int, lun: int) -> bytes:
    """The 8-byte ``lun`` for ``target``/``lun`` (5.6.6.1: 1, target, flat-space LUN, zeros)."""
    if not (0 <= target <= 255 and 0 <= lun <= 0x3FFF):
        raise ValueError(f"target {target} / lun {lun} out of range (0-255 / 0-16383)")
    return bytes([1, target]) + struct.pack(">H", 0x4000 | lun) + bytes(4)


# 5.6.6.1 u8 lun[8]: "first byte set to 1, second byte set to target, third and fourth byte
# representing a single level LUN structure, followed by four zero bytes"
lun = Struct(
    "format" / Enum(u8, **LUN_FORMATS) * "LUN format (byte 0)",
    "target" / u8 * "Target (W-LUN 1 = REPORT LUNS when the format is WELL_KNOWN_LU)",
    "single_level" / t10.SINGLE_LEVEL_LUN * "Single level LUN structure",
    "reserved" / t10.reserved(4),
)


def _t10_pi(ctx: Any) -> bool:
    return bool(ctx._params.get("features", 0) >> VIRTIO_SCSI_F_T10_PI & 1)


def _pi_out_len(ctx: Any) -> int:
    if ctx.get("_building"):
        return len(ctx.pi_out)
    return min(ctx.pi_bytesout, bytes_left(ctx))


# 5.6.6.1 struct virtio_scsi_req_cmd, device-readable part
virtio_scsi_cmd_req = Struct(
    "lun" / lun * "LUN",
    "id" / le64 * "Command identifier (tag)",
    "task_attr" / Enum(u8, **TASK_ATTRS) * "Task attribute",
    "prio" / u8 * "Priority",
    "crn" / u8 * "Command reference number",
    "pi_bytesout" / If(_t10_pi, le32) * "PI bytes out",
    "pi_bytesin" / If(_t10_pi, le32) * "PI bytes in",
    t10.cdb_field("cdb"),
    "pi_out" / If(lambda c: _t10_pi(c) and (c.get("pi_out") is not None if c.get("_building")
                                            else c.pi_bytesout > 0 and bytes_left(c) > 0),
                  Bytes(_pi_out_len)) * "Protection information out",
    "dataout" / If(more_data("dataout"), Bytes(lambda c: len(c.dataout) if c.get("_building") else bytes_left(c)))
    * "Data out",
)


def _sense_window(ctx: Any) -> int:
    size = max(0, ctx._params.get("sense_size", VIRTIO_SCSI_SENSE_DEFAULT_SIZE))
    return size if ctx.get("_building") else min(size, bytes_left(ctx))


def _sense_present(ctx: Any) -> bool:
    if ctx.get("_building"):
        # a parsed empty sense is a Container holding only construct's private keys (``_io``)
        return any(not str(key).startswith("_") for key in ctx.get("sense") or {})
    return ctx.sense_len > 0 and _sense_window(ctx) > 0


def _pi_in_len(ctx: Any) -> int:
    if ctx.get("_building"):
        return len(ctx.pi_in)
    return min(max(0, ctx._params.get("pi_bytesin", 0)), bytes_left(ctx))


# 5.6.6.1 struct virtio_scsi_req_cmd, device-writable part
virtio_scsi_cmd_resp = Struct(
    "sense_len" / le32 * "Sense length",
    "residual" / le32 * "Residual",
    "status_qualifier" / le16 * "Status qualifier",
    "status" / Enum(u8, **t10.SCSI_STATUS) * "Status",
    "response" / Enum(u8, **RESPONSES) * "Response",
    "sense" / Padded(_sense_window, IfThenElse(_sense_present, t10.sense_field("sense"), Struct())) * "Sense data",
    "pi_in" / If(lambda c: _t10_pi(c) and (c.get("pi_in") is not None if c.get("_building")
                                           else _pi_in_len(c) > 0), Bytes(_pi_in_len)) * "Protection information in",
    "datain" / If(more_data("datain"), Bytes(lambda c: len(c.datain) if c.get("_building") else bytes_left(c)))
    * "Data in",
)

# 5.6.6.2 struct virtio_scsi_ctrl_tmf, device-readable part
virtio_scsi_ctrl_tmf = Struct(
    "type" / Enum(le32, **CTRL_TYPES) * "Type",
    "subtype" / Enum(le32, **TMF_SUBTYPES) * "Subtype",
    "lun" / lun * "LUN",
    "id" / le64 * "Command identifier (tag)",
)
# 5.6.6.2 struct virtio_scsi_ctrl_tmf, device-writable part
virtio_scsi_ctrl_tmf_resp = Struct("response" / Enum(u8, **TMF_RESPONSES) * "Response")

_ASYNC = Bitmask(le32, ASYNC_EVENTS)
# 5.6.6.2 struct virtio_scsi_ctrl_an, device-readable part
virtio_scsi_ctrl_an = Struct(
    "type" / Enum(le32, **CTRL_TYPES) * "Type",
    "lun" / lun * "LUN",
    "event_requested" / _ASYNC * "Events requested",
)
# 5.6.6.2 struct virtio_scsi_ctrl_an, device-writable part
virtio_scsi_ctrl_an_resp = Struct(
    "event_actual" / _ASYNC * "Events supported",
    "response" / Enum(u8, **RESPONSES) * "Response",
)


def _event(ctx: Any) -> int:
    if ctx.get("_sizing"):
        return 0  # every reason is a le32
    return enum_int(ctx.event, EVENT_NAMES) & ~VIRTIO_SCSI_T_EVENTS_MISSED


# 5.6.6.3 struct virtio_scsi_event; reason depends on event
virtio_scsi_event = Struct(
    "event" / Enum(le32, **EVENT_NAMES) * "Event",
    "lun" / lun * "LUN",
    "reason" / IfThenElse(
        lambda c: _event(c) == EVENTS["VIRTIO_SCSI_T_TRANSPORT_RESET"], Enum(le32, **RESET_REASONS),
        IfThenElse(lambda c: _event(c) == EVENTS["VIRTIO_SCSI_T_ASYNC_NOTIFY"], _ASYNC,
                   IfThenElse(lambda c: _event(c) == EVENTS["VIRTIO_SCSI_T_PARAM_CHANGE"],
                              # ASC in bits 0-7, ASCQ in bits 8-15
                              Bitmask(le32, {"ASC": 0x00FF, "ASCQ": 0xFF00}),
                              le32))) * "Reason",
)

# 5.6.4 struct virtio_scsi_config
virtio_scsi_config = Struct(
    "num_queues" / le32 * "Number of request queues",
    "seg_max" / le32 * "Max segments per command",
    "max_sectors" / le32 * "Max sectors (transfer size hint)",
    "cmd_per_lun" / le32 * "Max linked commands per LUN",
    "event_info_size" / le32 * "Event info size",
    "sense_size" / le32 * "Sense size",
    "cdb_size" / le32 * "CDB size",
    "max_channel" / le16 * "Max channel",
    "max_target" / le16 * "Max target",
    "max_lun" / le32 * "Max LUN",
)


def ctrl_layer(data: bytes) -> str:
    """The controlq request layer for ``data`` by its ``type`` (5.6.6.2); TMF when unknown or short."""
    kind = int.from_bytes(data[:4], "little") if len(data) >= 4 else 0
    return "virtio_scsi.ctrl_an" if kind in (1, 2) else "virtio_scsi.ctrl_tmf"


def ctrl_resp_layer(request_type: int) -> str:
    """The controlq response layer that answers a request of ``request_type``."""
    return "virtio_scsi.ctrl_an_resp" if request_type in (1, 2) else "virtio_scsi.ctrl_tmf_resp"


# ---------------------------------------------------------------------------------------
# Summaries (the info column of `vqtrace show`)

_LENGTHS = ("transfer_length8", "transfer_length16", "transfer_length32", "verification_length16",
            "verification_length32", "number_of_blocks16", "number_of_blocks32", "prefetch_length16",
            "prefetch_length32", "number_of_logical_blocks")
_ALLOCATION = ("allocation_length8", "allocation_length16", "allocation_length32")
_PARAMETER_LIST = ("parameter_list_length8", "parameter_list_length16", "parameter_list_length32")


def _first(tree: Field, base: str, names: tuple[str, ...]) -> Field | None:
    for name in names:
        node = tree.find(f"{base}.{name}")
        if node is not None:
            return node
    return None


def lun_text(tree: Field, base: str) -> str:
    """``lun=L`` (``lun=T:L`` with a non-zero target), or the well-known LU, of the lun subtree at ``base``."""
    fmt = tree.find(f"{base}.format")
    if fmt is None:
        return "lun=?"
    if fmt.value == LUN_FORMATS["WELL_KNOWN_LU"]:
        return "lun=REPORT_LUNS" if tree[f"{base}.target"] == 1 else f"lun=W-LUN:{tree[f'{base}.target']}"
    number = tree[f"{base}.single_level.lun"]
    target = tree[f"{base}.target"]
    return f"lun={target}:{number}" if target else f"lun={number}"


def cdb_text(tree: Field, base: str) -> str:
    """``READ(10) lba=2048 len=8`` for the CDB subtree at ``base``."""
    opcode = tree.find(f"{base}.opcode")
    if opcode is None:
        return "?"
    name = enum_name(opcode)
    if opcode.display.startswith("Unknown"):
        name = f"opcode=0x{opcode.value:02x}"
    action = tree.find(f"{base}.service_action")
    if action is not None and opcode.value == t10.op["SERVICE ACTION IN(16)"]:
        name = enum_name(action) if not action.display.startswith("Unknown") else f"{name}/0x{action.value:02x}"
    parts = [name]
    lba = _first(tree, base, ("lba21", "lba32", "lba64"))
    if lba is not None:
        value = lba.value & 0x1FFFFF if lba.abbrev.endswith("lba21") else lba.value
        parts.append(f"lba={value}")
    length = _first(tree, base, _LENGTHS)
    if length is not None:
        value = length.value or (256 if length.abbrev.endswith("transfer_length8") else 0)
        parts.append(f"len={value}")
    flags = tree.find(f"{base}.flags")
    if flags is not None:
        if tree.find(f"{base}.flags.evpd") is not None and flags.value & t10.CDB_FLAGS["EVPD"]:
            parts.append(f"evpd page=0x{tree[base + '.page_code']:02x}")
        if tree.find(f"{base}.flags.fua") is not None and flags.value & t10.CDB_FLAGS["FUA"]:
            parts.append("fua")
    alloc = _first(tree, base, _ALLOCATION)
    if alloc is not None:
        parts.append(f"alloc={alloc.value}")
    param = _first(tree, base, _PARAMETER_LIST)
    if param is not None:
        parts.append(f"param_len={param.value}")
    return " ".join(parts)


def _cmd_req_summary(tree: Field) -> str:
    p = tree.abbrev
    text = f"scsi {cdb_text(tree, p + '.cdb')} {lun_text(tree, p + '.lun')}"
    tag = tree.find(f"{p}.id")
    return text + (f" id={tag.value}" if tag is not None and tag.value else "")


def sense_text(tree: Field, base: str) -> str:
    """``ILLEGAL REQUEST 0x21/0x00 LOGICAL BLOCK ADDRESS OUT OF RANGE`` for the sense subtree at ``base``."""
    key = tree.find(f"{base}.flags.sense_key")
    if key is None:
        code = tree.find(f"{base}.response_code")
        return f"sense response_code=0x{code.value:02x}" if code is not None else ""
    text = enum_name(key)
    asc, ascq = tree.find(f"{base}.asc"), tree.find(f"{base}.ascq")
    if asc is not None and ascq is not None:
        text += f" 0x{asc.value:02x}/0x{ascq.value:02x} {tree[base + '.additional_sense']}"
    return text


def _cmd_resp_summary(tree: Field) -> str:
    p = tree.abbrev
    text = f"scsi resp {enum_name(tree.find(p + '.response'), 'VIRTIO_SCSI_S_')} {enum_name(tree.find(p + '.status'))}"
    sense = sense_text(tree, p + ".sense")
    if sense:
        text += f" [{sense}]"
    residual = tree.find(f"{p}.residual")
    if residual is not None and residual.value:
        text += f" residual={residual.value}"
    datain = tree.find(f"{p}.datain")
    if datain is not None:
        text += f" datain={len(datain.value)}"
    return text


def _tmf_summary(tree: Field) -> str:
    p = tree.abbrev
    subtype = enum_name(tree.find(p + ".subtype"), "VIRTIO_SCSI_T_TMF_")
    return f"scsi tmf {subtype} {lun_text(tree, p + '.lun')} id={tree[p + '.id']}"


def _an_summary(tree: Field) -> str:
    p = tree.abbrev
    events = tree.find(p + ".event_requested")
    names = "|".join(c.label for c in events.children if c.value is True) if events is not None else ""
    kind = enum_name(tree.find(p + ".type"), "VIRTIO_SCSI_T_")
    return f"scsi {kind} {lun_text(tree, p + '.lun')} events={names or '0'}"


def _an_resp_summary(tree: Field) -> str:
    p = tree.abbrev
    events = tree.find(p + ".event_actual")
    names = "|".join(c.label for c in events.children if c.value is True) if events is not None else ""
    return f"scsi an resp {enum_name(tree.find(p + '.response'), 'VIRTIO_SCSI_S_')} events={names or '0'}"


def _event_summary(tree: Field) -> str:
    p = tree.abbrev
    event = tree.find(p + ".event")
    text = "scsi event " + enum_name(event, "VIRTIO_SCSI_T_")
    kind = (event.value if event is not None else 0) & ~VIRTIO_SCSI_T_EVENTS_MISSED
    reason = tree.find(p + ".reason")
    if kind == EVENTS["VIRTIO_SCSI_T_TRANSPORT_RESET"]:
        text += " " + enum_name(reason, "VIRTIO_SCSI_EVT_RESET_")
    elif kind == EVENTS["VIRTIO_SCSI_T_PARAM_CHANGE"] and reason is not None:
        asc, ascq = reason.value & 0xFF, reason.value >> 8 & 0xFF
        text += f" 0x{asc:02x}/0x{ascq:02x} {t10.asc_ascq_name(asc, ascq)}"
    elif kind == EVENTS["VIRTIO_SCSI_T_ASYNC_NOTIFY"] and reason is not None:
        text += " " + ("|".join(c.label for c in reason.children if c.value is True) or "0")
    return f"{text} {lun_text(tree, p + '.lun')}"


def _config_summary(tree: Field) -> str:
    p = tree.abbrev
    return (f"scsi config num_queues={tree[p + '.num_queues']} max_target={tree[p + '.max_target']} "
            f"max_lun={tree[p + '.max_lun']} cdb_size={tree[p + '.cdb_size']} sense_size={tree[p + '.sense_size']}")


def _inquiry_summary(tree: Field) -> str:
    p = "virtio_scsi.inquiry"
    kind = enum_name(tree.find(p + ".peripheral.peripheral_device_type"))
    return (f"scsi inquiry {kind} {tree[p + '.vendor_identification']!r} {tree[p + '.product_identification']!r} "
            f"{tree[p + '.product_revision_level']!r}")


def _capacity_summary(tree: Field) -> str:
    p = tree.abbrev
    last, size = tree[p + ".returned_logical_block_address"], tree[p + ".logical_block_length"]
    return f"scsi capacity last_lba={last} block={size} ({(last + 1) * size} bytes)"


register(Layer("virtio_scsi.cmd_req", virtio_scsi_cmd_req, "Virtio SCSI command request", "virtio 1.4, 5.6.6.1",
               prefix="virtio_scsi", summary=_cmd_req_summary))
register(Layer("virtio_scsi.cmd_resp", virtio_scsi_cmd_resp, "Virtio SCSI command response", "virtio 1.4, 5.6.6.1",
               prefix="virtio_scsi", summary=_cmd_resp_summary))
register(Layer("virtio_scsi.ctrl_tmf", virtio_scsi_ctrl_tmf, "Virtio SCSI task management function",
               "virtio 1.4, 5.6.6.2", summary=_tmf_summary))
register(Layer("virtio_scsi.ctrl_tmf_resp", virtio_scsi_ctrl_tmf_resp, "Virtio SCSI task management response",
               "virtio 1.4, 5.6.6.2",
               summary=lambda t: "scsi tmf resp " + enum_name(t.find(t.abbrev + ".response"), "VIRTIO_SCSI_S_")))
register(Layer("virtio_scsi.ctrl_an", virtio_scsi_ctrl_an, "Virtio SCSI asynchronous notification query/subscribe",
               "virtio 1.4, 5.6.6.2", summary=_an_summary))
register(Layer("virtio_scsi.ctrl_an_resp", virtio_scsi_ctrl_an_resp, "Virtio SCSI asynchronous notification response",
               "virtio 1.4, 5.6.6.2", summary=_an_resp_summary))
register(Layer("virtio_scsi.event", virtio_scsi_event, "Virtio SCSI event", "virtio 1.4, 5.6.6.3",
               summary=_event_summary))
register(Layer("virtio_scsi.config", virtio_scsi_config, "Virtio SCSI device configuration", "virtio 1.4, 5.6.4",
               summary=_config_summary))

# T10 data standing alone. The CDB and the sense data are picked by peeking at their first
# bytes, which needs a Struct around them: these two layers are the protocol node
# ``virtio_scsi`` with one subtree, so their fields are the same as in cmd_req/cmd_resp.
register(Layer("virtio_scsi.cdb", Struct("cdb" / t10.cdb_switch("cdb") * "CDB"), "SCSI CDB",
               "virtio 1.4, 5.6.6.1; SPC-4 4.2, SBC-3 5", prefix="virtio_scsi",
               summary=lambda t: "scsi " + cdb_text(t, "virtio_scsi.cdb")))
register(Layer("virtio_scsi.sense", Struct("sense" / t10.sense_field("sense") * "Sense data"), "SCSI sense data",
               "virtio 1.4, 5.6.6.1; SPC-4 4.5", prefix="virtio_scsi",
               summary=lambda t: "scsi sense " + sense_text(t, "virtio_scsi.sense")))
register(Layer("virtio_scsi.inquiry", t10.inquiry_data, "SCSI standard INQUIRY data", "SPC-4 6.6.2",
               summary=_inquiry_summary))
register(Layer("virtio_scsi.read_capacity10", t10.read_capacity10_data, "SCSI READ CAPACITY (10) data",
               "SBC-3 5.16.2", summary=_capacity_summary))
register(Layer("virtio_scsi.read_capacity16", t10.read_capacity16_data, "SCSI READ CAPACITY (16) data",
               "SBC-3 5.16.2", summary=_capacity_summary))
register(Layer("virtio_scsi.report_luns", t10.report_luns_data, "SCSI REPORT LUNS data", "SPC-4 6.33",
               summary=lambda t: f"scsi report luns {len(t.find_all('virtio_scsi.report_luns.lun')) - 1} LUNs"))
