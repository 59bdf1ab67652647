"""What ``show`` and ``stats`` need per frame: its fields for filters and JSON, the field catalog.

:class:`FrameFields` holds one frame's ``(abbreviation, value)`` pairs and gives them
as ``{abbreviation: [values]}`` (for display filters, protocol and subtree nodes with
None, plus Wireshark's ``frame.*`` fields) and as ``{abbreviation: value}`` (for JSON,
like ``tshark -T json``: a repeated field gives a list, bytes are hex).
:func:`catalog` is every field a vqtrace trace can show, with types and value names.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ..filter import FieldCatalog
from .fast import Pairs

#: Wireshark's frame fields that filters may use in both tools (kinds as Wireshark has them).
FRAME_FIELDS = [
    ("frame.number", "uint32"),
    ("frame.len", "uint32"),
    ("frame.cap_len", "uint32"),
    ("frame.interface_name", "string"),
    ("frame.time_epoch", "double"),
    ("frame.time_relative", "double"),
]
EXTRA_FIELDS = [("vqtrace.malformed", "string")]


@lru_cache(maxsize=1)
def catalog() -> FieldCatalog:
    """Every field of every layer, the request trees' own (Ethernet, data), the frame fields."""
    from ..requests import request_fields

    base = FieldCatalog.default()
    return base.extended([*request_fields(), *FRAME_FIELDS, *EXTRA_FIELDS])


class FrameFields:
    """The fields of one frame (see the module docstring)."""

    __slots__ = ("frame", "length", "pairs", "source", "time_ns", "time_rel")

    def __init__(self, frame: int, source: str, time_ns: int, time_rel: float, length: int, pairs: Pairs) -> None:
        self.frame = frame
        self.source = source
        self.time_ns = time_ns
        self.time_rel = time_rel
        self.length = length
        self.pairs = pairs

    def for_filter(self) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {
            "frame.number": [self.frame],
            "frame.len": [self.length],
            "frame.cap_len": [self.length],
            "frame.interface_name": [self.source],
            "frame.time_epoch": [self.time_ns / 1e9],
            "frame.time_relative": [self.time_rel],
        }
        for abbrev, value in self.pairs:
            values = out.get(abbrev)
            if values is None:
                out[abbrev] = [value]
            else:
                values.append(value)
        return out

    def for_json(self) -> dict[str, Any]:
        return json_fields(self.pairs)


def json_fields(pairs: Pairs) -> dict[str, Any]:
    """``{abbreviation: value}``: protocol and subtree nodes left out, a repeated field as a list."""
    out: dict[str, Any] = {}
    lists: dict[str, list[Any]] = {}
    for abbrev, value in pairs:
        if value is None:
            continue
        if type(value) is bytes:
            value = value.hex()
        if abbrev in out:
            values = lists.get(abbrev)
            if values is None:
                values = lists[abbrev] = [out[abbrev]]
                out[abbrev] = values
            values.append(value)
        else:
            out[abbrev] = value
    return out
