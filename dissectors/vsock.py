"""Socket device layouts (virtio 1.4, 5.10): packet header and payload, events, configuration.

Layers:

- ``virtio_vsock.hdr`` (prefix ``virtio_vsock``): ``struct virtio_vsock_hdr`` (5.10.6,
  44 bytes, packed), then ``payload``: the first ``len`` bytes after the header
  (5.10.6.4 ``struct virtio_vsock_packet``). The payload is bounded by the data
  present: a header dissected without its payload descriptor, or a ``len`` larger than
  the buffer, shows the bytes there are and no error (the summary says how many are
  missing); bytes after ``len`` (unused receive buffer space, 5.10.6) are not shown.
  ``flags`` bits are named by ``op``: VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE/SEND for
  VIRTIO_VSOCK_OP_SHUTDOWN (5.10.6.5), VIRTIO_VSOCK_SEQ_EOM/EOR for VIRTIO_VSOCK_OP_RW
  on a SEQPACKET socket (5.10.6.6.1), a plain hex number otherwise.
- ``virtio_vsock.event``: ``struct virtio_vsock_event`` (5.10.6.7).
- ``virtio_vsock.config``: ``struct virtio_vsock_config`` (5.10.4).
- ``virtio_vsock.vsockmon``: Linux's ``struct af_vsockmon_hdr`` (include/uapi/linux/vsockmon.h),
  the 32-byte header before the virtio header in a LINKTYPE_VSOCK (271) capture, which
  Wireshark decodes natively; :func:`vsockmon_record` builds one.

virtio 1.4 defines two socket types, STREAM (1) and SEQPACKET (2); there is no DGRAM type
in the specification. Wireshark 4.0's native ``vsock`` dissector names the same header
fields ``vsock.virtio.*`` (:data:`WIRESHARK_FIELDS`).
"""

from __future__ import annotations

import struct
from typing import Any

from construct import Bytes, Enum, Hex, If, Struct, Switch

from .layers import Layer, register
from .tree import Field
from .types import Bitmask, bytes_left, enum_int, enum_name, le16, le32, le64

# 5.10.3 Feature bits
VIRTIO_VSOCK_F_STREAM = 0
VIRTIO_VSOCK_F_SEQPACKET = 1
VIRTIO_VSOCK_F_NO_IMPLIED_STREAM = 2

# 5.10.6.2 socket types
TYPES = {"VIRTIO_VSOCK_TYPE_STREAM": 1, "VIRTIO_VSOCK_TYPE_SEQPACKET": 2}
VIRTIO_VSOCK_TYPE_STREAM = TYPES["VIRTIO_VSOCK_TYPE_STREAM"]
VIRTIO_VSOCK_TYPE_SEQPACKET = TYPES["VIRTIO_VSOCK_TYPE_SEQPACKET"]

# 5.10.6 operations
OPS = {
    "VIRTIO_VSOCK_OP_INVALID": 0,
    "VIRTIO_VSOCK_OP_REQUEST": 1,
    "VIRTIO_VSOCK_OP_RESPONSE": 2,
    "VIRTIO_VSOCK_OP_RST": 3,
    "VIRTIO_VSOCK_OP_SHUTDOWN": 4,
    "VIRTIO_VSOCK_OP_RW": 5,
    "VIRTIO_VSOCK_OP_CREDIT_UPDATE": 6,
    "VIRTIO_VSOCK_OP_CREDIT_REQUEST": 7,
}
VIRTIO_VSOCK_OP_SHUTDOWN = OPS["VIRTIO_VSOCK_OP_SHUTDOWN"]
VIRTIO_VSOCK_OP_RW = OPS["VIRTIO_VSOCK_OP_RW"]

# 5.10.6.5: VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE and _SEND are *bit numbers* 0 and 1 (the spec's
# #defines are 0 and 1; Linux's VIRTIO_VSOCK_SHUTDOWN_RCV/SEND are the masks 1 and 2).
SHUTDOWN_FLAGS = {"SHUTDOWN_F_RECEIVE": 1 << 0, "SHUTDOWN_F_SEND": 1 << 1}
# 5.10.6.6.1: VIRTIO_VSOCK_SEQ_EOM (1 << 0) and VIRTIO_VSOCK_SEQ_EOR (1 << 1)
SEQ_FLAGS = {"SEQ_EOM": 1 << 0, "SEQ_EOR": 1 << 1}

# 5.10.6.7 event ids
EVENT_IDS = {"VIRTIO_VSOCK_EVENT_TRANSPORT_RESET": 0}

# 5.10.4 reserved CIDs (not a guest's CID); 2 is the host
VMADDR_CID_HOST = 2
RESERVED_CIDS = {0: "reserved", 1: "reserved", 2: "host", 0xFFFFFFFF: "reserved", 0xFFFFFFFFFFFFFFFF: "reserved"}

HDR_SIZE = 44  # 5.10.6: sizeof(struct virtio_vsock_hdr), packed
#: The header for hot loops (``struct``): src_cid, dst_cid, src_port, dst_port, len, type, op, flags,
#: buf_alloc, fwd_cnt; tests check it against the construct layout.
HDR_STRUCT = struct.Struct("<QQIIIHHIII")
HDR_OFFSETS = {  # 5.10.6: byte offset of each header field
    "src_cid": 0, "dst_cid": 8, "src_port": 16, "dst_port": 20, "len": 24, "type": 28, "op": 30,
    "flags": 32, "buf_alloc": 36, "fwd_cnt": 40,
}


def _flags_key(ctx: Any) -> str | None:
    op = enum_int(ctx.op, OPS)
    if op == VIRTIO_VSOCK_OP_SHUTDOWN:
        return "shutdown"
    if op == VIRTIO_VSOCK_OP_RW and enum_int(ctx.type, TYPES) == VIRTIO_VSOCK_TYPE_SEQPACKET:
        return "seq"
    return None


def _payload_present(ctx: Any) -> bool:
    if ctx.get("_building"):
        return ctx.get("payload") is not None
    return ctx.len > 0 and bytes_left(ctx) > 0


def _payload_len(ctx: Any) -> int:
    if ctx.get("_building"):
        return len(ctx.payload)
    return min(ctx.len, bytes_left(ctx))


# 5.10.6 struct virtio_vsock_hdr, then the payload (5.10.6.4 struct virtio_vsock_packet)
virtio_vsock_hdr = Struct(
    "src_cid" / le64 * "Source CID",
    "dst_cid" / le64 * "Destination CID",
    "src_port" / le32 * "Source port",
    "dst_port" / le32 * "Destination port",
    "len" / le32 * "Payload length",
    "type" / Enum(le16, **TYPES) * "Type",
    "op" / Enum(le16, **OPS) * "Operation",
    "flags" / Switch(_flags_key, {"shutdown": Bitmask(le32, SHUTDOWN_FLAGS), "seq": Bitmask(le32, SEQ_FLAGS)},
                     default=Hex(le32)) * "Flags",
    "buf_alloc" / le32 * "Receive buffer space (buf_alloc)",
    "fwd_cnt" / le32 * "Bytes received counter (fwd_cnt)",
    "payload" / If(_payload_present, Bytes(_payload_len)) * "Payload",
)

# 5.10.6.7 struct virtio_vsock_event
virtio_vsock_event = Struct("id" / Enum(le32, **EVENT_IDS) * "Event id")

# 5.10.4 struct virtio_vsock_config
virtio_vsock_config = Struct("guest_cid" / le64 * "Guest CID")

# Linux include/uapi/linux/vsockmon.h: enum af_vsockmon_op and af_vsockmon_transport
VSOCKMON_OPS = {
    "AF_VSOCK_OP_UNKNOWN": 0, "AF_VSOCK_OP_CONNECT": 1, "AF_VSOCK_OP_DISCONNECT": 2,
    "AF_VSOCK_OP_CONTROL": 3, "AF_VSOCK_OP_PAYLOAD": 4,
}
VSOCKMON_TRANSPORTS = {"AF_VSOCK_TRANSPORT_UNKNOWN": 0, "AF_VSOCK_TRANSPORT_NO_INFO": 1,
                       "AF_VSOCK_TRANSPORT_VIRTIO": 2}
LINKTYPE_VSOCK = 271  # pcap link type of af_vsockmon_hdr records
VSOCKMON_HDR_SIZE = 32
# The af_vsockmon op Linux reports for each virtio op (net/vmw_vsock/virtio_transport_common.c)
VSOCKMON_OP_OF = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 3, 7: 3}

# struct af_vsockmon_hdr, then `len` bytes of transport header (virtio_vsock_hdr) and the payload
vsockmon_hdr = Struct(
    "src_cid" / le64 * "Source CID",
    "dst_cid" / le64 * "Destination CID",
    "src_port" / le32 * "Source port",
    "dst_port" / le32 * "Destination port",
    "op" / Enum(le16, **VSOCKMON_OPS) * "Operation",
    "transport" / Enum(le16, **VSOCKMON_TRANSPORTS) * "Transport",
    "len" / le16 * "Transport header length",
    "reserved" / Bytes(2) * "Reserved",
)

# Wireshark 4.0 epan/dissectors/packet-vsock.c names the virtio header fields so (note
# "src_prot"/"dst_prot" for the ports); its value names are "Stream" for type 1 (no
# SEQPACKET) and, for op 7, "Credit response" where the spec says CREDIT_REQUEST.
WIRESHARK_FIELDS = {
    "virtio_vsock.src_cid": "vsock.virtio.src_cid",
    "virtio_vsock.dst_cid": "vsock.virtio.dst_cid",
    "virtio_vsock.src_port": "vsock.virtio.src_prot",
    "virtio_vsock.dst_port": "vsock.virtio.dst_prot",
    "virtio_vsock.len": "vsock.virtio.len",
    "virtio_vsock.type": "vsock.virtio.type",
    "virtio_vsock.op": "vsock.virtio.op",
    "virtio_vsock.flags": "vsock.virtio.flags",
    "virtio_vsock.buf_alloc": "vsock.virtio.buf_alloc",
    "virtio_vsock.fwd_cnt": "vsock.virtio.fwd_cnt",
    "virtio_vsock.payload": "vsock.payload",
}
WIRESHARK_OP_NAMES = {0: "Invalid", 1: "Request", 2: "Response", 3: "Rst", 4: "Shutdown", 5: "RW",
                      6: "Credit update", 7: "Credit response"}
WIRESHARK_TYPE_NAMES = {1: "Stream"}


def vsockmon_record(packet: bytes) -> bytes:
    """A LINKTYPE_VSOCK record for a virtio vsock packet (header, then payload), as Linux's vsockmon writes it.

    The payload (``len`` bytes, as many as ``packet`` holds) follows the two headers, as
    Linux's virtio_transport_build_skb() appends it.
    """
    if len(packet) < HDR_SIZE:
        raise ValueError(f"a virtio_vsock_hdr needs {HDR_SIZE} bytes, got {len(packet)}")
    src_cid, dst_cid, src_port, dst_port, length, _type, op = struct.unpack_from("<QQIIIHH", packet)
    mon_op = VSOCKMON_OP_OF.get(op, 0)
    head = struct.pack("<QQIIHHH2s", src_cid, dst_cid, src_port, dst_port, mon_op,
                       VSOCKMON_TRANSPORTS["AF_VSOCK_TRANSPORT_VIRTIO"], HDR_SIZE, b"\0\0")
    return head + packet[:HDR_SIZE] + packet[HDR_SIZE:HDR_SIZE + length]


def _hdr_summary(tree: Field) -> str:
    p = tree.abbrev
    op = tree.find(p + ".op")
    kind = tree.find(p + ".type")
    text = (f"vsock {enum_name(op, 'VIRTIO_VSOCK_OP_')} {tree[p + '.src_cid']}:{tree[p + '.src_port']} -> "
            f"{tree[p + '.dst_cid']}:{tree[p + '.dst_port']}")
    if kind is not None and kind.value != VIRTIO_VSOCK_TYPE_STREAM:
        name = enum_name(kind, "VIRTIO_VSOCK_TYPE_")
        text += f" type={name}" if name.isdigit() else f" {name}"
    length = tree[p + ".len"]
    if length or (op is not None and op.value == VIRTIO_VSOCK_OP_RW):
        text += f" len={length}"
        payload = tree.find(p + ".payload")
        present = len(payload.value) if payload is not None else 0
        if present < length:
            text += f" ({present} present)"
    flags = tree.find(p + ".flags")
    if flags is not None and flags.value:
        named = [c.label for c in flags.children if c.value is True]
        text += " flags=" + ("|".join(named) if named else f"0x{flags.value:x}")
    if op is not None and op.value in (1, 2, 6, 7):  # connection setup and credit packets
        text += f" buf_alloc={tree[p + '.buf_alloc']} fwd_cnt={tree[p + '.fwd_cnt']}"
    return text


def _config_summary(tree: Field) -> str:
    cid = tree[tree.abbrev + ".guest_cid"]
    note = RESERVED_CIDS.get(cid)
    return f"vsock config guest_cid={cid}" + (f" ({note}: not a valid guest CID)" if note else "")


def _vsockmon_summary(tree: Field) -> str:
    p = tree.abbrev
    return (f"vsockmon {enum_name(tree.find(p + '.op'), 'AF_VSOCK_OP_')} "
            f"{tree[p + '.src_cid']}:{tree[p + '.src_port']} -> {tree[p + '.dst_cid']}:{tree[p + '.dst_port']}")


register(Layer("virtio_vsock.hdr", virtio_vsock_hdr, "Virtio socket packet", "virtio 1.4, 5.10.6",
               prefix="virtio_vsock", summary=_hdr_summary))
register(Layer("virtio_vsock.event", virtio_vsock_event, "Virtio socket event", "virtio 1.4, 5.10.6.7",
               summary=lambda t: "vsock event " + enum_name(t.find(t.abbrev + ".id"), "VIRTIO_VSOCK_EVENT_")))
register(Layer("virtio_vsock.config", virtio_vsock_config, "Virtio socket device configuration",
               "virtio 1.4, 5.10.4", summary=_config_summary))
register(Layer("virtio_vsock.vsockmon", vsockmon_hdr, "Linux vsockmon capture header (LINKTYPE_VSOCK)",
               "Linux include/uapi/linux/vsockmon.h", summary=_vsockmon_summary))
