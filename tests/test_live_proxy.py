"""Front-end <-> vqtrace proxy <-> qemu-storage-daemon, over real sockets, fds and memfds.

The trace must hold every vhost-user message each peer sent and received, every blk
request with its sector, length and status, and the data must be on disk.
"""

from __future__ import annotations

import os
import random
import select
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import require_tool
from vqtrace.dissectors import vhost_user as vu
from vqtrace.errors import VhostUserError
from vqtrace.events import Direction, EventKind
from vqtrace.trace.reader import TraceReader
from vqtrace.trace.writer import TraceWriter
from vqtrace.vhost import protocol as p
from vqtrace.vhost.frontend import VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, BlkClient
from vqtrace.vhost.harness import LiveThread, StorageDaemon, make_image, open_fds
from vqtrace.vhost.live import LiveOptions

BLK_HDR = struct.Struct("<IIQ")


@pytest.fixture
def qsd(tmp_path: Path):
    require_tool("qemu-storage-daemon")
    image = make_image(tmp_path / "disk.img", 8 << 20)
    with StorageDaemon(image, tmp_path / "qsd.sock") as daemon:
        yield daemon


def proxy(tmp_path: Path, qsd: StorageDaemon, writer: TraceWriter, **kw) -> LiveThread:
    options = LiveOptions(socket=str(tmp_path / "vq.sock"), backend=str(qsd.socket), device_type=2, **kw)
    return LiveThread(options, writer.write)


def read_trace(path: Path):
    with TraceReader(path) as reader:
        return list(reader.events())


def blk_requests(events, kind):
    out = []
    for e in events:
        if e.kind is kind and e.queue == 0 and len(e.data) >= 16:
            rtype, _, sector = BLK_HDR.unpack_from(e.data)
            out.append((rtype, sector, e))
    return out


def test_messages_requests_and_data_through_the_proxy(tmp_path, qsd):
    trace = tmp_path / "trace.pcapng"
    pattern = bytes(random.Random(1).randrange(256) for _ in range(4096))
    with TraceWriter(trace) as writer, proxy(tmp_path, qsd, writer, once=True) as live:
        client = BlkClient.connect(live.live.options.socket)
        assert client.capacity == (8 << 20) // 512
        assert client.write(100, pattern).status == VIRTIO_BLK_S_OK
        assert client.write(7, b"\xab" * 1024).status == VIRTIO_BLK_S_OK
        got = client.read(100, 4096)
        assert got.status == VIRTIO_BLK_S_OK and got.data == pattern
        client.close()
        sent, received = list(client.fe.sent), list(client.fe.received)
        ended = live.join(10)
    assert ended is not None and not ended.error
    # the data is on disk
    disk = (tmp_path / "disk.img").read_bytes()
    assert disk[100 * 512:100 * 512 + 4096] == pattern and disk[7 * 512:7 * 512 + 1024] == b"\xab" * 1024

    events = read_trace(trace)
    messages = [e for e in events if e.kind is EventKind.VHOST_USER]
    to_device = [e.data for e in messages if e.direction is Direction.TO_DEVICE and e.channel == 0]
    to_driver = [e.data for e in messages if e.direction is Direction.TO_DRIVER and e.channel == 0]
    # every message the front-end sent, in order and byte for byte; every reply the back-end sent
    assert to_device == [m.raw for m in sent]
    assert to_driver == [m.raw for m in received]
    fds = [e.fds for e in messages if e.direction is Direction.TO_DEVICE]
    assert fds == [len(m.fds) for m in sent]
    names = [vu.REQUESTS[vu.unpack_header(d).request] for d in to_device]
    # qemu-storage-daemon negotiates CONFIGURE_MEM_SLOTS: memory comes with ADD_MEM_REG
    assert "VHOST_USER_ADD_MEM_REG" in names and "VHOST_USER_SET_MEM_TABLE" not in names
    assert names[-1] == "VHOST_USER_GET_VRING_BASE"

    avail = blk_requests(events, EventKind.AVAIL)
    used = blk_requests(events, EventKind.USED)
    assert [(t, s) for t, s, _ in avail] == [(VIRTIO_BLK_T_OUT, 100), (VIRTIO_BLK_T_OUT, 7), (VIRTIO_BLK_T_IN, 100)]
    assert [(t, s) for t, s, _ in used] == [(t, s) for t, s, _ in avail]
    out100 = avail[0][2]
    assert out100.data[16:] == pattern and out100.chain.readable_len == 16 + 4096
    assert avail[1][2].chain.readable_len == 16 + 1024
    for _, _, e in used:
        assert e.written[-1] == VIRTIO_BLK_S_OK  # the status byte
    read = used[2][2]
    assert read.used.len == 4097 and read.written[:4096] == pattern
    # notifications: a kick before each request's AVAIL, a call after its USED
    kinds = [e.kind for e in events if e.kind in (EventKind.KICK, EventKind.CALL)]
    assert kinds.count(EventKind.KICK) >= 3 and kinds.count(EventKind.CALL) >= 3
    assert not [e for e in events if e.kind is EventKind.ANOMALY]


def test_backend_channel_and_protocol_features_are_traced(tmp_path, qsd):
    trace = tmp_path / "trace.pcapng"
    with TraceWriter(trace) as writer, proxy(tmp_path, qsd, writer, once=True) as live:
        client = BlkClient.connect(live.live.options.socket)
        client.write(0, b"\0" * 512)  # the proxy has handled every setup message by now
        engine = live.engines[0]
        assert engine.session.backend_channel and engine.channel_open
        assert engine.session.has_protocol("REPLY_ACK") and engine.session.has_protocol("CONFIGURE_MEM_SLOTS")
        # the proxy mapped guest memory read-only and can read the rings
        assert engine.memory.regions and not engine.memory.regions[0].writable
        config = engine.session.queue_config(0)
        assert config.desc == client.fe.queues[0].driver.config.desc  # user address translated to guest-physical
        client.close()
        live.join(10)
    events = read_trace(trace)
    replies = [vu.unpack_header(e.data) for e in events if e.kind is EventKind.VHOST_USER and e.data[4] & 4]
    assert any(h.request == 21 for h in replies)  # the REPLY_ACK answer to SET_BACKEND_REQ_FD


def start_cli(tmp_path: Path, *args: str) -> subprocess.Popen:
    """``vqtrace live`` as a user runs it, in its own process (no shared GIL with the front-end)."""
    sock = tmp_path / "vq.sock"
    proc = subprocess.Popen([sys.executable, "-m", "vqtrace", "live", "--socket", str(sock), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 20
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            _, err = proc.communicate(timeout=5)
            raise AssertionError(f"vqtrace live did not start: {err.decode()}")
        time.sleep(0.01)
    return proc


def finish_cli(proc: subprocess.Popen, timeout: float = 20) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate(timeout=5)
        raise
    return proc.returncode, err.decode()


def test_queue_depth_and_many_requests(tmp_path, qsd):
    trace = tmp_path / "trace.pcapng"
    proc = start_cli(tmp_path, "--backend", str(qsd.socket), "--device-type", "blk", "--once", "-w", str(trace))
    try:
        client = BlkClient.connect(tmp_path / "vq.sock", queue_size=64)
        done = 0
        for batch in range(4):
            for k in range(16):
                client.submit(VIRTIO_BLK_T_OUT, batch * 16 + k, data=bytes([batch * 16 + k]) * 512)
            client.kick()
            got = 0
            while got < 16:
                got += len(client.complete())
            done += got
        client.close()
        code, err = finish_cli(proc)
    finally:
        proc.kill()
    assert code == 0 and "Traceback" not in err, err
    assert done == 64
    disk = (tmp_path / "disk.img").read_bytes()
    assert all(disk[n * 512:(n + 1) * 512] == bytes([n]) * 512 for n in range(64))
    events = read_trace(trace)
    used = blk_requests(events, EventKind.USED)
    assert sorted(s for _, s, _ in used) == list(range(64))
    assert all(e.written == b"\0" for _, _, e in used)
    assert sorted(s for _, s, _ in blk_requests(events, EventKind.AVAIL)) == list(range(64))


def test_proxy_session_leaves_no_fd_open(tmp_path, qsd):
    before = open_fds()
    trace = tmp_path / "trace.pcapng"
    with TraceWriter(trace) as writer, proxy(tmp_path, qsd, writer, once=True) as live:
        client = BlkClient.connect(live.live.options.socket)
        client.write(0, b"x" * 512)
        client.close()
        live.join(10)
    after = open_fds()
    assert after <= before, f"fds left open: {sorted(after - before)}"


def test_frontend_reconnects_to_a_long_running_proxy(tmp_path, qsd):
    """Without --once the proxy serves the next front-end (QEMU with reconnect=1)."""
    trace = tmp_path / "trace.pcapng"
    with TraceWriter(trace) as writer, proxy(tmp_path, qsd, writer) as live:
        for n in range(3):
            client = BlkClient.connect(live.live.options.socket)
            assert client.write(n, bytes([n + 1]) * 512).status == VIRTIO_BLK_S_OK
            client.close()
        live.stop()
        assert len(live.live.endings) == 3
    disk = (tmp_path / "disk.img").read_bytes()
    assert [disk[n * 512] for n in range(3)] == [1, 2, 3]
    events = read_trace(trace)
    starts = [e for e in events if e.kind is EventKind.VHOST_USER and vu.unpack_header(e.data).request == 1
              and e.direction is Direction.TO_DEVICE]
    assert len(starts) == 3  # three sessions, each from GET_FEATURES


def test_backend_restart_is_reconnected(tmp_path, qsd):
    """The back-end dies: the front-end sees its connection close; a new front-end gets the restarted one."""
    trace = tmp_path / "trace.pcapng"
    with TraceWriter(trace) as writer, proxy(tmp_path, qsd, writer, connect_timeout=10) as live:
        client = BlkClient.connect(live.live.options.socket, timeout=5)
        client.write(1, b"\x11" * 512)
        qsd.kill()
        with pytest.raises(Exception, match=r"closed the connection|connection failed|no used buffer"):
            client.write(2, b"\x22" * 512)
        client.fe.close(stop=False)
        qsd.start()
        client = BlkClient.connect(live.live.options.socket, timeout=5)
        assert client.write(3, b"\x33" * 512).status == VIRTIO_BLK_S_OK
        client.close()
        live.stop()
    endings = live.live.endings
    assert "the back-end disconnected" in endings[0].reason
    disk = (tmp_path / "disk.img").read_bytes()
    assert disk[512] == 0x11 and disk[3 * 512] == 0x33


def test_poll_mode_samples_the_rings(tmp_path, qsd):
    trace = tmp_path / "trace.pcapng"
    with TraceWriter(trace) as writer, proxy(tmp_path, qsd, writer, once=True, poll_ms=2) as live:
        client = BlkClient.connect(live.live.options.socket)
        for n in range(5):
            client.write(n, b"p" * 512)
            time.sleep(0.02)  # sampling sees each request (faster ones may share a sample)
        engine = live.engines[0]
        assert not any(f.ours or f.theirs for f in engine.fds.values())  # notification fds went through untouched
        client.close()
        live.join(10)
    events = read_trace(trace)
    assert not [e for e in events if e.kind in (EventKind.KICK, EventKind.CALL)]
    assert sorted(s for _, s, _ in blk_requests(events, EventKind.USED)) == list(range(5))


def test_backend_that_cannot_be_reached_is_one_error(tmp_path):
    trace = tmp_path / "trace.pcapng"
    options = LiveOptions(socket=str(tmp_path / "vq.sock"), backend=str(tmp_path / "nobody.sock"), once=True,
                          connect_timeout=0.2)
    with TraceWriter(trace) as writer, LiveThread(options, writer.write) as live:
        with pytest.raises(VhostUserError, match=r"closed the connection|connection failed"):
            BlkClient.connect(live.live.options.socket, timeout=5)
        ended = live.join(10)
    assert ended.error and "cannot connect to the back-end" in ended.reason
    assert not os.path.exists(tmp_path / "vq.sock")


def test_a_new_call_fd_mid_session_keeps_calls_flowing(tmp_path, qsd):
    """QEMU sends SET_VRING_CALL again whenever the guest (un)masks a vector; the proxy then hands
    the back-end its same eventfd again and must keep seeing and forwarding its calls."""
    trace = tmp_path / "trace.pcapng"
    with TraceWriter(trace) as writer, proxy(tmp_path, qsd, writer, once=True) as live:
        client = BlkClient.connect(live.live.options.socket, timeout=5)
        assert client.write(1, b"1" * 512).status == VIRTIO_BLK_S_OK
        queue = client.fe.queues[0]
        for n in range(3):
            fresh = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            client.fe.request(p.SET_VRING_CALL, p.pack_vring_file(0), fds=[fresh])
            os.close(queue.call_fd)
            queue.call_fd = fresh
            assert client.write(2 + n, bytes([n]) * 512).status == VIRTIO_BLK_S_OK
        client.close()
        live.join(10)
    used = blk_requests(read_trace(trace), EventKind.USED)
    assert [s for _, s, _ in used] == [1, 2, 3, 4]


class HeldTrace:
    """A BlockSink that, once armed, holds the first write of a call's USED records until released
    (libvhost-user signals a call fd as it gets it, with nothing used: that write goes through)."""

    def __init__(self, sink) -> None:
        import threading

        self.sink = sink
        self.armed = False
        self.holding = threading.Event()
        self.release = threading.Event()

    def __call__(self, records) -> int:
        from vqtrace.vhost.fastpath import RingBatch

        used = [r for r in records if (r.used and r.notify is not None and r.notify[0] == int(EventKind.CALL)
                                       if isinstance(r, RingBatch) else r.kind is EventKind.USED)]
        if self.armed and used:
            self.armed = False
            self.holding.set()
            assert self.release.wait(10), "the test never released the trace"
        return self.sink(records)


@pytest.fixture(params=["qemu-storage-daemon", "reference"])
def backend_socket(request, tmp_path: Path):
    """qemu-storage-daemon, or vqtrace's own blk back-end, on a socket, over a disk with data."""
    from vqtrace.devices.blk import BlkDevice

    data = random.Random(7).randbytes(8 << 20)
    if request.param == "reference":
        device = BlkDevice(size=8 << 20)
        device.backend.write(0, data)
        with LiveThread(LiveOptions(socket=str(tmp_path / "backend.sock"), device=device, once=True)) as backend:
            yield tmp_path / "backend.sock", data
            backend.join(10)
        device.backend.close()
        return
    require_tool("qemu-storage-daemon")
    image = make_image(tmp_path / "disk.img", 8 << 20)
    image.write_bytes(data)
    with StorageDaemon(image, tmp_path / "qsd.sock") as daemon:
        yield daemon.socket, data


def test_a_call_is_forwarded_before_its_records_are_written(tmp_path, backend_socket):
    """The call reaches the driver while the trace write of its USED record is still held; the
    driver then overwrites the request's buffers at once: the trace has the bytes of the call."""
    from vqtrace.dissectors.virtqueue import VIRTQ_DESC_F_WRITE
    from vqtrace.vhost.frontend import drain_used

    socket_path, data = backend_socket
    trace = tmp_path / "trace.pcapng"
    options = LiveOptions(socket=str(tmp_path / "vq.sock"), backend=str(socket_path), device_type=2, once=True)
    with TraceWriter(trace) as writer:
        live = LiveThread(options, writer.write)
        held = live.live.block_sink = HeldTrace(live.live.block_sink)
        with live:
            client = BlkClient.connect(options.socket, timeout=5)
            fe = client.fe
            driver, call_fd = fe.queues[0].driver, fe.queues[0].call_fd
            alloc, memory = fe.guest.allocator, fe.guest.memory
            hdr, buf, status = alloc.alloc(16), alloc.alloc(4096, align=512), alloc.alloc(1)
            held.armed = True
            memory.write(hdr, BLK_HDR.pack(VIRTIO_BLK_T_IN, 0, 24))
            driver.add_elements([(hdr, 16, 0), (buf, 4096, VIRTQ_DESC_F_WRITE), (status, 1, VIRTQ_DESC_F_WRITE)])
            driver.kick()
            poller = select.poll()
            poller.register(call_fd, select.POLLIN)
            try:
                used: list = []
                deadline = time.monotonic() + 5
                while not used:  # (a back-end may call once when the queue starts: nothing is used then)
                    assert poller.poll(max(0, deadline - time.monotonic()) * 1000), "no call"
                    os.eventfd_read(call_fd)
                    used = drain_used(driver)
                assert held.holding.wait(5)  # the write of the call's records waits, the call did not
                (got,) = used
                assert got.written == data[24 * 512:24 * 512 + 4096] + b"\0"
                memory.write(buf, b"\xee" * 4096)  # the driver reuses the buffers at once
                memory.write(hdr, BLK_HDR.pack(VIRTIO_BLK_T_OUT, 0, 999))
                memory.write(status, b"\x0a")
            finally:
                held.release.set()
            client.close()
            assert not live.join(10).error
    used = [e for e in read_trace(trace) if e.kind is EventKind.USED]
    assert used[-1].data == BLK_HDR.pack(VIRTIO_BLK_T_IN, 0, 24)
    assert used[-1].written == data[24 * 512:24 * 512 + 4096] + b"\0"
