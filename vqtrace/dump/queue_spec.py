"""``--queue index=0,size=256,desc=0x...,avail=0x...,used=0x...[,packed]``: a queue given by hand.

Keys: ``index`` (default: the order of ``--queue`` options), ``size``, ``desc``,
``avail`` (or ``driver``), ``used`` (or ``device``), and the flag ``packed``
(else the layout follows VIRTIO_F_RING_PACKED in ``--features``). A packed
queue's two event suppression areas may be left out: then they are not read.
Numbers are decimal or 0x-hex, as QEMU's ``info virtio-queue-status`` and the
kernel print them.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..model import VIRTIO_F_RING_PACKED, Layout, QueueConfig

KEYS = {"index", "size", "desc", "avail", "driver", "used", "device", "packed", "split"}


@dataclass(frozen=True)
class QueueSpec:
    """A parsed ``--queue`` value."""

    config: QueueConfig
    events_known: bool  # packed: whether the event suppression areas were given


def _number(key: str, text: str, spec: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise UsageError(f"--queue {spec!r}: {key}={text!r} is not a number") from None
    if value < 0:
        raise UsageError(f"--queue {spec!r}: {key} must not be negative")
    return value


def parse_queue_spec(spec: str, *, default_index: int = 0, features: int = 0, device_type: int = 0) -> QueueSpec:
    """The QueueConfig a ``--queue`` value describes; UsageError naming the problem."""
    values: dict[str, int] = {}
    flags: set[str] = set()
    for item in filter(None, (part.strip() for part in spec.split(","))):
        key, sep, text = item.partition("=")
        key = key.strip().lower()
        if key not in KEYS:
            raise UsageError(f"--queue {spec!r}: unknown key {key!r} (known: index, size, desc, avail, used, packed)")
        if not sep:
            if key not in ("packed", "split"):
                raise UsageError(f"--queue {spec!r}: {key} needs a value ({key}=...)")
            flags.add(key)
            continue
        key = {"driver": "avail", "device": "used"}.get(key, key)
        if key in values:
            raise UsageError(f"--queue {spec!r}: {key} given twice")
        values[key] = _number(key, text.strip(), spec)
    packed = "packed" in flags or ("split" not in flags and bool(features >> VIRTIO_F_RING_PACKED & 1))
    for key in ("size", "desc") if packed else ("size", "desc", "avail", "used"):
        if key not in values:
            raise UsageError(f"--queue {spec!r}: {key}= is missing")
    size = values["size"]
    if not 0 < size <= 0x8000 or (not packed and size & (size - 1)):
        kind = "packed queue size must be 1..32768" if packed else "split queue size must be a power of 2 up to 32768"
        raise UsageError(f"--queue {spec!r}: {kind} (got {size})")
    events_known = not packed or ("avail" in values and "used" in values)
    desc = values["desc"]
    driver = values.get("avail", desc)
    device = values.get("used", desc)
    if packed:
        features |= 1 << VIRTIO_F_RING_PACKED
    layout = Layout.PACKED if packed else Layout.SPLIT
    config = QueueConfig(values.get("index", default_index), size, desc, driver, device, layout, features,
                         device_type)
    return QueueSpec(config, events_known)
