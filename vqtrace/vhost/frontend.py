"""A vhost-user front-end in Python: what QEMU does for a vhost-user device, as a library.

:class:`FrontEnd` connects to a back-end's socket, negotiates features and protocol
features the way QEMU's vhost-user code does (QEMU docs/interop/vhost-user.rst,
"Communication"), shares guest memory from a memfd (SET_MEM_TABLE, or
GET_MAX_MEM_SLOTS + ADD_MEM_REG with VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS),
takes an inflight buffer (GET/SET_INFLIGHT_FD), opens the back-end request channel
(SET_BACKEND_REQ_FD) and answers what arrives on it, and sets up split or packed
virtqueues with :mod:`vqtrace.driver` (SET_VRING_NUM, _BASE, _ADDR, _KICK, _CALL,
_ENABLE). Ring addresses are sent as front-end virtual addresses (the memfd's user
address, distinct from its guest-physical base), as QEMU sends them.

:class:`BlkClient` issues virtio-blk requests (virtio 1.4, 5.2.6) on queue 0. The
demo, the tests, replay and the benchmarks use both.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..driver import LINUX_MODERN_ALIGN, DriverQueue, GuestDriver, UsedBuffer
from ..errors import VhostUserError
from ..model import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_IN_ORDER,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_VERSION_1,
    Layout,
)
from . import protocol as p
from .codec import BACKEND_CHANNEL, MAX_FDS, Framer, Message, close_fds, recv_with_fds
from .server import connect_unix
from .state import Session

#: Protocol features this front-end can use (it asks for those the back-end offers).
FRONTEND_PROTOCOL_FEATURES = p.protocol_mask(
    "MQ", "REPLY_ACK", "BACKEND_REQ", "BACKEND_SEND_FD", "CONFIG", "INFLIGHT_SHMFD", "RESET_DEVICE",
    "CONFIGURE_MEM_SLOTS", "STATUS")
#: Transport features the driver handles (virtio 1.4, 6); RING_PACKED only when asked for.
DRIVER_TRANSPORT_FEATURES = (1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_F_INDIRECT_DESC | 1 << VIRTIO_F_EVENT_IDX
                             | 1 << VIRTIO_F_IN_ORDER)
DEVICE_FEATURE_BITS = (1 << 24) - 1  # 6: bits 0-23 are device-specific (more above 41, not used here)
USER_ADDR_BASE = 0x7E00_0000_0000  # where the front-end "maps" guest RAM in its address space
DEFAULT_MEMORY = 32 << 20
VIRTIO_ID_BLOCK = 2
#: virtio 1.4, 2.1: ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK
DEVICE_STATUS_READY = 1 | 2 | 8 | 4


@dataclass
class Queue:
    """A queue the front-end set up: the driver side and its notification fds."""

    index: int
    driver: DriverQueue
    kick_fd: int
    call_fd: int
    err_fd: int
    calls: int = 0
    inband_calls: int = 0
    notified: bool = False  # a used buffer notification came and the used ring was not read since


@dataclass
class BackendRequests:
    """What the back-end asked on its channel (for tests and the demo)."""

    messages: list[Message] = field(default_factory=list)


def drain_used(driver: DriverQueue) -> list[UsedBuffer]:
    """Every used buffer, until a look *after* re-arming the notification finds none.

    ``get_used`` re-arms (``used_event`` with EVENT_IDX) after reading: a buffer the device
    used between that read and the re-arm brought no notification (2.7.7.2), so the ring is
    read once more, as Linux does after virtqueue_enable_cb.
    """
    used = driver.get_used()
    while used:
        more = driver.get_used()
        if not more:
            break
        used.extend(more)
    return used


class FrontEnd:
    """A vhost-user front-end with guest memory in a memfd.

    ``protocol_features`` limits what is asked for (default :data:`FRONTEND_PROTOCOL_FEATURES`);
    ``regions`` splits guest RAM into that many memory table entries (one memfd, increasing
    mmap offsets) to exercise multi-region mapping; ``inband`` asks for in-band notifications.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, sock: socket.socket | None = None,
                 memory_size: int = DEFAULT_MEMORY, guest_base: int = 0, regions: int = 1,
                 protocol_features: int = FRONTEND_PROTOCOL_FEATURES, timeout: float = 10.0,
                 connect_timeout: float = 5.0, inband: bool = False, device_type: int = 0) -> None:
        if sock is None:
            if path is None:
                raise VhostUserError("a front-end needs a socket path or a connected socket")
            sock = connect_unix(path, connect_timeout)
        self.sock = sock
        self.path = str(path) if path is not None else "socket"
        self.timeout = timeout
        self.want_protocol = protocol_features | (p.protocol_mask("INBAND_NOTIFICATIONS") if inband else 0)
        self.device_type = device_type
        self.session = Session()
        self.framer = Framer("back-end")
        self.channel: socket.socket | None = None
        self.channel_framer = Framer("back-end", BACKEND_CHANNEL)
        self.backend_requests = BackendRequests()
        self.guest = GuestDriver.in_memfd(memory_size, guest_base, user_addr=USER_ADDR_BASE)
        self.regions = max(1, regions)
        self.queues: dict[int, Queue] = {}
        self.inflight_fd: int | None = None
        self.inflight: p.Inflight | None = None
        self.config: bytes = b""
        self.features = 0
        self.closed = False
        self.sent: list[Message] = []  # every message sent (tests compare them with the trace)
        self.received: list[Message] = []

    # -- messages -------------------------------------------------------------------------

    def _send(self, sock: socket.socket, msg: Message) -> None:
        raw = msg.raw
        try:
            sent = socket.send_fds(sock, [raw], msg.fds) if msg.fds else sock.send(raw)
            if sent < len(raw):
                sock.sendall(raw[sent:])
        except OSError as err:
            raise VhostUserError(f"cannot send {msg.describe()} to the back-end: {err.strerror or err}") from None
        self.sent.append(msg)

    def request(self, request: int, payload: bytes = b"", *, fds: Iterable[int] = (), need_reply: bool = False,
                keep_fds: bool = True) -> Message | None:
        """Send a request; its reply when one is owed (a REPLY_ACK status is checked: non-zero raises).

        The fds are sent as they are (the caller keeps its copies unless ``keep_fds`` is false).
        """
        if self.closed:
            raise VhostUserError("the front-end is closed")
        ack = need_reply and self.session.has_protocol("REPLY_ACK")
        msg = Message.make(request, payload, fds=list(fds), need_reply=ack)
        pending = self.session.on_request(msg)
        try:
            self._send(self.sock, msg)
        finally:
            if not keep_fds:
                close_fds(list(msg.fds))
        if pending is None:
            return None
        reply = self._wait_reply(msg)
        self.session.on_reply(reply)
        if pending.why == "REPLY_ACK":  # "zero on success or non-zero on failure"
            status = reply.u64()
            if status:
                raise VhostUserError(f"the back-end refused {msg.describe()}: status {status}")
        return reply

    def _read_message(self, sock: socket.socket, framer: Framer) -> list[Message]:
        try:
            data, fds, truncated = recv_with_fds(sock, framer.wanted())
        except OSError as err:
            raise VhostUserError(f"the back-end connection failed: {err.strerror or err}") from None
        if not data:
            close_fds(list(fds))
            cut = f" in the middle of a message ({framer.pending()})" if framer.mid_message else ""
            raise VhostUserError(f"the back-end closed the connection{cut}")
        if truncated:
            close_fds(list(fds))
            raise VhostUserError(f"the back-end sent more than {MAX_FDS} fds with one message")
        return framer.feed(data, fds)

    def _wait_reply(self, msg: Message) -> Message:
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise VhostUserError(f"the back-end did not answer {msg.describe()} within {self.timeout:g} s")
            watched = [self.sock] + ([self.channel] if self.channel is not None else [])
            ready, _, _ = select.select(watched, [], [], left)
            if self.channel is not None and self.channel in ready:
                self.service_channel()
            if self.sock in ready:
                for got in self._read_message(self.sock, self.framer):
                    self.received.append(got)
                    if not got.reply:
                        close_fds(got.fds)
                        raise VhostUserError(f"the back-end sent a request on the main socket: {got.describe()}")
                    if got.request != msg.request:
                        close_fds(got.fds)
                        raise VhostUserError(f"the back-end answered {msg.describe()} with {got.describe()}")
                    return got

    def service_channel(self) -> int:
        """Read and answer what the back-end sent on its request channel; how many messages."""
        if self.channel is None:
            return 0
        try:
            messages = self._read_message(self.channel, self.channel_framer)
        except VhostUserError:
            self.channel.close()
            self.channel = None
            return 0
        for msg in messages:
            self.backend_requests.messages.append(msg)
            close_fds(msg.fds)  # host notifiers, shared objects: not used by this front-end
            if msg.request == p.BACKEND_VRING_CALL and not msg.reply:
                queue = self.queues.get(p.unpack_state(msg.payload).index)
                if queue is not None:
                    queue.inband_calls += 1
                    queue.notified = True
            if msg.request == p.BACKEND_CONFIG_CHANGE_MSG:
                self.config = b""  # read it again when asked
            if self.session.reply_reason(msg) is not None:
                status = 0 if msg.request in (1, 2, 3, 4, 5) else 1  # we cannot serve the shared-object ones
                self._send(self.channel, msg.make_reply(p.pack_u64(status)))
        return len(messages)

    # -- negotiation ----------------------------------------------------------------------

    def negotiate(self, features: int | None = None, *, packed: bool = False, num_queues: int = 1,
                  queue_size: int = 256, config_size: int = 0) -> int:
        """GET_FEATURES .. SET_FEATURES as QEMU does at start; returns the features acked.

        ``features``: the bits the driver accepts (default: the device-specific bits 0-23 and the
        transport features the driver handles, RING_PACKED when ``packed``).
        """
        offered = self.request(p.GET_FEATURES).u64()  # type: ignore[union-attr]
        if features is None:
            features = DEVICE_FEATURE_BITS | DRIVER_TRANSPORT_FEATURES | (1 << VIRTIO_F_RING_PACKED if packed else 0)
        acked = offered & features
        if offered & p.F_PROTOCOL_FEATURES:
            acked |= p.F_PROTOCOL_FEATURES
            theirs = self.request(p.GET_PROTOCOL_FEATURES).u64()  # type: ignore[union-attr]
            self.request(p.SET_PROTOCOL_FEATURES, p.pack_u64(theirs & self.want_protocol))
        if self.session.has_protocol("MQ"):
            count = self.request(p.GET_QUEUE_NUM).u64()  # type: ignore[union-attr]
            if count < num_queues:
                raise VhostUserError(f"the back-end supports {count} queues, {num_queues} wanted")
        self.request(p.SET_OWNER)
        if self.session.has_protocol("BACKEND_REQ"):
            mine, theirs_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.request(p.SET_BACKEND_REQ_FD, fds=[theirs_end.fileno()], need_reply=True)
            finally:
                theirs_end.close()
            self.channel = mine
        if self.session.has_protocol("CONFIG") and config_size:
            self.read_config(0, config_size)
        if self.session.has_protocol("INFLIGHT_SHMFD"):
            reply = self.request(p.GET_INFLIGHT_FD, p.pack_inflight(p.Inflight(0, 0, num_queues, queue_size)))
            assert reply is not None
            self.inflight = p.unpack_inflight(reply.payload)
            self.inflight_fd = reply.fds[0] if reply.fds else None
            if self.inflight_fd is not None:
                self.request(p.SET_INFLIGHT_FD, reply.payload, fds=[self.inflight_fd])
        self.request(p.SET_FEATURES, p.pack_u64(acked), need_reply=True)
        self.features = acked
        return acked

    def read_config(self, offset: int, size: int) -> bytes:
        """GET_CONFIG (VHOST_USER_PROTOCOL_F_CONFIG): ``size`` bytes of the device config space."""
        reply = self.request(p.GET_CONFIG, p.pack_config(offset, bytes(size)))
        assert reply is not None
        config = p.unpack_config(reply.payload)
        if not reply.payload or config.size != size:
            raise VhostUserError(f"the back-end could not read {size} config bytes at offset {offset}")
        self.config = config.data
        return config.data

    # -- memory ---------------------------------------------------------------------------

    @property
    def memory(self):
        return self.guest.memory

    def memory_regions(self) -> list[p.MemoryRegion]:
        region = self.guest.memory.regions[0]
        count = self.regions
        step = region.size // count
        step -= step % 4096
        out = []
        for k in range(count):
            size = step if k + 1 < count else region.size - step * (count - 1)
            out.append(p.MemoryRegion(region.guest_addr + k * step, size, USER_ADDR_BASE + k * step, k * step))
        return out

    def share_memory(self) -> None:
        """Send guest RAM: ADD_MEM_REG per region with CONFIGURE_MEM_SLOTS, else one SET_MEM_TABLE."""
        fd = self.guest.fd
        assert fd is not None
        regions = self.memory_regions()
        if self.session.has_protocol("CONFIGURE_MEM_SLOTS"):
            slots = self.request(p.GET_MAX_MEM_SLOTS).u64()  # type: ignore[union-attr]
            if slots < len(regions):
                raise VhostUserError(f"the back-end has {slots} memory slots, {len(regions)} needed")
            for region in regions:
                self.request(p.ADD_MEM_REG, p.pack_region(region), fds=[fd], need_reply=True)
        else:
            self.request(p.SET_MEM_TABLE, p.pack_memory(regions), fds=[fd] * len(regions), need_reply=True)

    def user_addr(self, guest_addr: int) -> int:
        return self.guest.memory.guest_to_user(guest_addr)

    # -- queues ---------------------------------------------------------------------------

    def setup_queue(self, index: int = 0, size: int = 256, *, layout: Layout | None = None,
                    enable: bool = True) -> Queue:
        """Lay out a queue and hand it to the back-end (SET_VRING_NUM, _BASE, _ADDR, _KICK, _CALL, _ENABLE)."""
        if layout is None:
            layout = Layout.PACKED if self.features >> VIRTIO_F_RING_PACKED & 1 else Layout.SPLIT
        kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        err = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        inband = self.session.has_protocol("INBAND_NOTIFICATIONS")
        driver = self.guest.queue(index, size, layout=layout, features=self.features, align=LINUX_MODERN_ALIGN,
                                  kick=self._inband_kick if inband else self._kick, device_type=self.device_type)
        queue = Queue(index, driver, kick, call, err)
        self.queues[index] = queue
        config = driver.config
        self.request(p.SET_VRING_NUM, p.pack_state(index, size))
        base = p.pack_packed_base(0, True, 0, True) if layout is Layout.PACKED else 0
        self.request(p.SET_VRING_BASE, p.pack_state(index, base))
        self.request(p.SET_VRING_ADDR, p.pack_addr(p.VringAddr(index, 0, self.user_addr(config.desc),
                                                                self.user_addr(config.device),
                                                                self.user_addr(config.driver), config.device)))
        # The last of these waits for the back-end's REPLY_ACK: once it came, every one of them was
        # handled, so a first kick (an eventfd, faster than messages through a proxy) cannot find
        # the ring started without its call fd.
        enabling = bool(enable and self.features & p.F_PROTOCOL_FEATURES)
        if not (inband and self.channel is not None):
            self.request(p.SET_VRING_KICK, p.pack_vring_file(index), fds=[kick])
            self.request(p.SET_VRING_CALL, p.pack_vring_file(index), fds=[call])
            self.request(p.SET_VRING_ERR, p.pack_vring_file(index), fds=[err], need_reply=not enabling)
        # else "VHOST_USER_VRING_KICK" starts the ring and BACKEND_VRING_CALL replaces the call fd
        if enabling:
            self.request(p.SET_VRING_ENABLE, p.pack_state(index, 1), need_reply=True)
        return queue

    def start(self, *, status: bool = True) -> None:
        """After the queues: tell a back-end that follows device status that the driver is ready."""
        if status and self.session.has_protocol("STATUS"):
            self.request(p.SET_STATUS, p.pack_u64(DEVICE_STATUS_READY), need_reply=True)

    def _kick(self, driver: DriverQueue) -> None:
        os.eventfd_write(self.queues[driver.config.index].kick_fd, 1)

    def _inband_kick(self, driver: DriverQueue) -> None:
        self.request(p.VRING_KICK, p.pack_state(driver.config.index, 0), need_reply=True)

    def wait(self, index: int = 0, timeout: float | None = None) -> list[UsedBuffer]:
        """Wait for a used buffer notification on queue ``index``, then take the used buffers.

        Like an interrupt-driven guest driver, the used ring is read after a notification (the
        call eventfd, or BACKEND_VRING_CALL in band), not polled: a tracer between the two
        sides sees every completion before the driver can reuse its descriptors.
        """
        queue = self.queues[index]
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        poller = select.poll()
        poller.register(queue.call_fd, select.POLLIN)
        poller.register(self.sock, select.POLLIN)
        if self.channel is not None:
            poller.register(self.channel, select.POLLIN)
        while True:
            if queue.notified:
                queue.notified = False
                used = drain_used(queue.driver)
                if used:
                    return used
            left = deadline - time.monotonic()
            if left <= 0:
                raise VhostUserError(f"queue {index}: no used buffer within "
                                     f"{self.timeout if timeout is None else timeout:g} s")
            for fd, _ in poller.poll(left * 1000):
                if fd == queue.call_fd:
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(queue.call_fd)
                        queue.calls += 1
                        queue.notified = True
                elif self.channel is not None and fd == self.channel.fileno():
                    self.service_channel()
                elif fd == self.sock.fileno():
                    self._check_alive()

    def _check_alive(self) -> None:
        try:
            data = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError as err:
            raise VhostUserError(f"the back-end connection failed: {err.strerror or err}") from None
        if not data:
            raise VhostUserError("the back-end closed the connection")
        raise VhostUserError("the back-end sent a message nobody asked for on the main socket")

    def stop_queue(self, index: int) -> int:
        """GET_VRING_BASE: the back-end stops the ring and says where it stopped."""
        reply = self.request(p.GET_VRING_BASE, p.pack_state(index, 0))
        assert reply is not None
        return p.unpack_state(reply.payload).num

    # -- teardown -------------------------------------------------------------------------

    def close(self, *, stop: bool = True) -> None:
        """Stop the rings (GET_VRING_BASE, when ``stop``), close the socket and every fd."""
        if self.closed:
            return
        if stop:
            with contextlib.suppress(VhostUserError, OSError):
                for index in list(self.queues):
                    self.stop_queue(index)
        self.closed = True
        self.sock.close()
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        for queue in self.queues.values():
            for fd in (queue.kick_fd, queue.call_fd, queue.err_fd):
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.queues.clear()
        if self.inflight_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.inflight_fd)
            self.inflight_fd = None
        self.framer.close()
        self.channel_framer.close()
        self.guest.close()

    def __enter__(self) -> FrontEnd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(stop=exc[0] is None)


# ---------------------------------------------------------------------------------------------
# virtio-blk requests (virtio 1.4, 5.2.6)

VIRTIO_BLK_T_IN = 0
VIRTIO_BLK_T_OUT = 1
VIRTIO_BLK_T_FLUSH = 4
VIRTIO_BLK_T_GET_ID = 8
VIRTIO_BLK_S_OK = 0
SECTOR_SIZE = 512
_BLK_HDR = struct.Struct("<IIQ")  # 5.2.6 struct virtio_blk_req: le32 type, le32 reserved, le64 sector


@dataclass
class BlkResult:
    """One completed virtio-blk request."""

    type: int
    sector: int
    length: int
    status: int
    data: bytes = b""
    used_len: int = 0


class BlkClient:
    """virtio-blk requests over a :class:`FrontEnd` (queue 0 unless told otherwise)."""

    def __init__(self, frontend: FrontEnd, queue: int = 0) -> None:
        self.fe = frontend
        self.queue = queue

    @classmethod
    def connect(cls, path: str | os.PathLike[str], *, packed: bool = False, queue_size: int = 128,
                **kwargs: object) -> BlkClient:
        """Connect, negotiate, share memory and set up the request queue, as QEMU's vhost-user-blk does."""
        fe = FrontEnd(path, device_type=VIRTIO_ID_BLOCK, **kwargs)  # type: ignore[arg-type]
        try:
            fe.negotiate(packed=packed, queue_size=queue_size, config_size=60)
            fe.share_memory()
            fe.setup_queue(0, queue_size)
            fe.start()
        except BaseException:
            fe.close(stop=False)
            raise
        return cls(fe)

    @property
    def capacity(self) -> int:
        """Sectors, from the config space (5.2.4 ``capacity``), 0 when the back-end has no config."""
        if len(self.fe.config) >= 8:
            return struct.unpack_from("<Q", self.fe.config)[0]
        return 0

    def submit(self, kind: int, sector: int, *, data: bytes = b"", read_len: int = 0, token: object = None) -> int:
        """Make one request available (not kicked): header, data, then the status byte (5.2.6)."""
        readable = [_BLK_HDR.pack(kind, 0, sector)]
        if data:
            readable.append(bytes(data))
        writable = ([read_len] if read_len else []) + [1]
        return self.fe.queues[self.queue].driver.add(readable, writable, token=token or (kind, sector,
                                                                                          len(data) or read_len))

    def kick(self) -> None:
        self.fe.queues[self.queue].driver.kick()

    def complete(self, timeout: float | None = None) -> list[BlkResult]:
        """Wait for used requests and decode them."""
        out = []
        for used in self.fe.wait(self.queue, timeout):
            kind, sector, length = used.token
            body = used.written
            status = body[-1] if body else -1
            out.append(BlkResult(kind, sector, length, status, body[:-1], used.len))
        return out

    def run(self, kind: int, sector: int, *, data: bytes = b"", read_len: int = 0) -> BlkResult:
        self.submit(kind, sector, data=data, read_len=read_len)
        self.kick()
        results: list[BlkResult] = []
        while not results:
            results = self.complete()
        return results[0]

    def read(self, sector: int, length: int) -> BlkResult:
        return self.run(VIRTIO_BLK_T_IN, sector, read_len=length)

    def write(self, sector: int, data: bytes) -> BlkResult:
        return self.run(VIRTIO_BLK_T_OUT, sector, data=data)

    def flush(self) -> BlkResult:
        return self.run(VIRTIO_BLK_T_FLUSH, 0)

    def get_id(self) -> BlkResult:
        return self.run(VIRTIO_BLK_T_GET_ID, 0, read_len=20)

    def close(self) -> None:
        self.fe.close()

    def __enter__(self) -> BlkClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.fe.close(stop=exc[0] is None)
