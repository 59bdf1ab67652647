"""The trace writer's fast framing equals the plain pcapng builder; batches and single writes agree."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqtrace.events import Direction, Event, EventKind
from vqtrace.trace import pcapng
from vqtrace.trace import writer as W
from vqtrace.trace.reader import TraceReader
from vqtrace.trace.record import encode
from vqtrace.trace.samples import iter_bulk, sample_events
from vqtrace.trace.writer import TraceWriter

FRAMING = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _event(size: int, time_ns: int, source: str) -> Event:
    return Event(EventKind.VHOST_USER, time_ns, source, None, Direction.TO_DEVICE, bytes(range(256)) * (size // 256)
                 + bytes(size % 256))


@FRAMING
@given(st.lists(st.tuples(st.one_of(st.integers(0, 64), st.integers(0, 3 * W._FRAMED_MAX)),
                          st.integers(0, (1 << 64) - 1), st.sampled_from(["a", "b", "c"])), min_size=1, max_size=12))
def test_blocks_equal_the_pcapng_builder(tmp_path, items):
    """Cached framing structs, the joined framing of long records: the block pcapng.enhanced_packet builds."""
    with TraceWriter(tmp_path / "t.pcapng") as writer:
        for size, time_ns, source in items:
            event = _event(size, time_ns, source)
            block = writer.block(event)
            assert block == pcapng.enhanced_packet(writer.interfaces[source], time_ns, encode(event))


def test_framing_without_room_for_more_structs(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "_FRAMES_MAX", 2)
    monkeypatch.setattr(W, "_FRAMES", {})
    with TraceWriter(tmp_path / "t.pcapng") as writer:
        for size in (10, 11, 12, 13, 10):
            event = _event(size, 1234567890123456789, "s")
            assert writer.block(event) == pcapng.enhanced_packet(0, event.time_ns, encode(event))
        assert len(W._FRAMES) == 2


def test_write_and_write_many_write_the_same_frames(tmp_path):
    events = sample_events() + list(iter_bulk(300))
    with TraceWriter(tmp_path / "one.pcapng") as writer:
        for event in events:
            writer.write(event)
        assert writer.count == len(events)
    with TraceWriter(tmp_path / "many.pcapng") as writer:
        for k in range(0, len(events), 7):
            assert writer.write_many(events[k:k + 7], batch=3) == len(events[k:k + 7])
        assert writer.count == len(events)
    with TraceReader(tmp_path / "one.pcapng") as one, TraceReader(tmp_path / "many.pcapng") as many:
        assert not one.problems and not many.problems and len(one) == len(many) == len(events)
        assert [i.name for i in one.interfaces] == [i.name for i in many.interfaces]
        for a, b in zip(one, many, strict=True):
            assert (a.source, a.time_ns, a.data, a.orig_len) == (b.source, b.time_ns, b.data, b.orig_len)
    # once every source has its interface, the files are the same byte for byte
    with TraceWriter(tmp_path / "one.pcapng") as writer:
        for event in events:
            writer.write(event)
        for event in events:
            writer.write(event)
    with TraceWriter(tmp_path / "many.pcapng") as writer:
        for event in events:
            writer.write(event)
        writer.write_many(events, batch=5)
    assert (tmp_path / "one.pcapng").read_bytes() == (tmp_path / "many.pcapng").read_bytes()


def test_write_many_writes_what_it_made_before_an_event_it_cannot_encode(tmp_path):
    good = list(iter_bulk(5))
    bad = Event(EventKind.USED, 1, "blk0.q0", 0, Direction.TO_DRIVER)  # a USED event without its used element
    path = tmp_path / "t.pcapng"
    with TraceWriter(path) as writer:
        with pytest.raises(ValueError, match="used element"):
            writer.write_many([*good, bad, *good])
        assert writer.count == 5
    with TraceReader(path) as reader:
        assert len(reader) == 5 and not reader.problems
        assert [frame.event().kind for frame in reader] == [event.kind for event in good]


def test_a_partial_write_is_completed(tmp_path, monkeypatch):
    """os.write may take fewer bytes than given (a pipe, a signal): the rest follows, in order."""
    real = W.os.write
    taken: list[int] = []

    def short(fd: int, data) -> int:
        n = real(fd, bytes(data[:max(1, len(data) // 3)]))
        taken.append(n)
        return n

    path = tmp_path / "t.pcapng"
    with TraceWriter(path) as writer:
        monkeypatch.setattr(W.os, "write", short)
        events = list(iter_bulk(6))
        writer.write(events[0])
        writer.write_many(events[1:])
        monkeypatch.setattr(W.os, "write", real)
    assert len(taken) > 2
    with TraceReader(path) as reader:
        assert [frame.event().kind for frame in reader] == [event.kind for event in events]
        assert struct.unpack_from("<I", path.read_bytes(), 0)[0] == pcapng.SHB_TYPE
