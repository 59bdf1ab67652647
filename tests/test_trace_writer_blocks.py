"""TraceWriter.write_blocks, one write per wakeup, and what a file cut inside a wakeup's write reads as."""

from __future__ import annotations

from conftest import blocks_of, kill_when_ready
from vqtrace.events import Direction, Event, EventKind
from vqtrace.trace import writer as W
from vqtrace.trace.reader import TraceReader
from vqtrace.trace.samples import iter_bulk, sample_events
from vqtrace.trace.writer import TraceWriter


def counting_writes(monkeypatch) -> list[int]:
    """The sizes of the os.write calls the writer makes from now on."""
    real, sizes = W.os.write, []

    def write(fd: int, data) -> int:
        sizes.append(len(data))
        return real(fd, data)

    monkeypatch.setattr(W.os, "write", write)
    return sizes


def test_write_blocks_is_one_write_of_the_blocks_in_order(tmp_path, monkeypatch):
    events = sample_events() + list(iter_bulk(40))
    with TraceWriter(tmp_path / "many.pcapng") as writer:
        writer.write_many(events)
    with TraceWriter(tmp_path / "blocks.pcapng") as writer:
        for event in events:
            writer.interface(event.source, W._auto_description(event, {}))
        blocks = [writer.block(event) for event in events]
        sizes = counting_writes(monkeypatch)
        writer.write_blocks(blocks)
        writer.write_blocks([])  # nothing to write: no system call
        writer.write_blocks(blocks[:1])
        assert sizes == [sum(map(len, blocks)), len(blocks[0])]
        writer._emit(blocks[0])  # the old name still writes
    many, written = (tmp_path / "many.pcapng").read_bytes(), (tmp_path / "blocks.pcapng").read_bytes()
    assert written == many + blocks[0] + blocks[0]


def test_write_many_is_one_write_per_call(tmp_path, monkeypatch):
    events = list(iter_bulk(30))
    with TraceWriter(tmp_path / "t.pcapng") as writer:
        writer.write_many(events[:1])  # its interface
        sizes = counting_writes(monkeypatch)
        for k in range(0, 30, 9):
            writer.write_many(events[k:k + 9])
        assert len(sizes) == 4  # one write each: nothing is kept back for the next call


def test_a_file_cut_anywhere_in_a_wakeup_reads_its_whole_blocks_and_names_the_cut_one(tmp_path):
    """SIGKILL during a write may leave part of it in the file (the kernel stops between pages)."""
    wakeups = [list(iter_bulk(6, start=1_000 * k)) for k in range(3)]
    path = tmp_path / "t.pcapng"
    with TraceWriter(path) as writer:
        for wakeup in wakeups:
            writer.write_many(wakeup)
    data = path.read_bytes()
    blocks = blocks_of(data)
    starts = {offset for offset, _ in blocks}
    last_wakeup = blocks[-6][0]
    packets_before = sum(1 for offset, _ in blocks[:-6] if data[offset] == 6)  # (not the SHB, IDB)
    cut_path = tmp_path / "cut.pcapng"
    for cut in range(last_wakeup, len(data) + 1):
        cut_path.write_bytes(data[:cut])
        whole = sum(1 for offset, length in blocks[-6:] if offset + length <= cut)
        with TraceReader(cut_path) as reader:
            assert len(reader) == packets_before + whole, cut
            assert [f.time_ns for f in reader] == [e.time_ns for w in wakeups for e in w][:len(reader)]
            if cut in starts or cut == len(data):
                assert not reader.problems, cut
            else:  # the cut block: reported with its offset, never read as a frame
                (problem,) = reader.problems
                assert problem.offset == max(s for s in starts if s < cut)
                assert "truncated block" in problem.message


CHILD = """
import sys
sys.path.insert(0, {root!r})
from vqtrace.trace.samples import iter_bulk
from vqtrace.trace.writer import TraceWriter

writer = TraceWriter(sys.argv[1])
events = iter_bulk(10 ** 9)
n = 0
while True:
    wakeup = [next(events) for _ in range(9)]
    if n % 2:
        writer.write_many(wakeup)
    else:
        writer.write_blocks([writer.block(event) for event in wakeup])
    n += 1
    if n == 300:
        print("ready", flush=True)
"""


def test_a_recorder_killed_between_or_during_wakeups_leaves_whole_blocks(tmp_path):
    path = tmp_path / "killed.pcapng"
    kill_when_ready(CHILD, str(path))
    with TraceReader(path) as reader:
        assert len(reader) >= 300 * 9
        times = [frame.time_ns for frame in reader]
        assert times == sorted(times) and len(set(times)) == len(times)  # in order, none lost before the end
        for frame in reader:
            assert frame.event().kind in EventKind
        assert len(reader.problems) <= 1
        if reader.problems:
            assert "truncated" in reader.problems[0].message


def test_an_interface_block_goes_out_before_the_wakeup_that_needs_it(tmp_path, monkeypatch):
    with TraceWriter(tmp_path / "t.pcapng") as writer:
        sizes = counting_writes(monkeypatch)
        writer.write_many([Event(EventKind.KICK, 1, "a", 0, Direction.TO_DEVICE),
                           Event(EventKind.KICK, 2, "b", 0, Direction.TO_DEVICE)])
        assert len(sizes) == 3  # the two interface blocks, then the wakeup's blocks in one write
    with TraceReader(tmp_path / "t.pcapng") as reader:
        assert [f.source for f in reader] == ["a", "b"] and not reader.problems
