"""The packed-ring tracker (virtio 1.4, 2.8): wrap counters, buffer ids, skipped descriptors, events, anomalies."""

from __future__ import annotations

import pytest

from vqtrace.dissectors.virtqueue import VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_USED, VIRTQ_DESC_F_WRITE
from vqtrace.driver import GuestDriver
from vqtrace.model import VIRTIO_F_EVENT_IDX, VIRTIO_F_IN_ORDER, Layout
from vqtrace.rings import DeviceQueue, PackedTracker, RingTracker, snapshot
from vqtrace.rings import anomalies as A
from vqtrace.rings.chain import careful_packed_chain
from vqtrace.rings.notify import RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE, packed_need_event
from vqtrace.rings.packed import PackedRing, event_desc

EVENT_IDX, IN_ORDER = 1 << VIRTIO_F_EVENT_IDX, 1 << VIRTIO_F_IN_ORDER


def setup(size: int = 8, features: int = 0):
    guest = GuestDriver.in_buffer(4 << 20)
    queue = guest.queue(0, size, layout=Layout.PACKED, features=features)
    return guest, queue, RingTracker(queue.config, guest.memory), DeviceQueue(queue.config, guest.memory)


def codes(changes) -> list[str]:
    return [a.code for a in changes.anomalies]


def test_tracker_is_the_packed_one_and_starts_at_slot_0_wrap_1():
    _, _, tracker, _ = setup()
    assert isinstance(tracker, PackedTracker)
    state = tracker.state
    assert (state.avail_idx, state.avail_wrap, state.used_idx, state.used_wrap) == (0, True, 0, True)


def test_lists_made_available_and_used():
    _guest, queue, tracker, device = setup()
    ids = [queue.add([b"hdr"], [32]), queue.add([b"x"], [])]
    changes = tracker.poll()
    assert [c.id for c in changes.avail] == ids and [c.avail_idx for c in changes.avail] == [0, 2]
    assert not changes.anomalies and changes.avail_notification_due is True
    chains = device.pop_all()
    device.push(chains[0], 20)
    changes = tracker.poll()
    assert [(u.id, u.len, u.elem.used_idx, u.elem.wrap) for u in changes.used] == [(ids[0], 20, 0, True)]
    # the used descriptor overwrote slot 0 and the device skipped slot 1 (2.8.6)
    _, length, buffer_id, flags = queue.ring.desc(0)
    assert (buffer_id, length) == (ids[0], 20)
    assert flags & VIRTQ_DESC_F_AVAIL and flags & VIRTQ_DESC_F_USED and flags & VIRTQ_DESC_F_WRITE
    assert tracker.state.used_idx == 2
    device.push(chains[1], 0)
    changes = tracker.poll()
    assert [(u.id, u.len, u.elem.used_idx) for u in changes.used] == [(ids[1], 0, 2)]
    assert not queue.ring.desc(2)[3] & VIRTQ_DESC_F_WRITE  # nothing written: WRITE clear, len reserved (2.8.4)
    assert [u.id for u in queue.get_used()] == ids


@pytest.mark.parametrize("size", [5, 8])
def test_wrap_counters_over_many_laps_with_skipped_descriptors(size):
    """Lists of 1-3 descriptors over 12 laps: each side's wrap counter flips at the ring end (2.8.1)."""
    _guest, queue, tracker, device = setup(size=size)
    wraps, total = set(), 0
    for k in range(4 * size * 3):
        n = 1 + k % 3
        if queue.num_free < n:
            for chain in device.pop_all():
                device.push(chain, chain.writable_len)
            changes = tracker.poll()
            assert not changes.anomalies
            queue.get_used()
        readable = [bytes([k & 0xFF])] * (n - 1)
        ident = queue.add(readable, [8])
        changes = tracker.poll()
        assert [c.id for c in changes.avail] == [ident] and not changes.anomalies
        assert changes.avail[0].ring_len == n
        wraps.add(changes.avail[0].wrap)
        total += n
    assert wraps == {True, False}
    assert total > 10 * size
    state = tracker.state
    assert (state.avail_idx, state.avail_wrap) == (queue.next_avail, queue.avail_wrap)


def test_out_of_order_completion_by_buffer_id():
    _guest, queue, tracker, device = setup()
    ids = [queue.add([b"%d" % k], [4]) for k in range(3)]
    tracker.poll()
    chains = device.pop_all()
    device.push(chains[2], 4)  # used descriptor goes to slot 0, whoever was there (2.8: in completion order)
    device.push(chains[0], 1)
    changes = tracker.poll()
    assert [(u.id, u.len, u.elem.used_idx) for u in changes.used] == [(ids[2], 4, 0), (ids[0], 1, 2)]
    assert list(tracker.in_flight) == [ids[1]]
    assert [u.id for u in queue.get_used()] == [ids[2], ids[0]]


def test_in_order_one_used_descriptor_for_a_batch():
    _guest, queue, tracker, device = setup(size=8, features=IN_ORDER)
    ids = [queue.add([b"a", b"b"], [8]) for _ in range(2)] + [queue.add([b"c"], [])]
    tracker.poll()
    chains = device.pop_all()
    device.push_batch([(chains[0], 8), (chains[1], 3)])
    # one used descriptor in slot 0 with the batch's last id; the device skips all 6 slots (2.8.8)
    assert queue.ring.desc(0)[2] == ids[1] and device.used_idx == 6
    changes = tracker.poll()
    assert [(u.id, u.len, u.elem.implied) for u in changes.used] == [(ids[0], 8, True), (ids[1], 3, False)]
    assert tracker.state.used_idx == 6 and not changes.anomalies
    assert [(u.id, u.implied) for u in queue.get_used()] == [(ids[0], True), (ids[1], False)]


def test_multi_buffer_request_first_descriptor_written_last(monkeypatch):
    """2.8.9: the first buffer's used descriptor is marked used after the rest."""
    _guest, queue, tracker, device = setup()
    ids = [queue.add([], [64]) for _ in range(3)]
    chains = device.pop_all()
    writes: list[int] = []
    original = PackedRing.set_flags

    def spy(self, slot, flags):
        writes.append(slot)
        original(self, slot, flags)

    monkeypatch.setattr(PackedRing, "set_flags", spy)
    device.push_batch([(c, 64) for c in chains])
    assert writes == [2, 1, 0]
    changes = tracker.poll()
    assert [u.id for u in changes.used] == ids


# -- event suppression (2.8.10, 2.8.14) -------------------------------------------------------------


def test_disable_and_enable_events():
    _guest, queue, tracker, device = setup()
    device.disable_notifications()
    assert queue.ring.device_event() == (0, RING_EVENT_FLAGS_DISABLE)
    queue.add([b"a"], [])
    assert queue.kick() is False and tracker.poll().avail_notification_due is False
    assert device.enable_notifications() is True  # a list is already waiting
    queue.disable_used_notifications()
    device.push(device.pop(), 0)
    assert device.should_notify() is False
    assert tracker.poll().used_notification_due is False


def test_event_idx_descriptor_events():
    _guest, queue, _tracker, device = setup(size=4, features=EVENT_IDX)
    queue.add([b"a"], [])
    device.pop()  # the device asks for an event at its next slot (1, wrap 1)
    assert queue.ring.device_event() == (event_desc(1, True), RING_EVENT_FLAGS_DESC)
    queue.add([b"b", b"c"], [])  # slots 1-2: slot 1 is the one named
    assert queue.kick() is True
    device.disable_notifications()
    device.enable_notifications()  # event at slot 3 now
    queue.ring.set_device_event(event_desc(0, False), RING_EVENT_FLAGS_DESC)  # slot 0 of the next lap
    queue.add([b"d"], [])  # slot 3: not yet
    assert queue.kick() is False
    # the driver asks for a used event at slot 2 (the end of the second list)
    queue.ring.set_driver_event(event_desc(1, True), RING_EVENT_FLAGS_DESC)
    chains = device.pop_all()
    assert device.should_notify() is False
    device.push(device.in_flight[0], 0)
    assert device.should_notify() is False  # slot 0 written, the event is for slot 1
    device.push(chains[0], 0)  # slots 1-2
    assert device.should_notify() is True


def test_packed_need_event_across_the_ring_end():
    # 8 slots: the writer went from slot 6 (wrap 1) to slot 2 (wrap 0): slots 6, 7, 0, 1 were written
    assert packed_need_event(event_idx=True, flags=2, desc=event_desc(7, True), size=8, old=-2, new=2, wrap=False)
    assert packed_need_event(event_idx=True, flags=2, desc=event_desc(1, False), size=8, old=-2, new=2, wrap=False)
    assert not packed_need_event(event_idx=True, flags=2, desc=event_desc(2, False), size=8, old=-2, new=2,
                                 wrap=False)
    assert not packed_need_event(event_idx=True, flags=2, desc=event_desc(5, True), size=8, old=-2, new=2,
                                 wrap=False)
    assert packed_need_event(event_idx=False, flags=2, desc=0, size=8, old=0, new=1, wrap=True)  # DESC: ENABLE
    assert not packed_need_event(event_idx=True, flags=0, desc=0, size=8, old=1, new=1, wrap=True)


# -- anomalies -------------------------------------------------------------------------------------------


def test_used_id_not_in_flight_and_used_len_too_large():
    _guest, queue, tracker, device = setup()
    queue.add([b"a"], [8])
    tracker.poll()
    chain = device.pop()
    device.push(6, 0)
    changes = tracker.poll()
    assert codes(changes) == [A.USED_ID_NOT_IN_FLIGHT] and changes.anomalies[0].section == "virtio 1.4, 2.8.6"
    device.push(chain, 9)
    changes = tracker.poll()
    assert codes(changes) == [A.USED_LEN_TOO_LARGE] and changes.anomalies[0].section == "virtio 1.4, 2.8.4"


def test_buffer_id_reused_while_in_flight():
    _guest, queue, tracker, _ = setup()
    first = queue.add([b"a"], [])
    queue.add([b"b"], [], hook=lambda specs: setattr(specs[0], "id", first))
    changes = tracker.poll()
    assert codes(changes) == [A.HEAD_REUSED_IN_FLIGHT]
    assert changes.anomalies[0].section == "virtio 1.4, 2.8.21.1" and changes.anomalies[0].id == first


def test_used_descriptor_ahead_of_the_device_position():
    _guest, queue, tracker, _ = setup()
    queue.add([b"a"], [])
    queue.add([b"b"], [])
    tracker.poll()
    queue.ring.write_desc(2, 0, 0, 3, VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED)  # "used" with wrap 1, device at 0
    changes = tracker.poll()
    assert codes(changes) == [A.PACKED_WRAP_MISMATCH]
    assert changes.anomalies[0].section == "virtio 1.4, 2.8.1"
    assert tracker.poll().empty  # reported once


@pytest.mark.parametrize("lengths, first", [([1, 1, 1], 0), ([3, 1, 2], 0), ([2, 3, 2], 0), ([2, 2, 3], 4)])
def test_lists_made_available_and_used_between_two_polls(lengths, first):
    """The used descriptor overwrote the list's first slot before the tracker looked: no anomaly, no stall.

    (Less than a lap of the ring: a tracker a whole lap behind cannot tell the new lap from the old.)
    """
    _guest, queue, tracker, device = setup(size=8)
    for _ in range(first):  # start elsewhere than slot 0, so that the lists cross the ring end
        queue.add([b"w"], [])
        device.push(device.pop(), 0)
        queue.get_used()
    tracker.poll()
    for n in lengths:  # each list: added, used and returned before any poll; buffer ids get reused
        queue.add([b"x"] * (n - 1), [4])
        device.push(device.pop(), 4)
        queue.get_used()
    later = queue.add([], [4])  # with the lists: at most a lap of the ring
    changes = tracker.poll()
    assert not changes.anomalies
    assert changes.missed == len(lengths) and [u.chain for u in changes.used] == [None] * len(lengths)
    assert [u.len for u in changes.used] == [4] * len(lengths)
    assert [c.id for c in changes.avail] == [later]
    state = tracker.state
    assert (state.avail_idx, state.avail_wrap) == (queue.next_avail, queue.avail_wrap)
    device.push(device.pop(), 2)
    changes = tracker.poll()
    assert [(u.id, u.len) for u in changes.used] == [(later, 2)] and not changes.anomalies


def test_buffer_id_out_of_range_and_reserved_event_flags():
    _guest, queue, tracker, _ = setup()
    queue.add([b"a"], [], hook=lambda specs: setattr(specs[0], "id", 100))
    queue.ring.set_driver_event(0, 3)
    assert sorted(codes(tracker.poll())) == [A.EVENT_FLAGS_INVALID, A.PACKED_ID_RANGE]


# -- snapshots and starting points --------------------------------------------------------------------


def _follow(size, features, steps):
    """Run a driver, device and tracker; return them after ``steps`` (add n / use k) operations."""
    guest, queue, tracker, device = setup(size=size, features=features)
    for op, value in steps:
        if op == "add":
            queue.add([b"r"] * (value - 1), [4])
        elif op == "use":
            chains = [device.pop() for _ in range(value)]
            if features & IN_ORDER:
                device.push_batch([(c, 4) for c in chains])
            else:
                for chain in chains:
                    device.push(chain, 4)
        elif op == "get":
            queue.get_used()
        tracker.poll()
    return guest, queue, tracker, device


SCENARIOS = [
    ([], 0),
    ([("add", 1), ("add", 2)], 0),
    ([("add", 3), ("add", 1), ("use", 1)], 0),  # a used 3-list leaves two stale slots (2.8.6)
    ([("add", 2), ("add", 2), ("add", 1), ("use", 2), ("get", 0), ("add", 3), ("add", 2)], 0),  # wraps
    ([("add", 2), ("add", 1), ("add", 2), ("use", 2)], IN_ORDER),  # a batch: one used descriptor
    ([("add", 4), ("add", 4), ("use", 2), ("get", 0), ("add", 4), ("add", 4)], 0),  # full ring
    ([("add", 4), ("add", 4), ("use", 2), ("get", 0), ("add", 4), ("add", 3), ("use", 1)], 0),
]


@pytest.mark.parametrize("steps, features", SCENARIOS)
def test_snapshot_equals_what_the_tracker_followed(steps, features):
    guest, queue, tracker, device = _follow(8, features, steps)
    snap = snapshot(queue.config, guest.memory)
    assert not snap.anomalies
    assert [c.id for c in snap.in_flight] == list(tracker.in_flight)
    followed = tracker.state
    assert (snap.state.avail_idx, snap.state.avail_wrap) == (followed.avail_idx, followed.avail_wrap)
    if snap.in_flight:
        assert (snap.state.used_idx, snap.state.used_wrap) == (followed.used_idx, followed.used_wrap)
    # a tracker attached now goes on from there
    attached = RingTracker(queue.config, guest.memory)
    assert list(attached.in_flight) == list(tracker.in_flight)
    for chain in device.pop_all():
        device.push(chain, 4)
    assert [u.id for u in attached.poll().used] == [u.id for u in tracker.poll().used]


def test_snapshot_after_out_of_order_completion_is_approximate():
    guest, queue, tracker, device = _follow(8, 0, [("add", 1), ("add", 1), ("add", 1)])
    chains = device.pop_all()
    device.push(chains[2], 4)  # overwrites slot 0 (the first list's head)
    tracker.poll()
    snap = snapshot(queue.config, guest.memory)
    assert snap.approximate
    assert len(snap.in_flight) == 2  # the right count, not necessarily the right lists


def test_starting_at_given_positions():
    guest, queue, _, device = setup()
    ids = [queue.add([b"a"], []) for _ in range(3)]
    device.pop()  # the device is at slot 1
    tracker = RingTracker(queue.config, guest.memory, avail_idx=1, used_idx=0)
    assert list(tracker.in_flight) == ids[:1]
    assert [c.id for c in tracker.poll().avail] == ids[1:]


def test_many_lists_in_one_poll():
    """A big poll scans its lists together (numpy, vqtrace.rings.batch): same results as one by one."""
    guest, queue, tracker, device = setup(size=64, features=1 << 28)  # VIRTIO_F_INDIRECT_DESC
    ids = [queue.add([b"h%d" % k], [8 + k % 3]) for k in range(25)] + [queue.add([b"x"], [], indirect=True)]
    changes = tracker.poll()
    assert [c.id for c in changes.avail] == ids and not changes.anomalies
    assert [c.avail_idx for c in changes.avail] == [*range(0, 50, 2), 50]
    assert [c.writable_len for c in changes.avail] == [8 + k % 3 for k in range(25)] + [0]
    for chain in changes.avail:  # the careful walker, list by list
        want = careful_packed_chain(queue.config, guest.memory, chain.avail_idx, chain.wrap)
        assert [tuple(d) for d in chain.descriptors] == [tuple(d) for d in want.descriptors]
        assert (chain.id, chain.readable_len, chain.writable_len) == (want.id, want.readable_len, want.writable_len)
    for chain in device.pop_all():
        device.push(chain, 1)
    assert [u.id for u in tracker.poll().used] == ids
