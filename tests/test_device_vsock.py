"""The reference socket device (virtio 1.4, 5.10): handshake, data, credit stall, shutdown, resets."""

from __future__ import annotations

import pytest

from vqtrace.devices.bench import DeviceBench
from vqtrace.devices.vsock import HDR, VsockDevice
from vqtrace.dissectors import vsock as layout
from vqtrace.dissectors.layers import get_layer
from vqtrace.errors import UsageError
from vqtrace.model import Layout

RX, TX, EVENT = 0, 1, 2
OP = {name.removeprefix("VIRTIO_VSOCK_OP_"): value for name, value in layout.OPS.items()}
GUEST, HOST = 3, 2
ECHO = 1234
SHUT_RECV, SHUT_SEND = 1, 2


def packet(op: str, src_port: int = 5000, dst_port: int = ECHO, payload: bytes = b"", *, buf_alloc: int = 65536,
           fwd_cnt: int = 0, flags: int = 0, kind: int = 1, src_cid: int = GUEST, dst_cid: int = HOST,
           length: int | None = None) -> bytes:
    return HDR.pack(src_cid, dst_cid, src_port, dst_port, len(payload) if length is None else length, kind, OP[op],
                    flags, buf_alloc, fwd_cnt) + payload


def parse(raw: bytes) -> dict:
    fields = ("src_cid", "dst_cid", "src_port", "dst_port", "len", "type", "op", "flags", "buf_alloc", "fwd_cnt")
    values = dict(zip(fields, HDR.unpack_from(raw), strict=True))
    values["op"] = {v: k for k, v in OP.items()}[values["op"]]
    values["payload"] = raw[layout.HDR_SIZE:layout.HDR_SIZE + values["len"]]
    return values


class Guest:
    """The guest's side: rx buffers always available, packets sent on tx, replies read."""

    def __init__(self, bench: DeviceBench, buffers: int = 16, size: int = 4096 + 44) -> None:
        self.bench, self.size = bench, size
        for _ in range(buffers):
            bench.add(RX, writable=[size])

    def send(self, raw: bytes) -> list[dict]:
        self.bench.request(TX, [raw[:44], raw[44:]] if len(raw) > 44 else [raw])
        return self.replies()

    def replies(self, refill: bool = True) -> list[dict]:
        used = self.bench.used(RX)
        if refill:
            for _ in used:
                self.bench.add(RX, writable=[self.size])
        return [parse(u.written) for u in used]


@pytest.fixture(params=[Layout.SPLIT, Layout.PACKED], ids=["split", "packed"])
def bench(request):
    with DeviceBench(VsockDevice(buf_alloc=4096), layout=request.param) as b:
        yield b


def test_hdr_struct_matches_the_layer():
    raw = packet("RW", payload=b"abc", buf_alloc=7, fwd_cnt=9)
    parsed = get_layer("virtio_vsock.hdr").parse(raw)
    assert (parsed.src_cid, parsed.dst_port, parsed.len, parsed.buf_alloc, parsed.fwd_cnt) == (3, ECHO, 3, 7, 9)
    assert parsed.payload == b"abc"


def test_config_and_offer():
    device = VsockDevice(guest_cid=42)
    assert get_layer("virtio_vsock.config").parse(device.config_space()).guest_cid == 42
    assert device.offered_features & 0b101 == 0b101  # STREAM and NO_IMPLIED_STREAM (5.10.3.2)
    for bad in (0, 1, 2, 0xFFFFFFFF):
        with pytest.raises(UsageError):
            VsockDevice(guest_cid=bad)


def test_handshake_data_and_clean_shutdown(bench):
    guest = Guest(bench)
    (reply,) = guest.send(packet("REQUEST", buf_alloc=65536))
    assert reply["op"] == "RESPONSE"
    assert (reply["src_cid"], reply["dst_cid"], reply["src_port"], reply["dst_port"]) == (HOST, GUEST, ECHO, 5000)
    assert reply["buf_alloc"] == 4096 and reply["fwd_cnt"] == 0
    (echo,) = guest.send(packet("RW", payload=b"hello vsock"))
    assert echo["op"] == "RW" and echo["payload"] == b"hello vsock"
    assert echo["fwd_cnt"] == len(b"hello vsock")  # the echoed bytes left the receive buffer
    (conn,) = bench.device.state()["connections"]
    assert conn["state"] == "established" and conn["rx_cnt"] == 11 and conn["tx_cnt"] == 11
    # clean disconnect (5.10.6.5): SHUTDOWN with both hints, answered with RST
    (rst,) = guest.send(packet("SHUTDOWN", flags=SHUT_RECV | SHUT_SEND, fwd_cnt=11))
    assert rst["op"] == "RST"
    state = bench.device.state()
    assert state["connections"] == [] and state["closed"][-1]["closed"] == "shut down by guest"
    assert bench.anomalies() == []


def test_half_shutdown_lets_the_echo_finish(bench):
    guest = Guest(bench)
    guest.send(packet("REQUEST"))
    guest.send(packet("RW", payload=b"last words"))
    replies = guest.send(packet("SHUTDOWN", flags=SHUT_SEND))  # the guest sends no more
    assert [r["op"] for r in replies] == ["SHUTDOWN"] and replies[0]["flags"] == SHUT_RECV | SHUT_SEND
    assert guest.send(packet("RST")) == []  # the guest's RST ends it
    assert bench.device.state()["connections"] == []


def test_credit_stall_and_credit_update(bench):
    guest = Guest(bench)
    guest.send(packet("REQUEST", buf_alloc=1024))  # the guest can take 1024 bytes
    (echo,) = guest.send(packet("RW", payload=b"a" * 3000, buf_alloc=1024))
    assert echo["len"] == 1024  # 5.10.6.3.2: only what the guest has room for
    conn = bench.device.state()["connections"][0]
    assert conn["peer_free"] == 0 and conn["pending_out"] == 1976
    # the device's own buffer: 4096 - (3000 - 1024 echoed) = 2120 free
    assert guest.send(packet("RW", payload=b"b" * 2120, buf_alloc=1024)) == []
    conn = bench.device.state()["connections"][0]
    assert conn["pending_out"] == 1976 + 2120 and bench.device.connections[(5000, ECHO)].free == 0
    # both sides stalled: one byte more breaks 5.10.6.3.1 and is dropped
    assert guest.send(packet("RW", payload=b"c", buf_alloc=1024)) == []
    assert bench.anomalies()[-1].code == "VSOCK_CREDIT_EXCEEDED"
    # the guest reads what it got and says so: the device goes on
    (echo,) = guest.send(packet("CREDIT_UPDATE", buf_alloc=1024, fwd_cnt=1024))
    assert echo["op"] == "RW" and echo["len"] == 1024 and echo["payload"] == b"a" * 1024
    (reply,) = guest.send(packet("CREDIT_REQUEST", buf_alloc=1024, fwd_cnt=1024))
    assert reply["op"] == "CREDIT_UPDATE" and reply["fwd_cnt"] == 2048 and reply["buf_alloc"] == 4096
    received = 2048
    while received < 3000 + 2120:
        (echo,) = guest.send(packet("CREDIT_UPDATE", buf_alloc=1024, fwd_cnt=received))
        received += echo["len"]
    assert bench.device.state()["connections"][0]["pending_out"] == 0


def test_rst_for_closed_ports_and_unknown_connections(bench):
    guest = Guest(bench)
    (rst,) = guest.send(packet("REQUEST", dst_port=9999))
    assert rst["op"] == "RST" and rst["src_port"] == 9999 and rst["dst_port"] == 5000
    (rst,) = guest.send(packet("RW", dst_port=ECHO, payload=b"no connection"))
    assert rst["op"] == "RST"
    assert guest.send(packet("RST", dst_port=ECHO)) == []  # an RST for nothing is not answered


def test_unknown_type_gets_rst(bench):
    guest = Guest(bench)
    (rst,) = guest.send(packet("REQUEST", kind=2))  # SEQPACKET, not negotiated (5.10.6.4.2)
    assert rst["op"] == "RST" and rst["type"] == 2
    assert bench.anomalies("VSOCK_UNKNOWN_TYPE")


def test_host_initiated_connection_and_send():
    device = VsockDevice()
    with DeviceBench(device) as bench:
        guest = Guest(bench)
        device.connect(7000, host_port=600)
        (request,) = guest.replies()
        assert request["op"] == "REQUEST" and (request["src_port"], request["dst_port"]) == (600, 7000)
        guest.send(packet("RESPONSE", src_port=7000, dst_port=600))
        assert device.state()["connections"][0]["state"] == "established"
        device.send(7000, 600, b"from the host")
        (data,) = guest.replies()
        assert data["payload"] == b"from the host"
        assert guest.send(packet("RW", src_port=7000, dst_port=600, payload=b"to sink")) == []
        assert device.connections[(7000, 600)].fwd_cnt == 7  # the sink consumed it at once
        device.shutdown(7000, 600)
        (shutdown,) = guest.replies()
        assert shutdown["op"] == "SHUTDOWN" and shutdown["flags"] == 3


def test_callable_service():
    device = VsockDevice(services={80: lambda data: data.upper()})
    with DeviceBench(device) as bench:
        guest = Guest(bench)
        guest.send(packet("REQUEST", dst_port=80))
        (reply,) = guest.send(packet("RW", dst_port=80, payload=b"shout"))
        assert reply["payload"] == b"SHOUT"


def test_replies_wait_for_rx_buffers(bench):
    bench.request(TX, [packet("REQUEST")])  # no rx buffer yet: the RESPONSE waits
    assert bench.device.state()["control_pending"] == 1
    bench.add(RX, writable=[4096 + 44])
    assert parse(bench.used(RX)[0].written)["op"] == "RESPONSE"


def test_tx_backlog_limit_throttles_and_resumes():
    device = VsockDevice(backlog=2)
    with DeviceBench(device) as bench:
        for port in range(4):
            bench.add(TX, [packet("REQUEST", src_port=port, dst_port=9)], kick=False)
        bench.queues[TX].kick(force=True)
        assert len(device.control) == 2 and device.tx_throttled  # two tx chains left available
        assert len(bench.used(TX)) == 2
        Guest(bench, buffers=8)
        assert len(bench.used(TX)) == 2 and not device.tx_throttled
        assert [r["op"] for r in Guest(bench, buffers=0).replies()] == ["RST"] * 4


def test_transport_reset_event(bench):
    guest = Guest(bench)
    guest.send(packet("REQUEST"))
    bench.add(EVENT, writable=[4])
    bench.device.transport_reset()
    (used,) = bench.used(EVENT)
    assert used.written == b"\0\0\0\0"  # VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
    assert bench.device.state()["connections"] == []


# -- malformed packets ------------------------------------------------------------------------------

def test_short_header_and_bad_length(bench):
    guest = Guest(bench)
    assert guest.send(b"\x03" * 20) == []
    assert bench.anomalies()[-1].code == "VSOCK_SHORT_HEADER"
    (rst,) = guest.send(packet("RW", payload=b"abc", length=4000))  # len beyond the buffer
    assert rst["op"] == "RST" and bench.anomalies()[-1].code == "VSOCK_BAD_LENGTH"


def test_wrong_cids_are_dropped(bench):
    guest = Guest(bench)
    assert guest.send(packet("REQUEST", src_cid=9)) == []
    assert guest.send(packet("REQUEST", dst_cid=5)) == []
    assert [a.code for a in bench.anomalies()] == ["VSOCK_BAD_CID", "VSOCK_BAD_CID"]


def test_writable_in_tx_and_readable_in_rx(bench):
    bench.request(TX, [packet("REQUEST")], [8])
    assert bench.anomalies("VSOCK_WRITABLE_IN_TX")
    assert bench.request(RX, [b"x"], [10]).len == 0
    assert bench.anomalies("VSOCK_READABLE_IN_RX") and bench.anomalies("VSOCK_BUFFER_TOO_SMALL")


def test_data_after_the_host_shut_receiving_is_dropped():
    device = VsockDevice()
    with DeviceBench(device) as bench:
        guest = Guest(bench)
        device.connect(7000, host_port=600)
        guest.replies()
        guest.send(packet("RESPONSE", src_port=7000, dst_port=600))
        device.shutdown(7000, 600)
        guest.replies()
        assert guest.send(packet("RW", src_port=7000, dst_port=600, payload=b"late")) == []
        assert device.counters["dropped"] == 1 and bench.anomalies() == []
        assert guest.send(packet("RST", src_port=7000, dst_port=600)) == []
        assert device.state()["connections"] == []
