"""``vqtrace live``: the proxy and back-end roles on real sockets, with a trace sink.

:func:`run_live` listens on the socket a front-end connects to, then for each
front-end either connects to the real back-end and runs a :class:`ProxyEngine`
between them, or serves a reference device with a :class:`BackendEngine`. Events go
to ``sink`` (a trace writer, a printer, the TUI). Lifetime: with ``once`` the run
ends when the first front-end goes away; otherwise it accepts the next one (a
reconnecting QEMU) until ``stop()`` (SIGINT, SIGTERM). Every session ends with
its peers closed, its fds closed and its memory unmapped.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import VhostUserError
from ..events import Event
from ..trace.writer import TraceWriter
from .backend import BackendEngine
from .engine import Peer, SessionEnded
from .fastpath import BlockSink, FastTap
from .loop import Loop
from .proxy import ProxyEngine
from .server import Server, connect_unix

log = logging.getLogger("vqtrace.vhost")


@dataclass
class LiveOptions:
    """What ``vqtrace live`` was asked to do."""

    socket: str
    backend: str | None = None  # proxy: the real back-end's socket
    device: Any = None  # back-end: the reference device to serve
    poll_ms: float | None = None  # proxy: sample the rings instead of watching notifications
    once: bool = False
    connect_timeout: float = 10.0
    device_type: int = 0  # proxy: the virtio device ID of what is proxied (0 unknown)
    snaplen: int = 1 << 16
    name: str | None = None  # the trace's source (interface) name; default: the socket path


class Live:
    """The running ``vqtrace live``: a Server whose sessions are proxies or back-ends."""

    def __init__(self, options: LiveOptions, sink: Callable[[Event], None] | None = None, *,
                 logger: logging.Logger | None = None, sink_many: Callable[[list[Event]], object] | None = None
                 ) -> None:
        if (options.backend is None) == (options.device is None):
            raise VhostUserError("vqtrace live needs either a back-end socket (proxy) or a device (back-end)")
        self.options = options
        self.sink = sink
        self.sink_many = sink_many
        # A TraceWriter's own write or write_many: ring events are written as blocks, without events.
        writer = getattr(sink_many if sink_many is not None else sink, "__self__", None)
        self.block_sink = (BlockSink(writer) if isinstance(writer, TraceWriter)
                           and sink in (None, writer.write) and sink_many in (None, writer.write_many) else None)
        self.log = logger or log
        self.server = Server(options.socket, self._session, once=options.once, logger=self.log)
        self.loop: Loop | None = None
        self.endings: list[SessionEnded] = []
        self.engines: list[Any] = []  # the session engines, for tests and the TUI
        self.on_session: Callable[[Any], None] | None = None  # called with each new engine

    @property
    def source(self) -> str:
        return self.options.name or self.options.socket

    def start(self) -> None:
        """Create the listening socket (the file appears once connections are accepted)."""
        self.server.start()

    def serve(self) -> SessionEnded | None:
        return self.server.serve()

    def stop(self, reason: str = "stopped") -> None:
        """Signal-safe: end the running session cleanly and stop accepting."""
        self.server.stop(reason)

    def _session(self, conn: socket.socket) -> SessionEnded:
        options = self.options
        if options.backend is not None:
            try:
                backend = connect_unix(options.backend, options.connect_timeout,
                                       stopped=lambda: self.server.stopping is not None)
            except VhostUserError as err:
                conn.close()
                self.log.error(str(err))
                ended = SessionEnded(str(err), True)
                self.endings.append(ended)
                return ended
            engine: Any = ProxyEngine(source=self.source, tap_factory=self._tap, poll=options.poll_ms is not None,
                                      device_type=options.device_type)
            peers = [(Peer.FRONTEND, conn), (Peer.BACKEND, backend)]
            poll_ms = options.poll_ms
        else:
            engine = BackendEngine(options.device, source=self.source)
            peers = [(Peer.FRONTEND, conn)]
            poll_ms = options.poll_ms
        self.engines.append(engine)
        if self.on_session is not None:
            self.on_session(engine)
        loop = Loop(engine, sink=self.sink, poll_ms=poll_ms, logger=self.log, sink_many=self.sink_many,
                    block_sink=self.block_sink)
        try:
            for peer, sock in peers:
                loop.attach(peer, sock)
            self.loop = self.server.current = loop
            if self.server.stopping is not None:
                loop.request_stop(self.server.stopping)
            ended = loop.run()
        finally:
            self.server.current = self.loop = None
            loop.close()
            engine.release()
        self.endings.append(ended)
        return ended

    def _tap(self, config, memory, base, source) -> FastTap:
        return FastTap(config, memory, base, source, snaplen=self.options.snaplen)

    def close(self) -> None:
        self.server.close()


def wait_for_path(path: str, timeout: float = 10.0) -> None:
    """Block until the socket file at ``path`` exists: a vqtrace socket then accepts connections
    (it appears only once it listens). Never probe it with a connection: that is a session."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            raise VhostUserError(f"no socket at {path} after {timeout:g} s")
        time.sleep(0.01)
