"""The construct-to-field-tree walker on the virtqueue layouts (virtio 1.4, 2.7 and 2.8)."""

from __future__ import annotations

import struct

import pytest

from vqtrace.dissectors import DissectError, dissect, get_layer
from vqtrace.dissectors.tree import render_text
from vqtrace.dissectors.virtqueue import split_ring_sizes


def test_split_descriptor_fields_offsets_and_flags():
    raw = struct.pack("<QIHH", 0x1234_5000, 4096, 0x3, 7)
    tree = dissect("virtqueue.desc", raw)
    assert tree["virtqueue.desc.addr"] == 0x1234_5000
    assert tree["virtqueue.desc.len"] == 4096
    assert tree["virtqueue.desc.flags"] == 3
    assert tree["virtqueue.desc.flags.next"] is True
    assert tree["virtqueue.desc.flags.write"] is True
    assert tree["virtqueue.desc.flags.indirect"] is False
    assert tree["virtqueue.desc.next"] == 7
    offsets = {f.abbrev: (f.offset, f.length) for f in tree.children}
    assert offsets == {
        "virtqueue.desc.addr": (0, 8),
        "virtqueue.desc.len": (8, 4),
        "virtqueue.desc.flags": (12, 2),
        "virtqueue.desc.next": (14, 2),
    }
    assert tree.find("virtqueue.desc.flags").display == "0x0003 (NEXT, WRITE)"
    assert tree.find("virtqueue.desc.addr").display == "0x0000000012345000"


def test_base_offset_shifts_every_node():
    raw = struct.pack("<QIHH", 1, 2, 0, 0)
    tree = dissect("virtqueue.desc", raw, base=100)
    assert [f.offset for f in tree.walk()] == [100, 100, 108, 112, 112, 112, 112, 114]


def test_packed_descriptor_avail_used_bits():
    raw = struct.pack("<QIHH", 0x2000, 512, 9, 0x8000 | 0x80 | 0x2)
    tree = dissect("virtqueue.packed_desc", raw)
    assert tree["virtqueue.packed_desc.id"] == 9
    assert tree["virtqueue.packed_desc.flags.avail"] is True
    assert tree["virtqueue.packed_desc.flags.used"] is True
    assert tree["virtqueue.packed_desc.flags.write"] is True
    assert tree["virtqueue.packed_desc.flags.next"] is False


def test_avail_ring_with_queue_size_and_used_event():
    raw = struct.pack("<HH4HH", 1, 3, 0, 1, 2, 0, 0xBEEF)
    tree = dissect("virtqueue.avail", raw, params={"queue_size": 4, "event_idx": True})
    values = tree.values()
    assert values["virtqueue.avail.ring"] == [0, 1, 2, 0]
    assert values["virtqueue.avail.used_event"] == 0xBEEF
    assert values["virtqueue.avail.flags.no_interrupt"] is True
    # Without EVENT_IDX the trailing le16 is not a field.
    tree = dissect("virtqueue.avail", raw[:-2], params={"queue_size": 4})
    assert "virtqueue.avail.used_event" not in tree


def test_used_ring_elements_repeat_their_abbreviations():
    raw = struct.pack("<HH2I2IH", 0, 2, 5, 100, 6, 200, 9)
    tree = dissect("virtqueue.used", raw, params={"queue_size": 2, "event_idx": True})
    assert [f.value for f in tree.find_all("virtqueue.used.ring.id")] == [5, 6]
    assert tree.values()["virtqueue.used.ring.len"] == [100, 200]
    assert tree["virtqueue.used.avail_event"] == 9


def test_packed_event_suppression_fields():
    raw = struct.pack("<HH", 0x8000 | 17, 2)
    tree = dissect("virtqueue.packed_event", raw)
    assert tree["virtqueue.packed_event.desc.off"] == 17
    assert tree["virtqueue.packed_event.desc.wrap"] is True
    assert tree.find("virtqueue.packed_event.flags").display == "DESC (2)"


def test_truncated_input_names_layer_offset_and_field():
    with pytest.raises(DissectError) as info:
        dissect("virtqueue.desc", b"\x00" * 10)
    assert info.value.layer == "virtqueue.desc"
    assert info.value.offset == 8
    assert "virtqueue.desc.len needs 4 bytes, 2 left" in str(info.value)


def test_array_count_larger_than_data_is_refused_before_allocating():
    with pytest.raises(DissectError, match="65535 entries"):
        dissect("virtqueue.avail", b"\x00" * 8, params={"queue_size": 65535})


def test_unknown_layer_lists_known_ones():
    with pytest.raises(DissectError, match=r"virtqueue\.desc"):
        get_layer("virtqueue.nope")


def test_fast_parse_matches_tree():
    raw = struct.pack("<QIHH", 0xABC000, 77, 1, 3)
    layer = get_layer("virtqueue.desc")
    values = layer.parse(raw)
    tree = layer.dissect(raw)
    for name in ("addr", "len", "flags", "next"):
        assert values[name] == tree[f"virtqueue.desc.{name}"]
    assert layer.build(values) == raw


def test_split_ring_part_sizes_from_the_spec_table():
    # virtio 1.4, 2.7: "Virtqueue Part Sizes" for a 256-entry queue.
    assert split_ring_sizes(256) == {"desc": 4096, "avail": 518, "used": 2054}


def test_text_rendering_is_tshark_like():
    raw = struct.pack("<QIHH", 0x1000, 16, 1, 1)
    lines = render_text([dissect("virtqueue.desc", raw)])
    assert lines[0] == "Split virtqueue descriptor"
    assert lines[1] == "    Address: 0x0000000000001000"
    assert "    Flags: 0x0001 (NEXT)" in lines
    assert "        NEXT: Set" in lines
