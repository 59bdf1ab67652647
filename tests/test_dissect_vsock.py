"""Socket device layouts against virtio 1.4, 5.10, and the names Wireshark's native vsock dissector uses."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import run_vqtrace
from vqtrace.dissectors import DissectError, Field, dissect, get_layer, parse
from vqtrace.dissectors.vsock import (
    HDR_OFFSETS,
    HDR_SIZE,
    HDR_STRUCT,
    LINKTYPE_VSOCK,
    VSOCKMON_HDR_SIZE,
    WIRESHARK_FIELDS,
    WIRESHARK_OP_NAMES,
    WIRESHARK_TYPE_NAMES,
    vsockmon_record,
)

HDR = "<QQIIIHHIII"  # 5.10.6 struct virtio_vsock_hdr, packed


def hdr(op: int, *, src=(3, 1024), dst=(2, 5000), length: int = 0, type_: int = 1, flags: int = 0,
        buf_alloc: int = 262144, fwd_cnt: int = 0) -> bytes:
    return struct.pack(HDR, src[0], dst[0], src[1], dst[1], length, type_, op, flags, buf_alloc, fwd_cnt)


def spans(tree: Field) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for node in tree.walk():
        out.setdefault(node.abbrev, (node.offset, node.length))
    return out


def summary(tree: Field) -> str:
    return get_layer("virtio_vsock.hdr").summary(tree)


def test_header_is_44_packed_bytes_with_spec_offsets():
    assert struct.calcsize(HDR) == HDR_SIZE == 44
    tree = dissect("virtio_vsock.hdr", hdr(3))
    got = spans(tree)
    assert got["virtio_vsock"] == (0, 44)
    widths = {"src_cid": 8, "dst_cid": 8, "src_port": 4, "dst_port": 4, "len": 4, "type": 2, "op": 2, "flags": 4,
              "buf_alloc": 4, "fwd_cnt": 4}
    assert {name: got[f"virtio_vsock.{name}"] for name in widths} == {
        name: (HDR_OFFSETS[name], width) for name, width in widths.items()}
    assert HDR_OFFSETS == {"src_cid": 0, "dst_cid": 8, "src_port": 16, "dst_port": 20, "len": 24, "type": 28,
                           "op": 30, "flags": 32, "buf_alloc": 36, "fwd_cnt": 40}
    assert "virtio_vsock.payload" not in tree


def test_hot_loop_struct_matches_the_layout():
    raw = hdr(6, src=(0xFFFF_FFFF, 7), dst=(2, 0xFFFF_FFFF), length=0, type_=2, flags=0x8000_0001,
              buf_alloc=123456, fwd_cnt=0xFFFF_FFFF)
    tree = dissect("virtio_vsock.hdr", raw)
    assert HDR_STRUCT.size == HDR_SIZE
    assert HDR_STRUCT.unpack(raw) == tuple(tree[f"virtio_vsock.{name}"] for name in HDR_OFFSETS)


OPS = {"VIRTIO_VSOCK_OP_INVALID": 0, "VIRTIO_VSOCK_OP_REQUEST": 1, "VIRTIO_VSOCK_OP_RESPONSE": 2,
       "VIRTIO_VSOCK_OP_RST": 3, "VIRTIO_VSOCK_OP_SHUTDOWN": 4, "VIRTIO_VSOCK_OP_RW": 5,
       "VIRTIO_VSOCK_OP_CREDIT_UPDATE": 6, "VIRTIO_VSOCK_OP_CREDIT_REQUEST": 7}


@pytest.mark.parametrize(("name", "value"), OPS.items())
def test_op_values(name, value):
    assert dissect("virtio_vsock.hdr", hdr(value)).find("virtio_vsock.op").display == f"{name} ({value})"


@pytest.mark.parametrize(("name", "value"), [("VIRTIO_VSOCK_TYPE_STREAM", 1), ("VIRTIO_VSOCK_TYPE_SEQPACKET", 2)])
def test_type_values(name, value):
    assert dissect("virtio_vsock.hdr", hdr(1, type_=value)).find("virtio_vsock.type").display == f"{name} ({value})"


def test_rw_payload_and_summary():
    payload = bytes(range(64))
    tree = dissect("virtio_vsock.hdr", hdr(5, length=64) + payload)
    assert tree["virtio_vsock.len"] == 64 and tree["virtio_vsock.payload"] == payload
    assert spans(tree)["virtio_vsock.payload"] == (44, 64)
    assert summary(tree) == "vsock RW 3:1024 -> 2:5000 len=64"


def test_payload_is_bounded_by_len_and_by_the_data():
    # Receive buffers are bigger than the packet: bytes after len are not payload (5.10.6).
    tree = dissect("virtio_vsock.hdr", hdr(5, length=4) + b"abcdEXTRA")
    assert tree["virtio_vsock.payload"] == b"abcd"
    # A len larger than the bytes present (a header without its payload descriptor) is shown, not an error.
    tree = dissect("virtio_vsock.hdr", hdr(5, length=100) + b"abc")
    assert tree["virtio_vsock.payload"] == b"abc"
    assert summary(tree) == "vsock RW 3:1024 -> 2:5000 len=100 (3 present)"
    tree = dissect("virtio_vsock.hdr", hdr(5, length=4096))
    assert "virtio_vsock.payload" not in tree and summary(tree).endswith("len=4096 (0 present)")
    # len 0: the bytes that follow are not payload.
    assert "virtio_vsock.payload" not in dissect("virtio_vsock.hdr", hdr(1) + b"junk")


def test_shutdown_flags_are_named_for_shutdown():
    # 5.10.6.5: bit 0 VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE, bit 1 VIRTIO_VSOCK_SHUTDOWN_F_SEND
    tree = dissect("virtio_vsock.hdr", hdr(4, flags=3))
    assert tree["virtio_vsock.flags.shutdown_f_receive"] is True
    assert tree["virtio_vsock.flags.shutdown_f_send"] is True
    assert tree.find("virtio_vsock.flags").display == "0x00000003 (SHUTDOWN_F_RECEIVE, SHUTDOWN_F_SEND)"
    assert summary(tree) == "vsock SHUTDOWN 3:1024 -> 2:5000 flags=SHUTDOWN_F_RECEIVE|SHUTDOWN_F_SEND"
    assert dissect("virtio_vsock.hdr", hdr(4, flags=2))["virtio_vsock.flags.shutdown_f_receive"] is False


def test_seqpacket_rw_flags_are_eom_and_eor():
    # 5.10.6.6.1: VIRTIO_VSOCK_SEQ_EOM (1 << 0), VIRTIO_VSOCK_SEQ_EOR (1 << 1)
    tree = dissect("virtio_vsock.hdr", hdr(5, type_=2, length=2, flags=3) + b"hi")
    assert tree["virtio_vsock.flags.seq_eom"] is True and tree["virtio_vsock.flags.seq_eor"] is True
    assert "virtio_vsock.flags.shutdown_f_receive" not in tree
    assert summary(tree) == "vsock RW 3:1024 -> 2:5000 SEQPACKET len=2 flags=SEQ_EOM|SEQ_EOR"


def test_other_flags_are_a_plain_number():
    stream_rw = dissect("virtio_vsock.hdr", hdr(5, type_=1, flags=1))
    assert stream_rw.find("virtio_vsock.flags").children == []
    assert stream_rw.find("virtio_vsock.flags").display == "0x00000001"
    request = dissect("virtio_vsock.hdr", hdr(1, flags=0x10))
    assert summary(request) == "vsock REQUEST 3:1024 -> 2:5000 flags=0x10 buf_alloc=262144 fwd_cnt=0"


def test_flag_abbreviations_keep_one_mask_and_one_kind():
    specs = {s.abbrev: s for s in get_layer("virtio_vsock.hdr").fields()}
    assert specs["virtio_vsock.flags"].kind == "uint32" and specs["virtio_vsock.flags"].base == "HEX"
    shutdown = (specs["virtio_vsock.flags.shutdown_f_receive"].mask, specs["virtio_vsock.flags.shutdown_f_send"].mask)
    assert shutdown == (1, 2)
    assert (specs["virtio_vsock.flags.seq_eom"].mask, specs["virtio_vsock.flags.seq_eor"].mask) == (1, 2)
    assert specs["virtio_vsock.op"].value_names == {v: k for k, v in OPS.items()}


def test_credit_packets_show_buffer_space():
    tree = dissect("virtio_vsock.hdr", hdr(6, buf_alloc=65536, fwd_cnt=4096))
    assert summary(tree) == "vsock CREDIT_UPDATE 3:1024 -> 2:5000 buf_alloc=65536 fwd_cnt=4096"


def test_unknown_op_and_type_are_shown_not_fatal():
    tree = dissect("virtio_vsock.hdr", hdr(9, type_=3, flags=1))
    assert tree.find("virtio_vsock.op").display == "Unknown (9)"
    assert tree.find("virtio_vsock.type").display == "Unknown (3)"
    assert summary(tree) == "vsock 9 3:1024 -> 2:5000 type=3 flags=0x1"


def test_truncated_header():
    with pytest.raises(DissectError) as info:
        dissect("virtio_vsock.hdr", hdr(5)[:42])
    assert (info.value.layer, info.value.offset) == ("virtio_vsock.hdr", 40)
    assert "virtio_vsock.fwd_cnt needs 4 bytes, 2 left" in str(info.value)


def test_header_round_trip_and_fast_parse():
    layer = get_layer("virtio_vsock.hdr")
    values = {"src_cid": 3, "dst_cid": 2, "src_port": 49152, "dst_port": 1234, "len": 5,
              "type": "VIRTIO_VSOCK_TYPE_SEQPACKET", "op": "VIRTIO_VSOCK_OP_RW", "flags": 1, "buf_alloc": 1 << 18,
              "fwd_cnt": 77, "payload": b"hello"}
    raw = layer.build(values)
    assert raw == hdr(5, src=(3, 49152), dst=(2, 1234), length=5, type_=2, flags=1, fwd_cnt=77) + b"hello"
    tree = layer.dissect(raw)
    assert tree["virtio_vsock.flags.seq_eom"] is True and tree["virtio_vsock.payload"] == b"hello"
    fast = parse("virtio_vsock.hdr", raw)
    assert fast.op == "VIRTIO_VSOCK_OP_RW" and fast.dst_port == 1234 and fast.payload == b"hello"
    assert layer.build({**values, "len": 0, "op": 3, "payload": None}) == hdr(3, src=(3, 49152), dst=(2, 1234),
                                                                              type_=2, flags=1, fwd_cnt=77)


def test_event_and_config():
    tree = dissect("virtio_vsock.event", struct.pack("<I", 0))
    assert tree.find("virtio_vsock.event.id").display == "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (0)"
    assert get_layer("virtio_vsock.event").summary(tree) == "vsock event TRANSPORT_RESET"
    assert get_layer("virtio_vsock.event").sizeof() == 4
    assert dissect("virtio_vsock.event", struct.pack("<I", 1)).find("virtio_vsock.event.id").display == "Unknown (1)"
    config = dissect("virtio_vsock.config", struct.pack("<Q", 3))
    assert config["virtio_vsock.config.guest_cid"] == 3 and get_layer("virtio_vsock.config").sizeof() == 8
    assert get_layer("virtio_vsock.config").summary(config) == "vsock config guest_cid=3"
    # 5.10.4: 0, 1, 2 (the host), 0xffffffff and 2^64-1 are reserved
    host = dissect("virtio_vsock.config", struct.pack("<Q", 2))
    assert get_layer("virtio_vsock.config").summary(host) == "vsock config guest_cid=2 (host: not a valid guest CID)"


@settings(max_examples=300, deadline=None)
@given(op=st.integers(0, 0xFFFF), type_=st.integers(0, 0xFFFF), length=st.integers(0, 0xFFFFFFFF),
       flags=st.integers(0, 0xFFFFFFFF), tail=st.binary(max_size=100), cut=st.integers(0, 160))
def test_any_header_gives_a_tree_or_a_dissect_error(op, type_, length, flags, tail, cut):
    data = (hdr(op, length=length, type_=type_, flags=flags) + tail)[:cut]
    try:
        tree = dissect("virtio_vsock.hdr", data)
    except DissectError as err:
        assert len(data) < HDR_SIZE and err.offset <= len(data)
        return
    payload = tree.find("virtio_vsock.payload")
    assert (payload.length if payload else 0) == min(length, len(data) - HDR_SIZE)
    summary(tree)


# ---------------------------------------------------------------- Wireshark's native vsock dissector

# Wireshark 4.0 epan/dissectors/packet-vsock.c: the virtio header fields, their types and bases.
WIRESHARK_TYPES = {
    "vsock.virtio.src_cid": ("uint64", "DEC"), "vsock.virtio.dst_cid": ("uint64", "DEC"),
    "vsock.virtio.src_prot": ("uint32", "DEC"), "vsock.virtio.dst_prot": ("uint32", "DEC"),
    "vsock.virtio.len": ("uint32", "DEC"), "vsock.virtio.type": ("uint16", "DEC"),
    "vsock.virtio.op": ("uint16", "DEC"), "vsock.virtio.flags": ("uint32", "HEX"),
    "vsock.virtio.buf_alloc": ("uint32", "DEC"), "vsock.virtio.fwd_cnt": ("uint32", "DEC"),
    "vsock.payload": ("bytes", ""),
}


def test_fields_line_up_with_wiresharks_vsock_dissector():
    specs = {s.abbrev: s for s in get_layer("virtio_vsock.hdr").fields()}
    assert set(WIRESHARK_FIELDS.values()) == set(WIRESHARK_TYPES)
    for ours, theirs in WIRESHARK_FIELDS.items():
        kind, base = WIRESHARK_TYPES[theirs]
        assert specs[ours].kind == kind, ours
        if base:
            assert specs[ours].base == base, ours


def test_op_and_type_values_match_wiresharks_names():
    # Same numbers; Wireshark says "Credit response" for 7, the spec VIRTIO_VSOCK_OP_CREDIT_REQUEST,
    # and knows no SEQPACKET type.
    ours = {v: k.removeprefix("VIRTIO_VSOCK_OP_") for k, v in OPS.items()}
    assert set(ours) == set(WIRESHARK_OP_NAMES)
    for value, name in WIRESHARK_OP_NAMES.items():
        expected = "CREDIT_RESPONSE" if value == 7 else ours[value]
        assert name.upper().replace(" ", "_") == expected
    assert WIRESHARK_TYPE_NAMES == {1: "Stream"}


def test_vsockmon_record_for_linktype_vsock():
    packet = hdr(5, length=3) + b"abcEXTRA"
    record = vsockmon_record(packet)
    assert LINKTYPE_VSOCK == 271 and VSOCKMON_HDR_SIZE == struct.calcsize("<QQIIHHH2s") == 32
    assert struct.unpack_from("<QQIIHHH2s", record) == (3, 2, 1024, 5000, 4, 2, 44, b"\0\0")  # PAYLOAD, VIRTIO
    assert record[32:76] == packet[:44] and record[76:] == b"abc"
    mon = dissect("virtio_vsock.vsockmon", record[:32])
    assert mon.find("virtio_vsock.vsockmon.op").display == "AF_VSOCK_OP_PAYLOAD (4)"
    assert mon.find("virtio_vsock.vsockmon.transport").display == "AF_VSOCK_TRANSPORT_VIRTIO (2)"
    assert dissect("virtio_vsock.hdr", record[32:])["virtio_vsock.payload"] == b"abc"
    # Linux maps REQUEST/RESPONSE to CONNECT, RST/SHUTDOWN to DISCONNECT, credit packets to CONTROL.
    ops = [struct.unpack_from("<H", vsockmon_record(hdr(op)), 24)[0] for op in range(9)]
    assert ops == [0, 1, 1, 2, 2, 4, 3, 3, 0]
    with pytest.raises(ValueError):
        vsockmon_record(packet[:43])


# ---------------------------------------------------------------- the CLI

def test_cli_decode_hdr():
    raw = (hdr(5, length=4) + b"ping").hex()
    result = run_vqtrace("decode", "virtio_vsock.hdr", raw)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "Operation: VIRTIO_VSOCK_OP_RW (5)" in out
    assert "Source port: 1024" in out and "Destination CID: 2" in out
    assert "Payload: 70696e67" in out


def test_cli_decode_json():
    result = run_vqtrace("decode", "virtio_vsock.hdr", "-T", "json", hdr(4, flags=1).hex())
    assert result.returncode == 0, result.stderr
    fields = json.loads(result.stdout)["fields"]
    assert fields["virtio_vsock.op"] == 4 and fields["virtio_vsock.flags.shutdown_f_receive"] is True


def test_cli_truncated_hdr_is_one_line_exit_2():
    result = run_vqtrace("decode", "virtio_vsock.hdr", hdr(1)[:20].hex())
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "virtio_vsock.hdr at offset 20" in lines[0] and "needs 4 bytes" in lines[0]
