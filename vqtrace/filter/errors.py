"""The one error a display filter raises: where (column) and what went wrong."""

from __future__ import annotations

from ..errors import UsageError

#: How much of a user's token an error message quotes before eliding it.
_QUOTE_LIMIT = 40


def quote(text: str) -> str:
    """``text`` in double quotes for a one-line message (control characters escaped, long text elided)."""
    if len(text) > _QUOTE_LIMIT:
        text = text[:_QUOTE_LIMIT] + "…"
    shown = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
    return f'"{shown}"'


class FilterError(UsageError):
    """A display filter that does not compile.

    ``column`` is 1-based (one past the end when something is missing at the
    end); ``str(err)`` is one line, ``err.pointer()`` the filter with a caret line.
    """

    def __init__(self, message: str, *, column: int, text: str = "", length: int = 1) -> None:
        message = " ".join(message.splitlines())
        super().__init__(message, where=f"display filter column {column}")
        self.column = column
        self.text = text
        self.length = max(1, length)

    def pointer(self) -> str:
        """Two lines: the filter text, and ``^~~`` under the offending part."""
        line = " ".join(self.text.splitlines())
        return f"{line}\n{' ' * (self.column - 1)}^{'~' * (self.length - 1)}"
