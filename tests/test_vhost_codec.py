"""vhost-user framing, validation and payload layouts (QEMU docs/interop/vhost-user.rst)."""

from __future__ import annotations

import os
import struct

import pytest

from vqtrace.dissectors import vhost_user as vu
from vqtrace.dissectors.layers import get_layer
from vqtrace.errors import VhostUserError
from vqtrace.vhost import protocol as p
from vqtrace.vhost.codec import MAX_PAYLOAD, Framer, Message, check_message, fd_range


def eventfds(n: int) -> list[int]:
    return [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(n)]


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_framer_reassembles_messages_split_anywhere():
    msgs = [Message.make(p.GET_FEATURES), Message.make(p.SET_FEATURES, p.pack_u64(1 << 32)),
            Message.make(p.SET_VRING_ADDR, p.pack_addr(p.VringAddr(0, 0, 0x1000, 0x3000, 0x2000, 0)))]
    stream = b"".join(m.raw for m in msgs)
    for cut in range(1, len(stream)):
        framer = Framer("front-end")
        got = framer.feed(stream[:cut]) + framer.feed(stream[cut:])
        assert got == msgs
        assert not framer.mid_message
    # one byte at a time
    framer = Framer("front-end")
    got = [m for b in stream for m in framer.feed(bytes([b]))]
    assert got == msgs


def test_framer_asks_for_exactly_the_header_then_the_payload():
    framer = Framer("front-end")
    assert framer.wanted() == 12
    raw = Message.make(p.SET_FEATURES, p.pack_u64(3)).raw
    assert framer.feed(raw[:5]) == [] and framer.wanted() == 7
    assert framer.feed(raw[5:12]) == [] and framer.wanted() == 8
    assert framer.mid_message and "VHOST_USER_SET_FEATURES with 0 of its 8 payload bytes" in framer.pending()
    assert framer.feed(raw[12:])[0].u64() == 3
    assert framer.wanted() == 12


def test_fds_belong_to_the_message_their_chunk_starts():
    framer = Framer("front-end")
    kick, call = eventfds(2)
    first = framer.feed(Message.make(p.SET_VRING_KICK, p.pack_vring_file(0)).raw, [kick])
    second = framer.feed(Message.make(p.SET_VRING_CALL, p.pack_vring_file(0)).raw, [call])
    assert first[0].fds == [kick] and second[0].fds == [call]
    for fd in (kick, call):
        os.close(fd)


@pytest.mark.parametrize(("header", "words"), [
    ((p.GET_FEATURES, 0x2, 0), "version 2 instead of 1"),
    ((p.GET_FEATURES, 0x0, 0), "version 0 instead of 1"),
    ((p.GET_FEATURES, 0x1 | 0x100, 0), "undefined flag bits 0x100"),
    ((0, 0x1, 0), "request 0"),
    ((0xDEADBEEF, 0xCAFEBABE, 0x12345678), "garbage header"),
])
def test_garbage_headers_are_rejected_with_one_line(header, words):
    framer = Framer("front-end")
    with pytest.raises(VhostUserError) as err:
        framer.feed(struct.pack("<III", *header))
    assert words in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("front-end sent")


def test_size_over_the_limit_is_rejected_at_the_header():
    framer = Framer("back-end")
    with pytest.raises(VhostUserError, match=f"size {MAX_PAYLOAD + 1}, more than the {MAX_PAYLOAD} bytes"):
        framer.feed(struct.pack("<III", p.GET_FEATURES, 0x5, MAX_PAYLOAD + 1))


def test_payload_size_must_fit_the_request():
    framer = Framer("front-end")
    with pytest.raises(VhostUserError, match=r"SET_VRING_ADDR.*size is 8"):
        framer.feed(vu.pack_message(p.SET_VRING_ADDR, bytes(8)))


@pytest.mark.parametrize(("msg", "nfds", "expected"), [
    (Message.make(p.SET_VRING_KICK, p.pack_vring_file(0)), 0, "0 fds, 1 expected"),
    (Message.make(p.SET_VRING_KICK, p.pack_vring_file(0)), 2, "2 fds, 1 expected"),
    (Message.make(p.SET_VRING_CALL, p.pack_vring_file(1, nofd=True)), 1, "1 fd, 0 expected"),
    (Message.make(p.SET_MEM_TABLE, p.pack_memory([p.MemoryRegion(0, 4096, 0x7000, 0)] * 2)), 1, "1 fd, 2 expected"),
    (Message.make(p.ADD_MEM_REG, p.pack_region(p.MemoryRegion(0, 4096, 0x7000, 0))), 0, "0 fds, 1 expected"),
    (Message.make(p.GET_FEATURES), 1, "1 fd, 0 expected"),
    (Message.make(p.SET_BACKEND_REQ_FD), 0, "0 fds, 1 expected"),
])
def test_wrong_number_of_fds_is_rejected_and_the_fds_closed(msg, nfds, expected):
    fds = eventfds(nfds)
    framer = Framer("front-end")
    with pytest.raises(VhostUserError, match=expected):
        framer.feed(msg.raw, fds)
    assert not any(is_open(fd) for fd in fds)


def test_reply_fd_counts():
    inflight = Message.make(p.GET_INFLIGHT_FD, p.pack_inflight(p.Inflight(0, 0, 1, 128)))
    assert fd_range(inflight.make_reply(inflight.payload)) == (1, 1)
    assert fd_range(Message.make(p.GET_FEATURES).make_reply(p.pack_u64(0))) == (0, 0)
    with pytest.raises(VhostUserError, match="0 fds, 1 expected"):
        check_message(inflight.make_reply(inflight.payload), peer="back-end")


def test_backend_channel_messages_use_the_backend_list():
    framer = Framer("back-end", channel=1)
    call = Message.make(p.BACKEND_VRING_CALL, p.pack_state(0, 0), channel=1)
    got = framer.feed(call.raw)
    assert got[0].channel == 1 and got[0].name == "VHOST_USER_BACKEND_VRING_CALL"
    assert got[0].describe() == "BACKEND VRING_CALL idx=0"


def test_describe_is_short_and_readable():
    msg = Message.make(p.SET_VRING_ADDR, p.pack_addr(p.VringAddr(1, 0, 0x1000, 0x3000, 0x2000, 0)), need_reply=True)
    assert msg.describe() == "SET_VRING_ADDR need_reply idx=1 desc=0x1000 avail=0x2000 used=0x3000"
    assert Message.make(p.GET_FEATURES).make_reply(p.pack_u64(0x40)).describe() == "GET_FEATURES reply 0x40"


# ----------------------------------------------------------------------------------------------
# The struct layouts agree with the construct definitions (DESIGN.md: declared once)

def _parse(raw: bytes, **params):
    return get_layer("vhost_user.msg").parse(raw, params=params or None)


def test_vring_addr_layout_matches_the_dissector():
    addr = p.VringAddr(3, 1, 0x1111000, 0x3333000, 0x2222000, 0x4444000)
    parsed = _parse(vu.pack_message(p.SET_VRING_ADDR, p.pack_addr(addr)))
    assert (parsed.addr.index, parsed.addr.flags, parsed.addr.desc, parsed.addr.used, parsed.addr.avail,
            parsed.addr.log) == tuple(addr)
    assert p.unpack_addr(p.pack_addr(addr)) == addr


def test_memory_table_and_region_layouts_match_the_dissector():
    regions = [p.MemoryRegion(0, 0x10000, 0x7F0000000000, 0), p.MemoryRegion(0x100000, 0x2000, 0x7F0000100000, 0x1000)]
    parsed = _parse(vu.pack_message(p.SET_MEM_TABLE, p.pack_memory(regions)))
    assert [(r.guest_addr, r.size, r.user_addr, r.mmap_offset) for r in parsed.region] == [tuple(r) for r in regions]
    assert p.unpack_memory(p.pack_memory(regions)) == regions
    one = _parse(vu.pack_message(p.ADD_MEM_REG, p.pack_region(regions[1])))
    assert (one.region.guest_addr, one.region.size, one.region.user_addr, one.region.mmap_offset) == tuple(regions[1])


def test_inflight_state_and_vring_file_layouts_match_the_dissector():
    inflight = p.Inflight(0x1000, 0x40, 2, 256)
    parsed = _parse(vu.pack_message(p.GET_INFLIGHT_FD, p.pack_inflight(inflight)))
    assert len(p.pack_inflight(inflight)) == 24
    assert (parsed.inflight.mmap_size, parsed.inflight.mmap_offset, parsed.inflight.num_queues,
            parsed.inflight.queue_size) == tuple(inflight)
    state = _parse(vu.pack_message(p.SET_VRING_NUM, p.pack_state(2, 256)))
    assert (state.vring.index, state.vring.num) == (2, 256)
    kick = _parse(vu.pack_message(p.SET_VRING_KICK, p.pack_vring_file(5, nofd=True)))
    assert int(kick.vring_file) == 5 | 0x100
    assert p.unpack_vring_file(p.pack_vring_file(5, nofd=True)) == (5, True)


def test_packed_vring_base_encoding_matches_the_dissector():
    num = p.pack_packed_base(17, True, 9, False)
    tree = get_layer("vhost_user.msg").dissect(vu.pack_message(p.SET_VRING_BASE, p.pack_state(0, num)),
                                               params={"packed": True})
    assert tree["vhost_user.vring.num.avail_idx"] == 17 and tree["vhost_user.vring.num.avail_wrap_counter"]
    assert tree["vhost_user.vring.num.used_idx"] == 9 and not tree["vhost_user.vring.num.used_wrap_counter"]
    assert p.packed_base(num) == (17, True, 9, False)


def test_protocol_feature_bits():
    assert p.protocol_mask("REPLY_ACK", "CONFIGURE_MEM_SLOTS") == (1 << 3) | (1 << 15)
    assert p.protocol_names(0b1001) == ["MQ", "REPLY_ACK"]
