"""The wheel lists every package of the source tree (DESIGN.md: one ``vqtrace`` namespace)."""

from __future__ import annotations

import tomllib

from conftest import ROOT


def test_every_source_package_is_listed_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    roots = {name: ROOT / folder for name, folder in config["package-dir"].items()}
    found = set()
    for name, folder in roots.items():
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            found.add(".".join((name, *parts)))
    # every package on disk is in the wheel, and every listed package exists
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert listed - found == set(), "listed in pyproject.toml but missing on disk"
