"""The fast values-only dissector (vqtrace.trace.fast) gives exactly the walker's fields, or its error."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqtrace.dissectors import DissectError, all_layers, dissect
from vqtrace.dissectors.wireshark import ir
from vqtrace.trace.fast import fast_layer, tree_pairs

LAYERS = all_layers()
PARAMS = [None, {"queue_size": 4}, {"queue_size": 4, "event_idx": True}, {"features": 1 << 32 | 1 << 57},
          {"features": 1 << 69}, {"features": 1 << 3}, {"channel": 1}, {"packed": True}, {"xen_mmap": True},
          {"cdb_size": 16, "sense_size": 32}, {"request_type": 15}, {"ctrl_class": 8, "ctrl_command": 1},
          {"legacy": True}, {"msix": True}, {"pi_bytesin": 8, "features": 8}]
# bytes that steer layouts (opcodes, response codes, event numbers, lengths) more often than chance would
SEEDS = st.sampled_from([0, 1, 2, 3, 4, 5, 8, 0x12, 0x25, 0x28, 0x70, 0x72, 0x9E, 0xA0, 0xFF])
DATA = st.lists(st.one_of(st.integers(0, 255), SEEDS), max_size=160).map(bytes)


def walker(layer, data, params):
    try:
        return tree_pairs(layer.dissect(data, params=params)), None
    except DissectError as err:
        return None, err.offset


def fast(layer, data, params):
    try:
        return fast_layer(layer.name).pairs(data, params), None
    except DissectError as err:
        return None, err.offset


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: layer.name)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=DATA, params=st.sampled_from(PARAMS))
def test_fast_fields_equal_the_walkers(layer, data, params):
    assert fast(layer, data, params) == walker(layer, data, params)


def test_known_messages_and_base_offsets():
    # virtio 1.4, 5.2.6: a write header then data; the error offset counts from the base
    req = struct.pack("<IIQ", 1, 0, 2048) + b"data"
    pairs = fast_layer("virtio_blk.req").pairs(req, base=100)
    assert pairs == [("virtio_blk", None), ("virtio_blk.type", 1), ("virtio_blk.reserved", 0),
                     ("virtio_blk.sector", 2048), ("virtio_blk.data", b"data")]
    with pytest.raises(DissectError) as err:
        fast_layer("virtio_blk.req").pairs(req[:10], base=100)
    assert err.value.offset == 108 and err.value.layer == "virtio_blk.req"
    # a ring with queue_size entries (2.7.6): the array container is not a field, its entries are
    tree = dissect("virtqueue.avail", struct.pack("<HH4HH", 1, 3, 0, 1, 2, 0, 9),
                   params={"queue_size": 4, "event_idx": True})
    assert fast_layer("virtqueue.avail").pairs(tree_bytes := struct.pack("<HH4HH", 1, 3, 0, 1, 2, 0, 9),
                                               {"queue_size": 4, "event_idx": True}) == tree_pairs(tree)
    assert len(tree_bytes) == 14


def test_every_layout_is_understood_by_the_node_builder():
    builder = ir.Builder()
    for layer in LAYERS:
        nodes = ir.walk_nodes(ir.build(layer.struct, layer.prefix, layer.title, builder))
        assert not [n for n in nodes if isinstance(n, ir.OpaqueNode)], layer.name


def test_no_field_is_named_like_a_dict_method():
    # the fast context is a dict that is its own __dict__: a field called "get" would hide dict.get
    names = set()
    for layer in LAYERS:
        for node in ir.walk_nodes(ir.build(layer.struct, layer.prefix, layer.title)):
            if isinstance(node, ir.StructNode):
                names.update(name for name, _ in node.fields if name)
    assert not names & set(dir(dict))
