"""Building blocks for declaring layouts, named as the specification names them.

The virtio specification writes ``le16``/``le32``/``le64`` for little-endian
fields (virtio 1.4, 1.4 "Structure Specifications"); vhost-user payloads are in
the machine's native byte order, little-endian on every host vqtrace runs on.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from construct import (
    Adapter,
    Bytes,
    Construct,
    Hex,
    Int8ul,
    Int16ub,
    Int16ul,
    Int32ub,
    Int32ul,
    Int64ub,
    Int64ul,
    SizeofError,
)

u8 = Int8ul
le16 = Int16ul
le32 = Int32ul
le64 = Int64ul
be16 = Int16ub
be32 = Int32ub
be64 = Int64ub


class Bitmask(Adapter):
    """An integer whose bits (or groups of bits) have names.

    Parses to the plain integer; the field tree shows one child per mask, like a
    Wireshark bitmask field. A single-bit mask gives a bool child, a wider mask the
    shifted value. ``flags`` maps names to masks, in the order the tree lists them;
    ``names`` optionally names the values of wider masks (``{group: {name: value}}``),
    shown like an Enum's (``ILLEGAL REQUEST (5)``).
    """

    def __init__(self, subcon: Construct, flags: dict[str, int],
                 names: dict[str, dict[str, int]] | None = None) -> None:
        super().__init__(subcon)
        self.flags = dict(flags)
        # Optional value names of a multi-bit group, like an Enum's: {group: {name: value}}
        # (a sense key in the low nibble of a byte whose high bits are flags).
        self.value_names = {group: {value: name for name, value in table.items()}
                            for group, table in (names or {}).items()}

    def _decode(self, obj: Any, context: Any, path: Any) -> int:
        return obj

    def _encode(self, obj: Any, context: Any, path: Any) -> int:
        return obj

    def names(self, value: int) -> list[str]:
        """The names of the single-bit flags set in ``value``."""
        return [name for name, mask in self.flags.items() if mask & (mask - 1) == 0 and value & mask]


class Address(Hex):
    """A 64-bit address shown in hex (guest-physical or front-end virtual)."""

    def __init__(self, subcon: Construct = Int64ul) -> None:
        super().__init__(subcon)


class MacAddress(Adapter):
    """Six bytes shown as ``52:54:00:12:34:56``; the value is that string."""

    def __init__(self) -> None:
        super().__init__(Bytes(6))

    def _decode(self, obj: bytes, context: Any, path: Any) -> str:
        return ":".join(f"{b:02x}" for b in obj)

    def _encode(self, obj: str, context: Any, path: Any) -> bytes:
        return bytes(int(part, 16) for part in obj.split(":"))


class CString(Adapter):
    """A fixed-size byte field holding NUL-padded text; the value is the text."""

    def __init__(self, size: int) -> None:
        super().__init__(Bytes(size))
        self.size = size

    def _decode(self, obj: bytes, context: Any, path: Any) -> str:
        return obj.split(b"\0", 1)[0].decode("utf-8", "replace")

    def _encode(self, obj: str, context: Any, path: Any) -> bytes:
        return obj.encode().ljust(self.size, b"\0")[: self.size]


def bytes_left(ctx: Any) -> int:
    """Bytes between the parse position and the end of the data (``ctx`` is a Struct's context)."""
    stream = ctx._io
    here = stream.tell()
    end = stream.seek(0, io.SEEK_END)
    stream.seek(here)
    return end - here


def more_data(name: str) -> Callable[[Any], bool]:
    """Condition for ``If`` on a trailing field that exists only with some features.

    Device configuration layouts keep fixed offsets, and the device's configuration
    space simply ends after the last field its features provide. Parsing, the field
    is present while bytes remain (a partial field is then a truncation error);
    building, it is present when its value is not None. The layout has no fixed size.
    """

    def condition(ctx: Any) -> bool:
        if ctx.get("_building"):
            return ctx.get(name) is not None
        if ctx.get("_sizing") or ctx.get("_io") is None:
            raise SizeofError(f"{name}: present only when the data holds it")
        return bytes_left(ctx) > 0

    return condition


def enum_int(value: Any, names: dict[str, int] | None = None) -> int:
    """The number of an Enum field's value in a construct condition.

    The walker stores ints, construct's parse a named str with ``.int``, and a value
    being built may be the bare name, looked up in ``names`` (the Enum's mapping).
    """
    if isinstance(value, str) and not hasattr(value, "int"):
        if names is None or value not in names:
            raise ValueError(f"unknown name {value!r}")
        return names[value]
    return int(getattr(value, "int", value))


def enum_name(field: Any, prefix: str = "") -> str:
    """The spec name in an Enum field node's display, without ``prefix``, for summaries.

    "TCPV4" for "VIRTIO_NET_HDR_GSO_TCPV4 (1)" with prefix "VIRTIO_NET_HDR_GSO_"; names
    ORed together ("A|B") lose the prefix in each part; an unnamed value gives its number.
    """
    if field is None:
        return "?"
    name = field.display.rsplit(" (", 1)[0]
    if name == "Unknown":
        return str(field.value)
    return "|".join(part.removeprefix(prefix) for part in name.split("|"))
