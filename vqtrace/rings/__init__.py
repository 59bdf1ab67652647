"""Ring readers: split (virtio 1.4, 2.7) and packed (2.8) virtqueues read from GuestMemory.

The API other modules use (import from ``vqtrace.rings``):

- tracking a queue: :class:`RingTracker` (``RingTracker(config, memory)`` then ``poll()`` ->
  :class:`RingChanges` with ``avail`` chains, ``used`` :class:`Completion` s, ``anomalies``,
  ``avail_notification_due`` / ``used_notification_due``; ``in_flight``, ``state``);
  :func:`snapshot` for the in-flight set of a memory dump.
- walking one chain: :func:`walk_split_chain`, :func:`walk_packed_chain`.
- a chain's bytes: :func:`read_readable`, :func:`iter_readable`, :func:`readable_spans`,
  :func:`writable_spans`, :func:`read_written`, :func:`write_response`.
- the device side: :class:`DeviceQueue` (``pop``, ``push``, ``push_batch``, ``should_notify``,
  ``enable_notifications`` / ``disable_notifications``, ``vring_base``).
- notification rules: :func:`vring_need_event`, :func:`packed_need_event`.
- anomaly codes: :mod:`vqtrace.rings.anomalies` (``KINDS``, one constant per code).
- raw ring fields: :class:`SplitRing`, :class:`PackedRing`.

The guest driver side (laying rings out, adding buffers) is :mod:`vqtrace.driver`.
"""

from . import anomalies
from .anomalies import KINDS, AnomalyKind, anomaly
from .buffers import Span, iter_readable, read_readable, read_written, readable_spans, writable_spans, write_response
from .chain import DESC_STRUCT, PACKED_DESC_STRUCT, MemoryBounds, walk_packed_chain, walk_split_chain
from .device import DeviceQueue, decode_vring_base, encode_vring_base
from .notify import packed_need_event, split_avail_notification_due, split_used_notification_due, vring_need_event
from .packed import PackedRing
from .split import SplitRing, read_split_state
from .tracker import Completion, PackedTracker, RingChanges, RingSnapshot, RingTracker, SplitTracker, snapshot

__all__ = [
    "DESC_STRUCT",
    "KINDS",
    "PACKED_DESC_STRUCT",
    "AnomalyKind",
    "Completion",
    "DeviceQueue",
    "MemoryBounds",
    "PackedRing",
    "PackedTracker",
    "RingChanges",
    "RingSnapshot",
    "RingTracker",
    "Span",
    "SplitRing",
    "SplitTracker",
    "anomalies",
    "anomaly",
    "decode_vring_base",
    "encode_vring_base",
    "iter_readable",
    "packed_need_event",
    "read_readable",
    "read_split_state",
    "read_written",
    "readable_spans",
    "snapshot",
    "split_avail_notification_due",
    "split_used_notification_due",
    "vring_need_event",
    "walk_packed_chain",
    "walk_split_chain",
    "writable_spans",
    "write_response",
]
