"""QEMU and qemu-storage-daemon as test peers: command lines, the serial console,
QMP, KVM-or-TCG, and an end that always comes (timeouts, process-group kills)."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from .guest import GuestKernel
from .procs import HarnessError, Process, Processes, wait_for_path
from .qmp import QMP

QEMU = "qemu-system-x86_64"
STORAGE_DAEMON = "qemu-storage-daemon"

#: The guest's kernel command line: serial console, poweroff on panic, quiet, and
#: ``init_on_free=1`` so freed pages are zero and memory dumps compress well.
KERNEL_APPEND = "console=ttyS0 panic=-1 quiet init_on_free=1"

ACCEL_ARGS = {"kvm": ["-accel", "kvm", "-cpu", "host"], "tcg": ["-accel", "tcg", "-cpu", "max"]}
_accel_cache: dict[str, str] = {}


def _kvm_usable() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def detect_accel(kernel: GuestKernel, workdir: Path, timeout: float = 8.0) -> str:
    """``kvm`` when a guest really boots with it, else ``tcg``. ``$VQTRACE_ACCEL`` overrides.

    /dev/kvm can exist and still not boot a guest (nested virtualization stops before the
    kernel's first message), so the probe boots the kernel with ``earlyprintk`` and waits
    for its banner. The answer is kept for the rest of the process.
    """
    forced = os.environ.get("VQTRACE_ACCEL", "").lower()
    if forced in ACCEL_ARGS:
        return forced
    if "accel" in _accel_cache:
        return _accel_cache["accel"]
    accel = "tcg"
    if _kvm_usable() and shutil.which(QEMU):
        procs = Processes(workdir)
        console = workdir / "kvm-probe.console"
        try:
            procs.spawn("kvm-probe", [QEMU, *ACCEL_ARGS["kvm"], "-m", "128M", "-nodefaults", "-no-user-config",
                                      "-display", "none", "-no-reboot", "-serial", f"file:{console}",
                                      "-kernel", str(kernel.vmlinuz),
                                      "-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1"])
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if console.exists() and b"Linux version" in console.read_bytes():
                    accel = "kvm"
                    break
                time.sleep(0.1)
        finally:
            procs.stop_all()
    _accel_cache["accel"] = accel
    return accel


class QemuVM:
    """One QEMU guest: ``-kernel``/``-initrd``, console in a file, QMP on a unix socket.

    ``devices`` are the scenario's own arguments (``-device``, ``-drive``, ``-object`` ...).
    ``shared_memory`` backs guest RAM with a shared memfd, as vhost-user needs.
    """

    def __init__(self, procs: Processes, kernel: GuestKernel, initrd: Path, devices: Sequence[str], *,
                 name: str = "qemu", memory_mb: int = 128, accel: str = "tcg", shared_memory: bool = False,
                 append: str = "") -> None:
        self.procs = procs
        self.name = name
        self.workdir = procs.workdir
        self.console_path = self.workdir / f"{name}.console"
        self.qmp_path = self.workdir / f"{name}.qmp"
        self.memory_mb = memory_mb
        memory = ["-m", f"{memory_mb}M"]
        if shared_memory:
            memory += ["-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on",
                       "-numa", "node,memdev=mem"]
        self.argv = [
            QEMU, *ACCEL_ARGS[accel], *memory, "-smp", "1",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", f"file:{self.console_path}",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
            "-append", f"{KERNEL_APPEND} {append}".strip(),
            *devices,
        ]
        self.process: Process | None = None
        self._qmp: QMP | None = None

    def start(self) -> QemuVM:
        self.process = self.procs.spawn(self.name, self.argv)
        wait_for_path(self.qmp_path, 15, self.process)
        return self

    @property
    def qmp(self) -> QMP:
        if self._qmp is None:
            self._qmp = QMP(self.qmp_path)
        return self._qmp

    def console(self) -> str:
        try:
            return self.console_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _failure(self, what: str) -> HarnessError:
        assert self.process is not None
        console_tail = "\n".join(self.console().splitlines()[-25:])
        others = "".join(f"--- {p.name} log ---\n{p.log_text(1500)}\n" for p in self.procs.started
                         if p is not self.process)
        return HarnessError(f"{self.name}: {what}\n--- console tail ---\n{console_tail}\n"
                            f"--- qemu log ---\n{self.process.log_text(2000)}\n{others}")

    def wait_console(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first match of ``pattern`` on the serial console; HarnessError on timeout or exit."""
        regex = re.compile(pattern, re.MULTILINE)
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.console())
            if match:
                return match
            if not self.process.alive():
                raise self._failure(f"QEMU exited ({self.process.returncode}) before {pattern!r} appeared")
            if time.monotonic() > deadline:
                raise self._failure(f"{pattern!r} did not appear within {timeout:.0f} s")
            time.sleep(0.05)

    def wait_exit(self, timeout: float) -> int:
        """Wait for the guest to power off (QEMU exits); HarnessError after ``timeout``."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except HarnessError:
            raise self._failure(f"the guest did not power off within {timeout:.0f} s") from None

    def stop(self) -> None:
        if self._qmp is not None:
            self._qmp.close()
        if self.process is not None:
            self.process.stop()


class StorageDaemon:
    """qemu-storage-daemon exporting a raw image as vhost-user-blk on a unix socket (it listens)."""

    def __init__(self, procs: Processes, image: Path, socket_path: Path, *, name: str = "qsd",
                 num_queues: int = 1) -> None:
        self.procs = procs
        self.socket_path = socket_path
        self.name = name
        self.argv = storage_daemon_argv(image, socket_path, num_queues=num_queues)
        self.process: Process | None = None

    def start(self) -> StorageDaemon:
        self.process = self.procs.spawn(self.name, self.argv)
        wait_for_path(self.socket_path, 15, self.process)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def storage_daemon_argv(image: Path, socket_path: Path, num_queues: int = 1) -> list[str]:
    return [
        STORAGE_DAEMON,
        "--blockdev", f"driver=file,node-name=file0,filename={image}",
        "--blockdev", "driver=raw,node-name=disk0,file=file0",
        "--export", f"type=vhost-user-blk,id=export0,node-name=disk0,writable=on,num-queues={num_queues},"
                    f"addr.type=unix,addr.path={socket_path}",
    ]


def vhost_user_blk_args(socket_path: Path, num_queues: int = 1) -> list[str]:
    """QEMU's side of vhost-user-blk: QEMU is the client of ``socket_path``."""
    return ["-chardev", f"socket,id=vhost-blk0,path={socket_path}",
            "-device", f"vhost-user-blk-pci,chardev=vhost-blk0,num-queues={num_queues},romfile="]
