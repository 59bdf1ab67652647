"""Scenario 3 (issue 8): QEMU-emulated virtio devices, frozen with a blk read in flight;
``dump-guest-memory`` and the x-query-virtio answers, checked against each other and
against ``vqtrace dump analyze``.

One frozen run (about 15 s with TCG) serves every test of this module.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from vqtrace.memory import GuestMemory

from . import emulated
from .conftest import vqtrace_command
from .guest import ensure_kernel
from .procs import Processes
from .snapshot import PACKED_DESC, inflight_view, is_packed, without_elements, write_json
from .workloads import Pattern, check_disk

pytestmark = pytest.mark.e2e

VIRTQ_DESC = struct.Struct("<QIHH")  # struct virtq_desc (virtio 1.4, 2.7.5)
VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT = 1, 2, 4
EXPECTED_DEVICES = {"virtio-blk", "virtio-net", "virtio-rng", "virtio-serial", "virtio-balloon", "virtio-scsi"}


@pytest.fixture(scope="module")
def frozen(guest_kernel, accel, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("emulated")
    procs = Processes(workdir)
    try:
        snapshot = emulated.take_snapshot(procs, guest_kernel, accel, workdir / "out")
    finally:
        procs.stop_all()
    memory = GuestMemory.from_elf(snapshot.dump)
    yield snapshot, memory, workdir
    memory.close()


def _queues(bundle: dict, name: str | None = None, device_id: str | None = None):
    for device in bundle["devices"]:
        if (name and device["name"] != name) or (device_id and f"/{device_id}/" not in device["path"]):
            continue
        for entry in device["queues"]:
            yield device, entry, entry["x-query-virtio-queue-status"].get("return")


def test_guest_drove_every_device(frozen):
    snapshot, _, workdir = frozen
    assert "VQTRACE-VERDICT PASS devices" in snapshot.console
    assert "VQTRACE-THAWED" not in snapshot.console  # the failing read never returned
    assert (workdir / "hvc0.out").read_text() == emulated.CONSOLE_TEXT + "\n"
    assert (workdir / "port1.out").read_text() == emulated.PORT_TEXT + "\n"
    for disk in ("vda", "vdb", "sda"):
        assert check_disk(workdir / f"{disk}.img", (Pattern(16, 4096),)) == [], disk


def test_bundle_holds_every_device_and_queue(frozen):
    snapshot, _, _ = frozen
    bundle = snapshot.load_bundle()
    assert bundle["format"] == "vqtrace-qemu-status" and bundle["version"] == 1
    assert bundle["query-status"]["status"] == "io-error"
    assert {d["name"] for d in bundle["devices"]} == EXPECTED_DEVICES
    packed = {d["path"].split("/")[3] for d in bundle["devices"] if is_packed(d["x-query-virtio-status"])}
    assert packed == {emulated.PACKED_DEVICE, emulated.PACKED_BALLOON}
    for device in bundle["devices"]:
        status = device["x-query-virtio-status"]
        assert len(device["queues"]) == status["num-vqs"] > 0
        assert not status["broken"], f"{device['path']} is broken (a bad element query?)"
        assert any(s.startswith("VIRTIO_CONFIG_S_DRIVER_OK") for s in status["status"]["statuses"])
        for entry in device["queues"]:
            assert "return" in entry["x-query-virtio-queue-status"], entry


def test_the_failing_read_is_in_flight(frozen):
    """QEMU holds vda's read of FREEZE_SECTOR: one element, a blk IN request, header in the dump."""
    snapshot, memory, _ = frozen
    view = snapshot.load_inflight()
    (vda,) = [q for q in view["queues"] if "/blk0/" in q["path"]]
    assert vda["inuse"] == 1 and len(vda["in-flight"]) == 1
    (element,) = vda["in-flight"]
    header, data, status = element["descs"]
    assert (header["len"], header["flags"]) == (16, ["next"])
    assert (data["len"], sorted(data["flags"])) == (4096, ["next", "write"])
    assert (status["len"], status["flags"]) == (1, ["write"])
    req_type, _, sector = struct.unpack("<IIQ", memory.read(header["addr"], 16))
    assert (req_type, sector) == (0, emulated.FREEZE_SECTOR)  # VIRTIO_BLK_T_IN (virtio 1.4, 5.2.6)


def test_qemu_view_agrees_with_the_dump(frozen):
    """The dump was taken at the moment QEMU answered: its rings say what QEMU says."""
    snapshot, memory, _ = frozen
    view = snapshot.load_inflight()
    checked = 0
    for queue in view["queues"]:
        size = queue["size"]
        entry = _find(snapshot.load_bundle(), queue)["x-query-virtio-queue-status"]["return"]
        if queue["layout"] == "split":
            used_idx = memory.read_u16(entry["vring-used"] + 2)
            assert used_idx == queue["used-idx"], queue
            assert memory.read_u16(entry["vring-avail"] + 2) == queue["avail-idx"], queue
            # QEMU completes these queues in order: what it took and did not use is its inuse.
            assert (queue["last-avail-idx"] - queue["used-idx"]) & 0xFFFF == queue["inuse"], queue
            assert len(queue["in-flight"]) == (queue["avail-idx"] - used_idx) & 0xFFFF
            for element in queue["in-flight"]:
                assert "error" not in element, element
                head = memory.read_u16(entry["vring-avail"] + 4 + 2 * (element["index"] % size))
                assert head == element["head"]
                addr, length, flags, _ = VIRTQ_DESC.unpack(memory.read(entry["vring-desc"] + 16 * head, 16))
                if not flags & VIRTQ_DESC_F_INDIRECT:
                    first = element["descs"][0]
                    assert (addr, length) == (first["addr"], first["len"])
                checked += 1
        else:
            assert len(queue["in-flight"]) == (queue["last-avail-idx"] - queue["used-idx"]) % size
            for element in queue["in-flight"]:
                raw = memory.read(entry["vring-desc"] + PACKED_DESC.size * element["slot"], PACKED_DESC.size)
                assert PACKED_DESC.unpack(raw)[2] == element["id"]
                checked += 1
    assert checked > 400  # net rx, serial rx and control, scsi events, the blk read, the balloon stats


def _find(bundle: dict, queue: dict) -> dict:
    for device in bundle["devices"]:
        if device["path"] == queue["path"]:
            return device["queues"][queue["queue"]]
    raise KeyError(queue["path"])


def test_balloon_stats_buffer_in_flight_on_a_packed_ring(frozen):
    snapshot, _, _ = frozen
    view = snapshot.load_inflight()
    (stats,) = [q for q in view["queues"] if f"/{emulated.PACKED_BALLOON}/" in q["path"] and q["queue"] == 2]
    assert stats["layout"] == "packed" and stats["inuse"] == 1
    (element,) = stats["in-flight"]
    assert element["len"] > 0 and "write" not in element["flags"]  # the driver's stats, for the device to read


def test_stripped_bundle_has_no_answer_key(frozen):
    snapshot, _, _ = frozen
    stripped = without_elements(snapshot.load_bundle())
    text = json.dumps(stripped)
    assert "x-query-virtio-queue-element" not in text and "human-monitor-command" not in text
    assert inflight_view(stripped)["queues"]  # still every queue, without elements


# --- vqtrace dump analyze against QEMU's own view ---

def vqtrace_inflight(report: dict) -> dict[tuple[str, int], set[int]]:
    """{(device path, queue): in-flight head ids} from ``vqtrace dump analyze -T json``."""
    out = {}
    for queue in report["queues"]:
        out[(queue["path"], queue["queue"])] = {chain["id"] for chain in queue["in_flight"]}
    return out


def qemu_inflight(view: dict) -> dict[tuple[str, int], set[int]]:
    out = {}
    for queue in view["queues"]:
        ids = [e["head"] for e in queue["in-flight"]] if queue["layout"] == "split" else \
            [e["id"] for e in queue["in-flight"]]
        out[(queue["path"], queue["queue"])] = set(ids)
    return out


def test_vqtrace_dump_inflight_equals_qemu(frozen, tmp_path: Path):
    vqtrace_command("dump")
    snapshot, _, _ = frozen
    status = write_json(tmp_path / "status.json", without_elements(snapshot.load_bundle()))
    proc = subprocess.run([sys.executable, "-m", "vqtrace", "dump", "analyze", str(snapshot.dump),
                           "--qemu-status", str(status), "-T", "json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr
    ours = vqtrace_inflight(json.loads(proc.stdout))
    theirs = qemu_inflight(snapshot.load_inflight())
    assert set(ours) == set(theirs)
    for key, heads in theirs.items():
        assert ours[key] == heads, f"{key}: vqtrace {sorted(ours[key])}, QEMU {sorted(heads)}"


def test_kernel_cache_is_reused(guest_kernel):
    """A second ensure_kernel() finds the cached kernel without fetching (no network needed)."""
    assert ensure_kernel() == guest_kernel
