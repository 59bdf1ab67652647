"""The test driver (vqtrace.driver): Linux-like layouts, the allocator, adding, kicking, reading back."""

from __future__ import annotations

import os

import pytest

from vqtrace.driver import (
    LEGACY_ALIGN,
    LINUX_MODERN_ALIGN,
    Allocator,
    DriverQueue,
    GuestDriver,
    packed_layout,
    split_layout,
    vring_size,
)
from vqtrace.errors import GuestMemoryError, VqtraceError
from vqtrace.memory import GuestMemory
from vqtrace.model import VIRTIO_F_EVENT_IDX, VIRTIO_F_IN_ORDER, Layout
from vqtrace.rings import DeviceQueue, RingTracker, write_response
from vqtrace.rings.packed import event_desc

IN_ORDER = 1 << VIRTIO_F_IN_ORDER


# -- layouts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, align, expected", [
    (256, 4096, 10246),  # 4096 + 518 -> 8192, + 6 + 2048 (legacy virtio-pci, QEMU's default queue)
    (128, 4096, 5126),  # 2048 + 262 -> 4096, + 6 + 1024
    (1024, 4096, 28678),
    (256, 64, 4096 + 576 + 2054),  # 4096 + 518 -> 4672 at 64-byte alignment, + 2054
])
def test_vring_size_as_linux_computes_it(size, align, expected):
    assert vring_size(size, align) == expected
    assert split_layout(size, 0x10000, align).total == expected


@pytest.mark.parametrize("align", [LEGACY_ALIGN, LINUX_MODERN_ALIGN, 4])
def test_split_layout_placement(align):
    layout = split_layout(256, 0x40000, align)
    assert layout.desc == 0x40000
    assert layout.driver == 0x40000 + 16 * 256  # the available ring right after the table
    assert layout.device % align == 0 and layout.device >= layout.driver + 6 + 2 * 256
    assert layout.device - (layout.driver + 6 + 2 * 256) < align
    # the 2.7 alignment table: 16, 2, 4
    assert layout.desc % 16 == 0 and layout.driver % 2 == 0 and layout.device % 4 == 0


def test_packed_layout_placement():
    layout = packed_layout(100, 0x8000)  # a packed queue size need not be a power of 2
    assert (layout.desc, layout.driver, layout.device, layout.total) == (0x8000, 0x8000 + 1600, 0x8000 + 1604,
                                                                          1608)


@pytest.mark.parametrize("call", [
    lambda: split_layout(6, 0), lambda: split_layout(0, 0), lambda: split_layout(65536, 0),
    lambda: split_layout(8, 0x1008), lambda: split_layout(8, 0, 3), lambda: packed_layout(0, 0),
    lambda: packed_layout(40000, 0), lambda: packed_layout(8, 4),
])
def test_bad_layouts(call):
    with pytest.raises(VqtraceError):
        call()


def test_queues_are_laid_out_where_their_config_says():
    with GuestDriver.in_buffer(1 << 20) as guest:
        legacy = guest.queue(0, 256)
        modern = guest.queue(1, 256, align=LINUX_MODERN_ALIGN)
        packed = guest.queue(2, 64, layout=Layout.PACKED)
        for queue in (legacy, modern, packed):
            assert queue.config.problem() is None
            assert queue.config.index in guest.queues
        assert legacy.config.desc % 4096 == 0 and legacy.config.device % 4096 == 0
        assert modern.config.device % 64 == 0 and modern.config.device - modern.config.desc < 8192
        assert packed.config.driver == packed.config.desc + 1024 and packed.config.packed


# -- the allocator ----------------------------------------------------------------------------------------


def test_allocator_alignment_reuse_and_merging():
    allocator = Allocator(0x1000, 0x1000)
    a = allocator.alloc(10)
    b = allocator.alloc(100, align=256)
    c = allocator.alloc(16)
    assert a == 0x1000 and b % 256 == 0 and len({a, b, c}) == 3
    assert allocator.free_bytes == 0x1000 - 10 - 100 - 16
    for addr in (b, a, c):
        allocator.free(addr)
    assert allocator.free_bytes == 0x1000
    assert allocator.alloc(0x1000) == 0x1000  # the pieces merged back into one range


def test_allocator_exhaustion_and_bad_free():
    allocator = Allocator(0, 64)
    allocator.alloc(64)
    with pytest.raises(GuestMemoryError, match="no 1 free bytes"):
        allocator.alloc(1)
    with pytest.raises(GuestMemoryError, match="not allocated"):
        allocator.free(8)


# -- adding, kicking, reading back ---------------------------------------------------------------------------


@pytest.mark.parametrize("layout", [Layout.SPLIT, Layout.PACKED])
def test_round_trip_frees_everything(layout):
    kicks = []
    with GuestDriver.in_buffer(1 << 20) as guest:
        queue = guest.queue(0, 8, layout=layout, kick=kicks.append)
        device = DeviceQueue(queue.config, guest.memory)
        free_before = guest.allocator.free_bytes
        ids = [queue.add([b"ping %d" % k], [16], token=f"t{k}") for k in range(3)]
        assert queue.in_flight == ids and queue.num_free == 2
        assert queue.kick() is True and kicks == [queue] and queue.kicks == 1
        for chain in device.pop_all():
            n = write_response(guest.memory, chain, b"pong")
            device.push(chain, n)
        used = queue.get_used()
        assert [(u.id, u.len, u.written, u.token) for u in used] == [(i, 4, b"pong", f"t{k}")
                                                                       for k, i in enumerate(ids)]
        assert queue.in_flight == [] and queue.num_free == 8
        assert guest.allocator.free_bytes == free_before
        assert queue.get_used() == []


def test_kick_can_be_forced_and_is_not_repeated():
    with GuestDriver.in_buffer(1 << 20) as guest:
        queue = guest.queue(0, 8)
        assert queue.kick() is False  # nothing added
        assert queue.kick(force=True) is True
        queue.add([b"a"], [])
        assert queue.kick() is True and queue.kick() is False


def test_add_errors_leave_the_queue_and_memory_unchanged():
    with GuestDriver.in_buffer(1 << 20) as guest:
        queue = guest.queue(0, 2)
        free = guest.allocator.free_bytes
        with pytest.raises(VqtraceError, match="3 descriptors needed"):
            queue.add([b"a", b"b"], [4])
        with pytest.raises(VqtraceError, match="at least one element"):
            queue.add([], [])
        assert guest.allocator.free_bytes == free and queue.num_free == 2 and queue.in_flight == []


def test_in_order_descriptors_are_used_in_ring_order():
    with GuestDriver.in_buffer(1 << 20) as guest:
        queue = guest.queue(0, 4, features=IN_ORDER)
        device = DeviceQueue(queue.config, guest.memory)
        assert [queue.add([b"x"], [2]) for _ in range(2)] == [0, 2]
        device.push_batch([(c, 0) for c in device.pop_all()])
        queue.get_used()
        assert queue.add([b"y"], [2]) == 0  # wraps to the start of the table (2.7.5)
        assert queue.ring.desc(0)[3] == 1  # next = x + 1


def test_packed_buffer_ids_are_recycled():
    with GuestDriver.in_buffer(1 << 20) as guest:
        queue = guest.queue(0, 2, layout=Layout.PACKED)
        device = DeviceQueue(queue.config, guest.memory)
        seen = set()
        for _ in range(6):
            seen.add(queue.add([b"z"], []))
            device.push(device.pop(), 0)
            queue.get_used()
        assert seen == {0, 1}


def test_held_back_chains_are_invisible_until_published():
    with GuestDriver.in_buffer(1 << 20) as guest:
        split = guest.queue(0, 8)
        packed = guest.queue(1, 8, layout=Layout.PACKED)
        trackers = [RingTracker(q.config, guest.memory) for q in (split, packed)]
        head = split.add([b"a", b"b"], [], expose=False)
        packed.add([b"a", b"b"], [], expose=False)
        assert all(t.poll().avail == [] for t in trackers)
        split.expose(head)
        packed.publish_first()
        assert [len(t.poll().avail) for t in trackers] == [1, 1]


def test_get_used_refuses_an_unknown_id():
    with GuestDriver.in_buffer(1 << 20) as guest:
        queue = guest.queue(0, 8)
        queue.add([b"a"], [])
        DeviceQueue(queue.config, guest.memory).push(7, 0)
        with pytest.raises(VqtraceError, match="used id 7"):
            queue.get_used()


def test_written_bytes_are_capped_at_the_writable_space():
    with GuestDriver.in_buffer(1 << 20) as guest:
        queue = guest.queue(0, 8)
        queue.add([b"q"], [4, 4])
        device = DeviceQueue(queue.config, guest.memory)
        chain = device.pop()
        assert write_response(guest.memory, chain, b"0123456789") == 8
        device.push(chain, 100)  # a device that overstates its length
        used = queue.get_used()
        assert used[0].len == 100 and used[0].written == b"01234567"


def test_raw_corruption_helpers():
    with GuestDriver.in_buffer(1 << 20) as guest:
        queue = guest.queue(0, 8)
        queue.write_desc(3, 0xABC, 7, 2, 0)
        assert queue.ring.desc(3) == (0xABC, 7, 2, 0)
        queue.set_avail_idx(40)
        assert queue.ring.avail_idx() == 40 and queue.avail_idx == 40
        packed = guest.queue(1, 8, layout=Layout.PACKED)
        packed.write_desc(2, 0xDEF, 9, 0x80, 5)
        assert packed.ring.desc(2) == (0xDEF, 9, 5, 0x80)


def test_memfd_guest_is_shared_with_another_mapping():
    """What a vhost-user back-end sees: the same pages, mapped from the fd."""
    with GuestDriver.in_memfd(1 << 20, user_addr=0x7F0000000000) as guest:
        queue = guest.queue(0, 8)
        queue.add([b"over the fd"], [8])
        other = GuestMemory()
        other.add_fd(guest.fd, 0, 1 << 20, writable=True)
        device = DeviceQueue(queue.config, other)
        chain = device.pop()
        assert other.read(chain.descriptors[0].addr, 11) == b"over the fd"
        write_response(other, chain, b"answer")
        device.push(chain, 6)
        assert [u.written for u in queue.get_used()] == [b"answer"]
        assert guest.memory.guest_to_user(queue.config.desc) == 0x7F0000000000 + queue.config.desc
        other.close()
        assert os.fstat(guest.fd).st_size == 1 << 20
    assert guest.fd is None


def test_driver_queue_at_a_fixed_base():
    with GuestDriver.in_buffer(1 << 20) as guest:
        queue = DriverQueue(guest.memory, guest.allocator, size=16, base=0x80000)
        assert queue.config.desc == 0x80000
        assert queue.config.device == 0x80000 + 4096  # 256 + 38 bytes, then the used ring at 4096
        with pytest.raises(GuestMemoryError, match="already in use"):
            DriverQueue(guest.memory, guest.allocator, size=16, base=0x80000)
        addresses = [guest.allocator.alloc(4096) for _ in range(200)]
        assert all(not 0x80000 <= a < 0x80000 + queue.layout.total for a in addresses)


@pytest.mark.parametrize("layout", [Layout.SPLIT, Layout.PACKED])
def test_reading_used_buffers_asks_for_the_next_notification_only_while_enabled(layout):
    with GuestDriver.in_buffer(1 << 20) as guest:
        queue = guest.queue(0, 8, layout=layout, features=1 << VIRTIO_F_EVENT_IDX)
        device = DeviceQueue(queue.config, guest.memory)

        def event():
            return queue.ring.driver_event() if layout is Layout.PACKED else queue.ring.used_event()

        for _ in range(3):
            queue.add([b"a"], [])
        device.push(device.pop(), 0)
        queue.get_used()
        assert event() == ((event_desc(1, True), 2) if layout is Layout.PACKED else 1)
        queue.disable_used_notifications()
        before = event()
        device.push(device.pop(), 0)
        queue.get_used()
        assert event() == before  # left behind: no notification wanted
