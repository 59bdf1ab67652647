"""The exception family for bad input (DESIGN.md, "One exception family").

Every error a user can cause with a bad file, socket peer, guest or argument is a
:class:`VqtraceError`: the CLI prints its one line and exits 2, never a traceback.
"""

from __future__ import annotations

from .dissectors.errors import DissectError, VqtraceError

__all__ = [
    "DissectError",
    "GuestMemoryError",
    "TraceFileError",
    "UsageError",
    "VhostUserError",
    "VqtraceError",
]


class UsageError(VqtraceError):
    """A command-line argument that cannot be used."""


class GuestMemoryError(VqtraceError):
    """A guest address (or range) that is not mapped, or a bad memory source."""

    def __init__(self, message: str, *, address: int | None = None, where: str | None = None) -> None:
        if where is None and address is not None:
            where = f"guest address 0x{address:x}"
        super().__init__(message, where=where)
        self.address = address


class TraceFileError(VqtraceError):
    """A trace file that is truncated, corrupt or of an unknown format."""

    def __init__(self, message: str, *, path: str | None = None, offset: int | None = None) -> None:
        where = path or ""
        if offset is not None:
            where = f"{where} at offset {offset}" if where else f"offset {offset}"
        super().__init__(message, where=where or None)
        self.path = path
        self.offset = offset


class VhostUserError(VqtraceError):
    """A vhost-user peer that broke the protocol (bad header, size, fds, ...)."""
