"""The live proxy's fast path equals the careful one (vqtrace.vhost.fastpath, vqtrace.vhost.records).

Poll for poll, over the same memory: FastSplitTracker (lean poll, or the careful one when it
declines) against SplitTracker, FastTap's events against TrackerTap's, RingBatch blocks against
TraceWriter.block byte for byte. The traffic is a real driver and device (vqtrace.driver,
DeviceQueue) with hostile writes to the rings mixed in, so anomalies of every kind show up.
"""

from __future__ import annotations

import contextlib
import os
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqtrace.dissectors.virtqueue import VIRTQ_DESC_F_WRITE
from vqtrace.driver import GuestDriver
from vqtrace.errors import VqtraceError
from vqtrace.events import Direction, Event, EventKind
from vqtrace.memory import GuestMemory
from vqtrace.model import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, Chain, Descriptor, UsedElem
from vqtrace.rings import DeviceQueue, SplitTracker
from vqtrace.trace.record import encode
from vqtrace.trace.writer import TraceWriter
from vqtrace.vhost.fastpath import E_CHAIN, E_HEAD, BlockSink, FastSplitTracker, FastTap, RingBatch, chain_of, expand
from vqtrace.vhost.records import QueueBlocks, chain_and_readable, chain_bytes, sized, split_chain_bytes
from vqtrace.vhost.tap import TrackerTap

CASES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.data_too_large])
RAM = 1 << 20


def chain_key(chain: Chain | None):
    if chain is None:
        return None
    return (chain.id, chain.avail_idx, chain.wrap, chain.readable_len, chain.writable_len,
            [tuple(d) for d in chain.descriptors], [anomaly_key(a) for a in chain.anomalies])


def anomaly_key(a):
    return (a.code, a.section, a.message, a.queue, a.id, a.address)


def tracker_state(t: SplitTracker):
    return (t.avail_idx, t.used_idx, t.avail_flags, t.used_flags, t.used_event, t.avail_event,
            [(k, chain_key(c)) for k, c in t.in_flight.items()], list(t._desc_owner))


def careful_answer(t: SplitTracker):
    changes = t.poll()
    return ([chain_key(c) for c in changes.avail], [(d.elem, chain_key(d.chain)) for d in changes.used],
            [anomaly_key(a) for a in changes.anomalies])


def fast_answer(t: FastSplitTracker):
    lean = t.poll_lean()
    if lean is None:
        return careful_answer(t), False
    found, done = lean
    queue = t.config.index

    def chain(item):
        return chain_of(item, queue) if isinstance(item, list) else item

    return ([chain_key(chain(entry)) for entry in found],
            [(UsedElem(queue, used_id, length, idx), chain_key(chain(item)))
             for item, used_id, length, idx, _, _ in done],
            []), True


def event_key(e: Event):
    return (e.kind, e.time_ns, e.source, e.queue, e.direction, e.data, e.device_type, e.channel, e.fds,
            chain_key(e.chain), e.used, e.anomaly and anomaly_key(e.anomaly), e.written, e.role, e.features,
            e.packed, e.truncated)


def tracker_memory(guest: GuestDriver, split: str) -> GuestMemory:
    """The trackers' view of guest RAM: one region, two adjacent regions, or two with a hole."""
    data = guest.memory.regions[0].data
    memory = GuestMemory()
    if split == "one":
        memory.add_buffer(0, data)
    elif split == "adjacent":
        memory.add_buffer(0, data[:RAM // 2])
        memory.add_buffer(RAM // 2, data[RAM // 2:])
    else:
        memory.add_buffer(0, data[:RAM // 2])
        memory.add_buffer(RAM // 2 + 0x1000, data[RAM // 2 + 0x1000:])
    return memory


class World:
    """A driver and a device on one queue, and hostile writes to its rings (op by op)."""

    def __init__(self, size: int, features: int, seed: int) -> None:
        self.guest = GuestDriver.in_buffer(RAM)
        self.queue = self.guest.queue(0, size, features=features, device_type=2)
        self.config = self.queue.config
        self.device = DeviceQueue(self.config, self.guest.memory)
        self.rng = random.Random(seed)
        self.memory = self.guest.memory
        self.popped: list[Chain] = []  # chains the device took and has not used yet

    def step(self, op: str) -> None:
        rng, queue, memory, config = self.rng, self.queue, self.memory, self.config
        with contextlib.suppress(VqtraceError, ValueError):
            if op == "add":
                readable = [rng.randbytes(rng.choice([0, 1, 16, 64])) for _ in range(rng.randint(0, 2))]
                writable = [rng.choice([0, 1, 512, 4096]) for _ in range(rng.randint(0 if readable else 1, 2))]
                indirect = config.indirect and rng.random() < 0.3
                queue.add(readable, writable, indirect=indirect)
            elif op == "use":  # the device takes what is available and uses some of what it holds
                self.popped += self.device.pop_all()
                rng.shuffle(self.popped)
                count = rng.randint(1, len(self.popped)) if self.popped else 0
                chains, self.popped = self.popped[:count], self.popped[count:]
                pairs = []
                for chain in chains:
                    roll = rng.random()
                    length = chain.writable_len if roll < 0.6 else rng.randint(0, chain.writable_len) \
                        if roll < 0.95 else chain.writable_len + 1  # USED_LEN_TOO_LARGE
                    for d in chain.writable:
                        with contextlib.suppress(Exception):
                            memory.write(d.addr, rng.randbytes(min(d.len, 32)))
                    pairs.append((chain, length))
                self.device.push_batch(pairs)
            elif op == "reap":
                queue.get_used()
            elif op == "bad":  # a chain the driver gets wrong (a hook edits its descriptors before they are written)
                def hook(specs, rng=rng, size=config.size):
                    spec = rng.choice(specs)
                    what = rng.randrange(5)
                    if what == 0:
                        specs[-1].flags &= ~VIRTQ_DESC_F_WRITE  # readable after writable
                    elif what == 1:
                        spec.next = rng.choice([0, size, 0xFFFF])  # a loop, or out of the table
                        spec.flags |= 1
                    elif what == 2:
                        spec.addr = rng.choice([RAM - 4, RAM // 2 + 8, 1 << 40])  # outside guest memory
                    elif what == 3:
                        spec.flags |= 4  # INDIRECT
                    else:
                        spec.len = rng.choice([0, 1 << 31])
                def table_hook(specs, rng=rng):  # an indirect table's entries (2.7.5.3)
                    spec = rng.choice(specs)
                    what = rng.randrange(4)
                    if what == 0:
                        specs[-1].flags |= 4  # NESTED_INDIRECT (a table of 64 bytes: four entries)
                    elif what == 1:
                        spec.next, spec.flags = rng.choice([0, len(specs), 0xFFFF]), spec.flags | 1
                    elif what == 2:
                        specs[-1].flags &= ~VIRTQ_DESC_F_WRITE
                    else:
                        spec.addr = rng.choice([RAM - 4, 1 << 40])

                def table_desc_hook(specs, rng=rng):  # the INDIRECT descriptor itself
                    spec = specs[0]
                    spec.len = rng.choice([0, 8, spec.len + 8, spec.len, 1 << 30])
                    if rng.random() < 0.3:
                        spec.flags |= 1  # INDIRECT_WITH_NEXT

                if rng.random() < 0.5:
                    queue.add([b"r" * 16], [rng.choice([1, 64])] * 2, hook=hook)
                else:  # an indirect chain, negotiated or not (INDIRECT_NOT_NEGOTIATED)
                    queue.add([b"r" * 16], [rng.choice([1, 64]), 64], indirect=True,
                              indirect_hook=table_hook if rng.random() < 0.6 else None,
                              hook=table_desc_hook if rng.random() < 0.4 else None)
            elif op == "poke":  # a hostile write to a descriptor: its flags, its link, its length or address
                entry = config.desc + 16 * rng.randrange(config.size)
                field, value = rng.choice([
                    (12, rng.choice([0, 1, 2, 3, 4, 5, 7, 0x8001])), (14, rng.choice([0, 1, config.size, 0xFFFF])),
                    (8, rng.choice([0, 1 << 31, 0xFFFFFFFF])), (0, rng.choice([0, RAM - 8, RAM // 2 + 16, 1 << 40]))])
                memory.write(entry + field, value.to_bytes(2 if field >= 12 else 4 if field == 8 else 8, "little"))
            elif op == "ring":  # a hostile write to the rings' own fields: flags, indices, used elements
                target = rng.choice([config.driver, config.driver + 2, config.device, config.device + 2,
                                     config.device + 4 + 8 * rng.randrange(config.size),
                                     config.device + 8 + 8 * rng.randrange(config.size)])
                value = rng.choice([1, 2, 0x8000, config.size + 1, rng.randrange(1 << 16)])
                memory.write(target, value.to_bytes(2, "little"))
            elif op == "reuse":  # a head in flight, or any descriptor, made available again
                if queue.in_flight and rng.random() < 0.5:
                    queue.expose(rng.choice(queue.in_flight))
                else:
                    queue.expose(rng.randrange(config.size))


OPS = st.lists(st.sampled_from(["add", "add", "add", "use", "use", "use", "reap", "poll", "poll", "poll", "poke",
                                "ring", "reuse", "bad"]), min_size=1, max_size=40)
SHAPES = st.tuples(st.sampled_from([4, 8, 16, 32]),
                   st.sets(st.sampled_from([VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC])),
                   st.sampled_from(["one", "adjacent", "hole"]), st.integers(0, 1 << 30))


def features_of(bits) -> int:
    return sum(1 << b for b in bits) | 1 << VIRTIO_F_VERSION_1


@CASES
@given(SHAPES, OPS, st.booleans())
def test_fast_split_tracker_equals_split_tracker(shape, ops, mostly_clean):
    size, bits, split, seed = shape
    world = World(size, features_of(bits), seed)
    if mostly_clean:
        ops = [op for op in ops if op not in ("poke", "ring", "reuse", "bad")] + ["poll"]
    memory = tracker_memory(world.guest, split)
    ref = SplitTracker(world.config, memory, avail_idx=0)
    fast = FastSplitTracker(world.config, memory, avail_idx=0)
    assert fast.lean
    leans = 0
    for op in [*ops, "poll"]:
        if op != "poll":
            world.step(op)
            continue
        expected = careful_answer(ref)
        got, lean = fast_answer(fast)
        leans += lean
        assert got == expected
        assert tracker_state(fast) == tracker_state(ref)


def test_lean_polls_do_the_common_case_and_decline_anomalies():
    world = World(16, features_of([VIRTIO_F_EVENT_IDX]), 1)
    fast = FastSplitTracker(world.config, world.memory, avail_idx=0)
    for _ in range(5):
        world.queue.add([b"h" * 16], [512, 1])
    found, done = fast.poll_lean()
    assert [entry[E_HEAD] for entry in found] == [c.id for c in fast.in_flight.values()] and not done
    assert all(isinstance(entry, list) and entry[E_CHAIN] is not None for entry in found)  # made by in_flight
    chains = world.device.pop_all()
    world.device.push_batch([(c, c.writable_len) for c in chains])
    found, done = fast.poll_lean()
    assert not found and [item[1] for item in done] == [c.id for c in chains]
    assert len(world.queue.get_used()) == 5 and not fast.in_flight
    # the driver publishes a head that is still in flight: the lean poll declines, the careful one names it
    world.queue.add([b"h" * 16], [512])
    world.queue.expose(world.queue.in_flight[-1])
    before = tracker_state(fast)
    assert fast.poll_lean() is None
    after = tracker_state(fast)
    assert after[:2] + after[6:] == before[:2] + before[6:]  # undone (the flags it read are the ring's now)
    assert [a.code for a in fast.poll().anomalies] == ["HEAD_REUSED_IN_FLIGHT"]


def two_taps(shape, snaplen: int) -> tuple[World, TrackerTap, FastTap]:
    """A world of ``shape`` and the two taps over its memory: the reference and the fast one."""
    size, bits, split, seed = shape
    world = World(size, features_of(bits), seed)
    memory = tracker_memory(world.guest, split)
    return (world, TrackerTap(world.config, memory, 0, "q", snaplen=snaplen),
            FastTap(world.config, memory, 0, "q", snaplen=snaplen))


def events_of(answer) -> list[Event]:
    return answer.events() if isinstance(answer, RingBatch) else answer


@CASES
@given(SHAPES, OPS, st.sampled_from([65536, 16, 1, 600]))
def test_fast_tap_events_equal_tracker_tap_events(shape, ops, snaplen):
    world, ref, fast = two_taps(shape, snaplen)
    for n, op in enumerate([*ops, "poll"]):
        if op != "poll":
            world.step(op)
            continue
        expected = ref.poll(n)
        events = events_of(fast.poll_batch(n))
        assert [event_key(e) for e in events] == [event_key(e) for e in expected]


@CASES
@given(SHAPES, OPS, st.sampled_from([65536, 16]),
       st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=5), st.booleans())
def test_partial_looks_add_up_to_one_look(shape, ops, snaplen, looks, mostly_clean):
    """The proxy's partial looks (a kick walks a few chains, a call only what its used elements need,
    idle time the rest, a few at a time), then a full one, find what one TrackerTap poll finds: the
    same AVAIL events in avail order, the same USED events in used order, the same anomalies."""
    world, ref, fast = two_taps(shape, snaplen)
    if mostly_clean:
        ops = [op for op in ops if op not in ("poke", "ring", "reuse", "bad")] + ["poll"]
    for n, op in enumerate([*ops, "poll"]):
        if op != "poll":
            world.step(op)
            continue
        expected = ref.poll(n)
        got: list[Event] = []
        for limit, used_side in looks:
            got += events_of(fast.poll_batch(n, limit, used_side=used_side))
            assert fast.unwalked >= 0
        got += events_of(fast.poll_batch(n))
        assert fast.unwalked == 0
        for kind in (EventKind.AVAIL, EventKind.USED, EventKind.ANOMALY):
            assert [event_key(e) for e in got if e.kind is kind] == [event_key(e) for e in expected if e.kind is kind]
        assert tracker_state(fast.tracker) == tracker_state(ref.tracker)


def test_a_partial_look_walks_only_what_it_is_asked_to():
    world = World(32, features_of([VIRTIO_F_EVENT_IDX]), 2)
    fast = FastSplitTracker(world.config, world.memory, avail_idx=0)
    for _ in range(10):
        world.queue.add([b"h" * 16], [512, 1])
    found, done = fast.poll_lean(2, used_side=False)
    assert len(found) == 2 and not done and fast.unwalked == 8 and fast.avail_idx == 2
    chains = world.device.pop_all()
    world.device.push_batch([(c, c.writable_len) for c in chains[:3]])
    found, done = fast.poll_lean(0, used_side=False)  # nothing to walk, the used side left alone
    assert not found and not done and fast.unwalked == 8 and fast.used_idx == 0
    found, done = fast.poll_lean(0)  # the used side: chain 2 is walked because its used element needs it
    assert [entry[E_HEAD] for entry in found] == [chains[2].id] and [d[1] for d in done] == [c.id for c in chains[:3]]
    assert fast.unwalked == 7 and fast.avail_idx == 3 and fast.used_idx == 3
    found, _ = fast.poll_lean(4, used_side=False)
    assert [entry[E_HEAD] for entry in found] == [c.id for c in chains[3:7]] and fast.unwalked == 3
    found, done = fast.poll_lean()
    assert [entry[E_HEAD] for entry in found] == [c.id for c in chains[7:]] and not done and fast.unwalked == 0
    assert sorted(fast.in_flight) == sorted(c.id for c in chains[3:])


# -- the blocks ---------------------------------------------------------------------------------


@st.composite
def ring_events(draw):
    queue = draw(st.integers(0, 0xFFFF))
    device_type = draw(st.sampled_from([0, 1, 2, 3, 8, 19]))
    features = draw(st.integers(0, (1 << 128) - 1) | st.sampled_from([0, 1 << 32, 1 << 34 | 1 << 32]))
    packed = draw(st.booleans())
    ndesc = draw(st.integers(1, 12))
    descs = [Descriptor(addr=draw(st.integers(0, (1 << 64) - 1)), len=draw(st.integers(0, (1 << 32) - 1)),
                        flags=draw(st.integers(0, 0xFFFF)) & ~4, index=draw(st.integers(0, 0x7FFF)),
                        next=draw(st.integers(0, 0xFFFF))) for _ in range(ndesc)]
    readable = sum(d.len for d in descs if not d.flags & VIRTQ_DESC_F_WRITE) & 0xFFFFFFFF
    writable = sum(d.len for d in descs if d.flags & VIRTQ_DESC_F_WRITE) & 0xFFFFFFFF
    chain = Chain(queue, draw(st.integers(0, 0xFFFF)), draw(st.integers(0, 0xFFFF)), descs, readable_len=readable,
                  writable_len=writable)
    data, written = draw(st.binary(max_size=300)), draw(st.binary(max_size=300))
    used = UsedElem(queue, chain.id, draw(st.integers(0, (1 << 32) - 1)), draw(st.integers(0, 0xFFFF)))
    return queue, device_type, features, packed, chain, data, written, used, draw(st.booleans()), draw(st.booleans())


@settings(max_examples=300, deadline=None)
@given(ring_events(), st.integers(0, (1 << 63) - 1), st.integers(0, 5), st.binary(max_size=12),
       st.sampled_from(["KICK", "CALL"]), st.integers(0, 1))
def test_blocks_equal_the_writers_blocks(case, time_ns, iface, count, notify, channel):
    queue, device_type, features, packed, chain, data, written, used, cut_a, cut_u = case
    blocks = QueueBlocks("src", queue, device_type, features, packed)
    args = [x for d in chain.descriptors for x in (d.addr, d.len, d.flags, d.index, d.next)]
    cbytes = split_chain_bytes(chain.id, chain.avail_idx, chain.readable_len, chain.writable_len,
                               len(chain.descriptors), args)
    assert cbytes == chain_bytes(chain)
    shared = chain_and_readable(cbytes, data)
    entry = [chain.id, chain.avail_idx, args, [d.index for d in chain.descriptors], chain.readable_len,
             chain.writable_len, data, cut_a, shared, None, chain]
    batch = RingBatch(blocks, time_ns, [entry], [[entry, used.id, used.len, used.used_idx, sized(written), cut_u]])
    batch.notify = (int(EventKind[notify]), count, channel)
    events = batch.events()
    assert [e.kind for e in events] == [EventKind[notify], EventKind.AVAIL, EventKind.USED]
    assert events[0].direction is (Direction.TO_DEVICE if notify == "KICK" else Direction.TO_DRIVER)
    assert events[2].used == used and events[1].chain is chain and events[2].written == written

    class Writer(TraceWriter):  # TraceWriter.block with the interface number asked for
        def __init__(self) -> None:
            self.snaplen, self._interfaces, self._descriptions = 0, {"src": iface}, {}

    writer = Writer()
    parts: list = []
    batch.blocks(parts, iface)
    joined = b"".join(parts)
    assert joined == b"".join(writer.block(e) for e in events)
    at = 0
    for event in events:  # each block's record is encode(event)
        total, size = struct.unpack_from("<I", joined, at + 4)[0], struct.unpack_from("<I", joined, at + 20)[0]
        assert joined[at + 28:at + 28 + size] == encode(event)
        at += total
    assert at == len(joined)


def test_block_sink_writes_what_the_writer_would(tmp_path):
    world = World(16, features_of([VIRTIO_F_EVENT_IDX]), 7)
    tap = FastTap(world.config, world.memory, 0, "queue0", snaplen=100)
    first = Event(EventKind.VHOST_USER, 5, "queue0", data=b"\x01" * 12)
    records: list = [first]
    for n in range(6):
        world.step("add")
        world.step("add")
        world.step("use")
        world.step("reap")
        batch = tap.poll_batch(10 + n)
        if isinstance(batch, RingBatch):
            batch.notify = (int(EventKind.CALL), (n + 1).to_bytes(8, "little"), 0)
            records.append(batch)
        else:  # a careful poll (the world's device used more than a chain holds): its events
            records.extend(batch)
        records.append(Event(EventKind.VHOST_USER, 20 + n, "other", data=b"\x02" * 12))
    assert sum(len(r.avail) + len(r.used) for r in records if isinstance(r, RingBatch)) > 10
    fast_path, slow_path = tmp_path / "fast.pcapng", tmp_path / "slow.pcapng"
    with TraceWriter(fast_path, snaplen=0) as writer:
        assert BlockSink(writer)(records) == len(expand(records)) == writer.count
    with TraceWriter(slow_path, snaplen=0) as writer:
        writer.write_many(expand(records))
    assert fast_path.read_bytes() == slow_path.read_bytes()
    # a writer that cuts the bytes further than the tap did: its own blocks, the same bytes
    with TraceWriter(fast_path, snaplen=8) as writer:
        BlockSink(writer)(records)
    with TraceWriter(slow_path, snaplen=8) as writer:
        writer.write_many(expand(records))
    assert fast_path.read_bytes() == slow_path.read_bytes()


def test_lean_poll_follows_memory_table_changes(tmp_path):
    """REM_MEM_REG / ADD_MEM_REG while the queue runs: the cached views are looked up again."""
    fd = os.memfd_create("ram")
    os.ftruncate(fd, RAM)
    guest = GuestDriver.in_memfd(RAM)
    queue = guest.queue(0, 8, features=features_of([]))
    memory = GuestMemory()
    memory.add_fd(guest.fd, 0, RAM)
    tap = FastTap(queue.config, memory, 0, "q")
    device = DeviceQueue(queue.config, guest.memory)
    queue.add([b"a" * 16], [8])
    assert len(tap.poll_batch(1).avail) == 1
    memory.remove(0)
    memory.add_fd(guest.fd, 0, RAM)
    device.push(device.pop(), 8)
    batch = tap.poll_batch(2)
    assert isinstance(batch, RingBatch) and len(batch.used) == 1 and batch.events()[-1].written == bytes(8)
    memory.remove(0)  # the rings are gone: the careful poll says so, once
    got = tap.poll_batch(3)
    assert [e.anomaly.code for e in got] == ["RING_UNMAPPED"]
    memory.close()
    guest.close()
    os.close(fd)


@pytest.mark.parametrize("in_order", [False, True])
def test_in_order_queues_are_read_carefully(in_order):
    world = World(8, features_of([VIRTIO_F_EVENT_IDX]) | (1 << 35 if in_order else 0), 3)
    fast = FastSplitTracker(world.config, world.memory, avail_idx=0)
    assert fast.lean is not in_order


# -- in the proxy -------------------------------------------------------------------------------


def proxied_queue(tap_factory, size: int = 8):
    """A ProxyEngine that has seen a queue set up (memory table, ring, kick and call fds)."""
    from vqtrace.vhost import protocol as p
    from vqtrace.vhost.codec import Message
    from vqtrace.vhost.engine import DataReceived, Peer
    from vqtrace.vhost.proxy import ProxyEngine

    engine = ProxyEngine(tap_factory=tap_factory, device_type=2)
    user = 0x7E00_0000_0000
    guest = GuestDriver.in_memfd(RAM, 0, user_addr=user)
    queue = guest.queue(0, size, features=1 << VIRTIO_F_VERSION_1)
    c = queue.config
    kick, call = os.eventfd(0, os.EFD_CLOEXEC), os.eventfd(0, os.EFD_CLOEXEC)
    for msg in (Message.make(p.SET_FEATURES, p.pack_u64(1 << VIRTIO_F_VERSION_1)),
                Message.make(p.SET_MEM_TABLE, p.pack_memory([p.MemoryRegion(0, RAM, user, 0)]), fds=[os.dup(guest.fd)]),
                Message.make(p.SET_VRING_NUM, p.pack_state(0, size)),
                Message.make(p.SET_VRING_ADDR, p.pack_addr(p.VringAddr(0, 0, user + c.desc, user + c.device,
                                                                       user + c.driver, c.device))),
                Message.make(p.SET_VRING_KICK, p.pack_vring_file(0), fds=[kick]),
                Message.make(p.SET_VRING_CALL, p.pack_vring_file(0), fds=[call])):
        engine.handle(DataReceived(Peer.FRONTEND, msg.raw, list(msg.fds)))
    return engine, guest, queue


def recorded(commands) -> list[Event]:
    from vqtrace.vhost.engine import Record, RecordBatch

    out: list[Event] = []
    for c in commands:
        if isinstance(c, Record):
            out.append(c.event)
        elif isinstance(c, RecordBatch):
            out.extend(c.events)
    return out


def test_the_proxy_records_the_same_with_either_tap():
    """Kicks, calls and ring events through ProxyEngine: RecordBatch commands (FastTap) hold the
    events Record commands (TrackerTap) do, and the call is forwarded after them."""
    from vqtrace.vhost.engine import Notified, Notify, RecordBatch, Signal
    from vqtrace.vhost.fastpath import fast_tap
    from vqtrace.vhost.tap import tracker_tap

    runs = []
    for factory in (tracker_tap, fast_tap):
        engine, guest, queue = proxied_queue(factory)
        device = DeviceQueue(queue.config, guest.memory)
        got = []
        for n in range(3):
            queue.add([struct.pack("<IIQ", 0, 0, n)], [512, 1])
            commands = engine.handle(Notified(Notify.KICK, 0, 10 + n, 1))
            got.append(recorded(commands))
            chain = device.pop()
            device.push(chain, 513)
            commands = engine.handle(Notified(Notify.CALL, 0, 20 + n, 1))
            kinds = [type(c).__name__ for c in commands]
            assert kinds.index("Signal") > max(i for i, k in enumerate(kinds) if k in ("Record", "RecordBatch"))
            got.append(recorded(commands))
            assert any(isinstance(c, Signal) for c in commands)
            if factory is fast_tap:
                assert any(isinstance(c, RecordBatch) for c in commands)
            queue.get_used()
        runs.append([[event_key(e) for e in events] for events in got])
        engine.release()
        guest.close()
    assert runs[0] == runs[1]
    assert [e[0] for e in runs[1][1]] == [EventKind.CALL, EventKind.USED]


def test_a_batch_without_a_notification_is_not_recorded_when_empty():
    from vqtrace.vhost.engine import RecordBatch, Tick
    from vqtrace.vhost.fastpath import fast_tap

    engine, guest, _ = proxied_queue(fast_tap)
    assert not [c for c in engine.handle(Tick(5)) if isinstance(c, RecordBatch)]
    engine.release()
    guest.close()


def test_rings_across_two_regions_are_read_carefully():
    """An area across two memory regions is a copy, not a live view: the lean poll does not keep it."""
    world = World(8, features_of([VIRTIO_F_EVENT_IDX]), 5)
    data = world.guest.memory.regions[0].data
    cut = world.config.driver + 3  # in the middle of avail->idx
    memory = GuestMemory()
    memory.add_buffer(0, data[:cut])
    memory.add_buffer(cut, data[cut:])
    ref, fast = SplitTracker(world.config, memory, avail_idx=0), FastSplitTracker(world.config, memory, avail_idx=0)
    for _ in range(3):
        world.step("add")
        assert fast.poll_lean() is None
        assert careful_answer(fast) == careful_answer(ref)
    assert len(fast.in_flight) == 3


def test_a_call_waits_for_no_long_walk_and_copies_its_bytes_at_once():
    """A kick walks a few of its chains, a call the ones its used elements need (then it is forwarded),
    idle time the rest, a few at a time. What a call records is copied before it is forwarded: a
    driver that reuses the buffers at once (it may, once it has the call) changes nothing in it."""
    from vqtrace.vhost.engine import Notified, Notify, RecordBatch, Signal, Work
    from vqtrace.vhost.fastpath import fast_tap
    from vqtrace.vhost.proxy import KICK_WALK, WORK_WALK

    total = KICK_WALK + 3 + 2 * WORK_WALK - 1  # the kick's, the call's, then two looks in idle time
    engine, guest, queue = proxied_queue(fast_tap, size=1 << (3 * total).bit_length())  # 3 descriptors each
    device = DeviceQueue(queue.config, guest.memory)
    for n in range(total):
        queue.add([struct.pack("<IIQ", 0, 0, n)], [512, 1])
    kick = recorded(engine.handle(Notified(Notify.KICK, 0, 10, 1)))
    assert [e.kind for e in kick] == [EventKind.KICK] + [EventKind.AVAIL] * KICK_WALK
    tap = engine.taps[0]
    assert engine.has_work() and tap.unwalked == total - KICK_WALK
    chains = [device.pop() for _ in range(KICK_WALK + 3)]
    for chain in chains:
        guest.memory.write(chain.writable[0].addr, bytes([chain.avail_idx & 0xFF]) * 512 + b"\0")
        device.push(chain, 513)
    commands = engine.handle(Notified(Notify.CALL, 0, 20, 1))
    assert [type(c) for c in commands if isinstance(c, RecordBatch | Signal)] == [RecordBatch, Signal]
    assert tap.unwalked == total - KICK_WALK - 3
    for chain in chains:  # the driver has the call: it reuses the buffers at once
        guest.memory.write(chain.readable[0].addr, b"\xee" * 16)
        guest.memory.write(chain.writable[0].addr, b"\xee" * 513)
    call = recorded(commands)
    assert [e.kind for e in call] == [EventKind.CALL] + [EventKind.AVAIL] * 3 + [EventKind.USED] * len(chains)
    for event in call[1:4]:
        assert event.data == struct.pack("<IIQ", 0, 0, event.chain.avail_idx)
    for event, chain in zip(call[4:], chains, strict=True):
        assert event.used.id == chain.id and event.data == struct.pack("<IIQ", 0, 0, chain.avail_idx)
        assert event.written == bytes([chain.avail_idx & 0xFF]) * 512 + b"\0"
    walked = []
    while engine.has_work():
        step = recorded(engine.handle(Work(30)))
        assert 0 < len(step) <= WORK_WALK and {e.kind for e in step} == {EventKind.AVAIL}
        walked += step
    assert [e.chain.avail_idx for e in walked] == list(range(KICK_WALK + 3, total))
    assert not recorded(engine.handle(Work(40)))
    engine.release()
    guest.close()
