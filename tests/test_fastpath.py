"""The struct/numpy fast path equals the construct definitions of the virtqueue layouts."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from construct import GreedyBytes, Int16ub, Struct
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ROOT
from vqtrace.dissectors import DissectError, fastpath, get_layer
from vqtrace.dissectors.types import le16, le32

LAYOUTS = list(fastpath.LAYOUTS.values())


@pytest.mark.parametrize(("layout", "names", "size"), [
    (fastpath.SPLIT_DESC, ("addr", "len", "flags", "next"), 16),  # virtio 1.4, 2.7.5
    (fastpath.PACKED_DESC, ("addr", "len", "id", "flags"), 16),  # 2.8.13
    (fastpath.USED_ELEM, ("id", "len"), 8),  # 2.7.8
], ids=lambda v: getattr(v, "layer", None))
def test_layouts_follow_the_spec_structs(layout, names, size):
    assert layout.names == names and layout.size == size
    assert layout.dtype().itemsize == size and layout.dtype().names == names
    assert get_layer(layout.layer).sizeof() == size


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda layout: layout.layer)
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=80))
def test_fast_path_equals_construct_on_random_bytes(layout, data):
    layer = get_layer(layout.layer)
    entries = len(data) // layout.size
    for k in range(entries):
        chunk = data[k * layout.size:(k + 1) * layout.size]
        parsed = layer.parse(chunk)  # the compiled construct path
        tree = layer.dissect(chunk)  # the field-tree path
        expected = tuple(int(parsed[name]) for name in layout.names)
        assert fastpath.unpack_one(layout, data, k * layout.size) == expected
        assert tuple(tree[f"{layer.prefix}.{name}"] for name in layout.names) == expected
    whole = data[:entries * layout.size]
    rows = fastpath.unpack(layout, whole)
    assert rows == [fastpath.unpack_one(layout, whole, k * layout.size) for k in range(entries)]
    assert list(fastpath.iter_unpack(layout, whole)) == rows
    array = fastpath.as_array(layout, whole)
    assert [tuple(int(v) for v in row) for row in array.tolist()] == rows
    # a short entry fails on both paths with the one exception family
    if len(data) % layout.size:
        with pytest.raises(DissectError):
            layer.parse(data[entries * layout.size:])
        with pytest.raises(DissectError) as err:
            fastpath.unpack(layout, data)
        assert err.value.layer == layout.layer and err.value.offset == entries * layout.size
        with pytest.raises(DissectError):
            fastpath.unpack_one(layout, data, entries * layout.size)


def test_indirect_table_reads_the_same_both_ways():
    raw = bytes(range(64))  # four descriptors
    tree = get_layer("virtqueue.indirect").dissect(raw)
    addrs = [node.value for node in tree.find_all("virtqueue.indirect.desc.addr")]
    assert addrs == [row[0] for row in fastpath.unpack(fastpath.SPLIT_DESC, raw)]
    assert fastpath.unpack(fastpath.SPLIT_DESC, b"") == []


def test_as_array_is_a_zero_copy_view():
    buf = bytearray(32)
    array = fastpath.as_array(fastpath.SPLIT_DESC, buf)
    buf[8:12] = (4096).to_bytes(4, "little")
    assert int(array["len"][0]) == 4096 and array.dtype == np.dtype(list(fastpath.SPLIT_DESC.dtype_spec))


def test_offsets_out_of_range_are_dissect_errors():
    with pytest.raises(DissectError, match="needs 8 bytes at offset -1"):
        fastpath.unpack_one(fastpath.USED_ELEM, bytes(16), -1)
    with pytest.raises(DissectError, match="got 0"):
        fastpath.unpack_one(fastpath.USED_ELEM, bytes(16), 16)


def test_only_flat_little_endian_integer_structs_have_a_fast_layout():
    layout = fastpath.struct_layout("x", Struct("a" / le16, "b" / le32))
    assert (layout.packer.format, layout.size, layout.dtype_spec) == ("<HL", 6, (("a", "<u2"), ("b", "<u4")))
    with pytest.raises(TypeError, match="little-endian"):
        fastpath.struct_layout("x", Struct("a" / Int16ub))
    with pytest.raises(TypeError, match="no fixed struct format"):
        fastpath.struct_layout("x", Struct("a" / GreedyBytes))


def test_benchmarks_run_quick_and_print_figures():
    # a smoke run (not a timing): every benchmark script prints well-formed figure lines
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--quick",
                             "--only", "bench_dissect"], capture_output=True, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    figures = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert figures and all(set(f) == {"figure", "value", "unit"} and f["value"] > 0 for f in figures)
    names = {f["figure"] for f in figures}
    assert {"dissect.desc.construct_tree", "dissect.desc.construct_compiled", "dissect.desc.struct",
            "dissect.desc.numpy"} <= names
