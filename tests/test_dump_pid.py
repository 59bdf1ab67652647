"""`vqtrace dump --pid` against a real, running QEMU (TCG, no guest kernel): known bytes and a blk ring are
placed in guest RAM with ``-device loader``; SeaBIOS drives the virtio-blk disk on its own. The same VM is
dumped by QEMU (ELF and kdump-zlib) and by ``vqtrace dump save``, and every view agrees."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import require_tool, run_vqtrace
from vqtrace.dump.procmem import connect_qmp, open_process, parse_mtree, qmp_sockets_of
from vqtrace.dump.qmp import QmpClient, QmpError
from vqtrace.dump.snapshot import open_snapshot
from vqtrace.dump.synth import VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, SyntheticGuest

QEMU = "qemu-system-x86_64"
BASE = 0x1000000  # where the loader puts our image (16 MiB into a 64 MiB guest)
RING = BASE
MARKER_AT = BASE + 0x80000
MARKER = b"VQTRACE-MARKER!!"


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    """A running QEMU with our image in its RAM; stopped (by its pid) when the module ends."""
    qemu = require_tool(QEMU)
    workdir = tmp_path_factory.mktemp("pid")
    guest = SyntheticGuest(2 << 20, base=BASE)
    queue = guest.blk_queue(RING, 256)
    guest.blk(queue, VIRTIO_BLK_T_OUT, 16, 512)
    guest.complete(queue, 1)
    guest.blk(queue, VIRTIO_BLK_T_OUT, 2048, 4096)
    guest.blk(queue, VIRTIO_BLK_T_IN, 64, 512)
    guest.ram[MARKER_AT - BASE:MARKER_AT - BASE + len(MARKER)] = MARKER
    image = workdir / "image.bin"
    guest.write_raw(image)
    disk = workdir / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(8 << 20)
    sock = workdir / "qmp.sock"
    proc = subprocess.Popen([qemu, "-accel", "tcg", "-m", "64M", "-display", "none", "-nodefaults",
                             "-qmp", f"unix:{sock},server=on,wait=off",
                             "-drive", f"if=none,id=d0,file={disk},format=raw",
                             "-device", "virtio-blk-pci,drive=d0,id=blk0",
                             "-device", f"loader,file={image},addr={BASE:#x}"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"QEMU did not start: {proc.stderr.read().decode()[-500:]}")
            time.sleep(0.05)
        # SeaBIOS reads the disk's first sector through its own virtio-blk driver, then finds nothing to boot.
        with QmpClient(str(sock)) as qmp:
            while time.monotonic() < deadline:
                status = qmp.execute("x-query-virtio-queue-status",
                                     {"path": "/machine/peripheral/blk0/virtio-backend", "queue": 0})
                if status["used-idx"] >= 1:
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError("SeaBIOS never used the virtio-blk queue")
        yield proc, sock, queue.config, workdir
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _running(sock: Path) -> str:
    with QmpClient(str(sock)) as qmp:
        return qmp.execute("query-status")["status"]


def test_layout_from_qmp_and_marker_through_proc_mem(vm):
    proc, sock, _, _ = vm
    assert qmp_sockets_of(proc.pid) == [str(sock)]  # found on QEMU's command line
    with connect_qmp(proc.pid, None, 10) as qmp:
        memory = open_process(proc.pid, qmp)
    with memory:
        assert memory.read(MARKER_AT, len(MARKER)) == MARKER
        ram = [r for r in memory.layout if r.kind == "ram"]
        assert ram[-1].guest_addr + ram[-1].size == 64 << 20
        assert memory.loaded_bytes() == 4096  # one page was read, nothing else
    assert _running(sock) == "running"  # never stopped


def test_cli_info_and_analyze_live(vm):
    proc, sock, config, _ = vm
    info = run_vqtrace("dump", "info", "--pid", str(proc.pid))
    assert info.returncode == 0, info.stderr
    assert b"running process" in info.stdout and b"pc.ram" in info.stdout
    spec = f"size=256,desc={config.desc:#x},avail={config.driver:#x},used={config.device:#x}"
    result = run_vqtrace("dump", "analyze", "--pid", str(proc.pid), "--qmp", str(sock), "--queue", spec,
                         "--device", "blk", "--features", hex(config.features))
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "avail[1] id 3: blk OUT sector=2048 len=4096 in flight" in out
    assert "avail[2] id 6: blk IN sector=64 len=512 in flight" in out
    assert "used[0] id 0 len 1: blk OUT sector=16 len=512 -> OK" in out
    assert _running(sock) == "running"


def test_live_qemu_status_shows_seabios_queue(vm, tmp_path):
    """Without a queue source, --pid asks QEMU over QMP: SeaBIOS's own virtio-blk request is there."""
    proc, sock, _, _ = vm
    result = run_vqtrace("dump", "analyze", "--pid", str(proc.pid), "-T", "json")
    assert result.returncode == 0, result.stderr
    (queue,) = json.loads(result.stdout)["queues"]
    assert queue["path"] == "/machine/peripheral/blk0/virtio-backend" and queue["device"] == "blk"
    assert queue["qemu"]["used_idx"] == queue["state"]["used_idx"] >= 1
    assert queue["completed"][0]["summary"].startswith("blk IN sector=0 len=512")  # the boot sector read
    bundle = tmp_path / "status.json"
    collected = run_vqtrace("dump", "qemu-status", "--qmp", str(sock), "-o", str(bundle))
    assert collected.returncode == 0, collected.stderr
    doc = json.loads(bundle.read_text())
    assert doc["format"] == "vqtrace-qemu-status" and doc["devices"][0]["name"] == "virtio-blk"
    again = run_vqtrace("dump", "analyze", "--pid", str(proc.pid), "--qemu-status", str(bundle), "-T", "json")
    assert json.loads(again.stdout)["queues"][0]["desc"] == queue["desc"]


def test_scan_of_the_live_guest_finds_both_rings(vm):
    proc, _, config, _ = vm
    result = run_vqtrace("dump", "scan", "--pid", str(proc.pid), "-T", "json")
    assert result.returncode == 0, result.stderr
    found = {c["desc"]: c for c in json.loads(result.stdout)["candidates"]}
    assert config.desc in found and found[config.desc]["driver"] == config.driver
    assert found[config.desc]["device_guess"] == "blk"
    assert len(found) == 2  # ours and SeaBIOS's


@pytest.mark.parametrize("fmt", ["elf", "kdump-zlib"])
def test_qemu_dumps_agree_with_the_live_view(vm, fmt, tmp_path):
    proc, sock, config, _ = vm
    dump = tmp_path / f"guest.{fmt}"
    with QmpClient(str(sock), timeout=120) as qmp:
        qmp.execute("dump-guest-memory", {"paging": False, "protocol": f"file:{dump}", "format": fmt})
    with open_snapshot(dump) as snap:
        assert snap.format == ("elf" if fmt == "elf" else "kdump")
        assert snap.memory.read(MARKER_AT, len(MARKER)) == MARKER
    info = json.loads(run_vqtrace("dump", "info", str(dump), "-T", "json").stdout)
    assert info["cpus"] == 1 and info["notes"].get("QEMU QEMUCPUState") == 1
    spec = f"size=256,desc={config.desc},avail={config.driver},used={config.device}"
    offline = run_vqtrace("dump", "analyze", str(dump), "--queue", spec, "--device", "blk", "-T", "json")
    live = run_vqtrace("dump", "analyze", "--pid", str(proc.pid), "--queue", spec, "--device", "blk", "-T", "json")
    summaries = [[c["summary"] for c in json.loads(r.stdout)["queues"][0]["in_flight"]] for r in (offline, live)]
    assert summaries[0] == summaries[1] == ["blk OUT sector=2048 len=4096", "blk IN sector=64 len=512"]


def test_save_pid_as_elf(vm, tmp_path):
    proc, _, _, _ = vm
    out = tmp_path / "saved.elf"
    result = run_vqtrace("dump", "save", "--pid", str(proc.pid), "-o", str(out))
    assert result.returncode == 0, result.stderr
    with open_snapshot(out) as snap:
        assert snap.memory.read(MARKER_AT, len(MARKER)) == MARKER
        assert snap.total_size > 64 << 20
    assert out.stat().st_blocks * 512 < 40 << 20  # zero pages left as holes


def test_bad_pid_and_qmp_one_line(tmp_path):
    cases = [
        (["dump", "info", "--pid", "999999999"], b"no process"),
        (["dump", "info", "--pid", "1", "--qmp", str(tmp_path / "nothing.sock")], b"cannot connect"),
        (["dump", "qemu-status", "--qmp", str(tmp_path / "nothing.sock")], b"cannot connect"),
        (["dump", "info", "--pid", "1"], b"no QMP socket on its command line"),
    ]
    for args, message in cases:
        result = run_vqtrace(*args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
        assert len(result.stderr.decode().strip().splitlines()) == 1


def test_qmp_peer_that_never_greets_times_out(tmp_path):
    silent = tmp_path / "silent.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(silent))
    server.listen(1)
    try:
        started = time.monotonic()
        with pytest.raises(QmpError, match="did not answer"):
            QmpClient(str(silent), timeout=0.5).connect()
        assert time.monotonic() - started < 5
    finally:
        server.close()


def test_parse_mtree_keeps_ram_and_rom_of_the_system_address_space():
    text = ("FlatView #0\r\n AS \"memory\", root: system\r\n Root memory region: system\r\n"
            "  0000000000000000-000000000009ffff (prio 0, ram): pc.ram\r\n"
            "  00000000000a0000-00000000000bffff (prio 1, i/o): vga-lowmem\r\n"
            "  0000000000100000-0000000007ffffff (prio 0, ram): pc.ram @0000000000100000 KVM\r\n"
            "  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios\r\n\r\n"
            "FlatView #1\r\n AS \"I/O\", root: io\r\n  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan\r\n")
    assert parse_mtree(text) == [(0, 0xA0000, "ram", "pc.ram"), (0x100000, 0x7F00000, "ram", "pc.ram"),
                                 (0xFFFC0000, 0x40000, "rom", "pc.bios")]
