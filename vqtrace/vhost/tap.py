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

from typing import Any

from ..dissectors.virtqueue import VIRTQ_DESC_F_INDIRECT as _INDIRECT
from ..dissectors.virtqueue import VIRTQ_DESC_F_WRITE as _WRITE
from ..errors import GuestMemoryError
from ..events import Direction, Event, EventKind
from ..memory import GuestMemory
from ..model import Chain, Layout, QueueConfig
from ..rings.tracker import RingTracker
from . import protocol as p

DEFAULT_SNAPLEN = 1 << 16


class TrackerTap:
    """Follows one started queue from its vring base (VHOST_USER_SET_VRING_BASE)."""

    __slots__ = ("_readable", "config", "device_type", "memory", "snaplen", "source", "tracker")

    def __init__(self, config: QueueConfig, memory: GuestMemory, base: int, source: str, *,
                 snaplen: int = DEFAULT_SNAPLEN) -> None:
        self.config = config
        self.memory = memory
        self.source = source
        self.snaplen = snaplen
        self.device_type = config.device_type
        # The readable bytes of each chain in flight as read when it was made available: its
        # USED event repeats them (the driver may have reused the buffers since).
        self._readable: dict[int, tuple[Chain, bytes, bool]] = {}
        if config.layout is Layout.PACKED:
            avail, avail_wrap, used, used_wrap = p.packed_base(base)
            self.tracker = self._make_tracker(config, memory, avail_idx=avail, avail_wrap=avail_wrap, used_idx=used,
                                              used_wrap=used_wrap)
        else:
            # The back-end starts at ``base`` (its next avail index); chains between the used
            # ring's idx and base are in flight already (a restarted or reconnected queue).
            self.tracker = self._make_tracker(config, memory, avail_idx=p.split_base(base))

    def _make_tracker(self, config: QueueConfig, memory: GuestMemory, **start: Any) -> RingTracker:
        """The ring reader of the queue (a subclass may pick another RingTracker)."""
        return RingTracker(config, memory, **start)

    def _bytes(self, chain: Chain, limit: int, write: int = 0) -> tuple[bytes, bool]:
        """Up to ``limit`` bytes of the chain's readable buffers (``write`` = VIRTQ_DESC_F_WRITE:
        its writable ones), and whether fewer than they hold were taken. Never raises."""
        view, parts, left, total = self.memory.view, [], limit, 0
        try:
            for desc in chain.descriptors:
                flags = desc.flags
                if flags & _INDIRECT or flags & _WRITE != write:
                    continue
                total += desc.len
                if left > 0 and desc.len:
                    take = desc.len if desc.len <= left else left
                    parts.append(view(desc.addr, take))
                    left -= take
        except GuestMemoryError:
            return b"".join(parts), True
        data = b"".join(parts)
        return data, total > len(data)

    @property
    def in_flight(self) -> int:
        """Chains made available and not used yet (as of the last poll)."""
        return len(self.tracker.in_flight)

    def poll(self, time_ns: int) -> list[Event]:
        changes = self.tracker.poll()
        if changes.empty:
            return []
        config, source, device_type = self.config, self.source, self.device_type
        index, features, packed = config.index, config.features, config.layout is Layout.PACKED
        events = []
        kept = self._readable
        if len(kept) > 4 * config.size:  # chains dropped without a used element (anomalies): forget the oldest
            for key in list(kept)[:len(kept) - 2 * config.size]:
                del kept[key]
        for chain in changes.avail:
            data, cut = self._bytes(chain, self.snaplen)
            kept[id(chain)] = (chain, data, cut)
            events.append(Event(EventKind.AVAIL, time_ns, source, index, Direction.TO_DEVICE, data, device_type,
                                chain=chain, features=features, packed=packed, truncated=cut))
        for done in changes.used:
            chain = done.chain
            data, written, cut = b"", b"", False
            if chain is not None:
                entry = kept.pop(id(chain), None)
                data, cut = (entry[1], entry[2]) if entry is not None and entry[0] is chain else \
                    self._bytes(chain, self.snaplen)
                length = done.elem.len
                written, cut_w = self._bytes(chain, length if length < self.snaplen else self.snaplen, _WRITE)
                cut = cut or (cut_w and len(written) < length)
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
