"""The Wireshark extcap entry: its four steps, a capture into a fifo, and tshark capturing live."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from conftest import require_tool
from vqtrace.events import EventKind
from vqtrace.trace.reader import TraceReader
from vqtrace.vhost import extcap
from vqtrace.vhost.frontend import BlkClient
from vqtrace.vhost.harness import make_image

EXTCAP = [sys.executable, "-c", "import sys; from vqtrace.vhost.extcap import main; sys.exit(main())"]


@pytest.fixture
def config(tmp_path, monkeypatch):
    path = tmp_path / "extcap.json"
    image = make_image(tmp_path / "disk.img", 1 << 20)
    path.write_text(json.dumps({"interfaces": [
        {"name": "disk", "socket": str(tmp_path / "vq.sock"), "device": "blk", "image": str(image)},
        {"name": "proxy", "socket": str(tmp_path / "p.sock"), "backend": "/run/qsd.sock", "device_type": "blk"}]}))
    monkeypatch.setenv("VQTRACE_EXTCAP_CONFIG", str(path))
    return path


def run_extcap(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*EXTCAP, *args], capture_output=True, text=True, timeout=30, env=env)


def test_interfaces_dlts_and_config(config):
    out = run_extcap("--extcap-interfaces", "--extcap-version=4.0").stdout
    assert out.startswith("extcap {version=")
    assert "interface {value=vqtrace}" in out and "interface {value=vqtrace-disk}" in out
    assert "vqtrace-proxy}{display=vqtrace: " in out and "proxy to /run/qsd.sock" in out
    dlts = run_extcap("--extcap-dlts", "--extcap-interface", "vqtrace-disk").stdout
    assert dlts == "dlt {number=147}{name=USER0}{display=vqtrace events}\n"
    options = run_extcap("--extcap-config", "--extcap-interface", "vqtrace-proxy").stdout
    assert "{call=--socket}" in options and f"{{default={config.parent / 'p.sock'}}}" in options
    assert "value {arg=4}{value=blk}{display=blk}{default=true}" in options  # the configured device type
    bad = run_extcap("--extcap-dlts", "--extcap-interface", "nope")
    assert bad.returncode == 2 and "unknown extcap interface 'nope'" in bad.stderr


def test_capture_streams_pcapng_into_the_fifo(tmp_path, config):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    out = tmp_path / "captured.pcapng"
    proc = subprocess.Popen([*EXTCAP, "--capture", "--extcap-interface", "vqtrace-disk", "--fifo", str(fifo)],
                            stderr=subprocess.PIPE, start_new_session=True)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.append(fifo.read_bytes()), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "vq.sock").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
            time.sleep(0.02)
        client = BlkClient.connect(tmp_path / "vq.sock")
        assert client.write(3, b"c" * 512).status == 0
        client.close()
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)  # Wireshark's Stop button
        assert proc.wait(20) == 0, proc.stderr.read().decode()
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    out.write_bytes(chunks[0])
    with TraceReader(out) as trace:
        events = list(trace.events())
    assert events[0].kind is EventKind.VHOST_USER and events[0].source == "vqtrace-disk"
    assert any(e.kind is EventKind.USED and e.data[8:16] == (3).to_bytes(8, "little") for e in events)


def test_capture_needs_a_socket(tmp_path):
    fifo = tmp_path / "fifo"
    result = run_extcap("--capture", "--extcap-interface", "vqtrace", "--fifo", str(fifo))
    assert result.returncode == 2 and "needs --socket" in result.stderr


def test_install_and_uninstall_into_a_chosen_folder(tmp_path):
    import argparse

    args = argparse.Namespace(extcap_dir=str(tmp_path / "extcap"))
    (target,) = extcap.install_extcap(args)
    assert target.name == "vqtrace-extcap" and os.access(target, os.X_OK)
    listed = subprocess.run([str(target), "--extcap-interfaces"], capture_output=True, text=True, timeout=30)
    assert "interface {value=vqtrace}" in listed.stdout
    assert extcap.uninstall_extcap(args) == [target] and not target.exists()
    assert extcap.uninstall_extcap(args) == []


def test_tshark_captures_live_through_vqtrace(tmp_path, config):
    """tshark -i vqtrace-disk: Wireshark's own extcap machinery runs vqtrace (needs the global
    extcap folder: Wireshark 4.0 ignores WIRESHARK_EXTCAP_DIR when run as root)."""
    require_tool("tshark")
    target_dir = extcap.extcap_dir()
    if not os.access(target_dir, os.W_OK):
        pytest.skip(f"{target_dir} is not writable")
    preexisting = (target_dir / extcap.PROGRAM).exists()
    extcap.install_extcap()
    out = tmp_path / "live.pcapng"
    try:
        tshark = subprocess.Popen(["tshark", "-i", "vqtrace-disk", "-a", "duration:6", "-w", str(out)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            deadline = time.monotonic() + 20
            while not (tmp_path / "vq.sock").exists():
                assert tshark.poll() is None and time.monotonic() < deadline, tshark.stderr.read().decode()
                time.sleep(0.05)
            client = BlkClient.connect(tmp_path / "vq.sock")
            client.write(9, b"t" * 512)
            client.close()
            tshark.wait(30)
        finally:
            if tshark.poll() is None:
                tshark.kill()
                tshark.wait(5)
    finally:
        if not preexisting:
            extcap.uninstall_extcap()
    with TraceReader(out) as trace:
        kinds = [e.kind for e in trace.events()]
    assert EventKind.VHOST_USER in kinds and EventKind.USED in kinds
