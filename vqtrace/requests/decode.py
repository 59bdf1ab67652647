"""decode_request: a chain's bytes, for a queue, as a :class:`DeviceRequest`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import balloon, blk, console, net, rng, scsi, vsock
from .context import DECODED_DEVICES, QueueContext, Role, queue_role, role_named
from .request import DeviceRequest, Parts, raw_tree

USED_SECTION = "virtio 1.4, 2.7.8"


def decode_request(ctx: QueueContext, readable: bytes = b"", written: bytes | None = None,
                   used_len: int | None = None, *, readable_lens: Sequence[int] | None = None,
                   writable_lens: Sequence[int] | None = None, written_base: int | None = None,
                   lazy: bool = False, continuation: bool = False, role: Role | str | None = None,
                   written_tail: bytes | None = None) -> DeviceRequest:
    """Decode one chain of queue ``ctx.queue`` as a device request; never raises for any bytes.

    ``readable``: the chain's device-readable bytes, in descriptor order. ``written``:
    the device-writable part after the device used the chain, from its start (the
    whole part, or only its first bytes, e.g. the first ``used_len``); None while the
    chain is in flight. ``used_len``: the used element's length. ``readable_lens`` /
    ``writable_lens``: the descriptor lengths of each part, when known (framing checks;
    the writable part's size, which places the blk status byte). ``written_base``:
    the offset of ``written[0]`` in the tree offsets (default ``len(readable)``).
    ``lazy``: build the field trees only when ``.trees`` is first read (a summary costs
    microseconds then). ``continuation``: a net receive buffer that continues a
    merged packet (no header; see :class:`~vqtrace.requests.net.RxAssembler`).
    ``role``: the queue's role when the caller knows it better than the queue numbering
    (a trace record's role name such as "RX" or "CONTROL", a kind such as "receiveq",
    or a :class:`Role`); by default :func:`queue_role` of ``ctx``. ``written_tail``: the
    last bytes of the writable part when ``written`` stops short of them (a capture that
    kept the start and the end of a big read: blk takes its status from them; needs
    ``writable_lens``).
    """
    if role is None:
        role = ctx.__dict__.get("_role")  # cached on the (frozen) context: the numbering is fixed
        if role is None:
            role = queue_role(ctx)
            object.__setattr__(ctx, "_role", role)
    elif isinstance(role, str):
        role = role_named(ctx, role)
    parts = Parts(ctx, role, bytes(readable), None if written is None else bytes(written), used_len, readable_lens,
                  writable_lens, written_base, None if written_tail is None else bytes(written_tail))
    return decode_parts(parts, lazy=lazy, continuation=continuation)


def decode_parts(parts: Parts, *, lazy: bool = False, **options: Any) -> DeviceRequest:
    """:func:`decode_request` on a prepared :class:`Parts` (``options`` go to the decoder)."""
    ctx, role = parts.ctx, parts.role
    req = DeviceRequest(ctx.device, role, parts)
    try:
        _check_used(req, parts)
        _check_capture(req, parts)
        decoder = _decoder(ctx.device, role, parts)
        if decoder is None:
            _generic(req, parts)
        elif decoder is net.decode_rx:
            decoder(req, parts, **options)
        else:
            decoder(req, parts)
    except Exception as err:  # a decoder bug must not lose the chain: keep its bytes, say what failed
        req.problem("INTERNAL", f"decoder failed: {type(err).__name__}: {err}")
        req.summary = req.summary or f"{ctx.device} {role.name} ({len(parts.readable)} bytes)"
        req._thunks = []
        _raw_parts(req, parts)
    if not lazy:
        req.trees  # noqa: B018 - build now, so problems are complete
    return req


def _decoder(device: str, role: Role, parts: Parts) -> Any:
    if device not in DECODED_DEVICES or role.kind == "unknown":
        return None
    if device == "net" and role.guessed and parts.readable:
        return _net_guessed_control
    table = _DECODERS.get(device, {})
    return table.get(role.kind)


def _net_guessed_control(req: DeviceRequest, parts: Parts) -> None:
    req.note("GUESSED_ROLE", f"queue {parts.ctx.queue} taken as the controlq: its chain has device-readable bytes "
             "and max_virtqueue_pairs is unknown", "virtio 1.4, 5.1.2")
    net.decode_ctrl(req, parts)


def _check_used(req: DeviceRequest, parts: Parts) -> None:
    """The used length against the writable part (2.7.8), when the descriptor lengths say how big it is."""
    used = parts.used_len
    if used is None:
        return
    if used < 0:
        req.problem("USED_LEN", f"used length {used} is negative", USED_SECTION)
    elif parts.writable_lens is not None and used > sum(parts.writable_lens):
        req.problem("USED_LEN", f"used length {used} is larger than the {sum(parts.writable_lens)} "
                    "device-writable bytes", USED_SECTION)


def _check_capture(req: DeviceRequest, parts: Parts) -> None:
    """A note when the readable bytes given are fewer than the descriptors hold (a capture's snap length)."""
    total = parts.readable_total
    if total > len(parts.readable):
        req.note("NOT_CAPTURED", f"the capture holds {len(parts.readable)} of the {total} device-readable bytes")


def _generic(req: DeviceRequest, parts: Parts) -> None:
    ctx, role = parts.ctx, parts.role
    if role.kind == "unknown" and not role.exists:
        req.problem("NO_QUEUE", f"queue {ctx.queue} does not exist on a {ctx.device} device with these features",
                    role.section)
    text = f"{ctx.device} {role.name} {len(parts.readable)} bytes"
    if parts.used:
        text += f" -> {parts.used_len if parts.used_len is not None else len(parts.written or b'')} written"
    req.summary = text
    _raw_parts(req, parts)


def _raw_parts(req: DeviceRequest, parts: Parts) -> None:
    if parts.readable:
        readable = parts.readable
        req.defer(lambda r: raw_tree(readable, 0, "Device-readable data"), readable, 0)
    if parts.written:
        written, base = parts.device_wrote(), parts.written_base
        if written:
            req.defer(lambda r: raw_tree(written, base, "Device-written data"), written, base)


_DECODERS: dict[str, dict[str, Any]] = {
    "blk": {"requestq": blk.decode},
    "net": {"transmitq": net.decode_tx, "receiveq": net.decode_rx, "controlq": net.decode_ctrl},
    "console": {"receiveq": console.decode_data, "transmitq": console.decode_data,
                "control receiveq": console.decode_control, "control transmitq": console.decode_control},
    "rng": {"requestq": rng.decode},
    "balloon": {"inflateq": balloon.decode_pfns, "deflateq": balloon.decode_pfns, "statsq": balloon.decode_stats,
                "free_page_vq": balloon.decode_free_page, "reporting_vq": balloon.decode_reporting},
    "scsi": {"requestq": scsi.decode_request, "controlq": scsi.decode_control, "eventq": scsi.decode_event},
    "vsock": {"rx": vsock.decode_packet, "tx": vsock.decode_packet, "event": vsock.decode_event},
}
