"""TrackerTap: what the proxy records from the rings at each kick, call or poll tick.

Built with the guest driver and the device-side queue over one memory, no sockets.
"""

from __future__ import annotations

import struct

import pytest

from vqtrace.driver import GuestDriver
from vqtrace.events import Direction, EventKind
from vqtrace.model import VIRTIO_F_EVENT_IDX, VIRTIO_F_VERSION_1, Layout
from vqtrace.rings.device import DeviceQueue
from vqtrace.vhost import protocol as p
from vqtrace.vhost.tap import TrackerTap

FEATURES = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_F_EVENT_IDX
HDR = struct.Struct("<IIQ")


@pytest.fixture(params=[Layout.SPLIT, Layout.PACKED], ids=["split", "packed"])
def rings(request):
    guest = GuestDriver.in_buffer(1 << 20)
    queue = guest.queue(0, 16, layout=request.param, features=FEATURES)
    device = DeviceQueue(queue.config, guest.memory)
    base = p.pack_packed_base(0, True, 0, True) if request.param is Layout.PACKED else 0
    tap = TrackerTap(queue.config, guest.memory, base, "test")
    yield queue, device, tap
    guest.close()


def blk_out(queue, sector: int, data: bytes) -> int:
    return queue.add([HDR.pack(1, 0, sector), data], [1])


def test_avail_then_used_events_carry_chains_and_bytes(rings):
    queue, device, tap = rings
    blk_out(queue, 8, b"A" * 512)
    events = tap.poll(100)
    assert [(e.kind, e.direction, e.time_ns) for e in events] == [(EventKind.AVAIL, Direction.TO_DEVICE, 100)]
    avail = events[0]
    assert avail.data == HDR.pack(1, 0, 8) + b"A" * 512 and avail.chain.readable_len == 528
    chain = device.pop()
    queue.memory.write(chain.writable[0].addr, b"\x00")
    device.push(chain, 1)
    events = tap.poll(200)
    assert [e.kind for e in events] == [EventKind.USED]
    used = events[0]
    assert used.used.len == 1 and used.written == b"\x00" and used.data[:16] == HDR.pack(1, 0, 8)
    assert tap.poll(300) == []


@pytest.fixture
def split_rings(rings):
    # Packed rings: the used descriptor overwrites the slot the chain started in, so a chain
    # made available and used between two looks cannot be read back; the tracker follows them
    # in ring order (the proxy reads the rings before it forwards a call).
    if rings[0].packed:
        pytest.skip("split rings only")
    return rings


def test_a_head_reused_between_two_polls_is_matched_to_its_first_chain(split_rings):
    """The device used a batch and the driver reused its heads before the next poll (a driver
    that polls, a spurious notification): no false HEAD_REUSED, each used element keeps its chain
    and the bytes it had when it was made available."""
    queue, device, tap = split_rings
    for sector in range(4):
        blk_out(queue, sector, bytes([sector]) * 512)
    assert len(tap.poll(1)) == 4
    for chain in device.pop_all():
        device.push(chain, 1)
    assert len(queue.get_used()) == 4
    for sector in range(10, 14):  # the same heads / buffer ids again
        blk_out(queue, sector, bytes([sector]) * 512)
    events = tap.poll(2)
    kinds = [e.kind for e in events]
    assert EventKind.ANOMALY not in kinds, [e.anomaly for e in events if e.anomaly]
    used = [HDR.unpack_from(e.data)[2] for e in events if e.kind is EventKind.USED]
    avail = [HDR.unpack_from(e.data)[2] for e in events if e.kind is EventKind.AVAIL]
    assert sorted(used) == [0, 1, 2, 3] and avail == [10, 11, 12, 13]


def test_a_chain_made_available_and_used_between_polls(split_rings):
    queue, device, tap = split_rings
    blk_out(queue, 5, b"x" * 512)
    chain = device.pop()
    device.push(chain, 1)
    events = tap.poll(1)
    assert [e.kind for e in events] == [EventKind.AVAIL, EventKind.USED]
    assert events[1].chain is events[0].chain


def test_snaplen_truncates_and_marks_the_event(rings):
    queue, _, tap = rings
    tap.snaplen = 100
    blk_out(queue, 1, b"y" * 4096)
    event = tap.poll(1)[0]
    assert len(event.data) == 100 and event.truncated
