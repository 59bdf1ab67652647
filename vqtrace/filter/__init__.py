"""Display filters: Wireshark's filter language over vqtrace's field abbreviations.

``compile_filter("virtio_blk.type == 1 && virtio_blk.sector in {0..63}")`` gives a
:class:`Filter`; ``flt.matches({"virtio_blk.type": [1], "virtio_blk.sector": [8]})``
evaluates it on one event, given as ``{abbreviation: [values]}`` (a field may occur
several times). ``vqtrace show -Y`` and the TUI use it; the same text works in
Wireshark 4.0 with vqtrace's Lua plugin.

Language (Wireshark 4.0, checked against tshark 4.0.17):

- ``field`` alone: the field is present (``!field``: absent). A protocol or subtree
  name (``virtio_blk``, ``virtqueue.desc``) is present when any field under it is.
  A boolean field alone tests presence, not truth: write ``field == 1``.
- ``== != < <= > >=`` and ``eq ne lt le gt ge``; ``===`` (all_eq) and ``!==``
  (any_ne, also ``~=``). For a field occurring several times ``==`` and the
  orderings are true when ANY occurrence matches; ``!=`` is "all not equal",
  exactly ``!(a == b)`` when the field is present; ``===`` needs every occurrence
  equal, ``!==`` some occurrence different. Every comparison on an absent field
  is false (so ``not f == 1`` is true for an event without ``f``, ``f != 1`` is not).
- ``contains`` (bytes or string fields; a string is compared as its UTF-8 bytes
  against a bytes field), ``matches`` / ``~`` (a Python ``re`` regular expression in
  double quotes, searched, case-INSENSITIVE as in Wireshark; a leading ``(?-i)``
  makes it case-sensitive).
- ``f in {1, 5, 100..200}``, ``f not in {...}``: commas between members, ``..`` ranges
  (inclusive; a reversed range is empty).
- ``f & 0x4``: true when some occurrence has a bit of the mask set;
  ``f & 0xff == 0x10`` compares the masked value.
- ``len(f)``, ``count(f)``, ``upper(f)``, ``lower(f)``, ``string(f)``.
- Field on the right: ``virtqueue.used.idx == virtqueue.avail.idx`` (any pair).
- Literals: decimal, hex ``0x1f``, octal ``017``, binary ``0b101``, with a sign;
  floats for float fields; ``'a'`` character constants; ``"..."`` strings with
  the escapes ``\\\\ \\" \\' \\a \\b \\f \\n \\r \\t \\v \\xHH \\NNN`` and raw ``r"..."``;
  byte strings ``aa:bb:cc``, ``aa-bb``, ``aabbcc``, ``0x41`` (one byte);
  booleans ``True``/``False`` (any case) or a number (non-zero is true).
- Value names: where the field has them, ``vhost_user.request == "SET_MEM_TABLE"``,
  ``== "VHOST_USER_SET_MEM_TABLE"`` and ``== SET_MEM_TABLE`` all mean the number; a
  name matches its full spec name or the name without the prefix all of that
  field's names share, case-insensitively. An unknown name is an error that
  suggests close ones; a quoted name for a field without names is an error.
- Precedence, tightest first: a comparison; ``not``/``!``; ``and``/``&&``;
  ``or``/``||``. So ``not a and b or c`` is ``((not a) and b) or c``, as tshark 4.0
  reads it. Comparisons do not chain; parentheses group.
- An empty filter matches everything.

Field names must be in the :class:`FieldCatalog` (by default every field of every
registered layer); a word on the right of a comparison is a field when the catalog
knows it, a literal otherwise. Errors are :class:`FilterError` (a
:class:`~vqtrace.errors.UsageError`): ``str(err)`` is one line naming the 1-based
column, ``err.pointer()`` draws the filter with a caret.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..dissectors.tree import Field
from .catalog import FieldCatalog, FieldInfo, kind_class
from .compiler import Compiler, Fields
from .errors import FilterError
from .parser import parse, render

__all__ = ["FieldCatalog", "FieldInfo", "Filter", "FilterError", "compile_filter", "fields_of", "kind_class",
           "values_mapping"]


class Filter:
    """A compiled display filter: call :meth:`matches` once per event."""

    __slots__ = ("_prefixes", "_tree", "fields", "matches", "text")

    def __init__(self, text: str, tree: Any, matches: Any, fields: tuple[str, ...]) -> None:
        self.text = text
        self._tree = tree
        #: ``matches(fields) -> bool``: the filter on one event's ``{abbreviation: [values]}``.
        self.matches = matches
        #: The field (and protocol) names the filter reads, in order of first use.
        self.fields = fields
        self._prefixes = tuple(f"{name}." for name in fields)

    def wants(self, abbrev: str) -> bool:
        """Whether the filter reads ``abbrev``: one of :attr:`fields`, or a field under one of them
        (``virtio_blk`` in a filter reads every ``virtio_blk.*`` field, for presence)."""
        return abbrev in self.fields or abbrev.startswith(self._prefixes)

    def __call__(self, fields: Fields) -> bool:
        return self.matches(fields)

    @property
    def canonical(self) -> str:
        """The filter fully parenthesised (how precedence grouped it)."""
        return render(self._tree)

    def __repr__(self) -> str:
        return f"Filter({self.text!r})"


def _everything(fields: Fields) -> bool:
    return True


def compile_filter(text: str, catalog: FieldCatalog | None = None) -> Filter:
    """Compile ``text``; ``catalog`` None means every registered layer's fields. FilterError if bad."""
    if not isinstance(text, str):
        raise FilterError("a display filter must be text", column=1)
    tree = parse(text)
    if tree is None:
        return Filter(text, None, _everything, ())
    compiler = Compiler(text, catalog if catalog is not None else FieldCatalog.default())
    matches = compiler.test(tree)
    return Filter(text, tree, matches, tuple(compiler.fields))


def fields_of(roots: Iterable[Field]) -> dict[str, list[Any]]:
    """``{abbreviation: [values]}`` of field trees, for :meth:`Filter.matches`.

    Protocol and subtree nodes are included with the value None, so a filter can
    test their presence; values keep tree order. An array's own node is left out (its
    entries carry the same abbreviation and the values; an empty array is no field, as
    in Wireshark, where the plugin shows it as a text item).
    """
    out: dict[str, list[Any]] = {}
    for root in roots:
        for node in root.walk():
            if node.value is None and node.label.endswith(" entries)") and all(
                    child.abbrev == node.abbrev for child in node.children):
                continue
            out.setdefault(node.abbrev, []).append(node.value)
    return out


def values_mapping(values: Mapping[str, Any]) -> dict[str, Sequence[Any]]:
    """Normalise ``Field.values()`` style output (scalar or list per key) to lists."""
    return {key: value if isinstance(value, list) else [value] for key, value in values.items()}
