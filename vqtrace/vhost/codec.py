"""vhost-user framing and validation: bytes and fds in, whole messages out (sans-io).

A message is the 12-byte header (request, flags, size) then ``size`` payload bytes
(QEMU docs/interop/vhost-user.rst, "Message Specification"); its file descriptors
travel as SCM_RIGHTS ancillary data with its bytes. A :class:`Framer` takes the
chunks a socket delivered, each with the fds that came with it, and returns whole
:class:`Message` objects, each holding exactly its own fds. The socket edge reads
exactly what :meth:`Framer.wanted` asks for (the header, then the payload), as QEMU
and libvhost-user do, so a read never spans two messages and the fds of a read
belong to the message it starts; a forwarder that passed raw chunks instead would
detach fds from their message (FACTS.md: qemu-storage-daemon then aborts).

Validation (:func:`check_header`, :func:`check_message`) rejects what no peer may
send: a header whose version is not 1 or with undefined flag bits, a size over
:data:`MAX_PAYLOAD`, a payload size that fits none of the request's layouts, and a
number of fds the request does not carry. Each raises one
:class:`~vqtrace.errors.VhostUserError` line naming the peer and the request.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
from dataclasses import dataclass, field

from ..dissectors import vhost_user as vu
from ..errors import VhostUserError
from . import protocol as p

HEADER_SIZE = vu.HEADER_SIZE
MAX_PAYLOAD = vu.MAX_PAYLOAD
MAX_FDS = vu.MAX_FDS
VERSION = vu.VHOST_USER_VERSION
REPLY = vu.VHOST_USER_REPLY_MASK
NEED_REPLY = vu.VHOST_USER_NEED_REPLY_MASK
KNOWN_FLAGS = vu.VHOST_USER_VERSION_MASK | REPLY | NEED_REPLY

_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)

FRONTEND_CHANNEL = 0  # requests sent by the front-end on the main socket
BACKEND_CHANNEL = 1  # requests sent by the back-end on the SET_BACKEND_REQ_FD socket


def request_name(request: int, channel: int = FRONTEND_CHANNEL) -> str:
    """``VHOST_USER_SET_VRING_KICK``, or ``VHOST_USER_<n>?`` for an unknown number."""
    return vu.request_name(request, channel=vu.BACKEND_CHANNEL if channel else None)


def short_name(request: int, channel: int = FRONTEND_CHANNEL) -> str:
    """The name without ``VHOST_USER_`` (``SET_VRING_KICK``)."""
    return request_name(request, channel).removeprefix("VHOST_USER_")


@dataclass(slots=True)
class Message:
    """One vhost-user message and the file descriptors that travelled with it.

    ``channel`` says which request list ``request`` is from: 0 the front-end's
    requests (main socket), 1 the back-end's (the back-end request channel). A
    reply carries the request number it answers and the reply flag.
    """

    request: int
    flags: int = VERSION
    payload: bytes = b""
    fds: list[int] = field(default_factory=list)
    channel: int = FRONTEND_CHANNEL

    @classmethod
    def make(cls, request: int, payload: bytes = b"", *, fds: list[int] | None = None, need_reply: bool = False,
             channel: int = FRONTEND_CHANNEL) -> Message:
        """A request (version 1, need_reply when asked)."""
        return cls(request, VERSION | (NEED_REPLY if need_reply else 0), bytes(payload), list(fds or ()), channel)

    def make_reply(self, payload: bytes = b"", *, fds: list[int] | None = None) -> Message:
        """The reply to this request: same request number, the reply flag, version 1."""
        return Message(self.request, VERSION | REPLY, bytes(payload), list(fds or ()), self.channel)

    @property
    def size(self) -> int:
        return len(self.payload)

    @property
    def reply(self) -> bool:
        return bool(self.flags & REPLY)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & NEED_REPLY)

    @property
    def name(self) -> str:
        return request_name(self.request, self.channel)

    @property
    def header(self) -> bytes:
        return vu.pack_header(self.request, self.flags, len(self.payload))

    @property
    def raw(self) -> bytes:
        """Header and payload, as they cross the socket."""
        return vu.pack_header(self.request, self.flags, len(self.payload)) + self.payload

    def u64(self) -> int:
        return p.unpack_u64(self.payload)

    def describe(self) -> str:
        """A short readable line: ``SET_VRING_KICK reply 12 bytes [2 fds]``."""
        text = short_name(self.request, self.channel)
        if self.channel:
            text = "BACKEND " + text.removeprefix("BACKEND_")
        if self.reply:
            text += " reply"
        if self.need_reply:
            text += " need_reply"
        detail = _detail(self)
        if detail:
            text += " " + detail
        if self.fds:
            text += f" [{len(self.fds)} fd{'s' if len(self.fds) > 1 else ''}]"
        return text

    def __repr__(self) -> str:
        return f"<{self.describe()}>"


def _detail(msg: Message) -> str:
    """A few payload values for log lines and test diffs (never raises)."""
    try:
        if msg.channel == FRONTEND_CHANNEL:
            request = msg.request
            if request in (p.SET_VRING_KICK, p.SET_VRING_CALL, p.SET_VRING_ERR) and not msg.reply:
                index, nofd = p.unpack_vring_file(msg.payload)
                return f"idx={index}" + (" nofd" if nofd else "")
            if request in (p.SET_VRING_NUM, p.SET_VRING_BASE, p.GET_VRING_BASE, p.SET_VRING_ENABLE, p.VRING_KICK) \
                    and len(msg.payload) == 8:
                state = p.unpack_state(msg.payload)
                return f"idx={state.index} num={state.num}"
            if request == p.SET_VRING_ADDR and not msg.reply:
                addr = p.unpack_addr(msg.payload)
                return f"idx={addr.index} desc=0x{addr.desc:x} avail=0x{addr.avail:x} used=0x{addr.used:x}"
            if request == p.SET_MEM_TABLE and not msg.reply:
                return f"nregions={len(p.unpack_memory(msg.payload))}"
            if request in (p.ADD_MEM_REG, p.REM_MEM_REG) and len(msg.payload) == 40:
                region = p.unpack_region(msg.payload)
                return f"gpa=0x{region.guest_addr:x}+0x{region.size:x}"
        elif msg.request in (p.BACKEND_VRING_CALL, p.BACKEND_VRING_ERR) and len(msg.payload) == 8:
            return f"idx={p.unpack_state(msg.payload).index}"
        if len(msg.payload) == 8:
            return f"0x{p.unpack_u64(msg.payload):x}"
        return f"{len(msg.payload)} bytes" if msg.payload else ""
    except VhostUserError:
        return f"{len(msg.payload)} bytes"


_FD_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


def recv_with_fds(sock: socket.socket, size: int, flags: int = 0) -> tuple[bytes, list[int], bool]:
    """recvmsg ``size`` bytes and the SCM_RIGHTS fds that came with them: (data, fds, truncated).

    ``truncated`` (MSG_CTRUNC): the peer sent more fds than a message may carry; those
    that arrived are returned (to be closed). Flags are passed on (``socket.recv_fds``
    of Python 3.11 drops them).
    """
    data, ancdata, msg_flags, _ = sock.recvmsg(size, _FD_SPACE, flags | _CLOEXEC)
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    return data, list(fds), bool(msg_flags & socket.MSG_CTRUNC)


def close_fds(fds: list[int]) -> None:
    """Close every fd of ``fds`` (ignoring ones already closed) and empty the list."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    fds.clear()


# ---------------------------------------------------------------------------------------------
# Validation


def check_header(request: int, flags: int, size: int, *, peer: str, channel: int = FRONTEND_CHANNEL) -> None:
    """Reject a header no peer may send (version, undefined flag bits, request 0, size)."""
    version = flags & vu.VHOST_USER_VERSION_MASK
    if version != VERSION or flags & ~KNOWN_FLAGS:
        raise VhostUserError(f"{peer} sent a garbage header (request {request}, flags 0x{flags:x}, size {size}): "
                             f"version {version} instead of {VERSION}" if version != VERSION else
                             f"{peer} sent a garbage header (request {request}, flags 0x{flags:x}, size {size}): "
                             f"undefined flag bits 0x{flags & ~KNOWN_FLAGS:x}")
    if request == 0:
        raise VhostUserError(f"{peer} sent a garbage header: request 0 (VHOST_USER_NONE), flags 0x{flags:x}, "
                             f"size {size}")
    if size > MAX_PAYLOAD:
        raise VhostUserError(f"{peer} sent {request_name(request, channel)} with size {size}, more than the "
                             f"{MAX_PAYLOAD} bytes a payload may have")


def fd_range(msg: Message) -> tuple[int, int]:
    """How many fds ``msg`` must carry: (min, max), from its request, reply flag and payload."""
    backend = msg.channel == BACKEND_CHANNEL
    if msg.reply:
        table = vu.BACKEND_REPLY_FD_REQUESTS if backend else vu.REPLY_FD_REQUESTS
        return table.get(msg.request, (0, 0))
    specs = vu.BACKEND_REQUEST_SPECS if backend else vu.REQUEST_SPECS
    if msg.request not in specs:
        return 0, MAX_FDS  # an unknown request: the peers know what it carries
    low, high = specs[msg.request].fds
    if not backend and msg.request in (p.SET_VRING_KICK, p.SET_VRING_CALL, p.SET_VRING_ERR):
        # "Bit 8 is the invalid FD flag. This flag is set when there is no file descriptor"
        nofd = p.unpack_vring_file(msg.payload)[1]
        return (0, 0) if nofd else (1, 1)
    if not backend and msg.request == p.SET_MEM_TABLE:
        # "an array of file descriptors for each memory mapped region"
        count = len(p.unpack_memory(msg.payload))
        return count, count
    return low, high


def check_message(msg: Message, *, peer: str) -> None:
    """Reject a whole message whose payload size or number of fds its request does not allow."""
    try:
        vu.payload_kind(msg.request, msg.flags, len(msg.payload),
                        channel=vu.BACKEND_CHANNEL if msg.channel else None)
    except vu.PayloadSizeError as err:
        raise VhostUserError(f"{peer} sent {msg.describe()}: {err}") from None
    low, high = fd_range(msg)
    count = len(msg.fds)
    if not low <= count <= high:
        want = str(low) if low == high else f"{low} to {high}"
        raise VhostUserError(f"{peer} sent {msg.describe()} with {count} fd{'s' if count != 1 else ''}, "
                             f"{want} expected")


# ---------------------------------------------------------------------------------------------
# Framing


class Framer:
    """Reassembles one stream's messages from the chunks (and fds) a socket delivered.

    ``feed`` returns the messages completed by a chunk; a malformed one raises
    VhostUserError (after closing the fds it carried). The fds of a chunk go to the
    message the chunk's first byte belongs to.
    """

    __slots__ = ("_buffer", "_fds", "_header", "channel", "peer", "validate")

    def __init__(self, peer: str, channel: int = FRONTEND_CHANNEL, *, validate: bool = True) -> None:
        self.peer = peer
        self.channel = channel
        self.validate = validate
        self._buffer = bytearray()
        self._header: tuple[int, int, int] | None = None
        self._fds: list[int] = []

    def wanted(self) -> int:
        """How many bytes complete the header or payload being read (never 0)."""
        if self._header is None:
            return HEADER_SIZE - len(self._buffer)
        return max(1, self._header[2] - len(self._buffer))

    @property
    def mid_message(self) -> bool:
        """Whether part of a message has been received (a close now cuts it short)."""
        return bool(self._buffer) or self._header is not None

    def pending(self) -> str:
        """What the partial message is, for the log line when the peer goes away mid-message."""
        if self._header is None:
            return f"{len(self._buffer)} of the {HEADER_SIZE} header bytes"
        request, _, size = self._header
        return f"{request_name(request, self.channel)} with {len(self._buffer)} of its {size} payload bytes"

    def feed(self, data: bytes, fds: list[int] | tuple[int, ...] = ()) -> list[Message]:
        self._fds.extend(fds)
        out: list[Message] = []
        view = memoryview(data)
        try:
            while True:
                if self._header is None:
                    take = HEADER_SIZE - len(self._buffer)
                    self._buffer += view[:take]
                    view = view[take:]
                    if len(self._buffer) < HEADER_SIZE:
                        break
                    header = vu.HEADER.unpack(self._buffer)
                    self._buffer.clear()
                    if self.validate:
                        check_header(*header, peer=self.peer, channel=self.channel)
                    self._header = header
                request, flags, size = self._header
                take = size - len(self._buffer)
                if take:
                    self._buffer += view[:take]
                    view = view[take:]
                    if len(self._buffer) < size:
                        break
                msg = Message(request, flags, bytes(self._buffer), self._fds, self.channel)
                self._fds = []
                self._buffer.clear()
                self._header = None
                if self.validate:
                    try:
                        check_message(msg, peer=self.peer)
                    except VhostUserError:
                        close_fds(msg.fds)
                        raise
                out.append(msg)
                if not view:
                    break
        except VhostUserError:
            for done in out:
                close_fds(done.fds)
            self.close()
            raise
        return out

    def close(self) -> None:
        """Drop a partial message and close its fds."""
        close_fds(self._fds)
        self._buffer.clear()
        self._header = None
