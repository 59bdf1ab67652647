"""Print the events of a trace file, as tshark prints packets.

One line per event: number, time (seconds since the first event), source, queue,
protocol, info. -V adds the field tree, -x a hex dump of the record; -T json /
jsonl print {"frame", "time", "kind", "fields"} objects (fields as tshark -T json
names them); -Y keeps the events a display filter matches (Wireshark's syntax;
the same filter works in Wireshark with the vqtrace plugin).

Examples:
  vqtrace show trace.pcapng
  vqtrace show trace.pcapng -Y 'virtio_blk.type == 1 && virtio_blk.sector >= 2048' -V
  vqtrace show trace.pcapng -Y 'vhost_user.request == "VHOST_USER_SET_VRING_ADDR"' -T json
  vqtrace show trace.pcapng -c 10 -x
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import IO, Any

from ..errors import TraceFileError, UsageError
from ..output import hexdump, parse_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a vqtrace trace (pcapng)")
    parser.add_argument("-Y", dest="filter", metavar="FILTER", default="", help="display filter (Wireshark syntax)")
    parser.add_argument("-V", dest="verbose", action="store_true", help="print the field tree of each event")
    parser.add_argument("-x", dest="hex", action="store_true", help="print a hex dump of each record")
    parser.add_argument("-c", dest="count", type=lambda v: parse_int(v, "-c"), metavar="N",
                        help="stop after N events (those the filter keeps)")
    parser.add_argument("-T", dest="format", choices=("text", "json", "jsonl"), default="text",
                        help="output format (default text)")


def run(args: argparse.Namespace) -> int:
    if args.count is not None and args.count < 0:
        raise UsageError(f"-c {args.count}: a count cannot be negative")
    flt = None
    if args.filter:  # the filter compiler loads only for -Y
        from ..filter import compile_filter
        from ..trace.display import catalog

        flt = compile_filter(args.filter, catalog())
    return show(args.file, flt=flt, verbose=args.verbose, hexdump_=args.hex, count=args.count, fmt=args.format)


def show(path: str, *, flt: Any = None, verbose: bool = False, hexdump_: bool = False, count: int | None = None,
         fmt: str = "text", out: IO[str] | None = None) -> int:
    """Print the frames of ``path``; raise TraceFileError (one line) for the first problem found."""
    from ..trace.dissect import KIND_NAMES, Dissector, RecordError
    from ..trace.reader import TraceReader

    out = out or sys.stdout
    write = out.write
    problems: list[tuple[int, str]] = []
    printed = 0
    need_fields = flt is not None or fmt != "text"
    if need_fields:  # the filter machinery loads only for -Y and JSON
        from ..trace.display import FrameFields
    first_ns: int | None = None
    dissector = Dissector()
    with TraceReader(path) as reader:
        if fmt == "json":
            write("[")
        for frame in reader:
            if count is not None and printed >= count:
                break
            if first_ns is None:
                first_ns = frame.time_ns
            rel = (frame.time_ns - first_ns) / 1e9
            data = frame.data
            vqtrace_record = frame.interface.linktype == 147
            pairs: list = []
            if need_fields and vqtrace_record:
                try:
                    pairs = dissector.pairs(data, frame.source)
                except RecordError as err:
                    pairs = err.pairs
                    problems.append((frame.offset, f"frame {frame.number}: {err}"))
            elif vqtrace_record and data and data[0] != 1:
                problems.append((frame.offset, f"frame {frame.number}: unknown record version {data[0]}"))
            fields = None
            if need_fields:
                fields = FrameFields(frame.number, frame.source, frame.time_ns, rel, len(data), pairs)
            if flt is not None and not flt.matches(fields.for_filter()):
                continue
            printed += 1
            if vqtrace_record:
                protocol, info = dissector.summary(data, frame.source)
                kind = KIND_NAMES.get(data[1], str(data[1])) if len(data) > 1 else "?"
            else:
                protocol, info = "?", f"not a vqtrace record (link type {frame.interface.linktype})"
                kind = "?"
            if fmt == "text":
                queue = _queue(data) if vqtrace_record else None
                column = f"q{queue}" if queue is not None else "-"
                write(f"{frame.number:>6} {rel:>12.9f} {frame.source:<16} {column:>4} {protocol:<14} {info}\n")
                if verbose and vqtrace_record:
                    from ..dissectors.tree import render_text

                    for line in render_text(dissector.trees(data, frame.source)):
                        write(f"    {line}\n")
                if hexdump_:
                    for line in hexdump(data):
                        write(f"    {line}\n")
                if verbose or hexdump_:
                    write("\n")
                continue
            obj = {"frame": frame.number, "time": round(rel, 9), "time_epoch": f"{frame.time_ns // 1_000_000_000}."
                   f"{frame.time_ns % 1_000_000_000:09d}", "source": frame.source, "kind": kind, "protocol": protocol,
                   "info": info, "fields": fields.for_json()}
            text = json.dumps(obj, separators=(",", ":") if fmt == "jsonl" else (", ", ": "), default=_json_default)
            if fmt == "jsonl":
                write(text + "\n")
            else:
                write(("\n  " if printed == 1 else ",\n  ") + text)
        if fmt == "json":
            write("\n]\n" if printed else "]\n")
        problems = [(p.offset, p.message) for p in reader.problems] + problems
    out.flush()
    if problems:
        offset, message = problems[0]
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise TraceFileError(message + more, path=path, offset=offset)
    return 0


def _queue(data: bytes) -> int | None:
    if len(data) >= 8 and data[3] & 1:
        return int.from_bytes(data[6:8], "little")
    return None


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
