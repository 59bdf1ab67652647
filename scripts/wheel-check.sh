#!/usr/bin/env bash
# Build the wheel and install it into a clean venv: the package must work
# without the source tree (namespaced packages, package data, console script).
set -euo pipefail
python=${1:-python3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$python" -m build --wheel --outdir "$out/dist" . >/dev/null
"$python" -m venv "$out/venv"
"$out/venv/bin/pip" install -q "$out"/dist/*.whl
cd "$out"
"$out/venv/bin/vqtrace" --version
"$out/venv/bin/python" - <<'PY'
import importlib.metadata as md, sys
files = [str(f) for f in md.files("vqtrace")]
tops = {f.split("/")[0] for f in files if not f.split("/")[0].endswith((".dist-info", ".data")) and not f.startswith("..")}
assert tops == {"vqtrace"}, f"unexpected top-level names in the wheel: {sorted(tops)}"
import vqtrace.dissectors, vqtrace.tui
assert "site-packages" in vqtrace.dissectors.__file__, vqtrace.dissectors.__file__
print("wheel ok:", len(files), "files, top-level", sorted(tops))
PY
