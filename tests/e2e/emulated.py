"""Scenario 3 (issue 8): QEMU-emulated virtio devices frozen in the middle of I/O.

The guest drives every device (blk split and packed, net, rng, console ports, balloon,
scsi), then reads a sector of ``/dev/vda`` that a ``blkdebug`` layer fails once; with
``rerror=stop`` QEMU stops the VM with that read still in flight (a plain ``stop`` would
complete it first). Then: ``dump-guest-memory`` and the QMP status bundle.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .guest import GuestKernel, build_initramfs
from .procs import HarnessError, Processes
from .snapshot import collect_bundle, inflight_view, write_json
from .vm import QemuVM
from .workloads import BLK_FUNCTIONS, make_disk

MODULES = ("virtio_blk", "virtio_net", "virtio-rng", "virtio_console", "virtio_balloon", "virtio_scsi", "sd_mod")
FREEZE_SECTOR = 40960  # the read of this sector of vda fails once, and the VM stops
MEMORY_MB = 128
BALLOON_MB = 96  # the balloon target: the driver inflates 32 MiB
CONSOLE_TEXT = "hello from the virtio console"
PORT_NAME = "org.vqtrace.port1"
PORT_TEXT = "hello from a virtio serial port"
PACKED_DEVICE = "blk1"  # packed=on, its requests all complete
PACKED_BALLOON = "balloon0"  # packed=on too: QEMU holds the driver's stats buffer, in flight


def devices(workdir: Path) -> list[str]:
    """The QEMU arguments: one of each device, two packed ones (blk1, balloon0), vda's failing layer."""
    for name in ("vda", "vdb", "sda"):
        make_disk(workdir / f"{name}.img")
    blkdebug = ",".join([
        "file.driver=blkdebug", f"file.image.filename={workdir / 'vda.img'}",
        "file.inject-error.0.event=read_aio", f"file.inject-error.0.sector={FREEZE_SECTOR}",
        "file.inject-error.0.once=on", "file.inject-error.0.errno=5",
    ])
    return [
        "-drive", f"if=none,id=vda,format=raw,cache=none,rerror=stop,werror=stop,{blkdebug}",
        "-device", "virtio-blk-pci,drive=vda,id=blk0,romfile=",
        "-drive", f"if=none,id=vdb,format=raw,cache=none,file={workdir / 'vdb.img'}",
        "-device", f"virtio-blk-pci,drive=vdb,id={PACKED_DEVICE},packed=on,romfile=",
        # restrict=on: slirp answers ARP inside QEMU; nothing reaches the host or any network.
        "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0,id=net0,romfile=",
        "-device", "virtio-rng-pci,id=rng0,romfile=",
        "-device", "virtio-serial-pci,id=serial0,max_ports=2,romfile=",
        "-chardev", f"file,id=con0,path={workdir / 'hvc0.out'}", "-device", "virtconsole,chardev=con0,id=console0",
        "-chardev", f"file,id=port1,path={workdir / 'port1.out'}",
        "-device", f"virtserialport,chardev=port1,name={PORT_NAME},id=port1",
        "-device", f"virtio-balloon-pci,id={PACKED_BALLOON},packed=on,romfile=",
        "-device", "virtio-scsi-pci,id=scsi0,romfile=",
        "-drive", f"if=none,id=sd0,format=raw,cache=none,file={workdir / 'sda.img'}",
        "-device", "scsi-hd,drive=sd0,bus=scsi0.0,id=sd0dev",
    ]


def workload() -> str:
    """Drive each device, wait for the balloon to inflate, then the read that fails."""
    return BLK_FUNCTIONS + f"""
for d in /dev/vda /dev/vdb /dev/sda /dev/hwrng /dev/hvc0; do wait_dev $d || exit 1; done
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 || fail "net setup"
arping -q -c 2 -w 5 -I eth0 10.0.2.2 || fail "no ARP answer on virtio-net"
dd if=/dev/hwrng of=/tmp/rng bs=64 count=4 status=none || fail "hwrng"
[ "$(wc -c < /tmp/rng)" -eq 256 ] || fail "short hwrng read"
echo "{CONSOLE_TEXT}" > /dev/hvc0 || fail "hvc0"
port=$(grep -l {PORT_NAME} /sys/class/virtio-ports/*/name | head -n 1)
port=/dev/$(basename $(dirname $port))
echo "{PORT_TEXT}" > $port || fail "serial port $port"
for dev in /dev/vda /dev/vdb /dev/sda; do
    write_pattern $dev 16 4096
    check_pattern $dev guest 16 4096
    check_pattern $dev host 4096 4096
done
total=$(awk '/MemTotal/ {{print $2}}' /proc/meminfo)
echo "VQTRACE-BALLOON-WAIT $total"
BALLOON_KB={(MEMORY_MB - BALLOON_MB) * 1024}
i=0
while [ $(awk '/MemTotal/ {{print $2}}' /proc/meminfo) -gt $((total - BALLOON_KB)) ]; do
    i=$((i + 1)); [ $i -gt 600 ] && fail "the balloon did not inflate"
    sleep 0.05
done
echo "VQTRACE-VERDICT PASS devices"
echo "VQTRACE-FREEZE"
dd if=/dev/vda of=/dev/null bs=4096 count=1 skip=$(({FREEZE_SECTOR} * 512)) iflag=skip_bytes,direct status=none
echo "VQTRACE-THAWED $?"
"""


@dataclass(frozen=True)
class Snapshot:
    """What a frozen run leaves: the ELF dump, the QMP bundle (with elements) and QEMU's in-flight view."""

    dump: Path
    bundle: Path
    inflight: Path
    console: str

    def load_bundle(self) -> dict[str, Any]:
        return json.loads(self.bundle.read_text())

    def load_inflight(self) -> dict[str, Any]:
        return json.loads(self.inflight.read_text())


def take_snapshot(procs: Processes, kernel: GuestKernel, accel: str, out: Path, timeout: float = 180) -> Snapshot:
    """Boot, drive, freeze; dump memory and collect the bundle; end QEMU. Files go to ``out``."""
    workdir = procs.workdir
    initrd = build_initramfs(kernel, MODULES, workload(), workdir / "initrd-emulated.cpio")
    vm = QemuVM(procs, kernel, initrd, devices(workdir), name="emulated", memory_mb=MEMORY_MB,
                accel=accel).start()
    start = time.monotonic()
    try:
        vm.wait_console(r"^VQTRACE-BALLOON-WAIT", timeout)
        vm.qmp.execute("balloon", {"value": BALLOON_MB << 20})
        verdict = vm.wait_console(r"^VQTRACE-VERDICT (PASS|FAIL)(.*)$", timeout - (time.monotonic() - start))
        if verdict.group(1) != "PASS":
            raise HarnessError(f"the guest workload failed: {verdict.group(0)}")
        stop = vm.qmp.wait_event("STOP", 60)
        errors = [e for e in vm.qmp.events if e["event"] == "BLOCK_IO_ERROR"]
        state = vm.qmp.execute("query-status")
        if state["status"] != "io-error" or not errors or errors[0]["data"]["device"] != "vda":
            raise HarnessError(f"the VM did not stop on vda's read error: {state}, events {vm.qmp.events}")
        out.mkdir(parents=True, exist_ok=True)
        dump = out / "guest.elf"
        dump.unlink(missing_ok=True)
        vm.qmp.execute("dump-guest-memory", {"paging": False, "protocol": f"file:{dump}"}, timeout=300)
        bundle = collect_bundle(vm.qmp)
        bundle["stop-event"] = stop
        bundle_path = write_json(out / "guest.qemu-status.json", bundle)
        inflight_path = write_json(out / "guest.inflight.json", inflight_view(bundle))
        console = vm.console()
    finally:
        vm.stop()
    return Snapshot(dump, bundle_path, inflight_path, console)
