#!/usr/bin/env python3
"""Run every benchmarks/bench_*.py in turn and pass their figures through.

Each script prints JSON lines ``{"figure": ..., "value": ..., "unit": ...}``; this
runner checks every line has that shape, prints it, and exits non-zero if a script
failed or printed anything else on stdout (its stderr passes through). ``--quick`` is
passed to every script (a smoke run); ``--only NAME`` runs the scripts whose file name
contains NAME.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIGURE_KEYS = {"figure", "value", "unit"}


def _figure(line: str) -> dict | None:
    try:
        doc = json.loads(line)
    except ValueError:
        return None
    if not isinstance(doc, dict) or set(doc) != FIGURE_KEYS or not isinstance(doc["figure"], str):
        return None
    if isinstance(doc["value"], bool) or not isinstance(doc["value"], int | float) or not isinstance(doc["unit"], str):
        return None
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark (a smoke run)")
    parser.add_argument("--only", metavar="NAME", action="append", default=[],
                        help="run only the scripts whose name contains NAME (repeatable)")
    args = parser.parse_args(argv)
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if any(name in s.name for name in args.only)]
    if not scripts:
        print("run_all: no benchmark matched", file=sys.stderr)
        return 2
    failed = []
    for script in scripts:
        began = time.monotonic()
        command = [sys.executable, str(script), *(["--quick"] if args.quick else [])]
        result = subprocess.run(command, stdout=subprocess.PIPE, text=True)
        bad = [line for line in result.stdout.splitlines() if line.strip() and _figure(line) is None]
        for line in result.stdout.splitlines():
            if line.strip() and line not in bad:
                print(line, flush=True)
        seconds = time.monotonic() - began
        if result.returncode or bad:
            failed.append(script.name)
            detail = (f"exit {result.returncode}" if result.returncode
                      else f"{len(bad)} malformed lines: {bad[0][:80]!r}")
            print(f"run_all: {script.name} failed ({detail})", file=sys.stderr)
        else:
            print(f"run_all: {script.name} done in {seconds:.1f} s", file=sys.stderr)
    if failed:
        print(f"run_all: {len(failed)} of {len(scripts)} failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
