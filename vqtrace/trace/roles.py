"""Which role a queue plays in its device: the "Virtqueues" section of each device type.

A trace record carries the role (dissectors/record.py ROLES), so readers pick the
device layouts without redoing the device's queue numbering.
"""

from __future__ import annotations

from functools import lru_cache

from ..dissectors.record import BALLOON, BLK, CONSOLE, NET, RNG, ROLES, SCSI, VSOCK

# Feature bits that change a device's queue numbering
VIRTIO_NET_F_CTRL_VQ = 17  # virtio 1.4, 5.1.3
VIRTIO_NET_F_MQ = 22
VIRTIO_NET_F_RSS = 60
VIRTIO_CONSOLE_F_MULTIPORT = 1  # 5.3.3
VIRTIO_BALLOON_F_STATS_VQ = 1  # 5.5.3
VIRTIO_BALLOON_F_FREE_PAGE_HINT = 3
VIRTIO_BALLOON_F_PAGE_REPORTING = 5


def _has(features: int, bit: int) -> bool:
    return bool(features >> bit & 1)


@lru_cache(maxsize=4096)
def queue_role(device_type: int, queue: int | None, features: int = 0, num_queues: int | None = None) -> int:
    """The ROLES number of ``queue`` of a ``device_type`` device; UNKNOWN when it cannot tell.

    ``num_queues`` (how many queues the driver set up) places a net device's controlq
    when VIRTIO_NET_F_MQ or _RSS was negotiated (5.1.2: it follows the 2N data queues).
    """
    if queue is None or queue < 0:
        return ROLES["UNKNOWN"]
    if device_type in (BLK, RNG):  # 5.2.2, 5.4.2: requestq(s)
        return ROLES["REQUEST"]
    if device_type == NET:  # 5.1.2: receiveq1, transmitq1, ..., receiveqN, transmitqN, controlq
        if _has(features, VIRTIO_NET_F_CTRL_VQ):
            if not (_has(features, VIRTIO_NET_F_MQ) or _has(features, VIRTIO_NET_F_RSS)):
                control = 2
            elif num_queues is not None and num_queues % 2 == 1:
                control = num_queues - 1
            else:
                control = None
            if queue == control:
                return ROLES["CONTROL"]
            if control is not None and queue > control:
                return ROLES["UNKNOWN"]
        return ROLES["RX"] if queue % 2 == 0 else ROLES["TX"]
    if device_type == CONSOLE:  # 5.3.2: port 0 rx/tx, then control rx/tx, then ports 1.. (MULTIPORT)
        if queue in (2, 3) and _has(features, VIRTIO_CONSOLE_F_MULTIPORT):
            return ROLES["CONTROL_RX"] if queue == 2 else ROLES["CONTROL_TX"]
        if queue >= 2 and not _has(features, VIRTIO_CONSOLE_F_MULTIPORT):
            return ROLES["UNKNOWN"]
        return ROLES["RX"] if queue % 2 == 0 else ROLES["TX"]
    if device_type == SCSI:  # 5.6.2: controlq, eventq, request queues
        return ROLES["CONTROL"] if queue == 0 else ROLES["EVENT"] if queue == 1 else ROLES["REQUEST"]
    if device_type == VSOCK:  # 5.10.2: rx, tx, event
        return (ROLES["RX"], ROLES["TX"], ROLES["EVENT"])[queue] if queue < 3 else ROLES["UNKNOWN"]
    if device_type == BALLOON:  # 5.5.2: inflateq, deflateq, then the queues its features add, in order
        queues = ["INFLATE", "DEFLATE"]
        for bit, name in ((VIRTIO_BALLOON_F_STATS_VQ, "STATS"), (VIRTIO_BALLOON_F_FREE_PAGE_HINT, "FREE_PAGE"),
                          (VIRTIO_BALLOON_F_PAGE_REPORTING, "REPORTING")):
            if _has(features, bit):
                queues.append(name)
        return ROLES[queues[queue]] if queue < len(queues) else ROLES["UNKNOWN"]
    return ROLES["UNKNOWN"]


def console_port(queue: int) -> int:
    """The console port a data queue belongs to (5.3.2: 0,1 port 0; 4,5 port 1; ...)."""
    return 0 if queue < 2 else queue // 2 - 1
