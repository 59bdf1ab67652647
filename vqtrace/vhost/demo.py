"""The built-in demo: front-end -> vqtrace proxy -> vqtrace's reference blk back-end.

Three roles over real AF_UNIX sockets in one process (the proxy and the back-end in
threads): the Python front-end shares a memfd as guest memory, negotiates, sets up a
split (or packed) virtqueue and runs a small disk workload; the proxy traces it all to
a pcapng file; the back-end serves a memory disk. Needs nothing but vqtrace.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..devices.blk import BlkDevice
from ..trace.writer import TraceWriter
from .frontend import VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, BlkClient
from .harness import LiveThread
from .live import LiveOptions

DISK_SIZE = 8 << 20
SOURCE = "demo-blk"  # the trace's interface name


@dataclass
class DemoResult:
    trace: Path
    events: int
    requests: int
    checks: list[str] = field(default_factory=list)


def pattern(sector: int, length: int) -> bytes:
    """Recognisable bytes for ``sector`` (its number repeated)."""
    word = f"vqtrace sector {sector:08d} ".encode()
    return (word * (length // len(word) + 1))[:length]


def workload(client: BlkClient) -> tuple[int, list[str]]:
    """Writes, reads back, a queue-depth burst, flush, GET_ID and one request past the end."""
    checks, requests = [], 0
    for sector, length in ((0, 4096), (2048, 512), (4096, 16384)):
        assert client.write(sector, pattern(sector, length)).status == 0
        back = client.read(sector, length)
        requests += 2
        if back.status != 0 or back.data != pattern(sector, length):
            raise AssertionError(f"sector {sector}: read back differs from what was written")
        checks.append(f"sector {sector}: wrote and read back {length} bytes")
    for k in range(8):  # eight requests in flight at once, one kick
        client.submit(VIRTIO_BLK_T_OUT if k % 2 == 0 else VIRTIO_BLK_T_IN, 8192 + 8 * k,
                      data=pattern(8192 + 8 * k, 4096) if k % 2 == 0 else b"", read_len=0 if k % 2 == 0 else 4096)
    client.kick()
    done = 0
    while done < 8:
        done += len(client.complete())
    requests += 8
    checks.append("8 requests in flight together")
    client.flush()
    serial = client.get_id().data.rstrip(b"\0").decode(errors="replace")
    checks.append(f"flush, GET_ID serial {serial!r}")
    past = client.read(client.capacity, 512)
    checks.append(f"read past the end: status {past.status} (IOERR)")
    return requests + 3, checks


def run_demo(trace: Path | None = None, *, packed: bool = False, workdir: Path | None = None) -> DemoResult:
    """Run the three roles, write the trace, return what happened."""
    with tempfile.TemporaryDirectory(prefix="vqtrace-demo-", dir=workdir) as tmp:
        base = Path(tmp)
        trace = trace or Path.cwd() / "vqtrace-demo.pcapng"
        device = BlkDevice(size=DISK_SIZE, serial="vqtrace-demo")
        backend = LiveThread(LiveOptions(socket=str(base / "backend.sock"), device=device, once=True))
        with TraceWriter(trace) as writer:
            writer.describe(SOURCE, "vhost-user proxy: demo front-end -> reference blk back-end")
            proxy = LiveThread(LiveOptions(socket=str(base / "vqtrace.sock"), backend=str(base / "backend.sock"),
                                           once=True, device_type=2, name=SOURCE), writer.write)
            with backend, proxy:
                client = BlkClient.connect(base / "vqtrace.sock", packed=packed, queue_size=64)
                try:
                    requests, checks = workload(client)
                finally:
                    client.close()
                proxy.join(10)
                backend.join(10)
            events = writer.count
        device.backend.close()
    return DemoResult(trace, events, requests, checks)
