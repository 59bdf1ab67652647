"""``dump analyze -w FILE``: a snapshot's queues as a vqtrace trace, for ``vqtrace show`` and the TUI.

Per queue (one trace interface each), in this order, all stamped with the
snapshot's time (its file's modification time, or now for ``--pid``), a
nanosecond apart to keep the order:

1. DATA events with the split rings' areas as they were (``virtqueue.avail``,
   ``virtqueue.used``; the descriptor table as ``virtqueue.indirect``-shaped
   ``virtqueue.desc`` entries is left to the chains);
2. for each completed request still visible, oldest first, an AVAIL event (the chain
   and its readable bytes) and a USED event (the used element and the bytes the
   device wrote, as memory holds them now);
3. an AVAIL event per chain in flight (no USED: the snapshot ends there);
4. an ANOMALY event per anomaly.

Byte areas are capped at :data:`SNAPLEN` per chain (the record is marked truncated).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import GuestMemoryError
from ..events import Direction, Event, EventKind
from ..memory import GuestMemory
from ..model import UsedElem
from ..rings.buffers import read_readable, read_written
from ..trace.writer import TraceWriter
from .analyze import ChainReport, QueueReport
from .snapshot import Snapshot

SNAPLEN = 64 << 10


def _time_of(snapshot: Snapshot) -> int:
    if snapshot.format != "process":
        try:
            return os.stat(snapshot.source).st_mtime_ns
        except OSError:
            pass
    return time.time_ns()


def _bytes(read: object, *args: object) -> tuple[bytes, bool]:
    try:
        data = read(*args)  # type: ignore[operator]
    except (GuestMemoryError, ValueError):
        return b"", True
    return data, False


def queue_events(memory: GuestMemory, report: QueueReport, source: str, start_ns: int) -> Iterator[Event]:
    """The events of one queue's report."""
    config = report.config
    clock = itertools.count(start_ns)
    common = {"source": source, "queue": config.index, "device_type": config.device_type,
              "features": config.features, "packed": config.packed}
    if not config.packed and report.state is not None:
        params = {"queue_size": config.size, "event_idx": int(config.event_idx)}
        for layer, addr, size in (("virtqueue.avail", config.driver, 6 + 2 * config.size),
                                  ("virtqueue.used", config.device, 6 + 8 * config.size)):
            data, _ = _bytes(memory.read, addr, size)
            if data:
                yield Event(EventKind.DATA, next(clock), data=data, layer=layer, params=params, **common)

    def avail(chain_report: ChainReport) -> Event:
        chain = chain_report.chain
        assert chain is not None
        data, cut = _bytes(read_readable, memory, chain, SNAPLEN)
        truncated = cut or chain.readable_len > len(data)
        return Event(EventKind.AVAIL, next(clock), direction=Direction.TO_DEVICE, data=data, chain=chain,
                     truncated=truncated, **common)

    for done in reversed(report.completed):
        if done.chain is None or done.used_len is None:
            continue
        yield avail(done)
        length = done.chain.writable_len if config.device_type == 2 else done.used_len
        written, cut = _bytes(read_written, memory, done.chain, min(length, SNAPLEN))
        used = UsedElem(config.index, done.id, done.used_len, done.position)
        yield Event(EventKind.USED, next(clock), direction=Direction.TO_DRIVER, chain=done.chain, used=used,
                    written=written, truncated=cut or length > len(written), **common)
    for flight in report.in_flight:
        if flight.chain is not None:
            yield avail(flight)
    for anomaly in report.anomalies:
        yield Event(EventKind.ANOMALY, next(clock), anomaly=anomaly, **common)


def write_trace(path: Path, snapshot: Snapshot, reports: list[QueueReport]) -> int:
    """Write the trace of ``reports``; how many events."""
    start = _time_of(snapshot)
    with TraceWriter(path, application=f"vqtrace dump analyze {snapshot.source}") as writer:
        count = 0
        for number, report in enumerate(reports):
            source = report.target.label
            writer.describe(source, f"{report.target.label} in {snapshot.source}")
            count += writer.write_many(queue_events(snapshot.memory, report, source, start + number * (1 << 20)))
    return count
