"""Run the built-in demo: a front-end, the vqtrace proxy and a reference blk back-end, then show the trace.

Everything runs in this process over real vhost-user sockets, fds and shared memory:
a Python front-end (what QEMU does) writes and reads a disk through `vqtrace live`'s
proxy to vqtrace's own virtio-blk back-end. The trace is written to
./vqtrace-demo.pcapng (or -w FILE) and printed as `vqtrace show` prints it.

Examples:
  vqtrace demo
  vqtrace demo --packed -w /tmp/demo.pcapng
  vqtrace show vqtrace-demo.pcapng -Y 'virtio_blk.type == 1' -V
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-w", dest="write", metavar="FILE", help="where to write the trace (default "
                        "./vqtrace-demo.pcapng)")
    parser.add_argument("--packed", action="store_true", help="use a packed virtqueue (virtio 1.4, 2.8)")
    parser.add_argument("-q", "--quiet", action="store_true", help="do not print the trace")
    parser.add_argument("--tui", action="store_true", help="open the trace in the terminal UI")


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..vhost.demo import run_demo

    trace = Path(args.write) if args.write else Path.cwd() / "vqtrace-demo.pcapng"
    if not trace.parent.is_dir():
        raise UsageError(f"cannot write {trace}: {trace.parent} is not a directory")
    result = run_demo(trace, packed=args.packed)
    out = sys.stdout
    out.write(f"vqtrace demo: front-end -> vqtrace proxy -> reference virtio-blk back-end "
              f"({'packed' if args.packed else 'split'} virtqueue), over vhost-user sockets\n")
    for check in result.checks:
        out.write(f"  ok  {check}\n")
    out.write(f"vqtrace demo: {result.requests} requests, {result.events} events written to {result.trace}\n\n")
    out.flush()
    if args.tui:
        import importlib.util

        if importlib.util.find_spec("vqtrace.commands.tui") is None:
            raise UsageError("the terminal UI is not available in this build; try 'vqtrace show' on the trace")
        from ..cli import main

        return main(["tui", str(result.trace)])
    if not args.quiet:
        try:
            from ..commands.show import show
        except ImportError:
            show = None
        if show is not None:
            show(str(result.trace))
        else:
            from ..trace.reader import TraceReader
            from ..vhost.printer import EventPrinter

            printer = EventPrinter(out)
            with TraceReader(result.trace) as reader:
                for event in reader.events():
                    printer.write(event)
        out.write(f"\nnext: vqtrace show {result.trace} -Y 'virtio_blk.type == 1' -V   (the writes, field by field)\n")
    return 0
