"""The real artefacts in captures/ (made by scripts/make-captures.py) are whole and agree
with each other: no QEMU needed, so this runs everywhere."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import vqtrace_command
from .snapshot import BUNDLE_FORMAT, INFLIGHT_FORMAT, inflight_view, without_elements, write_json

CAPTURES = Path(__file__).resolve().parents[2] / "captures"
SNAPSHOT = CAPTURES / "qemu-emulated.elf.zst"
BUNDLE = CAPTURES / "qemu-emulated.qemu-status.json"
INFLIGHT = CAPTURES / "qemu-emulated.inflight.json"


def test_snapshot_files_are_present_and_documented():
    for path in (SNAPSHOT, BUNDLE, INFLIGHT):
        assert path.is_file(), f"{path.name} is missing: run scripts/make-captures.py"
        assert path.name in (CAPTURES / "README.md").read_text(), f"{path.name} is not in captures/README.md"
    assert SNAPSHOT.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"  # zstd frame magic
    assert SNAPSHOT.stat().st_size < 16 << 20


def test_inflight_view_is_derived_from_the_bundle():
    bundle = json.loads(BUNDLE.read_text())
    view = json.loads(INFLIGHT.read_text())
    assert bundle["format"] == BUNDLE_FORMAT and view["format"] == INFLIGHT_FORMAT
    assert bundle["query-status"]["status"] == "io-error"
    assert inflight_view(bundle) == view


def test_vqtrace_dump_of_the_capture_equals_qemu(tmp_path: Path):
    """``vqtrace dump analyze`` on the committed snapshot finds exactly what QEMU had in flight."""
    vqtrace_command("dump")
    status = write_json(tmp_path / "status.json", without_elements(json.loads(BUNDLE.read_text())))
    proc = subprocess.run([sys.executable, "-m", "vqtrace", "dump", "analyze", str(SNAPSHOT), "--qemu-status",
                           str(status), "-T", "json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads(proc.stdout)
    ours = {(q["path"], q["queue"]): sorted(c["id"] for c in q["in_flight"]) for q in report["queues"]}
    view = json.loads(INFLIGHT.read_text())
    theirs = {(q["path"], q["queue"]): sorted(e["head"] if q["layout"] == "split" else e["id"]
                                              for e in q["in-flight"]) for q in view["queues"]}
    assert ours == theirs
    assert sum(len(heads) for heads in theirs.values()) > 400


@pytest.mark.parametrize("bad", ["not json", '{"format": "vqtrace-qemu-status", "version": 99, "devices": []}'])
def test_dump_rejects_a_bad_status_file_in_one_line(tmp_path: Path, bad: str):
    vqtrace_command("dump")
    status = tmp_path / "bad.json"
    status.write_text(bad)
    proc = subprocess.run([sys.executable, "-m", "vqtrace", "dump", "analyze", str(SNAPSHOT), "--qemu-status",
                           str(status)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name", ["blk-proxy", "blk-backend"])
def test_live_traces_hold_the_workload_and_every_qemu_message(name: str):
    """The recorded vhost-user traces: the guest's patterns, and QEMU's own list of what it sent."""
    from .test_blk_live import check_blk_trace
    from .traces import frontend_messages, qemu_sent, trace_events

    trace, log = CAPTURES / f"{name}.pcapng", CAPTURES / f"{name}.qemu-vhost.log"
    assert trace.name in (CAPTURES / "README.md").read_text() and log.name in (CAPTURES / "README.md").read_text()
    check_blk_trace(trace)
    sent = qemu_sent(log)
    assert len(sent) > 20
    assert frontend_messages(trace_events(trace)) == sent
