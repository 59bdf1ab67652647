"""Scenarios 1 and 2 (issue 8): a Linux guest's vhost-user-blk-pci through ``vqtrace live``.

1. QEMU -> ``vqtrace live --socket A --backend B`` (proxy) -> qemu-storage-daemon on B.
2. QEMU -> ``vqtrace live --socket A --device blk --image IMG`` (vqtrace's reference back-end).

The guest workload is the one proven directly against qemu-storage-daemon
(test_blk_storage_daemon.py). These skip only while ``vqtrace live`` does not exist.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import require_tool

from .conftest import vqtrace_command
from .procs import Processes, wait_for_path
from .traces import (
    QEMU_TRACE_ARGS,
    VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
    blk_requests,
    frontend_messages,
    qemu_sent,
    trace_events,
)
from .vm import STORAGE_DAEMON, QemuVM, StorageDaemon, vhost_user_blk_args
from .workloads import GUEST_PATTERNS, HOST_PATTERNS, blk_workload, check_disk, make_disk

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 120


def start_live(procs: Processes, socket_path: Path, trace: Path, *role: str):
    """``vqtrace live`` as a user runs it; returns once it listens on ``socket_path``."""
    proc = procs.spawn("vqtrace-live", [sys.executable, "-m", "vqtrace", "live", "--socket", str(socket_path),
                                        *role, "--once", "-w", str(trace)])
    wait_for_path(socket_path, 20, proc)
    return proc


def run_guest(procs, guest_kernel, accel, initramfs, socket_path: Path) -> QemuVM:
    initrd = initramfs(["virtio_blk"], blk_workload())
    vm = QemuVM(procs, guest_kernel, initrd,
                [*vhost_user_blk_args(socket_path), *QEMU_TRACE_ARGS, "-D", str(procs.workdir / "qemu-vhost.log")],
                accel=accel, shared_memory=True).start()
    verdict = vm.wait_console(r"^VQTRACE-VERDICT (PASS|FAIL)(.*)$", BOOT_TIMEOUT)
    assert verdict.group(1) == "PASS", verdict.group(0)
    vm.wait_exit(30)
    return vm


def check_blk_trace(trace: Path) -> None:
    """The guest's writes and reads are in the trace with their sectors, lengths and data.

    A write is one OUT request of exactly the pattern; a read one IN request from the
    pattern's sector that completed with VIRTIO_BLK_S_OK, whose data begins with the
    pattern (it may be longer: readahead, see workloads.py).
    """
    requests = blk_requests(trace_events(trace))
    seen = [(r.kind.name, r.type, r.sector, len(r.data), r.status) for r in requests]
    writes = [r for r in requests if r.type == VIRTIO_BLK_T_OUT]
    reads = [r for r in requests if r.type == VIRTIO_BLK_T_IN and r.status == 0]
    for pattern in GUEST_PATTERNS:
        data = pattern.data()
        assert any(r.sector == pattern.sector and r.data == data for r in writes), \
            f"no OUT request of {pattern.length} pattern bytes at sector {pattern.sector}; seen {seen}"
    for pattern in (*GUEST_PATTERNS, *HOST_PATTERNS):
        data = pattern.data()
        assert any(r.sector == pattern.sector and r.data[:pattern.length] == data for r in reads), \
            f"no completed IN request with the pattern at sector {pattern.sector}; seen {seen}"


def stop_live(proc) -> None:
    """With --once, vqtrace ends by itself when QEMU has gone: a clean exit, no traceback."""
    proc.wait(20)
    assert proc.returncode == 0, proc.log_text()
    assert "Traceback" not in proc.log_text(100_000), proc.log_text()


def test_proxy_between_qemu_and_storage_daemon(guest_kernel, accel, procs, initramfs, tmp_path: Path):
    vqtrace_command("live")
    require_tool(STORAGE_DAEMON)
    image = make_disk(tmp_path / "disk.img")
    backend = tmp_path / "qsd.sock"
    StorageDaemon(procs, image, backend).start()
    trace = tmp_path / "proxy.pcapng"
    live = start_live(procs, tmp_path / "vqtrace.sock", trace, "--backend", str(backend), "--device-type", "blk")

    run_guest(procs, guest_kernel, accel, initramfs, tmp_path / "vqtrace.sock")
    stop_live(live)

    assert check_disk(image) == [], "the guest's writes did not all reach qemu-storage-daemon through the proxy"
    check_blk_trace(trace)
    sent = qemu_sent(tmp_path / "qemu-vhost.log")
    assert sent, "QEMU logged no vhost-user message"
    assert frontend_messages(trace_events(trace)) == sent, "the trace does not hold every message QEMU sent, in order"


def test_reference_blk_backend(guest_kernel, accel, procs, initramfs, tmp_path: Path):
    vqtrace_command("live")
    image = make_disk(tmp_path / "disk.img")
    trace = tmp_path / "backend.pcapng"
    live = start_live(procs, tmp_path / "vqtrace.sock", trace, "--device", "blk", "--image", str(image))

    run_guest(procs, guest_kernel, accel, initramfs, tmp_path / "vqtrace.sock")
    stop_live(live)

    assert check_disk(image) == [], "the guest's writes are not on vqtrace's back-end image"
    check_blk_trace(trace)
    assert frontend_messages(trace_events(trace)) == qemu_sent(tmp_path / "qemu-vhost.log")
