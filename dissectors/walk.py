"""Turn a construct declaration plus bytes into a field tree, and describe its fields.

The layouts are declared once, as construct definitions (DESIGN.md). This module
derives from them both the field tree of a dissected message (``dissect_tree``)
and the static list of fields a layer can produce (``describe``), which feeds
value-name lookups in display filters and the generated Wireshark plugin.

Supported declarations: Struct, named fields (``"name" / con * "Label"``), the
integer and bytes primitives, Enum, FlagsEnum, :class:`Bitmask`, Hex, Const,
Padding/Padded, Array, GreedyRange, Switch, If/IfThenElse, Computed and the
adapters of :mod:`dissectors.types`. Anything else is parsed as one leaf.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from typing import Any

from construct import (
    Adapter,
    Array,
    Bytes,
    BytesInteger,
    Computed,
    Const,
    Construct,
    ConstructError,
    Container,
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
    SizeofError,
    StreamError,
    Struct,
    Switch,
)
from construct.core import evaluate

from .errors import DissectError
from .tree import Field
from .types import Address, Bitmask, CString, MacAddress

#: How many bytes of a bytes value the display string shows before eliding.
DISPLAY_BYTES = 24


def unwrap_name(con: Construct) -> tuple[Construct, str | None, str | None]:
    """Strip Renamed wrappers: (inner construct, field name, label from docs)."""
    name = docs = None
    while isinstance(con, Renamed):
        name = name or con.name
        docs = docs or (con.docs or None)
        con = con.subcon
    return con, name, docs


def label_for(name: str, docs: str | None) -> str:
    """The human label of a field: its docs, else its name made readable."""
    if docs:
        return docs
    text = name.replace("_", " ")
    return text[:1].upper() + text[1:]


def fixed_size(con: Construct) -> int | None:
    """The construct's size when it does not depend on data, else None."""
    try:
        return con.sizeof()
    except (SizeofError, KeyError, AttributeError, TypeError):
        return None


def int_width(con: Construct) -> int | None:
    """Byte width of an integer construct (through adapters), or None."""
    while True:
        if isinstance(con, FormatField):
            return struct.calcsize(con.fmtstr)
        if isinstance(con, BytesInteger):
            return con.length if isinstance(con.length, int) else None
        if isinstance(con, Adapter | Renamed):
            con = con.subcon
            continue
        return None


def format_bytes(data: bytes) -> str:
    if len(data) <= DISPLAY_BYTES:
        return data.hex()
    return f"{data[:DISPLAY_BYTES].hex()}… ({len(data)} bytes)"


class _Walker:
    """One dissection: a stream over the bytes, the layer name for errors."""

    def __init__(self, layer: str, data: bytes, base: int) -> None:
        self.layer = layer
        self.stream = io.BytesIO(data)
        self.size = len(data)
        self.base = base  # offset of data[0] within the record, for the tree

    def fail(self, offset: int, message: str) -> DissectError:
        return DissectError(self.layer, self.base + offset, message)

    def leaf(self, con: Construct, ctx: Container, abbrev: str) -> Any:
        start = self.stream.tell()
        try:
            return con._parsereport(self.stream, ctx, abbrev)
        except StreamError:
            want = fixed_size(con)
            left = self.size - start
            if want is not None:
                raise self.fail(start, f"truncated: {abbrev} needs {want} bytes, {left} left") from None
            raise self.fail(start, f"truncated: {abbrev} runs past the end ({left} bytes left)") from None
        except (ConstructError, struct.error, ValueError, UnicodeError) as err:
            raise self.fail(start, f"{abbrev}: {err}") from None

    def node(self, con: Construct, ctx: Container, abbrev: str, label: str) -> tuple[Any, Field]:
        """Parse ``con`` at the stream position; return its value and its node."""
        con, _, docs = unwrap_name(con)
        if con is Pass:
            return None, None  # an absent optional field (If with a false condition)
        if docs and label.startswith("\0"):
            label = docs
        label = label.lstrip("\0")
        start = self.stream.tell()

        if isinstance(con, Struct):
            value, children = self.struct(con, ctx, abbrev)
            return value, Field(abbrev, label, None, "", self.base + start, self.stream.tell() - start, children)

        if isinstance(con, Array | GreedyRange):
            return self.array(con, ctx, abbrev, label)

        if isinstance(con, Switch):
            key = evaluate(con.keyfunc, ctx)
            return self.node(con.cases.get(key, con.default), ctx, abbrev, label)

        if isinstance(con, IfThenElse):
            chosen = con.thensubcon if evaluate(con.condfunc, ctx) else con.elsesubcon
            return self.node(chosen, ctx, abbrev, label)

        if isinstance(con, Padded):
            length = evaluate(con.length, ctx)
            value, inner = self.node(con.subcon, ctx, abbrev, label)
            used = self.stream.tell() - start
            if used > length:
                raise self.fail(start, f"{abbrev}: {used} bytes do not fit in {length}")
            self.leaf(Bytes(length - used), ctx, abbrev)
            inner.length = length
            return value, inner

        if isinstance(con, Computed):
            value = evaluate(con.func, ctx)
            return value, Field(abbrev, label, value, display_value(value), self.base + start, 0)

        if isinstance(con, Const):
            value = self.leaf(con.subcon, ctx, abbrev)
            if value != con.value:
                raise self.fail(start, f"{abbrev}: expected {con.value!r}, found {value!r}")
            return value, self.make_leaf(con, value, abbrev, label, start)

        if isinstance(con, Enum | FlagsEnum | Bitmask | Hex):
            value = int(self.leaf(con.subcon, ctx, abbrev))
        else:
            value = self.leaf(con, ctx, abbrev)
        return value, self.make_leaf(con, value, abbrev, label, start)

    def make_leaf(self, con: Construct, value: Any, abbrev: str, label: str, start: int) -> Field:
        offset, length = self.base + start, self.stream.tell() - start
        node = Field(abbrev, label, value, display_of(con, value), offset, length)
        flags = flag_masks(con)
        if flags:
            width = int_width(con) or length
            for name, mask in flags.items():
                shift = (mask & -mask).bit_length() - 1
                bits = (value & mask) >> shift
                if mask & (mask - 1) == 0:
                    shown = "Set" if bits else "Not set"
                    child = Field(f"{abbrev}.{name.lower()}", name, bool(bits), shown, offset, width)
                else:
                    child = Field(f"{abbrev}.{name.lower()}", name, bits, group_display(con, name, bits), offset, width)
                node.children.append(child)
        return node

    def struct(self, con: Struct, parent: Container | None, abbrev: str) -> tuple[Container, list[Field]]:
        ctx = Container(_=parent, _params=parent._params if parent is not None else {}, _root=None,
                        _parsing=True, _building=False, _sizing=False, _subcons=con._subcons,
                        _io=self.stream, _index=parent.get("_index") if parent is not None else None)
        ctx._root = ctx._.get("_root", ctx) if parent is not None else ctx
        children: list[Field] = []
        for sub in con.subcons:
            _, name, docs = unwrap_name(sub)
            if name is None:
                self.node(sub, ctx, abbrev, "")  # unnamed: padding, consumed but not shown
                continue
            value, child = self.node(sub, ctx, f"{abbrev}.{name}", label_for(name, docs))
            ctx[name] = value
            if child is not None:
                children.append(child)
        return ctx, children

    def array(self, con: Array | GreedyRange, ctx: Container, abbrev: str, label: str) -> tuple[list, Field]:
        start = self.stream.tell()
        element = con.subcon
        elem_size = fixed_size(element)
        left = self.size - start
        if isinstance(con, Array):
            count = evaluate(con.count, ctx)
            if not isinstance(count, int) or count < 0:
                raise self.fail(start, f"{abbrev}: bad element count {count!r}")
            if elem_size is not None and count * elem_size > left:
                raise self.fail(start, f"truncated: {abbrev} has {count} entries of {elem_size} bytes, "
                                       f"{left} bytes left")
            if elem_size == 0 and count > left + 1:
                raise self.fail(start, f"{abbrev}: {count} entries of zero size")
        else:
            count = None
        values: list = []
        children: list[Field] = []
        index = 0
        while count is None or index < count:
            if count is None and self.stream.tell() >= self.size:
                break
            ctx["_index"] = index
            before = self.stream.tell()
            value, child = self.node(element, ctx, abbrev, f"\0[{index}]")
            if count is None and self.stream.tell() == before:
                break  # a zero-size element would repeat forever
            child.label = f"{label} [{index}]" if child.value is not None else f"[{index}]"
            values.append(value)
            children.append(child)
            index += 1
        node = Field(abbrev, f"{label} ({len(values)} entries)", None, "", self.base + start,
                     self.stream.tell() - start, children)
        return values, node


def flag_masks(con: Construct) -> dict[str, int]:
    """Named bit masks of a FlagsEnum or Bitmask (through Renamed), else {}."""
    con, _, _ = unwrap_name(con)
    if isinstance(con, Bitmask | FlagsEnum):
        return dict(con.flags)
    return {}


def group_names(con: Construct, group: str) -> dict[int, str]:
    """Value names of a Bitmask's multi-bit ``group`` (through Renamed), else {}."""
    con, _, _ = unwrap_name(con)
    return dict(getattr(con, "value_names", {}).get(group, {})) if isinstance(con, Bitmask) else {}


def group_display(con: Construct, group: str, bits: int) -> str:
    """A multi-bit group's display: ``NAME (n)`` when the group has value names, else the number."""
    names = group_names(con, group)
    if not names:
        return str(bits)
    name = names.get(bits)
    return f"{name} ({bits})" if name is not None else f"Unknown ({bits})"


def display_of(con: Construct, value: Any) -> str:
    """The display string Wireshark would show for ``value`` of ``con``."""
    if isinstance(con, Enum):
        name = con.decmapping.get(value)
        return f"{name} ({value})" if name is not None else f"Unknown ({value})"
    if isinstance(con, Bitmask | FlagsEnum):
        width = int_width(con) or 4
        names = [n for n, m in con.flags.items() if m & (m - 1) == 0 and value & m]
        text = f"0x{value:0{width * 2}x}"
        return f"{text} ({', '.join(names)})" if names else text
    if isinstance(con, Hex):
        width = int_width(con) or 8
        return f"0x{value:0{width * 2}x}"
    return display_value(value)


def display_value(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return format_bytes(bytes(value))
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def dissect_tree(con: Construct, data: bytes, *, layer: str, abbrev: str, label: str,
                 base: int = 0, params: dict[str, Any] | None = None) -> tuple[Any, Field]:
    """Dissect ``data`` as ``con``; return (parsed values, root Field).

    ``base`` is the offset of ``data`` within the enclosing record, so the tree's
    offsets point into the bytes a hex view shows. ``params`` become the
    construct context's ``_params`` (for example negotiated features).
    """
    walker = _Walker(layer, bytes(data), base)
    ctx = Container(_params=params or {}, _index=None)
    try:
        return walker.node(con, ctx, abbrev, label)
    except DissectError:
        raise
    except (ConstructError, struct.error, ValueError, KeyError, TypeError, AttributeError,
            IndexError, OverflowError, RecursionError, UnicodeError) as err:
        raise walker.fail(walker.stream.tell(), f"{type(err).__name__}: {err}") from None


@dataclass
class FieldSpec:
    """A field a layer can produce: what the filter engine and the Lua plugin need."""

    abbrev: str
    label: str
    kind: str  # "uint8".."uint64", "bool", "bytes", "string", "none" (subtree)
    base: str = "DEC"  # "DEC" or "HEX"
    value_names: dict[int, str] = field(default_factory=dict)
    mask: int = 0  # for a child of a bitmask field
    parent_width: int = 0


def describe(con: Construct, abbrev: str, label: str) -> list[FieldSpec]:
    """Every field ``con`` can produce, without data (all Switch cases, both If arms)."""
    specs: dict[str, FieldSpec] = {}
    ambiguous: set[str] = set()  # fields whose numbers are named differently in different Switch cases

    def add(spec: FieldSpec) -> None:
        known = specs.get(spec.abbrev)
        if known is None or (known.kind == "none" and spec.kind != "none"):
            specs[spec.abbrev] = spec
        elif spec.abbrev not in ambiguous:
            if any(known.value_names.get(value, name) != name for value, name in spec.value_names.items()):
                known.value_names.clear()  # e.g. a command number whose name depends on its class
                ambiguous.add(spec.abbrev)
            else:
                known.value_names.update(spec.value_names)

    def visit(con: Construct, abbrev: str, label: str) -> None:
        con, _, docs = unwrap_name(con)
        label = docs or label
        if isinstance(con, Struct):
            add(FieldSpec(abbrev, label, "none"))
            for sub in con.subcons:
                _, name, subdocs = unwrap_name(sub)
                if name is not None:
                    visit(sub, f"{abbrev}.{name}", label_for(name, subdocs))
        elif isinstance(con, Array | GreedyRange):
            visit(con.subcon, abbrev, label)
        elif isinstance(con, Switch):
            for case in [*con.cases.values(), con.default]:
                visit(case, abbrev, label)
        elif isinstance(con, IfThenElse):
            visit(con.thensubcon, abbrev, label)
            visit(con.elsesubcon, abbrev, label)
        elif isinstance(con, Padded | Const):
            visit(con.subcon, abbrev, label)
        elif con is Pass:
            return
        else:
            add(leaf_spec(con, abbrev, label))
            width = int_width(con) or 0
            for name, mask in flag_masks(con).items():
                single = mask & (mask - 1) == 0
                add(FieldSpec(f"{abbrev}.{name.lower()}", name, "bool" if single else f"uint{width * 8}",
                              value_names={} if single else group_names(con, name), mask=mask, parent_width=width))

    visit(con, abbrev, label)
    return list(specs.values())


def leaf_spec(con: Construct, abbrev: str, label: str) -> FieldSpec:
    width = int_width(con)
    if isinstance(con, Enum):
        return FieldSpec(abbrev, label, f"uint{(width or 4) * 8}", value_names=dict(con.decmapping))
    if isinstance(con, Bitmask | FlagsEnum | Hex):
        return FieldSpec(abbrev, label, f"uint{(width or 4) * 8}", base="HEX")
    if isinstance(con, MacAddress | CString):
        return FieldSpec(abbrev, label, "string")
    if isinstance(con, Address):
        return FieldSpec(abbrev, label, "uint64", base="HEX")
    if width is not None:
        return FieldSpec(abbrev, label, f"uint{width * 8}")
    if isinstance(con, Bytes) or con is GreedyBytes:
        return FieldSpec(abbrev, label, "bytes")
    if isinstance(con, Computed):
        return FieldSpec(abbrev, label, "string")
    return FieldSpec(abbrev, label, "bytes")
