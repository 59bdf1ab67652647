"""decode_chain: a :class:`~vqtrace.model.Chain` in guest memory, read and decoded (live tracing, dumps, replay)."""

from __future__ import annotations

from ..errors import GuestMemoryError
from ..memory import GuestMemory
from ..model import Chain
from .context import QueueContext, Role
from .decode import decode_request
from .request import DeviceRequest

#: Default cap on the bytes read from each part of a chain (a 1 MiB read shows its first MiB).
READ_LIMIT = 1 << 20


def decode_chain(ctx: QueueContext, memory: GuestMemory, chain: Chain, used_len: int | None = None, *,
                 lazy: bool = False, limit: int | None = READ_LIMIT, role: Role | str | None = None,
                 continuation: bool = False) -> DeviceRequest:
    """Read ``chain``'s buffers from ``memory`` and decode them; ``used_len`` None while in flight.

    The readable part is read up to ``limit`` bytes; once used, the written part up to
    ``used_len`` bytes, or all of it on a block device, whose status is the last
    writable byte (virtio 1.4, 5.2.6). Buffers outside guest memory are a problem of
    the request, not an exception (the ring reader has flagged the chain already).
    """
    from ..rings.buffers import readable_spans, writable_spans

    readable_lens = [d.len for d in chain.readable]
    writable_lens = [d.len for d in chain.writable]
    failures: list[str] = []
    readable = _read(memory, readable_spans(chain), limit, failures)
    written = tail = None
    if used_len is not None:
        blk = ctx.device == "blk"
        length = chain.writable_len if blk else max(used_len, 0)
        spans = writable_spans(chain)
        written = _read(memory, spans, length if limit is None else min(length, limit), failures)
        if blk and len(written) < chain.writable_len:  # the status closes the writable part: read the end too
            tail = _read_tail(memory, spans, 9, failures)
    req = decode_request(ctx, readable, written, used_len, readable_lens=readable_lens, writable_lens=writable_lens,
                         lazy=lazy, role=role, continuation=continuation, written_tail=tail)
    for failure in failures:
        req.problem("UNREADABLE", f"a buffer of the chain cannot be read: {failure}", "virtio 1.4, 2.7.5")
    return req


def _read(memory: GuestMemory, spans: list, limit: int | None, failures: list[str]) -> bytes:
    """The bytes of ``spans`` up to ``limit``, stopping at the first buffer outside guest memory."""
    parts, left = [], limit
    for addr, length in spans:
        take = length if left is None else min(length, left)
        if take <= 0:
            break
        try:
            parts.append(memory.read(addr, take))
        except GuestMemoryError as err:
            failures.append(str(err))
            break
        if left is not None:
            left -= take
    return b"".join(parts)


def _read_tail(memory: GuestMemory, spans: list, count: int, failures: list[str]) -> bytes:
    """The last ``count`` bytes of ``spans`` (fewer when the spans hold fewer)."""
    parts: list[bytes] = []
    for addr, length in reversed(spans):
        take = min(length, count)
        if take <= 0:
            break
        try:
            parts.insert(0, memory.read(addr + length - take, take))
        except GuestMemoryError as err:
            failures.append(str(err))
            break
        count -= take
    return b"".join(parts)
