"""No memory content makes the ring readers hang or crash (DESIGN.md: guest values are hostile)."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqtrace.memory import GuestMemory
from vqtrace.model import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_IN_ORDER,
    VIRTIO_F_INDIRECT_DESC,
    Anomaly,
    Chain,
    Layout,
    QueueConfig,
)
from vqtrace.rings import KINDS, DeviceQueue, RingTracker, read_readable, snapshot, writable_spans

FUZZ = settings(max_examples=120, deadline=5000, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.data_too_large])
BASE = 0x1000
FEATURES = st.sets(st.sampled_from([VIRTIO_F_EVENT_IDX, VIRTIO_F_IN_ORDER, VIRTIO_F_INDIRECT_DESC]))


@st.composite
def hostile(draw):
    layout = draw(st.sampled_from([Layout.SPLIT, Layout.PACKED]))
    size = draw(st.sampled_from([1, 2, 4, 8, 16]) if layout is Layout.SPLIT else st.integers(1, 20))
    memory_size = draw(st.sampled_from([0x400, 0x1000]))
    raw = draw(st.binary(min_size=memory_size, max_size=memory_size))
    # Bias the bytes towards small numbers so that flags, indices and addresses are often "almost right".
    pokes = draw(st.lists(st.tuples(st.integers(0, memory_size - 2), st.integers(0, 0xFFFF)), max_size=64))
    data = bytearray(raw)
    for at, value in pokes:
        data[at:at + 2] = value.to_bytes(2, "little")
    desc = BASE + draw(st.integers(0, 0x100)) * 16
    driver = BASE + draw(st.integers(0, memory_size // 2)) // 4 * 4
    device = BASE + draw(st.integers(0, memory_size)) // 4 * 4
    features = sum(1 << bit for bit in draw(FEATURES))
    config = QueueConfig(0, size, desc, driver, device, layout, features)
    mutations = draw(st.lists(st.tuples(st.integers(0, memory_size - 2), st.integers(0, 0xFFFF)), max_size=8))
    return config, data, mutations


def _check(changes_or_chains) -> None:
    for item in changes_or_chains:
        if isinstance(item, Anomaly):
            assert item.code in KINDS and item.section.startswith("virtio 1.4, ")
        elif isinstance(item, Chain):
            for anomaly in item.anomalies:
                assert anomaly.code in KINDS


@FUZZ
@given(hostile())
def test_trackers_and_snapshots_survive_any_memory(case):
    config, data, mutations = case
    memory = GuestMemory()
    memory.add_buffer(BASE, data)
    snap = snapshot(config, memory)
    _check(snap.anomalies)
    _check(snap.in_flight)
    for start in ({}, {"avail_idx": 0, "used_idx": 0}):
        tracker = RingTracker(config, memory, **start)
        for at, value in [(0, 0), *mutations]:
            data[at:at + 2] = value.to_bytes(2, "little")
            changes = tracker.poll()
            _check(changes.anomalies)
            _check(changes.avail)
            assert len(changes.avail) <= config.size and len(changes.used) <= config.size * 2
            for chain in changes.avail:
                assert len(chain.descriptors) <= 2 * config.size + 1
                assert chain.readable_len >= 0 and chain.writable_len >= 0
                if chain.ok:
                    read_readable(memory, chain, limit=64)  # an anomaly-free chain's buffers are all mapped
                    assert all(memory.contains(a, n) or n == 0 for a, n in writable_spans(chain))
        assert len(tracker.in_flight) <= 1 << 16


@FUZZ
@given(hostile())
def test_device_queue_survives_any_memory(case):
    config, data, mutations = case
    memory = GuestMemory()
    memory.add_buffer(BASE, data)
    device = DeviceQueue(config, memory)
    for at, value in [(0, 0), *mutations]:
        data[at:at + 2] = value.to_bytes(2, "little")
        chains = device.pop_all()
        assert len(chains) <= config.size
        for chain in chains:
            # IN_ORDER push of a chain that is not the oldest raises ValueError: the caller's mistake
            with contextlib.suppress(ValueError):
                device.push(chain, chain.writable_len)
        device.should_notify()
        device.enable_notifications()
        device.disable_notifications()
    for anomaly in device.anomalies:
        assert anomaly.code in KINDS
