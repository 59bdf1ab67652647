#!/usr/bin/env python3
"""Regenerate the real artefacts in captures/ from the end-to-end scenarios (captures/README.md).

    .venv/bin/python scripts/make-captures.py [--out captures] [--only snapshot|live]

- snapshot: scenario 3 (QEMU-emulated virtio devices frozen with a blk read in flight):
  ``qemu-emulated.elf.zst`` (dump-guest-memory, zstd -19), ``qemu-emulated.qemu-status.json``
  (the QMP bundle, docs/qemu-status.md) and ``qemu-emulated.inflight.json`` (QEMU's in-flight view).
- live: scenarios 1 and 2 (the guest's blk workload through ``vqtrace live``), once that command
  exists: ``blk-proxy.pcapng`` and ``blk-backend.pcapng``, each with QEMU's own log of the
  vhost-user messages it sent and read (``*.qemu-vhost.log``, ``-trace vhost_user_write/read``).

Needs what the end-to-end tests need (scripts/setup-system.sh). Takes about a minute with TCG,
most of it zstd.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from e2e import emulated  # noqa: E402
from e2e.guest import build_initramfs, ensure_kernel  # noqa: E402
from e2e.procs import HarnessError, Processes, wait_for_path  # noqa: E402
from e2e.traces import QEMU_TRACE_ARGS  # noqa: E402
from e2e.vm import QemuVM, StorageDaemon, detect_accel, vhost_user_blk_args  # noqa: E402
from e2e.workloads import blk_workload, check_disk, make_disk  # noqa: E402

SNAPSHOT_NAME = "qemu-emulated"


def make_snapshot(out: Path, work: Path, kernel, accel: str) -> list[Path]:
    procs = Processes(work)
    try:
        snapshot = emulated.take_snapshot(procs, kernel, accel, work / "snapshot")
    finally:
        procs.stop_all()
    compressed = work / f"{SNAPSHOT_NAME}.elf.zst"
    subprocess.run(["zstd", "-q", "-f", "-19", "-T2", str(snapshot.dump), "-o", str(compressed)], check=True)
    compressed.chmod(0o644)
    # All three files describe one instant: replace them together, each atomically.
    return [install(compressed, out), install(snapshot.bundle, out, f"{SNAPSHOT_NAME}.qemu-status.json"),
            install(snapshot.inflight, out, f"{SNAPSHOT_NAME}.inflight.json")]


def install(path: Path, out: Path, name: str | None = None) -> Path:
    """Copy ``path`` into ``out`` under a temporary name, then rename: never a half-written capture."""
    target = out / (name or path.name)
    partial = target.with_name(f".{target.name}.partial")
    shutil.copyfile(path, partial)
    os.replace(partial, target)
    return target


def make_live(out: Path, work: Path, kernel, accel: str) -> list[Path]:
    if importlib.util.find_spec("vqtrace.commands.live") is None:
        print("make-captures: `vqtrace live` does not exist yet; no live traces", file=sys.stderr)
        return []
    made = []
    for name, role in (("blk-proxy", "proxy"), ("blk-backend", "backend")):
        run = work / name
        run.mkdir()
        procs = Processes(run)
        try:
            image = make_disk(run / "disk.img")
            socket_path = run / "vqtrace.sock"
            trace = run / f"{name}.pcapng"  # copied into captures/ only when the run passed
            # Relative paths (vqtrace runs in the run's folder): the trace names "vqtrace.sock", not a temp dir.
            args = [sys.executable, "-m", "vqtrace", "live", "--socket", socket_path.name, "--once", "-q",
                    "-w", trace.name]
            if role == "proxy":
                StorageDaemon(procs, image, run / "qsd.sock").start()
                args += ["--backend", "qsd.sock", "--device-type", "blk"]
            else:
                args += ["--device", "blk", "--image", image.name]
            live = procs.spawn("vqtrace-live", args, cwd=run)
            wait_for_path(socket_path, 20, live)
            initrd = build_initramfs(kernel, ["virtio_blk"], blk_workload(), run / "initrd.cpio")
            qemu_log = run / f"{name}.qemu-vhost.log"
            devices = [*vhost_user_blk_args(socket_path), *QEMU_TRACE_ARGS, "-D", str(qemu_log)]
            vm = QemuVM(procs, kernel, initrd, devices, accel=accel, shared_memory=True).start()
            verdict = vm.wait_console(r"^VQTRACE-VERDICT (PASS|FAIL)(.*)$", 180)
            vm.wait_exit(30)
            live.wait(20)
            if verdict.group(1) != "PASS" or check_disk(image):
                raise HarnessError(f"{name}: {verdict.group(0)}")
            made += [install(trace, out), install(qemu_log, out)]
        finally:
            procs.stop_all()
    return made


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "captures")
    parser.add_argument("--only", choices=("snapshot", "live"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        kernel = ensure_kernel()
        with tempfile.TemporaryDirectory(prefix="vqtrace-captures-") as tmp:
            work = Path(tmp)
            accel = detect_accel(kernel, work)
            made = []
            if args.only in (None, "snapshot"):
                made += make_snapshot(args.out, work, kernel, accel)
            if args.only in (None, "live"):
                made += make_live(args.out, work, kernel, accel)
    except (HarnessError, subprocess.CalledProcessError, OSError) as err:
        print(f"make-captures: {err}", file=sys.stderr)
        return 2
    for path in made:
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}\t{path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
