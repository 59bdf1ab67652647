"""Following one virtqueue: what happened between two looks at its rings.

:class:`RingTracker` keeps, per queue, the positions it has seen and the chains in
flight; :meth:`RingTracker.poll` reads the rings and returns a
:class:`RingChanges`: the chains made available since the last poll (in ring
order), the used elements (with the chains they complete), the anomalies, and
whether a notification was due each way. Live tracing polls on every kick and
call; replay and tests poll whenever they like. ``RingTracker(config, memory)``
returns the split or packed tracker as ``config.layout`` says.

:func:`snapshot` derives the in-flight set at one instant from ring contents
alone (a memory dump):

- split: the heads in ``avail->ring[]`` between ``used->idx`` and ``avail->idx``
  (free-running indices), each walked. Exact when the device uses chains in the
  order they were made available; after out-of-order completions the set has the
  right size but may name a recently used head instead of an older one still
  in flight (the rings do not record which).
- packed: each slot's AVAIL bit is its lap stamp, so the driver's next slot is
  where the stamp changes (2.8.1); descriptors whose AVAIL and USED bits differ
  are available, grouped into lists by NEXT. The tails of lists the device has
  already used (their first slot overwritten by the used descriptor, the rest left
  as they were: 2.8.6) are recognised by the used descriptor's buffer id and
  dropped, so is a whole IN_ORDER batch. After out-of-order completions a list
  whose head the device overwrote cannot be seen (``RingSnapshot.approximate``).

Between two polls anything may happen. Split: a head used and made available again
is matched in ring order (the used element completes the first use). Packed: a list
made available and used since the last poll shows only as its used descriptor
(``RingChanges.missed``); a tracker a whole lap of the ring behind cannot tell the
new lap from the old one and stops where the rings no longer match what it saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

from ..dissectors.virtqueue import (
    PACKED_DESC_SIZE,
    SPLIT_DESC_SIZE,
    VIRTQ_DESC_F_AVAIL,
    VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_USED,
    VIRTQ_DESC_F_WRITE,
)
from ..errors import GuestMemoryError, VqtraceError
from ..memory import GuestMemory
from ..model import Anomaly, Chain, Layout, QueueConfig, RingState, UsedElem
from . import anomalies as A
from .batch import MIN_BATCH, packed_batch, split_batch
from .chain import (
    PACKED_DESC_STRUCT,
    AreaViews,
    MemoryBounds,
    packed_desc_available,
    packed_desc_used,
    ring_indices,
    walk_packed_chain,
    walk_split_chain,
)
from .notify import packed_need_event, split_avail_notification_due, split_used_notification_due
from .packed import EVENT_STRUCT, advance
from .split import AVAIL_RING, USED_ELEM_STRUCT, USED_RING

__all__ = ["Completion", "PackedTracker", "RingChanges", "RingSnapshot", "RingTracker", "SplitTracker", "snapshot"]


class Completion(NamedTuple):
    """One chain used by the device: the used element and the chain it completes.

    ``chain`` is None when the id was not in flight (``USED_ID_NOT_IN_FLIGHT``).
    With IN_ORDER, each chain of a batch gets its own Completion; those the device
    skipped have ``elem.implied`` set (2.7.9, 2.8.8). A NamedTuple: cheap to build, one per used element.
    """

    elem: UsedElem
    chain: Chain | None

    @property
    def id(self) -> int:
        return self.elem.id

    @property
    def len(self) -> int:
        return self.elem.len


_new_done = partial(tuple.__new__, Completion)  # ``_new_done((elem, chain))``: Completion(elem, chain), quicker


@dataclass
class RingChanges:
    """What happened on one queue between two polls.

    ``avail``: chains made available, in ring order. ``used``: completions, in ring
    order; a packed list made available and used between two polls has its used
    descriptor over its first slot, so it shows only as a completion with ``chain``
    None, counted in ``missed`` (no anomaly: the tracker looked too late).
 ``anomalies``: everything wrong found during this poll, chain anomalies
    included (they are also on ``chain.anomalies``). ``avail_notification_due``: whether
    the driver had to notify the device for what it made available (2.7.10 / 2.8.10);
    ``used_notification_due``: whether the device had to notify the driver for what it
    used (2.7.7 / 2.8.10); None when nothing moved that way. Both are judged against
    the suppression fields as they are at poll time.
    """

    queue: int
    before: RingState
    after: RingState
    avail: list[Chain] = field(default_factory=list)
    used: list[Completion] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    avail_notification_due: bool | None = None
    used_notification_due: bool | None = None
    missed: int = 0  # packed: lists made available and used between two polls, seen only as used (chain None)

    @property
    def empty(self) -> bool:
        return not (self.avail or self.used or self.anomalies)


@dataclass
class RingSnapshot:
    """The in-flight set of one queue at one instant, from ring contents alone (see the module doc)."""

    state: RingState
    in_flight: list[Chain]
    anomalies: list[Anomaly]
    approximate: bool = False  # packed: the contents cannot rule out a list hidden by an out-of-order used write


def _flag(config: QueueConfig, code: str, message: str, **kw: Any) -> Anomaly:
    return A.anomaly(code, message, packed=config.packed, queue=config.index, **kw)


#: ``_new_used((queue, id, len, used_idx, wrap, implied))`` is ``UsedElem(queue, id, len, used_idx, wrap, implied)``
#: made without the keyword machinery (a NamedTuple from a tuple in field order), as Completion's ``_new_done``.
_new_used = partial(tuple.__new__, UsedElem)
_AVAIL_USED = VIRTQ_DESC_F_AVAIL | VIRTQ_DESC_F_USED


def _used_elem(queue: int, id: int, length: int, used_idx: int, wrap: bool = False, implied: bool = False,
               ) -> UsedElem:
    return _new_used((queue, id, length, used_idx, wrap, implied))


class RingTracker:
    """Follows one queue's rings; ``RingTracker(config, memory)`` is a SplitTracker or a PackedTracker.

    Keyword arguments set where to start, as a device's vhost-user vring base would
    (VHOST_USER_SET_VRING_BASE): ``avail_idx``/``used_idx`` (split: free-running indices;
    packed: ring slots) and, packed, ``avail_wrap``/``used_wrap``. Left None, the tracker
    starts at the rings as they are now, with the in-flight set of :func:`snapshot` (those
    chains are not reported as new). Chains between the start's used and avail positions
    are in flight from the start; later ones are reported by the first poll.

    Raises :class:`~vqtrace.errors.VqtraceError` for a queue size the layout cannot have.
    """

    config: QueueConfig
    memory: GuestMemory

    def __new__(cls, config: QueueConfig, memory: GuestMemory, **kwargs: Any) -> RingTracker:
        if cls is RingTracker:
            cls = PackedTracker if config.layout is Layout.PACKED else SplitTracker
        return super().__new__(cls)

    def __init__(self, config: QueueConfig, memory: GuestMemory, **kwargs: Any) -> None:
        problem = config.problem()
        if problem is not None and "aligned" not in problem:
            raise VqtraceError(problem, where=f"queue {config.index}")
        self.config = config
        self.memory = memory
        self.bounds = MemoryBounds(memory)
        self.areas = AreaViews(memory)  # the rings' own reads: looked up once, not on every poll
        self._in_flight: dict[int, Chain] = {}
        self._reported: set[tuple[str, int]] = set()  # (code, value): ring-level anomalies already reported
        self._pending: list[Anomaly] = []  # anomalies found at construction, reported by the first poll
        if problem is not None:
            self._pending.append(_flag(config, A.RING_MISALIGNED, problem))

    @property
    def in_flight(self) -> dict[int, Chain]:
        """Chains made available and not yet used, by id, in the order they were made available (live)."""
        return self._in_flight

    @property
    def state(self) -> RingState:
        """The positions seen by the last poll, with a copy of the in-flight set."""
        raise NotImplementedError

    def poll(self) -> RingChanges:
        """Read the rings; what happened since the last poll. Never raises for ring contents."""
        raise NotImplementedError

    def _once(self, code: str, value: int) -> bool:
        """True the first time (code, value) is seen: a stuck bad value is reported once, not on every poll."""
        key = (code, value)
        if key in self._reported:
            return False
        self._reported.add(key)
        return True

    def _complete(self, chain: Chain | None, elem: UsedElem, changes: RingChanges) -> None:
        if chain is not None and elem.len > chain.writable_len and not elem.implied:
            changes.anomalies.append(self._too_long(chain, elem.id, elem.len))
        changes.used.append(_new_done((elem, chain)))

    def _too_long(self, chain: Chain, used_id: int, length: int) -> Anomaly:
        return _flag(self.config, A.USED_LEN_TOO_LARGE,
                     f"used length {length} of id {used_id} is larger than its {chain.writable_len} writable bytes",
                     id=used_id)

    def _take_batch(self, used_id: int) -> list[Chain] | None:
        """IN_ORDER: the in-flight chains up to and including ``used_id`` (2.7.9 / 2.8.8), removed; None if absent."""
        batch = []
        for chain in self._in_flight.values():
            batch.append(chain)
            if chain.id == used_id:
                break
        else:
            return None
        for chain in batch:
            del self._in_flight[chain.id]
        return batch


class SplitTracker(RingTracker):
    """The tracker of a split ring (virtio 1.4, 2.7)."""

    def __init__(self, config: QueueConfig, memory: GuestMemory, *, avail_idx: int | None = None,
                 used_idx: int | None = None, **kwargs: Any) -> None:
        super().__init__(config, memory)
        self._desc_owner = [-1] * config.size  # descriptor table index -> id of the in-flight chain holding it
        # head -> (chain, first, end, [head] * (end - first)): a chain of a batch walk that took table entries
        # first .. end - 1 (as drivers lay chains out), so that its release is one slice, not a walk of its entries
        self._spans: dict[int, tuple[Chain, int, int, list[int]]] = {}
        self.avail_idx = self.used_idx = 0
        self.avail_flags = self.used_flags = 0
        self.used_event: int | None = None
        self.avail_event: int | None = None
        try:
            now = _split_indices(config, memory)
        except GuestMemoryError as err:
            if self._once(A.RING_UNMAPPED, 0):
                self._pending.append(_flag(config, A.RING_UNMAPPED, f"the rings are not in guest memory: {err}"))
            now = (0, 0, 0, 0)
        self.avail_flags, self.avail_idx, self.used_flags, self.used_idx = now
        if avail_idx is not None:
            self.avail_idx = avail_idx & 0xFFFF
        if used_idx is not None:
            self.used_idx = used_idx & 0xFFFF
        seeded = _split_window(config, memory, self.bounds, self.used_idx, self.avail_idx, self._pending)
        for chain in seeded:
            self._add_in_flight(chain, self._pending)

    @property
    def state(self) -> RingState:
        return RingState(self.config.index, self.avail_idx, self.used_idx, avail_flags=self.avail_flags,
                         used_flags=self.used_flags, used_event=self.used_event, avail_event=self.avail_event,
                         in_flight=dict(self._in_flight))

    def _add_in_flight(self, chain: Chain, anomalies: list[Anomaly]) -> None:
        config, owner, in_flight = self.config, self._desc_owner, self._in_flight
        head = chain.id
        old = in_flight.pop(head, None)
        if old is not None:
            flagged = _flag(config, A.HEAD_REUSED_IN_FLIGHT,
                            f"head {head} made available again at avail index {chain.avail_idx} while in flight "
                            f"since avail index {old.avail_idx}", id=head)
            chain.anomalies.append(flagged)
            anomalies.append(flagged)
            self._release(old)
        for index in ring_indices(chain):
            holder = owner[index]
            if holder >= 0 and holder != head and holder in in_flight:
                flagged = _flag(config, A.DESC_REUSED_IN_FLIGHT,
                                f"descriptor {index} of chain {head} still belongs to chain {holder} in flight",
                                id=index)
                chain.anomalies.append(flagged)
                anomalies.append(flagged)
            owner[index] = head
        in_flight[head] = chain

    def _release(self, chain: Chain) -> None:
        owner, head = self._desc_owner, chain.id
        span = self._spans.pop(head, None)
        if span is not None and span[0] is chain:
            first, end, mine = span[1], span[2], span[3]
            if owner[first:end] == mine:  # all its own still (DESC_REUSED_IN_FLIGHT may have given some away)
                owner[first:end] = [-1] * (end - first)
                return
        taken = ring_indices(chain)
        count = len(taken)
        if count > 2:
            first = taken[0]
            if taken[-1] == first + count - 1 and owner[first:first + count] == [head] * count \
                    and taken == list(range(first, first + count)):  # in table order, all its own still
                owner[first:first + count] = [-1] * count
                return
        for index in taken:
            if owner[index] == head:
                owner[index] = -1

    def poll(self) -> RingChanges:
        config, areas, size = self.config, self.areas, self.config.size
        before = RingState(config.index, self.avail_idx, self.used_idx, avail_flags=self.avail_flags,
                           used_flags=self.used_flags, used_event=self.used_event, avail_event=self.avail_event)
        changes = RingChanges(config.index, before, before)
        anomalies = changes.anomalies
        if self._pending:
            anomalies.extend(self._pending)
            self._pending = []
        try:
            avail_flags, avail_idx, used_flags, used_idx = _split_indices(config, areas)
            if config.event_idx:
                used_event = areas.read_u16(config.driver + AVAIL_RING + 2 * size)
                avail_event = areas.read_u16(config.device + USED_RING + 8 * size)
            else:
                used_event = avail_event = None
        except GuestMemoryError as err:
            if self._once(A.RING_UNMAPPED, 0):
                anomalies.append(_flag(config, A.RING_UNMAPPED, f"the rings are not in guest memory: {err}"))
            return changes
        if self._reported:
            self._reported.discard((A.RING_UNMAPPED, 0))
        self.avail_flags, self.used_flags = avail_flags, used_flags
        self.used_event, self.avail_event = used_event, avail_event
        for name, value, code in (("available", avail_flags, avail_flags & ~1), ("used", used_flags, used_flags & ~1)):
            if code and self._once(A.EVENT_FLAGS_INVALID, value << 1 | (name == "used")):
                anomalies.append(_flag(config, A.EVENT_FLAGS_INVALID,
                                       f"the {name} ring flags 0x{value:04x} set reserved bits"))
        # -- the available side (2.7.6, 2.7.13) ------------------------------------------------
        ahead = (avail_idx - used_idx) & 0xFFFF
        behind = (used_idx - avail_idx) & 0xFFFF  # used ahead of avail: the device's fault, not the driver's
        old_avail = self.avail_idx
        new = (avail_idx - old_avail) & 0xFFFF
        if ahead > size and behind > size:
            if self._once(A.AVAIL_IDX_AHEAD, avail_idx << 16 | used_idx):
                anomalies.append(_flag(config, A.AVAIL_IDX_AHEAD,
                                       f"avail idx {avail_idx} is {ahead} ahead of used idx {used_idx}, more than "
                                       f"the queue size {size}"))
            if new > size:
                self.avail_idx, new = avail_idx, 0  # nothing sensible to walk: follow the driver from here
        elif new > size:
            if self._once(A.AVAIL_IDX_AHEAD, avail_idx << 16 | old_avail | 1 << 32):
                anomalies.append(_flag(config, A.AVAIL_IDX_AHEAD,
                                       f"avail idx moved from {old_avail} to {avail_idx}: {new} entries, more than "
                                       f"the queue size {size} (decremented?)"))
            self.avail_idx, new = avail_idx, 0
        if new:
            try:
                table = areas.view(config.desc, SPLIT_DESC_SIZE * size)
                ring = areas.view(config.driver + AVAIL_RING, 2 * size)
            except GuestMemoryError as err:
                anomalies.append(_flag(config, A.RING_UNMAPPED, f"the descriptor table or available ring is not in "
                                                                f"guest memory: {err}"))
                return changes
            # The new entries are walked lazily: the used side below first pulls those a used
            # element completes, so a head the driver reused after the device used it (both since
            # the last poll) is matched to its first chain, not reported as reused in flight.
            self._unwalked = [table, ring, old_avail, _entry_heads(ring, old_avail, new, size), 0]
            changes.avail_notification_due = split_avail_notification_due(
                event_idx=config.event_idx, used_flags=used_flags, avail_event=avail_event, old_avail=old_avail,
                new_avail=avail_idx)
        if new:
            self.avail_idx = avail_idx
        # -- the used side (2.7.8, 2.7.9) ----------------------------------------------------
        old_used = self.used_idx
        moved = (used_idx - old_used) & 0xFFFF
        if moved:
            self._poll_used(old_used, used_idx, moved, changes)
            changes.used_notification_due = split_used_notification_due(
                event_idx=config.event_idx, avail_flags=avail_flags, used_event=used_event, old_used=old_used,
                new_used=used_idx)
        self._walk_avail(None, changes)
        changes.after = RingState(config.index, self.avail_idx, self.used_idx, avail_flags=avail_flags,
                                  used_flags=used_flags, used_event=used_event, avail_event=avail_event)
        return changes

    _unwalked: list | None = None  # [table, ring, start, heads, walked]: this poll's new avail entries

    def _walk_avail(self, until: int | None, changes: RingChanges) -> None:
        """Walk this poll's new avail entries: up to the first whose head is ``until`` (when one
        is), or all that are left (``until`` None)."""
        pending = self._unwalked
        if pending is None:
            return
        table, ring, start, heads, walked = pending
        if until is None:
            stop = len(heads)
        else:
            try:
                stop = heads.index(until, walked) + 1
            except ValueError:
                return
        if stop > walked:
            anomalies = changes.anomalies
            chains, entries, parts = _walk_heads(self.config, self.memory, self.bounds, table, ring,
                                                 (start + walked) & 0xFFFF, stop - walked)
            owner, in_flight, spans = self._desc_owner, self._in_flight, self._spans
            for chain, part in zip(chains, parts, strict=True):
                head = chain.id
                if part is not None and head not in in_flight:
                    # A chain of the batch walk (no anomaly, no loop): its descriptors, if none is held
                    # by another chain (else _add_in_flight says which), are its own now.
                    start, end, first = part
                    if first >= 0 and end - start > 2:  # table entries first, first + 1, ...: as drivers lay them out
                        last = first + end - start
                        if owner[first:last] == [-1] * (end - start):  # all free (quicker than max() < 0)
                            owner[first:last] = mine = [head] * (end - start)
                            in_flight[head] = chain
                            spans[head] = (chain, first, last, mine)
                        else:
                            self._add_in_flight(chain, anomalies)
                        continue
                    taken = entries[start:end]
                    for index in taken:
                        if owner[index] >= 0:
                            for freed in taken[:taken.index(index)]:
                                owner[freed] = -1  # as it was
                            self._add_in_flight(chain, anomalies)
                            break
                        owner[index] = head
                    else:
                        in_flight[head] = chain
                    continue
                if chain.anomalies:
                    anomalies.extend(chain.anomalies)
                self._add_in_flight(chain, anomalies)
            changes.avail.extend(chains)
        pending[4] = stop
        if stop == len(heads):
            self._unwalked = None

    def _poll_used(self, old_used: int, used_idx: int, moved: int, changes: RingChanges) -> None:
        config, size, anomalies = self.config, self.config.size, changes.anomalies
        unwalked = len(self._unwalked[3]) - self._unwalked[4] if self._unwalked is not None else 0
        if moved > len(self._in_flight) + unwalked:
            anomalies.append(_flag(config, A.USED_IDX_AHEAD,
                                   f"used idx moved from {old_used} to {used_idx} ({moved} chains) with only "
                                   f"{len(self._in_flight) + unwalked} in flight"))
        if moved > size:
            self.used_idx = used_idx  # nothing sensible to read: resynchronise
            return
        try:
            ring = self.areas.view(config.device + USED_RING, 8 * size)
        except GuestMemoryError as err:
            anomalies.append(_flag(config, A.RING_UNMAPPED, f"the used ring is not in guest memory: {err}"))
            return
        unpack = USED_ELEM_STRUCT.unpack_from
        pos, left, queue = old_used, moved, config.index
        if not config.in_order:  # one used element per chain (2.7.8): _complete, inlined
            in_flight, used, release, mask = self._in_flight, changes.used, self._release, size - 1
            new_used, new_done = _new_used, _new_done
            for _ in range(moved):
                used_id, length = unpack(ring, 8 * (pos & mask))
                chain = in_flight.pop(used_id, None)
                if chain is None and self._unwalked is not None:
                    self._walk_avail(used_id, changes)  # made available and used since the last poll
                    chain = in_flight.pop(used_id, None)
                if chain is None:
                    anomalies.append(_flag(config, A.USED_ID_NOT_IN_FLIGHT,
                                           f"used idx {pos}: id {used_id} is not in flight", id=used_id))
                else:
                    release(chain)
                    if length > chain.writable_len:
                        anomalies.append(self._too_long(chain, used_id, length))
                used.append(new_done((new_used((queue, used_id, length, pos, False, False)), chain)))
                pos = (pos + 1) & 0xFFFF
            self.used_idx = used_idx
            return
        while left > 0:
            used_id, length = unpack(ring, 8 * (pos % size))
            if used_id not in self._in_flight and self._unwalked is not None:
                self._walk_avail(used_id, changes)  # made available and used since the last poll
            batch = self._take_batch(used_id)  # IN_ORDER (2.7.9)
            if batch is None:
                anomalies.append(_flag(config, A.USED_ID_NOT_IN_FLIGHT,
                                       f"used idx {pos}: id {used_id} is not in flight", id=used_id))
                self._complete(None, _used_elem(queue, used_id, length, pos), changes)
                step = 1
            else:
                step = len(batch)
                if step > left:
                    anomalies.append(_flag(config, A.IN_ORDER_VIOLATION,
                                           f"used idx {pos}: id {used_id} closes a batch of {step} chains but "
                                           f"used idx only moved {left} further", id=used_id))
                for k, chain in enumerate(batch):
                    self._release(chain)
                    last = k == step - 1
                    elem = _used_elem(queue, chain.id, length if last else chain.writable_len,
                                      (pos + k) & 0xFFFF, implied=not last)
                    self._complete(chain, elem, changes)
            pos = (pos + step) & 0xFFFF
            left -= step
        self.used_idx = used_idx


def _split_indices(config: QueueConfig, memory: GuestMemory | AreaViews) -> tuple[int, int, int, int]:
    """(avail flags, avail idx, used flags, used idx) as in memory now."""
    avail = memory.view(config.driver, 4)
    used = memory.view(config.device, 4)
    return (avail[0] | avail[1] << 8, avail[2] | avail[3] << 8, used[0] | used[1] << 8, used[2] | used[3] << 8)


def _split_window(config: QueueConfig, memory: GuestMemory, bounds: MemoryBounds, start: int, end: int,
                  anomalies: list[Anomaly]) -> list[Chain]:
    """The chains whose heads are in avail->ring[] at free-running indices start .. end - 1."""
    size = config.size
    count = (end - start) & 0xFFFF
    if count > size:
        anomalies.append(_flag(config, A.AVAIL_IDX_AHEAD,
                               f"avail idx {end} is {count} ahead of used idx {start}, more than the queue size "
                               f"{size}"))
        count, start = size, (end - size) & 0xFFFF
    if not count:
        return []
    try:
        table = memory.view(config.desc, SPLIT_DESC_SIZE * size)
        ring = memory.view(config.driver + AVAIL_RING, 2 * size)
    except GuestMemoryError as err:
        anomalies.append(_flag(config, A.RING_UNMAPPED, f"the rings are not in guest memory: {err}"))
        return []
    chains = _walk_heads(config, memory, bounds, table, ring, start, count)[0]
    for chain in chains:
        anomalies.extend(chain.anomalies)
    return chains


def _entry_heads(ring: memoryview, start: int, count: int, size: int) -> list[int]:
    """The heads in avail->ring[] entries start .. start + count - 1."""
    first = start % size
    if first + count <= size:
        return list(_u16s(ring, first, count))
    return list(_u16s(ring, first, size - first)) + list(_u16s(ring, 0, count - (size - first)))


def _walk_heads(config: QueueConfig, memory: GuestMemory, bounds: MemoryBounds, table: memoryview,
                ring: memoryview, start: int, count: int
                ) -> tuple[list[Chain], list[int], list[tuple[int, int, int] | None]]:
    """Walk the chains of avail->ring[] entries start .. start + count - 1 (numpy for many, else one by one).

    Also the table entries a batch walk took and, per chain, its part of them (:func:`split_batch`).
    """
    size = config.size
    first = start % size
    if first + count <= size:
        heads = list(_u16s(ring, first, count))
    else:
        heads = list(_u16s(ring, first, size - first)) + list(_u16s(ring, 0, count - (size - first)))
    if count >= MIN_BATCH:
        return split_batch(config, memory, heads, start, table, bounds)
    return [walk_split_chain(config, memory, head, avail_idx=(start + k) & 0xFFFF, table=table, bounds=bounds)
            for k, head in enumerate(heads)], [], [None] * count


def _u16s(ring: memoryview, first: int, count: int) -> memoryview:
    """``count`` little-endian u16 entries of the ring from entry ``first``."""
    return ring[2 * first:2 * (first + count)].cast("H")


# -- packed ----------------------------------------------------------------------------------


class PackedTracker(RingTracker):
    """The tracker of a packed ring (virtio 1.4, 2.8)."""

    def __init__(self, config: QueueConfig, memory: GuestMemory, *, avail_idx: int | None = None,
                 used_idx: int | None = None, avail_wrap: bool | None = None, used_wrap: bool | None = None,
                 **kwargs: Any) -> None:
        super().__init__(config, memory)
        self.avail_flags = self.used_flags = 0
        self.used_event: int | None = None
        self.avail_event: int | None = None
        if avail_idx is None and used_idx is None:
            snap = snapshot(config, memory)
            self._pending.extend(snap.anomalies)
            state = snap.state
            self.avail_idx, self.avail_wrap = state.avail_idx, state.avail_wrap
            self.used_idx, self.used_wrap = state.used_idx, state.used_wrap
            for chain in snap.in_flight:
                self._in_flight[chain.id] = chain
            return
        self.avail_idx = (avail_idx or 0) % config.size
        self.used_idx = (used_idx if used_idx is not None else self.avail_idx) % config.size
        self.avail_wrap = True if avail_wrap is None else bool(avail_wrap)
        self.used_wrap = self.avail_wrap if used_wrap is None else bool(used_wrap)
        # Chains between the device's used position and the given avail position are in flight.
        slot, wrap = self.used_idx, self.used_wrap
        try:
            ring = memory.view(config.desc, PACKED_DESC_SIZE * config.size)
        except GuestMemoryError as err:
            self._pending.append(_flag(config, A.RING_UNMAPPED, f"the descriptor ring is not in guest memory: {err}"))
            return
        for _ in range(config.size):
            if (slot, wrap) == (self.avail_idx, self.avail_wrap):
                break
            flags = PACKED_DESC_STRUCT.unpack_from(ring, PACKED_DESC_SIZE * slot)[3]
            if not packed_desc_available(flags, wrap):
                break
            chain = walk_packed_chain(config, memory, slot, wrap, ring=ring, bounds=self.bounds)
            self._pending.extend(chain.anomalies)
            self._in_flight[chain.id] = chain
            slot, wrap = advance(slot, wrap, chain.ring_len, config.size)

    @property
    def state(self) -> RingState:
        return RingState(self.config.index, self.avail_idx, self.used_idx, self.avail_wrap, self.used_wrap,
                         avail_flags=self.avail_flags, used_flags=self.used_flags, used_event=self.used_event,
                         avail_event=self.avail_event, in_flight=dict(self._in_flight))

    def _add_packed(self, chain: Chain, changes: RingChanges) -> None:
        if chain.anomalies:
            changes.anomalies.extend(chain.anomalies)
        old = self._in_flight.pop(chain.id, None)
        if old is not None:
            flagged = _flag(self.config, A.HEAD_REUSED_IN_FLIGHT,
                            f"buffer id {chain.id} made available again at slot {chain.avail_idx} while in flight "
                            f"since slot {old.avail_idx}", id=chain.id)
            chain.anomalies.append(flagged)
            changes.anomalies.append(flagged)
        self._in_flight[chain.id] = chain
        changes.avail.append(chain)

    def poll(self) -> RingChanges:
        config, size = self.config, self.config.size
        before = RingState(config.index, self.avail_idx, self.used_idx, self.avail_wrap, self.used_wrap,
                           avail_flags=self.avail_flags, used_flags=self.used_flags, used_event=self.used_event,
                           avail_event=self.avail_event)
        changes = RingChanges(config.index, before, before)
        anomalies = changes.anomalies
        if self._pending:
            anomalies.extend(self._pending)
            self._pending = []
        try:
            areas = self.areas
            ring = areas.view(config.desc, PACKED_DESC_SIZE * size)
            driver_desc, driver_flags = EVENT_STRUCT.unpack(areas.view(config.driver, 4))
            device_desc, device_flags = EVENT_STRUCT.unpack(areas.view(config.device, 4))
        except GuestMemoryError as err:
            if self._once(A.RING_UNMAPPED, 0):
                anomalies.append(_flag(config, A.RING_UNMAPPED, f"the rings are not in guest memory: {err}"))
            return changes
        if self._reported:
            self._reported.discard((A.RING_UNMAPPED, 0))
        self.avail_flags, self.used_event = driver_flags, driver_desc
        self.used_flags, self.avail_event = device_flags, device_desc
        for name, value in (("driver", driver_flags), ("device", device_flags)):
            if (value & 3 == 3 or value & ~3) and self._once(A.EVENT_FLAGS_INVALID, value << 1 | (name == "device")):
                anomalies.append(_flag(config, A.EVENT_FLAGS_INVALID,
                                       f"the {name} event suppression flags 0x{value:04x} hold a reserved value"))
        # The driver's side, then the device's; again while the device's side found lists used
        # before this tracker saw them made available (both between two polls): those end the
        # scan of the driver's side, which goes on behind them.
        added = done = 0
        for _ in range(2 * size + 2):
            added += self._scan_avail(ring, changes, size - added)
            step, missed = self._scan_used(ring, changes, 2 * size - done)
            done += step
            if not missed:
                break
        flags = PACKED_DESC_STRUCT.unpack_from(ring, PACKED_DESC_SIZE * self.avail_idx)[3]
        behind = (self.used_idx, self.used_wrap) != (self.avail_idx, self.avail_wrap)
        if behind and packed_desc_used(flags, self.avail_wrap) \
                and self._once(A.PACKED_WRAP_MISMATCH, self.avail_idx << 1 | self.avail_wrap):
            anomalies.append(_flag(config, A.PACKED_WRAP_MISMATCH,
                                   f"slot {self.avail_idx} is marked used with wrap counter {int(self.avail_wrap)} "
                                   f"ahead of the device's position (slot {self.used_idx}): it was not made "
                                   f"available in this lap (flags 0x{flags:04x})", id=self.avail_idx))
        if added:
            changes.avail_notification_due = packed_need_event(
                event_idx=config.event_idx, flags=device_flags, desc=device_desc, size=size,
                old=self.avail_idx - added, new=self.avail_idx, wrap=self.avail_wrap)
        if done:
            changes.used_notification_due = packed_need_event(
                event_idx=config.event_idx, flags=driver_flags, desc=driver_desc, size=size,
                old=self.used_idx - done, new=self.used_idx, wrap=self.used_wrap)
        changes.after = RingState(config.index, self.avail_idx, self.used_idx, self.avail_wrap, self.used_wrap,
                                  avail_flags=driver_flags, used_flags=device_flags, used_event=driver_desc,
                                  avail_event=device_desc)
        return changes

    def _scan_avail(self, ring: memoryview, changes: RingChanges, room: int) -> int:
        """Lists made available from the tracker's avail position (2.8.1, 2.8.21.1); the slots they take."""
        config, memory, size = self.config, self.memory, self.config.size
        unpack = PACKED_DESC_STRUCT.unpack_from
        slot, wrap, added = self.avail_idx, self.avail_wrap, 0
        ahead = (slot + MIN_BATCH) % size
        if size >= 2 * MIN_BATCH and room == size and packed_desc_available(
                unpack(ring, PACKED_DESC_SIZE * ahead)[3], wrap if ahead > slot else not wrap):
            chains, added = packed_batch(config, memory, slot, wrap, ring, self.bounds)
            in_flight = self._in_flight
            for chain in chains:  # no anomalies: only a buffer id already in flight needs _add_packed
                if chain.id in in_flight:
                    self._add_packed(chain, changes)
                else:
                    in_flight[chain.id] = chain
                    changes.avail.append(chain)
            slot, wrap = advance(slot, wrap, added, size)
        while added < room:
            if not packed_desc_available(unpack(ring, PACKED_DESC_SIZE * slot)[3], wrap):
                break
            chain = walk_packed_chain(config, memory, slot, wrap, ring=ring, bounds=self.bounds)
            self._add_packed(chain, changes)
            added += chain.ring_len
            slot, wrap = advance(slot, wrap, chain.ring_len, size)
        self.avail_idx, self.avail_wrap = slot, wrap
        return added

    def _scan_used(self, ring: memoryview, changes: RingChanges, room: int) -> tuple[int, int]:
        """Used descriptors from the tracker's used position (2.8.6, 2.8.8, 2.8.22); (slots, lists missed)."""
        config, size, anomalies, queue = self.config, self.config.size, changes.anomalies, self.config.index
        unpack = PACKED_DESC_STRUCT.unpack_from
        slot, wrap, done, missed = self.used_idx, self.used_wrap, 0, 0
        in_order, in_flight, used = config.in_order, self._in_flight, changes.used
        new_used, new_done = _new_used, _new_done
        while done < room:
            _, length, used_id, flags = unpack(ring, PACKED_DESC_SIZE * slot)
            if flags & _AVAIL_USED != (_AVAIL_USED if wrap else 0):  # packed_desc_used(flags, wrap), inlined
                break
            length = length if flags & VIRTQ_DESC_F_WRITE else 0  # 2.8.4: len is reserved without WRITE
            if in_order:
                batch = self._take_batch(used_id) or []
            else:
                chain = in_flight.pop(used_id, None)
                if chain is not None:  # the common case: _complete, inlined
                    if length > chain.writable_len:
                        anomalies.append(self._too_long(chain, used_id, length))
                    used.append(new_done((new_used((queue, used_id, length, slot, wrap, False)), chain)))
                    step = chain.ring_len
                    done += step
                    slot += step
                    if slot >= size:
                        slot, wrap = advance(slot - size, not wrap, 0, size)
                    continue
                batch = []
            if batch:
                step = 0
                for k, chain in enumerate(batch):
                    last = k == len(batch) - 1
                    elem = _used_elem(queue, chain.id, length if last else chain.writable_len, slot, wrap,
                                    implied=not last)
                    self._complete(chain, elem, changes)
                    step += chain.ring_len
            elif (slot, wrap) == (self.avail_idx, self.avail_wrap):
                # Made available and used since the last poll: the used descriptor overwrote its first
                # slot; the rest of the list (same buffer id, 2.8.6) is skipped with it.
                step = 1 + _stale_tail(ring, slot, wrap, used_id, size)
                self.avail_idx, self.avail_wrap = advance(slot, wrap, step, size)
                self._complete(None, _used_elem(queue, used_id, length, slot, wrap), changes)
                changes.missed += 1
                missed += 1
                done += step
                slot, wrap = advance(slot, wrap, step, size)
                break  # the driver's side goes on behind it
            else:
                anomalies.append(_flag(config, A.USED_ID_NOT_IN_FLIGHT,
                                       f"used descriptor in slot {slot}: buffer id {used_id} is not in flight",
                                       id=used_id))
                self._complete(None, _used_elem(queue, used_id, length, slot, wrap), changes)
                step = 1
            done += step
            slot, wrap = advance(slot, wrap, step, size)
        self.used_idx, self.used_wrap = slot, wrap
        return done, missed


def _stale_tail(ring: memoryview, slot: int, wrap: bool, used_id: int, size: int) -> int:
    """Slots after ``slot`` still holding the rest of the list buffer ``used_id`` was (same id, available)."""
    unpack = PACKED_DESC_STRUCT.unpack_from
    count, here, w = 0, slot, wrap
    for _ in range(size - 1):
        here, w = advance(here, w, 1, size)
        _, _, buffer_id, flags = unpack(ring, PACKED_DESC_SIZE * here)
        if buffer_id != used_id or not packed_desc_available(flags, w):
            break
        count += 1
        if not flags & VIRTQ_DESC_F_NEXT:
            break
    return count


# -- snapshots -------------------------------------------------------------------------------


def snapshot(config: QueueConfig, memory: GuestMemory) -> RingSnapshot:
    """The in-flight set of a queue from its ring contents alone (module doc: how, and its limits)."""
    problem = config.problem()
    if problem is not None and "aligned" not in problem:
        raise VqtraceError(problem, where=f"queue {config.index}")
    if config.packed:
        return _packed_snapshot(config, memory)
    anomalies: list[Anomaly] = []
    try:
        avail_flags, avail_idx, used_flags, used_idx = _split_indices(config, memory)
        state = RingState(config.index, avail_idx, used_idx, avail_flags=avail_flags, used_flags=used_flags)
        if config.event_idx:
            state.used_event = memory.read_u16(config.driver + AVAIL_RING + 2 * config.size)
            state.avail_event = memory.read_u16(config.device + USED_RING + 8 * config.size)
    except GuestMemoryError as err:
        anomalies.append(_flag(config, A.RING_UNMAPPED, f"the rings are not in guest memory: {err}"))
        return RingSnapshot(RingState(config.index, 0, 0), [], anomalies)
    chains = _split_window(config, memory, MemoryBounds(memory), used_idx, avail_idx, anomalies)
    state.in_flight = {chain.id: chain for chain in chains}
    return RingSnapshot(state, chains, anomalies)


def _packed_snapshot(config: QueueConfig, memory: GuestMemory) -> RingSnapshot:
    size, anomalies = config.size, []
    try:
        ring = memory.view(config.desc, PACKED_DESC_SIZE * size)
        driver_desc, driver_flags = EVENT_STRUCT.unpack(memory.view(config.driver, 4))
        device_desc, device_flags = EVENT_STRUCT.unpack(memory.view(config.device, 4))
    except GuestMemoryError as err:
        anomalies.append(_flag(config, A.RING_UNMAPPED, f"the rings are not in guest memory: {err}"))
        return RingSnapshot(RingState(config.index, 0, 0), [], anomalies)
    descs = [PACKED_DESC_STRUCT.unpack_from(ring, PACKED_DESC_SIZE * i) for i in range(size)]
    stamps = [bool(d[3] & 0x80) for d in descs]
    # Each slot's AVAIL bit is the stamp of the lap that last wrote it (driver, or the device
    # using it in the same lap): slots 0 .. D-1 carry the driver's current wrap counter, D .. the
    # previous one (2.8.1). D is the driver's next slot.
    first = stamps[0]
    d_slot = next((i for i in range(size) if stamps[i] != first), 0)
    if d_slot == 0:
        d_wrap = not first
    else:
        d_wrap = first
        stray = [i for i in range(d_slot, size) if stamps[i] == first]
        if stray:
            anomalies.append(_flag(config, A.PACKED_WRAP_MISMATCH,
                                   f"slots {stray[:8]} carry the wrap counter of slots 0..{d_slot - 1} although slot "
                                   f"{d_slot} does not: the laps are inconsistent", id=stray[0]))
    # Walk back from D over the run of available descriptors; the slot before it is the last
    # one the device wrote (or the driver's position, when nothing is in flight).
    available = [packed_desc_available(d[3], stamps[i]) for i, d in enumerate(descs)]
    run = 0
    while run < size and available[(d_slot - 1 - run) % size]:
        run += 1
    start = (d_slot - run) % size
    start_wrap = d_wrap if run <= d_slot else not d_wrap  # the run began in the previous lap
    # Lists in the run, in ring order.
    bounds = MemoryBounds(memory)
    lists: list[Chain] = []
    slot, wrap, left = start, start_wrap, run
    while left > 0:
        chain = walk_packed_chain(config, memory, slot, wrap, ring=ring, bounds=bounds)
        lists.append(chain)
        step = max(1, min(chain.ring_len, left))
        left -= step
        slot, wrap = advance(slot, wrap, step, size)
    # The slot just before the run holds a used descriptor when the device has used something:
    # the lists right after it that it skipped (2.8.6 tails, 2.8.8 IN_ORDER batches) are not in flight.
    u_slot, u_wrap = start, start_wrap
    if run < size:
        before = (start - 1) % size
        if not available[before] and any(descs[before]):  # an all-zero slot was never written (2.8.13)
            used_id = descs[before][2]
            drop = 0
            if lists and lists[0].id == used_id:
                drop = 1
            elif config.in_order:
                for k, chain in enumerate(lists):
                    if chain.id == used_id:
                        drop = k + 1
                        break
            for chain in lists[:drop]:
                u_slot, u_wrap = advance(u_slot, u_wrap, chain.ring_len, size)
            lists = lists[drop:]
    approximate = bool(lists) and not config.in_order
    in_flight: dict[int, Chain] = {}
    for chain in lists:
        anomalies.extend(chain.anomalies)
        if chain.id in in_flight:
            anomalies.append(_flag(config, A.HEAD_REUSED_IN_FLIGHT,
                                   f"buffer id {chain.id} is in flight at slots {in_flight[chain.id].avail_idx} and "
                                   f"{chain.avail_idx}", id=chain.id))
        in_flight[chain.id] = chain
    state = RingState(config.index, d_slot, u_slot, d_wrap, u_wrap, avail_flags=driver_flags, used_flags=device_flags,
                      used_event=driver_desc, avail_event=device_desc, in_flight=in_flight)
    return RingSnapshot(state, list(in_flight.values()), anomalies, approximate)
