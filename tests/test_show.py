"""vqtrace show: summary lines, -V, -x, -c, -T json/jsonl, -Y, and bad input (one line, exit 2)."""

from __future__ import annotations

import json
import struct

import pytest

from conftest import run_vqtrace
from vqtrace.dissectors.vhost_user import pack_message
from vqtrace.events import Direction, Event, EventKind
from vqtrace.model import Chain, Descriptor, UsedElem
from vqtrace.trace.samples import write_samples
from vqtrace.trace.writer import write_trace

T0 = 1_700_000_000_000_000_000
BLK = Chain(0, 3, 7, [Descriptor(addr=0x1000, len=16, flags=1, index=3, next=4),
                      Descriptor(addr=0x2000, len=4096, flags=1, index=4, next=5),
                      Descriptor(addr=0x3000, len=1, flags=2, index=5)])
WRITE = struct.pack("<IIQ", 1, 0, 2048) + b"\xab" * 4096  # virtio 1.4, 5.2.6: VIRTIO_BLK_T_OUT at sector 2048


def small_trace(path):
    addr = struct.pack("<IIQQQQ", 0, 0, 0x1000, 0x2000, 0x3000, 0)  # vring address description
    write_trace(path, [
        Event(EventKind.VHOST_USER, T0, "vhost-user:/tmp/s", None, Direction.TO_DEVICE, pack_message(9, addr),
              device_type=2),
        Event(EventKind.KICK, T0 + 1000, "blk0.q0", 0, Direction.TO_DEVICE, device_type=2),
        Event(EventKind.AVAIL, T0 + 2000, "blk0.q0", 0, Direction.TO_DEVICE, WRITE, device_type=2, chain=BLK),
        Event(EventKind.USED, T0 + 52000, "blk0.q0", 0, Direction.TO_DRIVER, WRITE, device_type=2, chain=BLK,
              used=UsedElem(0, 3, 1, 0), written=b"\0"),
        Event(EventKind.CALL, T0 + 53000, "blk0.q0", 0, Direction.TO_DRIVER, device_type=2),
    ])
    return path


@pytest.fixture
def trace(tmp_path):
    return small_trace(tmp_path / "small.pcapng")


def out_lines(*args):
    proc = run_vqtrace("show", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode().splitlines()


def test_summary_lines(trace):
    lines = out_lines(str(trace))
    assert len(lines) == 5
    first, avail, used = lines[0].split(), lines[2], lines[3]
    assert first[:5] == ["1", "0.000000000", "vhost-user:/tmp/s", "-", "vhost-user"]
    assert "VHOST_USER_SET_VRING_ADDR idx=0" in lines[0]
    assert avail.split()[:5] == ["3", "0.000002000", "blk0.q0", "q0", "virtio-blk"]
    assert avail.endswith("avail blk OUT sector=2048 len=4096")
    assert used.endswith("used blk OUT sector=2048 len=4096 -> OK")
    assert "kick q=0" in lines[1] and "call q=0" in lines[4]


def test_verbose_tree_hex_and_count(trace):
    lines = out_lines(str(trace), "-V", "-x", "-c", "1")
    text = "\n".join(lines)
    assert "VHOST_USER_SET_VRING_ADDR" in lines[0]
    assert "Event kind: VHOST_USER (1)" in text and "Request: VHOST_USER_SET_VRING_ADDR (9)" in text
    assert "Descriptor table address: 0x0000000000001000" in text
    assert "0000  01 01 01 00 28 00" in text  # the record's first bytes: version 1, kind 1, to device
    assert not any(line.startswith("     2 ") for line in lines)


def test_json_array_of_frames(trace):
    proc = run_vqtrace("show", str(trace), "-T", "json")
    frames = json.loads(proc.stdout)
    assert [f["frame"] for f in frames] == [1, 2, 3, 4, 5]
    assert [f["kind"] for f in frames] == ["VHOST_USER", "KICK", "AVAIL", "USED", "CALL"]
    assert frames[3]["time"] == pytest.approx(52e-6)
    used = frames[3]["fields"]
    assert used["virtio_blk.type"] == 1 and used["virtio_blk.sector"] == 2048
    assert used["virtio_blk.status.status"] == 0 and used["vqtrace.used.len"] == 1
    assert used["vqtrace.desc.len"] == [16, 4096, 1]  # a repeated field is a list, as in tshark -T json
    assert used["virtio_blk.data"] == "ab" * 4096  # bytes as hex
    assert frames[0]["fields"]["vhost_user.request"] == 9
    assert frames[0]["fields"]["vhost_user.addr.desc"] == 0x1000


def test_jsonl_and_filters(trace):
    lines = out_lines(str(trace), "-T", "jsonl", "-Y", "virtio_blk.sector == 2048 && vqtrace.kind == USED")
    assert len(lines) == 1 and json.loads(lines[0])["frame"] == 4
    assert [json.loads(line)["frame"] for line in
            out_lines(str(trace), "-T", "jsonl", "-Y", 'vhost_user.request == "VHOST_USER_SET_VRING_ADDR"')] == [1]
    assert len(out_lines(str(trace), "-Y", "vqtrace.queue == 0")) == 4
    assert len(out_lines(str(trace), "-Y", "frame.number >= 2 and not virtio_blk")) == 2  # kick, call
    assert out_lines(str(trace), "-Y", "virtio_net") == []
    assert len(out_lines(str(trace), "-Y", "vqtrace.desc.len > 4000", "-c", "1")) == 1


def test_json_of_no_frames_is_an_empty_array(trace):
    proc = run_vqtrace("show", str(trace), "-T", "json", "-Y", "virtio_net")
    assert json.loads(proc.stdout) == []


@pytest.mark.parametrize(("flt", "column"), [
    ("virtio_blk.sector ==", 21),
    ("virtio_blk.sectorr == 1", 1),
    ("virtio_blk.sector == 1 &&& 2", 26),
    ('vhost_user.request == "NO_SUCH"', 23),
])
def test_a_bad_filter_is_one_line_with_the_column(trace, flt, column):
    proc = run_vqtrace("show", str(trace), "-Y", flt)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and proc.stdout == b""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"display filter column {column}:" in err


def test_bad_files_are_one_line_and_exit_2(tmp_path, trace):
    cases = {}
    (tmp_path / "text").write_text("hello")
    cases["text"] = "not a pcapng file"
    (tmp_path / "empty").write_bytes(b"")
    cases["empty"] = "empty file"
    data = trace.read_bytes()
    (tmp_path / "cut").write_bytes(data[:-7])
    cases["cut"] = "truncated block"
    corrupt = bytearray(data)
    corrupt[-4:] = b"\xff\xff\xff\xff"  # the last block's trailing length
    (tmp_path / "corrupt").write_bytes(bytes(corrupt))
    cases["corrupt"] = "block lengths disagree"
    cases["missing"] = "cannot open"
    for name, message in cases.items():
        proc = run_vqtrace("show", str(tmp_path / name))
        err = proc.stderr.decode()
        assert proc.returncode == 2, name
        assert err.count("\n") == 1 and "Traceback" not in err and message in err, (name, err)
    # a cut file still shows what is complete, then says where it stops
    proc = run_vqtrace("show", str(tmp_path / "cut"))
    assert len(proc.stdout.decode().splitlines()) == 4 and "offset" in proc.stderr.decode()


def test_an_unknown_record_version_is_shown_and_reported(tmp_path, trace):
    data = bytearray(trace.read_bytes())
    at = data.find(b"\x01\x02\x01\x01\x28\x00")  # the KICK record: version 1, kind 2, to device, queue flag
    assert at > 0
    data[at] = 9
    path = tmp_path / "v9.pcapng"
    path.write_bytes(bytes(data))
    proc = run_vqtrace("show", str(path))
    lines = proc.stdout.decode().splitlines()
    assert proc.returncode == 2 and len(lines) == 5
    assert "unknown record version 9" in lines[1]
    assert proc.stderr.decode().count("\n") == 1 and "frame 2: unknown record version 9" in proc.stderr.decode()
    proc = run_vqtrace("show", str(path), "-T", "json")
    assert json.loads(proc.stdout)[1]["fields"] == {"vqtrace.version": 9} and proc.returncode == 2


def test_every_sample_shows_in_every_format(tmp_path):
    path = tmp_path / "samples.pcapng"
    count = write_samples(path)
    text = out_lines(str(path))
    assert len(text) == count
    assert any("anomaly DESC_LOOP" in line for line in text)
    assert any("vhost_user.inflight_split" in line or "inflight" in line for line in text)
    frames = [json.loads(line) for line in out_lines(str(path), "-T", "jsonl")]
    assert len(frames) == count and {f["kind"] for f in frames} >= {"VHOST_USER", "KICK", "CALL", "AVAIL", "USED",
                                                                      "CONFIG", "ANOMALY", "DATA"}
    verbose = out_lines(str(path), "-V")
    assert len(verbose) > 10 * count
    proc = run_vqtrace("show", str(path), "-Y", "vqtrace.malformed")
    assert proc.returncode == 0 and len(proc.stdout.decode().splitlines()) >= 2  # the bad vhost-user message, DATA


def test_show_starts_fast_without_scapy_or_textual(trace):
    code = ("import sys, io; from vqtrace.cli import main; main(['show', sys.argv[1]]);"
            "bad = [m for m in ('scapy', 'textual', 'scapy.all') if m in sys.modules];"
            "sys.stderr.write(repr(bad))")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", code, str(trace)], capture_output=True, timeout=60)
    assert proc.stderr.decode().strip().endswith("[]")
