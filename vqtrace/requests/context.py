"""Which queue is which: device types, the feature bits that shape queues, queue roles.

Every device type numbers its virtqueues in its "Virtqueues" section of virtio 1.4
chapter 5 (5.1.2 net, 5.2.2 blk, 5.3.2 console, 5.4.2 rng, 5.5.2 balloon, 5.6.2 scsi,
5.10.2 vsock). A :class:`QueueContext` holds what that numbering depends on (the
device type, the negotiated features and a few configuration fields);
:func:`queue_role` gives the :class:`Role` of one queue index.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

# virtio 1.4, 5 "Device Types": device IDs
DEVICE_IDS = {
    "net": 1,
    "blk": 2,
    "console": 3,
    "rng": 4,
    "balloon": 5,
    "scsi": 8,
    "9p": 9,
    "gpu": 16,
    "input": 18,
    "vsock": 19,
    "crypto": 20,
    "iommu": 23,
    "mem": 24,
    "sound": 25,
    "fs": 26,
    "pmem": 27,
    "i2c": 34,
    "scmi": 32,
    "gpio": 41,
}
DEVICE_NAMES = {number: name for name, number in DEVICE_IDS.items()}
#: Device types whose requests this package decodes (the others show their bytes raw).
DECODED_DEVICES = frozenset({"net", "blk", "console", "rng", "balloon", "scsi", "vsock"})

# Feature bits that decide which queues exist or how their buffers look.
VIRTIO_F_ANY_LAYOUT = 27  # 6 "Reserved Feature Bits" (legacy framing, 2.7.4.3)
VIRTIO_F_VERSION_1 = 32  # 6: without it the device uses the legacy interface
VIRTIO_NET_F_MRG_RXBUF = 15  # 5.1.3
VIRTIO_NET_F_CTRL_VQ = 17
VIRTIO_NET_F_MQ = 22
VIRTIO_NET_F_RSS = 60
VIRTIO_BLK_F_MQ = 12  # 5.2.3
VIRTIO_CONSOLE_F_MULTIPORT = 1  # 5.3.3
VIRTIO_BALLOON_F_STATS_VQ = 1  # 5.5.3
VIRTIO_BALLOON_F_FREE_PAGE_HINT = 3
VIRTIO_BALLOON_F_PAGE_REPORTING = 5
VIRTIO_SCSI_F_T10_PI = 3  # 5.6.3

SCSI_CDB_DEFAULT_SIZE = 32  # 5.6.4: cdb_size after reset
SCSI_SENSE_DEFAULT_SIZE = 96  # 5.6.4: sense_size after reset


def device_name(device_type: int | str) -> str:
    """``"blk"`` for 2 or "blk"; ``"virtio-99"`` for an unknown number."""
    if isinstance(device_type, str):
        return device_type
    return DEVICE_NAMES.get(device_type, f"virtio-{device_type}")


@dataclass(frozen=True)
class QueueContext:
    """What decoding one queue's chains depends on.

    ``device_type`` is the virtio device ID (5 "Device Types") or its short name
    (``"blk"``); ``queue`` the queue index; ``features`` the negotiated feature bits
    (None when unknown: a VERSION_1 device with no device features is assumed).
    The configuration fields matter only for some devices and may stay None when
    unknown: ``max_virtqueue_pairs`` (net, with MQ or RSS), ``num_queues`` (blk with
    MQ; scsi), ``max_nr_ports`` (console with MULTIPORT), ``cdb_size`` and
    ``sense_size`` (scsi, defaults of 5.6.4).

    ``fixed_balloon_indices``: by default balloon queues are numbered in order among
    the queues that exist (an absent statsq or free_page_vq shifts the later ones
    down), as Linux and QEMU number them; True keeps the fixed numbers of the list
    in 5.5.2 (reporting_vq always 4).
    """

    device_type: int | str
    queue: int = 0
    features: int | None = None
    max_virtqueue_pairs: int | None = None
    num_queues: int | None = None
    max_nr_ports: int | None = None
    cdb_size: int = SCSI_CDB_DEFAULT_SIZE
    sense_size: int = SCSI_SENSE_DEFAULT_SIZE
    fixed_balloon_indices: bool = False
    device: str = field(init=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", device_name(self.device_type))
        if isinstance(self.device_type, str) and self.device_type in DEVICE_IDS:
            object.__setattr__(self, "device_type", DEVICE_IDS[self.device_type])

    def has(self, bit: int) -> bool:
        """Whether feature ``bit`` was negotiated (False when features are unknown)."""
        return self.features is not None and bool(self.features >> bit & 1)

    @property
    def legacy(self) -> bool:
        """The legacy interface: features known and VIRTIO_F_VERSION_1 not among them."""
        return self.features is not None and not self.has(VIRTIO_F_VERSION_1)

    def with_queue(self, queue: int) -> QueueContext:
        """The same device, another queue."""
        return replace(self, queue=queue)


@dataclass(frozen=True)
class Role:
    """What one queue is for.

    ``kind`` is the spec's queue name without its number (``receiveq``,
    ``transmitq``, ``controlq``, ``requestq``, ``control receiveq``, ``inflateq``,
    ``rx``, ``event``, ...; ``"unknown"`` when the index names no queue of the
    device); ``name`` is the spec's full name (``receiveq2``, ``receiveq(port1)``);
    ``number`` the pair / queue number as the spec counts it (1-based), or the port
    for the console. ``exists`` is False for an index the features leave without a
    queue; ``guessed`` is True when the configuration needed to be sure is unknown
    (net with MQ and no ``max_virtqueue_pairs``: an even index may be the controlq).
    """

    kind: str
    name: str
    number: int | None = None
    exists: bool = True
    guessed: bool = False
    section: str = ""


@functools.lru_cache(maxsize=4096)
def queue_role(ctx: QueueContext) -> Role:
    """The role of queue ``ctx.queue`` of ``ctx``'s device (virtio 1.4, 5.x.2 "Virtqueues")."""
    q = ctx.queue
    if q < 0:
        return Role("unknown", f"queue{q}", exists=False)
    handler = _ROLES.get(ctx.device)
    if handler is None:
        return Role("unknown", f"queue{q}")
    return handler(ctx, q)


def _missing(q: int, section: str) -> Role:
    return Role("unknown", f"queue{q}", exists=False, section=section)


def _net(ctx: QueueContext, q: int) -> Role:
    section = "virtio 1.4, 5.1.2"
    multi = ctx.has(VIRTIO_NET_F_MQ) or ctx.has(VIRTIO_NET_F_RSS)
    pairs = (ctx.max_virtqueue_pairs or None) if multi else 1
    control = ctx.has(VIRTIO_NET_F_CTRL_VQ)
    if pairs is not None:
        if q < 2 * pairs:
            kind = "receiveq" if q % 2 == 0 else "transmitq"
            return Role(kind, f"{kind}{q // 2 + 1}", q // 2 + 1, section=section)
        if q == 2 * pairs and control:
            return Role("controlq", "controlq", section=section)
        return _missing(q, section)
    # MQ/RSS without max_virtqueue_pairs: any even index may be the controlq
    kind = "receiveq" if q % 2 == 0 else "transmitq"
    return Role(kind, f"{kind}{q // 2 + 1}", q // 2 + 1, guessed=control and q % 2 == 0 and q >= 2,
                section=section)


def _blk(ctx: QueueContext, q: int) -> Role:
    section = "virtio 1.4, 5.2.2"
    count = (ctx.num_queues or None) if ctx.has(VIRTIO_BLK_F_MQ) else 1
    if count is not None and q >= count:
        return _missing(q, section)
    return Role("requestq", f"requestq{q + 1}", q + 1, section=section)


def _console(ctx: QueueContext, q: int) -> Role:
    section = "virtio 1.4, 5.3.2"
    if q < 2:
        kind = "receiveq" if q == 0 else "transmitq"
        return Role(kind, f"{kind}(port0)", 0, section=section)
    if not ctx.has(VIRTIO_CONSOLE_F_MULTIPORT):
        return _missing(q, section)
    if q == 2:
        return Role("control receiveq", "control receiveq", section=section)
    if q == 3:
        return Role("control transmitq", "control transmitq", section=section)
    port = (q - 4) // 2 + 1
    if ctx.max_nr_ports is not None and port >= ctx.max_nr_ports:
        return _missing(q, section)
    kind = "receiveq" if q % 2 == 0 else "transmitq"
    return Role(kind, f"{kind}(port{port})", port, section=section)


def _rng(ctx: QueueContext, q: int) -> Role:
    section = "virtio 1.4, 5.4.2"
    return Role("requestq", "requestq", section=section) if q == 0 else _missing(q, section)


def balloon_queues(ctx: QueueContext) -> list[str | None]:
    """The balloon's queues by index (5.5.2); None marks a fixed index whose queue is absent."""
    present = [
        ("inflateq", True),
        ("deflateq", True),
        ("statsq", ctx.has(VIRTIO_BALLOON_F_STATS_VQ)),
        ("free_page_vq", ctx.has(VIRTIO_BALLOON_F_FREE_PAGE_HINT)),
        ("reporting_vq", ctx.has(VIRTIO_BALLOON_F_PAGE_REPORTING)),
    ]
    if ctx.fixed_balloon_indices:
        names = [name if ok else None for name, ok in present]
        while names and names[-1] is None:
            names.pop()
        return names
    return [name for name, ok in present if ok]


def _balloon(ctx: QueueContext, q: int) -> Role:
    section = "virtio 1.4, 5.5.2"
    names = balloon_queues(ctx)
    name = names[q] if q < len(names) else None
    return Role(name, name, section=section) if name else _missing(q, section)


def _scsi(ctx: QueueContext, q: int) -> Role:
    section = "virtio 1.4, 5.6.2"
    if q == 0:
        return Role("controlq", "controlq", section=section)
    if q == 1:
        return Role("eventq", "eventq", section=section)
    if ctx.num_queues is not None and q >= 2 + ctx.num_queues:
        return _missing(q, section)
    return Role("requestq", f"requestq{q - 1}", q - 1, section=section)


def _vsock(ctx: QueueContext, q: int) -> Role:
    section = "virtio 1.4, 5.10.2"
    names = ("rx", "tx", "event")
    return Role(names[q], names[q], section=section) if q < len(names) else _missing(q, section)


_ROLES = {
    "net": _net,
    "blk": _blk,
    "console": _console,
    "rng": _rng,
    "balloon": _balloon,
    "scsi": _scsi,
    "vsock": _vsock,
}


# The role names a trace record stores (dissectors/record.py ROLES) -> this device's queue kind
_RECORD_ROLES: dict[str, dict[str, str]] = {
    "REQUEST": {"blk": "requestq", "scsi": "requestq", "rng": "requestq"},
    "RX": {"net": "receiveq", "vsock": "rx", "console": "receiveq"},
    "TX": {"net": "transmitq", "vsock": "tx", "console": "transmitq"},
    "CONTROL": {"net": "controlq", "scsi": "controlq"},
    "EVENT": {"scsi": "eventq", "vsock": "event"},
    "CONTROL_RX": {"console": "control receiveq"},
    "CONTROL_TX": {"console": "control transmitq"},
    "INFLATE": {"balloon": "inflateq"},
    "DEFLATE": {"balloon": "deflateq"},
    "STATS": {"balloon": "statsq"},
    "FREE_PAGE": {"balloon": "free_page_vq"},
    "REPORTING": {"balloon": "reporting_vq"},
}


def role_named(ctx: QueueContext, name: str) -> Role:
    """The role ``name`` on ``ctx``'s device: a queue kind (``"receiveq"``) or a trace record's role name
    (``"RX"``, ``"CONTROL"``, ``"INFLATE"``, ...), for callers that know the role without the numbering.

    An unknown name, or one the device has no queue for, gives the ``unknown`` role.
    """
    kind = _RECORD_ROLES.get(name.upper(), {}).get(ctx.device, name)
    computed = queue_role(ctx)
    if computed.kind == kind:
        return computed
    if kind not in {k for table in _RECORD_ROLES.values() for k in table.values()}:
        return Role("unknown", f"queue{ctx.queue}")
    number = None
    if ctx.device == "console" and kind in ("receiveq", "transmitq"):
        number = 0 if ctx.queue < 2 else (ctx.queue - 4) // 2 + 1
    elif ctx.device == "net" and kind in ("receiveq", "transmitq"):
        number = ctx.queue // 2 + 1
    name_out = f"{kind}(port{number})" if ctx.device == "console" and number is not None else kind
    return Role(kind, name_out, number)
