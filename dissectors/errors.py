"""The one exception family for bad input (DESIGN.md: "One exception family").

The root class lives here, in the lowest layer, because ``dissectors`` imports
nothing of the rest of vqtrace; :mod:`vqtrace.errors` re-exports it and adds the
engine's subclasses.
"""

from __future__ import annotations


class VqtraceError(Exception):
    """Bad input, with what was wrong and where it was found.

    ``where`` names the place (a layer and offset, a guest address, a file
    offset, a queue); ``str()`` gives the one line the CLI prints.
    """

    def __init__(self, message: str, *, where: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class DissectError(VqtraceError):
    """Bytes that do not dissect as the layer they were given to."""

    def __init__(self, layer: str, offset: int, message: str) -> None:
        super().__init__(message, where=f"{layer} at offset {offset}")
        self.layer = layer
        self.offset = offset
