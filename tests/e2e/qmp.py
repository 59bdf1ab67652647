"""A small QMP client over QEMU's unix socket (``-qmp unix:PATH,server=on,wait=off``).

QMP is newline-delimited JSON: a greeting, then ``qmp_capabilities``, then one
``{"execute", "arguments", "id"}`` per command, answered by ``{"return"|"error", "id"}``;
asynchronous ``{"event"}`` messages may arrive at any time and are kept for ``wait_event``.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time
from pathlib import Path
from typing import Any

from .procs import HarnessError


class QMPError(HarnessError):
    """QEMU answered a command with an error."""

    def __init__(self, command: str, error: dict[str, Any]) -> None:
        self.command = command
        self.error_class = error.get("class", "")
        self.desc = error.get("desc", "")
        super().__init__(f"QMP {command}: {self.error_class}: {self.desc}")


class QMPTimeout(HarnessError):
    """QEMU sent nothing for the whole wait."""


class QMP:
    """One QMP session. Every wait is bounded; a dead QEMU is a HarnessError, not a hang."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.path = path
        self.events: list[dict[str, Any]] = []
        self._buf = b""
        self._next_id = 0
        self._sock = self._connect(path, timeout)
        greeting = self._read_message(timeout)
        if "QMP" not in greeting:
            raise HarnessError(f"QMP {path}: unexpected greeting {greeting!r}")
        self.greeting = greeting["QMP"]
        self.execute("qmp_capabilities")

    @staticmethod
    def _connect(path: Path, timeout: float) -> socket.socket:
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(path))
                return sock
            except OSError as err:
                sock.close()
                if time.monotonic() > deadline:
                    raise HarnessError(f"QMP {path}: cannot connect: {err}") from None
                time.sleep(0.05)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    def _read_message(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPTimeout(f"QMP {self.path}: no answer within {timeout:.1f} s")
            ready, _, _ = select.select([self._sock], [], [], left)
            if not ready:
                continue
            try:
                chunk = self._sock.recv(65536)
            except OSError as err:
                raise HarnessError(f"QMP {self.path}: {err}") from None
            if not chunk:
                raise HarnessError(f"QMP {self.path}: QEMU closed the connection")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            return json.loads(line)
        except ValueError:
            raise HarnessError(f"QMP {self.path}: not JSON: {line[:200]!r}") from None

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
        """Run one command; its ``return`` value, or QMPError with QEMU's error."""
        self._next_id += 1
        ident = f"vqtrace-{self._next_id}"
        request: dict[str, Any] = {"execute": command, "id": ident}
        if arguments:
            request["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(request).encode() + b"\n")
        except OSError as err:
            raise HarnessError(f"QMP {command}: {err}") from None
        deadline = time.monotonic() + timeout
        while True:
            message = self._read_message(max(0.0, deadline - time.monotonic()))
            if "event" in message:
                self.events.append(message)
                continue
            if message.get("id") != ident:
                continue
            if "error" in message:
                raise QMPError(command, message["error"])
            return message.get("return")

    def hmp(self, command_line: str) -> str:
        """One human-monitor command through QMP (``human-monitor-command``)."""
        return self.execute("human-monitor-command", {"command-line": command_line})

    def wait_event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        """The first event called ``name`` (already received or still to come)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if event["event"] == name:
                    return event
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise QMPTimeout
                message = self._read_message(left)
            except QMPTimeout:
                seen = sorted({e["event"] for e in self.events})
                raise HarnessError(f"QMP: no {name} event within {timeout:.1f} s (seen: {seen})") from None
            if "event" in message:
                self.events.append(message)
