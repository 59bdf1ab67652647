"""Wireshark extcap entry: live capture through vqtrace in Wireshark, tshark and termshark.

Wireshark runs an extcap program in four steps (Wireshark's "extcap" interface,
doc/extcap.4): ``--extcap-interfaces`` (list the interfaces), ``--extcap-dlts
--extcap-interface IF`` (their link type: vqtrace's LINKTYPE_USER0, 147),
``--extcap-config --extcap-interface IF`` (the options shown in the capture dialog),
then ``--capture --extcap-interface IF --fifo PATH [options]``: capture until SIGTERM
(Wireshark's Stop button) or until the reader closes the fifo, streaming vqtrace's
pcapng to it block by block.

Interfaces: ``vqtrace`` (everything set in the capture options: ``--socket`` and
``--backend`` for a proxy, or ``--device`` and ``--image`` for a back-end), plus one
``vqtrace-NAME`` per entry of the configuration file
(``$XDG_CONFIG_HOME/vqtrace/extcap.json``, or ``$VQTRACE_EXTCAP_CONFIG``)::

    {"interfaces": [{"name": "vm1-disk", "socket": "/run/vm1/vqtrace.sock",
                     "backend": "/run/vm1/qsd.sock", "device_type": "blk"}]}

:func:`install_extcap` / :func:`uninstall_extcap` put the ``vqtrace-extcap`` program in
Wireshark's extcap folder (``vqtrace wireshark install`` calls them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from .. import __version__
from ..dissectors.record import LINKTYPE_VQTRACE
from ..errors import UsageError, VqtraceError

PROGRAM = "vqtrace-extcap"
GENERIC = "vqtrace"
DEVICE_TYPES = {"net": 1, "blk": 2, "console": 3, "rng": 4, "balloon": 5, "scsi": 8, "vsock": 19}
DEVICES = ("blk", "net", "console", "rng", "balloon", "scsi", "vsock")

# (call, display, type, tooltip) of the options the capture dialog shows (--extcap-config)
OPTIONS = (
    ("--socket", "vhost-user socket", "string", "The socket vqtrace listens on; the front-end (QEMU) connects here"),
    ("--backend", "Back-end socket (proxy)", "string", "The real back-end's socket: vqtrace proxies to it"),
    ("--device", "Reference device (back-end)", "selector", "Serve a vqtrace reference device instead of proxying"),
    ("--image", "Disk image (blk, scsi)", "fileselect", "The image the reference blk or scsi device serves"),
    ("--device-type", "Proxied device type", "selector", "What the proxied device is, so its requests are decoded"),
    ("--poll", "Poll interval (ms)", "unsigned", "Sample the rings every N ms instead of watching notifications"),
)


# ---------------------------------------------------------------------------------------------
# Configuration


def config_path() -> Path:
    explicit = os.environ.get("VQTRACE_EXTCAP_CONFIG")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "vqtrace" / "extcap.json"


def configured_interfaces() -> dict[str, dict[str, Any]]:
    """``vqtrace-NAME`` -> its settings, from the configuration file (empty when there is none)."""
    path = config_path()
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise UsageError(f"{path}: not a vqtrace extcap configuration: {err}") from None
    entries = doc.get("interfaces", []) if isinstance(doc, dict) else []
    out = {}
    for entry in entries:
        if not isinstance(entry, dict) or not entry.get("name") or not entry.get("socket"):
            raise UsageError(f"{path}: each interface needs a name and a socket")
        out[f"{GENERIC}-{entry['name']}"] = entry
    return out


# ---------------------------------------------------------------------------------------------
# The extcap steps


def interfaces_text() -> str:
    lines = [f"extcap {{version={__version__}}}{{help=https://github.com/vqtrace/vqtrace}}",
             f"interface {{value={GENERIC}}}{{display=vqtrace: vhost-user live capture (set the socket in the "
             f"options)}}"]
    for name, entry in configured_interfaces().items():
        role = f"proxy to {entry['backend']}" if entry.get("backend") else f"{entry.get('device', 'blk')} back-end"
        lines.append(f"interface {{value={name}}}{{display=vqtrace: {entry['socket']} ({role})}}")
    return "\n".join(lines) + "\n"


def dlts_text(interface: str) -> str:
    _check_interface(interface)
    return f"dlt {{number={LINKTYPE_VQTRACE}}}{{name=USER0}}{{display=vqtrace events}}\n"


def config_text(interface: str) -> str:
    preset = _check_interface(interface)
    lines = []
    for number, (call, display, kind, tooltip) in enumerate(OPTIONS):
        key = call.removeprefix("--").replace("-", "_")
        default = preset.get(key)
        text = f"arg {{number={number}}}{{call={call}}}{{display={display}}}{{type={kind}}}{{tooltip={tooltip}}}"
        if number == 0 and not preset:
            text += "{required=true}"
        if default is not None:
            text += f"{{default={default}}}"
        lines.append(text)
        if call in ("--device", "--device-type"):
            empty = "none (proxy)" if call == "--device" else "unknown"
            lines.append(f"value {{arg={number}}}{{value=none}}{{display={empty}}}"
                         f"{{default={'true' if default is None else 'false'}}}")
            for name in DEVICES:
                lines.append(f"value {{arg={number}}}{{value={name}}}{{display={name}}}"
                             f"{{default={'true' if name == default else 'false'}}}")
    return "\n".join(lines) + "\n"


def _check_interface(interface: str | None) -> dict[str, Any]:
    if interface == GENERIC:
        return {}
    configured = configured_interfaces()
    if interface not in configured:
        raise UsageError(f"unknown extcap interface {interface!r} (known: {', '.join([GENERIC, *configured])})")
    return configured[interface]


def capture(args: argparse.Namespace) -> int:
    """Run ``vqtrace live`` for the interface, writing pcapng into the fifo until stopped."""
    from ..commands.live import make_device, setup_logging
    from ..trace.writer import TraceWriter
    from .live import Live, LiveOptions

    preset = _check_interface(args.extcap_interface)
    settings = {key: preset.get(key) for key in ("socket", "backend", "device", "image", "device_type", "poll")}
    for key in settings:
        value = getattr(args, key)
        if value not in (None, ""):
            settings[key] = None if value == "none" else value
    if not settings["socket"]:
        raise UsageError("the vqtrace extcap interface needs --socket (the vhost-user socket to listen on)")
    if bool(settings["backend"]) == bool(settings["device"]):
        raise UsageError("set either --backend (proxy) or --device (reference back-end)")
    if not args.fifo:
        raise UsageError("--capture needs --fifo")
    logger = setup_logging(quiet=True)
    device = None
    if settings["device"]:
        device = make_device(argparse.Namespace(device=settings["device"], image=settings["image"] or None,
                                                size=None if settings["image"] else "64M", readonly=False))
    device_type = DEVICE_TYPES.get(settings["device_type"] or "", 0)
    poll = float(settings["poll"]) if settings["poll"] not in (None, "", 0, "0") else None
    options = LiveOptions(socket=str(settings["socket"]), backend=settings["backend"] or None, device=device,
                          poll_ms=poll, device_type=device_type, name=args.extcap_interface)
    with open(args.fifo, "wb", buffering=0) as fifo:
        writer = TraceWriter(fifo)
        live = Live(options, writer.write, logger=logger, sink_many=_guarded(writer, lambda: live.stop("fifo closed")))
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, _frame: live.stop(f"{signal.Signals(signum).name} received"))
        try:
            live.start()
            live.serve()
        finally:
            live.close()
            writer.close()
            if device is not None and getattr(device, "backend", None) is not None:
                device.backend.close()
    return 0


def _guarded(writer: Any, stop: Any) -> Any:
    """write_many that stops the capture when the fifo's reader went away (EPIPE)."""
    def write_many(events: list) -> None:
        try:
            writer.write_many(events)
        except VqtraceError:
            stop()
    return write_many


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROGRAM, description=__doc__.splitlines()[0])
    parser.add_argument("--extcap-interfaces", action="store_true")
    parser.add_argument("--extcap-dlts", action="store_true")
    parser.add_argument("--extcap-config", action="store_true")
    parser.add_argument("--extcap-interface")
    parser.add_argument("--extcap-version")
    parser.add_argument("--extcap-capture-filter")
    parser.add_argument("--extcap-reload-option")
    parser.add_argument("--capture", action="store_true")
    parser.add_argument("--fifo")
    for call, _, _, _ in OPTIONS:
        parser.add_argument(call)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``vqtrace-extcap`` program."""
    args, _ = build_parser().parse_known_args(argv)
    try:
        if args.extcap_interfaces:
            sys.stdout.write(interfaces_text())
        elif args.extcap_dlts:
            sys.stdout.write(dlts_text(args.extcap_interface))
        elif args.extcap_config:
            sys.stdout.write(config_text(args.extcap_interface))
        elif args.capture:
            return capture(args)
        else:
            sys.stderr.write(f"{PROGRAM}: run by Wireshark (--extcap-interfaces, --capture ...)\n")
            return 2
    except VqtraceError as err:
        sys.stderr.write(f"{PROGRAM}: error: {err}\n")
        return 2
    return 0


# ---------------------------------------------------------------------------------------------
# Installing


def _wireshark_folders() -> dict[str, str]:
    """``tshark -G folders`` as {name: path} (empty without tshark)."""
    tshark = shutil.which("tshark")
    if tshark is None:
        return {}
    try:
        out = subprocess.run([tshark, "-G", "folders"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    folders = {}
    for line in out.splitlines():
        name, sep, path = line.partition(":")
        if sep:
            folders[name.strip()] = path.strip()
    return folders


def extcap_dir(args: argparse.Namespace | None = None) -> Path:
    """Where the extcap program goes: ``--extcap-dir``; Wireshark's personal extcap folder (4.2 and
    later); its extcap folder when writable (root, Wireshark 4.0); else ~/.local/lib/wireshark/extcap
    (with Wireshark 4.0, set WIRESHARK_EXTCAP_DIR to it)."""
    chosen = getattr(args, "extcap_dir", None) if args is not None else None
    if chosen:
        return Path(chosen)
    folders = _wireshark_folders()
    personal = folders.get("Personal Extcap path")
    if personal:
        return Path(personal)
    system = folders.get("Extcap path")
    if system and os.access(system, os.W_OK):
        return Path(system)
    home = os.environ.get("HOME") or str(Path.home())
    return Path(home) / ".local" / "lib" / "wireshark" / "extcap"


def install_extcap(args: argparse.Namespace | None = None) -> list[Path]:
    """Write the ``vqtrace-extcap`` program (this Python, this vqtrace) into the extcap folder."""
    target_dir = extcap_dir(args)
    target = target_dir / PROGRAM
    script = (f"#!{sys.executable}\n# vqtrace {__version__}: Wireshark extcap entry (vqtrace wireshark install)\n"
              "import sys\nfrom vqtrace.vhost.extcap import main\nsys.exit(main())\n")
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
        temp = target.with_suffix(".tmp")
        temp.write_text(script)
        temp.chmod(0o755)
        os.replace(temp, target)
    except OSError as err:
        raise UsageError(f"cannot install the extcap program into {target_dir}: {err.strerror}") from None
    return [target]


def uninstall_extcap(args: argparse.Namespace | None = None) -> list[Path]:
    target = extcap_dir(args) / PROGRAM
    try:
        target.unlink()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise UsageError(f"cannot remove {target}: {err.strerror}") from None
    return [target]
