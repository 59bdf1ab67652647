"""Sample traces: every event kind and every device, from real rings and the reference devices.

Each device runs behind the Python guest driver (:class:`vqtrace.devices.bench.DeviceBench`);
a :class:`~vqtrace.rings.tracker.RingTracker` per queue watches the rings as the live
tracer does, so the AVAIL and USED events carry what a ring reader really finds:
descriptors, readable bytes, the bytes the device wrote. A scripted vhost-user session,
configuration reads, anomalies (a descriptor loop, a used id not in flight) and DATA
records (a ring area, an inflight region) complete the set. Tests, docs and the
benchmark use these; ``python -m vqtrace.trace.samples OUT.pcapng`` writes one.
"""

from __future__ import annotations

import contextlib
import struct
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..devices.balloon import BalloonDevice
from ..devices.bench import DeviceBench
from ..devices.blk import BlkDevice
from ..devices.console import ConsoleDevice
from ..devices.net import NetDevice
from ..devices.rng import RngDevice
from ..devices.scsi import ScsiDevice
from ..devices.vsock import VsockDevice
from ..dissectors import vhost_user as vu
from ..errors import VqtraceError
from ..events import Direction, Event, EventKind
from ..model import Layout
from ..rings.buffers import read_readable, read_written
from ..rings.tracker import RingTracker
from .writer import TraceWriter

T0 = 1_700_000_000_000_000_000  # 2023-11-14 22:13:20 UTC
VERSION_1 = 1 << 32


class Clock:
    def __init__(self, start: int = T0, step: int = 1000) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> int:
        self.now += self.step
        return self.now


class Recorder:
    """Watches every queue of a DeviceBench and turns what happens into events."""

    def __init__(self, bench: DeviceBench, source: str, clock: Clock, *, params: dict[str, int] | None = None) -> None:
        self.bench = bench
        self.source = source
        self.clock = clock
        self.params = params
        self.events: list[Event] = []
        self.device_type = bench.device.device_id
        self.trackers = {index: RingTracker(queue.config, bench.memory) for index, queue in bench.queues.items()}
        self._notified = dict(bench.notified)

    def _event(self, kind: EventKind, queue: int | None, direction: Direction = Direction.NONE, **kw: Any) -> Event:
        config = self.bench.queues[queue].config if queue is not None else None
        event = Event(kind, self.clock(), self.source, queue, direction, device_type=self.device_type,
                      features=self.bench.features, packed=bool(config and config.layout is Layout.PACKED),
                      params=self.params, **kw)
        self.events.append(event)
        return event

    def poll(self, kicked: int | None = None) -> None:
        """What happened since the last poll: a kick on ``kicked``, chains, completions, calls."""
        if kicked is not None:
            self._event(EventKind.KICK, kicked, Direction.TO_DEVICE, data=struct.pack("<Q", 1))
        memory = self.bench.memory
        for index, tracker in self.trackers.items():
            changes = tracker.poll()
            for chain in changes.avail:
                self._event(EventKind.AVAIL, index, Direction.TO_DEVICE, data=read_readable(memory, chain),
                            chain=chain)
            for done in changes.used:
                chain = done.chain
                data = read_readable(memory, chain) if chain is not None else b""
                length = done.elem.len if self.device_type != 2 or chain is None else chain.writable_len
                written = read_written(memory, chain, min(length, chain.writable_len)) if chain is not None else b""
                self._event(EventKind.USED, index, Direction.TO_DRIVER, data=data, chain=chain, used=done.elem,
                            written=written)
            for anomaly in changes.anomalies:
                self._event(EventKind.ANOMALY, index, anomaly=anomaly)
            if self.bench.notified[index] > self._notified.get(index, 0):
                self._event(EventKind.CALL, index, Direction.TO_DRIVER)
        self._notified = dict(self.bench.notified)

    def request(self, queue: int, readable: list[bytes] = (), writable: list[int] = (), **options: Any) -> None:
        """Add a buffer and kick: the tracker sees it available first (as a tracer woken by the kick), then used."""
        self.bench.add(queue, readable, writable, kick=False, **options)
        self.poll(queue)
        self.bench.queues[queue].kick(force=True)
        self.poll()

    def add(self, queue: int, readable: list[bytes] = (), writable: list[int] = (), **options: Any) -> None:
        self.bench.add(queue, readable, writable, kick=False, **options)
        self.poll()

    def config(self) -> None:
        space = self.bench.device.config_space()
        self._event(EventKind.CONFIG, None, Direction.TO_DRIVER, data=space, offset=0)


# -- devices --------------------------------------------------------------------------------------

def _blk(clock: Clock, layout: Layout) -> list[Event]:
    with DeviceBench(BlkDevice(size=1 << 20), layout=layout) as bench:
        rec = Recorder(bench, f"blk0-{layout.value}", clock)
        rec.config()
        write = struct.pack("<IIQ", 1, 0, 8)
        rec.request(0, [write, b"vqtrace!" * 64], [1])
        rec.request(0, [struct.pack("<IIQ", 0, 0, 8)], [512, 1])
        rec.request(0, [struct.pack("<IIQ", 4, 0, 0)], [1])  # FLUSH
        rec.request(0, [struct.pack("<IIQ", 8, 0, 0)], [20, 1])  # GET_ID
        rec.request(0, [struct.pack("<IIQ", 11, 0, 0), struct.pack("<QII", 64, 8, 0)], [1])  # DISCARD
        rec.request(0, [struct.pack("<IIQ", 0, 0, 1 << 40)], [512, 1])  # IOERR: past the end
        rec.request(0, [struct.pack("<IIQ", 99, 0, 0)], [1])  # UNSUPP
        rec.request(0, [struct.pack("<IIQ", 1, 0, 8)[:10]], [1], indirect=True)  # short header, indirect
        return rec.events


def _ethernet(dst: str, src: str, ethertype: int, payload: bytes) -> bytes:
    return bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", "")) + \
        ethertype.to_bytes(2, "big") + payload


def _ipv4_udp(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    total = 20 + len(udp)
    head = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, 17, 0, src, dst)
    checksum = _csum(head)
    head = head[:10] + struct.pack(">H", checksum) + head[12:]
    return head + udp


def _csum(data: bytes) -> int:
    total = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


MAC_GUEST = "52:54:00:12:34:56"
MAC_HOST = "52:54:00:ab:cd:ef"


def _net(clock: Clock, layout: Layout) -> list[Event]:
    frames: list[Any] = []
    device = NetDevice(mac=MAC_GUEST, sink=frames.append)
    with DeviceBench(device, layout=layout) as bench:
        rec = Recorder(bench, f"net0-{layout.value}", clock, params={"num_queues": device.num_queues})
        rec.config()
        hdr = bytes(12)
        arp = _ethernet("ff:ff:ff:ff:ff:ff", MAC_GUEST, 0x0806, struct.pack(
            ">HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, bytes.fromhex("525400123456"), bytes([10, 0, 0, 2]), bytes(6),
            bytes([10, 0, 0, 1])))
        rec.request(1, [hdr + arp])
        udp = _ethernet(MAC_HOST, MAC_GUEST, 0x0800,
                        _ipv4_udp(bytes([10, 0, 0, 2]), bytes([10, 0, 0, 1]), 5000, 53, b"vqtrace"))
        rec.request(1, [hdr, udp])
        rec.request(0, [], [1526])
        bench.record(device.receive(_ethernet(MAC_GUEST, MAC_HOST, 0x0800, _ipv4_udp(
            bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 53, 5000, b"answer"))))
        rec.poll()
        # a packet in three merged receive buffers (VIRTIO_NET_F_MRG_RXBUF, 5.1.9.4)
        for _ in range(3):
            rec.request(0, [], [64])
        bench.record(device.receive(_ethernet(MAC_GUEST, MAC_HOST, 0x0800, _ipv4_udp(
            bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 53, 5000, bytes(range(120))))))
        rec.poll()
        ctrl = device.ctrl_index
        if ctrl is not None:
            rec.request(ctrl, [bytes([0, 0, 1])], [1])  # RX_PROMISC on
            rec.request(ctrl, [bytes([1, 1]) + bytes.fromhex("525400123457")], [1])  # MAC_ADDR_SET
            rec.request(ctrl, [bytes([42, 7])], [1])  # unknown class
        return rec.events


def _console(clock: Clock, layout: Layout) -> list[Event]:
    device = ConsoleDevice(ports=2)
    with DeviceBench(device, layout=layout) as bench:
        rec = Recorder(bench, f"console0-{layout.value}", clock)
        rec.config()
        for _ in range(4):
            rec.request(2, [], [64])
        rec.request(3, [struct.pack("<IHH", 0, 0, 1)])  # DEVICE_READY
        rec.request(3, [struct.pack("<IHH", 0, 3, 1)])  # PORT_READY
        rec.request(1, [b"hello from the guest\n"])
        rec.request(0, [], [64])
        bench.record(device.send(0, b"login: "))
        rec.poll()
        return rec.events


def _rng(clock: Clock, layout: Layout) -> list[Event]:
    with DeviceBench(RngDevice(seed=7), layout=layout) as bench:
        rec = Recorder(bench, f"rng0-{layout.value}", clock)
        rec.request(0, [], [16])
        rec.request(0, [], [64])
        return rec.events


def _balloon(clock: Clock, layout: Layout) -> list[Event]:
    device = BalloonDevice(num_pages=4)
    with DeviceBench(device, layout=layout) as bench:
        rec = Recorder(bench, f"balloon0-{layout.value}", clock)
        rec.config()
        rec.request(0, [struct.pack("<4I", 0x1000, 0x1001, 0x1002, 0x1003)])
        rec.request(1, [struct.pack("<2I", 0x1000, 0x1001)])
        if device.num_queues > 2:
            rec.request(2, [struct.pack("<HQ", 4, 123 << 20) + struct.pack("<HQ", 5, 2 << 30)])
        return rec.events


def _cdb(*raw: int, size: int = 32) -> bytes:
    return bytes(raw).ljust(size, b"\0")


def _scsi_req(cdb: bytes, tag: int, lun: int = 0) -> bytes:
    return bytes([1, 0]) + struct.pack(">H", 0x4000 | lun) + bytes(4) + struct.pack("<QBBB", tag, 0, 0, 0) + cdb


def _scsi(clock: Clock, layout: Layout) -> list[Event]:
    with DeviceBench(ScsiDevice(size=1 << 20), layout=layout) as bench:
        rec = Recorder(bench, f"scsi0-{layout.value}", clock)
        rec.config()
        resp = 12 + 96
        rec.request(2, [_scsi_req(_cdb(0x00), 1)], [resp])  # TEST UNIT READY
        rec.request(2, [_scsi_req(_cdb(0x12, 0, 0, 0, 96, 0), 2)], [resp + 96])  # INQUIRY
        rec.request(2, [_scsi_req(_cdb(0x25), 3)], [resp + 8])  # READ CAPACITY(10)
        rec.request(2, [_scsi_req(_cdb(0x9E, 0x10, *bytes(8), 0, 0, 0, 32, 0, 0), 4)], [resp + 32])
        rec.request(2, [_scsi_req(_cdb(0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0), 5)], [resp + 512])  # READ(10)
        rec.request(2, [_scsi_req(_cdb(0x28, 0, 0xFF, 0xFF, 0, 0, 0, 0, 1, 0), 6)], [resp + 512])  # bad LBA
        rec.request(2, [_scsi_req(_cdb(0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 64), 7)], [resp + 64])  # REPORT LUNS
        rec.request(2, [_scsi_req(_cdb(0xC5), 8)], [resp])  # unknown opcode: CHECK CONDITION
        tmf = struct.pack("<II", 0, 0) + bytes([1, 0, 0x40, 0]) + bytes(4) + struct.pack("<Q", 5)
        rec.request(0, [tmf], [1])
        rec.request(1, [], [16])
        return rec.events


def _vsock_packet(op: int, src_port: int, dst_port: int, payload: bytes = b"", *, flags: int = 0,
                  buf_alloc: int = 65536, fwd_cnt: int = 0) -> bytes:
    return struct.pack("<QQIIIHHIII", 3, 2, src_port, dst_port, len(payload), 1, op, flags, buf_alloc,
                       fwd_cnt) + payload


def _vsock(clock: Clock, layout: Layout) -> list[Event]:
    with DeviceBench(VsockDevice(guest_cid=3, echo_port=1234), layout=layout) as bench:
        rec = Recorder(bench, f"vsock0-{layout.value}", clock)
        rec.config()
        for _ in range(4):
            rec.request(0, [], [4096 + 44])
        rec.request(2, [], [4])
        rec.request(1, [_vsock_packet(1, 5000, 1234)])  # REQUEST
        rec.request(1, [_vsock_packet(5, 5000, 1234, b"ping")])  # RW: echoed
        rec.request(1, [_vsock_packet(4, 5000, 1234, flags=3)])  # SHUTDOWN
        return rec.events


def _anomalies(clock: Clock) -> list[Event]:
    """A descriptor loop and a used id not in flight, found by the ring tracker."""
    device = BlkDevice(size=1 << 16)
    with DeviceBench(device, features=device.offered_features & ~(1 << 35)) as bench:  # no IN_ORDER
        rec = Recorder(bench, "blk-faulty", clock)
        queue = bench.queues[0]

        def loop(specs: list[Any]) -> None:
            specs[-1].flags |= 1  # NEXT on the last: back to the head
            specs[-1].next = specs[0].index if hasattr(specs[0], "index") else 0

        with contextlib.suppress(VqtraceError):  # a driver that refuses the hook: no loop sample
            queue.add([struct.pack("<IIQ", 0, 0, 0)], [1], hook=loop)
        rec.poll(0)
        bench.device_queues[0].push(77, 0)  # a used element for an id that is not in flight
        rec.poll()
        return rec.events


def _vhost_user(clock: Clock) -> list[Event]:
    """A front-end setting up one queue of a blk back-end, and a back-end channel message."""
    src = "vhost-user:/tmp/vhost-blk.sock"
    out: list[Event] = []

    def msg(request: int, payload: bytes = b"", *, reply: bool = False, to_device: bool = True, fds: int = 0,
            channel: int = 0, need_reply: bool = False) -> None:
        data = vu.pack_message(request, payload, reply=reply, need_reply=need_reply)
        out.append(Event(EventKind.VHOST_USER, clock(), src, None, Direction.TO_DEVICE if to_device else
                         Direction.TO_DRIVER, data, device_type=2, channel=channel, fds=fds))

    features = VERSION_1 | 1 << 30
    msg(1)  # GET_FEATURES
    msg(1, struct.pack("<Q", features), reply=True, to_device=False)
    msg(15)  # GET_PROTOCOL_FEATURES
    msg(15, struct.pack("<Q", 0x8000 | 0x2 | 0x8), reply=True, to_device=False)
    msg(16, struct.pack("<Q", 0x2 | 0x8))
    msg(2, struct.pack("<Q", features))
    msg(3)  # SET_OWNER
    msg(37, struct.pack("<Q", 0) + struct.pack("<QQQQ", 0, 1 << 28, 0x7F0000000000, 0), fds=1)  # ADD_MEM_REG
    msg(8, struct.pack("<II", 0, 256))  # SET_VRING_NUM
    msg(9, struct.pack("<IIQQQQ", 0, 0, 0x7F0000001000, 0x7F0000002000, 0x7F0000001800, 0x2000))
    msg(10, struct.pack("<II", 0, 0))  # SET_VRING_BASE
    msg(12, struct.pack("<Q", 0), fds=1)  # SET_VRING_KICK
    msg(13, struct.pack("<Q", 0), fds=1)  # SET_VRING_CALL
    msg(24, struct.pack("<III", 0, 8, 0) + bytes(8), need_reply=True)  # GET_CONFIG
    msg(24, struct.pack("<III", 0, 8, 0) + struct.pack("<Q", 2048), reply=True, to_device=False)
    msg(4, struct.pack("<II", 0, 1), to_device=False, channel=1)  # BACKEND_VRING_CALL
    msg(11, struct.pack("<II", 0, 0))  # GET_VRING_BASE
    msg(11, struct.pack("<II", 0, 5), reply=True, to_device=False)
    msg(9, struct.pack("<II", 0, 0))  # malformed: an addr description needs 40 bytes
    return out


def _data(clock: Clock) -> list[Event]:
    out = []
    ring = struct.pack("<HH4HH", 1, 3, 0, 1, 2, 0, 2)
    out.append(Event(EventKind.DATA, clock(), "snapshot", 0, data=ring, layer="virtqueue.avail", device_type=2,
                     params={"queue_size": 4, "event_idx": 1}))
    region = struct.pack("<QHHHH", 0, 1, 2, 0, 0) + struct.pack("<B5xHQ", 1, 0, 7) + struct.pack("<B5xHQ", 0, 0, 0)
    out.append(Event(EventKind.DATA, clock(), "snapshot", 0, data=region, layer="vhost_user.inflight_split"))
    out.append(Event(EventKind.DATA, clock(), "snapshot", None, data=b"\x01\x02", layer="no.such.layer"))
    return out


SCENARIOS: dict[str, Callable[[Clock], list[Event]]] = {
    "vhost_user": _vhost_user,
    "blk": lambda clock: _blk(clock, Layout.SPLIT),
    "blk_packed": lambda clock: _blk(clock, Layout.PACKED),
    "net": lambda clock: _net(clock, Layout.SPLIT),
    "console": lambda clock: _console(clock, Layout.SPLIT),
    "rng": lambda clock: _rng(clock, Layout.SPLIT),
    "balloon": lambda clock: _balloon(clock, Layout.SPLIT),
    "scsi": lambda clock: _scsi(clock, Layout.SPLIT),
    "vsock": lambda clock: _vsock(clock, Layout.PACKED),
    "anomalies": _anomalies,
    "data": _data,
}


def sample_events(names: list[str] | None = None, start: int = T0) -> list[Event]:
    """The events of the scenarios ``names`` (default: all), one clock for all of them."""
    clock = Clock(start)
    out: list[Event] = []
    for name in names or list(SCENARIOS):
        out.extend(SCENARIOS[name](clock))
    return out


def write_samples(path: str | Path, names: list[str] | None = None, *, snaplen: int = 0) -> int:
    """Write a sample trace; how many events."""
    events = sample_events(names)
    with TraceWriter(path, snaplen=snaplen) as writer:
        for event in events:
            writer.write(event)
    return len(events)


def iter_bulk(count: int, *, payload: int = 64, start: int = T0) -> Iterator[Event]:
    """``count`` events of a busy blk queue (kick, avail, used, call per request), for benchmarks."""
    from ..model import Chain, Descriptor, UsedElem

    t = start
    n = 0
    while n < count:
        sector = n * 8
        write = n % 2 == 0
        header = struct.pack("<IIQ", 1 if write else 0, 0, sector)
        data = bytes(payload)
        descs = [Descriptor(addr=0x10000, len=16, flags=1, index=0, next=1),
                 Descriptor(addr=0x20000, len=payload, flags=1 if write else 3, index=1, next=2),
                 Descriptor(addr=0x30000, len=1, flags=2, index=2)]
        chain = Chain(0, 0, n & 0xFFFF, descs)
        readable = header + data if write else header
        written = b"\0" if write else data + b"\0"
        for kind in (EventKind.KICK, EventKind.AVAIL, EventKind.USED, EventKind.CALL):
            if n >= count:
                return
            t += 1000
            if kind is EventKind.AVAIL:
                yield Event(kind, t, "blk0.q0", 0, Direction.TO_DEVICE, readable, 2, chain=chain, features=VERSION_1)
            elif kind is EventKind.USED:
                yield Event(kind, t, "blk0.q0", 0, Direction.TO_DRIVER, readable, 2, chain=chain,
                            used=UsedElem(0, 0, len(written), n & 0xFFFF), written=written, features=VERSION_1)
            else:
                yield Event(kind, t, "blk0.q0", 0, Direction.TO_DEVICE if kind is EventKind.KICK
                            else Direction.TO_DRIVER, device_type=2, features=VERSION_1)
            n += 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        sys.stderr.write("usage: python -m vqtrace.trace.samples OUT.pcapng [SCENARIO ...]\n")
        return 2
    count = write_samples(args[0], args[1:] or None)
    print(f"wrote {count} events to {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
