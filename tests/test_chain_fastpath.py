"""The fast paths (struct, numpy, batch walks) equal the construct layouts and the careful walkers."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqtrace.dissectors.virtqueue import (
    PACKED_DESC_SIZE,
    SPLIT_DESC_SIZE,
    VIRTQ_DESC_F_AVAIL,
    VIRTQ_DESC_F_USED,
    packed_desc,
    packed_event,
    split_desc,
    used_elem,
)
from vqtrace.memory import GuestMemory
from vqtrace.model import VIRTIO_F_INDIRECT_DESC, Layout, QueueConfig
from vqtrace.rings.batch import PACKED_DTYPE, SPLIT_DTYPE, scan_packed_batch, walk_split_batch
from vqtrace.rings.chain import (
    DESC_STRUCT,
    PACKED_DESC_STRUCT,
    MemoryBounds,
    careful_packed_chain,
    careful_split_chain,
    packed_desc_available,
    walk_packed_chain,
    walk_split_chain,
)
from vqtrace.rings.packed import EVENT_STRUCT
from vqtrace.rings.split import USED_ELEM_STRUCT

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- layouts: struct and numpy against the construct definitions ---------------------------------------


@given(st.binary(min_size=16, max_size=16))
def test_split_desc_struct_and_dtype_equal_construct(raw):
    parsed = split_desc.parse(raw)
    assert DESC_STRUCT.unpack(raw) == (parsed.addr, parsed.len, parsed.flags, parsed.next)
    row = np.frombuffer(raw, dtype=SPLIT_DTYPE)[0]
    assert tuple(int(v) for v in row) == (parsed.addr, parsed.len, parsed.flags, parsed.next)
    assert split_desc.build(dict(parsed)) == raw


@given(st.binary(min_size=16, max_size=16))
def test_packed_desc_struct_and_dtype_equal_construct(raw):
    parsed = packed_desc.parse(raw)
    assert PACKED_DESC_STRUCT.unpack(raw) == (parsed.addr, parsed.len, parsed.id, parsed.flags)
    row = np.frombuffer(raw, dtype=PACKED_DTYPE)[0]
    assert tuple(int(v) for v in row) == (parsed.addr, parsed.len, parsed.id, parsed.flags)


@given(st.binary(min_size=8, max_size=8), st.binary(min_size=4, max_size=4))
def test_used_elem_and_event_structs_equal_construct(elem, event):
    parsed = used_elem.parse(elem)
    assert USED_ELEM_STRUCT.unpack(elem) == (parsed.id, parsed.len)
    desc, flags = EVENT_STRUCT.unpack(event)
    assert packed_event.parse(event).desc == desc
    assert int(packed_event.parse(event).flags) == flags


def test_sizes_agree():
    assert DESC_STRUCT.size == SPLIT_DTYPE.itemsize == SPLIT_DESC_SIZE == split_desc.sizeof()
    assert PACKED_DESC_STRUCT.size == PACKED_DTYPE.itemsize == PACKED_DESC_SIZE == packed_desc.sizeof()
    assert USED_ELEM_STRUCT.size == used_elem.sizeof() and EVENT_STRUCT.size == packed_event.sizeof()


# -- random tables: fast walkers == careful walkers ------------------------------------------------------

MEM_BASE, MEM_SIZE = 0x10000, 0x10000
INDIRECT_AT = MEM_BASE + 0x4000
ADDRS = st.one_of(st.integers(MEM_BASE, MEM_BASE + MEM_SIZE), st.integers(0, (1 << 64) - 1),
                  st.sampled_from([0, MEM_BASE + MEM_SIZE - 8, (1 << 64) - 1]))
LENS = st.one_of(st.integers(0, 64), st.integers(0, (1 << 32) - 1), st.sampled_from([16, 32, 48, 17]))
FLAGS = st.one_of(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7]), st.integers(0, 0xFFFF))


def _desc_rows(size: int, nexts: st.SearchStrategy) -> st.SearchStrategy:
    return st.lists(st.tuples(ADDRS, LENS, FLAGS, nexts), min_size=size, max_size=size)


@st.composite
def split_tables(draw):
    size = draw(st.sampled_from([1, 2, 4, 8, 16]))
    rows = draw(_desc_rows(size, st.integers(0, size + 1)))
    # mostly well-formed chains: NEXT flags and in-memory buffers, with a sprinkle of the random rows above
    if draw(st.booleans()):
        good = []
        for k in range(size):
            write = draw(st.booleans()) and k > size // 2
            flags = (2 if write else 0) | (1 if k + 1 < size and draw(st.booleans()) else 0)
            good.append((MEM_BASE + 64 * k, draw(st.integers(0, 64)), flags, (k + 1) % size))
        rows = [draw(st.sampled_from([g, r])) for g, r in zip(good, rows, strict=True)]
    # some descriptors point to an indirect table at INDIRECT_AT (rows drawn the same way)
    entries = draw(st.integers(1, 6))
    table = draw(_desc_rows(entries, st.integers(0, entries)))
    if draw(st.booleans()):
        table = [(MEM_BASE + 32 * k, draw(st.integers(0, 32)), (1 if k + 1 < entries else 0)
                  | (2 if draw(st.booleans()) and k >= entries // 2 else 0), k + 1) for k in range(entries)]
    for k in draw(st.lists(st.integers(0, size - 1), max_size=3)):
        rows[k] = (INDIRECT_AT, draw(st.sampled_from([16 * entries, 16 * entries, 0, 17, 16 * (entries + 1)])),
                   draw(st.sampled_from([4, 4, 5, 6])), rows[k][3])
    heads = draw(st.lists(st.integers(0, size + 2), min_size=1, max_size=40))
    return size, rows, heads, b"".join(DESC_STRUCT.pack(*row) for row in table)


def _memory_with(table: bytes, extra_indirect: bytes = b"") -> tuple[GuestMemory, int]:
    memory = GuestMemory()
    backing = bytearray(MEM_SIZE)
    memory.add_buffer(MEM_BASE, backing)
    desc = MEM_BASE + 0x8000
    memory.write(desc, table)
    if extra_indirect:
        memory.write(INDIRECT_AT, extra_indirect[:0x1000])
    return memory, desc


def _same(a, b) -> None:
    assert (a.id, a.avail_idx, a.readable_len, a.writable_len) == (b.id, b.avail_idx, b.readable_len, b.writable_len)
    assert [tuple(d) for d in a.descriptors] == [tuple(d) for d in b.descriptors]
    assert [x.code for x in a.anomalies] == [x.code for x in b.anomalies]


@FAST
@given(split_tables(), st.binary(max_size=64))
def test_split_fast_and_batch_walks_equal_the_careful_walk(case, noise):
    size, rows, heads, indirect = case
    table = b"".join(DESC_STRUCT.pack(*row) for row in rows)
    memory, desc = _memory_with(table, noise + indirect[len(noise):] if noise else indirect)
    config = QueueConfig(0, size, desc, desc + 0x1000, desc + 0x2000, features=1 << VIRTIO_F_INDIRECT_DESC)
    bounds = MemoryBounds(memory)
    view = memory.view(desc, 16 * size)
    careful = [careful_split_chain(config, memory, h, avail_idx=k, table=view, bounds=bounds)
               for k, h in enumerate(heads)]
    for k, head in enumerate(heads):
        _same(walk_split_chain(config, memory, head, avail_idx=k, table=view, bounds=bounds), careful[k])
    for got, want in zip(walk_split_batch(config, memory, heads, 0, view, bounds), careful, strict=True):
        _same(got, want)


@st.composite
def packed_rings(draw):
    size = draw(st.sampled_from([1, 2, 3, 8, 16, 33]))
    rows = draw(_desc_rows(size, st.integers(0, 0xFFFF)))
    wrap = draw(st.booleans())
    if draw(st.booleans()):  # mostly available descriptors, with valid ids
        stamp = VIRTQ_DESC_F_AVAIL if wrap else VIRTQ_DESC_F_USED
        other = VIRTQ_DESC_F_USED if wrap else VIRTQ_DESC_F_AVAIL
        fixed = []
        for k, (addr, length, flags, _) in enumerate(rows):
            keep = draw(st.integers(0, 9))
            if keep == 0:
                fixed.append((addr, length, draw(st.integers(0, size)), flags))
            else:
                bits = draw(st.sampled_from([0, 1, 2, 3, 4, 4]))
                addr, length = MEM_BASE + 64 * k, draw(st.integers(0, 64))
                if bits == 4:  # an indirect table at INDIRECT_AT
                    addr, length = INDIRECT_AT, draw(st.sampled_from([16, 32, 48, 0, 20]))
                fixed.append((addr, length, draw(st.integers(0, size - 1)), bits | (stamp if keep > 1 else other)))
        rows = fixed
    slot = draw(st.integers(0, size - 1))
    entries = [(MEM_BASE + 32 * j, draw(st.integers(0, 32)), 0, draw(st.sampled_from([0, 0, 2, 2, 1, 4])))
               for j in range(3)]
    return size, rows, slot, wrap, b"".join(PACKED_DESC_STRUCT.pack(*e) for e in entries)


@FAST
@given(packed_rings())
def test_packed_fast_and_batch_walks_equal_the_careful_walk(case):
    size, rows, slot, wrap, indirect = case
    ring = b"".join(PACKED_DESC_STRUCT.pack(*row) for row in rows)
    memory, desc = _memory_with(ring, indirect)
    config = QueueConfig(0, size, desc, desc + 0x1000, desc + 0x2000, Layout.PACKED, 1 << VIRTIO_F_INDIRECT_DESC)
    bounds = MemoryBounds(memory)
    view = memory.view(desc, 16 * size)
    if not packed_desc_available(rows[slot][3], wrap):
        return
    _same(walk_packed_chain(config, memory, slot, wrap, ring=view, bounds=bounds),
          careful_packed_chain(config, memory, slot, wrap, ring=view, bounds=bounds))
    # The batch scan: every list it returns equals the careful walk at that place, in ring order.
    here, w = slot, wrap
    for chain in scan_packed_batch(config, memory, slot, wrap, view, bounds):
        want = careful_packed_chain(config, memory, here, w, ring=view, bounds=bounds)
        _same(chain, want)
        assert chain.wrap == w and not want.anomalies
        here += chain.ring_len
        if here >= size:
            here, w = here - size, not w


def test_lazy_descriptors_are_a_snapshot_of_the_table():
    """Chains read by the fast paths keep what the table held when read, not what it holds later."""
    memory, desc = _memory_with(b"".join(DESC_STRUCT.pack(MEM_BASE + 16 * k, 8, 1 if k < 3 else 0, k + 1)
                                         for k in range(4)) * 8)
    config = QueueConfig(0, 32, desc, desc + 0x1000, desc + 0x2000)
    bounds = MemoryBounds(memory)
    scalar = walk_split_chain(config, memory, 0, table=memory.view(desc, 512), bounds=bounds)
    batch = walk_split_batch(config, memory, [0, 4, 8] * 6, 0, memory.view(desc, 512), bounds)[0]
    memory.write(desc, DESC_STRUCT.pack(0, 99, 0, 0))  # the driver reuses descriptor 0
    for chain in (scalar, batch):
        assert [d.len for d in chain.descriptors] == [8, 8, 8, 8]
        assert [d.index for d in chain.descriptors] == [0, 1, 2, 3]


def test_indirect_chains_take_the_fast_path():
    memory, desc = _memory_with(b"".join(DESC_STRUCT.pack(INDIRECT_AT, 48, 4, 0) for _ in range(8)),
                                b"".join(DESC_STRUCT.pack(MEM_BASE + 64 * k, 10, (1 if k < 2 else 2), k + 1)
                                         for k in range(3)))
    config = QueueConfig(0, 8, desc, desc + 0x1000, desc + 0x2000, features=1 << VIRTIO_F_INDIRECT_DESC)
    bounds = MemoryBounds(memory)
    chain = walk_split_chain(config, memory, 3, table=memory.view(desc, 128), bounds=bounds)
    assert chain._lazy is not None and chain.ring_len == 1  # lazy: the fast path took it
    assert (chain.readable_len, chain.writable_len) == (20, 10)
    _same(chain, careful_split_chain(config, memory, 3, bounds=bounds))
    assert [d.in_indirect for d in chain.descriptors] == [False, True, True, True]


def test_batches_of_linux_style_indirect_tables():
    """Tables linked 0 -> 1 -> ... are checked together; any other table is walked one by one, same result."""
    table = b"".join(DESC_STRUCT.pack(MEM_BASE + 64 * k, 10 + k, (1 if k < 3 else 0) | (2 if k > 1 else 0), k + 1)
                     for k in range(4))
    odd = table[:16] + DESC_STRUCT.pack(MEM_BASE, 5, 0, 0) + table[32:]  # ends after 2 of its 4 entries
    memory, desc = _memory_with(b"".join(DESC_STRUCT.pack(INDIRECT_AT + 64 * (k % 4), 64, 4, 0) for k in range(32)))
    for k in range(4):
        memory.write(INDIRECT_AT + 64 * k, odd if k == 3 else table)
    config = QueueConfig(0, 32, desc, desc + 0x1000, desc + 0x2000, features=1 << VIRTIO_F_INDIRECT_DESC)
    bounds = MemoryBounds(memory)
    view = memory.view(desc, 512)
    heads = list(range(32))
    chains = walk_split_batch(config, memory, heads, 0, view, bounds)
    kinds = {type(c._lazy).__name__ for k, c in enumerate(chains) if k % 4 != 3}
    assert kinds == {"_IndirectRows"}
    for k, chain in enumerate(chains):
        _same(chain, careful_split_chain(config, memory, k, avail_idx=k, bounds=bounds))
        assert chain.ring_len == 1 and len(chain.buffers) == (2 if k % 4 == 3 else 4)


def test_batches_of_packed_indirect_tables():
    table = b"".join(PACKED_DESC_STRUCT.pack(MEM_BASE + 64 * k, 10 + k, 0, 2 if k > 1 else 0) for k in range(4))
    bad = table[:16] + PACKED_DESC_STRUCT.pack(MEM_BASE, 5, 0, 4) + table[32:]  # a nested INDIRECT entry
    ring = b"".join(PACKED_DESC_STRUCT.pack(INDIRECT_AT + 64 * (k % 4), 64, k, VIRTQ_DESC_F_AVAIL | 4)
                    for k in range(32))
    memory, desc = _memory_with(ring)
    for k in range(4):
        memory.write(INDIRECT_AT + 64 * k, bad if k == 3 else table)
    config = QueueConfig(0, 32, desc, desc + 0x1000, desc + 0x2000, Layout.PACKED, 1 << VIRTIO_F_INDIRECT_DESC)
    bounds = MemoryBounds(memory)
    chains = scan_packed_batch(config, memory, 0, True, memory.view(desc, 512), bounds)
    assert [c.id for c in chains] == [0, 1, 2]  # the batch stops before the bad table
    assert {type(c._lazy).__name__ for c in chains} == {"_IndirectRows"}
    for k, chain in enumerate(chains):
        want = careful_packed_chain(config, memory, k, True, bounds=bounds)
        _same(chain, want)
        assert not want.anomalies and (chain.readable_len, chain.writable_len) == (21, 25)
    assert careful_packed_chain(config, memory, 3, True, bounds=bounds).anomalies[0].code == "NESTED_INDIRECT"


def test_struct_formats_are_little_endian():
    assert DESC_STRUCT.format.startswith("<") and PACKED_DESC_STRUCT.format.startswith("<")
    assert struct.calcsize(DESC_STRUCT.format) == 16


# -- indirect tables gathered in one numpy take, or joined one by one ----------------------------------


def _table_memory(two_regions: bool) -> GuestMemory:
    """Empty guest memory of MEM_SIZE at MEM_BASE: one region, or two adjacent ones (one range, two regions:
    the indirect tables are then read one by one)."""
    memory = GuestMemory()
    if two_regions:
        memory.add_buffer(MEM_BASE, bytearray(MEM_SIZE // 2))
        memory.add_buffer(MEM_BASE + MEM_SIZE // 2, bytearray(MEM_SIZE // 2))
    else:
        memory.add_buffer(MEM_BASE, bytearray(MEM_SIZE))
    return memory


def _split_indirect_memory(offset: int, two_regions: bool) -> tuple[GuestMemory, int]:
    """32 ring descriptors, each INDIRECT to a 4-entry table at ``INDIRECT_AT + offset + 80 * k`` (all 16-byte
    aligned, gathered in one numpy take, when ``offset`` is; else read one by one), tables linked
    0 -> 1 -> 2 -> 3, some with a fault; guest memory in one region or in two adjacent ones."""
    memory = _table_memory(two_regions)
    desc = MEM_BASE + 0x8000
    for k in range(32):
        at = INDIRECT_AT + offset + 80 * k
        memory.write(desc + 16 * k, DESC_STRUCT.pack(at, 64, 4, 0))
        entries = [(MEM_BASE + 64 * j, 10 + j + k, (1 if j < 3 else 0) | (2 if j > 1 else 0), j + 1) for j in range(4)]
        if k == 5:
            entries[1] = (MEM_BASE + MEM_SIZE - 4, 64, 1, 2)  # outside guest memory
        elif k == 9:
            entries[2] = (MEM_BASE, 4, 1 | 4, 3)  # nested INDIRECT
        elif k == 13:
            entries[3] = (MEM_BASE, 4, 0, 0)  # readable after writable
        elif k == 17:
            entries[0] = (MEM_BASE, 4, 1, 0)  # links back to itself
        memory.write(at, b"".join(DESC_STRUCT.pack(*e) for e in entries))
    return memory, desc


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([0, 8, 4]), st.booleans(), st.lists(st.integers(0, 31), min_size=16, max_size=40))
def test_indirect_table_gathers_equal_the_careful_walk(offset, two_regions, heads):
    """However the tables are laid out (16-byte aligned or not, one region or two), the batch walk of
    indirect chains equals the careful walker, anomalies included."""
    memory, desc = _split_indirect_memory(offset, two_regions)
    config = QueueConfig(0, 32, desc, desc + 0x1000, desc + 0x2000, features=1 << VIRTIO_F_INDIRECT_DESC)
    bounds = MemoryBounds(memory)
    chains = walk_split_batch(config, memory, heads, 0, memory.view(desc, 512), bounds)
    for k, (head, chain) in enumerate(zip(heads, chains, strict=True)):
        want = careful_split_chain(config, memory, head, avail_idx=k, bounds=bounds)
        _same(chain, want)
        assert bool(want.anomalies) == (head in (5, 9, 13, 17))


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([0, 8]), st.booleans())
def test_packed_indirect_table_gathers_equal_the_careful_walk(offset, two_regions):
    memory = _table_memory(two_regions)
    desc = MEM_BASE + 0x8000
    for k in range(32):
        at = INDIRECT_AT + offset + 80 * k
        memory.write(desc + 16 * k, PACKED_DESC_STRUCT.pack(at, 64, k, VIRTQ_DESC_F_AVAIL | 4))
        memory.write(at, b"".join(PACKED_DESC_STRUCT.pack(MEM_BASE + 64 * j, 10 + j + k, 0, 2 if j > 1 else 0)
                                  for j in range(4)))
    config = QueueConfig(0, 32, desc, desc + 0x1000, desc + 0x2000, Layout.PACKED, 1 << VIRTIO_F_INDIRECT_DESC)
    bounds = MemoryBounds(memory)
    chains = scan_packed_batch(config, memory, 0, True, memory.view(desc, 512), bounds)
    assert [c.id for c in chains] == list(range(32))
    for k, chain in enumerate(chains):
        _same(chain, careful_packed_chain(config, memory, k, True, bounds=bounds))
