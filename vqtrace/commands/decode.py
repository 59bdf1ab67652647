"""Dissect bytes as one layer and print the field tree (like tshark -V).

Examples:
  vqtrace decode virtqueue.desc 0010000000000000 00100000 0100 0100
  vqtrace decode virtio_blk.req @request.bin -T json
  vqtrace decode virtqueue.avail --queue-size 4 --event-idx 0000030000000100020000000000
  vqtrace decode --list
"""

from __future__ import annotations

import argparse
import sys

from ..errors import UsageError
from ..output import dump_json, hexdump, parse_int, read_bytes_arg


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("layer", nargs="?", help="layer name (see --list)")
    parser.add_argument("data", nargs="*", help="hex bytes (spaces allowed), or @FILE for a binary file, @- for stdin")
    parser.add_argument("--list", action="store_true", help="list the layers and exit")
    parser.add_argument("-T", dest="format", choices=("text", "json"), default="text", help="output format")
    parser.add_argument("-x", dest="hex", action="store_true", help="also print a hex dump")
    parser.add_argument("--queue-size", type=lambda v: parse_int(v, "--queue-size"),
                        help="queue size, for split-ring areas")
    parser.add_argument("--event-idx", action="store_true", help="VIRTIO_F_EVENT_IDX was negotiated")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a layout parameter (integer), for layers that take one")
    parser.set_defaults(positional_list="data")


def run(args: argparse.Namespace) -> int:
    from ..dissectors import all_layers, get_layer  # construct loads only when a command dissects
    from ..dissectors.tree import json_value, render_text

    if args.list:
        for layer in all_layers():
            print(f"{layer.name:<28} {layer.title}  [{layer.section}]")
        return 0
    if not args.layer:
        raise UsageError("a LAYER is required (see 'vqtrace decode --list')")
    if not args.data:
        raise UsageError("no bytes given: pass hex digits or @FILE")
    layer = get_layer(args.layer)
    data = read_bytes_arg("".join(args.data)) if not args.data[0].startswith("@") else read_bytes_arg(args.data[0])
    params: dict[str, int | bool] = {}
    if args.queue_size is not None:
        params["queue_size"] = args.queue_size
    if args.event_idx:
        params["event_idx"] = True
    for item in args.param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"--param wants NAME=VALUE, got {item!r}")
        params[name] = parse_int(value, f"--param {name}")
    tree = layer.dissect(data, params=params)
    if args.format == "json":
        fields = {k: json_value(v) for k, v in tree.values().items()}
        print(dump_json({"layer": layer.name, "fields": fields, "tree": [tree.to_json()]}))
    else:
        sys.stdout.write("\n".join(render_text([tree])) + "\n")
        if args.hex:
            sys.stdout.write("\n" + "\n".join(hexdump(data)) + "\n")
    return 0
