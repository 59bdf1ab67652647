#!/usr/bin/env python3
"""Descriptors dissected per second: the construct paths and the struct/numpy fast path.

For split (``virtqueue.desc``, virtio 1.4, 2.7.5) and packed (``virtqueue.packed_desc``,
2.8.13) descriptors, over a table of random descriptors:

- ``construct_tree``: ``Layer.dissect`` per descriptor (a full field tree: what ``show``,
  the TUI and the Wireshark-style views use);
- ``construct_parse``: the plain (interpreted) construct ``Struct.parse`` per descriptor;
- ``construct_compiled``: ``Layer.parse`` per descriptor (construct's compiled parser,
  values only);
- ``struct``: ``dissectors.fastpath.unpack`` over the whole table (``struct.iter_unpack``);
- ``struct_one``: ``fastpath.unpack_one`` per descriptor (one call each, as a chain walk does);
- ``numpy``: ``fastpath.as_array`` over the table, then ``.tolist()`` (Python values out);
- ``numpy_vector``: ``fastpath.as_array`` and two vectorised passes (sum of ``len``, count of
  NEXT flags), no Python value per descriptor.

Each figure is the best of three runs. Also the speed-ups of the fast path over the
tree and over the compiled parser. Prints one JSON line per figure:
``{"figure": ..., "value": ..., "unit": ...}``; ``--quick`` runs a fraction of the work.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vqtrace.dissectors import fastpath, get_layer


def _best_rate(work: Callable[[], int], repeats: int = 3) -> float:
    """Items per second of ``work`` (which returns how many items it did), best of ``repeats``."""
    best = 0.0
    for _ in range(repeats):
        began = time.perf_counter()
        done = work()
        elapsed = time.perf_counter() - began
        best = max(best, done / elapsed)
    return best


def bench(layer_name: str, layout: fastpath.FastLayout, count: int, table_count: int) -> dict[str, float]:
    rng = random.Random(2)
    layer = get_layer(layer_name)
    size = layout.size
    table = rng.randbytes(size * table_count)
    chunks = [table[k * size:(k + 1) * size] for k in range(count)]
    layer.parse(chunks[0])  # compile once, outside the timing

    def tree() -> int:
        for chunk in chunks:
            layer.dissect(chunk)
        return len(chunks)

    def parse() -> int:
        for chunk in chunks:
            layer.struct.parse(chunk)
        return len(chunks)

    def compiled() -> int:
        for chunk in chunks:
            layer.parse(chunk)
        return len(chunks)

    def struct_table() -> int:
        return len(fastpath.unpack(layout, table))

    def struct_one() -> int:
        for offset in range(0, len(table), size):
            fastpath.unpack_one(layout, table, offset)
        return table_count

    def numpy_table() -> int:
        return len(fastpath.as_array(layout, table).tolist())

    def numpy_vector() -> int:
        array = fastpath.as_array(layout, table)
        int(array["len"].sum())  # a vectorised pass: total bytes, and the chained descriptors
        int((array["flags"] & 1).sum())
        return len(array)

    return {
        "construct_tree": _best_rate(tree),
        "construct_parse": _best_rate(parse),
        "construct_compiled": _best_rate(compiled),
        "struct": _best_rate(struct_table),
        "struct_one": _best_rate(struct_one),
        "numpy": _best_rate(numpy_table),
        "numpy_vector": _best_rate(numpy_vector),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: a fraction of the work")
    args = parser.parse_args(argv)
    count, table_count = (200, 4096) if args.quick else (5000, 65536)
    for short, layer_name, layout in (("desc", "virtqueue.desc", fastpath.SPLIT_DESC),
                                      ("packed_desc", "virtqueue.packed_desc", fastpath.PACKED_DESC)):
        rates = bench(layer_name, layout, count, table_count)
        for method, rate in rates.items():
            print(json.dumps({"figure": f"dissect.{short}.{method}", "value": round(rate), "unit": "desc/s"}))
        for base in ("construct_tree", "construct_compiled"):
            print(json.dumps({"figure": f"dissect.{short}.struct_vs_{base.removeprefix('construct_')}",
                              "value": round(rates["struct"] / rates[base], 1), "unit": "x"}))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
