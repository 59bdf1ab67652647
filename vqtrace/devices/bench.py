"""A reference device wired to the Python guest driver over real ring memory.

:class:`DeviceBench` lays out one driver-side queue per device queue
(:class:`vqtrace.driver.DriverQueue`) and the matching device-side queue
(:class:`vqtrace.rings.device.DeviceQueue`) in one guest memory, negotiates
features, and routes the driver's kicks to :meth:`Device.kick`. It records every
:class:`~.base.Activity` and counts the used buffer notifications the device
raised. Tests, the demo and the TUI use it to run a device without a VM.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from ..driver import LINUX_MODERN_ALIGN, DriverQueue, GuestDriver, UsedBuffer
from ..errors import VqtraceError
from ..model import VIRTIO_F_RING_PACKED, Anomaly, Layout
from ..rings.device import DeviceQueue
from .base import Activity, Device


class DeviceBench:
    """``device`` behind a guest driver: ``features`` (default: everything offered) and ring ``layout``."""

    def __init__(self, device: Device, *, features: int | None = None, layout: Layout = Layout.SPLIT,
                 queue_size: int = 64, memory_size: int = 16 << 20, memfd: bool = False) -> None:
        self.device = device
        self.driver = GuestDriver.in_memfd(memory_size) if memfd else GuestDriver.in_buffer(memory_size)
        offered = device.offered_features
        if features is None:
            features = offered
        if layout is Layout.PACKED:
            features |= 1 << VIRTIO_F_RING_PACKED
        else:
            features &= ~(1 << VIRTIO_F_RING_PACKED)
        self.features = device.negotiate(features)
        device.attach(self.driver.memory)
        self.activities: list[Activity] = []
        self.notified: Counter[int] = Counter()
        self.config_changes = 0
        self.queues: dict[int, DriverQueue] = {}
        self.device_queues: dict[int, DeviceQueue] = {}
        for index in range(device.num_queues):
            queue = self.driver.queue(index, queue_size, layout=layout, features=self.features,
                                      align=LINUX_MODERN_ALIGN, kick=self._kick, device_type=device.device_id)
            self.queues[index] = queue
            self.device_queues[index] = DeviceQueue(queue.config, self.driver.memory)
            device.set_queue(index, self.device_queues[index])
        device.on_activity = self.record

    @property
    def memory(self) -> Any:
        return self.driver.memory

    def _kick(self, queue: DriverQueue) -> None:
        self.record(self.device.kick(queue.config.index))

    def record(self, activity: Activity) -> Activity:
        """Keep ``activity`` and count its notifications (also the device's ``on_activity``)."""
        self.activities.append(activity)
        for index in activity.notify:
            self.notified[index] += 1
        self.config_changes += activity.config_changed
        return activity

    @property
    def last(self) -> Activity:
        return self.activities[-1]

    def anomalies(self, code: str | None = None) -> list[Anomaly]:
        """The anomalies the device reported (with ``code``: only those)."""
        return [a for a in self.device.anomalies if code is None or a.code == code]

    # -- the driver's side ----------------------------------------------------------------------

    def add(self, index: int, readable: Sequence[bytes] = (), writable: Sequence[int] = (), *, kick: bool = True,
            **options: Any) -> int:
        """Make a buffer available on queue ``index`` (and kick unless told not to); its id."""
        ident = self.queues[index].add(readable, writable, **options)
        if kick:
            self.queues[index].kick(force=True)
        return ident

    def used(self, index: int) -> list[UsedBuffer]:
        """The buffers the device returned on queue ``index`` since the last call."""
        return self.queues[index].get_used()

    def request(self, index: int, readable: Sequence[bytes] = (), writable: Sequence[int] = (),
                **options: Any) -> UsedBuffer:
        """One request: add, kick, and the single used buffer it produced."""
        self.add(index, readable, writable, **options)
        used = self.used(index)
        if len(used) != 1:
            raise VqtraceError(f"queue {index}: expected one used buffer, got {len(used)}")
        return used[0]

    def close(self) -> None:
        self.driver.close()

    def __enter__(self) -> DeviceBench:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
