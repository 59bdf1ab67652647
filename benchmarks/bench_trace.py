"""Trace files: writer events/s, and `vqtrace show -T jsonl` against tshark with the vqtrace plugin.

The writer, timed on the path live capture takes. ``vqtrace live -w`` (and the Wireshark
extcap) hand the trace writer each wakeup's events at once (``vqtrace.vhost.loop.Loop.flush``
-> ``TraceWriter.write_many``): a kick or a call, then the chains the ring tap found. So
the events here come from the live tap itself (``vqtrace.vhost.tap.TrackerTap``) following
a virtio-blk queue that the test driver and a DeviceQueue work (8 requests of 512 bytes a
wakeup, reads and writes); they are made first, then written, so the writer alone is timed:

- ``writer_events_per_s``: each wakeup's events in one ``write_many`` (what live capture does);
- ``writer_block_by_block_events_per_s``: one ``write`` per event, one system call each (what
  a sink that takes one event at a time gets: ``vqtrace demo``, a LiveThread without
  ``sink_many``);
- ``writer_batched_events_per_s``: ``write_many`` in batches of 4096 blocks (conversions,
  ``write_trace``).

Either way every block reaches the kernel whole, in order, as soon as the writer has it.

Then a trace of a busy virtio-blk queue (kick, avail, used, call per request; 64-byte
sectors) is generated and measured, on the same file:

- ``vqtrace show -T jsonl`` over the whole file (a child process, output discarded);
- ``tshark -X lua_script:vqtrace.lua -T ek`` (tshark is slow: measured on a prefix of
  ``--tshark-events`` events, reported as a rate);
- and their ratio (show / tshark: above 1, vqtrace is faster).

Prints JSON lines ``{"figure": ..., "value": ..., "unit": ...}``. ``--quick``: 20,000
events instead of 1,000,000 (and a shorter tshark prefix, fewer writer rounds).
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
    """One figure line; ``extra`` (how it was measured) is not printed: run_all.py takes figure, value, unit only."""
    del extra
    print(json.dumps({"figure": figure, "value": round(value, 3), "unit": unit}), flush=True)


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


def live_wakeups(requests: int) -> list[list]:
    """The events of a live capture of a virtio-blk queue, wakeup by wakeup (see the module doc)."""
    import struct

    from vqtrace.driver import GuestDriver
    from vqtrace.events import Direction, Event, EventKind
    from vqtrace.model import VIRTIO_F_VERSION_1
    from vqtrace.rings import DeviceQueue, write_response
    from vqtrace.vhost.tap import TrackerTap

    guest = GuestDriver.in_buffer(16 << 20)
    queue = guest.queue(0, 128, features=1 << VIRTIO_F_VERSION_1, device_type=2)
    config = queue.config
    device = DeviceQueue(config, guest.memory)
    tap = TrackerTap(config, guest.memory, 0, "blk0")
    wakeups: list[list] = []
    t = 1_700_000_000_000_000_000
    sector = 0
    while sector < requests:
        for _ in range(8):
            write = sector % 2 == 0
            header = struct.pack("<IIQ", 1 if write else 0, 0, sector)
            if write:
                queue.add([header, bytes(512)], [1])
            else:
                queue.add([header], [512, 1])
            sector += 1
        t += 1000
        kick = Event(EventKind.KICK, t, "blk0", 0, Direction.TO_DEVICE, (1).to_bytes(8, "little"), device_type=2,
                     features=config.features)
        wakeups.append([kick, *tap.poll(t)])
        for chain in device.pop_all():
            written = write_response(guest.memory, chain, bytes(chain.writable_len))
            device.push(chain, written)
        t += 1000
        call = Event(EventKind.CALL, t, "blk0", 0, Direction.TO_DRIVER, (1).to_bytes(8, "little"), device_type=2,
                     features=config.features)
        wakeups.append([call, *tap.poll(t)])
        queue.get_used()
    return wakeups


def bench_writer(work: Path, rounds: int, repeat: int = 3) -> None:
    """The writer figures (see the module doc)."""
    from vqtrace.trace.writer import TraceWriter

    wakeups = live_wakeups(2000 if rounds > 1 else 400)
    events = [event for wakeup in wakeups for event in wakeup]
    count = len(events) * rounds

    def timed(write: object) -> tuple[float, float]:
        best_cpu = best_wall = float("inf")
        for _ in range(repeat):  # best of ``repeat`` (3)
            with TraceWriter(work / "writer.pcapng") as writer:
                start, start_cpu = time.perf_counter(), time.process_time()
                write(writer)
                wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            best_cpu, best_wall = min(best_cpu, cpu), min(best_wall, wall)
        return best_cpu, best_wall

    def per_wakeup(writer: TraceWriter) -> None:
        write_many = writer.write_many
        for _ in range(rounds):
            for wakeup in wakeups:
                write_many(wakeup)

    def block_by_block(writer: TraceWriter) -> None:
        write = writer.write
        for _ in range(rounds):
            for event in events:
                write(event)

    def batched(writer: TraceWriter) -> None:
        for _ in range(rounds):
            writer.write_many(events)

    # CPU time (the machine is shared); the wall time of the live path too
    cpu, wall = timed(per_wakeup)
    emit("writer_events_per_s", count / cpu, "events/s")
    emit("writer_events_per_s_wall", count / wall, "events/s")
    emit("writer_events_per_wakeup", len(events) / len(wakeups), "events")
    cpu, _ = timed(block_by_block)
    emit("writer_block_by_block_events_per_s", count / cpu, "events/s")
    cpu, _ = timed(batched)
    emit("writer_batched_events_per_s", count / cpu, "events/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20,000 events instead of 1,000,000")
    parser.add_argument("--events", type=int, help="events in the trace")
    parser.add_argument("--tshark-events", type=int, help="events tshark is timed on (a prefix of the trace)")
    parser.add_argument("--writer-only", action="store_true", help="only the writer figures")
    parser.add_argument("--repeat", type=int, default=3, help="writer figures: best of this many timings (3)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from vqtrace.dissectors.wireshark.generate import PLUGIN
    from vqtrace.trace.samples import iter_bulk
    from vqtrace.trace.writer import TraceWriter, write_trace

    count = args.events or (20_000 if args.quick else 1_000_000)
    prefix = min(count, args.tshark_events or (5_000 if args.quick else 50_000))
    work = Path(tempfile.mkdtemp(prefix="vqtrace-bench-"))
    try:
        bench_writer(work, 1 if args.quick else 10, max(1, args.repeat))
        if args.writer_only:
            return 0
        trace = work / "trace.pcapng"
        write_trace(trace, iter_bulk(count, start=1_700_000_000_000_000_000))
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
