"""Where a reference net device's frames go: a plain Ethernet pcapng file, or a callback.

:class:`NetFrame` is one frame as the device saw it: direction, queue, the
``virtio_net_hdr`` values that travelled with it and the Ethernet bytes.
:class:`PcapngSink` writes frames as pcapng enhanced packet blocks on an
Ethernet interface (LINKTYPE_ETHERNET), the header values in the packet comment,
so Wireshark dissects the traffic natively. It flushes block by block. The blocks are
built with :mod:`vqtrace.trace.pcapng`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import UsageError
from ..trace import pcapng

LINKTYPE_ETHERNET = 1
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


class PcapngSink:
    """Write frames to ``path`` as Ethernet pcapng (nanosecond timestamps, comment per frame)."""

    def __init__(self, path: str | os.PathLike[str], *, interface: str = "virtio-net") -> None:
        self.path = Path(path)
        try:
            self._file: BinaryIO | None = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        except OSError as err:
            raise UsageError(f"cannot write {path}: {err.strerror}") from None
        self._write(pcapng.section_header("vqtrace reference net device")
                    + pcapng.interface_description(LINKTYPE_ETHERNET, interface, snaplen=SNAPLEN))
        self.frames = 0

    def _write(self, data: bytes) -> None:
        if self._file is None:
            raise UsageError(f"{self.path} is closed")
        self._file.write(data)
        self._file.flush()

    def __call__(self, frame: NetFrame) -> None:
        stamp = frame.time_ns or time.time_ns()
        comment = frame.direction + " " + " ".join(f"{k}={v}" for k, v in frame.hdr.items())
        self._write(pcapng.enhanced_packet(0, stamp, frame.data[:SNAPLEN], orig_len=len(frame.data),
                                           comments=[comment]))
        self.frames += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


NetSink = Callable[[NetFrame], None]
