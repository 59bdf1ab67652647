"""Traditional memory balloon requests (virtio 1.4, 5.5.6).

inflateq / deflateq: a device-readable array of le32 page frame numbers
(``virtio_balloon.pfns``); statsq: 10-byte statistics (``virtio_balloon.stats``);
free_page_vq: a 4-byte command ID output buffer (``virtio_balloon.free_page_hint``) or
device-writable buffers of free pages (5.5.6.5); reporting_vq: device-writable buffers
of free pages being reported (5.5.6.7). Page contents are not shown: only their sizes.
"""

from __future__ import annotations

import struct

from ..dissectors import balloon as layout
from ..dissectors.layers import get_layer
from .request import DeviceRequest, Parts, dissect, raw_tree

SECTION = "virtio 1.4, 5.5.6"
_CMD_IDS = {value: name for name, value in layout.CMD_IDS.items()}


def _readable_only(req: DeviceRequest, parts: Parts, section: str = SECTION) -> None:
    if parts.writable_len:
        req.problem("WRITABLE", f"{parts.writable_len} device-writable bytes on the {parts.role.name}, whose "
                    "buffers are device-readable", section)


def _whole(req: DeviceRequest, data: bytes, size: int, what: str, section: str) -> int:
    count, rest = divmod(len(data), size)
    if rest:
        req.problem("PARTIAL", f"{len(data)} bytes is not a whole number of {size}-byte {what}", section,
                    count * size)
    return count


def _tail(req: DeviceRequest, data: bytes, used: int) -> None:
    if used < len(data):
        rest = data[used:]
        req.defer(lambda r: raw_tree(rest, used, "Trailing bytes"), rest, used)


def decode_pfns(req: DeviceRequest, parts: Parts) -> None:
    data = parts.readable
    what = "inflate" if parts.role.kind == "inflateq" else "deflate"
    _readable_only(req, parts)
    count = _whole(req, data, layout.PFN_SIZE, "page frame numbers", SECTION)
    pfns = struct.unpack_from(f"<{count}I", data) if count else ()
    req.info.update(pfns=count, bytes=count << layout.VIRTIO_BALLOON_PFN_SHIFT)
    text = f"balloon {what} {count} pfns"
    if pfns:
        text += f" 0x{min(pfns):x}..0x{max(pfns):x}"
    req.summary = text
    whole = data[:count * layout.PFN_SIZE]
    if whole:
        req.defer(lambda r: dissect(r, "virtio_balloon.pfns", whole, 0), whole, 0)
    _tail(req, data, len(whole))


def decode_stats(req: DeviceRequest, parts: Parts) -> None:
    data = parts.readable
    _readable_only(req, parts, "virtio 1.4, 5.5.6.3")
    count = _whole(req, data, layout.STAT_SIZE, "statistics", "virtio 1.4, 5.5.6.3")
    whole = data[:count * layout.STAT_SIZE]
    req.info["stats"] = count
    if whole:
        tree = dissect(req, "virtio_balloon.stats", whole, 0)
        req.summary = get_layer("virtio_balloon.stats").summary(tree) if tree.abbrev != "data" \
            else f"balloon stats {count}"
        req.defer(lambda r: tree)
    else:
        req.summary = "balloon stats (none)"
    _tail(req, data, len(whole))


def decode_free_page(req: DeviceRequest, parts: Parts) -> None:
    section = "virtio 1.4, 5.5.6.5"
    data = parts.readable
    if data:
        if len(data) < 4:
            req.problem("SHORT_HEADER", f"a command ID needs 4 bytes, the buffer has {len(data)}", section, 0)
            req.summary = f"balloon free page hint ? ({len(data)} bytes)"
            req.defer(lambda r: raw_tree(data, 0, "Command ID, short"), data, 0)
            return
        cmd_id, = struct.unpack_from("<I", data)
        req.info["cmd_id"] = cmd_id
        name = _CMD_IDS.get(cmd_id, str(cmd_id)).removeprefix("VIRTIO_BALLOON_CMD_ID_")
        req.summary = f"balloon free page hint cmd_id={name}"
        req.defer(lambda r: dissect(r, "virtio_balloon.free_page_hint", data[:4], 0), data, 0)
        _tail(req, data, 4)
        if parts.writable_len:
            req.problem("MIXED", "a command ID buffer with device-writable pages: the driver sends them as "
                        "separate buffers", section)
        return
    _pages(req, parts, "balloon free page hint")


def decode_reporting(req: DeviceRequest, parts: Parts) -> None:
    if parts.readable:
        req.problem("READABLE", f"{len(parts.readable)} device-readable bytes on the reporting_vq, whose buffers "
                    "are the device-writable reported pages", "virtio 1.4, 5.5.6.7")
    _pages(req, parts, "balloon report")


def _pages(req: DeviceRequest, parts: Parts, what: str) -> None:
    lens = parts.writable_lens
    total = parts.writable_len or 0
    req.info["bytes"] = total
    count = f" in {len(lens)} buffers" if lens is not None else ""
    req.summary = f"{what} {total} bytes{count}" + (" -> done" if parts.used else "")
