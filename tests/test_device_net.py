"""The reference network device (virtio 1.4, 5.1) through real rings: TX, RX, merged buffers, control queue."""

from __future__ import annotations

import struct
import subprocess

import pytest

from conftest import require_tool
from vqtrace.devices.bench import DeviceBench
from vqtrace.devices.net import (
    HDR_FIELDS,
    NET_HDR,
    NET_HDR_LEGACY,
    VIRTIO_NET_F_CTRL_RX,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_OK,
    NetDevice,
    complete_checksum,
)
from vqtrace.devices.netsink import NetFrame, PcapngSink
from vqtrace.dissectors import net as layout
from vqtrace.dissectors.layers import get_layer
from vqtrace.model import Layout

MAC = bytes.fromhex("525400123456")
OTHER = bytes.fromhex("525400abcdef")
RX, TX, CTRL = 0, 1, 2
HDR12 = bytes(12)


def frame(dst: bytes = MAC, src: bytes = OTHER, payload: bytes = b"hello", ethertype: int = 0x88B5) -> bytes:
    return dst + src + ethertype.to_bytes(2, "big") + payload


def parse_hdr(raw: bytes) -> dict:
    return dict(zip(HDR_FIELDS, NET_HDR.unpack(raw[:12]), strict=True))


def ctrl(cls: int, cmd: int, data: bytes = b"") -> bytes:
    return bytes([cls, cmd]) + data


@pytest.fixture(params=[Layout.SPLIT, Layout.PACKED], ids=["split", "packed"])
def bench(request):
    frames = []
    device = NetDevice(sink=frames.append)
    with DeviceBench(device, layout=request.param) as b:
        b.frames = frames
        yield b


def test_header_structs_equal_the_construct_layout():
    values = {"flags": 1, "gso_type": 4, "hdr_len": 54, "gso_size": 1448, "csum_start": 34, "csum_offset": 16,
              "num_buffers": 3}
    hdr = get_layer("virtio_net.hdr")
    absent = dict.fromkeys(("hash_value", "hash_report", "padding_reserved", "outer_th_offset", "inner_nh_offset",
                            "outer_nh_offset", "padding_reserved_2", "ipsec_resource_hdr"))
    assert NET_HDR.pack(*values.values()) == hdr.build({**values, **absent}, params={"features": 1 << 32})
    legacy = {k: v for k, v in values.items() if k != "num_buffers"}
    assert NET_HDR_LEGACY.pack(*legacy.values()) == hdr.build({**legacy, **absent, "num_buffers": None},
                                                              params={"legacy": True})
    assert dict(zip(HDR_FIELDS, NET_HDR.unpack(NET_HDR.pack(*values.values())), strict=True)) == values


def test_transmit_goes_to_the_sink(bench):
    data = frame(OTHER, MAC, b"x" * 100)
    used = bench.request(TX, [HDR12 + data])
    assert used.len == 0
    assert [f.data for f in bench.frames] == [data]
    assert bench.frames[0].direction == "tx" and bench.frames[0].hdr["num_buffers"] == 0
    state = bench.device.state()
    assert state["counters"]["tx_packets"] == 1 and state["counters"]["tx_bytes"] == len(data)
    assert state["frames"][-1]["len"] == len(data)


def test_transmit_header_and_frame_split_over_descriptors(bench):
    data = frame(payload=b"y" * 60)
    bench.request(TX, [HDR12[:4], HDR12[4:] + data[:10], data[10:]])
    assert bench.frames[-1].data == data


def test_receive_fills_a_held_buffer(bench):
    bench.add(RX, writable=[2048])  # the device holds it
    assert bench.used(RX) == []
    assert bench.device.state()["held"] == {"0": 1}
    activity = bench.device.receive(frame(payload=b"ping"))
    assert activity.notify == {RX}
    (used,) = bench.used(RX)
    assert used.len == 12 + len(frame(payload=b"ping"))
    assert parse_hdr(used.written)["num_buffers"] == 1 and used.written[12:] == frame(payload=b"ping")


def test_frames_wait_for_buffers(bench):
    bench.device.receive(frame(payload=b"early"))
    assert bench.device.state()["rx_backlog"] == {"0": 1}
    bench.add(RX, writable=[2048])
    (used,) = bench.used(RX)
    assert used.written[12:] == frame(payload=b"early")


def test_merged_receive_buffers(bench):
    assert bench.device.has(VIRTIO_NET_F_MRG_RXBUF)
    for _ in range(4):
        bench.add(RX, writable=[1024])
    big = frame(payload=bytes(range(256)) * 12)  # 3086 bytes: with the header 3098, four 1024-byte buffers
    bench.device.receive(big)
    used = bench.used(RX)
    assert [u.len for u in used] == [1024, 1024, 1024, 3098 - 3072]  # all but the last used completely
    assert parse_hdr(used[0].written)["num_buffers"] == 4
    assert b"".join(u.written for u in used)[12:] == big
    # a frame needing more buffers than are held waits for them, and is not split
    bench.add(RX, writable=[1024])
    bench.device.receive(big)
    assert bench.used(RX) == []
    for _ in range(3):
        bench.add(RX, writable=[1024])
    used = bench.used(RX)
    assert len(used) == 4 and parse_hdr(used[0].written)["num_buffers"] == 4


def test_without_merged_buffers_one_buffer_per_packet():
    device = NetDevice(mrg_rxbuf=False)
    with DeviceBench(device) as bench:
        assert not device.has(VIRTIO_NET_F_MRG_RXBUF)
        bench.add(RX, writable=[100])
        bench.add(RX, writable=[1526])
        device.receive(frame(payload=b"z" * 200))  # too big for the first buffer: dropped
        assert bench.used(RX) == [] and device.counters["rx_drops"] == 1
        assert bench.anomalies("NET_RX_BUFFER_TOO_SMALL")
        device.receive(frame(payload=b"fits"))
        (used,) = bench.used(RX)
        assert parse_hdr(used.written)["num_buffers"] == 1 and used.written[12:] == frame(payload=b"fits")


def test_back_to_back_devices_preserve_header_fields():
    a, b = NetDevice(mac="52:54:00:00:00:0a", offloads=True), NetDevice(mac="52:54:00:00:00:0b", offloads=True)
    a.connect(b)
    with DeviceBench(a) as bench_a, DeviceBench(b) as bench_b:
        bench_b.add(RX, writable=[4096])
        data = frame(bytes.fromhex("52540000000b"), bytes.fromhex("52540000000a"), b"\0" * 40, 0x0800)
        hdr = NET_HDR.pack(1, 0, 0, 0, 20, 6, 0)  # NEEDS_CSUM, csum_start 20, csum_offset 6
        bench_a.request(TX, [hdr + data])
        (used,) = bench_b.used(RX)
        got = parse_hdr(used.written)
        assert got["flags"] == 1 and got["csum_start"] == 20 and got["csum_offset"] == 6  # GUEST_CSUM on b
        assert used.written[12:] == data
        assert bench_b.notified[RX] == 1
        assert [f.direction for f in b.frames] == ["rx"] and [f.direction for f in a.frames] == ["tx"]


def test_partial_checksum_completed_for_a_driver_without_guest_csum():
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    pkt = Ether(dst="52:54:00:00:00:0b", src="52:54:00:00:00:0a") / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(
        sport=1234, dport=5678) / (b"payload" * 3)
    good = bytes(pkt)
    ip_hdr = good[14:34]
    udp_len = len(good) - 34
    pseudo = ip_hdr[12:20] + bytes([0, 17]) + udp_len.to_bytes(2, "big")
    total = sum(struct.unpack("!6H", pseudo))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    partial = good[:40] + total.to_bytes(2, "big") + good[42:]  # the driver leaves the pseudo-header sum
    assert complete_checksum(partial, 34, 6) == good
    a = NetDevice(offloads=True)
    b = NetDevice(mac="52:54:00:00:00:0b", offloads=True)
    a.connect(b)
    with DeviceBench(a) as bench_a, DeviceBench(b, features=b.offered_features & ~(1 << 1 | 1 << 7 | 1 << 8)) as bb:
        bb.add(RX, writable=[4096])
        bench_a.request(TX, [NET_HDR.pack(1, 0, 0, 0, 34, 6, 0) + partial])
        (used,) = bb.used(RX)
        assert parse_hdr(used.written)["flags"] == 0  # 5.1.9.4.1: flags 0 without GUEST_CSUM
        assert used.written[12:] == good


def test_pcapng_sink_is_read_by_tshark(tmp_path):
    path = tmp_path / "net.pcapng"
    sink = PcapngSink(path)
    device = NetDevice(sink=sink)
    with DeviceBench(device) as bench:
        bench.request(TX, [HDR12 + frame(OTHER, MAC, b"\x00" * 50, 0x0800)])
        bench.request(TX, [HDR12 + frame(b"\xff" * 6, MAC, b"\x00" * 28, 0x0806)])
    sink.close()
    tshark = require_tool("tshark")
    out = subprocess.run([tshark, "-r", str(path), "-T", "fields", "-e", "eth.src", "-e", "eth.type",
                          "-e", "frame.comment"], capture_output=True, text=True, timeout=60, check=True)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("52:54:00:12:34:56\t0x0800") and "gso_type=0" in lines[0]
    assert lines[1].split("\t")[1] == "0x0806"


def test_pcapng_sink_blocks(tmp_path):
    path = tmp_path / "raw.pcapng"
    sink = PcapngSink(path)
    sink(NetFrame("tx", 1, b"\x01" * 61, {"flags": 0}, 1_000_000_123))
    raw = path.read_bytes()  # flushed block by block: readable before close
    kinds = []
    at = 0
    while at < len(raw):
        kind, size = struct.unpack_from("<II", raw, at)
        assert struct.unpack_from("<I", raw, at + size - 4)[0] == size
        kinds.append(kind)
        at += size
    assert kinds == [0x0A0D0D0A, 1, 6]
    sink.close()


# -- configuration -------------------------------------------------------------------------------

def test_config_space_mac_and_status(bench):
    config = get_layer("virtio_net.config").parse(bench.device.config_space())
    assert config.mac == "52:54:00:12:34:56" and config.status == layout.CONFIG_STATUS["LINK_UP"]
    activity = bench.device.set_link(False)
    assert activity.config_changed
    assert get_layer("virtio_net.config").parse(bench.device.config_space()).status == 0
    assert bench.device.write_config(0, b"\x02").anomalies[0].code == "CONFIG_WRITE_READONLY"  # 5.1.4.2


def test_multiqueue_config_and_queues():
    device = NetDevice(queue_pairs=4, mtu=9000)
    config = get_layer("virtio_net.config").parse(device.config_space())
    assert config.max_virtqueue_pairs == 4 and config.mtu == 9000
    assert device.queue_names()[-1] == "controlq" and device.num_queues == 9
    device.negotiate(device.offered_features & ~(1 << 22))  # without MQ: one pair (5.1.2)
    assert device.queue_names() == ["receiveq1", "transmitq1", "controlq"]


# -- control queue --------------------------------------------------------------------------------

def test_rx_mode_and_mac_filtering(bench):
    device = bench.device
    assert bench.request(CTRL, [ctrl(0, 0, b"\x00")], [1]).written == bytes([VIRTIO_NET_OK])  # promisc off
    bench.add(RX, writable=[2048])
    device.receive(frame(dst=OTHER))  # neither our mac nor in the table: dropped (5.1.9.5.2.1)
    assert device.counters["rx_filtered"] == 1
    table = struct.pack("<I", 1) + OTHER + struct.pack("<I", 0)
    assert bench.request(CTRL, [ctrl(1, 0, table)], [1]).written == b"\x00"  # MAC_TABLE_SET
    device.receive(frame(dst=OTHER))
    assert len(bench.used(RX)) == 1
    assert device.state()["mac_table"]["unicast"] == ["52:54:00:ab:cd:ef"]
    bench.request(CTRL, [ctrl(0, 5, b"\x01")], [1])  # NOBCAST (CTRL_RX_EXTRA)
    bench.add(RX, writable=[2048])
    device.receive(frame(dst=b"\xff" * 6))
    assert device.counters["rx_filtered"] == 2 and device.state()["rx_mode"]["nobcast"] is True


def test_mac_addr_set_updates_config(bench):
    assert bench.request(CTRL, [ctrl(1, 1, OTHER)], [1]).written == b"\x00"
    assert get_layer("virtio_net.config").parse(bench.device.config_space()).mac == "52:54:00:ab:cd:ef"


def test_vlan_filter(bench):
    device = bench.device
    bench.request(CTRL, [ctrl(0, 0, b"\x00")], [1])
    tagged = MAC + OTHER + b"\x81\x00" + struct.pack(">H", 5) + b"\x08\x00" + b"v" * 30
    bench.add(RX, writable=[2048])
    device.receive(tagged)
    assert device.counters["rx_filtered"] == 1  # 5.1.9.5.3: the table starts empty
    assert bench.request(CTRL, [ctrl(2, 0, struct.pack("<H", 5))], [1]).written == b"\x00"
    device.receive(tagged)
    assert len(bench.used(RX)) == 1 and device.state()["vlans"] == [5]
    assert bench.request(CTRL, [ctrl(2, 0, struct.pack("<H", 4096))], [1]).written == b"\x01"


def test_announce_and_ack(bench):
    activity = bench.device.announce()
    assert activity.config_changed
    assert get_layer("virtio_net.config").parse(bench.device.config_space()).status & 2
    assert bench.request(CTRL, [ctrl(3, 0)], [1]).written == b"\x00"
    assert not get_layer("virtio_net.config").parse(bench.device.config_space()).status & 2


def test_mq_pairs():
    device = NetDevice(queue_pairs=2)
    with DeviceBench(device) as bench:
        ctrl_q = device.ctrl_index
        assert ctrl_q == 4
        assert bench.request(ctrl_q, [ctrl(4, 0, struct.pack("<H", 2))], [1]).written == b"\x00"
        assert device.active_pairs == 2
        for bad in (0, 3):
            assert bench.request(ctrl_q, [ctrl(4, 0, struct.pack("<H", bad))], [1]).written == b"\x01"
        # a TX on pair 2 steers the flow's replies to receiveq2 (5.1.9.5.6)
        bench.request(3, [HDR12 + frame(OTHER, MAC)])
        bench.add(2, writable=[2048])
        device.receive(frame(MAC, OTHER, b"reply"))
        assert len(bench.used(2)) == 1


def test_unsupported_and_unnegotiated_commands_get_err():
    device = NetDevice()
    with DeviceBench(device, features=device.offered_features & ~(1 << VIRTIO_NET_F_CTRL_RX)) as bench:
        assert bench.request(CTRL, [ctrl(0, 0, b"\x01")], [1]).written == b"\x01"
        assert bench.request(CTRL, [ctrl(4, 1, b"")], [1]).written == b"\x01"  # RSS not offered
        assert bench.request(CTRL, [ctrl(77, 0)], [1]).written == b"\x01"
        assert device.counters["ctrl_err"] == 3


# -- malformed buffers ----------------------------------------------------------------------------

def test_short_tx_header(bench):
    assert bench.request(TX, [b"\x00" * 5]).len == 0
    assert bench.anomalies()[-1].code == "NET_SHORT_HEADER" and bench.frames == []


def test_tx_with_writable_descriptor(bench):
    bench.request(TX, [HDR12 + frame()], [16])
    assert bench.anomalies("NET_TX_WRITABLE") and len(bench.frames) == 1


def test_tx_gso_without_host_feature_is_refused(bench):
    bench.request(TX, [NET_HDR.pack(1, 1, 54, 1448, 34, 16, 0) + frame()])
    assert bench.anomalies("NET_TX_BAD_HEADER") and bench.frames == []


def test_ctrl_without_ack_and_malformed(bench):
    assert bench.request(CTRL, [ctrl(0, 0, b"\x00")]).len == 0
    assert bench.anomalies("NET_CTRL_NO_ACK")
    assert bench.request(CTRL, [b"\x01"], [1]).written == b"\x01"
    bad_table = struct.pack("<I", 1000) + OTHER  # says 1000 entries
    assert bench.request(CTRL, [ctrl(1, 0, bad_table)], [1]).written == b"\x01"
    assert bench.anomalies("NET_CTRL_MALFORMED")


def test_rx_buffer_too_small_or_readable(bench):
    assert bench.request(RX, [], [4]).len == 0
    assert bench.anomalies("NET_RX_BUFFER_TOO_SMALL")
    bench.add(RX, [b"r" * 8], [2048])
    assert bench.anomalies("NET_RX_READABLE")
    bench.device.receive(frame())
    assert len(bench.used(RX)) == 1


def test_oversized_transmit_is_dropped(bench):
    assert bench.request(TX, [HDR12, bytes(70000)]).len == 0
    assert bench.anomalies()[-1].code == "NET_OVERSIZED" and bench.frames == []
    assert bench.device.counters["tx_drops"] == 1


def test_a_failing_sink_is_reported_not_raised(tmp_path):
    sink = PcapngSink(tmp_path / "closed.pcapng")
    sink.close()
    with DeviceBench(NetDevice(sink=sink)) as bench:
        assert bench.request(TX, [HDR12 + frame()]).len == 0
        assert bench.anomalies()[-1].code == "NET_SINK_ERROR"
        assert bench.device.counters["tx_packets"] == 1
