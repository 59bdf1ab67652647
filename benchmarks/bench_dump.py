#!/usr/bin/env python3
"""`vqtrace dump scan` against the read bandwidth of the same snapshot files (`cat FILE > /dev/null`).

Two raw snapshots are made in a temporary directory (deleted at the end), each with
real blk rings planted where Linux would put them, so the scan has something to find:

- ``sparse``: 4 GiB, mostly zero: a sparse file with 16 MiB of data (rings and noise)
  spread over it, as a decompressed snapshot of a mostly idle guest is;
- ``random``: 1 GiB of random bytes, rings planted in it;
- ``pagetables``: 256 MiB where every page looks like an x86-64 page table (physical
  addresses with flag bits: every page passes the first two passes), one ring planted:
  the scanner's worst case, not a realistic guest.

For each, measured in the same run, page cache warm (best of three): the seconds
``cat FILE > /dev/null`` takes, the seconds ``vqtrace dump scan FILE --base 0`` takes
as a user runs it (a new process: start-up included), their bandwidths (file size /
seconds) and ``scan_vs_cat`` = scan bandwidth / cat bandwidth (the aim: at least 0.5);
then the same for the scan alone, timed inside a fresh process after its imports
(``engine``: no interpreter start-up, the file's pages mapped for the first time),
and ``dump_scan_startup_seconds``: the CLI's fixed cost (a scan of a one-page file).
The scan must find every planted ring (else the script fails).

Prints JSON lines ``{"figure", "value", "unit"}``; ``--quick`` uses 512 MiB and
128 MiB files and one run each. Needs about 1.2 GiB of free disk (the sparse file
takes 16 MiB of it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vqtrace.dump.synth import VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, SyntheticGuest  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
RINGS_PER_FILE = 4


def emit(figure: str, value: float, unit: str) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 4), "unit": unit}), flush=True)


def planted_block(base: int, size: int = 4 * MiB) -> tuple[bytes, int]:
    """``size`` bytes of guest RAM at ``base`` holding one active blk ring at its start; (bytes, ring address)."""
    guest = SyntheticGuest(size, base=base, noise=True)
    queue = guest.blk_queue(base, 256)
    for k in range(6):
        guest.blk(queue, VIRTIO_BLK_T_OUT if k % 2 else VIRTIO_BLK_T_IN, 8 * k, 4096)
    guest.complete(queue, 4)
    return bytes(guest.ram), base


def make_sparse(path: Path, size: int) -> list[int]:
    """A sparse file of ``size`` bytes: RINGS_PER_FILE 4 MiB blocks of data, holes elsewhere."""
    rings = []
    with open(path, "wb") as out:
        out.truncate(size)
        for k in range(RINGS_PER_FILE):
            at = (k + 1) * size // (RINGS_PER_FILE + 1) // MiB * MiB
            block, ring = planted_block(at)
            out.seek(at)
            out.write(block)
            rings.append(ring)
    return rings


def make_random(path: Path, size: int) -> list[int]:
    """``size`` random bytes with RINGS_PER_FILE planted blocks."""
    rings = []
    spots = {(k + 1) * size // (RINGS_PER_FILE + 1) // (4 * MiB) * (4 * MiB) for k in range(RINGS_PER_FILE)}
    with open(path, "wb") as out:
        at = 0
        while at < size:
            if at in spots:
                block, ring = planted_block(at)
                rings.append(ring)
            else:
                block = os.urandom(min(4 * MiB, size - at))
            out.write(block)
            at += len(block)
    return rings


def make_page_tables(path: Path, size: int) -> list[int]:
    """``size`` bytes that look like x86-64 page tables everywhere (the scanner's worst case), one ring planted."""
    import numpy as np

    rng = np.random.default_rng(5)
    with open(path, "wb") as out:
        for at in range(0, size, 16 * MiB):
            words = (rng.integers(0, size // 4096, 2 * MiB, dtype=np.uint64) << np.uint64(12)) | np.uint64(0x63)
            out.write(words.tobytes()[:min(16 * MiB, size - at)])
        block, ring = planted_block(size // 2)
        out.seek(size // 2)
        out.write(block)
    return [ring]


def best_seconds(command: list[str] | str, repeats: int, *, shell: bool = False) -> tuple[float, str]:
    best, out = float("inf"), ""
    for _ in range(repeats):
        start = time.perf_counter()
        result = subprocess.run(command, shell=shell, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode:
            raise SystemExit(f"bench_dump: {command} failed: {result.stderr.strip()}")
        if seconds < best:
            best, out = seconds, result.stdout
    return best, out


def measure(name: str, path: Path, rings: list[int], repeats: int) -> None:
    size = path.stat().st_size
    subprocess.run(f"cat '{path}' > /dev/null", shell=True, check=True)  # warm the page cache
    cat, _ = best_seconds(f"cat '{path}' > /dev/null", repeats, shell=True)
    env_cmd = [sys.executable, "-m", "vqtrace", "dump", "scan", str(path), "--base", "0", "-T", "json"]
    scan, out = best_seconds(env_cmd, repeats)
    found = {c["desc"] for c in json.loads(out)["candidates"]}
    missing = [hex(r) for r in rings if r not in found]
    if missing:
        raise SystemExit(f"bench_dump: the scan of {name} missed the rings at {missing}")
    emit(f"dump_scan_{name}_rings_found", len(found & set(rings)), "rings")
    emit(f"cat_{name}_seconds", cat, "s")
    emit(f"dump_scan_{name}_seconds", scan, "s")
    emit(f"cat_{name}_bandwidth", size / cat / GiB, "GiB/s")
    emit(f"dump_scan_{name}_bandwidth", size / scan / GiB, "GiB/s")
    emit(f"dump_scan_{name}_vs_cat", cat / scan, "x")
    # The scan alone, in a fresh process, timed after its imports (no interpreter start-up).
    inner = float("inf")
    for _ in range(repeats):
        result = subprocess.run([sys.executable, "-c", _INNER, str(path)], capture_output=True, text=True,
                                cwd=ROOT, check=True)
        inner = min(inner, float(result.stdout))
    emit(f"dump_scan_{name}_engine_bandwidth", size / inner / GiB, "GiB/s")
    emit(f"dump_scan_{name}_engine_vs_cat", cat / inner, "x")


_INNER = """
import sys, time
from vqtrace.dump.scan import scan
from vqtrace.dump.snapshot import open_snapshot
with open_snapshot(sys.argv[1], base=0) as snap:
    start = time.perf_counter()
    scan(snap, progress=False)
    print(time.perf_counter() - start)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small files, one run each")
    parser.add_argument("--dir", type=Path, help="where to make the files (default: a temporary directory)")
    args = parser.parse_args(argv)
    sparse_size, random_size = (512 * MiB, 128 * MiB) if args.quick else (4 * GiB, 1 * GiB)
    repeats = 1 if args.quick else 3
    parent = args.dir or Path(tempfile.gettempdir())
    free = shutil.disk_usage(parent).free
    if free < random_size + 64 * MiB + 512 * MiB:
        print(f"bench_dump: {parent} has {free >> 20} MiB free; {random_size >> 20} MiB needed", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="vqtrace-bench-dump-", dir=parent))
    try:
        tiny = workdir / "page.raw"
        tiny.write_bytes(bytes(4096))
        startup, _ = best_seconds([sys.executable, "-m", "vqtrace", "dump", "scan", str(tiny), "--base", "0"], repeats)
        emit("dump_scan_startup_seconds", startup, "s")  # the fixed cost: interpreter, numpy, vqtrace imports
        sparse = workdir / "sparse.raw"
        measure(f"sparse_{sparse_size // GiB or sparse_size // MiB}{'g' if sparse_size >= GiB else 'm'}",
                sparse, make_sparse(sparse, sparse_size), repeats)
        sparse.unlink()
        rand = workdir / "random.raw"
        measure(f"random_{random_size // GiB or random_size // MiB}{'g' if random_size >= GiB else 'm'}",
                rand, make_random(rand, random_size), repeats)
        rand.unlink()
        tables = workdir / "pagetables.raw"
        tables_size = random_size // 4
        measure(f"pagetables_{tables_size // MiB}m", tables, make_page_tables(tables, tables_size), repeats)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
