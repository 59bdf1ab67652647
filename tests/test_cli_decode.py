"""`vqtrace decode` as a user runs it: output, JSON shape, and one-line errors with exit 2."""

from __future__ import annotations

import json

from conftest import run_vqtrace

DESC = "0010000000000000 00100000 0100 0100"


def test_decode_text_tree():
    result = run_vqtrace("decode", "virtqueue.desc", *DESC.split())
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "Address: 0x0000000000001000" in out
    assert "Length: 4096" in out
    assert "Flags: 0x0001 (NEXT)" in out


def test_decode_json_shape():
    result = run_vqtrace("decode", "virtqueue.avail", "--queue-size", "2", "-T", "json", "0000 0200 0000 0100")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["layer"] == "virtqueue.avail"
    assert doc["fields"]["virtqueue.avail.idx"] == 2
    assert doc["fields"]["virtqueue.avail.ring"] == [0, 1]
    assert doc["tree"][0]["abbrev"] == "virtqueue.avail"


def test_decode_from_file(tmp_path):
    path = tmp_path / "desc.bin"
    path.write_bytes(bytes.fromhex(DESC.replace(" ", "")))
    result = run_vqtrace("decode", "virtqueue.desc", f"@{path}")
    assert result.returncode == 0
    assert b"Next: 1" in result.stdout


def test_decode_list_names_required_layers():
    result = run_vqtrace("decode", "--list")
    names = {line.split()[0] for line in result.stdout.decode().splitlines()}
    assert {"virtqueue.desc", "virtqueue.packed_desc", "virtqueue.avail", "virtqueue.used"} <= names


def _one_line_error(result):
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr.decode()
    return lines[0]


def test_truncated_bytes_error():
    line = _one_line_error(run_vqtrace("decode", "virtqueue.desc", "00112233"))
    assert "virtqueue.desc at offset 0" in line and "needs 8 bytes" in line


def test_bad_hex_error():
    line = _one_line_error(run_vqtrace("decode", "virtqueue.desc", "00zz"))
    assert "not hex" in line


def test_unknown_layer_error():
    line = _one_line_error(run_vqtrace("decode", "nonsense.layer", "00"))
    assert "unknown layer" in line and "vqtrace decode --list" in line
    line = _one_line_error(run_vqtrace("decode", "virtio_blk.reqq", "00"))
    assert "did you mean virtio_blk.req" in line


def test_missing_file_error(tmp_path):
    line = _one_line_error(run_vqtrace("decode", "virtqueue.desc", f"@{tmp_path}/nope.bin"))
    assert "cannot read" in line


def test_unknown_option_error():
    line = _one_line_error(run_vqtrace("decode", "virtqueue.desc", "--bogus", "00"))
    assert "unrecognized arguments" in line


def test_version_and_help():
    assert run_vqtrace("--version").stdout.decode().startswith("vqtrace ")
    result = run_vqtrace("--help")
    assert result.returncode == 0 and b"decode" in result.stdout
    assert run_vqtrace("decode", "--help").returncode == 0
