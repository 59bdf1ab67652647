"""Layouts as a small tree of nodes: the construct declarations, read once, for two back ends.

:func:`build` turns a layer's construct definition into :class:`Node` objects that say
exactly what ``dissectors/walk.py`` does with each declaration: which bytes a field
takes, what value it gets, which abbreviation it carries, where the layout depends on
data (a Switch key, an If condition, an Array count, a length). From this tree
``vqtrace.trace.fast`` builds a fast values-only dissector (Python) and
``dissectors/wireshark/generate.py`` writes the Wireshark plugin (Lua); both are held
equal to the walker by the tests.

A dependency on data is a *callable*: a construct ``this`` expression (translated to
Lua mechanically) or a Python function, which needs a Lua twin
(``dissectors/wireshark/twins.py``); the Python back end simply calls it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from construct import (
    Array,
    Bytes,
    BytesInteger,
    Computed,
    Const,
    Construct,
    Default,
    Enum,
    FlagsEnum,
    FormatField,
    GreedyBytes,
    GreedyRange,
    Hex,
    IfThenElse,
    Padded,
    Pass,
    Renamed,
    Struct,
    Switch,
)

from ..console import PortName
from ..record import Text
from ..scsi_cdb import AsciiField
from ..types import Bitmask, CString, MacAddress
from ..walk import fixed_size, label_for, unwrap_name


@dataclass(eq=False)
class Node:
    """One declaration at one place: ``abbrev`` is the field abbreviation the walker gives it."""

    abbrev: str
    label: str


@dataclass(eq=False)
class StructNode(Node):
    """A Struct: a new context; ``fields`` are (name or None for unnamed, node), in order."""

    fields: list[tuple[str | None, Node]] = field(default_factory=list)


@dataclass(eq=False)
class FlagSpec:
    """A named bit (``single``: a bool) or group of bits (an int, shifted) of an integer field."""

    abbrev: str
    label: str
    mask: int
    single: bool
    names: dict[int, str] = field(default_factory=dict)

    @property
    def shift(self) -> int:
        return (self.mask & -self.mask).bit_length() - 1


@dataclass(eq=False)
class IntNode(Node):
    """An integer of ``size`` bytes; ``names`` from an Enum; ``flags`` from a Bitmask or FlagsEnum."""

    size: int = 4
    big: bool = False
    signed: bool = False
    hex: bool = False
    names: dict[int, str] | None = None
    flags: list[FlagSpec] = field(default_factory=list)
    fmt: str | None = None  # the struct format of the integer (None for 3-byte integers)


@dataclass(eq=False)
class BytesNode(Node):
    """Raw bytes: ``length`` an int, a callable, or None (to the end of the data)."""

    length: Any = None


@dataclass(eq=False)
class StringNode(Node):
    """Text: ``style`` is ``mac`` (6 bytes), ``cstring`` (NUL-padded UTF-8), ``ascii`` (T10,
    space-padded), ``utf8`` (all of it); ``length`` as for bytes."""

    style: str = "utf8"
    length: Any = None


@dataclass(eq=False)
class ArrayNode(Node):
    """``count`` elements (an int or callable), or as many as the data holds (``count`` None)."""

    count: Any = None
    elem: Node | None = None
    elem_size: int | None = None


@dataclass(eq=False)
class SwitchNode(Node):
    key: Any = None
    cases: dict[Any, Node] = field(default_factory=dict)
    default: Node | None = None


@dataclass(eq=False)
class IfNode(Node):
    cond: Any = None
    then: Node | None = None
    orelse: Node | None = None


@dataclass(eq=False)
class PaddedNode(Node):
    length: Any = None
    sub: Node | None = None


@dataclass(eq=False)
class ComputedNode(Node):
    func: Any = None


@dataclass(eq=False)
class ConstNode(Node):
    value: Any = None
    sub: Node | None = None


@dataclass(eq=False)
class PassNode(Node):
    pass


@dataclass(eq=False)
class OpaqueNode(Node):
    """A declaration this module does not know: parsed by construct itself (no Lua for it)."""

    con: Construct | None = None


_PASS = PassNode("", "")


def _int_node(con: Construct, abbrev: str, label: str) -> IntNode | None:
    """The integer under adapters (Enum, Bitmask, FlagsEnum, Hex), or None if it is not one."""
    names = None
    flags: list[FlagSpec] = []
    hexa = False
    outer = con
    inner = con
    if isinstance(inner, Enum):
        names = {int(k): str(v) for k, v in inner.decmapping.items()}
        inner = inner.subcon
    elif isinstance(inner, Bitmask | FlagsEnum):
        group_names = getattr(inner, "value_names", {}) if isinstance(inner, Bitmask) else {}
        for name, mask in dict(inner.flags).items():
            single = mask & (mask - 1) == 0
            flags.append(FlagSpec(f"{abbrev}.{name.lower()}", name, mask, single,
                                  {} if single else dict(group_names.get(name, {}))))
        hexa = True
        inner = inner.subcon
    elif isinstance(inner, Hex):
        hexa = True
        inner = inner.subcon
    if isinstance(inner, Renamed):
        return None
    if isinstance(inner, FormatField):
        fmt = inner.fmtstr
        code = fmt[-1]
        if code not in "bBhHiIlLqQ":
            return None
        return IntNode(abbrev, label, struct.calcsize(fmt), fmt[0] == ">", code.islower(), hexa, names, flags, fmt)
    if isinstance(inner, BytesInteger) and isinstance(inner.length, int):
        return IntNode(abbrev, label, inner.length, not inner.swapped, bool(inner.signed), hexa, names, flags, None)
    if outer is not con:  # pragma: no cover
        return None
    return None


class Builder:
    """Builds the nodes of one or more layers, sharing a node for a declaration seen twice at one place."""

    def __init__(self) -> None:
        self._memo: dict[tuple[int, str, str], Node] = {}

    def build(self, con: Construct, abbrev: str, label: str) -> Node:
        key = (id(con), abbrev, label)
        node = self._memo.get(key)
        if node is None:
            node = self._make(con, abbrev, label)
            self._memo[key] = node
        return node

    def _make(self, con: Construct, abbrev: str, label: str) -> Node:
        con, _, docs = unwrap_name(con)
        if con is Pass:
            return _PASS
        label = docs or label
        if isinstance(con, Struct):
            node = StructNode(abbrev, label)
            self._memo[(id(con), abbrev, label)] = node  # (a layout never contains itself, but be safe)
            for sub in con.subcons:
                _, name, subdocs = unwrap_name(sub)
                if name is None:  # consumed, never shown: no abbreviation (the generator registers no field)
                    node.fields.append((None, self.build(sub, "", "")))
                else:
                    node.fields.append((name, self.build(sub, f"{abbrev}.{name}", label_for(name, subdocs))))
            return node
        if isinstance(con, Array):
            return ArrayNode(abbrev, label, con.count, self.build(con.subcon, abbrev, label), fixed_size(con.subcon))
        if isinstance(con, GreedyRange):
            return ArrayNode(abbrev, label, None, self.build(con.subcon, abbrev, label), fixed_size(con.subcon))
        if isinstance(con, Switch):
            cases = {key: self.build(case, abbrev, label) for key, case in con.cases.items()}
            return SwitchNode(abbrev, label, con.keyfunc, cases, self.build(con.default, abbrev, label))
        if isinstance(con, IfThenElse):
            return IfNode(abbrev, label, con.condfunc, self.build(con.thensubcon, abbrev, label),
                          self.build(con.elsesubcon, abbrev, label))
        if isinstance(con, Padded):
            return PaddedNode(abbrev, label, con.length, self.build(con.subcon, abbrev, label))
        if isinstance(con, Computed):
            return ComputedNode(abbrev, label, con.func)
        if isinstance(con, Const):
            return ConstNode(abbrev, label, con.value, self.build(con.subcon, abbrev, label))
        if isinstance(con, Default):
            return self.build(con.subcon, abbrev, label)
        if isinstance(con, MacAddress):
            return StringNode(abbrev, label, "mac", 6)
        if isinstance(con, CString):
            style = {AsciiField: "ascii", PortName: "utf8", Text: "utf8", CString: "cstring"}.get(type(con))
            sub = con.subcon
            length = sub.length if isinstance(sub, Bytes) else None if sub is GreedyBytes else _MISSING
            if style is None or length is _MISSING:
                return OpaqueNode(abbrev, label, con)
            return StringNode(abbrev, label, style, length)
        if isinstance(con, Enum | Bitmask | FlagsEnum | Hex | FormatField | BytesInteger):
            node = _int_node(con, abbrev, label)
            if node is not None:
                return node
            return OpaqueNode(abbrev, label, con)
        if isinstance(con, Bytes):
            return BytesNode(abbrev, label, con.length)
        if con is GreedyBytes:
            return BytesNode(abbrev, label, None)
        return OpaqueNode(abbrev, label, con)


_MISSING = object()


def build(con: Construct, abbrev: str, label: str, builder: Builder | None = None) -> Node:
    """The node tree of ``con`` as the walker dissects it with root abbreviation ``abbrev``."""
    return (builder or Builder()).build(con, abbrev, label)


def walk_nodes(root: Node) -> list[Node]:
    """Every node reachable from ``root``, each once, parents before children."""
    seen: set[int] = set()
    out: list[Node] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        stack.extend(reversed(children(node)))
    return out


def children(node: Node) -> list[Node]:
    if isinstance(node, StructNode):
        return [sub for _, sub in node.fields]
    if isinstance(node, ArrayNode):
        return [node.elem]
    if isinstance(node, SwitchNode):
        return [*node.cases.values(), node.default]
    if isinstance(node, IfNode):
        return [node.then, node.orelse]
    if isinstance(node, PaddedNode | ConstNode):
        return [node.sub]
    return []


def callables(node: Node) -> list[tuple[str, Any]]:
    """The data-dependent parts of one node: (role, callable) for each that is not a plain constant."""
    out = []
    for role, value in (("count", getattr(node, "count", None)), ("length", getattr(node, "length", None)),
                        ("key", getattr(node, "key", None)), ("cond", getattr(node, "cond", None)),
                        ("func", getattr(node, "func", None))):
        if callable(value):
            out.append((role, value))
    return out
