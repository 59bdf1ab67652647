#!/usr/bin/env python3
"""Device requests decoded per second: summaries only (``lazy=True``) and with field trees.

For the high-rate queues (blk requestq, net transmitq, scsi requestq, vsock tx) and one
used chain each, ``decode_request(..., lazy=True)`` gives what ``vqtrace show`` prints per
event (summary, response, info: ``struct`` code only); ``decode_request(...)`` also builds
the field trees (construct, and scapy for Ethernet frames). ``summary_vs_tree`` is how
many times faster the summary is. Each figure is the best of three runs; ``--quick`` runs
a fraction of the work. Prints one JSON line per figure:
``{"figure": ..., "value": ..., "unit": ...}``.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqtrace.requests import QueueContext, decode_request

VERSION_1 = 1 << 32


def _cases() -> dict[str, tuple[QueueContext, bytes, bytes | None, int | None, list[int] | None]]:
    blk_read = (QueueContext("blk", 0, VERSION_1), struct.pack("<IIQ", 0, 0, 2048), bytes(4096) + b"\0", 4097,
                [4096, 1])
    frame = bytes.fromhex("525400abcdef525400123456080045000054123440004001000a0a0000010a000002") + bytes(64)
    net_tx = (QueueContext("net", 1, VERSION_1), bytes(12) + frame, None, None, None)
    lun = bytes([1, 0, 0x40, 0, 0, 0, 0, 0])
    cdb = struct.pack(">BBIBHB", 0x28, 0, 2048, 0, 8, 0).ljust(32, b"\0")
    resp = struct.pack("<IIHBB", 0, 0, 0, 0, 0) + bytes(96) + bytes(4096)
    scsi_read = (QueueContext("scsi", 2, VERSION_1), lun + bytes(11) + cdb, resp, len(resp), [108, 4096])
    vsock_hdr = struct.pack("<QQIIIHHIII", 3, 2, 1024, 5000, 64, 1, 5, 0, 262144, 0) + bytes(64)
    vsock_tx = (QueueContext("vsock", 1, VERSION_1), vsock_hdr, None, None, None)
    return {"blk_read": blk_read, "net_tx": net_tx, "scsi_read10": scsi_read, "vsock_tx": vsock_tx}


def _best_rate(count: int, run, repeats: int = 3) -> float:
    best = 0.0
    for _ in range(repeats):
        began = time.perf_counter()
        run(count)
        best = max(best, count / (time.perf_counter() - began))
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: a fraction of the work")
    args = parser.parse_args(argv)
    lazy_count, tree_count = (500, 20) if args.quick else (20000, 400)
    for name, (ctx, readable, written, used_len, wlens) in _cases().items():
        decode_request(ctx, readable, written, used_len, writable_lens=wlens)  # imports and caches, untimed

        def summaries(n: int, ctx=ctx, readable=readable, written=written, used_len=used_len, wlens=wlens) -> None:
            for _ in range(n):
                decode_request(ctx, readable, written, used_len, writable_lens=wlens, lazy=True)

        def trees(n: int, ctx=ctx, readable=readable, written=written, used_len=used_len, wlens=wlens) -> None:
            for _ in range(n):
                decode_request(ctx, readable, written, used_len, writable_lens=wlens)

        lazy = _best_rate(lazy_count, summaries)
        full = _best_rate(tree_count, trees)
        print(json.dumps({"figure": f"requests.{name}.summary", "value": round(lazy), "unit": "requests/s"}))
        print(json.dumps({"figure": f"requests.{name}.tree", "value": round(full), "unit": "requests/s"}))
        print(json.dumps({"figure": f"requests.{name}.summary_vs_tree", "value": round(lazy / full, 1),
                          "unit": "x"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
