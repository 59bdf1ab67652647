"""Any bytes, for any device and queue, give a DeviceRequest: never an exception, never a decoder failure."""

from __future__ import annotations

import itertools
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqtrace.dissectors.tree import Field
from vqtrace.requests import DeviceRequest, QueueContext, RxAssembler, decode_request

DEVICES = ["net", "blk", "console", "rng", "balloon", "scsi", "vsock", 26, 99]
# feature bits that change queue numbering or layouts, per device, plus VERSION_1 / ANY_LAYOUT
BITS = [0, 1, 2, 3, 5, 12, 15, 17, 22, 27, 32, 57, 60, 65, 67, 69, 70]


@st.composite
def features(draw):
    if draw(st.booleans()):
        return None
    return sum(1 << bit for bit in draw(st.sets(st.sampled_from(BITS))))


def lens_of(draw, data: bytes | None):
    """Descriptor lengths that add up to ``len(data)`` (or to something else, sometimes), or None."""
    if data is None or draw(st.booleans()):
        return None
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=3)))
    bounds = [0, *cuts, len(data)]
    lens = [b - a for a, b in itertools.pairwise(bounds)]
    if draw(st.integers(0, 9)) == 0:
        lens.append(draw(st.integers(0, 600)))
    return lens


@st.composite
def chains(draw):
    ctx = QueueContext(draw(st.sampled_from(DEVICES)), draw(st.integers(0, 9)), draw(features()),
                       max_virtqueue_pairs=draw(st.one_of(st.none(), st.integers(0, 4))),
                       num_queues=draw(st.one_of(st.none(), st.integers(0, 4))),
                       max_nr_ports=draw(st.one_of(st.none(), st.integers(0, 4))),
                       cdb_size=draw(st.sampled_from([32, 16, 6, 0])), sense_size=draw(st.sampled_from([96, 18, 0])),
                       fixed_balloon_indices=draw(st.booleans()))
    readable = draw(st.binary(max_size=160))
    written = draw(st.one_of(st.none(), st.binary(max_size=160)))
    used_len = draw(st.one_of(st.none(), st.integers(-3, 400)))
    return ctx, readable, written, used_len, lens_of(draw, readable), lens_of(draw, written)


def check(req: DeviceRequest, total: int) -> None:
    assert isinstance(req, DeviceRequest) and req.summary and "\n" not in req.summary
    trees = req.trees
    assert all(isinstance(t, Field) for t in trees)
    assert not [p for p in req.problems if p.code == "INTERNAL"], req.problems
    for tree in trees:
        for node in tree.walk():
            assert node.offset >= 0 and node.offset + node.length <= total, (node, total)
    json.dumps(req.to_json())
    assert req.text()[0] == req.summary


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chain=chains(), continuation=st.booleans())
def test_any_bytes_give_a_request(chain, continuation):
    ctx, readable, written, used_len, rlens, wlens = chain
    req = decode_request(ctx, readable, written, used_len, readable_lens=rlens, writable_lens=wlens,
                         continuation=continuation)
    check(req, len(readable) + len(written or b""))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chain=chains())
def test_lazy_and_eager_agree(chain):
    ctx, readable, written, used_len, rlens, wlens = chain
    eager = decode_request(ctx, readable, written, used_len, readable_lens=rlens, writable_lens=wlens)
    lazy = decode_request(ctx, readable, written, used_len, readable_lens=rlens, writable_lens=wlens, lazy=True)
    assert (lazy.summary, lazy.response, lazy.info) == (eager.summary, eager.response, eager.info)
    assert [t.to_json() for t in lazy.trees] == [t.to_json() for t in eager.trees]
    assert lazy.problems == eager.problems


@st.composite
def structured(draw):
    """Chains that start like real requests (so the decoders go past their header checks)."""
    device = draw(st.sampled_from(["blk", "net", "scsi", "vsock", "console"]))
    queue = {"blk": 0, "net": draw(st.sampled_from([0, 1, 2])), "scsi": draw(st.sampled_from([0, 1, 2])),
             "vsock": draw(st.sampled_from([0, 1, 2])), "console": draw(st.sampled_from([0, 1, 2, 3, 4]))}[device]
    ctx = QueueContext(device, queue, draw(features()))
    head = {"blk": 16, "net": 12, "scsi": 51, "vsock": 44, "console": 8}[device]
    readable = draw(st.binary(min_size=head, max_size=head + 80))
    if device == "blk":
        readable = draw(st.sampled_from([0, 1, 4, 8, 10, 11, 13, 14, 15, 16, 18, 26])).to_bytes(4, "little") + \
            readable[4:]
    written = draw(st.one_of(st.none(), st.binary(min_size=0, max_size=200)))
    return ctx, readable, written, draw(st.one_of(st.none(), st.integers(0, 300)))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chain=structured())
def test_request_shaped_bytes_give_a_request(chain):
    ctx, readable, written, used_len = chain
    req = decode_request(ctx, readable, written, used_len)
    check(req, len(readable) + len(written or b""))
    if ctx.device == "net" and ctx.queue == 0:
        rx = decode_request(ctx, b"", readable + (written or b""), used_len)  # the same bytes on the receiveq
        check(rx, len(readable) + len(written or b""))


@settings(max_examples=100, deadline=None)
@given(buffers=st.lists(st.tuples(st.binary(max_size=80), st.one_of(st.none(), st.integers(0, 100))), max_size=6),
       mergeable=st.booleans())
def test_rx_assembler_takes_any_buffers(buffers, mergeable):
    asm = RxAssembler(QueueContext("net", 0, (1 << 32) | (1 << 15 if mergeable else 0)))
    for written, used_len in buffers:
        request, packet = asm.add(written, used_len)
        check(request, len(written))
        if packet is not None:
            assert packet.trees is not None and packet.summary.startswith("net RX")
            assert not [p for p in packet.problems if p.code == "INTERNAL"]
