"""Shared fixtures. Tests that need a system tool fail under CI=true when it is
missing (CI installs everything) and skip locally."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """Path of system tool ``name``; fail in CI, skip locally, when it is missing."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed"
        if IN_CI:
            pytest.fail(f"{message}, and CI must install it (.ci/run)")
        pytest.skip(message)
    return path


def run_vqtrace(*args: str, input: bytes | None = None, timeout: float = 60, env: dict | None = None,
                cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed CLI as a user would, in a child process."""
    return subprocess.run([sys.executable, "-m", "vqtrace", *args], input=input, capture_output=True,
                          timeout=timeout, env=env, cwd=cwd)


def kill_when_ready(script: str, *args: str, settle: float = 0.2) -> None:
    """Run ``script`` (Python, with ``{root}`` for the checkout) in a child until it prints "ready", let it
    go on for ``settle`` seconds, then SIGKILL it: what a recorder killed mid-work leaves behind."""
    child = subprocess.Popen([sys.executable, "-c", script.format(root=str(ROOT)), *args], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(settle)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL


@pytest.fixture
def vqtrace_cli():
    return run_vqtrace


def blocks_of(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of every pcapng block in ``data``, for the tests that cut or corrupt a trace."""
    out, pos = [], 0
    while pos < len(data):
        length = struct.unpack_from("<I", data, pos + 4)[0]
        out.append((pos, length))
        pos += length
    return out
