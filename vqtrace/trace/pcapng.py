"""pcapng blocks (draft-ietf-opsawg-pcapng): build them, and walk them with resync.

Only what vqtrace needs: the section header (SHB), interface description (IDB) and
enhanced packet (EPB) blocks, their options, both byte orders on reading. Every
other block type is stepped over. A block whose lengths do not add up is reported
with its offset, and the walk resynchronises on the next block that does.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

SHB_TYPE = 0x0A0D0D0A
IDB_TYPE = 0x00000001
EPB_TYPE = 0x00000006
SPB_TYPE = 0x00000003
ISB_TYPE = 0x00000005
NRB_TYPE = 0x00000004
BYTE_ORDER_MAGIC = 0x1A2B3C4D
#: Block types a resync accepts as the start of a block.
KNOWN_TYPES = frozenset({SHB_TYPE, IDB_TYPE, EPB_TYPE, SPB_TYPE, ISB_TYPE, NRB_TYPE, 0x00000002, 0x00000BAD,
                         0x40000BAD, 0x0000000A})

OPT_ENDOFOPT = 0
OPT_COMMENT = 1
SHB_USERAPPL = 4
IF_NAME = 2
IF_DESCRIPTION = 3
IF_TSRESOL = 9
#: Longest block vqtrace accepts: a bound against hostile length fields (64 MiB).
MAX_BLOCK = 64 << 20

_OPT = struct.Struct("<HH")
_HEAD = struct.Struct("<II")
_EPB_HEAD = struct.Struct("<IIIII")


def option(code: int, value: bytes) -> bytes:
    """One option: code, length, value padded to 32 bits."""
    return _OPT.pack(code, len(value)) + value + b"\0" * (-len(value) % 4)


def options(items: list[tuple[int, bytes]]) -> bytes:
    """Options followed by opt_endofopt; empty when there are none."""
    if not items:
        return b""
    return b"".join(option(code, value) for code, value in items) + option(OPT_ENDOFOPT, b"")


def block(block_type: int, body: bytes) -> bytes:
    """A whole block: type, total length, body (padded), total length."""
    body += b"\0" * (-len(body) % 4)
    total = len(body) + 12
    return _HEAD.pack(block_type, total) + body + struct.pack("<I", total)


def section_header(application: str = "") -> bytes:
    """A section header block (version 1.0, section length unknown)."""
    opts = [(SHB_USERAPPL, application.encode())] if application else []
    return block(SHB_TYPE, struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1) + options(opts))


def interface_description(linktype: int, name: str, description: str = "", *, snaplen: int = 0,
                          tsresol: int = 9) -> bytes:
    """An interface description block with if_name, if_description and if_tsresol (10^-tsresol s)."""
    opts = [(IF_NAME, name.encode())]
    if description:
        opts.append((IF_DESCRIPTION, description.encode()))
    opts.append((IF_TSRESOL, bytes([tsresol])))
    return block(IDB_TYPE, struct.pack("<HHI", linktype, 0, snaplen) + options(opts))


def enhanced_packet(interface: int, time_ns: int, data: bytes, *, orig_len: int | None = None,
                    comments: list[str] | None = None) -> bytes:
    """An enhanced packet block with a nanosecond timestamp (the interface must have if_tsresol 9)."""
    opts = options([(OPT_COMMENT, text.encode()) for text in comments]) if comments else b""
    head = _EPB_HEAD.pack(interface, (time_ns >> 32) & 0xFFFFFFFF, time_ns & 0xFFFFFFFF, len(data),
                          len(data) if orig_len is None else orig_len)
    return block(EPB_TYPE, head + data + b"\0" * (-len(data) % 4) + opts)


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong in a file: where (byte offset) and what."""

    offset: int
    message: str


@dataclass(frozen=True, slots=True)
class Block:
    """One block found by :func:`walk`: its offset, type, total length and byte order."""

    offset: int
    type: int
    length: int
    endian: str  # "<" or ">"


def parse_options(data: bytes | memoryview, endian: str) -> list[tuple[int, bytes]]:
    """The (code, value) options of a block's options area, up to opt_endofopt or a bad length."""
    out = []
    pos, size = 0, len(data)
    fmt = struct.Struct(endian + "HH")
    while pos + 4 <= size:
        code, length = fmt.unpack_from(data, pos)
        pos += 4
        if code == OPT_ENDOFOPT or pos + length > size:
            break
        out.append((code, bytes(data[pos:pos + length])))
        pos += length + (-length % 4)
    return out


def check_header(data: bytes | memoryview, offset: int, endian: str, size: int) -> str | None:
    """Why the block at ``offset`` is not sound (None when it is)."""
    if offset + 12 > size:
        return f"truncated block: {size - offset} bytes left, a block needs at least 12"
    (length,) = struct.unpack_from(endian + "I", data, offset + 4)
    if length < 12 or length % 4:
        return f"bad block length {length}"
    if length > MAX_BLOCK:
        return f"block length {length} is over the {MAX_BLOCK}-byte limit"
    if offset + length > size:
        return f"truncated block: {size - offset} of {length} bytes"
    (trailer,) = struct.unpack_from(endian + "I", data, offset + length - 4)
    if trailer != length:
        return f"block lengths disagree ({length} at the start, {trailer} at the end)"
    return None


def _resync(data: bytes | memoryview, start: int, endian: str, size: int) -> int | None:
    """The offset of the next sound block after ``start`` (4-byte steps), or None."""
    fmt = struct.Struct(endian + "I")
    pos = start + 4
    while pos + 12 <= size:
        (block_type,) = fmt.unpack_from(data, pos)
        if block_type in KNOWN_TYPES and check_header(data, pos, endian, size) is None and (
                block_type != SHB_TYPE or fmt.unpack_from(data, pos + 8)[0] == BYTE_ORDER_MAGIC):
            return pos
        pos += 4
    return None


def _runs_past_end(data: bytes | memoryview, offset: int, endian: str, size: int) -> bool:
    """Whether the block at ``offset`` has a plausible length that runs past the end of the file."""
    if offset + 12 > size:
        return True
    (length,) = struct.unpack_from(endian + "I", data, offset + 4)
    return length >= 12 and not length % 4 and length <= MAX_BLOCK and offset + length > size


def _sound_to_end(data: bytes | memoryview, offset: int, endian: str, size: int) -> bool:
    """Whether sound blocks follow one another from ``offset`` to exactly the end of the file."""
    while offset < size:
        if check_header(data, offset, endian, size) is not None:
            return False
        offset += struct.unpack_from(endian + "I", data, offset + 4)[0]
    return True


def section_endian(data: bytes | memoryview, offset: int) -> str | None:
    """The byte order of the section header at ``offset`` (None if it is not one)."""
    if offset + 12 > len(data):
        return None
    magic = bytes(data[offset + 8:offset + 12])
    if magic == b"\x4d\x3c\x2b\x1a":
        return "<"
    if magic == b"\x1a\x2b\x3c\x4d":
        return ">"
    return None


def walk(data: bytes | memoryview, start: int, endian: str, problems: list[Problem]) -> Iterator[Block]:
    """Blocks from ``start`` to the end of ``data``; bad ones go to ``problems`` and are skipped.

    A section header (its type reads the same in both byte orders) sets the byte order
    of the blocks after it.
    """
    size = len(data)
    pos = start
    while pos < size:
        why = None
        if pos + 4 <= size and bytes(data[pos:pos + 4]) == b"\x0a\x0d\x0d\x0a":
            new = section_endian(data, pos)
            if new is None:
                why = "section header without a byte-order magic" if pos + 12 <= size else \
                    f"truncated block: {size - pos} bytes left, a block needs at least 12"
            else:
                endian = new
        if why is None:
            why = check_header(data, pos, endian, size)
        if why is None:
            block_type, length = struct.unpack_from(endian + "II", data, pos)
            yield Block(pos, block_type, length, endian)
            pos += length
            continue
        found = _resync(data, pos, endian, size)
        if found is not None and _runs_past_end(data, pos, endian, size) and not _sound_to_end(
                data, found, endian, size):
            # The file was cut inside this block (a capture killed mid-write): what follows is that block's
            # own captured bytes, which may hold pcapng-looking data; only a run of sound blocks that ends
            # exactly at the end of the file is taken as real blocks (a corrupt length, not a cut).
            found = None
        if found is None:
            problems.append(Problem(pos, why))
            return
        problems.append(Problem(pos, f"{why}; skipped {found - pos} bytes to the block at offset {found}"))
        pos = found
