"""The record plan (vqtrace.trace.plan): the same fields as the requests' trees, fast, on every device and role."""

from __future__ import annotations

import struct
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqtrace.dissectors.record import ROLES
from vqtrace.events import Direction, Event, EventKind
from vqtrace.model import Chain, Descriptor, UsedElem
from vqtrace.trace.dissect import AVAIL, USED, Dissector
from vqtrace.trace.fast import tree_pairs
from vqtrace.trace.reader import TraceReader
from vqtrace.trace.record import encode
from vqtrace.trace.samples import write_samples

# (device type, queue, role) of every decoded queue kind (virtio 1.4, 5.x.2)
QUEUES = [(2, 0, "REQUEST"), (1, 0, "RX"), (1, 1, "TX"), (1, 2, "CONTROL"), (3, 0, "RX"), (3, 1, "TX"),
          (3, 2, "CONTROL_RX"), (3, 3, "CONTROL_TX"), (4, 0, "REQUEST"), (5, 0, "INFLATE"), (5, 1, "DEFLATE"),
          (5, 2, "STATS"), (5, 3, "FREE_PAGE"), (5, 4, "REPORTING"), (8, 0, "CONTROL"), (8, 1, "EVENT"),
          (8, 2, "REQUEST"), (19, 0, "RX"), (19, 1, "TX"), (19, 2, "EVENT"), (26, 0, "UNKNOWN")]
FEATURES = [0, 1 << 32, 1 << 32 | 1 << 15, 1 << 32 | 1 << 57, 1 << 32 | 1 << 3, 1 << 69 | 1 << 32]


def as_dict(pairs):
    out = defaultdict(list)
    for abbrev, value in pairs:
        if abbrev != "vqtrace.malformed":
            out[abbrev].append(value)
    return dict(out)


def plan_and_requests(data: bytes, source: str = "q"):
    mine, reference = Dissector(), Dissector()
    rec, _, _ = mine.locate(data)
    ours = mine.payload_pairs(rec, source)
    rec2, _, _ = reference.locate(data)
    theirs = [p for tree in reference.request(rec2, source).trees for p in tree_pairs(tree)]
    return as_dict(ours), as_dict(theirs)


def chain_event(device, queue, role, readable, writable_lens, written, used_len, features, kind):
    descs = []
    index = 0
    for n in ([len(readable)] if readable else []):
        descs.append(Descriptor(addr=0x1000, len=n, flags=1, index=index, next=index + 1))
        index += 1
    for n in writable_lens:
        descs.append(Descriptor(addr=0x8000, len=n, flags=3, index=index, next=index + 1))
        index += 1
    chain = Chain(queue, 0, 0, descs)
    used = UsedElem(queue, 0, used_len, 0) if kind is EventKind.USED else None
    return Event(kind, 1, "q", queue, Direction.TO_DRIVER, readable, device, chain=chain, used=used,
                 written=written if kind is EventKind.USED else b"", role=ROLES[role], features=features,
                 params={"cdb_size": 32, "sense_size": 96})


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "samples.pcapng"
    write_samples(path)
    return path


def test_sample_chains_give_the_requests_fields(samples):
    checked = 0
    with TraceReader(samples) as reader:
        mine, reference = Dissector(), Dissector()
        for frame in reader:
            rec, _, _ = mine.locate(frame.data)
            if rec.kind not in (AVAIL, USED):
                continue
            ours = as_dict(mine.payload_pairs(rec, frame.source))
            rec2, _, _ = reference.locate(frame.data)
            theirs = as_dict(p for t in reference.request(rec2, frame.source).trees for p in tree_pairs(t))
            assert ours == theirs, frame.number
            checked += 1
    assert checked > 80


SEEDS = st.sampled_from([0, 1, 2, 4, 5, 8, 11, 0x12, 0x25, 0x28, 0x70, 0xA0, 0xFF])
BYTES = st.lists(st.one_of(st.integers(0, 255), SEEDS), max_size=120).map(bytes)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(queue=st.sampled_from(QUEUES), readable=BYTES, written=BYTES, extra=st.integers(0, 40),
       used_cut=st.integers(-1, 140), features=st.sampled_from(FEATURES), used=st.booleans())
def test_any_chain_gives_the_requests_fields(queue, readable, written, extra, used_cut, features, used):
    device, index, role = queue
    if device == 2 and readable[:0] == b"" and len(readable) >= 16 and readable[0] % 3 == 0:
        readable = struct.pack("<IIQ", 0, 0, 8) + readable[16:]  # IN requests often: the data/status split
    writable = [len(written) + extra] if written or extra else []
    used_len = len(written) if used_cut < 0 else used_cut
    kind = EventKind.USED if used else EventKind.AVAIL
    event = chain_event(device, index, role, readable, writable, written, used_len, features, kind)
    ours, theirs = plan_and_requests(encode(event))
    assert ours == theirs
