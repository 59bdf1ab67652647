"""Chain walking (virtio 1.4, 2.7.5, 2.7.5.3, 2.8.5-2.8.7): good chains, and each chain anomaly one by one."""

from __future__ import annotations

import pytest

from vqtrace.dissectors.virtqueue import (
    VIRTQ_DESC_F_AVAIL,
    VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_USED,
    VIRTQ_DESC_F_WRITE,
)
from vqtrace.driver import DescSpec, GuestDriver
from vqtrace.memory import GuestMemory
from vqtrace.model import VIRTIO_F_INDIRECT_DESC, Layout
from vqtrace.rings import KINDS, DeviceQueue
from vqtrace.rings import anomalies as A
from vqtrace.rings.chain import (
    DESC_STRUCT,
    careful_packed_chain,
    careful_split_chain,
    ring_indices,
    walk_packed_chain,
    walk_split_chain,
)

INDIRECT = 1 << VIRTIO_F_INDIRECT_DESC
NEXT, WRITE, IND = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT


def make(layout: Layout = Layout.SPLIT, size: int = 8, features: int = INDIRECT):
    guest = GuestDriver.in_buffer(1 << 20)
    return guest, guest.queue(0, size, layout=layout, features=features)


def split_walk(guest, queue, head):
    """Walk with and without the fast path: both must agree."""
    fast = walk_split_chain(queue.config, guest.memory, head, table=queue.ring.table())
    careful = careful_split_chain(queue.config, guest.memory, head)
    assert [tuple(d) for d in fast.descriptors] == [tuple(d) for d in careful.descriptors]
    assert [a.code for a in fast.anomalies] == [a.code for a in careful.anomalies]
    assert (fast.readable_len, fast.writable_len) == (careful.readable_len, careful.writable_len)
    return careful


def packed_walk(guest, queue, slot=0, wrap=True):
    fast = walk_packed_chain(queue.config, guest.memory, slot, wrap, ring=queue.ring.ring())
    careful = careful_packed_chain(queue.config, guest.memory, slot, wrap)
    assert [tuple(d) for d in fast.descriptors] == [tuple(d) for d in careful.descriptors]
    assert [a.code for a in fast.anomalies] == [a.code for a in careful.anomalies]
    assert (fast.id, fast.readable_len, fast.writable_len) == (careful.id, careful.readable_len, careful.writable_len)
    return careful


def codes(chain) -> list[str]:
    return [a.code for a in chain.anomalies]


# -- good split chains ---------------------------------------------------------------------------


def test_split_chain_readable_then_writable():
    guest, queue = make()
    head = queue.add([b"header!!", b"payload"], [1, 512])
    chain = split_walk(guest, queue, head)
    assert chain.ok and chain.id == head == chain.head
    assert [d.len for d in chain.descriptors] == [8, 7, 1, 512]
    assert [d.is_write for d in chain.descriptors] == [False, False, True, True]
    assert [d.has_next for d in chain.descriptors] == [True, True, True, False]
    assert chain.readable_len == 15 and chain.writable_len == 513
    assert len(chain.readable) == 2 and len(chain.writable) == 2 and chain.ring_len == 4
    assert guest.memory.read(chain.descriptors[0].addr, 8) == b"header!!"
    assert ring_indices(chain) == [d.index for d in chain.descriptors]


def test_split_indirect_chain_is_flattened_and_remembers_the_table():
    guest, queue = make()
    head = queue.add([b"req"], [64, 1], indirect=True)
    chain = split_walk(guest, queue, head)
    assert chain.ok
    first, *table = chain.descriptors
    assert first.is_indirect and not first.in_indirect and first.len == 48
    assert [d.in_indirect for d in table] == [True, True, True]
    assert [d.index for d in table] == [0, 1, 2]
    assert [d.len for d in chain.buffers] == [3, 64, 1]
    assert chain.ring_len == 1 and chain.readable_len == 3 and chain.writable_len == 65


def test_split_direct_descriptors_then_one_indirect_is_valid():
    """2.7.5.3.2: zero or more chained descriptors followed by a single INDIRECT one."""
    guest, queue = make()
    table = guest.allocator.alloc(32)
    data = guest.allocator.alloc(64)
    guest.memory.write(table, bytes(32))
    queue.write_desc(0, data, 16, NEXT, 1)
    queue.write_desc(1, table, 32, IND)
    guest.memory.write(table, DESC_STRUCT.pack(data + 16, 16, NEXT, 1) + DESC_STRUCT.pack(data + 32, 32, WRITE, 0))
    chain = split_walk(guest, queue, 0)
    assert chain.ok
    assert [(d.index, d.in_indirect) for d in chain.descriptors] == [(0, False), (1, False), (0, True), (1, True)]
    assert chain.readable_len == 32 and chain.writable_len == 32 and chain.ring_len == 2


def test_write_flag_of_an_indirect_descriptor_is_ignored():
    """2.7.5.3.2: the device ignores WRITE on the descriptor that points to the table."""
    guest, queue = make()
    head = queue.add([b"abc"], [], indirect=True, hook=lambda specs: setattr(specs[0], "flags", IND | WRITE))
    chain = split_walk(guest, queue, head)
    assert chain.ok and chain.readable_len == 3 and chain.writable_len == 0


# -- split anomalies, one by one ----------------------------------------------------------------------


def test_descriptor_loop():
    guest, queue = make()

    def loop(specs: list[DescSpec]) -> None:
        specs[-1].flags |= NEXT
        specs[-1].next = 0  # the last links back to the head (the free list hands out 0, 1, 2)

    head = queue.add([b"a", b"b", b"c"], [], hook=loop)
    assert head == 0
    chain = split_walk(guest, queue, head)
    assert codes(chain) == [A.DESC_LOOP]
    assert chain.anomalies[0].section == "virtio 1.4, 2.7.5.2" and chain.anomalies[0].id == 0
    assert len(chain.descriptors) == 3  # walked once round, then stopped


def test_self_loop_and_loop_inside_an_indirect_table():
    guest, queue = make()
    queue.write_desc(5, 0x100, 4, NEXT, 5)
    assert codes(split_walk(guest, queue, 5)) == [A.DESC_LOOP]

    def loop(specs):
        specs[1].flags |= NEXT
        specs[1].next = 0

    head = queue.add([b"x", b"y"], [], indirect=True, indirect_hook=loop)
    chain = split_walk(guest, queue, head)
    assert codes(chain) == [A.DESC_LOOP]
    assert "indirect" in chain.anomalies[0].message


def test_chain_longer_than_the_queue_size():
    guest, queue = make(size=4)
    head = queue.add([b"%d" % i for i in range(5)], [], indirect=True)  # 5 entries in a table, queue size 4
    chain = split_walk(guest, queue, head)
    assert codes(chain) == [A.CHAIN_TOO_LONG]
    assert chain.anomalies[0].section == "virtio 1.4, 2.7.5.3.1"


def test_next_outside_the_table_and_head_outside_the_table():
    guest, queue = make()
    queue.write_desc(1, 0x100, 4, NEXT, 8)  # queue size 8: next 8 is out
    chain = split_walk(guest, queue, 1)
    assert codes(chain) == [A.DESC_INDEX_RANGE] and len(chain.descriptors) == 1
    chain = split_walk(guest, queue, 9)
    assert codes(chain) == [A.DESC_INDEX_RANGE] and chain.descriptors == []


def test_next_outside_an_indirect_table():
    guest, queue = make()

    def far(specs):
        specs[0].flags |= NEXT
        specs[0].next = 9

    head = queue.add([b"x", b"y"], [], indirect=True, indirect_hook=far)
    assert codes(split_walk(guest, queue, head)) == [A.DESC_INDEX_RANGE]


@pytest.mark.parametrize("addr, length", [(0x200000, 16), ((1 << 20) - 8, 16), ((1 << 64) - 4, 16)])
def test_buffer_outside_guest_memory(addr, length):
    guest, queue = make()

    def bad(specs):
        specs[1].addr, specs[1].len = addr, length

    head = queue.add([b"ok"], [32], hook=bad)
    chain = split_walk(guest, queue, head)
    assert codes(chain) == [A.DESC_OUT_OF_MEMORY]
    assert chain.anomalies[0].address == addr and f"0x{addr:x}" in chain.anomalies[0].message
    assert len(chain.descriptors) == 2  # the walk goes on: the chain's shape is fine


def test_zero_length_buffer_anywhere_is_fine():
    guest, queue = make()
    queue.write_desc(0, 0xDEAD00000000, 0, 0)
    assert split_walk(guest, queue, 0).ok


def test_indirect_table_outside_guest_memory():
    guest, queue = make()
    queue.write_desc(0, 0x7000000, 32, IND)
    chain = split_walk(guest, queue, 0)
    assert codes(chain) == [A.DESC_OUT_OF_MEMORY] and len(chain.descriptors) == 1


def test_indirect_inside_an_indirect_table():
    guest, queue = make()

    def nest(specs):
        specs[1].flags = IND

    head = queue.add([b"a", b"b"], [], indirect=True, indirect_hook=nest)
    chain = split_walk(guest, queue, head)
    assert codes(chain) == [A.NESTED_INDIRECT]
    assert chain.anomalies[0].section == "virtio 1.4, 2.7.5.3.1"
    assert chain.buffers[0].len == 1 and len(chain.buffers) == 1


def test_indirect_together_with_next():
    guest, queue = make()
    head = queue.add([b"a"], [], indirect=True, hook=lambda specs: setattr(specs[0], "flags", IND | NEXT))
    chain = split_walk(guest, queue, head)
    assert codes(chain) == [A.INDIRECT_WITH_NEXT]
    assert chain.readable_len == 1  # the table is still read


@pytest.mark.parametrize("length, walked, more", [(0, 0, []), (17, 1, [A.DESC_INDEX_RANGE]), (8, 0, []),
                                                  (40, 2, [])])
def test_indirect_length_zero_or_not_a_multiple_of_16(length, walked, more):
    guest, queue = make()
    head = queue.add([b"a", b"b"], [], indirect=True, hook=lambda specs: setattr(specs[0], "len", length))
    chain = split_walk(guest, queue, head)
    assert codes(chain) == [A.INDIRECT_BAD_LEN, *more]  # 17 bytes: one entry, whose NEXT leads out of it
    assert len(chain.buffers) == walked


def test_indirect_without_the_feature():
    guest, queue = make(features=0)
    head = queue.add([b"a"], [4], indirect=True)
    chain = split_walk(guest, queue, head)
    assert codes(chain) == [A.INDIRECT_NOT_NEGOTIATED] and chain.writable_len == 4


def test_readable_after_writable():
    guest, queue = make()
    head = queue.add([b"a"], [4, 4], hook=lambda specs: setattr(specs[2], "flags", specs[2].flags & ~WRITE))
    chain = split_walk(guest, queue, head)
    assert codes(chain) == [A.READABLE_AFTER_WRITABLE]
    assert chain.anomalies[0].section == "virtio 1.4, 2.7.4.2"
    assert chain.readable_len == 5 and chain.writable_len == 4


def test_zero_length_writable_then_readable_is_still_out_of_order():
    guest, queue = make()
    queue.write_desc(0, 0x1000, 0, WRITE | NEXT, 1)
    queue.write_desc(1, 0x1000, 4, 0)
    assert codes(split_walk(guest, queue, 0)) == [A.READABLE_AFTER_WRITABLE]


def test_chain_bigger_than_4_gib():
    guest, queue = make()
    queue.write_desc(0, 0x1000, 0xFFFFFFFF, NEXT, 1)
    queue.write_desc(1, 0x1000, 2, 0)
    assert A.CHAIN_TOO_BIG in codes(split_walk(guest, queue, 0))


def test_every_anomaly_code_has_both_sections():
    for kind in KINDS.values():
        assert kind.split.startswith("virtio 1.4, 2.") and kind.packed.startswith("virtio 1.4, 2.")
        assert kind.code == kind.code.upper()


# -- packed lists ---------------------------------------------------------------------------------------


def test_packed_list_and_its_buffer_id():
    guest, queue = make(Layout.PACKED)
    buffer_id = queue.add([b"hdr"], [10, 20])
    chain = packed_walk(guest, queue)
    assert chain.ok and chain.id == buffer_id and chain.avail_idx == 0 and chain.wrap is True
    assert chain.ring_len == 3 and chain.readable_len == 3 and chain.writable_len == 30
    flags = [d.flags for d in chain.descriptors]
    assert all(f & VIRTQ_DESC_F_AVAIL and not f & VIRTQ_DESC_F_USED for f in flags)
    assert [d.index for d in chain.descriptors] == [0, 1, 2]


def test_packed_id_is_taken_from_the_last_descriptor():
    """2.8.6: the buffer id is in the last descriptor of the list; the others' ids are not used."""
    guest, queue = make(Layout.PACKED)

    def ids(specs):
        specs[0].id, specs[1].id = 7, 7
        specs[2].id = 5

    queue.add([b"a", b"b"], [3], hook=ids)
    assert packed_walk(guest, queue).id == 5


def test_packed_list_across_the_ring_end_flips_the_wrap_counter():
    guest, queue = make(Layout.PACKED, size=4)
    first = queue.add([b"a", b"b", b"c"], [])
    assert queue.get_used() == []
    # let a device use it so that the slots are free again
    device = DeviceQueue(queue.config, guest.memory)
    device.push(device.pop(), 0)
    assert [u.id for u in queue.get_used()] == [first]
    second = queue.add([b"d", b"e"], [])  # slots 3 and 0: slot 0 is in the next lap
    chain = packed_walk(guest, queue, slot=3, wrap=True)
    assert chain.ok and chain.id == second
    assert [d.index for d in chain.descriptors] == [3, 0]
    assert chain.descriptors[1].flags & VIRTQ_DESC_F_USED  # wrap counter 0: AVAIL clear, USED set


def test_packed_indirect_table():
    guest, queue = make(Layout.PACKED)
    queue.add([b"cmd"], [96], indirect=True)
    chain = packed_walk(guest, queue)
    assert chain.ok and chain.ring_len == 1
    assert [d.in_indirect for d in chain.descriptors] == [False, True, True]
    assert chain.readable_len == 3 and chain.writable_len == 96


def test_packed_first_descriptor_available_before_the_rest():
    guest, queue = make(Layout.PACKED)

    def broken(specs):
        specs[1].flags &= ~VIRTQ_DESC_F_AVAIL  # slot 1 not (yet) available
        specs[1].flags |= VIRTQ_DESC_F_USED

    queue.add([b"a", b"b"], [], hook=broken)
    chain = packed_walk(guest, queue)
    assert codes(chain) == [A.PACKED_CHAIN_INCOMPLETE]
    assert chain.anomalies[0].section == "virtio 1.4, 2.8.17" and chain.ring_len == 1


def test_packed_list_with_next_in_every_slot():
    guest, queue = make(Layout.PACKED, size=4)
    queue.add([b"a", b"b", b"c", b"d"], [], hook=lambda specs: setattr(specs[3], "flags", specs[3].flags | NEXT))
    chain = packed_walk(guest, queue)
    assert A.CHAIN_TOO_LONG in codes(chain) and chain.ring_len == 4


def test_packed_indirect_inside_a_next_list():
    guest, queue = make(Layout.PACKED)
    table = guest.allocator.alloc(16)
    queue.add([b"a"], [4], hook=lambda specs: (setattr(specs[1], "addr", table), setattr(specs[1], "len", 16),
                                                 setattr(specs[1], "flags", specs[1].flags | IND)))
    chain = packed_walk(guest, queue)
    assert A.INDIRECT_WITH_NEXT in codes(chain)
    assert chain.anomalies[0].section == "virtio 1.4, 2.8.19"


def test_packed_nested_indirect_and_bad_length():
    guest, queue = make(Layout.PACKED)
    queue.add([b"a", b"b"], [], indirect=True, indirect_hook=lambda specs: setattr(specs[1], "flags", IND))
    assert codes(packed_walk(guest, queue)) == [A.NESTED_INDIRECT]
    guest, queue = make(Layout.PACKED)
    queue.add([b"a"], [], indirect=True, hook=lambda specs: setattr(specs[0], "len", 20))
    assert codes(packed_walk(guest, queue)) == [A.INDIRECT_BAD_LEN]


def test_packed_buffer_id_out_of_range():
    guest, queue = make(Layout.PACKED)
    queue.add([b"a"], [], hook=lambda specs: setattr(specs[0], "id", 8))
    chain = packed_walk(guest, queue)
    assert codes(chain) == [A.PACKED_ID_RANGE] and chain.id == 8


def test_packed_readable_after_writable_and_out_of_memory():
    guest, queue = make(Layout.PACKED)

    def bad(specs):
        specs[2].flags &= ~WRITE
        specs[0].addr = 0x5000000

    queue.add([b"a"], [4, 4], hook=bad)
    assert codes(packed_walk(guest, queue)) == [A.DESC_OUT_OF_MEMORY, A.READABLE_AFTER_WRITABLE]


def test_walking_an_unmapped_table_is_an_anomaly_not_an_error():
    _, queue = make()
    empty = GuestMemory()
    assert codes(careful_split_chain(queue.config, empty, 0)) == [A.RING_UNMAPPED]
    assert codes(walk_split_chain(queue.config, empty, 0)) == [A.RING_UNMAPPED]
    assert codes(walk_packed_chain(queue.config, empty, 0, True)) == [A.RING_UNMAPPED]
