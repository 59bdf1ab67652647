"""`vqtrace dump analyze` on synthetic snapshots built with the test driver: every anomaly, packed rings,
in-flight and completed requests decoded, QEMU's status compared, JSON, traces and bad arguments."""

from __future__ import annotations

import json
import struct

import pytest

from conftest import run_vqtrace
from vqtrace.dissectors.virtqueue import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from vqtrace.dump.analyze import Target, analyze_queue
from vqtrace.dump.synth import BLK_FEATURES, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, SyntheticGuest
from vqtrace.model import VIRTIO_F_VERSION_1
from vqtrace.trace.reader import TraceReader

MiB = 1 << 20
RING = 0x100000
DESC = struct.Struct("<QIHH")


def _last_desc(guest: SyntheticGuest, queue, head: int) -> int:
    index = head
    for _ in range(queue.size):
        _, _, flags, nxt = DESC.unpack(guest.memory.read(queue.config.desc + 16 * index, 16))
        if not flags & VIRTQ_DESC_F_NEXT:
            return index
        index = nxt
    raise AssertionError("loop")


def _loop(g, q):
    head = g.blk(q, VIRTIO_BLK_T_OUT, 8)
    last = _last_desc(g, q, head)
    addr, length, flags, _ = DESC.unpack(g.memory.read(q.config.desc + 16 * last, 16))
    q.write_desc(last, addr, length, flags | VIRTQ_DESC_F_NEXT, head)


def _hook(**changes):
    """A driver hook setting descriptor fields: keys ``"index,field"`` (``"0,flags|"`` ORs flags in)."""
    def hook(specs):
        for key, value in changes.items():
            index, name = key.split(",")
            if name == "flags|":
                specs[int(index)].flags |= value
            else:
                setattr(specs[int(index)], name, value)
    return hook


def _indirect_bad_len(g, q):
    g.blk(q, VIRTIO_BLK_T_OUT, 8, indirect=True)
    addr, _, flags, nxt = DESC.unpack(g.memory.read(q.config.desc, 16))
    q.write_desc(0, addr, 17, flags, nxt)


def _used_id_out_of_range(g, q):
    g.blk(q, VIRTIO_BLK_T_OUT, 8)
    g.blk(q, VIRTIO_BLK_T_OUT, 16)
    g.complete(q, 1)
    q.ring.set_used_elem(0, 77, 1)


def _head_twice(g, q):
    g.blk(q, VIRTIO_BLK_T_OUT, 8)
    q.expose(q.in_flight[0])


def _packed_stray_stamp(g, q):
    for sector in (0, 8, 16):
        g.blk(q, VIRTIO_BLK_T_OUT, sector)
    g.complete(q, 3)
    q.get_used()
    g.blk(q, VIRTIO_BLK_T_OUT, 24)  # slots 9..11, still lap 1; slot 13 made to look like lap 1 too
    q.write_desc(13, 0x300000, 16, 0x80, 0)  # flags AVAIL: the stamp of lap 1


def _packed_same_id(g, q):
    g.blk(q, VIRTIO_BLK_T_OUT, 8)
    g.blk(q, VIRTIO_BLK_T_OUT, 16, hook=lambda specs: [setattr(s, "id", 0) for s in specs])


# (anomaly code, queue size, packed, features, how to build it)
CASES = [
    ("DESC_LOOP", 8, False, BLK_FEATURES, _loop),
    ("DESC_INDEX_RANGE", 8, False, BLK_FEATURES, lambda g, q: g.blk(q, 1, 8, hook=_hook(**{"0,next": 99}))),
    ("DESC_OUT_OF_MEMORY", 8, False, BLK_FEATURES, lambda g, q: g.blk(q, 1, 8, hook=_hook(**{"1,addr": 1 << 40}))),
    ("READABLE_AFTER_WRITABLE", 8, False, BLK_FEATURES,
     lambda g, q: g.blk(q, 1, 8, hook=_hook(**{"0,flags|": VIRTQ_DESC_F_WRITE}))),
    ("INDIRECT_WITH_NEXT", 8, False, BLK_FEATURES,
     lambda g, q: g.blk(q, 1, 8, indirect=True, hook=_hook(**{"0,flags|": VIRTQ_DESC_F_NEXT, "0,next": 3}))),
    ("NESTED_INDIRECT", 8, False, BLK_FEATURES,
     lambda g, q: g.blk(q, 1, 8, indirect=True, indirect_hook=_hook(**{"1,flags|": VIRTQ_DESC_F_INDIRECT}))),
    ("CHAIN_TOO_LONG", 4, False, BLK_FEATURES, lambda g, q: q.add([b"x"] * 10, [1], indirect=True)),
    ("INDIRECT_NOT_NEGOTIATED", 8, False, 1 << VIRTIO_F_VERSION_1, lambda g, q: g.blk(q, 1, 8, indirect=True)),
    ("INDIRECT_BAD_LEN", 8, False, BLK_FEATURES, _indirect_bad_len),
    ("AVAIL_IDX_AHEAD", 8, False, BLK_FEATURES, lambda g, q: (g.blk(q, 1, 8), q.set_avail_idx(20))),
    ("USED_ID_NOT_IN_FLIGHT", 8, False, BLK_FEATURES, _used_id_out_of_range),
    ("HEAD_REUSED_IN_FLIGHT", 8, False, BLK_FEATURES, _head_twice),
    ("PACKED_ID_RANGE", 8, True, BLK_FEATURES,
     lambda g, q: g.blk(q, 1, 8, hook=lambda specs: [setattr(s, "id", 50) for s in specs])),
    ("PACKED_WRAP_MISMATCH", 16, True, BLK_FEATURES, _packed_stray_stamp),
    ("HEAD_REUSED_IN_FLIGHT", 8, True, BLK_FEATURES, _packed_same_id),
]
def _build(size, packed, features, build):
    guest = SyntheticGuest(4 * MiB)
    queue = guest.blk_queue(RING, size, packed=packed, features=features)
    build(guest, queue)
    return guest, queue


@pytest.mark.parametrize(("code", "size", "packed", "features", "build"), CASES,
                         ids=[f"{c[0]}-{'packed' if c[2] else 'split'}" for c in CASES])
def test_each_anomaly_is_found(code, size, packed, features, build):
    guest, queue = _build(size, packed, features, build)
    report = analyze_queue(guest.memory, Target(queue.config, "blk queue 0", "blk"))
    codes = [a.code for a in report.anomalies]
    assert code in codes, codes
    anomaly = next(a for a in report.anomalies if a.code == code)
    assert anomaly.section.startswith("virtio 1.4, 2.") and anomaly.queue == 0


def test_clean_split_ring_in_flight_and_completed():
    guest = SyntheticGuest(4 * MiB)
    queue = guest.blk_queue(RING, 256)
    for sector in (0, 8, 16):
        guest.blk(queue, VIRTIO_BLK_T_OUT, sector, 512)
    guest.complete(queue, 3)  # used, not yet taken back by the driver: descriptors and buffers intact
    guest.blk(queue, VIRTIO_BLK_T_OUT, 2048, 4096)
    guest.blk(queue, VIRTIO_BLK_T_IN, 4096, 8192)
    guest.take(queue, 1)  # the device holds the OUT; the IN waits
    report = analyze_queue(guest.memory, Target(queue.config, "blk queue 0", "blk"))
    assert report.anomalies == []
    assert (report.state.avail_idx, report.state.used_idx) == (5, 3)
    assert [c.summary for c in report.in_flight] == ["blk OUT sector=2048 len=4096", "blk IN sector=4096 len=8192"]
    assert [(c.position, c.summary) for c in report.completed] == [  # newest first
        (2, "blk OUT sector=16 len=512 -> OK"), (1, "blk OUT sector=8 len=512 -> OK"),
        (0, "blk OUT sector=0 len=512 -> OK")]


def test_completed_requests_whose_memory_was_reused_say_so():
    guest = SyntheticGuest(4 * MiB)
    queue = guest.blk_queue(RING, 256)
    for sector in (0, 8, 16):
        guest.blk(queue, VIRTIO_BLK_T_OUT, sector, 512)
    guest.complete(queue, 3)
    queue.get_used()  # the driver frees descriptors and buffers (LIFO, as Linux) ...
    guest.blk(queue, VIRTIO_BLK_T_OUT, 2048, 512)  # ... and reuses them
    report = analyze_queue(guest.memory, Target(queue.config, "blk queue 0", "blk"))
    summaries = [c.summary for c in report.completed]
    assert "descriptors reused by a chain now in flight" in summaries
    assert "buffers reused by a chain now in flight" in summaries
    assert not any("sector=2048" in text for text in summaries)  # the in-flight request's bytes are not shown


def test_packed_ring_in_flight_and_completed():
    guest = SyntheticGuest(4 * MiB)
    queue = guest.blk_queue(RING, 16, packed=True)
    for sector in range(4):
        guest.blk(queue, VIRTIO_BLK_T_OUT, 8 * sector, 512)
    guest.complete(queue, 2)
    report = analyze_queue(guest.memory, Target(queue.config, "blk queue 0", "blk"))
    assert report.anomalies == []
    assert (report.state.avail_idx, report.state.avail_wrap) == (12, True)
    assert [c.summary for c in report.in_flight] == ["blk OUT sector=16 len=512", "blk OUT sector=24 len=512"]
    assert [(c.id, c.used_len) for c in report.completed] == [(1, 1), (0, 1)]


def test_packed_ring_after_a_wrap():
    guest = SyntheticGuest(4 * MiB)
    queue = guest.blk_queue(RING, 8, packed=True)
    for sector in range(4):  # 12 slots of 3-slot chains: wraps once
        guest.blk(queue, VIRTIO_BLK_T_OUT, sector)
        guest.complete(queue, 1)
        queue.get_used()
    guest.blk(queue, VIRTIO_BLK_T_IN, 99)
    report = analyze_queue(guest.memory, Target(queue.config, "blk queue 0", "blk"))
    assert report.anomalies == []
    assert (report.state.avail_idx, report.state.avail_wrap) == (7, False)  # the wrap counter flipped (2.8.1)
    assert [c.summary for c in report.in_flight] == ["blk IN sector=99 len=4096"]


def _cli_snapshot(tmp_path, anomaly: bool = False):
    guest = SyntheticGuest(4 * MiB)
    queue = guest.blk_queue(RING, 256)
    guest.blk(queue, VIRTIO_BLK_T_OUT, 2048, 4096)
    if anomaly:
        _loop(guest, queue)
    path = guest.write_elf(tmp_path / "guest.elf")
    config = queue.config
    spec = f"index=0,size=256,desc={config.desc:#x},avail={config.driver:#x},used={config.device:#x}"
    return path, spec


def test_cli_queue_spec_text_and_exit_codes(tmp_path):
    path, spec = _cli_snapshot(tmp_path)
    args = ["dump", "analyze", str(path), "--queue", spec, "--device", "blk", "--features", hex(BLK_FEATURES)]
    result = run_vqtrace(*args)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "avail.idx 1  used.idx 0  in flight 1" in out
    assert "avail[0] id 0: blk OUT sector=2048 len=4096 in flight" in out
    assert "0 anomalies" in out
    (tmp_path / "bad").mkdir()
    bad, spec = _cli_snapshot(tmp_path / "bad", anomaly=True)
    result = run_vqtrace("dump", "analyze", str(bad), "--queue", spec, "--device", "blk",
                         "--features", hex(BLK_FEATURES), "-T", "json")
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    (queue,) = doc["queues"]
    assert queue["anomalies"][0]["code"] == "DESC_LOOP" and doc["anomaly_count"] >= 1
    assert queue["in_flight"][0]["request"]["info"]["sector"] == 2048


@pytest.mark.parametrize(("spec", "message"), [
    ("size=256,desc=0x1000,avail=0x2000", "used= is missing"),
    ("size=100,desc=0x1000,avail=0x2000,used=0x3000", "power of 2"),
    ("size=256,desc=zz,avail=0x2000,used=0x3000", "not a number"),
    ("size=256,desc=0x1000,avail=0x2000,used=0x3000,color=red", "unknown key"),
    ("size=256,desc=0x1000,desc=0x2000,avail=0,used=0", "given twice"),
])
def test_cli_bad_queue_spec_one_line(tmp_path, spec, message):
    path, _ = _cli_snapshot(tmp_path)
    result = run_vqtrace("dump", "analyze", str(path), "--queue", spec)
    assert result.returncode == 2
    err = result.stderr.decode().strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("args", [
    ["--device", "toaster", "--queue", "size=2,desc=0,avail=0x20,used=0x40"],
    ["--scan", "--queue", "size=2,desc=0,avail=0x20,used=0x40"],
    ["--candidate", "1"],
    [],
])
def test_cli_bad_analyze_arguments(tmp_path, args):
    path, _ = _cli_snapshot(tmp_path)
    result = run_vqtrace("dump", "analyze", str(path), *args)
    assert result.returncode == 2 and len(result.stderr.decode().strip().splitlines()) == 1, result.stderr


def test_cli_trace_opens_with_the_reader(tmp_path):
    guest = SyntheticGuest(4 * MiB)
    queue = guest.blk_queue(RING, 256)
    guest.blk(queue, VIRTIO_BLK_T_OUT, 16, 512)
    guest.complete(queue, 1)
    guest.blk(queue, VIRTIO_BLK_T_OUT, 2048, 4096)
    _loop(guest, queue)  # a third request, whose chain loops
    path = guest.write_elf(tmp_path / "guest.elf")
    c = queue.config
    trace = tmp_path / "snapshot.pcapng"
    result = run_vqtrace("dump", "analyze", str(path), "--device", "blk", "--features", hex(BLK_FEATURES), "-w",
                         str(trace), "--queue", f"size=256,desc={c.desc},avail={c.driver},used={c.device}")
    assert result.returncode == 1, result.stderr
    with TraceReader(trace) as reader:
        events = list(reader.events())
    kinds = [e.kind.name for e in events]
    assert kinds == ["DATA", "DATA", "AVAIL", "USED", "AVAIL", "AVAIL", "ANOMALY"], kinds
    assert events[0].layer == "virtqueue.avail" and events[1].layer == "virtqueue.used"
    assert events[3].used.len == 1 and events[3].written == b"\x00"  # the status byte: VIRTIO_BLK_S_OK
    assert struct.unpack("<IIQ", events[4].data[:16]) == (VIRTIO_BLK_T_OUT, 0, 2048)
    assert len(events[4].data) == 16 + 4096
    assert events[6].anomaly.code == "DESC_LOOP"
