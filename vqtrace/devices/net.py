"""The network device (virtio 1.4, 5.1): transmitted frames to a sink, received frames from a source.

Queues (5.1.2): receiveq1, transmitq1, ..., receiveqN, transmitqN, controlq.
Frames the driver transmits go to a sink (a :class:`~.netsink.PcapngSink`, any
callable taking a :class:`~.netsink.NetFrame`) or to a peer net device wired back
to back (:meth:`NetDevice.connect`); :meth:`NetDevice.receive` puts a frame into
the receive buffers the driver supplied, which the device holds until then.

Device Requirements followed:

- 5.1.9.3.2 / 5.1.9.4.1: ``num_buffers`` is the number of buffers a packet spans,
  1 without VIRTIO_NET_F_MRG_RXBUF (one buffer only); all buffers but the last are
  used completely, and the buffers of one packet are used together.
- 5.1.9.4.1: without VIRTIO_NET_F_GUEST_CSUM ``flags`` is 0 and the packet fully
  checksummed; ``gso_type`` stays NONE unless the matching GUEST feature was
  negotiated (a GSO packet for a driver that cannot take it is dropped, counted).
- 5.1.9.2.2: unknown header flag bits are ignored; ``csum_start``/``csum_offset``
  are used only with NEEDS_CSUM; a packet with both UDP tunnel bits is not accepted.
- 5.1.4.1: ``max_virtqueue_pairs`` in 1..0x8000; ``mtu`` in 68..65535, fixed.
- 5.1.9.5.1.1 / .2.1 / .3.1 / .4.2 (control queue): RX mode commands with
  CTRL_RX / CTRL_RX_EXTRA; an empty MAC table on reset, updated (and ``mac``, with
  VIRTIO_NET_F_MAC) before the command is used; VLAN filter table; ANNOUNCE bit
  cleared before ANNOUNCE_ACK is used; 5.1.9.5.6.2: receive only on receiveq1 until
  VQ_PAIRS_SET, then on the pairs enabled. A command the device does not support,
  or malformed, gets VIRTIO_NET_ERR.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

from ..dissectors import features as feature_tables
from ..dissectors import net as layout
from ..dissectors.layers import get_layer
from ..errors import DissectError, UsageError, VqtraceError
from ..model import Chain
from .base import HELD, Activity, Device, feature_bits
from .chainio import ChainIO
from .netsink import NetFrame, PcapngSink

# 5.1.3 Feature bits (dissectors.features), those this device offers or checks
_F = feature_bits(feature_tables.NET_FEATURES)
VIRTIO_NET_F_CSUM = _F["VIRTIO_NET_F_CSUM"]
VIRTIO_NET_F_GUEST_CSUM = _F["VIRTIO_NET_F_GUEST_CSUM"]
VIRTIO_NET_F_MTU = _F["VIRTIO_NET_F_MTU"]
VIRTIO_NET_F_MAC = _F["VIRTIO_NET_F_MAC"]
VIRTIO_NET_F_GUEST_TSO4 = _F["VIRTIO_NET_F_GUEST_TSO4"]
VIRTIO_NET_F_GUEST_TSO6 = _F["VIRTIO_NET_F_GUEST_TSO6"]
VIRTIO_NET_F_GUEST_ECN = _F["VIRTIO_NET_F_GUEST_ECN"]
VIRTIO_NET_F_GUEST_UFO = _F["VIRTIO_NET_F_GUEST_UFO"]
VIRTIO_NET_F_HOST_TSO4 = _F["VIRTIO_NET_F_HOST_TSO4"]
VIRTIO_NET_F_HOST_TSO6 = _F["VIRTIO_NET_F_HOST_TSO6"]
VIRTIO_NET_F_HOST_ECN = _F["VIRTIO_NET_F_HOST_ECN"]
VIRTIO_NET_F_HOST_UFO = _F["VIRTIO_NET_F_HOST_UFO"]
VIRTIO_NET_F_MRG_RXBUF = _F["VIRTIO_NET_F_MRG_RXBUF"]
VIRTIO_NET_F_STATUS = _F["VIRTIO_NET_F_STATUS"]
VIRTIO_NET_F_CTRL_VQ = _F["VIRTIO_NET_F_CTRL_VQ"]
VIRTIO_NET_F_CTRL_RX = _F["VIRTIO_NET_F_CTRL_RX"]
VIRTIO_NET_F_CTRL_VLAN = _F["VIRTIO_NET_F_CTRL_VLAN"]
VIRTIO_NET_F_CTRL_RX_EXTRA = _F["VIRTIO_NET_F_CTRL_RX_EXTRA"]
VIRTIO_NET_F_GUEST_ANNOUNCE = _F["VIRTIO_NET_F_GUEST_ANNOUNCE"]
VIRTIO_NET_F_MQ = _F["VIRTIO_NET_F_MQ"]
VIRTIO_NET_F_CTRL_MAC_ADDR = _F["VIRTIO_NET_F_CTRL_MAC_ADDR"]
VIRTIO_NET_F_GUEST_USO4 = _F["VIRTIO_NET_F_GUEST_USO4"]
VIRTIO_NET_F_GUEST_USO6 = _F["VIRTIO_NET_F_GUEST_USO6"]
VIRTIO_NET_F_HOST_USO = _F["VIRTIO_NET_F_HOST_USO"]

VIRTIO_NET_S_LINK_UP = layout.CONFIG_STATUS["LINK_UP"]
VIRTIO_NET_S_ANNOUNCE = layout.CONFIG_STATUS["ANNOUNCE"]
VIRTIO_NET_OK = layout.VIRTIO_NET_OK
VIRTIO_NET_ERR = layout.VIRTIO_NET_ERR
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN = 1
VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX = 0x8000
GSO_NONE = layout.GSO_PROTOCOLS["NONE"]
GSO_ECN = layout.VIRTIO_NET_HDR_GSO_ECN
GSO_TUNNEL_MASK = sum(layout.GSO_TUNNEL_BITS.values())
NEEDS_CSUM = layout.VIRTIO_NET_HDR_F_NEEDS_CSUM

#: struct virtio_net_hdr for the hot path, up to num_buffers (12 bytes) and legacy (10 bytes);
#: tests hold both equal to the virtio_net.hdr layer.
NET_HDR = struct.Struct("<BBHHHHH")
NET_HDR_LEGACY = struct.Struct("<BBHHHH")
HDR_FIELDS = ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset", "num_buffers")

ETH_HLEN = 14
MAX_FRAME = 65535 + ETH_HLEN  # 5.1.9.3: 14 bytes of Ethernet header plus the largest IPv6 packet, and some
ETH_P_8021Q = 0x8100
BROADCAST = b"\xff" * 6
# Which GUEST feature a received gso_type needs (5.1.9.4.1).
_GSO_NEEDS = {1: (VIRTIO_NET_F_GUEST_TSO4,), 4: (VIRTIO_NET_F_GUEST_TSO6,), 3: (VIRTIO_NET_F_GUEST_UFO,),
              5: (VIRTIO_NET_F_GUEST_USO4, VIRTIO_NET_F_GUEST_USO6)}
_HOST_GSO = {1: VIRTIO_NET_F_HOST_TSO4, 4: VIRTIO_NET_F_HOST_TSO6, 3: VIRTIO_NET_F_HOST_UFO,
             5: VIRTIO_NET_F_HOST_USO}
_CTRL = get_layer("virtio_net.ctrl")
C = layout.CTRL_CLASSES
CTRL_RX, CTRL_MAC, CTRL_VLAN = C["VIRTIO_NET_CTRL_RX"], C["VIRTIO_NET_CTRL_MAC"], C["VIRTIO_NET_CTRL_VLAN"]
CTRL_ANNOUNCE, CTRL_MQ = C["VIRTIO_NET_CTRL_ANNOUNCE"], C["VIRTIO_NET_CTRL_MQ"]
_RX_MODES = ("promisc", "allmulti", "alluni", "nomulti", "nouni", "nobcast")  # commands 0..5 of class RX
CTRL_MAX = 1 << 16  # a control command is a few bytes; the MAC table at most a few KiB


def _mac_bytes(mac: str) -> bytes:
    try:
        value = bytes(int(part, 16) for part in mac.split(":"))
    except ValueError:
        value = b""
    if len(value) != 6:
        raise UsageError(f"bad MAC address {mac!r} (want six hex bytes like 52:54:00:12:34:56)")
    return value


def _mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def complete_checksum(frame: bytes, csum_start: int, csum_offset: int) -> bytes:
    """Finish a partial checksum (5.1.9.2, point 1): the ones' complement sum from ``csum_start``
    to the end, stored at ``csum_start + csum_offset`` (which holds the pseudo-header sum)."""
    at = csum_start + csum_offset
    if csum_start >= len(frame) or at + 2 > len(frame):
        return frame
    data = frame[csum_start:] + (b"\0" if (len(frame) - csum_start) % 2 else b"")
    total = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    value = ~total & 0xFFFF
    return frame[:at] + value.to_bytes(2, "big") + frame[at + 2:]


class NetDevice(Device):
    """A virtio-net device: ``sink`` takes transmitted frames (a path writes pcapng)."""

    name: ClassVar[str] = "net"
    device_id: ClassVar[int] = 1
    prefix: ClassVar[str] = "virtio_net"
    config_struct = layout.virtio_net_config
    config_full_size = layout.NET_CONFIG_SIZE

    def __init__(self, *, mac: str = "52:54:00:12:34:56", queue_pairs: int = 1, mtu: int | None = None,
                 mrg_rxbuf: bool = True, ctrl_vq: bool = True, offloads: bool = False,
                 sink: Callable[[NetFrame], None] | str | None = None, link_up: bool = True,
                 backlog: int = 256, history: int = 1024, **options: Any) -> None:
        super().__init__(**options)
        if not VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN <= queue_pairs <= VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MAX:
            raise UsageError(f"queue_pairs {queue_pairs}: between 1 and 32768 (5.1.4.1)")
        if queue_pairs > 1 and not ctrl_vq:
            raise UsageError("multiqueue needs the control queue (VIRTIO_NET_F_MQ requires VIRTIO_NET_F_CTRL_VQ)")
        if mtu is not None and not 68 <= mtu <= 65535:
            raise UsageError(f"mtu {mtu}: between 68 and 65535 (5.1.4.1)")
        self.default_mac = _mac_bytes(mac)
        self.max_pairs = queue_pairs
        self.mtu = mtu
        self.offer_mrg = mrg_rxbuf
        self.offer_ctrl = ctrl_vq
        self.offer_offloads = offloads
        self.link_up = link_up
        self.backlog_limit = backlog
        self._own_sink = PcapngSink(sink) if isinstance(sink, str) else None
        self.sink: Callable[[NetFrame], None] | None = self._own_sink or sink  # type: ignore[assignment]
        self.peer: NetDevice | None = None
        self.frames: deque[NetFrame] = deque(maxlen=history)
        self.counters = {"tx_packets": 0, "tx_bytes": 0, "tx_drops": 0, "rx_packets": 0, "rx_bytes": 0,
                         "rx_drops": 0, "rx_filtered": 0, "ctrl_ok": 0, "ctrl_err": 0}
        self.reset_state()

    def reset_state(self) -> None:
        self.mac = self.default_mac
        self.announce_pending = False
        # QEMU starts promiscuous for drivers that never set a mode; 5.1.9.5.2.1: empty MAC table.
        self.rx_mode = dict.fromkeys(_RX_MODES, False)
        self.rx_mode["promisc"] = True
        self.mac_table_uni: list[bytes] = []
        self.mac_table_multi: list[bytes] = []
        self.vlans: set[int] = set()  # 5.1.9.5.3: starts empty
        self.active_pairs = 1  # 5.1.9.5.6.2: only receiveq1 after reset
        self.rx_backlog: dict[int, deque[NetFrame]] = {}
        self.flows: dict[tuple[bytes, bytes], int] = {}

    # -- identity, features, configuration --------------------------------------------------------

    @property
    def pairs(self) -> int:
        """N of 5.1.2: max_virtqueue_pairs with VIRTIO_NET_F_MQ, else 1."""
        return self.max_pairs if self.shapes(VIRTIO_NET_F_MQ) else 1

    def queue_names(self) -> list[str]:
        names = []
        for n in range(self.pairs):
            names += [f"receiveq{n + 1}", f"transmitq{n + 1}"]
        if self.shapes(VIRTIO_NET_F_CTRL_VQ):
            names.append("controlq")
        return names

    @property
    def ctrl_index(self) -> int | None:
        return 2 * self.pairs if self.shapes(VIRTIO_NET_F_CTRL_VQ) else None

    def device_features(self) -> int:
        bits = [VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS]
        if self.offer_mrg:
            bits.append(VIRTIO_NET_F_MRG_RXBUF)
        if self.mtu is not None:
            bits.append(VIRTIO_NET_F_MTU)
        if self.offer_ctrl:
            bits += [VIRTIO_NET_F_CTRL_VQ, VIRTIO_NET_F_CTRL_RX, VIRTIO_NET_F_CTRL_VLAN, VIRTIO_NET_F_CTRL_RX_EXTRA,
                     VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_CTRL_MAC_ADDR]
            if self.max_pairs > 1:
                bits.append(VIRTIO_NET_F_MQ)
        if self.offer_offloads:
            bits += [VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
                     VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6]
        return sum(1 << bit for bit in bits)

    def config_values(self) -> dict[str, Any]:
        status = (VIRTIO_NET_S_LINK_UP if self.link_up else 0) | (VIRTIO_NET_S_ANNOUNCE if self.announce_pending
                                                                  else 0)
        values: dict[str, Any] = {"mac": _mac_text(self.mac), "status": status}
        if self.max_pairs > 1:
            values["max_virtqueue_pairs"] = self.max_pairs
        if self.mtu is not None:
            values["mtu"] = self.mtu
        return values

    @property
    def hdr_size(self) -> int:
        return layout.net_hdr_size(self.features, legacy=not self.features)

    # -- device-initiated changes ------------------------------------------------------------------

    def set_link(self, up: bool) -> Activity:
        """Link up or down: VIRTIO_NET_S_LINK_UP in ``status`` and a configuration change."""
        def change() -> None:
            self.link_up = up
            if self.has(VIRTIO_NET_F_STATUS):
                self.config_change()
        return self.run(change)

    def announce(self) -> Activity:
        """Ask the driver to send gratuitous packets (5.1.9.5.4): set VIRTIO_NET_S_ANNOUNCE."""
        def change() -> None:
            if self.has(VIRTIO_NET_F_GUEST_ANNOUNCE) and self.has(VIRTIO_NET_F_STATUS):
                self.announce_pending = True
                self.config_change()
        return self.run(change)

    def connect(self, peer: NetDevice) -> None:
        """Wire ``peer`` back to back: each one's transmitted frames are the other's received ones."""
        self.peer, peer.peer = peer, self

    # -- queues ------------------------------------------------------------------------------------

    def process(self, index: int, chain: Chain, io: ChainIO) -> int | None:
        if index == self.ctrl_index:
            return self._control(index, chain, io)
        if index % 2:
            return self._transmit(index, chain, io)
        return self._hold_rx(index, chain, io)

    def after_kick(self, index: int) -> None:
        if index != self.ctrl_index and index % 2 == 0:
            self._deliver(index)

    def _transmit(self, index: int, chain: Chain, io: ChainIO) -> int:
        size = self.hdr_size
        if io.writable_len:
            self._report("NET_TX_WRITABLE", "virtio 1.4, 5.1.9.2",
                         f"transmit buffer has {io.writable_len} device-writable bytes", queue=index, id=chain.id)
        if self.memory_fault(io, index) or io.readable_len < size:
            if not io.unmapped:
                self._report("NET_SHORT_HEADER", "virtio 1.4, 5.1.9.2",
                             f"transmit buffer of {io.readable_len} bytes is shorter than the {size}-byte header",
                             queue=index, id=chain.id)
            self.counters["tx_drops"] += 1
            self.describe("net TX malformed (dropped)")
            return 0
        if io.readable_len - size > MAX_FRAME:
            self._report("NET_OVERSIZED", "virtio 1.4, 5.1.9.3",
                         f"transmit packet of {io.readable_len - size} bytes (at most {MAX_FRAME})",
                         queue=index, id=chain.id)
            self.counters["tx_drops"] += 1
            self.describe("net TX oversized (dropped)")
            return 0
        raw = io.read(0, io.readable_len)
        hdr = self._parse_hdr(raw[:size])
        data = raw[size:]
        problem = self._tx_problem(hdr)
        if problem is not None:
            self._report("NET_TX_BAD_HEADER", problem[0], problem[1], queue=index, id=chain.id)
            self.counters["tx_drops"] += 1
            self.describe(f"net TX len={len(data)} not accepted")
            return 0
        frame = NetFrame("tx", index, data, hdr, time.time_ns())
        self.frames.append(frame)
        self.counters["tx_packets"] += 1
        self.counters["tx_bytes"] += len(data)
        if len(data) >= 12 and self.pairs > 1:  # 5.1.9.5.6: steer replies of this flow to this pair
            self.flows[(data[6:12], data[0:6])] = index // 2
        self.describe("net " + frame.summary())
        if self.sink is not None:
            try:
                self.sink(frame)
            except (OSError, VqtraceError) as err:  # the host's side failed, not the driver's
                self._report("NET_SINK_ERROR", "virtio 1.4, 5.1.9.2", f"the frame sink failed: {err}",
                             queue=index, id=chain.id)
        if self.peer is not None:
            self.peer.emit(self.peer.receive(data, hdr))
        return 0  # 5.1.9.2: a transmit buffer is used with nothing written

    def _parse_hdr(self, raw: bytes) -> dict[str, Any]:
        fmt = NET_HDR if len(raw) >= NET_HDR.size else NET_HDR_LEGACY
        values = dict(zip(HDR_FIELDS, fmt.unpack(raw[:fmt.size]), strict=False))
        if len(raw) > fmt.size:
            values["extra"] = raw[fmt.size:].hex()
        return values

    def _tx_problem(self, hdr: dict[str, Any]) -> tuple[str, str] | None:
        gso = hdr["gso_type"]
        if gso & GSO_TUNNEL_MASK == GSO_TUNNEL_MASK:  # 5.1.9.2.2: MUST NOT accept
            return "virtio 1.4, 5.1.9.2.2", "gso_type has both UDP tunnel bits"
        protocol = gso & ~(GSO_TUNNEL_MASK | GSO_ECN)
        if gso & GSO_TUNNEL_MASK or (gso & GSO_ECN and not self.has(VIRTIO_NET_F_HOST_ECN)):
            return "virtio 1.4, 5.1.9.2.1", f"gso_type 0x{gso:x} needs features this device did not negotiate"
        if protocol != GSO_NONE and (protocol not in _HOST_GSO or not self.has(_HOST_GSO[protocol])):
            return "virtio 1.4, 5.1.9.2.1", f"gso_type {gso} without the matching HOST feature negotiated"
        if hdr["flags"] & NEEDS_CSUM and not self.has(VIRTIO_NET_F_CSUM):
            return "virtio 1.4, 5.1.9.2.1", "NEEDS_CSUM without VIRTIO_NET_F_CSUM negotiated"
        return None

    def _hold_rx(self, index: int, chain: Chain, io: ChainIO) -> int | None:
        if io.readable_len:
            self._report("NET_RX_READABLE", "virtio 1.4, 5.1.9.3",
                         f"receive buffer has {io.readable_len} device-readable bytes", queue=index, id=chain.id)
        if self.memory_fault(io, index) or io.writable_len < self.hdr_size:
            if not io.unmapped:
                self._report("NET_RX_BUFFER_TOO_SMALL", "virtio 1.4, 5.1.9.3.1",
                             f"receive buffer of {io.writable_len} bytes cannot hold the {self.hdr_size}-byte header",
                             queue=index, id=chain.id)
            self.describe("net RX buffer unusable")
            return 0
        self.hold(index, chain, io)
        return HELD

    # -- receiving ---------------------------------------------------------------------------------

    def receive(self, data: bytes, hdr: dict[str, Any] | None = None, *, pair: int | None = None) -> Activity:
        """A frame from the wire (a source or the peer): filter it, queue it, fill receive buffers."""
        def work() -> None:
            reason = self._filter(data)
            if reason is not None:
                self.counters["rx_filtered"] += 1
                return
            index = 2 * self._steer(data, pair)
            backlog = self.rx_backlog.setdefault(index, deque())
            if len(backlog) >= self.backlog_limit:
                self.counters["rx_drops"] += 1
                return
            backlog.append(NetFrame("rx", index, bytes(data), dict(hdr or {}), time.time_ns()))
            self._deliver(index)
        return self.run(work)

    def _steer(self, data: bytes, pair: int | None) -> int:
        active = min(self.active_pairs, self.pairs)
        if pair is not None:
            return pair % active
        if active == 1:
            return 0
        known = self.flows.get((data[0:6], data[6:12]))
        if known is not None and known < active:
            return known
        return zlib.crc32(data[0:12]) % active  # 5.1.9.5.6: MAY steer to a random queue; this one is stable

    def _filter(self, data: bytes) -> str | None:
        """Why the device drops ``data`` (5.1.9.5.1-3 receive filtering), or None to accept it."""
        if len(data) < ETH_HLEN:
            return "runt"
        dst = data[0:6]
        if self.has(VIRTIO_NET_F_CTRL_VLAN) and int.from_bytes(data[12:14], "big") == ETH_P_8021Q:
            vid = int.from_bytes(data[14:16], "big") & 0xFFF
            if vid not in self.vlans:  # 5.1.9.5.3.1: SHOULD drop tags not in the table
                return "vlan"
        mode = self.rx_mode
        if dst == BROADCAST:
            return "broadcast" if mode["nobcast"] else None
        if dst[0] & 1:
            if mode["nomulti"]:
                return "multicast"
            return None if mode["promisc"] or mode["allmulti"] or dst in self.mac_table_multi else "multicast"
        if mode["nouni"]:
            return "unicast"
        if mode["promisc"] or mode["alluni"] or dst == self.mac or dst in self.mac_table_uni:
            return None
        return "unicast"  # 5.1.9.5.2.1: SHOULD drop a destination in neither mac nor the table

    def _rx_header(self, frame: NetFrame) -> tuple[dict[str, Any], bytes] | None:
        """The header to write for ``frame`` and its bytes, following 5.1.9.4.1; None drops it."""
        src = frame.hdr
        data = frame.data
        hdr = dict.fromkeys(HDR_FIELDS, 0)
        gso = src.get("gso_type", GSO_NONE)
        protocol = gso & ~(GSO_TUNNEL_MASK | GSO_ECN)
        if protocol != GSO_NONE:
            if not any(self.has(bit) for bit in _GSO_NEEDS.get(protocol, ())) or gso & GSO_TUNNEL_MASK \
                    or (gso & GSO_ECN and not self.has(VIRTIO_NET_F_GUEST_ECN)):
                return None  # the driver cannot take this GSO packet and the device does not segment
            hdr.update(gso_type=gso, gso_size=src.get("gso_size", 0), hdr_len=src.get("hdr_len", 0))
        if src.get("flags", 0) & NEEDS_CSUM:
            if self.has(VIRTIO_NET_F_GUEST_CSUM):
                hdr.update(flags=NEEDS_CSUM, csum_start=src.get("csum_start", 0),
                           csum_offset=src.get("csum_offset", 0))
            elif protocol == GSO_NONE:
                data = complete_checksum(data, src.get("csum_start", 0), src.get("csum_offset", 0))
            else:
                return None
        elif protocol != GSO_NONE:
            hdr["flags"] = NEEDS_CSUM  # 5.1.9.4.1: a GSO packet carries NEEDS_CSUM
        return hdr, data

    def _deliver(self, index: int) -> None:
        """Put backlog frames of receiveq ``index`` into held buffers while they fit (5.1.9.4)."""
        backlog = self.rx_backlog.get(index)
        held = self.held.get(index)
        mrg = self.has(VIRTIO_NET_F_MRG_RXBUF)
        size = self.hdr_size
        while backlog and held:
            frame = backlog[0]
            built = self._rx_header(frame)
            if built is None:
                backlog.popleft()
                self.counters["rx_drops"] += 1
                continue
            hdr, data = built
            need = size + len(data)
            if not mrg:
                chain, io = held[0]
                if io.writable_len < need:  # 5.1.9.3.2: a single buffer only; this one is too small
                    self._report("NET_RX_BUFFER_TOO_SMALL", "virtio 1.4, 5.1.9.3.1",
                                 f"packet of {need} bytes does not fit a {io.writable_len}-byte receive buffer "
                                 "(no VIRTIO_NET_F_MRG_RXBUF)", queue=index, id=chain.id)
                    backlog.popleft()
                    self.counters["rx_drops"] += 1
                    continue
                buffers = [held.popleft()]
            else:
                total, count = 0, 0
                for _, io in held:
                    total += io.writable_len
                    count += 1
                    if total >= need:
                        break
                if total < need:
                    return  # wait for more buffers: all of a packet's buffers are used together
                buffers = [held.popleft() for _ in range(count)]
            backlog.popleft()
            hdr["num_buffers"] = len(buffers)
            payload = self._hdr_bytes(hdr, size) + data
            at, used = 0, []
            for chain, io in buffers:  # all but the last are used completely (5.1.9.4.1)
                take = min(io.writable_len, len(payload) - at)
                io.write(0, payload[at:at + take])
                at += take
                used.append((chain, take))
            # 5.1.9.4.1: the buffers of one packet are used together
            self.complete_batch(index, used, f"net RX len={len(data)} num_buffers={len(buffers)}")
            frame.hdr = hdr
            self.frames.append(frame)
            self.counters["rx_packets"] += 1
            self.counters["rx_bytes"] += len(data)

    def _hdr_bytes(self, hdr: dict[str, Any], size: int) -> bytes:
        if size == NET_HDR_LEGACY.size:
            return NET_HDR_LEGACY.pack(*(hdr[name] for name in HDR_FIELDS[:6]))
        return NET_HDR.pack(*(hdr[name] for name in HDR_FIELDS)) + bytes(size - NET_HDR.size)

    # -- control queue -----------------------------------------------------------------------------

    def _control(self, index: int, chain: Chain, io: ChainIO) -> int:
        if io.writable_len < 1 or not io.writable_ok(0, 1):
            self._report("NET_CTRL_NO_ACK", "virtio 1.4, 5.1.9.5", "control command has no device-writable ack byte",
                         queue=index, id=chain.id)
            self.describe("net ctrl without ack")
            return 0
        ack, text = self._command(index, chain, io)
        io.write(0, bytes([ack]))
        self.counters["ctrl_ok" if ack == VIRTIO_NET_OK else "ctrl_err"] += 1
        self.describe(f"net ctrl {text} -> {'OK' if ack == VIRTIO_NET_OK else 'ERR'}")
        return 1

    def _command(self, index: int, chain: Chain, io: ChainIO) -> tuple[int, str]:
        if io.unmapped or io.readable_len < 2 or io.readable_len > CTRL_MAX:
            self._report("NET_CTRL_MALFORMED", "virtio 1.4, 5.1.9.5",
                         f"control command of {io.readable_len} device-readable bytes", queue=index, id=chain.id)
            return VIRTIO_NET_ERR, "malformed"
        raw = io.read(0, io.readable_len)
        cls, cmd = raw[0], raw[1]
        text = f"class={cls} command={cmd}"
        try:
            values = _CTRL.parse(raw)
        except DissectError as err:
            self._report("NET_CTRL_MALFORMED", "virtio 1.4, 5.1.9.5", f"{text}: {err}", queue=index, id=chain.id)
            return VIRTIO_NET_ERR, text
        data = values.data
        if cls == CTRL_RX and cmd < len(_RX_MODES):
            # 5.1.9.5.1.1: PROMISC and ALLMULTI with CTRL_RX, the others with CTRL_RX_EXTRA
            need = VIRTIO_NET_F_CTRL_RX if cmd < 2 else VIRTIO_NET_F_CTRL_RX_EXTRA
            if not self.has(need) or data.on > 1:
                return VIRTIO_NET_ERR, f"RX {_RX_MODES[cmd]}"
            self.rx_mode[_RX_MODES[cmd]] = bool(data.on)
            return VIRTIO_NET_OK, f"RX {_RX_MODES[cmd]}={data.on}"
        if cls == CTRL_MAC and cmd == 0 and self.has(VIRTIO_NET_F_CTRL_RX):
            uni = [_mac_bytes(m) for m in data.unicast.macs]
            multi = [_mac_bytes(m) for m in data.multicast.macs]
            self.mac_table_uni, self.mac_table_multi = uni, multi  # 5.1.9.5.2.1: before the command is used
            return VIRTIO_NET_OK, f"MAC_TABLE_SET uni={len(uni)} multi={len(multi)}"
        if cls == CTRL_MAC and cmd == 1 and self.has(VIRTIO_NET_F_CTRL_MAC_ADDR):
            mac = _mac_bytes(data.mac)
            if mac[0] & 1:
                return VIRTIO_NET_ERR, f"MAC_ADDR_SET {data.mac} (multicast)"
            self.mac = mac  # 5.1.9.5.2.1: reflected in the config's mac (VIRTIO_NET_F_MAC) before use
            return VIRTIO_NET_OK, f"MAC_ADDR_SET {data.mac}"
        if cls == CTRL_VLAN and cmd in (0, 1) and self.has(VIRTIO_NET_F_CTRL_VLAN):
            if data.vlan_id >= 4096:
                return VIRTIO_NET_ERR, f"VLAN id {data.vlan_id}"
            (self.vlans.add if cmd == 0 else self.vlans.discard)(data.vlan_id)
            return VIRTIO_NET_OK, f"VLAN_{'ADD' if cmd == 0 else 'DEL'} {data.vlan_id}"
        if cls == CTRL_ANNOUNCE and cmd == 0 and self.has(VIRTIO_NET_F_GUEST_ANNOUNCE):
            self.announce_pending = False  # 5.1.9.5.4.2: cleared before the buffer is used
            return VIRTIO_NET_OK, "ANNOUNCE_ACK"
        if cls == CTRL_MQ and cmd == 0 and self.has(VIRTIO_NET_F_MQ):
            pairs = data.virtqueue_pairs
            # 5.1.9.5.6.1: the driver asks for neither 0 nor more than max_virtqueue_pairs
            if not VIRTIO_NET_CTRL_MQ_VQ_PAIRS_MIN <= pairs <= self.max_pairs:
                return VIRTIO_NET_ERR, f"MQ_VQ_PAIRS_SET {pairs}"
            self.active_pairs = pairs
            return VIRTIO_NET_OK, f"MQ_VQ_PAIRS_SET {pairs}"
        return VIRTIO_NET_ERR, text + " (not supported or not negotiated)"

    def close(self) -> None:
        if self._own_sink is not None:
            self._own_sink.close()

    # -- state -------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        state = super().state()
        state.update({
            "mac": _mac_text(self.mac),
            "link_up": self.link_up,
            "announce": self.announce_pending,
            "rx_mode": dict(self.rx_mode),
            "mac_table": {"unicast": [_mac_text(m) for m in self.mac_table_uni],
                          "multicast": [_mac_text(m) for m in self.mac_table_multi]},
            "vlans": sorted(self.vlans),
            "active_pairs": self.active_pairs,
            "rx_backlog": {str(q): len(b) for q, b in self.rx_backlog.items()},
            "counters": dict(self.counters),
            "frames": [f.to_json() for f in list(self.frames)[-64:]],
        })
        return state
