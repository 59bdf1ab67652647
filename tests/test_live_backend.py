"""Front-end <-> ``vqtrace live --device ...`` (vqtrace's own back-end), over real sockets.

The CLI runs in its own process, as QEMU would meet it.
"""

from __future__ import annotations

import random
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vqtrace.dissectors import vhost_user as vu
from vqtrace.events import Direction, EventKind
from vqtrace.model import Layout
from vqtrace.trace.reader import TraceReader
from vqtrace.vhost.frontend import VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, BlkClient, FrontEnd
from vqtrace.vhost.harness import make_image

HDR = struct.Struct("<IIQ")


def start(tmp_path: Path, *args: str) -> subprocess.Popen:
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


def finish(proc: subprocess.Popen, timeout: float = 20) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)
    return proc.returncode, err.decode()


@pytest.fixture
def image(tmp_path):
    return make_image(tmp_path / "disk.img", 4 << 20)


def events_of(path: Path):
    with TraceReader(path) as reader:
        return list(reader.events())


@pytest.mark.parametrize("packed", [False, True], ids=["split", "packed"])
def test_blk_backend_serves_and_traces(tmp_path, image, packed):
    trace = tmp_path / "trace.pcapng"
    proc = start(tmp_path, "--device", "blk", "--image", str(image), "--once", "-w", str(trace))
    data = bytes(random.Random(2).randrange(256) for _ in range(8192))
    try:
        client = BlkClient.connect(tmp_path / "vq.sock", packed=packed)
        assert (client.fe.queues[0].driver.config.layout is Layout.PACKED) == packed
        assert client.capacity == (4 << 20) // 512
        assert client.write(64, data).status == VIRTIO_BLK_S_OK
        back = client.read(64, 8192)
        assert back.status == VIRTIO_BLK_S_OK and back.data == data
        assert client.get_id().data.rstrip(b"\0") == b"vqtrace-blk"
        beyond = client.read((4 << 20) // 512, 512)
        assert beyond.status == 1  # VIRTIO_BLK_S_IOERR: past the end (virtio 1.4, 5.2.6.1)
        client.close()
        sent, received = client.fe.sent, client.fe.received
        code, err = finish(proc)
    finally:
        proc.kill()
    assert code == 0 and "Traceback" not in err, err
    assert image.read_bytes()[64 * 512:64 * 512 + 8192] == data

    events = events_of(trace)
    messages = [e for e in events if e.kind is EventKind.VHOST_USER and e.channel == 0]
    assert [e.data for e in messages if e.direction is Direction.TO_DEVICE] == [m.raw for m in sent]
    assert [e.data for e in messages if e.direction is Direction.TO_DRIVER] == [m.raw for m in received]
    used = [e for e in events if e.kind is EventKind.USED]
    summary = [(HDR.unpack_from(e.data)[0], HDR.unpack_from(e.data)[2], e.written[-1]) for e in used]
    assert summary == [(VIRTIO_BLK_T_OUT, 64, 0), (VIRTIO_BLK_T_IN, 64, 0), (8, 0, 0),
                       (VIRTIO_BLK_T_IN, (4 << 20) // 512, 1)]  # sector, status (the last byte written)
    assert [e.used.len for e in used[:3]] == [1, 8193, 21]
    assert used[1].written[:8192] == data
    avail = [e for e in events if e.kind is EventKind.AVAIL]
    assert len(avail) == 4 and avail[0].data[16:] == data
    assert all(e.device_type == 2 for e in events)
    assert [e.packed for e in used] == [packed] * 4


def test_rng_backend(tmp_path):
    trace = tmp_path / "trace.pcapng"
    proc = start(tmp_path, "--device", "rng", "--once", "-w", str(trace))
    try:
        fe = FrontEnd(tmp_path / "vq.sock", device_type=4)
        fe.negotiate()
        fe.share_memory()
        queue = fe.setup_queue(0, 16)
        queue.driver.add([], [64])
        queue.driver.kick()
        used = fe.wait(0)
        fe.close()
        code, err = finish(proc)
    finally:
        proc.kill()
    assert code == 0, err
    assert used[0].len == 64 and len(used[0].written) == 64 and used[0].written != bytes(64)
    written = [e.written for e in events_of(trace) if e.kind is EventKind.USED]
    assert written == [used[0].written]


def test_sigterm_ends_a_long_running_backend_cleanly(tmp_path, image):
    trace = tmp_path / "trace.pcapng"
    proc = start(tmp_path, "--device", "blk", "--image", str(image), "-w", str(trace))
    try:
        client = BlkClient.connect(tmp_path / "vq.sock")
        client.write(0, b"z" * 512)
        proc.send_signal(signal.SIGTERM)  # while the front-end is still connected
        code, err = finish(proc)
        with pytest.raises(Exception, match=r"closed the connection|connection failed"):
            client.write(1, b"z" * 512)
        client.fe.close(stop=False)
    finally:
        proc.kill()
    assert code == 0 and "Traceback" not in err, err
    assert "SIGTERM received" in err
    assert not (tmp_path / "vq.sock").exists()
    kinds = {e.kind for e in events_of(trace)}
    assert {EventKind.VHOST_USER, EventKind.AVAIL, EventKind.USED} <= kinds


def test_usage_errors_are_one_line(tmp_path):
    for args, words in ((["--device", "blk"], "--device blk needs --image FILE or --size BYTES"),
                        (["--device", "blk", "--image", str(tmp_path / "none.img")], "cannot open image"),
                        (["--backend", "x", "--image", "y"], "--image, --size and --readonly are for --device")):
        proc = subprocess.run([sys.executable, "-m", "vqtrace", "live", "--socket", str(tmp_path / "s"), *args],
                              capture_output=True, timeout=30)
        err = proc.stderr.decode()
        assert proc.returncode == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_socket_path_that_is_not_a_socket(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    proc = subprocess.run([sys.executable, "-m", "vqtrace", "live", "--socket", str(path), "--device", "rng"],
                          capture_output=True, timeout=30)
    assert proc.returncode == 2 and "exists and is not a socket" in proc.stderr.decode()
    busy = socket.socket(socket.AF_UNIX)
    busy.bind(str(tmp_path / "busy.sock"))
    busy.listen()
    try:
        proc = subprocess.run([sys.executable, "-m", "vqtrace", "live", "--socket", str(tmp_path / "busy.sock"),
                               "--device", "rng"], capture_output=True, timeout=30)
    finally:
        busy.close()
    assert proc.returncode == 2 and "another program is listening" in proc.stderr.decode()
    assert vu.HEADER_SIZE == 12


def test_inband_notifications_through_the_proxy_are_traced(tmp_path):
    """VHOST_USER_PROTOCOL_F_INBAND_NOTIFICATIONS: kicks as VHOST_USER_VRING_KICK messages, calls as
    VHOST_USER_BACKEND_VRING_CALL on the back-end channel; the proxy traces both and reads the rings."""
    from vqtrace.devices.blk import BlkDevice
    from vqtrace.vhost.harness import LiveThread
    from vqtrace.vhost.live import LiveOptions

    events = []
    backend = LiveThread(LiveOptions(socket=str(tmp_path / "b.sock"), device=BlkDevice(size=1 << 20), once=True))
    proxy = LiveThread(LiveOptions(socket=str(tmp_path / "p.sock"), backend=str(tmp_path / "b.sock"), once=True,
                                   device_type=2), events.append)
    with backend, proxy:
        client = BlkClient.connect(tmp_path / "p.sock", inband=True)
        assert client.fe.session.has_protocol("INBAND_NOTIFICATIONS")
        assert client.write(1, b"i" * 512).status == VIRTIO_BLK_S_OK
        assert client.read(1, 512).data == b"i" * 512
        client.close()
        proxy.join(10)
        backend.join(10)
    notes = [(e.kind, e.channel) for e in events if e.kind in (EventKind.KICK, EventKind.CALL)]
    assert notes == [(EventKind.KICK, 1), (EventKind.CALL, 1)] * 2
    names = [vu.unpack_header(e.data).request for e in events if e.kind is EventKind.VHOST_USER and e.channel == 1
             and not e.data[4] & 4]
    assert names == [4, 4]  # VHOST_USER_BACKEND_VRING_CALL, on the back-end channel
    used = [HDR.unpack_from(e.data)[2] for e in events if e.kind is EventKind.USED]
    assert used == [1, 1]


@pytest.mark.parametrize("name", ["net", "console", "rng", "balloon", "scsi", "vsock", "blk"])
def test_every_reference_device_sets_up_over_vhost_user(tmp_path, name):
    """Negotiation, memory, config space and every queue of each device, then a clean stop."""
    import argparse

    from vqtrace.commands.live import make_device
    from vqtrace.vhost.harness import LiveThread, open_fds
    from vqtrace.vhost.live import LiveOptions

    before = open_fds()
    device = make_device(argparse.Namespace(device=name, image=None, size="1M" if name in ("blk", "scsi") else None,
                                            readonly=False))
    events = []
    with LiveThread(LiveOptions(socket=str(tmp_path / "d.sock"), device=device, once=True), events.append) as live:
        fe = FrontEnd(tmp_path / "d.sock", device_type=device.device_id)
        fe.negotiate(config_size=len(device.config_space()))
        assert fe.config == device.config_space()
        fe.share_memory()
        for index in range(device.num_queues):
            fe.setup_queue(index, 16)
        fe.start()
        bases = [fe.stop_queue(index) for index in range(device.num_queues)]
        fe.close(stop=False)
        ended = live.join(10)
    if getattr(device, "backend", None) is not None:
        device.backend.close()
    assert not ended.error, ended.reason
    assert bases == [0] * device.num_queues
    assert all(e.device_type == device.device_id for e in events)
    assert open_fds() <= before
