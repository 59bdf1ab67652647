"""Which fields a display filter may name, their types and their value names.

The default catalog is every field of every registered layer
(``vqtrace.dissectors.all_layers()`` then ``layer.fields()``), built on first use
and rebuilt when more layers have been registered since. Tests and callers with
extra pseudo-fields build their own with ``FieldCatalog([...])`` or
``catalog.extended([...])``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Type classes a field kind belongs to; comparisons convert literals by class.
INT, BOOL, FLOAT, STRING, BYTES, NONE, ANY = "int", "bool", "float", "string", "bytes", "none", "any"


def kind_class(kind: str) -> str:
    """The type class of a FieldSpec kind (``uint32`` -> int, ``none`` -> a subtree, unknown -> any)."""
    kind = (kind or "").lower()
    if kind.startswith(("uint", "int", "frame_num")):
        return INT
    if kind in ("bool", "boolean"):
        return BOOL
    if kind in ("float", "double") or kind.startswith("float"):
        return FLOAT
    if kind.startswith("string") or kind in ("str", "text", "ether", "mac"):
        return STRING
    if kind in ("bytes", "bytearray", "uint_bytes"):
        return BYTES
    if kind in ("none", "protocol", "subtree"):
        return NONE
    return ANY


@dataclass
class FieldInfo:
    """One field of the catalog."""

    abbrev: str
    kind: str = "any"
    value_names: dict[int, str] = field(default_factory=dict)
    label: str = ""
    _index: dict[str, frozenset[int]] | None = field(default=None, repr=False)

    @property
    def cls(self) -> str:
        return kind_class(self.kind)

    def short_prefix(self) -> str:
        """The prefix all value names share, cut at an underscore (``VHOST_USER_``); "" if none."""
        names = [str(name) for name in self.value_names.values()]
        if len(names) < 2:
            return ""
        common = _common_prefix(names)
        return common[:common.rfind("_") + 1]

    def names_index(self) -> dict[str, frozenset[int]]:
        """Lower-cased value name (full and without the shared prefix) -> the values it names."""
        if self._index is None:
            prefix = self.short_prefix()
            index: dict[str, set[int]] = {}
            for value, name in self.value_names.items():
                name = str(name)
                index.setdefault(name.lower(), set()).add(value)
                if prefix and len(name) > len(prefix):
                    index.setdefault(name[len(prefix):].lower(), set()).add(value)
            self._index = {name: frozenset(values) for name, values in index.items()}
        return self._index

    def lookup_name(self, name: str) -> frozenset[int] | None:
        """The values ``name`` stands for (case-insensitive, full or short form), or None."""
        return self.names_index().get(name.lower())

    def known_names(self) -> list[str]:
        """The short value names in value order, for error messages."""
        prefix = self.short_prefix()
        return [str(name)[len(prefix):] for _, name in sorted(self.value_names.items())]

    def suggest_names(self, name: str, limit: int = 3) -> list[str]:
        """Value names close to ``name`` (short form when it is the shortest spelling)."""
        prefix = self.short_prefix()
        spellings = {}
        for full in (str(n) for n in self.value_names.values()):
            spellings[full.lower()] = full
            if prefix and len(full) > len(prefix):
                spellings[full[len(prefix):].lower()] = full[len(prefix):]
        close = difflib.get_close_matches(name.lower(), list(spellings), n=limit, cutoff=0.6)
        return [spellings[c] for c in close]


SpecLike = Any  # a FieldSpec (abbrev, kind, value_names, label), or a tuple (abbrev, kind[, value_names])


class FieldCatalog:
    """Field abbreviations -> :class:`FieldInfo`, plus the protocols and subtrees above them.

    Every dotted prefix of a known field (``virtio_blk``, ``virtqueue.desc``) is known
    too: a filter may test it for presence. With ``allow_unknown`` any name is
    accepted, as a field of unknown type.
    """

    def __init__(self, specs: Iterable[SpecLike] = (), *, allow_unknown: bool = False) -> None:
        self.allow_unknown = allow_unknown
        self._fields: dict[str, FieldInfo] = {}
        self._sorted: list[str] | None = None
        for spec in specs:
            self._add(_info_of(spec))
        self._parents: set[str] = set()
        for abbrev in list(self._fields):
            parts = abbrev.split(".")
            for cut in range(1, len(parts)):
                parent = ".".join(parts[:cut])
                self._parents.add(parent)
                if parent not in self._fields:
                    self._fields[parent] = FieldInfo(parent, "none")

    def _add(self, info: FieldInfo) -> None:
        known = self._fields.get(info.abbrev)
        if known is None:
            self._fields[info.abbrev] = info
            return
        if kind_class(known.kind) == NONE and kind_class(info.kind) != NONE:
            info.value_names = {**known.value_names, **info.value_names}
            self._fields[info.abbrev] = info
        else:
            known.value_names.update(info.value_names)

    @classmethod
    def default(cls) -> FieldCatalog:
        """Every field of every registered layer (built lazily, cached until layers change)."""
        from ..dissectors import all_layers

        layers = all_layers()
        key = tuple(layer.name for layer in layers)
        global _DEFAULT
        if _DEFAULT is None or _DEFAULT[0] != key:
            specs: list[SpecLike] = []
            for layer in layers:
                specs.extend(layer.fields())
            _DEFAULT = (key, cls(specs))
        return _DEFAULT[1]

    def extended(self, specs: Iterable[SpecLike], *, allow_unknown: bool | None = None) -> FieldCatalog:
        """A new catalog with these fields added (for example a command's pseudo-fields)."""
        own = [FieldInfo(i.abbrev, i.kind, dict(i.value_names), i.label) for i in self._fields.values()
               if i.abbrev not in self._parents or kind_class(i.kind) != NONE]
        return FieldCatalog([*own, *specs], allow_unknown=self.allow_unknown if allow_unknown is None
                            else allow_unknown)

    def get(self, abbrev: str) -> FieldInfo | None:
        """The field called ``abbrev``; None if unknown (a field of unknown type with allow_unknown)."""
        info = self._fields.get(abbrev)
        if info is None and self.allow_unknown:
            return FieldInfo(abbrev, "any")
        return info

    def __contains__(self, abbrev: object) -> bool:
        return abbrev in self._fields

    def __len__(self) -> int:
        return len(self._fields)

    def names(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self._fields)
        return self._sorted

    def has_children(self, abbrev: str) -> bool:
        """True for a protocol or subtree name: some other field's name starts with ``abbrev.``."""
        return abbrev in self._parents

    def suggest(self, abbrev: str, limit: int = 3) -> list[str]:
        """Known names close to ``abbrev``, for 'did you mean' messages."""
        return difflib.get_close_matches(abbrev, self.names(), n=limit, cutoff=0.75)


_DEFAULT: tuple[tuple[str, ...], FieldCatalog] | None = None


def _common_prefix(names: list[str]) -> str:
    """The characters every name starts with."""
    first, last = min(names), max(names)
    size = 0
    while size < len(first) and first[size] == last[size]:
        size += 1
    return first[:size]


def _info_of(spec: SpecLike) -> FieldInfo:
    if isinstance(spec, FieldInfo):
        return FieldInfo(spec.abbrev, spec.kind, dict(spec.value_names), spec.label)
    if isinstance(spec, tuple):
        abbrev, kind, *rest = spec
        names: Mapping[int, str] = rest[0] if rest else {}
        return FieldInfo(abbrev, kind, {int(k): str(v) for k, v in names.items()})
    names = getattr(spec, "value_names", None) or {}
    return FieldInfo(spec.abbrev, getattr(spec, "kind", "any"), {int(k): str(v) for k, v in names.items()},
                     getattr(spec, "label", ""))
