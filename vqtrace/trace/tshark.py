"""Running tshark with the vqtrace plugin, and reading its JSON as vqtrace's fields.

For the tests that hold vqtrace and Wireshark equal and for the benchmark: tshark's
``-T json --no-duplicate-keys`` output flattened to ``{abbreviation: [value text]}``
per frame (protocol and subtree items with the value None), and
:func:`normalize` to compare one of those texts with a vqtrace value.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ..dissectors.wireshark.generate import PLUGIN
from ..errors import UsageError


def tshark_path() -> str:
    path = shutil.which("tshark")
    if path is None:
        raise UsageError("tshark is not installed (Debian: apt-get install tshark)")
    return path


def tshark_command(trace: str | os.PathLike, *args: str, plugin: str | os.PathLike | None = None) -> list[str]:
    """tshark reading ``trace`` with the plugin loaded explicitly (``-X lua_script:``)."""
    lua = Path(plugin) if plugin is not None else PLUGIN
    return [tshark_path(), "-n", "-X", f"lua_script:{lua}", "-r", os.fspath(trace), *args]


def run_json(trace: str | os.PathLike, display_filter: str | None = None, *, plugin: str | os.PathLike | None = None,
             timeout: float = 120, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """tshark's JSON of every frame (or the frames ``display_filter`` keeps)."""
    args = ["-T", "json", "--no-duplicate-keys"]
    if display_filter:
        args += ["-Y", display_filter]
    proc = subprocess.run(tshark_command(trace, *args, plugin=plugin), capture_output=True, timeout=timeout,
                          env=env)
    if proc.returncode != 0:
        raise UsageError(f"tshark failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-500:]}")
    return json.loads(proc.stdout or b"[]")


def frame_numbers(trace: str | os.PathLike, display_filter: str, *, plugin: str | os.PathLike | None = None,
                  timeout: float = 120) -> list[int]:
    """The numbers of the frames ``display_filter`` keeps (tshark -Y)."""
    proc = subprocess.run(tshark_command(trace, "-Y", display_filter, "-T", "fields", "-e", "frame.number",
                                         plugin=plugin), capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise UsageError(f"tshark -Y {display_filter!r} failed: {proc.stderr.decode(errors='replace')[-300:]}")
    return [int(line) for line in proc.stdout.split()]


def layers(frame: dict[str, Any]) -> dict[str, Any]:
    return frame["_source"]["layers"]


def flatten(tree: dict[str, Any]) -> dict[str, list[Any]]:
    """``{abbreviation: [value text or None]}`` over a frame's layers, in document order.

    A key whose value is an object is an item with children (a protocol, a subtree, a
    text item): recorded with None, then walked; ``X_tree`` objects hold the children of
    field X; arrays are repeated keys (``--no-duplicate-keys``).
    """
    out: dict[str, list[Any]] = {}

    def visit(key: str, value: Any) -> None:
        if isinstance(value, list):
            for item in value:
                visit(key, item)
            return
        if key.endswith("_tree") and isinstance(value, dict):
            walk(value)
            return
        if isinstance(value, dict):
            out.setdefault(key, []).append(None)
            walk(value)
            return
        out.setdefault(key, []).append(value)

    def walk(node: dict[str, Any]) -> None:
        for key, value in node.items():
            visit(key, value)

    walk(tree)
    return out


def normalize(text: Any, like: Any) -> Any:
    """tshark's text for a field, as a value of ``like``'s type (so it compares with vqtrace's value)."""
    if like is None:
        return None if text in (None, "") else text
    if isinstance(like, bool):
        return text in ("1", "True", "true")
    if isinstance(like, int):
        try:
            return int(text, 0)
        except (TypeError, ValueError):
            return text
    if isinstance(like, bytes | bytearray):
        if text is None:
            return None
        try:
            return bytes.fromhex(text.replace(":", ""))
        except ValueError:
            return text
    return text
