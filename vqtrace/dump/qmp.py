"""A minimal QMP client (QEMU Machine Protocol, docs/interop/qmp-spec): enough to ask questions.

Connects to QEMU's monitor socket (a Unix path, or ``HOST:PORT`` for TCP), does
the capabilities handshake, runs commands one at a time and skips asynchronous
events. Every wait is bounded by a timeout; a QEMU that does not answer, answers
garbage or reports an error gives :class:`QmpError` (one line), never a hang.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from ..errors import VqtraceError

DEFAULT_TIMEOUT_S = 10.0
MAX_LINE = 64 << 20  # `info mtree` answers are long, but not this long


class QmpError(VqtraceError):
    """QEMU's monitor could not be reached, or refused a command."""


class QmpClient:
    """``with QmpClient(path) as qmp: qmp.execute("query-status")``."""

    def __init__(self, address: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.address = address
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buffer = b""
        self.greeting: dict[str, Any] = {}

    def __enter__(self) -> QmpClient:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        host, sep, port = self.address.rpartition(":")
        try:
            if sep and port.isdigit() and not os.path.exists(self.address):
                sock = socket.create_connection((host or "localhost", int(port)), timeout=self.timeout)
            else:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                sock.connect(self.address)
        except OSError as err:
            raise QmpError(f"cannot connect to QEMU's QMP socket {self.address}: {err.strerror or err}") from None
        self._sock = sock
        greeting = self._receive()
        if "QMP" not in greeting:
            self.close()
            raise QmpError(f"{self.address} is not a QMP monitor (no greeting)")
        self.greeting = greeting["QMP"]
        self.execute("qmp_capabilities")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def execute(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run ``command`` and return its ``return`` value; QmpError with QEMU's description on error."""
        if self._sock is None:
            raise QmpError("QMP connection is closed")
        request: dict[str, Any] = {"execute": command}
        if arguments:
            request["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as err:
            raise QmpError(f"QMP {command}: {err.strerror or err}") from None
        while True:
            reply = self._receive()
            if "event" in reply:
                continue
            if "error" in reply:
                error = reply["error"]
                desc = error.get("desc", error) if isinstance(error, dict) else error
                raise QmpError(f"QMP {command}: {desc}")
            if "return" in reply:
                return reply["return"]

    def hmp(self, command_line: str) -> str:
        """A human-monitor command (``info mtree -f``, ``gpa2hva ADDR``) and its text answer."""
        answer = self.execute("human-monitor-command", {"command-line": command_line})
        return answer if isinstance(answer, str) else ""

    def _receive(self) -> dict[str, Any]:
        assert self._sock is not None
        while b"\n" not in self._buffer:
            try:
                chunk = self._sock.recv(1 << 16)
            except TimeoutError:
                raise QmpError(f"QEMU's QMP socket {self.address} did not answer within {self.timeout:g} s "
                               f"(is another client connected?)") from None
            except OSError as err:
                raise QmpError(f"QMP socket {self.address}: {err.strerror or err}") from None
            if not chunk:
                raise QmpError(f"QEMU closed the QMP socket {self.address}")
            self._buffer += chunk
            if len(self._buffer) > MAX_LINE:
                raise QmpError(f"QMP socket {self.address}: an answer longer than {MAX_LINE} bytes")
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            message = json.loads(line)
        except ValueError:
            raise QmpError(f"QMP socket {self.address}: not JSON: {line[:60]!r}") from None
        if not isinstance(message, dict):
            raise QmpError(f"QMP socket {self.address}: unexpected answer {line[:60]!r}")
        return message
