"""`--qemu-status`: QEMU's x-query-virtio answers as a bundle, a QMP transcript or bare answers; features by
name; QEMU's indices set against guest memory."""

from __future__ import annotations

import json

import pytest

from conftest import run_vqtrace
from vqtrace.dump.analyze import DEVICE_BROKEN, QEMU_USED_IDX_MISMATCH, analyze_queue, targets_from_qemu
from vqtrace.dump.qemu_status import features_of, parse_qemu_status
from vqtrace.dump.synth import VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, SyntheticGuest
from vqtrace.errors import UsageError
from vqtrace.model import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1

PATH = "/machine/peripheral/blk0/virtio-backend"
TRANSPORTS = ["VIRTIO_RING_F_EVENT_IDX: Used & avail. event fields enabled",
              "VIRTIO_RING_F_INDIRECT_DESC: Indirect descriptors supported",
              "VIRTIO_F_VERSION_1: Device compliant for v1 spec (legacy)"]


def _status(name: str = "virtio-blk", device_id: int = 2, packed: bool = False, broken: bool = False) -> dict:
    transports = [*TRANSPORTS, *(["VIRTIO_F_RING_PACKED: Packed ring"] if packed else [])]
    return {"name": name, "device-id": device_id, "num-vqs": 1, "broken": broken,
            "status": {"statuses": ["VIRTIO_CONFIG_S_DRIVER_OK: Driver setup and ready"]},
            "guest-features": {"dev-features": ["VIRTIO_BLK_F_SEG_MAX: Max segments in a request is seg_max"],
                               "transports": transports}}


def _queue(config, last_avail: int, used: int, inuse: int) -> dict:
    return {"name": "virtio-blk", "queue-index": config.index, "vring-num": config.size, "vring-desc": config.desc,
            "vring-avail": config.driver, "vring-used": config.device, "last-avail-idx": last_avail,
            "used-idx": used, "inuse": inuse, "shadow-avail-idx": 0, "signalled-used": used}


def _bundle(status: dict, queue: dict) -> dict:
    return {"format": "vqtrace-qemu-status", "version": 1, "query-status": {"status": "paused"},
            "x-query-virtio": [{"path": PATH, "name": status["name"]}],
            "devices": [{"path": PATH, "name": status["name"], "x-query-virtio-status": status,
                         "queues": [{"queue": 0, "x-query-virtio-queue-status": {"return": queue}}]}]}


@pytest.fixture
def guest():
    g = SyntheticGuest(4 << 20)
    q = g.blk_queue(0x100000, 256)
    g.blk(q, VIRTIO_BLK_T_OUT, 2048)
    g.blk(q, VIRTIO_BLK_T_IN, 4096)
    g.take(q, 1)
    return g, q


def test_features_by_name_back_to_bits():
    bits, unknown = features_of({"transports": [*TRANSPORTS, "VIRTIO_F_RING_PACKED: packed"],
                                 "dev-features": ["VHOST_USER_F_PROTOCOL_FEATURES: vhost-user",
                                                  "VIRTIO_BLK_F_FLUSH: Flush command supported", "NOT_A_FEATURE: ?"],
                                 "unknown-dev-features": 1 << 50}, 2)
    want = [VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, VIRTIO_F_RING_PACKED, 30, 9, 50]
    assert bits == sum(1 << b for b in want)
    assert unknown == ["NOT_A_FEATURE"]


def test_bundle_gives_configs_and_qemu_indices(guest):
    _, q = guest
    status = parse_qemu_status(json.dumps(_bundle(_status(), _queue(q.config, 1, 0, 1))), "bundle")
    assert status.vm_status == "paused"
    (device,) = status.devices
    (target,) = targets_from_qemu(status.devices)
    assert target.config.desc == q.config.desc and target.config.device_type == 2 and target.device == "blk"
    assert target.config.event_idx and target.config.indirect and not target.config.packed
    assert target.qemu_queue.last_avail_idx == 1 and device.path == PATH


def test_transcript_and_bare_answers(guest):
    _, q = guest
    qs = _queue(q.config, 1, 0, 1)
    lines = [{"execute": "x-query-virtio-status", "arguments": {"path": PATH}}, {"return": _status()},
             {"execute": "x-query-virtio-queue-status", "arguments": {"path": PATH, "queue": 0}}, {"return": qs},
             {"event": "STOP", "data": {}}]
    for text in ("\n".join(json.dumps(m) for m in lines), json.dumps(lines),
                 json.dumps([{"execute": "x-query-virtio-status", "arguments": {"path": PATH}, "return": _status()},
                             {"execute": "x-query-virtio-queue-status", "arguments": {"path": PATH, "queue": 0},
                              "return": qs}]),
                 json.dumps([{"return": _status()}, {"return": qs}])):
        (device,) = parse_qemu_status(text).devices
        assert [queue.desc for queue in device.queues] == [q.config.desc]


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "not JSON"),
    (json.dumps({"format": "vqtrace-qemu-status", "version": 99, "devices": []}), "newer"),
    (json.dumps([{"return": {"vring-num": 8}}]), "no x-query-virtio-status answer"),
    (json.dumps([{"return": _status()}, {"return": _status()},
                 {"return": {"name": "virtio-blk", "vring-num": 8, "vring-desc": 1, "vring-avail": 2, "vring-used": 3,
                             "queue-index": 0}}]), "cannot be matched"),
    (json.dumps({"devices": [{"path": PATH, "x-query-virtio-status": _status(),
                              "queues": [{"queue": 0, "x-query-virtio-queue-status": {"return": {
                                  "vring-num": -1, "vring-desc": 0, "vring-avail": 0, "vring-used": 0}}}]}]}),
     "vring-num is not"),
])
def test_bad_status_files(text, message):
    with pytest.raises(UsageError, match=message):
        parse_qemu_status(text)


def test_device_broken_and_index_mismatch_are_anomalies(guest):
    g, q = guest
    status = parse_qemu_status(json.dumps(_bundle(_status(broken=True), _queue(q.config, 2, 1, 0))))
    (target,) = targets_from_qemu(status.devices)
    report = analyze_queue(g.memory, target)
    codes = {a.code for a in report.anomalies}
    assert codes == {DEVICE_BROKEN, QEMU_USED_IDX_MISMATCH}


def test_in_flight_chains_placed_on_the_device_side(guest):
    g, q = guest
    status = parse_qemu_status(json.dumps(_bundle(_status(), _queue(q.config, 1, 0, 1))))
    (target,) = targets_from_qemu(status.devices)
    report = analyze_queue(g.memory, target)
    assert report.anomalies == []
    assert [(c.summary, c.state) for c in report.in_flight] == [
        ("blk OUT sector=2048 len=4096", "taken by the device"),
        ("blk IN sector=4096 len=4096", "waiting for the device")]
    assert report.notes == []  # QEMU's inuse says the queue is served in order: the in-flight set is exact


def test_cli_status_without_set_up_queues(tmp_path, guest):
    g, q = guest
    elf = g.write_elf(tmp_path / "guest.elf")
    idle = _queue(q.config, 0, 0, 0)
    idle.update({"vring-desc": 0, "vring-avail": 0, "vring-used": 0})
    path = tmp_path / "status.json"
    path.write_text(json.dumps(_bundle(_status(), idle)))
    result = run_vqtrace("dump", "analyze", str(elf), "--qemu-status", str(path))
    assert result.returncode == 2 and b"no queue of any device is set up" in result.stderr
    path.write_text(json.dumps(_bundle(_status(), _queue(q.config, 1, 0, 1))))
    result = run_vqtrace("dump", "analyze", str(elf), "--qemu-status", str(path))
    assert result.returncode == 0, result.stderr
    assert b"avail[0] id 0: blk OUT sector=2048 len=4096 in flight (taken by the device)" in result.stdout
