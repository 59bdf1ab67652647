"""Ring activity as trace events: a :class:`~vqtrace.rings.tracker.RingTracker` per queue.

On each kick, call or poll tick the proxy asks the queue's :class:`TrackerTap` what
happened since the last look: each chain made available becomes an AVAIL event
(its descriptors and readable bytes), each used element a USED event (the chain,
the used element, the bytes the device wrote), each anomaly an ANOMALY event.
Bytes are copied up to ``snaplen`` per buffer direction (the event is then marked
truncated); a USED event carries the readable bytes again (a reader names the
request from its header without looking back) and the bytes the device wrote.
"""

from __future__ import annotations

from ..errors import GuestMemoryError
from ..events import Direction, Event, EventKind
from ..memory import GuestMemory
from ..model import Chain, Layout, QueueConfig
from ..rings.buffers import read_readable, read_written
from ..rings.tracker import RingTracker
from . import protocol as p

DEFAULT_SNAPLEN = 1 << 16


class TrackerTap:
    """Follows one started queue from its vring base (VHOST_USER_SET_VRING_BASE)."""

    __slots__ = ("config", "device_type", "memory", "snaplen", "source", "tracker")

    def __init__(self, config: QueueConfig, memory: GuestMemory, base: int, source: str, *,
                 snaplen: int = DEFAULT_SNAPLEN) -> None:
        self.config = config
        self.memory = memory
        self.source = source
        self.snaplen = snaplen
        self.device_type = config.device_type
        if config.layout is Layout.PACKED:
            avail, avail_wrap, used, used_wrap = p.packed_base(base)
            self.tracker = RingTracker(config, memory, avail_idx=avail, avail_wrap=avail_wrap, used_idx=used,
                                       used_wrap=used_wrap)
        else:
            # The back-end starts at ``base`` (its next avail index); chains between the used
            # ring's idx and base are in flight already (a restarted or reconnected queue).
            self.tracker = RingTracker(config, memory, avail_idx=p.split_base(base))

    def _bytes(self, chain: Chain, limit: int) -> tuple[bytes, bool]:
        try:
            data = read_readable(self.memory, chain, limit)
        except GuestMemoryError:
            return b"", True
        return data, chain.readable_len > len(data)

    def poll(self, time_ns: int) -> list[Event]:
        changes = self.tracker.poll()
        if changes.empty:
            return []
        config, source, device_type = self.config, self.source, self.device_type
        index, features, packed = config.index, config.features, config.layout is Layout.PACKED
        events = []
        for chain in changes.avail:
            data, cut = self._bytes(chain, self.snaplen)
            events.append(Event(EventKind.AVAIL, time_ns, source, index, Direction.TO_DEVICE, data, device_type,
                                chain=chain, features=features, packed=packed, truncated=cut))
        for done in changes.used:
            chain = done.chain
            data, written, cut = b"", b"", False
            if chain is not None:
                data, cut = self._bytes(chain, self.snaplen)
                try:
                    written = read_written(self.memory, chain, min(done.elem.len, self.snaplen))
                except GuestMemoryError:
                    written, cut = b"", True
                cut = cut or (done.elem.len > len(written) and chain.writable_len > len(written))
            events.append(Event(EventKind.USED, time_ns, source, index, Direction.TO_DRIVER, data, device_type,
                                chain=chain, used=done.elem, written=written, features=features, packed=packed,
                                truncated=cut))
        for anomaly in changes.anomalies:
            events.append(Event(EventKind.ANOMALY, time_ns, source, index, Direction.NONE, b"", device_type,
                                anomaly=anomaly, features=features, packed=packed))
        return events


def tracker_tap(config: QueueConfig, memory: GuestMemory, base: int, source: str) -> TrackerTap:
    """The default tap factory of :class:`~vqtrace.vhost.proxy.ProxyEngine`."""
    return TrackerTap(config, memory, base, source)
