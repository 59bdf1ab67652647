"""The reference block device (virtio 1.4, 5.2) driven through real rings by the Python guest driver."""

from __future__ import annotations

import struct

import pytest

from vqtrace.devices import create_device
from vqtrace.devices.bench import DeviceBench
from vqtrace.devices.blk import (
    REQ_HDR,
    VIRTIO_BLK_F_CONFIG_WCE,
    VIRTIO_BLK_F_DISCARD,
    VIRTIO_BLK_F_FLUSH,
    VIRTIO_BLK_F_RO,
    VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP,
    BlkDevice,
)
from vqtrace.dissectors import blk as layout
from vqtrace.dissectors.layers import get_layer
from vqtrace.model import Layout

IN, OUT, FLUSH, GET_ID = 0, 1, 4, 8
DISCARD, WRITE_ZEROES, SECURE_ERASE = 11, 13, 14


def hdr(kind: int, sector: int = 0) -> bytes:
    kind_bits = kind & ~layout.VIRTIO_BLK_T_BARRIER
    return get_layer("virtio_blk.req").build({
        "type": kind, "reserved": 0, "sector": sector,
        "data": b"" if kind_bits in layout.WRITE_TYPES else None,
        "dwz_seg": [] if kind_bits in layout.SEGMENT_TYPES else None})


def seg(sector: int, count: int, flags: int = 0) -> bytes:
    return layout.dwz_seg.build({"sector": sector, "num_sectors": count, "flags": flags})


@pytest.fixture(params=[Layout.SPLIT, Layout.PACKED], ids=["split", "packed"])
def bench(request):
    with DeviceBench(BlkDevice(size=1 << 20), layout=request.param) as b:
        yield b


def test_req_hdr_struct_equals_construct():
    raw = hdr(OUT, 0x123456789)
    assert REQ_HDR.unpack(raw) == (OUT, 0, 0x123456789)
    assert REQ_HDR.size == layout.REQ_HDR_SIZE


def test_write_then_read_returns_the_bytes(bench):
    data = bytes(range(256)) * 4  # two sectors
    used = bench.request(0, [hdr(OUT, 10), data], [1])
    assert used.len == 1 and used.written == bytes([VIRTIO_BLK_S_OK])
    used = bench.request(0, [hdr(IN, 10)], [1024, 1])
    assert used.len == 1025
    assert used.written[:1024] == data and used.written[1024] == VIRTIO_BLK_S_OK
    state = bench.device.state()
    assert state["written"] == [[10, 2]] and state["sectors_written"] == 2 and state["sectors_read"] == 2
    assert bench.device.backend.read(10 * 512, 1024) == data
    assert bench.notified[0] == 2


def test_write_across_descriptors_and_indirect(bench):
    used = bench.request(0, [hdr(OUT, 3), b"a" * 100, b"b" * 412], [1], indirect=True)
    assert used.written == b"\0"
    used = bench.request(0, [hdr(IN, 3)], [300, 212, 1])
    assert used.written[:512] == b"a" * 100 + b"b" * 412


def test_image_file_backing(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(64 * 512))
    with DeviceBench(create_device("blk", image=str(image))) as bench:
        assert bench.device.capacity == 64
        config = get_layer("virtio_blk.config").parse(bench.device.config_space())
        assert config.capacity == 64 and config.blk_size == 512 and config.seg_max == 126
        bench.request(0, [hdr(OUT, 63), b"Z" * 512], [1])
        bench.request(0, [hdr(FLUSH)], [1])
        bench.device.backend.close()
    assert image.read_bytes()[63 * 512:] == b"Z" * 512


@pytest.mark.parametrize(("kind", "sector", "data", "room"), [
    (IN, 2048, b"", 512),  # one past the last sector
    (IN, 2047, b"", 1024),  # runs over the end
    (OUT, 2048, b"x" * 512, 0),
    (OUT, 0, b"x" * 100, 0),  # not a multiple of 512
    (IN, 0, b"", 100),
])
def test_ioerr_for_bad_ranges_and_lengths(bench, kind, sector, data, room):
    readable = [hdr(kind, sector)] + ([data] if data else [])
    used = bench.request(0, readable, ([room] if room else []) + [1])
    assert used.written[-1] == VIRTIO_BLK_S_IOERR
    assert used.len == room + 1  # the whole writable part is written (zeros, then the status)
    assert used.written[:-1] == bytes(room)
    assert bench.anomalies()[-1].code in ("BLK_OUT_OF_RANGE", "BLK_BAD_LENGTH")
    assert bench.device.state()["written"] == []


@pytest.mark.parametrize("kind", [2, 3, 5, 10, 15, 16, 18, 26, 99, 0x80000001])
def test_unsupp_for_unknown_and_zoned_types(bench, kind):
    used = bench.request(0, [hdr(kind)], [1])
    assert used.written == bytes([VIRTIO_BLK_S_UNSUPP])


def test_unsupp_for_features_not_negotiated():
    device = BlkDevice(size=1 << 20)
    features = device.offered_features & ~(1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_DISCARD
                                           | 1 << VIRTIO_BLK_F_CONFIG_WCE)
    with DeviceBench(device, features=features) as bench:
        assert bench.request(0, [hdr(FLUSH)], [1]).written == bytes([VIRTIO_BLK_S_UNSUPP])
        assert bench.request(0, [hdr(DISCARD), seg(0, 8)], [1]).written == bytes([VIRTIO_BLK_S_UNSUPP])
        # 5.2.6.2: FLUSH offered but neither FLUSH nor CONFIG_WCE negotiated: writes are stable
        assert device.writethrough
        before = device.backend.flushes
        bench.request(0, [hdr(OUT, 1), bytes(512)], [1])
        assert device.backend.flushes == before + 1


def test_read_only_device():
    device = BlkDevice(data=b"r" * 4096, readonly=True)
    assert device.offers(VIRTIO_BLK_F_RO) and not device.offers(VIRTIO_BLK_F_DISCARD)
    with DeviceBench(device) as bench:
        used = bench.request(0, [hdr(OUT, 0), b"w" * 512], [1])
        assert used.written == bytes([VIRTIO_BLK_S_IOERR])  # 5.2.6.2: IOERR and no data written
        assert device.backend.read(0, 512) == b"r" * 512
        assert bench.request(0, [hdr(IN, 0)], [512, 1]).written == b"r" * 512 + b"\0"
        # a write-like request the read-only device does not offer
        assert bench.request(0, [hdr(WRITE_ZEROES), seg(0, 1)], [1]).written == bytes([VIRTIO_BLK_S_UNSUPP])


def test_get_id(bench):
    used = bench.request(0, [hdr(GET_ID)], [20, 1])
    assert used.len == 21 and used.written[:20] == b"vqtrace-blk".ljust(20, b"\0") and used.written[20] == 0


def test_flush(bench):
    before = bench.device.backend.flushes
    assert bench.request(0, [hdr(FLUSH)], [1]).written == b"\0"
    assert bench.device.backend.flushes == before + 1
    bench.request(0, [hdr(FLUSH, 5)], [1])
    assert bench.anomalies("BLK_FLUSH_SECTOR")


def test_write_zeroes_with_and_without_unmap(bench):
    bench.request(0, [hdr(OUT, 0), b"\xff" * 4096], [1])
    used = bench.request(0, [hdr(WRITE_ZEROES), seg(1, 2), seg(5, 1, flags=1)], [1])
    assert used.written == b"\0"
    data = bench.request(0, [hdr(IN, 0)], [4096, 1]).written
    assert data[:512] == b"\xff" * 512 and data[512:1536] == bytes(1024) and data[1536:2560] == b"\xff" * 1024
    assert data[2560:3072] == bytes(512) and data[3072:4096] == b"\xff" * 1024
    assert bench.device.state()["zeroed"] == [[1, 2], [5, 1]]


def test_discard_and_secure_erase(bench):
    assert bench.request(0, [hdr(DISCARD), seg(0, 4)], [1]).written == b"\0"
    assert bench.device.state()["discarded"] == [[0, 4]]
    bench.request(0, [hdr(OUT, 8), b"s" * 512], [1])
    assert bench.request(0, [hdr(SECURE_ERASE), seg(8, 1)], [1]).written == b"\0"
    assert bench.request(0, [hdr(IN, 8)], [512, 1]).written[:512] == bytes(512)


@pytest.mark.parametrize(("kind", "flags", "status"), [
    (DISCARD, 1, VIRTIO_BLK_S_UNSUPP),  # 5.2.6.2: unmap on discard
    (DISCARD, 2, VIRTIO_BLK_S_UNSUPP),  # unknown flag
    (WRITE_ZEROES, 4, VIRTIO_BLK_S_UNSUPP),
    (SECURE_ERASE, 0x80000000, VIRTIO_BLK_S_UNSUPP),
    (WRITE_ZEROES, 1, VIRTIO_BLK_S_OK),
])
def test_segment_flags(bench, kind, flags, status):
    assert bench.request(0, [hdr(kind), seg(0, 1, flags)], [1]).written == bytes([status])


def test_segment_errors(bench):
    assert bench.request(0, [hdr(DISCARD), seg(2047, 2)], [1]).written == bytes([VIRTIO_BLK_S_IOERR])
    assert bench.request(0, [hdr(DISCARD), b"short"], [1]).written == bytes([VIRTIO_BLK_S_IOERR])
    many = b"".join(seg(n, 1) for n in range(17))  # max_discard_seg is 16
    assert bench.request(0, [hdr(DISCARD), many], [1]).written == bytes([VIRTIO_BLK_S_IOERR])
    assert bench.anomalies("BLK_TOO_MANY_SEGMENTS")


def test_config_space_layout():
    device = BlkDevice(size=8 << 20, blk_size=4096, num_queues=4, size_max=65536)
    space = device.config_space()
    config = get_layer("virtio_blk.config").parse(space)
    assert config.capacity == 16384 and config.size_max == 65536 and config.blk_size == 4096
    assert config.num_queues == 4 and config.max_discard_seg == 16 and config.discard_sector_alignment == 8
    assert config.write_zeroes_may_unmap == 1 and config.unused0 == b"\0" and config.unused1 == bytes(3)
    assert len(space) == 72  # up to secure_erase_sector_alignment: every field its offered features need
    assert device.queue_names() == ["requestq1", "requestq2", "requestq3", "requestq4"]
    assert device.read_config(0, 8) == struct.pack("<Q", 16384)


def test_writeback_config_write():
    device = BlkDevice(size=1 << 20)
    with DeviceBench(device) as bench:
        assert device.read_config(32, 1) == b"\x01"
        bench.device.write_config(32, b"\x00")
        assert device.read_config(32, 1) == b"\x00" and device.writethrough
        activity = bench.device.write_config(0, b"\x01")  # capacity is read-only
        assert activity.anomalies[0].code == "CONFIG_WRITE_READONLY"


def test_config_wce_without_flush_starts_writethrough():
    device = BlkDevice(size=1 << 20)
    device.negotiate(device.offered_features & ~(1 << VIRTIO_BLK_F_FLUSH))
    assert device.writeback == 0  # 5.2.5.2


# -- malformed requests ----------------------------------------------------------------------------

def test_short_header_gets_ioerr(bench):
    used = bench.request(0, [b"\x01\x00\x00"], [1])
    assert used.written == bytes([VIRTIO_BLK_S_IOERR])
    assert bench.anomalies()[-1].code == "BLK_SHORT_HEADER"


def test_header_in_writable_buffer_gets_ioerr(bench):
    used = bench.request(0, [], [16, 1])
    assert used.written[-1] == VIRTIO_BLK_S_IOERR
    assert "device-writable" in bench.anomalies()[-1].message


def test_missing_status_descriptor(bench):
    used = bench.request(0, [hdr(OUT, 0), b"q" * 512])
    assert used.len == 0
    assert bench.anomalies()[-1].code == "BLK_NO_STATUS"
    assert bench.device.backend.read(0, 512) == bytes(512)  # nothing done without a status to report


def test_buffer_outside_guest_memory(bench):
    def hook(specs):
        specs[1].addr = 0x7000_0000_0000
    used = bench.request(0, [hdr(OUT, 0), b"q" * 512], [1], hook=hook)
    assert used.written == bytes([VIRTIO_BLK_S_IOERR])
    assert bench.anomalies("CHAIN_MEMORY_FAULT")


def test_oversized_request():
    device = BlkDevice(size=64 << 20, max_request=1 << 20)
    with DeviceBench(device, memory_size=8 << 20) as bench:
        used = bench.request(0, [hdr(IN, 0)], [2 << 20, 1])
        assert used.written[-1] == VIRTIO_BLK_S_IOERR
        assert bench.anomalies("BLK_OVERSIZED")


def test_blk_offer_keeps_the_dependency_rules():
    from vqtrace.dissectors import features

    device = BlkDevice(size=1 << 20, flush=False)
    assert not device.offers(VIRTIO_BLK_F_CONFIG_WCE)  # 5.2.5.2: CONFIG_WCE needs FLUSH
    space = features.feature_space(device.device_id)
    assert [p for p in features.check(BlkDevice(size=1 << 20).offered_features, space, side="device")
            if p.level == "MUST"] == []


def test_image_error_is_ioerr(tmp_path):
    import os

    image = tmp_path / "disk.img"
    image.write_bytes(bytes(8192))
    device = BlkDevice(str(image))
    with DeviceBench(device) as bench:
        os.close(device.backend.fd)  # the image goes away under the device: EBADF on every access
        used = bench.request(0, [hdr(IN, 0)], [512, 1])
        assert used.written[-1] == VIRTIO_BLK_S_IOERR and used.len == 513
        assert bench.anomalies()[-1].code == "BLK_BACKEND_ERROR"
        device.backend.fd = -1
