"""The record caches and the writer's one-struct framing write the bytes of the plain encoding.

The reference is ``pcapng.enhanced_packet(iface, time, encode(event, snaplen, cached=False))``: every
header field and every chain packed again, the block built by the generic pcapng builder.
"""

from __future__ import annotations

import gc
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqtrace.driver import GuestDriver
from vqtrace.events import Direction, Event, EventKind
from vqtrace.model import VIRTIO_F_VERSION_1, Anomaly, Chain, Descriptor, Layout, UsedElem
from vqtrace.rings import DeviceQueue, write_response
from vqtrace.trace import pcapng
from vqtrace.trace import record as R
from vqtrace.trace import writer as W
from vqtrace.trace.reader import TraceReader
from vqtrace.trace.record import encode
from vqtrace.trace.samples import iter_bulk, sample_events
from vqtrace.trace.writer import TraceWriter

T = 1_700_000_000_000_000_000


def reference(iface: int, event: Event, snaplen: int = 0) -> bytes:
    return pcapng.enhanced_packet(iface, event.time_ns, encode(event, snaplen, cached=False))


def _plain_block(event: Event, iface: int, snaplen: int) -> bytes:
    return reference(iface, event, snaplen)


@pytest.fixture(autouse=True)
def _fresh_caches():
    R.clear_caches()
    yield
    R.clear_caches()


def chain(queue: int, head: int, ndesc: int = 3, *, wrap: bool = False, indirect: bool = False) -> Chain:
    descs = [Descriptor(addr=0x10000 * head + 0x100 * i, len=16 << i, flags=(1 if i < ndesc - 1 else 0) | (
        2 if i >= 1 else 0), index=(head + i) % 256, next=(head + i + 1) % 256, id=head if wrap else 0,
        in_indirect=indirect and i > 0) for i in range(ndesc)]
    return Chain(queue, head, head + 7, descs, wrap=wrap)


def live_events(layout: Layout, requests: int = 48) -> list[Event]:
    """What live capture writes: a kick, the chains a TrackerTap found, a call, the used chains."""
    from vqtrace.vhost.tap import TrackerTap

    guest = GuestDriver.in_buffer(4 << 20)
    queue = guest.queue(0, 64, layout=layout, features=1 << VIRTIO_F_VERSION_1, device_type=2)
    config = queue.config
    device = DeviceQueue(config, guest.memory)
    tap = TrackerTap(config, guest.memory, 0, f"blk-{layout.name}")
    out: list[Event] = []
    t = T
    for sector in range(0, requests, 4):
        for k in range(4):
            header = struct.pack("<IIQ", (sector + k) % 2, 0, sector + k)
            if (sector + k) % 2:
                queue.add([header, bytes(range(256)) * 2], [1], indirect=k == 3)
            else:
                queue.add([header], [512, 1], indirect=k == 3)
        t += 1000
        out.append(Event(EventKind.KICK, t, tap.source, 0, Direction.TO_DEVICE, (1).to_bytes(8, "little"),
                         device_type=2, features=config.features))
        out.extend(tap.poll(t))
        for found in device.pop_all():
            device.push(found, write_response(guest.memory, found, bytes(found.writable_len)))
        t += 1000
        out.append(Event(EventKind.CALL, t, tap.source, 0, Direction.TO_DRIVER, b"", device_type=2,
                         features=config.features, packed=layout is Layout.PACKED))
        out.extend(tap.poll(t))
        queue.get_used()
    return out


def varied_events() -> list[Event]:
    """Every kind; several sources, queues, devices, features; chains reused, unknown, long, odd."""
    a, b, c = chain(0, 1), chain(1, 9, 5, wrap=True), chain(2, 33, 2, indirect=True)
    big = chain(0, 40, 70)  # more descriptors than one chain struct takes
    odd = Chain(3, 0x1_0005, 0x2_0001, [Descriptor(addr=1 << 70, len=1 << 33, flags=0x1_0002, index=0x1_0000,
                                                   next=5, id=7)])  # values over their fields' range: masked
    hi = 1 << 32 | 1 << 69
    out = [
        Event(EventKind.VHOST_USER, T, "sock", None, Direction.TO_DEVICE, b"\x01\0\0\0\x01\0\0\0\0\0\0\0",
              channel=1, fds=300),
        Event(EventKind.VHOST_USER, T + 1, "sock", None, Direction.TO_DRIVER, bytes(40), params={"xen_mmap": 1}),
        Event(EventKind.VHOST_USER, T + 1, "sock", None, Direction.TO_DRIVER, bytes(40), params={"xen_mmap": 0}),
        Event(EventKind.VHOST_USER, T + 1, "sock", None, Direction.TO_DRIVER, bytes(40), params={"xen_mmap": 1}),
        Event(EventKind.KICK, T + 2, "q0", 0, Direction.TO_DEVICE, struct.pack("<Q", 3), device_type=2),
        Event(EventKind.KICK, T + 3, "q0", 0, Direction.TO_DEVICE, struct.pack("<Q", 3) + b"more", device_type=2),
        Event(EventKind.KICK, T + 4, "q0", 0, Direction.TO_DEVICE, b"\x01\x02", device_type=2),
        Event(EventKind.CALL, T + 5, "q1", 1, Direction.TO_DRIVER, device_type=1, features=hi, truncated=True),
        Event(EventKind.CALL, T + 6, "q1", 1, Direction.TO_DRIVER, device_type=1, features=hi, role=4),
        Event(EventKind.AVAIL, T + 7, "q0", 0, Direction.TO_DEVICE, b"abc", device_type=2, chain=a),
        Event(EventKind.AVAIL, T + 8, "q1", 1, Direction.TO_DEVICE, bytes(100), device_type=1, chain=b, packed=True,
              features=hi),
        Event(EventKind.AVAIL, T + 9, "q2", 2, Direction.TO_DEVICE, b"x" * 3, device_type=8, chain=c,
              params={"cdb_size": 16, "sense_size": 40}),
        Event(EventKind.AVAIL, T + 9, "q2", 2, Direction.TO_DEVICE, b"x" * 3, device_type=8, chain=c,
              params={"cdb_size": 16, "sense_size": 41}),  # the same chain again, another context
        Event(EventKind.AVAIL, T + 10, "q0", 0, Direction.TO_DEVICE, b"", device_type=2, chain=big),
        Event(EventKind.AVAIL, T + 11, "q3", 3, Direction.TO_DEVICE, b"o", chain=odd),
        Event(EventKind.AVAIL, T + 11, "q3", 3, Direction.TO_DEVICE, b"o", chain=Chain(
            3, -1, 0x1_0006, [Descriptor(addr=1, len=2, flags=0, index=0)], readable_len=1 << 32)),  # the chain's own
        Event(EventKind.USED, T + 12, "q0", 0, Direction.TO_DRIVER, b"abc", device_type=2, chain=a,
              used=UsedElem(0, 1, 513, 4), written=b"w" * 513),
        Event(EventKind.USED, T + 13, "q0", 0, Direction.TO_DRIVER, b"abc", device_type=2, chain=a,
              used=UsedElem(0, 1, 513, 4), written=b"w" * 513),  # written twice: its entry is gone
        Event(EventKind.USED, T + 14, "q1", 1, Direction.TO_DRIVER, bytes(100), device_type=1, chain=b,
              used=UsedElem(1, 9, 0, 0x1_0003), packed=True, features=hi),
        Event(EventKind.USED, T + 15, "q2", 2, Direction.TO_DRIVER, b"y", device_type=8, chain=chain(2, 34),
              used=UsedElem(2, 34, 7, 1), written=b"z" * 7, truncated=True),  # never made available
        Event(EventKind.USED, T + 16, "q0", 0, Direction.TO_DRIVER, used=UsedElem(0, 77, 3, 1)),  # no chain
        Event(EventKind.USED, T + 17, "q0", 0, Direction.TO_DRIVER, b"r" * 9000, chain=big,
              used=UsedElem(0, 40, 9000, 2), written=b"w" * 9000),  # longer than the cached framings
        Event(EventKind.USED, T + 18, "q3", 3, Direction.TO_DRIVER, memoryview(b"view"), chain=odd,
              used=UsedElem(3, 5, 1, 1), written=bytearray(b"!")),  # other buffer types
        Event(EventKind.CONFIG, T + 19, "dev", None, Direction.TO_DRIVER, b"\x01\x02\x03\x04", device_type=2,
              offset=8),
        Event(EventKind.ANOMALY, T + 20, "q0", 0, anomaly=Anomaly("DESC_LOOP", "virtio 1.4, 2.7.5.2", "loop", 0, 4,
                                                                   0x1000)),
        Event(EventKind.DATA, T + 21, "snap", 0, data=bytes(14), layer="virtqueue.avail",
              params={"queue_size": 4, "event_idx": 1, "big": 1 << 100}),
        Event(EventKind.KICK, T + 22, "net", 4, device_type=1, features=1 << 17 | 1 << 22,
              params={"num_queues": 5}),  # the role depends on a parameter
        Event(EventKind.KICK, T + 23, "net", 4, device_type=1, features=1 << 17 | 1 << 22,
              params={"num_queues": 7}),
        Event(EventKind.AVAIL, (1 << 64) - 1, "q0", 0x1_0000, Direction.TO_DEVICE, b"q", chain=chain(0, 2)),
    ]
    return out + sample_events() + list(iter_bulk(50))


ALL = pytest.mark.parametrize("snaplen", [0, 8, 600, 1 << 16])


@ALL
def test_cached_blocks_and_records_equal_the_plain_encoding(tmp_path, snaplen):
    events = varied_events() + live_events(Layout.SPLIT) + live_events(Layout.PACKED)
    with TraceWriter(tmp_path / "t.pcapng", snaplen=snaplen) as writer:
        for event in events:
            iface = writer.interface(event.source)
            assert writer.block(event) == reference(iface, event, snaplen), event
            assert encode(event, snaplen) == encode(event, snaplen, cached=False), event


@ALL
def test_a_trace_is_the_same_file_with_and_without_the_caches(tmp_path, monkeypatch, snaplen):
    events = varied_events() + live_events(Layout.SPLIT) + live_events(Layout.PACKED)
    for name in ("fast", "plain"):
        if name == "plain":
            monkeypatch.setattr(W, "_block", _plain_block)
        with TraceWriter(tmp_path / f"{name}.pcapng", snaplen=snaplen) as writer:
            writer.write_many(events[:40])
            for event in events[40:80]:
                writer.write(event)
            for k in range(80, len(events), 9):  # live capture: a wakeup at a time
                writer.write_many(events[k:k + 9])
            writer.write_many(events)  # every chain again
    fast, plain = (tmp_path / "fast.pcapng").read_bytes(), (tmp_path / "plain.pcapng").read_bytes()
    assert fast == plain
    with TraceReader(tmp_path / "fast.pcapng") as reader:
        assert len(reader) == 2 * len(events) and not reader.problems


def test_tiny_caches_evict_and_the_bytes_do_not_change(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "HEADERS_MAX", 2)
    monkeypatch.setattr(R, "CHAINS_MAX", 3)
    monkeypatch.setattr(W, "_FRAMES_MAX", 2)
    monkeypatch.setattr(W, "_AVAIL_FRAMES", {})
    monkeypatch.setattr(W, "_USED_FRAMES", {})
    events = varied_events() + live_events(Layout.SPLIT)
    with TraceWriter(tmp_path / "t.pcapng") as writer:
        for event in events:
            assert writer.block(event) == reference(writer.interface(event.source), event)
            assert len(R.HEADERS) <= 2 and len(R.CHAINS) <= 3
            assert len(W._AVAIL_FRAMES) <= 2 and len(W._USED_FRAMES) <= 2


def test_a_chain_is_kept_from_its_avail_record_to_its_used_record():
    one = chain(0, 3)
    avail = Event(EventKind.AVAIL, T, "q", 0, Direction.TO_DEVICE, b"h", device_type=2, chain=one)
    used = Event(EventKind.USED, T, "q", 0, Direction.TO_DRIVER, b"h", device_type=2, chain=one,
                 used=UsedElem(0, 3, 1, 0), written=b"\0")
    with TraceWriter(os.devnull) as writer:
        writer.block(avail)
        assert R.CHAINS[id(one)] == (one, R.pack_chain(one))
        writer.block(used)
        assert id(one) not in R.CHAINS  # the chain's last record
        encode(avail)
        assert id(one) in R.CHAINS
        assert encode(used) == encode(used, cached=False) and id(one) not in R.CHAINS


def test_a_cached_chain_stays_alive_so_its_id_names_no_other_chain():
    first = chain(0, 3, 2)
    encode(Event(EventKind.AVAIL, T, "q", 0, chain=first))
    key = id(first)
    del first
    gc.collect()
    others = [chain(0, 5, 4) for _ in range(200)]  # none of them can take the kept chain's address
    assert key in R.CHAINS and all(id(o) != key for o in others)
    for other in others:
        event = Event(EventKind.USED, T, "q", 0, chain=other, used=UsedElem(0, 5, 0, 0))
        assert encode(event) == encode(event, cached=False)


EVENT = st.builds(
    lambda kind, queue, direction, device, features, packed, truncated, role, head, ndesc, data, written, t:
    Event(kind, t, f"s{queue}", queue, direction, data, device, chain=chain(queue or 0, head, ndesc)
          if kind in (EventKind.AVAIL, EventKind.USED) else None,
          used=UsedElem(queue or 0, head, len(written), head) if kind is EventKind.USED else None,
          written=written if kind is EventKind.USED else b"", features=features, packed=packed, truncated=truncated,
          role=role, anomaly=Anomaly("X", "s", "m") if kind is EventKind.ANOMALY else None),
    st.sampled_from(list(EventKind)), st.one_of(st.none(), st.integers(0, 5)), st.sampled_from(list(Direction)),
    st.sampled_from([0, 1, 2, 3, 8, 19]), st.sampled_from([0, 1, 1 << 17, 1 << 32 | 1 << 69]), st.booleans(),
    st.booleans(), st.one_of(st.none(), st.integers(0, 12)), st.integers(0, 255), st.integers(1, 6),
    st.binary(max_size=40), st.binary(max_size=40), st.integers(0, (1 << 64) - 1))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(EVENT, min_size=1, max_size=30), st.sampled_from([0, 4, 32]))
def test_any_events_cached_equal_plain(tmp_path, events, snaplen):
    events = events + events  # every context and chain met again
    with TraceWriter(tmp_path / "t.pcapng", snaplen=snaplen) as writer:
        for event in events:
            assert writer.block(event) == reference(writer.interface(event.source), event, snaplen)
