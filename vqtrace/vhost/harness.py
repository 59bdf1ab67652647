"""Running the live pieces side by side: qemu-storage-daemon, a tracer in a thread.

Used by the tests, ``benchmarks/bench_live.py`` and ``vqtrace demo``. Everything here
ends: processes are killed on ``close()`` (or leaving the ``with`` block), threads
are joined with a timeout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import VqtraceError
from ..events import Event
from .engine import SessionEnded
from .live import Live, LiveOptions, wait_for_path

STORAGE_DAEMON = "qemu-storage-daemon"


def storage_daemon_command(image: str | os.PathLike[str], socket_path: str | os.PathLike[str], *,
                           writable: bool = True) -> list[str]:
    """qemu-storage-daemon exporting ``image`` as vhost-user-blk on ``socket_path``."""
    return [STORAGE_DAEMON,
            "--blockdev", f"driver=file,node-name=file,filename={image}",
            "--blockdev", "driver=raw,node-name=disk,file=file",
            "--export", f"type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path={socket_path},"
                        f"writable={'on' if writable else 'off'}"]


class StorageDaemon:
    """qemu-storage-daemon serving one image over vhost-user-blk, killed on close."""

    def __init__(self, image: str | os.PathLike[str], socket_path: str | os.PathLike[str], *,
                 log: str | os.PathLike[str] | None = None) -> None:
        self.image = Path(image)
        self.socket = Path(socket_path)
        self.log_path = Path(log) if log else self.socket.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return shutil.which(STORAGE_DAEMON) is not None

    def start(self, timeout: float = 10.0) -> StorageDaemon:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.proc = subprocess.Popen(storage_daemon_command(self.image, self.socket), stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.proc.poll() is not None:
                raise VqtraceError(f"qemu-storage-daemon exited ({self.proc.returncode}): {self.log_text()}")
            if time.monotonic() > deadline:
                self.close()
                raise VqtraceError(f"qemu-storage-daemon did not create {self.socket} within {timeout:g} s")
            time.sleep(0.01)
        return self

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL (a back-end dying)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def __enter__(self) -> StorageDaemon:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LiveThread:
    """``vqtrace live`` in a thread of this process (so tests can count its fds)."""

    def __init__(self, options: LiveOptions, sink: Callable[[Event], None] | None = None, *,
                 sink_many: Callable[[list[Event]], object] | None = None) -> None:
        self.live = Live(options, sink, sink_many=sink_many)
        self.thread = threading.Thread(target=self._run, name="vqtrace-live", daemon=True)
        self.result: SessionEnded | None = None
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.result = self.live.serve()
        except BaseException as err:  # reported by join()
            self.error = err

    def start(self) -> LiveThread:
        self.live.start()
        self.thread.start()
        wait_for_path(self.live.options.socket, 10)
        return self

    def join(self, timeout: float = 10.0) -> SessionEnded | None:
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.live.stop("test timeout")
            self.thread.join(5)
            raise VqtraceError(f"vqtrace live did not end within {timeout:g} s")
        if self.error is not None:
            raise self.error
        return self.result

    def stop(self, timeout: float = 10.0) -> SessionEnded | None:
        self.live.stop("stopped")
        return self.join(timeout)

    @property
    def engines(self) -> list[Any]:
        return self.live.engines

    def __enter__(self) -> LiveThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.thread.is_alive():
            with contextlib.suppress(VqtraceError):
                self.stop(10)
        self.live.close()


def open_fds() -> set[int]:
    """This process's open file descriptors (/proc/self/fd)."""
    return {int(name) for name in os.listdir("/proc/self/fd")}


def make_image(path: str | os.PathLike[str], size: int = 16 << 20) -> Path:
    """A zero-filled raw disk image."""
    target = Path(path)
    with open(target, "wb") as file:
        file.truncate(size)
    return target
