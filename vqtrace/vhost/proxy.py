"""The tracing proxy between a vhost-user front-end and back-end, sans-io.

:class:`ProxyEngine` forwards every message of both channels in order, each with its
own fds, unchanged in meaning, and records each one. Where it must see what the
peers signal it puts its own fds in place of theirs:

- SET_VRING_KICK: the back-end gets the proxy's eventfd; the front-end's kick fd is
  watched and each kick is forwarded at once, then the ring is read (chains made
  available). SET_VRING_CALL / SET_VRING_ERR the other way round: the back-end
  signals the proxy's eventfd, the proxy writes the front-end's fd at once, then reads
  the ring (chains used). With ``poll`` (``--poll MS``) notification fds pass through
  untouched and :class:`~vqtrace.vhost.engine.Tick` samples every started ring.
- SET_BACKEND_REQ_FD: the back-end gets one end of a new socket pair, the proxy reads
  the other and forwards each back-end request (and the front-end's replies) between
  it and the front-end's socket.

Guest memory (SET_MEM_TABLE, ADD_MEM_REG / REM_MEM_REG) and the inflight buffer
(GET_INFLIGHT_FD reply, SET_INFLIGHT_FD) are mapped read-only from the fds before
they are passed on. A front-end that reconnects with SET_INFLIGHT_FD gets its buffer
decoded: the log names the heads the back-end must resubmit ("Inflight I/O tracking").
"""

from __future__ import annotations

import logging
import mmap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ..dissectors import vhost_user as vu
from ..errors import GuestMemoryError, VhostUserError, VqtraceError
from ..events import Direction, Event, EventKind
from ..memory import GuestMemory
from ..model import Layout, QueueConfig
from . import protocol as p
from .codec import BACKEND_CHANNEL, FRONTEND_CHANNEL, MAX_FDS, Framer, Message
from .engine import (
    Attach,
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
    RecordBatch,
    Resources,
    Send,
    SessionEnded,
    Signal,
    Stop,
    Tick,
    Unwatch,
    WakeAfter,
    Watch,
    Work,
)
from .fastpath import RingBatch
from .memview import LiveMemory
from .state import Session

log = logging.getLogger("vqtrace.vhost")


class RingTap(Protocol):
    """Reads one queue's rings between notifications and reports what happened as events."""

    def poll(self, time_ns: int) -> list[Event]: ...


#: ``tap_factory(config, memory, base, source) -> RingTap``: a reader for one started queue.
TapFactory = Callable[[QueueConfig, GuestMemory, int, str], RingTap]

#: New chains a kick walks at once (after it is forwarded); the rest are walked when nothing else waits
#: (Work), this many at a time, so that a call, whose driver waits for it, never waits behind a long walk
#: (a call walks the chains its used elements need itself). A queue depth's worth: the call that follows
#: a kick needs those chains walked, and a walk while the device works costs the call nothing.
KICK_WALK = 32
WORK_WALK = 32

FOLLOW_UP_FIRST = 0.002  # seconds to the first follow-up look at rings with chains in flight
FOLLOW_UP_LAST = 0.2  # ... and the longest wait between two looks

_NOTIFY_REQUESTS = {p.SET_VRING_KICK: Notify.KICK, p.SET_VRING_CALL: Notify.CALL, p.SET_VRING_ERR: Notify.ERR}


@dataclass
class _Fds:
    """One vring's notification fds as the proxy holds them."""

    theirs: dict[Notify, int] = field(default_factory=dict)  # the front-end's kick/call/err fd
    ours: dict[Notify, int] = field(default_factory=dict)  # the eventfd the back-end got instead


@dataclass
class InflightReport:
    """What the inflight buffer says one queue's back-end must resubmit."""

    queue: int
    layout: Layout
    heads: list[int]
    version: int


class ProxyEngine:
    """One proxied vhost-user session: front-end <-> vqtrace <-> back-end."""

    def __init__(self, *, source: str = "vhost-user", resources: Resources | None = None,
                 tap_factory: TapFactory | None = None, poll: bool = False, device_type: int = 0) -> None:
        self.source = source
        self.resources = resources or OsResources()
        self.tap_factory = tap_factory
        self.poll_mode = poll
        self.device_type = device_type
        self.session = Session()
        self.memory = LiveMemory()  # guest memory, mapped read-only
        self.inflight_memory: mmap.mmap | None = None
        self.inflight_reports: list[InflightReport] = []
        self._reported_inflight: set[int] = set()
        self._inflight_reconnect = False  # SET_INFLIGHT_FD seen: report each queue once its ring is set up
        self._inflight_skip = 0
        self.framers = {
            Peer.FRONTEND: Framer("front-end"),
            Peer.BACKEND: Framer("back-end"),
            Peer.FRONTEND_CHANNEL: Framer("front-end", BACKEND_CHANNEL),
            Peer.BACKEND_CHANNEL: Framer("back-end", BACKEND_CHANNEL),
        }
        self.fds: dict[int, _Fds] = {}
        self.taps: dict[int, RingTap] = {}
        self.live_rings: set[int] = set()  # rings set up (SET_VRING_KICK) and not stopped
        self.due: dict[int, None] = {}  # rings with new chains not walked yet (in turn: see _work)
        self.broken_rings: set[int] = set()  # rings whose reader failed, until set up again
        self._wake_pending = False
        self._followup_delay = FOLLOW_UP_FIRST
        self.channel_open = False
        self.ended = False
        self.messages = 0
        self.notifications = 0
        self._now = 0

    # -- the one entry point --------------------------------------------------------------

    def handle(self, event: object) -> list[Command]:
        if self.ended:
            if isinstance(event, DataReceived):
                for fd in event.fds:
                    self.resources.close(fd)
            return []
        out: list[Command] = []
        try:
            if isinstance(event, Notified):
                self._notified(event, out)
            elif isinstance(event, Work):
                self._work(event.time_ns, out)
            elif isinstance(event, DataReceived):
                self._received(event, out)
            elif isinstance(event, Tick):
                self._tick(event.time_ns, out)
            elif isinstance(event, PeerClosed):
                self._closed(event, out)
            elif isinstance(event, Stop):
                self._end(out, event.reason or "stopped", error=False, time_ns=event.time_ns)
        except VhostUserError as err:
            self._end(out, str(err), error=True)
        return out

    # -- messages -------------------------------------------------------------------------

    def wanted(self, peer: Peer) -> int:
        """How many bytes to read from ``peer`` next (the edge reads no more: see codec)."""
        return self.framers[peer].wanted()

    def _received(self, event: DataReceived, out: list[Command]) -> None:
        framer = self.framers[event.peer]
        self._now = event.time_ns
        if event.truncated:
            for fd in event.fds:
                self.resources.close(fd)
            raise VhostUserError(f"the {event.peer} sent more than {MAX_FDS} fds with one message")
        for msg in framer.feed(event.data, event.fds):
            self.messages += 1
            if event.peer is Peer.FRONTEND:
                self._from_frontend(msg, event.time_ns, out)
            elif event.peer is Peer.BACKEND:
                self._from_backend(msg, event.time_ns, out)
            elif event.peer is Peer.BACKEND_CHANNEL:
                self._channel_from_backend(msg, event.time_ns, out)
            else:
                self._channel_from_frontend(msg, event.time_ns, out)

    def _record_message(self, msg: Message, direction: Direction, time_ns: int, out: list[Command],
                        queue: int | None = None) -> None:
        session = self.session
        params = {"xen_mmap": 1} if session.has_protocol("XEN_MMAP") else None
        out.append(Record(Event(EventKind.VHOST_USER, time_ns, self.source, queue=queue, direction=direction,
                                data=msg.raw, device_type=self.device_type, channel=msg.channel,
                                fds=len(msg.fds), features=session.features,
                                packed=session.layout is Layout.PACKED, params=params)))

    def _from_frontend(self, msg: Message, time_ns: int, out: list[Command]) -> None:
        self._record_message(msg, Direction.TO_DEVICE, time_ns, out, _queue_of(msg))
        if msg.reply:
            out.append(Log(logging.WARNING, f"front-end sent a reply on the main socket: {msg.describe()}"))
            out.append(Send(Peer.BACKEND, msg))
            return
        self.session.on_request(msg)
        request = msg.request
        keep: tuple[int, ...] = ()
        if request == p.SET_MEM_TABLE:
            self._map_table(msg, out)
        elif request == p.ADD_MEM_REG:
            self._map_region(p.unpack_region(msg.payload), msg.fds[0], out)
        elif request == p.REM_MEM_REG:
            self._unmap_region(p.unpack_region(msg.payload), out)
        elif request in _NOTIFY_REQUESTS:
            keep = self._substitute(msg, _NOTIFY_REQUESTS[request], out)
        elif request == p.SET_BACKEND_REQ_FD:
            self._open_channel(msg, out)
        elif request == p.SET_INFLIGHT_FD:
            self._map_inflight(p.unpack_inflight(msg.payload), msg.fds[0], out)
        elif request == p.VRING_KICK:
            # In-band kick ("VHOST_USER_VRING_KICK"): forwarded as it is, then the ring is read.
            index = p.unpack_state(msg.payload).index
            self.live_rings.add(index)  # "the ring is also started on the VHOST_USER_VRING_KICK message"
            out.append(Send(Peer.BACKEND, msg))
            self._notified(Notified(Notify.KICK, index, time_ns), out, inband=True)
            return
        elif request in (p.SET_FEATURES, p.SET_VRING_NUM, p.SET_VRING_ADDR, p.SET_VRING_BASE):
            if request == p.SET_FEATURES:
                self.taps.clear()  # the layout and the features the readers use may change
            else:
                self._drop_tap(_queue_of(msg))
        elif request in (p.RESET_DEVICE, p.RESET_OWNER):
            self.taps.clear()
            self.live_rings.clear()
        out.append(Send(Peer.BACKEND, msg, keep=keep))

    def _from_backend(self, msg: Message, time_ns: int, out: list[Command]) -> None:
        self._record_message(msg, Direction.TO_DRIVER, time_ns, out, _queue_of(msg))
        if not msg.reply:
            out.append(Log(logging.WARNING, f"back-end sent a request on the main socket: {msg.describe()}"))
        else:
            try:
                pending = self.session.on_reply(msg)
            except VhostUserError as err:
                out.append(Log(logging.WARNING, f"back-end: {err}"))
                pending = None
            if pending is not None and msg.request == p.GET_INFLIGHT_FD and msg.fds:
                self._map_inflight(p.unpack_inflight(msg.payload), msg.fds[0], out, report=False)
            if pending is not None and msg.request == p.GET_VRING_BASE:
                # The back-end stopped the ring: read what it did last, then forget the reader.
                index = p.unpack_state(msg.payload).index
                self._poll_queue(index, time_ns, out)
                self.taps.pop(index, None)
                self.live_rings.discard(index)
        out.append(Send(Peer.FRONTEND, msg))

    def _channel_from_backend(self, msg: Message, time_ns: int, out: list[Command]) -> None:
        """A back-end request on its channel ("Back-end communication"), or a reply of it."""
        self._record_message(msg, Direction.TO_DRIVER, time_ns, out, _queue_of(msg))
        if not msg.reply:
            self.session.on_request(msg)
        if not msg.reply and msg.request in (p.BACKEND_VRING_CALL, p.BACKEND_VRING_ERR):
            # In-band call: the used ring is read before the message goes on (see _notified).
            kind = Notify.CALL if msg.request == p.BACKEND_VRING_CALL else Notify.ERR
            self._notified(Notified(kind, p.unpack_state(msg.payload).index, time_ns), out, inband=True)
        out.append(Send(Peer.FRONTEND_CHANNEL, msg))

    def _channel_from_frontend(self, msg: Message, time_ns: int, out: list[Command]) -> None:
        """The front-end's reply on the back-end channel."""
        self._record_message(msg, Direction.TO_DEVICE, time_ns, out)
        if msg.reply:
            try:
                self.session.on_reply(msg)
            except VhostUserError as err:
                out.append(Log(logging.WARNING, f"front-end: {err}"))
        out.append(Send(Peer.BACKEND_CHANNEL, msg))

    # -- memory ---------------------------------------------------------------------------

    # The ring readers keep following their queues across memory table changes (QEMU adds and
    # removes regions while the device runs): they read through self.memory, whose bounds they
    # re-check whenever its regions change.

    def _map_table(self, msg: Message, out: list[Command]) -> None:
        self.memory.close()
        for region, fd in zip(p.unpack_memory(msg.payload), msg.fds, strict=True):
            self._map_region(region, fd, out)

    def _map_region(self, region: p.MemoryRegion, fd: int, out: list[Command]) -> None:
        try:
            self.memory.add_fd(fd, region.guest_addr, region.size, region.mmap_offset, writable=False,
                               user_addr=region.user_addr, name=f"region@0x{region.guest_addr:x}")
        except GuestMemoryError as err:
            out.append(Log(logging.WARNING, f"cannot map guest memory region 0x{region.guest_addr:x}+"
                                            f"0x{region.size:x}: {err}; its rings are not traced"))

    def _unmap_region(self, region: p.MemoryRegion, out: list[Command]) -> None:
        try:
            self.memory.remove(region.guest_addr)
        except GuestMemoryError:
            out.append(Log(logging.WARNING, f"REM_MEM_REG of region 0x{region.guest_addr:x}, which is not mapped"))

    def _map_inflight(self, inflight: p.Inflight, fd: int, out: list[Command], *, report: bool = True) -> None:
        """Map the inflight buffer read-only (its fd goes on to the peer unchanged)."""
        if self.inflight_memory is not None:
            self.inflight_memory.close()
            self.inflight_memory = None
        self._reported_inflight.clear()
        self._inflight_reconnect = False
        if not inflight.mmap_size:
            return
        aligned = inflight.mmap_offset - inflight.mmap_offset % mmap.PAGESIZE
        try:
            self.inflight_memory = mmap.mmap(fd, inflight.mmap_size + inflight.mmap_offset - aligned,
                                             flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=aligned)
        except (OSError, ValueError, OverflowError) as err:
            out.append(Log(logging.WARNING, f"cannot map the inflight buffer ({inflight.mmap_size} bytes): {err}"))
            return
        self._inflight_skip = inflight.mmap_offset - aligned
        self._inflight_reconnect = report

    def inflight_region(self, index: int) -> bytes | None:
        """The bytes of queue ``index``'s region of the inflight buffer ("Inflight I/O tracking")."""
        inflight = self.session.inflight
        if self.inflight_memory is None or inflight is None or not inflight.num_queues:
            return None
        if index >= inflight.num_queues:
            return None
        stride = inflight.mmap_size // inflight.num_queues  # each queue's region, aligned by the back-end
        start = self._inflight_skip + index * stride
        return bytes(self.inflight_memory[start:start + stride])

    def _report_inflight(self, index: int, out: list[Command]) -> None:
        """After a reconnect (SET_INFLIGHT_FD), name the heads queue ``index`` must resubmit."""
        if not self._inflight_reconnect or index in self._reported_inflight:
            return
        self._reported_inflight.add(index)
        region = self.inflight_region(index)
        inflight = self.session.inflight
        if region is None or inflight is None:
            return
        layout = self.session.layout
        used_idx = None
        try:
            config = self.session.queue_config(index, self.device_type)
            if layout is Layout.SPLIT:
                used_idx = self.memory.read_u16(config.device + 2)  # used->idx
        except VqtraceError:
            config = None
        try:
            name = "vhost_user.inflight_packed" if layout is Layout.PACKED else "vhost_user.inflight_split"
            parsed = _parse_inflight(name, region, inflight.queue_size)
        except VqtraceError as err:
            out.append(Log(logging.WARNING, f"vring {index}: cannot decode the inflight region: {err}"))
            return
        if not parsed.version:
            return  # "Zero value indicates an uninitialized buffer"
        if layout is Layout.PACKED:
            heads = vu.inflight_packed_resubmit(parsed)
        else:
            heads = vu.inflight_split_resubmit(parsed, used_idx)
        self.inflight_reports.append(InflightReport(index, layout, heads, parsed.version))
        size = (vu.INFLIGHT_PACKED_HDR_SIZE + vu.INFLIGHT_PACKED_DESC_SIZE * inflight.queue_size
                if layout is Layout.PACKED else
                vu.INFLIGHT_SPLIT_HDR_SIZE + vu.INFLIGHT_SPLIT_DESC_SIZE * inflight.queue_size)
        out.append(Record(Event(EventKind.DATA, self._now, self.source, queue=index, data=region[:size],
                                device_type=self.device_type, features=self.session.features,
                                packed=layout is Layout.PACKED, layer=name,
                                params={"queue_size": inflight.queue_size})))
        if heads:
            shown = ", ".join(self._describe_head(config, head) for head in heads[:8])
            more = f", and {len(heads) - 8} more" if len(heads) > 8 else ""
            out.append(Log(logging.INFO, f"vring {index}: the inflight buffer says the back-end must resubmit "
                                         f"{len(heads)} request{'s' if len(heads) != 1 else ''}: {shown}{more}"))
        else:
            out.append(Log(logging.INFO, f"vring {index}: the inflight buffer holds no request to resubmit"))

    def _describe_head(self, config: QueueConfig | None, head: int) -> str:
        """``head 3 (blk OUT sector=8 len=512)``: a split chain read from the descriptor table."""
        if config is None or config.layout is Layout.PACKED:
            return f"head {head}"
        try:
            from ..requests import QueueContext, decode_request
            from ..rings.chain import walk_split_chain

            chain = walk_split_chain(config, self.memory, head)
            data = b"".join(self.memory.view(d.addr, min(d.len, 4096)) for d in chain.readable)
            request = decode_request(QueueContext(self.device_type, queue=config.index, features=config.features),
                                     data, None, None, readable_lens=[d.len for d in chain.readable],
                                     writable_lens=[d.len for d in chain.writable], lazy=True)
            return f"head {head} ({request.summary})"
        except Exception:  # the summary is a courtesy: the heads are the answer
            return f"head {head}"

    # -- notifications --------------------------------------------------------------------

    def _substitute(self, msg: Message, kind: Notify, out: list[Command]) -> tuple[int, ...]:
        """Put the proxy's eventfd in place of the front-end's kick/call/err fd (SET_VRING_*)."""
        index, nofd = p.unpack_vring_file(msg.payload)
        fds = self.fds.setdefault(index, _Fds())
        old = fds.theirs.pop(kind, None)
        if old is not None:
            if kind is Notify.KICK:
                out.append(Unwatch(old))
            self.resources.close(old)
        if kind is Notify.KICK:
            # The reader starts here, before the back-end can see this kick fd and move the
            # rings: the used ring's idx now is where the back-end resumes ("Ring states").
            self._drop_tap(index)
            self.broken_rings.discard(index)
            self.live_rings.add(index)
            self._tap(index, out)
            self._report_inflight(index, out)
        if nofd or self.poll_mode:
            if nofd and kind is not Notify.KICK and kind in fds.ours:
                out.append(Watch(fds.ours[kind], kind, index, None))
            return ()
        theirs = msg.fds[0]
        fds.theirs[kind] = theirs
        ours = fds.ours.get(kind)
        if ours is None:
            ours = fds.ours[kind] = self.resources.eventfd()
        if kind is Notify.KICK:
            out.append(Watch(theirs, kind, index, forward_to=ours))
        elif kind is Notify.CALL:
            out.append(Watch(ours, kind, index))  # forwarded by _notified, once the used ring is read
        else:
            out.append(Watch(ours, kind, index, forward_to=theirs))
        msg.fds = [ours]
        return (ours,)

    def has_work(self) -> bool:
        """Whether some ring has new chains to walk (the edge then feeds :class:`Work` when idle)."""
        return bool(self.due) and not self.ended

    def _notified(self, event: Notified, out: list[Command], *, inband: bool = False) -> None:
        """A kick (already forwarded by the edge: the driver's new chains stay put until they
        are used), or a call: the used ring is read first, then the call is forwarded, so
        the driver cannot reuse a chain's descriptors or buffers before they are recorded
        (a chain the back-end found by polling, without a kick, is first seen here).

        A kick walks at most KICK_WALK new chains, the rest wait for idle time (:meth:`_work`);
        a call reads the used elements, walks the chains they need that are not walked yet,
        copies the bytes the device wrote, and is forwarded: the records are made, and the
        trace written, after that (by the edge, once nothing waits). Taps without partial looks
        (TrackerTap) read everything at each notification."""
        self.notifications += 1
        queue = event.queue
        if event.kind is Notify.KICK:
            self.session.kicked(queue)
            self._poll_queue(queue, event.time_ns, out, avail_limit=KICK_WALK, used_side=False,
                             notify=(EventKind.KICK, Direction.TO_DEVICE,
                                     b"" if inband else event.count.to_bytes(8, "little"), 1 if inband else 0))
            return
        if event.kind is Notify.ERR:
            out.append(Log(logging.WARNING, f"vring {queue}: the back-end signalled an error"
                                            + (" (VHOST_USER_BACKEND_VRING_ERR)" if inband else "")))
            return
        self._poll_queue(queue, event.time_ns, out, avail_limit=0, follow_up=False,
                         notify=(EventKind.CALL, Direction.TO_DRIVER,
                                 b"" if inband else event.count.to_bytes(8, "little"), 1 if inband else 0))
        if not inband:
            fds = self.fds.get(queue)
            theirs = fds.theirs.get(Notify.CALL) if fds is not None else None
            if theirs is not None:
                out.append(Signal(theirs))
        self._follow_up(out)

    def _work(self, time_ns: int, out: list[Command]) -> None:
        """One step of deferred work: the next WORK_WALK new chains of the first ring due (rings take turns)."""
        if not self.due:
            return
        index = next(iter(self.due))
        del self.due[index]
        if index in self.taps:
            self._poll_queue(index, time_ns, out, avail_limit=WORK_WALK, used_side=False, follow_up=False)

    def _notify_event(self, queue: int, time_ns: int, notify: tuple[EventKind, Direction, bytes, int]) -> Event:
        kind, direction, data, channel = notify
        return Event(kind, time_ns, self.source, queue=queue, direction=direction, data=data,
                     device_type=self.device_type, channel=channel, features=self.session.features)

    def _tick(self, time_ns: int, out: list[Command]) -> None:
        if self.poll_mode:
            # Sampling (--poll): every ring from its SET_VRING_KICK until GET_VRING_BASE stops it.
            for index in sorted(self.live_rings):
                self._poll_queue(index, time_ns, out)
            return
        # A follow-up look (see _follow_up): the rings with chains still in flight.
        self._wake_pending = False
        found = False
        for index, tap in list(self.taps.items()):
            if getattr(tap, "in_flight", 0):
                before = len(out)
                self._poll_queue(index, time_ns, out, follow_up=False)
                found = found or len(out) > before
        self._followup_delay = FOLLOW_UP_FIRST if found else min(self._followup_delay * 2, FOLLOW_UP_LAST)
        self._follow_up(out)

    def _follow_up(self, out: list[Command]) -> None:
        """While chains are in flight, look again if no notification comes for a while: a driver
        that polls (SeaBIOS sets VIRTQ_AVAIL_F_NO_INTERRUPT) or event suppression means the
        device's used buffers may bring no call. The wait starts at 2 ms and doubles up to
        200 ms while the looks find nothing; every notification pushes the look back."""
        if self.poll_mode:
            return
        for tap in self.taps.values():
            if getattr(tap, "in_flight", 0):
                self._wake_pending = True
                out.append(WakeAfter(self._followup_delay))
                return
        if self._wake_pending:
            self._wake_pending = False
            out.append(WakeAfter(None))

    def _poll_queue(self, index: int, time_ns: int, out: list[Command], *, follow_up: bool = True,
                    notify: tuple[EventKind, Direction, bytes, int] | None = None, avail_limit: int | None = None,
                    used_side: bool = True) -> None:
        """Record what queue ``index`` did since the last look (after ``notify``, the KICK or CALL that
        made the proxy look, when one did). ``avail_limit`` and ``used_side``: a partial look, for a
        tap that can (FastTap.poll_batch); the ring is then due for more (``self.due``) while it
        has new chains not walked."""
        tap = self._tap(index, out)
        if tap is None:
            if notify is not None:
                out.append(Record(self._notify_event(index, time_ns, notify)))
            return
        batch_poll = getattr(tap, "poll_batch", None)
        try:
            if batch_poll is not None:
                events = batch_poll(time_ns, avail_limit, used_side=used_side)
                if tap.unwalked:
                    self.due[index] = None
                elif self.due:
                    self.due.pop(index, None)
            else:
                events = tap.poll(time_ns)
        except Exception as err:  # a ring reader failing must never stop the forwarding
            if notify is not None:
                out.append(Record(self._notify_event(index, time_ns, notify)))
            what = str(err) if isinstance(err, VqtraceError) else f"{type(err).__name__}: {err}"
            out.append(Log(logging.WARNING, f"vring {index}: cannot read the ring ({what}); not traced until it is "
                                            "set up again"))
            self.taps.pop(index, None)
            self.due.pop(index, None)
            self.live_rings.discard(index)
            self.broken_rings.add(index)
            return
        if events.__class__ is RingBatch:
            found = bool(events.avail or events.used)
            if notify is not None and events.blocks_of.features == self.session.features:
                events.notify = (int(notify[0]), notify[2], notify[3])
            elif notify is not None:
                out.append(Record(self._notify_event(index, time_ns, notify)))
            if events.notify is not None or found:
                out.append(RecordBatch(events))
        else:
            found = bool(events)
            if notify is not None:
                out.append(Record(self._notify_event(index, time_ns, notify)))
            out.extend(Record(event) for event in events)
        if follow_up:
            if found:
                self._followup_delay = FOLLOW_UP_FIRST
            self._follow_up(out)

    def _tap(self, index: int, out: list[Command]) -> RingTap | None:
        tap = self.taps.get(index)
        if tap is not None or self.tap_factory is None or index in self.broken_rings:
            return tap
        if index not in self.live_rings:
            return None  # stopped (GET_VRING_BASE) or not set up: its memory may hold anything now
        ring = self.session.vrings.get(index)
        if ring is None or not ring.ready or not self.memory.regions:
            return None
        try:
            config = self.session.queue_config(index, self.device_type)
            tap = self.tap_factory(config, self.memory, ring.base, self.source)
        except VqtraceError as err:
            out.append(Log(logging.WARNING, f"vring {index}: not traced: {err}"))
            return None
        self.taps[index] = tap
        return tap

    def _drop_tap(self, index: int | None) -> None:
        if index is not None:
            self.taps.pop(index, None)

    # -- the back-end channel -------------------------------------------------------------

    def _open_channel(self, msg: Message, out: list[Command]) -> None:
        """SET_BACKEND_REQ_FD: the back-end gets a new socket, the proxy relays it to the front-end's."""
        if self.channel_open:
            out.append(Close(Peer.FRONTEND_CHANNEL))
            out.append(Close(Peer.BACKEND_CHANNEL))
            for peer in (Peer.FRONTEND_CHANNEL, Peer.BACKEND_CHANNEL):
                self.framers[peer].close()
        theirs = msg.fds[0]
        mine, backend_end = self.resources.socketpair()
        out.append(Attach(Peer.FRONTEND_CHANNEL, theirs))
        out.append(Attach(Peer.BACKEND_CHANNEL, mine))
        msg.fds = [backend_end]
        self.channel_open = True

    # -- endings --------------------------------------------------------------------------

    def _closed(self, event: PeerClosed, out: list[Command]) -> None:
        framer = self.framers[event.peer]
        cut = f" in the middle of a message ({framer.pending()})" if framer.mid_message else ""
        why = f": {event.error}" if event.error else ""
        if event.peer in (Peer.FRONTEND_CHANNEL, Peer.BACKEND_CHANNEL):
            # One end of the back-end channel went away: close the other, as the peer would see it.
            other = Peer.BACKEND_CHANNEL if event.peer is Peer.FRONTEND_CHANNEL else Peer.FRONTEND_CHANNEL
            out.append(Log(logging.INFO, f"the {event.peer} closed{cut}{why}"))
            out.append(Close(event.peer))
            out.append(Close(other))
            for peer in (Peer.FRONTEND_CHANNEL, Peer.BACKEND_CHANNEL):
                self.framers[peer].close()
            self.channel_open = False
            return
        self._end(out, f"the {event.peer} disconnected{cut}{why}", error=bool(cut), time_ns=event.time_ns)

    def _end(self, out: list[Command], reason: str, *, error: bool, time_ns: int = 0) -> None:
        """Close every peer (each sees end of file, as without vqtrace) and release everything."""
        if self.ended:
            return
        self.ended = True
        out.append(Log(logging.ERROR if error else logging.INFO, reason))
        # Whatever the rings did last goes into the trace before it closes.
        for index in list(self.taps):
            self._poll_queue(index, time_ns, out)
        for peer in Peer:
            out.append(Close(peer))
        for fds in self.fds.values():
            for fd in fds.theirs.values():
                out.append(Unwatch(fd))
                self.resources.close(fd)
            for fd in fds.ours.values():
                out.append(Unwatch(fd))
                self.resources.close(fd)
        self.fds.clear()
        for framer in self.framers.values():
            framer.close()
        self.release()
        out.append(SessionEnded(reason, error))

    def release(self) -> None:
        """Unmap guest memory and the inflight buffer."""
        self.taps.clear()
        self.memory.close()
        if self.inflight_memory is not None:
            self.inflight_memory.close()
            self.inflight_memory = None


def _queue_of(msg: Message) -> int | None:
    """The vring a message concerns, when it names one."""
    if msg.channel == FRONTEND_CHANNEL:
        if msg.request in (p.SET_VRING_KICK, p.SET_VRING_CALL, p.SET_VRING_ERR) and not msg.reply:
            return p.unpack_vring_file(msg.payload)[0] if len(msg.payload) == 8 else None
        if msg.request in (p.SET_VRING_NUM, p.SET_VRING_BASE, p.GET_VRING_BASE, p.SET_VRING_ENABLE,
                           p.VRING_KICK, p.SET_VRING_ADDR) and len(msg.payload) >= 8:
            return p.unpack_state(msg.payload).index
    elif msg.request in (p.BACKEND_VRING_CALL, p.BACKEND_VRING_ERR) and len(msg.payload) == 8:
        return p.unpack_state(msg.payload).index
    return None


def _parse_inflight(layer: str, region: bytes, queue_size: int):
    from ..dissectors.layers import get_layer

    return get_layer(layer).parse(region, params={"queue_size": queue_size})
