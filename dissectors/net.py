"""Network device layouts (virtio 1.4, 5.1): packet header, control virtqueue, configuration.

Layers and their context parameters:

- ``virtio_net.hdr`` (prefix ``virtio_net``): ``struct virtio_net_hdr`` before every
  packet on the receiveqs and transmitqs (5.1.9). Its size depends on the negotiated
  device features, read from the parameter ``features`` (int, negotiated feature bits,
  bits above 63 allowed); without ``features`` the header is the VIRTIO_F_VERSION_1
  one (12 bytes), or the legacy 10-byte one when ``legacy`` is true.
  :func:`net_hdr_size` gives the size, so the packet starts right after it.
- ``virtio_net.ctrl``: the device-readable part of a controlq buffer: ``class``,
  ``command`` and the command-specific-data (5.1.9.5).
- ``virtio_net.ctrl_ack``: the device-writable part: the ``ack`` byte and the
  command-specific-result. The result's layout depends on the command, given by
  the parameters ``ctrl_class`` and ``ctrl_command``; without them it is raw bytes.
- ``virtio_net.config``: ``struct virtio_net_config`` (5.1.4); fields after ``mac``
  exist only with some features, so the layout takes as many as the data holds.

Flow filter and IPsec objects (5.1.9.6, 5.1.9.7) travel in admin commands, not on
the network device's own virtqueues, and are not declared here.
"""

from __future__ import annotations

from typing import Any

from construct import (
    Array,
    Bytes,
    Enum,
    GreedyBytes,
    GreedyRange,
    Hex,
    If,
    Padded,
    Struct,
    Switch,
)

from .layers import Layer, register
from .tree import Field
from .types import Bitmask, MacAddress, enum_int, enum_name, le16, le32, le64, more_data, u8

# 5.1.3 Feature bits that shape the header (and VIRTIO_F_VERSION_1, 6 "Reserved Feature Bits").
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_F_VERSION_1 = 32
VIRTIO_NET_F_HASH_REPORT = 57
VIRTIO_NET_F_GUEST_UDP_TUNNEL_GSO = 65
VIRTIO_NET_F_HOST_UDP_TUNNEL_GSO = 67
VIRTIO_NET_F_OUT_NET_HEADER = 69
VIRTIO_NET_F_IPSEC = 70

# 5.1.9 Device Operation: struct virtio_net_hdr flags
HDR_FLAGS = {
    "NEEDS_CSUM": 1,
    "DATA_VALID": 2,
    "RSC_INFO": 4,
    "UDP_TUNNEL_CSUM": 8,
    "SECURITY": 16,
    "SECURITY_ERR": 32,
    "SECURITY_SA_SOFT_EXPIRY_WARN": 64,
}
VIRTIO_NET_HDR_F_NEEDS_CSUM = HDR_FLAGS["NEEDS_CSUM"]
VIRTIO_NET_HDR_F_SECURITY = HDR_FLAGS["SECURITY"]

# 5.1.9: gso_type is a GSO protocol in the low bits, optionally ORed with one UDP
# tunnel bit and with the ECN bit.
GSO_PROTOCOLS = {"NONE": 0, "TCPV4": 1, "UDP": 3, "TCPV6": 4, "UDP_L4": 5}
GSO_TUNNEL_BITS = {"UDP_TUNNEL_IPV4": 0x20, "UDP_TUNNEL_IPV6": 0x40}
VIRTIO_NET_HDR_GSO_ECN = 0x80


def _gso_type_names() -> dict[str, int]:
    """Every gso_type a header can carry, named as the spec ORs the macros together."""
    names: dict[str, int] = {}
    for proto, value in GSO_PROTOCOLS.items():
        for tunnel, tbit in [("", 0), *GSO_TUNNEL_BITS.items()]:
            for ecn in (0, VIRTIO_NET_HDR_GSO_ECN):
                parts = [f"VIRTIO_NET_HDR_GSO_{proto}"]
                if tunnel:
                    parts.append(f"VIRTIO_NET_HDR_GSO_{tunnel}")
                if ecn:
                    parts.append("VIRTIO_NET_HDR_GSO_ECN")
                names["|".join(parts)] = value | tbit | ecn
    return names


GSO_TYPE_NAMES = _gso_type_names()

# 5.1.9.4.4 Hash reporting for incoming packets
HASH_REPORT_NAMES = {
    "VIRTIO_NET_HASH_REPORT_NONE": 0,
    "VIRTIO_NET_HASH_REPORT_IPv4": 1,
    "VIRTIO_NET_HASH_REPORT_TCPv4": 2,
    "VIRTIO_NET_HASH_REPORT_UDPv4": 3,
    "VIRTIO_NET_HASH_REPORT_IPv6": 4,
    "VIRTIO_NET_HASH_REPORT_TCPv6": 5,
    "VIRTIO_NET_HASH_REPORT_UDPv6": 6,
    "VIRTIO_NET_HASH_REPORT_IPv6_EX": 7,
    "VIRTIO_NET_HASH_REPORT_TCPv6_EX": 8,
    "VIRTIO_NET_HASH_REPORT_UDPv6_EX": 9,
}

# 5.1.9.4.2.1 Supported/enabled hash types (VIRTIO_NET_HASH_TYPE_*)
HASH_TYPES = {
    "IPv4": 1 << 0,
    "TCPv4": 1 << 1,
    "UDPv4": 1 << 2,
    "IPv6": 1 << 3,
    "TCPv6": 1 << 4,
    "UDPv6": 1 << 5,
    "IP_EX": 1 << 6,
    "TCP_EX": 1 << 7,
    "UDP_EX": 1 << 8,
}

# 5.1.9.4.3.2 Encapsulation types supported/enabled for inner header hash (VIRTIO_NET_HASH_TUNNEL_TYPE_*)
HASH_TUNNEL_TYPES = {
    "GRE_2784": 1 << 0,
    "GRE_2890": 1 << 1,
    "GRE_7676": 1 << 2,
    "GRE_UDP": 1 << 3,
    "VXLAN": 1 << 4,
    "VXLAN_GPE": 1 << 5,
    "GENEVE": 1 << 6,
    "IPIP": 1 << 7,
    "NVGRE": 1 << 8,
}

# 5.1.7 Device resource objects (the IPsec header names an SA resource object)
RESOURCE_OBJ_NAMES = {
    "VIRTIO_NET_RESOURCE_OBJ_FF_GROUP": 0x0200,
    "VIRTIO_NET_RESOURCE_OBJ_FF_CLASSIFIER": 0x0201,
    "VIRTIO_NET_RESOURCE_OBJ_FF_RULE": 0x0202,
    "VIRTIO_NET_RESOURCE_OBJ_IPSEC_OUTB_SA": 0x0203,
    "VIRTIO_NET_RESOURCE_OBJ_IPSEC_INB_SA": 0x0204,
}

# 5.1.4 Device configuration layout: status bits
CONFIG_STATUS = {"LINK_UP": 1, "ANNOUNCE": 2}

# 5.1.9.5 Control Virtqueue: ack values
VIRTIO_NET_OK = 0
VIRTIO_NET_ERR = 1

# 5.1.9.5 classes and their commands, in the order the spec defines them
# (5.1.9.5.1 RX, .2 MAC, .3 VLAN, .4 ANNOUNCE, .5 MQ, .9 GUEST_OFFLOADS, .10 NOTF_COAL,
# 5.1.9.4.3 HASH_TUNNEL, .11 STATS, .8 RSS context).
CTRL_CLASSES = {
    "VIRTIO_NET_CTRL_RX": 0,
    "VIRTIO_NET_CTRL_MAC": 1,
    "VIRTIO_NET_CTRL_VLAN": 2,
    "VIRTIO_NET_CTRL_ANNOUNCE": 3,
    "VIRTIO_NET_CTRL_MQ": 4,
    "VIRTIO_NET_CTRL_GUEST_OFFLOADS": 5,
    "VIRTIO_NET_CTRL_NOTF_COAL": 6,
    "VIRTIO_NET_CTRL_HASH_TUNNEL": 7,
    "VIRTIO_NET_CTRL_STATS": 8,
    "VIRTNET_RSS_CTX_CTRL": 9,
}
CTRL_COMMANDS: dict[int, dict[str, int]] = {
    0: {"VIRTIO_NET_CTRL_RX_PROMISC": 0, "VIRTIO_NET_CTRL_RX_ALLMULTI": 1, "VIRTIO_NET_CTRL_RX_ALLUNI": 2,
        "VIRTIO_NET_CTRL_RX_NOMULTI": 3, "VIRTIO_NET_CTRL_RX_NOUNI": 4, "VIRTIO_NET_CTRL_RX_NOBCAST": 5},
    1: {"VIRTIO_NET_CTRL_MAC_TABLE_SET": 0, "VIRTIO_NET_CTRL_MAC_ADDR_SET": 1},
    2: {"VIRTIO_NET_CTRL_VLAN_ADD": 0, "VIRTIO_NET_CTRL_VLAN_DEL": 1},
    3: {"VIRTIO_NET_CTRL_ANNOUNCE_ACK": 0},
    4: {"VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET": 0, "VIRTIO_NET_CTRL_MQ_RSS_CONFIG": 1,
        "VIRTIO_NET_CTRL_MQ_HASH_CONFIG": 2},
    5: {"VIRTIO_NET_CTRL_GUEST_OFFLOADS_SET": 0},
    6: {"VIRTIO_NET_CTRL_NOTF_COAL_TX_SET": 0, "VIRTIO_NET_CTRL_NOTF_COAL_RX_SET": 1,
        "VIRTIO_NET_CTRL_NOTF_COAL_VQ_SET": 2, "VIRTIO_NET_CTRL_NOTF_COAL_VQ_GET": 3},
    7: {"VIRTIO_NET_CTRL_HASH_TUNNEL_SET": 0},
    8: {"VIRTIO_NET_CTRL_STATS_QUERY": 0, "VIRTIO_NET_CTRL_STATS_GET": 1},
    9: {"VIRTNET_RSS_CTX_CTRL_CAP_GET": 0, "VIRTNET_RSS_CTX_CTRL_ADD": 1, "VIRTNET_RSS_CTX_CTRL_MOD": 2,
        "VIRTNET_RSS_CTX_CTRL_DEL": 3},
}

# 5.1.9.5.9.1 Setting Offloads State: offload bits of the le64 (note the UDP tunnel
# offloads sit at bits 46 and 47 here, not at their feature bits 65 and 66).
GUEST_OFFLOADS = {
    "GUEST_CSUM": 1 << 1,
    "GUEST_TSO4": 1 << 7,
    "GUEST_TSO6": 1 << 8,
    "GUEST_ECN": 1 << 9,
    "GUEST_UFO": 1 << 10,
    "GUEST_UDP_TUNNEL_GSO": 1 << 46,
    "GUEST_UDP_TUNNEL_GSO_CSUM": 1 << 47,
    "GUEST_USO4": 1 << 54,
    "GUEST_USO6": 1 << 55,
}

# 5.1.9.5.11.1 Query Statistic Capabilities: VIRTIO_NET_STATS_TYPE_* bits
STATS_TYPES = {
    "RX_BASIC": 1 << 0,
    "RX_CSUM": 1 << 1,
    "RX_GSO": 1 << 2,
    "RX_SPEED": 1 << 3,
    "TX_BASIC": 1 << 16,
    "TX_CSUM": 1 << 17,
    "TX_GSO": 1 << 18,
    "TX_SPEED": 1 << 19,
    "CVQ": 1 << 32,
}
# 5.1.9.5.11.2 Get Statistics: VIRTIO_NET_STATS_TYPE_REPLY_* and (5.1.9.5.11.3-11) the counters of each
STATS_REPLY_TYPES = {
    "VIRTIO_NET_STATS_TYPE_REPLY_RX_BASIC": 0,
    "VIRTIO_NET_STATS_TYPE_REPLY_RX_CSUM": 1,
    "VIRTIO_NET_STATS_TYPE_REPLY_RX_GSO": 2,
    "VIRTIO_NET_STATS_TYPE_REPLY_RX_SPEED": 3,
    "VIRTIO_NET_STATS_TYPE_REPLY_TX_BASIC": 16,
    "VIRTIO_NET_STATS_TYPE_REPLY_TX_CSUM": 17,
    "VIRTIO_NET_STATS_TYPE_REPLY_TX_GSO": 18,
    "VIRTIO_NET_STATS_TYPE_REPLY_TX_SPEED": 19,
    "VIRTIO_NET_STATS_TYPE_REPLY_CVQ": 32,
}
STATS_COUNTERS: dict[int, tuple[str, ...]] = {
    32: ("command_num", "ok_num"),  # 5.1.9.5.11.3 struct virtio_net_stats_cvq
    0: ("rx_notifications", "rx_packets", "rx_bytes", "rx_interrupts", "rx_drops",
        "rx_drop_overruns"),  # 5.1.9.5.11.4 struct virtio_net_stats_rx_basic
    16: ("tx_notifications", "tx_packets", "tx_bytes", "tx_interrupts", "tx_drops",
         "tx_drop_malformed"),  # 5.1.9.5.11.5 struct virtio_net_stats_tx_basic
    1: ("rx_csum_valid", "rx_needs_csum", "rx_csum_none", "rx_csum_bad"),  # 5.1.9.5.11.6
    17: ("tx_csum_none", "tx_needs_csum"),  # 5.1.9.5.11.7
    2: ("rx_gso_packets", "rx_gso_bytes", "rx_gso_packets_coalesced", "rx_gso_bytes_coalesced"),  # 5.1.9.5.11.8
    18: ("tx_gso_packets", "tx_gso_bytes", "tx_gso_segments", "tx_gso_segments_bytes",
         "tx_gso_packets_noseg", "tx_gso_bytes_noseg"),  # 5.1.9.5.11.9
    3: ("rx_packets_allowance_exceeded", "rx_bytes_allowance_exceeded"),  # 5.1.9.5.11.10
    19: ("tx_packets_allowance_exceeded", "tx_bytes_allowance_exceeded"),  # 5.1.9.5.11.11
}
STATS_REPLY_HDR_SIZE = 8  # 5.1.9.5.11.2: sizeof(struct virtio_net_stats_reply_hdr)


def net_hdr_size(features: int | None = None, *, legacy: bool = False) -> int:
    """Bytes of ``struct virtio_net_hdr`` for the negotiated ``features`` (5.1.9, 5.1.9.3.1).

    The header grows to the last field any negotiated feature needs: 32 bytes with
    OUT_NET_HEADER or IPSEC, 24 with a UDP_TUNNEL_GSO feature, 20 with HASH_REPORT,
    12 with VERSION_1 or MRG_RXBUF, else 10 (legacy, 5.1.9.1). ``features=None``
    means VERSION_1 alone, or nothing when ``legacy``.
    """
    if features is None:
        features = 0 if legacy else 1 << VIRTIO_F_VERSION_1

    def has(bit: int) -> bool:
        return bool(features >> bit & 1)

    if has(VIRTIO_NET_F_OUT_NET_HEADER) or has(VIRTIO_NET_F_IPSEC):
        return 32
    if has(VIRTIO_NET_F_HOST_UDP_TUNNEL_GSO) or has(VIRTIO_NET_F_GUEST_UDP_TUNNEL_GSO):
        return 24
    if has(VIRTIO_NET_F_HASH_REPORT):
        return 20
    if has(VIRTIO_F_VERSION_1) or has(VIRTIO_NET_F_MRG_RXBUF):
        return 12
    return 10


def _hdr_size(ctx: Any) -> int:
    params = ctx._params
    return net_hdr_size(params.get("features"), legacy=bool(params.get("legacy")))


def _hdr_has(size: int) -> Any:
    return lambda ctx: _hdr_size(ctx) >= size


def _security(ctx: Any) -> bool:
    return bool(ctx.flags & VIRTIO_NET_HDR_F_SECURITY)


# 5.1.9 struct virtio_net_hdr (all shapes; 5.1.9.3.1 gives the size rule)
virtio_net_hdr = Struct(
    "flags" / Bitmask(u8, HDR_FLAGS) * "Flags",
    "gso_type" / Enum(u8, **GSO_TYPE_NAMES) * "GSO type",
    "hdr_len" / le16 * "Header length",
    "gso_size" / le16 * "GSO size",
    "csum_start" / le16 * "Checksum start (coalesced segments with RSC_INFO)",
    "csum_offset" / le16 * "Checksum offset (duplicated ACKs with RSC_INFO)",
    "num_buffers" / If(_hdr_has(12), le16) * "Number of buffers",
    "hash_value" / If(_hdr_has(20), Hex(le32)) * "Hash value",
    "hash_report" / If(_hdr_has(20), Enum(le16, **HASH_REPORT_NAMES)) * "Hash report",
    "padding_reserved" / If(_hdr_has(20), Bytes(2)) * "Padding (reserved)",
    "outer_th_offset" / If(_hdr_has(24), le16) * "Outer transport header offset",
    "inner_nh_offset" / If(_hdr_has(24), le16) * "Inner network header offset",
    "outer_nh_offset" / If(_hdr_has(32), le16) * "Outer network header offset",
    # The last 6 bytes are a union: the IPsec resource header when SECURITY is set.
    "padding_reserved_2" / If(lambda c: _hdr_size(c) >= 32 and not _security(c), Bytes(6)) * "Padding (reserved)",
    "ipsec_resource_hdr" / If(lambda c: _hdr_size(c) >= 32 and _security(c), Struct(
        "resource_id" / le32 * "Resource id",
        "resource_type" / Enum(le16, **RESOURCE_OBJ_NAMES) * "Resource type",
    )) * "IPsec resource header",
)


def _hdr_summary(tree: Field) -> str:
    p = tree.abbrev
    parts = ["net hdr"]
    flags = tree.find(f"{p}.flags")
    others = [c.label for c in flags.children if c.value is True and c.label != "NEEDS_CSUM"] if flags else []
    if others:  # NEEDS_CSUM shows as csum_start below
        parts.append("flags=" + "|".join(others))
    gso = tree.find(f"{p}.gso_type")
    parts.append("gso=" + enum_name(gso, "VIRTIO_NET_HDR_GSO_"))
    if gso is not None and gso.value:
        parts.append(f"gso_size={tree[p + '.gso_size']}")
    if flags is not None and flags.value & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        parts.append(f"csum_start={tree[p + '.csum_start']}")
    buffers = tree.find(f"{p}.num_buffers")
    if buffers is not None and buffers.value > 1:
        parts.append(f"num_buffers={buffers.value}")
    report = tree.find(f"{p}.hash_report")
    if report is not None and report.value:
        parts.append(f"hash={enum_name(report, 'VIRTIO_NET_HASH_REPORT_')}:0x{tree[p + '.hash_value']:08x}")
    return " ".join(parts)


# 5.1.9.5.7.1 struct rss_rq_id: bits 1 to 16 of a receive virtqueue index
RSS_RQ_ID = {"vq_index_1_16": 0x7FFF, "reserved": 0x8000}

# 5.1.9.5.7.1 struct virtio_net_rss_config
rss_config = Struct(
    "hash_types" / Bitmask(le32, HASH_TYPES) * "Hash types",
    "indirection_table_mask" / le16 * "Indirection table mask",
    "unclassified_queue" / Bitmask(le16, RSS_RQ_ID) * "Unclassified queue",
    "indirection_table" / Array(lambda c: c.indirection_table_mask + 1, Bitmask(le16, RSS_RQ_ID))
    * "Indirection table",
    "max_tx_vq" / le16 * "Max transmit virtqueues",
    "hash_key_length" / u8 * "Hash key length",
    "hash_key_data" / Bytes(lambda c: c.hash_key_length) * "Hash key data",
)

# 5.1.9.5.6.4 struct virtio_net_hash_config (laid out to match virtio_net_rss_config)
hash_config = Struct(
    "hash_types" / Bitmask(le32, HASH_TYPES) * "Hash types",
    "reserved" / Bytes(8) * "Reserved",
    "hash_key_length" / u8 * "Hash key length",
    "hash_key_data" / Bytes(lambda c: c.hash_key_length) * "Hash key data",
)


def _mac_table(label: str) -> Any:
    # 5.1.9.5.2 struct virtio_net_ctrl_mac: le32 entries, then entries MAC addresses
    return Struct(
        "entries" / le32 * "Entries",
        "macs" / Array(lambda c: c.entries, MacAddress()) * "MAC address",
    ) * label


# 5.1.9.5.10 struct virtio_net_ctrl_coal, and struct virtio_net_ctrl_coal_vq with its
# embedded coal shown flat, so max_packets/max_usecs have one abbreviation everywhere.
_COAL = ("max_packets" / le32 * "Max packets", "max_usecs" / le32 * "Max microseconds")
_COAL_VQ_HEAD = ("vq_index" / le16 * "Virtqueue index", "reserved" / Bytes(2) * "Reserved")

# The command-specific-data of every (class, command), 5.1.9.5.x
CTRL_DATA = {
    **{(0, cmd): Struct("on" / u8 * "On (1) / off (0)") for cmd in CTRL_COMMANDS[0].values()},  # 5.1.9.5.1
    (1, 0): Struct("unicast" / _mac_table("Unicast MAC table"),
                   "multicast" / _mac_table("Multicast MAC table")),  # 5.1.9.5.2 TABLE_SET
    (1, 1): Struct("mac" / MacAddress() * "MAC address"),  # 5.1.9.5.2 ADDR_SET
    (2, 0): Struct("vlan_id" / le16 * "VLAN id"),  # 5.1.9.5.3
    (2, 1): Struct("vlan_id" / le16 * "VLAN id"),
    (3, 0): Struct(),  # 5.1.9.5.4 ANNOUNCE_ACK has no data
    (4, 0): Struct("virtqueue_pairs" / le16 * "Virtqueue pairs"),  # 5.1.9.5.6
    (4, 1): rss_config,  # 5.1.9.5.7.1
    (4, 2): hash_config,  # 5.1.9.5.6.4
    (5, 0): Struct("offloads" / Bitmask(le64, GUEST_OFFLOADS) * "Offloads"),  # 5.1.9.5.9.1
    (6, 0): Struct(*_COAL),  # 5.1.9.5.10 TX_SET
    (6, 1): Struct(*_COAL),  # RX_SET
    (6, 2): Struct(*_COAL_VQ_HEAD, *_COAL),  # VQ_SET
    (6, 3): Struct(*_COAL_VQ_HEAD),  # VQ_GET: the device writes the coal after the ack
    (7, 0): Struct("enabled_tunnel_types" / Bitmask(le32, HASH_TUNNEL_TYPES) * "Enabled tunnel types"),  # 5.1.9.4.3
    (8, 0): Struct(),  # 5.1.9.5.11.1 STATS_QUERY: the capabilities come back as the result
    (8, 1): Struct("stats" / GreedyRange(Struct(  # 5.1.9.5.11.2 struct virtio_net_ctrl_queue_stats
        "vq_index" / le16 * "Virtqueue index",
        "reserved" / Bytes(6) * "Reserved",
        "types_bitmap" / Bitmask(le64, STATS_TYPES) * "Types bitmap",
    )) * "Queue statistics request"),
    (9, 0): Struct(),  # 5.1.9.5.8.1 CAP_GET: struct virtnet_rss_ctx_cap comes back as the result
    (9, 1): Struct("rss_ctx_id" / le16 * "RSS context id", "reserved" / Bytes(6) * "Reserved",
                   "rss" / rss_config * "RSS configuration"),  # 5.1.9.5.8.2 struct virtnet_rss_ctx_add_modify
    (9, 2): Struct("rss_ctx_id" / le16 * "RSS context id", "reserved" / Bytes(6) * "Reserved",
                   "rss" / rss_config * "RSS configuration"),
    (9, 3): Struct("rss_ctx_id" / le16 * "RSS context id"),  # 5.1.9.5.8.2 struct virtnet_rss_ctx_del
}


def _class(ctx: Any) -> int:
    return enum_int(ctx["class"], CTRL_CLASSES)


def _class_command(ctx: Any) -> tuple[int, int]:
    cls = _class(ctx)
    return cls, enum_int(ctx.command, CTRL_COMMANDS.get(cls))


# 5.1.9.5 struct virtio_net_ctrl, device-readable part: class, command, command-specific-data
virtio_net_ctrl = Struct(
    "class" / Enum(u8, **CTRL_CLASSES) * "Class",
    "command" / Switch(_class,
                       {cls: Enum(u8, **cmds) for cls, cmds in CTRL_COMMANDS.items()}, default=u8) * "Command",
    "data" / Switch(_class_command, CTRL_DATA, default=Struct("unknown" / GreedyBytes * "Unknown data"))
    * "Command-specific data",
)


def _stats_counters(type_: int) -> Any:
    return Struct(*[name / le64 for name in STATS_COUNTERS[type_]])


# 5.1.9.5.11.2 a statistics reply: struct virtio_net_stats_reply_hdr, then the counters of its type;
# `size` counts the header too, so the counters take size - 8 bytes.
stats_reply = Struct(
    "type" / Enum(u8, **STATS_REPLY_TYPES) * "Type",
    "reserved" / Bytes(1) * "Reserved",
    "vq_index" / le16 * "Virtqueue index",
    "reserved1" / Bytes(2) * "Reserved",
    "size" / le16 * "Size",
    "counters" / Padded(
        lambda c: max(c.size - STATS_REPLY_HDR_SIZE, 0),
        Switch(lambda c: enum_int(c.type, STATS_REPLY_TYPES), {t: _stats_counters(t) for t in STATS_COUNTERS},
               default=Struct("unknown" / GreedyBytes * "Unknown counters")),
    ) * "Counters",
)

# 5.1.9.5 command-specific-result, after the ack, per (class, command)
CTRL_RESULT = {
    (6, 3): Struct(*_COAL),  # 5.1.9.5.10 NOTF_COAL_VQ_GET: struct virtio_net_ctrl_coal
    (8, 0): Struct("supported_stats_types" / Bitmask(le64, STATS_TYPES)
                   * "Supported statistics types"),  # 5.1.9.5.11.1 struct virtio_net_stats_capabilities
    (8, 1): Struct("stats" / GreedyRange(stats_reply) * "Statistics reply"),  # 5.1.9.5.11.2
    (9, 0): Struct("max_rss_contexts" / le16 * "Max RSS contexts"),  # 5.1.9.5.8.1 struct virtnet_rss_ctx_cap
}


def _result_key(ctx: Any) -> tuple[int | None, int | None]:
    return ctx._params.get("ctrl_class"), ctx._params.get("ctrl_command")


# 5.1.9.5 struct virtio_net_ctrl, device-writable part: ack, then command-specific-result
virtio_net_ctrl_ack = Struct(
    "ack" / Enum(u8, VIRTIO_NET_OK=VIRTIO_NET_OK, VIRTIO_NET_ERR=VIRTIO_NET_ERR) * "Ack",
    "result" / If(more_data("result"), Switch(
        _result_key, CTRL_RESULT, default=Struct("unknown" / GreedyBytes * "Unknown result"),
    )) * "Command-specific result",
)


def _ctrl_summary(tree: Field) -> str:
    p = tree.abbrev
    cls = enum_name(tree.find(f"{p}.class"))
    cmd = enum_name(tree.find(f"{p}.command"), cls + "_")
    text = f"net ctrl {cls.removeprefix('VIRTIO_NET_CTRL_')} {cmd}"
    data = tree.find(f"{p}.data")
    leaves = [c for c in data.children if c.value is not None and not c.children] if data else []
    shown = [f"{c.abbrev.rsplit('.', 1)[1]}={c.display}" for c in leaves[:2] if not isinstance(c.value, bytes)]
    return " ".join([text, *shown])


def _ack_summary(tree: Field) -> str:
    return "net ctrl ack " + enum_name(tree.find(f"{tree.abbrev}.ack"), "VIRTIO_NET_")


# 5.1.4 struct virtio_net_config
virtio_net_config = Struct(
    "mac" / MacAddress() * "MAC address",
    "status" / If(more_data("status"), Bitmask(le16, CONFIG_STATUS)) * "Status",
    "max_virtqueue_pairs" / If(more_data("max_virtqueue_pairs"), le16) * "Max virtqueue pairs",
    "mtu" / If(more_data("mtu"), le16) * "MTU",
    "speed" / If(more_data("speed"), le32) * "Speed (Mbit/s, 0xffffffff unknown)",
    # 5.1.4 gives 0x01 full / 0x00 half, its normative part the reverse; 0xff is unknown.
    "duplex" / If(more_data("duplex"), u8) * "Duplex",
    "rss_max_key_size" / If(more_data("rss_max_key_size"), u8) * "RSS max key size",
    "rss_max_indirection_table_length" / If(more_data("rss_max_indirection_table_length"), le16)
    * "RSS max indirection table length",
    "supported_hash_types" / If(more_data("supported_hash_types"), Bitmask(le32, HASH_TYPES))
    * "Supported hash types",
    "supported_tunnel_types" / If(more_data("supported_tunnel_types"), Bitmask(le32, HASH_TUNNEL_TYPES))
    * "Supported tunnel types",
)
NET_CONFIG_SIZE = 28  # 5.1.4: every field present


def _config_summary(tree: Field) -> str:
    p = tree.abbrev
    text = f"net config mac={tree[p + '.mac']}"
    status = tree.find(f"{p}.status")
    if status is not None:
        text += " link=" + ("up" if status.value & CONFIG_STATUS["LINK_UP"] else "down")
    return text


register(Layer("virtio_net.hdr", virtio_net_hdr, "Virtio network packet header", "virtio 1.4, 5.1.9",
               prefix="virtio_net", summary=_hdr_summary))
register(Layer("virtio_net.ctrl", virtio_net_ctrl, "Virtio network control command", "virtio 1.4, 5.1.9.5",
               summary=_ctrl_summary))
register(Layer("virtio_net.ctrl_ack", virtio_net_ctrl_ack, "Virtio network control ack", "virtio 1.4, 5.1.9.5",
               summary=_ack_summary))
register(Layer("virtio_net.config", virtio_net_config, "Virtio network device configuration", "virtio 1.4, 5.1.4",
               summary=_config_summary))
