"""Entropy device layout (virtio 1.4, 5.4).

The requestq carries no structures: the device fills device-writable buffers with
random bytes and reports how many in the used length (5.4.6). ``virtio_rng.data``
shows those bytes and their count, so every device type has a layer.
"""

from __future__ import annotations

from construct import Computed, GreedyBytes, Struct

from .layers import Layer, register
from .tree import Field

# 5.4.6 the random bytes the device wrote
virtio_rng_data = Struct(
    "data" / GreedyBytes * "Random data",
    "len" / Computed(lambda c: len(c.data)) * "Length",
)


def _summary(tree: Field) -> str:
    return f"rng {tree[tree.abbrev + '.len']} random bytes"


register(Layer("virtio_rng.data", virtio_rng_data, "Virtio entropy data", "virtio 1.4, 5.4.6", summary=_summary))
