"""Reading what the live scenarios recorded: vqtrace's pcapng trace (through vqtrace's own
record decoder) and QEMU's own log of the vhost-user messages it wrote (``-trace vhost_user_write``),
the independent account a proxy trace is checked against."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

from vqtrace.events import Direction, Event, EventKind
from vqtrace.trace import pcapng, record

#: QEMU's trace events for its vhost-user front-end (hw/virtio/trace-events), with ``-D FILE``.
QEMU_TRACE_ARGS = ("-trace", "vhost_user_write", "-trace", "vhost_user_read")
_QEMU_WRITE = re.compile(r"vhost_user_write req:(\d+) flags:(0x[0-9a-fA-F]+)")
_EPB_HEAD = struct.Struct("IIIII")  # interface id, timestamp high, low, captured length, original length
BLK_OUTHDR = struct.Struct("<IIQ")  # struct virtio_blk_req header: type, reserved, sector (virtio 1.4, 5.2.6)
VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1


def qemu_sent(log: Path) -> list[tuple[int, int]]:
    """(request, flags) of every vhost-user message QEMU wrote, in order."""
    return [(int(m.group(1)), int(m.group(2), 16)) for m in _QEMU_WRITE.finditer(log.read_text())]


def trace_events(path: Path) -> list[Event]:
    """Every event record of a vqtrace pcapng file, in file order (problems are an error here)."""
    data = path.read_bytes()
    problems: list[pcapng.Problem] = []
    events = []
    for block in pcapng.walk(data, 0, "<", problems):
        if block.type != pcapng.EPB_TYPE:
            continue
        _, high, low, captured, _ = struct.unpack_from(block.endian + _EPB_HEAD.format, data, block.offset + 8)
        start = block.offset + 8 + _EPB_HEAD.size
        events.append(record.decode(data[start:start + captured], (high << 32) | low))
    if problems:
        raise AssertionError(f"{path}: damaged trace: {problems}")
    return events


def frontend_messages(events: list[Event]) -> list[tuple[int, int]]:
    """(request, flags) of the vhost-user messages the front-end sent, as the trace recorded them."""
    out = []
    for event in events:
        if event.kind == EventKind.VHOST_USER and event.direction == Direction.TO_DEVICE and event.channel == 0:
            out.append(struct.unpack_from("<II", event.data))
    return out


@dataclass(frozen=True)
class BlkRequest:
    """A blk request as the trace shows it: the header, the data written or read, the status."""

    kind: EventKind  # AVAIL (driver made it available) or USED
    type: int
    sector: int
    data: bytes  # OUT: the payload after the header; IN (USED): the bytes read, without the status
    status: int | None  # USED: the status byte the device wrote


def blk_requests(events: list[Event], queue: int = 0) -> list[BlkRequest]:
    out = []
    for event in events:
        if event.kind not in (EventKind.AVAIL, EventKind.USED) or event.queue != queue:
            continue
        if len(event.data) < BLK_OUTHDR.size:
            continue
        req_type, _, sector = BLK_OUTHDR.unpack_from(event.data)
        if event.kind == EventKind.USED and event.written:
            data, status = event.written[:-1], event.written[-1]
        else:
            data, status = event.data[BLK_OUTHDR.size:], None
        out.append(BlkRequest(event.kind, req_type, sector, bytes(data), status))
    return out
