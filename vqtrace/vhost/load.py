"""A virtio-blk load generator on the Python front-end (benchmarks, stress tests).

Keeps ``depth`` requests in flight on queue 0: every slot has its own header, data and
status buffers allocated once in guest memory, so a request costs a header write,
three descriptors and an avail entry (:meth:`vqtrace.driver.DriverQueue.add_elements`).
Completions are taken after each used buffer notification, as an interrupt-driven
driver does, and the slot is refilled at once; one kick per refilled batch.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import statistics
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..dissectors.virtqueue import VIRTQ_DESC_F_WRITE
from ..errors import VhostUserError
from .frontend import SECTOR_SIZE, VIRTIO_BLK_T_IN, BlkClient, drain_used

_HDR = struct.Struct("<IIQ")


@dataclass
class LoadResult:
    depth: int
    requests: int
    seconds: float
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    completed: int = 0  # every request completed, the warm-up and the drain at the end included
    #: ``probe()`` when the measured window opened and when it closed, and the requests completed in between
    probed: tuple[float, float, int] | None = None

    @property
    def iops(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def median_latency_us(self) -> float:
        return statistics.median(self.latencies_ns) / 1000 if self.latencies_ns else 0.0


class RandomReads:
    """``depth`` random reads of ``size`` bytes in flight over ``client``'s queue 0."""

    def __init__(self, client: BlkClient, depth: int, size: int = 4096, *, seed: int = 1) -> None:
        self.client = client
        self.depth = depth
        self.size = size
        self.random = random.Random(seed)
        fe = client.fe
        self.queue = fe.queues[client.queue]
        if depth > self.queue.driver.size // 3:
            raise VhostUserError(f"queue depth {depth} needs {3 * depth} descriptors, the queue has "
                                 f"{self.queue.driver.size}")
        allocator, memory = fe.guest.allocator, fe.guest.memory
        self.memory = memory
        self.slots = []
        for _ in range(depth):
            hdr = allocator.alloc(16)
            data = allocator.alloc(size, align=512)
            status = allocator.alloc(1)
            self.slots.append((hdr, data, status))
        capacity = client.capacity or (64 << 20) // SECTOR_SIZE
        self.max_sector = max(1, capacity - size // SECTOR_SIZE)

    def _submit(self, slot: int, now: int) -> None:
        hdr, data, status = self.slots[slot]
        sector = self.random.randrange(self.max_sector) & ~7  # 4 KiB aligned
        self.memory.write(hdr, _HDR.pack(VIRTIO_BLK_T_IN, 0, sector))
        self.queue.driver.add_elements([(hdr, 16, 0), (data, self.size, VIRTQ_DESC_F_WRITE),
                                        (status, 1, VIRTQ_DESC_F_WRITE)], token=(slot, now))

    def run(self, seconds: float, *, warmup: float = 0.2, probe: Callable[[], float] | None = None) -> LoadResult:
        """Keep the queue full for ``warmup`` then ``seconds`` seconds (measured), then drain it.

        ``probe`` (another process's CPU time, say) is called when the measured window opens and
        when it closes (:attr:`LoadResult.probed`).
        """
        driver, call_fd = self.queue.driver, self.queue.call_fd
        clock = time.perf_counter_ns
        now = clock()
        for slot in range(self.depth):
            self._submit(slot, now)
        driver.kick()
        poller = select.poll()
        poller.register(call_fd, select.POLLIN)
        start = clock()
        measure_from = start + int(warmup * 1e9)
        end = measure_from + int(seconds * 1e9)
        latencies: list[int] = []
        done = errors = completed = 0
        stopping = False
        in_flight = self.depth
        opened: tuple[float, int] | None = None
        probed = None
        while in_flight:
            if not poller.poll(self.client.fe.timeout * 1000):
                raise VhostUserError(f"no completion within {self.client.fe.timeout:g} s")
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(call_fd)
            used = drain_used(driver)
            now = clock()
            if probe is not None:
                if opened is None and now >= measure_from:
                    opened = (probe(), completed)
                elif opened is not None and probed is None and now >= end:
                    probed = (opened[0], probe(), completed - opened[1])
            stopping = stopping or now >= end
            completed += len(used)
            for buf in used:
                slot, submitted = buf.token
                if buf.written[-1:] != b"\0":
                    errors += 1
                if submitted >= measure_from and now <= end:
                    latencies.append(now - submitted)
                    done += 1
                if stopping:
                    in_flight -= 1
                else:
                    self._submit(slot, now)
            if used and not stopping:
                driver.kick()
        measured = min(clock(), end) - measure_from
        return LoadResult(self.depth, done, measured / 1e9, latencies, errors, completed, probed)
