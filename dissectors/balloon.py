"""Traditional memory balloon layouts (virtio 1.4, 5.5).

- ``virtio_balloon.pfns``: an inflateq / deflateq buffer, an array of le32 page
  frame numbers (guest-physical address / 4096) up to the end of the buffer (5.5.6).
- ``virtio_balloon.stats``: a statsq buffer, an array of 10-byte
  ``struct virtio_balloon_stat`` entries (5.5.6.3, tags in 5.5.6.4).
- ``virtio_balloon.free_page_hint``: the 4-byte command ID output buffer of the
  free_page_vq (5.5.6.5).
- ``virtio_balloon.config``: ``struct virtio_balloon_config`` (5.5.4); the last two
  fields exist only with some features, so the layout takes what the data holds.
"""

from __future__ import annotations

from construct import Enum, GreedyRange, Hex, If, Struct

from .layers import Layer, register
from .tree import Field
from .types import enum_name, le16, le32, le64, more_data

VIRTIO_BALLOON_PFN_SHIFT = 12  # 5.5.6: addresses are divided by 4096, whatever the guest page size
PFN_SIZE = 4
STAT_SIZE = 10  # 5.5.6.3: struct virtio_balloon_stat is packed: le16 tag, le64 val

# 5.5.6.4 Memory Statistics Tags
STAT_TAGS = {
    "VIRTIO_BALLOON_S_SWAP_IN": 0,
    "VIRTIO_BALLOON_S_SWAP_OUT": 1,
    "VIRTIO_BALLOON_S_MAJFLT": 2,
    "VIRTIO_BALLOON_S_MINFLT": 3,
    "VIRTIO_BALLOON_S_MEMFREE": 4,
    "VIRTIO_BALLOON_S_MEMTOT": 5,
    "VIRTIO_BALLOON_S_AVAIL": 6,
    "VIRTIO_BALLOON_S_CACHES": 7,
    "VIRTIO_BALLOON_S_HTLB_PGALLOC": 8,
    "VIRTIO_BALLOON_S_HTLB_PGFAIL": 9,
}

# 5.5.6.5 Free Page Hinting: reserved command IDs (2 and above are real IDs)
CMD_IDS = {"VIRTIO_BALLOON_CMD_ID_STOP": 0, "VIRTIO_BALLOON_CMD_ID_DONE": 1}

# 5.5.6 the inflateq / deflateq buffer: le32 PFNs
virtio_balloon_pfns = Struct("pfn" / GreedyRange(Hex(le32)) * "Page frame number")


def _pfns_summary(tree: Field) -> str:
    pfns = [f.value for f in tree.find_all(tree.abbrev + ".pfn") if f.value is not None]
    if not pfns:
        return "balloon 0 pfns"
    return f"balloon {len(pfns)} pfns 0x{min(pfns):x}..0x{max(pfns):x}"


# 5.5.6.3 struct virtio_balloon_stat, repeated to the end of the buffer
virtio_balloon_stats = Struct(
    "stat" / GreedyRange(Struct(
        "tag" / Enum(le16, **STAT_TAGS) * "Tag",
        "val" / le64 * "Value",
    )) * "Statistic",
)


def _stats_summary(tree: Field) -> str:
    tags = tree.find_all(tree.abbrev + ".stat.tag")
    values = tree.find_all(tree.abbrev + ".stat.val")
    shown = [f"{enum_name(t, 'VIRTIO_BALLOON_S_')}={v.value}" for t, v in zip(tags, values, strict=False)]
    return " ".join(["balloon stats", *shown[:4]]) + (" …" if len(shown) > 4 else "")


# 5.5.6.5 the free_page_vq output buffer: a command ID
virtio_balloon_free_page_hint = Struct("cmd_id" / Enum(le32, **CMD_IDS) * "Command ID")

# 5.5.4 struct virtio_balloon_config
virtio_balloon_config = Struct(
    "num_pages" / le32 * "Number of pages",
    "actual" / If(more_data("actual"), le32) * "Actual",
    "free_page_hint_cmd_id" / If(more_data("free_page_hint_cmd_id"), le32) * "Free page hint command ID",
    "poison_val" / If(more_data("poison_val"), Hex(le32)) * "Poison value",
)
BALLOON_CONFIG_SIZE = 16  # 5.5.4: every field present


def _config_summary(tree: Field) -> str:
    values = tree.values()
    return (f"balloon config num_pages={values[tree.abbrev + '.num_pages']} "
            f"actual={values.get(tree.abbrev + '.actual', '?')}")


register(Layer("virtio_balloon.pfns", virtio_balloon_pfns, "Virtio balloon page frame numbers",
               "virtio 1.4, 5.5.6", summary=_pfns_summary))
register(Layer("virtio_balloon.stats", virtio_balloon_stats, "Virtio balloon memory statistics",
               "virtio 1.4, 5.5.6.3", summary=_stats_summary))
register(Layer("virtio_balloon.free_page_hint", virtio_balloon_free_page_hint, "Virtio balloon free page hint",
               "virtio 1.4, 5.5.6.5",
               summary=lambda t: "balloon free page hint cmd_id="
                                 + enum_name(t.find(t.abbrev + ".cmd_id"), "VIRTIO_BALLOON_CMD_ID_")))
register(Layer("virtio_balloon.config", virtio_balloon_config, "Virtio balloon device configuration",
               "virtio 1.4, 5.5.4", summary=_config_summary))
