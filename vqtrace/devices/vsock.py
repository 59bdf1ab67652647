"""The socket device (virtio 1.4, 5.10): stream connections between the guest and the host (CID 2).

Queues (5.10.2): rx, tx, event. The guest's packets come on tx; the device's
(replies and data) go into the rx buffers the driver supplied, which it holds. The
host side has services on ports: ``echo`` sends back what it receives, ``sink``
swallows it, or any callable ``data -> reply``. A REQUEST to a port without a
service, a packet for a connection that does not exist and a packet of an unknown
``type`` get RST (5.10.6.4.2, 5.10.6.5).

Stream state machine (5.10.6.5): REQUEST -> RESPONSE establishes; RW carries data;
SHUTDOWN with RECEIVE/SEND hints (permanent) and an RST from the peer ends it
cleanly; RST aborts. The host may connect too (:meth:`VsockDevice.connect`).

Credit (5.10.6.3): every packet carries the sender's ``buf_alloc`` and ``fwd_cnt``;
the device sends RW only while the guest has room (``peer_buf_alloc - (tx_cnt -
peer_fwd_cnt)``, 5.10.6.3.2), holds the rest, and answers CREDIT_REQUEST with
CREDIT_UPDATE (and sends one when the guest's view of its free space is low). The
echo service keeps the bytes it has not sent back in its receive buffer: when the
guest stops reading, the device's credit runs out and the guest must stall. A guest
that sends beyond the credit breaks 5.10.6.3.1: an anomaly, and the packet is dropped.
5.10.6.1.2: the tx queue is processed while the rx queue is full as long as
``backlog`` packets can wait; beyond that the device leaves tx chains available.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..dissectors import features as feature_tables
from ..dissectors import vsock as layout
from ..errors import UsageError
from ..model import Chain
from .base import HELD, Activity, Device, feature_bits
from .chainio import ChainIO

_F = feature_bits(feature_tables.VSOCK_FEATURES)
VIRTIO_VSOCK_F_STREAM = _F["VIRTIO_VSOCK_F_STREAM"]
VIRTIO_VSOCK_F_NO_IMPLIED_STREAM = _F["VIRTIO_VSOCK_F_NO_IMPLIED_STREAM"]
OP = layout.OPS
OP_REQUEST, OP_RESPONSE = OP["VIRTIO_VSOCK_OP_REQUEST"], OP["VIRTIO_VSOCK_OP_RESPONSE"]
OP_RST = OP["VIRTIO_VSOCK_OP_RST"]
OP_SHUTDOWN, OP_RW = OP["VIRTIO_VSOCK_OP_SHUTDOWN"], OP["VIRTIO_VSOCK_OP_RW"]
OP_CREDIT_UPDATE, OP_CREDIT_REQUEST = OP["VIRTIO_VSOCK_OP_CREDIT_UPDATE"], OP["VIRTIO_VSOCK_OP_CREDIT_REQUEST"]
OP_TEXT = {value: name.removeprefix("VIRTIO_VSOCK_OP_") for name, value in OP.items()}
TYPE_STREAM = layout.VIRTIO_VSOCK_TYPE_STREAM
SHUTDOWN_RECEIVE = layout.SHUTDOWN_FLAGS["SHUTDOWN_F_RECEIVE"]
SHUTDOWN_SEND = layout.SHUTDOWN_FLAGS["SHUTDOWN_F_SEND"]
SHUTDOWN_BOTH = SHUTDOWN_RECEIVE | SHUTDOWN_SEND
HDR = layout.HDR_STRUCT  # struct virtio_vsock_hdr, the dissector's hot-path struct
HOST_CID = layout.VMADDR_CID_HOST
RX, TX, EVENTQ = 0, 1, 2
EVENT_TRANSPORT_RESET = layout.EVENT_IDS["VIRTIO_VSOCK_EVENT_TRANSPORT_RESET"]
MAX_PKT_PAYLOAD = 64 * 1024  # Linux VIRTIO_VSOCK_MAX_PKT_BUF_SIZE: no packet carries more
U32 = 0xFFFFFFFF

Service = Callable[[bytes], bytes | None]


@dataclass
class Connection:
    """One stream connection, seen from the host side."""

    guest_port: int
    host_port: int
    service: str | Service
    state: str = "established"  # connecting (host sent REQUEST), established, closing (host sent SHUTDOWN)
    buf_alloc: int = 0  # our receive buffer
    fwd_cnt: int = 0  # bytes we consumed (free-running)
    rx_cnt: int = 0  # bytes the guest sent us (free-running)
    tx_cnt: int = 0  # bytes we sent the guest (free-running)
    peer_buf_alloc: int = 0
    peer_fwd_cnt: int = 0
    peer_shutdown: int = 0  # SHUTDOWN flags the guest sent (permanent, 5.10.6.5)
    shutdown_sent: int = 0
    out: bytearray = field(default_factory=bytearray)  # data waiting for guest credit
    fwd_cnt_sent: int = 0  # the fwd_cnt the guest last heard from us
    credit_update_due: bool = False
    received: bytearray = field(default_factory=bytearray)  # what the guest sent (the last bytes)

    @property
    def key(self) -> tuple[int, int]:
        return self.guest_port, self.host_port

    @property
    def peer_free(self) -> int:
        """How much the guest can still take (5.10.6.3, u32 arithmetic)."""
        return (self.peer_buf_alloc - ((self.tx_cnt - self.peer_fwd_cnt) & U32)) & U32

    @property
    def free(self) -> int:
        """Free space in our receive buffer."""
        return max(0, self.buf_alloc - ((self.rx_cnt - self.fwd_cnt) & U32))

    def to_json(self) -> dict[str, Any]:
        return {"guest_port": self.guest_port, "host_port": self.host_port, "state": self.state,
                "service": self.service if isinstance(self.service, str) else "callable",
                "buf_alloc": self.buf_alloc, "fwd_cnt": self.fwd_cnt, "rx_cnt": self.rx_cnt, "tx_cnt": self.tx_cnt,
                "peer_buf_alloc": self.peer_buf_alloc, "peer_fwd_cnt": self.peer_fwd_cnt,
                "peer_free": self.peer_free, "peer_shutdown": self.peer_shutdown,
                "shutdown_sent": self.shutdown_sent, "pending_out": len(self.out),
                "received_tail": bytes(self.received[-64:]).decode("utf-8", "replace")}


class VsockDevice(Device):
    """A virtio-vsock device for guest ``guest_cid``; ``services`` maps host ports to services."""

    name: ClassVar[str] = "vsock"
    device_id: ClassVar[int] = 19
    prefix: ClassVar[str] = "virtio_vsock"
    config_struct = layout.virtio_vsock_config
    config_full_size = 8  # 5.10.4: le64 guest_cid

    def __init__(self, *, guest_cid: int = 3, echo_port: int | None = 1234,
                 services: dict[int, str | Service] | None = None, buf_alloc: int = 256 * 1024,
                 backlog: int = 1024, history: int = 64, **options: Any) -> None:
        super().__init__(**options)
        if guest_cid in layout.RESERVED_CIDS or not 0 < guest_cid <= U32:  # 5.10.6.4.2 / 5.10.4
            raise UsageError(f"guest_cid {guest_cid} is reserved or out of range (5.10.4)")
        self.guest_cid = guest_cid
        self.services: dict[int, str | Service] = dict(services or {})
        if echo_port is not None:
            self.services.setdefault(echo_port, "echo")
        for port, service in self.services.items():
            if isinstance(service, str) and service not in ("echo", "sink"):
                raise UsageError(f"vsock service {service!r} on port {port}: echo, sink or a callable")
        self.buf_alloc = buf_alloc
        self.backlog = backlog
        self.closed: deque[dict[str, Any]] = deque(maxlen=history)
        self.counters = {"packets_in": 0, "packets_out": 0, "bytes_in": 0, "bytes_out": 0, "rst_sent": 0,
                         "dropped": 0}
        self.next_host_port = 49152
        self.reset_state()

    def reset_state(self) -> None:
        self.connections: dict[tuple[int, int], Connection] = {}
        self.control: deque[tuple[int, int, int, int, int]] = deque()  # op, guest_port, host_port, flags, type
        self.events: deque[int] = deque()
        self.tx_throttled = False

    # -- identity, features, configuration --------------------------------------------------------

    def queue_names(self) -> list[str]:
        return ["rx", "tx", "event"]

    def device_features(self) -> int:
        # 5.10.3.2: the device SHOULD offer VIRTIO_VSOCK_F_NO_IMPLIED_STREAM (with STREAM, as it supports it)
        return 1 << VIRTIO_VSOCK_F_STREAM | 1 << VIRTIO_VSOCK_F_NO_IMPLIED_STREAM

    def config_values(self) -> dict[str, Any]:
        return {"guest_cid": self.guest_cid}

    # -- host side --------------------------------------------------------------------------------

    def connect(self, guest_port: int, *, host_port: int | None = None, service: str | Service = "sink"
                ) -> Activity:
        """Connect from the host to ``guest_port`` (REQUEST; RESPONSE establishes, RST refuses)."""
        if host_port is None:
            host_port, self.next_host_port = self.next_host_port, self.next_host_port + 1

        def work() -> None:
            conn = Connection(guest_port, host_port, service, state="connecting", buf_alloc=self.buf_alloc)
            self.connections[conn.key] = conn
            self._queue(OP_REQUEST, conn)
            self._deliver()
        return self.run(work)

    def send(self, guest_port: int, host_port: int, data: bytes) -> Activity:
        """Send ``data`` to the guest on an established connection (as credit allows)."""
        conn = self.connections.get((guest_port, host_port))
        if conn is None or conn.state not in ("established",):
            raise UsageError(f"no established vsock connection {host_port} -> {guest_port}")

        def work() -> None:
            conn.out += data
            self._deliver()
        return self.run(work)

    def shutdown(self, guest_port: int, host_port: int, flags: int = SHUTDOWN_BOTH) -> Activity:
        """The host shuts the connection down (SHUTDOWN; the guest answers RST)."""
        def work() -> None:
            conn = self.connections.get((guest_port, host_port))
            if conn is not None:
                conn.shutdown_sent |= flags
                conn.state = "closing"
                self._queue(OP_SHUTDOWN, conn, flags)
                self._deliver()
        return self.run(work)

    def transport_reset(self) -> Activity:
        """VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (5.10.6.7): every connection is gone."""
        def work() -> None:
            for conn in list(self.connections.values()):
                self._close(conn, "transport reset")
            self.control.clear()
            self.events.append(EVENT_TRANSPORT_RESET)
            self._deliver_events()
        return self.run(work)

    # -- queues ------------------------------------------------------------------------------------

    def can_pop(self, index: int) -> bool:
        if index == TX and len(self.control) >= self.backlog:
            self.tx_throttled = True  # 5.10.6.1.2: no more room outside the rx queue
            return False
        return True

    def process(self, index: int, chain: Chain, io: ChainIO) -> int | None:
        if index == TX:
            self._transmit(index, chain, io)
            return 0
        if io.readable_len:
            self._report("VSOCK_READABLE_IN_RX", "virtio 1.4, 5.10.6.4",
                         f"{self.queue_names()[index]} buffer has device-readable bytes (buffers for incoming "
                         "packets are write-only)", queue=index, id=chain.id)
        need = layout.HDR_SIZE if index == RX else 4
        if self.memory_fault(io, index) or io.writable_len < need:
            if not io.unmapped:
                self._report("VSOCK_BUFFER_TOO_SMALL", "virtio 1.4, 5.10.6.4",
                             f"{self.queue_names()[index]} buffer of {io.writable_len} bytes (needs {need})",
                             queue=index, id=chain.id)
            return 0
        self.hold(index, chain, io)
        return HELD

    def after_kick(self, index: int) -> None:
        if index == EVENTQ:
            self._deliver_events()
        else:
            self._deliver()

    def _transmit(self, index: int, chain: Chain, io: ChainIO) -> None:
        if io.writable_len:
            self._report("VSOCK_WRITABLE_IN_TX", "virtio 1.4, 5.10.6.4",
                         "tx buffer has device-writable bytes (buffers for outgoing packets are read-only)",
                         queue=index, id=chain.id)
        if self.memory_fault(io, index):
            self.counters["dropped"] += 1
            return
        if io.readable_len < layout.HDR_SIZE:
            self._report("VSOCK_SHORT_HEADER", "virtio 1.4, 5.10.6",
                         f"packet of {io.readable_len} bytes; the header is {layout.HDR_SIZE}", queue=index,
                         id=chain.id)
            self.counters["dropped"] += 1
            return
        (src_cid, dst_cid, src_port, dst_port, length, kind, op, flags, buf_alloc,
         fwd_cnt) = HDR.unpack(io.read(0, layout.HDR_SIZE))
        text = f"vsock {OP_TEXT.get(op, op)} {src_cid}:{src_port} -> {dst_cid}:{dst_port} len={length}"
        self.describe(text)
        self.counters["packets_in"] += 1
        if src_cid != self.guest_cid or dst_cid != HOST_CID:  # 5.10.6.4.1: the source CID is guest_cid
            self._report("VSOCK_BAD_CID", "virtio 1.4, 5.10.6.4.1",
                         f"{text}: source must be the guest CID {self.guest_cid}, destination the host (2)",
                         queue=index, id=chain.id)
            self.counters["dropped"] += 1
            return
        if length > io.readable_len - layout.HDR_SIZE or length > MAX_PKT_PAYLOAD:
            self._report("VSOCK_BAD_LENGTH", "virtio 1.4, 5.10.6",
                         f"{text}: len is beyond the {io.readable_len - layout.HDR_SIZE} payload bytes present "
                         f"or the {MAX_PKT_PAYLOAD}-byte limit", queue=index, id=chain.id)
            if op != OP_RST:
                self._rst(dst_port, src_port, kind)
            return
        key = (src_port, dst_port)
        conn = self.connections.get(key)
        if kind != TYPE_STREAM:  # 5.10.6.4.2: RST for an unknown type (no SEQPACKET here)
            self._report("VSOCK_UNKNOWN_TYPE", "virtio 1.4, 5.10.6.4.2", f"{text}: type {kind}", queue=index,
                         id=chain.id)
            if op != OP_RST:
                self._rst(dst_port, src_port, kind)
            return
        if conn is not None:  # 5.10.6.3.1: every packet of a stream flow carries valid credit
            conn.peer_buf_alloc, conn.peer_fwd_cnt = buf_alloc, fwd_cnt
        if op == OP_REQUEST:
            self._request(key, conn, buf_alloc, fwd_cnt)
        elif conn is None:
            if op != OP_RST:  # a packet for no connection: reset (an RST for none is ignored)
                self._rst(dst_port, src_port)
        elif op == OP_RESPONSE:
            if conn.state == "connecting":
                conn.state = "established"
            else:
                self._report("VSOCK_UNEXPECTED_RESPONSE", "virtio 1.4, 5.10.6.5",
                             f"{text}: RESPONSE on an established connection", queue=index, id=chain.id)
                self._reset_conn(conn)
        elif op == OP_RW:
            self._data(index, chain, io, conn, length)
        elif op == OP_CREDIT_UPDATE:
            pass  # the credit fields were taken above
        elif op == OP_CREDIT_REQUEST:
            self._queue(OP_CREDIT_UPDATE, conn)
        elif op == OP_SHUTDOWN:
            conn.peer_shutdown |= flags & SHUTDOWN_BOTH  # permanent hints (5.10.6.5)
            if conn.peer_shutdown & SHUTDOWN_RECEIVE:
                conn.out.clear()  # it will not receive any more
            self._maybe_finish(conn)
        elif op == OP_RST:
            self._close(conn, "reset by guest")
        else:
            self._report("VSOCK_UNKNOWN_OP", "virtio 1.4, 5.10.6", f"{text}: unknown op", queue=index, id=chain.id)
            self._reset_conn(conn)

    def _request(self, key: tuple[int, int], conn: Connection | None, buf_alloc: int, fwd_cnt: int) -> None:
        guest_port, host_port = key
        service = self.services.get(host_port)
        if conn is not None:  # a second REQUEST for a live connection: abort it
            self._reset_conn(conn)
            return
        if service is None:  # 5.10.6.5: RST when no listening socket exists
            self._rst(host_port, guest_port)
            return
        conn = Connection(guest_port, host_port, service, buf_alloc=self.buf_alloc, peer_buf_alloc=buf_alloc,
                          peer_fwd_cnt=fwd_cnt)
        self.connections[key] = conn
        self._queue(OP_RESPONSE, conn)

    def _data(self, index: int, chain: Chain, io: ChainIO, conn: Connection, length: int) -> None:
        if conn.state == "connecting" or conn.peer_shutdown & SHUTDOWN_SEND:
            self._report("VSOCK_RW_NOT_ALLOWED", "virtio 1.4, 5.10.6.5",
                         f"RW on a connection that is {conn.state}"
                         + (" after SHUTDOWN SEND" if conn.peer_shutdown & SHUTDOWN_SEND else ""),
                         queue=index, id=chain.id)
            self.counters["dropped"] += 1
            return
        if conn.shutdown_sent & SHUTDOWN_RECEIVE:  # we said we receive no more: sent before the guest saw it
            self.counters["dropped"] += 1
            return
        if length > conn.free:  # 5.10.6.3.1: only when the peer has room for the payload
            self._report("VSOCK_CREDIT_EXCEEDED", "virtio 1.4, 5.10.6.3.1",
                         f"RW of {length} bytes with {conn.free} bytes of credit", queue=index, id=chain.id)
            self.counters["dropped"] += 1
            return
        data = io.read(layout.HDR_SIZE, length)
        conn.rx_cnt = (conn.rx_cnt + length) & U32
        conn.received += data
        del conn.received[:-4096]
        self.counters["bytes_in"] += length
        service = conn.service
        if service == "echo":
            conn.out += data  # held in the receive buffer until sent back
        else:
            conn.fwd_cnt = (conn.fwd_cnt + length) & U32
            if callable(service):
                reply = service(data)
                if reply:
                    conn.out += reply
        # Tell a guest whose view of our free space is low about the room there is now.
        if (conn.buf_alloc - ((conn.rx_cnt - conn.fwd_cnt_sent) & U32)) < conn.buf_alloc // 2 < conn.free:
            conn.credit_update_due = True

    def _maybe_finish(self, conn: Connection) -> None:
        """Clean disconnect (5.10.6.5): SHUTDOWN both ways is answered with RST; half-shut echo closes after."""
        if conn.peer_shutdown == SHUTDOWN_BOTH:
            self._rst(conn.host_port, conn.guest_port)
            self._close(conn, "shut down by guest")
        elif conn.peer_shutdown & SHUTDOWN_SEND and not conn.out and not conn.shutdown_sent:
            conn.shutdown_sent = SHUTDOWN_BOTH  # no more data will come: finish from our side too
            conn.state = "closing"
            self._queue(OP_SHUTDOWN, conn, SHUTDOWN_BOTH)

    def _rst(self, host_port: int, guest_port: int, kind: int = TYPE_STREAM) -> None:
        self.control.append((OP_RST, guest_port, host_port, 0, kind))
        self.counters["rst_sent"] += 1

    def _reset_conn(self, conn: Connection) -> None:
        self._rst(conn.host_port, conn.guest_port)
        self._close(conn, "reset by host")

    def _close(self, conn: Connection, why: str) -> None:
        self.connections.pop(conn.key, None)
        self.control = deque(c for c in self.control
                             if (c[1], c[2]) != conn.key or c[0] == OP_RST)
        conn.state = "closed"
        record = conn.to_json()
        record["closed"] = why
        self.closed.append(record)

    def _queue(self, op: int, conn: Connection, flags: int = 0) -> None:
        self.control.append((op, conn.guest_port, conn.host_port, flags, TYPE_STREAM))

    # -- towards the guest --------------------------------------------------------------------------

    def _packet(self, op: int, guest_port: int, host_port: int, flags: int, kind: int, payload: bytes) -> bytes:
        conn = self.connections.get((guest_port, host_port))
        buf_alloc = conn.buf_alloc if conn is not None else 0
        fwd_cnt = conn.fwd_cnt if conn is not None else 0
        if conn is not None:
            conn.fwd_cnt_sent = fwd_cnt
            conn.credit_update_due = False
        return HDR.pack(HOST_CID, self.guest_cid, host_port, guest_port, len(payload), kind, op, flags, buf_alloc,
                        fwd_cnt) + payload

    def _next(self, room: int) -> bytes | None:
        """The next packet for an rx buffer of ``room`` bytes: control first, then data within credit."""
        if self.control:
            op, guest_port, host_port, flags, kind = self.control.popleft()
            return self._packet(op, guest_port, host_port, flags, kind, b"")
        for conn in list(self.connections.values()):
            if conn.out and conn.state in ("established", "closing") and not conn.shutdown_sent & SHUTDOWN_SEND:
                take = min(len(conn.out), conn.peer_free, room - layout.HDR_SIZE, MAX_PKT_PAYLOAD)
                if take <= 0:
                    continue
                payload = bytes(conn.out[:take])
                del conn.out[:take]
                conn.tx_cnt = (conn.tx_cnt + take) & U32
                if conn.service == "echo":
                    conn.fwd_cnt = (conn.fwd_cnt + take) & U32  # echoed bytes leave the receive buffer
                self.counters["bytes_out"] += take
                packet = self._packet(OP_RW, conn.guest_port, conn.host_port, 0, TYPE_STREAM, payload)
                if not conn.out:
                    self._maybe_finish(conn)
                return packet
        for conn in self.connections.values():
            if conn.credit_update_due:
                return self._packet(OP_CREDIT_UPDATE, conn.guest_port, conn.host_port, 0, TYPE_STREAM, b"")
        return None

    def _deliver(self) -> None:
        held = self.held[RX]
        while held:
            chain, io = held[0]
            packet = self._next(io.writable_len)
            if packet is None:
                break
            held.popleft()
            done = io.write(0, packet)
            self.counters["packets_out"] += 1
            op = int.from_bytes(packet[30:32], "little")
            self.complete(RX, chain, done, f"vsock {OP_TEXT.get(op, op)} len={len(packet) - layout.HDR_SIZE}")
        if self.tx_throttled and len(self.control) < self.backlog:
            self.tx_throttled = False
            if self.pump(TX):
                self._deliver()

    def _deliver_events(self) -> None:
        held = self.held[EVENTQ]
        while self.events and held:
            chain, io = held.popleft()
            event = self.events.popleft()
            done = io.write(0, layout.virtio_vsock_event.build({"id": event}))
            self.complete(EVENTQ, chain, done, "vsock event TRANSPORT_RESET")

    # -- state -------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        state = super().state()
        state.update({
            "guest_cid": self.guest_cid,
            "services": {str(p): s if isinstance(s, str) else "callable" for p, s in sorted(self.services.items())},
            "connections": [c.to_json() for c in self.connections.values()],
            "closed": list(self.closed),
            "control_pending": len(self.control),
            "counters": dict(self.counters),
        })
        return state
