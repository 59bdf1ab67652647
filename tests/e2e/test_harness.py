"""The harness's own guarantees: every process ends, every wait is bounded, QMP errors are
errors, the initramfs is a valid archive, the in-flight arithmetic wraps like the rings."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import require_tool

from .guest import CpioWriter, build_initramfs
from .procs import HarnessError, Processes, wait_for_path
from .qmp import QMP, QMPError
from .snapshot import packed_popped_positions, parse_xp, split_inflight_positions
from .vm import QEMU, QemuVM, detect_accel

pytestmark = pytest.mark.e2e


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0): it has ended.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True


def test_stop_all_ends_the_whole_process_group(tmp_path: Path):
    procs = Processes(tmp_path)
    pidfile = tmp_path / "grandchild.pid"
    # The child ignores SIGTERM and leaves a grandchild behind: both must still end.
    proc = procs.spawn("stubborn", ["sh", "-c", f"trap '' TERM; sleep 300 & echo $! > {pidfile}; wait"])
    wait_for_path(pidfile, 10, proc)
    grandchild = int(pidfile.read_text())
    start = time.monotonic()
    procs.stop_all()
    assert not proc.alive()
    deadline = time.monotonic() + 5
    while not _gone(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(grandchild)
    assert time.monotonic() - start < 15


def test_waits_are_bounded(tmp_path: Path):
    procs = Processes(tmp_path)
    try:
        sleeper = procs.spawn("sleeper", ["sleep", "300"])
        with pytest.raises(HarnessError, match="did not exit within"):
            sleeper.wait(0.2)
        quitter = procs.spawn("quitter", ["sh", "-c", "echo bye; exit 3"])
        with pytest.raises(HarnessError, match=r"exited \(3\) before creating"):
            wait_for_path(tmp_path / "never", 10, quitter)
        assert "bye" in quitter.log_text()
        with pytest.raises(HarnessError, match="was not created"):
            wait_for_path(tmp_path / "never", 0.2)
    finally:
        procs.stop_all()


def test_qmp_errors_and_console_timeout(guest_kernel, procs, tmp_path: Path):
    """A paused QEMU (-S): QMP answers, an unknown command is a QMPError, a console wait times out."""
    require_tool(QEMU)
    initrd = build_initramfs(guest_kernel, [], "true\n", tmp_path / "initrd.cpio")
    vm = QemuVM(procs, guest_kernel, initrd, ["-S"], accel="tcg").start()
    assert vm.qmp.execute("query-status")["status"] == "prelaunch"
    with pytest.raises(QMPError, match="CommandNotFound"):
        vm.qmp.execute("no-such-command")
    with pytest.raises(QMPError, match="x-query-virtio"):
        vm.qmp.execute("x-query-virtio-status", {"path": "/machine/nothing"})
    with pytest.raises(HarnessError, match="did not appear within"):
        vm.wait_console("VQTRACE-READY", 0.5)
    with pytest.raises(HarnessError, match="no SHUTDOWN event"):
        vm.qmp.wait_event("SHUTDOWN", 0.3)
    vm.qmp.execute("quit")
    assert vm.wait_exit(10) == 0
    with pytest.raises(HarnessError, match=r"QEMU closed the connection|Broken pipe|QMP"):
        vm.qmp.execute("query-status")


def test_qmp_without_qemu(tmp_path: Path):
    with pytest.raises(HarnessError, match="cannot connect"):
        QMP(tmp_path / "absent.sock", timeout=0.2)


def test_guest_that_never_finishes_is_ended(guest_kernel, accel, tmp_path: Path):
    """A guest stuck in its workload: the wait fails with the console tail and QEMU is killed."""
    procs = Processes(tmp_path)
    initrd = build_initramfs(guest_kernel, [], "echo stuck-here; sleep 600\n", tmp_path / "initrd.cpio")
    vm = QemuVM(procs, guest_kernel, initrd, [], accel=accel).start()
    try:
        vm.wait_console("stuck-here", 120)
        with pytest.raises(HarnessError, match="did not power off") as failure:
            vm.wait_exit(0.5)
        assert "stuck-here" in str(failure.value)
    finally:
        procs.stop_all()
    assert vm.process is not None and not vm.process.alive()


def test_initramfs_is_a_valid_newc_archive(guest_kernel, tmp_path: Path):
    cpio = require_tool("cpio")
    path = build_initramfs(guest_kernel, ["virtio_blk"], "echo hi\n", tmp_path / "initrd.cpio",
                           files={"etc/motd": b"hello\n"})
    with open(path, "rb") as archive:
        listing = subprocess.run([cpio, "-itv"], stdin=archive, capture_output=True, text=True, timeout=30)
    assert listing.returncode == 0, listing.stderr
    names = {line.split()[-1] if "->" not in line else line.split()[-3] for line in listing.stdout.splitlines()}
    assert {"init", "workload.sh", "bin/busybox", "bin/sh", "dev/console", "etc/motd"} <= names
    modules = sorted(n for n in names if n.startswith("lib/modules/") and n.endswith(".ko"))
    # Load order from modprobe --show-depends: virtio_ring before virtio before the drivers.
    assert [m.split("-", 1)[1] for m in modules][:2] == ["virtio_ring.ko", "virtio.ko"]
    assert modules[-1].endswith("virtio_blk.ko")
    assert any(line.startswith("c") and "dev/console" in line for line in listing.stdout.splitlines())


def test_unknown_module_is_a_clear_error(guest_kernel, tmp_path: Path):
    with pytest.raises(HarnessError, match="no_such_module"):
        build_initramfs(guest_kernel, ["no_such_module"], "true\n", tmp_path / "initrd.cpio")


def test_cpio_writer_pads_and_terminates():
    cpio = CpioWriter()
    cpio.file("a/b", b"xyz")
    data = cpio.getvalue()
    assert data.startswith(b"070701") and len(data) % 4 == 0
    assert b"TRAILER!!!\0" in data and data.index(b"a/b\0") < data.index(b"TRAILER!!!")


def test_accel_override(guest_kernel, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("VQTRACE_ACCEL", "tcg")
    assert detect_accel(guest_kernel, tmp_path) == "tcg"


def test_inflight_positions_wrap_like_the_rings():
    assert split_inflight_positions(avail_idx=2, used_idx=65534, size=256) == [65534, 65535, 0, 1]
    assert split_inflight_positions(5, 5, 8) == []
    with pytest.raises(HarnessError, match="exceeds the queue size"):
        split_inflight_positions(300, 0, 256)
    assert packed_popped_positions(last_avail_idx=1, used_idx=126, size=128) == [126, 127, 0]
    assert packed_popped_positions(4, 4, 256) == []
    with pytest.raises(HarnessError, match="out of range"):
        packed_popped_positions(300, 0, 256)


def test_parse_xp_answers():
    assert parse_xp("0000000000100002: 0x0005\r\n") == b"\x05\x00"
    assert parse_xp("0000000000001000: 0x0000000000000001 0x0000000200000010\r\n") == \
        (1).to_bytes(8, "little") + (0x200000010).to_bytes(8, "little")
    with pytest.raises(HarnessError, match="Cannot access memory"):
        parse_xp("fffffffffffffff8: Cannot access memory\r\n")
    with pytest.raises(HarnessError):
        parse_xp("")
