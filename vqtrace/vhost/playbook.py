"""Scripted exchanges for sans-io roles: ``>> received`` / ``<< sent`` (tests, replay).

In the style of mitmproxy's Playbook (test/mitmproxy/proxy/tutils.py)::

    assert (
        Playbook(ProxyEngine())
        >> DataReceived(Peer.FRONTEND, get_features.raw)
        << Send(Peer.BACKEND, get_features)
        >> DataReceived(Peer.BACKEND, features_reply.raw)
        << Send(Peer.FRONTEND, features_reply)
    )

Events (``>>``) are fed to the role in order; its commands are compared with the
expected ones (``<<``). :class:`Log` and :class:`Record` commands are left out of the
comparison unless ``logs`` / ``records`` is set (they stay in :attr:`Playbook.actual`).
A :class:`Placeholder` in an expected command matches any value the first time and
remembers it (an eventfd the role created); :data:`ANY` matches anything. A
mismatch raises AssertionError showing both scripts side by side.
"""

from __future__ import annotations

import difflib
from typing import Any

from .engine import Log, Record

_ANY_MARK = object()


class Placeholder:
    """Matches any value once, then only that value; call it to get the value."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.value: Any = _ANY_MARK

    def __call__(self) -> Any:
        if self.value is _ANY_MARK:
            raise AssertionError(f"placeholder {self.name or '?'} was never matched")
        return self.value

    def __eq__(self, other: object) -> bool:
        if self.value is _ANY_MARK:
            self.value = other
            return True
        return bool(self.value == other)

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        if self.value is _ANY_MARK:
            return f"<{self.name or 'placeholder'}>"
        return repr(self.value)


class _Any:
    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Any()


class Playbook:
    """Feed events to ``role`` and assert the commands it answers with."""

    def __init__(self, role: Any, *, logs: bool = False, records: bool = False) -> None:
        self.role = role
        self.logs = logs
        self.records = records
        self.script: list[tuple[str, Any]] = []  # (">>", event) / ("<<", command)
        self.actual: list[tuple[str, Any]] = []  # what happened, every command included
        self._done = 0

    def __rshift__(self, event: Any) -> Playbook:
        self.script.append((">>", event))
        return self

    def __lshift__(self, command: Any) -> Playbook:
        if command is not None:
            self.script.append(("<<", command))
        return self

    def _shown(self, command: Any) -> bool:
        if isinstance(command, Log):
            return self.logs
        if isinstance(command, Record):
            return self.records
        return True

    def commands(self, kind: type | None = None) -> list[Any]:
        """Every command the role gave so far (of ``kind``), filtered or not."""
        return [c for arrow, c in self.actual if arrow == "<<" and (kind is None or isinstance(c, kind))]

    def __bool__(self) -> bool:
        for arrow, item in self.script[self._done:]:
            if arrow == ">>":
                self.actual.append((">>", item))
                for command in self.role.handle(item):
                    self.actual.append(("<<", command))
        self._done = len(self.script)
        got = [(arrow, item) for arrow, item in self.actual if arrow == ">>" or self._shown(item)]
        want = self.script
        if len(got) == len(want) and all(a[0] == b[0] and _matches(b[1], a[1]) for a, b in zip(got, want,
                                                                                              strict=True)):
            return True
        diff = "\n".join(difflib.ndiff([_line(x) for x in want], [_line(x) for x in got]))
        raise AssertionError(f"playbook mismatch (- expected, + actual):\n{diff}")


def _matches(expected: Any, actual: Any) -> bool:
    return type(expected) is type(actual) and expected == actual


def _line(entry: tuple[str, Any]) -> str:
    arrow, item = entry
    return f"{arrow} {item!r}"
