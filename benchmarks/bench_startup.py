#!/usr/bin/env python3
"""Start-up time of vqtrace commands: what a user waits for before any real work.

Each command runs as a user runs it (``python -m vqtrace ...``, a new process), and
each figure is the best of N runs (15; ``--quick``: 3; the commands take turns, so
load from elsewhere hits them alike), wall clock, in seconds:

| figure ``startup_<name>_seconds`` | command |
|---|---|
| ``python`` | ``python -c pass``: the interpreter and ``site`` alone, the floor |
| ``help`` | ``vqtrace --help`` |
| ``show`` | ``vqtrace show captures/blk-proxy.pcapng -c 1`` (a small real trace, one event printed) |
| ``stats`` | ``vqtrace stats captures/blk-proxy.pcapng`` (98 events) |
| ``features`` | ``vqtrace features 0x130000000 --device blk`` |
| ``decode`` | ``vqtrace decode virtqueue.desc`` on one 16-byte descriptor |
| ``dump_scan`` | ``vqtrace dump scan`` on a one-page raw file (``--base 0``) |

in two byte-code states, reported separately:

- ``startup_<name>_seconds``: every module byte-compiled, as ``pip install`` leaves
  vqtrace. The byte code goes to a private ``PYTHONPYCACHEPREFIX`` in a temporary
  directory (the checkout is not written to), filled by one warm-up run;
- ``startup_<name>_nopyc_seconds``: ``PYTHONDONTWRITEBYTECODE=1`` without a cache for
  vqtrace's own sources, as this checkout runs (tests, CI): every start compiles
  them, while installed packages (numpy, construct) keep their byte code.

Plus ``startup_<name>_modules``: how many modules the command imports, its work
included (``python -X importtime``; load-independent, so it shows a regression that
timing noise hides); stderr names the heavy ones among them (construct, numpy, ...).

Prints JSON lines ``{"figure", "value", "unit"}``.
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
TRACE = ROOT / "captures" / "blk-proxy.pcapng"
HEAVY = ("construct", "numpy", "scapy", "textual")

def emit(figure: str, value: float, unit: str) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 4), "unit": unit}), flush=True)


def bytecode_env(cache: Path | None) -> dict[str, str]:
    """The environment of a run: byte code cached under ``cache``, or (None) vqtrace's sources compiled each time."""
    env = dict(os.environ)
    env.pop("PYTHONPYCACHEPREFIX", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if cache is None:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    else:
        env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env


def best_seconds(argv: list[str], repeats: int, env: dict[str, str], ok: tuple[int, ...] = (0,)) -> float:
    """The fastest of ``repeats`` runs of ``argv`` (output discarded); SystemExit if it fails."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        seconds = time.perf_counter() - start
        if result.returncode not in ok:
            raise SystemExit(f"bench_startup: {' '.join(argv)} exited {result.returncode}: "
                             f"{result.stderr.decode(errors='replace').strip()[-500:]}")
        best = min(best, seconds)
    return best


def imported(argv: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
    """How many modules ``argv`` imports (``python -X importtime``), and which of HEAVY."""
    probe = [argv[0], "-X", "importtime", *argv[1:]]
    result = subprocess.run(probe, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    names = [line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
             if line.startswith("import time:") and "|" in line and not line.endswith("imported package")]
    return len(names), [name for name in HEAVY if name in names]


def commands(workdir: Path) -> dict[str, tuple[list[str], tuple[int, ...]]]:
    """name -> (argv, accepted exit codes)."""
    page = workdir / "page.raw"
    page.write_bytes(bytes(4096))
    vq = [sys.executable, "-m", "vqtrace"]
    return {
        "python": ([sys.executable, "-c", "pass"], (0,)),
        "help": ([*vq, "--help"], (0,)),
        "show": ([*vq, "show", str(TRACE), "-c", "1"], (0,)),
        "stats": ([*vq, "stats", str(TRACE)], (0,)),
        "features": ([*vq, "features", "0x130000000", "--device", "blk"], (0, 1)),
        "decode": ([*vq, "decode", "virtqueue.desc", "0010000000000000 00100000 0100 0100"], (0,)),
        "dump_scan": ([*vq, "dump", "scan", str(page), "--base", "0"], (0,)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three runs per figure")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="only these commands")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 15
    if not TRACE.is_file():
        print(f"bench_startup: {TRACE} is missing", file=sys.stderr)
        return 2
    sources = ("vqtrace", "dissectors", "tui")
    stale = sorted(str(p.relative_to(ROOT)) for top in sources for p in (ROOT / top).glob("**/__pycache__"))
    if stale:
        print(f"bench_startup: note: {len(stale)} __pycache__ folders in the checkout make the _nopyc figures "
              f"optimistic ({stale[0]}, ...)", file=sys.stderr)
    workdir = Path(tempfile.mkdtemp(prefix="vqtrace-bench-startup-"))
    try:
        cache = workdir / "pycache"
        runs = commands(workdir)
        names = [n for n in runs if not args.only or n in args.only]
        envs = {"": bytecode_env(cache), "_nopyc": bytecode_env(None)}
        best: dict[tuple[str, str], float] = {}
        for name in names:
            command, ok = runs[name]
            best_seconds(command, 1, envs[""], ok)  # fills the byte-code cache
        # Round robin (every command once per round) so a burst of load elsewhere hits all figures alike.
        for _ in range(repeats):
            for name in names:
                command, ok = runs[name]
                for state, env in envs.items():
                    seconds = best_seconds(command, 1, env, ok)
                    best[name, state] = min(best.get((name, state), seconds), seconds)
        for name in names:
            for state in envs:
                emit(f"startup_{name}{state}_seconds", best[name, state], "s")
            if name != "python":
                count, heavy = imported(runs[name][0], envs[""])
                emit(f"startup_{name}_modules", count, "modules")
                print(f"bench_startup: {name}: {count} modules, heavy ones: {', '.join(heavy) or 'none'}",
                      file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
