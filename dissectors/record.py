"""The vqtrace record: what one pcapng packet block of a vqtrace trace holds (docs/trace-format.md).

A trace is a pcapng file whose interfaces have link type LINKTYPE_USER0 (147). Each
enhanced packet block carries one event: a small versioned header, then a body that
depends on the event kind. The header also carries the dissection context a reader
needs to decode the raw bytes without the session that recorded them: the device
type, the queue and its role, the negotiated features (128 bits), the vhost-user
channel, and the SCSI host's CDB and sense sizes.

Layers: ``record`` (prefix ``vqtrace``): the header (``vqtrace.version``,
``vqtrace.kind``, ``vqtrace.queue``, ``vqtrace.role``, ``vqtrace.features`` ...) and
the body of each kind: ``vqtrace.message`` (VHOST_USER), ``vqtrace.notify.count``
(KICK, CALL), ``vqtrace.used.*``, ``vqtrace.chain.*``, ``vqtrace.desc.*``,
``vqtrace.readable`` and ``vqtrace.written`` (AVAIL, USED), ``vqtrace.config.*``
(CONFIG), ``vqtrace.anomaly.*`` (ANOMALY), ``vqtrace.layer`` / ``vqtrace.param.*`` /
``vqtrace.data`` (DATA).

Everything is little-endian. The numbers of kinds, directions, roles and flags are
stored in files: never renumber them. :data:`HEADER` and the ``*_STRUCT`` formats are
the same layout for hot loops (``struct``); tests hold them equal to the construct one.
"""

from __future__ import annotations

import struct
from typing import Any

from construct import Adapter, Array, Bytes, Enum, GreedyBytes, Hex, If, Struct, this

from .layers import Layer, register
from .tree import Field
from .types import Address, Bitmask, CString, enum_name, le16, le32, le64, more_data, u8

LINKTYPE_VQTRACE = 147  # LINKTYPE_USER0: a pcap link type reserved for private use
RECORD_VERSION = 1
HEADER_SIZE = 40  # bytes of a version 1 header; hdr_len may be larger (fields added later are skipped)

# Event kinds (vqtrace.events.EventKind has the same numbers)
KINDS = {
    "VHOST_USER": 1,  # a vhost-user message as it crossed the socket
    "KICK": 2,  # driver -> device notification
    "CALL": 3,  # device -> driver notification
    "AVAIL": 4,  # a chain made available
    "USED": 5,  # a chain used
    "CONFIG": 6,  # a device configuration space access
    "ANOMALY": 7,  # something the specification forbids
    "DATA": 8,  # bytes of a named layout (an inflight region, a ring area, ...)
}
DIRECTIONS = {"NONE": 0, "TO_DEVICE": 1, "TO_DRIVER": 2}
CHANNELS = {"FRONTEND": 0, "BACKEND": 1}  # vhost-user: the front-end's socket or the back-end's own channel

# Header flags
FLAG_QUEUE = 1  # the queue field is valid
FLAG_PACKED = 2  # the device negotiated VIRTIO_F_RING_PACKED (vhost-user VRING_BASE encoding)
FLAG_XEN_MMAP = 4  # VHOST_USER_PROTOCOL_F_XEN_MMAP was negotiated (memory regions carry two more fields)
FLAG_TRUNCATED = 8  # the recorder kept fewer bytes than the buffers held (a snap length)
HEADER_FLAGS = {"QUEUE": FLAG_QUEUE, "PACKED": FLAG_PACKED, "XEN_MMAP": FLAG_XEN_MMAP, "TRUNCATED": FLAG_TRUNCATED}

# Queue roles: what a queue carries, so a reader picks the device layouts without knowing
# the device's queue numbering (virtio 1.4, 5.x.2 "Virtqueues" of each device).
ROLES = {
    "UNKNOWN": 0,
    "REQUEST": 1,  # blk requestq, scsi requestq, rng requestq
    "RX": 2,  # net receiveq, vsock rx, console port receiveq
    "TX": 3,  # net transmitq, vsock tx, console port transmitq
    "CONTROL": 4,  # net controlq, scsi controlq
    "EVENT": 5,  # scsi eventq, vsock event
    "CONTROL_RX": 6,  # console control receiveq (device -> driver control messages)
    "CONTROL_TX": 7,  # console control transmitq (driver -> device control messages)
    "INFLATE": 8,  # balloon inflateq
    "DEFLATE": 9,  # balloon deflateq
    "STATS": 10,  # balloon statsq
    "FREE_PAGE": 11,  # balloon free_page_vq
    "REPORTING": 12,  # balloon reporting_vq
}
ROLE_NAMES = {value: name for name, value in ROLES.items()}

# virtio 1.4, 5 "Device Types": the IDs vqtrace names (Linux's VIRTIO_ID_* spellings)
DEVICE_TYPES = {
    "VIRTIO_ID_NET": 1, "VIRTIO_ID_BLOCK": 2, "VIRTIO_ID_CONSOLE": 3, "VIRTIO_ID_RNG": 4,
    "VIRTIO_ID_BALLOON": 5, "VIRTIO_ID_IOMEM": 6, "VIRTIO_ID_RPMSG": 7, "VIRTIO_ID_SCSI": 8,
    "VIRTIO_ID_9P": 9, "VIRTIO_ID_MAC80211_WLAN": 10, "VIRTIO_ID_RPROC_SERIAL": 11, "VIRTIO_ID_CAIF": 12,
    "VIRTIO_ID_MEMORY_BALLOON": 13, "VIRTIO_ID_GPU": 16, "VIRTIO_ID_CLOCK": 17, "VIRTIO_ID_INPUT": 18,
    "VIRTIO_ID_VSOCK": 19, "VIRTIO_ID_CRYPTO": 20, "VIRTIO_ID_SIGNAL_DIST": 21, "VIRTIO_ID_PSTORE": 22,
    "VIRTIO_ID_IOMMU": 23, "VIRTIO_ID_MEM": 24, "VIRTIO_ID_SOUND": 25, "VIRTIO_ID_FS": 26,
    "VIRTIO_ID_PMEM": 27, "VIRTIO_ID_RPMB": 28, "VIRTIO_ID_MAC80211_HWSIM": 29,
    "VIRTIO_ID_VIDEO_ENCODER": 30, "VIRTIO_ID_VIDEO_DECODER": 31, "VIRTIO_ID_SCMI": 32,
    "VIRTIO_ID_NITRO_SEC_MOD": 33, "VIRTIO_ID_I2C_ADAPTER": 34, "VIRTIO_ID_WATCHDOG": 35,
    "VIRTIO_ID_CAN": 36, "VIRTIO_ID_PARAM_SERV": 38, "VIRTIO_ID_AUDIO_POLICY": 39, "VIRTIO_ID_BT": 40,
    "VIRTIO_ID_GPIO": 41,
}
DEVICE_NAMES = {value: name for name, value in DEVICE_TYPES.items()}
NET, BLK, CONSOLE, RNG, BALLOON, SCSI, VSOCK = 1, 2, 3, 4, 5, 8, 19

# Chain flags (vqtrace.chain.flags)
CHAIN_WRAP = 1  # packed: the driver ring wrap counter the chain was made available with
CHAIN_UNKNOWN = 2  # USED: the used id matched no chain in flight (no descriptors follow)
# Anomaly flags
ANOMALY_HAS_ID = 1
ANOMALY_HAS_ADDRESS = 2

NO_QUEUE = 0xFFFF
TAIL_SIZE = 16  # how many last written bytes a record keeps when a snap length cuts the written bytes

#: struct formats of the fixed parts, for the writer's hot loop (tests hold them equal to the layout).
HEADER = struct.Struct("<BBBBHHHBBBxxxQQHHxxxx")
USED_STRUCT = struct.Struct("<IIHxx")
CHAIN_STRUCT = struct.Struct("<HHBxHII")
DESC_STRUCT = struct.Struct("<QIHHHHBxxx")
SIZE_STRUCT = struct.Struct("<I")
CONFIG_STRUCT = struct.Struct("<II")
ANOMALY_STRUCT = struct.Struct("<BBBxHxxIQ")
DESC_SIZE = DESC_STRUCT.size


class Text(CString):
    """UTF-8 text of a length given by an earlier field (invalid bytes replaced)."""

    def __init__(self, length: Any) -> None:
        Adapter.__init__(self, Bytes(length))
        self.size = None

    def _decode(self, obj: bytes, context: Any, path: Any) -> str:
        return obj.decode("utf-8", "replace")

    def _encode(self, obj: str, context: Any, path: Any) -> bytes:
        return obj.encode()


def has_anomaly_id(ctx: Any) -> bool:
    return bool(ctx.flags & ANOMALY_HAS_ID)


def has_anomaly_address(ctx: Any) -> bool:
    return bool(ctx.flags & ANOMALY_HAS_ADDRESS)


def no_anomaly_id(ctx: Any) -> bool:
    return not ctx.flags & ANOMALY_HAS_ID


def no_anomaly_address(ctx: Any) -> bool:
    return not ctx.flags & ANOMALY_HAS_ADDRESS


def has_written_tail(ctx: Any) -> bool:
    return ctx.tail_size > 0


def has_hdr_extra(ctx: Any) -> bool:
    return ctx.hdr_len > HEADER_SIZE


# One descriptor of the chain as the ring reader found it (vqtrace.model.Descriptor)
descriptor = Struct(
    "addr" / Address() * "Address",
    "len" / le32 * "Length",
    "flags" / Bitmask(le16, {"NEXT": 1, "WRITE": 2, "INDIRECT": 4, "AVAIL": 1 << 7, "USED": 1 << 15}) * "Flags",
    "index" / le16 * "Slot (descriptor table, packed ring or indirect table)",
    "next" / le16 * "Next (split)",
    "id" / le16 * "Buffer id (packed)",
    "in_indirect" / u8 * "In an indirect table",
    Bytes(3),  # padding
)

header = Struct(
    "version" / u8 * "Record version",
    "kind" / Enum(u8, **KINDS) * "Event kind",
    "direction" / Enum(u8, **DIRECTIONS) * "Direction",
    "flags" / Bitmask(u8, HEADER_FLAGS) * "Flags",
    "hdr_len" / le16 * "Header length",
    "queue" / le16 * "Queue",
    "device_type" / Enum(le16, **DEVICE_TYPES) * "Device type",
    "role" / Enum(u8, **ROLES) * "Queue role",
    "channel" / Enum(u8, **CHANNELS) * "vhost-user channel",
    "fds" / u8 * "File descriptors passed",
    Bytes(3),  # reserved
    "features" / Hex(le64) * "Negotiated features (bits 0-63)",
    "features_hi" / Hex(le64) * "Negotiated features (bits 64-127)",
    "cdb_size" / le16 * "SCSI CDB size",
    "sense_size" / le16 * "SCSI sense size",
    Bytes(4),  # reserved
    "hdr_extra" / If(has_hdr_extra, Bytes(this.hdr_len - HEADER_SIZE)) * "Header fields of a later version",
)

# The body of each kind, after hdr_len bytes of header. The bodies share the prefix
# ``vqtrace``: a record's fields are the header's and its body's.

# VHOST_USER: the message (header and payload) as it crossed the socket
vhost_user_body = Struct("message" / GreedyBytes * "vhost-user message")

# KICK, CALL: the eventfd counter, when the recorder read it
notify_body = Struct("notify" / Struct("count" / If(more_data("count"), le64) * "Eventfd counter") * "Notification")

# AVAIL, USED: the chain (virtio 1.4, 2.7.13 / 2.8.13), its descriptors and buffer bytes
_CHAIN = (
    "chain" / Struct(
        "id" / le16 * "Head id (split) or buffer id (packed)",
        "avail_idx" / le16 * "Available index (split) or ring slot (packed)",
        "flags" / Bitmask(u8, {"WRAP": CHAIN_WRAP, "UNKNOWN": CHAIN_UNKNOWN}) * "Chain flags",
        Bytes(1),  # padding
        "ndesc" / le16 * "Descriptors",
        "readable_len" / le32 * "Readable bytes",
        "writable_len" / le32 * "Writable bytes",
    ) * "Chain",
    "desc" / Array(this.chain.ndesc, descriptor) * "Descriptor",
    "readable_size" / le32 * "Readable bytes recorded",
    "readable" / Bytes(this.readable_size) * "Readable bytes",
    "written_size" / le32 * "Written bytes recorded",
    "written" / Bytes(this.written_size) * "Written bytes",
    # when a snap length cut the written bytes: their last ones (a blk status byte closes the part)
    "tail_size" / le32 * "Written tail recorded",
    "written_tail" / If(has_written_tail, Bytes(this.tail_size)) * "Last written bytes",
)
avail_body = Struct(*_CHAIN)
# USED: the used element (virtio 1.4, 2.7.8 / 2.8.21), then the chain it completed
used_body = Struct(
    "used" / Struct(
        "id" / le32 * "Id",
        "len" / le32 * "Length written",
        "idx" / le16 * "Used index (split) or ring slot (packed)",
        Bytes(2),  # padding
    ) * "Used element",
    *_CHAIN,
)

# CONFIG: a device configuration space access (direction: TO_DEVICE writes, TO_DRIVER reads)
config_body = Struct(
    "config" / Struct(
        "offset" / le32 * "Offset",
        "size" / le32 * "Size",
        "data" / Bytes(this.size) * "Bytes",
    ) * "Configuration access",
)

# ANOMALY: what the specification forbids, and the rule broken
anomaly_body = Struct(
    "anomaly" / Struct(
        "flags" / u8 * "Anomaly flags",
        "code_len" / u8 * "Code length",
        "section_len" / u8 * "Section length",
        Bytes(1),  # padding
        "message_len" / le16 * "Message length",
        Bytes(2),  # padding
        "id" / If(has_anomaly_id, le32) * "Chain or descriptor id",
        If(no_anomaly_id, Bytes(4)),  # the id's place, unused
        "address" / If(has_anomaly_address, Address()) * "Guest address",
        If(no_anomaly_address, Bytes(8)),  # the address's place, unused
        "code" / Text(this.code_len) * "Code",
        "section" / Text(this.section_len) * "Specification section",
        "message" / Text(this.message_len) * "Message",
    ) * "Anomaly",
)

# DATA: the bytes of a named layout and its parameters
data_body = Struct(
    "layer_len" / u8 * "Layer name length",
    "layer" / Text(this.layer_len) * "Layer",
    "nparams" / u8 * "Parameters",
    "param" / Array(this.nparams, Struct(
        "name_len" / u8 * "Name length",
        "name" / Text(this.name_len) * "Name",
        "value" / Hex(le64) * "Value (bits 0-63)",
        "value_hi" / Hex(le64) * "Value (bits 64-127)",
    )) * "Parameter",
    "data" / GreedyBytes * "Data",
)

#: The body layer of each kind.
BODY_LAYERS = {
    KINDS["VHOST_USER"]: "record.vhost_user",
    KINDS["KICK"]: "record.notify",
    KINDS["CALL"]: "record.notify",
    KINDS["AVAIL"]: "record.avail",
    KINDS["USED"]: "record.used",
    KINDS["CONFIG"]: "record.config",
    KINDS["ANOMALY"]: "record.anomaly",
    KINDS["DATA"]: "record.data",
}


def _summary(tree: Field) -> str:
    kind = enum_name(tree.find("vqtrace.kind"))
    queue = tree.find("vqtrace.queue")
    text = f"vqtrace {kind}"
    if queue is not None and tree["vqtrace.flags"] & FLAG_QUEUE:
        text += f" q={queue.value}"
    return text


_DOC = "vqtrace docs/trace-format.md"
register(Layer("record", header, "vqtrace record", _DOC, prefix="vqtrace", summary=_summary))
for _name, _body, _title in (
    ("record.vhost_user", vhost_user_body, "vqtrace vhost-user message record"),
    ("record.notify", notify_body, "vqtrace notification record"),
    ("record.avail", avail_body, "vqtrace available chain record"),
    ("record.used", used_body, "vqtrace used chain record"),
    ("record.config", config_body, "vqtrace configuration access record"),
    ("record.anomaly", anomaly_body, "vqtrace anomaly record"),
    ("record.data", data_body, "vqtrace layout data record"),
):
    register(Layer(_name, _body, _title, _DOC, prefix="vqtrace"))
