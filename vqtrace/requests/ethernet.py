"""Ethernet frames carried by virtio-net: a one-line summary (``struct``) and field trees (scapy).

The trees use Wireshark's own field abbreviations (checked against Wireshark 4.0's
``tshark -G fields``), so a display filter such as ``ip.src == 10.0.0.1`` or
``tcp.flags.syn == 1`` means in vqtrace what it means in Wireshark, where the plugin
hands the frame to Wireshark's ``eth`` dissector. The set is small on purpose:
:data:`ETHERNET_FIELDS` lists every field produced, with Wireshark's value
semantics (``ip.hdr_len`` in bytes, ``ip.flags`` the 3 flag bits shifted down,
``tcp.flags`` the low 12 bits). Wireshark's ``tcp.seq``/``tcp.ack`` are relative to
the conversation; a single frame gives the raw numbers, ``tcp.seq_raw``/``tcp.ack_raw``.

scapy is imported on first use of :func:`frame_trees` (``scapy.layers.l2``, ``inet``,
``inet6`` only: ``scapy.all`` costs a second); :func:`frame_summary` never imports it.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from typing import Any

from ..dissectors.tree import Field
from ..dissectors.walk import FieldSpec, format_bytes

ETH_HDR = 14
ETHERTYPES = {0x0800: "IPv4", 0x0806: "ARP", 0x86DD: "IPv6", 0x8100: "802.1Q Virtual LAN", 0x88A8: "802.1ad",
              0x88CC: "LLDP", 0x8035: "RARP", 0x88F7: "PTPv2"}
IP_PROTOCOLS = {1: "ICMP", 2: "IGMP", 6: "TCP", 17: "UDP", 41: "IPv6", 47: "GRE", 50: "ESP", 58: "ICMPv6",
                132: "SCTP"}
ICMP_TYPES = {0: "echo-reply", 3: "unreachable", 5: "redirect", 8: "echo-request", 11: "time-exceeded"}
ICMPV6_TYPES = {1: "unreachable", 2: "too-big", 3: "time-exceeded", 128: "echo-request", 129: "echo-reply",
                133: "router-solicitation", 134: "router-advertisement", 135: "neighbor-solicitation",
                136: "neighbor-advertisement"}
ARP_OPCODES = {1: "request", 2: "reply"}
TCP_FLAGS = (("fin", "FIN", 0x001), ("syn", "SYN", 0x002), ("reset", "RST", 0x004), ("push", "PSH", 0x008),
             ("ack", "ACK", 0x010), ("urg", "URG", 0x020), ("ece", "ECE", 0x040), ("cwr", "CWR", 0x080))
IPV6_EXT_HEADERS = frozenset({0, 43, 44, 60})  # hop-by-hop, routing, fragment, destination options
VLAN_TYPES = frozenset({0x8100, 0x88A8})


def mac(data: bytes) -> str:
    return data.hex(":")


def ipv4(data: bytes) -> str:
    return socket.inet_ntoa(data)


def ipv6(data: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6, data)


# ---------------------------------------------------------------------------------------
# Summary (struct only)


def frame_summary(frame: bytes) -> str:
    """``52:54:00:12:34:56 > ff:ff:ff:ff:ff:ff ARP who-has 10.0.0.2 tell 10.0.0.1`` for ``frame``."""
    if len(frame) < ETH_HDR:
        return f"short frame ({len(frame)} bytes)"
    parts = [f"{mac(frame[6:12])} > {mac(frame[0:6])}"]
    etype, = struct.unpack_from(">H", frame, 12)
    off = ETH_HDR
    while etype in VLAN_TYPES and len(frame) >= off + 4:
        tci, etype = struct.unpack_from(">HH", frame, off)
        parts.append(f"VLAN {tci & 0xFFF}")
        off += 4
    if etype <= 1500:
        parts.append(f"802.3 len={etype}")
    elif etype == 0x0806:
        parts.append(_arp_summary(frame, off))
    elif etype == 0x0800:
        parts.append(_ipv4_summary(frame, off))
    elif etype == 0x86DD:
        parts.append(_ipv6_summary(frame, off))
    else:
        parts.append(ETHERTYPES.get(etype, f"type=0x{etype:04x}"))
    return " ".join(parts)


def _arp_summary(frame: bytes, off: int) -> str:
    if len(frame) < off + 28:
        return "ARP"
    htype, ptype, hlen, plen, opcode = struct.unpack_from(">HHBBH", frame, off)
    if (htype, ptype, hlen, plen) != (1, 0x0800, 6, 4):
        return f"ARP op={opcode}"
    sha, spa = mac(frame[off + 8:off + 14]), ipv4(frame[off + 14:off + 18])
    tpa = ipv4(frame[off + 24:off + 28])
    if opcode == 1:
        return f"ARP who-has {tpa} tell {spa}"
    if opcode == 2:
        return f"ARP {spa} is-at {sha}"
    return f"ARP op={opcode}"


def _ipv4_summary(frame: bytes, off: int) -> str:
    if len(frame) < off + 20:
        return "IPv4"
    ihl = (frame[off] & 0x0F) * 4
    flags_frag, _ttl, proto = struct.unpack_from(">HBB", frame, off + 6)
    text = f"IPv4 {ipv4(frame[off + 12:off + 16])} > {ipv4(frame[off + 16:off + 20])}"
    if flags_frag & 0x3FFF:  # MF or a fragment offset
        return text + f" {IP_PROTOCOLS.get(proto, f'proto={proto}')} fragment"
    return text + " " + _l4_summary(frame, off + max(ihl, 20), proto)


def _ipv6_summary(frame: bytes, off: int) -> str:
    if len(frame) < off + 40:
        return "IPv6"
    nxt = frame[off + 6]
    text = f"IPv6 {ipv6(frame[off + 8:off + 24])} > {ipv6(frame[off + 24:off + 40])}"
    off += 40
    for _ in range(8):  # bounded walk over extension headers
        if nxt not in IPV6_EXT_HEADERS or len(frame) < off + 8:
            break
        if nxt == 44:  # fragment header: fixed 8 bytes
            if struct.unpack_from(">H", frame, off + 2)[0] & 0xFFF9:  # an offset or M
                return text + f" {IP_PROTOCOLS.get(frame[off], f'proto={frame[off]}')} fragment"
            nxt, off = frame[off], off + 8
        else:
            nxt, off = frame[off], off + (frame[off + 1] + 1) * 8
    return text + " " + _l4_summary(frame, off, nxt)


def _l4_summary(frame: bytes, off: int, proto: int) -> str:
    name = IP_PROTOCOLS.get(proto, f"proto={proto}")
    if proto in (6, 17) and len(frame) >= off + 4:
        sport, dport = struct.unpack_from(">HH", frame, off)
        text = f"{name} {sport} > {dport}"
        if proto == 6 and len(frame) >= off + 14:
            flags = struct.unpack_from(">H", frame, off + 12)[0] & 0xFFF
            text += " [" + ", ".join(short for _, short, bit in TCP_FLAGS if flags & bit) + "]"
        return text
    if proto in (1, 58) and len(frame) > off:
        kind = frame[off]
        names = ICMP_TYPES if proto == 1 else ICMPV6_TYPES
        return f"{name} {names.get(kind, f'type={kind}')}"
    return name


# ---------------------------------------------------------------------------------------
# Trees (scapy)

_SCAPY: dict[str, Any] = {}


def _scapy() -> dict[str, Any]:
    if not _SCAPY:
        from scapy.layers import inet, inet6, l2  # lazily: about 0.25 s

        _SCAPY.update(Ether=l2.Ether, Dot3=l2.Dot3, Dot1Q=l2.Dot1Q, ARP=l2.ARP, IP=inet.IP, TCP=inet.TCP,
                      UDP=inet.UDP, ICMP=inet.ICMP, IPv6=inet6.IPv6)
    return _SCAPY


class _Frame:
    """One frame being turned into trees: the bytes, their base, and what the IP layer said."""

    def __init__(self, data: bytes, base: int) -> None:
        self.data = data
        self.base = base
        self.l4_len: int | None = None  # bytes of transport header + payload, from the IP length
        self.fragment = False  # an IP fragment: Wireshark shows its payload as data (it reassembles)

    def leaf(self, abbrev: str, label: str, value: Any, display: str, off: int, length: int) -> Field:
        return Field(abbrev, label, value, display, self.base + off, length)

    def proto(self, abbrev: str, label: str, off: int, length: int, children: list[Field]) -> Field:
        return Field(abbrev, label, None, "", self.base + off, length, children)


def frame_trees(frame: bytes, base: int = 0) -> tuple[list[Field], list[str]]:
    """The protocol trees of ``frame`` (offsets from ``base``) and what could not be dissected.

    Layers scapy finds but that are not mapped (LLC, IPv6 extension headers, DNS, ...)
    are passed over; a frame shorter than an Ethernet header gives no tree.
    """
    if len(frame) < ETH_HDR:
        return [], [f"frame of {len(frame)} bytes is shorter than an Ethernet header ({ETH_HDR})"]
    sc = _scapy()
    pkt = sc["Ether"](bytes(frame))
    fr = _Frame(bytes(frame), base)
    trees: list[Field] = []
    off = 0
    seen_icmpv6 = False
    for layer in pkt.iterpayloads():
        cls = type(layer).__name__
        size = len(layer.raw_packet_cache) if layer.raw_packet_cache is not None else None
        mapper = _MAPPERS.get(cls)
        if mapper is None and cls.startswith("ICMPv6") and not seen_icmpv6 and trees and trees[-1].abbrev == "ipv6":
            mapper, seen_icmpv6 = _icmpv6, True
        if mapper is not None:
            tree, known = mapper(fr, layer, off)
            trees.append(tree)
            size = known if size is None else size
        if size is None:
            break
        if mapper is None and fr.l4_len is not None and cls.startswith("IPv6ExtHdr"):
            fr.l4_len = max(fr.l4_len - size, 0)  # extension headers count in the IPv6 payload length
            fr.fragment = fr.fragment or (cls == "IPv6ExtHdrFragment" and bool(layer.offset or layer.m))
        off += size
        if off >= len(frame):
            break
        if fr.fragment:
            end = len(frame) if fr.l4_len is None else min(len(frame), off + fr.l4_len)
            if end > off:
                trees.append(_data(fr, off, end))
            break
    return trees, []


def _data(fr: _Frame, start: int, end: int) -> Field:
    data = fr.data[start:end]
    return fr.proto("data", f"Data ({end - start} bytes)", start, end - start, [
        fr.leaf("data.data", "Data", data, format_bytes(data), start, end - start),
        fr.leaf("data.len", "Length", end - start, str(end - start), start, 0),
    ])


def _eth(fr: _Frame, layer: Any, off: int) -> tuple[Field, int]:
    etype = layer.type
    children = [
        fr.leaf("eth.dst", "Destination", layer.dst, layer.dst, off, 6),
        fr.leaf("eth.src", "Source", layer.src, layer.src, off + 6, 6),
        fr.leaf("eth.type", "Type", etype, f"{ETHERTYPES.get(etype, 'Unknown')} (0x{etype:04x})", off + 12, 2),
    ]
    return fr.proto("eth", f"Ethernet II, Src: {layer.src}, Dst: {layer.dst}", off, ETH_HDR, children), ETH_HDR


def _dot3(fr: _Frame, layer: Any, off: int) -> tuple[Field, int]:
    children = [
        fr.leaf("eth.dst", "Destination", layer.dst, layer.dst, off, 6),
        fr.leaf("eth.src", "Source", layer.src, layer.src, off + 6, 6),
        fr.leaf("eth.len", "Length", layer.len, str(layer.len), off + 12, 2),
    ]
    return fr.proto("eth", "IEEE 802.3 Ethernet", off, ETH_HDR, children), ETH_HDR


def _dot1q(fr: _Frame, layer: Any, off: int) -> tuple[Field, int]:
    etype = layer.type
    children = [
        fr.leaf("vlan.priority", "Priority", layer.prio, str(layer.prio), off, 2),
        fr.leaf("vlan.dei", "DEI", bool(layer.dei), "Set" if layer.dei else "Not set", off, 2),
        fr.leaf("vlan.id", "ID", layer.vlan, str(layer.vlan), off, 2),
        fr.leaf("vlan.etype", "Type", etype, f"{ETHERTYPES.get(etype, 'Unknown')} (0x{etype:04x})", off + 2, 2),
    ]
    label = f"802.1Q Virtual LAN, PRI: {layer.prio}, DEI: {int(layer.dei)}, ID: {layer.vlan}"
    return fr.proto("vlan", label, off, 4, children), 4


def _arp(fr: _Frame, layer: Any, off: int) -> tuple[Field, int]:
    hlen, plen = layer.hwlen, layer.plen
    op = layer.op
    children = [
        fr.leaf("arp.hw.type", "Hardware type", layer.hwtype, str(layer.hwtype), off, 2),
        fr.leaf("arp.proto.type", "Protocol type", layer.ptype, f"0x{layer.ptype:04x}", off + 2, 2),
        fr.leaf("arp.hw.size", "Hardware size", hlen, str(hlen), off + 4, 1),
        fr.leaf("arp.proto.size", "Protocol size", plen, str(plen), off + 5, 1),
        fr.leaf("arp.opcode", "Opcode", op, f"{ARP_OPCODES.get(op, 'Unknown')} ({op})", off + 6, 2),
    ]
    size = 8 + 2 * (hlen + plen)
    if (hlen, plen, layer.ptype) == (6, 4, 0x0800):
        children += [
            fr.leaf("arp.src.hw_mac", "Sender MAC address", layer.hwsrc, layer.hwsrc, off + 8, 6),
            fr.leaf("arp.src.proto_ipv4", "Sender IP address", layer.psrc, layer.psrc, off + 14, 4),
            fr.leaf("arp.dst.hw_mac", "Target MAC address", layer.hwdst, layer.hwdst, off + 18, 6),
            fr.leaf("arp.dst.proto_ipv4", "Target IP address", layer.pdst, layer.pdst, off + 24, 4),
        ]
    label = f"Address Resolution Protocol ({ARP_OPCODES.get(op, op)})"
    return fr.proto("arp", label, off, size, children), size


def _ip(fr: _Frame, layer: Any, off: int) -> tuple[Field, int]:
    hdr = layer.ihl * 4
    flags = int(layer.flags)
    proto = layer.proto
    flag_children = [
        fr.leaf("ip.flags.rb", "Reserved bit", bool(flags & 4), "Set" if flags & 4 else "Not set", off + 6, 1),
        fr.leaf("ip.flags.df", "Don't fragment", bool(flags & 2), "Set" if flags & 2 else "Not set", off + 6, 1),
        fr.leaf("ip.flags.mf", "More fragments", bool(flags & 1), "Set" if flags & 1 else "Not set", off + 6, 1),
    ]
    flags_node = fr.leaf("ip.flags", "Flags", flags, f"0x{flags:x}", off + 6, 1)
    flags_node.children = flag_children
    children = [
        fr.leaf("ip.version", "Version", layer.version, str(layer.version), off, 1),
        fr.leaf("ip.hdr_len", "Header Length", hdr, f"{hdr} bytes ({layer.ihl})", off, 1),
        fr.leaf("ip.dsfield", "Differentiated Services Field", layer.tos, f"0x{layer.tos:02x}", off + 1, 1),
        fr.leaf("ip.len", "Total Length", layer.len, str(layer.len), off + 2, 2),
        fr.leaf("ip.id", "Identification", layer.id, f"0x{layer.id:04x} ({layer.id})", off + 4, 2),
        flags_node,
        fr.leaf("ip.frag_offset", "Fragment Offset", layer.frag, str(layer.frag), off + 6, 2),
        fr.leaf("ip.ttl", "Time to Live", layer.ttl, str(layer.ttl), off + 8, 1),
        fr.leaf("ip.proto", "Protocol", proto, f"{IP_PROTOCOLS.get(proto, 'Unknown')} ({proto})", off + 9, 1),
        fr.leaf("ip.checksum", "Header Checksum", layer.chksum, f"0x{layer.chksum:04x}", off + 10, 2),
        fr.leaf("ip.src", "Source Address", layer.src, layer.src, off + 12, 4),
        fr.leaf("ip.dst", "Destination Address", layer.dst, layer.dst, off + 16, 4),
    ]
    fr.l4_len = max(layer.len - hdr, 0)
    fr.fragment = bool(flags & 1 or layer.frag)
    label = f"Internet Protocol Version 4, Src: {layer.src}, Dst: {layer.dst}"
    return fr.proto("ip", label, off, hdr, children), hdr


def _ipv6(fr: _Frame, layer: Any, off: int) -> tuple[Field, int]:
    nxt = layer.nh
    children = [
        fr.leaf("ipv6.version", "Version", layer.version, str(layer.version), off, 1),
        fr.leaf("ipv6.plen", "Payload Length", layer.plen, str(layer.plen), off + 4, 2),
        fr.leaf("ipv6.nxt", "Next Header", nxt, f"{IP_PROTOCOLS.get(nxt, 'Unknown')} ({nxt})", off + 6, 1),
        fr.leaf("ipv6.hlim", "Hop Limit", layer.hlim, str(layer.hlim), off + 7, 1),
        fr.leaf("ipv6.src", "Source Address", layer.src, layer.src, off + 8, 16),
        fr.leaf("ipv6.dst", "Destination Address", layer.dst, layer.dst, off + 24, 16),
    ]
    fr.l4_len = layer.plen  # less any extension headers, subtracted as they are passed over
    label = f"Internet Protocol Version 6, Src: {layer.src}, Dst: {layer.dst}"
    return fr.proto("ipv6", label, off, 40, children), 40


def _payload(fr: _Frame, abbrev: str, label: str, start: int, length: int | None) -> Field | None:
    end = len(fr.data) if length is None else min(len(fr.data), start + max(length, 0))
    if end <= start:
        return None
    data = fr.data[start:end]
    return fr.leaf(abbrev, label, data, format_bytes(data), start, end - start)


def _tcp(fr: _Frame, layer: Any, off: int) -> tuple[Field, int]:
    hdr = layer.dataofs * 4
    flags = int(layer.flags) & 0xFFF
    flags_node = fr.leaf("tcp.flags", "Flags", flags, f"0x{flags:03x}", off + 12, 2)
    flags_node.children = [fr.leaf(f"tcp.flags.{name}", short, bool(flags & bit), "Set" if flags & bit else "Not set",
                                   off + 12, 2) for name, short, bit in TCP_FLAGS]
    seg_len = max((fr.l4_len if fr.l4_len is not None else len(fr.data) - off) - hdr, 0)
    children = [
        fr.leaf("tcp.srcport", "Source Port", layer.sport, str(layer.sport), off, 2),
        fr.leaf("tcp.dstport", "Destination Port", layer.dport, str(layer.dport), off + 2, 2),
        fr.leaf("tcp.seq_raw", "Sequence Number (raw)", layer.seq, str(layer.seq), off + 4, 4),
        fr.leaf("tcp.ack_raw", "Acknowledgment number (raw)", layer.ack, str(layer.ack), off + 8, 4),
        fr.leaf("tcp.hdr_len", "Header Length", hdr, f"{hdr} bytes ({layer.dataofs})", off + 12, 1),
        flags_node,
        fr.leaf("tcp.window_size_value", "Window", layer.window, str(layer.window), off + 14, 2),
        fr.leaf("tcp.checksum", "Checksum", layer.chksum, f"0x{layer.chksum:04x}", off + 16, 2),
        fr.leaf("tcp.urgent_pointer", "Urgent Pointer", layer.urgptr, str(layer.urgptr), off + 18, 2),
        fr.leaf("tcp.len", "TCP Segment Len", seg_len, str(seg_len), off + 12, 0),
    ]
    payload = _payload(fr, "tcp.payload", "TCP payload", off + hdr, seg_len)
    if payload is not None:
        children.append(payload)
    label = f"Transmission Control Protocol, Src Port: {layer.sport}, Dst Port: {layer.dport}, Len: {seg_len}"
    return fr.proto("tcp", label, off, hdr, children), hdr


def _udp(fr: _Frame, layer: Any, off: int) -> tuple[Field, int]:
    children = [
        fr.leaf("udp.srcport", "Source Port", layer.sport, str(layer.sport), off, 2),
        fr.leaf("udp.dstport", "Destination Port", layer.dport, str(layer.dport), off + 2, 2),
        fr.leaf("udp.length", "Length", layer.len, str(layer.len), off + 4, 2),
        fr.leaf("udp.checksum", "Checksum", layer.chksum, f"0x{layer.chksum:04x}", off + 6, 2),
    ]
    payload = _payload(fr, "udp.payload", "Payload", off + 8, layer.len - 8)
    if payload is not None:
        children.append(payload)
    label = f"User Datagram Protocol, Src Port: {layer.sport}, Dst Port: {layer.dport}"
    return fr.proto("udp", label, off, 8, children), 8


def _icmp_common(fr: _Frame, prefix: str, title: str, names: dict[int, str], off: int) -> tuple[Field, int]:
    kind, code, checksum = struct.unpack_from(">BBH", fr.data.ljust(off + 4, b"\0"), off)
    children = [
        fr.leaf(f"{prefix}.type", "Type", kind, f"{kind} ({names.get(kind, 'Unknown')})", off, 1),
        fr.leaf(f"{prefix}.code", "Code", code, str(code), off + 1, 1),
        fr.leaf(f"{prefix}.checksum", "Checksum", checksum, f"0x{checksum:04x}", off + 2, 2),
    ]
    return fr.proto(prefix, title, off, 4, children), 4


def _icmp(fr: _Frame, layer: Any, off: int) -> tuple[Field, int]:
    tree, _ = _icmp_common(fr, "icmp", "Internet Control Message Protocol", ICMP_TYPES, off)
    return tree, 8


def _icmpv6(fr: _Frame, layer: Any, off: int) -> tuple[Field, int]:
    return _icmp_common(fr, "icmpv6", "Internet Control Message Protocol v6", ICMPV6_TYPES, off)


_MAPPERS: dict[str, Callable[[_Frame, Any, int], tuple[Field, int]]] = {
    "Ether": _eth, "Dot3": _dot3, "Dot1Q": _dot1q, "ARP": _arp, "IP": _ip, "IPv6": _ipv6,
    "TCP": _tcp, "UDP": _udp, "ICMP": _icmp,
}


#: Wireshark's hidden "either" fields (``ip.addr == X`` matches the source or the destination): they are
#: in no tree, :meth:`DeviceRequest.filter_values` adds them, from the fields they stand for.
HIDDEN_FIELDS = {
    "eth.addr": ("eth.src", "eth.dst"),
    "ip.addr": ("ip.src", "ip.dst"),
    "ipv6.addr": ("ipv6.src", "ipv6.dst"),
    "tcp.port": ("tcp.srcport", "tcp.dstport"),
    "udp.port": ("udp.srcport", "udp.dstport"),
}


def _spec(abbrev: str, label: str, kind: str, base: str = "DEC", names: dict[int, str] | None = None) -> FieldSpec:
    return FieldSpec(abbrev, label, kind, base, dict(names or {}))


#: Every Wireshark field :func:`frame_trees` produces (for display-filter catalogs). Addresses are
#: strings here (Wireshark's FT_ETHER / FT_IPv4 / FT_IPv6 compare as the same text).
ETHERNET_FIELDS: list[FieldSpec] = [
    _spec("eth", "Ethernet", "none"),
    _spec("eth.dst", "Destination", "string"), _spec("eth.src", "Source", "string"),
    _spec("eth.type", "Type", "uint16", "HEX", ETHERTYPES), _spec("eth.len", "Length", "uint16"),
    _spec("vlan", "802.1Q Virtual LAN", "none"),
    _spec("vlan.priority", "Priority", "uint16"), _spec("vlan.dei", "DEI", "bool"), _spec("vlan.id", "ID", "uint16"),
    _spec("vlan.etype", "Type", "uint16", "HEX", ETHERTYPES),
    _spec("arp", "Address Resolution Protocol", "none"),
    _spec("arp.hw.type", "Hardware type", "uint16"), _spec("arp.proto.type", "Protocol type", "uint16", "HEX"),
    _spec("arp.hw.size", "Hardware size", "uint8"), _spec("arp.proto.size", "Protocol size", "uint8"),
    _spec("arp.opcode", "Opcode", "uint16", names=ARP_OPCODES),
    _spec("arp.src.hw_mac", "Sender MAC address", "string"),
    _spec("arp.src.proto_ipv4", "Sender IP address", "string"),
    _spec("arp.dst.hw_mac", "Target MAC address", "string"),
    _spec("arp.dst.proto_ipv4", "Target IP address", "string"),
    _spec("ip", "Internet Protocol Version 4", "none"),
    _spec("ip.version", "Version", "uint8"), _spec("ip.hdr_len", "Header Length", "uint8"),
    _spec("ip.dsfield", "Differentiated Services Field", "uint8", "HEX"), _spec("ip.len", "Total Length", "uint16"),
    _spec("ip.id", "Identification", "uint16", "HEX"), _spec("ip.flags", "Flags", "uint8", "HEX"),
    _spec("ip.flags.rb", "Reserved bit", "bool"), _spec("ip.flags.df", "Don't fragment", "bool"),
    _spec("ip.flags.mf", "More fragments", "bool"), _spec("ip.frag_offset", "Fragment Offset", "uint16"),
    _spec("ip.ttl", "Time to Live", "uint8"), _spec("ip.proto", "Protocol", "uint8", names=IP_PROTOCOLS),
    _spec("ip.checksum", "Header Checksum", "uint16", "HEX"),
    _spec("ip.src", "Source Address", "string"), _spec("ip.dst", "Destination Address", "string"),
    _spec("ipv6", "Internet Protocol Version 6", "none"),
    _spec("ipv6.version", "Version", "uint8"), _spec("ipv6.plen", "Payload Length", "uint16"),
    _spec("ipv6.nxt", "Next Header", "uint8", names=IP_PROTOCOLS), _spec("ipv6.hlim", "Hop Limit", "uint8"),
    _spec("ipv6.src", "Source Address", "string"), _spec("ipv6.dst", "Destination Address", "string"),
    _spec("tcp", "Transmission Control Protocol", "none"),
    _spec("tcp.srcport", "Source Port", "uint16"), _spec("tcp.dstport", "Destination Port", "uint16"),
    _spec("tcp.seq_raw", "Sequence Number (raw)", "uint32"),
    _spec("tcp.ack_raw", "Acknowledgment number (raw)", "uint32"),
    _spec("tcp.hdr_len", "Header Length", "uint8"), _spec("tcp.flags", "Flags", "uint16", "HEX"),
    *[_spec(f"tcp.flags.{name}", short, "bool") for name, short, _ in TCP_FLAGS],
    _spec("tcp.window_size_value", "Window", "uint16"), _spec("tcp.checksum", "Checksum", "uint16", "HEX"),
    _spec("tcp.urgent_pointer", "Urgent Pointer", "uint16"), _spec("tcp.len", "TCP Segment Len", "uint32"),
    _spec("tcp.payload", "TCP payload", "bytes"),
    _spec("udp", "User Datagram Protocol", "none"),
    _spec("udp.srcport", "Source Port", "uint16"), _spec("udp.dstport", "Destination Port", "uint16"),
    _spec("udp.length", "Length", "uint16"), _spec("udp.checksum", "Checksum", "uint16", "HEX"),
    _spec("udp.payload", "Payload", "bytes"),
    _spec("icmp", "Internet Control Message Protocol", "none"),
    _spec("icmp.type", "Type", "uint8", names=ICMP_TYPES), _spec("icmp.code", "Code", "uint8"),
    _spec("icmp.checksum", "Checksum", "uint16", "HEX"),
    _spec("icmpv6", "Internet Control Message Protocol v6", "none"),
    _spec("icmpv6.type", "Type", "uint8", names=ICMPV6_TYPES), _spec("icmpv6.code", "Code", "uint8"),
    _spec("icmpv6.checksum", "Checksum", "uint16", "HEX"),
    _spec("eth.addr", "Address", "string"), _spec("ip.addr", "Source or Destination Address", "string"),
    _spec("ipv6.addr", "Source or Destination Address", "string"),
    _spec("tcp.port", "Source or Destination Port", "uint16"),
    _spec("udp.port", "Source or Destination Port", "uint16"),
]
