"""Trace files: writer events/s, and `vqtrace show -T jsonl` against tshark with the vqtrace plugin.

Generates a trace of a busy virtio-blk queue (kick, avail, used, call per request;
64-byte sectors), then measures in one run, on the same file:

- the writer: events/s writing block by block (one system call per event, what a
  recorder does), and in batches of whole blocks (TraceWriter.write_many);
- ``vqtrace show -T jsonl`` over the whole file (a child process, output discarded);
- ``tshark -X lua_script:vqtrace.lua -T ek`` (tshark is slow: measured on a prefix of
  ``--tshark-events`` events, reported as a rate);
- and their ratio (show / tshark: above 1, vqtrace is faster).

Prints JSON lines ``{"figure": ..., "value": ..., "unit": ...}``. ``--quick``: 20,000
events instead of 1,000,000 (and a shorter tshark prefix).
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


def emit(figure: str, value: float, unit: str, **extra: object) -> None:
    print(json.dumps({"figure": figure, "value": round(value, 3), "unit": unit, **extra}), flush=True)


def timed_child(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, int]:
    """Wall and CPU seconds (user + system) of a child whose output goes to /dev/null, and its exit status.

    CPU time is what the comparison uses: on a shared 2-core machine wall time mostly says how busy the
    other processes were.
    """
    with open(os.devnull, "wb") as null, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=null, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            sys.stderr.write(err.read().decode(errors="replace")[-2000:])
    return elapsed, usage.ru_utime + usage.ru_stime, proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20,000 events instead of 1,000,000")
    parser.add_argument("--events", type=int, help="events in the trace")
    parser.add_argument("--tshark-events", type=int, help="events tshark is timed on (a prefix of the trace)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from vqtrace.dissectors.wireshark.generate import PLUGIN
    from vqtrace.trace.samples import iter_bulk
    from vqtrace.trace.writer import TraceWriter

    count = args.events or (20_000 if args.quick else 1_000_000)
    prefix = min(count, args.tshark_events or (5_000 if args.quick else 50_000))
    work = Path(tempfile.mkdtemp(prefix="vqtrace-bench-"))
    try:
        trace = work / "trace.pcapng"
        # the events are made first, so the writer alone is timed
        chunk = 100_000
        written = 0
        wall = cpu = 0.0
        with TraceWriter(trace) as writer:
            while written < count:
                events = list(iter_bulk(min(chunk, count - written), start=1_700_000_000_000_000_000 + written * 1000))
                start, start_cpu = time.perf_counter(), time.process_time()
                for event in events:
                    writer.write(event)
                wall += time.perf_counter() - start
                cpu += time.process_time() - start_cpu
                written += len(events)
        emit("writer_events_per_s", count / cpu, "events/s", mode="one write per block, CPU time", events=count)
        emit("writer_events_per_s_wall", count / wall, "events/s", mode="one write per block, wall time")
        events = list(iter_bulk(min(count, chunk)))
        start = time.process_time()
        with TraceWriter(work / "batched.pcapng") as writer:
            writer.write_many(events)
        emit("writer_batched_events_per_s", len(events) / (time.process_time() - start), "events/s",
             mode="write_many, 4096 blocks per write, CPU time", events=len(events))
        emit("trace_bytes_per_event", trace.stat().st_size / count, "bytes")

        seconds, cpu, status = timed_child([sys.executable, "-m", "vqtrace", "show", str(trace), "-T", "jsonl"])
        if status != 0:
            emit("show_jsonl_failed", status, "exit status")
            return 1
        show_rate = count / cpu
        emit("show_jsonl_events_per_s", show_rate, "events/s", events=count, basis="CPU time")
        emit("show_jsonl_events_per_s_wall", count / seconds, "events/s")

        tshark = shutil.which("tshark")
        if tshark is None:
            emit("tshark_missing", 1, "flag")
            return 0
        head = work / "prefix.pcapng"
        with TraceWriter(head) as writer:
            writer.write_many(iter_bulk(prefix))
        env = {**os.environ, "HOME": str(work)}  # no personal plugins: only the one given with -X
        seconds, cpu, status = timed_child([tshark, "-n", "-X", f"lua_script:{PLUGIN}", "-r", str(head), "-T",
                                            "ek"], env=env)
        if status != 0:
            emit("tshark_failed", status, "exit status")
            return 1
        tshark_rate = prefix / cpu
        emit("tshark_plugin_ek_events_per_s", tshark_rate, "events/s", events=prefix, basis="CPU time")
        emit("tshark_plugin_ek_events_per_s_wall", prefix / seconds, "events/s")
        emit("show_jsonl_vs_tshark_ek", show_rate / tshark_rate, "x", basis="CPU time")
        emit("load_average", os.getloadavg()[0], "processes")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
