"""Entropy device requests (virtio 1.4, 5.4.6): device-writable buffers the device fills with random bytes."""

from __future__ import annotations

from .request import DeviceRequest, Parts, dissect, raw_tree

SECTION = "virtio 1.4, 5.4.6"


def decode(req: DeviceRequest, parts: Parts) -> None:
    if parts.readable:
        req.problem("READABLE", f"{len(parts.readable)} device-readable bytes: the driver must not place "
                    "device-readable buffers in the requestq", "virtio 1.4, 5.4.6.1")
        readable = parts.readable
        req.defer(lambda r: raw_tree(readable, 0, "Device-readable data"), readable, 0)
    text = f"rng request {parts.writable_len or 0} bytes"
    if parts.used:
        if parts.written is not None:
            data, base = parts.device_wrote(), parts.written_base
            count = len(data)
            req.defer(lambda r: dissect(r, "virtio_rng.data", data, base), data, base)
        else:
            count = parts.used_len or 0
        req.info["data_len"] = count
        if parts.used_len == 0:
            req.problem("NO_DATA", "the device used the buffer without writing a random byte",
                        "virtio 1.4, 5.4.6.2")
        text += f" -> {count} random bytes"
    req.summary = text
