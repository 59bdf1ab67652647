"""vqtrace stats: per-queue counts, bytes, latency percentiles, in-flight peak, anomalies, vhost-user counts."""

from __future__ import annotations

import json
import struct

from conftest import run_vqtrace
from vqtrace.commands.stats import collect
from vqtrace.dissectors.vhost_user import pack_message
from vqtrace.events import Direction, Event, EventKind
from vqtrace.model import Anomaly, Chain, Descriptor, UsedElem
from vqtrace.trace.samples import write_samples
from vqtrace.trace.writer import write_trace

T0 = 1_000_000_000


def chain(ident: int, data: int, writable: int) -> Chain:
    return Chain(0, ident, ident, [Descriptor(addr=0x1000, len=16, flags=1, index=ident, next=ident + 1),
                                   Descriptor(addr=0x2000, len=data, flags=1, index=ident + 1, next=ident + 2),
                                   Descriptor(addr=0x3000, len=writable, flags=2, index=ident + 2)])


def blk_trace(path):
    events = [Event(EventKind.VHOST_USER, T0, "sock", data=pack_message(1)),
              Event(EventKind.VHOST_USER, T0, "sock", data=pack_message(1, struct.pack("<Q", 1 << 32), reply=True)),
              Event(EventKind.VHOST_USER, T0, "sock", data=pack_message(4, struct.pack("<II", 0, 1)), channel=1)]
    # ten requests on queue 0 with latencies 10, 20, ..., 100 µs; all ten in flight at once
    for i in range(10):
        events.append(Event(EventKind.AVAIL, T0 + i, "blk0", 0, Direction.TO_DEVICE, b"h" * 16, 2,
                            chain=chain(i * 3, 512, 1)))
    for i in range(10):
        events.append(Event(EventKind.USED, T0 + i + (i + 1) * 10_000, "blk0", 0, Direction.TO_DRIVER, b"", 2,
                            chain=chain(i * 3, 512, 1), used=UsedElem(0, i * 3, 1, i), written=b"\0"))
    events.sort(key=lambda e: e.time_ns)
    events += [Event(EventKind.KICK, T0 + 200_000, "blk0", 0, device_type=2),
               Event(EventKind.CALL, T0 + 200_001, "blk0", 0, device_type=2),
               Event(EventKind.CALL, T0 + 200_002, "blk0", 0, device_type=2),
               Event(EventKind.ANOMALY, T0 + 200_003, "blk0", 0, device_type=2,
                     anomaly=Anomaly("DESC_LOOP", "virtio 1.4, 2.7.5.2", "loop")),
               Event(EventKind.AVAIL, T0 + 200_004, "blk0", 1, Direction.TO_DEVICE, b"", 2, chain=chain(0, 8, 1))]
    write_trace(path, events)
    return path


def test_queue_statistics(tmp_path):
    result = collect(str(blk_trace(tmp_path / "t.pcapng")))
    q0, q1 = result["queues"]
    assert (q0["queue"], q0["device"], q0["role"]) == (0, "block", "REQUEST")
    assert (q0["avail"], q0["used"], q0["in_flight"], q0["peak_in_flight"]) == (10, 10, 0, 10)
    assert q0["bytes_to_device"] == 10 * (16 + 512) and q0["bytes_to_driver"] == 10
    lat = q0["latency"]
    assert lat == {"count": 10, "min_us": 10.0, "median_us": 55.0, "p99_us": 100.0, "max_us": 100.0}
    assert (q0["kicks"], q0["calls"], q0["anomalies"]) == (1, 2, {"DESC_LOOP": 1})
    assert (q1["avail"], q1["used"], q1["in_flight"], q1["latency"]) == (1, 0, 1, {"count": 0})
    assert result["vhost_user"] == {"front-end": {"VHOST_USER_GET_FEATURES": 1, "VHOST_USER_GET_FEATURES (reply)": 1},
                                    "back-end": {"VHOST_USER_BACKEND_VRING_CALL": 1}}
    assert result["anomalies"] == {"DESC_LOOP": 1} and result["problems"] == []
    assert result["events"] == 28 and result["kinds"]["USED"] == 10


def test_stats_cli_text_and_json(tmp_path):
    path = blk_trace(tmp_path / "t.pcapng")
    proc = run_vqtrace("stats", str(path))
    text = proc.stdout.decode()
    assert proc.returncode == 0
    assert "blk0" in text and "VHOST_USER_BACKEND_VRING_CALL" in text and "DESC_LOOP" in text
    row = next(line for line in text.splitlines() if line.startswith("blk0") and " REQUEST " in line
               and line.split()[1] == "0")
    assert row.split()[4:8] == ["10", "10", "5280", "10"]
    proc = run_vqtrace("stats", str(path), "-T", "json")
    assert json.loads(proc.stdout)["queues"][0]["latency"]["median_us"] == 55.0


def test_stats_of_the_samples_and_of_bad_files(tmp_path):
    path = tmp_path / "s.pcapng"
    write_samples(path)
    result = collect(str(path))
    devices = {q["device"] for q in result["queues"]}
    assert devices >= {"net", "block", "console", "rng", "balloon", "scsi", "vsock"}
    assert result["anomalies"] == {"DESC_LOOP": 1, "USED_ID_NOT_IN_FLIGHT": 1}
    data = path.read_bytes()
    (tmp_path / "cut").write_bytes(data[:-5])
    proc = run_vqtrace("stats", str(tmp_path / "cut"))
    assert proc.returncode == 2 and b"truncated block" in proc.stderr and b"Traceback" not in proc.stderr
    assert proc.stderr.count(b"\n") == 1 and b"events" in proc.stdout  # the statistics of what is there
    (tmp_path / "junk").write_bytes(b"junk" * 10)
    proc = run_vqtrace("stats", str(tmp_path / "junk"), "-T", "json")
    assert proc.returncode == 2 and b"not a pcapng file" in proc.stderr and proc.stdout == b""
