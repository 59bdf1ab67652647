"""Values-only dissection at speed: the layouts' node trees (dissectors/wireshark/ir.py) as closures.

``dissectors/walk.py`` builds a field tree per message through construct, about 40 µs
for a 16-byte descriptor: right for ``show -V`` and the TUI, too slow for a million
events in ``show -T jsonl``, ``-Y`` and ``stats``. :func:`fast_layer` compiles a layer
once into closures that read integers with ``struct`` and emit the same
``(abbreviation, value)`` pairs, in the same order, as the walker's tree
(:func:`vqtrace.dissectors.tree.Field.walk`: protocol and subtree nodes with value
None, array containers left out), or raise the same ``DissectError`` at the same
offset. The data-dependent parts (Switch keys, If conditions, counts, lengths) are
the layouts' own callables, called with the walker's construct context.
tests/test_trace_fast.py holds this equal to the walker on every layer.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from typing import Any

from construct import ConstructError
from construct.expr import BinExpr, ExprMixin, Path, UniExpr

from ..dissectors.errors import DissectError
from ..dissectors.layers import Layer, all_layers, get_layer
from ..dissectors.wireshark import ir

Pairs = list[tuple[str, Any]]
Parse = Callable[["State", Any, Pairs], Any]

_ERRORS = (ConstructError, struct.error, ValueError, KeyError, TypeError, AttributeError, IndexError, OverflowError,
           RecursionError, UnicodeError)


class State:
    """One dissection: the bytes, the position, a stream for the layouts' callables."""

    __slots__ = ("base", "data", "io", "layer", "pos", "size")

    def __init__(self, data: bytes, layer: str, base: int) -> None:
        self.data = data
        self.pos = 0
        self.size = len(data)
        self.io = io.BytesIO(data)
        self.layer = layer
        self.base = base

    def fail(self, offset: int, message: str) -> DissectError:
        return DissectError(self.layer, self.base + offset, message)


class Ctx(dict):
    """The walker's construct context (a Container), lighter: a dict that is its own ``__dict__``,
    so ``ctx.name`` and ``ctx["name"]`` are both plain dict lookups (no layout has a field named
    like a dict method, which would shadow it: tests/test_trace_fast.py checks)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.__dict__ = self


def _call(fn: Any, st: State, ctx: Any) -> Any:
    st.io.seek(st.pos)
    return fn(ctx)


def expr(spec: Any) -> Any:
    """A construct ``this`` expression as a plain function of the context (other callables unchanged)."""
    if not isinstance(spec, ExprMixin):
        return spec
    path = _path(spec)
    if path is not None:
        if len(path) == 1:
            key = path[0]
            return lambda ctx: ctx[key]
        return lambda ctx: _follow(ctx, path)
    if isinstance(spec, BinExpr):
        op, lhs, rhs = spec.op, expr(spec.lhs), expr(spec.rhs)
        if callable(lhs) and callable(rhs):
            return lambda ctx: op(lhs(ctx), rhs(ctx))
        if callable(lhs):
            return lambda ctx: op(lhs(ctx), rhs)
        if callable(rhs):
            return lambda ctx: op(lhs, rhs(ctx))
        value = op(lhs, rhs)
        return lambda ctx: value
    if isinstance(spec, UniExpr):
        op, sub = spec.op, expr(spec.operand)
        return (lambda ctx: op(sub(ctx))) if callable(sub) else (lambda ctx: op(sub))
    return spec


def _path(spec: Any) -> list[str] | None:
    """The keys of ``this.a.b`` (["a", "b"]), or None for another expression."""
    keys = []
    while isinstance(spec, Path):
        name = spec._Path__field
        parent = spec._Path__parent
        if parent is None:
            return list(reversed(keys)) if spec._Path__name == "this" and name is None else None
        keys.append(name)
        spec = parent
    return None


def _follow(ctx: Any, keys: list[str]) -> Any:
    for key in keys:
        ctx = ctx[key]
    return ctx


def _value(spec: Any, st: State, ctx: Any) -> Any:
    if callable(spec):
        st.io.seek(st.pos)
        return spec(ctx)
    return spec


class Compiler:
    """Turns nodes into closures, one per node (shared nodes share their closure)."""

    def __init__(self) -> None:
        self._done: dict[int, Parse] = {}

    def compile(self, node: ir.Node) -> Parse:
        known = self._done.get(id(node))
        if known is not None:
            return known
        cell: list[Parse] = []

        def forward(st: State, ctx: Any, out: Pairs) -> Any:  # for a node that (indirectly) contains itself
            return cell[0](st, ctx, out)

        self._done[id(node)] = forward
        made = getattr(self, "_" + type(node).__name__)(node)
        cell.append(made)
        self._done[id(node)] = made
        return made

    # -- leaves ------------------------------------------------------------------------------------

    def _IntNode(self, node: ir.IntNode) -> Parse:
        ab, size = node.abbrev, node.size
        if node.fmt is not None:
            unpack = struct.Struct(node.fmt).unpack_from
        else:
            order, signed = ("big" if node.big else "little"), node.signed

            def unpack(data: bytes, pos: int) -> tuple[int]:
                return (int.from_bytes(data[pos:pos + size], order, signed=signed),)
        flags = [(f.abbrev, f.mask, f.single, f.shift) for f in node.flags]

        def trunc(st: State, pos: int) -> DissectError:
            return st.fail(pos, f"truncated: {ab} needs {size} bytes, {st.size - pos} left")

        if not flags:
            def parse_int(st: State, ctx: Any, out: Pairs) -> int:
                pos = st.pos
                if pos + size > st.size:
                    raise trunc(st, pos)
                value = unpack(st.data, pos)[0]
                st.pos = pos + size
                out.append((ab, value))
                return value
            return parse_int

        def parse_flags(st: State, ctx: Any, out: Pairs) -> int:
            pos = st.pos
            if pos + size > st.size:
                raise trunc(st, pos)
            value = unpack(st.data, pos)[0]
            st.pos = pos + size
            out.append((ab, value))
            for sub, mask, single, shift in flags:
                out.append((sub, bool(value & mask) if single else (value & mask) >> shift))
            return value
        return parse_flags

    def _BytesNode(self, node: ir.BytesNode) -> Parse:
        ab = node.abbrev
        take = _taker(ab, expr(node.length))

        def parse_bytes(st: State, ctx: Any, out: Pairs) -> bytes:
            value = take(st, ctx)
            out.append((ab, value))
            return value
        return parse_bytes

    def _StringNode(self, node: ir.StringNode) -> Parse:
        ab, style = node.abbrev, node.style
        take = _taker(ab, expr(node.length))
        decode = _DECODERS[style]

        def parse_string(st: State, ctx: Any, out: Pairs) -> str:
            value = decode(take(st, ctx))
            out.append((ab, value))
            return value
        return parse_string

    def _ComputedNode(self, node: ir.ComputedNode) -> Parse:
        ab, func = node.abbrev, expr(node.func)

        def parse_computed(st: State, ctx: Any, out: Pairs) -> Any:
            value = _value(func, st, ctx)
            out.append((ab, value))
            return value
        return parse_computed

    def _ConstNode(self, node: ir.ConstNode) -> Parse:
        sub, expected, ab = self.compile(node.sub), node.value, node.abbrev

        def parse_const(st: State, ctx: Any, out: Pairs) -> Any:
            start = st.pos
            value = sub(st, ctx, out)
            if value != expected:
                raise st.fail(start, f"{ab}: expected {expected!r}, found {value!r}")
            return value
        return parse_const

    def _PassNode(self, node: ir.PassNode) -> Parse:
        def parse_pass(st: State, ctx: Any, out: Pairs) -> None:
            return None
        return parse_pass

    def _OpaqueNode(self, node: ir.OpaqueNode) -> Parse:
        con, ab = node.con, node.abbrev

        def parse_opaque(st: State, ctx: Any, out: Pairs) -> Any:
            start = st.pos
            st.io.seek(start)
            try:
                value = con._parsereport(st.io, ctx, ab)
            except (ConstructError, struct.error, ValueError, UnicodeError) as err:
                raise st.fail(start, f"{ab}: {err}") from None
            st.pos = st.io.tell()
            out.append((ab, value))
            return value
        return parse_opaque

    # -- composites --------------------------------------------------------------------------------

    def _StructNode(self, node: ir.StructNode) -> Parse:
        ab = node.abbrev
        fields: list[tuple[str | None, Parse]] = []
        run: list[tuple[str | None, ir.Node]] = []
        for name, sub in [*node.fields, (None, None)]:
            if sub is not None and _fusable(name, sub):
                run.append((name, sub))
                continue
            if len(run) > 1:
                fields.append(("\0run", _run(run, [self.compile(n) for _, n in run], [k for k, _ in run])))
            else:
                fields.extend((k, self.compile(n)) for k, n in run)
            run = []
            if sub is not None:
                fields.append((name, self.compile(sub)))

        def parse_struct(st: State, parent: Any, out: Pairs) -> Any:
            ctx = Ctx(_=parent, _params=parent["_params"], _root=None, _parsing=True, _building=False,
                      _sizing=False, _subcons=None, _io=st.io, _index=parent.get("_index"))
            ctx["_root"] = parent.get("_root", ctx)
            out.append((ab, None))
            for name, parse in fields:
                if name is None:
                    mark = len(out)
                    parse(st, ctx, out)
                    del out[mark:]  # unnamed: consumed, not shown
                elif name == "\0run":
                    parse(st, ctx, out)
                else:
                    ctx[name] = parse(st, ctx, out)
            return ctx
        return parse_struct

    def _ArrayNode(self, node: ir.ArrayNode) -> Parse:
        ab, count, elem_size = node.abbrev, expr(node.count), node.elem_size
        elem = self.compile(node.elem)

        def parse_array(st: State, ctx: Any, out: Pairs) -> list:
            start = st.pos
            left = st.size - start
            if count is not None:
                n = _value(count, st, ctx)
                if not isinstance(n, int) or n < 0:
                    raise st.fail(start, f"{ab}: bad element count {n!r}")
                if elem_size is not None and n * elem_size > left:
                    raise st.fail(start, f"truncated: {ab} has {n} entries of {elem_size} bytes, {left} bytes left")
                if elem_size == 0 and n > left + 1:
                    raise st.fail(start, f"{ab}: {n} entries of zero size")
            else:
                n = None
            values = []
            index = 0
            while n is None or index < n:
                if n is None and st.pos >= st.size:
                    break
                ctx["_index"] = index
                before = st.pos
                mark = len(out)
                value = elem(st, ctx, out)
                if n is None and st.pos == before:
                    del out[mark:]  # a zero-size element would repeat forever (the walker drops it)
                    break
                values.append(value)
                index += 1
            return values
        return parse_array

    def _SwitchNode(self, node: ir.SwitchNode) -> Parse:
        key = expr(node.key)
        cases = {k: self.compile(case) for k, case in node.cases.items()}
        default = self.compile(node.default)

        def parse_switch(st: State, ctx: Any, out: Pairs) -> Any:
            return cases.get(_value(key, st, ctx), default)(st, ctx, out)
        return parse_switch

    def _IfNode(self, node: ir.IfNode) -> Parse:
        cond, then, orelse = expr(node.cond), self.compile(node.then), self.compile(node.orelse)

        def parse_if(st: State, ctx: Any, out: Pairs) -> Any:
            return (then if _value(cond, st, ctx) else orelse)(st, ctx, out)
        return parse_if

    def _PaddedNode(self, node: ir.PaddedNode) -> Parse:
        ab, length, sub = node.abbrev, expr(node.length), self.compile(node.sub)

        def parse_padded(st: State, ctx: Any, out: Pairs) -> Any:
            size = _value(length, st, ctx)
            start = st.pos
            value = sub(st, ctx, out)
            used = st.pos - start
            if used > size:
                raise st.fail(start, f"{ab}: {used} bytes do not fit in {size}")
            pad = size - used
            if st.pos + pad > st.size:
                raise st.fail(st.pos, f"truncated: {ab} runs past the end ({st.size - st.pos} bytes left)")
            st.pos += pad
            return value
        return parse_padded


def _fusable(name: str | None, node: ir.Node) -> bool:
    """A field a run of fixed-size fields can read with one struct.unpack: a named integer, or unnamed padding."""
    if name is not None:
        return isinstance(node, ir.IntNode) and node.fmt is not None
    return isinstance(node, ir.BytesNode) and isinstance(node.length, int) and node.length >= 0


def _run(run: list[tuple[str | None, ir.Node]], parsers: list[Parse], names: list[str | None]) -> Parse:
    """Consecutive fixed-size fields read at once (generated code); one by one when the data is short.

    The pairs, the context entries and the errors are those of the fields read one by one.
    """
    fmt = "<"
    emits: list[str] = []
    stores: list[str] = []
    consts: dict[str, Any] = {}
    index = 0
    for name, node in run:
        if name is None:
            fmt += f"{node.length}x"
            continue
        code = node.fmt[-1]
        fmt += code
        var = f"v{index}"
        index += 1
        consts[f"a{var}"] = node.abbrev
        emits.append(f"(a{var}, {var})")
        for flag_index, flag in enumerate(node.flags):
            key = f"f{var}_{flag_index}"
            consts[key] = flag.abbrev
            if flag.single:
                emits.append(f"({key}, ({var} & {flag.mask}) != 0)")
            else:
                emits.append(f"({key}, ({var} & {flag.mask}) >> {flag.shift})")
        stores.append(f"ctx[{name!r}] = {var}")
    big = [node for name, node in run if name is not None and node.fmt[0] == ">"]
    little = [node for name, node in run if name is not None and node.fmt[0] != ">"]
    if big and little:  # mixed byte orders in one run: read field by field
        return _sequence(parsers, names)
    if big:
        fmt = ">" + fmt[1:]
    unpack = struct.Struct(fmt).unpack_from
    size = struct.calcsize(fmt)
    variables = ", ".join(f"v{i}" for i in range(index)) + ("," if index == 1 else "")
    source = (
        "def parse_run(st, ctx, out):\n"
        "    pos = st.pos\n"
        f"    if pos + {size} > st.size:\n"
        "        return slow(st, ctx, out)\n"
        f"    {variables} = unpack(st.data, pos)\n"
        f"    st.pos = pos + {size}\n"
        f"    out += ({', '.join(emits)},)\n"
        + "".join(f"    {line}\n" for line in stores)
    )
    scope = {"unpack": unpack, "slow": _sequence(parsers, names), **consts}
    exec(source, scope)  # generated from the layout's own field list (no outside text)
    return scope["parse_run"]


def _sequence(parsers: list[Parse], names: list[str | None]) -> Parse:
    """The fields of a run one by one (exact errors and partial output on short data)."""
    pairs = list(zip(names, parsers, strict=True))

    def parse_sequence(st: State, ctx: Any, out: Pairs) -> None:
        for name, parse in pairs:
            if name is None:
                mark = len(out)
                parse(st, ctx, out)
                del out[mark:]
            else:
                ctx[name] = parse(st, ctx, out)
    return parse_sequence


def _taker(ab: str, length: Any) -> Callable[[State, Any], bytes]:
    """Reads the bytes of a bytes or string field: a fixed size, a callable size, or the rest."""
    if length is None:
        def take_rest(st: State, ctx: Any) -> bytes:
            value = st.data[st.pos:]
            st.pos = st.size
            return value
        return take_rest
    if isinstance(length, int):
        def take_fixed(st: State, ctx: Any) -> bytes:
            pos = st.pos
            if length < 0 or pos + length > st.size:
                raise st.fail(pos, f"truncated: {ab} needs {length} bytes, {st.size - pos} left")
            st.pos = pos + length
            return st.data[pos:pos + length]
        return take_fixed

    def take_dynamic(st: State, ctx: Any) -> bytes:
        pos = st.pos
        try:
            size = _call(length, st, ctx)
        except (ConstructError, struct.error, ValueError, UnicodeError) as err:
            raise st.fail(pos, f"{ab}: {err}") from None
        if not isinstance(size, int):
            raise TypeError(f"{ab}: length {size!r} is not an integer")
        if size < 0 or pos + size > st.size:
            raise st.fail(pos, f"truncated: {ab} runs past the end ({st.size - pos} bytes left)")
        st.pos = pos + size
        return st.data[pos:pos + size]
    return take_dynamic


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


_DECODERS: dict[str, Callable[[bytes], str]] = {
    "mac": _mac,
    "cstring": lambda raw: raw.split(b"\0", 1)[0].decode("utf-8", "replace"),
    "ascii": lambda raw: raw.decode("ascii", "replace").rstrip(" \0"),
    "utf8": lambda raw: raw.decode("utf-8", "replace"),
}


class FastLayer:
    """One layer compiled: :meth:`pairs` gives its ``(abbreviation, value)`` pairs for some bytes."""

    def __init__(self, layer: Layer, builder: ir.Builder | None = None, compiler: Compiler | None = None) -> None:
        self.layer = layer
        self.node = ir.build(layer.struct, layer.prefix, layer.title, builder)
        self._parse = (compiler or Compiler()).compile(self.node)

    def pairs(self, data: bytes, params: dict[str, Any] | None = None, base: int = 0) -> Pairs:
        """The pairs of ``data``, in tree order; DissectError as the walker raises it."""
        st = State(bytes(data), self.layer.name, base)
        out: Pairs = []
        try:
            self._parse(st, Ctx(_params=params or {}, _index=None), out)
        except DissectError:
            raise
        except _ERRORS as err:
            raise st.fail(st.pos, f"{type(err).__name__}: {err}") from None
        return out


_BUILDER = ir.Builder()
_COMPILER = Compiler()
_CACHE: dict[str, FastLayer] = {}


def fast_layer(name: str) -> FastLayer:
    """The compiled layer called ``name`` (compiled on first use, then cached)."""
    layer = _CACHE.get(name)
    if layer is None:
        layer = _CACHE[name] = FastLayer(get_layer(name), _BUILDER, _COMPILER)
    return layer


def every_layer() -> list[FastLayer]:
    return [fast_layer(layer.name) for layer in all_layers()]


def tree_pairs(root: Any) -> Pairs:
    """The pairs of a walker tree, for comparison: every node but array containers, in tree order."""
    out: Pairs = []

    def visit(node: Any) -> None:
        is_array = node.value is None and (node.label.endswith(" entries)") and
                                           all(child.abbrev == node.abbrev for child in node.children))
        if not is_array:
            out.append((node.abbrev, node.value))
        for child in node.children:
            visit(child)

    visit(root)
    return out
