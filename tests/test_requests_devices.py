"""Console, entropy, balloon, SCSI and socket requests built as bytes per virtio 1.4, with their responses."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vqtrace.dissectors import get_layer
from vqtrace.requests import QueueContext, decode_request
from vqtrace.requests.scsi import lun_text, rw_cdb_text
from vqtrace.requests.vsock import packet_summary

VERSION_1 = 1 << 32


def codes(req):
    return [p.code for p in req.problems]


# -- console (5.3.6) ------------------------------------------------------------------

MULTIPORT = VERSION_1 | 1 << 1


def ctrl_msg(port, event, value, extra=b""):
    return struct.pack("<IHH", port, event, value) + extra


def test_console_port_data_both_ways():
    tx = decode_request(QueueContext("console", 1, VERSION_1), b"hello\n")
    assert tx.summary == "console TX port0 6 bytes 'hello\\n'"
    assert tx.fields() == {"virtio_console.data.data": b"hello\n", "virtio_console.data.len": 6}
    rx_ctx = QueueContext("console", 0, VERSION_1)
    assert decode_request(rx_ctx, writable_lens=[4096]).summary == "console RX port0 buffer 4096 bytes"
    rx = decode_request(rx_ctx, b"", b"login: " + b"\0" * 100, 7, writable_lens=[107])
    assert rx.summary == "console RX port0 7 bytes 'login: '" and rx.problems == []
    long = decode_request(rx_ctx, b"", b"x" * 40, 40)
    assert long.summary.endswith("'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'…")
    port1 = decode_request(QueueContext("console", 5, MULTIPORT), b"abc")
    assert port1.summary == "console TX port1 3 bytes 'abc'"


def test_console_wrong_direction_buffers():
    assert codes(decode_request(QueueContext("console", 1), b"x", writable_lens=[8])) == ["WRITABLE_TX"]
    assert codes(decode_request(QueueContext("console", 0), b"x", b"y", 1)) == ["READABLE_RX"]


@pytest.mark.parametrize(("queue", "message", "summary"), [
    (3, ctrl_msg(0, 0, 1), "console ctrl DEVICE_READY id=0 value=1"),
    (2, ctrl_msg(1, 1, 0), "console ctrl DEVICE_ADD id=1 value=0"),
    (3, ctrl_msg(1, 3, 1), "console ctrl PORT_READY id=1 value=1"),
    (2, ctrl_msg(0, 4, 1), "console ctrl CONSOLE_PORT id=0 value=1"),
    (2, ctrl_msg(0, 5, 0, struct.pack("<HH", 80, 25)), "console ctrl RESIZE id=0 cols=80 rows=25"),
    (3, ctrl_msg(1, 6, 1), "console ctrl PORT_OPEN id=1 value=1"),
    (2, ctrl_msg(1, 7, 1, b"org.qemu.guest_agent.0"), "console ctrl PORT_NAME id=1 name='org.qemu.guest_agent.0'"),
])
def test_console_control_messages(queue, message, summary):
    ctx = QueueContext("console", queue, MULTIPORT)
    req = decode_request(ctx, message) if queue == 3 else decode_request(ctx, b"", message, len(message))
    assert req.summary == summary and req.problems == []
    assert req.fields()["virtio_console.ctrl.id"] == struct.unpack_from("<I", message)[0]


def test_console_control_problems():
    ctx = QueueContext("console", 3, MULTIPORT)
    short = decode_request(ctx, b"\x01\x00")
    assert codes(short) == ["SHORT_HEADER"] and short.trees[0].find("data.data").value == b"\x01\x00"
    assert decode_request(QueueContext("console", 2, MULTIPORT), writable_lens=[8]).summary == \
        "console ctrl buffer 8 bytes"


# -- rng (5.4.6) ----------------------------------------------------------------------


def test_rng_request_and_random_bytes():
    ctx = QueueContext("rng", 0, VERSION_1)
    assert decode_request(ctx, writable_lens=[64]).summary == "rng request 64 bytes"
    req = decode_request(ctx, b"", bytes(range(16)) + b"\0" * 48, 16, writable_lens=[64])
    assert req.summary == "rng request 64 bytes -> 16 random bytes"
    assert req.fields() == {"virtio_rng.data.data": bytes(range(16)), "virtio_rng.data.len": 16}
    assert codes(decode_request(ctx, b"x", b"", 0, writable_lens=[64])) == ["READABLE", "NO_DATA"]


# -- balloon (5.5.6) ------------------------------------------------------------------

STATS_VQ, FREE_PAGE_HINT, PAGE_REPORTING = 1 << 1, 1 << 3, 1 << 5


def test_balloon_inflate_and_deflate_pfns():
    pfns = struct.pack("<3I", 0x1000, 0x1002, 0x1001)
    req = decode_request(QueueContext("balloon", 0, VERSION_1), pfns)
    assert req.summary == "balloon inflate 3 pfns 0x1000..0x1002" and req.problems == []
    assert req.fields()["virtio_balloon.pfns.pfn"] == [0x1000, 0x1002, 0x1001]
    assert req.info["bytes"] == 3 * 4096
    deflate = decode_request(QueueContext("balloon", 1), pfns[:4])
    assert deflate.summary == "balloon deflate 1 pfns 0x1000..0x1000"
    assert decode_request(QueueContext("balloon", 0), b"").summary == "balloon inflate 0 pfns"


def test_balloon_partial_pfn_and_wrong_direction():
    req = decode_request(QueueContext("balloon", 0), struct.pack("<I", 5) + b"\x01\x02")
    assert codes(req) == ["PARTIAL"] and req.problems[0].offset == 4
    assert req.fields()["virtio_balloon.pfns.pfn"] == 5 and req.fields()["data.data"] == b"\x01\x02"
    assert codes(decode_request(QueueContext("balloon", 1), b"", writable_lens=[4])) == ["WRITABLE"]


def test_balloon_stats():
    stats = struct.pack("<HQ", 0, 1) + struct.pack("<HQ", 4, 4096)
    req = decode_request(QueueContext("balloon", 2, STATS_VQ), stats)
    assert req.summary == "balloon stats SWAP_IN=1 MEMFREE=4096" and req.problems == []
    assert req.fields()["virtio_balloon.stats.stat.tag"] == [0, 4]
    partial = decode_request(QueueContext("balloon", 2, STATS_VQ), stats + b"\x01")
    assert codes(partial) == ["PARTIAL"]


def test_balloon_free_page_hinting_and_reporting():
    ctx = QueueContext("balloon", 3, STATS_VQ | FREE_PAGE_HINT | PAGE_REPORTING)
    assert decode_request(ctx, struct.pack("<I", 7)).summary == "balloon free page hint cmd_id=7"
    assert decode_request(ctx, struct.pack("<I", 0)).summary == "balloon free page hint cmd_id=STOP"
    pages = decode_request(ctx, b"", writable_lens=[4096] * 4)
    assert pages.summary == "balloon free page hint 16384 bytes in 4 buffers"
    assert codes(decode_request(ctx, b"\x01")) == ["SHORT_HEADER"]
    # without STATS_VQ and FREE_PAGE_HINT the reporting_vq is queue 2
    report = decode_request(QueueContext("balloon", 2, PAGE_REPORTING), b"", b"", 0, writable_lens=[2 << 20])
    assert report.role.name == "reporting_vq"
    assert report.summary == "balloon report 2097152 bytes in 1 buffers -> done"


# -- scsi (5.6.6) ---------------------------------------------------------------------

SCSI = QueueContext("scsi", 2, VERSION_1)
LUN0 = bytes([1, 0, 0x40, 0, 0, 0, 0, 0])


def cmd_req(cdb, lun=LUN0, tag=0, dataout=b"", cdb_size=32):
    return lun + struct.pack("<QBBB", tag, 0, 0, 0) + cdb.ljust(cdb_size, b"\0") + dataout


def cmd_resp(status=0, response=0, sense=b"", residual=0, datain=b"", sense_size=96):
    return struct.pack("<IIHBB", len(sense), residual, 0, status, response) + sense.ljust(sense_size, b"\0") + datain


def read10(lba, blocks, flags=0):
    return struct.pack(">BBIBHB", 0x28, flags, lba, 0, blocks, 0)


def test_scsi_read10_and_good_response():
    data = b"\x5a" * 4096
    resp = cmd_resp(datain=data)
    req = decode_request(SCSI, cmd_req(read10(2048, 8), tag=1), resp, len(resp), writable_lens=[108, 4096])
    assert req.summary == "scsi READ(10) lba=2048 len=8 lun=0 id=1 -> GOOD datain=4096"
    assert req.response == "GOOD" and req.problems == []
    f = req.fields()
    assert (f["virtio_scsi.cdb.opcode"], f["virtio_scsi.cdb.lba32"], f["virtio_scsi.cdb.transfer_length16"]) == \
        (0x28, 2048, 8)
    assert f["virtio_scsi.datain"] == data and f["virtio_scsi.status"] == 0
    in_flight = decode_request(SCSI, cmd_req(read10(0, 1)), writable_lens=[108, 512])
    assert in_flight.summary == "scsi READ(10) lba=0 len=1 lun=0" and in_flight.response is None


def test_scsi_check_condition_with_sense():
    sense = bytes([0x70, 0, 0x05, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0])
    resp = cmd_resp(status=2, sense=sense)
    req = decode_request(SCSI, cmd_req(read10(1 << 30, 1)), resp, len(resp))
    assert req.summary == ("scsi READ(10) lba=1073741824 len=1 lun=0 -> CHECK CONDITION "
                           "[ILLEGAL REQUEST 0x21/0x00 LOGICAL BLOCK ADDRESS OUT OF RANGE]")
    assert req.fields()["virtio_scsi.sense.asc"] == 0x21


def test_scsi_responses_and_residual():
    bad = decode_request(SCSI, cmd_req(read10(0, 1), lun=bytes([1, 3, 0x40, 0, 0, 0, 0, 0])), cmd_resp(response=3),
                         108)
    assert bad.summary == "scsi READ(10) lba=0 len=1 lun=3:0 -> BAD_TARGET"
    short_read = decode_request(SCSI, cmd_req(read10(0, 8)), cmd_resp(residual=2048, datain=bytes(2048)), 108 + 2048)
    assert short_read.summary.endswith("-> GOOD residual=2048 datain=2048")


def test_scsi_write_and_fast_path_agrees_with_the_layer():
    write = struct.pack(">BBQIBB", 0x8A, 0x08, 1 << 33, 16, 0, 0)  # WRITE(16) with FUA
    req = decode_request(SCSI, cmd_req(write, dataout=bytes(8192)), cmd_resp(), 108)
    assert req.summary == "scsi WRITE(16) lba=8589934592 len=16 fua lun=0 -> GOOD"
    assert req.info["data_out"] == 8192


def test_scsi_inquiry_datain_is_decoded():
    cdb = bytes([0x12, 0, 0, 0, 36, 0])
    inquiry = bytes([0, 0, 5, 2, 31, 0, 0, 0x02]) + b"QEMU    " + b"QEMU HARDDISK   " + b"2.5+"
    resp = cmd_resp(datain=inquiry)
    req = decode_request(SCSI, cmd_req(cdb), resp, len(resp))
    assert req.summary.startswith("scsi INQUIRY") and req.summary.endswith("-> GOOD datain=36")
    inq = [t for t in req.trees if t.abbrev == "virtio_scsi.inquiry"]
    assert len(inq) == 1 and inq[0].offset == len(cmd_req(cdb)) + 108
    assert req.fields()["virtio_scsi.inquiry.vendor_identification"] == "QEMU"
    # a short allocation length cuts the data: a note, not an error
    cut = decode_request(SCSI, cmd_req(bytes([0x12, 0, 0, 0, 5, 0])), cmd_resp(datain=inquiry[:5]), 113)
    assert [p.level for p in cut.problems] in ([], ["note"])


def test_scsi_read_capacity_and_report_luns():
    cap = decode_request(SCSI, cmd_req(bytes([0x25] + [0] * 9)), cmd_resp(datain=struct.pack(">II", 0x1FFFFF, 512)),
                         116)
    assert cap.fields()["virtio_scsi.read_capacity10.returned_logical_block_address"] == 0x1FFFFF
    luns = struct.pack(">II", 16, 0) + bytes([0x40, 0] + [0] * 6) + bytes([0x40, 1] + [0] * 6)
    wlun = bytes([0xC1, 1, 0, 0, 0, 0, 0, 0])
    req = decode_request(SCSI, cmd_req(bytes([0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]), lun=wlun),
                         cmd_resp(datain=luns), 108 + len(luns))
    assert "lun=REPORT_LUNS" in req.summary
    assert req.fields()["virtio_scsi.report_luns.lun.single_level.lun"] == [0, 1]


def test_scsi_cdb_size_and_t10_pi():
    ctx = QueueContext("scsi", 2, VERSION_1, cdb_size=16)
    req = decode_request(ctx, cmd_req(read10(4, 1), cdb_size=16), cmd_resp(), 108)
    assert req.summary == "scsi READ(10) lba=4 len=1 lun=0 -> GOOD" and req.problems == []
    pi = QueueContext("scsi", 2, VERSION_1 | 1 << 3)
    readable = LUN0 + struct.pack("<QBBB", 0, 0, 0, 0) + struct.pack("<II", 8, 0) + read10(9, 1).ljust(32, b"\0") + \
        b"P" * 8 + bytes(512)
    piq = decode_request(pi, readable, cmd_resp(), 108)
    assert piq.summary == "scsi READ(10) lba=9 len=1 lun=0 -> GOOD"
    f = piq.fields()
    assert f["virtio_scsi.pi_bytesout"] == 8 and f["virtio_scsi.pi_out"] == b"P" * 8
    assert piq.info["data_out"] == 512


def test_scsi_malformed_requests():
    short = decode_request(SCSI, b"\x01" * 10)
    assert codes(short) == ["SHORT_HEADER"] and short.summary == "scsi ? (request of 10 bytes)"
    no_room = decode_request(SCSI, cmd_req(read10(0, 1)), writable_lens=[4])
    assert codes(no_room) == ["NO_RESPONSE"]
    tiny = decode_request(SCSI, cmd_req(read10(0, 1)), b"\0" * 5, 5)
    assert codes(tiny) == ["SHORT_RESPONSE"] and tiny.summary.endswith("-> ?")
    unknown = decode_request(SCSI, cmd_req(bytes([0xD9, 1, 2, 3])), cmd_resp(), 108)
    assert unknown.summary.startswith("scsi opcode=0xd9") and unknown.problems == []


def test_scsi_controlq_tmf_and_an():
    ctx = QueueContext("scsi", 0, VERSION_1)
    tmf = struct.pack("<II", 0, 0) + LUN0 + struct.pack("<Q", 42)
    req = decode_request(ctx, tmf, b"\0", 1)
    assert req.summary == "scsi tmf ABORT_TASK lun=0 id=42 -> FUNCTION_COMPLETE"
    assert req.fields()["virtio_scsi.ctrl_tmf_resp.response"] == 0
    an = struct.pack("<I", 1) + LUN0 + struct.pack("<I", 16)
    resp = struct.pack("<IB", 16, 0)
    req = decode_request(ctx, an, resp, 5)
    assert req.summary == "scsi AN_QUERY lun=0 events=MEDIA_CHANGE -> OK"
    assert req.fields()["virtio_scsi.ctrl_an_resp.event_actual.media_change"] is True
    assert codes(decode_request(ctx, b"\x00")) == ["SHORT_HEADER"]
    odd = decode_request(ctx, struct.pack("<I", 9) + bytes(20), b"\0", 1)
    assert "UNKNOWN_TYPE" in codes(odd)


def test_scsi_eventq():
    ctx = QueueContext("scsi", 1, VERSION_1)
    assert decode_request(ctx, writable_lens=[16]).summary == "scsi eventq buffer 16 bytes"
    assert codes(decode_request(ctx, writable_lens=[8])) == ["SHORT_BUFFER"]
    event = struct.pack("<I", 1) + LUN0 + struct.pack("<I", 1)
    req = decode_request(ctx, b"", event, 16)
    assert req.summary == "scsi event TRANSPORT_RESET RESCAN lun=0"
    assert codes(decode_request(ctx, b"", event[:6], 6)) == ["SHORT_EVENT"]


RW_OPS = st.sampled_from([(0x08, 6), (0x0A, 6), (0x28, 10), (0x2A, 10), (0xA8, 12), (0xAA, 12), (0x88, 16),
                          (0x8A, 16)])


@settings(max_examples=150, deadline=None)
@given(op=RW_OPS, body=st.binary(min_size=15, max_size=15), target=st.integers(0, 255), lun=st.integers(0, 0x3FFF),
       tag=st.integers(0, 2**64 - 1))
def test_scsi_fast_summary_matches_the_layer(op, body, target, lun, tag):
    code, size = op
    cdb = bytes([code]) + body[:size - 1]
    lun_field = bytes([1, target]) + struct.pack(">H", 0x4000 | lun) + bytes(4)
    readable = cmd_req(cdb, lun=lun_field, tag=tag)
    layer = get_layer("virtio_scsi.cmd_req")
    expected = layer.summary(layer.dissect(readable))
    assert decode_request(SCSI, readable, lazy=True).summary == expected
    assert rw_cdb_text(cdb) is not None and lun_text(lun_field) in expected


# -- vsock (5.10.6) -------------------------------------------------------------------


def vsock_hdr(src_cid=3, dst_cid=2, src_port=1024, dst_port=5000, length=0, kind=1, op=5, flags=0,
              buf_alloc=262144, fwd_cnt=0):
    return struct.pack("<QQIIIHHIII", src_cid, dst_cid, src_port, dst_port, length, kind, op, flags, buf_alloc,
                       fwd_cnt)


def test_vsock_tx_packets():
    ctx = QueueContext("vsock", 1, VERSION_1)
    req = decode_request(ctx, vsock_hdr(op=1))
    assert req.summary == "vsock TX REQUEST 3:1024 -> 2:5000 buf_alloc=262144 fwd_cnt=0"
    rw = decode_request(ctx, vsock_hdr(length=5) + b"hello")
    assert rw.summary == "vsock TX RW 3:1024 -> 2:5000 len=5" and rw.problems == []
    assert rw.fields()["virtio_vsock.payload"] == b"hello"
    shutdown = decode_request(ctx, vsock_hdr(op=4, flags=3))
    assert shutdown.summary == "vsock TX SHUTDOWN 3:1024 -> 2:5000 flags=SHUTDOWN_F_RECEIVE|SHUTDOWN_F_SEND"
    seq = decode_request(ctx, vsock_hdr(kind=2, length=1, flags=1) + b"x")
    assert seq.summary == "vsock TX RW 3:1024 -> 2:5000 SEQPACKET len=1 flags=SEQ_EOM"


def test_vsock_rx_and_problems():
    ctx = QueueContext("vsock", 0, VERSION_1)
    assert decode_request(ctx, writable_lens=[4140]).summary == "vsock RX buffer 4140 bytes"
    packet = vsock_hdr(src_cid=2, dst_cid=3, src_port=5000, dst_port=1024, length=5) + b"world"
    req = decode_request(ctx, b"", packet + bytes(100), len(packet), writable_lens=[4140])
    assert req.summary == "vsock RX RW 2:5000 -> 3:1024 len=5" and req.problems == []
    short = decode_request(QueueContext("vsock", 1), b"\0" * 20)
    assert codes(short) == ["SHORT_HEADER"]
    missing = decode_request(QueueContext("vsock", 1), vsock_hdr(length=10) + b"abc")
    assert codes(missing) == ["SHORT_PAYLOAD"] and missing.summary.endswith("len=10 (3 present)")


def test_vsock_event_queue():
    ctx = QueueContext("vsock", 2, VERSION_1)
    assert decode_request(ctx, writable_lens=[4]).summary == "vsock event buffer 4 bytes"
    req = decode_request(ctx, b"", b"\0\0\0\0", 4)
    assert req.summary == "vsock event TRANSPORT_RESET"
    assert codes(decode_request(ctx, b"", b"\0", 1)) == ["SHORT_EVENT"]


@settings(max_examples=200, deadline=None)
@given(head=st.binary(min_size=44, max_size=44), op=st.integers(0, 8), kind=st.integers(0, 3),
       length=st.integers(0, 8), payload=st.binary(max_size=8))
def test_vsock_fast_summary_matches_the_layer(head, op, kind, length, payload):
    packet = head[:24] + struct.pack("<IHH", length, kind, op) + head[32:] + payload
    layer = get_layer("virtio_vsock.hdr")
    assert "vsock " + packet_summary(packet) == layer.summary(layer.dissect(packet))
