"""Block requests (virtio 1.4, 5.2.6) built as bytes per the spec, with their responses."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vqtrace.dissectors import get_layer
from vqtrace.requests import QueueContext, decode_request

VERSION_1 = 1 << 32
ANY_LAYOUT = 1 << 27
CTX = QueueContext("blk", 0, VERSION_1)
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_GET_LIFETIME = 0, 1, 4, 8, 10
T_DISCARD, T_WRITE_ZEROES, T_SECURE_ERASE = 11, 13, 14
T_ZONE_APPEND, T_ZONE_REPORT, T_ZONE_OPEN, T_ZONE_RESET_ALL = 15, 16, 18, 26
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2


def hdr(kind, sector=0, reserved=0):
    return struct.pack("<IIQ", kind, reserved, sector)


def seg(sector, num, flags=0):
    return struct.pack("<QII", sector, num, flags)


def node(req, abbrev):
    for tree in req.trees:
        found = tree.find(abbrev)
        if found is not None:
            return found
    raise AssertionError(f"{abbrev} not in {[t.abbrev for t in req.trees]}")


def codes(req):
    return [p.code for p in req.problems]


def test_out_request_and_response():
    data = bytes(range(256)) * 16
    req = decode_request(CTX, hdr(T_OUT, 2048) + data, b"\0", 1, readable_lens=[16, 4096], writable_lens=[1])
    assert req.summary == "blk OUT sector=2048 len=4096 -> OK"
    assert (req.device, req.role.name, req.response, req.complete) == ("blk", "requestq1", "OK", True)
    assert req.problems == []
    f = req.fields()
    assert (f["virtio_blk.type"], f["virtio_blk.sector"], f["virtio_blk.data"]) == (1, 2048, data)
    assert f["virtio_blk.status.status"] == 0
    assert req.info == {"type": 1, "sector": 2048, "data_len": 4096, "status": 0}
    # the status byte sits right after the readable part in the request's bytes
    status = node(req, "virtio_blk.status.status")
    assert (status.offset, status.length) == (16 + 4096, 1)
    assert node(req, "virtio_blk.data").display.endswith("(4096 bytes)")


def test_out_in_flight_has_no_response():
    req = decode_request(CTX, hdr(T_OUT, 8) + bytes(512), writable_lens=[1])
    assert req.summary == "blk OUT sector=8 len=512"
    assert req.response is None and not req.complete
    assert [t.abbrev for t in req.trees] == ["virtio_blk"]


def test_in_request_data_then_status():
    data = b"\xa5" * 512
    req = decode_request(CTX, hdr(T_IN, 0), data + bytes([S_OK]), 513, writable_lens=[512, 1])
    assert req.summary == "blk IN sector=0 len=512 -> OK"
    read = node(req, "virtio_blk.data")
    assert (read.value, read.offset, read.length) == (data, 16, 512)
    assert node(req, "virtio_blk.status.status").offset == 16 + 512
    assert req.info["data_len"] == 512


def test_in_in_flight_shows_the_buffer_size():
    req = decode_request(CTX, hdr(T_IN, 64), writable_lens=[4096, 1])
    assert req.summary == "blk IN sector=64 len=4096"


@pytest.mark.parametrize(("status", "word"), [(S_IOERR, "IOERR"), (S_UNSUPP, "UNSUPP"), (4, "ZONE_UNALIGNED_WP"),
                                              (77, "status=77")])
def test_error_statuses(status, word):
    req = decode_request(CTX, hdr(T_IN, 99), bytes(512) + bytes([status]), 513, writable_lens=[513])
    assert req.summary == f"blk IN sector=99 len=512 -> {word}"
    assert req.response == word


def test_flush_and_readable_data_it_should_not_have():
    assert decode_request(CTX, hdr(T_FLUSH), b"\0", 1).summary == "blk FLUSH -> OK"
    extra = decode_request(CTX, hdr(T_FLUSH) + b"junk", b"\0", 1)
    assert codes(extra) == ["EXTRA_READABLE"] and extra.problems[0].offset == 16


def test_write_with_writable_room_before_the_status_is_noted():
    req = decode_request(CTX, hdr(T_OUT, 1) + bytes(512), bytes(9), 9, writable_lens=[8, 1])
    assert codes(req) == ["EXTRA_WRITABLE"] and req.problems[0].level == "note"


def test_get_id():
    ident = b"vqtrace-disk-0001".ljust(20, b"\0")
    req = decode_request(CTX, hdr(T_GET_ID), ident + b"\0", 21, writable_lens=[20, 1])
    assert req.summary == "blk GET_ID -> OK id='vqtrace-disk-0001'"
    assert req.fields()["virtio_blk.get_id.id"] == "vqtrace-disk-0001"
    assert node(req, "virtio_blk.get_id.id").offset == 16


def test_get_id_with_a_short_buffer_is_malformed_not_an_exception():
    req = decode_request(CTX, hdr(T_GET_ID), b"abc" + b"\0", 4, writable_lens=[3, 1])
    assert req.summary == "blk GET_ID -> OK id='abc'"
    assert codes(req) == ["MALFORMED"]
    assert node(req, "data.data").value == b"abc"
    assert req.fields()["virtio_blk.status.status"] == 0


def test_get_lifetime():
    life = struct.pack("<HHH", 2, 3, 4)
    req = decode_request(CTX, hdr(T_GET_LIFETIME), life + b"\0", 7, writable_lens=[6, 1])
    assert req.summary == "blk GET_LIFETIME -> OK WARNING a=3 b=4"
    f = req.fields()
    assert (f["virtio_blk.lifetime.pre_eol_info"], f["virtio_blk.lifetime.device_lifetime_est_typ_b"]) == (2, 4)


def test_discard_and_write_zeroes_segments():
    req = decode_request(CTX, hdr(T_DISCARD) + seg(0, 8) + seg(1024, 16), b"\0", 1)
    assert req.summary == "blk DISCARD segments=2 sector=0 num_sectors=24 -> OK"
    assert req.fields()["virtio_blk.dwz_seg.sector"] == [0, 1024]
    wz = decode_request(CTX, hdr(T_WRITE_ZEROES) + seg(4096, 8, flags=1), b"\0", 1)
    assert wz.summary == "blk WRITE_ZEROES segments=1 sector=4096 num_sectors=8 -> OK"
    assert wz.fields()["virtio_blk.dwz_seg.flags.unmap"] is True
    se = decode_request(CTX, hdr(T_SECURE_ERASE) + seg(7, 1), b"\0", 1)
    assert se.summary.startswith("blk SECURE_ERASE segments=1 sector=7")


def test_segments_bad_sizes_are_problems():
    partial = decode_request(CTX, hdr(T_DISCARD) + seg(0, 8) + b"12345", b"\0", 1)
    assert codes(partial) == ["SEGMENTS"] and partial.problems[0].offset == 32
    assert partial.fields()["virtio_blk.status.status"] == 0
    none = decode_request(CTX, hdr(T_DISCARD), b"\0", 1)
    assert codes(none) == ["SEGMENTS"] and none.summary == "blk DISCARD segments=0 -> OK"


def test_zone_append_returns_the_append_sector():
    written = struct.pack("<Q", 524288) + bytes([S_OK])
    req = decode_request(CTX, hdr(T_ZONE_APPEND, 524288) + bytes(4096), written, 9, writable_lens=[9])
    assert req.summary == "blk ZONE_APPEND sector=524288 len=4096 -> OK append_sector=524288"
    f = req.fields()
    assert (f["virtio_blk.status.append_sector"], f["virtio_blk.status.status"]) == (524288, 0)
    short = decode_request(CTX, hdr(T_ZONE_APPEND) + bytes(512), b"\0", 1, writable_lens=[1])
    assert "NO_STATUS" in codes(short)


def test_zone_report():
    zone = struct.pack("<QQQBB", 65536, 0, 128, 2, 1) + bytes(38)
    report = struct.pack("<Q", 2) + bytes(56) + zone + zone
    req = decode_request(CTX, hdr(T_ZONE_REPORT, 0), report + b"\0", len(report) + 1,
                         writable_lens=[len(report), 1])
    assert req.summary == f"blk ZONE_REPORT sector=0 len={len(report)} -> OK nr_zones=2"
    assert req.fields()["virtio_blk.zone_report.zones.z_type"] == [2, 2]


def test_zone_management_and_legacy_types():
    assert decode_request(CTX, hdr(T_ZONE_OPEN, 65536), b"\0", 1).summary == "blk ZONE_OPEN sector=65536 -> OK"
    assert decode_request(CTX, hdr(T_ZONE_RESET_ALL), b"\0", 1).summary == "blk ZONE_RESET_ALL -> OK"
    barrier = decode_request(QueueContext("blk", features=0), hdr(T_OUT | 0x80000000, 3) + bytes(512), b"\0", 1)
    assert barrier.summary == "blk OUT|BARRIER sector=3 len=512 -> OK"
    unknown = decode_request(CTX, hdr(99), bytes([S_UNSUPP]), 1)
    assert unknown.summary == "blk 99 -> UNSUPP"


def test_short_header_is_a_problem_with_raw_bytes():
    req = decode_request(CTX, b"\x01\x00\x00", b"\0", 1)
    assert req.summary == "blk ? (header of 3 bytes)"
    assert codes(req) == ["SHORT_HEADER"] and "5.2.6" in req.problems[0].section
    assert req.fields()["data.data"] == [b"\x01\x00\x00", b"\0"]
    empty = decode_request(CTX, b"")
    assert empty.summary == "blk ? (header of 0 bytes)" and empty.trees == []


def test_missing_status_byte():
    assert codes(decode_request(CTX, hdr(T_OUT) + bytes(512), writable_lens=[])) == ["NO_STATUS"]
    used = decode_request(CTX, hdr(T_OUT) + bytes(512), b"", 0)
    assert "NO_STATUS" in codes(used) and used.summary.endswith("-> ?")


def test_capture_without_the_status_byte():
    req = decode_request(CTX, hdr(T_IN, 0), bytes(100), 513, writable_lens=[512, 1])
    assert req.summary == "blk IN sector=0 len=512 -> ?"
    assert codes(req) == ["NOT_CAPTURED"] and req.problems[0].level == "note"
    assert req.fields()["data.data"] == bytes(100)


def test_used_length_against_the_writable_part():
    over = decode_request(CTX, hdr(T_IN), bytes(513), 600, writable_lens=[512, 1])
    assert codes(over) == ["USED_LEN"] and "2.7.8" in over.problems[0].section
    short = decode_request(CTX, hdr(T_IN), bytes(513), 1, writable_lens=[512, 1])
    assert codes(short) == ["USED_LEN_SHORT"] and short.summary.endswith("-> OK")
    legacy = decode_request(QueueContext("blk", features=ANY_LAYOUT), hdr(T_IN), bytes(513), 1,
                            writable_lens=[512, 1])
    assert legacy.problems == []  # 5.2.6.3: legacy used lengths mean nothing


def test_legacy_framing_without_any_layout():
    legacy = QueueContext("blk", features=0)
    bad = decode_request(legacy, hdr(T_OUT) + bytes(512), b"\0", 1, readable_lens=[528], writable_lens=[1])
    assert codes(bad) == ["FRAMING"] and "5.2.6.4" in bad.problems[0].section
    status = decode_request(legacy, hdr(T_IN), bytes(513), 513, readable_lens=[16], writable_lens=[513])
    assert codes(status) == ["FRAMING"]
    good = decode_request(legacy, hdr(T_OUT) + bytes(512), b"\0", 1, readable_lens=[16, 512], writable_lens=[1])
    assert good.problems == []
    any_layout = decode_request(QueueContext("blk", features=ANY_LAYOUT), hdr(T_OUT) + bytes(512), b"\0", 1,
                                readable_lens=[528], writable_lens=[1])
    assert any_layout.problems == []
    modern = decode_request(CTX, hdr(T_OUT) + bytes(512), b"\0", 1, readable_lens=[528], writable_lens=[1])
    assert modern.problems == []


def test_written_base_moves_the_written_offsets():
    req = decode_request(CTX, hdr(T_IN), bytes(513), 513, written_base=1000)
    assert node(req, "virtio_blk.data").offset == 1000
    assert node(req, "virtio_blk.status.status").offset == 1512


def test_lazy_builds_the_tree_on_first_access():
    lazy = decode_request(CTX, hdr(T_GET_ID), b"abc\0", 4, lazy=True)
    eager = decode_request(CTX, hdr(T_GET_ID), b"abc\0", 4)
    assert not lazy.tree_built and eager.tree_built
    assert lazy.summary == eager.summary and lazy.problems == []
    assert lazy.trees[0].abbrev == "virtio_blk" and lazy.tree_built
    assert [p.code for p in lazy.problems] == [p.code for p in eager.problems] == ["MALFORMED"]


def test_text_and_json():
    req = decode_request(CTX, hdr(T_OUT, 5) + b"abc", b"\x01", 1)
    lines = req.text()
    assert lines[0] == "blk OUT sector=5 len=3 -> IOERR"
    assert "    Sector: 5" in lines
    out = req.to_json()
    assert out["summary"] == lines[0] and out["fields"]["virtio_blk.data"] == "616263"
    assert out["response"] == "IOERR" and out["problems"] == []


TYPES = [0, 1, 2, 3, 4, 5, 8, 10, 11, 13, 14, 15, 16, 18, 20, 22, 24, 26]


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(TYPES), barrier=st.booleans(), sector=st.integers(0, 2**64 - 1),
       nseg=st.integers(0, 3), extra=st.binary(max_size=40))
def test_summary_agrees_with_the_layer_summary(kind, barrier, sector, nseg, extra):
    """The struct fast path names the request as the construct layer's own summary does."""
    rtype = kind | (0x80000000 if barrier else 0)
    readable = hdr(rtype, sector) + (b"".join(seg(i, 1) for i in range(nseg)) if kind in (11, 13, 14) else extra)
    req = decode_request(CTX, readable, lazy=True)
    layer = get_layer("virtio_blk.req")
    assert req.summary.startswith(layer.summary(layer.dissect(readable)))
