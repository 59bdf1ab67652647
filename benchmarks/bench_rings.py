#!/usr/bin/env python3
"""Ring reader throughput: chains read per second (issue 3, "Performance").

For split and packed rings of 256 and 1024 entries, with short chains (1 or 2
descriptors, alternately) and long ones (16 descriptors), the ring is filled by
the test driver (vqtrace.driver) and a fresh RingTracker polls it: each poll walks
every chain (bounds checks, anomaly checks, in-flight bookkeeping included).
Also the device side (DeviceQueue.pop + push) in chains per second.

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

from vqtrace.driver import GuestDriver  # noqa: E402
from vqtrace.model import Layout  # noqa: E402
from vqtrace.rings import DeviceQueue, RingTracker  # noqa: E402


def _fill(layout: Layout, size: int, long: bool) -> tuple[GuestDriver, object, int]:
    guest = GuestDriver.in_buffer(64 << 20)
    queue = guest.queue(0, size, layout=layout)
    chains = 0
    k = 0
    while True:
        n = 16 if long else 1 + k % 2
        if queue.num_free < n:
            break
        readable = [b"r" * 64] * (n // 2 or 1)
        writable = [512] * (n - len(readable))
        queue.add(readable, writable)
        chains += 1
        k += 1
    return guest, queue, chains


def bench_tracker(layout: Layout, size: int, long: bool, seconds: float) -> float:
    guest, queue, chains = _fill(layout, size, long)
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
    seconds = 0.05 if args.quick else 1.0
    for layout in (Layout.SPLIT, Layout.PACKED):
        for size in (256, 1024):
            for long in (False, True):
                rate = bench_tracker(layout, size, long, seconds)
                name = f"rings.{layout.value}.{size}.{'long16' if long else 'short1-2'}.chains_per_s"
                print(json.dumps({"figure": name, "value": round(rate), "unit": "chains/s"}), flush=True)
        rate = bench_device(layout, 256, seconds)
        print(json.dumps({"figure": f"rings.{layout.value}.device_queue.pop_push_per_s", "value": round(rate),
                          "unit": "chains/s"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
