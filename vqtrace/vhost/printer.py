"""One summary line per live event (``vqtrace live`` without ``-w``), like ``vqtrace show``.

``12  0.000412  q0   vhost-user  SET_VRING_ADDR idx=0 desc=0x... >`` : number, seconds
since the first event, queue, protocol, info. Requests are named by
:func:`vqtrace.requests.decode_request` (``blk IN sector=8 len=4096 -> OK``).
"""

from __future__ import annotations

from typing import IO

from ..events import Direction, Event, EventKind
from .codec import Message


def _request_summary(event: Event) -> str:
    chain = event.chain
    if chain is None:
        return f"used id={event.used.id if event.used else '?'} (not in flight)"
    try:
        from ..requests import QueueContext, decode_request

        ctx = QueueContext(event.device_type or 0, queue=event.queue or 0, features=event.features)
        if event.kind is EventKind.USED:
            req = decode_request(ctx, event.data, event.written, event.used.len if event.used else None,
                                 readable_lens=[d.len for d in chain.readable],
                                 writable_lens=[d.len for d in chain.writable], lazy=True)
        else:
            req = decode_request(ctx, event.data, None, None, readable_lens=[d.len for d in chain.readable],
                                 writable_lens=[d.len for d in chain.writable], lazy=True)
        return f"{req.summary} (id {chain.id})"
    except Exception:
        return f"id={chain.id} readable={chain.readable_len} writable={chain.writable_len}"


def summary(event: Event) -> str:
    """The protocol and info columns of one event."""
    kind = event.kind
    if kind is EventKind.VHOST_USER:
        from ..dissectors import vhost_user as vu

        request, flags, _ = vu.unpack_header(event.data)
        msg = Message(request, flags, event.data[12:], [], event.channel)
        arrow = "->" if event.direction is Direction.TO_DEVICE else "<-"
        fds = f" [{event.fds} fd{'s' if event.fds != 1 else ''}]" if event.fds else ""
        return f"vhost-user {arrow} {msg.describe()}{fds}"
    if kind is EventKind.KICK:
        return "kick" + (" (in band)" if event.channel else "")
    if kind is EventKind.CALL:
        return "call" + (" (in band)" if event.channel else "")
    if kind is EventKind.AVAIL:
        return "avail " + _request_summary(event)
    if kind is EventKind.USED:
        return "used  " + _request_summary(event)
    if kind is EventKind.ANOMALY and event.anomaly is not None:
        return f"ANOMALY {event.anomaly.code}: {event.anomaly.message} ({event.anomaly.section})"
    if kind is EventKind.CONFIG:
        return f"config {'write' if event.direction is Direction.TO_DEVICE else 'read'} offset={event.offset} " \
               f"len={len(event.data)}"
    return kind.name.lower()


class EventPrinter:
    """Writes :func:`summary` lines to a text stream, numbered, with relative times."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.count = 0
        self.start: int | None = None

    def write(self, event: Event) -> None:
        self.count += 1
        if self.start is None:
            self.start = event.time_ns
        seconds = (event.time_ns - self.start) / 1e9
        queue = f"q{event.queue}" if event.queue is not None else "-"
        try:
            self.stream.write(f"{self.count:6d} {seconds:10.6f} {queue:>4}  {summary(event)}\n")
            self.stream.flush()
        except BrokenPipeError:
            self.stream = _Null()


class _Null:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
