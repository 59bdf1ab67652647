"""SCSI host device layouts against virtio 1.4, 5.6, and the T10 data they carry (SPC-4, SBC-3)."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_vqtrace
from vqtrace.dissectors import DissectError, Field, dissect, get_layer, parse
from vqtrace.dissectors.scsi import (
    CMD_REQ_HDR_SIZE,
    CMD_RESP_HDR_SIZE,
    CTRL_AN_SIZE,
    CTRL_TMF_SIZE,
    EVENT_SIZE,
    REPORT_LUNS_WLUN,
    SCSI_CONFIG_SIZE,
    ctrl_layer,
    ctrl_resp_layer,
    lun_bytes,
)
from vqtrace.dissectors.scsi_cdb import (
    CDB_FLAGS,
    INQUIRY_MIN_SIZE,
    READ_CAPACITY10_SIZE,
    READ_CAPACITY16_SIZE,
    asc_ascq_name,
)


def spans(tree: Field) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for node in tree.walk():
        out.setdefault(node.abbrev, (node.offset, node.length))
    return out


def cmd_req(cdb: bytes, *, target: int = 0, lun: int = 1, tag: int = 7, cdb_size: int = 32, data: bytes = b"",
            params: dict | None = None) -> Field:
    raw = lun_bytes(target, lun) + struct.pack("<QBBB", tag, 0, 0, 0) + cdb.ljust(cdb_size, b"\0") + data
    return dissect("virtio_scsi.cmd_req", raw, params=params)


def summary(layer: str, tree: Field) -> str:
    return get_layer(layer).summary(tree)


def fixed_sense(key: int, asc: int, ascq: int, information: int = 0, valid: bool = False) -> bytes:
    # SPC-4 4.5.3: 18 bytes, ADDITIONAL SENSE LENGTH 10
    code = 0x70 | (0x80 if valid else 0)
    return struct.pack(">BBBIBIBBBBBH", code, 0, key, information, 10, 0, asc, ascq, 0, 0, 0, 0)


def cmd_resp(sense: bytes = b"", *, status: int = 0, response: int = 0, residual: int = 0, sense_size: int = 96,
             data: bytes = b"", params: dict | None = None) -> Field:
    raw = struct.pack("<IIHBB", len(sense), residual, 0, status, response) + sense.ljust(sense_size, b"\0") + data
    return dissect("virtio_scsi.cmd_resp", raw, params=params)


# ---------------------------------------------------------------- request layout (5.6.6.1)

def test_cmd_req_is_51_bytes_with_the_default_cdb_size():
    # lun[8] + le64 id + task_attr + prio + crn = 19, then cdb[32]: the data-out starts at 51.
    tree = cmd_req(bytes([0x00]), data=b"\xaa\xbb")
    assert CMD_REQ_HDR_SIZE == 19
    assert spans(tree) == {
        "virtio_scsi": (0, 53),
        "virtio_scsi.lun": (0, 8), "virtio_scsi.lun.format": (0, 1), "virtio_scsi.lun.target": (1, 1),
        "virtio_scsi.lun.single_level": (2, 2), "virtio_scsi.lun.single_level.address_method": (2, 2),
        "virtio_scsi.lun.single_level.lun": (2, 2), "virtio_scsi.lun.reserved": (4, 4),
        "virtio_scsi.id": (8, 8), "virtio_scsi.task_attr": (16, 1), "virtio_scsi.prio": (17, 1),
        "virtio_scsi.crn": (18, 1),
        "virtio_scsi.cdb": (19, 32), "virtio_scsi.cdb.opcode": (19, 1), "virtio_scsi.cdb.reserved": (20, 4),
        "virtio_scsi.cdb.control": (24, 1), "virtio_scsi.cdb.control.naca": (24, 1),
        "virtio_scsi.dataout": (51, 2),
    }
    assert tree.find("virtio_scsi.cdb.opcode").display == "TEST UNIT READY (0)"


def test_cdb_size_parameter_moves_the_data_out():
    tree = cmd_req(bytes([0x00]), cdb_size=16, data=b"xyz", params={"cdb_size": 16})
    assert spans(tree)["virtio_scsi.cdb"] == (19, 16)
    assert spans(tree)["virtio_scsi.dataout"] == (35, 3)
    assert tree["virtio_scsi.dataout"] == b"xyz"


def test_lun_target_and_lun_decoded():
    tree = cmd_req(bytes([0x00]), target=3, lun=0x1234)
    assert tree["virtio_scsi.lun.format"] == 1
    assert tree.find("virtio_scsi.lun.format").display == "TARGET_LUN (1)"
    assert tree["virtio_scsi.lun.target"] == 3
    assert tree["virtio_scsi.lun.single_level"] == 0x4000 | 0x1234
    assert tree.find("virtio_scsi.lun.single_level.address_method").display == "FLAT SPACE (1)"
    assert tree["virtio_scsi.lun.single_level.lun"] == 0x1234
    assert summary("virtio_scsi.cmd_req", tree) == "scsi TEST UNIT READY lun=3:4660 id=7"
    assert lun_bytes(3, 0x1234) == bytes([1, 3, 0x52, 0x34, 0, 0, 0, 0])
    with pytest.raises(ValueError):
        lun_bytes(256, 0)


def test_report_luns_well_known_lu():
    raw = REPORT_LUNS_WLUN + struct.pack("<QBBB", 1, 0, 0, 0) + bytes([0xA0]).ljust(32, b"\0")
    tree = dissect("virtio_scsi.cmd_req", raw)
    assert tree.find("virtio_scsi.lun.format").display == "WELL_KNOWN_LU (193)"
    assert tree["virtio_scsi.lun.target"] == 1
    assert summary("virtio_scsi.cmd_req", tree).endswith("lun=REPORT_LUNS id=1")


TASK_ATTRS = {"VIRTIO_SCSI_S_SIMPLE": 0, "VIRTIO_SCSI_S_ORDERED": 1, "VIRTIO_SCSI_S_HEAD": 2, "VIRTIO_SCSI_S_ACA": 3}


@pytest.mark.parametrize(("name", "value"), TASK_ATTRS.items())
def test_task_attr_values(name, value):
    raw = lun_bytes(0, 0) + struct.pack("<QBBB", 0, value, 0, 0) + bytes(32)
    assert dissect("virtio_scsi.cmd_req", raw).find("virtio_scsi.task_attr").display == f"{name} ({value})"


def test_t10_pi_fields_precede_the_cdb():
    # VIRTIO_SCSI_F_T10_PI (bit 3): pi_bytesout, pi_bytesin before cdb (Linux struct
    # virtio_scsi_cmd_req_pi), then pi_out (pi_bytesout bytes), then the data-out.
    raw = (lun_bytes(0, 2) + struct.pack("<QBBBII", 5, 0, 0, 0, 4, 16) + bytes([0x2A, 0, 0, 0, 0, 9, 0, 0, 1, 0])
           .ljust(32, b"\0") + b"PIPI" + b"D" * 512)
    tree = dissect("virtio_scsi.cmd_req", raw, params={"features": 1 << 3})
    got = spans(tree)
    assert got["virtio_scsi.pi_bytesout"] == (19, 4) and got["virtio_scsi.pi_bytesin"] == (23, 4)
    assert got["virtio_scsi.cdb"] == (27, 32)
    assert got["virtio_scsi.pi_out"] == (59, 4) and got["virtio_scsi.dataout"] == (63, 512)
    assert (tree["virtio_scsi.pi_bytesout"], tree["virtio_scsi.pi_bytesin"]) == (4, 16)
    assert tree["virtio_scsi.cdb.lba32"] == 9
    # Without the feature the same bytes are a plain request: no PI fields.
    plain = dissect("virtio_scsi.cmd_req", raw)
    assert "virtio_scsi.pi_bytesout" not in plain and "virtio_scsi.pi_out" not in plain


# ---------------------------------------------------------------- CDBs (SPC-4 4.2, SBC-3 5)

def test_read10_cdb_fields():
    # SBC-3 5.11: opcode 28h, flags, LBA (4), group, TRANSFER LENGTH (2), control
    cdb = bytes([0x28, 0x18, 0x00, 0x00, 0x08, 0x00, 0x05, 0x00, 0x08, 0x04])
    tree = cmd_req(cdb)
    assert tree.find("virtio_scsi.cdb.opcode").display == "READ(10) (40)"
    assert tree["virtio_scsi.cdb.lba32"] == 2048
    assert tree["virtio_scsi.cdb.transfer_length16"] == 8
    assert tree["virtio_scsi.cdb.group_number"] == 5
    assert tree["virtio_scsi.cdb.flags.dpo"] is True and tree["virtio_scsi.cdb.flags.fua"] is True
    assert tree["virtio_scsi.cdb.flags.rarc"] is False and tree["virtio_scsi.cdb.flags.rdprotect"] == 0
    assert tree["virtio_scsi.cdb.control.naca"] is True
    got = spans(tree)
    assert got["virtio_scsi.cdb.lba32"] == (21, 4) and got["virtio_scsi.cdb.transfer_length16"] == (26, 2)
    assert got["virtio_scsi.cdb.control"] == (28, 1)
    assert summary("virtio_scsi.cmd_req", tree) == "scsi READ(10) lba=2048 len=8 fua lun=1 id=7"


def test_write16_cdb_fields():
    # SBC-3 5.37: opcode 8Ah, flags, LBA (8), TRANSFER LENGTH (4), group, control
    cdb = bytes([0x8A, 0x20 | 0x08]) + (0x1_0000_0000).to_bytes(8, "big") + (0x800).to_bytes(4, "big") + bytes([0, 0])
    tree = cmd_req(cdb, lun=0)
    assert tree.find("virtio_scsi.cdb.opcode").display == "WRITE(16) (138)"
    assert tree["virtio_scsi.cdb.lba64"] == 0x1_0000_0000
    assert tree["virtio_scsi.cdb.transfer_length32"] == 0x800
    assert tree["virtio_scsi.cdb.flags.wrprotect"] == 1
    assert tree["virtio_scsi.cdb.flags.fua"] is True
    assert spans(tree)["virtio_scsi.cdb.lba64"] == (21, 8)
    assert summary("virtio_scsi.cmd_req", tree) == "scsi WRITE(16) lba=4294967296 len=2048 fua lun=0 id=7"


def test_inquiry_cdb_fields():
    # SPC-4 6.6: opcode 12h, EVPD, PAGE CODE, ALLOCATION LENGTH (2), control
    tree = cmd_req(bytes([0x12, 0x01, 0x83, 0x01, 0x00, 0x00]))
    assert tree["virtio_scsi.cdb.flags.evpd"] is True
    assert tree.find("virtio_scsi.cdb.page_code").display == "DEVICE IDENTIFICATION (131)"
    assert tree["virtio_scsi.cdb.allocation_length16"] == 256
    assert summary("virtio_scsi.cmd_req", tree) == "scsi INQUIRY evpd page=0x83 alloc=256 lun=1 id=7"
    standard = cmd_req(bytes([0x12, 0, 0, 0, 36, 0]))
    assert standard["virtio_scsi.cdb.flags.evpd"] is False
    assert summary("virtio_scsi.cmd_req", standard) == "scsi INQUIRY alloc=36 lun=1 id=7"


def test_report_luns_cdb_fields():
    # SPC-4 6.33: opcode A0h, reserved, SELECT REPORT, reserved (3), ALLOCATION LENGTH (4), reserved, control
    cdb = bytes([0xA0, 0, 0x02, 0, 0, 0]) + (4096).to_bytes(4, "big") + bytes([0, 0])
    tree = cmd_req(cdb, lun=0)
    assert tree.find("virtio_scsi.cdb.select_report").display == "ALL LOGICAL UNITS (2)"
    assert tree["virtio_scsi.cdb.allocation_length32"] == 4096
    assert spans(tree)["virtio_scsi.cdb.allocation_length32"] == (25, 4)
    assert spans(tree)["virtio_scsi.cdb.control"] == (30, 1)
    assert summary("virtio_scsi.cmd_req", tree) == "scsi REPORT LUNS alloc=4096 lun=0 id=7"


def test_read6_lba_is_21_bits_and_length_zero_means_256():
    tree = cmd_req(bytes([0x08, 0x1F, 0xFF, 0xFF, 0x00, 0x00]))
    assert tree["virtio_scsi.cdb.lba21"] == 0x1FFFFF
    assert tree["virtio_scsi.cdb.transfer_length8"] == 0
    assert summary("virtio_scsi.cmd_req", tree) == "scsi READ(6) lba=2097151 len=256 lun=1 id=7"


def test_service_action_in_picks_read_capacity16_or_get_lba_status():
    rc16 = bytes([0x9E, 0x10]) + bytes(8) + (32).to_bytes(4, "big") + bytes([0, 0])
    tree = cmd_req(rc16)
    assert tree.find("virtio_scsi.cdb.service_action").display == "READ CAPACITY(16) (16)"
    assert tree["virtio_scsi.cdb.allocation_length32"] == 32
    assert summary("virtio_scsi.cmd_req", tree) == "scsi READ CAPACITY(16) lba=0 alloc=32 lun=1 id=7"
    lba_status = bytes([0x9E, 0x12]) + (100).to_bytes(8, "big") + (24).to_bytes(4, "big") + bytes([0, 0])
    tree = cmd_req(lba_status)
    assert tree.find("virtio_scsi.cdb.service_action").display == "GET LBA STATUS (18)"
    assert tree["virtio_scsi.cdb.lba64"] == 100 and tree["virtio_scsi.cdb.report_type"] == 0
    other = cmd_req(bytes([0x9E, 0x1F]) + bytes(14))
    assert other.find("virtio_scsi.cdb.service_action").display == "Unknown (31)"
    assert len(other["virtio_scsi.cdb.parameters"]) == 13


@pytest.mark.parametrize(("cdb", "field", "value", "text"), [
    (bytes([0x35, 0x02, 0, 0, 0, 0, 0, 0, 0, 0]), "virtio_scsi.cdb.flags.immed", True,
     "scsi SYNCHRONIZE CACHE(10) lba=0 len=0"),
    (bytes([0x91, 0]) + (7).to_bytes(8, "big") + (9).to_bytes(4, "big") + bytes(2),
     "virtio_scsi.cdb.number_of_blocks32", 9, "scsi SYNCHRONIZE CACHE(16) lba=7 len=9"),
    (bytes([0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]), "virtio_scsi.cdb.parameter_list_length16", 24,
     "scsi UNMAP param_len=24"),
    (bytes([0x93, 0x08]) + (64).to_bytes(8, "big") + (128).to_bytes(4, "big") + bytes(2),
     "virtio_scsi.cdb.flags.unmap", True, "scsi WRITE SAME(16) lba=64 len=128"),
    (bytes([0x41, 0x08, 0, 0, 0, 64, 0, 0, 8, 0]), "virtio_scsi.cdb.number_of_blocks16", 8,
     "scsi WRITE SAME(10) lba=64 len=8"),
    (bytes([0x1A, 0x08, 0x3F, 0, 0xC0, 0]), "virtio_scsi.cdb.page.page_code", 0x3F, "scsi MODE SENSE(6) alloc=192"),
    (bytes([0x5A, 0, 0x48, 0, 0, 0, 0, 0x10, 0, 0]), "virtio_scsi.cdb.page.pc", 1, "scsi MODE SENSE(10) alloc=4096"),
    (bytes([0x15, 0x10, 0, 0, 12, 0]), "virtio_scsi.cdb.flags.pf", True, "scsi MODE SELECT(6) param_len=12"),
    (bytes([0x1B, 0x01, 0, 0, 0x02, 0]), "virtio_scsi.cdb.power.loej", True, "scsi START STOP UNIT"),
    (bytes([0x03, 0x01, 0, 0, 96, 0]), "virtio_scsi.cdb.flags.desc", True, "scsi REQUEST SENSE alloc=96"),
    (bytes([0x2F, 0x02, 0, 0, 0, 5, 0, 0, 1, 0]), "virtio_scsi.cdb.flags.bytchk", 1, "scsi VERIFY(10) lba=5 len=1"),
    (bytes([0x5E, 0x01, 0, 0, 0, 0, 0, 0, 64, 0]), "virtio_scsi.cdb.service_action", 1,
     "scsi PERSISTENT RESERVE IN alloc=64"),
    (bytes([0x5F, 0x01, 0x03, 0, 0, 0, 0, 0, 24, 0]), "virtio_scsi.cdb.scope_type.type", 3,
     "scsi PERSISTENT RESERVE OUT param_len=24"),
    (bytes([0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]), "virtio_scsi.cdb.rc_flags.pmi", False, "scsi READ CAPACITY(10) lba=0"),
    (bytes([0xA8, 0, 0, 0, 1, 0, 0, 0, 0, 8, 0, 0]), "virtio_scsi.cdb.transfer_length32", 8,
     "scsi READ(12) lba=256 len=8"),
    (bytes([0x04, 0, 0, 0, 0, 0]), "virtio_scsi.cdb.parameters", bytes(4), "scsi FORMAT UNIT"),
])
def test_common_cdbs(cdb, field, value, text):
    tree = cmd_req(cdb, lun=0, tag=0)
    assert tree[field] == value
    assert summary("virtio_scsi.cmd_req", tree) == f"{text} lun=0"


def test_start_stop_unit_power_condition_is_named():
    tree = cmd_req(bytes([0x1B, 0, 0, 0, 0x31, 0]))
    assert tree.find("virtio_scsi.cdb.power.power_condition").display == "STANDBY (3)"
    assert tree["virtio_scsi.cdb.power.start"] is True
    assert tree.find("virtio_scsi.cdb.scope_type") is None


def test_cdb_flag_bits_keep_one_mask_everywhere():
    # One abbreviation, one bit: the Wireshark plugin registers each flag once, with its mask.
    masks: dict[str, int] = {}
    for spec in get_layer("virtio_scsi.cmd_req").fields():
        if spec.mask:
            assert masks.setdefault(spec.abbrev, spec.mask) == spec.mask, spec.abbrev
    assert masks["virtio_scsi.cdb.flags.fua"] == CDB_FLAGS["FUA"] == 0x08
    assert masks["virtio_scsi.cdb.flags.immed"] == 0x02 and masks["virtio_scsi.cdb.start_stop_flags.immed"] == 0x01


def test_unknown_opcode_shows_its_bytes():
    tree = cmd_req(bytes([0xC5, 1, 2, 3]))
    assert tree.find("virtio_scsi.cdb.opcode").display == "Unknown (197)"
    assert tree["virtio_scsi.cdb.parameters"] == bytes([1, 2, 3]) + bytes(28)
    assert spans(tree)["virtio_scsi.cdb.parameters"] == (20, 31)
    assert summary("virtio_scsi.cmd_req", tree) == "scsi opcode=0xc5 lun=1 id=7"


def test_cdb_longer_than_cdb_size_is_shown_raw():
    # A 16-byte READ(16) in a 10-byte cdb field (cdb_size=10) cannot be that command.
    cdb = bytes([0x88, 0]) + bytes(8)
    tree = cmd_req(cdb, cdb_size=10, params={"cdb_size": 10})
    assert tree.find("virtio_scsi.cdb.opcode").display == "READ(16) (136)"
    assert "virtio_scsi.cdb.lba64" not in tree
    assert spans(tree)["virtio_scsi.cdb.parameters"] == (20, 9)


def test_standalone_cdb_layer():
    tree = dissect("virtio_scsi.cdb", bytes([0x28, 0, 0, 0, 0, 1, 0, 0, 2, 0]))
    assert tree["virtio_scsi.cdb.lba32"] == 1 and tree["virtio_scsi.cdb.transfer_length16"] == 2
    assert spans(tree)["virtio_scsi.cdb"] == (0, 10)
    assert summary("virtio_scsi.cdb", tree) == "scsi READ(10) lba=1 len=2"
    # A CDB cut short of its command's length shows its opcode and the bytes there are.
    short = dissect("virtio_scsi.cdb", bytes([0x28, 0, 0, 0]))
    assert short.find("virtio_scsi.cdb.opcode").display == "READ(10) (40)"
    assert short["virtio_scsi.cdb.parameters"] == bytes(3) and "virtio_scsi.cdb.lba32" not in short


# ---------------------------------------------------------------- response and sense data

RESPONSES = {
    "VIRTIO_SCSI_S_OK": 0, "VIRTIO_SCSI_S_OVERRUN": 1, "VIRTIO_SCSI_S_ABORTED": 2, "VIRTIO_SCSI_S_BAD_TARGET": 3,
    "VIRTIO_SCSI_S_RESET": 4, "VIRTIO_SCSI_S_BUSY": 5, "VIRTIO_SCSI_S_TRANSPORT_FAILURE": 6,
    "VIRTIO_SCSI_S_TARGET_FAILURE": 7, "VIRTIO_SCSI_S_NEXUS_FAILURE": 8, "VIRTIO_SCSI_S_FAILURE": 9,
    "VIRTIO_SCSI_S_FUNCTION_SUCCEEDED": 10, "VIRTIO_SCSI_S_FUNCTION_REJECTED": 11, "VIRTIO_SCSI_S_INCORRECT_LUN": 12,
}


@pytest.mark.parametrize(("name", "value"), RESPONSES.items())
def test_response_values(name, value):
    assert cmd_resp(response=value).find("virtio_scsi.response").display == f"{name} ({value})"


@pytest.mark.parametrize(("name", "value"), [("GOOD", 0), ("CHECK CONDITION", 2), ("CONDITION MET", 4), ("BUSY", 8),
                                             ("RESERVATION CONFLICT", 0x18), ("TASK SET FULL", 0x28),
                                             ("ACA ACTIVE", 0x30), ("TASK ABORTED", 0x40)])
def test_sam_status_values(name, value):
    assert cmd_resp(status=value).find("virtio_scsi.status").display == f"{name} ({value})"


def test_cmd_resp_layout_and_default_sense_size():
    tree = cmd_resp(status=0, residual=512, data=b"\x01\x02")
    assert CMD_RESP_HDR_SIZE == 12
    got = spans(tree)
    assert got["virtio_scsi.sense_len"] == (0, 4) and got["virtio_scsi.residual"] == (4, 4)
    assert got["virtio_scsi.status_qualifier"] == (8, 2) and got["virtio_scsi.status"] == (10, 1)
    assert got["virtio_scsi.response"] == (11, 1)
    assert got["virtio_scsi.sense"] == (12, 96)  # sense_size 96 (5.6.4)
    assert got["virtio_scsi.datain"] == (108, 2)
    assert tree.find("virtio_scsi.sense").children == []  # sense_len 0: nothing decoded
    assert summary("virtio_scsi.cmd_resp", tree) == "scsi resp OK GOOD residual=512 datain=2"


def test_sense_size_parameter():
    tree = cmd_resp(fixed_sense(6, 0x29, 0), sense_size=32, data=b"D", params={"sense_size": 32})
    assert spans(tree)["virtio_scsi.sense"] == (12, 32)
    assert spans(tree)["virtio_scsi.datain"] == (44, 1)
    assert tree.find("virtio_scsi.sense.flags.sense_key").display == "UNIT ATTENTION (6)"


def test_lba_out_of_range_fixed_sense():
    # SBC-3: ILLEGAL REQUEST, ASC 21h ASCQ 00h; VALID set and INFORMATION = the bad LBA
    tree = cmd_resp(fixed_sense(5, 0x21, 0x00, information=0x00100000, valid=True), status=2)
    s = "virtio_scsi.sense"
    assert tree.find(s + ".response_code").display == "CURRENT FIXED|VALID (240)"
    assert tree.find(s + ".flags.sense_key").display == "ILLEGAL REQUEST (5)"
    assert tree[s + ".flags.sense_key"] == 5 and tree[s + ".flags.ili"] is False
    assert tree[s + ".information"] == 0x00100000
    assert tree[s + ".additional_sense_length"] == 10
    assert (tree[s + ".asc"], tree[s + ".ascq"]) == (0x21, 0x00)
    assert tree[s + ".additional_sense"] == "LOGICAL BLOCK ADDRESS OUT OF RANGE"
    got = spans(tree)
    assert got[s + ".information"] == (15, 4) and got[s + ".asc"] == (24, 1) and got[s + ".ascq"] == (25, 1)
    assert got[s + ".sense_key_specific"] == (27, 3)
    assert summary("virtio_scsi.cmd_resp", tree) == (
        "scsi resp OK CHECK CONDITION [ILLEGAL REQUEST 0x21/0x00 LOGICAL BLOCK ADDRESS OUT OF RANGE]")


def test_fixed_sense_flags_and_short_additional_length():
    # ILI with MEDIUM ERROR; ADDITIONAL SENSE LENGTH 6 stops after the ASCQ (SPC-4 4.5.3)
    raw = bytes([0x70, 0, 0x20 | 0x03, 0, 0, 0, 0, 6, 0, 0, 0, 0, 0x11, 0x00])
    tree = dissect("virtio_scsi.sense", raw)
    assert tree["virtio_scsi.sense.flags.ili"] is True
    assert tree.find("virtio_scsi.sense.flags.sense_key").display == "MEDIUM ERROR (3)"
    assert tree["virtio_scsi.sense.additional_sense"] == "UNRECOVERED READ ERROR"
    assert "virtio_scsi.sense.field_replaceable_unit_code" not in tree
    assert "virtio_scsi.sense.sense_key_specific" not in tree


def test_reserved_sense_key_is_unknown():
    # Sense key Ch is reserved (SPC-4 4.5.6): the bit group shows it as unknown, like an Enum.
    tree = dissect("virtio_scsi.sense", fixed_sense(0x0C, 0, 0))
    assert tree.find("virtio_scsi.sense.flags.sense_key").display == "Unknown (12)"
    assert tree["virtio_scsi.sense.additional_sense"] == "NO ADDITIONAL SENSE INFORMATION"


def test_descriptor_format_sense():
    # SPC-4 4.5.2: header (8), an information descriptor (12) and a sense key specific one (8)
    info = bytes([0x00, 0x0A, 0x80, 0]) + (0x123456789).to_bytes(8, "big")
    sks = bytes([0x02, 0x06, 0, 0, 0xC0, 0x00, 0x02, 0])  # SKSV, C/D, field pointer 2
    raw = bytes([0x72, 0x05, 0x24, 0x00, 0, 0, 0, len(info) + len(sks)]) + info + sks
    tree = dissect("virtio_scsi.sense", raw)
    s = "virtio_scsi.sense"
    assert tree.find(s + ".response_code").display == "CURRENT DESCRIPTOR (114)"
    assert tree.find(s + ".flags.sense_key").display == "ILLEGAL REQUEST (5)"
    assert tree[s + ".additional_sense"] == "INVALID FIELD IN CDB"
    values = tree.values()
    assert values[s + ".descriptor.descriptor_type"] == [0, 2]
    assert tree[s + ".descriptor.information"] == 0x123456789
    assert tree[s + ".descriptor.flags.valid"] is True
    assert tree[s + ".descriptor.sense_key_specific.sksv"] is True
    assert tree[s + ".descriptor.sense_key_specific.sense_key_specific"] == 0x400002
    descriptors = [n for n in tree.walk() if n.abbrev == s + ".descriptor" and n.label.endswith("]")]
    assert [(n.offset, n.length) for n in descriptors] == [(8, 12), (20, 8)]
    assert summary("virtio_scsi.sense", tree) == "scsi sense ILLEGAL REQUEST 0x24/0x00 INVALID FIELD IN CDB"


def test_descriptor_sense_unknown_and_partial_descriptors():
    vendor = bytes([0x80, 0x03, 1, 2, 3])
    partial = bytes([0x00, 0x0A, 0x80])  # claims 10 bytes, 1 is there
    raw = bytes([0x72, 0x06, 0x29, 0x00, 0, 0, 0, len(vendor) + len(partial)]) + vendor + partial
    tree = dissect("virtio_scsi.sense", raw)
    assert tree.find("virtio_scsi.sense.descriptor.descriptor_type").display == "Unknown (128)"
    assert tree["virtio_scsi.sense.descriptor.descriptor_data"] == bytes([1, 2, 3])
    assert tree["virtio_scsi.sense.trailing"] == partial
    assert spans(tree)["virtio_scsi.sense.trailing"] == (13, 3)


def test_vendor_specific_response_code_keeps_the_bytes():
    tree = dissect("virtio_scsi.sense", bytes([0x7F, 9, 9, 9]))
    assert tree.find("virtio_scsi.sense.response_code").display == "VENDOR SPECIFIC (127)"
    assert tree["virtio_scsi.sense.sense_bytes"] == bytes([9, 9, 9])


def test_hostile_additional_sense_length_stays_in_the_sense_buffer():
    # ADDITIONAL SENSE LENGTH 255 in a 32-byte sense buffer: decode what fits, then data-in
    sense = bytes([0x70, 0, 5, 0, 0, 0, 0, 255]) + bytes(10) + b"S" * 14
    tree = cmd_resp(sense, sense_size=32, data=b"DATA", params={"sense_size": 32})
    assert tree["virtio_scsi.sense.additional_sense_bytes"] == b"S" * 14
    assert tree["virtio_scsi.datain"] == b"DATA"


def test_asc_ascq_names():
    assert asc_ascq_name(0x3F, 0x0E) == "REPORTED LUNS DATA HAS CHANGED"
    assert asc_ascq_name(0x2A, 0x09) == "CAPACITY DATA HAS CHANGED"
    assert asc_ascq_name(0x25, 0x00) == "LOGICAL UNIT NOT SUPPORTED"
    assert asc_ascq_name(0x80, 0x01) == "VENDOR SPECIFIC (0x80/0x01)"
    assert asc_ascq_name(0x7E, 0x7E) == "Unknown (0x7e/0x7e)"


def test_sense_key_has_value_names_for_filters():
    specs = {s.abbrev: s for s in get_layer("virtio_scsi.cmd_resp").fields()}
    key = specs["virtio_scsi.sense.flags.sense_key"]
    assert key.kind == "uint8" and key.mask == 0x0F
    assert key.value_names[5] == "ILLEGAL REQUEST" and key.value_names[6] == "UNIT ATTENTION"
    assert specs["virtio_scsi.status"].value_names[2] == "CHECK CONDITION"


# ---------------------------------------------------------------- T10 data a device returns

def inquiry_bytes(pdt: int = 0, rmb: int = 0, extra: bytes = b"") -> bytes:
    return (bytes([pdt, rmb, 0x05, 0x12, 31 + len(extra), 0x00, 0x00, 0x02]) + b"QEMU    " + b"QEMU HARDDISK   "
            + b"2.5+" + extra)


def test_standard_inquiry_data_byte_by_byte():
    raw = inquiry_bytes()
    assert len(raw) == INQUIRY_MIN_SIZE == 36
    tree = dissect("virtio_scsi.inquiry", raw)
    p = "virtio_scsi.inquiry"
    assert spans(tree) == {
        p: (0, 36),
        p + ".peripheral": (0, 1), p + ".peripheral.peripheral_qualifier": (0, 1),
        p + ".peripheral.peripheral_device_type": (0, 1),
        p + ".flags1": (1, 1), p + ".flags1.rmb": (1, 1), p + ".flags1.lu_cong": (1, 1),
        p + ".version": (2, 1),
        p + ".flags3": (3, 1), p + ".flags3.normaca": (3, 1), p + ".flags3.hisup": (3, 1),
        p + ".flags3.response_data_format": (3, 1),
        p + ".additional_length": (4, 1),
        p + ".flags5": (5, 1), p + ".flags5.sccs": (5, 1), p + ".flags5.acc": (5, 1), p + ".flags5.tpgs": (5, 1),
        p + ".flags5.3pc": (5, 1), p + ".flags5.protect": (5, 1),
        p + ".flags6": (6, 1), p + ".flags6.encserv": (6, 1), p + ".flags6.vs": (6, 1), p + ".flags6.multip": (6, 1),
        p + ".flags6.addr16": (6, 1),
        p + ".flags7": (7, 1), p + ".flags7.wbus16": (7, 1), p + ".flags7.sync": (7, 1), p + ".flags7.cmdque": (7, 1),
        p + ".flags7.vs": (7, 1),
        p + ".vendor_identification": (8, 8), p + ".product_identification": (16, 16),
        p + ".product_revision_level": (32, 4),
    }
    assert tree.find(p + ".peripheral.peripheral_qualifier").display == "CONNECTED (0)"
    assert tree.find(p + ".peripheral.peripheral_device_type").display == "DIRECT ACCESS BLOCK DEVICE (0)"
    assert tree[p + ".flags1.rmb"] is False
    assert tree.find(p + ".version").display == "SPC-3 (5)"
    assert tree[p + ".flags3.response_data_format"] == 2 and tree[p + ".flags3.hisup"] is True
    assert tree[p + ".additional_length"] == 31
    assert tree[p + ".flags7.cmdque"] is True
    assert (tree[p + ".vendor_identification"], tree[p + ".product_identification"],
            tree[p + ".product_revision_level"]) == ("QEMU", "QEMU HARDDISK", "2.5+")
    layer = get_layer("virtio_scsi.inquiry")
    assert layer.summary(tree) == "scsi inquiry DIRECT ACCESS BLOCK DEVICE 'QEMU' 'QEMU HARDDISK' '2.5+'"
    values = {"peripheral": 0, "flags1": 0, "version": "SPC-3", "flags3": 0x12, "additional_length": 31,
              "flags5": 0, "flags6": 0, "flags7": 2, "vendor_identification": "QEMU",
              "product_identification": "QEMU HARDDISK", "product_revision_level": "2.5+",
              "vendor_specific": None, "flags56": None, "reserved": None, "version_descriptor": None}
    assert layer.build(values) == raw


def test_inquiry_removable_cdrom_and_version_descriptors():
    extra = bytes(20) + bytes([0, 0]) + b"".join(v.to_bytes(2, "big") for v in (0x0060, 0x0460, 0, 0, 0, 0, 0, 0))
    raw = inquiry_bytes(pdt=0x05, rmb=0x80, extra=extra)
    tree = dissect("virtio_scsi.inquiry", raw)
    p = "virtio_scsi.inquiry"
    assert tree.find(p + ".peripheral.peripheral_device_type").display == "CD/DVD DEVICE (5)"
    assert tree[p + ".flags1.rmb"] is True
    assert tree.values()[p + ".version_descriptor"] == [0x0060, 0x0460, 0, 0, 0, 0, 0, 0]
    assert spans(tree)[p + ".version_descriptor"] == (58, 16)
    # Allocation length 36 cuts the data short of what ADDITIONAL LENGTH announces: no error.
    short = dissect("virtio_scsi.inquiry", raw[:36])
    assert short[p + ".additional_length"] == 31 + len(extra) and p + ".vendor_specific" not in short


def test_read_capacity10_data_byte_by_byte():
    raw = bytes([0x00, 0x1F, 0xFF, 0xFF, 0x00, 0x00, 0x02, 0x00])  # last LBA 2097151, 512-byte blocks
    tree = dissect("virtio_scsi.read_capacity10", raw)
    p = "virtio_scsi.read_capacity10"
    assert get_layer(p).sizeof() == READ_CAPACITY10_SIZE == 8
    assert spans(tree) == {p: (0, 8), p + ".returned_logical_block_address": (0, 4),
                           p + ".logical_block_length": (4, 4)}
    assert (tree[p + ".returned_logical_block_address"], tree[p + ".logical_block_length"]) == (0x1FFFFF, 512)
    assert get_layer(p).summary(tree) == "scsi capacity last_lba=2097151 block=512 (1073741824 bytes)"
    assert get_layer(p).build({"returned_logical_block_address": 0x1FFFFF, "logical_block_length": 512}) == raw


def test_read_capacity16_data_byte_by_byte():
    raw = ((0x1_0000_0000).to_bytes(8, "big") + (4096).to_bytes(4, "big")
           + bytes([0x03, 0x13, 0xC0, 0x07]) + bytes(16))
    tree = dissect("virtio_scsi.read_capacity16", raw)
    p = "virtio_scsi.read_capacity16"
    assert len(raw) == READ_CAPACITY16_SIZE == 32
    got = spans(tree)
    assert got[p + ".returned_logical_block_address"] == (0, 8) and got[p + ".logical_block_length"] == (8, 4)
    assert got[p + ".protection"] == (12, 1) and got[p + ".exponents"] == (13, 1)
    assert got[p + ".provisioning"] == (14, 2) and got[p + ".reserved"] == (16, 16)
    assert tree[p + ".protection.prot_en"] is True
    assert tree.find(p + ".protection.p_type").display == "TYPE 2 PROTECTION (1)"
    assert tree[p + ".exponents.p_i_exponent"] == 1
    assert tree[p + ".exponents.logical_blocks_per_physical_block_exponent"] == 3
    assert tree[p + ".provisioning.lbpme"] is True and tree[p + ".provisioning.lbprz"] is True
    assert tree[p + ".provisioning.lowest_aligned_logical_block_address"] == 7
    layer = get_layer(p)
    assert layer.build({"returned_logical_block_address": 0x1_0000_0000, "logical_block_length": 4096,
                        "protection": 3, "exponents": 0x13, "provisioning": 0xC007, "reserved": bytes(16)}) == raw
    # Linux asks for 32 bytes, an old device may return 12: the optional fields are absent.
    assert p + ".protection" not in dissect(p, raw[:12])


def test_report_luns_data():
    raw = (16).to_bytes(4, "big") + bytes(4) + bytes(8) + bytes([0x40, 0x05]) + bytes(6)
    tree = dissect("virtio_scsi.report_luns", raw)
    assert tree.values()["virtio_scsi.report_luns.lun.single_level.lun"] == [0, 5]
    assert get_layer("virtio_scsi.report_luns").summary(tree) == "scsi report luns 2 LUNs"
    # A LUN LIST LENGTH larger than the data (allocation length) lists what is there.
    assert len(dissect("virtio_scsi.report_luns", (4096).to_bytes(4, "big") + bytes(4 + 8)).find_all(
        "virtio_scsi.report_luns.lun.single_level")) == 1


# ---------------------------------------------------------------- controlq, eventq, configuration

TMF = {"VIRTIO_SCSI_T_TMF_ABORT_TASK": 0, "VIRTIO_SCSI_T_TMF_ABORT_TASK_SET": 1, "VIRTIO_SCSI_T_TMF_CLEAR_ACA": 2,
       "VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET": 3, "VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET": 4,
       "VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET": 5, "VIRTIO_SCSI_T_TMF_QUERY_TASK": 6,
       "VIRTIO_SCSI_T_TMF_QUERY_TASK_SET": 7}


@pytest.mark.parametrize(("name", "value"), TMF.items())
def test_tmf_subtypes(name, value):
    raw = struct.pack("<II", 0, value) + lun_bytes(0, 2) + struct.pack("<Q", 77)
    tree = dissect("virtio_scsi.ctrl_tmf", raw)
    assert tree.find("virtio_scsi.ctrl_tmf.subtype").display == f"{name} ({value})"
    assert tree.find("virtio_scsi.ctrl_tmf.type").display == "VIRTIO_SCSI_T_TMF (0)"
    assert summary("virtio_scsi.ctrl_tmf", tree) == f"scsi tmf {name.removeprefix('VIRTIO_SCSI_T_TMF_')} lun=2 id=77"


def test_control_layouts_sizes_and_responses():
    assert get_layer("virtio_scsi.ctrl_tmf").sizeof() == CTRL_TMF_SIZE == 24
    assert get_layer("virtio_scsi.ctrl_tmf_resp").sizeof() == 1
    assert get_layer("virtio_scsi.ctrl_an").sizeof() == CTRL_AN_SIZE == 16
    assert get_layer("virtio_scsi.ctrl_an_resp").sizeof() == 5
    tmf = dissect("virtio_scsi.ctrl_tmf_resp", b"\x00")
    assert tmf.find("virtio_scsi.ctrl_tmf_resp.response").display == "VIRTIO_SCSI_S_FUNCTION_COMPLETE (0)"
    assert dissect("virtio_scsi.ctrl_tmf_resp", b"\x0b").find(
        "virtio_scsi.ctrl_tmf_resp.response").display == "VIRTIO_SCSI_S_FUNCTION_REJECTED (11)"
    assert ctrl_layer(struct.pack("<I", 0)) == "virtio_scsi.ctrl_tmf"
    assert ctrl_layer(struct.pack("<I", 2)) == "virtio_scsi.ctrl_an"
    assert ctrl_resp_layer(1) == "virtio_scsi.ctrl_an_resp"


def test_async_notification_query_and_response():
    raw = struct.pack("<I", 1) + lun_bytes(0, 0) + struct.pack("<I", 16 | 2)
    tree = dissect("virtio_scsi.ctrl_an", raw)
    assert tree.find("virtio_scsi.ctrl_an.type").display == "VIRTIO_SCSI_T_AN_QUERY (1)"
    assert tree["virtio_scsi.ctrl_an.event_requested.media_change"] is True
    assert tree["virtio_scsi.ctrl_an.event_requested.operational_change"] is True
    assert tree["virtio_scsi.ctrl_an.event_requested.power_mgmt"] is False
    assert summary("virtio_scsi.ctrl_an", tree) == "scsi AN_QUERY lun=0 events=OPERATIONAL_CHANGE|MEDIA_CHANGE"
    resp = dissect("virtio_scsi.ctrl_an_resp", struct.pack("<IB", 16, 0))
    assert resp["virtio_scsi.ctrl_an_resp.event_actual.media_change"] is True
    assert summary("virtio_scsi.ctrl_an_resp", resp) == "scsi an resp OK events=MEDIA_CHANGE"


def test_events_and_reasons():
    assert get_layer("virtio_scsi.event").sizeof() == EVENT_SIZE == 16
    rescan = dissect("virtio_scsi.event", struct.pack("<I", 0x80000001) + lun_bytes(1, 0) + struct.pack("<I", 1))
    assert rescan.find("virtio_scsi.event.event").display == (
        "VIRTIO_SCSI_T_TRANSPORT_RESET|VIRTIO_SCSI_T_EVENTS_MISSED (2147483649)")
    assert rescan.find("virtio_scsi.event.reason").display == "VIRTIO_SCSI_EVT_RESET_RESCAN (1)"
    assert summary("virtio_scsi.event", rescan) == "scsi event TRANSPORT_RESET|EVENTS_MISSED RESCAN lun=1:0"
    removed = dissect("virtio_scsi.event", struct.pack("<I", 1) + lun_bytes(0, 3) + struct.pack("<I", 2))
    assert removed.find("virtio_scsi.event.reason").display == "VIRTIO_SCSI_EVT_RESET_REMOVED (2)"
    # PARAM_CHANGE: ASC in bits 0-7, ASCQ in bits 8-15 (capacity change: 2Ah/09h)
    change = dissect("virtio_scsi.event", struct.pack("<I", 3) + lun_bytes(0, 0) + struct.pack("<I", 0x092A))
    assert (change["virtio_scsi.event.reason.asc"], change["virtio_scsi.event.reason.ascq"]) == (0x2A, 0x09)
    assert summary("virtio_scsi.event", change) == "scsi event PARAM_CHANGE 0x2a/0x09 CAPACITY DATA HAS CHANGED lun=0"
    notify = dissect("virtio_scsi.event", struct.pack("<I", 2) + lun_bytes(0, 0) + struct.pack("<I", 16))
    assert summary("virtio_scsi.event", notify) == "scsi event ASYNC_NOTIFY MEDIA_CHANGE lun=0"
    missed = dissect("virtio_scsi.event", struct.pack("<I", 0x80000000) + bytes(12))
    assert missed.find("virtio_scsi.event.event").display == (
        "VIRTIO_SCSI_T_NO_EVENT|VIRTIO_SCSI_T_EVENTS_MISSED (2147483648)")


def test_config_every_field_offset():
    raw = struct.pack("<7IHHI", 4, 126, 0xFFFF, 128, 16, 96, 32, 0, 255, 16383)
    tree = dissect("virtio_scsi.config", raw)
    assert get_layer("virtio_scsi.config").sizeof() == SCSI_CONFIG_SIZE == 36
    p = "virtio_scsi.config."
    names = ["num_queues", "seg_max", "max_sectors", "cmd_per_lun", "event_info_size", "sense_size", "cdb_size",
             "max_channel", "max_target", "max_lun"]
    offsets = [0, 4, 8, 12, 16, 20, 24, 28, 30, 32]
    assert [spans(tree)[p + n][0] for n in names] == offsets
    assert [tree[p + n] for n in names] == [4, 126, 0xFFFF, 128, 16, 96, 32, 0, 255, 16383]
    assert summary("virtio_scsi.config", tree) == (
        "scsi config num_queues=4 max_target=255 max_lun=16383 cdb_size=32 sense_size=96")
    assert get_layer("virtio_scsi.config").build(dict(zip(names, [4, 126, 0xFFFF, 128, 16, 96, 32, 0, 255, 16383],
                                                          strict=True))) == raw


# ---------------------------------------------------------------- round trips and bad input

def test_cmd_req_round_trip_and_fast_parse():
    layer = get_layer("virtio_scsi.cmd_req")
    values = {"lun": {"format": "TARGET_LUN", "target": 2, "single_level": 0x4003}, "id": 0xABCDEF,
              "task_attr": "VIRTIO_SCSI_S_ORDERED", "prio": 0, "crn": 0, "pi_bytesout": None, "pi_bytesin": None,
              "cdb": {"opcode": "WRITE(10)", "flags": 0x08, "lba32": 4096, "group_number": 0,
                      "transfer_length16": 1, "control": 0},
              "pi_out": None, "dataout": b"\x5a" * 512}
    raw = layer.build(values)
    assert len(raw) == 51 + 512
    assert raw[19:29] == bytes([0x2A, 0x08, 0, 0, 0x10, 0, 0, 0, 1, 0]) and raw[29:51] == bytes(22)
    tree = layer.dissect(raw)
    assert tree["virtio_scsi.lun.target"] == 2 and tree["virtio_scsi.lun.single_level.lun"] == 3
    assert tree["virtio_scsi.cdb.lba32"] == 4096 and tree["virtio_scsi.id"] == 0xABCDEF
    fast = parse("virtio_scsi.cmd_req", raw)
    assert fast.cdb.opcode == "WRITE(10)" and fast.cdb.lba32 == 4096 and len(fast.dataout) == 512


def test_cmd_resp_round_trip_with_descriptor_sense():
    layer = get_layer("virtio_scsi.cmd_resp")
    sense = {"response_code": "CURRENT DESCRIPTOR", "flags": 5, "asc": 0x21, "ascq": 0, "desc_flags": 0,
             "additional_sense_length": 12,
             "descriptor": [{"descriptor_type": "INFORMATION", "additional_length": 10, "flags": 0x80,
                             "information": 1 << 40}],
             "trailing": None}
    raw = layer.build({"sense_len": 20, "residual": 4096, "status_qualifier": 0, "status": "CHECK CONDITION",
                       "response": "VIRTIO_SCSI_S_OK", "sense": sense, "pi_in": None, "datain": None})
    assert len(raw) == 12 + 96
    assert raw[12:32] == bytes([0x72, 5, 0x21, 0, 0, 0, 0, 12, 0, 10, 0x80, 0]) + (1 << 40).to_bytes(8, "big")
    tree = layer.dissect(raw)
    assert tree["virtio_scsi.sense.descriptor.information"] == 1 << 40
    assert summary("virtio_scsi.cmd_resp", tree) == (
        "scsi resp OK CHECK CONDITION [ILLEGAL REQUEST 0x21/0x00 LOGICAL BLOCK ADDRESS OUT OF RANGE] residual=4096")


def test_truncated_request_header_is_an_error_at_its_offset():
    with pytest.raises(DissectError) as info:
        dissect("virtio_scsi.cmd_req", lun_bytes(0, 0) + b"\x01\x02\x03")
    assert (info.value.layer, info.value.offset) == ("virtio_scsi.cmd_req", 8)
    assert "virtio_scsi.id needs 8 bytes, 3 left" in str(info.value)


def test_truncated_cdb_is_an_error():
    with pytest.raises(DissectError) as info:
        dissect("virtio_scsi.cmd_req", lun_bytes(0, 0) + bytes(11) + bytes([0x28, 0, 0, 0, 0, 1, 0, 0, 2, 0]))
    assert info.value.layer == "virtio_scsi.cmd_req" and 19 <= info.value.offset <= 29


def test_response_with_only_its_header_decodes_no_sense():
    raw = struct.pack("<IIHBB", 18, 0, 0, 2, 0)
    tree = dissect("virtio_scsi.cmd_resp", raw)
    assert tree["virtio_scsi.sense_len"] == 18 and spans(tree)["virtio_scsi.sense"] == (12, 0)


SCSI_PARAMS = st.fixed_dictionaries({}, optional={
    "cdb_size": st.integers(0, 64), "sense_size": st.integers(0, 128), "features": st.sampled_from([0, 8, 15]),
    "pi_bytesin": st.integers(0, 64)})
HEADS = st.sampled_from([b"", lun_bytes(0, 1) + bytes(11), struct.pack("<IIHBB", 18, 0, 0, 2, 0)])


@pytest.mark.parametrize("layer", ["virtio_scsi.cmd_req", "virtio_scsi.cmd_resp", "virtio_scsi.sense",
                                   "virtio_scsi.cdb", "virtio_scsi.inquiry", "virtio_scsi.report_luns",
                                   "virtio_scsi.event", "virtio_scsi.read_capacity16"])
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(head=HEADS, tail=st.binary(max_size=200), params=SCSI_PARAMS)
def test_any_bytes_and_parameters_give_a_tree_or_a_dissect_error(layer, head, tail, params):
    data = head + tail
    try:
        tree = dissect(layer, data, params=params)
    except DissectError as err:
        assert err.layer == layer and 0 <= err.offset <= len(data)
        return
    for node in tree.walk():
        assert node.offset >= 0 and node.offset + node.length <= len(data), node
    get_layer(layer).summary(tree)  # a summary never raises on a tree that dissected


# ---------------------------------------------------------------- the CLI

READ10_REQ = ("0100400100000000 0700000000000000 000000 "
              "28000000080000000800" + "00" * 22)


def test_cli_decode_cmd_req():
    result = run_vqtrace("decode", "virtio_scsi.cmd_req", *READ10_REQ.split())
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "Operation code: READ(10) (40)" in out
    assert "Logical block address: 2048" in out
    assert "Transfer length (blocks): 8" in out
    assert "LUN: 1" in out


def test_cli_decode_json_and_cdb_size_param():
    req = "0100400100000000 0000000000000000 000000 1200000024 00" + "00" * 10 + "ffee"
    result = run_vqtrace("decode", "virtio_scsi.cmd_req", "-T", "json", "--param", "cdb_size=16", req)
    assert result.returncode == 0, result.stderr
    fields = json.loads(result.stdout)["fields"]
    assert fields["virtio_scsi.cdb.allocation_length16"] == 36
    assert fields["virtio_scsi.dataout"] == "ffee"


def test_cli_decode_sense_response():
    resp = "12000000 00000000 0000 02 00 700005000000000a0000000021000000000000"
    result = run_vqtrace("decode", "virtio_scsi.cmd_resp", resp)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "SENSE_KEY: ILLEGAL REQUEST (5)" in out
    assert "Additional sense: LOGICAL BLOCK ADDRESS OUT OF RANGE" in out


def test_cli_truncated_request_is_one_line_exit_2():
    result = run_vqtrace("decode", "virtio_scsi.cmd_req", "0100400100000000 0700")
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr.decode()
    assert "virtio_scsi.cmd_req at offset 8" in lines[0] and "needs 8 bytes" in lines[0]
