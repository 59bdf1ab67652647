"""Requests end to end through ring memory: the test driver adds chains, the ring tracker reads them, a
device side uses them, and decode_chain turns both ends into requests."""

from __future__ import annotations

import struct

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from vqtrace.driver import GuestDriver
from vqtrace.model import Layout
from vqtrace.requests import QueueContext, RxAssembler
from vqtrace.requests.chains import decode_chain
from vqtrace.rings import DeviceQueue, RingTracker, write_response

VERSION_1 = 1 << 32
INDIRECT_DESC = 1 << 28
RING_PACKED = 1 << 34
MRG_RXBUF = 1 << 15


@pytest.fixture
def guest():
    with GuestDriver.in_buffer(4 << 20) as drv:
        yield drv


def setup(guest, device_type, index=0, features=VERSION_1, layout=Layout.SPLIT, size=16):
    queue = guest.queue(index, size, layout=layout, features=features, device_type=device_type)
    tracker = RingTracker(queue.config, guest.memory)
    device = DeviceQueue(queue.config, guest.memory)
    return queue, tracker, device


@pytest.mark.parametrize("layout", [Layout.SPLIT, Layout.PACKED])
@pytest.mark.parametrize("indirect", [False, True])
def test_blk_write_then_read(guest, layout, indirect):
    features = VERSION_1 | INDIRECT_DESC | (RING_PACKED if layout is Layout.PACKED else 0)
    queue, tracker, device = setup(guest, 2, features=features, layout=layout)
    ctx = QueueContext("blk", 0, features)
    data = bytes(range(256)) * 16
    queue.add([struct.pack("<IIQ", 1, 0, 2048), data], [1], indirect=indirect)
    queue.add([struct.pack("<IIQ", 0, 0, 2048)], [4096, 1], indirect=indirect)
    changes = tracker.poll()
    assert len(changes.avail) == 2 and not changes.anomalies
    made = [decode_chain(ctx, guest.memory, chain) for chain in changes.avail]
    assert [r.summary for r in made] == ["blk OUT sector=2048 len=4096", "blk IN sector=2048 len=4096"]

    write, read = device.pop(), device.pop()
    assert write_response(guest.memory, write, b"\0") == 1
    device.push(write, 1)
    write_response(guest.memory, read, data + b"\0")
    device.push(read, 4097)
    used = tracker.poll().used
    done = [decode_chain(ctx, guest.memory, c.chain, c.len) for c in used]
    assert [r.summary for r in done] == ["blk OUT sector=2048 len=4096 -> OK", "blk IN sector=2048 len=4096 -> OK"]
    assert all(r.problems == [] for r in done)
    assert done[1].fields()["virtio_blk.data"] == data
    assert done[0].fields()["virtio_blk.data"] == data
    assert [b.written for b in queue.get_used()] == [b"\0", data + b"\0"]


def test_blk_status_of_a_read_bigger_than_the_read_limit(guest):
    queue, tracker, device = setup(guest, 2)
    ctx = QueueContext("blk", 0, VERSION_1)
    queue.add([struct.pack("<IIQ", 0, 0, 0)], [65536, 1])
    chain = tracker.poll().avail[0]
    popped = device.pop()
    write_response(guest.memory, popped, b"\x11" * 65536 + b"\x01")
    device.push(popped, 65537)
    used = tracker.poll().used[0]
    req = decode_chain(ctx, guest.memory, used.chain, used.len, limit=4096)
    assert req.summary == "blk IN sector=0 len=65536 -> IOERR"  # the status read from the end of the part
    assert req.fields()["virtio_blk.data"] == b"\x11" * 4096
    assert chain.id == used.chain.id


def test_net_merged_receive_buffers(guest):
    features = VERSION_1 | MRG_RXBUF
    queue, tracker, device = setup(guest, 1, features=features)
    ctx = QueueContext("net", 0, features)
    for _ in range(3):
        queue.add([], [1024])
    tracker.poll()
    assert decode_chain(ctx, guest.memory, device.pop()).summary == "net RX buffer 1024 bytes"
    chains = [device.in_flight[i] for i in list(device.in_flight)] + [device.pop(), device.pop()]
    payload = bytes(range(200)) * 12
    frame = bytes(Ether(dst="52:54:00:12:34:56", src="52:54:00:ab:cd:ef") / IP(src="10.0.0.2", dst="10.0.0.1") /
                  UDP(sport=7, dport=9) / payload)
    stream = struct.pack("<BBHHHHH", 0, 0, 0, 0, 0, 0, 3) + frame
    pieces = [stream[:1024], stream[1024:2048], stream[2048:]]
    for chain, piece in zip(chains, pieces, strict=True):
        write_response(guest.memory, chain, piece)
        device.push(chain, len(piece))
    used = tracker.poll().used
    asm = RxAssembler(ctx)
    results = [asm.add(_written(guest, c), c.len) for c in used]
    packet = results[-1][1]
    assert packet is not None and [r[1] for r in results[:2]] == [None, None]
    assert packet.summary.startswith(f"net RX {len(frame)} bytes (3 buffers) 52:54:00:ab:cd:ef > 52:54:00:12:34:56")
    assert packet.fields()["udp.payload"] == payload and packet.problems == []


def _written(guest, completion):
    from vqtrace.rings import read_written

    return read_written(guest.memory, completion.chain, completion.len)


def test_scsi_inquiry_through_the_ring(guest):
    queue, tracker, device = setup(guest, 8, index=2)
    ctx = QueueContext("scsi", 2, VERSION_1)
    lun = bytes([1, 0, 0x40, 0, 0, 0, 0, 0])
    cdb = bytes([0x12, 0, 0, 0, 36, 0]).ljust(32, b"\0")
    queue.add([lun + bytes(11) + cdb], [108, 36])
    tracker.poll()
    chain = device.pop()
    inquiry = bytes([0, 0, 5, 2, 31, 0, 0, 0x02]) + b"VQTRACE " + b"REFERENCE DISK  " + b"0001"
    write_response(guest.memory, chain, struct.pack("<IIHBB", 0, 0, 0, 0, 0) + bytes(96) + inquiry)
    device.push(chain, 144)
    used = tracker.poll().used[0]
    req = decode_chain(ctx, guest.memory, used.chain, used.len)
    assert req.summary == "scsi INQUIRY alloc=36 lun=0 -> GOOD datain=36"
    assert req.fields()["virtio_scsi.inquiry.product_identification"] == "REFERENCE DISK"


def test_a_buffer_outside_guest_memory_is_a_problem(guest):
    queue, tracker, _ = setup(guest, 2)
    ctx = QueueContext("blk", 0, VERSION_1)

    def outside(specs):
        specs[1].addr = 64 << 20  # past the end of the 4 MiB guest

    queue.add([struct.pack("<IIQ", 1, 0, 0), bytes(512)], [1], hook=outside)
    chain = tracker.poll().avail[0]
    req = decode_chain(ctx, guest.memory, chain)
    assert "UNREADABLE" in [p.code for p in req.problems]
    assert req.summary == "blk OUT sector=0 len=512"  # the header was readable
    req.trees  # noqa: B018 - builds without raising
