"""Write the Wireshark plugin, ``vqtrace.lua``, from the construct layouts.

Run ``python -m vqtrace.dissectors.wireshark.generate`` after changing a layout (the
test ``tests/test_lua_generate.py`` fails while the shipped file differs from what
this writes). What comes from where:

- protocols and fields: every node of every registered layer (``ir.py``), so each
  abbreviation vqtrace shows is a Wireshark field of the same type and value names;
- layouts: the node trees as Lua tables, walked by the runtime (``runtime.py``);
- data-dependent parts: construct ``this`` expressions translated here, Python
  functions through their twins (``twins.py``), whose constants are filled in from
  the Python functions themselves;
- the record plan (which layer dissects which bytes of a record): ``plan.py``.
"""

from __future__ import annotations

import dis
import hashlib
import inspect
import linecache
import operator
import re
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from construct.expr import BinExpr, ExprMixin, UniExpr
from construct.expr import Path as ThisPath

from .. import layers as registry
from . import ir
from .plan import PLAN
from .runtime import RUNTIME
from .twins import HELPERS, TWINS

PLUGIN = Path(__file__).with_name("vqtrace.lua")
PROTOCOL_TITLES = {
    "vqtrace": "vqtrace record",
    "vhost_user": "vhost-user",
    "virtqueue": "Virtqueue",
    "virtio_pci": "Virtio over PCI",
    "virtio_mmio": "Virtio over MMIO",
    "virtio_net": "Virtio network device",
    "virtio_blk": "Virtio block device",
    "virtio_console": "Virtio console",
    "virtio_balloon": "Virtio memory balloon",
    "virtio_scsi": "Virtio SCSI host",
    "virtio_vsock": "Virtio socket device",
    "virtio_rng": "Virtio entropy device",
}
#: Fields the plan adds that no layout declares: (abbreviation, kind, label).
EXTRA_FIELDS = [
    ("vqtrace.malformed", "string", "Malformed layer"),
]


class GenerateError(Exception):
    """A layout the generator cannot translate (a callable without a twin, a changed source...)."""


# ---------------------------------------------------------------------------------------------
# Callables: keys, fingerprints, twins


def _module_short(fn: Any) -> str:
    return fn.__module__.rsplit(".", 1)[-1]


def lambda_body(fn: Any) -> str:
    """The source of a lambda's body, whitespace normalised (its positions in the file, Python 3.11+)."""
    code = fn.__code__
    lines = linecache.getlines(code.co_filename)
    spans = [i.positions for i in dis.get_instructions(code)
             if i.opname not in ("RESUME", "RETURN_VALUE") and i.positions is not None
             and i.positions.lineno is not None and i.positions.col_offset is not None]
    if not spans or not lines:
        raise GenerateError(f"cannot read the source of a lambda in {code.co_filename}:{code.co_firstlineno}")
    start = min((p.lineno, p.col_offset) for p in spans)
    end = max((p.end_lineno, p.end_col_offset) for p in spans)
    if start[0] == end[0]:
        text = lines[start[0] - 1][start[1]:end[1]]
    else:
        text = lines[start[0] - 1][start[1]:] + "".join(lines[start[0]:end[0] - 1]) + lines[end[0] - 1][:end[1]]
    return " ".join(text.split())


def callable_key(fn: Any) -> str:
    """The twin key of a Python callable (see twins.py)."""
    if fn.__name__ == "<lambda>":
        args = ", ".join(fn.__code__.co_varnames[:fn.__code__.co_argcount])
        return f"{_module_short(fn)}: lambda {args}: {lambda_body(fn)}"
    return f"{_module_short(fn)}.{fn.__qualname__.replace('<locals>.', '')}"


def fingerprint(obj: Any) -> str:
    """12 hex digits of the SHA-1 of a function's source (dedented, whitespace runs collapsed)."""
    source = textwrap.dedent(inspect.getsource(obj))
    return hashlib.sha1(" ".join(source.split()).encode()).hexdigest()[:12]


def _resolve_dotted(name: str) -> Any:
    module_name, _, attr = name.rpartition(".")
    module = sys.modules.get(f"{__package__.rsplit('.', 1)[0]}.{module_name}")
    if module is None:
        raise GenerateError(f"no dissectors module {module_name!r} (for {name})")
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise GenerateError(f"{name}: not found")
    return obj


# ---------------------------------------------------------------------------------------------
# Lua literals


def lua_string(text: str) -> str:
    out = []
    for byte in text.encode():
        ch = chr(byte)
        if ch == "\\" or ch == '"':
            out.append("\\" + ch)
        elif 32 <= byte < 127:
            out.append(ch)
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def lua_key(value: Any) -> str:
    """The runtime's KEY() of a Python Switch key."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return "s:" + value
    if isinstance(value, tuple):
        return "t:" + ",".join("nil" if v is None else str(int(v)) if isinstance(v, int) else str(v)
                               for v in value)
    if value is None:
        return "nil"
    raise GenerateError(f"a Switch key the plugin cannot represent: {value!r}")


def lua_literal(value: Any) -> str:
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        if abs(value) >= 2 ** 53:
            raise GenerateError(f"integer {value} is too large for a Lua 5.2 number")
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return lua_string(value)
    if isinstance(value, bytes):
        return '"' + "".join(f"\\{b:03d}" for b in value) + '"'
    # tables in parentheses, so a twin may index one at once: ({...})[key]
    if isinstance(value, set | frozenset):
        return "({" + ", ".join(f"[{lua_literal(v)}] = true" for v in sorted(value, key=repr)) + "})"
    if isinstance(value, tuple | list):
        if all(isinstance(v, str) for v in value) and not isinstance(value, list):
            return "({" + ", ".join(f"[{lua_literal(v)}] = true" for v in value) + "})"  # a tuple of names: a set
        return "({" + ", ".join(lua_literal(v) for v in value) + "})"
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            items.append(f"[{lua_literal(key)}] = {lua_literal(item)}")
        return "({" + ", ".join(items) + "})"
    raise GenerateError(f"cannot write {type(value).__name__} {value!r} as Lua")


def _specs_table(specs: dict[int, Any]) -> str:
    rows = []
    for number, spec in sorted(specs.items()):
        payload = ", ".join(lua_string(k) for k in spec.payload)
        reply = ", ".join(lua_string(k) for k in spec.reply)
        rows.append(f"[{number}] = {{payload = {{{payload}}}, reply = {{{reply}}}}}")
    return "{\n    " + ",\n    ".join(rows) + "\n}"


def _payload_table(kinds: dict[str, Any]) -> str:
    rows = []
    for name, kind in kinds.items():
        sizes = ", ".join(str(s) for s in kind.sizes)
        rows.append(f"[{lua_string(name)}] = {{name = {lua_string(name)}, sizes = {{{sizes}}}, "
                    f"min = {kind.min_size}, max = {kind.max_size}, step = {kind.step}}}")
    return "{\n    " + ",\n    ".join(rows) + "\n}"


def _cdb_sizes() -> str:
    from .. import scsi_cdb

    rows = []
    for key in scsi_cdb.CDB_LAYOUTS:
        size = scsi_cdb._LAYOUT_SIZES.get(key)
        rows.append(f"[{lua_string(lua_key(key))}] = {-1 if size is None else size}")
    return "{" + ", ".join(rows) + "}"


def _sense_lengths() -> str:
    from .. import scsi_cdb

    return "{" + ", ".join(f"[{dtype}] = {length}" for dtype, (length, _) in
                           sorted(scsi_cdb.SENSE_DESCRIPTORS.items())) + "}"


def _asc_names() -> str:
    from .. import scsi_cdb

    return "{" + ", ".join(f"[{asc * 256 + ascq}] = {lua_string(name)}" for (asc, ascq), name in
                           sorted(scsi_cdb.ASC_ASCQ.items())) + "}"


#: Tables helpers name that are not plain literals.
TABLES: dict[str, Callable[[], str]] = {
    "vhost_user.REQUEST_SPECS": lambda: _specs_table(_resolve_dotted("vhost_user.REQUEST_SPECS")),
    "vhost_user.BACKEND_REQUEST_SPECS": lambda: _specs_table(_resolve_dotted("vhost_user.BACKEND_REQUEST_SPECS")),
    "vhost_user.PAYLOAD_KINDS": lambda: _payload_table(_resolve_dotted("vhost_user.PAYLOAD_KINDS")),
    "scsi_cdb.CDB_LAYOUT_SIZES": _cdb_sizes,
    "scsi_cdb.SENSE_DESCRIPTOR_LENGTHS": _sense_lengths,
    "scsi_cdb.ASC_ASCQ_NAMES": _asc_names,
}

_PLACEHOLDER = re.compile(r"@\{([\w.]+)\}")


class Twins:
    """Renders callables as Lua expressions, checking fingerprints on the way."""

    def __init__(self) -> None:
        self.checked: set[str] = set()
        self.problems: list[str] = []
        self.used: set[str] = set()

    def check(self, key: str, obj: Any, want: str) -> None:
        if key in self.checked:
            return
        self.checked.add(key)
        have = fingerprint(obj)
        if have != want:
            self.problems.append(f"{key}: its Python source changed (fingerprint {have}, the twin says {want}): "
                                 "check the Lua twin in dissectors/wireshark/twins.py, then update the fingerprint")

    def render(self, fn: Any) -> str:
        """A Lua expression for ``fn``: a ``this`` expression or a Python callable with a twin."""
        if isinstance(fn, ExprMixin):
            return f"function(ctx) return {expr_lua(fn)} end"
        if not callable(fn):
            return lua_literal(fn)
        key = callable_key(fn)
        twin = TWINS.get(key)
        if twin is None:
            raise GenerateError(f"no Lua twin for {key!r} ({fn.__code__.co_filename}:{fn.__code__.co_firstlineno}): "
                                "add one to dissectors/wireshark/twins.py")
        self.used.add(key)
        if fn.__name__ != "<lambda>":
            self.check(key, fn, twin.fingerprint)
        closure = {}
        if fn.__closure__:
            closure = dict(zip(fn.__code__.co_freevars, (c.cell_contents for c in fn.__closure__), strict=True))

        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in closure:
                value = closure[name]
            elif name in fn.__globals__:
                value = fn.__globals__[name]
            else:
                raise GenerateError(f"twin of {key!r}: @{{{name}}} is neither a closure variable nor a global")
            if callable(value) and not isinstance(value, type):
                return self.render(value)
            return lua_literal(value)

        return "(" + _PLACEHOLDER.sub(fill, twin.lua) + ")"

    def helpers(self) -> str:
        out = []
        for _name, helper in HELPERS:
            for python_name, want in helper.mirrors.items():
                self.check(python_name, _resolve_dotted(python_name), want)
            out.append(fill_globals(helper.lua))
        return "\n".join(out)


def fill_globals(text: str) -> str:
    """``@{module.NAME}`` in helper or plan Lua: a dissectors module global, or one of :data:`TABLES`."""

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in TABLES:
            return TABLES[name]()
        return lua_literal(_resolve_dotted(name))

    return _PLACEHOLDER.sub(fill, text)


_LUA_OPS = {
    operator.add: "+", operator.sub: "-", operator.mul: "*", operator.mod: "%", operator.eq: "==",
    operator.ne: "~=", operator.lt: "<", operator.le: "<=", operator.gt: ">", operator.ge: ">=",
}
_LUA_FUNCS = {operator.floordiv: "FLOORDIV", operator.and_: "band", operator.or_: "bor", operator.xor: "bxor",
              operator.lshift: "lshift", operator.rshift: "rshift"}


def expr_lua(expr: Any) -> str:
    """A construct ``this`` expression in Lua over the runtime's context."""
    if isinstance(expr, ThisPath):
        keys = []
        node = expr
        while isinstance(node, ThisPath) and node._Path__parent is not None:
            keys.append(node._Path__field)
            node = node._Path__parent
        if not isinstance(node, ThisPath) or node._Path__name != "this" or not keys:
            raise GenerateError(f"unsupported path {expr!r}")
        text = "ctx"
        for key in reversed(keys):
            text = f"V({text}, {lua_string(key)})"
        return text
    if isinstance(expr, BinExpr):
        left, right = expr_lua(expr.lhs), expr_lua(expr.rhs)
        if expr.op in _LUA_OPS:
            return f"({left} {_LUA_OPS[expr.op]} {right})"
        if expr.op in _LUA_FUNCS:
            return f"{_LUA_FUNCS[expr.op]}({left}, {right})"
        raise GenerateError(f"unsupported operator in {expr!r}")
    if isinstance(expr, UniExpr):
        if expr.op is operator.neg:
            return f"(-{expr_lua(expr.operand)})"
        if expr.op is operator.not_:
            return f"(not TRUTH({expr_lua(expr.operand)}))"
        raise GenerateError(f"unsupported operator in {expr!r}")
    if isinstance(expr, ExprMixin):
        raise GenerateError(f"unsupported expression {expr!r}")
    return lua_literal(expr)


# ---------------------------------------------------------------------------------------------
# Fields


class FieldTable:
    """One Wireshark field per abbreviation: its kind, label, base and value names."""

    def __init__(self) -> None:
        self.fields: dict[str, dict[str, Any]] = {}
        self.ambiguous: set[str] = set()

    def add(self, abbrev: str, kind: str, label: str, *, hexa: bool = False,
            names: dict[int, str] | None = None) -> None:
        known = self.fields.get(abbrev)
        if known is None:
            self.fields[abbrev] = {"kind": kind, "label": label, "hex": hexa, "names": dict(names or {})}
            return
        if known["kind"] != kind:
            raise GenerateError(f"{abbrev} is {known['kind']} in one layout and {kind} in another")
        if abbrev in self.ambiguous or not names:
            return
        if any(known["names"].get(value, name) != name for value, name in names.items()):
            known["names"].clear()
            self.ambiguous.add(abbrev)
        else:
            known["names"].update(names)


def _node_kind(node: ir.Node, twins: Twins) -> str | None:
    if isinstance(node, ir.IntNode):
        return f"{'int' if node.signed else 'uint'}{node.size * 8}"
    if isinstance(node, ir.BytesNode):
        return "bytes"
    if isinstance(node, ir.StringNode):
        return "string"
    if isinstance(node, ir.StructNode):
        return "none"
    if isinstance(node, ir.ComputedNode):
        if callable(node.func) and not isinstance(node.func, ExprMixin):
            twin = TWINS.get(callable_key(node.func))
            if twin is not None and twin.kind:
                return twin.kind
        return "string"
    return None


def computed_kind(fn: Any) -> str:
    """The value kind of a Computed field (from its twin): what vqtrace's catalog uses too."""
    if callable(fn) and not isinstance(fn, ExprMixin):
        twin = TWINS.get(callable_key(fn))
        if twin is not None and twin.kind:
            return twin.kind
    return "string"


# ---------------------------------------------------------------------------------------------
# The plugin


class Generator:
    def __init__(self) -> None:
        self.builder = ir.Builder()
        self.twins = Twins()
        self.fields = FieldTable()
        self.roots: dict[str, ir.Node] = {}
        self.node_ids: dict[int, int] = {}
        self.node_lines: list[str] = []
        self.twin_ids: dict[str, int] = {}
        self.twin_lines: list[str] = []

    def layers(self) -> None:
        for layer in registry.all_layers():
            root = ir.build(layer.struct, layer.prefix, layer.title, self.builder)
            self.roots[layer.name] = root
            for node in ir.walk_nodes(root):
                if isinstance(node, ir.OpaqueNode):
                    raise GenerateError(f"{layer.name}: {node.abbrev} is a construct the plugin cannot dissect "
                                        f"({node.con!r})")
                kind = _node_kind(node, self.twins)
                if kind is None or not node.abbrev or node.abbrev.startswith("."):
                    continue
                if kind == "none" and node.abbrev in PROTOCOL_TITLES:
                    continue
                names = node.names if isinstance(node, ir.IntNode) else None
                hexa = isinstance(node, ir.IntNode) and node.hex
                self.fields.add(node.abbrev, kind, node.label, hexa=hexa, names=names)
                if isinstance(node, ir.IntNode):
                    for flag in node.flags:
                        self.fields.add(flag.abbrev, "bool" if flag.single else f"uint{node.size * 8}", flag.label,
                                        names=flag.names)
        for abbrev, kind, label in EXTRA_FIELDS:
            self.fields.add(abbrev, kind, label)

    def fn(self, spec: Any) -> str:
        """A Lua value for a node's dynamic part: a number, nil, or T[i] (a function)."""
        if spec is None:
            return "nil"
        if not callable(spec):
            return lua_literal(spec)
        text = self.twins.render(spec)
        index = self.twin_ids.get(text)
        if index is None:
            index = len(self.twin_lines) + 1
            self.twin_ids[text] = index
            self.twin_lines.append(f"T[{index}] = {text}")
        return f"T[{index}]"

    def field_ref(self, abbrev: str) -> str:
        return f"F[{lua_string(abbrev)}]"

    def node(self, node: ir.Node) -> str:
        """``N[i]``, writing the node (children first) the first time."""
        known = self.node_ids.get(id(node))
        if known is not None:
            return f"N[{known}]"
        parts = self._node_parts(node)
        index = len(self.node_lines) + 1
        self.node_ids[id(node)] = index
        self.node_lines.append(f"N[{index}] = {{{', '.join(parts)}}}")
        return f"N[{index}]"

    def _node_parts(self, node: ir.Node) -> list[str]:
        ab = lua_string(node.abbrev)
        if isinstance(node, ir.StructNode):
            fields = []
            for name, sub in node.fields:
                ref = self.node(sub)
                fields.append(f"{{name = {lua_string(name)}, node = {ref}}}" if name else f"{{node = {ref}}}")
            head = ['t = "struct"', f"ab = {ab}"]
            if node.abbrev in PROTOCOL_TITLES:
                head.append(f"proto = PROTO[{ab}]")
            else:
                head.append(f"f = {self.field_ref(node.abbrev)}")
            return [*head, "fields = {" + ", ".join(fields) + "}"]
        if isinstance(node, ir.IntNode):
            parts = ['t = "int"', f"ab = {ab}", f"f = {self.field_ref(node.abbrev)}", f"size = {node.size}"]
            if node.big:
                parts.append("big = true")
            if node.signed:
                parts.append("signed = true")
            if node.flags:
                flags = []
                for flag in node.flags:
                    lo, hi = flag.mask & 0xFFFFFFFF, flag.mask >> 32
                    item = [f"f = {self.field_ref(flag.abbrev)}", f"shift = {flag.shift}"]
                    item.append(f"mask = {flag.mask}" if node.size < 8 else f"mask64 = UInt64({lo}, {hi})")
                    if flag.single:
                        item.append("single = true")
                    flags.append("{" + ", ".join(item) + "}")
                parts.append("flags = {" + ", ".join(flags) + "}")
            return parts
        if isinstance(node, ir.BytesNode):
            return ['t = "bytes"', f"ab = {ab}", f"f = {self.field_ref(node.abbrev)}",
                    f"length = {self.fn(node.length)}"]
        if isinstance(node, ir.StringNode):
            return ['t = "string"', f"ab = {ab}", f"f = {self.field_ref(node.abbrev)}",
                    f"style = {lua_string(node.style)}", f"length = {self.fn(node.length)}"]
        if isinstance(node, ir.ArrayNode):
            elem = self.node(node.elem)
            esize = "nil" if node.elem_size is None else str(node.elem_size)
            return ['t = "array"', f"ab = {ab}", f"label = {lua_string(node.label)}", f"count = {self.fn(node.count)}",
                    f"elem = {elem}", f"esize = {esize}"]
        if isinstance(node, ir.SwitchNode):
            cases = [f"[{lua_string(lua_key(key))}] = {self.node(case)}" for key, case in node.cases.items()]
            return ['t = "switch"', f"ab = {ab}", f"key = {self.fn(node.key)}", "cases = {" + ", ".join(cases) + "}",
                    f"default = {self.node(node.default)}"]
        if isinstance(node, ir.IfNode):
            return ['t = "if"', f"ab = {ab}", f"cond = {self.fn(node.cond)}", f'["then"] = {self.node(node.then)}',
                    f'["else"] = {self.node(node.orelse)}']
        if isinstance(node, ir.PaddedNode):
            return ['t = "padded"', f"ab = {ab}", f"length = {self.fn(node.length)}",
                    f"sub = {self.node(node.sub)}"]
        if isinstance(node, ir.ComputedNode):
            return ['t = "computed"', f"ab = {ab}", f"f = {self.field_ref(node.abbrev)}",
                    f"func = {self.fn(node.func)}"]
        if isinstance(node, ir.ConstNode):
            return ['t = "const"', f"ab = {ab}", f"value = {lua_literal(node.value)}", f"sub = {self.node(node.sub)}"]
        if isinstance(node, ir.PassNode):
            return ['t = "pass"']
        raise GenerateError(f"cannot write node {node!r}")

    def write(self) -> str:
        self.layers()
        layer_lines = [f"LAYERS[{lua_string(name)}] = {self.node(root)}" for name, root in self.roots.items()]
        layer_lines += [f"LAYER_PROTOCOL[{lua_string(name)}] = {lua_string(root.abbrev.split('.', 1)[0])}"
                        for name, root in self.roots.items()]
        helpers = self.twins.helpers()
        if self.twins.problems:
            raise GenerateError("\n".join(self.twins.problems))
        protocols = sorted({abbrev.split(".", 1)[0] for abbrev in self.fields.fields} | set(PROTOCOL_TITLES))
        out = [HEADER, RUNTIME.strip(), "", "-- Helpers of the twins", helpers, "",
               "-- Protocols", "local PROTO = {}"]
        for name in protocols:
            out.append(f"PROTO[{lua_string(name)}] = Proto({lua_string(name)}, "
                       f"{lua_string(PROTOCOL_TITLES.get(name, name))})")
        out += ["", "-- Fields (one per abbreviation vqtrace shows)", "local F = {}"]
        by_proto: dict[str, list[str]] = {}
        for abbrev, spec in sorted(self.fields.fields.items()):
            out.append(f"F[{lua_string(abbrev)}] = {_protofield(abbrev, spec)}")
            by_proto.setdefault(abbrev.split(".", 1)[0], []).append(abbrev)
        for name in protocols:
            refs = ", ".join(self.field_ref(a) for a in by_proto.get(name, []))
            out.append(f"PROTO[{lua_string(name)}].fields = {{{refs}}}")
        out += ["", "-- Twins of the layouts' Python conditions, keys, counts and lengths", "local T = {}"]
        out += self.twin_lines
        out += ["", "-- Layouts", "local N = {}"]
        out += self.node_lines
        out += ["", "local LAYERS = {}", "local LAYER_PROTOCOL = {}"]
        out += layer_lines
        out += ["", fill_globals(PLAN).strip(), ""]
        return "\n".join(out)


def _protofield(abbrev: str, spec: dict[str, Any]) -> str:
    kind, label = spec["kind"], lua_string(spec["label"])
    ab = lua_string(abbrev)
    if kind.startswith(("uint", "int")):
        base = "base.HEX" if spec["hex"] else "base.DEC"
        names = spec["names"]
        width = int(kind.lstrip("uint").lstrip("int") or 32)
        if names and width <= 32:
            table = "{" + ", ".join(f"[{value}] = {lua_string(name)}" for value, name in sorted(names.items())) + "}"
            return f"ProtoField.{kind}({ab}, {label}, {base}, {table})"
        return f"ProtoField.{kind}({ab}, {label}, {base})"
    if kind == "bool":
        return f"ProtoField.bool({ab}, {label})"
    if kind == "bytes":
        return f"ProtoField.bytes({ab}, {label})"
    if kind == "string":
        return f"ProtoField.string({ab}, {label})"
    if kind == "none":
        return f"ProtoField.none({ab}, {label})"
    raise GenerateError(f"{abbrev}: unknown kind {kind}")


HEADER = """-- vqtrace.lua: the Wireshark plugin for vqtrace traces (pcapng, LINKTYPE_USER0 = 147).
--
-- GENERATED by dissectors/wireshark/generate.py from vqtrace's construct layouts: do not edit.
-- Regenerate with `python -m vqtrace.dissectors.wireshark.generate`; tests/test_lua_generate.py
-- fails while this file differs from what the generator writes. Install it with
-- `vqtrace wireshark install` (into ~/.local/lib/wireshark/plugins/), or load it once with
-- `tshark -X lua_script:vqtrace.lua -r trace.pcapng`.
--
-- SPDX-License-Identifier: GPL-2.0-or-later
"""


def generate() -> str:
    """The plugin's text as the layouts define it today."""
    return Generator().write()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else PLUGIN
    try:
        text = generate()
    except GenerateError as err:
        sys.stderr.write(f"generate: {err}\n")
        return 2
    target.write_text(text)
    print(f"wrote {target} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
