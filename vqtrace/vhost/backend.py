"""A vhost-user back-end serving a reference device, sans-io (QEMU docs/interop/vhost-user.rst).

:class:`BackendEngine` answers a front-end (QEMU's vhost-user-blk-pci and friends, or
:class:`~vqtrace.vhost.frontend.FrontEnd`) for one :class:`~vqtrace.devices.base.Device`:
feature and protocol-feature negotiation (GET/SET_FEATURES, GET/SET_PROTOCOL_FEATURES),
REPLY_ACK, the memory table (SET_MEM_TABLE, GET_MAX_MEM_SLOTS / ADD_MEM_REG /
REM_MEM_REG) mapped writable from the region fds, the config space (GET/SET_CONFIG),
device status, and the vrings: NUM, ADDR (front-end virtual addresses, translated
through the regions' user addresses), BASE, KICK / CALL / ERR (with the invalid FD
flag), ENABLE and GET_VRING_BASE, which stops a ring ("Ring states"). A kick pops the
ring's available chains into the device ("The back-end must start ring upon receiving
a kick"); the used buffer notification the device asks for is a write to the call fd,
or VHOST_USER_BACKEND_VRING_CALL on the back-end channel with in-band notifications.

Everything it receives and sends is recorded, and each queue's ring activity too (a
:class:`~vqtrace.vhost.tap.TrackerTap` polled before and after the device runs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import VhostUserError, VqtraceError
from ..events import Direction, Event, EventKind
from ..rings.device import DeviceQueue
from . import protocol as p
from .codec import BACKEND_CHANNEL, FRONTEND_CHANNEL, MAX_FDS, Framer, Message
from .engine import (
    Close,
    Command,
    DataReceived,
    Log,
    Notified,
    Notify,
    OsResources,
    Peer,
    PeerClosed,
    Record,
    Resources,
    Send,
    SessionEnded,
    Signal,
    Stop,
    Tick,
    Unwatch,
    Watch,
)
from .memview import LiveMemory
from .state import Session
from .tap import TrackerTap

#: Protocol features the back-end offers ("Protocol features").
BACKEND_PROTOCOL_FEATURES = p.protocol_mask(
    "MQ", "REPLY_ACK", "BACKEND_REQ", "CONFIG", "RESET_DEVICE", "INBAND_NOTIFICATIONS", "CONFIGURE_MEM_SLOTS",
    "STATUS")
MAX_MEM_SLOTS = 32  # libvhost-user's VHOST_USER_MAX_RAM_SLOTS
VHOST_F_LOG_ALL = 26


class _Fatal(VhostUserError):
    """A request after which the back-end closes the connection."""


class _Queue(DeviceQueue):
    """The rings' device side, with the notification test under the name the devices call."""

    def needs_notification(self) -> bool:
        return self.should_notify()


@dataclass
class _Ring:
    kick: int | None = None
    call: int | None = None
    err: int | None = None
    queue: _Queue | None = None
    tap: TrackerTap | None = None


@dataclass
class BackendStats:
    kicks: int = 0
    calls: int = 0
    requests: int = 0
    messages: dict[str, int] = field(default_factory=dict)


class BackendEngine:
    """One front-end's session with a reference device."""

    def __init__(self, device, *, source: str = "vhost-user", resources: Resources | None = None,
                 protocol_features: int = BACKEND_PROTOCOL_FEATURES, trace_rings: bool = True,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.device = device
        self.source = source
        self.resources = resources or OsResources()
        self.offered_protocol = protocol_features
        self.trace_rings = trace_rings
        self.clock = clock  # stamps what the device did after the event that started it
        self.session = Session()
        self.memory = LiveMemory()
        self.framers = {Peer.FRONTEND: Framer("front-end"), Peer.FRONTEND_CHANNEL: Framer("front-end", BACKEND_CHANNEL)}
        self.rings: dict[int, _Ring] = {}
        self.channel = False
        self.ended = False
        self.stats = BackendStats()
        self.device_type = device.device_id
        self._out: list[Command] = []
        self._now = 0
        self._attached = False

    def wanted(self, peer: Peer) -> int:
        return self.framers[peer].wanted()

    # -- entry point ----------------------------------------------------------------------

    def handle(self, event: object) -> list[Command]:
        if self.ended:
            if isinstance(event, DataReceived):
                for fd in event.fds:
                    self.resources.close(fd)
            return []
        out = self._out = []
        try:
            if isinstance(event, Notified):
                self._now = event.time_ns
                self._kicked(event.queue, event.count, inband=False)
            elif isinstance(event, DataReceived):
                self._now = event.time_ns
                if event.truncated:
                    for fd in event.fds:
                        self.resources.close(fd)
                    raise VhostUserError(f"the {event.peer} sent more than {MAX_FDS} fds with one message")
                for msg in self.framers[event.peer].feed(event.data, event.fds):
                    if event.peer is Peer.FRONTEND:
                        self._request(msg)
                    else:
                        self._channel_reply(msg)
            elif isinstance(event, Tick):
                self._now = event.time_ns
                for index, ring in list(self.rings.items()):
                    vring = self.session.vrings.get(index)
                    if vring is not None and vring.kick == "nofd" and ring.queue is not None:
                        self._process(index)
            elif isinstance(event, PeerClosed):
                if event.peer is Peer.FRONTEND_CHANNEL:
                    out.append(Log(logging.INFO, "the front-end closed the back-end channel"))
                    out.append(Close(Peer.FRONTEND_CHANNEL))
                    self.channel = False
                else:
                    framer = self.framers[event.peer]
                    cut = f" in the middle of a message ({framer.pending()})" if framer.mid_message else ""
                    why = f": {event.error}" if event.error else ""
                    self._end(f"the front-end disconnected{cut}{why}", error=bool(cut))
            elif isinstance(event, Stop):
                self._end(event.reason or "stopped", error=False)
        except VhostUserError as err:
            self._end(str(err), error=True)
        return out

    # -- recording ------------------------------------------------------------------------

    def _record(self, msg: Message, direction: Direction, queue: int | None = None) -> None:
        packed = self.session.layout.value == "packed"
        self._out.append(Record(Event(EventKind.VHOST_USER, self._now, self.source, queue=queue, direction=direction,
                                      data=msg.raw, device_type=self.device_type, channel=msg.channel,
                                      fds=len(msg.fds), features=self.session.features, packed=packed)))

    def _send(self, msg: Message, peer: Peer = Peer.FRONTEND) -> None:
        self._record(msg, Direction.TO_DRIVER, _vring_index(msg))
        self._out.append(Send(peer, msg))

    def _reply(self, request: Message, payload: bytes = b"", fds: list[int] | None = None) -> None:
        self._send(request.make_reply(payload, fds=fds))

    # -- requests -------------------------------------------------------------------------

    def _request(self, msg: Message) -> None:
        self._record(msg, Direction.TO_DEVICE, _vring_index(msg))
        name = msg.name.removeprefix("VHOST_USER_")
        self.stats.messages[name] = self.stats.messages.get(name, 0) + 1
        if msg.reply:
            self._close_fds(msg.fds)
            raise VhostUserError(f"the front-end sent a reply on the main socket: {msg.describe()}")
        pending = self.session.on_request(msg)
        handler = _HANDLERS.get(msg.request)
        ok = True
        answered = False
        try:
            if handler is None:
                self._out.append(Log(logging.WARNING, f"unsupported request {msg.describe()}"))
                self._close_fds(msg.fds)
                ok = False
            else:
                answered = bool(handler(self, msg))
        except _Fatal:
            self._close_fds(msg.fds)
            raise
        except (VqtraceError, ValueError) as err:
            self._out.append(Log(logging.WARNING, f"{msg.describe()} failed: {err}"))
            self._close_fds(msg.fds)
            ok = False
        if pending is not None:
            self.session.pending.clear()  # the back-end answers at once: nothing stays owed
        if pending is not None and not answered:
            # "The payload should be set to zero on success or non-zero on failure"
            self._reply(msg, p.pack_u64(0 if ok else 1))

    def _close_fds(self, fds: list[int]) -> None:
        for fd in fds:
            self.resources.close(fd)

    # each handler returns True when it sent the reply itself

    def _get_features(self, msg: Message) -> bool:
        offered = self.device.offered_features | p.F_PROTOCOL_FEATURES
        self._reply(msg, p.pack_u64(offered))
        return True

    def _set_features(self, msg: Message) -> bool:
        features = msg.u64() & ~(p.F_PROTOCOL_FEATURES | 1 << VHOST_F_LOG_ALL)
        self.device.negotiate(features)
        return False

    def _get_protocol_features(self, msg: Message) -> bool:
        self._reply(msg, p.pack_u64(self.offered_protocol))
        return True

    def _set_protocol_features(self, msg: Message) -> bool:
        wanted = msg.u64()
        inband = p.protocol_mask("INBAND_NOTIFICATIONS")
        needed = p.protocol_mask("BACKEND_REQ", "REPLY_ACK")
        if wanted & inband and wanted & needed != needed:
            # "the back-end should close the connection as a response to a
            # VHOST_USER_SET_PROTOCOL_FEATURES message that sets the in-band notifications
            # feature flag without the other two."
            raise _Fatal("the front-end asked for in-band notifications without BACKEND_REQ and REPLY_ACK")
        return False

    def _noop(self, msg: Message) -> bool:
        return False

    def _get_queue_num(self, msg: Message) -> bool:
        self._reply(msg, p.pack_u64(self.device.num_queues))
        return True

    def _get_max_mem_slots(self, msg: Message) -> bool:
        self._reply(msg, p.pack_u64(MAX_MEM_SLOTS))
        return True

    def _map(self, region: p.MemoryRegion, fd: int) -> None:
        try:
            self.memory.add_fd(fd, region.guest_addr, region.size, region.mmap_offset, writable=True,
                               user_addr=region.user_addr, name=f"region@0x{region.guest_addr:x}")
        finally:
            self.resources.close(fd)

    # Running queues keep going across memory table changes: they read through self.memory.

    def _set_mem_table(self, msg: Message) -> bool:
        self.memory.close()
        regions = p.unpack_memory(msg.payload)
        fds = list(msg.fds)
        msg.fds.clear()
        try:
            for region, fd in zip(regions, fds, strict=True):
                self._map(region, fd)
        finally:
            self._close_fds(fds[len(regions):])
        self._attach_memory()
        return False

    def _add_mem_reg(self, msg: Message) -> bool:
        fd = msg.fds.pop()
        self._map(p.unpack_region(msg.payload), fd)
        self._attach_memory()
        return False

    def _rem_mem_reg(self, msg: Message) -> bool:
        # "If a file descriptor is passed, the back-end MUST close it without using it otherwise."
        self._close_fds(msg.fds)
        msg.fds.clear()
        region = p.unpack_region(msg.payload)
        self.memory.remove(region.guest_addr)
        self._attach_memory()
        return False

    def _attach_memory(self) -> None:
        self.device.attach(self.memory)
        self._attached = True

    def _ring(self, index: int) -> _Ring:
        if not 0 <= index < self.device.num_queues:
            raise VhostUserError(f"vring {index} does not exist: the {self.device.name} device has "
                                 f"{self.device.num_queues} queues")
        return self.rings.setdefault(index, _Ring())

    def _vring_setup(self, msg: Message) -> bool:
        index = p.unpack_state(msg.payload).index if msg.request != p.SET_VRING_ADDR else p.unpack_addr(
            msg.payload).index
        self._stop_ring(index)
        return False

    def _set_vring_fd(self, msg: Message) -> bool:
        index = p.unpack_vring_file(msg.payload)[0]
        ring = self._ring(index)
        fd = msg.fds.pop() if msg.fds else None
        if msg.request == p.SET_VRING_KICK:
            if ring.kick is not None:
                self._out.append(Unwatch(ring.kick))
                self.resources.close(ring.kick)
            ring.kick = fd
            if fd is not None:
                self._out.append(Watch(fd, Notify.KICK, index))
            # "This signals that polling should be used instead of waiting for the kick"
            self._start(index)
        elif msg.request == p.SET_VRING_CALL:
            if ring.call is not None:
                self.resources.close(ring.call)
            ring.call = fd
        else:
            if ring.err is not None:
                self.resources.close(ring.err)
            ring.err = fd
        return False

    def _get_vring_base(self, msg: Message) -> bool:
        index = p.unpack_state(msg.payload).index
        ring = self._ring(index)
        if ring.queue is not None:
            self._process(index)  # what is already available is used before the ring stops
        base = ring.queue.vring_base if ring.queue is not None else self.session.vrings[index].base
        self._stop_ring(index)
        # libvhost-user closes the kick fd here: the ring waits for a new SET_VRING_KICK.
        if ring.kick is not None:
            self._out.append(Unwatch(ring.kick))
            self.resources.close(ring.kick)
            ring.kick = None
        self._reply(msg, p.pack_state(index, base))
        return True

    def _set_vring_enable(self, msg: Message) -> bool:
        index = p.unpack_state(msg.payload).index
        self._ring(index)
        if self.session.vrings[index].enabled:
            self._process(index)
        return False

    def _set_backend_req_fd(self, msg: Message) -> bool:
        from .engine import Attach

        if self.channel:
            self._out.append(Close(Peer.FRONTEND_CHANNEL))
        self._out.append(Attach(Peer.FRONTEND_CHANNEL, msg.fds.pop()))
        self.channel = True
        return False

    def _get_config(self, msg: Message) -> bool:
        config = p.unpack_config(msg.payload)
        data = self.device.read_config(config.offset, config.size)
        self._out.append(Record(Event(EventKind.CONFIG, self._now, self.source, direction=Direction.TO_DRIVER,
                                      data=data, device_type=self.device_type, offset=config.offset,
                                      features=self.session.features)))
        self._reply(msg, p.pack_config(config.offset, data, config.flags))
        return True

    def _set_config(self, msg: Message) -> bool:
        config = p.unpack_config(msg.payload)
        self._out.append(Record(Event(EventKind.CONFIG, self._now, self.source, direction=Direction.TO_DEVICE,
                                      data=config.data, device_type=self.device_type, offset=config.offset,
                                      features=self.session.features)))
        self._activity(self.device.write_config(config.offset, config.data))
        return False

    def _set_status(self, msg: Message) -> bool:
        self.device.set_status(msg.u64())
        return False

    def _get_status(self, msg: Message) -> bool:
        self._reply(msg, p.pack_u64(self.device.status))
        return True

    def _reset(self, msg: Message) -> bool:
        for index in list(self.rings):
            self._stop_ring(index)
        self.device.reset()
        if self._attached:
            self.device.attach(self.memory)
        return False

    def _vring_kick_inband(self, msg: Message) -> bool:
        index = p.unpack_state(msg.payload).index
        self._kicked(index, 1, inband=True)
        return False

    # -- rings ----------------------------------------------------------------------------

    def _start(self, index: int) -> None:
        """Create the device-side queue of a vring once its size and addresses are known."""
        ring = self._ring(index)
        vring = self.session.vring(index)
        if ring.queue is not None or not vring.ready or not self.memory.regions:
            return
        try:
            config = self.session.queue_config(index, self.device_type)
        except VqtraceError as err:
            self._out.append(Log(logging.WARNING, f"vring {index}: cannot start: {err}"))
            return
        ring.queue = _Queue.from_vring_base(config, self.memory, vring.base)
        if self.trace_rings:
            ring.tap = TrackerTap(config, self.memory, vring.base, self.source)
        self.device.set_queue(index, ring.queue)
        vring.started = True

    def _stop_ring(self, index: int) -> None:
        ring = self.rings.get(index)
        if ring is None or ring.queue is None:
            return
        self._poll_tap(ring)
        ring.queue = None
        ring.tap = None
        self.device.set_queue(index, None)

    def _kicked(self, index: int, count: int, *, inband: bool) -> None:
        self.stats.kicks += 1
        self._out.append(Record(Event(EventKind.KICK, self._now, self.source, queue=index,
                                      direction=Direction.TO_DEVICE, data=count.to_bytes(8, "little"),
                                      device_type=self.device_type, channel=1 if inband else 0,
                                      features=self.session.features)))
        self.session.kicked(index)
        self._start(index)
        self._process(index)

    def _process(self, index: int) -> None:
        ring = self.rings.get(index)
        vring = self.session.vrings.get(index)
        if ring is None or ring.queue is None or vring is None or not vring.enabled:
            return
        self._poll_tap(ring)
        activity = self.device.kick(index)
        self.stats.requests += len(activity.completions)
        if activity.completions:
            self._now = self.clock()
        self._poll_tap(ring)
        self._activity(activity)

    def _poll_tap(self, ring: _Ring) -> None:
        if ring.tap is not None:
            try:
                self._out.extend(Record(e) for e in ring.tap.poll(self._now))
            except VqtraceError:
                ring.tap = None

    def _activity(self, activity) -> None:
        for anomaly in activity.anomalies:
            self._out.append(Record(Event(EventKind.ANOMALY, self._now, self.source, queue=anomaly.queue,
                                          device_type=self.device_type, anomaly=anomaly,
                                          features=self.session.features)))
        for index in sorted(activity.notify):
            self._call(index)
        if activity.config_changed and self.channel and self.session.has_protocol("CONFIG"):
            msg = Message.make(p.BACKEND_CONFIG_CHANGE_MSG, channel=BACKEND_CHANNEL)
            self._send(msg, Peer.FRONTEND_CHANNEL)

    def _call(self, index: int) -> None:
        """A used buffer notification: the call fd, or BACKEND_VRING_CALL in band."""
        ring = self.rings.get(index)
        vring = self.session.vrings.get(index)
        if ring is None:
            return
        self.stats.calls += 1
        if ring.call is not None:
            self._out.append(Signal(ring.call))
            inband = False
        elif self.channel and self.session.has_protocol("INBAND_NOTIFICATIONS") and (
                vring is None or vring.call != "nofd"):
            self._send(Message.make(p.BACKEND_VRING_CALL, p.pack_state(index, 0), channel=BACKEND_CHANNEL),
                       Peer.FRONTEND_CHANNEL)
            inband = True
        else:
            return  # the driver polls ("polling will be used instead of waiting for the call")
        self._out.append(Record(Event(EventKind.CALL, self._now, self.source, queue=index,
                                      direction=Direction.TO_DRIVER, device_type=self.device_type,
                                      channel=1 if inband else 0, features=self.session.features)))

    def _channel_reply(self, msg: Message) -> None:
        """The front-end's answer on the back-end channel (to a need_reply request)."""
        self._record(msg, Direction.TO_DEVICE)

    # -- ending ---------------------------------------------------------------------------

    def _end(self, reason: str, *, error: bool) -> None:
        if self.ended:
            return
        self.ended = True
        out = self._out
        out.append(Log(logging.ERROR if error else logging.INFO, reason))
        for index in list(self.rings):
            self._stop_ring(index)
        for ring in self.rings.values():
            for fd in (ring.kick, ring.call, ring.err):
                if fd is not None:
                    if fd == ring.kick:
                        out.append(Unwatch(fd))
                    self.resources.close(fd)
        self.rings.clear()
        for framer in self.framers.values():
            framer.close()
        out.append(Close(Peer.FRONTEND))
        out.append(Close(Peer.FRONTEND_CHANNEL))
        self.release()
        out.append(SessionEnded(reason, error))

    def release(self) -> None:
        """Unmap guest memory (the device keeps its image open: it outlives sessions)."""
        self.device.attach(None)
        self.memory.close()


def _vring_index(msg: Message) -> int | None:
    if msg.channel != FRONTEND_CHANNEL:
        if msg.request == p.BACKEND_VRING_CALL and len(msg.payload) == 8:
            return p.unpack_state(msg.payload).index
        return None
    if msg.request in (p.SET_VRING_KICK, p.SET_VRING_CALL, p.SET_VRING_ERR) and not msg.reply and len(
            msg.payload) == 8:
        return p.unpack_vring_file(msg.payload)[0]
    if msg.request in (p.SET_VRING_NUM, p.SET_VRING_BASE, p.GET_VRING_BASE, p.SET_VRING_ENABLE, p.VRING_KICK,
                       p.SET_VRING_ADDR) and len(msg.payload) >= 8:
        return p.unpack_state(msg.payload).index
    return None


_HANDLERS = {
    p.GET_FEATURES: BackendEngine._get_features,
    p.SET_FEATURES: BackendEngine._set_features,
    p.SET_OWNER: BackendEngine._noop,
    p.RESET_OWNER: BackendEngine._noop,
    p.GET_PROTOCOL_FEATURES: BackendEngine._get_protocol_features,
    p.SET_PROTOCOL_FEATURES: BackendEngine._set_protocol_features,
    p.GET_QUEUE_NUM: BackendEngine._get_queue_num,
    p.GET_MAX_MEM_SLOTS: BackendEngine._get_max_mem_slots,
    p.SET_MEM_TABLE: BackendEngine._set_mem_table,
    p.ADD_MEM_REG: BackendEngine._add_mem_reg,
    p.REM_MEM_REG: BackendEngine._rem_mem_reg,
    p.SET_VRING_NUM: BackendEngine._vring_setup,
    p.SET_VRING_ADDR: BackendEngine._vring_setup,
    p.SET_VRING_BASE: BackendEngine._vring_setup,
    p.SET_VRING_KICK: BackendEngine._set_vring_fd,
    p.SET_VRING_CALL: BackendEngine._set_vring_fd,
    p.SET_VRING_ERR: BackendEngine._set_vring_fd,
    p.GET_VRING_BASE: BackendEngine._get_vring_base,
    p.SET_VRING_ENABLE: BackendEngine._set_vring_enable,
    p.SET_BACKEND_REQ_FD: BackendEngine._set_backend_req_fd,
    p.GET_CONFIG: BackendEngine._get_config,
    p.SET_CONFIG: BackendEngine._set_config,
    p.SET_STATUS: BackendEngine._set_status,
    p.GET_STATUS: BackendEngine._get_status,
    p.RESET_DEVICE: BackendEngine._reset,
    p.VRING_KICK: BackendEngine._vring_kick_inband,
}
