"""`vqtrace demo`: the README's main-job command works with no arguments, in seconds."""

from __future__ import annotations

import struct
import time

from vqtrace.events import EventKind
from vqtrace.trace.reader import TraceReader

HDR = struct.Struct("<IIQ")


def test_demo_with_no_arguments(vqtrace_cli, tmp_path):
    start = time.monotonic()
    proc = vqtrace_cli("demo", cwd=tmp_path, timeout=60)
    elapsed = time.monotonic() - start
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in out + err
    assert elapsed < 30, f"the demo took {elapsed:.1f} s"
    trace = tmp_path / "vqtrace-demo.pcapng"
    assert trace.exists()
    assert "read past the end: status 1 (IOERR)" in out
    # the trace is shown as `vqtrace show` prints it
    assert "VHOST_USER_GET_FEATURES" in out and "blk OUT sector=2048" in out and "-> IOERR" in out
    with TraceReader(trace) as reader:
        events = list(reader.events())
    kinds = {e.kind for e in events}
    assert {EventKind.VHOST_USER, EventKind.KICK, EventKind.CALL, EventKind.AVAIL, EventKind.USED} <= kinds
    assert EventKind.ANOMALY not in kinds
    used = [e for e in events if e.kind is EventKind.USED]
    writes = {HDR.unpack_from(e.data)[2] for e in used if HDR.unpack_from(e.data)[0] == 1}
    assert {0, 2048, 4096, 8192} <= writes
    assert all(e.written for e in used)


def test_demo_packed_to_a_chosen_file(vqtrace_cli, tmp_path):
    trace = tmp_path / "packed.pcapng"
    proc = vqtrace_cli("demo", "--packed", "-q", "-w", str(trace), cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "packed virtqueue" in proc.stdout.decode()
    with TraceReader(trace) as reader:
        used = [e for e in reader.events() if e.kind is EventKind.USED]
    assert len(used) == 17 and all(e.packed for e in used)


def test_demo_into_a_missing_directory_is_one_line(vqtrace_cli, tmp_path):
    proc = vqtrace_cli("demo", "-w", str(tmp_path / "no" / "such" / "dir.pcapng"), timeout=60)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and "is not a directory" in err and len(err.strip().splitlines()) == 1
