"""Where a reference net device's frames go: a plain Ethernet pcapng file, or a callback.

:class:`NetFrame` is one frame as the device saw it: direction, queue, the
``virtio_net_hdr`` values that travelled with it and the Ethernet bytes.
:class:`PcapngSink` writes frames as pcapng enhanced packet blocks on an
Ethernet interface (LINKTYPE_ETHERNET), the header values in the packet comment,
so Wireshark dissects the traffic natively. It flushes block by block.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import UsageError

LINKTYPE_ETHERNET = 1
_SHB = 0x0A0D0D0A
_IDB = 0x00000001
_EPB = 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_COMMENT = 1
_IF_NAME = 2
_IF_TSRESOL = 9
SNAPLEN = 0x40000


@dataclass
class NetFrame:
    """One Ethernet frame through the device: ``direction`` is "tx" (driver -> wire) or "rx"."""

    direction: str
    queue: int
    data: bytes
    hdr: dict[str, Any] = field(default_factory=dict)
    time_ns: int = 0

    def summary(self) -> str:
        dst = ":".join(f"{b:02x}" for b in self.data[:6])
        src = ":".join(f"{b:02x}" for b in self.data[6:12])
        ethertype = int.from_bytes(self.data[12:14], "big") if len(self.data) >= 14 else 0
        return f"{self.direction} q{self.queue} {src} -> {dst} type=0x{ethertype:04x} len={len(self.data)}"

    def to_json(self) -> dict[str, Any]:
        return {"direction": self.direction, "queue": self.queue, "len": len(self.data), "hdr": self.hdr,
                "summary": self.summary()}


def _option(code: int, value: bytes) -> bytes:
    pad = (-len(value)) % 4
    return struct.pack("<HH", code, len(value)) + value + bytes(pad)


def _block(kind: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", kind, total) + body + struct.pack("<I", total)


class PcapngSink:
    """Write frames to ``path`` as Ethernet pcapng (nanosecond timestamps, comment per frame)."""

    def __init__(self, path: str | os.PathLike[str], *, interface: str = "virtio-net") -> None:
        self.path = Path(path)
        try:
            self._file: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        except OSError as err:
            raise UsageError(f"cannot write {path}: {err.strerror}") from None
        shb = struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1) + _option(0, b"")
        idb = (struct.pack("<HHI", LINKTYPE_ETHERNET, 0, SNAPLEN) + _option(_IF_NAME, interface.encode())
               + _option(_IF_TSRESOL, b"\x09") + _option(0, b""))
        self._write(_block(_SHB, shb) + _block(_IDB, idb))
        self.frames = 0

    def _write(self, data: bytes) -> None:
        if self._file is None:
            raise UsageError(f"{self.path} is closed")
        self._file.write(data)
        self._file.flush()

    def __call__(self, frame: NetFrame) -> None:
        stamp = frame.time_ns or time.time_ns()
        comment = frame.direction + " " + " ".join(f"{k}={v}" for k, v in frame.hdr.items())
        data = frame.data[:SNAPLEN]
        body = (struct.pack("<IIIII", 0, stamp >> 32, stamp & 0xFFFFFFFF, len(data), len(frame.data))
                + data + bytes((-len(data)) % 4) + _option(_OPT_COMMENT, comment.encode()) + _option(0, b""))
        self._write(_block(_EPB, body))
        self.frames += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


NetSink = Callable[[NetFrame], None]
