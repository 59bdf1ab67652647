"""Events: one thing that happened, as every source reports it (DESIGN.md, "Event").

A vhost-user message, a kick, a call, a chain made available, a chain used, a
config access, an anomaly. Sources (the vhost-user proxy and back-end, dump
analysis, replay) create them; trace files store them; ``show``, filters, stats
and the TUI read them. An event carries its timestamp, the queue, the raw bytes
and (through the dissectors) a field tree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .model import Anomaly, Chain, UsedElem


class EventKind(enum.IntEnum):
    """What an event records. The numbers are stored in trace files: never renumber."""

    VHOST_USER = 1  # a vhost-user message as it crossed the socket (header and payload)
    KICK = 2  # the driver notified the device (kick eventfd, or VHOST_USER_VRING_KICK in band)
    CALL = 3  # the device notified the driver (call eventfd, or VHOST_USER_BACKEND_VRING_CALL)
    AVAIL = 4  # a chain made available by the driver
    USED = 5  # a chain used by the device
    CONFIG = 6  # a device configuration space access
    ANOMALY = 7  # something the specification forbids


class Direction(enum.IntEnum):
    """Which way an event went. vhost-user: the front-end is the driver's side."""

    NONE = 0
    TO_DEVICE = 1  # driver -> device; front-end -> back-end
    TO_DRIVER = 2  # device -> driver; back-end -> front-end


@dataclass(slots=True)
class Event:
    """One event. ``source`` names the interface it came from (a socket, device or queue)."""

    kind: EventKind
    time_ns: int  # nanoseconds since the Unix epoch
    source: str
    queue: int | None = None
    direction: Direction = Direction.NONE
    data: bytes = b""  # the raw bytes: the vhost-user message, the chain's buffer bytes, ...
    device_type: int = 0  # virtio device ID (virtio 1.4, 5 "Device Types"); 0 when unknown
    channel: int = 0  # vhost-user: 0 the front-end channel, 1 the back-end channel
    fds: int = 0  # vhost-user: how many file descriptors travelled with the message
    chain: Chain | None = None  # AVAIL, USED: the chain concerned
    used: UsedElem | None = None  # USED: the used element
    anomaly: Anomaly | None = None  # ANOMALY: what was wrong
