#!/usr/bin/env python3
"""Reference devices: requests per second through real rings (guest driver -> DeviceQueue -> device).

Each request is made available by the Python guest driver (vqtrace.driver), kicked,
popped by vqtrace.rings.DeviceQueue, handled by the device, pushed back and read by
the driver: the whole round trip a vhost-user back-end serving the device adds to,
minus the socket. Figures (best of three):

- ``blk_write_4k_split`` / ``blk_read_4k_split`` / ``blk_read_4k_packed``: 4 KiB
  VIRTIO_BLK_T_OUT / T_IN requests on a memory-backed disk;
- ``net_tx_split``: 1514-byte frames transmitted to a callback sink;
- ``vsock_echo_split``: 1 KiB RW packets to the echo service and the echoed RW back.

Prints one JSON line per figure: ``{"figure": ..., "value": ..., "unit": ...}``;
``--quick`` runs a fraction of the work.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqtrace.devices import create_device
from vqtrace.devices.bench import DeviceBench
from vqtrace.devices.vsock import HDR
from vqtrace.model import Layout


def _best_rate(work: Callable[[], int], repeats: int = 3) -> float:
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        done = work()
        best = max(best, done / (time.perf_counter() - start))
    return best


def blk(count: int, kind: int, layout: Layout) -> float:
    bench = DeviceBench(create_device("blk", size=64 << 20), layout=layout, queue_size=256)
    data = bytes(4096)

    def work() -> int:
        for n in range(count):
            sector = (n * 8) % (64 << 11)
            head = struct.pack("<IIQ", kind, 0, sector)
            if kind == 1:
                bench.request(0, [head, data], [1])
            else:
                bench.request(0, [head], [4096, 1])
        return count

    try:
        return _best_rate(work)
    finally:
        bench.close()


def net_tx(count: int) -> float:
    frames = []
    bench = DeviceBench(create_device("net", sink=frames.append), queue_size=256)
    frame = bytes(12) + bytes(6) + bytes.fromhex("525400123456") + b"\x08\x00" + bytes(1500)

    def work() -> int:
        for _ in range(count):
            bench.request(1, [frame])
        frames.clear()
        return count

    try:
        return _best_rate(work)
    finally:
        bench.close()


def vsock_echo(count: int) -> float:
    bench = DeviceBench(create_device("vsock"), queue_size=256)
    for _ in range(128):
        bench.add(0, writable=[4096 + 44], kick=False)
    bench.queues[0].kick(force=True)
    bench.request(1, [HDR.pack(3, 2, 5000, 1234, 0, 1, 1, 0, 1 << 30, 0)])
    bench.used(0)
    bench.add(0, writable=[4096 + 44])
    payload = bytes(1024)
    received = [0]

    def work() -> int:
        for _ in range(count):
            packet = HDR.pack(3, 2, 5000, 1234, len(payload), 1, 5, 0, 1 << 30, received[0]) + payload
            bench.request(1, [packet])
            for _used in bench.used(0):
                received[0] += len(payload)
                bench.add(0, writable=[4096 + 44], kick=False)
        return count

    try:
        return _best_rate(work)
    finally:
        bench.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fraction of the work (a smoke run)")
    args = parser.parse_args()
    count = 300 if args.quick else 5000
    figures = {
        "blk_write_4k_split": blk(count, 1, Layout.SPLIT),
        "blk_read_4k_split": blk(count, 0, Layout.SPLIT),
        "blk_read_4k_packed": blk(count, 0, Layout.PACKED),
        "net_tx_split": net_tx(count),
        "vsock_echo_split": vsock_echo(count),
    }
    for name, value in figures.items():
        print(json.dumps({"figure": name, "value": round(value), "unit": "requests/s"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
