"""The traditional memory balloon (virtio 1.4, 5.5): inflate, deflate and statistics queues.

Queues (5.5.2): inflateq, deflateq, and statsq with VIRTIO_BALLOON_F_STATS_VQ. The
device asks for pages by setting ``num_pages`` (:meth:`BalloonDevice.set_target`, a
configuration change); the driver gives page frame numbers (address / 4096, 5.5.6)
on the inflateq and takes them back on the deflateq, and writes ``actual``. The
device keeps the set of PFNs the guest has given up. Every inflate and deflate
buffer is acknowledged by using it (5.5.6, point 4); the device never touches the
pages (5.5.6.2 allows it to). Driver errors become anomalies: deflating a PFN that
is not in the balloon (5.5.6.1), a PFN array whose length is not a multiple of 4.

Statistics (5.5.6.3): the device keeps the one statsq buffer the driver supplies,
reads its entries (ignoring unknown tags and accepting any order, 5.5.6.3.2) and
uses it when :meth:`BalloonDevice.request_stats` asks for fresh ones.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar

from ..dissectors import balloon as layout
from ..dissectors import features as feature_tables
from ..errors import UsageError
from ..model import Chain
from .backend import ExtentSet
from .base import HELD, Activity, Device, feature_bits
from .chainio import ChainIO

_F = feature_bits(feature_tables.BALLOON_FEATURES)
VIRTIO_BALLOON_F_MUST_TELL_HOST = _F["VIRTIO_BALLOON_F_MUST_TELL_HOST"]
VIRTIO_BALLOON_F_STATS_VQ = _F["VIRTIO_BALLOON_F_STATS_VQ"]
VIRTIO_BALLOON_F_DEFLATE_ON_OOM = _F["VIRTIO_BALLOON_F_DEFLATE_ON_OOM"]
INFLATEQ, DEFLATEQ, STATSQ = 0, 1, 2
ACTUAL_OFFSET = 4  # 5.5.4: offset of actual in struct virtio_balloon_config
STAT = struct.Struct("<HQ")  # struct virtio_balloon_stat (packed; tested against the layer)
STAT_NAMES = {value: name.removeprefix("VIRTIO_BALLOON_S_") for name, value in layout.STAT_TAGS.items()}
MAX_PFNS_PER_BUFFER = 1 << 20


class BalloonDevice(Device):
    """A virtio-balloon device; ``num_pages`` is the initial target."""

    name: ClassVar[str] = "balloon"
    device_id: ClassVar[int] = 5
    prefix: ClassVar[str] = "virtio_balloon"
    config_struct = layout.virtio_balloon_config
    config_full_size = layout.BALLOON_CONFIG_SIZE

    def __init__(self, *, num_pages: int = 0, stats: bool = True, deflate_on_oom: bool = True,
                 must_tell_host: bool = True, **options: Any) -> None:
        super().__init__(**options)
        if not 0 <= num_pages <= 0xFFFFFFFF:
            raise UsageError(f"num_pages {num_pages}: a 32-bit count of 4 KiB pages")
        self.num_pages = num_pages
        self.offer_stats = stats
        self.offer_deflate_on_oom = deflate_on_oom
        self.offer_must_tell_host = must_tell_host
        self.counters = {"inflated": 0, "deflated": 0, "inflate_buffers": 0, "deflate_buffers": 0,
                         "stats_updates": 0}
        self.reset_state()

    def reset_state(self) -> None:
        self.actual = 0
        self.pfns = ExtentSet()  # after a reset the driver owns every page again
        self.stats: dict[str, int] = {}
        self.stats_requested = False

    # -- identity, features, configuration --------------------------------------------------------

    def queue_names(self) -> list[str]:
        names = ["inflateq", "deflateq"]
        if self.shapes(VIRTIO_BALLOON_F_STATS_VQ):
            names.append("statsq")
        return names

    def device_features(self) -> int:
        bits = []
        if self.offer_must_tell_host:
            bits.append(VIRTIO_BALLOON_F_MUST_TELL_HOST)
        if self.offer_stats:
            bits.append(VIRTIO_BALLOON_F_STATS_VQ)
        if self.offer_deflate_on_oom:
            bits.append(VIRTIO_BALLOON_F_DEFLATE_ON_OOM)
        return sum(1 << bit for bit in bits)

    def config_values(self) -> dict[str, Any]:
        return {"num_pages": self.num_pages, "actual": self.actual}

    def config_write(self, offset: int, data: bytes) -> bool:
        # 5.5.6.1: the driver updates actual (legacy drivers byte by byte, 5.5.6.2.1)
        if offset < ACTUAL_OFFSET or offset + len(data) > ACTUAL_OFFSET + 4:
            return False
        raw = bytearray(self.actual.to_bytes(4, "little"))
        raw[offset - ACTUAL_OFFSET:offset - ACTUAL_OFFSET + len(data)] = data
        self.actual = int.from_bytes(raw, "little")
        return True

    # -- device side ------------------------------------------------------------------------------

    def set_target(self, num_pages: int) -> Activity:
        """Ask the driver to make the balloon ``num_pages`` pages (a configuration change)."""
        if not 0 <= num_pages <= 0xFFFFFFFF:
            raise UsageError(f"num_pages {num_pages}: a 32-bit count of 4 KiB pages")

        def work() -> None:
            self.num_pages = num_pages
            self.config_change()
        return self.run(work)

    def request_stats(self) -> Activity:
        """Ask for fresh statistics: use the held statsq buffer (5.5.6.3, step 1)."""
        def work() -> None:
            if self.held[STATSQ]:
                chain, _ = self.held[STATSQ].popleft()
                self.complete(STATSQ, chain, 0, "balloon stats request")
            else:
                self.stats_requested = True  # use the next buffer as soon as it comes
        return self.run(work)

    # -- queues ------------------------------------------------------------------------------------

    def process(self, index: int, chain: Chain, io: ChainIO) -> int | None:
        if io.writable_len:
            self._report("BALLOON_WRITABLE_BUFFER", "virtio 1.4, 5.5.6",
                         f"{self.queue_names()[index] if index < self.num_queues else index} buffer has "
                         f"{io.writable_len} device-writable bytes", queue=index, id=chain.id)
        if self.memory_fault(io, index):
            return 0
        if index == STATSQ:
            return self._stats(index, chain, io)
        length = io.readable_len
        if length % layout.PFN_SIZE or length > MAX_PFNS_PER_BUFFER * layout.PFN_SIZE:
            self._report("BALLOON_BAD_PFN_ARRAY", "virtio 1.4, 5.5.6",
                         f"PFN array of {length} bytes (le32 entries)", queue=index, id=chain.id)
            length = min(length - length % layout.PFN_SIZE, MAX_PFNS_PER_BUFFER * layout.PFN_SIZE)
        raw = io.read(0, length)
        pfns = struct.unpack(f"<{length // 4}I", raw)
        if index == INFLATEQ:
            self.counters["inflate_buffers"] += 1
            for pfn in pfns:
                if pfn in self.pfns:
                    self._report("BALLOON_PFN_TWICE", "virtio 1.4, 5.5.6",
                                 f"PFN 0x{pfn:x} inflated while already in the balloon", queue=index, id=chain.id)
                self.pfns.add(pfn, 1)
            self.counters["inflated"] += len(pfns)
            self.describe(f"balloon inflate {len(pfns)} pfns")
        else:
            self.counters["deflate_buffers"] += 1
            for pfn in pfns:
                if pfn not in self.pfns:  # 5.5.6.1: only pages given to the balloon (and acknowledged)
                    self._report("BALLOON_PFN_NOT_HELD", "virtio 1.4, 5.5.6.1",
                                 f"PFN 0x{pfn:x} deflated but not in the balloon", queue=index, id=chain.id)
                self.pfns.remove(pfn, 1)
            self.counters["deflated"] += len(pfns)
            self.describe(f"balloon deflate {len(pfns)} pfns")
        return 0  # 5.5.6: acknowledged by using the buffer

    def _stats(self, index: int, chain: Chain, io: ChainIO) -> int | None:
        if self.held[STATSQ]:  # 5.5.6.3.1: at most one buffer available at a time
            self._report("BALLOON_STATS_TWO_BUFFERS", "virtio 1.4, 5.5.6.3.1",
                         "a second statsq buffer while the device holds one", queue=index, id=chain.id)
            old, _ = self.held[STATSQ].popleft()
            self.complete(STATSQ, old, 0, "balloon stats buffer replaced")
        length = min(io.readable_len, 4096)
        if length % layout.STAT_SIZE:
            self._report("BALLOON_BAD_STATS", "virtio 1.4, 5.5.6.3.1",
                         f"statistics buffer of {length} bytes is not a multiple of {layout.STAT_SIZE}",
                         queue=index, id=chain.id)
        raw = io.read(0, length - length % layout.STAT_SIZE)
        for tag, value in STAT.iter_unpack(raw):
            name = STAT_NAMES.get(tag)
            if name is not None:  # 5.5.6.3.2: MUST ignore tags it does not recognize
                self.stats[name] = value
        self.counters["stats_updates"] += 1
        self.describe(f"balloon stats {len(raw) // layout.STAT_SIZE} entries")
        if self.stats_requested:
            self.stats_requested = False
            return 0
        self.hold(index, chain, io)  # 5.5.6.3: retained to initiate the next request
        return HELD

    # -- state -------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        state = super().state()
        state.update({
            "num_pages": self.num_pages,
            "actual": self.actual,
            "pages_held": len(self.pfns),
            "pfns": [list(r) for r in self.pfns.ranges()],
            "stats": dict(self.stats),
            "counters": dict(self.counters),
        })
        return state
