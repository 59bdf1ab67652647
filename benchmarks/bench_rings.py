#!/usr/bin/env python3
"""Ring reader throughput: chains read per second (issue 3, "Performance").

What a live tracer does (``vqtrace.vhost.tap.TrackerTap``): one RingTracker follows a
queue for its whole life and polls it on every kick and call. So, for split and packed
rings of 256 and 1024 entries, with short chains (1 or 2 descriptors, alternately), long
ones (16 descriptors) and long ones in an indirect table (16 entries, one ring descriptor
each, as Linux adds them), round after round:

1. the test driver (vqtrace.driver) makes a ring's worth of chains available;
2. the tracker polls (timed): every chain walked (bounds, anomaly checks, in-flight
   bookkeeping) and its ``descriptors`` read, as the tap does to copy the buffers;
3. a DeviceQueue pops and uses them all (not timed);
4. the tracker polls again (timed separately): the used elements, matched to their chains;
5. the driver takes the used buffers back (not timed); the next round's chains land on
   other descriptors (the driver's LIFO free list) and both indices run on (and wrap).

``chains_per_s`` is step 2 (chains made available per second of polling), ``used_per_s``
step 4. Timed in process CPU time (the machine is shared: wall time would count the
others); each figure is the best of 3 runs. Also a whole round trip in chains per second:
the test driver adds a chain, DeviceQueue pops and pushes it, the driver reads it back.

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

from vqtrace.driver import DriverQueue, GuestDriver
from vqtrace.model import VIRTIO_F_INDIRECT_DESC, Layout
from vqtrace.rings import DeviceQueue, RingTracker

KINDS = {"short1-2": (0, False), "long16": (16, False), "indirect16": (16, True)}


def _fill(queue: DriverQueue, kind: str) -> int:
    """Make available as many chains as the ring has room for: 1-2 descriptors, 16 direct ones, or 16 in an
    indirect table each. Returns how many."""
    long, indirect = KINDS[kind]
    chains = 0
    while True:
        n = long or 1 + chains % 2
        if queue.num_free < (1 if indirect else n):
            return chains
        readable = [b"r" * 64] * (n // 2 or 1)
        writable = [512] * (n - len(readable))
        queue.add(readable, writable, indirect=indirect)
        chains += 1


def bench_tracker(layout: Layout, size: int, kind: str, seconds: float) -> tuple[float, float]:
    """(chains made available per second of polling, used elements per second of polling)."""
    guest = GuestDriver.in_buffer(64 << 20)
    queue = guest.queue(0, size, layout=layout, features=1 << VIRTIO_F_INDIRECT_DESC)
    config, memory = queue.config, guest.memory
    device = DeviceQueue(config, memory)
    tracker = RingTracker(config, memory, avail_idx=0, used_idx=0)  # as a tap starts at a vring base
    clock = time.process_time
    avail_s = used_s = 0.0
    avail_n = used_n = 0
    while avail_s < seconds:
        chains = _fill(queue, kind)
        start = clock()
        changes = tracker.poll()
        for chain in changes.avail:
            chain.descriptors  # noqa: B018 -- the tap reads every chain's descriptors (to copy its buffers)
        avail_s += clock() - start
        assert len(changes.avail) == chains and not changes.used and not changes.anomalies, changes
        avail_n += chains
        device.push_batch([(chain, 0) for chain in device.pop_all()])
        changes = None  # (freeing the last round's objects is not the next poll's work)
        start = clock()
        changes = tracker.poll()
        used_s += clock() - start
        assert len(changes.used) == chains and not changes.avail and not changes.anomalies, changes
        assert all(done.chain is not None for done in changes.used)
        used_n += chains
        assert len(queue.get_used()) == chains
        changes = None
    return avail_n / avail_s, used_n / used_s


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
    parser.add_argument("--only", metavar="TEXT", help="only the ring figures whose name contains TEXT")
    args = parser.parse_args(argv)
    seconds, repeat = (0.05, 1) if args.quick else (0.4, 3)
    for layout in (Layout.SPLIT, Layout.PACKED):
        for size in (256, 1024):
            for kind in KINDS:
                name = f"rings.{layout.value}.{size}.{kind}"
                if args.only and args.only not in name:
                    continue
                runs = [bench_tracker(layout, size, kind, seconds) for _ in range(repeat)]
                avail = max(r[0] for r in runs)  # best of: less noise
                used = max(r[1] for r in runs)
                print(json.dumps({"figure": f"{name}.chains_per_s", "value": round(avail), "unit": "chains/s"}),
                      flush=True)
                print(json.dumps({"figure": f"{name}.used_per_s", "value": round(used), "unit": "chains/s"}),
                      flush=True)
        if args.only:
            continue
        rate = max(bench_device(layout, 256, seconds) for _ in range(repeat))
        print(json.dumps({"figure": f"rings.{layout.value}.driver_device_round_trip_per_s", "value": round(rate),
                          "unit": "chains/s"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
