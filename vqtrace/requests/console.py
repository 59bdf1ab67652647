"""Console device requests (virtio 1.4, 5.3.6): port data and multiport control messages.

A port's transmitq carries device-readable text, its receiveq device-writable buffers
the device fills (``virtio_console.data``). The control receiveq (device to driver) and
control transmitq (driver to device) carry one ``struct virtio_console_control`` per
buffer (``virtio_console.ctrl``, 5.3.6.2).
"""

from __future__ import annotations

from ..dissectors import console as layout
from ..dissectors.layers import get_layer
from .request import DeviceRequest, Parts, dissect, raw_tree, text_preview

SECTION = "virtio 1.4, 5.3.6"
DRIVER_SECTION = "virtio 1.4, 5.3.6.1"
CONTROL_SECTION = "virtio 1.4, 5.3.6.2"


def decode_data(req: DeviceRequest, parts: Parts) -> None:
    role = parts.role
    port = f"port{role.number}"
    if role.kind == "transmitq":
        data = parts.readable
        if parts.writable_len:
            req.problem("WRITABLE_TX", f"{parts.writable_len} device-writable bytes on a transmitq",
                        DRIVER_SECTION)
        total = max(parts.readable_total, len(data))
        req.info["data_len"] = total
        req.summary = f"console TX {port} {total} bytes {text_preview(data)}"
        req.defer(lambda r: dissect(r, "virtio_console.data", data, 0), data, 0)
        return
    if parts.readable:
        req.problem("READABLE_RX", f"{len(parts.readable)} device-readable bytes on a receiveq", DRIVER_SECTION)
        readable = parts.readable
        req.defer(lambda r: raw_tree(readable, 0, "Device-readable data"), readable, 0)
    if not parts.used:
        req.summary = f"console RX {port} buffer {parts.writable_len or 0} bytes"
        return
    if parts.written is None:
        req.summary = f"console RX {port} {parts.used_len} bytes (not captured)"
        return
    data, base = parts.device_wrote(), parts.written_base
    req.info["data_len"] = len(data)
    req.summary = f"console RX {port} {len(data)} bytes {text_preview(data)}"
    req.defer(lambda r: dissect(r, "virtio_console.data", data, base), data, base)


def decode_control(req: DeviceRequest, parts: Parts) -> None:
    to_device = parts.role.kind == "control transmitq"
    if to_device:
        data, base = parts.readable, 0
        if parts.writable_len:
            req.problem("WRITABLE_TX", f"{parts.writable_len} device-writable bytes on the control transmitq",
                        DRIVER_SECTION)
    else:
        if parts.readable:
            req.problem("READABLE_RX", f"{len(parts.readable)} device-readable bytes on the control receiveq",
                        DRIVER_SECTION)
        if not parts.used:
            req.summary = f"console ctrl buffer {parts.writable_len or 0} bytes"
            return
        if parts.written is None:
            req.summary = f"console ctrl {parts.used_len} bytes (not captured)"
            return
        data, base = parts.device_wrote(), parts.written_base
    if len(data) < layout.CONTROL_SIZE:
        req.problem("SHORT_HEADER", f"struct virtio_console_control needs {layout.CONTROL_SIZE} bytes, the buffer "
                    f"has {len(data)}", CONTROL_SECTION, base)
        req.summary = f"console ctrl ? ({len(data)} bytes)"
        if data:
            req.defer(lambda r: raw_tree(data, base, "Console control message, short"), data, base)
        return
    tree = dissect(req, "virtio_console.ctrl", data, base)
    req.info.update(id=int.from_bytes(data[:4], "little"), event=int.from_bytes(data[4:6], "little"))
    if tree.abbrev == "virtio_console.ctrl":
        req.summary = get_layer("virtio_console.ctrl").summary(tree)
    else:
        req.summary = f"console ctrl event={req.info['event']} id={req.info['id']}"
    req.defer(lambda r: tree)
