"""Wireshark 4.0 literal syntax: integers, floats, byte strings, booleans."""

from __future__ import annotations

import re

_DEC = re.compile(r"[+-]?(?:0|[1-9][0-9]*)")
_HEX = re.compile(r"[+-]?0[xX][0-9a-fA-F]+")
_OCT = re.compile(r"[+-]?0[0-7]+")
_BIN = re.compile(r"[+-]?0[bB][01]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BYTE_GROUPS = re.compile(r"[0-9a-fA-F]{1,2}(?:[:.\-][0-9a-fA-F]{1,2})+")
_HEX_RUN = re.compile(r"(?:[0-9a-fA-F]{2})+")
_ONE_BYTE = re.compile(r"0[xX][0-9a-fA-F]{1,2}")
_BOOLS = {"true": True, "false": False}

#: Integers wider than this are refused (no field is wider than 64 bits; keeps hostile input cheap).
MAX_INT_DIGITS = 40


def parse_int(text: str) -> int | None:
    """Decimal, hex (``0x``), binary (``0b``) or octal (leading ``0``) integer, with an optional sign."""
    if len(text) > MAX_INT_DIGITS:
        return None
    if _HEX.fullmatch(text):
        return int(text, 16)
    if _BIN.fullmatch(text):
        return int(text, 2)
    if _OCT.fullmatch(text):
        return int(text, 8)
    if _DEC.fullmatch(text):
        return int(text, 10)
    return None


def parse_float(text: str) -> float | None:
    """A float (``1.5``, ``2e-3``) or any integer form parse_int accepts."""
    number = parse_int(text)
    if number is not None:
        return float(number)
    if len(text) <= MAX_INT_DIGITS and _FLOAT.fullmatch(text):
        return float(text)
    return None


def parse_bool(text: str) -> bool | None:
    """True/False (any case), or a number: non-zero is True (Wireshark's boolean literals)."""
    if text.lower() in _BOOLS:
        return _BOOLS[text.lower()]
    number = parse_int(text)
    return None if number is None else number != 0


def parse_bytes(text: str) -> bytes | None:
    """``aa:bb:cc``, ``aa-bb``, ``0.1.0.d``, ``aabbcc`` or a one-byte hex integer ``0x41``."""
    if _ONE_BYTE.fullmatch(text):
        return bytes([int(text, 16)])
    if _BYTE_GROUPS.fullmatch(text):
        return bytes(int(group, 16) for group in re.split(r"[:.\-]", text))
    if _HEX_RUN.fullmatch(text):
        return bytes.fromhex(text)
    return None


def looks_numeric(text: str) -> bool:
    """A word that starts like a number: it was meant as a value, never as a field name."""
    return bool(re.match(r"[+-]?\.?[0-9]", text))
