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
                                        *role, "-w", str(trace)])
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
    """The guest's writes and reads are in the trace with their sectors, lengths and data."""
    requests = blk_requests(trace_events(trace))
    writes = {(r.sector, r.data) for r in requests if r.type == VIRTIO_BLK_T_OUT}
    reads = {(r.sector, r.data) for r in requests if r.type == VIRTIO_BLK_T_IN and r.status == 0}
    for pattern in GUEST_PATTERNS:
        assert (pattern.sector, pattern.data()) in writes, f"no OUT request for sector {pattern.sector}"
        assert (pattern.sector, pattern.data()) in reads, f"no completed IN request for sector {pattern.sector}"
    for pattern in HOST_PATTERNS:
        assert (pattern.sector, pattern.data()) in reads, f"no completed IN request for sector {pattern.sector}"


def stop_live(proc) -> None:
    """Ctrl-C, as a user would: a clean exit, no traceback (the trace is then read whole)."""
    proc.interrupt(15)
    assert proc.returncode in (0, 130), proc.log_text()
    assert "Traceback" not in proc.log_text(100_000), proc.log_text()


def test_proxy_between_qemu_and_storage_daemon(guest_kernel, accel, procs, initramfs, tmp_path: Path):
    vqtrace_command("live")
    require_tool(STORAGE_DAEMON)
    image = make_disk(tmp_path / "disk.img")
    backend = tmp_path / "qsd.sock"
    StorageDaemon(procs, image, backend).start()
    trace = tmp_path / "proxy.pcapng"
    live = start_live(procs, tmp_path / "vqtrace.sock", trace, "--backend", str(backend))

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
