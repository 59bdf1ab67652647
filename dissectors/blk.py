"""Block device layouts (virtio 1.4, 5.2): requests, their responses, configuration.

A request buffer (5.2.6) is a device-readable part (``virtio_blk.req``: the header,
then the data of writes or the segments of discard / write zeroes / secure erase)
and a device-writable part (the data of reads, then the status byte). Layers:

- ``virtio_blk.req`` (prefix ``virtio_blk``): ``type``, ``reserved`` (ioprio in the
  legacy interface), ``sector``, then ``data`` (VIRTIO_BLK_T_OUT, ZONE_APPEND) or the
  ``dwz_seg`` segments (DISCARD, WRITE_ZEROES, SECURE_ERASE) up to the end of the data.
- ``virtio_blk.dwz_seg``: one ``struct virtio_blk_discard_write_zeroes`` segment.
- ``virtio_blk.status``: the last byte of the device-writable part. With the
  parameter ``request_type`` = VIRTIO_BLK_T_ZONE_APPEND (15) it is the zone append
  in-header of ``struct virtio_blk_req_za``: ``append_sector``, then ``status``.
- ``virtio_blk.get_id``, ``virtio_blk.lifetime``, ``virtio_blk.zone_report``: the
  data a GET_ID, GET_LIFETIME or ZONE_REPORT request reads (before the status byte).
- ``virtio_blk.config``: ``struct virtio_blk_config`` (5.2.4); fields after
  ``capacity`` exist only with some features, so the layout takes what the data holds.
"""

from __future__ import annotations

from typing import Any

from construct import Array, Bytes, Enum, GreedyBytes, GreedyRange, If, Struct

from .layers import Layer, register
from .tree import Field
from .types import Bitmask, CString, enum_int, enum_name, le16, le32, le64, more_data, u8

SECTOR_SIZE = 512  # 5.2.6: sector numbers count 512-byte units

# 5.2.6 Device Operation: request types (5.2.6.3 adds the legacy ones, marked below)
REQUEST_TYPES = {
    "VIRTIO_BLK_T_IN": 0,
    "VIRTIO_BLK_T_OUT": 1,
    "VIRTIO_BLK_T_SCSI_CMD": 2,  # legacy (5.2.6.3)
    "VIRTIO_BLK_T_SCSI_CMD_OUT": 3,  # legacy (5.2.6.3)
    "VIRTIO_BLK_T_FLUSH": 4,
    "VIRTIO_BLK_T_FLUSH_OUT": 5,  # legacy synonym of FLUSH (5.2.6.3)
    "VIRTIO_BLK_T_GET_ID": 8,
    "VIRTIO_BLK_T_GET_LIFETIME": 10,
    "VIRTIO_BLK_T_DISCARD": 11,
    "VIRTIO_BLK_T_WRITE_ZEROES": 13,
    "VIRTIO_BLK_T_SECURE_ERASE": 14,
    "VIRTIO_BLK_T_ZONE_APPEND": 15,
    "VIRTIO_BLK_T_ZONE_REPORT": 16,
    "VIRTIO_BLK_T_ZONE_OPEN": 18,
    "VIRTIO_BLK_T_ZONE_CLOSE": 20,
    "VIRTIO_BLK_T_ZONE_FINISH": 22,
    "VIRTIO_BLK_T_ZONE_RESET": 24,
    "VIRTIO_BLK_T_ZONE_RESET_ALL": 26,
}
# 5.2.6.3 legacy: the high bit of type asks for a barrier (VIRTIO_BLK_F_BARRIER)
VIRTIO_BLK_T_BARRIER = 0x80000000
TYPE_NAMES = {
    **REQUEST_TYPES,
    **{f"{name}|VIRTIO_BLK_T_BARRIER": value | VIRTIO_BLK_T_BARRIER for name, value in REQUEST_TYPES.items()},
}
VIRTIO_BLK_T_OUT = REQUEST_TYPES["VIRTIO_BLK_T_OUT"]
VIRTIO_BLK_T_ZONE_APPEND = REQUEST_TYPES["VIRTIO_BLK_T_ZONE_APPEND"]
#: Requests whose device-readable part carries data after the header (5.2.6: writes).
WRITE_TYPES = frozenset({VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_ZONE_APPEND})
#: Requests whose data is struct virtio_blk_discard_write_zeroes segments (5.2.6).
SEGMENT_TYPES = frozenset({REQUEST_TYPES[n] for n in
                           ("VIRTIO_BLK_T_DISCARD", "VIRTIO_BLK_T_WRITE_ZEROES", "VIRTIO_BLK_T_SECURE_ERASE")})
#: Requests that use ``sector`` (5.2.6: read, write and the single-zone operations).
SECTOR_TYPES = frozenset({REQUEST_TYPES[n] for n in (
    "VIRTIO_BLK_T_IN", "VIRTIO_BLK_T_OUT", "VIRTIO_BLK_T_ZONE_APPEND", "VIRTIO_BLK_T_ZONE_REPORT",
    "VIRTIO_BLK_T_ZONE_OPEN", "VIRTIO_BLK_T_ZONE_CLOSE", "VIRTIO_BLK_T_ZONE_FINISH", "VIRTIO_BLK_T_ZONE_RESET",
)})

# 5.2.6 status values, with the zoned ones
STATUS_NAMES = {
    "VIRTIO_BLK_S_OK": 0,
    "VIRTIO_BLK_S_IOERR": 1,
    "VIRTIO_BLK_S_UNSUPP": 2,
    "VIRTIO_BLK_S_ZONE_INVALID_CMD": 3,
    "VIRTIO_BLK_S_ZONE_UNALIGNED_WP": 4,
    "VIRTIO_BLK_S_ZONE_OPEN_RESOURCE": 5,
    "VIRTIO_BLK_S_ZONE_ACTIVE_RESOURCE": 6,
}

# 5.2.6 struct virtio_blk_lifetime: pre_eol_info values
PRE_EOL_INFO = {
    "VIRTIO_BLK_PRE_EOL_INFO_UNDEFINED": 0,
    "VIRTIO_BLK_PRE_EOL_INFO_NORMAL": 1,
    "VIRTIO_BLK_PRE_EOL_INFO_WARNING": 2,
    "VIRTIO_BLK_PRE_EOL_INFO_URGENT": 3,
}

# 5.2.6 zone descriptor: z_type and z_state values
ZONE_TYPES = {"VIRTIO_BLK_ZT_CONV": 1, "VIRTIO_BLK_ZT_SWR": 2, "VIRTIO_BLK_ZT_SWP": 3}
ZONE_STATES = {
    "VIRTIO_BLK_ZS_NOT_WP": 0,
    "VIRTIO_BLK_ZS_EMPTY": 1,
    "VIRTIO_BLK_ZS_IOPEN": 2,
    "VIRTIO_BLK_ZS_EOPEN": 3,
    "VIRTIO_BLK_ZS_CLOSED": 4,
    "VIRTIO_BLK_ZS_RDONLY": 13,
    "VIRTIO_BLK_ZS_FULL": 14,
    "VIRTIO_BLK_ZS_OFFLINE": 15,
}
# 5.2.4 zoned characteristics: model values
ZONED_MODELS = {"VIRTIO_BLK_Z_NONE": 0, "VIRTIO_BLK_Z_HM": 1, "VIRTIO_BLK_Z_HA": 2}

VIRTIO_BLK_ID_BYTES = 20  # 5.2.6: the device ID string is up to 20 bytes, NUL-padded
REQ_HDR_SIZE = 16  # 5.2.6: type, reserved, sector
DWZ_SEG_SIZE = 16  # 5.2.6: sizeof(struct virtio_blk_discard_write_zeroes)
ZONE_REPORT_HDR_SIZE = 64  # 5.2.6: nr_zones + reserved[56]
ZONE_DESCRIPTOR_SIZE = 64  # 5.2.6: sizeof(struct virtio_blk_zone_descriptor)

# 5.2.6 struct virtio_blk_discard_write_zeroes
dwz_seg = Struct(
    "sector" / le64 * "Sector",
    "num_sectors" / le32 * "Number of sectors",
    "flags" / Bitmask(le32, {"UNMAP": 1, "reserved": 0xFFFFFFFE}) * "Flags",
)


def _request_type(ctx: Any) -> int:
    return enum_int(ctx.type, TYPE_NAMES) & ~VIRTIO_BLK_T_BARRIER


# 5.2.6 struct virtio_blk_req, device-readable part (struct virtio_blk_req_za has the same)
virtio_blk_req = Struct(
    "type" / Enum(le32, **TYPE_NAMES) * "Type",
    "reserved" / le32 * "Reserved (legacy ioprio)",
    "sector" / le64 * "Sector",
    "data" / If(lambda c: _request_type(c) in WRITE_TYPES, GreedyBytes) * "Data",
    "dwz_seg" / If(lambda c: _request_type(c) in SEGMENT_TYPES, GreedyRange(dwz_seg)) * "Segment",
)


def _req_summary(tree: Field) -> str:
    p = tree.abbrev
    type_field = tree.find(f"{p}.type")
    text = "blk " + enum_name(type_field, "VIRTIO_BLK_T_")
    kind = (type_field.value if type_field is not None else 0) & ~VIRTIO_BLK_T_BARRIER
    if kind in SECTOR_TYPES:
        text += f" sector={tree[p + '.sector']}"
    segments = tree.find_all(f"{p}.dwz_seg.sector")
    if kind in SEGMENT_TYPES:
        text += f" segments={len(segments)}"
        if segments:
            text += f" sector={segments[0].value}"
    return text


def _is_zone_append(ctx: Any) -> bool:
    return ctx._params.get("request_type") == VIRTIO_BLK_T_ZONE_APPEND


# 5.2.6 the status byte, after the zone append in-header's append_sector for ZONE_APPEND
virtio_blk_status = Struct(
    "append_sector" / If(_is_zone_append, le64) * "Append sector",
    "status" / Enum(u8, **STATUS_NAMES) * "Status",
)


def _status_summary(tree: Field) -> str:
    p = tree.abbrev
    text = "blk status " + enum_name(tree.find(f"{p}.status"), "VIRTIO_BLK_S_")
    sector = tree.find(f"{p}.append_sector")
    return text + (f" append_sector={sector.value}" if sector is not None else "")


# 5.2.6 VIRTIO_BLK_T_GET_ID data: the device ID string
virtio_blk_get_id = Struct("id" / CString(VIRTIO_BLK_ID_BYTES) * "Device ID")

# 5.2.6 struct virtio_blk_lifetime
virtio_blk_lifetime = Struct(
    "pre_eol_info" / Enum(le16, **PRE_EOL_INFO) * "Pre-EOL info",
    "device_lifetime_est_typ_a" / le16 * "Lifetime estimate type A (SLC, 10% steps)",
    "device_lifetime_est_typ_b" / le16 * "Lifetime estimate type B (MLC, 10% steps)",
)

# 5.2.6 struct virtio_blk_zone_descriptor
zone_descriptor = Struct(
    "z_cap" / le64 * "Zone capacity",
    "z_start" / le64 * "Zone start",
    "z_wp" / le64 * "Zone write pointer",
    "z_type" / Enum(u8, **ZONE_TYPES) * "Zone type",
    "z_state" / Enum(u8, **ZONE_STATES) * "Zone state",
    "reserved" / Bytes(38) * "Reserved",
)

# 5.2.6 struct virtio_blk_zone_report: nr_zones counts the descriptors that follow
virtio_blk_zone_report = Struct(
    "nr_zones" / le64 * "Number of zones",
    "reserved" / Bytes(56) * "Reserved",
    "zones" / Array(lambda c: c.nr_zones, zone_descriptor) * "Zone",
)


def _opt(name: str, con: Any) -> Any:
    """A configuration field that exists only when the configuration space reaches it."""
    return name / If(more_data(name), con)


# 5.2.4 struct virtio_blk_config
virtio_blk_config = Struct(
    "capacity" / le64 * "Capacity (512-byte sectors)",
    _opt("size_max", le32) * "Max segment size",
    _opt("seg_max", le32) * "Max segments",
    _opt("geometry", Struct(
        "cylinders" / le16 * "Cylinders",
        "heads" / u8 * "Heads",
        "sectors" / u8 * "Sectors",
    )) * "Geometry",
    _opt("blk_size", le32) * "Block size",
    _opt("topology", Struct(
        "physical_block_exp" / u8 * "Logical blocks per physical block (log2)",
        "alignment_offset" / u8 * "Alignment offset",
        "min_io_size" / le16 * "Min I/O size (blocks)",
        "opt_io_size" / le32 * "Optimal I/O size (blocks)",
    )) * "Topology",
    _opt("writeback", u8) * "Writeback",
    _opt("unused0", Bytes(1)) * "Unused",
    _opt("num_queues", le16) * "Number of queues",
    _opt("max_discard_sectors", le32) * "Max discard sectors",
    _opt("max_discard_seg", le32) * "Max discard segments",
    _opt("discard_sector_alignment", le32) * "Discard sector alignment",
    _opt("max_write_zeroes_sectors", le32) * "Max write zeroes sectors",
    _opt("max_write_zeroes_seg", le32) * "Max write zeroes segments",
    _opt("write_zeroes_may_unmap", u8) * "Write zeroes may unmap",
    _opt("unused1", Bytes(3)) * "Unused",
    _opt("max_secure_erase_sectors", le32) * "Max secure erase sectors",
    _opt("max_secure_erase_seg", le32) * "Max secure erase segments",
    _opt("secure_erase_sector_alignment", le32) * "Secure erase sector alignment",
    _opt("zoned", Struct(
        "zone_sectors" / le32 * "Zone sectors",
        "max_open_zones" / le32 * "Max open zones",
        "max_active_zones" / le32 * "Max active zones",
        "max_append_sectors" / le32 * "Max append sectors",
        "write_granularity" / le32 * "Write granularity (bytes)",
        "model" / Enum(u8, **ZONED_MODELS) * "Zoned model",
        "unused2" / Bytes(3) * "Unused",
    )) * "Zoned characteristics",
)
BLK_CONFIG_SIZE = 96  # 5.2.4: every field present


def _config_summary(tree: Field) -> str:
    capacity = tree[tree.abbrev + ".capacity"]
    return f"blk config capacity={capacity} ({capacity * SECTOR_SIZE} bytes)"


register(Layer("virtio_blk.req", virtio_blk_req, "Virtio block request", "virtio 1.4, 5.2.6",
               prefix="virtio_blk", summary=_req_summary))
register(Layer("virtio_blk.dwz_seg", dwz_seg, "Discard / write zeroes / secure erase segment", "virtio 1.4, 5.2.6",
               summary=lambda t: f"blk segment sector={t[t.abbrev + '.sector']} "
                                 f"num_sectors={t[t.abbrev + '.num_sectors']}"))
register(Layer("virtio_blk.status", virtio_blk_status, "Virtio block request status", "virtio 1.4, 5.2.6",
               summary=_status_summary))
register(Layer("virtio_blk.get_id", virtio_blk_get_id, "Virtio block device ID", "virtio 1.4, 5.2.6",
               summary=lambda t: f"blk id {t[t.abbrev + '.id']!r}"))
register(Layer("virtio_blk.lifetime", virtio_blk_lifetime, "Virtio block device lifetime", "virtio 1.4, 5.2.6",
               summary=lambda t: "blk lifetime " + enum_name(t.find(t.abbrev + ".pre_eol_info"),
                                                            "VIRTIO_BLK_PRE_EOL_INFO_")))
register(Layer("virtio_blk.zone_report", virtio_blk_zone_report, "Virtio block zone report", "virtio 1.4, 5.2.6",
               summary=lambda t: f"blk zone report nr_zones={t[t.abbrev + '.nr_zones']}"))
register(Layer("virtio_blk.config", virtio_blk_config, "Virtio block device configuration", "virtio 1.4, 5.2.4",
               summary=_config_summary))
