"""Trace files: the pcapng writer (block by block), the lazy reader, truncation, corruption and resync."""

from __future__ import annotations

import os
import re
import struct
import subprocess
import textwrap

import pytest

from conftest import blocks_of, kill_when_ready, require_tool
from vqtrace.errors import TraceFileError
from vqtrace.events import Direction, Event, EventKind
from vqtrace.trace import pcapng
from vqtrace.trace.reader import TraceReader
from vqtrace.trace.samples import iter_bulk
from vqtrace.trace.writer import TraceWriter, write_trace

T0 = 1_700_000_000_123_456_789


def kicks(count: int, source: str = "blk0.q0", start: int = T0) -> list[Event]:
    return [Event(EventKind.KICK, start + i, source, i % 3, Direction.TO_DEVICE, struct.pack("<Q", i), device_type=2)
            for i in range(count)]


def test_writer_blocks_and_reader_frames(tmp_path):
    path = tmp_path / "t.pcapng"
    with TraceWriter(path) as writer:
        writer.describe("sock", "vhost-user socket /tmp/s")
        for event in kicks(3, "sock") + kicks(2, "q1", T0 + 100):
            writer.write(event)
        assert writer.interfaces == {"sock": 0, "q1": 1}
    with TraceReader(path) as reader:
        assert len(reader) == 5 and reader.problems == []
        assert [i.name for i in reader.interfaces] == ["sock", "q1"]
        assert reader.interfaces[0].description == "vhost-user socket /tmp/s"
        assert reader.interfaces[1].description == "virtio-block queue 0"  # from the source's first event
        assert reader.interfaces[0].linktype == 147 and reader.interfaces[0].ts_den == 10 ** 9
        frame = reader.frame(4)
        assert (frame.number, frame.source, frame.time_ns) == (4, "q1", T0 + 100)  # nanoseconds kept
        assert frame.event().data == struct.pack("<Q", 0) and frame.event().queue == 0
        assert reader[-1].number == 5
        with pytest.raises(IndexError):
            reader.frame(6)


def test_tshark_reads_the_trace_with_nanoseconds_and_interface_names(tmp_path):
    tshark = require_tool("tshark")
    path = tmp_path / "t.pcapng"
    write_trace(path, kicks(2, "vhost-user:/tmp/a.sock") + kicks(1, "blk0.q0", T0 + 7))
    out = subprocess.run([tshark, "-r", str(path), "-T", "fields", "-e", "frame.time_epoch", "-e",
                          "frame.interface_name", "-e", "frame.interface_description"], capture_output=True,
                         text=True, check=True, timeout=60).stdout.splitlines()
    assert out == ["1700000000.123456789\tvhost-user:/tmp/a.sock\tvirtio-block queue 0",
                   "1700000000.123456790\tvhost-user:/tmp/a.sock\tvirtio-block queue 0",
                   "1700000000.123456796\tblk0.q0\tvirtio-block queue 0"]


def test_the_index_grows_only_as_far_as_looked_at(tmp_path):
    path = tmp_path / "big.pcapng"
    with TraceWriter(path) as writer:
        writer.write_many(iter_bulk(20000))
    with TraceReader(path) as reader:
        assert reader.frame(10).number == 10
        assert reader.indexed == 10  # frame 10 needed ten block headers, not twenty thousand
        assert reader.frame(5000).event().kind in EventKind
        assert reader.indexed == 5000
        assert len(reader) == 20000 and reader.indexed == 20000
        assert reader.frame(20000).event().kind is EventKind.CALL


def test_a_truncated_file_reads_to_its_last_complete_block(tmp_path):
    path = tmp_path / "t.pcapng"
    write_trace(path, kicks(10))
    data = path.read_bytes()
    last_offset, _ = blocks_of(data)[-1]
    path.write_bytes(data[:-10])
    with TraceReader(path) as reader:
        assert len(reader) == 9
        (problem,) = reader.problems
        assert problem.offset == last_offset and "truncated block" in problem.message


def test_a_cut_block_holding_pcapng_bytes_yields_no_frame_of_them(tmp_path):
    """A capture killed inside a block whose data is itself pcapng (a guest writing a trace to its disk):
    the embedded block is the cut block's contents, not a frame of the file."""
    path = tmp_path / "inner.pcapng"
    write_trace(path, kicks(3, "inner"))
    inner = path.read_bytes()
    embedded = inner[blocks_of(inner)[-1][0]:]  # one sound packet block
    carrier = Event(EventKind.VHOST_USER, T0, "sock", None, Direction.TO_DEVICE, embedded * 2 + bytes(64))
    write_trace(path, [*kicks(2), carrier])
    data = path.read_bytes()
    last_offset, last_length = blocks_of(data)[-1]
    cut = data.index(embedded, last_offset) + 2 * len(embedded) + 8  # past both embedded blocks, inside the data
    assert cut < last_offset + last_length
    path.write_bytes(data[:cut])
    with TraceReader(path) as reader:
        assert len(reader) == 2
        (problem,) = reader.problems
        assert problem.offset == last_offset and "truncated block" in problem.message


def test_a_length_past_the_end_is_skipped_when_sound_blocks_follow_to_the_end(tmp_path):
    path = tmp_path / "t.pcapng"
    write_trace(path, kicks(10))
    data = bytearray(path.read_bytes())
    offset, _length = blocks_of(bytes(data))[8]  # the 7th packet block
    data[offset + 4:offset + 8] = struct.pack("<I", len(data))  # a corrupt length that runs past the end
    path.write_bytes(bytes(data))
    with TraceReader(path) as reader:
        assert [frame.event().data for frame in reader] == [struct.pack("<Q", i) for i in range(10) if i != 6]
        (problem,) = reader.problems
        assert problem.offset == offset and "skipped" in problem.message


def test_a_corrupt_block_is_reported_and_skipped(tmp_path):
    path = tmp_path / "t.pcapng"
    write_trace(path, kicks(10))
    data = bytearray(path.read_bytes())
    offset, _length = blocks_of(bytes(data))[5]  # SHB, IDB, then the 4th packet block
    data[offset + 4:offset + 8] = struct.pack("<I", 0x7777)  # a length that disagrees with the trailer
    path.write_bytes(bytes(data))
    with TraceReader(path) as reader:
        numbers = [frame.event().data for frame in reader]
        assert len(numbers) == 9  # the other nine are still there, in order
        assert numbers == [struct.pack("<Q", i) for i in range(10) if i != 3]
        (problem,) = reader.problems
        assert problem.offset == offset and "skipped" in problem.message


def test_garbage_in_the_middle_is_skipped_to_the_next_block(tmp_path):
    path = tmp_path / "t.pcapng"
    write_trace(path, kicks(6))
    data = path.read_bytes()
    offset, _ = blocks_of(data)[4]
    path.write_bytes(data[:offset] + b"\xde\xad\xbe\xef" * 13 + data[offset:])
    with TraceReader(path) as reader:
        assert len(reader) == 6
        assert [p.offset for p in reader.problems] == [offset]


@pytest.mark.parametrize(("content", "message"), [
    (b"", "empty file"),
    (b"hello world, not a capture", "not a pcapng file"),
    (b"\xd4\xc3\xb2\xa1" + bytes(20), "a pcap (libpcap) file, not pcapng"),
    (b"\x0a\x0d\x0d\x0a" + bytes(8), "bad byte-order magic"),
])
def test_files_that_are_not_traces(tmp_path, content, message):
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(TraceFileError, match=re.escape(message)):
        TraceReader(path)
    with pytest.raises(TraceFileError, match="cannot open"):
        TraceReader(tmp_path / "missing.pcapng")


def test_big_endian_sections_and_other_block_types(tmp_path):
    # A big-endian section (as another tool may write) with an interface statistics block in it.
    def be_block(block_type: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack(">II", block_type, len(body) + 12) + body + struct.pack(">I", len(body) + 12)

    shb = be_block(pcapng.SHB_TYPE, struct.pack(">IHHq", pcapng.BYTE_ORDER_MAGIC, 1, 0, -1))
    idb = be_block(pcapng.IDB_TYPE, struct.pack(">HHI", 147, 0, 0) + struct.pack(">HH", 2, 2) + b"be\0\0"
                   + struct.pack(">HH", 9, 1) + b"\x09\0\0\0" + struct.pack(">HH", 0, 0))
    record = open_record()
    epb = be_block(pcapng.EPB_TYPE, struct.pack(">IIIII", 0, 0, 5, len(record), len(record)) + record)
    isb = be_block(pcapng.ISB_TYPE, struct.pack(">III", 0, 0, 0))
    path = tmp_path / "be.pcapng"
    with TraceWriter(path) as writer:
        writer.write(kicks(1)[0])
    path.write_bytes(path.read_bytes() + shb + idb + isb + epb)
    with TraceReader(path) as reader:
        frames = list(reader)
        assert [f.source for f in frames] == ["blk0.q0", "be"] and reader.problems == []
        assert frames[1].time_ns == 5 and frames[1].event().kind is EventKind.CALL


def open_record() -> bytes:
    from vqtrace.trace.record import encode

    return encode(Event(EventKind.CALL, 0, "be", 1, Direction.TO_DRIVER))


def test_writing_to_a_pipe_and_to_a_file_object(tmp_path):
    read, write = os.pipe()
    with os.fdopen(write, "wb") as stream, TraceWriter(stream) as writer:
        writer.write(kicks(1)[0])
    data = os.read(read, 1 << 16)
    os.close(read)
    assert data.startswith(b"\x0a\x0d\x0d\x0a")
    path = tmp_path / "copy.pcapng"
    path.write_bytes(data)
    with TraceReader(path) as reader:
        assert len(reader) == 1
    with pytest.raises(TraceFileError, match="cannot write"):
        TraceWriter(tmp_path / "no" / "such" / "dir.pcapng")


CHILD = textwrap.dedent("""
    import struct, sys
    sys.path.insert(0, {root!r})
    from vqtrace.events import Direction, Event, EventKind
    from vqtrace.trace.samples import iter_bulk
    from vqtrace.trace.writer import TraceWriter
    writer = TraceWriter(sys.argv[1])
    n = 0
    for event in iter_bulk(10 ** 9):
        writer.write(event)
        n += 1
        if n == 2000:
            print("ready", flush=True)
""")


def test_a_recorder_killed_with_sigkill_leaves_a_readable_trace(tmp_path):
    path = tmp_path / "killed.pcapng"
    kill_when_ready(CHILD, str(path))
    with TraceReader(path) as reader:
        count = len(reader)
        assert count >= 2000
        for frame in reader:  # every complete block holds a whole, decodable record
            frame.event()
        assert len(reader.problems) <= 1
        if reader.problems:  # SIGKILL may land between the writes of one block
            assert "truncated" in reader.problems[0].message
            assert reader.problems[0].offset > reader._offsets[-1]
