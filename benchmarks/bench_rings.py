#!/usr/bin/env python3
"""Ring reader throughput: chains read per second (issue 3, "Performance").

What a live tracer does (``vqtrace.vhost.tap.TrackerTap``): one RingTracker follows a
queue for its whole life, in its own process, over a read-only mapping of guest memory
that the guest's driver and the device write from elsewhere, and polls it on every kick
and call. So here a child process plays the guest (vqtrace.driver) and the device
(DeviceQueue) over a shared memfd, and for split and packed rings of 256 and 1024
entries, with short chains (1 or 2 descriptors, alternately), long ones (16
descriptors) and long ones in an indirect table (16 entries, one ring descriptor each,
as Linux adds them), round after round:

1. the driver makes a ring's worth of chains available;
2. the tracker polls (timed): every chain walked (bounds, anomaly checks, in-flight
   bookkeeping), then (timed apart) every chain's ``descriptors`` read, as the tap does
   to copy the buffers;
3. the device uses them all, the driver takes them back (not timed);
4. the tracker polls again (timed apart): the used elements, matched to their chains.

The next round's chains land where the driver's free list puts them and both indices run
on (and wrap). Figures: ``chains_per_s`` (step 2's poll), ``with_descriptors_per_s``
(the poll and the descriptors), ``used_per_s`` (step 4). Timed in process CPU time of
the tracker's process (the machine is shared: wall time would count the others); each
figure is the best of 3 runs. Then a poll's fixed cost on a 256-entry ring, in CPU microseconds, each poll
right after the guest side ran (as a tracker woken by a kick runs): ``empty_poll_cpu`` (nothing new) and
``one_{short1-2,long16}_poll_cpu`` (one new chain); at 200,000 chains/s a poll of the 16 long chains
a 256-entry ring holds has 80 us. Also a whole round trip in chains per second, in one
process: the test driver adds a chain, DeviceQueue pops and pushes it, the driver reads
it back.

Prints one JSON line per figure: {"figure": ..., "value": ..., "unit": ...}.
``--quick`` runs a fraction of the repetitions (for CI smoke runs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqtrace.driver import DriverQueue, GuestDriver
from vqtrace.memory import GuestMemory
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


def _guest(queue: DriverQueue, device: DeviceQueue, kind: str, commands: int, answers: int) -> None:
    """The child: the driver and the device, one command byte at a time."""
    while True:
        command = os.read(commands, 1)
        if command == b"f":  # fill the ring
            reply = _fill(queue, kind)
        elif command == b"1":  # one chain of the kind
            n, indirect = KINDS[kind]
            n = n or 2
            queue.add([b"r" * 64] * (n // 2), [512] * (n - n // 2), indirect=indirect)
            reply = 1
        elif command == b"n":  # nothing (the tracker's poll then finds nothing new)
            reply = 0
        elif command == b"u":  # use every chain, and the driver takes them back
            chains = device.pop_all()
            device.push_batch([(chain, 0) for chain in chains])
            reply = len(queue.get_used())
        else:
            return
        os.write(answers, reply.to_bytes(4, "little"))


class _Guest:
    """A child process playing the driver and the device of one queue over a memfd (see the module doc)."""

    def __init__(self, layout: Layout, size: int, kind: str) -> None:
        self.memory_size = 64 << 20
        self.guest = guest = GuestDriver.in_memfd(self.memory_size)
        self.queue = queue = guest.queue(0, size, layout=layout, features=1 << VIRTIO_F_INDIRECT_DESC)
        device = DeviceQueue(queue.config, guest.memory)
        commands_r, self.commands = os.pipe()
        self.answers, answers_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the guest side
            status = 1
            try:
                os.close(self.commands)
                os.close(self.answers)
                _guest(queue, device, kind, commands_r, answers_w)
                status = 0
            finally:
                os._exit(status)
        os.close(commands_r)
        os.close(answers_w)
        self.memory = GuestMemory()
        self.memory.add_fd(guest.fd, 0, self.memory_size)  # read-only, as a tracer maps guest RAM

    def ask(self, command: bytes) -> int:
        os.write(self.commands, command)
        return int.from_bytes(os.read(self.answers, 4), "little")

    def close(self) -> None:
        os.write(self.commands, b"q")
        os.waitpid(self.pid, 0)
        os.close(self.commands)
        os.close(self.answers)
        self.memory.close()
        self.guest.close()


def bench_poll_cost(layout: Layout, kind: str, polls: int) -> tuple[float, float]:
    """CPU microseconds of a poll that finds nothing, and of one that finds one chain of ``kind``, each
    right after the guest side ran (as a tracker woken by a kick runs): a poll's fixed cost."""
    side = _Guest(layout, 256, kind)
    try:
        tracker = RingTracker(side.queue.config, side.memory, avail_idx=0, used_idx=0)
        clock = time.process_time_ns
        empty = one = 0
        for _ in range(polls):
            side.ask(b"n")
            start = clock()
            tracker.poll()
            empty += clock() - start
            side.ask(b"1")
            start = clock()
            changes = tracker.poll()
            one += clock() - start
            assert len(changes.avail) == 1 and not changes.anomalies, changes
            assert side.ask(b"u") == 1
            tracker.poll()
    finally:
        side.close()
    return empty / polls / 1e3, one / polls / 1e3


def bench_tracker(layout: Layout, size: int, kind: str, seconds: float) -> tuple[float, float, float]:
    """(chains made available per second of polling, the same with their descriptors read, used elements per
    second of polling)."""
    side = _Guest(layout, size, kind)
    ask = side.ask
    try:
        # as a tap starts, at a vring base
        tracker = RingTracker(side.queue.config, side.memory, avail_idx=0, used_idx=0)
        clock = time.process_time
        poll_s = descs_s = used_s = 0.0
        avail_n = used_n = 0
        while poll_s + descs_s < seconds:
            chains = ask(b"f")
            start = clock()
            changes = tracker.poll()
            middle = clock()
            for chain in changes.avail:
                chain.descriptors  # noqa: B018 -- the tap reads every chain's descriptors (to copy its buffers)
            end = clock()
            poll_s += middle - start
            descs_s += end - middle
            assert len(changes.avail) == chains and not changes.used and not changes.anomalies, changes
            avail_n += chains
            assert ask(b"u") == chains
            changes = None  # (freeing the last round's objects is not the next poll's work)
            start = clock()
            changes = tracker.poll()
            used_s += clock() - start
            assert len(changes.used) == chains and not changes.avail and not changes.anomalies, changes
            assert all(done.chain is not None for done in changes.used)
            used_n += chains
            changes = None
    finally:
        side.close()
    return avail_n / poll_s, avail_n / (poll_s + descs_s), used_n / used_s


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
                for k, figure in enumerate(("chains_per_s", "with_descriptors_per_s", "used_per_s")):
                    best = max(r[k] for r in runs)  # best of: less noise
                    print(json.dumps({"figure": f"{name}.{figure}", "value": round(best), "unit": "chains/s"}),
                          flush=True)
        if args.only:
            continue
        for kind in ("short1-2", "long16"):
            runs = [bench_poll_cost(layout, kind, 50 if args.quick else 1000) for _ in range(repeat)]
            for k, what in enumerate(("empty_poll", f"one_{kind}_poll")):
                if what == "empty_poll" and kind != "short1-2":
                    continue  # (the same figure again)
                best = min(r[k] for r in runs)
                print(json.dumps({"figure": f"rings.{layout.value}.256.{what}_cpu", "value": round(best, 1),
                                  "unit": "us"}), flush=True)
        rate = max(bench_device(layout, 256, seconds) for _ in range(repeat))
        print(json.dumps({"figure": f"rings.{layout.value}.driver_device_round_trip_per_s", "value": round(rate),
                          "unit": "chains/s"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
