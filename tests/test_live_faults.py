"""Faults on a live session: a peer that breaks the protocol or goes away.

Each ends with no traceback, one clear log line, the trace file intact (every block
readable) and no fd left open (/proc/self/fd before and after, for the in-process runs).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import require_tool
from vqtrace.errors import VhostUserError
from vqtrace.events import EventKind
from vqtrace.trace.reader import TraceReader
from vqtrace.trace.writer import TraceWriter
from vqtrace.vhost import protocol as p
from vqtrace.vhost.codec import MAX_PAYLOAD, Message
from vqtrace.vhost.frontend import VIRTIO_BLK_T_OUT, BlkClient
from vqtrace.vhost.harness import LiveThread, StorageDaemon, make_image, open_fds
from vqtrace.vhost.live import LiveOptions

GET_FEATURES = Message.make(p.GET_FEATURES).raw


def start_cli(tmp_path: Path, *args: str) -> subprocess.Popen:
    sock = tmp_path / "vq.sock"
    proc = subprocess.Popen([sys.executable, "-m", "vqtrace", "live", "--socket", str(sock), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 20
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"vqtrace live did not start: {proc.communicate(timeout=5)[1].decode()}")
        time.sleep(0.01)
    return proc


def finish(proc: subprocess.Popen, timeout: float = 20) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    return proc.returncode, err.decode()


def raw_client(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(str(path))
    return sock


def trace_events(path: Path):
    with TraceReader(path) as reader:
        events = list(reader.events())
        assert not reader.problems, reader.problems
    return events


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "listening on" not in line and "front-end connected" not in line
            and "wrote " not in line]


FAULTS = {
    "garbage header": (struct.pack("<III", 0x41414141, 0x41414141, 0x41414141), [],
                       "front-end sent a garbage header (request 1094795585, flags 0x41414141"),
    "size over the limit": (struct.pack("<III", p.SET_FEATURES, 1, MAX_PAYLOAD + 1), [],
                            f"front-end sent VHOST_USER_SET_FEATURES with size {MAX_PAYLOAD + 1}, more than the "
                            f"{MAX_PAYLOAD} bytes a payload may have"),
    "wrong number of fds": (Message.make(p.SET_VRING_KICK, p.pack_vring_file(0)).raw, [],
                            "front-end sent SET_VRING_KICK idx=0 with 0 fds, 1 expected"),
    "disconnect mid-message": (Message.make(p.SET_FEATURES, p.pack_u64(1)).raw[:15], [],
                               "the front-end disconnected in the middle of a message (VHOST_USER_SET_FEATURES "
                               "with 3 of its 8 payload bytes)"),
}


@pytest.fixture
def qsd(tmp_path):
    require_tool("qemu-storage-daemon")
    with StorageDaemon(make_image(tmp_path / "disk.img", 4 << 20), tmp_path / "qsd.sock") as daemon:
        yield daemon


@pytest.mark.parametrize("fault", list(FAULTS))
@pytest.mark.parametrize("role", ["proxy", "backend"])
def test_bad_front_end_is_one_line_and_the_trace_is_intact(tmp_path, role, fault, request):
    if role == "proxy":
        qsd = request.getfixturevalue("qsd")
        args = ["--backend", str(qsd.socket)]
    else:
        args = ["--device", "blk", "--size", "1M"]
    trace = tmp_path / "trace.pcapng"
    proc = start_cli(tmp_path, *args, "--once", "-w", str(trace))
    data, _, expected = FAULTS[fault]
    try:
        client = raw_client(tmp_path / "vq.sock")
        client.sendall(GET_FEATURES)  # one good message first: it is in the trace
        assert client.recv(20)  # the reply
        client.sendall(data)
        if fault == "disconnect mid-message":
            client.close()
        else:
            assert client.recv(100) == b""  # vqtrace closes the connection
            client.close()
        code, err = finish(proc)
    finally:
        proc.kill()
    assert "Traceback" not in err, err
    lines = error_lines(err)
    assert len(lines) == 1 and expected in lines[0], err
    assert code == 2
    events = trace_events(trace)
    assert [e.kind for e in events] == [EventKind.VHOST_USER, EventKind.VHOST_USER]
    assert events[0].data == GET_FEATURES


def test_backend_dying_under_load(tmp_path, qsd):
    """SIGKILL the back-end with requests in flight: the front-end sees its connection close,
    vqtrace logs it once, the trace is readable to the end, no fd stays open."""
    before = open_fds()
    trace = tmp_path / "trace.pcapng"
    options = LiveOptions(socket=str(tmp_path / "vq.sock"), backend=str(qsd.socket), once=True, device_type=2)
    failure: list[BaseException] = []
    with TraceWriter(trace) as writer, LiveThread(options, writer.write) as live:
        client = BlkClient.connect(options.socket, timeout=5)

        def load() -> None:
            try:
                sector = 0
                while True:
                    for _ in range(16):
                        client.submit(VIRTIO_BLK_T_OUT, sector % 4096, data=b"L" * 4096)
                        sector += 8
                    client.kick()
                    done = 0
                    while done < 16:
                        done += len(client.complete(timeout=5))
            except BaseException as err:  # the expected end of the load
                failure.append(err)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        time.sleep(0.3)
        qsd.kill()
        loader.join(15)
        assert not loader.is_alive()
        ended = live.join(10)
        client.fe.close(stop=False)
    assert failure and isinstance(failure[0], VhostUserError), failure
    assert "closed the connection" in str(failure[0]) or "connection failed" in str(failure[0])
    assert "the back-end disconnected" in ended.reason
    events = trace_events(trace)
    assert sum(e.kind is EventKind.USED for e in events) > 16  # the load ran before the kill
    after = open_fds()
    assert after <= before, f"fds left open: {sorted(after - before)}"


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faults_leave_no_fd_open(tmp_path, qsd, fault):
    before = open_fds()
    trace = tmp_path / "trace.pcapng"
    options = LiveOptions(socket=str(tmp_path / "vq.sock"), backend=str(qsd.socket), once=True)
    data, _, expected = FAULTS[fault]
    with TraceWriter(trace) as writer, LiveThread(options, writer.write) as live:
        client = BlkClient.connect(options.socket, timeout=5)  # a whole session set up: memory, eventfds
        client.write(0, b"q" * 512)
        client.fe.sock.sendall(data)
        if fault == "disconnect mid-message":
            client.fe.close(stop=False)
        ended = live.join(10)
        client.fe.close(stop=False)
    assert ended.error and expected in ended.reason
    trace_events(trace)
    after = open_fds()
    assert after <= before, f"fds left open: {sorted(after - before)}"


def test_too_many_fds_in_one_message(tmp_path):
    import os

    trace = tmp_path / "trace.pcapng"
    proc = start_cli(tmp_path, "--device", "rng", "--once", "-w", str(trace))
    fds = [os.eventfd(0) for _ in range(12)]
    try:
        client = raw_client(tmp_path / "vq.sock")
        socket.send_fds(client, [Message.make(p.SET_VRING_KICK, p.pack_vring_file(0)).raw], fds)
        with contextlib.suppress(ConnectionResetError):  # closed with our bytes unread
            assert client.recv(100) == b""
        client.close()
        code, err = finish(proc)
    finally:
        proc.kill()
        for fd in fds:
            os.close(fd)
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1 and "more than 8 fds" in lines[0], err
