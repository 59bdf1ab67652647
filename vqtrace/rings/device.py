"""The device's side of one virtqueue: take available chains, return used ones.

:class:`DeviceQueue` is what reference devices and the vhost-user back-end use:
:meth:`~DeviceQueue.pop` the next available chain (split 2.7.6 / packed 2.8.21),
:meth:`~DeviceQueue.push` a used element (split used ring 2.7.8 / packed used
descriptor 2.8.6), :meth:`~DeviceQueue.push_batch` several (one used element per
batch with VIRTIO_F_IN_ORDER, 2.7.9 / 2.8.8; the first descriptor written last for
packed multi-buffer requests, 2.8.9), then ask :meth:`~DeviceQueue.should_notify`
whether the driver wants a used buffer notification (2.7.7.2 / 2.8.10), and
suppress the driver's available buffer notifications with
:meth:`~DeviceQueue.disable_notifications` (NO_NOTIFY, ``avail_event``, device
event suppression; 2.7.10.2 / 2.8.10).

A hostile ring never raises: a chain's problems are on ``chain.anomalies``; a ring
the device cannot go on with (an unmapped area, an avail index more than the queue
size ahead) sets :attr:`DeviceQueue.broken` and :meth:`pop` returns None (a device
would then set DEVICE_NEEDS_RESET, 2.1.2). ``push`` writes whatever it is given
(an id not in flight included): it is also how replay reproduces a faulty device.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..dissectors.virtqueue import VIRTQ_DESC_F_WRITE, VIRTQ_USED_F_NO_NOTIFY
from ..errors import GuestMemoryError
from ..memory import GuestMemory
from ..model import Anomaly, Chain, QueueConfig
from . import anomalies as A
from .chain import MemoryBounds, packed_desc_available, walk_packed_chain, walk_split_chain
from .notify import (
    RING_EVENT_FLAGS_DESC,
    RING_EVENT_FLAGS_DISABLE,
    RING_EVENT_FLAGS_ENABLE,
    packed_need_event,
    split_used_notification_due,
)
from .packed import PackedRing, advance, event_desc, used_flags_for
from .split import SplitRing

__all__ = ["DeviceQueue", "decode_vring_base", "encode_vring_base"]


def encode_vring_base(config: QueueConfig, avail_idx: int, avail_wrap: bool = True, used_idx: int = 0,
                      used_wrap: bool = True) -> int:
    """The vhost-user vring base (VHOST_USER_GET/SET_VRING_BASE ``num``) for these positions.

    Split: the next available index. Packed: bits 0-14 the next available slot, bit 15
    its wrap counter, bits 16-30 the next used slot, bit 31 its wrap counter.
    """
    if not config.packed:
        return avail_idx & 0xFFFF
    return (avail_idx & 0x7FFF | int(avail_wrap) << 15 | (used_idx & 0x7FFF) << 16 | int(used_wrap) << 31)


def decode_vring_base(config: QueueConfig, base: int) -> tuple[int, bool, int | None, bool]:
    """(avail_idx, avail_wrap, used_idx, used_wrap) from a vhost-user vring base; split gives used_idx None."""
    if not config.packed:
        return base & 0xFFFF, True, None, True
    return base & 0x7FFF, bool(base >> 15 & 1), base >> 16 & 0x7FFF, bool(base >> 31 & 1)


class DeviceQueue:
    """The device side of one queue over ``memory`` (which must be writable where the rings are).

    Starts at ``avail_idx``/``used_idx`` (split: free-running indices, ``used_idx`` read
    from the used ring when None; packed: slots) and the packed wrap counters, as a
    vhost-user back-end does after VHOST_USER_SET_VRING_BASE (see :meth:`from_vring_base`).
    """

    def __init__(self, config: QueueConfig, memory: GuestMemory, *, avail_idx: int = 0, used_idx: int | None = None,
                 avail_wrap: bool = True, used_wrap: bool = True) -> None:
        self.config = config
        self.memory = memory
        self.bounds = MemoryBounds(memory)
        self.in_flight: dict[int, Chain] = {}  # id -> chain, in the order popped
        self.anomalies: list[Anomaly] = []
        self.broken: Anomaly | None = None
        self.notifications_enabled = True
        self.packed = config.packed
        if self.packed:
            self._packed = PackedRing(config, memory)
            self.last_avail = avail_idx % config.size
            self.used_idx = (used_idx or 0) % config.size
        else:
            self._split = SplitRing(config, memory)
            self.last_avail = avail_idx & 0xFFFF
            if used_idx is None:
                try:
                    used_idx = self._split.used_idx()
                except GuestMemoryError as err:
                    self._break(A.RING_UNMAPPED, f"the used ring is not in guest memory: {err}")
                    used_idx = 0
            self.used_idx = used_idx & 0xFFFF
        self.avail_wrap = avail_wrap
        self.used_wrap = used_wrap
        self._signalled = self.used_idx  # used position at the last should_notify()
        self._signalled_wrap = used_wrap
        self._pushed_slots = 0  # packed: slots written since the last should_notify()

    @classmethod
    def from_vring_base(cls, config: QueueConfig, memory: GuestMemory, base: int) -> DeviceQueue:
        """A queue starting where VHOST_USER_SET_VRING_BASE ``base`` says (see :func:`decode_vring_base`)."""
        avail_idx, avail_wrap, used_idx, used_wrap = decode_vring_base(config, base)
        if config.packed:
            return cls(config, memory, avail_idx=avail_idx, avail_wrap=avail_wrap, used_idx=used_idx,
                       used_wrap=used_wrap)
        return cls(config, memory, avail_idx=avail_idx)

    @property
    def vring_base(self) -> int:
        """What VHOST_USER_GET_VRING_BASE answers for this queue now."""
        return encode_vring_base(self.config, self.last_avail, self.avail_wrap, self.used_idx, self.used_wrap)

    def _break(self, code: str, message: str) -> None:
        flagged = A.anomaly(code, message, packed=self.packed, queue=self.config.index)
        self.anomalies.append(flagged)
        if self.broken is None:
            self.broken = flagged

    # -- the available side ----------------------------------------------------------------

    def has_available(self) -> bool:
        """Whether :meth:`pop` would return a chain now."""
        if self.broken is not None:
            return False
        try:
            if self.packed:
                return packed_desc_available(self._packed.flags(self.last_avail), self.avail_wrap)
            return self._split.avail_idx() != self.last_avail
        except GuestMemoryError:
            return False

    def pop(self) -> Chain | None:
        """The next available chain, or None (nothing available, or the queue is broken)."""
        if self.broken is not None:
            return None
        try:
            return self._pop_packed() if self.packed else self._pop_split()
        except GuestMemoryError as err:
            self._break(A.RING_UNMAPPED, f"a ring area is not in guest memory: {err}")
            return None

    def pop_all(self) -> list[Chain]:
        """Every chain available now."""
        chains = []
        for _ in range(self.config.size):
            chain = self.pop()
            if chain is None:
                break
            chains.append(chain)
        return chains

    def _pop_split(self) -> Chain | None:
        ring, config = self._split, self.config
        avail_idx = ring.avail_idx()
        pending = (avail_idx - self.last_avail) & 0xFFFF
        if not pending:
            return None
        if pending > config.size:
            self._break(A.AVAIL_IDX_AHEAD, f"avail idx {avail_idx} is {pending} ahead of the device's "
                                           f"{self.last_avail}, more than the queue size {config.size}")
            return None
        head = ring.avail_entry(self.last_avail)
        chain = walk_split_chain(config, self.memory, head, avail_idx=self.last_avail, table=ring.table(),
                                 bounds=self.bounds)
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if config.event_idx and self.notifications_enabled:
            ring.set_avail_event(self.last_avail)  # 2.7.10: kick me again from the next entry on
        self._track(chain)
        return chain

    def _pop_packed(self) -> Chain | None:
        ring, config = self._packed, self.config
        if not packed_desc_available(ring.flags(self.last_avail), self.avail_wrap):
            return None
        chain = walk_packed_chain(config, self.memory, self.last_avail, self.avail_wrap, ring=ring.ring(),
                                  bounds=self.bounds)
        self.last_avail, self.avail_wrap = advance(self.last_avail, self.avail_wrap, chain.ring_len, config.size)
        if config.event_idx and self.notifications_enabled:
            ring.set_device_event(event_desc(self.last_avail, self.avail_wrap), RING_EVENT_FLAGS_DESC)
        self._track(chain)
        return chain

    def _track(self, chain: Chain) -> None:
        self.anomalies.extend(chain.anomalies)
        if chain.id in self.in_flight:
            flagged = A.anomaly(A.HEAD_REUSED_IN_FLIGHT, f"id {chain.id} made available again while in flight",
                                packed=self.packed, queue=self.config.index, id=chain.id)
            chain.anomalies.append(flagged)
            self.anomalies.append(flagged)
            del self.in_flight[chain.id]
        self.in_flight[chain.id] = chain

    # -- the used side -----------------------------------------------------------------------

    def push(self, chain: Chain | int, length: int) -> None:
        """Return one chain (or a bare id) as used, with ``length`` bytes written, and publish it."""
        self.push_batch([(chain, length)])

    def push_batch(self, items: Iterable[tuple[Chain | int, int]]) -> None:
        """Return several chains as used, published together.

        With VIRTIO_F_IN_ORDER the chains must be the oldest in flight, in order: one
        used element names the last, the rest are skipped (2.7.9 / 2.8.8). Without it,
        split rings get one element each; packed rings get one used descriptor each, the
        first one's flags written last (2.8.9).
        """
        pairs = [(self._resolve(c), c if isinstance(c, int) else c.id, n) for c, n in items]
        if not pairs:
            return
        if self.config.in_order:
            expected = list(self.in_flight)[:len(pairs)]
            if [i for _, i, _ in pairs] != expected:
                raise ValueError(f"IN_ORDER: ids {[i for _, i, _ in pairs]} are not the oldest in flight {expected}")
        for chain, id, _ in pairs:
            if chain is not None and self.in_flight.get(id) is chain:
                del self.in_flight[id]
        if self.packed:
            self._push_packed(pairs)
        else:
            self._push_split(pairs)

    def _resolve(self, chain: Chain | int) -> Chain | None:
        if isinstance(chain, int):
            return self.in_flight.get(chain)
        return chain

    def _push_split(self, pairs: list[tuple[Chain | None, int, int]]) -> None:
        ring = self._split
        if self.config.in_order:
            # 2.7.9: one entry, at the offset of the batch's first chain, naming the last one.
            _, id, length = pairs[-1]
            ring.set_used_elem(self.used_idx, id, length)
        else:
            for k, (_, id, length) in enumerate(pairs):
                ring.set_used_elem(self.used_idx + k, id, length)
        self.used_idx = (self.used_idx + len(pairs)) & 0xFFFF
        ring.set_used_idx(self.used_idx)  # 2.7.8.2: len is set before idx is updated

    def _push_packed(self, pairs: list[tuple[Chain | None, int, int]]) -> None:
        ring, size = self._packed, self.config.size

        def slots(chain: Chain | None) -> int:
            return chain.ring_len if chain is not None else 1

        if self.config.in_order:
            _, id, length = pairs[-1]
            writes = [(self.used_idx, self.used_wrap, id, length)]
            total = sum(slots(c) for c, _, _ in pairs)
        else:
            writes, slot, wrap, total = [], self.used_idx, self.used_wrap, 0
            for chain, id, length in pairs:
                writes.append((slot, wrap, id, length))
                slot, wrap = advance(slot, wrap, slots(chain), size)
                total += slots(chain)
        for slot, _, id, length in writes:
            ring.write_desc_body(slot, 0, length, id)
        # Flags last, the first descriptor's last of all (2.8.9, 2.8.21.1).
        for slot, wrap, _, length in reversed(writes):
            ring.set_flags(slot, used_flags_for(wrap) | (VIRTQ_DESC_F_WRITE if length else 0))
        self.used_idx, self.used_wrap = advance(self.used_idx, self.used_wrap, total, size)
        self._pushed_slots += total

    # -- notifications -------------------------------------------------------------------------

    def should_notify(self) -> bool:
        """Whether the driver wants a used buffer notification for what was pushed since the last call.

        Split: ``avail->flags`` NO_INTERRUPT, or ``used_event`` with EVENT_IDX (2.7.7.2).
        Packed: the driver event suppression structure (2.8.10, 2.8.14).
        """
        try:
            if self.packed:
                desc, flags = self._packed.driver_event()
                due = packed_need_event(event_idx=self.config.event_idx, flags=flags, desc=desc,
                                        size=self.config.size, old=self.used_idx - self._pushed_slots,
                                        new=self.used_idx, wrap=self.used_wrap)
                self._pushed_slots = 0
                return due
            ring = self._split
            due = split_used_notification_due(event_idx=self.config.event_idx, avail_flags=ring.avail_flags(),
                                              used_event=ring.used_event() if self.config.event_idx else None,
                                              old_used=self._signalled, new_used=self.used_idx)
        except GuestMemoryError as err:
            self._break(A.RING_UNMAPPED, f"a ring area is not in guest memory: {err}")
            return False
        self._signalled = self.used_idx
        return due

    def disable_notifications(self) -> None:
        """Advise the driver not to send available buffer notifications (2.7.10.2 / 2.8.10)."""
        self.notifications_enabled = False
        try:
            if self.packed:
                self._packed.set_device_event(0, RING_EVENT_FLAGS_DISABLE)
            elif not self.config.event_idx:
                self._split.set_used_flags(self._split.used_flags() | VIRTQ_USED_F_NO_NOTIFY)
            # With EVENT_IDX, avail_event simply stops following last_avail.
        except GuestMemoryError as err:
            self._break(A.RING_UNMAPPED, f"a ring area is not in guest memory: {err}")

    def enable_notifications(self) -> bool:
        """Ask for available buffer notifications again; True when chains are already waiting.

        The caller must pop those: they were made available while notifications were off.
        """
        self.notifications_enabled = True
        try:
            if self.packed:
                if self.config.event_idx:
                    self._packed.set_device_event(event_desc(self.last_avail, self.avail_wrap), RING_EVENT_FLAGS_DESC)
                else:
                    self._packed.set_device_event(0, RING_EVENT_FLAGS_ENABLE)
            elif self.config.event_idx:
                self._split.set_avail_event(self.last_avail)
            else:
                self._split.set_used_flags(self._split.used_flags() & ~VIRTQ_USED_F_NO_NOTIFY)
        except GuestMemoryError as err:
            self._break(A.RING_UNMAPPED, f"a ring area is not in guest memory: {err}")
            return False
        return self.has_available()

