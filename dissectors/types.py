"""Building blocks for declaring layouts, named as the specification names them.

The virtio specification writes ``le16``/``le32``/``le64`` for little-endian
fields (virtio 1.4, 1.4 "Structure Specifications"); vhost-user payloads are in
the machine's native byte order, little-endian on every host vqtrace runs on.
"""

from __future__ import annotations

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
    shifted value. ``flags`` maps names to masks, in the order the tree lists them.
    """

    def __init__(self, subcon: Construct, flags: dict[str, int]) -> None:
        super().__init__(subcon)
        self.flags = dict(flags)

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
