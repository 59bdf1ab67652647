"""vhost-user messages and the inflight region against QEMU's docs/interop/vhost-user.rst."""

from __future__ import annotations

import json
import re
import struct
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_vqtrace
from vqtrace.dissectors import DissectError, VqtraceError, dissect, get_layer, parse
from vqtrace.dissectors import vhost_user as vu
from vqtrace.dissectors.vhost_user import (
    BACKEND_REQUESTS,
    FD_REQUESTS,
    HEADER_SIZE,
    MAX_PAYLOAD,
    NEEDS_REPLY,
    PAYLOAD_KINDS,
    REQUESTS,
    pack_header,
    pack_message,
    payload_kind,
    unpack_header,
)

MSG = get_layer("vhost_user.msg")
REPLY = 0x5  # version 1 | reply
NO_XEN = {"xen_mmap_flags": None, "domid": None}  # the XEN_MMAP region fields, absent
TOP_FIELDS = [sub.name for sub in vu.vhost_user_msg.subcons if sub.name]


def build(request: int, flags: int, size: int, params: dict | None = None, **payload) -> bytes:
    """``Layer.build`` with the header given and every payload field not named left out (None)."""
    values = {name: None for name in TOP_FIELDS}
    backend = vu.is_backend_channel((params or {}).get("channel"))
    values.update({"backend_request" if backend else "request": request, "flags": flags, "size": size}, **payload)
    return MSG.build(values, params)


def spans(tree) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for node in tree.walk():
        out.setdefault(node.abbrev, (node.offset, node.length))
    return out


# ----------------------------------------------------------------------------------------------
# Header and tables


def test_header_is_three_native_u32_with_the_documented_flag_bits():
    raw = pack_header(9, 0x1 | 0x8, 40)
    assert HEADER_SIZE == 12 and raw == struct.pack("<III", 9, 9, 40)
    header = unpack_header(raw + bytes(40))
    assert header == (9, 9, 40) and header.version == 1 and header.need_reply and not header.reply
    assert unpack_header(pack_header(1, 0x5, 8)).reply
    # "Lower 2 bits are the version", "Bit 2 is the reply flag", "Bit 3 is the need_reply flag"
    assert vu.FLAGS == {"VERSION": 0x3, "REPLY": 0x4, "NEED_REPLY": 0x8}
    tree = dissect("vhost_user.msg", pack_message(1, reply=True, need_reply=True, payload=struct.pack("<Q", 7)))
    got = spans(tree)
    assert (got["vhost_user.request"], got["vhost_user.flags"], got["vhost_user.size"]) == ((0, 4), (4, 4), (8, 4))
    assert tree["vhost_user.flags.version"] == 1
    assert tree["vhost_user.flags.reply"] is True and tree["vhost_user.flags.need_reply"] is True
    with pytest.raises(DissectError) as info:
        unpack_header(b"\x01\x00\x00")
    assert info.value.layer == "vhost_user.msg" and "3 of 12" in str(info.value)


def test_request_names_at_both_ends_of_both_lists():
    assert sorted(REQUESTS) == list(range(1, 45))
    assert (REQUESTS[1], REQUESTS[2], REQUESTS[43], REQUESTS[44]) == (
        "VHOST_USER_GET_FEATURES", "VHOST_USER_SET_FEATURES", "VHOST_USER_CHECK_DEVICE_STATE",
        "VHOST_USER_GET_SHMEM_CONFIG")
    assert (REQUESTS[15], REQUESTS[16], REQUESTS[21]) == (
        "VHOST_USER_GET_PROTOCOL_FEATURES", "VHOST_USER_SET_PROTOCOL_FEATURES", "VHOST_USER_SET_BACKEND_REQ_FD")
    assert sorted(BACKEND_REQUESTS) == list(range(1, 11))
    assert (BACKEND_REQUESTS[1], BACKEND_REQUESTS[10]) == ("VHOST_USER_BACKEND_IOTLB_MSG",
                                                           "VHOST_USER_BACKEND_SHMEM_UNMAP")
    for number, name in [(1, "VHOST_USER_GET_FEATURES"), (44, "VHOST_USER_GET_SHMEM_CONFIG")]:
        tree = dissect("vhost_user.msg", pack_message(number))
        assert tree.find("vhost_user.request").display == f"{name} ({number})"
    for number, name, payload in [(1, "VHOST_USER_BACKEND_IOTLB_MSG", bytes(32)),
                                  (10, "VHOST_USER_BACKEND_SHMEM_UNMAP", bytes(40))]:
        tree = dissect("vhost_user.msg", pack_message(number, payload), params={"channel": "backend"})
        assert tree.find("vhost_user.backend_request").display == f"{name} ({number})"
        assert "vhost_user.request" not in tree
    assert vu.request_name(44) == "VHOST_USER_GET_SHMEM_CONFIG"
    assert vu.request_name(10, channel=1) == "VHOST_USER_BACKEND_SHMEM_UNMAP"
    assert vu.request_name(45) == "VHOST_USER_45?"


def test_renamed_and_reused_numbers_are_recorded():
    assert vu.PREVIOUS_NAMES == {21: "VHOST_USER_SET_SLAVE_REQ_FD"}
    assert {n: name.replace("SLAVE", "BACKEND") for n, name in vu.BACKEND_PREVIOUS_NAMES.items()} == {
        n: BACKEND_REQUESTS[n] for n in range(1, 6)}
    # The first vhost-user peers used 15 and 16 for NET_SET_BACKEND and ECHO.
    assert vu.OLD_PEER_NAMES == {15: "VHOST_USER_NET_SET_BACKEND", 16: "VHOST_USER_ECHO"}
    assert set(vu.BACKEND_OLD_PEER_NAMES) == {6, 7, 8, 9}


def test_fd_and_reply_tables_follow_the_communication_section():
    # "There are several messages that the front-end sends with file descriptors"
    listed = {37, 5, 6, 7, 12, 13, 14, 21, 32, 42}
    assert listed <= set(FD_REQUESTS)
    assert set(FD_REQUESTS) - listed == {33, 38}  # GPU_SET_SOCKET's socket; REM_MEM_REG MAY carry one
    assert FD_REQUESTS[5] == (0, 8) and FD_REQUESTS[37] == (1, 1) and FD_REQUESTS[12] == (0, 1)
    assert vu.BACKEND_FD_REQUESTS == {3: (0, 1), 9: (1, 1)}
    assert vu.REPLY_FD_REQUESTS == {28: (1, 1), 31: (1, 1), 41: (0, 1), 42: (0, 1)}
    # "Here is a list of the ones that do" need a reply, two of them with a protocol feature
    assert {NEEDS_REPLY[n] for n in (1, 15, 11)} == {None}
    assert (NEEDS_REPLY[6], NEEDS_REPLY[31]) == ("LOG_SHMFD", "INFLIGHT_SHMFD")
    assert 9 not in NEEDS_REPLY and 2 not in NEEDS_REPLY
    assert set(vu.BACKEND_NEEDS_REPLY) == {8, 9, 10}


def test_needs_reply_follows_flags_and_negotiated_features():
    reply_ack = vu.PROTOCOL_FEATURE_MASKS["REPLY_ACK"]
    log_shmfd = vu.PROTOCOL_FEATURE_MASKS["LOG_SHMFD"]
    assert vu.needs_reply(1, 0x1)  # GET_FEATURES
    assert not vu.needs_reply(1, REPLY)  # a reply is never answered
    assert not vu.needs_reply(9, 0x9)  # need_reply without REPLY_ACK negotiated
    assert vu.needs_reply(9, 0x9, protocol_features=reply_ack)
    assert not vu.needs_reply(6, 0x1) and vu.needs_reply(6, 0x1, protocol_features=log_shmfd)
    assert vu.needs_reply(9, 0x1, channel="backend")  # BACKEND_SHMEM_MAP always gets a reply
    assert vu.MAX_PAYLOAD >= 8 + 256 * 8  # the largest documented payload fits


# ----------------------------------------------------------------------------------------------
# Payload layouts: sizes, offsets, round trips


def test_vring_address_is_40_bytes_at_the_documented_offsets():
    values = {"index": 1, "flags": 1, "desc": 0x1000, "used": 0x3000, "avail": 0x2000, "log": 0x3000}
    raw = build(9, 1, 40, addr=values)
    assert raw == pack_message(9, struct.pack("<IIQQQQ", 1, 1, 0x1000, 0x3000, 0x2000, 0x3000))
    tree = MSG.dissect(raw)
    got = spans(tree)
    assert got["vhost_user.addr"] == (12, 40)
    assert {name: got[f"vhost_user.addr.{name}"] for name in values} == {
        "index": (12, 4), "flags": (16, 4), "desc": (20, 8), "used": (28, 8), "avail": (36, 8), "log": (44, 8)}
    assert tree["vhost_user.addr.flags.log"] is True  # VHOST_VRING_F_LOG is bit 0
    assert MSG.summary(tree) == "VHOST_USER_SET_VRING_ADDR idx=1 desc=0x1000 avail=0x2000 used=0x3000 log=0x3000"


def test_memory_regions_are_32_bytes_after_an_8_byte_count():
    regions = [{"guest_addr": 0, "size": 0xA0000, "user_addr": 0x7F00_0000_0000, "mmap_offset": 0},
               {"guest_addr": 0x100000, "size": 0xFF00000, "user_addr": 0x7F00_0010_0000, "mmap_offset": 0x100000}]
    raw = build(5, 1, 8 + 2 * 32, memory={"nregions": 2, "padding": 0}, region=[{**r, **NO_XEN} for r in regions])
    expected = struct.pack("<II", 2, 0) + b"".join(struct.pack("<QQQQ", *r.values()) for r in regions)
    assert raw == pack_message(5, expected)
    tree = MSG.dissect(raw)
    got = [(n.offset, n.length) for n in tree.find_all("vhost_user.region")[0].children]
    assert got == [(20, 32), (52, 32)]
    assert [n.offset for n in tree.find_all("vhost_user.region.mmap_offset")] == [44, 76]
    assert tree.values()["vhost_user.region.user_addr"] == [0x7F00_0000_0000, 0x7F00_0010_0000]
    assert MSG.summary(tree) == "VHOST_USER_SET_MEM_TABLE nregions=2 gpa=0x0+0xa0000 gpa=0x100000+0xff00000"
    # The table has room for region0 .. region7: unused slots after nregions are shown raw.
    tree = MSG.dissect(pack_message(5, expected + bytes(32)))
    assert tree["vhost_user.unused_regions"] == bytes(32)


def test_single_region_and_its_xen_mmap_variant():
    region = {"guest_addr": 0xC0000, "size": 0x20000, "user_addr": 0x7F12_3400_0000, "mmap_offset": 0xC0000}
    raw = build(37, 1, 40, padding=0, region={**region, **NO_XEN})
    assert raw == pack_message(37, struct.pack("<QQQQQ", 0, *region.values()))
    tree = MSG.dissect(raw)
    assert spans(tree)["vhost_user.region.guest_addr"] == (20, 8)
    assert MSG.summary(tree) == "VHOST_USER_ADD_MEM_REG gpa=0xc0000+0x20000"
    # VHOST_USER_PROTOCOL_F_XEN_MMAP: xen mmap flags (foreign 0, grant 1, bit 8) and domid follow
    xen = {**region, "xen_mmap_flags": 0x102, "domid": 7}
    raw = build(37, 1, 48, {"xen_mmap": True}, padding=0, region=xen)
    assert raw == pack_message(37, struct.pack("<QQQQQII", 0, *region.values(), 0x102, 7))
    tree = MSG.dissect(raw, params={"xen_mmap": True})
    assert tree["vhost_user.region.xen_mmap_flags.grant"] is True
    assert tree["vhost_user.region.xen_mmap_flags.no_advance_map"] is True and tree["vhost_user.region.domid"] == 7
    with pytest.raises(DissectError, match="48 bytes"):
        MSG.dissect(pack_message(37, bytes(40)), params={"xen_mmap": True})


def test_vring_base_split_and_packed_encodings():
    # split: bits 0-15 the next avail index, 16-31 reserved
    tree = MSG.dissect(pack_message(10, struct.pack("<II", 0, 0x1234)))
    assert tree["vhost_user.vring.num.avail_idx"] == 0x1234 and tree["vhost_user.vring.num.reserved"] == 0
    assert MSG.summary(tree) == "VHOST_USER_SET_VRING_BASE idx=0 avail_idx=4660"
    # packed: avail idx bits 0-14, avail wrap bit 15, used idx bits 16-30, used wrap bit 31
    num = 3 | 1 << 15 | 5 << 16 | 0 << 31
    raw = build(11, REPLY, 8, {"packed": True}, vring={"index": 2, "num": num})
    assert raw == pack_message(11, struct.pack("<II", 2, 0x0005_8003), reply=True)
    tree = MSG.dissect(raw, params={"packed": True})
    num = "vhost_user.vring.num"
    assert (tree[f"{num}.avail_idx"], tree[f"{num}.avail_wrap_counter"], tree[f"{num}.used_idx"],
            tree[f"{num}.used_wrap_counter"]) == (3, True, 5, False)
    assert MSG.summary(tree) == ("VHOST_USER_GET_VRING_BASE reply idx=2 avail_idx=3 avail_wrap_counter=1 used_idx=5 "
                                 "used_wrap_counter=0")
    # GET_VRING_BASE's request is a plain vring state (num reserved)
    tree = MSG.dissect(pack_message(11, struct.pack("<II", 2, 0)), params={"packed": True})
    assert tree.find("vhost_user.vring.num").children == []


UUID = uuid.UUID("12345678-9abc-def0-1122-334455667788")

# (id, request, flags, params, payload fields, the payload as the document lays it out, checks)
CASES = [
    ("none", 1, 0x1, None, {}, b"", {}),
    ("u64", 17, REPLY, None, {"u64": 4}, struct.pack("<Q", 4), {"vhost_user.u64": 4}),
    ("u64", 9, REPLY, None, {"u64": 0}, struct.pack("<Q", 0), {"vhost_user.u64": 0}),
    ("features", 2, 0x1, None, {"features": 1 << 32 | 1 << 30}, struct.pack("<Q", 1 << 32 | 1 << 30),
     {"vhost_user.features.vhost_user_f_protocol_features": True}),
    ("protocol_features", 15, REPLY, None, {"protocol_features": 0b1001}, struct.pack("<Q", 0b1001),
     {"vhost_user.protocol_features.mq": True, "vhost_user.protocol_features.reply_ack": True,
      "vhost_user.protocol_features.log_shmfd": False}),
    ("vring_file", 13, 0x1, None, {"vring_file": 0x102}, struct.pack("<Q", 0x102),
     {"vhost_user.vring_file.index": 2, "vhost_user.vring_file.invalid_fd": True}),
    ("rarp", 19, 0x1, None, {"rarp": {"mac": "52:54:00:12:34:56", "padding": bytes(2)}},
     bytes.fromhex("5254001234560000"), {"vhost_user.rarp.mac": "52:54:00:12:34:56"}),
    ("mtu", 20, 0x1, None, {"mtu": 1500}, struct.pack("<Q", 1500), {"vhost_user.mtu": 1500}),
    ("status", 39, 0x1, None, {"status": 0x0F}, struct.pack("<Q", 0x0F),
     {"vhost_user.status.driver_ok": True, "vhost_user.status.failed": False}),
    ("vring", 8, 0x1, None, {"vring": {"index": 1, "num": 256}}, struct.pack("<II", 1, 256),
     {"vhost_user.vring.index": 1, "vhost_user.vring.num": 256}),
    ("vring_base", 10, 0x1, None, {"vring": {"index": 0, "num": 5}}, struct.pack("<II", 0, 5),
     {"vhost_user.vring.num.avail_idx": 5}),
    ("addr", 9, 0x1, None, {"addr": {"index": 0, "flags": 0, "desc": 1, "used": 2, "avail": 3, "log": 4}},
     struct.pack("<IIQQQQ", 0, 0, 1, 2, 3, 4), {"vhost_user.addr.avail": 3}),
    ("memory", 5, 0x1, None, {"memory": {"nregions": 0, "padding": 0}, "region": []}, bytes(8),
     {"vhost_user.memory.nregions": 0}),
    ("region", 38, 0x1, None,
     {"padding": 0, "region": {"guest_addr": 1, "size": 2, "user_addr": 3, "mmap_offset": 4, **NO_XEN}},
     struct.pack("<QQQQQ", 0, 1, 2, 3, 4), {"vhost_user.region.size": 2}),
    ("log", 6, 0x1, None, {"log": {"size": 0x1000, "offset": 0}}, struct.pack("<QQ", 0x1000, 0),
     {"vhost_user.log.size": 0x1000}),
    ("iotlb", 22, 0x1, None,
     {"iotlb": {"iova": 0x1000, "size": 0x2000, "uaddr": 0x7F00, "perm": 3, "type": 2, "padding": bytes(6)}},
     struct.pack("<QQQBB6x", 0x1000, 0x2000, 0x7F00, 3, 2),
     {"vhost_user.iotlb.perm.write": True, "vhost_user.iotlb.type": 2}),
    ("iotlb", 1, 0x1, {"channel": "backend"},
     {"iotlb": {"iova": 0x1000, "size": 0, "uaddr": 0, "perm": 1, "type": 1, "padding": None}},
     struct.pack("<QQQBB", 0x1000, 0, 0, 1, 1), {"vhost_user.iotlb.type": 1}),
    ("config", 24, 0x1, None, {"config": {"offset": 0, "size": 8, "flags": 0, "payload": b"\x00\x10" + bytes(6)}},
     struct.pack("<III", 0, 8, 0) + b"\x00\x10" + bytes(6), {"vhost_user.config.payload": b"\x00\x10" + bytes(6)}),
    ("none", 24, REPLY, None, {}, b"", {}),  # GET_CONFIG reply without payload: an error
    ("area", 3, 0x1, {"channel": "backend"}, {"area": {"u64": 1, "size": 0x1000, "offset": 0x3000}},
     struct.pack("<QQQ", 1, 0x1000, 0x3000), {"vhost_user.area.u64.index": 1}),
    ("inflight", 31, 0x1, None,
     {"inflight": {"mmap_size": 0, "mmap_offset": 0, "num_queues": 1, "queue_size": 128, "padding": bytes(4)}},
     struct.pack("<QQHH4x", 0, 0, 1, 128), {"vhost_user.inflight.queue_size": 128}),
    ("shared", 41, 0x1, None, {"shared": {"uuid": UUID.bytes}}, UUID.bytes, {"vhost_user.shared.uuid": UUID.bytes}),
    ("transfer_state", 42, 0x1, None, {"transfer_state": {"direction": 1, "phase": 0}}, struct.pack("<II", 1, 0),
     {"vhost_user.transfer_state.direction": 1}),
    ("device_state_fd", 42, REPLY, None, {"device_state_fd": 0x100}, struct.pack("<Q", 0x100),
     {"vhost_user.device_state_fd.invalid_fd": True, "vhost_user.device_state_fd.error": 0}),
    ("device_state_result", 43, REPLY, None, {"device_state_result": 1}, struct.pack("<Q", 1),
     {"vhost_user.device_state_result": 1}),
    ("shmem_config", 44, REPLY, None, {"shmem": {"nregions": 2, "padding": 0, "mem_size": [0x200000, 0]}},
     struct.pack("<IIQQ", 2, 0, 0x200000, 0), {"vhost_user.shmem.mem_size": [0x200000, 0]}),
    ("mmap", 9, 0x1, {"channel": "backend"},
     {"mmap": {"shmid": 1, "padding": bytes(7), "fd_offset": 0, "shm_offset": 0x1000, "len": 0x2000, "flags": 1}},
     struct.pack("<B7xQQQQ", 1, 0, 0x1000, 0x2000, 1), {"vhost_user.mmap.flags.map_rw": True}),
    ("crypto_session", 26, 0x1, None, {"crypto_session": b"\x01" * 20}, b"\x01" * 20,
     {"vhost_user.crypto_session": b"\x01" * 20}),
    ("raw", 99, 0x1, None, {"payload": b"abc"}, b"abc", {"vhost_user.payload": b"abc"}),
]


def test_the_cases_cover_every_payload_kind():
    kinds = {payload_kind(request, flags, len(payload), channel=(params or {}).get("channel"))
             for _, request, flags, params, _, payload, _ in CASES}
    assert kinds | {"vring_base"} == set(PAYLOAD_KINDS)


@pytest.mark.parametrize(("kind", "number", "flags", "params", "fields", "payload", "checks"), CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_payload_round_trip(kind, number, flags, params, fields, payload, checks):
    channel = (params or {}).get("channel")
    assert payload_kind(number, flags, len(payload), channel=channel) == kind
    raw = build(number, flags, len(payload), params, **fields)
    assert raw == pack_header(number, flags, len(payload)) + payload
    tree = MSG.dissect(raw, params=params)
    for abbrev, value in checks.items():
        assert tree.values()[abbrev] == value, abbrev
    assert tree.find("vhost_user").length == len(raw)
    values = MSG.parse(raw, params)
    for name, value in fields.items():
        assert _plain(values[name]) == _plain(value), name
    assert MSG.summary(tree)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if hasattr(value, "intvalue"):  # construct's EnumIntegerString
        return value.intvalue
    return int(value) if isinstance(value, int) else value


def test_summaries_name_the_request_and_the_key_values():
    shared = MSG.dissect(pack_message(6, UUID.bytes), params={"channel": "backend"})
    assert MSG.summary(shared) == f"VHOST_USER_BACKEND_SHARED_OBJECT_ADD {UUID}"
    features = MSG.dissect(pack_message(1, struct.pack("<Q", 0x1_4000_0000), reply=True))
    assert MSG.summary(features) == "VHOST_USER_GET_FEATURES reply 0x140000000"
    kick = MSG.dissect(pack_message(12, struct.pack("<Q", 0x100)))
    assert MSG.summary(kick) == "VHOST_USER_SET_VRING_KICK idx=0 nofd"
    state = MSG.dissect(pack_message(42, struct.pack("<II", 0, 0), need_reply=True))
    assert MSG.summary(state) == "VHOST_USER_SET_DEVICE_STATE_FD need_reply SAVE STOPPED"
    assert MSG.summary(MSG.dissect(pack_message(99, b"abc"))) == "request 99 payload=3 bytes"


@pytest.mark.parametrize("channel", [None, "backend"])
def test_every_request_and_reply_of_both_lists_dissects(channel):
    specs = vu.BACKEND_REQUEST_SPECS if channel else vu.REQUEST_SPECS
    field = "vhost_user.backend_request" if channel else "vhost_user.request"
    for number, spec in specs.items():
        for flags, candidates in ((0x1, spec.payload), (REPLY, spec.reply)):
            kind = PAYLOAD_KINDS[candidates[0]]
            size = kind.sizes[0] if kind.sizes else kind.min_size
            tree = MSG.dissect(pack_header(number, flags, size) + bytes(size), params={"channel": channel})
            assert tree.find(field).display == f"{spec.name} ({number})"
            assert payload_kind(number, flags, size, channel=channel) == kind.name
            assert MSG.summary(tree).startswith(spec.name)


# ----------------------------------------------------------------------------------------------
# Bad input


def _error(data: bytes, params: dict | None = None) -> DissectError:
    with pytest.raises(DissectError) as info:
        MSG.dissect(data, params=params)
    assert info.value.layer == "vhost_user.msg" and 0 <= info.value.offset <= len(data)
    return info.value


def test_size_larger_than_the_data():
    err = _error(pack_header(9, 1, 40) + bytes(20))
    assert err.offset == 12 and "vhost_user.size is 40, but only 20 payload bytes follow the header" in str(err)


def test_bytes_after_the_payload():
    err = _error(pack_message(2, struct.pack("<Q", 1)) + b"more")
    assert "4 bytes follow the 8-byte payload" in str(err)


def test_size_that_fits_no_layout_of_the_request():
    err = _error(pack_message(9, bytes(36)))
    assert "vhost_user.size is 36" in str(err) and "vring address description (40 bytes)" in str(err)
    err = _error(pack_message(1, bytes(4), reply=True))
    assert "VHOST_USER_GET_FEATURES reply" in str(err)
    err = _error(pack_message(3, bytes(8)))  # SET_OWNER carries no payload
    assert "no payload (0 bytes)" in str(err)
    err = _error(pack_message(5, bytes(12)))  # not 8 + n * 32
    assert "8 to 264 bytes in steps of 32" in str(err)
    with pytest.raises(VqtraceError, match="VHOST_USER_BACKEND_SHMEM_MAP request"):  # for the engine's callers
        payload_kind(9, 1, 8, channel="backend")


def test_more_than_eight_regions():
    err = _error(pack_message(5, struct.pack("<II", 9, 0) + bytes(8 * 32)))
    assert err.offset == 20 and "vhost_user.memory.nregions is 9, more than the 8" in str(err)


def test_region_count_larger_than_the_payload():
    err = _error(pack_message(5, struct.pack("<II", 3, 0) + bytes(2 * 32)))
    assert err.offset == 20 and "vhost_user.memory.nregions is 3, but the payload holds 2 regions" in str(err)


def test_truncated_payload_fields():
    err = _error(pack_message(24, struct.pack("<III", 0, 16, 0) + bytes(8)))  # config.size 16, 8 present
    assert err.offset == 24 and "vhost_user.config.payload" in str(err)
    err = _error(pack_message(24, struct.pack("<III", 0, 4, 0) + bytes(8)))  # config.size 4, 8 present
    assert "4 bytes after the virtio device config space" in str(err)
    err = _error(pack_header(9, 1, 40)[:10])
    assert err.offset == 8 and "vhost_user.size needs 4 bytes" in str(err)


def test_oversized_payload_is_refused():
    err = _error(pack_header(99, 1, MAX_PAYLOAD + 1) + bytes(MAX_PAYLOAD + 1))
    assert f"more than the {MAX_PAYLOAD} bytes" in str(err)


def test_unknown_request_is_raw_bytes_but_still_bounded_by_size():
    tree = MSG.dissect(pack_message(200, b"\x01\x02"))
    assert tree.find("vhost_user.request").display == "Unknown (200)" and tree["vhost_user.payload"] == b"\x01\x02"
    tree = MSG.dissect(pack_message(11, b"\x01\x02"), params={"channel": "backend"})
    assert tree.find("vhost_user.backend_request").display == "Unknown (11)"
    err = _error(pack_header(200, 1, 10) + b"\x01\x02")
    assert "vhost_user.size is 10, but only 2 payload bytes" in str(err)


def test_fast_parse_gives_the_same_errors():
    with pytest.raises(DissectError, match=re.escape("vhost_user.memory.nregions is 9")):
        parse("vhost_user.msg", pack_message(5, struct.pack("<II", 9, 0) + bytes(8 * 32)))
    assert parse("vhost_user.msg", pack_message(8, struct.pack("<II", 1, 256))).vring.num == 256


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=st.integers(0, 48), flags=st.integers(0, 0xF), payload=st.binary(max_size=300),
       size_delta=st.sampled_from([0, 0, 0, -1, 1]), backend=st.booleans(), packed=st.booleans(),
       xen=st.booleans())
def test_any_message_gives_a_tree_or_a_dissect_error(request, flags, payload, size_delta, backend, packed, xen):
    data = pack_header(request, flags, max(0, len(payload) + size_delta)) + payload
    params = {"channel": "backend" if backend else None, "packed": packed, "xen_mmap": xen}
    try:
        tree = MSG.dissect(data, params=params)
    except DissectError as err:
        assert err.layer == "vhost_user.msg" and 0 <= err.offset <= len(data)
        return
    assert size_delta == 0 or not payload
    assert sum(child.length for child in tree.children) == len(data)
    assert MSG.summary(tree)


# ----------------------------------------------------------------------------------------------
# Inflight I/O tracking region


def _split_region(entries: list[tuple[int, int, int]], *, used_idx=0, last_batch_head=0) -> bytes:
    head = struct.pack("<QHHHH", 0, 1, len(entries), last_batch_head, used_idx)
    return head + b"".join(struct.pack("<B5xHQ", inflight, nxt, counter) for inflight, nxt, counter in entries)


def test_split_inflight_region_layout():
    raw = _split_region([(1, 0, 7), (0, 0, 0), (1, 1, 5), (0, 0, 0)], used_idx=3)
    tree = dissect("vhost_user.inflight_split", raw, params={"queue_size": 4})
    got = spans(tree)
    assert [got[f"vhost_user.inflight_split.{n}"] for n in ("features", "version", "desc_num", "last_batch_head",
                                                            "used_idx")] == [(0, 8), (8, 2), (10, 2), (12, 2), (14, 2)]
    assert [n.offset for n in tree.find_all("vhost_user.inflight_split.desc.counter")] == [24, 40, 56, 72]
    assert [n.offset for n in tree.find_all("vhost_user.inflight_split.desc.next")] == [22, 38, 54, 70]
    assert get_layer("vhost_user.inflight_split").summary(tree) == (
        "vhost-user inflight v1 desc_num=4 used_idx=3 inflight=2")
    # without queue_size, desc_num sizes the array; a desc_num beyond the data is an error, not a hang
    assert len(dissect("vhost_user.inflight_split", raw).find_all("vhost_user.inflight_split.desc.inflight")) == 4
    with pytest.raises(DissectError, match=re.escape("truncated: vhost_user.inflight_split.desc has 65535 entries")):
        dissect("vhost_user.inflight_split", struct.pack("<QHHHH", 0, 1, 0xFFFF, 0, 0) + raw[16:])


def test_split_resubmit_order_and_last_batch_rollback():
    # heads 0 and 2 in flight, fetched 2 then 0; head 3 was in the last used batch (3 -> 1)
    raw = _split_region([(1, 0, 7), (1, 0, 9), (1, 0, 5), (1, 1, 8)], used_idx=10, last_batch_head=3)
    region = parse("vhost_user.inflight_split", raw, {"queue_size": 4})
    assert vu.inflight_split_resubmit(region) == [2, 0, 3, 1]
    assert vu.inflight_split_resubmit(region, used_ring_idx=12) == [2, 0]  # batch of 2: heads 3 and 1
    # a cyclic or out-of-range next chain ends the walk
    cyclic = parse("vhost_user.inflight_split", _split_region([(1, 0, 1), (1, 9, 2)], last_batch_head=0), {})
    assert vu.inflight_split_resubmit(cyclic, used_ring_idx=60000) == [1]


def _packed_region(entries, *, free_head=0, old_free_head=0) -> bytes:
    head = struct.pack("<QHHHHHHBB7x3x", 0, 1, len(entries), free_head, old_free_head, 0, 0, 1, 1)
    return head + b"".join(struct.pack("<BxHHHQHHIQ", inflight, nxt, 0, 1, counter, idx, 0, 512, 0x1000 * idx)
                           for idx, (inflight, nxt, counter) in enumerate(entries))


def test_packed_inflight_region_layout_and_resubmit():
    raw = _packed_region([(1, 1, 4), (0, 3, 0), (1, 3, 2), (1, 1, 9)], free_head=1, old_free_head=1)
    assert len(raw) == 32 + 4 * 32
    tree = dissect("vhost_user.inflight_packed", raw, params={"queue_size": 4})
    p = "vhost_user.inflight_packed"
    got = spans(tree)
    assert [got[f"{p}.{n}"][0] for n in ("version", "desc_num", "free_head", "old_free_head", "used_idx",
                                          "old_used_idx", "used_wrap_counter", "old_used_wrap_counter")] == [
        8, 10, 12, 14, 16, 18, 20, 21]
    assert [n.offset for n in tree.find_all(f"{p}.desc.addr")] == [56, 88, 120, 152]
    assert [n.offset for n in tree.find_all(f"{p}.desc.id")] == [48, 80, 112, 144]
    region = parse("vhost_user.inflight_packed", raw, {"queue_size": 4})
    # the free list from old_free_head is 1 -> 3 -> 1 (a loop): 1 and 3 are not in flight
    assert vu.inflight_packed_resubmit(region) == [2, 0]


# ----------------------------------------------------------------------------------------------
# The CLI


def test_cli_decodes_a_vring_address_message():
    raw = pack_message(9, struct.pack("<IIQQQQ", 0, 0, 0x1000, 0x3000, 0x2000, 0))
    result = run_vqtrace("decode", "vhost_user.msg", raw.hex())
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "Request: VHOST_USER_SET_VRING_ADDR (9)" in out
    assert "Descriptor table address: 0x0000000000001000" in out and "Payload size: 40" in out
    result = run_vqtrace("decode", "vhost_user.msg", "-T", "json", raw.hex())
    fields = json.loads(result.stdout)["fields"]
    assert fields["vhost_user.addr.avail"] == 0x2000 and fields["vhost_user.flags.version"] == 1


def test_cli_back_end_channel_and_packed_parameters():
    raw = pack_message(9, struct.pack("<B7xQQQQ", 0, 0, 0, 0x1000, 1))
    result = run_vqtrace("decode", "vhost_user.msg", "--param", "channel=1", raw.hex())
    assert result.returncode == 0, result.stderr
    assert b"VHOST_USER_BACKEND_SHMEM_MAP (9)" in result.stdout
    raw = pack_message(11, struct.pack("<II", 0, 0x8000_8001), reply=True)
    result = run_vqtrace("decode", "vhost_user.msg", "--param", "packed=1", "-T", "json", raw.hex())
    assert json.loads(result.stdout)["fields"]["vhost_user.vring.num.used_wrap_counter"] is True


def test_cli_bad_message_is_one_line_exit_2():
    result = run_vqtrace("decode", "vhost_user.msg", (pack_header(9, 1, 40) + bytes(4)).hex())
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0]
    assert "vhost_user.msg at offset 12" in lines[0] and "vhost_user.size is 40" in lines[0]
