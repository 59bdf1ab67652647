#!/usr/bin/env python3
"""`vqtrace dump scan` against the read bandwidth of the same snapshot files (`cat FILE > /dev/null`).

Three raw snapshots are made in a temporary directory (deleted at the end), each with
real blk rings planted where Linux would put them, so the scan has something to find:

- ``sparse``: 4 GiB, mostly zero: a sparse file with 16 MiB of data (rings and noise)
  spread over it, as a decompressed snapshot of a mostly idle guest is;
- ``random``: 1 GiB of random bytes, rings planted in it;
- ``pagetables``: 256 MiB where every page looks like an x86-64 page table (physical
  addresses with flag bits: every page passes the first two passes), one ring planted:
  the scanner's worst case, not a realistic guest.

For each file, ``cat FILE > /dev/null`` and ``vqtrace dump scan FILE --base 0`` as a
user runs it (a new process: start-up included) run alternately on the same file, in
the same page-cache state, best of three each:

- warm (figures ``cat_<file>_...``, ``dump_scan_<file>_...``): the file read once before;
- cold (``..._cold_...``): the file's pages evicted before every run (fsync, then
  ``posix_fadvise(DONTNEED)``; fincore checks it worked); ``--drop-caches`` drops the
  whole page cache instead (``echo 3 > /proc/sys/vm/drop_caches``, root only: every
  other process on the machine then starts cold too); ``--warm-only`` skips them.

Each gives the seconds, the bandwidths (file size / seconds) and ``..._vs_cat`` = scan
bandwidth / cat bandwidth (the aim: at least 0.5). Then ``..._engine_...``: the scan
alone, timed inside a fresh process after its imports (no interpreter start-up, the
file's pages mapped for the first time, page cache warm), against the warm ``cat``; and
``dump_scan_startup_seconds``: the command's fixed cost (a scan of a one-page file, best
of nine). The scan must find every planted ring (else the script fails).

vqtrace runs byte-compiled, as an installed copy does (a private
``PYTHONPYCACHEPREFIX`` in the temporary directory, filled by a first run; the
checkout is not written to); ``--nopyc`` runs it as this checkout does by default
(``PYTHONDONTWRITEBYTECODE=1``: its sources compiled at every start, about 50 ms more).

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

from bench_startup import bytecode_env  # noqa: E402

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


def evict(path: Path) -> None:
    """Drop ``path``'s pages from the page cache (fsync, then posix_fadvise DONTNEED): a cold read of that file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def drop_caches() -> None:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``: the whole page cache (root only; every process pays)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as err:
        raise SystemExit(f"bench_dump: --drop-caches: cannot write /proc/sys/vm/drop_caches: {err.strerror}") from None


def resident(path: Path) -> float | None:
    """The fraction of ``path`` in the page cache (util-linux fincore), None if unknown."""
    if not shutil.which("fincore"):
        return None
    result = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                            capture_output=True, text=True)
    try:
        return int(result.stdout.split()[0]) / max(1, path.stat().st_size)
    except (IndexError, ValueError):
        return None


def run_timed(command: list[str] | str, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Seconds one run of ``command`` takes (a string runs in ``sh``), and its stdout; SystemExit if it fails."""
    start = time.perf_counter()
    result = subprocess.run(command, shell=isinstance(command, str), capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"bench_dump: {command} failed: {result.stderr.strip()}")
    return seconds, result.stdout


def best_seconds(command: list[str] | str, repeats: int, env: dict[str, str] | None = None) -> tuple[float, str]:
    best, out = float("inf"), ""
    for _ in range(repeats):
        seconds, stdout = run_timed(command, env)
        if seconds < best:
            best, out = seconds, stdout
    return best, out


def cat_and_scan(path: Path, scan_command: list[str], repeats: int, env: dict[str, str],
                 cold: str | None) -> tuple[float, float, str]:
    """Best seconds of ``cat FILE > /dev/null`` and of the scan, run alternately on the same file in the same
    cache state: warm (``cold`` None: the file read once before) or cold (``file``: its pages evicted before each
    run; ``system``: the whole page cache dropped); and the scan's output."""
    cat_command = f"cat '{path}' > /dev/null"
    if cold is None:
        run_timed(cat_command)  # warm the page cache
    cat = scan = float("inf")
    out = ""
    for _ in range(repeats):
        for which in ("cat", "scan"):
            if cold == "file":
                evict(path)
            elif cold == "system":
                drop_caches()
            if cold and which == "cat" and (left := resident(path)) is not None and left > 0.01:
                print(f"bench_dump: {path.name}: {left:.0%} still cached after eviction", file=sys.stderr)
            seconds, stdout = run_timed(cat_command if which == "cat" else scan_command, env)
            if which == "cat":
                cat = min(cat, seconds)
            elif seconds < scan:
                scan, out = seconds, stdout
    return cat, scan, out


def measure(name: str, path: Path, rings: list[int], repeats: int, env: dict[str, str], cold: str | None) -> None:
    size = path.stat().st_size
    scan_command = [sys.executable, "-m", "vqtrace", "dump", "scan", str(path), "--base", "0", "-T", "json"]
    warm_cat = float("inf")
    for state in ("warm", "cold"):
        if state == "cold" and cold is None:
            continue
        cat, scan, out = cat_and_scan(path, scan_command, repeats, env, None if state == "warm" else cold)
        found = {c["desc"] for c in json.loads(out)["candidates"]}
        missing = [hex(r) for r in rings if r not in found]
        if missing:
            raise SystemExit(f"bench_dump: the scan of {name} ({state}) missed the rings at {missing}")
        tag = name if state == "warm" else f"{name}_cold"
        if state == "warm":
            warm_cat = cat
            emit(f"dump_scan_{name}_rings_found", len(found & set(rings)), "rings")
        emit(f"cat_{tag}_seconds", cat, "s")
        emit(f"dump_scan_{tag}_seconds", scan, "s")
        emit(f"cat_{tag}_bandwidth", size / cat / GiB, "GiB/s")
        emit(f"dump_scan_{tag}_bandwidth", size / scan / GiB, "GiB/s")
        emit(f"dump_scan_{tag}_vs_cat", cat / scan, "x")
    # The scan alone, in a fresh process, timed after its imports (no interpreter start-up), page cache warm.
    run_timed(f"cat '{path}' > /dev/null")  # the cold runs evicted it
    inner = float("inf")
    for _ in range(repeats):
        result = subprocess.run([sys.executable, "-c", _INNER, str(path)], capture_output=True, text=True,
                                cwd=ROOT, check=True, env=env)
        inner = min(inner, float(result.stdout))
    emit(f"dump_scan_{name}_engine_bandwidth", size / inner / GiB, "GiB/s")
    emit(f"dump_scan_{name}_engine_vs_cat", warm_cat / inner, "x")


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
    parser.add_argument("--warm-only", action="store_true", help="skip the cold-cache figures")
    parser.add_argument("--drop-caches", action="store_true",
                        help="cold = the whole page cache dropped (root; slows everything else on the machine) "
                             "instead of only the file's pages evicted")
    parser.add_argument("--nopyc", action="store_true",
                        help="run vqtrace without byte code for its sources, as this checkout does by default")
    args = parser.parse_args(argv)
    sparse_size, random_size = (512 * MiB, 128 * MiB) if args.quick else (4 * GiB, 1 * GiB)
    repeats = 1 if args.quick else 3
    cold = None if args.warm_only else "system" if args.drop_caches else "file"
    parent = args.dir or Path(tempfile.gettempdir())
    free = shutil.disk_usage(parent).free
    if free < random_size + 64 * MiB + 512 * MiB:
        print(f"bench_dump: {parent} has {free >> 20} MiB free; {random_size >> 20} MiB needed", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="vqtrace-bench-dump-", dir=parent))
    try:
        env = bytecode_env(None if args.nopyc else workdir / "pycache")
        tiny = workdir / "page.raw"
        tiny.write_bytes(bytes(4096))
        startup_command = [sys.executable, "-m", "vqtrace", "dump", "scan", str(tiny), "--base", "0"]
        run_timed(startup_command, env)  # fills the byte-code cache
        startup, _ = best_seconds(startup_command, 3 * repeats, env)
        emit("dump_scan_startup_seconds", startup, "s")  # the fixed cost: interpreter, numpy, vqtrace imports
        sparse = workdir / "sparse.raw"
        measure(f"sparse_{sparse_size // GiB or sparse_size // MiB}{'g' if sparse_size >= GiB else 'm'}",
                sparse, make_sparse(sparse, sparse_size), repeats, env, cold)
        sparse.unlink()
        rand = workdir / "random.raw"
        measure(f"random_{random_size // GiB or random_size // MiB}{'g' if random_size >= GiB else 'm'}",
                rand, make_random(rand, random_size), repeats, env, cold)
        rand.unlink()
        tables = workdir / "pagetables.raw"
        tables_size = random_size // 4
        measure(f"pagetables_{tables_size // MiB}m", tables, make_page_tables(tables, tables_size), repeats, env,
                cold)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
