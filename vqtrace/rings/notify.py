"""Notification suppression: whether a driver or device notification is due.

Split rings (virtio 1.4, 2.7.7 used buffer notifications, 2.7.10 available buffer
notifications): without VIRTIO_F_EVENT_IDX a ``flags`` bit (NO_INTERRUPT /
NO_NOTIFY) advises against notifying; with it, the other side's event index says
after which ring entry it wants one, tested with ``vring_need_event``
(``virtio-queue.h``, "virtq_need_event").

Packed rings (2.8.10, 2.8.14): the other side's event suppression structure holds
ENABLE, DISABLE or DESC; DESC (only with EVENT_IDX) names a descriptor ring
offset and wrap counter.
"""

from __future__ import annotations

from ..dissectors.virtqueue import (
    RING_EVENT_FLAGS_DESC,
    RING_EVENT_FLAGS_DISABLE,
    RING_EVENT_FLAGS_ENABLE,
    VIRTQ_AVAIL_F_NO_INTERRUPT,
    VIRTQ_USED_F_NO_NOTIFY,
)

__all__ = [
    "RING_EVENT_FLAGS_DESC",
    "RING_EVENT_FLAGS_DISABLE",
    "RING_EVENT_FLAGS_ENABLE",
    "packed_event_off_wrap",
    "packed_need_event",
    "split_avail_notification_due",
    "split_used_notification_due",
    "vring_need_event",
]


def vring_need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """Whether moving an index from ``old_idx`` to ``new_idx`` passed ``event_idx`` (all mod 2^16).

    True when ``event_idx`` is one of ``old_idx .. new_idx - 1``: the other side asked
    for a notification once the entry at ``event_idx`` was written (2.7.7.2, 2.7.10.1).
    """
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


def split_used_notification_due(*, event_idx: bool, avail_flags: int, used_event: int | None,
                                old_used: int, new_used: int) -> bool:
    """Device side, split ring: must the device notify the driver after used ``idx`` went old -> new? (2.7.7.2)."""
    if old_used == new_used:
        return False
    if event_idx:
        return vring_need_event(used_event or 0, new_used, old_used)
    return not avail_flags & VIRTQ_AVAIL_F_NO_INTERRUPT


def split_avail_notification_due(*, event_idx: bool, used_flags: int, avail_event: int | None,
                                 old_avail: int, new_avail: int) -> bool:
    """Driver side, split ring: must the driver notify the device after avail ``idx`` went old -> new? (2.7.10.1)."""
    if old_avail == new_avail:
        return False
    if event_idx:
        return vring_need_event(avail_event or 0, new_avail, old_avail)
    return not used_flags & VIRTQ_USED_F_NO_NOTIFY


def packed_event_off_wrap(desc: int) -> tuple[int, bool]:
    """Split a ``pvirtq_event_suppress.desc`` into its offset and wrap counter (2.8.14)."""
    return desc & 0x7FFF, bool(desc >> 15 & 1)


def packed_need_event(*, event_idx: bool, flags: int, desc: int, size: int, old: int, new: int,
                      wrap: bool) -> bool:
    """Packed ring: is a notification due after the ring position moved from ``old`` to ``new`` slots?

    ``flags``/``desc`` are the other side's event suppression structure (2.8.14);
    ``new`` is the slot after the last one written and ``wrap`` the writer's wrap counter
    at ``new``; ``old`` is ``new`` minus the slots written since the last check (may be
    negative when they crossed the ring end). DESC without EVENT_IDX, and the reserved
    value 3, count as ENABLE (2.8.10: DESC "only valid if VIRTIO_F_EVENT_IDX has been negotiated").
    """
    if old == new:
        return False
    flags &= 3
    if flags == RING_EVENT_FLAGS_DISABLE:
        return False
    if flags != RING_EVENT_FLAGS_DESC or not event_idx:
        return True
    off, event_wrap = packed_event_off_wrap(desc)
    if event_wrap != wrap:
        off -= size  # the event names a slot of the previous lap
    return vring_need_event(off & 0xFFFF, new & 0xFFFF, old & 0xFFFF)
