"""The entropy device (virtio 1.4, 5.4) and the memory balloon (5.5) through real rings."""

from __future__ import annotations

import struct

import pytest

from vqtrace.devices.balloon import STAT, BalloonDevice
from vqtrace.devices.bench import DeviceBench
from vqtrace.devices.rng import RngDevice
from vqtrace.dissectors import balloon as layout
from vqtrace.dissectors.layers import get_layer
from vqtrace.model import Layout

# -- rng --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ring", [Layout.SPLIT, Layout.PACKED], ids=["split", "packed"])
def test_rng_fills_buffers(ring):
    with DeviceBench(RngDevice(), layout=ring) as bench:
        used = bench.request(0, [], [64])
        assert used.len == 64 and used.written != bytes(64)
        used = bench.request(0, [], [10000])
        assert used.len == 4096  # 5.4.6.2: MAY use less than the whole buffer
        assert bench.device.state()["bytes_served"] == 64 + 4096


def test_rng_seeded_is_deterministic():
    runs = []
    for _ in range(2):
        with DeviceBench(RngDevice(seed=42)) as bench:
            runs.append([bench.request(0, [], [n]).written for n in (16, 100, 7)])
    assert runs[0] == runs[1]
    with DeviceBench(RngDevice(seed=43)) as bench:
        assert bench.request(0, [], [16]).written != runs[0][0]


def test_rng_malformed_buffers():
    with DeviceBench(RngDevice()) as bench:
        assert bench.request(0, [b"readable"]).len == 0
        assert [a.code for a in bench.anomalies()] == ["RNG_READABLE_BUFFER", "RNG_NO_WRITABLE"]
        assert bench.request(0, [b"r"], [8]).len == 8  # still filled


# -- balloon ----------------------------------------------------------------------------------------

def pfns(*numbers: int) -> bytes:
    return get_layer("virtio_balloon.pfns").build({"pfn": list(numbers)})


def stats(**values: int) -> bytes:
    return b"".join(STAT.pack(layout.STAT_TAGS[f"VIRTIO_BALLOON_S_{k.upper()}"], v) for k, v in values.items())


def test_stat_struct_equals_the_layer():
    raw = STAT.pack(4, 123456789)
    assert get_layer("virtio_balloon.stats").build({"stat": [{"tag": 4, "val": 123456789}]}) == raw
    assert STAT.size == layout.STAT_SIZE


def test_inflate_deflate_and_target():
    device = BalloonDevice()
    with DeviceBench(device) as bench:
        activity = device.set_target(300)
        assert activity.config_changed
        config = get_layer("virtio_balloon.config").parse(device.config_space())
        assert (config.num_pages, config.actual) == (300, 0)
        assert bench.request(0, [pfns(*range(0x100, 0x200))]).len == 0
        assert bench.request(0, [pfns(0x1000, 0x1001, 0x1002)]).len == 0
        device.write_config(4, struct.pack("<I", 259))  # 5.5.6.1: the driver updates actual
        state = device.state()
        assert state["pages_held"] == 259 and state["actual"] == 259
        assert state["pfns"] == [[0x100, 256], [0x1000, 3]]
        bench.request(1, [pfns(0x1001, *range(0x100, 0x110))])
        assert device.state()["pfns"] == [[0x110, 240], [0x1000, 1], [0x1002, 1]]
        assert bench.anomalies() == []


def test_balloon_driver_errors():
    device = BalloonDevice()
    with DeviceBench(device) as bench:
        bench.request(1, [pfns(5)])  # deflating a page never inflated (5.5.6.1)
        bench.request(0, [pfns(7), b"\x01\x02"])  # not a multiple of 4
        bench.request(0, [pfns(7)])  # twice
        bench.request(0, [pfns(8)], [4])  # writable
        codes = [a.code for a in bench.anomalies()]
        assert codes == ["BALLOON_PFN_NOT_HELD", "BALLOON_BAD_PFN_ARRAY", "BALLOON_PFN_TWICE",
                         "BALLOON_WRITABLE_BUFFER"]
        assert device.state()["pfns"] == [[7, 2]]
        assert device.write_config(0, b"\x01\0\0\0").anomalies[0].code == "CONFIG_WRITE_READONLY"


def test_stats_queue_round_trip():
    device = BalloonDevice()
    with DeviceBench(device) as bench:
        bench.add(2, [stats(memfree=1 << 20, memtot=4 << 20)])
        assert bench.used(2) == []  # 5.5.6.3: the device keeps the buffer
        assert device.state()["stats"] == {"MEMFREE": 1 << 20, "MEMTOT": 4 << 20}
        activity = device.request_stats()
        assert activity.notify == {2}
        assert len(bench.used(2)) == 1
        unknown = struct.pack("<HQ", 77, 1)
        bench.add(2, [stats(memfree=5) + unknown + stats(swap_in=9)])  # any order, unknown tags ignored
        assert device.state()["stats"] == {"MEMFREE": 5, "MEMTOT": 4 << 20, "SWAP_IN": 9}
        bench.add(2, [stats(memfree=6)])  # a second buffer while one is held
        assert bench.anomalies("BALLOON_STATS_TWO_BUFFERS") and len(bench.used(2)) == 1


def test_balloon_queues_follow_features():
    device = BalloonDevice()
    assert device.queue_names() == ["inflateq", "deflateq", "statsq"]
    device.negotiate(device.offered_features & ~(1 << 1))
    assert device.queue_names() == ["inflateq", "deflateq"]
    device.negotiate(device.offered_features)
    device.reset()
    assert device.state()["pfns"] == [] and device.features == 0
