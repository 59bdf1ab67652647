"""Network device requests (virtio 1.4, 5.1.9): transmitq, receiveq (merged buffers), controlq.

- transmitq: the readable part is ``struct virtio_net_hdr`` (``virtio_net.hdr``; its size
  from the features, :func:`~vqtrace.dissectors.net.net_hdr_size`) then the Ethernet
  frame (Wireshark's ``eth``/``ip``/... fields, see :mod:`.ethernet`).
- receiveq: all device-writable; the device writes the header, then the frame. With
  VIRTIO_NET_F_MRG_RXBUF a packet spans ``num_buffers`` used buffers and only the first
  begins with a header (5.1.9.4): decode the others with ``continuation=True``, or feed
  every used buffer of the queue, in used order, to :class:`RxAssembler`, or join one
  packet's buffers with :func:`join_rx_buffers`.
- controlq: ``virtio_net.ctrl`` (class, command, data) readable, ``virtio_net.ctrl_ack``
  (ack, result) writable (5.1.9.5).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from ..dissectors import net as layout
from ..dissectors.layers import get_layer
from .context import VIRTIO_F_ANY_LAYOUT, VIRTIO_NET_F_MRG_RXBUF, QueueContext, queue_role
from .ethernet import frame_summary, frame_trees
from .request import DeviceRequest, Parts, dissect, raw_tree

SECTION = "virtio 1.4, 5.1.9"
TX_SECTION = "virtio 1.4, 5.1.9.2"
RX_SECTION = "virtio 1.4, 5.1.9.4"
CTRL_SECTION = "virtio 1.4, 5.1.9.5"
_GSO_NAMES = {value: name for name, value in layout.GSO_TYPE_NAMES.items()}


def hdr_size(ctx: QueueContext) -> int:
    """Bytes of ``struct virtio_net_hdr`` on this device (5.1.9)."""
    return layout.net_hdr_size(ctx.features)


def _params(ctx: QueueContext) -> dict:
    return {"features": ctx.features} if ctx.features is not None else {}


def _hdr_text(req: DeviceRequest, hdr: bytes) -> str:
    flags, gso, _hdr_len, gso_size = struct.unpack_from("<BBHH", hdr)
    req.info.update(flags=flags, gso_type=gso)
    if not gso:
        return ""
    name = _GSO_NAMES.get(gso)
    shown = "|".join(p.removeprefix("VIRTIO_NET_HDR_GSO_") for p in name.split("|")) if name else str(gso)
    req.info["gso_size"] = gso_size
    return f" gso={shown}/{gso_size}"


def _frame(req: DeviceRequest, frame: bytes, base: int) -> None:
    """Defer the frame's trees; a frame scapy cannot take becomes a problem and raw bytes."""

    def build(r: DeviceRequest) -> list:
        trees, problems = frame_trees(frame, base)
        for text in problems:
            r.problem("SHORT_FRAME", text, SECTION, base)
        return trees or ([raw_tree(frame, base, "Frame")] if frame else [])

    req.defer(build, frame, base)


def decode_tx(req: DeviceRequest, parts: Parts) -> None:
    size = hdr_size(parts.ctx)
    readable = parts.readable
    if parts.writable_len:
        req.problem("WRITABLE_TX", f"{parts.writable_len} device-writable bytes on a transmitq: transmitted "
                    "packets are device-readable only", TX_SECTION)
    if len(readable) < size:
        req.problem("SHORT_HEADER", f"virtio_net_hdr needs {size} bytes, the buffer has {len(readable)}",
                    TX_SECTION, 0)
        req.summary = f"net TX ? (header of {len(readable)} bytes)"
        if readable:
            req.defer(lambda r: raw_tree(readable, 0, "Virtio network header, short"), readable, 0)
        return
    _framing(req, parts, parts.readable_lens, size)
    frame = readable[size:]
    frame_len = max(parts.readable_total - size, len(frame))  # a capture may hold fewer bytes than the chain
    req.info["frame_len"] = frame_len
    req.summary = f"net TX {frame_len} bytes {frame_summary(frame)}{_hdr_text(req, readable)}"
    params = _params(parts.ctx)
    req.defer(lambda r: dissect(r, "virtio_net.hdr", readable[:size], 0, params), readable, 0)
    _frame(req, frame, size)
    if parts.used_len and not parts.ctx.legacy and parts.writable_lens is None:  # else USED_LEN said it
        req.note("USED_LEN", f"used length {parts.used_len} on a transmitq, where the device writes nothing",
                 TX_SECTION)


def decode_rx(req: DeviceRequest, parts: Parts, *, continuation: bool = False, joined: int | None = None) -> None:
    ctx = parts.ctx
    if parts.readable:
        req.problem("READABLE_RX", f"{len(parts.readable)} device-readable bytes on a receiveq: receive buffers "
                    "are device-writable only", "virtio 1.4, 5.1.9.3")
        readable = parts.readable
        req.defer(lambda r: raw_tree(readable, 0, "Device-readable data"), readable, 0)
    if not parts.used:
        req.summary = f"net RX buffer {parts.writable_len or 0} bytes"
        return
    data = parts.device_wrote()
    base = parts.written_base
    if parts.written is None:
        req.summary = f"net RX {parts.used_len} bytes (not captured)"
        return
    if continuation:
        req.summary = f"net RX continuation {len(data)} bytes"
        req.info["frame_len"] = len(data)
        if data:
            req.defer(lambda r: raw_tree(data, base, "Packet continued"), data, base)
        return
    size = hdr_size(ctx)
    if len(data) < size:
        req.problem("SHORT_HEADER", f"the device wrote {len(data)} bytes, fewer than the {size}-byte "
                    "virtio_net_hdr", RX_SECTION, base)
        req.summary = f"net RX ? (header of {len(data)} bytes)"
        if data:
            req.defer(lambda r: raw_tree(data, base, "Virtio network header, short"), data, base)
        return
    _framing(req, parts, parts.writable_lens, size)
    frame = data[size:]
    text = f"net RX {len(frame)} bytes"
    if size >= 12:
        buffers, = struct.unpack_from("<H", data, 10)
        req.info["num_buffers"] = buffers
        mergeable = ctx.has(VIRTIO_NET_F_MRG_RXBUF)
        if buffers != 1 and not mergeable:
            req.problem("NUM_BUFFERS", f"num_buffers is {buffers}: without VIRTIO_NET_F_MRG_RXBUF it must be 1",
                        RX_SECTION, base + 10)
        elif buffers == 0:
            req.problem("NUM_BUFFERS", "num_buffers is 0: a packet takes at least one buffer", RX_SECTION, base + 10)
        if joined is not None:
            req.info["buffers"] = joined
            if buffers != joined:
                req.problem("NUM_BUFFERS", f"num_buffers is {buffers}, the packet was given {joined} buffers",
                            RX_SECTION, base + 10)
            if joined > 1:
                text += f" ({joined} buffers)"
        elif buffers > 1:
            text += f" (buffer 1 of {buffers})"
    req.info["frame_len"] = len(frame)
    req.summary = f"{text} {frame_summary(frame)}{_hdr_text(req, data)}"
    params = _params(ctx)
    req.defer(lambda r: dissect(r, "virtio_net.hdr", data[:size], base, params), data, base)
    _frame(req, frame, base + size)


def _framing(req: DeviceRequest, parts: Parts, lens: tuple[int, ...] | None, size: int) -> None:
    """5.1.9.8: a legacy driver without ANY_LAYOUT gives the header a descriptor of its own."""
    ctx = parts.ctx
    if ctx.legacy and not ctx.has(VIRTIO_F_ANY_LAYOUT) and lens and lens[0] != size:
        req.problem("FRAMING", f"legacy framing: virtio_net_hdr must be a descriptor of its own ({size} bytes), "
                    f"the first is {lens[0]}", "virtio 1.4, 5.1.9.8")


def decode_ctrl(req: DeviceRequest, parts: Parts) -> None:
    readable = parts.readable
    if len(readable) < 2:
        req.problem("SHORT_HEADER", f"a control command needs class and command (2 bytes), the buffer has "
                    f"{len(readable)}", CTRL_SECTION, 0)
        req.summary = f"net ctrl ? ({len(readable)} bytes)"
        trees = [raw_tree(readable, 0, "Control command, short")] if readable else []
    else:
        tree = dissect(req, "virtio_net.ctrl", readable, 0)
        req.info.update({"class": readable[0], "command": readable[1]})
        layer = get_layer("virtio_net.ctrl")
        req.summary = layer.summary(tree) if tree.abbrev == "virtio_net.ctrl" else \
            f"net ctrl class={readable[0]} command={readable[1]}"
        trees = [tree]
    no_room = parts.writable_len == 0 and (parts.writable_lens is not None or parts.used)
    if no_room:
        req.problem("NO_ACK", "no device-writable byte for the ack", CTRL_SECTION)
    if parts.used:
        written = parts.device_wrote() if parts.written is not None else None
        if written:
            params = {"ctrl_class": readable[0], "ctrl_command": readable[1]} if len(readable) >= 2 else {}
            ack = written[0]
            req.response = {layout.VIRTIO_NET_OK: "OK", layout.VIRTIO_NET_ERR: "ERR"}.get(ack, f"ack={ack}")
            req.info["ack"] = ack
            trees.append(dissect(req, "virtio_net.ctrl_ack", written, parts.written_base, params))
        else:
            req.response = "?"
            if not no_room and (parts.written is not None or parts.used_len == 0):
                req.problem("NO_ACK", "the device used the command without writing the ack", CTRL_SECTION)
        req.summary += f" -> {req.response}"
    req.defer(lambda r: trees)


def join_rx_buffers(ctx: QueueContext, buffers: Sequence[bytes], used_lens: Sequence[int | None] | None = None,
                    *, lazy: bool = False) -> DeviceRequest:
    """One received packet from the ``buffers`` (written bytes, in used order) it spans (5.1.9.4).

    The first buffer begins with the header; each buffer counts for its used length (when
    given). The result decodes the whole packet: header, then the frame joined across
    the buffers, offsets counting in the joined bytes; a ``num_buffers`` that differs from
    the number of buffers given is a problem.
    """
    from .decode import decode_parts

    lens = list(used_lens) if used_lens is not None else [None] * len(buffers)
    if len(lens) != len(buffers):
        raise ValueError(f"{len(buffers)} buffers but {len(lens)} used lengths")
    pieces = [b if n is None else b[:max(n, 0)] for b, n in zip(buffers, lens, strict=True)]
    joined = b"".join(pieces)
    parts = Parts(ctx, queue_role(ctx), b"", joined, len(joined), None, None, None)
    return decode_parts(parts, lazy=lazy, joined=len(pieces))


class RxAssembler:
    """Turns one receiveq's used buffers, fed in used order, into packets (VIRTIO_NET_F_MRG_RXBUF).

    :meth:`add` decodes one used buffer (as a continuation when the packet before it is
    not complete) and returns ``(request, packet)``: ``packet`` is the joined packet
    (:func:`join_rx_buffers`) when this buffer completes one, else None. Without
    MRG_RXBUF every buffer is a whole packet.
    """

    def __init__(self, ctx: QueueContext) -> None:
        self.ctx = ctx
        self._pending: list[bytes] = []
        self._lens: list[int | None] = []
        self._expected = 0

    @property
    def pending(self) -> int:
        """Buffers of an incomplete packet held so far."""
        return len(self._pending)

    def add(self, written: bytes, used_len: int | None = None, **kwargs) -> tuple[DeviceRequest, DeviceRequest | None]:
        from .decode import decode_request

        continuation = bool(self._pending)
        req = decode_request(self.ctx, b"", written, used_len, continuation=continuation, **kwargs)
        if not continuation:
            buffers = req.info.get("num_buffers", 1) if self.ctx.has(VIRTIO_NET_F_MRG_RXBUF) else 1
            self._expected = max(buffers, 1)
        self._pending.append(written)
        self._lens.append(used_len)
        if len(self._pending) < self._expected:
            return req, None
        packet = req if len(self._pending) == 1 else join_rx_buffers(self.ctx, self._pending, self._lens)
        self._pending, self._lens, self._expected = [], [], 0
        return req, packet
