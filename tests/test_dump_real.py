"""`vqtrace dump` on the committed real snapshot (captures/qemu-emulated.*: a Debian guest under QEMU 7.2,
frozen with a disk read in flight): runs without QEMU, and agrees with QEMU's own view of every queue."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ROOT, run_vqtrace

CAPTURES = ROOT / "captures"
SNAPSHOT = CAPTURES / "qemu-emulated.elf.zst"
STATUS = CAPTURES / "qemu-emulated.qemu-status.json"
INFLIGHT = CAPTURES / "qemu-emulated.inflight.json"

pytestmark = pytest.mark.skipif(not (SNAPSHOT.exists() and STATUS.exists() and INFLIGHT.exists()),
                                reason="captures/qemu-emulated.* are not in the tree")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """One decompression cache for the module (the snapshot is decompressed once)."""
    import os

    return dict(os.environ, VQTRACE_CACHE_DIR=str(tmp_path_factory.mktemp("cache")))


def _qemu_view() -> dict[tuple[str, int], set[int]]:
    view = json.loads(INFLIGHT.read_text())
    out = {}
    for queue in view["queues"]:
        key = "head" if queue["layout"] == "split" else "id"
        out[(queue["path"], queue["queue"])] = {element[key] for element in queue["in-flight"]}
    return out


def test_info(env):
    result = run_vqtrace("dump", "info", str(SNAPSHOT), "-T", "json", env=env)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["format"] == "elf" and doc["compression"] == "zstd" and doc["cpus"] == 1
    assert doc["ranges"][0]["start"] == 0 and doc["ranges"][0]["size"] == 128 << 20


def test_analyze_with_qemu_status_equals_qemus_in_flight_view(env):
    result = run_vqtrace("dump", "analyze", str(SNAPSHOT), "--qemu-status", str(STATUS), "-T", "json", env=env)
    assert result.returncode == 0, result.stderr  # a healthy guest: no anomaly
    doc = json.loads(result.stdout)
    ours = {(q["path"], q["queue"]): {c["id"] for c in q["in_flight"]} for q in doc["queues"]}
    assert ours == _qemu_view()
    (vda,) = [q for q in doc["queues"] if q["path"].endswith("/blk0/virtio-backend")]
    (read,) = vda["in_flight"]
    assert read["summary"] == "blk IN sector=40960 len=4096" and read["state"] == "taken by the device"
    assert (vda["qemu"]["last_avail_idx"], vda["qemu"]["used_idx"], vda["qemu"]["inuse"]) == (5, 4, 1)


def test_analyze_text_names_the_frozen_read(env):
    result = run_vqtrace("dump", "analyze", str(SNAPSHOT), "--qemu-status", str(STATUS), env=env)
    out = result.stdout.decode()
    assert "avail[4] id 0: blk IN sector=40960 len=4096 in flight (taken by the device)" in out
    assert "ARP 10.0.2.2 is-at 52:55:0a:00:02:02" in out  # a completed receive, still in the ring
    assert out.rstrip().endswith("18 queues, 551 chains in flight, 0 anomalies")


def test_scan_finds_the_queues_qemu_knows_and_agrees_on_what_is_in_flight(env):
    status = json.loads(STATUS.read_text())
    known = {}
    for device in status["devices"]:
        for entry in device["queues"]:
            answer = entry["x-query-virtio-queue-status"].get("return")
            if answer and answer["vring-desc"]:
                known[answer["vring-desc"]] = (device["path"], entry["queue"], answer)
    result = run_vqtrace("dump", "analyze", str(SNAPSHOT), "--scan", "-T", "json", env=env)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    found = {q["desc"]: q for q in doc["queues"]}
    qemu = _qemu_view()
    matched = 0
    for desc, (path, index, answer) in known.items():
        idle = answer["last-avail-idx"] == 0 and answer["used-idx"] == 0
        if idle and not qemu[(path, index)]:
            continue  # never used: all zero, nothing to find
        assert desc in found, f"{path} queue {index} at {desc:#x} not found"
        queue = found[desc]
        assert queue["size"] == answer["vring-num"] or queue["layout"] == "packed"
        if queue["layout"] == "split":
            assert (queue["driver"], queue["device_area"]) == (answer["vring-avail"], answer["vring-used"])
        assert {c["id"] for c in queue["in_flight"]} == qemu[(path, index)], (path, index)
        matched += 1
    assert matched >= 15
    extra = [q for d, q in found.items() if d not in known]
    assert all(q["desc"] >= 0x7F00000 for q in extra), extra  # only SeaBIOS's old rings near the top of RAM


def test_trace_of_the_snapshot_is_readable(env, tmp_path: Path):
    from vqtrace.trace.reader import TraceReader

    trace = tmp_path / "snapshot.pcapng"
    result = run_vqtrace("dump", "analyze", str(SNAPSHOT), "--qemu-status", str(STATUS), "-w", str(trace), env=env)
    assert result.returncode == 0, result.stderr
    with TraceReader(trace) as reader:
        events = list(reader.events())
    avail = [e for e in events if e.kind.name == "AVAIL" and e.device_type == 2 and e.chain.id == 0]
    assert any(e.data[:4] == b"\0\0\0\0" and int.from_bytes(e.data[8:16], "little") == 40960 for e in avail)
    assert len([e for e in events if e.kind.name == "AVAIL"]) >= 551
