"""DeviceQueue: the device side of split and packed queues (pop, push, notifications, vring base)."""

from __future__ import annotations

import pytest

from vqtrace.dissectors.virtqueue import VIRTQ_USED_F_NO_NOTIFY
from vqtrace.driver import GuestDriver
from vqtrace.memory import GuestMemory
from vqtrace.model import VIRTIO_F_EVENT_IDX, Layout, QueueConfig
from vqtrace.rings import DeviceQueue, decode_vring_base, encode_vring_base
from vqtrace.rings import anomalies as A
from vqtrace.rings.notify import RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE, RING_EVENT_FLAGS_ENABLE

EVENT_IDX = 1 << VIRTIO_F_EVENT_IDX
LAYOUTS = [Layout.SPLIT, Layout.PACKED]


def setup(layout=Layout.SPLIT, size=8, features=0):
    guest = GuestDriver.in_buffer(1 << 20)
    queue = guest.queue(0, size, layout=layout, features=features)
    return guest, queue, DeviceQueue(queue.config, guest.memory)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_pop_in_order_of_availability_and_push(layout):
    _, queue, device = setup(layout)
    assert device.pop() is None and not device.has_available()
    ids = [queue.add([b"%d" % k], [4]) for k in range(3)]
    assert device.has_available()
    chains = [device.pop() for _ in range(3)]
    assert [c.id for c in chains] == ids and device.pop() is None
    assert list(device.in_flight) == ids
    device.push(chains[1], 4)
    assert list(device.in_flight) == [ids[0], ids[2]]
    assert [u.id for u in queue.get_used()] == [ids[1]]
    assert not device.anomalies and device.broken is None


@pytest.mark.parametrize("layout", LAYOUTS)
def test_vring_base_round_trip_continues_where_it_stopped(layout):
    """VHOST_USER_GET_VRING_BASE then SET_VRING_BASE on a new back-end: nothing lost, nothing repeated."""
    guest, queue, device = setup(layout)
    for _ in range(5):
        queue.add([b"a"], [])
    for _ in range(3):
        device.push(device.pop(), 0)
    queue.get_used()
    base = device.vring_base
    again = DeviceQueue.from_vring_base(queue.config, guest.memory, base)
    assert (again.last_avail, again.used_idx) == (device.last_avail, device.used_idx)
    rest = [c.id for c in again.pop_all()]
    assert len(rest) == 2 and rest == [c.id for c in device.pop_all()]


def test_vring_base_encoding():
    split = QueueConfig(0, 8, 0, 0x100, 0x200)
    packed = QueueConfig(0, 8, 0, 0x100, 0x200, Layout.PACKED)
    assert encode_vring_base(split, 0x12345) == 0x2345
    assert decode_vring_base(split, 0x2345) == (0x2345, True, None, True)
    value = encode_vring_base(packed, 5, False, 3, True)
    assert value == 5 | 0 << 15 | 3 << 16 | 1 << 31
    assert decode_vring_base(packed, value) == (5, False, 3, True)


def test_split_used_idx_is_read_from_memory_when_not_given():
    guest, queue, _ = setup()
    queue.ring.set_used_idx(17)
    assert DeviceQueue(queue.config, guest.memory).used_idx == 17
    assert DeviceQueue(queue.config, guest.memory, used_idx=3).used_idx == 3


def test_push_a_bare_id_writes_it_raw():
    _, queue, device = setup()
    device.push(6, 12)
    assert queue.ring.used_elem(0) == (6, 12) and queue.ring.used_idx() == 1


def test_push_batch_without_in_order_writes_one_element_each():
    _, queue, device = setup()
    for _ in range(3):
        queue.add([b"a"], [8])
    chains = device.pop_all()
    device.push_batch([(c, 8 - k) for k, c in enumerate(chains)])
    assert [queue.ring.used_elem(k) for k in range(3)] == [(c.id, 8 - k) for k, c in enumerate(chains)]
    assert queue.ring.used_idx() == 3
    device.push_batch([])
    assert queue.ring.used_idx() == 3


# -- notifications to the driver (2.7.7.2, 2.8.10) ----------------------------------------------------


def test_split_should_notify_follows_no_interrupt():
    _, queue, device = setup()
    queue.add([b"a"], [])
    queue.add([b"b"], [])
    device.push(device.pop(), 0)
    assert device.should_notify() is True
    assert device.should_notify() is False  # nothing new since
    queue.disable_used_notifications()
    device.push(device.pop(), 0)
    assert device.should_notify() is False


def test_split_should_notify_follows_used_event():
    _, queue, device = setup(features=EVENT_IDX)
    for _ in range(4):
        queue.add([b"a"], [])
    queue.ring.set_used_event(2)  # notify once entry 2 is written (idx reaches 3)
    chains = device.pop_all()
    device.push(chains[0], 0)
    device.push(chains[1], 0)
    assert device.should_notify() is False
    device.push(chains[2], 0)
    assert device.should_notify() is True
    device.push(chains[3], 0)
    assert device.should_notify() is False


def test_packed_should_notify_follows_driver_event_suppression():
    _, queue, device = setup(Layout.PACKED, features=EVENT_IDX)
    for _ in range(3):
        queue.add([b"a"], [])
    chains = device.pop_all()
    queue.ring.set_driver_event(0, RING_EVENT_FLAGS_DISABLE)
    device.push(chains[0], 0)
    assert device.should_notify() is False
    queue.enable_used_notifications()  # DESC at the driver's next used slot (0, wrap 1)
    assert queue.ring.driver_event()[1] == RING_EVENT_FLAGS_DESC
    device.push(chains[1], 0)
    assert device.should_notify() is False  # slot 0 was written before the driver asked
    queue.ring.set_driver_event(0, RING_EVENT_FLAGS_ENABLE)
    device.push(chains[2], 0)
    assert device.should_notify() is True


# -- suppressing the driver's notifications (2.7.10.2, 2.8.10) ------------------------------------------


def test_split_no_notify_flag():
    _, queue, device = setup()
    device.disable_notifications()
    assert queue.ring.used_flags() & VIRTQ_USED_F_NO_NOTIFY
    assert device.enable_notifications() is False
    assert not queue.ring.used_flags() & VIRTQ_USED_F_NO_NOTIFY


def test_split_avail_event_follows_pops_only_while_enabled():
    _, queue, device = setup(features=EVENT_IDX)
    for _ in range(3):
        queue.add([b"a"], [])
    device.pop()
    assert queue.ring.avail_event() == 1
    device.disable_notifications()
    device.pop()
    assert queue.ring.avail_event() == 1
    assert device.enable_notifications() is True  # one is still waiting: pop it, or miss it
    assert queue.ring.avail_event() == 2


def test_packed_device_event_suppression():
    _, queue, device = setup(Layout.PACKED)
    device.disable_notifications()
    assert queue.ring.device_event() == (0, RING_EVENT_FLAGS_DISABLE)
    device.enable_notifications()
    assert queue.ring.device_event() == (0, RING_EVENT_FLAGS_ENABLE)


# -- a hostile ring ------------------------------------------------------------------------------------------


def test_avail_index_far_ahead_breaks_the_queue():
    _, queue, device = setup()
    queue.set_avail_idx(100)
    assert device.pop() is None
    assert device.broken is not None and device.broken.code == A.AVAIL_IDX_AHEAD
    assert device.pop() is None and not device.has_available()


def test_unmapped_rings_break_the_queue_without_raising():
    memory = GuestMemory.from_bytes(bytearray(0x100))
    for layout in LAYOUTS:
        device = DeviceQueue(QueueConfig(0, 8, 0x1000, 0x2000, 0x3000, layout), memory)
        assert device.pop() is None
        assert device.broken is not None and device.broken.code == A.RING_UNMAPPED
        assert device.should_notify() is False


def test_bad_chains_are_popped_with_their_anomalies():
    _, queue, device = setup()
    queue.write_desc(0, 0x100, 4, 1, 0)  # loops on itself
    queue.expose(0)
    chain = device.pop()
    assert [a.code for a in chain.anomalies] == [A.DESC_LOOP]
    assert [a.code for a in device.anomalies] == [A.DESC_LOOP]
    queue.expose(0)  # and again, while in flight
    assert A.HEAD_REUSED_IN_FLIGHT in [a.code for a in device.pop().anomalies]
