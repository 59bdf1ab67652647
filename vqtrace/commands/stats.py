"""Summarise a trace file: per queue requests, bytes, latency, in-flight peak, anomalies; vhost-user counts.

Per queue (source and index): chains made available and used, bytes each way
(the chains' readable bytes to the device, used lengths to the driver), the
completion latency from AVAIL to USED of the same chain id (min, median, p99,
max), the peak number of chains in flight, kicks, calls and anomalies by code.
Then the vhost-user requests by name (front-end and back-end channel, requests and
replies). -T json prints the same as one object.

Examples:
  vqtrace stats trace.pcapng
  vqtrace stats trace.pcapng -T json
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..errors import TraceFileError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a vqtrace trace (pcapng)")
    parser.add_argument("-T", dest="format", choices=("text", "json"), default="text", help="output format")


@dataclass
class QueueStats:
    source: str
    queue: int
    device: str = ""
    role: str = ""
    avail: int = 0
    used: int = 0
    bytes_to_device: int = 0
    bytes_to_driver: int = 0
    kicks: int = 0
    calls: int = 0
    peak_in_flight: int = 0
    latencies: list[int] = field(default_factory=list)  # ns
    anomalies: Counter[str] = field(default_factory=Counter)
    pending: dict[int, int] = field(default_factory=dict)  # chain id -> time made available

    def latency(self) -> dict[str, Any]:
        import statistics  # 4 ms of imports (fractions, random) every command would pay

        values = sorted(self.latencies)
        if not values:
            return {"count": 0}
        p99 = values[max(0, math.ceil(0.99 * len(values)) - 1)]  # the nearest-rank percentile
        return {"count": len(values), "min_us": values[0] / 1000, "median_us": statistics.median(values) / 1000,
                "p99_us": p99 / 1000, "max_us": values[-1] / 1000}

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "queue": self.queue, "device": self.device, "role": self.role,
                "avail": self.avail, "used": self.used, "bytes_to_device": self.bytes_to_device,
                "bytes_to_driver": self.bytes_to_driver, "in_flight": len(self.pending),
                "peak_in_flight": self.peak_in_flight, "kicks": self.kicks, "calls": self.calls,
                "latency": self.latency(), "anomalies": dict(sorted(self.anomalies.items()))}


def collect(path: str) -> dict[str, Any]:
    """The statistics of the trace at ``path`` (struct reads of the record headers and bodies only)."""
    from ..dissectors import record as layout
    from ..dissectors.vhost_user import BACKEND_REQUESTS, REQUESTS
    from ..trace.reader import TraceReader

    header = layout.HEADER
    chain_struct = layout.CHAIN_STRUCT
    queues: dict[tuple[str, int], QueueStats] = {}
    kinds: Counter[str] = Counter()
    anomalies: Counter[str] = Counter()
    vhost: dict[str, Counter[str]] = {"front-end": Counter(), "back-end": Counter()}
    records = 0
    first = last = None
    problems: list[tuple[int, str]] = []
    kind_names = {value: name for name, value in layout.KINDS.items()}
    with TraceReader(path) as reader:
        for frame in reader:
            data = frame.data
            if frame.interface.linktype != layout.LINKTYPE_VQTRACE:
                continue
            if not data or data[0] != layout.RECORD_VERSION or len(data) < layout.HEADER_SIZE:
                why = ("empty record" if not data else f"unknown record version {data[0]}"
                       if data[0] != layout.RECORD_VERSION else "record shorter than its header")
                problems.append((frame.offset, f"frame {frame.number}: {why}"))
                continue
            records += 1
            first = frame.time_ns if first is None else first
            last = frame.time_ns
            (_, kind, _direction, flags, hdr_len, queue, device, role, channel, _fds, _lo, _hi, _c,
             _s) = header.unpack_from(data)
            kinds[kind_names.get(kind, str(kind))] += 1
            try:
                if kind == 1:
                    if len(data) >= hdr_len + 12:
                        number, mflags, _size = struct.unpack_from("<III", data, hdr_len)
                        table = BACKEND_REQUESTS if channel == 1 else REQUESTS
                        name = table.get(number, f"request {number}")
                        name += " (reply)" if mflags & 4 else ""
                        vhost["back-end" if channel == 1 else "front-end"][name] += 1
                    continue
                if not flags & layout.FLAG_QUEUE:
                    continue
                key = (frame.source, queue)
                stats = queues.get(key)
                if stats is None:
                    stats = queues[key] = QueueStats(frame.source, queue, layout.DEVICE_NAMES.get(
                        device, str(device)).removeprefix("VIRTIO_ID_").lower(), layout.ROLE_NAMES.get(role, "?"))
                if kind == 2:
                    stats.kicks += 1
                elif kind == 3:
                    stats.calls += 1
                elif kind == 4:
                    cid, _idx, _flags, _n, rlen, _wlen = chain_struct.unpack_from(data, hdr_len)
                    stats.avail += 1
                    stats.bytes_to_device += rlen
                    stats.pending[cid] = frame.time_ns
                    stats.peak_in_flight = max(stats.peak_in_flight, len(stats.pending))
                elif kind == 5:
                    uid, ulen = struct.unpack_from("<II", data, hdr_len)
                    stats.used += 1
                    stats.bytes_to_driver += ulen
                    made = stats.pending.pop(uid & 0xFFFF, None)
                    if made is not None:
                        stats.latencies.append(frame.time_ns - made)
                elif kind == 7:
                    code_len = data[hdr_len + 1]
                    at = hdr_len + layout.ANOMALY_STRUCT.size
                    code = data[at:at + code_len].decode("utf-8", "replace")
                    stats.anomalies[code] += 1
                    anomalies[code] += 1
            except (struct.error, IndexError):
                problems.append((frame.offset, f"frame {frame.number}: {kind_names.get(kind, kind)} record body "
                                               "too short"))
        problems = [(p.offset, p.message) for p in reader.problems] + problems
    return {
        "file": path,
        "events": records,
        "duration_s": (last - first) / 1e9 if first is not None else 0.0,
        "kinds": dict(kinds),
        "queues": [q.to_json() for _, q in sorted(queues.items())],
        "vhost_user": {side: dict(sorted(counts.items())) for side, counts in vhost.items()},
        "anomalies": dict(sorted(anomalies.items())),
        "problems": [{"offset": offset, "message": message} for offset, message in problems],
    }


def run(args: argparse.Namespace) -> int:
    result = collect(args.file)
    if args.format == "json":
        print(json.dumps(result, indent=2))
    else:
        sys.stdout.write(render(result))
    if result["problems"]:
        first = result["problems"][0]
        more = len(result["problems"]) - 1
        raise TraceFileError(first["message"] + (f" (and {more} more)" if more else ""), path=args.file,
                             offset=first["offset"])
    return 0


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(result: dict[str, Any]) -> str:
    lines = [f"{result['file']}: {result['events']} events in {result['duration_s']:.6f} s"]
    kinds = ", ".join(f"{name} {count}" for name, count in result["kinds"].items())
    if kinds:
        lines.append(f"  {kinds}")
    if result["queues"]:
        lines.append("")
        lines.append(f"{'source':<20} {'queue':>5} {'device':<8} {'role':<10} {'avail':>7} {'used':>7} "
                     f"{'to device':>11} {'to driver':>11} {'min us':>8} {'median':>8} {'p99':>8} {'max':>8} "
                     f"{'peak':>5} {'kicks':>6} {'calls':>6}  anomalies")
        for q in result["queues"]:
            lat = q["latency"]
            anomalies = ", ".join(f"{code} {n}" for code, n in q["anomalies"].items()) or "-"
            lines.append(f"{q['source']:<20} {q['queue']:>5} {q['device']:<8} {q['role']:<10} {q['avail']:>7} "
                         f"{q['used']:>7} {q['bytes_to_device']:>11} {q['bytes_to_driver']:>11} "
                         f"{_us(lat.get('min_us')):>8} {_us(lat.get('median_us')):>8} {_us(lat.get('p99_us')):>8} "
                         f"{_us(lat.get('max_us')):>8} {q['peak_in_flight']:>5} {q['kicks']:>6} {q['calls']:>6}  "
                         f"{anomalies}")
    for side, counts in result["vhost_user"].items():
        if counts:
            lines.append("")
            lines.append(f"vhost-user requests ({side} channel):")
            lines.extend(f"  {name:<48} {count:>6}" for name, count in counts.items())
    if result["anomalies"]:
        lines.append("")
        lines.append("anomalies:")
        lines.extend(f"  {code:<32} {count:>6}" for code, count in result["anomalies"].items())
    return "\n".join(lines) + "\n"
