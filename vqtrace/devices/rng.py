"""The entropy device (virtio 1.4, 5.4): fills device-writable buffers with random bytes.

Device Requirements (5.4.6.2): the device MUST place one or more random bytes into
the buffer, and MAY use less than its whole length: a request gets at most
``max_bytes``. The bytes come from the OS (``os.urandom``), or, for deterministic
replay, from a generator seeded with ``seed``. A device-readable buffer is a
driver error (5.4.6.1), reported as an anomaly; its writable part is still filled.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from ..dissectors import rng as layout  # noqa: F401 - the layer of what the device writes: virtio_rng.data
from ..model import Chain
from .base import Device
from .chainio import ChainIO


class RngDevice(Device):
    """A virtio-rng device; ``seed`` makes its bytes reproducible."""

    name: ClassVar[str] = "rng"
    device_id: ClassVar[int] = 4
    prefix: ClassVar[str] = "virtio_rng"
    in_order: ClassVar[bool] = True  # every request completes when it is handled

    def __init__(self, *, max_bytes: int = 4096, **options: Any) -> None:
        super().__init__(**options)
        self.max_bytes = max(1, max_bytes)
        self.bytes_served = 0
        self.requests = 0

    def queue_names(self) -> list[str]:
        return ["requestq"]

    def random_bytes(self, count: int) -> bytes:
        """``count`` random bytes: seeded when the device is deterministic, else from the OS."""
        return self.random.randbytes(count) if self.deterministic else os.urandom(count)

    def process(self, index: int, chain: Chain, io: ChainIO) -> int:
        self.requests += 1
        if io.readable_len:  # 5.4.6.1: the driver MUST NOT place device-readable buffers
            self._report("RNG_READABLE_BUFFER", "virtio 1.4, 5.4.6.1",
                         f"request has {io.readable_len} device-readable bytes", queue=index, id=chain.id)
        if self.memory_fault(io, index):
            return 0
        if io.writable_len == 0:
            self._report("RNG_NO_WRITABLE", "virtio 1.4, 5.4.6.2",
                         "request has no device-writable bytes to fill", queue=index, id=chain.id)
            self.describe("rng request without writable buffer")
            return 0
        count = min(io.writable_len, self.max_bytes)
        done = io.write(0, self.random_bytes(count))
        self.bytes_served += done
        self.describe(f"rng {done} random bytes")
        return done

    def state(self) -> dict[str, Any]:
        state = super().state()
        state.update({"deterministic": self.deterministic, "seed": self.seed, "requests": self.requests,
                      "bytes_served": self.bytes_served})
        return state
