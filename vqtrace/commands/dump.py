"""Analyse guest memory snapshots: QEMU dump-guest-memory cores, raw RAM, a running QEMU.

Subcommands:
  info     memory ranges, total size, ELF notes (CPU states)
  scan     find split and packed virtqueues anywhere in the snapshot, with a confidence and the evidence
  analyze  per queue: indices, in-flight requests, the last completed ones, anomalies (exit 1 if any)
  qemu-status  ask a running QEMU over QMP for its x-query-virtio answers (the --qemu-status file)
  save     write a snapshot (a running QEMU's RAM with --pid, or any snapshot) as an ELF core

A snapshot is an ELF core (dump-guest-memory, virsh dump --memory-only), a kdump file
(dump-guest-memory format kdump-zlib), raw RAM (--base ADDR), any of them gzip/zstd/xz/bzip2
compressed, or a running QEMU (--pid PID, read through /proc/PID/mem, with its QMP socket).

Examples:
  vqtrace dump info guest.elf.zst
  vqtrace dump analyze guest.elf --qemu-status guest.qemu-status.json
  vqtrace dump analyze ram.bin --base 0 --device blk --features 0x130000000 \\
      --queue index=0,size=256,desc=0x7e2c000,avail=0x7e2d000,used=0x7e2d240
  vqtrace dump scan guest.elf && vqtrace dump analyze guest.elf --scan --candidate 1
  vqtrace dump analyze --pid $(pidof qemu-system-x86_64) --qmp /tmp/qmp.sock
  vqtrace dump qemu-status --qmp /tmp/qmp.sock -o guest.qemu-status.json
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..output import parse_int


def _int_arg(what: str) -> Any:
    return lambda text: parse_int(text, what)


def _source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("snapshot", nargs="?", help="the snapshot file (ELF core, kdump, raw RAM; compressed or not)")
    parser.add_argument("--base", type=_int_arg("--base"), metavar="ADDR",
                        help="the file is raw RAM starting at guest-physical ADDR")
    parser.add_argument("--pid", type=_int_arg("--pid"), help="read the guest RAM of this running QEMU process")
    parser.add_argument("--qmp", metavar="SOCKET",
                        help="QEMU's QMP socket (--pid: where guest RAM is; also the live x-query-virtio source)")
    parser.add_argument("-T", dest="format", choices=("text", "json"), default="text", help="output format")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dump_command", metavar="SUBCOMMAND")
    info = sub.add_parser("info", help="memory ranges, size and ELF notes of a snapshot")
    _source_arguments(info)
    scan = sub.add_parser("scan", help="find virtqueues in a whole snapshot")
    _source_arguments(scan)
    scan.add_argument("--min-score", type=float, default=None, metavar="S",
                      help="report candidates scoring at least S (0..1, default 0.6)")
    scan.add_argument("-q", "--quiet", action="store_true", help="one line per candidate, no evidence")
    analyze = sub.add_parser("analyze", help="indices, in-flight requests, completions and anomalies per queue")
    _source_arguments(analyze)
    analyze.add_argument("--qemu-status", metavar="FILE",
                         help="QEMU's x-query-virtio answers (see 'vqtrace dump qemu-status')")
    analyze.add_argument("--queue", action="append", default=[], metavar="SPEC",
                         help="index=N,size=N,desc=ADDR,avail=ADDR,used=ADDR[,packed] (repeatable)")
    analyze.add_argument("--device", help="device type of --queue / --scan queues (blk, net, scsi, ...)")
    analyze.add_argument("--features", type=_int_arg("--features"), metavar="VALUE",
                         help="negotiated feature bits of --queue / --scan queues")
    analyze.add_argument("--scan", action="store_true", help="analyse the rings 'dump scan' finds")
    analyze.add_argument("--candidate", type=_int_arg("--candidate"), action="append", default=[], metavar="N",
                         help="with --scan: only candidate N (repeatable)")
    analyze.add_argument("--min-score", type=float, default=None, metavar="S", help="with --scan: see 'dump scan'")
    analyze.add_argument("--all-queues", action="store_true",
                         help="with QEMU's status: also the queues the driver never set up")
    analyze.add_argument("--completed", type=_int_arg("--completed"), default=8, metavar="N",
                         help="how many completed requests to show per queue (default 8)")
    analyze.add_argument("--max-chains", type=_int_arg("--max-chains"), default=12, metavar="N",
                         help="text output: in-flight chains listed per queue before a summary (0: all)")
    analyze.add_argument("-w", dest="write", metavar="FILE.pcapng", help="also write a trace for 'vqtrace show'")
    status = sub.add_parser("qemu-status", help="collect QEMU's x-query-virtio answers over QMP")
    status.add_argument("--qmp", required=True, metavar="SOCKET", help="QEMU's QMP socket (Unix path or HOST:PORT)")
    status.add_argument("-o", dest="output", metavar="FILE", help="write the bundle here (default: stdout)")
    status.add_argument("--stop", action="store_true", help="stop the VM first (QMP stop), for a consistent view")
    status.add_argument("--elements", action="store_true",
                        help="also x-query-virtio-queue-element for the in-flight slots of split queues")
    save = sub.add_parser("save", help="write a snapshot (e.g. a running QEMU's RAM) as an ELF core")
    _source_arguments(save)
    save.add_argument("-o", dest="output", required=True, metavar="FILE", help="the ELF core to write")
    parser.set_defaults(dump_parser=parser)


def run(args: argparse.Namespace) -> int:
    command = getattr(args, "dump_command", None)
    if command is None:
        args.dump_parser.print_help(sys.stderr)
        return 2
    from ..dump import cli  # numpy and the ring readers load only when a subcommand runs

    return cli.COMMANDS[command](args)
