"""Trace a live vhost-user device: proxy a front-end to a back-end, or serve a reference device.

Proxy (a front-end such as QEMU connects to PATH; vqtrace connects to the real back-end):
  vqtrace live --socket /tmp/vq.sock --backend /tmp/qsd.sock --device-type blk -w trace.pcapng
Back-end (vqtrace serves a reference device to the front-end):
  vqtrace live --socket /tmp/vq.sock --device blk --image disk.img -w trace.pcapng

vqtrace creates PATH; the file appears once it accepts connections, so QEMU
(-chardev socket,id=c,path=PATH) may start as soon as it exists. It serves one
front-end at a time, and the next one after it disconnects (a QEMU started with
reconnect=1 comes back), until SIGINT or SIGTERM; with --once it ends when the first
front-end disconnects. Either way the trace is closed cleanly. Without -w each event
is printed as one line. Exit status: 0, or 2 with one line on stderr for bad usage
or (with --once) a session that ended on a protocol error.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..output import parse_int

if TYPE_CHECKING:
    import logging

DEVICE_TYPES = {"net": 1, "blk": 2, "console": 3, "rng": 4, "balloon": 5, "scsi": 8, "vsock": 19}
DEVICES = ("blk", "net", "console", "rng", "balloon", "scsi", "vsock")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", required=True, metavar="PATH", help="the vhost-user socket vqtrace listens on")
    role = parser.add_mutually_exclusive_group(required=True)
    role.add_argument("--backend", metavar="PATH", help="proxy to the back-end listening on PATH")
    role.add_argument("--device", choices=DEVICES, help="serve this reference device")
    parser.add_argument("--image", metavar="FILE", help="blk, scsi: the disk image")
    parser.add_argument("--size", metavar="BYTES", help="blk, scsi without --image: a memory disk of this size "
                                                        "(suffixes K, M, G)")
    parser.add_argument("--readonly", action="store_true", help="blk, scsi: refuse writes (VIRTIO_BLK_F_RO)")
    parser.add_argument("--device-type", choices=tuple(DEVICE_TYPES), help="proxy: what device is proxied, so "
                        "its requests are decoded (vhost-user does not say)")
    parser.add_argument("-w", dest="write", metavar="FILE", help="write the trace (pcapng) to FILE, '-' for stdout")
    parser.add_argument("--poll", type=float, metavar="MS", help="proxy: sample the rings every MS milliseconds "
                        "instead of watching kicks and calls (busy-polling back-ends)")
    parser.add_argument("--once", action="store_true", help="end when the first front-end disconnects")
    parser.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                        help="proxy: how long to retry connecting to the back-end (default 10 s)")
    parser.add_argument("--snaplen", type=int, default=1 << 16, metavar="BYTES",
                        help="bytes of each buffer kept per event (default 65536)")
    parser.add_argument("--name", metavar="NAME", help="the trace's interface name (default: the socket path)")
    parser.add_argument("--tui", action="store_true", help="watch in the terminal UI")
    parser.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")


def _size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    scale = units.get(text[-1:].lower(), 1)
    return parse_int(text[:-1] if scale > 1 else text, "--size") * scale


def make_device(args: argparse.Namespace) -> Any:
    """The reference device ``--device`` names, with its options."""
    name = args.device
    if name in ("blk", "scsi"):
        if args.image is None and args.size is None:
            raise UsageError(f"--device {name} needs --image FILE or --size BYTES")
        size = _size(args.size) if args.size else None
        if name == "blk":
            from ..devices.blk import BlkDevice

            return BlkDevice(args.image, size=size, readonly=args.readonly)
        from ..devices.scsi import ScsiDevice

        return ScsiDevice(args.image, size=size, readonly=args.readonly)
    if args.image or args.size:
        raise UsageError(f"--image and --size are for blk and scsi, not {name}")
    if name == "net":
        from ..devices.net import NetDevice

        return NetDevice()
    if name == "console":
        from ..devices.console import ConsoleDevice

        return ConsoleDevice()
    if name == "rng":
        from ..devices.rng import RngDevice

        return RngDevice()
    if name == "balloon":
        from ..devices.balloon import BalloonDevice

        return BalloonDevice()
    from ..devices.vsock import VsockDevice

    return VsockDevice()


def setup_logging(quiet: bool) -> logging.Logger:
    import logging  # here, not at the top: `vqtrace --help` imports this module

    class _OneLine(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return f"vqtrace live: {record.getMessage()}"

    logger = logging.getLogger("vqtrace.vhost")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    if not any(getattr(h, "_vqtrace", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_OneLine())
        handler._vqtrace = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
    return logger


def run(args: argparse.Namespace) -> int:
    from ..vhost.live import Live, LiveOptions
    from ..vhost.printer import EventPrinter

    if args.backend is not None and (args.image or args.size or args.readonly):
        raise UsageError("--image, --size and --readonly are for --device (the proxy forwards to --backend)")
    if args.device is not None and (args.device_type or args.poll):
        raise UsageError("--device-type and --poll are for the proxy (--backend)")
    if args.tui:
        raise UsageError("--tui is not available for live capture yet; write a trace with -w and open it with "
                         "'vqtrace tui FILE'")
    if args.poll is not None and args.poll <= 0:
        raise UsageError("--poll wants a positive number of milliseconds")
    logger = setup_logging(args.quiet)
    device = make_device(args) if args.device else None
    device_type = DEVICE_TYPES[args.device_type] if args.device_type else 0
    options = LiveOptions(socket=args.socket, backend=args.backend, device=device, poll_ms=args.poll,
                          once=args.once, connect_timeout=args.connect_timeout, device_type=device_type,
                          snaplen=args.snaplen, name=args.name)
    writer = None
    with contextlib.ExitStack() as stack:
        if args.write:
            from ..trace.writer import TraceWriter

            target = sys.stdout.buffer if args.write == "-" else args.write
            writer = stack.enter_context(TraceWriter(target, snaplen=args.snaplen))
            writer.describe(args.name or args.socket,
                            f"vhost-user {'proxy' if args.backend else args.device} at {args.socket}")
            sink, sink_many = writer.write, writer.write_many
        else:
            sink, sink_many = EventPrinter(sys.stdout).write, None
        live = Live(options, sink, logger=logger, sink_many=sink_many)
        stack.callback(live.close)
        if device is not None and getattr(device, "backend", None) is not None:
            stack.callback(device.backend.close)
        live.start()

        def stop(signum: int, _frame: object) -> None:
            live.stop(f"{signal.Signals(signum).name} received")

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            ended = live.serve()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if writer is not None:
            logger.info(f"wrote {writer.count} events to {args.write}")
    if args.once and ended is not None and ended.error:
        return 2
    return 0
