"""The reference SCSI host (virtio 1.4, 5.6): commands, data layouts byte by byte, sense data, TMFs."""

from __future__ import annotations

import struct

import pytest

from vqtrace.devices.backend import MemoryBackend
from vqtrace.devices.bench import DeviceBench
from vqtrace.devices.scsi import CMD_REQ_HDR, CMD_RESP_HDR, EVENT, ScsiDevice
from vqtrace.dissectors import scsi as layout
from vqtrace.dissectors.layers import get_layer
from vqtrace.model import Layout

CTRLQ, EVENTQ, REQQ = 0, 1, 2
RESP = 12 + 96  # response header + default sense_size
OK, OVERRUN, BAD_TARGET, FAILURE = 0, 1, 3, 9
CHECK_CONDITION = 0x02


def req(cdb: bytes, target: int = 0, lun: int = 0, tag: int = 1) -> bytes:
    return CMD_REQ_HDR.pack(layout.lun_bytes(target, lun), tag, 0, 0, 0) + cdb.ljust(32, b"\0")


def response(written: bytes) -> tuple[int, int, int, int, bytes, bytes]:
    """(sense_len, residual, status, response, sense, datain)."""
    sense_len, residual, _qual, status, resp = CMD_RESP_HDR.unpack_from(written)
    return sense_len, residual, status, resp, written[12:12 + sense_len], written[RESP:]


@pytest.fixture(params=[Layout.SPLIT, Layout.PACKED], ids=["split", "packed"])
def bench(request):
    device = ScsiDevice(luns={(0, 0): MemoryBackend(1 << 20), (0, 3): MemoryBackend(300 << 10),
                              (0, 300): MemoryBackend(64 << 10)})
    with DeviceBench(device, layout=request.param) as b:
        yield b


def run(bench, cdb: bytes, datain: int = 0, dataout: bytes = b"", **address):
    readable = [req(cdb, **address)] + ([dataout] if dataout else [])
    used = bench.request(REQQ, readable, [RESP] + ([datain] if datain else []))
    return response(used.written), used


def test_header_structs_equal_the_layers():
    raw = CMD_REQ_HDR.pack(layout.lun_bytes(2, 5), 77, 2, 3, 4) + bytes([0x12, 0, 0, 0, 36, 0]).ljust(32, b"\0")
    parsed = get_layer("virtio_scsi.cmd_req").parse(raw)
    lun, tag, attr, prio, crn = CMD_REQ_HDR.unpack_from(raw)
    assert (parsed.id, parsed.lun.target, parsed.lun.single_level & 0x3FFF) == (tag, 2, 5) and lun[0] == 1
    assert (attr, prio, crn) == (int(parsed.task_attr), parsed.prio, parsed.crn)
    resp = CMD_RESP_HDR.pack(18, 7, 0, 2, 0) + bytes(96)
    values = get_layer("virtio_scsi.cmd_resp").parse(resp)
    assert (values.sense_len, values.residual, int(values.status), int(values.response)) == (18, 7, 2, 0)
    assert CMD_RESP_HDR.size == layout.CMD_RESP_HDR_SIZE and CMD_REQ_HDR.size == layout.CMD_REQ_HDR_SIZE
    event = EVENT.pack(1, layout.lun_bytes(0, 4), 2)
    parsed_event = get_layer("virtio_scsi.event").parse(event)
    assert int(parsed_event.event) == 1 and int(parsed_event.reason) == 2 and len(event) == layout.EVENT_SIZE


def test_test_unit_ready(bench):
    (sense_len, residual, status, resp, _, _), used = run(bench, b"\x00")
    assert (sense_len, residual, status, resp) == (0, 0, 0, OK)
    assert used.len == 12


def test_standard_inquiry_byte_by_byte(bench):
    (sense_len, residual, status, resp, _, data), used = run(bench, bytes([0x12, 0, 0, 0, 96, 0]), datain=96)
    assert (status, resp, sense_len) == (0, OK, 0)
    expected = bytes([
        0x00,  # peripheral qualifier 0, direct access block device
        0x00,  # not removable
        0x06,  # SPC-4
        0x12,  # HISUP, response data format 2
        31,  # additional length: 36 bytes in all
        0x00, 0x00,
        0x02,  # CMDQUE
    ]) + b"VQTRACE " + b"VIRTIO-SCSI DISK" + b"0.1 "
    assert data[:36] == expected and len(expected) == 36
    assert residual == 96 - 36 and used.len == RESP + 36
    tree = get_layer("virtio_scsi.inquiry").parse(data[:36])
    assert tree.vendor_identification == "VQTRACE" and tree.product_revision_level == "0.1"


def test_inquiry_allocation_length_cuts(bench):
    (_, residual, status, resp, _, data), _ = run(bench, bytes([0x12, 0, 0, 0, 5, 0]), datain=96)
    assert (status, resp) == (0, OK) and residual == 91 and data[:5] == bytes([0, 0, 6, 0x12, 31])


def test_inquiry_of_missing_lun_on_existing_target(bench):
    (_, _, status, resp, _, data), _ = run(bench, bytes([0x12, 0, 0, 0, 36, 0]), datain=36, lun=9)
    assert (status, resp) == (0, OK) and data[0] == 0x7F  # SPC-4 6.6.2: qualifier 3, type 1Fh


def test_vpd_pages(bench):
    def vpd(page: int) -> bytes:
        (_, _, status, resp, _, data), used = run(bench, bytes([0x12, 1, page, 0, 255, 0]), datain=255)
        assert (status, resp) == (0, OK)
        return data[:used.len - RESP]

    assert vpd(0x00) == bytes([0, 0x00, 0, 3, 0x00, 0x80, 0x83])
    serial = vpd(0x80)
    assert serial == bytes([0, 0x80, 0, 9]) + b"VQ0000000"  # target 00, LUN 00000
    ident = vpd(0x83)
    assert ident[:2] == bytes([0, 0x83]) and int.from_bytes(ident[2:4], "big") == len(ident) - 4
    # first designator: T10 vendor ID based (type 1), ASCII (code set 2), logical unit association
    assert ident[4:8] == bytes([0x02, 0x01, 0x00, len(ident[8:8 + ident[7]])])
    assert ident[8:16] == b"VQTRACE "
    naa_at = 8 + ident[7]
    assert ident[naa_at:naa_at + 4] == bytes([0x01, 0x03, 0x00, 8]) and ident[naa_at + 4] >> 4 == 3
    (_sense_len, _, status, _, sense, _), _ = run(bench, bytes([0x12, 1, 0xB0, 0, 255, 0]), datain=255)
    assert status == CHECK_CONDITION and sense[2] == 0x05 and sense[12:14] == bytes([0x24, 0x00])


def test_read_capacity_10_and_16_byte_by_byte(bench):
    (_, residual, status, resp, _, data), _ = run(bench, bytes([0x25] + [0] * 9), datain=8)
    assert (status, resp, residual) == (0, OK, 0)
    assert data == bytes([0x00, 0x00, 0x07, 0xFF, 0x00, 0x00, 0x02, 0x00])  # last LBA 2047, 512-byte blocks
    cdb16 = bytes([0x9E, 0x10]) + bytes(8) + struct.pack(">I", 32) + bytes(2)
    (_, residual, status, resp, _, data), _ = run(bench, cdb16, datain=32)
    assert (status, resp, residual) == (0, OK, 0)
    assert data == bytes(6) + b"\x07\xff" + b"\x00\x00\x02\x00" + bytes(20)
    parsed = get_layer("virtio_scsi.read_capacity16").parse(data)
    assert parsed.returned_logical_block_address == 2047 and parsed.logical_block_length == 512


def test_sense_data_for_a_bad_lba_byte_by_byte(bench):
    cdb = bytes([0x28, 0]) + struct.pack(">I", 2048) + bytes([0]) + struct.pack(">H", 1) + b"\0"  # READ(10)
    (sense_len, residual, status, resp, sense, _), used = run(bench, cdb, datain=512)
    assert (status, resp, sense_len) == (CHECK_CONDITION, OK, 18)
    assert sense == bytes([0x70, 0x00, 0x05, 0, 0, 0, 0, 0x0A, 0, 0, 0, 0, 0x21, 0x00, 0, 0, 0, 0])
    assert residual == 512 and used.len == 12 + 18
    tree = get_layer("virtio_scsi.sense").dissect(sense)
    assert tree["virtio_scsi.sense.additional_sense"] == "LOGICAL BLOCK ADDRESS OUT OF RANGE"


def test_unknown_opcode_is_illegal_request(bench):
    (_sense_len, _, status, resp, sense, _), _ = run(bench, bytes([0xC7, 0, 0, 0, 0, 0]))
    assert (status, resp) == (CHECK_CONDITION, OK)
    assert sense[2] & 0x0F == 0x05 and (sense[12], sense[13]) == (0x20, 0x00)


@pytest.mark.parametrize("size", [10, 16])
def test_write_then_read(bench, size):
    data = bytes(range(256)) * 4
    if size == 10:
        write = bytes([0x2A, 0]) + struct.pack(">I", 5) + b"\0" + struct.pack(">H", 2) + b"\0"
        read = bytes([0x28, 0]) + struct.pack(">I", 5) + b"\0" + struct.pack(">H", 2) + b"\0"
    else:
        write = bytes([0x8A, 0]) + struct.pack(">QI", 5, 2) + b"\0\0"
        read = bytes([0x88, 0]) + struct.pack(">QI", 5, 2) + b"\0\0"
    (_, residual, status, resp, _, _), used = run(bench, write, dataout=data)
    assert (status, resp, residual) == (0, OK, 0) and used.len == 12
    (_, residual, status, resp, _, got), used = run(bench, read, datain=1024)
    assert (status, resp, residual) == (0, OK, 0) and got == data and used.len == RESP + 1024
    assert bench.device.state()["luns"]["0:0"]["written"] == [[5, 2]]


def test_read6_and_overrun(bench):
    (_, _, status, resp, _, _), _ = run(bench, bytes([0x08, 0, 0, 1, 2, 0]), datain=1024)
    assert (status, resp) == (0, OK)
    (_, _, status, resp, _, _), _ = run(bench, bytes([0x08, 0, 0, 1, 4, 0]), datain=1024)
    assert resp == OVERRUN  # 5.6.6.1.1: the CDB asks for 2048 bytes, datain has 1024


def test_write_protected_lun():
    device = ScsiDevice(luns={(0, 0): MemoryBackend(64 << 10, readonly=True)})
    with DeviceBench(device) as bench:
        write = bytes([0x2A, 0]) + struct.pack(">I", 0) + b"\0" + struct.pack(">H", 1) + b"\0"
        (_, _, status, _, sense, _), _ = run(bench, write, dataout=bytes(512))
        assert status == CHECK_CONDITION and sense[2] == 0x07 and sense[12] == 0x27
        (_, _, status, _, _, data), _ = run(bench, bytes([0x1A, 0, 0x3F, 0, 255, 0]), datain=255)
        assert data[2] & 0x80  # MODE SENSE: WP


def test_report_luns(bench):
    cdb = bytes([0xA0, 0, 0, 0, 0, 0]) + struct.pack(">I", 256) + b"\0\0"
    (_, _, status, resp, _, data), used = run(bench, cdb, datain=256)
    assert (status, resp) == (0, OK)
    body = data[:used.len - RESP]
    assert body[:8] == struct.pack(">I", 24) + bytes(4)
    assert body[8:] == bytes([0, 0] + [0] * 6) + bytes([0, 3] + [0] * 6) + bytes([0x41, 0x2C] + [0] * 6)
    # the REPORT LUNS well-known logical unit (5.6.6.1): lun C1 01 00...
    raw = CMD_REQ_HDR.pack(layout.REPORT_LUNS_WLUN, 9, 0, 0, 0) + cdb.ljust(32, b"\0")
    used = bench.request(REQQ, [raw], [RESP, 256])
    assert response(used.written)[3] == OK and used.written[RESP:RESP + 4] == struct.pack(">I", 24)
    short = bytes([0xA0, 0, 0, 0, 0, 0]) + struct.pack(">I", 8) + b"\0\0"  # allocation length < 16
    (_, _, status, _, sense, _), _ = run(bench, short, datain=256)
    assert status == CHECK_CONDITION and sense[12] == 0x24


def test_mode_sense_6_and_10(bench):
    (_, _, status, resp, _, data), used = run(bench, bytes([0x1A, 0, 0x08, 0, 255, 0]), datain=255)
    body = data[:used.len - RESP]
    assert (status, resp) == (0, OK)
    assert body[:4] == bytes([len(body) - 1, 0, 0x10, 8])  # header(6): DPOFUA, 8-byte block descriptor
    assert body[4:12] == struct.pack(">I", 2048) + b"\0" + (512).to_bytes(3, "big")
    assert body[12:14] == bytes([0x08, 0x12]) and body[14] & 0x04  # caching page, WCE
    cdb10 = bytes([0x5A, 0x08, 0x3F, 0, 0, 0, 0]) + struct.pack(">H", 255) + b"\0"  # DBD, all pages
    (_, _, status, resp, _, data), used = run(bench, cdb10, datain=255)
    body = data[:used.len - RESP]
    assert body[:8] == struct.pack(">H", len(body) - 2) + bytes([0, 0x10, 0, 0]) + struct.pack(">H", 0)
    assert [body[8], body[8 + 2 + body[9]]] == [0x08, 0x0A]
    (_, _, status, _, sense, _), _ = run(bench, bytes([0x1A, 0, 0xC8, 0, 255, 0]), datain=255)  # saved values
    assert status == CHECK_CONDITION and sense[12] == 0x39
    (_, _, status, _, sense, _), _ = run(bench, bytes([0x1A, 0, 0x1C, 0, 255, 0]), datain=255)  # unknown page
    assert status == CHECK_CONDITION and sense[12] == 0x24


def test_request_sense_and_synchronize_cache(bench):
    (_, _, status, _, _, data), used = run(bench, bytes([0x03, 0, 0, 0, 252, 0]), datain=252)
    assert status == 0 and data[:used.len - RESP] == bytes([0x70, 0, 0, 0, 0, 0, 0, 10]) + bytes(10)
    (_, _, status, _, _, data), used = run(bench, bytes([0x03, 0, 0, 0, 252, 0]), datain=252, lun=9)
    assert status == 0 and data[2] == 0x05 and data[12] == 0x25  # LOGICAL UNIT NOT SUPPORTED
    (_, _, status, _, _, data), used = run(bench, bytes([0x03, 1, 0, 0, 252, 0]), datain=252)
    assert data[:8] == bytes([0x72, 0, 0, 0, 0, 0, 0, 0])  # DESC: descriptor format
    before = bench.device.units[(0, 0)].backend.flushes
    (_, _, status, resp, _, _), _ = run(bench, bytes([0x35] + [0] * 9))
    assert (status, resp) == (0, OK) and bench.device.units[(0, 0)].backend.flushes == before + 1
    cdb = bytes([0x91, 0]) + struct.pack(">QI", 2040, 100) + b"\0\0"
    (_, _, status, _, sense, _), _ = run(bench, cdb)
    assert status == CHECK_CONDITION and sense[12] == 0x21


def test_bad_target_and_lun(bench):
    (_, _, status, resp, _, _), _ = run(bench, b"\x00", target=5)
    assert resp == BAD_TARGET
    (_, _, status, resp, sense, _), _ = run(bench, b"\x00", lun=9)
    assert (status, resp) == (CHECK_CONDITION, OK) and sense[12] == 0x25


def test_four_kilobyte_blocks():
    device = ScsiDevice(luns={(0, 0): MemoryBackend(1 << 20)}, block_size=4096)
    with DeviceBench(device) as bench:
        (_, _, _, _, _, data), _ = run(bench, bytes([0x25] + [0] * 9), datain=8)
        assert data == struct.pack(">II", 255, 4096)


# -- control queue and events -----------------------------------------------------------------------

def tmf(subtype: int, target: int = 0, lun: int = 0, tag: int = 0) -> bytes:
    return struct.pack("<II8sQ", 0, subtype, layout.lun_bytes(target, lun), tag)


@pytest.mark.parametrize(("subtype", "target", "lun", "expected"), [
    (0, 0, 0, 0),  # ABORT TASK: FUNCTION COMPLETE
    (5, 0, 0, 0),  # LOGICAL UNIT RESET
    (4, 0, 99, 0),  # I_T NEXUS RESET ignores the LUN
    (6, 0, 3, 0),  # QUERY TASK: no such task
    (2, 0, 0, 11),  # CLEAR ACA: FUNCTION REJECTED
    (42, 0, 0, 11),  # unknown function
    (5, 7, 0, 3),  # BAD_TARGET
    (5, 0, 9, 12),  # INCORRECT_LUN
])
def test_task_management(bench, subtype, target, lun, expected):
    used = bench.request(CTRLQ, [tmf(subtype, target, lun, tag=5)], [1])
    assert used.written == bytes([expected])


def test_async_notification_and_malformed_control(bench):
    an = struct.pack("<I8sI", 1, layout.lun_bytes(0, 0), 0x10)
    used = bench.request(CTRLQ, [an], [5])
    assert used.written == bytes(4) + bytes([OK])  # event_actual 0, response OK
    used = bench.request(CTRLQ, [b"\x00\x00"], [1])
    assert used.written == bytes([FAILURE]) and bench.anomalies("SCSI_CTRL_MALFORMED")


def test_hotplug_events(bench):
    bench.add(EVENTQ, writable=[16])
    bench.device.add_lun(0, 7, MemoryBackend(4096))
    (used,) = bench.used(EVENTQ)
    event, lun, reason = EVENT.unpack(used.written)
    assert (event, reason) == (1, 1) and lun == layout.lun_bytes(0, 7)  # TRANSPORT_RESET, RESCAN
    bench.device.remove_lun(0, 7)
    bench.add(EVENTQ, writable=[16])
    assert EVENT.unpack(bench.used(EVENTQ)[0].written)[2] == 2  # REMOVED


def test_sense_and_cdb_size_config():
    device = ScsiDevice()
    config = get_layer("virtio_scsi.config").parse(device.config_space())
    assert (config.sense_size, config.cdb_size, config.event_info_size, config.num_queues) == (96, 32, 16, 1)
    assert device.write_config(20, struct.pack("<I", 32)).anomalies == []
    assert device.write_config(24, struct.pack("<I", 16)).anomalies == []
    assert device.write_config(0, struct.pack("<I", 4)).anomalies[0].code == "CONFIG_WRITE_READONLY"
    with DeviceBench(device) as bench:
        raw = CMD_REQ_HDR.pack(layout.lun_bytes(0, 0), 1, 0, 0, 0) + bytes([0x25] + [0] * 15)
        used = bench.request(REQQ, [raw], [12 + 32, 8])
        assert used.written[12 + 32:] == struct.pack(">II", 2047, 512)
    device.reset()
    assert (device.sense_size, device.cdb_size) == (96, 32)  # 5.6.4.2


# -- malformed requests ---------------------------------------------------------------------------

def test_dataout_and_datain_without_inout(bench):
    used = bench.request(REQQ, [req(b"\x00"), b"out"], [RESP, 16])
    assert response(used.written)[3] == FAILURE and bench.anomalies("SCSI_INOUT")


def test_short_request_and_missing_response(bench):
    used = bench.request(REQQ, [b"\x01\x00"], [RESP])
    assert response(used.written)[3] == FAILURE and bench.anomalies("SCSI_SHORT_REQUEST")
    assert bench.request(REQQ, [req(b"\x00")], [4]).len == 0
    assert bench.anomalies("SCSI_NO_RESPONSE")
    used = bench.request(REQQ, [req(b"\x00")], [12])  # no room for sense data: still answered
    assert response(used.written)[3] == OK and bench.anomalies("SCSI_SHORT_RESPONSE")


def test_request_in_writable_buffers_only(bench):
    used = bench.request(REQQ, [], [RESP + 64])
    assert response(used.written)[3] == FAILURE


def test_cdb_longer_than_cdb_size():
    device = ScsiDevice()
    device.write_config(24, struct.pack("<I", 6))  # the driver shrinks cdb_size (5.6.4)
    with DeviceBench(device) as bench:
        read10 = bytes([0x28, 0, 0, 0, 0, 0])  # the first 6 bytes of a READ(10)
        raw = CMD_REQ_HDR.pack(layout.lun_bytes(0, 0), 1, 0, 0, 0) + read10
        used = bench.request(REQQ, [raw], [RESP, 512])
        _sense_len, _, status, resp, sense, _ = response(used.written)
        assert (status, resp) == (CHECK_CONDITION, OK) and sense[12] == 0x24
        raw = CMD_REQ_HDR.pack(layout.lun_bytes(0, 0), 2, 0, 0, 0) + bytes([0x12, 0, 0, 0, 36, 0])
        used = bench.request(REQQ, [raw], [RESP, 36])
        assert response(used.written)[2] == 0 and used.written[RESP:RESP + 8] == bytes([0, 0, 6, 0x12, 31, 0, 0, 2])


def test_image_error_is_a_medium_error(tmp_path):
    import os

    from vqtrace.devices.backend import FileBackend

    image = tmp_path / "lun.img"
    image.write_bytes(bytes(8192))
    backend = FileBackend(image)
    with DeviceBench(ScsiDevice(luns={(0, 0): backend})) as bench:
        os.close(backend.fd)
        read = bytes([0x28, 0]) + struct.pack(">I", 0) + b"\0" + struct.pack(">H", 1) + b"\0"
        (_, _, status, resp, sense, _), _ = run(bench, read, datain=512)
        assert (status, resp) == (CHECK_CONDITION, OK) and sense[2] == 0x03 and sense[12] == 0x11
        backend.fd = -1
