"""The edge around a sans-io role: AF_UNIX sockets with SCM_RIGHTS, eventfds, epoll.

:class:`Loop` reads each peer's socket exactly as much as the role's framer wants
(the header, then the payload: ``recvmsg`` never mixes two messages' fds), feeds
the role, and carries out its commands. A watched eventfd is read and, when the
Watch says so, forwarded at once, before the role hears of it: notifications
are never held up by tracing work. The clock (``time.time_ns``) lives here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..events import Event
from .codec import recv_with_fds
from .engine import (
    Attach,
    Close,
    DataReceived,
    Log,
    Notified,
    Notify,
    Peer,
    PeerClosed,
    Record,
    RecordBatch,
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
from .fastpath import expand

log = logging.getLogger("vqtrace.vhost")

_READS_PER_WAKEUP = 64
_MAX_DEFERRED = 8  # wakeups the trace may wait for while other fds are ready


@dataclass(slots=True, eq=False)  # compared by identity: selectors keep the old data of an "equal" Watch
class _Notifier:
    fd: int
    kind: Notify
    queue: int
    forward_to: int | None


@dataclass(slots=True)
class _PeerSocket:
    peer: Peer
    sock: socket.socket


class _Poller:
    """epoll over fds, each with the object its readiness stands for (what ``selectors`` does, without
    its per-call bookkeeping: the loop wakes once or twice per request it forwards)."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self.data: dict[int, Any] = {}

    def register(self, fileobj: Any, data: Any) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        if fd in self.data:
            self._epoll.modify(fd, select.EPOLLIN)
        else:
            self._epoll.register(fd, select.EPOLLIN)
        self.data[fd] = data

    def unregister(self, fileobj: Any) -> None:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        if self.data.pop(fd, _MISSING) is not _MISSING:
            with contextlib.suppress(OSError, ValueError):  # closed already: epoll forgot it
                self._epoll.unregister(fd)

    def select(self, timeout: float | None) -> list[Any]:
        """The objects of the fds ready to read (waiting up to ``timeout`` seconds; None: for ever)."""
        try:
            ready = self._epoll.poll(-1 if timeout is None else timeout)
        except InterruptedError:
            return []
        data = self.data
        return [data[fd] for fd, _ in ready if fd in data]

    def pending(self) -> bool:
        """Whether some fd is ready now."""
        return bool(self._epoll.poll(0))

    def close(self) -> None:
        self._epoll.close()
        self.data.clear()


_MISSING = object()


class _Wakeup:
    """A socket pair that wakes the selector from a signal handler or another thread."""

    def __init__(self) -> None:
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)

    def poke(self) -> None:
        with contextlib.suppress(OSError):
            self.writer.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.reader.recv(256):
                pass

    def close(self) -> None:
        self.reader.close()
        self.writer.close()


class Loop:
    """Run ``role`` (``handle(event) -> commands``, ``wanted(peer) -> int``) over real fds."""

    def __init__(self, role: Any, *, sink: Callable[[Event], None] | None = None, poll_ms: float | None = None,
                 logger: logging.Logger | None = None,
                 sink_many: Callable[[list[Event]], object] | None = None,
                 block_sink: Callable[[list[Any]], int] | None = None) -> None:
        self.role = role
        self.sink = sink
        # Trace events are written after each wakeup's commands (a notification is forwarded
        # before its events are written), all in one go when ``sink_many`` is given, or by
        # ``block_sink`` (a :class:`~vqtrace.vhost.fastpath.BlockSink`), which also takes the
        # RingBatches of RecordBatch commands as they are.
        self.sink_many = sink_many
        self.block_sink = block_sink
        self._recording = sink is not None or sink_many is not None or block_sink is not None
        self._records: list[Any] = []
        self.poll_s = poll_ms / 1000 if poll_ms else None
        self.log = logger or log
        self.selector = _Poller()
        self.peers: dict[Peer, _PeerSocket] = {}
        self.watched: dict[int, _Notifier] = {}
        self.ended: SessionEnded | None = None
        self._stop_reason: str | None = None
        self._wakeup = _Wakeup()
        self.selector.register(self._wakeup.reader, None)
        self.events_recorded = 0
        self._queue: deque[object] = deque()
        self._feeding = False
        self._wake_at: float | None = None  # a role's follow-up Tick (WakeAfter), monotonic seconds
        self._deferred = 0  # wakeups since the trace was last written (run: another fd was ready)

    # -- setup ----------------------------------------------------------------------------

    def attach(self, peer: Peer, sock: socket.socket) -> None:
        """Read ``sock`` as ``peer`` (blocking socket: reads use MSG_DONTWAIT, sends block)."""
        sock.setblocking(True)
        self._detach(peer)
        entry = _PeerSocket(peer, sock)
        self.peers[peer] = entry
        self.selector.register(sock, entry)

    def request_stop(self, reason: str = "stopped") -> None:
        """Ask the loop to end the session (safe from a signal handler or another thread)."""
        self._stop_reason = reason
        self._wakeup.poke()

    # -- running --------------------------------------------------------------------------

    def run(self, timeout: float | None = None) -> SessionEnded:
        """Serve until the role ends the session (or ``timeout`` seconds pass: then it is stopped)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        next_tick = None if self.poll_s is None else time.monotonic() + self.poll_s
        select = self.selector.select
        has_work = getattr(self.role, "has_work", None)
        while self.ended is None:
            if self._stop_reason is not None:
                self._feed(Stop(time.time_ns(), self._stop_reason))
                break
            wait = None
            now = time.monotonic()
            if next_tick is not None:
                wait = max(0.0, next_tick - now)
            if self._wake_at is not None:
                left = max(0.0, self._wake_at - now)
                wait = left if wait is None else min(wait, left)
            if deadline is not None:
                left = deadline - now
                if left <= 0:
                    self._feed(Stop(time.time_ns(), f"time limit of {timeout:g} s reached"))
                    break
                wait = left if wait is None else min(wait, left)
            busy = has_work is not None and has_work()
            if busy or self._records:
                wait = 0.0  # only look: what is ready comes first, then the role's work, then the trace
            ready = select(wait)
            notified: list[tuple[_Notifier, int]] = []
            readable: list[_PeerSocket] = []
            for data in ready:
                if data.__class__ is _Notifier:
                    try:
                        count = os.eventfd_read(data.fd)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        self._unwatch(data.fd)
                        continue
                    if data.forward_to is not None:
                        # Forward at once: the peer waits for nothing vqtrace does.
                        try:  # noqa: SIM105 - once per notification: no context manager
                            os.eventfd_write(data.forward_to, 1)
                        except OSError:
                            pass
                    notified.append((data, count))
                elif data is None:
                    self._wakeup.drain()
                else:
                    readable.append(data)
            if notified:
                stamp = time.time_ns()
                if len(notified) > 1:  # the driver's kicks before the device's calls of the same instant
                    notified.sort(key=lambda item: item[0].kind is not Notify.KICK)
                for notifier, count in notified:
                    if self.watched.get(notifier.fd) is notifier:
                        self._feed(Notified(notifier.kind, notifier.queue, stamp, count))
            for entry in readable:
                if self.ended is None and self.peers.get(entry.peer) is entry:
                    self._read(entry)
            if next_tick is not None and time.monotonic() >= next_tick and self.ended is None:
                next_tick = time.monotonic() + self.poll_s
                self._wake_at = None
                self._feed(Tick(time.time_ns()))
            elif self._wake_at is not None and time.monotonic() >= self._wake_at and self.ended is None:
                self._wake_at = None
                self._feed(Tick(time.time_ns()))
            if self.ended is not None:
                break
            if not ready:
                # Nothing waits: the role's deferred work (a ring's new chains, a few at a time, so a
                # call that comes in meanwhile is read and forwarded first), then the trace.
                if busy:
                    self._feed(Work(time.time_ns()))
                elif self._records:
                    self._deferred = 0
                    self.flush()
            elif self._records:
                self._deferred += 1
                if self._deferred >= _MAX_DEFERRED:  # busy for long: write what waits anyway
                    self._deferred = 0
                    self.flush()
        self.flush()
        assert self.ended is not None
        return self.ended

    def flush(self) -> None:
        """Write the trace events gathered since the last flush."""
        records, self._records = self._records, []
        if not records:
            return
        if self.block_sink is not None:
            self.events_recorded += self.block_sink(records)
            return
        events = expand(records)
        if self.sink_many is not None:
            self.sink_many(events)
        elif self.sink is not None:
            for event in events:
                self.sink(event)
        self.events_recorded += len(events)

    def _read(self, entry: _PeerSocket) -> None:
        for _ in range(_READS_PER_WAKEUP):
            want = self.role.wanted(entry.peer)
            try:
                data, fds, truncated = recv_with_fds(entry.sock, want, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                self._feed(PeerClosed(entry.peer, time.time_ns(), err.strerror or str(err)))
                return
            if not data:
                for fd in fds:
                    os.close(fd)
                self._feed(PeerClosed(entry.peer, time.time_ns()))
                return
            self._feed(DataReceived(entry.peer, data, list(fds), time.time_ns(), truncated))
            if self.ended is not None or self.peers.get(entry.peer) is not entry or len(data) < want:
                return

    def _feed(self, event: object) -> None:
        """Hand ``event`` to the role and carry out its commands (and those of events they cause)."""
        self._queue.append(event)
        if self._feeding:
            return
        self._feeding = True
        try:
            while self._queue:
                event = self._queue.popleft()
                try:
                    commands = self.role.handle(event)
                except Exception as err:  # a bug, not bad input: end the session cleanly, one line
                    self.log.debug("internal error", exc_info=True)
                    self._fail(f"internal error handling {type(event).__name__}: {type(err).__name__}: {err}")
                    return
                for command in commands:
                    self._do(command)
        finally:
            self._feeding = False

    def _fail(self, reason: str) -> None:
        self.log.error(reason)
        self._queue.clear()
        for peer in list(self.peers):
            self._detach(peer)
        for fd in list(self.watched):
            self._unwatch(fd)
        with contextlib.suppress(Exception):
            release = getattr(self.role, "release", None)
            if release is not None:
                release()
        self.ended = SessionEnded(reason, True)

    # -- commands -------------------------------------------------------------------------

    def _do(self, command: object) -> None:
        kind = command.__class__
        if kind is Record or kind is RecordBatch:
            if self._recording:
                self._records.append(command.event if kind is Record else command.batch)
                if len(self._records) >= 512:
                    self.flush()
        elif kind is Send:
            self._send(command)
        elif kind is Signal:
            try:  # noqa: SIM105 - once per notification: no context manager
                os.eventfd_write(command.fd, 1)
            except OSError:
                pass
        elif kind is Watch:
            self._watch(command)
        elif kind is Unwatch:
            self._unwatch(command.fd)
        elif kind is Log:
            self.log.log(command.level, command.text)
        elif kind is Attach:
            self.attach(command.peer, socket.socket(fileno=command.fd))
        elif kind is Close:
            self._detach(command.peer)
        elif kind is WakeAfter:
            self._wake_at = None if command.seconds is None else time.monotonic() + command.seconds
        elif kind is SessionEnded:
            self.ended = command
        else:  # pragma: no cover - a role bug
            raise TypeError(f"unknown command {command!r}")

    def _send(self, command: Send) -> None:
        msg = command.message
        entry = self.peers.get(command.peer)
        try:
            if entry is None:
                raise BrokenPipeError(f"{command.peer} is not connected")
            raw = msg.raw
            sent = socket.send_fds(entry.sock, [raw], msg.fds) if msg.fds else entry.sock.send(raw)
            if sent < len(raw):
                entry.sock.sendall(raw[sent:])
        except OSError as err:
            if entry is not None:
                self._feed(PeerClosed(command.peer, time.time_ns(), f"cannot send {msg.describe()}: "
                                      f"{err.strerror or err}"))
        finally:
            for fd in msg.fds:
                if fd not in command.keep:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def _watch(self, command: Watch) -> None:
        notifier = _Notifier(command.fd, command.kind, command.queue, command.forward_to)
        self.selector.register(command.fd, notifier)
        self.watched[command.fd] = notifier

    def _unwatch(self, fd: int) -> None:
        if self.watched.pop(fd, None) is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.selector.unregister(fd)

    def _detach(self, peer: Peer) -> None:
        entry = self.peers.pop(peer, None)
        if entry is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.selector.unregister(entry.sock)
            entry.sock.close()

    # -- teardown -------------------------------------------------------------------------

    def close(self) -> None:
        """Close every peer socket and forget every watch (the role closed its own fds)."""
        for peer in list(self.peers):
            self._detach(peer)
        for fd in list(self.watched):
            self._unwatch(fd)
        self.selector.close()
        self._wakeup.close()

    def __enter__(self) -> Loop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
