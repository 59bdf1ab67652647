"""The live proxy's hot path: split rings read lean, ring events written as blocks at once.

At each kick or call the proxy reads what one queue did (chains made available, used
elements) and records it before it forwards the call. :class:`FastTap` does that for
the common case of a split ring without building events:

- :class:`FastSplitTracker` is a :class:`~vqtrace.rings.tracker.SplitTracker` (same
  state, same results) whose :meth:`~FastSplitTracker.poll_lean` reads the indices, the
  used elements and the new chains' descriptors with ``struct`` over cached views of the
  rings. It keeps the tracker's state (in-flight chains, descriptor owners, indices) as
  the careful ``poll`` would. Whatever could be an anomaly (reserved flag bits, an index
  too far ahead, a head or descriptor reused in flight, an id not in flight, a used length
  over the chain's writable bytes, a chain the careful walker flags, IN_ORDER, a ring not
  mapped) makes it undo what it did in this poll and answer None: the careful ``poll``
  then reads the rings and names the anomaly. Chains other than plain direct ones
  (indirect tables, several memory ranges) are walked by :func:`~vqtrace.rings.chain.walk_split_chain`.
- :class:`FastTap` (a :class:`~vqtrace.vhost.tap.TrackerTap`) copies the bytes (readable
  up to the snap length when a chain is made available, written when it is used) and
  returns a :class:`RingBatch`: what :meth:`TrackerTap.poll` would return, kept as
  tuples. :meth:`RingBatch.blocks` makes the trace blocks directly
  (:mod:`vqtrace.vhost.records`); :meth:`RingBatch.events` makes the events (a printer,
  the TUI, tests). A careful poll's answer is the TrackerTap's list of events.

Tests (``tests/test_vhost_fastpath.py``) hold FastSplitTracker equal to SplitTracker and
FastTap's events equal to TrackerTap's, poll for poll, with anomalies and without.
"""

from __future__ import annotations

import struct
from typing import Any

from ..dissectors.virtqueue import SPLIT_DESC_SIZE, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from ..errors import GuestMemoryError
from ..events import Direction, Event, EventKind
from ..memory import GuestMemory
from ..model import Chain, Descriptor, Layout, QueueConfig, UsedElem
from ..rings import anomalies as A
from ..rings.chain import CHAIN_BYTES_LIMIT, DESC_STRUCT, ring_indices, walk_split_chain
from ..rings.split import AVAIL_RING, USED_RING
from ..rings.tracker import RingTracker, SplitTracker
from .records import QueueBlocks, chain_bytes, split_chain_bytes
from .tap import DEFAULT_SNAPLEN, TrackerTap

_NEXT, _WRITE, _INDIRECT = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT
_IDX = struct.Struct("<HH")  # 2.7.6 / 2.7.8: flags, idx
_USED_ELEM = struct.Struct("<II")  # 2.7.8: struct virtq_used_elem: le32 id, le32 len
_U16 = struct.Struct("<H")
_UNMAPPED = (A.RING_UNMAPPED, 0)
# The SplitTracker state poll_lean keeps (it reads and writes it as SplitTracker.poll does).
_STATE = ("_in_flight", "_desc_owner", "_pending", "_reported", "avail_idx", "used_idx", "avail_flags", "used_flags",
          "used_event", "avail_event", "bounds")

#: What :meth:`FastSplitTracker.poll_lean` found: the chains made available, in ring order, each
#: ``(chain, readable bytes kept, truncated, chain part of its records, writable (addr, len) spans)``
#: (the last three None, False, None, None for a chain walk_split_chain read: an indirect table, a
#: buffer across two regions), and the used elements, in ring order, each ``(chain, id, len, used_idx)``.
LeanChanges = tuple[list[tuple], list[tuple[Chain, int, int, int]]]
_NOTHING: LeanChanges = ([], [])


class _Lazy(tuple):
    """The lazy descriptors of a chain the lean walk read: ``(args, indices)``, where ``args`` holds
    ``addr, len, flags, index, next`` of each descriptor (the record's order) and ``indices`` their
    table entries (what :func:`~vqtrace.rings.chain.ring_indices` answers)."""

    __slots__ = ()

    @property
    def ring_len(self) -> int:
        return len(self[1])

    @property
    def ring_indices(self) -> list[int]:
        return self[1]

    def materialize(self) -> list[Descriptor]:
        args = self[0]
        return [_new_desc(Descriptor, (args[k], args[k + 1], args[k + 2], args[k + 3], args[k + 4], 0, False))
                for k in range(0, len(args), 5)]


_new_lazy = tuple.__new__
_new_desc = tuple.__new__


class FastSplitTracker(SplitTracker):
    """A SplitTracker with a lean poll for the common case (see the module docstring).

    ``snaplen`` bounds the readable bytes the lean walk copies per chain.
    """

    def __init__(self, config: QueueConfig, memory: GuestMemory, *, snaplen: int = DEFAULT_SNAPLEN,
                 **start: Any) -> None:
        super().__init__(config, memory, **start)
        # Only where its state is the one this module knows, and without IN_ORDER batches (2.7.9).
        self.lean = (not config.in_order and config.layout is Layout.SPLIT
                     and all(hasattr(self, name) for name in _STATE) and isinstance(self._desc_owner, list)
                     and isinstance(self._in_flight, dict))
        self.snaplen = snaplen
        self._gen = -1
        self._views: tuple | None = None
        self.hot: tuple[int, int, memoryview] | None = None  # (start, end, bytes) of the region last read

    def _refresh(self) -> tuple | None:
        """Views of the three areas for this memory table (None: not all mapped, read carefully)."""
        config, memory, size = self.config, self.memory, self.config.size
        self._gen = memory.generation
        self._views = self.hot = None
        try:
            extra = 2 if config.event_idx else 0  # used_event after avail->ring[], avail_event after used->ring[]
            avail = memory.view(config.driver, AVAIL_RING + 2 * size + extra)
            used = memory.view(config.device, USED_RING + 8 * size + extra)
            table = memory.view(config.desc, SPLIT_DESC_SIZE * size)
        except GuestMemoryError:
            return None  # the careful poll reports RING_UNMAPPED
        region = memory.region_at(config.desc)
        if region is not None:
            self.hot = (region.guest_addr, region.end, region.data)
        self._views = (avail, used, table)
        return self._views

    def region(self, addr: int, length: int) -> tuple[int, int, memoryview] | None:
        """(start, end, bytes) of the region holding all of ``[addr, addr + length)``, or None."""
        region = self.memory.region_at(addr)
        if region is None or addr + length > region.end:
            return None
        self.hot = found = (region.guest_addr, region.end, region.data)
        return found

    def poll_lean(self) -> LeanChanges | None:
        """What :meth:`poll` would find, when it finds no anomaly; None (nothing changed) otherwise."""
        if not self.lean or self._pending:
            return None
        memory = self.memory
        views = self._views if self._gen == memory.generation else self._refresh()
        if views is None:
            return None
        avail, used, table = views
        config = self.config
        size = config.size
        avail_flags, avail_idx = _IDX.unpack_from(avail)
        used_flags, used_idx = _IDX.unpack_from(used)
        if (avail_flags | used_flags) & ~1:  # EVENT_FLAGS_INVALID
            return None
        if config.event_idx:
            used_event = _U16.unpack_from(avail, AVAIL_RING + 2 * size)[0]
            avail_event = _U16.unpack_from(used, USED_RING + 8 * size)[0]
        else:
            used_event = avail_event = None
        old_avail, old_used = self.avail_idx, self.used_idx
        new = (avail_idx - old_avail) & 0xFFFF
        moved = (used_idx - old_used) & 0xFFFF
        in_flight = self._in_flight
        if (new > size or moved > size or moved > len(in_flight) + new
                or ((avail_idx - used_idx) & 0xFFFF > size and (used_idx - avail_idx) & 0xFFFF > size)):
            return None  # AVAIL_IDX_AHEAD, USED_IDX_AHEAD
        if self._reported:
            self._reported.discard(_UNMAPPED)
        self.avail_flags, self.used_flags, self.used_event, self.avail_event = (avail_flags, used_flags, used_event,
                                                                                avail_event)
        if not new and not moved:
            return _NOTHING
        owner = self._desc_owner
        saved_flight, saved_owner = dict(in_flight), owner[:]
        mask = size - 1
        if new:
            first = old_avail & mask
            ring = avail[AVAIL_RING:AVAIL_RING + 2 * size].cast("H")
            heads = ring[first:first + new].tolist() if first + new <= size else \
                ring[first:].tolist() + ring[:new - (size - first)].tolist()
        else:
            heads = []
        found: list[tuple] = []
        done: list[tuple[Chain, int, int, int]] = []
        walked = 0
        ok = True
        # -- the used side first (2.7.8): a head used and made available again since the last
        # look is matched to its first chain, walked from the new entries up to it (as poll does).
        pos = old_used
        unpack_used = _USED_ELEM.unpack_from
        for _ in range(moved):
            used_id, length = unpack_used(used, USED_RING + 8 * (pos & mask))
            chain = in_flight.pop(used_id, None)
            if chain is None:
                if walked < new and used_id in heads:
                    try:
                        stop = heads.index(used_id, walked) + 1
                    except ValueError:
                        stop = 0
                    if stop:
                        ok = self._walk(table, heads, walked, stop, old_avail, found)
                        walked = stop
                        if ok:
                            chain = in_flight.pop(used_id, None)
                if chain is None:  # USED_ID_NOT_IN_FLIGHT (or a walk that found an anomaly)
                    ok = False
                    break
            for index in ring_indices(chain):
                if owner[index] == used_id:
                    owner[index] = -1
            if length > chain.writable_len:  # USED_LEN_TOO_LARGE
                ok = False
                break
            done.append((chain, used_id, length, pos))
            pos = (pos + 1) & 0xFFFF
        if ok and walked < new:
            ok = self._walk(table, heads, walked, new, old_avail, found)
        if not ok:
            in_flight.clear()
            in_flight.update(saved_flight)
            owner[:] = saved_owner
            return None
        self.avail_idx, self.used_idx = avail_idx, used_idx
        return found, done

    def _walk(self, table: memoryview, heads: list[int], start: int, stop: int, old_avail: int,
              found: list) -> bool:
        """Walk the new entries ``start .. stop - 1`` into the in-flight set, each chain's record parts
        into ``found``; False at an anomaly (candidate): the caller undoes the poll."""
        config, in_flight, owner, size = self.config, self._in_flight, self._desc_owner, self.config.size
        queue, snaplen = config.index, self.snaplen
        unpack = DESC_STRUCT.unpack_from
        hot = self.hot
        lo, hi, data = hot if hot is not None else (0, -1, None)
        lazy = Chain.lazy
        for k in range(start, stop):
            head = heads[k]
            avail_idx = (old_avail + k) & 0xFFFF
            if head in in_flight:  # HEAD_REUSED_IN_FLIGHT
                return False
            # The chain: direct descriptors, readable before writable, in one region each, no loop
            # (2.7.4.2, 2.7.5, 2.7.5.3.1); its descriptors become its own (2.7.13.1). Else (an
            # indirect table, a buffer across regions, an anomaly) walk_split_chain reads it.
            plain = head < size
            args: list[int] = []
            indices = [head]
            parts: list = []
            spans: list[tuple[int, int]] = []
            readable = writable = 0
            left = snaplen
            seen_write = False
            i = head
            while plain:
                addr, length, flags, nxt = unpack(table, i << 4)
                if flags & _INDIRECT:
                    plain = False
                    break
                holder = owner[i]
                if holder >= 0 and holder != head and holder in in_flight:  # DESC_REUSED_IN_FLIGHT
                    return False
                owner[i] = head
                args += (addr, length, flags, i, nxt)
                if length and not (lo <= addr and addr + length <= hi):
                    found_region = self.region(addr, length)
                    if found_region is None:
                        plain = False
                        break
                    lo, hi, data = found_region
                if flags & _WRITE:
                    writable += length
                    seen_write = True
                    spans.append((addr, length))
                elif seen_write:
                    plain = False
                    break
                else:
                    readable += length
                    if left > 0 and length:
                        take = length if length <= left else left
                        parts.append(data[addr - lo:addr - lo + take])
                        left -= take
                if not flags & _NEXT:
                    break
                if nxt >= size or len(indices) >= size or nxt in indices:
                    plain = False
                    break
                indices.append(nxt)
                i = nxt
            if plain and readable + writable <= CHAIN_BYTES_LIMIT:
                n = len(indices)
                chain = lazy(queue, head, avail_idx, _new_lazy(_Lazy, (args, indices)), readable, writable)
                kept = b"".join(parts)
                found.append((chain, kept, readable > len(kept), split_chain_bytes(head, avail_idx, readable,
                                                                                   writable, n, args), spans))
            else:
                chain = walk_split_chain(config, self.memory, head, avail_idx=avail_idx, table=table,
                                         bounds=self.bounds)
                if chain.anomalies:
                    return False
                for index in ring_indices(chain):
                    holder = owner[index]
                    if holder >= 0 and holder != head and holder in in_flight:  # DESC_REUSED_IN_FLIGHT
                        return False
                    owner[index] = head
                found.append((chain, None, False, None, None))
            in_flight[head] = chain
        return True


class RingBatch:
    """What one poll of a :class:`FastTap` found, as tuples: the events of :meth:`TrackerTap.poll`.

    ``notify`` (set by the proxy) is the KICK or CALL that made it look: ``(kind, data, channel)``,
    recorded first. ``avail`` items are ``(chain, readable, truncated, chain bytes, writable spans)``
    (the tap keeps them until the chain is used), ``used`` items ``(chain, id, len, used_idx, chain
    bytes, readable, written, truncated)``.
    """

    __slots__ = ("avail", "blocks_of", "notify", "time_ns", "used")

    def __init__(self, blocks_of: QueueBlocks, time_ns: int, avail: list, used: list) -> None:
        self.blocks_of, self.time_ns, self.avail, self.used = blocks_of, time_ns, avail, used
        self.notify: tuple[int, bytes, int] | None = None

    def __len__(self) -> int:
        return len(self.avail) + len(self.used) + (self.notify is not None)

    @property
    def source(self) -> str:
        return self.blocks_of.source

    def blocks(self, iface: int) -> list[bytes]:
        """The pcapng blocks of the events, on interface ``iface`` (TraceWriter.block's bytes)."""
        q, ts = self.blocks_of, self.time_ns
        hi, lo = (ts >> 32) & 0xFFFFFFFF, ts & 0xFFFFFFFF
        out = []
        if self.notify is not None:
            kind, data, channel = self.notify
            out.append(q.notify(iface, hi, lo, kind, channel, data))
        avail_block, used_block = q.avail, q.used
        for _, readable, cut, cbytes, _ in self.avail:
            out.append(avail_block(iface, hi, lo, cbytes, readable, cut))
        for _, used_id, length, used_idx, cbytes, readable, written, cut in self.used:
            out.append(used_block(iface, hi, lo, used_id, length, used_idx, cbytes, readable, written, cut))
        return out

    def events(self) -> list[Event]:
        """The events themselves."""
        q, ts = self.blocks_of, self.time_ns
        source, queue, device_type, features, packed = q.source, q.queue, q.device_type, q.features, q.packed
        out = []
        if self.notify is not None:
            kind, data, channel = self.notify
            out.append(Event(EventKind(kind), ts, source, queue=queue,
                             direction=Direction.TO_DEVICE if kind == EventKind.KICK else Direction.TO_DRIVER,
                             data=data, device_type=device_type, channel=channel, features=features))
        for chain, readable, cut, _, _ in self.avail:
            out.append(Event(EventKind.AVAIL, ts, source, queue, Direction.TO_DEVICE, readable, device_type,
                             chain=chain, features=features, packed=packed, truncated=cut))
        for chain, used_id, length, used_idx, _, readable, written, cut in self.used:
            out.append(Event(EventKind.USED, ts, source, queue, Direction.TO_DRIVER, readable, device_type,
                             chain=chain, used=UsedElem(queue, used_id, length, used_idx), written=written,
                             features=features, packed=packed, truncated=cut))
        return out


class FastTap(TrackerTap):
    """A TrackerTap whose split rings are read by :class:`FastSplitTracker` (see the module docstring)."""

    __slots__ = ("blocks_of",)

    def __init__(self, config: QueueConfig, memory: GuestMemory, base: int, source: str, *,
                 snaplen: int = DEFAULT_SNAPLEN) -> None:
        super().__init__(config, memory, base, source, snaplen=snaplen)
        self.blocks_of = QueueBlocks(source, config.index, config.device_type, config.features,
                                     config.layout is Layout.PACKED, snaplen)

    def _make_tracker(self, config: QueueConfig, memory: GuestMemory, **start: Any) -> RingTracker:
        if config.layout is Layout.SPLIT:
            return FastSplitTracker(config, memory, snaplen=self.snaplen, **start)
        return super()._make_tracker(config, memory, **start)

    def poll_batch(self, time_ns: int) -> RingBatch | list[Event]:
        """A RingBatch (possibly empty) when the lean poll could read the rings, else TrackerTap's events."""
        tracker = self.tracker
        lean = tracker.poll_lean() if tracker.__class__ is FastSplitTracker else None
        if lean is None:
            return self.poll(time_ns)
        found, done = lean
        if not (found or done):
            return RingBatch(self.blocks_of, time_ns, found, [])
        snaplen, kept = self.snaplen, self._readable
        if len(kept) > 4 * self.config.size:  # chains dropped without a used element: forget the oldest
            for key in list(kept)[:len(kept) - 2 * self.config.size]:
                del kept[key]
        for n, entry in enumerate(found):
            chain = entry[0]
            if entry[1] is None:  # read by walk_split_chain: the bytes as TrackerTap reads them
                data, cut = self._bytes(chain, snaplen)
                entry = found[n] = (chain, data, cut, chain_bytes(chain), None)
            kept[id(chain)] = entry
        used: list = []
        hot = tracker.hot
        lo, hi, region = hot if hot is not None else (0, -1, None)
        for chain, used_id, length, used_idx in done:
            entry = kept.pop(id(chain), None)
            if entry is None or entry[0] is not chain:
                data, cut = self._bytes(chain, snaplen)
                cbytes, spans = chain_bytes(chain), None
            elif len(entry) == 5:
                _, data, cut, cbytes, spans = entry
            else:  # made available in a careful poll
                _, data, cut = entry
                cbytes, spans = chain_bytes(chain), None
            limit = length if length < snaplen else snaplen
            if spans is None:
                written = self._bytes(chain, limit, _WRITE)[0]
            else:
                parts = []
                left = limit
                for addr, size in spans:
                    if left <= 0:
                        break
                    if size:
                        take = size if size <= left else left
                        if not (lo <= addr and addr + take <= hi):
                            found_region = tracker.region(addr, take)
                            if found_region is None:  # no longer mapped as one region: as TrackerTap reads it
                                parts = None
                                break
                            lo, hi, region = found_region
                        parts.append(region[addr - lo:addr - lo + take])
                        left -= take
                written = b"".join(parts) if parts is not None else self._bytes(chain, limit, _WRITE)[0]
            # As TrackerTap: truncated when the readable bytes were, or fewer bytes than used->len were
            # kept (length <= writable_len here: a larger one is an anomaly, read carefully).
            used.append((chain, used_id, length, used_idx, cbytes, data, written, cut or len(written) < length))
        return RingBatch(self.blocks_of, time_ns, found, used)


class BlockSink:
    """A live session's trace writer: each flush's records in one write.

    Events go through :meth:`TraceWriter.block`; a :class:`RingBatch` becomes its blocks directly
    when the writer already has the batch's interface and would not cut its bytes further (its
    snap length is 0 or at least the tap's), else its events go through ``block`` too.
    """

    def __init__(self, writer: Any) -> None:
        self.writer = writer
        self._emit = getattr(writer, "_emit", None)  # TraceWriter's one write of whole blocks

    def __call__(self, records: list) -> int:
        """Write ``records`` (Events and RingBatches, in order); how many events that was."""
        writer = self.writer
        if self._emit is None:
            return writer.write_many(expand(records))
        parts: list[bytes] = []
        block = writer.block
        count = 0
        interfaces = None
        snaplen = writer.snaplen
        for item in records:
            if item.__class__ is RingBatch:
                if interfaces is None:
                    interfaces = writer.interfaces
                q = item.blocks_of
                iface = interfaces.get(q.source)
                if iface is None or (snaplen and snaplen < q.snaplen):
                    events = item.events()
                    parts.extend([block(event) for event in events])
                    count += len(events)
                    interfaces = None  # block() may have added the interface
                else:
                    parts.extend(item.blocks(iface))
                    count += len(item)
            else:
                parts.append(block(item))
                count += 1
        if parts:
            self._emit(b"".join(parts))
        writer.count += count
        return count


def expand(records: list) -> list[Event]:
    """Events and RingBatches as events only."""
    out: list[Event] = []
    for item in records:
        if item.__class__ is RingBatch:
            out.extend(item.events())
        else:
            out.append(item)
    return out


def fast_tap(config: QueueConfig, memory: GuestMemory, base: int, source: str, *,
             snaplen: int = DEFAULT_SNAPLEN) -> FastTap:
    """A tap factory for :class:`~vqtrace.vhost.proxy.ProxyEngine` (what ``vqtrace live`` uses)."""
    return FastTap(config, memory, base, source, snaplen=snaplen)
