"""Turn a parsed filter into nested closures over ``{abbreviation: [values]}``.

Literals are converted once, at compile time, to the type of the field they are
compared with (its catalog kind); a value of another type at run time simply
does not match, it never raises. Plain-field comparisons against a constant
get dedicated closures (one dict lookup and one C-level loop).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import parser as p
from .catalog import ANY, BOOL, BYTES, FLOAT, INT, NONE, STRING, FieldCatalog, FieldInfo
from .errors import FilterError, quote
from .literals import looks_numeric, parse_bool, parse_bytes, parse_float, parse_int

Fields = Mapping[str, Sequence[Any]]
Pred = Callable[[Fields], bool]
Getter = Callable[[Fields], Sequence[Any] | None]

_MISS = object()
_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_INTLIKE = (int, bool, float)
_BYTESLIKE = (bytes, bytearray, memoryview)


# -- operands -------------------------------------------------------------------------------------

@dataclass(slots=True)
class Source:
    """Where the values on one side come from: a field, or a function of one."""

    cls: str  # type class of the values (catalog.INT, ...)
    name: str | None = None  # a plain field: read fields.get(name) directly
    getter: Getter | None = None  # a function of fields (len(), &, ...)
    info: FieldInfo | None = None
    parent: bool = False  # a protocol or subtree name (presence also counts its children)

    def get(self) -> Getter:
        if self.getter is not None:
            return self.getter
        name = self.name
        return lambda fields: fields.get(name)


@dataclass(slots=True)
class Uniform:
    """A constant compared as is with every value (an int, a float, a bool)."""

    value: Any


@dataclass(slots=True)
class Typed:
    """A constant with one form per value type (``"GET"`` is a str for str values, bytes for bytes)."""

    table: dict[type, Any]

    def of(self, value: Any) -> Any:
        table = self.table
        try:
            return table[type(value)]
        except KeyError:
            pass
        except TypeError:
            return _MISS
        found = _MISS
        for base in type(value).__mro__[1:]:
            if base in table:
                found = table[base]
                break
        if len(table) < 64:  # cache subclasses (IntEnum, str subclasses), bounded
            table[type(value)] = found
        return found


@dataclass(slots=True)
class Names:
    """A value name that stands for several values (merged value-name tables)."""

    values: frozenset[int]


Operand = Uniform | Typed | Names | Source


def _int_table(number: int | float) -> dict[type, Any]:
    return {int: number, bool: number, float: number}


def _bytes_table(data: bytes) -> dict[type, Any]:
    return {bytes: data, bytearray: data, memoryview: data}


# -- the compiler ---------------------------------------------------------------------------------

class Compiler:
    """One compilation: the filter text (for error columns), the catalog, the fields named."""

    def __init__(self, text: str, catalog: FieldCatalog) -> None:
        self.text = text
        self.catalog = catalog
        self.fields: dict[str, None] = {}  # insertion-ordered set of field names used

    def fail(self, message: str, node: p.Node) -> FilterError:
        return FilterError(message, column=node.start + 1, text=self.text, length=node.end - node.start)

    # tests
    def test(self, node: p.Node) -> Pred:
        match node:
            case p.Or(items=items):
                return _any_of([self.test(item) for item in items])
            case p.And(items=items):
                return _all_of([self.test(item) for item in items])
            case p.Not(item=item):
                inner = self.test(item)
                return lambda fields: not inner(fields)
            case p.Exists(value=value):
                return self.exists(value)
            case p.Compare():
                return self.compare(node)
            case p.Member():
                return self.member(node)
            case p.Contains():
                return self.contains(node)
            case p.Matches():
                return self.matches(node)
        raise TypeError(node)

    def exists(self, node: p.Node) -> Pred:
        source = self.source(node, "a test")
        if isinstance(node, p.BitAnd):
            return _wrap(source, _any_value(bool))
        if source.getter is not None:
            getter = source.getter
            return lambda fields: bool(getter(fields))
        name = source.name
        if source.parent:
            prefix = name + "."

            def present_with_children(fields: Fields) -> bool:
                if fields.get(name):
                    return True
                return any(values for key, values in fields.items() if key.startswith(prefix))

            return present_with_children
        return lambda fields: bool(fields.get(name))

    def compare(self, node: p.Compare) -> Pred:
        op = node.op
        source = self.source(node.left, f"the left side of {quote(op)}")
        self.comparable(source, node.left, op)
        operand = self.operand(node.right, source, op)
        if isinstance(operand, Source):
            return _field_pairs(source, operand, op)
        if op in _ORDER:
            if isinstance(operand, Names):
                raise self.fail(f"{quote(self.src(node.right))} names {len(operand.values)} values of "
                                f"{source.name}: it can only be used with ==, != or in", node.right)
            return _ordering(source, operand, _ORDER[op])
        return _equality(source, operand, op)

    def member(self, node: p.Member) -> Pred:
        source = self.source(node.left, "the left side of 'in'")
        self.comparable(source, node.left, "in")
        uniform: set[Any] = set()
        typed: list[Typed] = []
        names: list[frozenset[int]] = []
        ranges: list[tuple[Uniform | Typed, Uniform | Typed]] = []
        for low, high in node.elements:
            lo = self.operand(low, source, "in", literal_only=True)
            if high is None:
                if isinstance(lo, Uniform):
                    uniform.add(lo.value)
                elif isinstance(lo, Typed):
                    typed.append(lo)
                else:
                    names.append(lo.values)
                continue
            hi = self.operand(high, source, "in", literal_only=True)
            for bound, bound_node in ((lo, low), (hi, high)):
                if isinstance(bound, Names):
                    raise self.fail(f"{quote(self.src(bound_node))} names several values: it cannot bound a range",
                                    bound_node)
            ranges.append((lo, hi))
        for values in names:
            uniform.update(values)
        return _wrap(source, _any_value(_member_test(frozenset(uniform), typed, ranges)))

    def contains(self, node: p.Contains) -> Pred:
        source = self.source(node.left, "the left side of 'contains'")
        if source.cls not in (STRING, BYTES, ANY):
            raise self.fail(f"{self.src(node.left)} is {_kind_text(source)}: 'contains' needs a string or "
                            "bytes field", node.left)
        right = node.right
        if isinstance(right, p.Word | p.Call | p.BitAnd) and self.is_field(right):
            other = self.source(right, "the right side of 'contains'")
            return _field_pairs(source, other, "contains")
        needle = self.needle(right, source)
        return _wrap(source, _any_value(_contains_test(needle)))

    def matches(self, node: p.Matches) -> Pred:
        source = self.source(node.left, "the left side of 'matches'")
        if source.cls not in (STRING, BYTES, ANY):
            raise self.fail(f"{self.src(node.left)} is {_kind_text(source)}: 'matches' needs a string or bytes "
                            "field (string() converts a number)", node.left)
        if not isinstance(node.right, p.Str):
            raise self.fail("'matches' needs a double-quoted regular expression on its right", node.right)
        pattern = node.right.value
        flags = re.IGNORECASE  # Wireshark: case-insensitive unless the pattern starts with (?-i)
        if pattern.startswith(b"(?-i)"):
            pattern, flags = pattern[5:], 0
        try:
            text_re = re.compile(pattern.decode("utf-8", "surrogateescape"), flags)
            bytes_re = re.compile(pattern, flags)
        except (re.error, OverflowError, RecursionError, ValueError) as err:
            raise self.fail(f"bad regular expression: {getattr(err, 'msg', err)}", node.right) from None
        return _wrap(source, _any_value(_regex_test(text_re, bytes_re)))

    # operands
    def is_field(self, node: p.Node) -> bool:
        """A right-hand word is a field when the catalog knows it (field names win, as in Wireshark)."""
        if isinstance(node, p.Word):
            return node.text in self.catalog
        return isinstance(node, p.Call | p.BitAnd)

    def source(self, node: p.Node, role: str) -> Source:
        """The values a field, function or ``&`` expression gives."""
        if isinstance(node, p.Word):
            info = self.catalog.get(node.text)
            if info is None:
                if looks_numeric(node.text) or parse_bool(node.text) is not None:
                    raise self.fail(f"{role} must be a field, not the value {quote(node.text)}", node)
                hint = self.catalog.suggest(node.text)
                extra = f" (did you mean {', '.join(hint)}?)" if hint else ""
                raise self.fail(f"{quote(node.text)} is neither a field nor a protocol name{extra}", node)
            self.fields.setdefault(node.text, None)
            return Source(info.cls, name=node.text, info=info, parent=self.catalog.has_children(node.text))
        if isinstance(node, p.Call):
            return self.call(node)
        if isinstance(node, p.BitAnd):
            inner = self.source(node.left, role)
            if inner.cls not in (INT, BOOL, ANY):
                raise self.fail(f"{self.src(node.left)} is {_kind_text(inner)}: '&' needs an integer field",
                                node.left)
            mask = self.mask(node.mask)
            get = inner.get()

            def masked(fields: Fields) -> list[int] | None:
                values = get(fields)
                if not values:
                    return None
                return [value & mask for value in values if isinstance(value, int)]

            return Source(INT, getter=masked)
        kind = "string" if isinstance(node, p.Str) else "character constant"
        raise self.fail(f"{role} must be a field, not the {kind} {self.src(node)}", node)

    def mask(self, node: p.Node) -> int:
        if isinstance(node, p.Char):
            return node.value
        if isinstance(node, p.Word):
            number = parse_int(node.text)
            if number is not None:
                return number
        raise self.fail(f"the mask after '&' must be an integer, not {quote(self.src(node))}", node)

    def call(self, node: p.Call) -> Source:
        arg = node.arg
        if not isinstance(arg, p.Word | p.Call):
            raise self.fail(f"{node.func}() takes a field", arg)
        inner = self.source(arg, f"the argument of {node.func}()")
        get = inner.get()
        func = node.func
        if func == "count":
            return Source(INT, getter=lambda fields: [len(values)] if (values := get(fields)) else None)
        if func == "len":
            if inner.cls not in (STRING, BYTES, ANY):
                raise self.fail(f"len() needs a string or bytes field; {self.src(arg)} is {_kind_text(inner)}", arg)
            return Source(INT, getter=_mapped(get, len))
        if func in ("upper", "lower"):
            if inner.cls not in (STRING, BYTES, ANY):
                raise self.fail(f"{func}() needs a string field; {self.src(arg)} is {_kind_text(inner)}", arg)
            method = str.upper if func == "upper" else str.lower
            bmethod = bytes.upper if func == "upper" else bytes.lower

            def change_case(value: Any) -> Any:
                return method(value) if isinstance(value, str) else bmethod(bytes(value))

            return Source(inner.cls, getter=_mapped(get, change_case))
        # string()
        if inner.cls in (STRING, BYTES):
            raise self.fail(f"string() converts a number or boolean; {self.src(arg)} is {_kind_text(inner)}", arg)
        return Source(STRING, getter=_mapped(get, _to_string))

    def comparable(self, source: Source, node: p.Node, op: str) -> None:
        if source.cls == NONE:
            raise self.fail(f"{source.name} is a protocol or subtree: it can only be tested for presence, "
                            f"not with {quote(op)}", node)

    def operand(self, node: p.Node, source: Source, op: str, *, literal_only: bool = False) -> Operand:
        """The right-hand side of a comparison, converted for ``source``."""
        if not literal_only and self.is_field(node):
            other = self.source(node, f"the right side of {quote(op)}")
            self.comparable(other, node, op)
            return other
        if isinstance(node, p.Call | p.BitAnd):
            raise self.fail("a set holds values, not fields or functions", node)
        cls = source.cls
        if cls == INT:
            return self.int_operand(node, source)
        if cls == BOOL:
            value = parse_bool(node.text) if isinstance(node, p.Word) else None
            if isinstance(node, p.Char):
                value = node.value != 0
            if value is None:
                raise self.fail(f"{source.name or 'a boolean'} is a boolean: compare it with True, False, 1 or 0, "
                                f"not {self.src(node)}", node)
            return Uniform(value)
        if cls == FLOAT:
            value = parse_float(node.text) if isinstance(node, p.Word) else None
            if isinstance(node, p.Char):
                value = float(node.value)
            if value is None:
                raise self.fail(f"{quote(self.src(node))} is not a valid number", node)
            return Uniform(value)
        if cls == STRING:
            return Typed(_string_table(node))
        if cls == BYTES:
            return Typed(self.bytes_table(node))
        return Typed(_any_table(node))

    def int_operand(self, node: p.Node, source: Source) -> Uniform | Names:
        info = source.info
        if isinstance(node, p.Char):
            return Uniform(node.value)
        if isinstance(node, p.Word):
            number = parse_int(node.text)
            if number is not None:
                return Uniform(number)
            if looks_numeric(node.text):
                raise self.fail(f"{quote(node.text)} is not a valid number", node)
            if not (info and info.value_names):
                raise self.fail(f"{quote(node.text)} is not a valid number, and {source.name or 'this value'} "
                                "has no value names", node)
            name = node.text
        else:
            name = node.value.decode("utf-8", "replace")
            if not (info and info.value_names):
                what = source.name or "this value"
                raise self.fail(f"{what} has no value names: the string {quote(name)} cannot be compared with it "
                                "(write a number, without quotes)", node)
        values = info.lookup_name(name)
        if values is None:
            close = info.suggest_names(name)
            if close:
                hint = f"did you mean {', '.join(close)}?"
            else:
                known = info.known_names()
                hint = "known: " + ", ".join(known[:6]) + (f", … ({len(known)} in all)" if len(known) > 6 else "")
            raise self.fail(f"{quote(name)} is not a value name of {source.name} ({hint})", node)
        if len(values) == 1:
            return Uniform(next(iter(values)))
        return Names(values)

    def bytes_table(self, node: p.Node) -> dict[type, Any]:
        if isinstance(node, p.Str):
            return {**_bytes_table(node.value), str: node.value.decode("utf-8", "surrogateescape")}
        if isinstance(node, p.Char):
            return _bytes_table(bytes([node.value]))
        data = parse_bytes(node.text)
        if data is None:
            raise self.fail(f"{quote(node.text)} is not a valid byte string (write aa:bb:cc, or a string in "
                            "double quotes)", node)
        return _bytes_table(data)

    def needle(self, node: p.Node, source: Source) -> Typed:
        """The right side of 'contains'."""
        if isinstance(node, p.Call | p.BitAnd):
            raise self.fail("the right side of 'contains' must be a value or a field", node)
        if source.cls == BYTES:
            return Typed(self.bytes_table(node))
        if source.cls == STRING:
            return Typed(_string_table(node))
        return Typed(_any_table(node))

    def src(self, node: p.Node) -> str:
        """The source text of ``node``."""
        return self.text[node.start:node.end]


def _kind_text(source: Source) -> str:
    if source.info is not None and source.info.kind:
        return f"of type {source.info.kind}"
    return {INT: "an integer", BOOL: "a boolean", FLOAT: "a float", STRING: "a string", BYTES: "bytes",
            NONE: "a protocol", ANY: "untyped"}[source.cls]


def _string_table(node: p.Node) -> dict[type, Any]:
    if isinstance(node, p.Str):
        return {str: node.value.decode("utf-8", "surrogateescape"), **_bytes_table(node.value)}
    if isinstance(node, p.Char):
        return {str: chr(node.value), **_bytes_table(bytes([node.value]))}
    table: dict[type, Any] = {str: node.text, **_bytes_table(node.text.encode())}
    number = parse_int(node.text)
    if number is not None:  # a string-typed computed field may still hold numbers
        table.update(_int_table(number))
    return table


def _any_table(node: p.Node) -> dict[type, Any]:
    """A literal compared with a field of unknown type: one form per value type."""
    if isinstance(node, p.Str):
        return {str: node.value.decode("utf-8", "surrogateescape"), **_bytes_table(node.value)}
    if isinstance(node, p.Char):
        return {**_int_table(node.value), str: chr(node.value), **_bytes_table(bytes([node.value]))}
    text = node.text
    table: dict[type, Any] = {str: text}
    data = parse_bytes(text)
    table.update(_bytes_table(data if data is not None else text.encode()))
    number = parse_float(text)
    integer = parse_int(text)
    boolean = parse_bool(text)
    if integer is not None:
        table.update(_int_table(integer))
    elif number is not None:
        table.update(_int_table(number))
    elif boolean is not None:
        table.update(_int_table(int(boolean)))
    return table


def _to_string(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _mapped(get: Getter, func: Callable[[Any], Any]) -> Getter:
    """A getter applying ``func`` to every value (values it cannot take are dropped)."""

    def mapped(fields: Fields) -> list[Any] | None:
        values = get(fields)
        if not values:
            return None
        out = []
        for value in values:
            try:
                out.append(func(value))
            except (TypeError, ValueError):
                continue
        return out

    return mapped


# -- closures -------------------------------------------------------------------------------------

def _any_of(preds: list[Pred]) -> Pred:
    if len(preds) == 2:
        a, b = preds
        return lambda fields: a(fields) or b(fields)

    def any_of(fields: Fields) -> bool:
        for pred in preds:  # noqa: SIM110 (a plain loop is faster than any()/all() on a generator)
            if pred(fields):
                return True
        return False

    return any_of


def _all_of(preds: list[Pred]) -> Pred:
    if len(preds) == 2:
        a, b = preds
        return lambda fields: a(fields) and b(fields)

    def all_of(fields: Fields) -> bool:
        for pred in preds:  # noqa: SIM110 (a plain loop is faster than any()/all() on a generator)
            if not pred(fields):
                return False
        return True

    return all_of


ValuesTest = Callable[[Sequence[Any]], bool]


def _wrap(source: Source, test: ValuesTest) -> Pred:
    """A predicate: the source's values are present and pass ``test``."""
    if source.getter is not None:
        getter = source.getter

        def derived(fields: Fields) -> bool:
            values = getter(fields)
            return test(values) if values else False

        return derived
    name = source.name

    def plain(fields: Fields) -> bool:
        values = fields.get(name)
        return test(values) if values else False

    return plain


def _any_value(check: Callable[[Any], bool]) -> ValuesTest:
    def any_value(values: Sequence[Any]) -> bool:
        for value in values:  # noqa: SIM110 (a plain loop is faster than any()/all() on a generator)
            if check(value):
                return True
        return False

    return any_value


def _safe(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """``check`` with a TypeError (a value of another type) meaning 'no match'."""

    def safe(value: Any) -> bool:
        try:
            return bool(check(value))
        except TypeError:
            return False

    return safe


def _equality(source: Source, operand: Uniform | Typed | Names, op: str) -> Pred:
    """==, !=, === and !== against a constant (Wireshark 4.0: != is 'all not equal', i.e. not ==)."""
    if isinstance(operand, Uniform) and source.getter is None:
        name, const = source.name, operand.value
        if op == "==":
            return lambda fields: const in values if (values := fields.get(name)) else False
        if op == "!=":
            return lambda fields: const not in values if (values := fields.get(name)) else False
    if isinstance(operand, Uniform):
        const = operand.value
        equal = _safe(lambda value: value == const)
    elif isinstance(operand, Typed):
        of = operand.of

        def equal(value: Any) -> bool:
            form = of(value)
            return form is not _MISS and form == value
    else:
        allowed = operand.values
        equal = _safe(lambda value: value in allowed)
    if op == "==":
        return _wrap(source, _any_value(equal))
    if op == "!=":
        return _wrap(source, lambda values: not any(equal(value) for value in values))
    if op == "===":
        return _wrap(source, lambda values: all(equal(value) for value in values))
    return _wrap(source, lambda values: not all(equal(value) for value in values))  # !==: some value differs


def _ordering(source: Source, operand: Uniform | Typed, cmp: Callable[[Any, Any], bool]) -> Pred:
    if isinstance(operand, Uniform):
        const = operand.value
        check = _safe(lambda value: cmp(value, const))
        if source.getter is None:
            name = source.name

            def ordered(fields: Fields) -> bool:
                values = fields.get(name)
                if not values:
                    return False
                try:
                    for value in values:
                        if cmp(value, const):
                            return True
                except TypeError:  # a value of another type: check one at a time
                    return any(check(value) for value in values)
                return False

            return ordered
        return _wrap(source, _any_value(check))
    of = operand.of

    def typed(value: Any) -> bool:
        form = of(value)
        if form is _MISS:
            return False
        try:
            return bool(cmp(value, form))
        except TypeError:
            return False

    return _wrap(source, _any_value(typed))


def _member_test(uniform: frozenset[Any], typed: list[Typed],
                 ranges: list[tuple[Uniform | Typed, Uniform | Typed]]) -> Callable[[Any], bool]:
    def bound(operand: Uniform | Typed, value: Any) -> Any:
        return operand.value if isinstance(operand, Uniform) else operand.of(value)

    def member(value: Any) -> bool:
        try:
            if value in uniform:
                return True
        except TypeError:
            pass
        for operand in typed:
            form = operand.of(value)
            if form is not _MISS and form == value:
                return True
        for low, high in ranges:
            lo, hi = bound(low, value), bound(high, value)
            if lo is _MISS or hi is _MISS:
                continue
            try:
                if lo <= value <= hi:
                    return True
            except TypeError:
                continue
        return False

    return member


def _contains_test(needle: Typed) -> Callable[[Any], bool]:
    of = needle.of

    def contains(value: Any) -> bool:
        form = of(value)
        if form is _MISS:
            return False
        try:
            return form in value
        except TypeError:
            return False

    return contains


def _regex_test(text_re: re.Pattern[str], bytes_re: re.Pattern[bytes]) -> Callable[[Any], bool]:
    def search(value: Any) -> bool:
        if isinstance(value, str):
            return text_re.search(value) is not None
        if isinstance(value, _BYTESLIKE):
            return bytes_re.search(value) is not None
        return False

    return search


def _pair(op: str) -> Callable[[Any, Any], bool]:
    if op in _ORDER:
        return _ORDER[op]
    if op == "!==":
        return operator.ne
    if op == "contains":
        def contains(left: Any, right: Any) -> bool:
            if isinstance(left, _BYTESLIKE) and isinstance(right, str):
                right = right.encode()
            elif isinstance(left, str) and isinstance(right, _BYTESLIKE):
                left = left.encode()
            return right in left

        return contains
    return operator.eq


def _field_pairs(left: Source, right: Source, op: str) -> Pred:
    """A comparison between two fields: over every pair of occurrences (both must be present)."""
    get_left, get_right = left.get(), right.get()
    pair = _pair(op)

    def check(a: Any, b: Any) -> bool:
        try:
            return bool(pair(a, b))
        except TypeError:
            return False

    def pairs(fields: Fields) -> bool:
        lefts, rights = get_left(fields), get_right(fields)
        if not lefts or not rights:
            return False
        if op == "!=":
            return not any(check(a, b) for a in lefts for b in rights)
        if op == "===":
            return all(check(a, b) for a in lefts for b in rights)
        return any(check(a, b) for a in lefts for b in rights)

    return pairs
