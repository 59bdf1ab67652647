"""Network device layouts against virtio 1.4, 5.1: header shapes, control queue, configuration."""

from __future__ import annotations

import json
import struct

import pytest
from construct import Array, GreedyRange, IfThenElse, Padded, Pass, Struct, Switch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run_vqtrace
from vqtrace.dissectors import DissectError, all_layers, dissect, get_layer, parse
from vqtrace.dissectors.net import net_hdr_size
from vqtrace.dissectors.walk import leaf_spec, unwrap_name

VERSION_1 = 1 << 32
MRG_RXBUF = 1 << 15
HASH_REPORT = 1 << 57
GUEST_UDP_TUNNEL_GSO = 1 << 65
HOST_UDP_TUNNEL_GSO = 1 << 67
OUT_NET_HEADER = 1 << 69
IPSEC = 1 << 70


def spans(tree):
    """(offset, length) of the first node of each abbreviation (an array before its elements)."""
    out: dict[str, tuple[int, int]] = {}
    for node in tree.walk():
        out.setdefault(node.abbrev, (node.offset, node.length))
    return out


# --- struct virtio_net_hdr (5.1.9) -------------------------------------------------------------

@pytest.mark.parametrize(("features", "legacy", "size"), [
    (None, False, 12),  # no features given: a VIRTIO_F_VERSION_1 device
    (None, True, 10),
    (0, False, 10),  # legacy without MRG_RXBUF (5.1.9.1): 2 bytes shorter
    (MRG_RXBUF, False, 12),
    (VERSION_1, False, 12),
    (VERSION_1 | HASH_REPORT, False, 20),  # 5.1.9.3.1: 20 bytes with HASH_REPORT
    (VERSION_1 | GUEST_UDP_TUNNEL_GSO, False, 24),
    (VERSION_1 | HOST_UDP_TUNNEL_GSO | HASH_REPORT, False, 24),  # 24 with UDP_TUNNEL_GSO
    (VERSION_1 | OUT_NET_HEADER, False, 32),  # 32 with OUT_NET_HEADER or IPSEC
    (VERSION_1 | IPSEC | HASH_REPORT, False, 32),
])
def test_header_size_follows_negotiated_features(features, legacy, size):
    assert net_hdr_size(features, legacy=legacy) == size
    params = {"legacy": legacy} if features is None else {"features": features}
    raw = bytes(range(1, 41))
    tree = dissect("virtio_net.hdr", raw, params=params)
    assert tree.length == size
    assert max(node.offset + node.length for node in tree.walk()) == size


def test_header_field_offsets_in_the_largest_shape():
    raw = bytes(32)
    tree = dissect("virtio_net.hdr", raw, params={"features": VERSION_1 | OUT_NET_HEADER})
    assert spans(tree) == {
        "virtio_net": (0, 32),
        "virtio_net.flags": (0, 1),
        **{f"virtio_net.flags.{name}": (0, 1) for name in (
            "needs_csum", "data_valid", "rsc_info", "udp_tunnel_csum", "security", "security_err",
            "security_sa_soft_expiry_warn")},
        "virtio_net.gso_type": (1, 1),
        "virtio_net.hdr_len": (2, 2),
        "virtio_net.gso_size": (4, 2),
        "virtio_net.csum_start": (6, 2),
        "virtio_net.csum_offset": (8, 2),
        "virtio_net.num_buffers": (10, 2),
        "virtio_net.hash_value": (12, 4),
        "virtio_net.hash_report": (16, 2),
        "virtio_net.padding_reserved": (18, 2),
        "virtio_net.outer_th_offset": (20, 2),
        "virtio_net.inner_nh_offset": (22, 2),
        "virtio_net.outer_nh_offset": (24, 2),
        "virtio_net.padding_reserved_2": (26, 6),
    }


def test_ipsec_resource_header_replaces_the_padding_when_security_is_set():
    raw = struct.pack("<BB5H I2H 2H H IH", 16, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x1234, 0x0203)
    tree = dissect("virtio_net.hdr", raw, params={"features": VERSION_1 | IPSEC})
    assert tree["virtio_net.flags.security"] is True
    assert "virtio_net.padding_reserved_2" not in tree
    assert spans(tree)["virtio_net.ipsec_resource_hdr.resource_id"] == (26, 4)
    assert tree["virtio_net.ipsec_resource_hdr.resource_id"] == 0x1234
    assert tree.find("virtio_net.ipsec_resource_hdr.resource_type").display == \
        "VIRTIO_NET_RESOURCE_OBJ_IPSEC_OUTB_SA (515)"


def test_flag_and_gso_values_match_the_spec():
    hdr = get_layer("virtio_net.hdr")
    flags = hdr.struct.subcons[0].subcon.flags
    assert flags == {"NEEDS_CSUM": 1, "DATA_VALID": 2, "RSC_INFO": 4, "UDP_TUNNEL_CSUM": 8, "SECURITY": 16,
                     "SECURITY_ERR": 32, "SECURITY_SA_SOFT_EXPIRY_WARN": 64}
    gso = hdr.struct.subcons[1].subcon.encmapping
    assert gso["VIRTIO_NET_HDR_GSO_NONE"] == 0
    assert gso["VIRTIO_NET_HDR_GSO_TCPV4"] == 1
    assert gso["VIRTIO_NET_HDR_GSO_UDP"] == 3
    assert gso["VIRTIO_NET_HDR_GSO_TCPV6"] == 4
    assert gso["VIRTIO_NET_HDR_GSO_UDP_L4"] == 5
    assert gso["VIRTIO_NET_HDR_GSO_TCPV6|VIRTIO_NET_HDR_GSO_ECN"] == 0x84
    assert gso["VIRTIO_NET_HDR_GSO_UDP_L4|VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV6"] == 0x45
    # 5.1.9.2: "gso_type will be VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4 = 0x21"
    assert gso["VIRTIO_NET_HDR_GSO_TCPV4|VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4"] == 0x21
    report = hdr.struct.subcons[8].subcon.subcon.thensubcon.encmapping
    assert report["VIRTIO_NET_HASH_REPORT_NONE"] == 0
    assert report["VIRTIO_NET_HASH_REPORT_UDPv4"] == 3
    assert report["VIRTIO_NET_HASH_REPORT_UDPv6_EX"] == 9


def test_tx_header_before_an_ethernet_frame():
    # 5.1.9.2 note: a partially checksummed TCP/IPv4 packet: csum_start 14+20 = 34, csum_offset 16.
    frame = bytes.fromhex("ffffffffffff525400123456 0800") + bytes(20) + bytes(20)
    raw = struct.pack("<BBHHHHH", 1, 1, 54, 1448, 34, 16, 0) + frame
    tree = dissect("virtio_net.hdr", raw, params={"features": VERSION_1})
    assert tree.length == net_hdr_size(VERSION_1) == 12
    assert raw[tree.length:] == frame
    values = tree.values()
    assert values["virtio_net.flags.needs_csum"] is True
    assert values["virtio_net.gso_type"] == 1
    assert (values["virtio_net.hdr_len"], values["virtio_net.gso_size"]) == (54, 1448)
    assert (values["virtio_net.csum_start"], values["virtio_net.csum_offset"]) == (34, 16)
    assert values["virtio_net.num_buffers"] == 0
    assert tree.find("virtio_net.gso_type").display == "VIRTIO_NET_HDR_GSO_TCPV4 (1)"
    assert get_layer("virtio_net.hdr").summary(tree) == "net hdr gso=TCPV4 gso_size=1448 csum_start=34"


def test_geneve_tunnel_example_of_the_spec():
    # 5.1.9.2 note: TCP/IPv4 over Geneve/UDP/IPv4: csum_start 84, inner_nh_offset 62, outer_th_offset 42.
    layer = get_layer("virtio_net.hdr")
    params = {"features": VERSION_1 | HOST_UDP_TUNNEL_GSO}
    values = {"flags": 1, "gso_type": 0x21, "hdr_len": 104, "gso_size": 1400, "csum_start": 84,
              "csum_offset": 16, "num_buffers": 0, "hash_value": 0, "hash_report": 0,
              "padding_reserved": bytes(2), "outer_th_offset": 42, "inner_nh_offset": 62,
              "outer_nh_offset": None, "padding_reserved_2": None, "ipsec_resource_hdr": None}
    raw = layer.build(values, params)
    assert len(raw) == 24
    assert raw[20:24] == struct.pack("<HH", 42, 62)
    tree = layer.dissect(raw, params=params)
    assert tree.find("virtio_net.gso_type").display == \
        "VIRTIO_NET_HDR_GSO_TCPV4|VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4 (33)"
    assert tree["virtio_net.outer_th_offset"] == 42 and tree["virtio_net.inner_nh_offset"] == 62
    assert layer.summary(tree) == "net hdr gso=TCPV4|UDP_TUNNEL_IPV4 gso_size=1400 csum_start=84"


def test_hash_report_header_round_trip_and_fast_parse():
    layer = get_layer("virtio_net.hdr")
    params = {"features": VERSION_1 | HASH_REPORT}
    values = {"flags": 2, "gso_type": "VIRTIO_NET_HDR_GSO_NONE", "hdr_len": 0, "gso_size": 0,
              "csum_start": 0, "csum_offset": 0, "num_buffers": 3, "hash_value": 0xCAFEF00D,
              "hash_report": "VIRTIO_NET_HASH_REPORT_TCPv6", "padding_reserved": b"\0\0",
              "outer_th_offset": None, "inner_nh_offset": None, "outer_nh_offset": None,
              "padding_reserved_2": None, "ipsec_resource_hdr": None}
    raw = layer.build(values, params)
    assert raw == struct.pack("<BB5HIHH", 2, 0, 0, 0, 0, 0, 3, 0xCAFEF00D, 5, 0)
    tree = layer.dissect(raw, params=params)
    assert tree["virtio_net.hash_report"] == 5
    assert tree["virtio_net.flags.data_valid"] is True
    assert layer.summary(tree) == "net hdr flags=DATA_VALID gso=NONE num_buffers=3 hash=TCPv6:0xcafef00d"
    fast = parse("virtio_net.hdr", raw, params)
    assert fast.hash_value == 0xCAFEF00D and fast.num_buffers == 3


def test_legacy_header_has_no_num_buffers():
    raw = struct.pack("<BBHHHH", 0, 0, 0, 0, 0, 0) + b"\x45"
    tree = dissect("virtio_net.hdr", raw, params={"features": 0})
    assert "virtio_net.num_buffers" not in tree
    assert tree.length == 10


def test_truncated_header_names_layer_and_offset():
    with pytest.raises(DissectError) as info:
        dissect("virtio_net.hdr", bytes(11), params={"features": VERSION_1})
    assert info.value.layer == "virtio_net.hdr" and info.value.offset == 10
    assert "virtio_net.num_buffers needs 2 bytes, 1 left" in str(info.value)
    with pytest.raises(DissectError) as info:
        dissect("virtio_net.hdr", bytes(15), params={"features": VERSION_1 | HASH_REPORT})
    assert info.value.offset == 12


# --- control virtqueue (5.1.9.5) ---------------------------------------------------------------

def ctrl(cls: int, cmd: int, data: bytes = b""):
    return dissect("virtio_net.ctrl", bytes([cls, cmd]) + data)


def test_class_and_command_numbers_match_the_spec():
    expected = {
        (0, 0): "VIRTIO_NET_CTRL_RX_PROMISC", (0, 1): "VIRTIO_NET_CTRL_RX_ALLMULTI",
        (0, 2): "VIRTIO_NET_CTRL_RX_ALLUNI", (0, 3): "VIRTIO_NET_CTRL_RX_NOMULTI",
        (0, 4): "VIRTIO_NET_CTRL_RX_NOUNI", (0, 5): "VIRTIO_NET_CTRL_RX_NOBCAST",
        (1, 0): "VIRTIO_NET_CTRL_MAC_TABLE_SET", (1, 1): "VIRTIO_NET_CTRL_MAC_ADDR_SET",
        (2, 0): "VIRTIO_NET_CTRL_VLAN_ADD", (2, 1): "VIRTIO_NET_CTRL_VLAN_DEL",
        (3, 0): "VIRTIO_NET_CTRL_ANNOUNCE_ACK",
        (4, 0): "VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET", (4, 1): "VIRTIO_NET_CTRL_MQ_RSS_CONFIG",
        (4, 2): "VIRTIO_NET_CTRL_MQ_HASH_CONFIG",
        (5, 0): "VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET",
        (6, 0): "VIRTIO_NET_CTRL_NOTF_COAL_TX_SET", (6, 1): "VIRTIO_NET_CTRL_NOTF_COAL_RX_SET",
        (6, 2): "VIRTIO_NET_CTRL_NOTF_COAL_VQ_SET", (6, 3): "VIRTIO_NET_CTRL_NOTF_COAL_VQ_GET",
        (7, 0): "VIRTIO_NET_CTRL_HASH_TUNNEL_SET",
        (8, 0): "VIRTIO_NET_CTRL_STATS_QUERY", (8, 1): "VIRTIO_NET_CTRL_STATS_GET",
        (9, 0): "VIRTNET_RSS_CTX_CTRL_CAP_GET", (9, 1): "VIRTNET_RSS_CTX_CTRL_ADD",
        (9, 2): "VIRTNET_RSS_CTX_CTRL_MOD", (9, 3): "VIRTNET_RSS_CTX_CTRL_DEL",
    }
    classes = {0: "VIRTIO_NET_CTRL_RX", 1: "VIRTIO_NET_CTRL_MAC", 2: "VIRTIO_NET_CTRL_VLAN",
               3: "VIRTIO_NET_CTRL_ANNOUNCE", 4: "VIRTIO_NET_CTRL_MQ", 5: "VIRTIO_NET_CTRL_GUEST_OFFLOADS",
               6: "VIRTIO_NET_CTRL_NOTF_COAL", 7: "VIRTIO_NET_CTRL_HASH_TUNNEL", 8: "VIRTIO_NET_CTRL_STATS",
               9: "VIRTNET_RSS_CTX_CTRL"}
    for (cls, cmd), name in expected.items():
        tree = ctrl(cls, cmd, bytes(320))  # 20 statistics requests for STATS_GET
        assert tree.find("virtio_net.ctrl.class").display == f"{classes[cls]} ({cls})"
        assert tree.find("virtio_net.ctrl.command").display == f"{name} ({cmd})"


@pytest.mark.parametrize("cmd", range(6))
def test_rx_mode_commands_take_one_byte(cmd):
    tree = ctrl(0, cmd, b"\x01")
    assert tree["virtio_net.ctrl.data.on"] == 1
    assert spans(tree)["virtio_net.ctrl.data.on"] == (2, 1)


def test_mac_table_set_two_tables():
    data = (struct.pack("<I", 2) + bytes.fromhex("525400123456 525400abcdef")
            + struct.pack("<I", 1) + bytes.fromhex("01005e000001"))
    tree = ctrl(1, 0, data)
    values = tree.values()
    assert values["virtio_net.ctrl.data.unicast.entries"] == 2
    assert values["virtio_net.ctrl.data.unicast.macs"] == ["52:54:00:12:34:56", "52:54:00:ab:cd:ef"]
    assert values["virtio_net.ctrl.data.multicast.entries"] == 1
    assert values["virtio_net.ctrl.data.multicast.macs"] == "01:00:5e:00:00:01"
    assert spans(tree)["virtio_net.ctrl.data.multicast"] == (2 + 4 + 12, 10)
    assert get_layer("virtio_net.ctrl").summary(tree) == "net ctrl MAC TABLE_SET"


def test_mac_table_with_more_entries_than_data_is_an_error():
    data = struct.pack("<I", 5) + bytes.fromhex("525400123456 525400abcdef")
    with pytest.raises(DissectError) as info:
        ctrl(1, 0, data)
    err = info.value
    assert err.layer == "virtio_net.ctrl" and err.offset == 6
    assert "virtio_net.ctrl.data.unicast.macs has 5 entries of 6 bytes, 12 bytes left" in str(err)
    with pytest.raises(DissectError):  # a hostile count is refused before any loop
        ctrl(1, 0, struct.pack("<I", 0xFFFFFFFF))


def test_mac_addr_set_vlan_announce_and_vq_pairs():
    assert ctrl(1, 1, bytes.fromhex("525400000001"))["virtio_net.ctrl.data.mac"] == "52:54:00:00:00:01"
    assert ctrl(2, 0, struct.pack("<H", 100))["virtio_net.ctrl.data.vlan_id"] == 100
    assert ctrl(2, 1, struct.pack("<H", 4094))["virtio_net.ctrl.data.vlan_id"] == 4094
    announce = ctrl(3, 0)
    assert announce.find("virtio_net.ctrl.data").children == []
    pairs = ctrl(4, 0, struct.pack("<H", 4))
    assert pairs["virtio_net.ctrl.data.virtqueue_pairs"] == 4
    assert get_layer("virtio_net.ctrl").summary(pairs) == "net ctrl MQ VQ_PAIRS_SET virtqueue_pairs=4"


def test_rss_config_layout():
    key = bytes(range(40))
    # indirection_table_mask 3 -> 4 entries; vq_index_1_16 = 3 is virtqueue 6 (receiveq4), 5.1.9.5.7.1
    data = (struct.pack("<IHH", 0b111111, 3, 0) + struct.pack("<4H", 0, 1, 2, 3)
            + struct.pack("<HB", 4, 40) + key)
    tree = ctrl(4, 1, data)
    values = tree.values()
    assert values["virtio_net.ctrl.data.hash_types.tcpv4"] is True
    assert values["virtio_net.ctrl.data.hash_types.ip_ex"] is False
    assert values["virtio_net.ctrl.data.indirection_table_mask"] == 3
    assert values["virtio_net.ctrl.data.indirection_table"] == [0, 1, 2, 3]
    assert values["virtio_net.ctrl.data.indirection_table.vq_index_1_16"] == [0, 1, 2, 3]
    assert values["virtio_net.ctrl.data.max_tx_vq"] == 4
    assert values["virtio_net.ctrl.data.hash_key_data"] == key
    offsets = spans(tree)
    assert offsets["virtio_net.ctrl.data.unclassified_queue"] == (2 + 6, 2)
    assert offsets["virtio_net.ctrl.data.indirection_table"] == (2 + 8, 8)
    assert offsets["virtio_net.ctrl.data.max_tx_vq"] == (2 + 16, 2)
    assert offsets["virtio_net.ctrl.data.hash_key_data"] == (2 + 19, 40)


def test_hash_config_matches_the_rss_config_prefix():
    data = struct.pack("<I", 1 << 8) + bytes(8) + bytes([4]) + b"KEY!"
    tree = ctrl(4, 2, data)
    assert tree["virtio_net.ctrl.data.hash_types.udp_ex"] is True
    assert spans(tree)["virtio_net.ctrl.data.hash_key_length"] == (2 + 12, 1)
    assert tree["virtio_net.ctrl.data.hash_key_data"] == b"KEY!"


def test_guest_offloads_bits():
    bits = (1 << 1) | (1 << 7) | (1 << 46) | (1 << 55)
    tree = ctrl(5, 0, struct.pack("<Q", bits))
    values = tree.values()
    assert values["virtio_net.ctrl.data.offloads.guest_csum"] is True
    assert values["virtio_net.ctrl.data.offloads.guest_tso4"] is True
    assert values["virtio_net.ctrl.data.offloads.guest_udp_tunnel_gso"] is True  # bit 46 here, not 65
    assert values["virtio_net.ctrl.data.offloads.guest_uso6"] is True
    assert values["virtio_net.ctrl.data.offloads.guest_ufo"] is False


def test_notification_coalescing_commands():
    for cmd in (0, 1):
        tree = ctrl(6, cmd, struct.pack("<II", 15, 10))
        assert (tree["virtio_net.ctrl.data.max_packets"], tree["virtio_net.ctrl.data.max_usecs"]) == (15, 10)
    tree = ctrl(6, 2, struct.pack("<HHII", 2, 0, 8, 20))
    assert spans(tree)["virtio_net.ctrl.data.max_packets"] == (2 + 4, 4)
    assert tree["virtio_net.ctrl.data.vq_index"] == 2 and tree["virtio_net.ctrl.data.max_usecs"] == 20
    get = ctrl(6, 3, struct.pack("<HH", 1, 0))
    assert get["virtio_net.ctrl.data.vq_index"] == 1 and "virtio_net.ctrl.data.max_packets" not in get
    result = dissect("virtio_net.ctrl_ack", b"\x00" + struct.pack("<II", 8, 20),
                     params={"ctrl_class": 6, "ctrl_command": 3})
    assert result["virtio_net.ctrl_ack.result.max_packets"] == 8
    assert spans(result)["virtio_net.ctrl_ack.result.max_usecs"] == (5, 4)


def test_hash_tunnel_set_bits():
    tree = ctrl(7, 0, struct.pack("<I", (1 << 4) | (1 << 6)))
    assert tree["virtio_net.ctrl.data.enabled_tunnel_types.vxlan"] is True
    assert tree["virtio_net.ctrl.data.enabled_tunnel_types.geneve"] is True
    assert tree["virtio_net.ctrl.data.enabled_tunnel_types.nvgre"] is False


def test_statistics_query_and_get():
    assert ctrl(8, 0).find("virtio_net.ctrl.data").children == []
    caps = dissect("virtio_net.ctrl_ack", b"\x00" + struct.pack("<Q", (1 << 32) | (1 << 16) | 1),
                   params={"ctrl_class": 8, "ctrl_command": 0})
    assert caps["virtio_net.ctrl_ack.result.supported_stats_types.cvq"] is True
    assert caps["virtio_net.ctrl_ack.result.supported_stats_types.tx_basic"] is True
    assert caps["virtio_net.ctrl_ack.result.supported_stats_types.rx_csum"] is False

    request = ctrl(8, 1, struct.pack("<H6xQ", 0, 1) + struct.pack("<H6xQ", 4, 1 << 32))
    values = request.values()
    assert values["virtio_net.ctrl.data.stats.vq_index"] == [0, 4]
    assert values["virtio_net.ctrl.data.stats.types_bitmap.cvq"] == [False, True]

    rx_basic = struct.pack("<BBHHH", 0, 0, 0, 0, 8 + 6 * 8) + struct.pack("<6Q", 1, 2, 3, 4, 5, 6)
    cvq = struct.pack("<BBHHH", 32, 0, 4, 0, 8 + 2 * 8) + struct.pack("<2Q", 10, 9)
    unknown = struct.pack("<BBHHH", 99, 0, 0, 0, 8 + 4) + b"\xaa\xbb\xcc\xdd"
    reply = dissect("virtio_net.ctrl_ack", b"\x00" + rx_basic + cvq + unknown,
                    params={"ctrl_class": 8, "ctrl_command": 1})
    values = reply.values()
    assert values["virtio_net.ctrl_ack.result.stats.type"] == [0, 32, 99]
    assert values["virtio_net.ctrl_ack.result.stats.counters.rx_drop_overruns"] == 6
    assert values["virtio_net.ctrl_ack.result.stats.counters.ok_num"] == 9
    assert values["virtio_net.ctrl_ack.result.stats.counters.unknown"] == b"\xaa\xbb\xcc\xdd"
    assert spans(reply)["virtio_net.ctrl_ack.result.stats.counters.command_num"] == (1 + 56 + 8, 8)
    # a size smaller than the reply type's counters is a device bug: an error, not a guess
    short = struct.pack("<BBHHH", 32, 0, 4, 0, 8 + 8) + struct.pack("<2Q", 10, 9)
    with pytest.raises(DissectError) as info:
        dissect("virtio_net.ctrl_ack", b"\x00" + short, params={"ctrl_class": 8, "ctrl_command": 1})
    assert info.value.layer == "virtio_net.ctrl_ack"


def test_rss_context_commands():
    rss = struct.pack("<IHH", 2, 0, 1) + struct.pack("<H", 1) + struct.pack("<HB", 1, 0)
    add = ctrl(9, 1, struct.pack("<H6x", 1) + rss)
    assert add["virtio_net.ctrl.data.rss_ctx_id"] == 1
    assert spans(add)["virtio_net.ctrl.data.rss.hash_types"] == (2 + 8, 4)
    assert add["virtio_net.ctrl.data.rss.unclassified_queue.vq_index_1_16"] == 1
    assert ctrl(9, 2, struct.pack("<H6x", 2) + rss)["virtio_net.ctrl.data.rss_ctx_id"] == 2
    assert ctrl(9, 3, struct.pack("<H", 3))["virtio_net.ctrl.data.rss_ctx_id"] == 3
    cap = dissect("virtio_net.ctrl_ack", b"\x00\x08\x00", params={"ctrl_class": 9, "ctrl_command": 0})
    assert cap["virtio_net.ctrl_ack.result.max_rss_contexts"] == 8


def test_ack_values_and_unknown_results():
    ok = dissect("virtio_net.ctrl_ack", b"\x00")
    assert ok.find("virtio_net.ctrl_ack.ack").display == "VIRTIO_NET_OK (0)"
    assert "virtio_net.ctrl_ack.result" not in ok
    err = dissect("virtio_net.ctrl_ack", b"\x01")
    assert get_layer("virtio_net.ctrl_ack").summary(err) == "net ctrl ack ERR"
    raw = dissect("virtio_net.ctrl_ack", b"\x00\x01\x02")
    assert raw["virtio_net.ctrl_ack.result.unknown"] == b"\x01\x02"


def test_ctrl_round_trip_through_build():
    layer = get_layer("virtio_net.ctrl")
    values = {"class": "VIRTIO_NET_CTRL_MAC", "command": "VIRTIO_NET_CTRL_MAC_TABLE_SET",
              "data": {"unicast": {"entries": 1, "macs": ["52:54:00:00:00:02"]},
                       "multicast": {"entries": 0, "macs": []}}}
    raw = layer.build(values)
    assert raw == b"\x01\x00" + struct.pack("<I", 1) + bytes.fromhex("525400000002") + struct.pack("<I", 0)
    values = layer.dissect(raw).values()
    assert values["virtio_net.ctrl.data.unicast.macs"] == "52:54:00:00:00:02"
    assert values["virtio_net.ctrl.data.multicast.entries"] == 0
    fast = layer.parse(raw)
    assert fast.data.unicast.macs == ["52:54:00:00:00:02"]


def test_described_fields_name_classes_but_not_class_dependent_commands():
    # For display filters and the Lua plugin: a command number means a different command in
    # each class, so the static field description carries no names for it (the tree does).
    specs = {spec.abbrev: spec for spec in get_layer("virtio_net.ctrl").fields()}
    assert specs["virtio_net.ctrl.class"].value_names[9] == "VIRTNET_RSS_CTX_CTRL"
    assert specs["virtio_net.ctrl.command"].value_names == {}
    assert specs["virtio_net.ctrl.command"].kind == "uint8"
    assert specs["virtio_net.ctrl.data.unicast.macs"].kind == "string"
    assert specs["virtio_net.ctrl.data.hash_key_data"].kind == "bytes"
    ack = {spec.abbrev: spec for spec in get_layer("virtio_net.ctrl_ack").fields()}
    assert ack["virtio_net.ctrl_ack.ack"].value_names == {0: "VIRTIO_NET_OK", 1: "VIRTIO_NET_ERR"}
    assert ack["virtio_net.ctrl_ack.result.stats.type"].value_names[32] == "VIRTIO_NET_STATS_TYPE_REPLY_CVQ"


def test_unknown_class_keeps_its_bytes():
    tree = ctrl(42, 7, b"\x01\x02")
    assert tree.find("virtio_net.ctrl.class").display == "Unknown (42)"
    assert tree["virtio_net.ctrl.data.unknown"] == b"\x01\x02"
    assert get_layer("virtio_net.ctrl").summary(tree) == "net ctrl 42 7"


# --- struct virtio_net_config (5.1.4) ----------------------------------------------------------

def test_config_offsets_and_values():
    raw = (bytes.fromhex("525400123456") + struct.pack("<HHHIBBHII", 3, 8, 1500, 10000, 1, 40, 128,
                                                        0x1FF, 0x50))
    assert len(raw) == 28
    tree = dissect("virtio_net.config", raw)
    offsets = spans(tree)
    expected = {"mac": (0, 6), "status": (6, 2), "max_virtqueue_pairs": (8, 2), "mtu": (10, 2),
                "speed": (12, 4), "duplex": (16, 1), "rss_max_key_size": (17, 1),
                "rss_max_indirection_table_length": (18, 2), "supported_hash_types": (20, 4),
                "supported_tunnel_types": (24, 4)}
    for name, span in expected.items():
        assert offsets[f"virtio_net.config.{name}"] == span, name
    values = tree.values()
    assert values["virtio_net.config.status.link_up"] is True
    assert values["virtio_net.config.status.announce"] is True
    assert values["virtio_net.config.mtu"] == 1500
    assert values["virtio_net.config.supported_hash_types.udp_ex"] is True
    assert values["virtio_net.config.supported_tunnel_types.vxlan"] is True
    assert values["virtio_net.config.supported_tunnel_types.geneve"] is True
    assert get_layer("virtio_net.config").summary(tree) == "net config mac=52:54:00:12:34:56 link=up"


def test_short_config_space_has_fewer_fields_and_a_partial_field_is_an_error():
    tree = dissect("virtio_net.config", bytes.fromhex("525400123456 0000"))
    assert "virtio_net.config.status" in tree and "virtio_net.config.mtu" not in tree
    assert tree["virtio_net.config.status.link_up"] is False
    with pytest.raises(DissectError) as info:
        dissect("virtio_net.config", bytes(7))
    assert info.value.offset == 6 and "virtio_net.config.status" in str(info.value)


def test_config_round_trip():
    layer = get_layer("virtio_net.config")
    values = {"mac": "02:00:00:00:00:01", "status": 1, "max_virtqueue_pairs": 2, "mtu": None, "speed": None,
              "duplex": None, "rss_max_key_size": None, "rss_max_indirection_table_length": None,
              "supported_hash_types": None, "supported_tunnel_types": None}
    raw = layer.build(values)
    assert raw == bytes.fromhex("020000000001") + struct.pack("<HH", 1, 2)
    assert layer.dissect(raw)["virtio_net.config.max_virtqueue_pairs"] == 2


# --- every layer of the five devices ---------------------------------------------------------

MY_PREFIXES = ("virtio_net", "virtio_blk", "virtio_console", "virtio_balloon", "virtio_rng")
MY_LAYERS = [layer for layer in all_layers() if layer.name.split(".")[0] in MY_PREFIXES]


def leaf_kinds(con, abbrev: str, out: dict[str, set[str]]) -> dict[str, set[str]]:
    """Every leaf's kind, per abbreviation, over every Switch case and If arm (no merging)."""
    con, _, _ = unwrap_name(con)
    if isinstance(con, Struct):
        for sub in con.subcons:
            _, name, _ = unwrap_name(sub)
            if name:
                leaf_kinds(sub, f"{abbrev}.{name}", out)
    elif isinstance(con, Array | GreedyRange | Padded):
        leaf_kinds(con.subcon, abbrev, out)
    elif isinstance(con, Switch):
        for case in [*con.cases.values(), con.default]:
            leaf_kinds(case, abbrev, out)
    elif isinstance(con, IfThenElse):
        leaf_kinds(con.thensubcon, abbrev, out)
        leaf_kinds(con.elsesubcon, abbrev, out)
    elif con is not Pass:
        out.setdefault(abbrev, set()).add(leaf_spec(con, abbrev, "").kind)
    return out


def test_all_five_devices_have_layers_with_sections():
    devices = {layer.name.split(".")[0] for layer in MY_LAYERS}
    assert devices == set(MY_PREFIXES)
    for layer in MY_LAYERS:
        assert layer.section.startswith("virtio 1.4, 5."), layer.name
        assert layer.summary is not None, layer.name


@pytest.mark.parametrize("layer", MY_LAYERS, ids=lambda layer: layer.name)
def test_one_kind_per_abbreviation_inside_each_layer(layer):
    kinds = leaf_kinds(layer.struct, layer.prefix, {})
    assert kinds
    assert {abbrev: found for abbrev, found in kinds.items() if len(found) > 1} == {}


# --- the CLI ---------------------------------------------------------------------------------

def test_cli_decode_net_header_with_features():
    hex_hdr = "01 01 3600 a805 2200 1000 0000 efbeadde 0200 0000"
    result = run_vqtrace("decode", "virtio_net.hdr", "--param", f"features={VERSION_1 | HASH_REPORT:#x}",
                         *hex_hdr.split())
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "GSO type: VIRTIO_NET_HDR_GSO_TCPV4 (1)" in out
    assert "Checksum start (coalesced segments with RSC_INFO): 34" in out
    assert "Hash report: VIRTIO_NET_HASH_REPORT_TCPv4 (2)" in out
    result = run_vqtrace("decode", "virtio_net.hdr", "-T", "json", hex_hdr.replace(" ", ""))
    doc = json.loads(result.stdout)
    assert doc["fields"]["virtio_net.gso_size"] == 1448
    assert "virtio_net.hash_value" not in doc["fields"]  # 12-byte header without the features


def test_cli_decode_truncated_mac_table_is_one_line():
    result = run_vqtrace("decode", "virtio_net.ctrl", "0100 05000000 525400123456")
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0]
    assert "virtio_net.ctrl at offset 6" in lines[0] and "5 entries" in lines[0]


FEATURE_PARAMS = [{"features": 0}, {"features": VERSION_1 | HASH_REPORT}, {"features": VERSION_1 | IPSEC},
                  {"ctrl_class": 8, "ctrl_command": 1}, {"ctrl_class": 6, "ctrl_command": 3},
                  {"request_type": 15}, {"legacy": True}]


@pytest.mark.parametrize("layer", MY_LAYERS, ids=lambda layer: layer.name)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200), params=st.sampled_from(FEATURE_PARAMS))
def test_any_bytes_with_device_params_give_a_tree_or_a_dissect_error(layer, data, params):
    try:  # the fast path too: values or DissectError (it may stop quietly before a partial array entry)
        layer.parse(data, params)
    except DissectError as err:
        assert err.layer == layer.name
    try:
        tree = layer.dissect(data, params=params)
    except DissectError as err:
        assert err.layer == layer.name and 0 <= err.offset <= len(data)
        return
    assert all(n.offset >= 0 and n.offset + n.length <= len(data) for n in tree.walk())
    assert isinstance(layer.summary(tree), str)
