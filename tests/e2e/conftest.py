"""Fixtures of the end-to-end suite: the guest kernel, KVM-or-TCG, and a process
registry whose finalizer stops everything a test started."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from conftest import IN_CI, require_tool

from .guest import GuestKernel, build_initramfs, ensure_kernel, find_busybox
from .procs import HarnessError, Processes
from .vm import QEMU, detect_accel


@pytest.fixture(scope="session")
def guest_kernel() -> GuestKernel:
    """The Debian guest kernel, fetched into its cache on first use."""
    require_tool(QEMU)
    try:
        find_busybox()
        return ensure_kernel()
    except HarnessError as err:
        if IN_CI:
            pytest.fail(f"{err} (CI must provide it: scripts/setup-system.sh)")
        pytest.skip(str(err))


@pytest.fixture(scope="session")
def accel(guest_kernel: GuestKernel, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``kvm`` when a guest boots with it here, else ``tcg`` (``$VQTRACE_ACCEL`` overrides)."""
    return detect_accel(guest_kernel, tmp_path_factory.mktemp("accel"))


@pytest.fixture
def procs(tmp_path: Path):
    """Start processes through this; every one of them is stopped when the test ends."""
    registry = Processes(tmp_path)
    yield registry
    registry.stop_all()


@pytest.fixture
def initramfs(guest_kernel: GuestKernel, tmp_path: Path):
    """``initramfs(modules, workload)`` writes one and returns its path."""
    def make(modules: list[str] | tuple[str, ...], workload: str, name: str = "initrd.cpio") -> Path:
        return build_initramfs(guest_kernel, modules, workload, tmp_path / name)
    return make


def vqtrace_command(name: str) -> None:
    """Skip (with the reason) while ``vqtrace <name>`` is not written yet; never under its presence."""
    if importlib.util.find_spec(f"vqtrace.commands.{name}") is None:
        pytest.skip(f"`vqtrace {name}` does not exist yet (vqtrace/commands/{name}.py is absent)")
