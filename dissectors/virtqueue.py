"""Virtqueue layouts: split rings (virtio 1.4, 2.7) and packed rings (2.8).

Split-ring areas whose length depends on the queue size take it from the
context parameter ``queue_size``; ``event_idx`` (VIRTIO_F_EVENT_IDX negotiated)
adds ``used_event``/``avail_event``. Without ``queue_size`` the ring runs to the
end of the bytes given.
"""

from __future__ import annotations

from typing import Any

from construct import Array, Enum, GreedyRange, If, IfThenElse, Struct

from .layers import Layer, register
from .tree import Field
from .types import Address, Bitmask, le16, le32

# 2.7.5 The Virtqueue Descriptor Table
VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4
# 2.8.1 Driver and Device Ring Wrap Counters: the packed AVAIL and USED flags
VIRTQ_DESC_F_AVAIL = 1 << 7
VIRTQ_DESC_F_USED = 1 << 15
# 2.7.6 The Virtqueue Available Ring / 2.7.8 The Virtqueue Used Ring
VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1
# 2.8.14 Event Suppression Structure Format
RING_EVENT_FLAGS_ENABLE = 0
RING_EVENT_FLAGS_DISABLE = 1
RING_EVENT_FLAGS_DESC = 2

SPLIT_DESC_SIZE = 16  # 2.7.5: sizeof(struct virtq_desc)
PACKED_DESC_SIZE = 16  # 2.8.13: sizeof(struct pvirtq_desc)
USED_ELEM_SIZE = 8  # 2.7.8: sizeof(struct virtq_used_elem)

SPLIT_DESC_FLAGS = {"NEXT": VIRTQ_DESC_F_NEXT, "WRITE": VIRTQ_DESC_F_WRITE, "INDIRECT": VIRTQ_DESC_F_INDIRECT}
PACKED_DESC_FLAGS = {**SPLIT_DESC_FLAGS, "AVAIL": VIRTQ_DESC_F_AVAIL, "USED": VIRTQ_DESC_F_USED}


def _has_queue_size(ctx: Any) -> bool:
    return ctx._params.get("queue_size") is not None


def _ring(entry: Any) -> Any:
    """``queue_size`` entries when known, else entries to the end of the data."""
    return IfThenElse(_has_queue_size, Array(lambda ctx: ctx._params["queue_size"], entry), GreedyRange(entry))


def _event_idx(ctx: Any) -> bool:
    return bool(ctx._params.get("event_idx")) and _has_queue_size(ctx)


# 2.7.5 struct virtq_desc
split_desc = Struct(
    "addr" / Address() * "Address",
    "len" / le32 * "Length",
    "flags" / Bitmask(le16, SPLIT_DESC_FLAGS) * "Flags",
    "next" / le16 * "Next",
)

# 2.7.5.3 Indirect Descriptors: a table of struct virtq_desc, len / 16 entries
indirect_table = Struct("desc" / GreedyRange(split_desc) * "Descriptor")

# 2.7.6 struct virtq_avail
split_avail = Struct(
    "flags" / Bitmask(le16, {"NO_INTERRUPT": VIRTQ_AVAIL_F_NO_INTERRUPT}) * "Flags",
    "idx" / le16 * "Index",
    "ring" / _ring(le16) * "Ring",
    "used_event" / If(_event_idx, le16) * "Used event",
)

# 2.7.8 struct virtq_used_elem and struct virtq_used
used_elem = Struct(
    "id" / le32 * "Id",
    "len" / le32 * "Length",
)
split_used = Struct(
    "flags" / Bitmask(le16, {"NO_NOTIFY": VIRTQ_USED_F_NO_NOTIFY}) * "Flags",
    "idx" / le16 * "Index",
    "ring" / _ring(used_elem) * "Ring",
    "avail_event" / If(_event_idx, le16) * "Avail event",
)

# 2.8.13 struct pvirtq_desc
packed_desc = Struct(
    "addr" / Address() * "Address",
    "len" / le32 * "Length",
    "id" / le16 * "Buffer id",
    "flags" / Bitmask(le16, PACKED_DESC_FLAGS) * "Flags",
)

# 2.8.14 struct pvirtq_event_suppress
packed_event = Struct(
    "desc" / Bitmask(le16, {"off": 0x7FFF, "wrap": 0x8000}) * "Event offset and wrap",
    "flags" / Enum(le16, ENABLE=RING_EVENT_FLAGS_ENABLE, DISABLE=RING_EVENT_FLAGS_DISABLE,
                   DESC=RING_EVENT_FLAGS_DESC) * "Event flags",
)


def _desc_summary(tree: Field) -> str:
    flags = tree.find(f"{tree.abbrev}.flags")
    names = [c.label for c in flags.children if c.value is True] if flags else []
    text = f"addr=0x{tree[tree.abbrev + '.addr']:x} len={tree[tree.abbrev + '.len']}"
    if names:
        text += " " + "|".join(names)
    return text


register(Layer("virtqueue.desc", split_desc, "Split virtqueue descriptor", "virtio 1.4, 2.7.5",
               summary=_desc_summary))
register(Layer("virtqueue.indirect", indirect_table, "Indirect descriptor table", "virtio 1.4, 2.7.5.3"))
register(Layer("virtqueue.avail", split_avail, "Split virtqueue available ring", "virtio 1.4, 2.7.6"))
register(Layer("virtqueue.used", split_used, "Split virtqueue used ring", "virtio 1.4, 2.7.8"))
register(Layer("virtqueue.used_elem", used_elem, "Used ring element", "virtio 1.4, 2.7.8"))
register(Layer("virtqueue.packed_desc", packed_desc, "Packed virtqueue descriptor", "virtio 1.4, 2.8.13",
               summary=_desc_summary))
register(Layer("virtqueue.packed_event", packed_event, "Packed virtqueue event suppression",
               "virtio 1.4, 2.8.14"))


def split_ring_sizes(queue_size: int) -> dict[str, int]:
    """Byte sizes of the three split-ring areas (2.7, table "Virtqueue Part Sizes")."""
    return {
        "desc": SPLIT_DESC_SIZE * queue_size,
        "avail": 6 + 2 * queue_size,
        "used": 6 + USED_ELEM_SIZE * queue_size,
    }
