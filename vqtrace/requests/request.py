"""DeviceRequest (one chain as a typed device request), Problem, and the helpers decoders share.

A decoder reads the chain's bytes with ``struct`` to fill the summary, the response
word, ``info`` and the framing problems at once, and *defers* the field trees: they
are built (with the construct dissectors, and scapy for Ethernet frames) the first
time :attr:`DeviceRequest.trees` is read. So a summary costs a few microseconds and
a tree only what is looked at.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..dissectors.errors import DissectError
from ..dissectors.layers import get_layer
from ..dissectors.tree import Field, flatten, json_value, render_text
from ..dissectors.walk import format_bytes
from .context import QueueContext, Role

ERROR = "error"
NOTE = "note"


@dataclass(frozen=True, slots=True)
class Problem:
    """Something wrong, or worth knowing, about a request's bytes.

    ``code`` is a stable upper-case identifier (``SHORT_HEADER``, ``NO_STATUS``,
    ``MALFORMED``, ``USED_LEN``, ...); ``level`` is ``"error"`` when the bytes break
    the specification or do not dissect, ``"note"`` for what is merely worth knowing
    (a capture that holds fewer bytes than the chain, a guessed queue role); ``offset``
    is where in the request's bytes it was found, when that is known.
    """

    code: str
    message: str
    section: str = ""
    offset: int | None = None
    level: str = ERROR

    def __str__(self) -> str:
        return f"{self.message} ({self.section})" if self.section else self.message

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "level": self.level, "message": self.message, "section": self.section,
                "offset": self.offset}


class Parts:
    """The chain's bytes as :func:`~vqtrace.requests.decode_request` was given them."""

    __slots__ = ("ctx", "readable", "readable_lens", "role", "used_len", "writable_lens", "written", "written_base",
                 "written_tail")

    def __init__(self, ctx: QueueContext, role: Role, readable: bytes, written: bytes | None, used_len: int | None,
                 readable_lens: Sequence[int] | None, writable_lens: Sequence[int] | None,
                 written_base: int | None, written_tail: bytes | None = None) -> None:
        self.ctx = ctx
        self.role = role
        self.readable = readable
        self.written = written
        self.used_len = used_len
        self.readable_lens = tuple(readable_lens) if readable_lens is not None else None
        self.writable_lens = tuple(writable_lens) if writable_lens is not None else None
        self.written_base = len(readable) if written_base is None else written_base
        self.written_tail = written_tail

    @property
    def used(self) -> bool:
        """The device has used the chain (its written bytes or used length are given)."""
        return self.written is not None or self.used_len is not None

    @property
    def readable_total(self) -> int:
        """Bytes of the chain's device-readable part: the descriptor lengths, else the bytes given."""
        return sum(self.readable_lens) if self.readable_lens is not None else len(self.readable)

    @property
    def writable_len(self) -> int | None:
        """Bytes of the chain's device-writable part: the descriptor lengths, else the written bytes."""
        if self.writable_lens is not None:
            return sum(self.writable_lens)
        return len(self.written) if self.written is not None else None

    @property
    def written_whole(self) -> bool:
        """``written`` holds the whole device-writable part (so its last byte is the part's last byte)."""
        if self.written is None:
            return False
        return self.writable_lens is None or len(self.written) >= sum(self.writable_lens)

    def device_wrote(self) -> bytes:
        """The bytes the device wrote: ``written`` cut to the used length (2.7.8: the first len bytes)."""
        data = self.written or b""
        if self.used_len is not None and self.used_len < len(data):
            return data[: max(self.used_len, 0)]
        return data


#: Builds trees for the request it is given (it must not hold the request itself: no reference cycles,
#: so a request is freed at once, without the cycle collector).
TreeThunk = Callable[["DeviceRequest"], "Field | list[Field] | None"]


class DeviceRequest:
    """One chain as a device request: a one-line summary, field trees, problems.

    ``device`` ("blk", "net", ...), ``role`` (the queue's :class:`Role`), ``summary``
    (``blk IN sector=0 len=512 -> OK``), ``response`` (the device's answer in a word
    or two, as the summary shows it after ``->``: "OK", "IOERR", "GOOD",
    "CHECK CONDITION", ...; None before the chain is used or when the queue has no
    answer), ``problems`` (a list of :class:`Problem`), ``info`` (a few values for
    statistics and views without a tree: ``type``, ``sector``, ``data_len``, ...),
    the chain's byte counts, and ``trees``: the field trees, one root per protocol
    layer, built on first access.

    Tree offsets count in the request's bytes: the readable part from 0, the
    written part from ``written_base`` (by default ``len(readable)``: the bytes a
    trace record stores, readable then written). Building a tree may add problems
    (bytes that the construct dissectors refuse): ``problems`` is complete once
    :attr:`trees` has been read, which ``decode_request(..., lazy=False)`` does.
    """

    __slots__ = ("_building", "_thunks", "_trees", "complete", "device", "info", "problems", "readable_len",
                 "response", "role", "summary", "used_len", "writable_len", "written_len")

    def __init__(self, device: str, role: Role, parts: Parts) -> None:
        self.device = device
        self.role = role
        self.summary = ""
        self.response: str | None = None
        self.problems: list[Problem] = []
        self.info: dict[str, Any] = {}
        self.readable_len = len(parts.readable)
        self.writable_len = parts.writable_len
        self.written_len = len(parts.written) if parts.written is not None else None
        self.used_len = parts.used_len
        self.complete = parts.used
        self._thunks: list[tuple[TreeThunk, bytes, int]] = []
        self._trees: list[Field] | None = None
        self._building = False

    # -- results ---------------------------------------------------------------------

    @property
    def trees(self) -> list[Field]:
        """The field trees (built on first access; never raises)."""
        if self._trees is None:
            self._build()
        return self._trees  # type: ignore[return-value]

    @property
    def tree_built(self) -> bool:
        return self._trees is not None

    @property
    def errors(self) -> list[Problem]:
        """The problems of level "error"."""
        return [p for p in self.problems if p.level == ERROR]

    def fields(self) -> dict[str, Any]:
        """``{abbreviation: value}`` over the trees (a repeated field gives a list), as ``tshark -T json``."""
        return flatten(self.trees)

    def filter_values(self) -> dict[str, list[Any]]:
        """``{abbreviation: [values]}`` for a display filter: every node of the trees, in tree order, plus
        Wireshark's hidden either-way fields (``ip.addr``, ``tcp.port``, ``eth.addr``, ...)."""
        from .ethernet import HIDDEN_FIELDS

        hidden_of = {source: hidden for hidden, sources in HIDDEN_FIELDS.items() for source in sources}
        out: dict[str, list[Any]] = {}
        for tree in self.trees:
            for node in tree.walk():
                if node.value is not None:
                    out.setdefault(node.abbrev, []).append(node.value)
                    hidden = hidden_of.get(node.abbrev)
                    if hidden is not None:  # in tree order, as Wireshark adds them
                        out.setdefault(hidden, []).append(node.value)
        return out

    def text(self) -> list[str]:
        """The summary, the problems and the trees, as ``vqtrace show -V`` prints them."""
        lines = [self.summary]
        lines += [f"  [{p.level}] {p}" for p in self.problems]
        return lines + render_text(self.trees)

    def to_json(self, *, tree: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "device": self.device, "role": self.role.name, "summary": self.summary, "response": self.response,
            "readable_len": self.readable_len, "writable_len": self.writable_len, "written_len": self.written_len,
            "used_len": self.used_len, "info": {k: json_value(v) for k, v in self.info.items()},
        }
        if tree:
            out["fields"] = {k: json_value(v) for k, v in self.fields().items()}
            out["tree"] = [t.to_json() for t in self.trees]
        out["problems"] = [p.to_json() for p in self.problems]
        return out

    def __repr__(self) -> str:
        return f"DeviceRequest({self.summary!r}, problems={len(self.problems)})"

    # -- for decoders ----------------------------------------------------------------

    def problem(self, code: str, message: str, section: str = "", offset: int | None = None,
                level: str = ERROR) -> None:
        self.problems.append(Problem(code, message, section, offset, level))

    def note(self, code: str, message: str, section: str = "", offset: int | None = None) -> None:
        self.problem(code, message, section, offset, NOTE)

    def defer(self, thunk: TreeThunk, data: bytes = b"", base: int = 0) -> None:
        """Build trees with ``thunk`` when they are first read; ``data``/``base`` are shown raw if it fails."""
        self._thunks.append((thunk, data, base))

    def _build(self) -> None:
        if self._building:  # a thunk reading .trees: give what there is
            return
        self._building = True
        trees: list[Field] = []
        for thunk, data, base in self._thunks:
            try:
                result = thunk(self)
            except Exception as err:  # a bug must not lose the request: show the bytes, say what failed
                self.problem("INTERNAL", f"decoder failed: {type(err).__name__}: {err}", offset=base)
                result = raw_tree(data, base) if data else None
            if isinstance(result, Field):
                trees.append(result)
            elif result:
                trees.extend(result)
        self._thunks = []
        self._trees = trees
        self._building = False


# -- tree helpers --------------------------------------------------------------------


def raw_tree(data: bytes, base: int, label: str = "") -> Field:
    """Bytes that no dissector took, as Wireshark's ``data`` protocol shows them (``data.data``, ``data.len``)."""
    n = len(data)
    title = f"{label} ({n} bytes)" if label else f"Data ({n} bytes)"
    return Field("data", title, None, "", base, n, [
        Field("data.data", "Data", bytes(data), format_bytes(bytes(data)), base, n),
        Field("data.len", "Length", n, str(n), base, 0),
    ])


def dissect(req: DeviceRequest, layer: str, data: bytes, base: int, params: dict[str, Any] | None = None) -> Field:
    """``data`` dissected as ``layer`` at ``base``; bytes that do not dissect become a problem and a raw tree."""
    lay = get_layer(layer)
    try:
        return lay.dissect(data, base=base, params=params)
    except DissectError as err:
        req.problem("MALFORMED", str(err), lay.section, err.offset)
        return raw_tree(data, base, f"{lay.title}, malformed")


def bytes_node(abbrev: str, label: str, data: bytes, base: int) -> Field:
    """A leaf holding ``data`` (its display elided after a few bytes)."""
    return Field(abbrev, label, bytes(data), format_bytes(bytes(data)), base, len(data))


def protocol_node(abbrev: str, label: str, base: int, children: list[Field]) -> Field:
    """A protocol node over ``children`` (its span covers theirs)."""
    end = max((c.offset + c.length for c in children), default=base)
    return Field(abbrev, label, None, "", base, end - base, children)


def text_preview(data: bytes, limit: int = 32) -> str:
    """``'hello\\n'`` for a summary: the first ``limit`` bytes as text, an ellipsis when cut."""
    shown = repr(data[:limit].decode("utf-8", "replace"))
    return shown + ("…" if len(data) > limit else "")
