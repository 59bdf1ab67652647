"""Child processes that always end: each runs in its own process group, its output goes
to a log file, and ``Processes.stop_all`` (a fixture finalizer) ends every group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path


class HarnessError(Exception):
    """The end-to-end harness could not do its job (a tool failed, a guest timed out)."""


class Process:
    """One started command, in its own session (so its whole group can be signalled)."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True, env=env, cwd=cwd)
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def log_text(self, tail: int = 4000) -> str:
        try:
            data = self.log.read_bytes()
        except OSError:
            return ""
        return data[-tail:].decode("utf-8", "replace")

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit by itself; HarnessError after ``timeout`` seconds."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError(f"{self.name} did not exit within {timeout:.0f} s; log tail:\n"
                               f"{self.log_text()}") from None

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def interrupt(self, timeout: float) -> int | None:
        """SIGINT (Ctrl-C) to the process and wait for it; stop() it if it does not exit."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGINT)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.stop()
                raise HarnessError(f"{self.name} ignored SIGINT for {timeout:.0f} s; log tail:\n"
                                   f"{self.log_text()}") from None
        return self.popen.poll()

    def stop(self, grace: float = 3.0) -> int | None:
        """SIGTERM the process group, then SIGKILL it; reap the child. Idempotent."""
        if self.alive():
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(grace)
        # The leader may be gone while others of its group live on: kill the group regardless.
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        return self.popen.poll()


class Processes:
    """A registry of the processes one test started; ``stop_all`` ends them in reverse order."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[Process] = []

    def spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> Process:
        proc = Process(name, argv, self.workdir / f"{name}.log", env=env, cwd=cwd)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


def wait_for_path(path: Path, timeout: float, proc: Process | None = None) -> None:
    """Wait until ``path`` exists (a listening socket, a file); fail early if ``proc`` dies."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and not proc.alive():
            raise HarnessError(f"{proc.name} exited ({proc.returncode}) before creating {path}; log tail:\n"
                               f"{proc.log_text()}")
        if time.monotonic() > deadline:
            who = f" by {proc.name}" if proc else ""
            raise HarnessError(f"{path} was not created{who} within {timeout:.0f} s")
        time.sleep(0.05)
