"""The blk workload against qemu-storage-daemon's vhost-user-blk export, no vqtrace in
the middle: proves the guest side of scenarios 1 and 2 (issue 8) on its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import require_tool

from .vm import STORAGE_DAEMON, QemuVM, StorageDaemon, vhost_user_blk_args
from .workloads import GUEST_PATTERNS, blk_workload, check_disk, make_disk

pytestmark = pytest.mark.e2e

BOOT_TIMEOUT = 90  # TCG on 2 busy cores: ~5 s normally


def test_guest_blk_workload_against_storage_daemon(guest_kernel, accel, procs, initramfs, tmp_path: Path):
    require_tool(STORAGE_DAEMON)
    image = make_disk(tmp_path / "disk.img")
    socket_path = tmp_path / "vhost-blk.sock"
    StorageDaemon(procs, image, socket_path).start()
    initrd = initramfs(["virtio_blk"], blk_workload())
    vm = QemuVM(procs, guest_kernel, initrd, vhost_user_blk_args(socket_path), accel=accel,
                shared_memory=True).start()

    verdict = vm.wait_console(r"^VQTRACE-VERDICT (PASS|FAIL)(.*)$", BOOT_TIMEOUT)
    assert verdict.group(1) == "PASS", verdict.group(0)
    vm.wait_exit(30)
    assert check_disk(image) == [], "the guest's writes did not all reach qemu-storage-daemon's image"


def test_workload_detects_wrong_data(guest_kernel, accel, procs, initramfs, tmp_path: Path):
    """The verdict can fail: a host pattern the image does not hold is reported."""
    image = make_disk(tmp_path / "disk.img", patterns=())  # no host pattern on the disk
    initrd = initramfs(["virtio_blk"], blk_workload(guest=GUEST_PATTERNS[:1]))
    vm = QemuVM(procs, guest_kernel, initrd,
                ["-drive", f"if=none,id=d0,file={image},format=raw,cache=none",
                 "-device", "virtio-blk-pci,drive=d0,romfile="], accel=accel).start()

    verdict = vm.wait_console(r"^VQTRACE-VERDICT (PASS|FAIL)(.*)$", BOOT_TIMEOUT)
    assert verdict.group(1) == "FAIL"
    assert "data mismatch at sector 4096" in verdict.group(2)
    vm.wait_exit(30)
