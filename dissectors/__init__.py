"""Construct definitions and spec tables for virtio, vhost-user and the devices.

Pure: bytes in, values and field trees out. No I/O, and nothing of the rest of
vqtrace is imported here (DESIGN.md, "Layout and dependency direction").

The names below are loaded on first use (PEP 562): importing this package, or
``vqtrace.errors`` which needs only :mod:`.errors`, does not import construct.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import DissectError, VqtraceError

if TYPE_CHECKING:
    from .layers import Layer, all_layers, dissect, get_layer, parse
    from .tree import Field

__all__ = [
    "DissectError",
    "Field",
    "Layer",
    "VqtraceError",
    "all_layers",
    "dissect",
    "get_layer",
    "parse",
]

#: Lazily exported name -> the submodule that defines it.
_LAZY = {
    "Field": "tree",
    "Layer": "layers",
    "all_layers": "layers",
    "dissect": "layers",
    "get_layer": "layers",
    "parse": "layers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        # Not ours: `from vqtrace.dissectors import blk` then imports the submodule.
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is a plain module attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
