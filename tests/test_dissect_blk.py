"""Block device layouts against virtio 1.4, 5.2: requests, segments, responses, configuration."""

from __future__ import annotations

import json
import struct

import pytest

from conftest import run_vqtrace
from vqtrace.dissectors import DissectError, dissect, get_layer, parse
from vqtrace.dissectors.blk import (
    BLK_CONFIG_SIZE,
    DWZ_SEG_SIZE,
    REQ_HDR_SIZE,
    ZONE_DESCRIPTOR_SIZE,
    virtio_blk_config,
    zone_descriptor,
)


def spans(tree):
    out: dict[str, tuple[int, int]] = {}
    for node in tree.walk():
        out.setdefault(node.abbrev, (node.offset, node.length))
    return out


def req(type_: int, sector: int = 0, payload: bytes = b"", reserved: int = 0):
    return dissect("virtio_blk.req", struct.pack("<IIQ", type_, reserved, sector) + payload)


# 5.2.6 and 5.2.6.3 (legacy): every request type number
TYPES = {
    "VIRTIO_BLK_T_IN": 0, "VIRTIO_BLK_T_OUT": 1, "VIRTIO_BLK_T_SCSI_CMD": 2, "VIRTIO_BLK_T_SCSI_CMD_OUT": 3,
    "VIRTIO_BLK_T_FLUSH": 4, "VIRTIO_BLK_T_FLUSH_OUT": 5, "VIRTIO_BLK_T_GET_ID": 8,
    "VIRTIO_BLK_T_GET_LIFETIME": 10, "VIRTIO_BLK_T_DISCARD": 11, "VIRTIO_BLK_T_WRITE_ZEROES": 13,
    "VIRTIO_BLK_T_SECURE_ERASE": 14, "VIRTIO_BLK_T_ZONE_APPEND": 15, "VIRTIO_BLK_T_ZONE_REPORT": 16,
    "VIRTIO_BLK_T_ZONE_OPEN": 18, "VIRTIO_BLK_T_ZONE_CLOSE": 20, "VIRTIO_BLK_T_ZONE_FINISH": 22,
    "VIRTIO_BLK_T_ZONE_RESET": 24, "VIRTIO_BLK_T_ZONE_RESET_ALL": 26,
}


@pytest.mark.parametrize(("name", "value"), TYPES.items())
def test_request_type_numbers(name, value):
    tree = req(value, 8)
    assert tree.find("virtio_blk.type").display == f"{name} ({value})"


def test_request_header_layout():
    assert REQ_HDR_SIZE == 16
    tree = req(0, 0x1122334455, reserved=7)
    assert spans(tree) == {"virtio_blk": (0, 16), "virtio_blk.type": (0, 4), "virtio_blk.reserved": (4, 4),
                           "virtio_blk.sector": (8, 8)}
    assert (tree["virtio_blk.sector"], tree["virtio_blk.reserved"]) == (0x1122334455, 7)
    assert get_layer("virtio_blk.req").summary(tree) == "blk IN sector=73588229205"


def test_write_carries_its_data_and_summary():
    data = bytes(range(256)) * 4
    tree = req(1, 2048, data)
    assert tree["virtio_blk.data"] == data
    assert spans(tree)["virtio_blk.data"] == (16, 1024)
    assert get_layer("virtio_blk.req").summary(tree) == "blk OUT sector=2048"
    assert get_layer("virtio_blk.req").summary(req(4)) == "blk FLUSH"
    assert get_layer("virtio_blk.req").summary(req(24, 524288)) == "blk ZONE_RESET sector=524288"
    assert "virtio_blk.data" not in req(0, 1, b"ignored")  # a read's data is device-writable


def test_legacy_barrier_bit():
    tree = req(0x80000001, 9)
    assert tree.find("virtio_blk.type").display == "VIRTIO_BLK_T_OUT|VIRTIO_BLK_T_BARRIER (2147483649)"
    assert get_layer("virtio_blk.req").summary(tree) == "blk OUT|BARRIER sector=9"


@pytest.mark.parametrize("type_", [11, 13, 14])
def test_discard_write_zeroes_secure_erase_segments(type_):
    segs = struct.pack("<QII", 100, 8, 1) + struct.pack("<QII", 4096, 2048, 0)
    tree = req(type_, 0, segs)
    values = tree.values()
    assert values["virtio_blk.dwz_seg.sector"] == [100, 4096]
    assert values["virtio_blk.dwz_seg.num_sectors"] == [8, 2048]
    assert values["virtio_blk.dwz_seg.flags.unmap"] == [True, False]
    seg_nodes = [n for n in tree.walk() if n.abbrev == "virtio_blk.dwz_seg" and n.label.startswith("[")]
    assert [(n.offset, n.length) for n in seg_nodes] == [(16, 16), (32, 16)]
    assert get_layer("virtio_blk.req").summary(tree).endswith("segments=2 sector=100")


def test_segment_layer_and_its_offsets():
    assert DWZ_SEG_SIZE == get_layer("virtio_blk.dwz_seg").sizeof() == 16
    tree = dissect("virtio_blk.dwz_seg", struct.pack("<QII", 7, 9, 1))
    assert spans(tree) == {"virtio_blk.dwz_seg": (0, 16), "virtio_blk.dwz_seg.sector": (0, 8),
                           "virtio_blk.dwz_seg.num_sectors": (8, 4), "virtio_blk.dwz_seg.flags": (12, 4),
                           "virtio_blk.dwz_seg.flags.unmap": (12, 4), "virtio_blk.dwz_seg.flags.reserved": (12, 4)}
    assert tree["virtio_blk.dwz_seg.flags.unmap"] is True


def test_partial_segment_is_an_error_at_its_offset():
    with pytest.raises(DissectError) as info:
        req(11, 0, struct.pack("<QII", 1, 1, 0) + bytes(10))
    assert info.value.layer == "virtio_blk.req" and info.value.offset == 40  # num_sectors of the 2nd segment
    assert "virtio_blk.dwz_seg.num_sectors needs 4 bytes, 2 left" in str(info.value)


def test_truncated_header():
    with pytest.raises(DissectError) as info:
        dissect("virtio_blk.req", struct.pack("<II", 1, 0) + b"\x00\x08")
    assert (info.value.layer, info.value.offset) == ("virtio_blk.req", 8)
    assert "virtio_blk.sector needs 8 bytes, 2 left" in str(info.value)


def test_request_round_trip_and_fast_parse():
    layer = get_layer("virtio_blk.req")
    raw = layer.build({"type": "VIRTIO_BLK_T_DISCARD", "reserved": 0, "sector": 0, "data": None,
                       "dwz_seg": [{"sector": 64, "num_sectors": 64, "flags": 0}]})
    assert raw == struct.pack("<IIQ", 11, 0, 0) + struct.pack("<QII", 64, 64, 0)
    assert layer.dissect(raw)["virtio_blk.dwz_seg.sector"] == 64
    raw = layer.build({"type": 1, "reserved": 0, "sector": 8, "data": b"abc", "dwz_seg": None})
    fast = parse("virtio_blk.req", raw)
    assert fast.type == "VIRTIO_BLK_T_OUT" and fast.sector == 8 and fast.data == b"abc"


STATUS = {"VIRTIO_BLK_S_OK": 0, "VIRTIO_BLK_S_IOERR": 1, "VIRTIO_BLK_S_UNSUPP": 2,
          "VIRTIO_BLK_S_ZONE_INVALID_CMD": 3, "VIRTIO_BLK_S_ZONE_UNALIGNED_WP": 4,
          "VIRTIO_BLK_S_ZONE_OPEN_RESOURCE": 5, "VIRTIO_BLK_S_ZONE_ACTIVE_RESOURCE": 6}


@pytest.mark.parametrize(("name", "value"), STATUS.items())
def test_status_values(name, value):
    tree = dissect("virtio_blk.status", bytes([value]))
    assert tree.find("virtio_blk.status.status").display == f"{name} ({value})"
    assert "virtio_blk.status.append_sector" not in tree


def test_zone_append_in_header():
    raw = struct.pack("<QB", 0x80000, 0)
    tree = dissect("virtio_blk.status", raw, params={"request_type": 15})
    assert spans(tree)["virtio_blk.status.append_sector"] == (0, 8)
    assert spans(tree)["virtio_blk.status.status"] == (8, 1)
    assert get_layer("virtio_blk.status").summary(tree) == "blk status OK append_sector=524288"
    with pytest.raises(DissectError) as info:
        dissect("virtio_blk.status", raw[:8], params={"request_type": 15})
    assert info.value.offset == 8


def test_get_id_string():
    assert dissect("virtio_blk.get_id", b"disk-0001".ljust(20, b"\0"))["virtio_blk.get_id.id"] == "disk-0001"
    full = b"ABCDEFGHIJKLMNOPQRST"  # 20 bytes: no NUL terminator (5.2.6)
    tree = dissect("virtio_blk.get_id", full)
    assert tree["virtio_blk.get_id.id"] == full.decode() and tree.length == 20
    with pytest.raises(DissectError):
        dissect("virtio_blk.get_id", b"short")


def test_lifetime():
    tree = dissect("virtio_blk.lifetime", struct.pack("<3H", 2, 3, 11))
    assert get_layer("virtio_blk.lifetime").sizeof() == 6
    assert tree.find("virtio_blk.lifetime.pre_eol_info").display == "VIRTIO_BLK_PRE_EOL_INFO_WARNING (2)"
    assert spans(tree)["virtio_blk.lifetime.device_lifetime_est_typ_b"] == (4, 2)
    assert tree["virtio_blk.lifetime.device_lifetime_est_typ_a"] == 3
    names = get_layer("virtio_blk.lifetime").struct.subcons[0].subcon.encmapping
    assert names == {"VIRTIO_BLK_PRE_EOL_INFO_UNDEFINED": 0, "VIRTIO_BLK_PRE_EOL_INFO_NORMAL": 1,
                     "VIRTIO_BLK_PRE_EOL_INFO_WARNING": 2, "VIRTIO_BLK_PRE_EOL_INFO_URGENT": 3}


def zone(cap, start, wp, ztype, state):
    return struct.pack("<QQQBB", cap, start, wp, ztype, state) + bytes(38)


def test_zone_report():
    assert ZONE_DESCRIPTOR_SIZE == len(zone(0, 0, 0, 0, 0)) == 64
    raw = struct.pack("<Q", 2) + bytes(56) + zone(65536, 0, 128, 2, 2) + zone(65536, 65536, 0, 1, 0) + bytes(64)
    tree = dissect("virtio_blk.zone_report", raw)
    values = tree.values()
    assert values["virtio_blk.zone_report.nr_zones"] == 2
    assert values["virtio_blk.zone_report.zones.z_start"] == [0, 65536]
    assert values["virtio_blk.zone_report.zones.z_wp"] == [128, 0]
    states = [n.display for n in tree.find_all("virtio_blk.zone_report.zones.z_state")]
    types = [n.display for n in tree.find_all("virtio_blk.zone_report.zones.z_type")]
    assert states == ["VIRTIO_BLK_ZS_IOPEN (2)", "VIRTIO_BLK_ZS_NOT_WP (0)"]
    assert types == ["VIRTIO_BLK_ZT_SWR (2)", "VIRTIO_BLK_ZT_CONV (1)"]
    assert spans(tree)["virtio_blk.zone_report.zones"] == (64, 128)  # the unused third slot is not a zone
    with pytest.raises(DissectError) as info:
        dissect("virtio_blk.zone_report", struct.pack("<Q", 3) + bytes(56) + zone(1, 0, 0, 2, 1))
    assert info.value.offset == 64 and "3 entries of 64 bytes" in str(info.value)


def test_zone_state_and_model_numbers():
    states = zone_descriptor.subcons[4].subcon.encmapping
    assert zone_descriptor.sizeof() == 64
    assert zone_descriptor.subcons[3].subcon.encmapping == {"VIRTIO_BLK_ZT_CONV": 1, "VIRTIO_BLK_ZT_SWR": 2,
                                                           "VIRTIO_BLK_ZT_SWP": 3}
    models = virtio_blk_config.subcons[-1].subcon.thensubcon.subcons[5].subcon.encmapping
    assert models == {"VIRTIO_BLK_Z_NONE": 0, "VIRTIO_BLK_Z_HM": 1, "VIRTIO_BLK_Z_HA": 2}
    assert states == {"VIRTIO_BLK_ZS_NOT_WP": 0, "VIRTIO_BLK_ZS_EMPTY": 1, "VIRTIO_BLK_ZS_IOPEN": 2,
                      "VIRTIO_BLK_ZS_EOPEN": 3, "VIRTIO_BLK_ZS_CLOSED": 4, "VIRTIO_BLK_ZS_RDONLY": 13,
                      "VIRTIO_BLK_ZS_FULL": 14, "VIRTIO_BLK_ZS_OFFLINE": 15}


CONFIG_OFFSETS = {  # 5.2.4 struct virtio_blk_config
    "capacity": (0, 8), "size_max": (8, 4), "seg_max": (12, 4), "geometry": (16, 4),
    "geometry.cylinders": (16, 2), "geometry.heads": (18, 1), "geometry.sectors": (19, 1),
    "blk_size": (20, 4), "topology": (24, 8), "topology.physical_block_exp": (24, 1),
    "topology.alignment_offset": (25, 1), "topology.min_io_size": (26, 2), "topology.opt_io_size": (28, 4),
    "writeback": (32, 1), "unused0": (33, 1), "num_queues": (34, 2), "max_discard_sectors": (36, 4),
    "max_discard_seg": (40, 4), "discard_sector_alignment": (44, 4), "max_write_zeroes_sectors": (48, 4),
    "max_write_zeroes_seg": (52, 4), "write_zeroes_may_unmap": (56, 1), "unused1": (57, 3),
    "max_secure_erase_sectors": (60, 4), "max_secure_erase_seg": (64, 4),
    "secure_erase_sector_alignment": (68, 4), "zoned": (72, 24), "zoned.zone_sectors": (72, 4),
    "zoned.max_open_zones": (76, 4), "zoned.max_active_zones": (80, 4), "zoned.max_append_sectors": (84, 4),
    "zoned.write_granularity": (88, 4), "zoned.model": (92, 1), "zoned.unused2": (93, 3),
}


def full_config() -> bytes:
    return (struct.pack("<QII", 2097152, 65536, 126) + struct.pack("<HBB", 2080, 16, 63)
            + struct.pack("<I", 512) + struct.pack("<BBHI", 3, 0, 8, 256) + struct.pack("<BBH", 1, 0, 4)
            + struct.pack("<3I", 32768, 1, 8) + struct.pack("<2I", 65535, 1) + struct.pack("<B3x", 1)
            + struct.pack("<3I", 4096, 2, 8) + struct.pack("<5IB3x", 524288, 14, 14, 2048, 4096, 1))


def test_config_every_field_offset():
    raw = full_config()
    assert len(raw) == BLK_CONFIG_SIZE == 96
    tree = dissect("virtio_blk.config", raw)
    offsets = spans(tree)
    for name, span in CONFIG_OFFSETS.items():
        assert offsets[f"virtio_blk.config.{name}"] == span, name
    values = tree.values()
    assert values["virtio_blk.config.geometry.cylinders"] == 2080
    assert values["virtio_blk.config.topology.opt_io_size"] == 256
    assert values["virtio_blk.config.num_queues"] == 4
    assert values["virtio_blk.config.write_zeroes_may_unmap"] == 1
    assert values["virtio_blk.config.zoned.max_append_sectors"] == 2048
    assert tree.find("virtio_blk.config.zoned.model").display == "VIRTIO_BLK_Z_HM (1)"
    assert get_layer("virtio_blk.config").summary(tree) == "blk config capacity=2097152 (1073741824 bytes)"


def test_short_config_space_and_partial_fields():
    tree = dissect("virtio_blk.config", full_config()[:36])  # up to num_queues, as a device without DISCARD
    assert tree["virtio_blk.config.num_queues"] == 4
    assert "virtio_blk.config.max_discard_sectors" not in tree
    with pytest.raises(DissectError) as info:
        dissect("virtio_blk.config", full_config()[:18])  # half of geometry
    assert info.value.offset == 18 and "virtio_blk.config.geometry.heads" in str(info.value)


def test_config_round_trip():
    layer = get_layer("virtio_blk.config")
    names = ["size_max", "seg_max", "geometry", "blk_size", "topology", "writeback", "unused0", "num_queues",
             "max_discard_sectors", "max_discard_seg", "discard_sector_alignment", "max_write_zeroes_sectors",
             "max_write_zeroes_seg", "write_zeroes_may_unmap", "unused1", "max_secure_erase_sectors",
             "max_secure_erase_seg", "secure_erase_sector_alignment", "zoned"]
    values = dict.fromkeys(names) | {"capacity": 8, "size_max": 4096, "seg_max": 128}
    raw = layer.build(values)
    assert raw == struct.pack("<QII", 8, 4096, 128)
    assert parse("virtio_blk.config", raw).seg_max == 128


def test_cli_decode_blk_request():
    result = run_vqtrace("decode", "virtio_blk.req", "01000000 00000000 0008000000000000 deadbeef")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "Type: VIRTIO_BLK_T_OUT (1)" in out
    assert "Sector: 2048" in out
    assert "Data: deadbeef" in out
    result = run_vqtrace("decode", "virtio_blk.req", "-T", "json", "0b000000000000000000000000000000"
                         "0001000000000000 08000000 01000000")
    doc = json.loads(result.stdout)
    assert doc["fields"]["virtio_blk.type"] == 11
    assert doc["fields"]["virtio_blk.dwz_seg.sector"] == 256
    assert doc["fields"]["virtio_blk.dwz_seg.flags.unmap"] is True
    result = run_vqtrace("decode", "virtio_blk.status", "--param", "request_type=15", "0001000000000000 04")
    assert "Status: VIRTIO_BLK_S_ZONE_UNALIGNED_WP (4)" in result.stdout.decode()


def test_cli_decode_truncated_request_is_one_line():
    result = run_vqtrace("decode", "virtio_blk.req", "0100000000000000")
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert "virtio_blk.req at offset 8: truncated: virtio_blk.sector needs 8 bytes, 0 left" in lines[0]
