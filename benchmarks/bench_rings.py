#!/usr/bin/env python3
"""Ring reader throughput: chains read per second (issue 3, "Performance").

For split and packed rings of 256 and 1024 entries, with short chains (1 or 2
descriptors, alternately), long ones (16 descriptors) and long ones in an indirect
table (16 entries, one ring descriptor each, as Linux adds them), the ring is filled by
the test driver (vqtrace.driver) and a fresh RingTracker polls it: each poll walks
every chain (bounds checks, anomaly checks, in-flight bookkeeping included).
Timed in process CPU time (the machine is shared: wall time would count the others).
Also a whole round trip in chains per second: the test driver adds a chain,
DeviceQueue pops and pushes it, the driver reads it back.

Prints one JSON line per figure: {"figure": ..., "value": ..., "unit": ...}.
``--quick`` runs a fraction of the repetitions (for CI smoke runs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqtrace.driver import GuestDriver
from vqtrace.model import VIRTIO_F_INDIRECT_DESC, Layout
from vqtrace.rings import DeviceQueue, RingTracker

KINDS = {"short1-2": (0, False), "long16": (16, False), "indirect16": (16, True)}


def _fill(layout: Layout, size: int, kind: str) -> tuple[GuestDriver, object, int]:
    """A ring full of chains: 1-2 descriptors, 16 direct ones, or 16 in an indirect table each."""
    long, indirect = KINDS[kind]
    guest = GuestDriver.in_buffer(64 << 20)
    queue = guest.queue(0, size, layout=layout, features=1 << VIRTIO_F_INDIRECT_DESC)
    chains = 0
    k = 0
    while True:
        n = long or 1 + k % 2
        if queue.num_free < (1 if indirect else n):
            break
        readable = [b"r" * 64] * (n // 2 or 1)
        writable = [512] * (n - len(readable))
        queue.add(readable, writable, indirect=indirect)
        chains += 1
        k += 1
    return guest, queue, chains


def bench_tracker(layout: Layout, size: int, kind: str, seconds: float) -> float:
    guest, queue, chains = _fill(layout, size, kind)
    config = queue.config
    start_kwargs = {"avail_idx": 0, "used_idx": 0}
    done = 0
    began = time.process_time()
    while True:
        tracker = RingTracker(config, guest.memory, **start_kwargs)
        changes = tracker.poll()
        assert len(changes.avail) == chains and not changes.anomalies
        done += chains
        elapsed = time.process_time() - began
        if elapsed >= seconds:
            return done / elapsed


def bench_device(layout: Layout, size: int, seconds: float) -> float:
    guest = GuestDriver.in_buffer(64 << 20)
    queue = guest.queue(0, size, layout=layout)
    device = DeviceQueue(queue.config, guest.memory)
    done, began = 0, time.process_time()
    while True:
        while queue.num_free >= 2:
            queue.add([b"h" * 16], [512])
        for chain in device.pop_all():
            device.push(chain, 512)
            done += 1
        device.should_notify()
        queue.get_used()
        elapsed = time.process_time() - began
        if elapsed >= seconds:
            return done / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test, not a measurement)")
    args = parser.parse_args(argv)
    seconds, repeat = (0.05, 1) if args.quick else (0.5, 3)
    for layout in (Layout.SPLIT, Layout.PACKED):
        for size in (256, 1024):
            for kind in KINDS:
                rate = max(bench_tracker(layout, size, kind, seconds) for _ in range(repeat))  # best of: less noise
                name = f"rings.{layout.value}.{size}.{kind}.chains_per_s"
                print(json.dumps({"figure": name, "value": round(rate), "unit": "chains/s"}), flush=True)
        rate = max(bench_device(layout, 256, seconds) for _ in range(repeat))
        print(json.dumps({"figure": f"rings.{layout.value}.driver_device_round_trip_per_s", "value": round(rate),
                          "unit": "chains/s"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
