"""What each virtqueue of a snapshot holds: indices, chains in flight, recent completions, anomalies.

Per queue (a :class:`Target`: a QueueConfig plus what is known about its device):

- the ring state and the chains in flight, from the ring readers'
  :func:`~vqtrace.rings.tracker.snapshot` (split: the heads between ``used->idx`` and
  ``avail->idx``; packed: the lists whose AVAIL/USED bits say available), each walked
  and decoded as a device request (``blk OUT sector=2048 len=4096``);
- the last completed requests still visible: split, the used ring's latest elements
  with their chains as the descriptor table holds them now (skipped when an in-flight
  chain has reused a descriptor); packed, the used descriptors before the device's
  position;
- anomalies: the ring readers' (descriptor loops, out-of-range indices, avail ahead of
  used by more than the size, ...), plus what a completed element shows (an id that
  is no descriptor index, a length larger than the chain's writable bytes, 2.7.8.2)
  and, with QEMU's status, where QEMU and guest memory disagree or QEMU marked the
  device broken.

With QEMU's indices (``last-avail-idx``), each in-flight chain is also placed on the
device's side: taken by the device (popped, being served) or still waiting.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from ..dissectors.features import feature_space
from ..errors import GuestMemoryError, VqtraceError
from ..memory import GuestMemory
from ..model import Anomaly, Chain, Layout, QueueConfig, RingState
from ..requests import QueueContext, decode_request
from ..requests.context import DEVICE_IDS, device_name
from ..rings import anomalies as A
from ..rings.buffers import read_readable, read_written
from ..rings.chain import MemoryBounds, walk_split_chain
from ..rings.tracker import snapshot as ring_snapshot
from .qemu_status import QemuDevice, QemuQueue

READ_LIMIT = 1 << 20  # bytes of one chain read for decoding (lengths come from the descriptors)
COMPLETED_DEFAULT = 8
# Codes for what only a snapshot with QEMU's status shows (not ring-reader anomalies).
QEMU_USED_IDX_MISMATCH = "QEMU_USED_IDX_MISMATCH"
QEMU_AVAIL_IDX_AHEAD = "QEMU_AVAIL_IDX_AHEAD"
DEVICE_BROKEN = "DEVICE_BROKEN"


@dataclass
class Target:
    """One queue to analyse and what is known about it."""

    config: QueueConfig
    label: str
    device: str = ""  # short device name ("blk"), "" when unknown
    path: str | None = None  # QEMU's QOM path of the device
    qemu_device: QemuDevice | None = None
    qemu_queue: QemuQueue | None = None
    note: str = ""  # where the target came from ("scan candidate 2, score 0.97")
    events_known: bool = True  # packed: whether the event suppression areas are known (scan: they are not)


@dataclass
class ChainReport:
    """One chain: where it is, its shape, and the device request it carries."""

    id: int
    position: int  # split: the free-running avail index (in flight) or used index (completed); packed: slot
    descriptors: int
    readable_len: int
    writable_len: int
    summary: str
    used_len: int | None = None
    state: str = ""  # "taken by the device", "waiting for the device", "" when unknown
    request: Any = None  # the DeviceRequest, when decoded
    anomalies: list[Anomaly] = field(default_factory=list)
    chain: Chain | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "position": self.position, "descriptors": self.descriptors,
                               "readable_len": self.readable_len, "writable_len": self.writable_len,
                               "summary": self.summary}
        if self.used_len is not None:
            out["used_len"] = self.used_len
        if self.state:
            out["state"] = self.state
        if self.request is not None:
            out["request"] = self.request.to_json(tree=False)
        if self.chain is not None:
            out["descs"] = [{"addr": d.addr, "len": d.len, "flags": d.flags, "index": d.index,
                             "indirect": d.in_indirect} for d in self.chain.descriptors]
        return out


@dataclass
class QueueReport:
    """The analysis of one queue."""

    target: Target
    state: RingState | None
    in_flight: list[ChainReport]
    completed: list[ChainReport]
    anomalies: list[Anomaly]
    notes: list[str] = field(default_factory=list)
    approximate: bool = False

    @property
    def config(self) -> QueueConfig:
        return self.target.config

    def to_json(self) -> dict[str, Any]:
        config, state = self.config, self.state
        out: dict[str, Any] = {
            "label": self.target.label, "device": self.target.device or None, "path": self.target.path,
            "queue": config.index, "layout": config.layout.value, "size": config.size, "desc": config.desc,
            "driver": config.driver, "device_area": config.device, "features": config.features,
            "feature_names": feature_names(config), "source": self.target.note or None,
        }
        if state is not None:
            out["state"] = {"avail_idx": state.avail_idx, "used_idx": state.used_idx,
                            "avail_flags": state.avail_flags, "used_flags": state.used_flags,
                            "used_event": state.used_event, "avail_event": state.avail_event}
            if not self.target.events_known:
                out["state"].update(avail_flags=None, used_flags=None, used_event=None, avail_event=None)
            if config.packed:
                out["state"].update(avail_wrap=state.avail_wrap, used_wrap=state.used_wrap)
        if self.target.qemu_queue is not None:
            q = self.target.qemu_queue
            out["qemu"] = {"last_avail_idx": q.last_avail_idx, "used_idx": q.used_idx, "inuse": q.inuse,
                           "signalled_used": q.signalled_used}
        out["in_flight"] = [c.to_json() for c in self.in_flight]
        out["completed"] = [c.to_json() for c in self.completed]
        out["anomalies"] = [anomaly_json(a) for a in self.anomalies]
        out["notes"] = self.notes
        out["approximate"] = self.approximate
        return out


def anomaly_json(anomaly: Anomaly) -> dict[str, Any]:
    return {"code": anomaly.code, "section": anomaly.section, "message": anomaly.message, "queue": anomaly.queue,
            "id": anomaly.id, "address": anomaly.address}


def feature_names(config: QueueConfig) -> list[str]:
    """The names of the negotiated bits (unknown ones as ``bit N``)."""
    space = feature_space(config.device_type or None)
    names = []
    value, bit = config.features, 0
    while value:
        if value & 1:
            meanings = space.meanings.get(bit)
            names.append(meanings[0].name if meanings else f"bit {bit}")
        value >>= 1
        bit += 1
    return names


def device_short(device_type: int) -> str:
    """``"blk"`` for 2; "" for 0 (unknown)."""
    return device_name(device_type) if device_type else ""


def _context(target: Target) -> QueueContext | None:
    device = target.device or device_short(target.config.device_type)
    if not device:
        return None
    if device not in DEVICE_IDS and not device.startswith("virtio-"):
        return None
    return QueueContext(DEVICE_IDS.get(device, target.config.device_type), queue=target.config.index,
                        features=target.config.features)


def _shape(chain: Chain) -> str:
    readable = [d.len for d in chain.readable]
    writable = [d.len for d in chain.writable]
    text = f"chain of {len(chain.buffers)} buffers"
    if readable:
        text += f", readable {'+'.join(map(str, readable[:6]))}{'+...' if len(readable) > 6 else ''}"
    if writable:
        text += f", writable {'+'.join(map(str, writable[:6]))}{'+...' if len(writable) > 6 else ''}"
    if any(d.in_indirect for d in chain.descriptors):
        text += " (indirect)"
    return text


def _decode(memory: GuestMemory, ctx: QueueContext | None, chain: Chain, used_len: int | None) -> tuple[str, Any]:
    """(summary, DeviceRequest or None) of ``chain``; ``used_len`` None while in flight."""
    if ctx is None or (chain.anomalies and not chain.buffers):
        return _shape(chain), None
    try:
        readable = read_readable(memory, chain, limit=READ_LIMIT)
        written = None
        if used_len is not None:
            # blk's status is the last writable byte whatever the used length (5.2.6): take the whole part.
            length = chain.writable_len if ctx.device == "blk" else used_len
            written = read_written(memory, chain, min(length, READ_LIMIT))
    except (GuestMemoryError, ValueError):
        return _shape(chain) + " (buffers outside guest memory)", None
    request = decode_request(ctx, readable, written, used_len, readable_lens=[d.len for d in chain.readable],
                             writable_lens=[d.len for d in chain.writable], lazy=True)
    return request.summary, request


def _flag(config: QueueConfig, code: str, message: str, **kw: Any) -> Anomaly:
    return A.anomaly(code, message, packed=config.packed, queue=config.index, **kw)


def analyze_queue(memory: GuestMemory, target: Target, *, completed: int = COMPLETED_DEFAULT) -> QueueReport:
    """The :class:`QueueReport` of one queue. Never raises for ring contents."""
    config = target.config
    ctx = _context(target)
    notes: list[str] = []
    try:
        snap = ring_snapshot(config, memory)
    except VqtraceError as err:
        anomaly = _flag(config, A.RING_MISALIGNED, str(err))
        return QueueReport(target, None, [], [], [anomaly], [f"the queue cannot be read: {err}"])
    anomalies = list(snap.anomalies)
    state = snap.state
    if not config.packed:
        anomalies += _shared_in_flight(config, snap.in_flight)
    qemu = target.qemu_queue
    in_flight = []
    for chain in snap.in_flight:
        summary, request = _decode(memory, ctx, chain, None)
        report = ChainReport(chain.id, chain.avail_idx, len(chain.descriptors), chain.readable_len,
                             chain.writable_len, summary, request=request, anomalies=list(chain.anomalies),
                             chain=chain)
        if qemu is not None and qemu.last_avail_idx is not None and not config.packed:
            waiting = (state.avail_idx - qemu.last_avail_idx) & 0xFFFF
            behind = (state.avail_idx - chain.avail_idx) & 0xFFFF  # 1 for the newest chain
            report.state = "waiting for the device" if behind <= waiting else "taken by the device"
        in_flight.append(report)
    done = _completed_packed(memory, config, state, completed) if config.packed else \
        _completed_split(memory, config, state, snap.in_flight, ctx, completed, anomalies)
    if qemu is not None:
        _check_qemu(config, state, target, anomalies, notes)
    if snap.approximate:
        notes.append("packed ring: a list hidden by an out-of-order used descriptor cannot be seen")
    elif not config.packed and not config.in_order and len(in_flight) > 1 and not _qemu_in_order(qemu, state):
        notes.append("in flight = the heads between used.idx and avail.idx: exact for in-order completion; "
                     "after out-of-order completions an older head may still be in flight instead")
    return QueueReport(target, state, in_flight, done, _unique(anomalies), notes, snap.approximate)


def _qemu_in_order(qemu: QemuQueue | None, state: RingState) -> bool:
    """Whether QEMU's counts show in-order service: what it took and did not use is exactly ``inuse``."""
    if qemu is None or qemu.last_avail_idx is None or qemu.inuse is None or qemu.used_idx != state.used_idx:
        return False
    return (qemu.last_avail_idx - state.used_idx) & 0xFFFF == qemu.inuse


def _shared_in_flight(config: QueueConfig, chains: list[Chain]) -> list[Anomaly]:
    """Split: a head in two avail entries of the in-flight window, or a descriptor in two chains (2.7.13.1)."""
    found: list[Anomaly] = []
    heads: dict[int, int] = {}
    owner: dict[int, int] = {}
    for chain in chains:
        if chain.id in heads:
            found.append(_flag(config, A.HEAD_REUSED_IN_FLIGHT,
                               f"head {chain.id} is in the available ring at index {heads[chain.id]} and again at "
                               f"{chain.avail_idx}, both in flight", id=chain.id))
            continue
        heads[chain.id] = chain.avail_idx
        for d in chain.descriptors:
            if d.in_indirect:
                continue
            if d.index in owner and owner[d.index] != chain.id:
                found.append(_flag(config, A.DESC_REUSED_IN_FLIGHT,
                                   f"descriptor {d.index} belongs to the chains of heads {owner[d.index]} and "
                                   f"{chain.id}, both in flight", id=d.index))
            owner.setdefault(d.index, chain.id)
    return found


def _unique(anomalies: list[Anomaly]) -> list[Anomaly]:
    seen, out = set(), []
    for anomaly in anomalies:
        key = (anomaly.code, anomaly.id, anomaly.address, anomaly.message)
        if key not in seen:
            seen.add(key)
            out.append(anomaly)
    return out


def _completed_split(memory: GuestMemory, config: QueueConfig, state: RingState, in_flight: list[Chain],
                     ctx: QueueContext | None, limit: int, anomalies: list[Anomaly]) -> list[ChainReport]:
    size = config.size
    try:
        ring = memory.view(config.device + 4, 8 * size)
        table = memory.view(config.desc, 16 * size)
    except GuestMemoryError:
        return []
    busy = {d.index for chain in in_flight for d in chain.descriptors if not d.in_indirect}
    spans = sorted((d.addr, d.addr + d.len) for chain in in_flight for d in chain.buffers if d.len)
    bounds = MemoryBounds(memory)
    out = []
    for back in range(1, min(limit, size) + 1):
        used_idx = (state.used_idx - back) & 0xFFFF
        at = 8 * (used_idx % size)
        used_id = int.from_bytes(ring[at:at + 4], "little")
        used_len = int.from_bytes(ring[at + 4:at + 8], "little")
        if used_id == 0 and used_len == 0 and back > state.used_idx:
            break  # first lap: this entry was never written
        if used_id >= size:
            anomalies.append(_flag(config, A.USED_ID_NOT_IN_FLIGHT,
                                   f"used[{used_idx}] names id {used_id}, not a descriptor index (size {size})",
                                   id=used_id))
            out.append(ChainReport(used_id, used_idx, 0, 0, 0, f"id {used_id} out of range", used_len))
            continue
        chain = walk_split_chain(config, memory, used_id, avail_idx=used_idx, table=table, bounds=bounds)
        reused = used_id in busy or any(d.index in busy for d in chain.descriptors if not d.in_indirect)
        if reused:
            out.append(ChainReport(used_id, used_idx, len(chain.descriptors), chain.readable_len,
                                   chain.writable_len, "descriptors reused by a chain now in flight", used_len))
            continue
        if any(_overlaps(spans, d.addr, d.len) for d in chain.buffers):
            out.append(ChainReport(used_id, used_idx, len(chain.descriptors), chain.readable_len,
                                   chain.writable_len, "buffers reused by a chain now in flight", used_len,
                                   chain=chain))
            continue
        summary, request = _decode(memory, ctx, chain, used_len)
        report = ChainReport(used_id, used_idx, len(chain.descriptors), chain.readable_len, chain.writable_len,
                             summary, used_len, request=request, chain=chain)
        if chain.ok and used_len > chain.writable_len:
            # Not an anomaly: once the driver has taken the element back, it may rewrite the descriptors
            # or free the indirect table; the snapshot cannot tell (2.7.8.2 is checked live).
            report.summary += f" (len {used_len} > the {chain.writable_len} writable bytes the descriptors now give)"
        out.append(report)
    return out


def _overlaps(spans: list[tuple[int, int]], addr: int, length: int) -> bool:
    """Whether ``[addr, addr + length)`` meets one of the sorted (start, end) ``spans``."""
    at = bisect.bisect_left(spans, (addr + length,))
    return any(start < addr + length and addr < end for start, end in spans[max(0, at - 64):at])


def _completed_packed(memory: GuestMemory, config: QueueConfig, state: RingState, limit: int) -> list[ChainReport]:
    """The used descriptors just before the device's next slot (2.8.6): id and length only."""
    size = config.size
    try:
        ring = memory.view(config.desc, 16 * size)
    except GuestMemoryError:
        return []
    out = []
    slot, wrap = state.used_idx, state.used_wrap
    for _ in range(size):
        if len(out) >= limit:
            break
        slot -= 1
        if slot < 0:
            slot, wrap = size - 1, not wrap
        at = 16 * slot
        length = int.from_bytes(ring[at + 8:at + 12], "little")
        buffer_id = int.from_bytes(ring[at + 12:at + 14], "little")
        flags = int.from_bytes(ring[at + 14:at + 16], "little")
        used = bool(flags & 0x80) == wrap and bool(flags & 0x8000) == wrap
        if not used or not any(ring[at:at + 16]):
            continue  # a skipped slot of a longer list, or never written
        out.append(ChainReport(buffer_id, slot, 1, 0, 0, f"buffer id {buffer_id} used, len {length}", length))
    return out


def _check_qemu(config: QueueConfig, state: RingState, target: Target, anomalies: list[Anomaly],
                notes: list[str]) -> None:
    qemu, device = target.qemu_queue, target.qemu_device
    assert qemu is not None
    if device is not None and (device.broken or "VIRTIO_CONFIG_S_NEEDS_RESET" in device.status_names):
        anomalies.append(Anomaly(DEVICE_BROKEN, "virtio 1.4, 2.1.2",
                                 f"QEMU marked {device.name or 'the device'} broken (it sets DEVICE_NEEDS_RESET)",
                                 queue=config.index))
    if config.packed:
        if qemu.used_idx is not None and qemu.used_idx != state.used_idx:
            notes.append(f"QEMU's next used slot is {qemu.used_idx}; the ring's flags put it at {state.used_idx}")
        if qemu.last_avail_idx is not None and qemu.last_avail_idx != state.avail_idx:
            notes.append(f"QEMU has read up to slot {qemu.last_avail_idx}; the driver's next slot is "
                         f"{state.avail_idx}")
        return
    if qemu.used_idx is not None and qemu.used_idx != state.used_idx:
        anomalies.append(Anomaly(QEMU_USED_IDX_MISMATCH, "virtio 1.4, 2.7.8",
                                 f"QEMU's used_idx is {qemu.used_idx} but used->idx in guest memory is "
                                 f"{state.used_idx} (was the dump taken while the VM ran?)", queue=config.index))
    if qemu.last_avail_idx is not None:
        ahead = (qemu.last_avail_idx - state.avail_idx) & 0xFFFF
        if 0 < ahead <= 0x8000:
            anomalies.append(Anomaly(QEMU_AVAIL_IDX_AHEAD, "virtio 1.4, 2.7.6",
                                     f"QEMU has taken chains up to avail index {qemu.last_avail_idx}, beyond "
                                     f"avail->idx {state.avail_idx} in guest memory", queue=config.index))
        taken = (qemu.last_avail_idx - state.used_idx) & 0xFFFF
        if qemu.inuse is not None and qemu.inuse != taken and ahead == 0:
            notes.append(f"QEMU holds {qemu.inuse} chains (inuse); {taken} were taken and not used")
    if qemu.elements:
        heads = [e.get("return", {}).get("avail", {}).get("ring") for e in qemu.elements if "return" in e]
        ours = [c.id for c in state.in_flight.values()]
        if heads and heads != ours:
            notes.append(f"QEMU's x-query-virtio-queue-element heads {heads} differ from the ring's {ours}")


def analyze(memory: GuestMemory, targets: list[Target], *, completed: int = COMPLETED_DEFAULT) -> list[QueueReport]:
    """Analyse every target queue."""
    return [analyze_queue(memory, target, completed=completed) for target in targets]


def targets_from_qemu(devices: list[QemuDevice], *, include_idle: bool = False) -> list[Target]:
    """One target per queue QEMU reports as set up (``vring-desc`` non-zero)."""
    targets = []
    for device in devices:
        short = device_short(device.device_id)
        for queue in device.queues:
            if not queue.set_up and not include_idle:
                continue
            config = device.config(queue)
            label = f"{device.name or short} {device.path} queue {queue.index}".strip()
            targets.append(Target(config, label, short, device.path, device, queue, "QEMU x-query-virtio"))
    return targets


def layout_name(config: QueueConfig) -> str:
    return "packed" if config.layout is Layout.PACKED else "split"
