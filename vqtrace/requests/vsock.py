"""Socket device requests (virtio 1.4, 5.10.6): packets on rx / tx, events on the event queue.

A packet is ``struct virtio_vsock_hdr`` (44 bytes) then ``len`` bytes of payload
(``virtio_vsock.hdr``, payload included): device-readable on tx, written by the device
into an rx buffer. The event queue's buffers receive ``struct virtio_vsock_event``.
"""

from __future__ import annotations

from ..dissectors import vsock as layout
from ..dissectors.layers import get_layer
from .request import DeviceRequest, Parts, dissect, raw_tree

SECTION = "virtio 1.4, 5.10.6"
PACKET_SECTION = "virtio 1.4, 5.10.6.4"
_OPS = {value: name.removeprefix("VIRTIO_VSOCK_OP_") for name, value in layout.OPS.items()}
_TYPES = {value: name.removeprefix("VIRTIO_VSOCK_TYPE_") for name, value in layout.TYPES.items()}


def packet_summary(packet: bytes) -> str:
    """``RW 3:1024 -> 2:5000 len=5``: the virtio_vsock.hdr summary without its ``vsock `` prefix (struct only)."""
    src_cid, dst_cid, src_port, dst_port, length, kind, op, flags, buf_alloc, fwd_cnt = \
        layout.HDR_STRUCT.unpack_from(packet)
    text = f"{_OPS.get(op, str(op))} {src_cid}:{src_port} -> {dst_cid}:{dst_port}"
    if kind != layout.VIRTIO_VSOCK_TYPE_STREAM:
        name = _TYPES.get(kind)
        text += f" {name}" if name else f" type={kind}"
    if length or op == layout.VIRTIO_VSOCK_OP_RW:
        text += f" len={length}"
        present = min(length, len(packet) - layout.HDR_SIZE)
        if present < length:
            text += f" ({present} present)"
    if flags:
        if op == layout.VIRTIO_VSOCK_OP_SHUTDOWN:
            names = layout.SHUTDOWN_FLAGS
        elif op == layout.VIRTIO_VSOCK_OP_RW and kind == layout.VIRTIO_VSOCK_TYPE_SEQPACKET:
            names = layout.SEQ_FLAGS
        else:
            names = {}
        named = [name for name, mask in names.items() if flags & mask]
        text += " flags=" + ("|".join(named) if named else f"0x{flags:x}")
    if op in (1, 2, 6, 7):  # connection setup and credit packets
        text += f" buf_alloc={buf_alloc} fwd_cnt={fwd_cnt}"
    return text


def decode_packet(req: DeviceRequest, parts: Parts) -> None:
    tx = parts.role.kind == "tx"
    word = "TX" if tx else "RX"
    if tx:
        packet, base = parts.readable, 0
        if parts.writable_len:
            req.problem("WRITABLE_TX", f"{parts.writable_len} device-writable bytes on the tx queue", PACKET_SECTION)
    else:
        if parts.readable:
            req.problem("READABLE_RX", f"{len(parts.readable)} device-readable bytes on the rx queue",
                        PACKET_SECTION)
            readable = parts.readable
            req.defer(lambda r: raw_tree(readable, 0, "Device-readable data"), readable, 0)
        if not parts.used:
            req.summary = f"vsock RX buffer {parts.writable_len or 0} bytes"
            return
        if parts.written is None:
            req.summary = f"vsock RX {parts.used_len} bytes (not captured)"
            return
        packet, base = parts.device_wrote(), parts.written_base
    if len(packet) < layout.HDR_SIZE:
        req.problem("SHORT_HEADER", f"virtio_vsock_hdr needs {layout.HDR_SIZE} bytes, the buffer has "
                    f"{len(packet)}", SECTION, base)
        req.summary = f"vsock {word} ? (header of {len(packet)} bytes)"
        if packet:
            req.defer(lambda r: raw_tree(packet, base, "Virtio socket header, short"), packet, base)
        return
    values = layout.HDR_STRUCT.unpack_from(packet)
    length = values[4]
    req.info.update(op=values[6], type=values[5], len=length, src_cid=values[0], dst_cid=values[1],
                    src_port=values[2], dst_port=values[3])
    present = (max(parts.readable_total, len(packet)) if tx else len(packet)) - layout.HDR_SIZE
    if present < length and (tx or parts.written_whole or parts.used_len is not None):
        req.problem("SHORT_PAYLOAD", f"len is {length}, the buffer holds {present} payload bytes", PACKET_SECTION,
                    base + layout.HDR_SIZE)
    req.summary = f"vsock {word} {packet_summary(packet)}"
    req.defer(lambda r: dissect(r, "virtio_vsock.hdr", packet, base), packet, base)
    end = layout.HDR_SIZE + length
    if tx and present > length:
        rest = packet[end:]
        req.defer(lambda r: raw_tree(rest, base + end, "Bytes after the payload"), rest, base + end)


def decode_event(req: DeviceRequest, parts: Parts) -> None:
    if parts.readable:
        req.problem("READABLE", f"{len(parts.readable)} device-readable bytes on the event queue", SECTION)
    if not parts.used:
        req.summary = f"vsock event buffer {parts.writable_len or 0} bytes"
        return
    if parts.written is None:
        req.summary = "vsock event (not captured)"
        return
    data, base = parts.device_wrote(), parts.written_base
    if len(data) < 4:
        req.problem("SHORT_EVENT", f"struct virtio_vsock_event needs 4 bytes, the device wrote {len(data)}",
                    "virtio 1.4, 5.10.6.7", base)
        req.summary = f"vsock event ? ({len(data)} bytes)"
        if data:
            req.defer(lambda r: raw_tree(data, base, "Virtio socket event, short"), data, base)
        return
    tree = dissect(req, "virtio_vsock.event", data[:4], base)
    req.info["event"] = int.from_bytes(data[:4], "little")
    req.summary = get_layer("virtio_vsock.event").summary(tree) if tree.abbrev != "data" else "vsock event ?"
    req.defer(lambda r: tree)
