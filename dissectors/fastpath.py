"""Fast readers for the hot virtqueue layouts, derived from their construct definitions.

A ring reader walking thousands of descriptors cannot afford a field tree per
descriptor (DESIGN.md: "A hot loop may read with struct/numpy, but its layout comes
from, or is tested against, the construct definition"). Here the ``struct`` format
and the numpy dtype of a fixed-size, little-endian, flat construct ``Struct`` are
computed from the definition itself (:func:`struct_layout`), for:

- ``virtqueue.desc`` (``struct virtq_desc``, virtio 1.4, 2.7.5): addr, len, flags, next;
- ``virtqueue.packed_desc`` (``struct pvirtq_desc``, 2.8.13): addr, len, id, flags;
- ``virtqueue.used_elem`` (``struct virtq_used_elem``, 2.7.8): id, len.

:func:`unpack` / :func:`unpack_one` give tuples in field order (``struct``);
:func:`as_array` a zero-copy numpy structured array over the bytes. Bad input raises
the same :class:`DissectError` as the construct path (tests/test_fastpath.py holds
both paths equal on random bytes).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from construct import Adapter, Construct, FormatField, Renamed, Struct

from .errors import DissectError
from .virtqueue import packed_desc, split_desc, used_elem

_NUMPY_KINDS = {"B": "u1", "H": "u2", "I": "u4", "L": "u4", "Q": "u8", "b": "i1", "h": "i2", "i": "i4", "l": "i4",
                "q": "i8"}


@dataclass(frozen=True)
class FastLayout:
    """One layout as ``struct`` and numpy see it."""

    layer: str
    names: tuple[str, ...]
    packer: struct.Struct
    dtype_spec: tuple[tuple[str, str], ...]

    @property
    def size(self) -> int:
        return self.packer.size

    def dtype(self) -> Any:
        """The numpy structured dtype (numpy is imported on first use)."""
        import numpy as np

        return np.dtype(list(self.dtype_spec))


def _format_field(con: Construct) -> FormatField:
    """The FormatField under Renamed / Adapter (Hex, Bitmask, Address...) wrappers."""
    while not isinstance(con, FormatField):
        if not isinstance(con, Renamed | Adapter):
            raise TypeError(f"{type(con).__name__} has no fixed struct format")
        con = con.subcon
    return con


def struct_layout(layer: str, con: Struct) -> FastLayout:
    """The ``struct`` format and numpy dtype of a flat Struct of little-endian integers."""
    names, codes = [], []
    for sub in con.subcons:
        if not sub.name:
            raise TypeError(f"{layer}: an unnamed field has no place in a fast layout")
        fmt = _format_field(sub).fmtstr
        if fmt[0] != "<" or fmt[1:] not in _NUMPY_KINDS:
            raise TypeError(f"{layer}.{sub.name}: {fmt!r} is not a little-endian integer")
        names.append(sub.name)
        codes.append(fmt[1:])
    packer = struct.Struct("<" + "".join(codes))
    dtype = tuple((name, "<" + _NUMPY_KINDS[code]) for name, code in zip(names, codes, strict=True))
    return FastLayout(layer, tuple(names), packer, dtype)


SPLIT_DESC = struct_layout("virtqueue.desc", split_desc)
PACKED_DESC = struct_layout("virtqueue.packed_desc", packed_desc)
USED_ELEM = struct_layout("virtqueue.used_elem", used_elem)
LAYOUTS: dict[str, FastLayout] = {layout.layer: layout for layout in (SPLIT_DESC, PACKED_DESC, USED_ELEM)}


def _check_table(layout: FastLayout, data: bytes | bytearray | memoryview) -> None:
    """A table holds whole entries (none is a valid, empty table)."""
    size = len(data)
    if size % layout.size:
        raise DissectError(layout.layer, size - size % layout.size,
                           f"{size % layout.size} trailing bytes, not a whole {layout.size}-byte entry")


def unpack_one(layout: FastLayout, data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, ...]:
    """The fields of one entry at ``offset``, in field order."""
    if offset < 0 or len(data) - offset < layout.size:
        raise DissectError(layout.layer, max(offset, 0), f"needs {layout.size} bytes at offset {offset}, "
                           f"got {max(len(data) - offset, 0)}")
    return layout.packer.unpack_from(data, offset)


def unpack(layout: FastLayout, data: bytes | bytearray | memoryview) -> list[tuple[int, ...]]:
    """Every entry of a table of whole entries (a descriptor table, an indirect table, used ring entries)."""
    _check_table(layout, data)
    return list(layout.packer.iter_unpack(data))


def iter_unpack(layout: FastLayout, data: bytes | bytearray | memoryview) -> Iterator[tuple[int, ...]]:
    """Lazily, the entries of a table of whole entries."""
    _check_table(layout, data)
    return layout.packer.iter_unpack(data)


def as_array(layout: FastLayout, data: bytes | bytearray | memoryview) -> Any:
    """A numpy structured array viewing ``data`` (no copy; read-only for bytes)."""
    import numpy as np

    _check_table(layout, data)
    return np.frombuffer(data, dtype=layout.dtype())
