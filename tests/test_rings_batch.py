"""The trackers' batch walks (vqtrace.rings.batch) change nothing: a tracker that walks every poll's chains
together reports exactly what one that walks them one by one reports, on random driver and device
activity with random corruptions (hypothesis), poll after poll, bookkeeping included."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqtrace.dissectors.virtqueue import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from vqtrace.driver import Allocator, GuestDriver
from vqtrace.errors import VqtraceError
from vqtrace.memory import GuestMemory
from vqtrace.model import VIRTIO_F_EVENT_IDX, VIRTIO_F_IN_ORDER, VIRTIO_F_INDIRECT_DESC, Layout, QueueConfig
from vqtrace.rings import DeviceQueue, RingTracker
from vqtrace.rings import batch as B
from vqtrace.rings import tracker as T
from vqtrace.rings.chain import (
    DESC_STRUCT,
    PACKED_DESC_STRUCT,
    MemoryBounds,
    careful_packed_chain,
    careful_split_chain,
)

SCENARIOS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MEMORY = 4 << 20
BATCH_ALWAYS, BATCH_NEVER = 1, 1 << 30

# corruptions a hook applies to the descriptors the driver is about to write
CORRUPTIONS = ["none", "none", "none", "outside", "read_after_write", "big", "zero_len_outside", "indirect_flag",
               "link_anywhere", "link_out"]


def _corrupt(kind: str, at: int, target: int, base: int):
    def hook(specs) -> None:
        spec = specs[at % len(specs)]
        if kind == "outside":
            spec.addr = base + MEMORY - 8
            spec.len = 64
        elif kind == "read_after_write":
            specs[0].flags |= VIRTQ_DESC_F_WRITE
            specs[-1].flags &= ~VIRTQ_DESC_F_WRITE
        elif kind == "big":
            spec.len = B.SMALL_LEN + at  # in memory or not: the careful walker decides
        elif kind == "zero_len_outside":
            spec.addr, spec.len = (1 << 64) - 16, 0
        elif kind == "indirect_flag":
            spec.flags |= VIRTQ_DESC_F_INDIRECT
        elif kind == "link_anywhere":
            specs[-1].flags |= VIRTQ_DESC_F_NEXT
            specs[-1].next = target
        elif kind == "link_out":
            spec.flags |= VIRTQ_DESC_F_NEXT
            spec.next = 0x8000 + target
    return None if kind == "none" else hook


OPS = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 18), st.integers(0, 4), st.booleans(), st.sampled_from(CORRUPTIONS),
              st.integers(0, 31), st.integers(0, 63)),
    st.tuples(st.just("use"), st.integers(1, 64), st.booleans()),
    st.tuples(st.just("poll")),
)


def _plain(chain) -> list[tuple]:
    """The chain's descriptors as tuples, checking they hold plain ints and bools (not numpy scalars)."""
    rows = [tuple(d) for d in chain.descriptors]
    assert all(type(x) is int for row in rows for x in row[:6]) and all(type(row[6]) is bool for row in rows)
    assert type(chain.readable_len) is int and type(chain.writable_len) is int and type(chain.id) is int
    assert chain.ring_len == sum(1 for d in chain.descriptors if not d.in_indirect)  # (the lazy source's count)
    return rows


def _summary(changes) -> tuple:
    avail = [(c.id, c.avail_idx, c.wrap, c.readable_len, c.writable_len, c.ring_len, _plain(c),
              [(a.code, a.message) for a in c.anomalies]) for c in changes.avail]
    used = [(u.elem, None if u.chain is None else (u.chain.id, u.chain.avail_idx)) for u in changes.used]
    anomalies = [(a.code, a.message, a.id, a.address) for a in changes.anomalies]
    return (avail, used, anomalies, changes.before, changes.after, changes.avail_notification_due,
            changes.used_notification_due, changes.missed)


def _poll(tracker, min_batch: int, monkeypatch):
    monkeypatch.setattr(T, "MIN_BATCH", min_batch)
    return tracker.poll()


def _same_trackers(batched, single) -> None:
    assert [(c.id, c.avail_idx) for c in batched.in_flight.values()] == \
        [(c.id, c.avail_idx) for c in single.in_flight.values()]
    if hasattr(batched, "_desc_owner"):
        assert batched._desc_owner == single._desc_owner


def _run(layout: Layout, size: int, features: int, base: int, ops, monkeypatch) -> None:
    guest = GuestDriver.in_buffer(MEMORY, base=base)
    queue = guest.queue(0, size, layout=layout, features=features)
    device = DeviceQueue(queue.config, guest.memory)
    start = {"avail_idx": 0, "used_idx": 0}
    batched = RingTracker(queue.config, guest.memory, **start)
    single = RingTracker(queue.config, guest.memory, **start)
    for op in [*ops, ("poll",)]:
        if op[0] == "add":
            _, n, readable, indirect, kind, at, target = op
            readable = min(readable, n)
            hook = _corrupt(kind, at, target, base)
            with contextlib.suppress(VqtraceError):  # no room
                queue.add([b"r" * (8 + k) for k in range(readable)], [16 + k for k in range(n - readable)],
                          indirect=indirect and bool(features & 1 << VIRTIO_F_INDIRECT_DESC),
                          hook=None if indirect else hook, indirect_hook=hook if indirect else None)
        elif op[0] == "use":
            _, count, backwards = op
            chains = []
            for _ in range(count):
                chain = device.pop()
                if chain is None:
                    break
                chains.append(chain)
            if not features & 1 << VIRTIO_F_IN_ORDER and backwards:
                chains.reverse()
            with contextlib.suppress(ValueError):  # IN_ORDER and chains that are not the oldest (corruption)
                device.push_batch([(c, min(c.writable_len, 4)) for c in chains])
        else:
            assert _summary(_poll(batched, BATCH_ALWAYS, monkeypatch)) == \
                _summary(_poll(single, BATCH_NEVER, monkeypatch))
            _same_trackers(batched, single)
        with contextlib.suppress(VqtraceError):  # the device used an id the driver does not know (corruption)
            queue.get_used()


FEATURES = st.sets(st.sampled_from([VIRTIO_F_INDIRECT_DESC, VIRTIO_F_EVENT_IDX, VIRTIO_F_IN_ORDER])).map(
    lambda bits: sum(1 << b for b in bits))


@SCENARIOS
@given(st.sampled_from([32, 64]), FEATURES, st.sampled_from([0, 0x10000]), st.lists(OPS, max_size=24))
def test_split_tracker_with_and_without_batches(size, features, base, ops):
    with pytest.MonkeyPatch.context() as monkeypatch:
        _run(Layout.SPLIT, size, features, base, ops, monkeypatch)


@SCENARIOS
@given(st.sampled_from([32, 40, 64]), FEATURES, st.sampled_from([0, 0x10000]), st.lists(OPS, max_size=24))
def test_packed_tracker_with_and_without_batches(size, features, base, ops):
    with pytest.MonkeyPatch.context() as monkeypatch:
        _run(Layout.PACKED, size, features, base, ops, monkeypatch)


def test_a_batch_chain_through_a_descriptor_in_flight_is_reported():
    """A chain of a batch walk that takes a descriptor of a chain in flight: DESC_REUSED_IN_FLIGHT, and the
    descriptors it took before that one are given back (the bookkeeping is as if walked one by one)."""
    guest = GuestDriver.in_buffer(MEMORY)
    queue = guest.queue(0, 64)
    batched = RingTracker(queue.config, guest.memory)
    single = RingTracker(queue.config, guest.memory)
    with pytest.MonkeyPatch.context() as monkeypatch:
        first = queue.add([b"a", b"b"], [8])
        _poll(batched, BATCH_ALWAYS, monkeypatch)
        _poll(single, BATCH_NEVER, monkeypatch)
        held = batched.in_flight[first].descriptors[-1].index
        ids = [queue.add([b"x"], [8]) for _ in range(20)]
        # one more chain: two fresh descriptors, then the last one of the first chain, still in flight
        queue.write_desc(62, 0x1000, 4, VIRTQ_DESC_F_NEXT, 63)
        queue.write_desc(63, 0x1000, 4, VIRTQ_DESC_F_NEXT, held)
        queue.expose(62)
        changes = _poll(batched, BATCH_ALWAYS, monkeypatch)
        assert _summary(changes) == _summary(_poll(single, BATCH_NEVER, monkeypatch))
    assert [c.id for c in changes.avail] == [*ids, 62]
    assert [a.code for a in changes.anomalies] == ["DESC_REUSED_IN_FLIGHT"]
    owner = batched._desc_owner
    assert owner[62] == owner[63] == owner[held] == 62
    _same_trackers(batched, single)


# -- the per-entry checks: big tables, one bad entry anywhere -------------------------------------------

MEM_BASE, MEM_SIZE = 0x100000, 0x100000


def _good_split_table(size: int, chain: int) -> list[tuple[int, int, int, int]]:
    rows = []
    for k in range(size):
        last = k % chain == chain - 1 or k == size - 1
        write = k % chain >= chain // 2
        rows.append((MEM_BASE + 64 * k, 32, (0 if last else VIRTQ_DESC_F_NEXT) | (VIRTQ_DESC_F_WRITE if write else 0),
                     0 if last else k + 1))
    return rows


BAD_ENTRIES = st.sampled_from([
    lambda r: (r[0], r[1], r[2] | VIRTQ_DESC_F_INDIRECT, r[3]),
    lambda r: (MEM_BASE + MEM_SIZE - 16, 32, r[2], r[3]),
    lambda r: (MEM_BASE - 8, 32, r[2], r[3]),
    lambda r: (MEM_BASE + MEM_SIZE, 0, r[2], r[3]),  # empty, outside: fine
    lambda r: ((1 << 64) - 8, 16, r[2], r[3]),  # addr + len wraps past 2^64
    lambda r: (r[0], B.SMALL_LEN, r[2], r[3]),
    lambda r: (r[0], (1 << 32) - 1, r[2], r[3]),
    lambda r: (r[0], r[1], r[2] | VIRTQ_DESC_F_NEXT, 0xFFFF),
    lambda r: (r[0], r[1], r[2] ^ VIRTQ_DESC_F_WRITE, r[3]),
    lambda r: (r[0], r[1], r[2] | VIRTQ_DESC_F_NEXT, r[3] ^ 1),
])


def _memory(table: bytes, at: int) -> GuestMemory:
    memory = GuestMemory()
    memory.add_buffer(MEM_BASE, bytearray(MEM_SIZE))
    memory.write(at, table)
    return memory


def _same(a, b) -> None:
    assert (a.id, a.avail_idx, a.wrap, a.readable_len, a.writable_len, a.ring_len) == \
        (b.id, b.avail_idx, b.wrap, b.readable_len, b.writable_len, b.ring_len)
    assert _plain(a) == _plain(b)
    assert [x.code for x in a.anomalies] == [x.code for x in b.anomalies]


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([64, 256, 1024]), st.integers(1, 20), st.lists(st.tuples(st.integers(0, 1023), BAD_ENTRIES),
                                                                       max_size=3), st.randoms(use_true_random=False))
def test_split_batch_finds_any_bad_entry(size, chain, bad, rnd):
    rows = _good_split_table(size, chain)
    for at, make in bad:
        rows[at % size] = make(rows[at % size])
    table = b"".join(DESC_STRUCT.pack(*row) for row in rows)
    desc = MEM_BASE + MEM_SIZE // 2
    memory = _memory(table, desc)
    config = QueueConfig(0, size, desc, desc + 0x8000, desc + 0x10000)
    heads = [k for k in range(0, size, chain)]
    rnd.shuffle(heads)
    view, bounds = memory.view(desc, 16 * size), MemoryBounds(memory)
    got = B.walk_split_batch(config, memory, heads, 7, view, bounds)
    for k, (head, chain_got) in enumerate(zip(heads, got, strict=True)):
        _same(chain_got, careful_split_chain(config, memory, head, avail_idx=7 + k, table=view, bounds=bounds))


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([64, 256, 1000]), st.integers(1, 20), st.integers(0, 999), st.booleans(),
       st.lists(st.tuples(st.integers(0, 999), BAD_ENTRIES), max_size=3))
def test_packed_batch_finds_any_bad_entry(size, chain, slot, wrap, bad):
    slot %= size
    stamp = 0x80 if wrap else 0x8000  # available with wrap counter ``wrap`` (2.8.1); flipped in the next lap
    rows = []
    for k, (addr, length, flags, _) in enumerate(_good_split_table(size, chain)):
        pos = (k - slot) % size  # lists start at ``slot``
        lap = stamp if pos + slot < size else stamp ^ 0x8080
        rows.append([addr, length, k // chain % size, (flags & (VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE)) | lap])
    # lists of ``chain`` slots from ``slot`` on: NEXT on all but each list's last
    for pos in range(size):
        k = (slot + pos) % size
        rows[k][3] = (rows[k][3] & ~VIRTQ_DESC_F_NEXT) | (VIRTQ_DESC_F_NEXT if pos % chain != chain - 1 else 0)
        rows[k][3] = (rows[k][3] & ~VIRTQ_DESC_F_WRITE) | (VIRTQ_DESC_F_WRITE if pos % chain >= chain // 2 else 0)
        rows[k][2] = pos // chain
    for at, make in bad:
        addr, length, flags, _ = make((rows[at % size][0], rows[at % size][1], rows[at % size][3], 0))
        rows[at % size] = [addr, length, rows[at % size][2], flags & 0xFFFF]
    ring = b"".join(PACKED_DESC_STRUCT.pack(a, n & 0xFFFFFFFF, i & 0xFFFF, f) for a, n, i, f in rows)
    desc = MEM_BASE + MEM_SIZE // 2
    memory = _memory(ring, desc)
    config = QueueConfig(0, size, desc, desc + 0x8000, desc + 0x10000, Layout.PACKED)
    view, bounds = memory.view(desc, 16 * size), MemoryBounds(memory)
    here, w, total = slot, wrap, 0
    chains, taken = B.packed_batch(config, memory, slot, wrap, view, bounds)
    for got in chains:
        want = careful_packed_chain(config, memory, here, w, ring=view, bounds=bounds)
        _same(got, want)
        assert not want.anomalies
        here += got.ring_len
        total += got.ring_len
        if here >= size:
            here, w = here - size, not w
    assert taken == total <= size
    if not bad and size % chain == 0:
        assert total == size  # nothing wrong: the whole ring in one batch


def _pair(size: int = 64):
    guest = GuestDriver.in_buffer(MEMORY)
    queue = guest.queue(0, size)
    return queue, RingTracker(queue.config, guest.memory), RingTracker(queue.config, guest.memory)


def _both(batched, single):
    with pytest.MonkeyPatch.context() as monkeypatch:
        changes = _poll(batched, BATCH_ALWAYS, monkeypatch)
        assert _summary(changes) == _summary(_poll(single, BATCH_NEVER, monkeypatch))
    _same_trackers(batched, single)
    return changes


def test_a_run_of_descriptors_in_flight_taken_again():
    """A chain laid out in table order (taken as one run) over descriptors of a chain in flight."""
    queue, batched, single = _pair()
    queue.add([b"a", b"b"], [8, 8])  # descriptors 0 1 2 3
    _both(batched, single)
    ids = [queue.add([b"x"], [8]) for _ in range(8)]
    queue.expose(1)  # 1 -> 2 -> 3, all still the first chain's
    changes = _both(batched, single)
    assert [c.id for c in changes.avail] == [*ids, 1]
    assert [a.code for a in changes.anomalies] == ["DESC_REUSED_IN_FLIGHT"] * 3
    assert batched._desc_owner[1:4] == [1, 1, 1]


def test_a_loop_among_short_chains():
    """Short chains are walked descriptor by descriptor: a loop among them ends in the careful walker."""
    queue, batched, single = _pair(32)
    ids = [queue.add([b"x"], []) for _ in range(20)]
    queue.write_desc(31, 0x1000, 4, VIRTQ_DESC_F_NEXT, 30)
    queue.write_desc(30, 0x1000, 4, VIRTQ_DESC_F_NEXT, 31)
    queue.expose(31)
    changes = _both(batched, single)
    assert [c.id for c in changes.avail] == [*ids, 31]
    assert [a.code for a in changes.anomalies] == ["DESC_LOOP"]


def test_memory_in_two_regions():
    """Guest memory in two regions: the batch walks hand every chain to the careful walkers."""
    memory = GuestMemory()
    memory.add_buffer(0, bytearray(MEMORY))
    memory.add_buffer(MEMORY + 0x100000, bytearray(0x10000))
    guest = GuestDriver(memory, Allocator(0, MEMORY))
    for layout in (Layout.SPLIT, Layout.PACKED):
        queue = guest.queue(layout is Layout.PACKED, 32, layout=layout)
        batched, single = RingTracker(queue.config, memory), RingTracker(queue.config, memory)
        ids = [queue.add([b"x" * 16], [8]) for _ in range(16)]
        changes = _both(batched, single)
        assert [c.id for c in changes.avail] == ids and not changes.anomalies


# -- the quick constructors equal the usual ones ----------------------------------------------------------


@given(st.integers(0, 0xFFFF), st.integers(0, (1 << 32) - 1), st.integers(0, (1 << 32) - 1),
       st.integers(0, 0xFFFF), st.booleans(), st.booleans())
def test_quick_used_elements_and_completions_equal_the_constructors(queue, used_id, length, used_idx, wrap, implied):
    from vqtrace.model import UsedElem
    from vqtrace.rings.tracker import Completion

    elem = T._used_elem(queue, used_id, length, used_idx, wrap, implied)
    want = UsedElem(queue, used_id, length, used_idx, wrap=wrap, implied=implied)
    assert type(elem) is UsedElem and elem == want and hash(elem) == hash(want) and repr(elem) == repr(want)
    assert (elem.queue, elem.id, elem.len, elem.used_idx, elem.wrap, elem.implied) == \
        (queue, used_id, length, used_idx, wrap, implied)
    assert T._used_elem(queue, used_id, length, used_idx) == UsedElem(queue, used_id, length, used_idx)
    done = T._new_done((elem, None))
    assert type(done) is Completion and done == Completion(want, None)
    assert (done.elem, done.chain, done.id, done.len) == (want, None, used_id, length)
    with pytest.raises(AttributeError):
        elem.len = 0  # immutable, as the frozen dataclass it was


def test_ring_len_is_counted_once_and_again_after_new_descriptors():
    from vqtrace.model import Chain, Descriptor

    chain = Chain(0, 1, 0, [Descriptor(0x1000, 16, 4, 1), Descriptor(0x2000, 8, 0, 0, in_indirect=True)])
    assert chain.ring_len == 1 and chain.ring_len == 1
    chain.descriptors = [Descriptor(0x1000, 16, 1, 1, next=2), Descriptor(0x2000, 8, 0, 2)]
    assert chain.ring_len == 2


def test_a_run_partly_taken_by_another_chain_is_released_entry_by_entry():
    """A chain of a batch walk, in table order (released in one slice when all its entries are still its own),
    three of whose entries another chain takes while it is in flight: its release frees only the others,
    the other chain's release the rest, as walked one by one."""
    queue, batched, single = _pair()
    device = DeviceQueue(queue.config, queue.memory)
    first = queue.add([b"a"] * 4, [8] * 4)  # descriptors 0 .. 7, in table order
    _both(batched, single)
    assert first in batched._spans
    queue.write_desc(60, 0x1000, 4, VIRTQ_DESC_F_NEXT, 5)  # 60 -> 5 -> 6 -> 7
    queue.expose(60)
    changes = _both(batched, single)
    assert [a.code for a in changes.anomalies] == ["DESC_REUSED_IN_FLIGHT"] * 3
    chains = [device.pop(), device.pop()]
    assert [c.id for c in chains] == [first, 60]
    device.push(chains[0], 0)
    _both(batched, single)
    assert batched._desc_owner[:8] == [-1] * 5 + [60] * 3 and batched._desc_owner[60] == 60
    assert first not in batched._spans
    device.push(chains[1], 0)
    _both(batched, single)
    assert batched._desc_owner == [-1] * 64


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([64, 256]), st.lists(st.tuples(st.integers(2, 12), st.integers(1, 3)), min_size=1, max_size=8),
       st.lists(st.integers(0, 3), min_size=96, max_size=96), st.randoms(use_true_random=False))
def test_split_batch_runs_and_the_links_between_them(size, shapes, writes, rnd):
    """Chains in pieces (runs of entries in table order, linked one to the next anywhere in the table), with
    readable and writable descriptors in any order: the walk run by run (few chains: see split_batch) checks
    the links inside runs with numpy and those between runs itself; either way, as the careful walker."""
    free = list(range(size))
    rows: list[tuple[int, int, int, int] | None] = [None] * size
    heads, w = [], 0
    for length, pieces in shapes:
        start = rnd.randrange(len(free) - length) if len(free) > length else None
        if start is None:
            break
        cuts = sorted(rnd.sample(range(1, length), min(pieces - 1, length - 1)))
        runs = [free[start:start + length][a:b] for a, b in zip([0, *cuts], [*cuts, length], strict=True)]
        del free[start:start + length]
        rnd.shuffle(runs)  # the pieces in any order in the table: links between runs go anywhere
        entries = [e for run in runs for e in run]
        for k, e in enumerate(entries):
            kind = writes[w % len(writes)]
            w += 1
            flags = (VIRTQ_DESC_F_WRITE if (kind & 1 if kind < 2 else k >= length // 2) else 0)
            last = k == length - 1
            rows[e] = (MEM_BASE + 64 * e, 16, flags | (0 if last else VIRTQ_DESC_F_NEXT), 0 if last else entries[k + 1])
        heads.append(entries[0])
    rows = [r if r is not None else (MEM_BASE, 8, 0, 0) for r in rows]
    table = b"".join(DESC_STRUCT.pack(*row) for row in rows)
    desc = MEM_BASE + MEM_SIZE // 2
    memory = _memory(table, desc)
    config = QueueConfig(0, size, desc, desc + 0x8000, desc + 0x10000)
    view, bounds = memory.view(desc, 16 * size), MemoryBounds(memory)
    got = B.walk_split_batch(config, memory, heads, 0, view, bounds)
    for k, (head, chain_got) in enumerate(zip(heads, got, strict=True)):
        _same(chain_got, careful_split_chain(config, memory, head, avail_idx=k, table=view, bounds=bounds))
