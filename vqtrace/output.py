"""Helpers shared by the commands that print: hex input, JSON output, hex dumps."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from .errors import UsageError

_HEX_NOISE = re.compile(r"0x|[\s:,_-]", re.IGNORECASE)


def read_bytes_arg(text: str) -> bytes:
    """Bytes from a command-line argument: hex digits, ``@FILE`` (binary) or ``@-`` (stdin)."""
    if text.startswith("@"):
        name = text[1:]
        if name == "-":
            return sys.stdin.buffer.read()
        try:
            return Path(name).read_bytes()
        except OSError as err:
            raise UsageError(f"cannot read {name}: {err.strerror}") from None
    digits = _HEX_NOISE.sub("", text)
    if len(digits) % 2:
        raise UsageError(f"odd number of hex digits ({len(digits)}) in {text[:40]!r}")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        bad = next((i for i, ch in enumerate(digits) if ch not in "0123456789abcdefABCDEF"), 0)
        raise UsageError(f"not hex: {digits[bad]!r} at digit {bad} of {text[:40]!r}") from None


def parse_int(text: str, what: str) -> int:
    """An integer in decimal or 0x-hex; UsageError naming ``what`` otherwise."""
    try:
        return int(text, 0)
    except ValueError:
        raise UsageError(f"{what}: not a number: {text!r}") from None


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def hexdump(data: bytes, offset: int = 0) -> list[str]:
    """Lines like ``tshark -x``: offset, 16 hex bytes, ASCII."""
    lines = []
    for start in range(0, len(data), 16):
        chunk = data[start:start + 16]
        hexpart = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{offset + start:04x}  {hexpart:<47}   {text}")
    return lines
