"""vqtrace wireshark install: the plugin in the personal plugin folder, which tshark then loads by itself."""

from __future__ import annotations

import os
import subprocess

from conftest import require_tool, run_vqtrace
from vqtrace.dissectors.wireshark.generate import PLUGIN
from vqtrace.trace.samples import write_samples


def test_install_then_tshark_dissects_without_x(tmp_path):
    tshark = require_tool("tshark")
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    extcap_dir = tmp_path / "extcap"  # never the system's extcap folder (tests run as root)
    proc = run_vqtrace("wireshark", "install", "--extcap-dir", str(extcap_dir), env=env)
    target = home / ".local/lib/wireshark/plugins/vqtrace.lua"
    assert proc.returncode == 0 and str(target) in proc.stdout.decode()
    assert target.read_bytes() == PLUGIN.read_bytes()
    program = extcap_dir / "vqtrace-extcap"
    assert f"installed the extcap program: {program}" in proc.stdout.decode()
    assert os.access(program, os.X_OK)
    listed = subprocess.run([str(program), "--extcap-interfaces"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "interface {value=vqtrace}" in listed.stdout
    trace = tmp_path / "t.pcapng"
    write_samples(trace, ["blk"])
    out = subprocess.run([tshark, "-r", str(trace), "-Y", "virtio_blk.sector == 8", "-T", "fields", "-e",
                          "virtio_blk.type"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["1", "1", "0", "0"]  # OUT, then IN (avail, used)
    proc = run_vqtrace("wireshark", "uninstall", "--extcap-dir", str(extcap_dir), env=env)
    assert proc.returncode == 0 and not target.exists() and not program.exists()
    again = run_vqtrace("wireshark", "uninstall", "--extcap-dir", str(extcap_dir), env=env).stdout
    assert b"the Lua plugin was not installed" in again and b"the extcap program was not installed" in again


def test_install_into_a_chosen_folder_and_bad_folders(tmp_path):
    extcap = ["--extcap-dir", str(tmp_path / "extcap")]
    proc = run_vqtrace("wireshark", "install", "--plugin-dir", str(tmp_path / "plugins"), *extcap)
    assert proc.returncode == 0 and (tmp_path / "plugins/vqtrace.lua").is_file()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_vqtrace("wireshark", "install", "--plugin-dir", str(blocker / "sub"), *extcap)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.count("\n") == 1 and "cannot install the plugin" in err
    proc = run_vqtrace("wireshark", "install", "--plugin-dir", str(tmp_path / "plugins"),
                       "--extcap-dir", str(blocker / "sub"))
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.count("\n") == 1 and "cannot install the extcap program" in err
    proc = run_vqtrace("wireshark", "path")
    assert proc.returncode == 0 and proc.stdout.decode().strip().endswith("vqtrace.lua")
