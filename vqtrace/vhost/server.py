"""Listening sockets and the session lifetimes of ``vqtrace live``.

:func:`listen_unix` creates the vhost-user socket a front-end (QEMU: ``-chardev
socket,path=...``, the client) connects to. The socket file appears only once it
accepts connections (it is bound under a temporary name, then renamed), so a
script may start QEMU as soon as the file exists. :class:`Server` accepts one
front-end at a time and runs a session for it; with ``once`` it ends after the
first session, otherwise it accepts the next front-end (a reconnecting QEMU,
``-chardev socket,...,reconnect=1``). ``stop()`` is safe from a signal handler.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import UsageError, VhostUserError
from .engine import SessionEnded
from .loop import _Wakeup

log = logging.getLogger("vqtrace.vhost")


def listen_unix(path: str | os.PathLike[str], backlog: int = 4) -> socket.socket:
    """A listening AF_UNIX stream socket at ``path``; a stale socket file is replaced."""
    target = Path(path)
    if target.exists() or target.is_symlink():
        mode = target.lstat().st_mode
        if not stat.S_ISSOCK(mode):
            raise UsageError(f"{target} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(target))
        except OSError:
            target.unlink()  # nobody listens there: a leftover of a previous run
        else:
            raise UsageError(f"{target}: another program is listening on this socket")
        finally:
            probe.close()
    if not target.parent.is_dir():
        raise UsageError(f"cannot create {target}: {target.parent} is not a directory")
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(temp))
        sock.listen(backlog)
        os.rename(temp, target)
    except OSError as err:
        sock.close()
        with contextlib.suppress(OSError):
            temp.unlink()
        raise UsageError(f"cannot listen on {target}: {err.strerror or err}") from None
    return sock


def connect_unix(path: str | os.PathLike[str], timeout: float, stopped: Callable[[], bool] = lambda: False
                 ) -> socket.socket:
    """Connect to the vhost-user socket at ``path``, retrying while it is absent or refuses
    (a back-end starting or restarting) for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
            return sock
        except OSError as err:
            sock.close()
            retry = err.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN)
            if not retry or time.monotonic() >= deadline or stopped():
                why = err.strerror or str(err)
                raise VhostUserError(f"cannot connect to the back-end at {path}: {why}") from None
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


class Server:
    """Accept front-ends on ``path`` and run ``session(conn)`` for each, one at a time.

    ``session`` returns the SessionEnded of that connection. The server ends after
    the first session with ``once``, or when ``stop`` is called.
    """

    def __init__(self, path: str | os.PathLike[str], session: Callable[[socket.socket], SessionEnded | None], *,
                 once: bool = False, logger: logging.Logger | None = None) -> None:
        self.path = Path(path)
        self.session = session
        self.once = once
        self.log = logger or log
        self.stopping: str | None = None
        self.sessions = 0
        self.last: SessionEnded | None = None
        self.current: object | None = None  # the running session's Loop, for stop()
        self._wakeup = _Wakeup()
        self._listener: socket.socket | None = None

    def start(self) -> None:
        self._listener = listen_unix(self.path)
        self.log.info(f"listening on {self.path}")

    def stop(self, reason: str = "stopped") -> None:
        """End the server (signal-safe): the running session is stopped cleanly first."""
        self.stopping = reason
        loop = self.current
        if loop is not None:
            loop.request_stop(reason)  # type: ignore[attr-defined]
        self._wakeup.poke()

    def serve(self) -> SessionEnded | None:
        """Serve until stopped (or after one session with ``once``); the last session's ending."""
        if self._listener is None:
            self.start()
        assert self._listener is not None
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, "listen")
        selector.register(self._wakeup.reader, selectors.EVENT_READ, "wakeup")
        try:
            while self.stopping is None:
                for key, _ in selector.select():
                    if key.data == "wakeup":
                        self._wakeup.drain()
                        continue
                    try:
                        conn, _ = self._listener.accept()
                    except OSError:
                        continue
                    self.sessions += 1
                    self.log.info(f"front-end connected (session {self.sessions})")
                    self.last = self.session(conn)
                    if self.once:
                        return self.last
                    break
        finally:
            selector.close()
            self.close()
        return self.last

    def close(self) -> None:
        """Stop listening and remove the socket file."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(self.path.lstat().st_mode):
                    self.path.unlink()
        self._wakeup.close()
