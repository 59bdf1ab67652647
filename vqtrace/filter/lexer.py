"""Tokens of the display-filter language (Wireshark 4.0 syntax).

Words are Wireshark's "unparsed" literals: field names, numbers, byte strings
(``aa:bb:cc``), value names and keywords all lex as one WORD, resolved later
against the field they are compared with. ``..`` always ends a word, so
``{100..200}`` is a range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import FilterError, quote

#: The longest filter text accepted (a filter is typed or pasted, never generated from data).
MAX_FILTER_LENGTH = 65536

WORD, STRING, CHAR, OP, EOF = "word", "string", "char", "op", "end"

#: Symbol tokens, longest first so ``===`` wins over ``==`` and ``!=`` over ``!``.
SYMBOLS = ("===", "!==", "==", "!=", "~=", "<=", ">=", "&&", "||", "..",
           "<", ">", "!", "~", "&", "(", ")", "{", "}", ",")

_WORD = re.compile(r"\+?[A-Za-z0-9_:\-](?:[A-Za-z0-9_:\-]|\.(?!\.))*")
_SPACE = re.compile(r"\s+")

#: Single-character escapes inside "..." and '...' (Wireshark 4.0 accepts these and no others).
_ESCAPES = {"\\": 0x5C, '"': 0x22, "'": 0x27, "a": 0x07, "b": 0x08, "f": 0x0C,
            "n": 0x0A, "r": 0x0D, "t": 0x09, "v": 0x0B}
_HEX = frozenset("0123456789abcdefABCDEF")
_OCT = frozenset("01234567")


@dataclass(frozen=True, slots=True)
class Token:
    """One token: its kind, its source text and where it sits (0-based, end exclusive).

    ``value`` is the bytes of a string literal or the integer of a character constant.
    """

    kind: str
    text: str
    start: int
    end: int
    value: bytes | int | None = None
    raw: bool = False  # a raw string r"..." (backslashes kept)


def tokenize(text: str) -> list[Token]:
    """Every token of ``text``, ending with one EOF token; FilterError at the first bad character."""
    if len(text) > MAX_FILTER_LENGTH:
        raise FilterError(f"the filter is {len(text)} characters long, more than {MAX_FILTER_LENGTH}",
                          column=MAX_FILTER_LENGTH + 1, text=text[:200])
    tokens: list[Token] = []
    pos, size = 0, len(text)
    while True:
        space = _SPACE.match(text, pos)
        if space:
            pos = space.end()
        if pos >= size:
            tokens.append(Token(EOF, "", size, size))
            return tokens
        ch = text[pos]
        if ch == '"' or (ch == "r" and text.startswith('r"', pos)):
            token = _string(text, pos)
        elif ch == "'":
            token = _char(text, pos)
        else:
            word = _WORD.match(text, pos)
            if word:
                token = Token(WORD, word.group(), pos, word.end())
            else:
                symbol = next((s for s in SYMBOLS if text.startswith(s, pos)), None)
                if symbol is None:
                    raise FilterError(f"unexpected character {quote(ch)}", column=pos + 1, text=text)
                token = Token(OP, symbol, pos, pos + len(symbol))
        tokens.append(token)
        pos = token.end


def _string(text: str, start: int) -> Token:
    """A double-quoted string at ``start`` (``r"..."`` when raw); its value is bytes."""
    raw = text[start] == "r"
    pos = start + 2 if raw else start + 1
    out = bytearray()
    while True:
        if pos >= len(text):
            raise FilterError("unterminated string: the closing \" is missing", column=start + 1, text=text)
        ch = text[pos]
        if ch == '"':
            return Token(STRING, text[start:pos + 1], start, pos + 1, bytes(out), raw)
        if ch == "\\":
            if pos + 1 >= len(text):
                raise FilterError("unterminated string: the closing \" is missing", column=start + 1, text=text)
            if raw:  # a raw string keeps the backslash; \" does not end it
                out += text[pos:pos + 2].encode()
                pos += 2
                continue
            byte, pos = _escape(text, pos)
            out.append(byte)
            continue
        out += ch.encode("utf-8", "surrogatepass")
        pos += 1


def _char(text: str, start: int) -> Token:
    """A C-style character constant (``'a'``, ``'\\n'``, ``'\\x0a'``, ``'\\012'``); its value is an int."""
    pos = start + 1
    if pos < len(text) and text[pos] == "\\":
        value, pos = _escape(text, pos)
    elif pos < len(text) and text[pos] != "'":
        value = ord(text[pos])
        pos += 1
        if value > 0xFF:
            raise FilterError(f"character constant {quote(text[start:pos])} is not one byte", column=start + 1,
                              text=text, length=pos - start)
    else:
        value = -1
    if value < 0 or pos >= len(text) or text[pos] != "'":
        raise FilterError("bad character constant: expected one character between ' '", column=start + 1,
                          text=text)
    return Token(CHAR, text[start:pos + 1], start, pos + 1, value)


def _escape(text: str, pos: int) -> tuple[int, int]:
    """The byte of the backslash escape at ``pos`` and the position after it."""
    ch = text[pos + 1] if pos + 1 < len(text) else ""
    if ch in _ESCAPES:
        return _ESCAPES[ch], pos + 2
    if ch == "x":
        end = pos + 2
        while end < len(text) and end < pos + 4 and text[end] in _HEX:
            end += 1
        if end == pos + 2:
            raise FilterError("\\x needs one or two hex digits", column=pos + 1, text=text, length=2)
        return int(text[pos + 2:end], 16), end
    if ch in _OCT:
        end = pos + 1
        while end < len(text) and end < pos + 4 and text[end] in _OCT:
            end += 1
        value = int(text[pos + 1:end], 8)
        if value > 0xFF:
            raise FilterError(f"\\{text[pos + 1:end]} is larger than 255", column=pos + 1, text=text,
                              length=end - pos)
        return value, end
    shown = "\\" + ch if ch else "\\"
    raise FilterError(f"{quote(shown)} is not a valid escape sequence", column=pos + 1, text=text, length=2)
