"""Field trees: Wireshark's proto_tree model (DESIGN.md, "Field tree").

Each node has an abbreviation (``virtio_blk.sector``), a label, a value, a display
string, and the byte offset and length it came from, so a hex view can highlight
it. Protocol nodes (one per layer) carry ``value=None`` and hold their fields as
children.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class Field:
    """One node of a field tree."""

    __slots__ = ("abbrev", "children", "display", "label", "length", "offset", "value")

    def __init__(
        self,
        abbrev: str,
        label: str,
        value: Any,
        display: str,
        offset: int,
        length: int,
        children: list[Field] | None = None,
    ) -> None:
        self.abbrev = abbrev
        self.label = label
        self.value = value
        self.display = display
        self.offset = offset
        self.length = length
        self.children = children if children is not None else []

    def __repr__(self) -> str:
        return f"Field({self.abbrev}={self.value!r} @{self.offset}+{self.length})"

    def walk(self) -> Iterator[Field]:
        """This node and every node below it, depth first, in byte order."""
        yield self
        for child in self.children:
            yield from child.walk()

    def find(self, abbrev: str) -> Field | None:
        """The first node with ``abbrev`` (depth first), or None."""
        for node in self.walk():
            if node.abbrev == abbrev:
                return node
        return None

    def find_all(self, abbrev: str) -> list[Field]:
        """Every node with ``abbrev``, depth first."""
        return [node for node in self.walk() if node.abbrev == abbrev]

    def __getitem__(self, abbrev: str) -> Any:
        """The value of the first node with ``abbrev``; KeyError when absent."""
        node = self.find(abbrev)
        if node is None:
            raise KeyError(abbrev)
        return node.value

    def __contains__(self, abbrev: str) -> bool:
        return self.find(abbrev) is not None

    def values(self) -> dict[str, Any]:
        """``{abbreviation: value}`` for every node; a repeated field gives a list."""
        return flatten([self])

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of this subtree (bytes become hex strings)."""
        node: dict[str, Any] = {
            "abbrev": self.abbrev,
            "label": self.label,
            "value": json_value(self.value),
            "display": self.display,
            "offset": self.offset,
            "length": self.length,
        }
        if self.children:
            node["children"] = [child.to_json() for child in self.children]
        return node


def json_value(value: Any) -> Any:
    """``value`` in a form ``json.dumps`` accepts: bytes as lowercase hex."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, list):
        return [json_value(item) for item in value]
    return value


def flatten(roots: list[Field]) -> dict[str, Any]:
    """``{abbreviation: value}`` over several trees, like ``tshark -T json``.

    Protocol nodes (value None) are left out; a field that occurs more than once
    maps to the list of its values in tree order.
    """
    out: dict[str, Any] = {}
    repeated: set[str] = set()
    for root in roots:
        for node in root.walk():
            if node.value is None:
                continue
            key = node.abbrev
            if key not in out:
                out[key] = node.value
            elif key in repeated:
                out[key].append(node.value)
            else:
                out[key] = [out[key], node.value]
                repeated.add(key)
    return out


def render_text(roots: list[Field], indent: str = "    ") -> list[str]:
    """Lines in the style of ``tshark -V``: ``Label: display``, children indented."""
    lines: list[str] = []

    def emit(node: Field, depth: int) -> None:
        text = node.label if node.value is None and not node.display else f"{node.label}: {node.display}"
        lines.append(indent * depth + text)
        for child in node.children:
            emit(child, depth + 1)

    for root in roots:
        emit(root, 0)
    return lines
