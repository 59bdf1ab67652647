"""The sans-io vocabulary of vqtrace's vhost-user roles: events in, commands out.

A role (the proxy, the back-end) is an object with ``handle(event) -> list[Command]``.
Events say what happened at the edges (bytes and fds arrived on a peer's socket, a
peer went away, an eventfd fired, the poll timer ticked); commands say what the edge
must do (send a message with its fds, watch an eventfd and forward what it signals,
attach a socket, close a peer, record a trace event, log a line). Sockets, eventfds,
selectors, files and the clock live in the edge (:mod:`vqtrace.vhost.loop`); the
roles are tested as scripted exchanges (:mod:`vqtrace.vhost.playbook`), in the
style of mitmproxy's proxy core (mitmproxy/proxy/events.py, commands.py).

File descriptors are plain ints owned by whoever holds them: a role receives a
message's fds with the message and either sends them on (``Send`` hands them to the
edge, which closes its copies once sent, unless ``keep``), keeps them (watching an
eventfd, mapping memory) or closes them through its :class:`Resources`.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..events import Event
from .codec import Message


class Peer(enum.Enum):
    """A socket a role talks over."""

    FRONTEND = "front-end"  # the main socket, front-end side (QEMU)
    BACKEND = "back-end"  # the main socket, back-end side (qemu-storage-daemon, ...)
    FRONTEND_CHANNEL = "front-end back-end channel"  # SET_BACKEND_REQ_FD socket, front-end side
    BACKEND_CHANNEL = "back-end back-end channel"  # ... the back-end side

    def __str__(self) -> str:
        return self.value


class Notify(enum.Enum):
    """What an eventfd signals ("VHOST_USER_SET_VRING_KICK", "_CALL", "_ERR")."""

    KICK = "kick"
    CALL = "call"
    ERR = "err"


# ---------------------------------------------------------------------------------------------
# Events (edge -> role)


@dataclass
class DataReceived:
    """Bytes (and the fds that came with them) read from ``peer``'s socket."""

    peer: Peer
    data: bytes
    fds: list[int] = field(default_factory=list)
    time_ns: int = 0
    truncated: bool = False  # MSG_CTRUNC: the peer sent more fds than a message may carry


@dataclass
class PeerClosed:
    """``peer`` closed its socket (end of file, or a reset)."""

    peer: Peer
    time_ns: int = 0
    error: str = ""


@dataclass
class Notified:
    """A watched eventfd fired (already forwarded by the edge when the Watch said so)."""

    kind: Notify
    queue: int
    time_ns: int = 0
    count: int = 1  # the eventfd counter: how many signals since it was last read


@dataclass
class Tick:
    """The poll timer (``--poll MS``) fired."""

    time_ns: int = 0


@dataclass
class Work:
    """Nothing is ready on any fd: time for the role's deferred work (see ``has_work``), one bounded step."""

    time_ns: int = 0


@dataclass
class Stop:
    """The edge is shutting down (SIGINT, SIGTERM, end of the program)."""

    time_ns: int = 0
    reason: str = ""


# ---------------------------------------------------------------------------------------------
# Commands (role -> edge)


@dataclass
class Send:
    """Send ``message`` (header, payload, its fds as SCM_RIGHTS) to ``peer``.

    The edge closes the message's fds once sent, except those in ``keep``.
    """

    peer: Peer
    message: Message
    keep: tuple[int, ...] = ()

    def __repr__(self) -> str:
        keep = f" keep={list(self.keep)}" if self.keep else ""
        return f"Send({self.peer.name}, {self.message!r} fds={self.message.fds}{keep})"


@dataclass
class Watch:
    """Watch eventfd ``fd``: on each signal read it, write ``forward_to`` (when set) at once,
    then report :class:`Notified`. A second Watch of the same fd replaces the first."""

    fd: int
    kind: Notify
    queue: int
    forward_to: int | None = None


@dataclass
class Unwatch:
    fd: int


@dataclass
class Attach:
    """Start reading socket ``fd`` as ``peer`` (the back-end channel's two ends)."""

    peer: Peer
    fd: int


@dataclass
class Close:
    """Close ``peer``'s socket (its other side then sees end of file)."""

    peer: Peer


@dataclass
class Record:
    """Write ``event`` to the trace."""

    event: Event


@dataclass
class RecordBatch:
    """Write what one look at a queue found (a :class:`~vqtrace.vhost.fastpath.RingBatch`: the
    notification that made the role look, then the ring's events), without making events first."""

    batch: Any

    @property
    def events(self) -> list[Event]:
        return self.batch.events()


@dataclass
class Log:
    level: int
    text: str

    def __repr__(self) -> str:
        return f"Log({logging.getLevelName(self.level)}, {self.text!r})"


@dataclass
class SessionEnded:
    """The session is over: every peer is closed and the role released what it held."""

    reason: str
    error: bool = False


@dataclass
class WakeAfter:
    """Feed a :class:`Tick` ``seconds`` from now (replacing the one asked for before; None cancels
    it): a role's follow-up look when nothing else happens meanwhile."""

    seconds: float | None


@dataclass
class Signal:
    """Write 1 to eventfd ``fd`` (a back-end calling the driver, a front-end kicking)."""

    fd: int


Command = Send | Watch | Unwatch | Attach | Close | Record | RecordBatch | Log | SessionEnded | Signal | WakeAfter
Input = DataReceived | PeerClosed | Notified | Tick | Work | Stop


# ---------------------------------------------------------------------------------------------
# What a role may create and close


class Resources(Protocol):
    """Where a role gets new eventfds and socket pairs, and closes fds it owns."""

    def eventfd(self) -> int: ...

    def socketpair(self) -> tuple[int, int]: ...

    def close(self, fd: int) -> None: ...


class OsResources:
    """Real eventfds (non-blocking, close-on-exec) and AF_UNIX stream socket pairs."""

    def eventfd(self) -> int:
        return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def socketpair(self) -> tuple[int, int]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        return a.detach(), b.detach()

    def close(self, fd: int) -> None:
        with contextlib.suppress(OSError):
            os.close(fd)
