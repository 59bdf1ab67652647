"""Construct definitions and spec tables for virtio, vhost-user and the devices.

Pure: bytes in, values and field trees out. No I/O, and nothing of the rest of
vqtrace is imported here (DESIGN.md, "Layout and dependency direction").
"""

from .errors import DissectError, VqtraceError
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
