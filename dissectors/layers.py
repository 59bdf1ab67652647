"""The registry of dissectable layers: name, construct definition, spec section.

A layer is one message layout that ``vqtrace decode LAYER HEX`` can take, and
that the rest of vqtrace dissects chains and messages with. Modules that declare
layouts register them here with :func:`register`; :func:`all_layers` imports
every such module so the registry is complete.
"""

from __future__ import annotations

import difflib
import importlib
import io
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from construct import (
    Adapter,
    Array,
    Computed,
    Construct,
    ConstructError,
    FormatField,
    IfThenElse,
    Renamed,
    StreamError,
    Struct,
)

from .errors import DissectError
from .tree import Field
from .walk import FieldSpec, describe, dissect_tree

#: Modules whose import registers layers, in the order ``decode --list`` shows them.
LAYER_MODULES = (
    "record",
    "virtqueue",
    "vhost_user",
    "pci",
    "mmio",
    "net",
    "blk",
    "console",
    "balloon",
    "scsi",
    "vsock",
    "rng",
)


class _StrictStream(io.BytesIO):
    """A byte stream whose sized reads never come back short.

    construct's compiled parsers read ``Bytes(n)`` with a bare ``io.read(n)``, which
    returns what is left; the interpreted ones raise. This stream raises too, so a
    truncated field is an error on the compiled path as on the tree path. A short read
    that a GreedyRange swallowed (it stops at the first entry that fails) is remembered:
    bytes left after it are a partial trailing entry, which the tree path rejects too.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.size = len(data)
        self.short_read = False

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if size is not None and size >= 0 and len(data) < size:
            self.short_read = True
            raise StreamError(f"stream read less than specified amount, expected {size}, found {len(data)}")
        return data


def _reads_only_integers(con: Construct) -> bool:
    """Whether parsing ``con`` reads nothing but fixed-size integers (no bytes, no greedy range)."""
    if isinstance(con, FormatField | Computed):
        return True
    if isinstance(con, Struct):
        return all(_reads_only_integers(sub) for sub in con.subcons)
    if isinstance(con, IfThenElse):
        return _reads_only_integers(con.thensubcon) and _reads_only_integers(con.elsesubcon)
    if isinstance(con, Renamed | Adapter | Array):  # Enum, Hex, Bitmask, Address...; Array of integers
        return _reads_only_integers(con.subcon)
    return False


@dataclass
class Layer:
    """One layout: ``name`` for the CLI, ``prefix`` for its field abbreviations."""

    name: str
    struct: Construct
    title: str
    section: str  # where the spec defines it, e.g. "virtio 1.4, 2.7.5"
    prefix: str = ""
    summary: Callable[[Field], str] | None = None  # one-line info for `show`
    _compiled: Any = field(default=None, repr=False)
    _plain: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        self.prefix = self.prefix or self.name

    def dissect(self, data: bytes, *, base: int = 0, params: dict[str, Any] | None = None) -> Field:
        """The field tree of ``data``; raises DissectError on anything malformed."""
        return dissect_tree(self.struct, data, layer=self.name, abbrev=self.prefix,
                            label=self.title, base=base, params=params)[1]

    def parse(self, data: bytes, params: dict[str, Any] | None = None) -> Any:
        """Fast values-only parse (compiled construct), no tree; DissectError on bad input."""
        if self._compiled is None:
            try:
                self._compiled = self.struct.compile()
            except Exception:
                self._compiled = self.struct
            self._plain = _reads_only_integers(self.struct)
        # Integer fields fail loudly on short data (struct.error); only layouts with byte
        # strings or greedy ranges need the strict stream, which costs a Python call per read.
        stream = io.BytesIO(bytes(data)) if self._plain else _StrictStream(bytes(data))
        try:
            values = self._compiled.parse_stream(stream, **(params or {}))
        except (ConstructError, struct.error, ValueError, KeyError, TypeError, IndexError) as err:
            raise DissectError(self.name, 0, f"{type(err).__name__}: {err}") from None
        if isinstance(stream, _StrictStream) and stream.short_read and stream.tell() < stream.size:
            end = stream.tell()
            raise DissectError(self.name, end, f"truncated: {stream.size - end} trailing bytes are not a whole entry")
        return values

    def build(self, values: Any, params: dict[str, Any] | None = None) -> bytes:
        """Bytes for ``values`` (the inverse of parse), for tests and drivers."""
        return self.struct.build(values, **(params or {}))

    def sizeof(self) -> int | None:
        try:
            return self.struct.sizeof()
        except Exception:
            return None

    def fields(self) -> list[FieldSpec]:
        """Every field this layer can produce (for filters and the Lua plugin)."""
        return describe(self.struct, self.prefix, self.title)


_LAYERS: dict[str, Layer] = {}
_ORIGIN: dict[str, str] = {}  # layer name -> the module that registered it
_loaded = False


def register(layer: Layer) -> Layer:
    """Add ``layer`` to the registry (called at import time by layout modules)."""
    if layer.name in _LAYERS and _LAYERS[layer.name] is not layer:
        raise ValueError(f"layer {layer.name} registered twice")
    _LAYERS[layer.name] = layer
    _ORIGIN.setdefault(layer.name, sys._getframe(1).f_globals.get("__name__", ""))
    return layer


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for module in LAYER_MODULES:
        try:
            importlib.import_module(f"{__package__}.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"{__package__}.{module}":
                raise
    _loaded = True


def all_layers() -> list[Layer]:
    """Every registered layer: by module in LAYER_MODULES order, then in registration order.

    The order does not depend on which layout module something imported first.
    """
    _load_all()
    rank = {f"{__package__}.{module}": index for index, module in enumerate(LAYER_MODULES)}
    return sorted(_LAYERS.values(), key=lambda layer: rank.get(_ORIGIN.get(layer.name, ""), len(rank)))


def get_layer(name: str) -> Layer:
    """The layer called ``name``; DissectError naming the known ones otherwise."""
    _load_all()
    try:
        return _LAYERS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _LAYERS, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise DissectError(name, 0, f"unknown layer ({hint}'vqtrace decode --list' lists {len(_LAYERS)})") from None


def dissect(layer: str | Layer, data: bytes, *, base: int = 0, params: dict[str, Any] | None = None) -> Field:
    """Field tree of ``data`` as ``layer`` (a name or a Layer)."""
    if isinstance(layer, str):
        layer = get_layer(layer)
    return layer.dissect(data, base=base, params=params)


def parse(layer: str | Layer, data: bytes, params: dict[str, Any] | None = None) -> Any:
    """Values of ``data`` as ``layer``, without building a tree."""
    if isinstance(layer, str):
        layer = get_layer(layer)
    return layer.parse(data, params)
