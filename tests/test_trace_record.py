"""The vqtrace record (docs/trace-format.md): struct fast paths against the construct layout, round trips."""

from __future__ import annotations

import contextlib
import dataclasses
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vqtrace.dissectors import DissectError, get_layer
from vqtrace.dissectors import record as layout
from vqtrace.errors import TraceFileError
from vqtrace.events import Direction, Event, EventKind, QueueRole
from vqtrace.model import Anomaly, Chain, Descriptor, UsedElem
from vqtrace.trace.record import decode, encode
from vqtrace.trace.roles import queue_role

CHAIN = Chain(2, 5, 9, [Descriptor(addr=0x1000, len=16, flags=1, index=5, next=6),
                        Descriptor(addr=0x2000, len=512, flags=3, index=6, next=7),
                        Descriptor(addr=0x3000, len=1, flags=2, index=7)])


def fields(data: bytes) -> dict:
    """The header and body fields of a record, through the construct layouts."""
    head = get_layer("record").dissect(data).values()
    body = get_layer(layout.BODY_LAYERS[head["vqtrace.kind"]]).dissect(data[head["vqtrace.hdr_len"]:]).values()
    return {**head, **body}


def test_struct_formats_are_the_construct_layout():
    assert layout.HEADER.size == layout.HEADER_SIZE == 40
    values = (1, 5, 2, 3, 40, 7, 2, 1, 1, 2, 0x1122334455667788, 0x20, 32, 96)
    values_of = fields(layout.HEADER.pack(*values) + bytes(200))
    names = ["version", "kind", "direction", "flags", "hdr_len", "queue", "device_type", "role", "channel", "fds",
             "features", "features_hi", "cdb_size", "sense_size"]
    assert [values_of[f"vqtrace.{n}"] for n in names] == list(values)
    # the body fixed parts: sizes as the layouts declare them
    assert get_layer("record.used").struct.subcons[0].subcon.sizeof() == layout.USED_STRUCT.size
    assert layout.descriptor.sizeof() == layout.DESC_STRUCT.size == layout.DESC_SIZE == 24
    assert layout.CHAIN_STRUCT.size == 16


def test_used_record_round_trip_and_fields():
    event = Event(EventKind.USED, 1_700_000_000_123_456_789, "blk0.q2", 2, Direction.TO_DRIVER,
                  struct.pack("<IIQ", 0, 0, 2048), device_type=2, chain=CHAIN, used=UsedElem(2, 5, 513, 4),
                  written=b"A" * 512 + b"\0", features=1 << 32 | 1 << 69)
    data = encode(event)
    values = fields(data)
    assert values["vqtrace.kind"] == 5 and values["vqtrace.queue"] == 2 and values["vqtrace.flags.queue"] is True
    assert values["vqtrace.role"] == QueueRole.REQUEST
    assert values["vqtrace.features"] == 1 << 32 and values["vqtrace.features_hi"] == 1 << 5
    assert values["vqtrace.used.id"] == 5 and values["vqtrace.used.len"] == 513 and values["vqtrace.used.idx"] == 4
    assert values["vqtrace.chain.ndesc"] == 3 and values["vqtrace.chain.readable_len"] == 16
    assert values["vqtrace.chain.writable_len"] == 513
    assert values["vqtrace.desc.addr"] == [0x1000, 0x2000, 0x3000]
    assert values["vqtrace.desc.flags.write"] == [False, True, True]
    assert values["vqtrace.readable"] == event.data and values["vqtrace.written"] == event.written
    back = decode(data, event.time_ns, event.source)
    assert (back.kind, back.queue, back.direction, back.features, back.device_type) == \
        (EventKind.USED, 2, Direction.TO_DRIVER, event.features, 2)
    assert back.data == event.data and back.written == event.written and back.used == event.used
    assert [tuple(d) for d in back.chain.descriptors] == [tuple(d) for d in CHAIN.descriptors]
    assert (back.chain.id, back.chain.avail_idx) == (5, 9)


@pytest.mark.parametrize("event", [
    Event(EventKind.VHOST_USER, 1, "sock", None, Direction.TO_DEVICE, b"\x01\0\0\0\x01\0\0\0\0\0\0\0", channel=1,
          fds=2),
    Event(EventKind.KICK, 2, "q", 0, Direction.TO_DEVICE, struct.pack("<Q", 3), device_type=1),
    Event(EventKind.CALL, 3, "q", 1, Direction.TO_DRIVER),
    Event(EventKind.AVAIL, 4, "q", 0, Direction.TO_DEVICE, b"xyz", device_type=19, chain=CHAIN, packed=True),
    Event(EventKind.USED, 5, "q", 0, Direction.TO_DRIVER, used=UsedElem(0, 77, 3, 1)),  # no chain: id not in flight
    Event(EventKind.CONFIG, 6, "dev", None, Direction.TO_DRIVER, b"\x01\x02\x03\x04", device_type=2, offset=8),
    Event(EventKind.ANOMALY, 7, "q", 3, anomaly=Anomaly("DESC_LOOP", "virtio 1.4, 2.7.5.2", "loop at 4", 3, 4,
                                                         0x1000)),
    Event(EventKind.ANOMALY, 8, "q", 3, anomaly=Anomaly("X", "s", "m")),
    Event(EventKind.DATA, 9, "snap", 0, data=b"\0" * 14, layer="virtqueue.avail",
          params={"queue_size": 4, "event_idx": 1, "big": 1 << 100}),
], ids=lambda e: e.kind.name)
def test_every_kind_round_trips(event):
    data = encode(event)
    back = decode(data, event.time_ns, event.source)
    assert back.kind == event.kind and back.queue == event.queue and back.direction == event.direction
    assert back.data == event.data and back.channel == event.channel and back.fds == event.fds
    if event.kind is EventKind.USED and event.chain is None:
        assert back.chain is None and back.used == event.used
        assert fields(data)["vqtrace.chain.flags.unknown"] is True
    if event.anomaly is not None:  # the anomaly's queue is the event's
        assert back.anomaly == dataclasses.replace(event.anomaly, queue=event.queue)
    if event.kind is EventKind.CONFIG:
        assert back.offset == 8 and fields(data)["vqtrace.config.data"] == event.data
    if event.kind is EventKind.DATA:
        assert back.layer == "virtqueue.avail" and back.params == event.params
    fields(data)  # the construct layouts take every kind


def test_snaplen_cuts_each_area_and_keeps_the_written_tail():
    event = Event(EventKind.USED, 1, "q", 0, Direction.TO_DRIVER, b"r" * 100, device_type=2, chain=CHAIN,
                  used=UsedElem(0, 5, 100, 0), written=b"w" * 99 + b"\x07")
    values = fields(encode(event, snaplen=16))
    assert values["vqtrace.flags.truncated"] is True
    assert values["vqtrace.readable"] == b"r" * 16 and values["vqtrace.written"] == b"w" * 16
    assert values["vqtrace.written_tail"] == (b"w" * 99 + b"\x07")[-layout.TAIL_SIZE:]
    assert "vqtrace.written_tail" not in fields(encode(event))


def test_later_header_fields_are_skipped_by_hdr_len():
    data = bytearray(encode(Event(EventKind.KICK, 1, "q", 0, data=struct.pack("<Q", 9))))
    data[4:6] = (48).to_bytes(2, "little")
    data[40:40] = b"\xee" * 8  # a version 1.x header with 8 more bytes
    values = fields(bytes(data))
    assert values["vqtrace.hdr_extra"] == b"\xee" * 8 and values["vqtrace.notify.count"] == 9
    assert decode(bytes(data)).data == struct.pack("<Q", 9)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty record"),
    (b"\x07" + bytes(60), "unknown record version 7"),
    (b"\x01\x05" + bytes(10), "shorter than its"),
    (layout.HEADER.pack(1, 5, 0, 1, 40, 0, 2, 1, 0, 0, 0, 0, 0, 0) + b"\x01\x02", "record truncated"),
    (layout.HEADER.pack(1, 9, 0, 0, 40, 0, 0, 0, 0, 0, 0, 0, 0, 0), "unknown event kind 9"),
    (layout.HEADER.pack(1, 2, 0, 0, 200, 0, 0, 0, 0, 0, 0, 0, 0, 0), "bad record header length"),
])
def test_bad_records_are_one_error(data, message):
    with pytest.raises(TraceFileError, match=message):
        decode(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_or_fail_cleanly(data):
    with contextlib.suppress(TraceFileError):
        decode(data)
    for name in ("record", *set(layout.BODY_LAYERS.values())):
        with contextlib.suppress(DissectError):
            get_layer(name).dissect(data)


@pytest.mark.parametrize(("device", "queue", "features", "num_queues", "role"), [
    (2, 0, 0, None, "REQUEST"), (2, 3, 0, None, "REQUEST"),
    (1, 0, 0, None, "RX"), (1, 1, 0, None, "TX"), (1, 2, 1 << 17, None, "CONTROL"), (1, 2, 0, None, "RX"),
    (1, 4, 1 << 17 | 1 << 22, 5, "CONTROL"), (1, 2, 1 << 17 | 1 << 22, 5, "RX"),
    (3, 2, 1 << 1, None, "CONTROL_RX"), (3, 3, 1 << 1, None, "CONTROL_TX"), (3, 5, 1 << 1, None, "TX"),
    (3, 2, 0, None, "UNKNOWN"),
    (8, 0, 0, None, "CONTROL"), (8, 1, 0, None, "EVENT"), (8, 2, 0, None, "REQUEST"),
    (19, 0, 0, None, "RX"), (19, 2, 0, None, "EVENT"), (19, 3, 0, None, "UNKNOWN"),
    (5, 2, 1 << 1, None, "STATS"), (5, 2, 1 << 3, None, "FREE_PAGE"), (5, 2, 0, None, "UNKNOWN"),
    (4, 0, 0, None, "REQUEST"), (26, 0, 0, None, "UNKNOWN"),
])
def test_queue_roles_follow_each_devices_numbering(device, queue, features, num_queues, role):
    # virtio 1.4, 5.1.2 (net), 5.3.2 (console), 5.5.2 (balloon), 5.6.2 (scsi), 5.10.2 (vsock)
    assert queue_role(device, queue, features, num_queues) == layout.ROLES[role]
    event = Event(EventKind.KICK, 1, "q", queue, device_type=device, features=features,
                  params={"num_queues": num_queues} if num_queues else None)
    assert fields(encode(event))["vqtrace.role"] == layout.ROLES[role]
