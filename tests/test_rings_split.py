"""The split-ring tracker (virtio 1.4, 2.7): what happened between polls, notifications, anomalies."""

from __future__ import annotations

import pytest

from vqtrace.dissectors.virtqueue import VIRTQ_USED_F_NO_NOTIFY
from vqtrace.driver import GuestDriver
from vqtrace.errors import VqtraceError
from vqtrace.memory import GuestMemory
from vqtrace.model import VIRTIO_F_EVENT_IDX, VIRTIO_F_IN_ORDER, VIRTIO_F_INDIRECT_DESC, QueueConfig, RingState
from vqtrace.rings import DeviceQueue, RingTracker, SplitTracker, snapshot, vring_need_event, write_response
from vqtrace.rings import anomalies as A

EVENT_IDX, IN_ORDER, INDIRECT = 1 << VIRTIO_F_EVENT_IDX, 1 << VIRTIO_F_IN_ORDER, 1 << VIRTIO_F_INDIRECT_DESC


def setup(size: int = 8, features: int = 0):
    guest = GuestDriver.in_buffer(4 << 20)
    queue = guest.queue(0, size, features=features)
    return guest, queue, RingTracker(queue.config, guest.memory), DeviceQueue(queue.config, guest.memory)


def codes(changes) -> list[str]:
    return [a.code for a in changes.anomalies]


def test_tracker_is_the_split_one():
    _, _, tracker, _ = setup()
    assert isinstance(tracker, SplitTracker)


def test_chains_made_available_then_used_in_ring_order():
    _guest, queue, tracker, device = setup()
    ids = [queue.add([b"req%d" % k], [8]) for k in range(3)]
    changes = tracker.poll()
    assert [c.id for c in changes.avail] == ids
    assert [c.avail_idx for c in changes.avail] == [0, 1, 2]
    assert changes.used == [] and not changes.anomalies
    assert changes.before.avail_idx == 0 and changes.after.avail_idx == 3
    assert list(tracker.in_flight) == ids
    chains = device.pop_all()
    device.push(chains[1], 5)  # out of order: allowed without IN_ORDER
    device.push(chains[0], 8)
    changes = tracker.poll()
    assert [(u.id, u.len) for u in changes.used] == [(ids[1], 5), (ids[0], 8)]
    assert changes.used[0].chain is tracker_chain(changes, ids[1])
    assert [u.elem.used_idx for u in changes.used] == [0, 1]
    assert list(tracker.in_flight) == [ids[2]]
    assert tracker.poll().empty


def tracker_chain(changes, id):
    return next(u.chain for u in changes.used if u.id == id)


def test_head_used_and_made_available_again_between_two_polls():
    """Not a reuse in flight: the used element in between completes the first use of the head."""
    _guest, queue, tracker, device = setup()
    tracker.poll()
    first = queue.add([b"one"], [4])
    device.push(device.pop(), 4)
    queue.get_used()
    again = queue.add([b"two"], [4])
    assert again == first  # the LIFO free list hands the same head out again
    changes = tracker.poll()
    assert not changes.anomalies
    assert [c.avail_idx for c in changes.avail] == [0, 1]
    assert [(u.id, u.chain.avail_idx) for u in changes.used] == [(first, 0)]
    assert list(tracker.in_flight) == [first] and tracker.in_flight[first].avail_idx == 1


def test_state_is_a_copy_with_the_in_flight_set():
    _, queue, tracker, _ = setup()
    head = queue.add([b"x"], [])
    tracker.poll()
    state = tracker.state
    assert isinstance(state, RingState) and state.avail_idx == 1 and state.used_idx == 0 and state.pending == 1
    assert list(state.in_flight) == [head]
    state.in_flight.clear()
    assert list(tracker.in_flight) == [head]


def test_index_wrap_around_65535_to_0():
    guest = GuestDriver.in_buffer(1 << 20)
    queue = guest.queue(0, 8, features=EVENT_IDX)
    start = 65533
    queue.set_avail_idx(start)
    queue.last_used = start
    queue._kicked_avail = start
    queue.ring.set_used_idx(start)
    tracker = RingTracker(queue.config, guest.memory)
    device = DeviceQueue(queue.config, guest.memory, avail_idx=start)
    assert device.used_idx == start and tracker.poll().empty
    seen_avail, seen_used = [], []
    for _ in range(3):  # 3 x 3 chains: 65533 .. 65535, 0 .. 5
        ids = [queue.add([b"a"], [4]) for _ in range(3)]
        changes = tracker.poll()
        seen_avail += [c.avail_idx for c in changes.avail]
        assert [c.id for c in changes.avail] == ids and not changes.anomalies
        for chain in device.pop_all():
            device.push(chain, 4)
        changes = tracker.poll()
        seen_used += [u.elem.used_idx for u in changes.used]
        assert sorted(u.id for u in changes.used) == sorted(ids) and not changes.anomalies
        assert [u.len for u in queue.get_used()] == [4, 4, 4]
    assert seen_avail == [65533, 65534, 65535, 0, 1, 2, 3, 4, 5]
    assert seen_used == seen_avail
    assert tracker.state.avail_idx == 6 and tracker.state.used_idx == 6


def test_event_idx_across_the_wrap():
    assert vring_need_event(65535, 1, 65534)  # entry 65535 was written: idx went 65534 -> 1
    assert not vring_need_event(65535, 65535, 65533)
    assert vring_need_event(0, 1, 65535)
    assert not vring_need_event(5, 1, 65535)


def test_full_ring_and_many_laps():
    _guest, queue, tracker, device = setup(size=4)
    for lap in range(5):
        ids = [queue.add([bytes([lap])], []) for _ in range(4)]
        assert queue.num_free == 0
        with pytest.raises(VqtraceError, match="descriptors needed"):
            queue.add([b"no room"], [])
        changes = tracker.poll()
        assert [c.id for c in changes.avail] == ids and not changes.anomalies
        assert tracker.state.pending == 4
        for chain in device.pop_all():
            device.push(chain, 0)
        assert len(tracker.poll().used) == 4
        assert len(queue.get_used()) == 4 and queue.num_free == 4


def test_indirect_chains_take_one_descriptor():
    _guest, queue, tracker, _device = setup(size=8, features=INDIRECT)
    for _ in range(3):  # 15 buffers: would not fit in the table directly
        queue.add([b"a", b"b", b"c"], [16, 16], indirect=True)
    changes = tracker.poll()
    assert [c.ring_len for c in changes.avail] == [1, 1, 1]
    assert [len(c.buffers) for c in changes.avail] == [5, 5, 5]
    assert not changes.anomalies and queue.num_free == 5


def test_in_order_batched_used_element():
    """2.7.9: one used entry, at the offset of the batch's first chain, naming the last; idx += batch size."""
    _guest, queue, tracker, device = setup(size=8, features=IN_ORDER)
    ids = [queue.add([b"tx"], [100]) for _ in range(4)]
    assert ids == [0, 2, 4, 6]  # IN_ORDER: descriptors in ring order
    tracker.poll()
    chains = device.pop_all()
    device.push_batch([(c, 60) for c in chains[:3]])
    assert queue.ring.used_elem(0) == (ids[2], 60) and queue.ring.used_idx() == 3
    changes = tracker.poll()
    assert [(u.id, u.len, u.elem.implied) for u in changes.used] == [(0, 100, True), (2, 100, True), (4, 60, False)]
    assert not changes.anomalies and list(tracker.in_flight) == [ids[3]]
    used = queue.get_used()
    assert [(u.id, u.len, u.implied) for u in used] == [(0, 100, True), (2, 100, True), (4, 60, False)]
    device.push(chains[3], 1)
    changes = tracker.poll()
    assert [(u.id, u.elem.used_idx) for u in changes.used] == [(6, 3)]


def test_in_order_batch_larger_than_the_index_moved():
    _guest, queue, tracker, _device = setup(size=8, features=IN_ORDER)
    ids = [queue.add([b"x"], []) for _ in range(3)]
    tracker.poll()
    queue.ring.set_used_elem(0, ids[2], 0)  # names the third chain ...
    queue.ring.set_used_idx(1)  # ... but used idx moves by one
    changes = tracker.poll()
    assert codes(changes) == [A.IN_ORDER_VIOLATION]
    assert changes.anomalies[0].section == "virtio 1.4, 2.7.9"


def test_in_order_device_queue_refuses_a_batch_that_is_not_the_oldest():
    _, queue, _, device = setup(features=IN_ORDER)
    queue.add([b"a"], [])
    queue.add([b"b"], [])
    chains = device.pop_all()
    with pytest.raises(ValueError, match="IN_ORDER"):
        device.push_batch([(chains[1], 0)])


def test_mergeable_rx_multi_buffer_completion():
    """A net RX packet over three buffers (mergeable RX buffers): one batch of used elements."""
    guest, queue, tracker, device = setup(size=8)
    ids = [queue.add([], [1526], token=k) for k in range(4)]
    tracker.poll()
    chains = device.pop_all()
    packet = bytes(range(256)) * 14  # 3584 bytes: 1526 + 1526 + 532
    header = (3).to_bytes(2, "little")  # num_buffers in the first buffer's header (virtio-net 5.1.6.4)
    data = header + packet
    pieces = []
    for chain in chains[:3]:
        n = write_response(guest.memory, chain, data[:1526])
        pieces.append((chain, n))
        data = data[n:]
    assert [n for _, n in pieces] == [1526, 1526, 534]
    device.push_batch(pieces)
    changes = tracker.poll()
    assert [(u.id, u.len) for u in changes.used] == [(ids[0], 1526), (ids[1], 1526), (ids[2], 534)]
    assert device.should_notify()
    used = queue.get_used()
    assert b"".join(u.written for u in used) == header + packet
    assert [u.token for u in used] == [0, 1, 2]


# -- notifications ---------------------------------------------------------------------------


def test_no_notify_flag_without_event_idx():
    _guest, queue, tracker, device = setup()
    queue.add([b"a"], [])
    changes = tracker.poll()
    assert changes.avail_notification_due is True and queue.kick() is True
    device.disable_notifications()
    assert queue.ring.used_flags() & VIRTQ_USED_F_NO_NOTIFY
    queue.add([b"b"], [])
    assert tracker.poll().avail_notification_due is False and queue.kick() is False
    device.enable_notifications()
    for chain in device.pop_all():
        device.push(chain, 0)
    changes = tracker.poll()
    assert changes.used_notification_due is True and changes.avail_notification_due is None
    queue.disable_used_notifications()  # VRING_AVAIL_F_NO_INTERRUPT
    queue.add([b"c"], [])
    device.push(device.pop(), 0)
    assert device.should_notify() is False and tracker.poll().used_notification_due is False


def test_event_idx_avail_event_and_used_event():
    """2.7.10: the device's avail_event; 2.7.7: the driver's used_event."""
    _guest, queue, tracker, device = setup(features=EVENT_IDX)
    queue.add([b"a"], [])
    assert queue.kick() is True  # avail_event 0, idx 0 -> 1
    chain = device.pop()
    assert queue.ring.avail_event() == 1  # the device wants a kick once entry 1 is written
    queue.add([b"b"], [])
    assert tracker.poll().avail_notification_due is True
    assert queue.kick() is True
    device.disable_notifications()  # avail_event stays at 1... then the device pops without updating it
    device.pop()
    queue.add([b"c"], [])
    assert queue.kick() is False and queue.ring.avail_event() == 1
    changes = tracker.poll()
    assert changes.avail_notification_due is False
    # used side: the driver asks for a notification only after the 2nd used buffer
    queue.ring.set_used_event(1)
    device.push(chain, 0)
    assert device.should_notify() is False
    assert tracker.poll().used_notification_due is False
    device.push(device.in_flight[next(iter(device.in_flight))], 0)
    assert device.should_notify() is True
    assert tracker.poll().used_notification_due is True
    state = tracker.state
    assert state.used_event == 1 and state.avail_event == 1


def test_driver_get_used_moves_used_event():
    _guest, queue, _, device = setup(features=EVENT_IDX)
    for _ in range(3):
        queue.add([b"a"], [])
    for chain in device.pop_all():
        device.push(chain, 0)
    assert len(queue.get_used()) == 3
    assert queue.ring.used_event() == 3  # next notification after the next used buffer


# -- ring-level anomalies, one by one -----------------------------------------------------------


def test_avail_index_ahead_of_used_by_more_than_the_queue_size():
    _guest, queue, tracker, _ = setup(size=4)
    queue.add([b"a"], [])
    tracker.poll()
    queue.set_avail_idx(6)  # used idx 0: 6 pending in a ring of 4
    changes = tracker.poll()
    assert codes(changes) == [A.AVAIL_IDX_AHEAD]
    assert changes.anomalies[0].section == "virtio 1.4, 2.7.13" and changes.anomalies[0].queue == 0
    assert changes.avail == []  # nothing sensible to walk
    assert tracker.poll().empty  # reported once while it stays so


def test_avail_index_decremented():
    _guest, queue, tracker, _ = setup(size=4)
    queue.add([b"a"], [])
    queue.add([b"b"], [])
    tracker.poll()
    queue.set_avail_idx(1)
    changes = tracker.poll()
    assert A.AVAIL_IDX_AHEAD in codes(changes)
    assert any("decremented" in a.message for a in changes.anomalies)


def test_used_id_not_in_flight():
    _guest, queue, tracker, device = setup()
    head = queue.add([b"a"], [])
    tracker.poll()
    device.pop()
    device.push(5, 0)  # 5 was never made available
    changes = tracker.poll()
    assert codes(changes) == [A.USED_ID_NOT_IN_FLIGHT]
    assert changes.used[0].chain is None and changes.anomalies[0].id == 5
    assert list(tracker.in_flight) == [head]


def test_used_length_larger_than_the_writable_bytes():
    _guest, queue, tracker, device = setup()
    queue.add([b"hdr"], [16])
    tracker.poll()
    device.push(device.pop(), 17)
    changes = tracker.poll()
    assert codes(changes) == [A.USED_LEN_TOO_LARGE]
    assert changes.anomalies[0].section == "virtio 1.4, 2.7.8.2"
    assert changes.used[0].chain is not None and changes.used[0].len == 17


def test_head_made_available_again_while_in_flight():
    _guest, queue, tracker, _ = setup()
    head = queue.add([b"a"], [])
    tracker.poll()
    queue.expose(head)
    changes = tracker.poll()
    assert codes(changes) == [A.HEAD_REUSED_IN_FLIGHT]
    assert changes.avail[0].anomalies[0].code == A.HEAD_REUSED_IN_FLIGHT
    assert changes.anomalies[0].section == "virtio 1.4, 2.7.13.1"
    assert len(tracker.in_flight) == 1


def test_descriptor_of_a_chain_in_flight_reused_in_a_new_chain():
    _guest, queue, tracker, _ = setup()
    head = queue.add([b"a", b"b"], [])  # descriptors 0 -> 1
    tracker.poll()
    second = queue.ring.desc(head)[3]
    queue.write_desc(5, 0x1000, 4, 1, second)  # a new chain 5 -> 1: 1 is still in flight
    queue.expose(5)
    changes = tracker.poll()
    assert codes(changes) == [A.DESC_REUSED_IN_FLIGHT]
    assert changes.anomalies[0].id == second


def test_used_index_ahead_of_what_was_made_available():
    _guest, queue, tracker, device = setup()
    queue.add([b"a"], [])
    tracker.poll()
    device.pop()
    queue.ring.set_used_elem(0, 0, 0)
    queue.ring.set_used_idx(3)
    changes = tracker.poll()
    assert codes(changes)[0] == A.USED_IDX_AHEAD  # not AVAIL_IDX_AHEAD: the device is ahead
    assert A.AVAIL_IDX_AHEAD not in codes(changes)
    assert codes(changes).count(A.USED_ID_NOT_IN_FLIGHT) == 2


def test_reserved_flag_bits():
    _guest, queue, tracker, _ = setup()
    queue.ring.set_avail_flags(0x4)
    assert codes(tracker.poll()) == [A.EVENT_FLAGS_INVALID]
    assert tracker.poll().empty


def test_unmapped_rings_are_reported_once_and_never_raise():
    memory = GuestMemory.from_bytes(bytearray(0x1000))
    config = QueueConfig(0, 8, 0x0, 0x80, 0x9000)  # the used ring is outside memory
    tracker = RingTracker(config, memory)
    assert codes(tracker.poll()) == [A.RING_UNMAPPED]
    assert tracker.poll().empty
    assert codes(snapshot(config, memory)) == [A.RING_UNMAPPED]


def test_misaligned_ring_is_an_anomaly_and_a_bad_size_an_error():
    guest = GuestDriver.in_buffer(1 << 16)
    config = QueueConfig(0, 8, 0x1008, 0x2001, 0x3000)
    tracker = RingTracker(config, guest.memory)
    assert codes(tracker.poll())[0] == A.RING_MISALIGNED
    with pytest.raises(VqtraceError, match="power of 2"):
        RingTracker(QueueConfig(0, 6, 0, 0x100, 0x200), guest.memory)
    with pytest.raises(VqtraceError):
        snapshot(QueueConfig(0, 0, 0, 0x100, 0x200), guest.memory)


# -- starting mid-flight, snapshots --------------------------------------------------------------


def test_attaching_to_a_busy_queue_seeds_the_in_flight_set():
    guest, queue, _, device = setup()
    ids = [queue.add([b"a"], [4]) for _ in range(3)]
    device.push(device.pop(), 4)  # the first is done before the tracer attaches
    tracker = RingTracker(queue.config, guest.memory)
    assert list(tracker.in_flight) == ids[1:]
    assert tracker.poll().empty  # nothing new
    for chain in device.pop_all():
        device.push(chain, 4)
    changes = tracker.poll()
    assert [u.id for u in changes.used] == ids[1:] and not changes.anomalies


def test_starting_from_a_vring_base_reports_what_comes_after_it():
    guest, queue, _, _ = setup()
    ids = [queue.add([b"a"], [4]) for _ in range(4)]
    tracker = RingTracker(queue.config, guest.memory, avail_idx=1)  # the device had seen one chain
    assert list(tracker.in_flight) == ids[:1]
    assert [c.id for c in tracker.poll().avail] == ids[1:]


def test_snapshot_of_a_split_ring():
    guest, queue, _, device = setup(features=EVENT_IDX)
    ids = [queue.add([b"a"], [4]) for _ in range(4)]
    device.push(device.pop(), 0)
    snap = snapshot(queue.config, guest.memory)
    assert [c.id for c in snap.in_flight] == ids[1:]
    assert snap.state.avail_idx == 4 and snap.state.used_idx == 1
    assert snap.state.avail_event == 1 and snap.state.used_event == 0
    assert not snap.anomalies and not snap.approximate


@pytest.mark.parametrize("indirect", [False, True])
def test_many_chains_in_one_poll(indirect):
    """A big poll walks its chains together (numpy, vqtrace.rings.batch): same results, same bookkeeping."""
    _guest, queue, tracker, device = setup(size=64, features=INDIRECT)
    ids = [queue.add([b"h%d" % k, b"body"], [8 + k % 3], indirect=indirect) for k in range(20 if indirect else 21)]
    changes = tracker.poll()
    assert [c.id for c in changes.avail] == ids and not changes.anomalies
    assert [c.writable_len for c in changes.avail] == [8 + k % 3 for k in range(len(ids))]
    assert all(c.readable_len == len(b"h%d" % k) + 4 for k, c in enumerate(changes.avail))
    assert [len(c.descriptors) for c in changes.avail] == [4 if indirect else 3] * len(ids)
    # a new chain through a descriptor of the first one, still in flight
    taken = changes.avail[0].descriptors[0].index
    queue.write_desc(63, 0x1000, 4, 1, changes.avail[0].descriptors[-1].index if not indirect else taken)
    queue.expose(63)
    assert [a.code for a in tracker.poll().anomalies] == [A.DESC_REUSED_IN_FLIGHT]
    for chain in device.pop_all()[:len(ids)]:
        device.push(chain, chain.writable_len)
    changes = tracker.poll()
    assert [u.id for u in changes.used][:len(ids)] == ids and not changes.anomalies
