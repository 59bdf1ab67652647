"""Events: one thing that happened, as every source reports it (DESIGN.md, "Event").

A vhost-user message, a kick, a call, a chain made available, a chain used, a
config access, an anomaly, or the bytes of a named layout. Sources (the vhost-user
proxy and back-end, dump analysis, replay) create them; trace files store them
(docs/trace-format.md); ``show``, filters, stats and the TUI read them. An event
carries its timestamp, the queue, the raw bytes and the dissection context (device
type, queue role, features) that turns those bytes into a field tree.

What ``data`` holds, by kind:

- VHOST_USER: the message, header and payload, as it crossed the socket.
- KICK, CALL: empty, or the 8 bytes read from the eventfd (its counter).
- AVAIL, USED: the chain's readable bytes (``chain`` holds the descriptors);
  USED also has ``written``, the bytes the device wrote (``used.len`` of them at most).
- CONFIG: the bytes read or written at ``offset`` of the device configuration space.
- ANOMALY: empty (``anomaly`` says what was wrong).
- DATA: the bytes of the layout named ``layer`` (with ``params``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .dissectors.record import ROLES
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
    DATA = 8  # the bytes of a named layout (an inflight region, a ring area, ...)


class Direction(enum.IntEnum):
    """Which way an event went. vhost-user: the front-end is the driver's side."""

    NONE = 0
    TO_DEVICE = 1  # driver -> device; front-end -> back-end
    TO_DRIVER = 2  # device -> driver; back-end -> front-end


QueueRole = enum.IntEnum("QueueRole", ROLES)
QueueRole.__doc__ = """What a queue carries (dissectors/record.py ROLES; stored in trace files)."""


@dataclass(slots=True)
class Event:
    """One event. ``source`` names the interface it came from (a socket, device or queue).

    The dissection context: ``device_type`` (virtio 1.4, 5 "Device Types"), ``role``
    (None: derived from the device type, the queue index and the features by
    :func:`vqtrace.trace.roles.queue_role`), ``features`` (the negotiated feature
    bits, up to 128), ``packed`` (VIRTIO_F_RING_PACKED), and ``params``: other layout
    parameters (``cdb_size``, ``sense_size`` of a SCSI host, ``xen_mmap`` for vhost-user,
    ``num_queues`` for net role numbering, or any parameter of a DATA event's layer).
    """

    kind: EventKind
    time_ns: int  # nanoseconds since the Unix epoch
    source: str
    queue: int | None = None
    direction: Direction = Direction.NONE
    data: bytes = b""  # the raw bytes (see the module docstring)
    device_type: int = 0  # virtio device ID (virtio 1.4, 5 "Device Types"); 0 when unknown
    channel: int = 0  # vhost-user: 0 the front-end channel, 1 the back-end channel
    fds: int = 0  # vhost-user: how many file descriptors travelled with the message
    chain: Chain | None = None  # AVAIL, USED: the chain concerned
    used: UsedElem | None = None  # USED: the used element
    anomaly: Anomaly | None = None  # ANOMALY: what was wrong
    written: bytes = b""  # USED: the bytes the device wrote into the chain's writable buffers
    role: int | None = None  # QueueRole; None: derived when the event is written
    features: int = 0  # negotiated feature bits (bits above 63 allowed)
    packed: bool = False  # the queue is a packed virtqueue
    offset: int = 0  # CONFIG: offset in the device configuration space
    layer: str = ""  # DATA: the layer name (``vqtrace decode --list``)
    params: dict[str, int] | None = None  # layout parameters (see above)
    truncated: bool = False  # the recorder kept fewer bytes than the buffers held
