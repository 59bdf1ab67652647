"""Network requests (virtio 1.4, 5.1.9): transmitq, receiveq with merged buffers, controlq; Ethernet fields
checked against Wireshark 4.0 (tshark) frame by frame."""

from __future__ import annotations

import json
import struct
import subprocess

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6, IPv6ExtHdrHopByHop
from scapy.layers.l2 import ARP, LLC, Dot1Q, Dot3, Ether

from conftest import require_tool
from vqtrace.dissectors.tree import Field
from vqtrace.filter import compile_filter
from vqtrace.filter.catalog import FieldCatalog
from vqtrace.requests import (
    ETHERNET_FIELDS,
    QueueContext,
    RxAssembler,
    decode_request,
    frame_summary,
    frame_trees,
    join_rx_buffers,
    request_fields,
)
from vqtrace.requests.ethernet import HIDDEN_FIELDS

VERSION_1 = 1 << 32
MRG_RXBUF = 1 << 15
CTRL_VQ = 1 << 17
HASH_REPORT = 1 << 57
GUEST_MAC, HOST_MAC = "52:54:00:12:34:56", "52:54:00:ab:cd:ef"
TX = QueueContext("net", 1, VERSION_1)
RX = QueueContext("net", 0, VERSION_1)
RX_MRG = QueueContext("net", 0, VERSION_1 | MRG_RXBUF)
CTRL = QueueContext("net", 2, VERSION_1 | CTRL_VQ)


def E(**kw):  # an Ether layer between the two test MACs
    return Ether(src=HOST_MAC, dst=GUEST_MAC, **kw)


def hdr(flags=0, gso=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0, num_buffers=0):
    return struct.pack("<BBHHHHH", flags, gso, hdr_len, gso_size, csum_start, csum_offset, num_buffers)


def arp_request():
    return bytes(Ether(dst="ff:ff:ff:ff:ff:ff", src=GUEST_MAC) /
                 ARP(hwsrc=GUEST_MAC, psrc="10.0.0.1", pdst="10.0.0.2"))


def tcp_syn():
    return bytes(Ether(dst=HOST_MAC, src=GUEST_MAC) / IP(src="10.0.0.1", dst="10.0.0.2", id=0x1234, flags="DF") /
                 TCP(sport=40000, dport=80, flags="S", seq=1000, options=[("MSS", 1460)]))


def codes(req):
    return [p.code for p in req.problems]


def first(req, abbrev):
    for tree in req.trees:
        node = tree.find(abbrev)
        if node is not None:
            return node
    raise AssertionError(abbrev)


# -- transmitq ------------------------------------------------------------------------


def test_tx_arp_summary_and_fields():
    frame = arp_request()
    req = decode_request(TX, hdr() + frame, readable_lens=[12 + len(frame)])
    assert req.summary == f"net TX 42 bytes {GUEST_MAC} > ff:ff:ff:ff:ff:ff ARP who-has 10.0.0.2 tell 10.0.0.1"
    assert req.problems == [] and req.response is None
    assert [t.abbrev for t in req.trees] == ["virtio_net", "eth", "arp"]
    f = req.fields()
    assert f["virtio_net.num_buffers"] == 0 and f["eth.type"] == 0x0806
    assert (f["eth.src"], f["arp.src.proto_ipv4"], f["arp.dst.proto_ipv4"], f["arp.opcode"]) == \
        (GUEST_MAC, "10.0.0.1", "10.0.0.2", 1)
    assert (first(req, "eth.dst").offset, first(req, "arp.opcode").offset) == (12, 12 + 14 + 6)


def test_tx_tcp_fields_use_wireshark_semantics():
    req = decode_request(TX, hdr() + tcp_syn())
    assert req.summary == f"net TX 58 bytes {GUEST_MAC} > {HOST_MAC} IPv4 10.0.0.1 > 10.0.0.2 TCP 40000 > 80 [SYN]"
    f = req.fields()
    assert (f["ip.hdr_len"], f["ip.flags"], f["ip.flags.df"], f["ip.id"], f["ip.proto"]) == (20, 2, True, 0x1234, 6)
    assert (f["tcp.hdr_len"], f["tcp.flags"], f["tcp.flags.syn"], f["tcp.seq_raw"], f["tcp.len"]) == \
        (24, 0x002, True, 1000, 0)
    assert "tcp.payload" not in f


@pytest.mark.parametrize(("features", "size"), [(0, 10), (MRG_RXBUF, 12), (VERSION_1, 12),
                                                (VERSION_1 | HASH_REPORT, 20), (None, 12)])
def test_header_size_follows_the_features(features, size):
    frame = arp_request()
    req = decode_request(QueueContext("net", 1, features), bytes(size) + frame)
    assert req.info["frame_len"] == len(frame)
    assert first(req, "eth.dst").offset == size
    assert first(req, "virtio_net").length == size


def test_tx_gso_and_checksum_offload_shown():
    frame = bytes(E() / IP() / TCP(flags="PA") / (b"x" * 3000))
    req = decode_request(TX, hdr(flags=1, gso=1, hdr_len=54, gso_size=1448, csum_start=34, csum_offset=16) + frame)
    assert req.summary.endswith(" gso=TCPV4/1448")
    assert req.info["gso_size"] == 1448 and req.fields()["virtio_net.flags.needs_csum"] is True


def test_tx_problems():
    short = decode_request(TX, b"\0" * 5)
    assert codes(short) == ["SHORT_HEADER"] and short.summary == "net TX ? (header of 5 bytes)"
    tiny = decode_request(TX, hdr() + b"\xff" * 6)
    assert codes(tiny) == ["SHORT_FRAME"] and tiny.summary == "net TX 6 bytes short frame (6 bytes)"
    assert first(tiny, "data.data").value == b"\xff" * 6
    writable = decode_request(TX, hdr() + arp_request(), writable_lens=[64])
    assert codes(writable) == ["WRITABLE_TX"]
    legacy = QueueContext("net", 1, 0)
    framing = decode_request(legacy, bytes(10) + arp_request(), readable_lens=[52])
    assert codes(framing) == ["FRAMING"] and "5.1.9.8" in framing.problems[0].section
    ok = decode_request(legacy, bytes(10) + arp_request(), readable_lens=[10, 42])
    assert ok.problems == []


# -- receiveq -------------------------------------------------------------------------


def test_rx_buffer_in_flight_then_used():
    assert decode_request(RX, writable_lens=[1526]).summary == "net RX buffer 1526 bytes"
    frame = arp_request()
    written = hdr(num_buffers=1) + frame + b"\xee" * 100  # bytes past the used length are not the packet
    req = decode_request(RX, b"", written, 12 + len(frame), writable_lens=[len(written)])
    assert req.summary == f"net RX 42 bytes {GUEST_MAC} > ff:ff:ff:ff:ff:ff ARP who-has 10.0.0.2 tell 10.0.0.1"
    assert req.problems == []
    assert first(req, "eth.dst").offset == 12  # written_base 0: no readable part


def test_rx_num_buffers_rules():
    frame = arp_request()
    bad = decode_request(RX, b"", hdr(num_buffers=2) + frame, 54)
    assert codes(bad) == ["NUM_BUFFERS"] and bad.problems[0].offset == 10
    zero = decode_request(RX_MRG, b"", hdr(num_buffers=0) + frame, 54)
    assert codes(zero) == ["NUM_BUFFERS"]
    first_of_three = decode_request(RX_MRG, b"", hdr(num_buffers=3) + frame, 54)
    assert "(buffer 1 of 3)" in first_of_three.summary and first_of_three.problems == []


def test_rx_problems():
    readable = decode_request(RX, b"\x01", hdr(num_buffers=1) + arp_request(), 54)
    assert codes(readable) == ["READABLE_RX"]
    short = decode_request(RX, b"", b"\0" * 4, 4)
    assert codes(short) == ["SHORT_HEADER"]
    uncaptured = decode_request(RX, b"", None, 60)
    assert uncaptured.summary == "net RX 60 bytes (not captured)"


def merged_packet():
    payload = bytes(range(256)) * 12
    frame = bytes(Ether(dst=GUEST_MAC, src=HOST_MAC) / IP(src="10.0.0.2", dst="10.0.0.1") /
                  UDP(sport=5000, dport=6000) / payload)
    stream = hdr(num_buffers=3) + frame
    return frame, payload, [stream[:1024], stream[1024:2048], stream[2048:]]


def test_rx_assembler_joins_merged_buffers():
    frame, payload, buffers = merged_packet()
    asm = RxAssembler(RX_MRG)
    results = [asm.add(b + b"\0" * 64, len(b)) for b in buffers]  # each buffer longer than its used length
    assert [r[1] is None for r in results] == [True, True, False]
    assert results[0][0].summary.startswith("net RX 1012 bytes (buffer 1 of 3)")
    assert results[1][0].summary == "net RX continuation 1024 bytes"
    packet = results[2][1]
    assert packet.summary.startswith(f"net RX {len(frame)} bytes (3 buffers) {HOST_MAC} > {GUEST_MAC} IPv4")
    assert packet.problems == [] and asm.pending == 0
    f = packet.fields()
    assert f["udp.payload"] == payload and f["udp.length"] == 8 + len(payload)
    # the next buffer starts a new packet
    single = hdr(num_buffers=1) + arp_request()
    request, done = asm.add(single, len(single))
    assert done is request and "ARP" in request.summary


def test_join_rx_buffers_checks_num_buffers():
    _, _, buffers = merged_packet()
    joined = join_rx_buffers(RX_MRG, buffers[:2])
    assert codes(joined) == ["NUM_BUFFERS"] and "(2 buffers)" in joined.summary
    with pytest.raises(ValueError):
        join_rx_buffers(RX_MRG, buffers, [1])


def test_without_mrg_rxbuf_every_buffer_is_a_packet():
    asm = RxAssembler(RX)
    data = hdr(num_buffers=1) + arp_request()
    request, packet = asm.add(data, len(data))
    assert packet is request and asm.pending == 0


# -- controlq -------------------------------------------------------------------------


@pytest.mark.parametrize(("readable", "summary"), [
    (bytes([0, 0, 1]), "net ctrl RX PROMISC on=1"),
    (bytes([0, 5, 0]), "net ctrl RX NOBCAST on=0"),
    (bytes([1, 1]) + bytes.fromhex("525400123456"), "net ctrl MAC ADDR_SET mac=52:54:00:12:34:56"),
    (bytes([2, 0]) + struct.pack("<H", 100), "net ctrl VLAN ADD vlan_id=100"),
    (bytes([3, 0]), "net ctrl ANNOUNCE ACK"),
    (bytes([4, 0]) + struct.pack("<H", 4), "net ctrl MQ VQ_PAIRS_SET virtqueue_pairs=4"),
])
def test_control_commands(readable, summary):
    req = decode_request(CTRL, readable, b"\0", 1, writable_lens=[1])
    assert req.summary == summary + " -> OK"
    assert req.response == "OK" and req.problems == []
    assert req.fields()["virtio_net.ctrl_ack.ack"] == 0


def test_control_mac_table_and_errors():
    table = struct.pack("<I", 1) + bytes.fromhex("525400000001") + struct.pack("<I", 0)
    req = decode_request(CTRL, bytes([1, 0]) + table, b"\x01", 1)
    assert req.summary.endswith("-> ERR") and req.response == "ERR"
    assert req.fields()["virtio_net.ctrl.data.unicast.macs"] == "52:54:00:00:00:01"
    assert decode_request(CTRL, bytes([0, 0, 1])).summary == "net ctrl RX PROMISC on=1"  # in flight
    assert codes(decode_request(CTRL, bytes([0, 0, 1]), writable_lens=[])) == ["NO_ACK"]
    no_ack = decode_request(CTRL, bytes([0, 0, 1]), b"", 0)
    assert codes(no_ack) == ["NO_ACK"] and no_ack.summary.endswith("-> ?")
    short = decode_request(CTRL, b"\x00", b"\0", 1)
    assert codes(short) == ["SHORT_HEADER"]
    malformed = decode_request(CTRL, bytes([1, 0]) + struct.pack("<I", 50), b"\0", 1)
    assert "MALFORMED" in codes(malformed) and malformed.summary.endswith("-> OK")


# -- Ethernet -------------------------------------------------------------------------


def test_frame_summaries():
    assert frame_summary(b"\0" * 5) == "short frame (5 bytes)"
    vlan = bytes(Ether(src=GUEST_MAC, dst=HOST_MAC) / Dot1Q(vlan=7) / IP(src="1.1.1.1", dst="2.2.2.2") /
                 UDP(sport=1, dport=2))
    assert frame_summary(vlan) == f"{GUEST_MAC} > {HOST_MAC} VLAN 7 IPv4 1.1.1.1 > 2.2.2.2 UDP 1 > 2"
    ping6 = bytes(Ether(src=GUEST_MAC, dst=HOST_MAC) / IPv6(src="fe80::1", dst="ff02::1") / ICMPv6EchoRequest())
    assert frame_summary(ping6).endswith("IPv6 fe80::1 > ff02::1 ICMPv6 echo-request")
    hop = bytes(E() / IPv6(src="::1", dst="::2") / IPv6ExtHdrHopByHop() / TCP(sport=7, dport=8, flags="FA"))
    assert frame_summary(hop).endswith("IPv6 ::1 > ::2 TCP 7 > 8 [FIN, ACK]")
    frag = bytes(E() / IP(src="1.1.1.1", dst="2.2.2.2", flags="MF") / UDP() / (b"x" * 20))
    assert frame_summary(frag).endswith("IPv4 1.1.1.1 > 2.2.2.2 UDP fragment")
    assert frame_summary(bytes(E(type=0x88CC) / b"lldp")).endswith(" LLDP")
    assert frame_summary(bytes(E(type=0x1234) / b"x")).endswith(" type=0x1234")
    assert " 802.3 len=" in frame_summary(bytes(Dot3() / LLC() / b"abc"))
    ping = bytes(E() / IP(src="1.1.1.1", dst="2.2.2.2") / ICMP(type=8))
    assert frame_summary(ping).endswith("ICMP echo-request")


def test_frame_trees_offsets_and_truncation():
    frame = tcp_syn()
    trees, problems = frame_trees(frame, base=100)
    assert problems == [] and [t.abbrev for t in trees] == ["eth", "ip", "tcp"]
    assert [t.offset for t in trees] == [100, 114, 134]
    assert trees[2].find("tcp.flags.syn").offset == 134 + 12
    cut, _ = frame_trees(frame[:40])  # the TCP header does not fit: no tcp tree, nothing invented
    assert [t.abbrev for t in cut] == ["eth", "ip"]
    none, problems = frame_trees(b"\x01" * 13)
    assert none == [] and problems


def test_ethernet_fields_are_in_the_filter_catalog():
    catalog = FieldCatalog.default().extended(request_fields())
    req = decode_request(TX, hdr() + tcp_syn())
    event = req.filter_values()
    assert compile_filter('ip.src == "10.0.0.1" and tcp.flags.syn == 1', catalog).matches(event)
    assert compile_filter("tcp.dstport == 80 && eth.type == 0x0800", catalog).matches(event)
    assert compile_filter('ip.addr == "10.0.0.2" and tcp.port == 40000', catalog).matches(event)
    assert compile_filter("virtio_net.gso_type == 0 and eth.addr == 52:54:00:12:34:56", catalog).matches(event)
    assert not compile_filter("udp or udp.port == 80", catalog).matches(event)
    assert event["tcp.port"] == [40000, 80] and event["ip.addr"] == ["10.0.0.1", "10.0.0.2"]
    declared = {spec.abbrev for spec in ETHERNET_FIELDS}
    assert {n.abbrev for tree in req.trees[1:] for n in tree.walk()} <= declared


# -- the same frames in Wireshark -----------------------------------------------------


def _pcap(frames):
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)  # LINKTYPE_ETHERNET
    for i, frame in enumerate(frames):
        out += struct.pack("<IIII", i + 1, 0, len(frame), len(frame)) + frame
    return out


def _collect(layers, out):
    for key, value in layers.items():
        if isinstance(value, dict):
            _collect(value, out)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                _collect(item, out)
        elif isinstance(value, str):
            out.setdefault(key, []).append(value)
        elif isinstance(value, list):
            out.setdefault(key, []).extend(v for v in value if isinstance(v, str))


def _same(mine, theirs: str) -> bool:
    if isinstance(mine, bool):
        return theirs in (("1", "True") if mine else ("0", "False"))
    if isinstance(mine, int):
        return int(theirs, 0) == mine
    if isinstance(mine, bytes):
        return bytes.fromhex(theirs.replace(":", "")) == mine
    return theirs == mine


WIRESHARK_FRAMES = [
    arp_request(),
    bytes(Ether(dst=GUEST_MAC, src=HOST_MAC) / ARP(op=2, hwsrc=HOST_MAC, psrc="10.0.0.2", hwdst=GUEST_MAC,
                                                   pdst="10.0.0.1") / (b"\0" * 18)),  # padded to 60
    tcp_syn(),
    bytes(E() / IP(src="192.168.1.5", dst="8.8.8.8", ttl=3, tos=0x10) /
          TCP(sport=33333, dport=44444, flags="PA", seq=7, ack=9, window=512) / b"hello wireshark"),
    bytes(E() / IP(src="10.1.1.1", dst="10.1.1.2") / UDP(sport=40000, dport=40001) / b"payload!"),
    bytes(E() / IP(src="10.1.1.1", dst="10.1.1.2") / UDP(sport=1234, dport=53) / (b"\x12\x34" * 6)),
    bytes(E() / IP(src="10.0.0.9", dst="10.0.0.10") / ICMP(type=8, id=1, seq=2) / (b"p" * 56)),
    bytes(Ether(src=GUEST_MAC, dst=HOST_MAC) / Dot1Q(vlan=42, prio=5) / IP(src="1.2.3.4", dst="5.6.7.8") /
          UDP(sport=9999, dport=8888) / b"vlan"),
    bytes(E() / IPv6(src="fe80::1", dst="ff02::1", hlim=255) / ICMPv6EchoRequest(id=5, seq=6) / b"six"),
    bytes(E() / IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(sport=5555, dport=6666, flags="A") / b"v6"),
    bytes(E() / IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() /
          UDP(sport=1000, dport=2000) / b"ext"),
    bytes(E() / IP(src="1.1.1.1", dst="2.2.2.2", flags="MF", id=77) / UDP(sport=1, dport=2) / (b"f" * 24)),
    bytes(E() / IP(src="1.1.1.1", dst="2.2.2.2", frag=3, id=77) / (b"g" * 16)),
    bytes(Dot3(dst=HOST_MAC, src=GUEST_MAC) / LLC() / b"llc data"),
    bytes(E(type=0x88CC) / (b"\0" * 46)),
]


@pytest.mark.tshark
def test_every_ethernet_field_has_wireshark_value(tmp_path):
    tshark = require_tool("tshark")
    path = tmp_path / "frames.pcap"
    path.write_bytes(_pcap(WIRESHARK_FRAMES))
    out = subprocess.run([tshark, "-n", "-r", str(path), "-T", "json"], capture_output=True, text=True, check=True,
                         timeout=120).stdout
    packets = json.loads(out)
    assert len(packets) == len(WIRESHARK_FRAMES)
    compared = set()
    for frame, packet in zip(WIRESHARK_FRAMES, packets, strict=True):
        theirs: dict[str, list[str]] = {}
        _collect(packet["_source"]["layers"], theirs)
        trees, problems = frame_trees(frame)
        assert problems == []
        for tree in trees:
            node: Field
            for node in tree.walk():
                if node.value is None:
                    assert node.abbrev in packet["_source"]["layers"] or node.abbrev in theirs or \
                        any(k.startswith(node.abbrev + ".") for k in theirs), node.abbrev
                    continue
                assert node.abbrev in theirs, (frame_summary(frame), node.abbrev)
                assert any(_same(node.value, v) for v in theirs[node.abbrev]), \
                    (frame_summary(frame), node.abbrev, node.value, theirs[node.abbrev])
                compared.add(node.abbrev)
    declared = {s.abbrev for s in ETHERNET_FIELDS if s.kind != "none"} - set(HIDDEN_FIELDS)
    assert declared <= compared, declared - compared

    # the hidden either-way fields: tshark -T fields prints them, -T json does not
    names = list(HIDDEN_FIELDS)
    out = subprocess.run([tshark, "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,",
                          *(a for n in names for a in ("-e", n))], capture_output=True, text=True, check=True,
                         timeout=120).stdout.splitlines()
    for frame, line in zip(WIRESHARK_FRAMES, out, strict=True):
        mine = decode_request(TX, hdr() + frame).filter_values()
        for name, column in zip(names, line.split("\t"), strict=True):
            theirs = column.split(",") if column else []
            assert [str(v) for v in mine.get(name, [])] == theirs, (frame_summary(frame), name)
