"""vqtrace export: the network frames (LINKTYPE_ETHERNET) and vsock packets (LINKTYPE_VSOCK) of a trace,
which Wireshark dissects with its own dissectors."""

from __future__ import annotations

import json
import struct
import subprocess

import pytest

from conftest import require_tool, run_vqtrace
from vqtrace.events import Direction, Event, EventKind
from vqtrace.model import Chain, Descriptor, UsedElem
from vqtrace.trace.samples import MAC_GUEST, MAC_HOST, _ethernet, _ipv4_udp, write_samples
from vqtrace.trace.tshark import flatten
from vqtrace.trace.writer import write_trace

MRG = 1 << 32 | 1 << 15  # VIRTIO_F_VERSION_1, VIRTIO_NET_F_MRG_RXBUF


def tshark_json(path):
    tshark = require_tool("tshark")
    proc = subprocess.run([tshark, "-r", str(path), "-T", "json", "--no-duplicate-keys"], capture_output=True,
                          timeout=120, check=True)
    return [flatten(frame["_source"]["layers"]) for frame in json.loads(proc.stdout)]


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "samples.pcapng"
    write_samples(path)
    return path


def test_net_frames_with_direction_and_header_comments(samples, tmp_path):
    out = tmp_path / "net.pcapng"
    proc = run_vqtrace("export", str(samples), "--net", str(out))
    assert proc.returncode == 0 and b"4 Ethernet frames" in proc.stdout
    frames = tshark_json(out)
    assert [f["eth.type"] for f in frames] == [["0x0806"], ["0x0800"], ["0x0800"], ["0x0800"]]
    assert frames[0]["arp.src.proto_ipv4"] == ["10.0.0.2"]
    assert frames[2]["ip.src"] == ["10.0.0.1"] and frames[2]["udp.srcport"] == ["53"]
    flags = [int(f["frame.packet_flags_direction"][0], 0) for f in frames]
    assert flags == [2, 2, 1, 1]  # two sent (TX), two received (RX)
    assert frames[3]["udp.length"] == [str(8 + 120)]  # the packet of three merged receive buffers, joined
    assert "num_buffers=3" in frames[3]["frame.comment"][1]
    comments = [f["frame.comment"] for f in frames]
    assert comments[0][0] == "virtio-net TX queue 1" and comments[2][0] == "virtio-net RX queue 0"
    assert "gso_type=VIRTIO_NET_HDR_GSO_NONE" in comments[1][1] and "num_buffers=1" in comments[2][1]


def test_merged_receive_buffers_become_one_packet(tmp_path):
    frame = _ethernet(MAC_GUEST, MAC_HOST, 0x0800, _ipv4_udp(bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 7, 9,
                                                                  bytes(range(200))))
    hdr = struct.pack("<BBHHHHH", 1, 0, 0, 0, 34, 6, 2)  # NEEDS_CSUM, num_buffers = 2 (5.1.9.4)
    first, second = hdr + frame[:100], frame[100:]
    events = []
    for n, data in enumerate((first, second)):
        chain = Chain(0, n, n, [Descriptor(addr=0x1000 * (n + 1), len=1526, flags=2, index=n)])
        events.append(Event(EventKind.USED, 10 + n, "net0", 0, Direction.TO_DRIVER, b"", 1, chain=chain,
                            used=UsedElem(0, n, len(data), n), written=data + bytes(50), features=MRG))
    trace = tmp_path / "mrg.pcapng"
    write_trace(trace, events)
    out = tmp_path / "net.pcapng"
    assert run_vqtrace("export", str(trace), "--net", str(out)).returncode == 0
    (only,) = tshark_json(out)
    assert only["frame.len"] == [str(len(frame))]
    assert only["udp.length"] == [str(8 + 200)]
    assert "NEEDS_CSUM" in only["frame.comment"][1] and "csum_start=34" in only["frame.comment"][1]
    # vqtrace show names the continuation buffer as such
    lines = run_vqtrace("show", str(trace)).stdout.decode().splitlines()
    assert "buffer 1 of 2" in lines[0] and "continuation" in lines[1]


def test_vsock_packets_as_linktype_vsock(samples, tmp_path):
    out = tmp_path / "vsock.pcapng"
    proc = run_vqtrace("export", str(samples), "--vsock", str(out))
    assert proc.returncode == 0 and b"6 vsock packets" in proc.stdout
    frames = tshark_json(out)
    ops = [f["vsock.virtio.op"][0] for f in frames]
    assert ops == ["1", "2", "5", "5", "4", "3"]  # REQUEST, RESPONSE, RW both ways, SHUTDOWN, RST
    rw = frames[2]
    assert (rw["vsock.src_cid"], rw["vsock.dst_cid"], rw["vsock.virtio.len"]) == (["3"], ["2"], ["4"])
    assert rw["vsock.payload"] == ["70:69:6e:67"]  # "ping"
    assert frames[3]["vsock.src_cid"] == ["2"]  # the echo, from the host


def test_export_needs_an_output_and_a_trace(tmp_path, samples):
    for args, message in ((["export", str(samples)], b"nothing to export"),
                          (["export", str(tmp_path / "none.pcapng"), "--net", str(tmp_path / "o")], b"cannot open"),
                          (["export", str(samples), "--net", str(samples)], b"would overwrite the trace"),
                          (["export", str(samples), "--vsock", str(tmp_path / "no/dir/o")], b"cannot write")):
        proc = run_vqtrace(*args)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count(b"\n") == 1, args
        assert b"Traceback" not in proc.stderr
