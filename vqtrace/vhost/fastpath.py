"""The live proxy's hot path: split rings read lean, ring events written as blocks at once.

At each kick or call the proxy reads what one queue did (chains made available, used
elements) and records it before it forwards the call. :class:`FastTap` does that for
the common case of a split ring without building events or chains, and keeps what must
happen before a call is forwarded short:

- a kick (already forwarded) walks the new chains: a short loop for direct descriptors
  in one memory region, which keeps the descriptors' values, copies the readable bytes
  and takes views of the writable buffers; the chain's record part is packed later, by
  its first record (:func:`shared_of`, once the call is forwarded);
- a call takes each used element's written bytes with one join of those views (the
  device wrote them all and they fit the snap length; else span by span), then the
  proxy forwards it; the records are made and written after that.

The pieces:

- :class:`FastSplitTracker` is a :class:`~vqtrace.rings.tracker.SplitTracker` (same
  state, same results) whose :meth:`~FastSplitTracker.poll_lean` reads the indices, the
  used elements and the new chains' descriptors with ``struct`` over cached views of the
  rings, and copies the bytes the trace keeps (readable ones up to the snap length when a
  chain is made available, written ones when it is used, before the call goes on). A
  chain it walks is kept as a plain list (an *entry*, ``E_*`` below) until something asks for its
  :class:`~vqtrace.model.Chain`: :attr:`in_flight`, :attr:`state` and the careful
  :meth:`poll` see the tracker's usual state (:meth:`FastSplitTracker.merge`).
  Whatever could be an anomaly (reserved flag bits, an index too far ahead, a head or
  descriptor reused in flight, an id not in flight, a used length over the chain's
  writable bytes, a chain the careful walker flags, IN_ORDER, a ring not mapped) makes it
  undo what it did in this poll and answer None: the careful ``poll`` then reads the
  rings and names the anomaly. Chains other than plain direct ones (indirect tables,
  buffers across two memory regions) are walked by
  :func:`~vqtrace.rings.chain.walk_split_chain`.
- :class:`FastTap` (a :class:`~vqtrace.vhost.tap.TrackerTap`) returns a
  :class:`RingBatch`: what :meth:`TrackerTap.poll` would return, kept as tuples.
  :meth:`RingBatch.blocks` makes the trace blocks directly (:mod:`vqtrace.vhost.records`);
  :meth:`RingBatch.events` makes the events (a printer, the TUI, tests). A careful poll's
  answer is TrackerTap's list of events.
- :class:`BlockSink` writes a session's records (events and batches) to a TraceWriter, each
  flush in one ``TraceWriter.write_blocks``.

Tests (``tests/test_vhost_fastpath.py``) hold FastSplitTracker equal to SplitTracker and
FastTap's events equal to TrackerTap's, poll for poll, with anomalies and without, and the
blocks equal to TraceWriter's, byte for byte.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any

from ..dissectors.virtqueue import SPLIT_DESC_SIZE, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE
from ..events import Direction, Event, EventKind
from ..memory import GuestMemory
from ..model import Chain, Descriptor, Layout, QueueConfig, RingState, UsedElem
from ..rings import anomalies as A
from ..rings.chain import CHAIN_BYTES_LIMIT, DESC_STRUCT, MAX_QUEUE_SIZE, ring_indices, walk_split_chain
from ..rings.split import AVAIL_RING, USED_RING
from ..rings.tracker import RingChanges, RingTracker, SplitTracker
from .records import (
    AVAIL_FIXED,
    AVAIL_TAILS,
    CHAIN_AND_SIZE,
    EPB_HEAD,
    EPB_HEAD_USED,
    USED_FIXED,
    USED_TAILS,
    QueueBlocks,
    chain_and_readable,
    chain_and_size,
    chain_bytes,
    sized,
)
from .tap import DEFAULT_SNAPLEN, TrackerTap

if TYPE_CHECKING:
    from ..trace.writer import TraceWriter

_NEXT, _WRITE, _INDIRECT = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT
_IDX = struct.Struct("<HH")  # 2.7.6 / 2.7.8: flags, idx
_USED_ELEM = struct.Struct("<II")  # 2.7.8: struct virtq_used_elem: le32 id, le32 len
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_UNMAPPED = (A.RING_UNMAPPED, 0)
_MAX_TABLE = MAX_QUEUE_SIZE * SPLIT_DESC_SIZE  # 2.7.5.3: an indirect table holds at most 2^15 entries
# The SplitTracker state poll_lean keeps (it reads and writes it as SplitTracker.poll does).
_STATE = ("_in_flight", "_desc_owner", "_pending", "_reported", "avail_idx", "used_idx", "avail_flags", "used_flags",
          "used_event", "avail_event", "bounds")

# A chain the lean poll read (a list): its head and avail index; ``args``: addr, len, flags, index,
# next of each descriptor, the record's order (then in_indirect, 1, for the entries of an indirect
# table: see _Lazy; None when walk_split_chain read it, E_CHAIN then set);
# the table entries it holds; its readable and writable lengths; the readable bytes kept and whether
# they were cut; what its AVAIL and USED records share (records.chain_and_readable); its writable
# (addr, len) spans (None: read them as TrackerTap does); its Chain, once made; what a USED record keeps
# when the device wrote all of its writable bytes and they fit the snap length (the u32 size, then views
# of the buffers: one join copies them; None: from the spans), valid for the memory table it was read in.
(E_HEAD, E_AVAIL_IDX, E_ARGS, E_INDICES, E_READABLE, E_WRITABLE, E_DATA, E_CUT, E_SHARED, E_SPANS, E_CHAIN,
 E_WRITTEN) = range(12)

#: What :meth:`FastSplitTracker.poll_lean` found: the entries made available, in ring order, and
#: the used elements, in ring order, each ``[entry or Chain, id, len, used_idx, written, truncated]``
#: (``written``, after its u32 size, None when the tap must read it: a chain of a careful poll).
LeanChanges = tuple[list[list], list[list]]
_NOTHING: LeanChanges = ([], [])
_NO_HEADS: list[int] = []
_new_desc = tuple.__new__


class _Lazy(tuple):
    """The lazy descriptors of a chain the lean walk read: ``(args, indices)`` (see ``E_ARGS``): one
    descriptor per ring index, five values each, then the entries of its indirect table, if any,
    six values each (the sixth is ``in_indirect``, 1)."""

    __slots__ = ()

    @property
    def ring_len(self) -> int:
        return len(self[1])

    @property
    def ring_indices(self) -> list[int]:
        return self[1]

    def materialize(self) -> list[Descriptor]:
        args, ring = self[0], 5 * len(self[1])
        out = [_new_desc(Descriptor, (args[k], args[k + 1], args[k + 2], args[k + 3], args[k + 4], 0, False))
               for k in range(0, ring, 5)]
        out += [_new_desc(Descriptor, (args[k], args[k + 1], args[k + 2], args[k + 3], args[k + 4], 0, True))
                for k in range(ring, len(args), 6)]
        return out


def shared_of(entry: list) -> bytes:
    """What the AVAIL and USED records of a lean entry share (records.chain_and_readable), made once: the
    short walk leaves it to the first record (after a call is forwarded), from the values it read."""
    shared = entry[E_SHARED]
    if shared is None:
        kept, n = entry[E_DATA], len(entry[E_INDICES])
        shared = entry[E_SHARED] = CHAIN_AND_SIZE[n].pack(entry[E_HEAD], entry[E_AVAIL_IDX], 0, n, entry[E_READABLE],
                                                          entry[E_WRITABLE], *entry[E_ARGS], len(kept)) + kept
    return shared


def chain_of(entry: list, queue: int) -> Chain:
    """The Chain of a lean entry (made once)."""
    chain = entry[E_CHAIN]
    if chain is None:
        chain = entry[E_CHAIN] = Chain.lazy(queue, entry[E_HEAD], entry[E_AVAIL_IDX],
                                            tuple.__new__(_Lazy, (entry[E_ARGS], entry[E_INDICES])),
                                            entry[E_READABLE], entry[E_WRITABLE])
    return chain


class FastSplitTracker(SplitTracker):
    """A SplitTracker with a lean poll for the common case (see the module docstring).

    ``snaplen`` bounds the bytes the lean poll copies per chain; ``kept`` is the tap's record of
    the readable bytes of chains in flight (TrackerTap): a chain of a lean poll goes there when
    :meth:`merge` makes it a Chain of the usual state.
    """

    def __init__(self, config: QueueConfig, memory: GuestMemory, *, snaplen: int = DEFAULT_SNAPLEN,
                 kept: dict | None = None, **start: Any) -> None:
        super().__init__(config, memory, **start)
        # Only where its state is the one this module knows, and without IN_ORDER batches (2.7.9).
        self.lean = (not config.in_order and config.layout is Layout.SPLIT
                     and all(hasattr(self, name) for name in _STATE) and isinstance(self._desc_owner, list)
                     and isinstance(self._in_flight, dict))
        self.snaplen = snaplen
        self.kept = {} if kept is None else kept
        self._lean: dict[int, list] = {}  # head -> entry: chains in flight the lean poll read, after _in_flight's
        self._event_idx = config.event_idx
        self._indirect = config.indirect
        self._size = config.size
        self._gen = -1
        self._views: tuple | None = None
        self.hot: tuple[int, int, memoryview] | None = None  # (start, end, bytes) of the region last read
        self.unwalked = 0  # new avail entries the last look left for the next (see poll_lean)

    # -- the usual state --------------------------------------------------------------------

    def merge(self) -> None:
        """Make the lean entries in flight Chains of ``_in_flight`` (their readable bytes go to ``kept``)."""
        lean = self._lean
        if not lean:
            return
        in_flight, kept, queue = self._in_flight, self.kept, self.config.index
        for head, entry in lean.items():
            chain = chain_of(entry, queue)
            in_flight[head] = chain
            if entry[E_DATA] is not None:
                kept[id(chain)] = (chain, entry[E_DATA], entry[E_CUT], shared_of(entry), entry[E_SPANS])
        lean.clear()

    @property
    def in_flight(self) -> dict[int, Chain]:
        self.merge()
        return self._in_flight

    def in_flight_count(self) -> int:
        """How many chains are in flight (without making Chains of the lean entries)."""
        return len(self._in_flight) + len(self._lean)

    @property
    def state(self) -> RingState:
        self.merge()
        return super().state

    def poll(self) -> RingChanges:
        """The careful poll (the lean entries become Chains first): every new chain is walked."""
        self.merge()
        changes = super().poll()
        self.unwalked = 0
        return changes

    # -- the lean poll ----------------------------------------------------------------------

    def _refresh(self) -> tuple | None:
        """Views of the three areas for this memory table (None: not all mapped, read carefully)."""
        config, memory, size = self.config, self.memory, self.config.size
        self._gen = memory.generation
        self._views = self.hot = None
        for entry in self._lean.values():  # views of buffers in the memory table before
            entry[E_WRITTEN] = None
        extra = 2 if config.event_idx else 0  # used_event after avail->ring[], avail_event after used->ring[]
        areas = ((config.driver, AVAIL_RING + 2 * size + extra), (config.device, USED_RING + 8 * size + extra),
                 (config.desc, SPLIT_DESC_SIZE * size))
        views = []
        for addr, length in areas:
            region = memory.region_at(addr)
            if region is None or addr + length > region.end:
                return None  # unmapped (the careful poll says so) or across two regions (a copy, not a view)
            offset = addr - region.guest_addr
            views.append(region.data[offset:offset + length])
        self.hot = (region.guest_addr, region.end, region.data)  # the descriptor table's
        self._views = tuple(views)
        return self._views

    def region(self, addr: int, length: int) -> tuple[int, int, memoryview] | None:
        """(start, end, bytes) of the region holding all of ``[addr, addr + length)``, or None."""
        region = self.memory.region_at(addr)
        if region is None or addr + length > region.end:
            return None
        self.hot = found = (region.guest_addr, region.end, region.data)
        return found

    def poll_lean(self, avail_limit: int | None = None, *, used_side: bool = True) -> LeanChanges | None:
        """What :meth:`poll` would find, when it finds no anomaly; None (nothing changed) otherwise.

        A partial look (the live proxy's: see :class:`FastTap`): ``used_side`` False leaves the used
        ring for a later look; ``avail_limit`` walks at most that many new chains beyond those the
        used elements need (None: all of them). The chains left are walked by the next look, from
        ``avail_idx`` on (:attr:`unwalked` counts them); its state is then the one a full poll
        reaches, as a chain's walk does not depend on the used elements between (a head or a
        descriptor the used side would have freed first makes the walk decline, and the careful
        poll takes the used side first).
        """
        if not self.lean or self._pending:
            return None
        memory = self.memory
        views = self._views if self._gen == memory.generation else self._refresh()
        if views is None:
            return None
        avail, used, table = views
        size = self._size
        avail_flags, avail_idx = _IDX.unpack_from(avail)
        used_flags, used_idx = _IDX.unpack_from(used)
        if (avail_flags | used_flags) & ~1:  # EVENT_FLAGS_INVALID
            return None
        if self._event_idx:
            used_event = _U16.unpack_from(avail, AVAIL_RING + 2 * size)[0]
            avail_event = _U16.unpack_from(used, USED_RING + 8 * size)[0]
        else:
            used_event = avail_event = None
        old_avail, old_used = self.avail_idx, self.used_idx
        new = (avail_idx - old_avail) & 0xFFFF
        moved = (used_idx - old_used) & 0xFFFF
        in_flight, lean = self._in_flight, self._lean
        if (new > size or moved > size or moved > len(in_flight) + len(lean) + new
                or ((avail_idx - used_idx) & 0xFFFF > size and (used_idx - avail_idx) & 0xFFFF > size)):
            return None  # AVAIL_IDX_AHEAD, USED_IDX_AHEAD
        if self._reported:
            self._reported.discard(_UNMAPPED)
        self.avail_flags, self.used_flags, self.used_event, self.avail_event = (avail_flags, used_flags, used_event,
                                                                                avail_event)
        if not used_side:
            moved = 0
            used_idx = old_used
        if avail_limit is None:
            avail_limit = new
        if not new and not moved:
            self.unwalked = 0
            return _NOTHING
        if not moved and not avail_limit:
            self.unwalked = new
            return _NOTHING
        owner = self._desc_owner
        # What this poll changes, to undo it should it meet an anomaly candidate.
        saved = (dict(in_flight), dict(lean)) if moved else None
        saved_owner = owner[:]
        mask = size - 1
        if new:
            first = old_avail & mask
            if new == 1:
                heads = [_U16.unpack_from(avail, AVAIL_RING + 2 * first)[0]]
            else:
                ring = avail[AVAIL_RING:AVAIL_RING + 2 * size].cast("H")
                heads = ring[first:first + new].tolist() if first + new <= size else \
                    ring[first:].tolist() + ring[:new - (size - first)].tolist()
        else:
            heads = _NO_HEADS
        found: list[list] = []
        done: list[list] = []
        walked = 0
        ok = True
        snaplen = self.snaplen
        hot = self.hot
        lo, hi, data = hot if hot is not None else (0, -1, None)
        # -- the used side first (2.7.8): a head used and made available again since the last
        # look is matched to its first chain, walked from the new entries up to it (as poll does).
        pos = old_used
        unpack_used = _USED_ELEM.unpack_from
        for _ in range(moved):
            used_id, length = unpack_used(used, USED_RING + 8 * (pos & mask))
            entry = lean.pop(used_id, None)
            if entry is None:
                chain = in_flight.pop(used_id, None)
                if chain is None and walked < new and used_id in heads:
                    try:
                        stop = heads.index(used_id, walked) + 1
                    except ValueError:
                        stop = 0
                    if stop:
                        ok = self._walk(table, heads, walked, stop, old_avail, found)
                        walked = stop
                        if ok:
                            entry = lean.pop(used_id, None)
                if entry is None:
                    if chain is None:  # USED_ID_NOT_IN_FLIGHT (or a walk that found an anomaly)
                        ok = False
                        break
                    for index in ring_indices(chain):
                        if owner[index] == used_id:
                            owner[index] = -1
                    if length > chain.writable_len:  # USED_LEN_TOO_LARGE
                        ok = False
                        break
                    done.append([chain, used_id, length, pos, None, False])
                    pos = (pos + 1) & 0xFFFF
                    continue
            for index in entry[E_INDICES]:
                if owner[index] == used_id:
                    owner[index] = -1
            if length > entry[E_WRITABLE]:  # USED_LEN_TOO_LARGE
                ok = False
                break
            # The bytes the device wrote, from the start of the writable part, up to the snap
            # length (TrackerTap: truncated when fewer than used->len are kept).
            views = entry[E_WRITTEN]
            if views is not None and length == entry[E_WRITABLE]:  # all of them: one copy
                done.append([entry, used_id, length, pos, b"".join(views), entry[E_CUT]])
                pos = (pos + 1) & 0xFFFF
                continue
            spans = entry[E_SPANS]
            written = None
            cut = False
            if spans is not None:
                left = limit = length if length < snaplen else snaplen
                parts: list = [b""]
                for addr, span in spans:
                    if left <= 0:
                        break
                    if span:
                        take = span if span <= left else left
                        if not (lo <= addr and addr + take <= hi):
                            region = self.region(addr, take)
                            if region is None:  # no longer in one region: the tap reads it as TrackerTap does
                                parts = None
                                break
                            lo, hi, data = region
                        parts.append(data[addr - lo:addr - lo + take])
                        left -= take
                if parts is not None:
                    kept_len = limit - left
                    parts[0] = _U32.pack(kept_len)
                    written = b"".join(parts)
                    cut = entry[E_CUT] or kept_len < length
            done.append([entry, used_id, length, pos, written, cut])
            pos = (pos + 1) & 0xFFFF
        if ok and walked < avail_limit:
            stop = avail_limit if avail_limit < new else new
            ok = self._walk(table, heads, walked, stop, old_avail, found)
            walked = stop
        if not ok:
            if saved is None:  # only chains were added
                for entry in found:
                    del lean[entry[E_HEAD]]
            else:
                in_flight.clear()
                in_flight.update(saved[0])
                lean.clear()
                lean.update(saved[1])
            owner[:] = saved_owner
            return None
        self.avail_idx, self.used_idx = (old_avail + walked) & 0xFFFF, used_idx
        self.unwalked = new - walked
        return found, done

    def _walk(self, table: memoryview, heads: list[int], start: int, stop: int, old_avail: int,
              found: list) -> bool:
        """Walk the new entries ``start .. stop - 1`` into the in-flight set (lean entries, in ``found``
        too); False at an anomaly (candidate): the caller undoes the poll.

        The common chain (direct descriptors in the ring's table, readable before writable, each
        buffer in the region last read) takes the short loop below; any other (an indirect table, a
        flag bit it does not know, a buffer elsewhere, a loop) is walked again by :meth:`_walk_one`.
        """
        in_flight, lean, owner, size = self._in_flight, self._lean, self._desc_owner, self._size
        snaplen = self.snaplen
        unpack = DESC_STRUCT.unpack_from
        hot = self.hot
        lo, hi, data = hot if hot is not None else (0, -1, None)
        add = found.append
        for k in range(start, stop):
            head = heads[k]
            avail_idx = (old_avail + k) & 0xFFFF
            if head in lean or head in in_flight:  # HEAD_REUSED_IN_FLIGHT
                return False
            entry = None
            if head < size:
                args: list[int] = []
                spans: list[tuple[int, int]] = []
                views: list = [b""]
                kept = b""
                readable = writable = 0
                i = head
                n = 1
                while True:
                    addr, length, flags, nxt = unpack(table, i << 4)
                    if flags & ~3 or not lo <= addr <= hi - length:  # (not NEXT | WRITE, or another region)
                        break
                    args += (addr, length, flags, i, nxt)
                    if flags & 2:  # VIRTQ_DESC_F_WRITE
                        writable += length
                        spans.append((addr, length))
                        views.append(data[addr - lo:addr - lo + length])
                    elif spans:  # readable after writable: the general walk names it
                        break
                    else:
                        if length and len(kept) < snaplen:
                            take = length if len(kept) + length <= snaplen else snaplen - len(kept)
                            kept += data[addr - lo:addr - lo + take]
                        readable += length
                    if not flags & 1:  # the last descriptor
                        if n < 9 and readable + writable <= CHAIN_BYTES_LIMIT:
                            if writable <= snaplen:
                                views[0] = _U32.pack(writable)
                            else:
                                views = None
                            entry = [head, avail_idx, args, None, readable, writable,
                                     kept, readable > len(kept), None, spans, None, views]
                        break
                    if nxt >= size or n >= size:
                        break
                    n += 1
                    i = nxt
            if entry is not None:
                # Its ring descriptors become its own (2.7.13.1), unless a chain in flight holds one.
                entry[3] = indices = args[3::5]  # (E_SHARED: made when its first record is, shared_of)
                for i in indices:
                    holder = owner[i]
                    if holder != head and holder >= 0 and (holder in lean or holder in in_flight):
                        return False  # DESC_REUSED_IN_FLIGHT
                    owner[i] = head
            else:
                entry = self._walk_one(table, head, avail_idx)
                if entry is None:
                    return False
                hot = self.hot
                lo, hi, data = hot if hot is not None else (0, -1, None)
            lean[head] = entry
            add(entry)
        return True

    def _walk_one(self, table: memoryview, head: int, avail_idx: int) -> list | None:
        """Walk the chain at ``head`` (any chain): its lean entry, or None at an anomaly (candidate)."""
        config, in_flight, lean, owner, size = self.config, self._in_flight, self._lean, self._desc_owner, self._size
        snaplen, indirect = self.snaplen, self._indirect
        unpack = DESC_STRUCT.unpack_from
        hot = self.hot
        lo, hi, data = hot if hot is not None else (0, -1, None)
        # The chain: direct descriptors, then at most one indirect table of them (2.7.5.3),
        # readable before writable, each in one memory region, at most the queue size of them
        # (2.7.4.2, 2.7.5, 2.7.5.3.1); its ring descriptors become its own (2.7.13.1). Else (a
        # buffer across regions, a loop or any anomaly) walk_split_chain reads it.
        plain = head < size
        args: list[int] = []
        indices = [head]
        parts: list = []
        spans: list[tuple[int, int]] = []
        readable = writable = 0
        left = snaplen
        seen_write = False
        i = head
        desc, entries, in_table = table, size, 0
        count = 1  # buffers so far, this one included
        while plain:
            addr, length, flags, nxt = unpack(desc, i << 4)
            if flags & _INDIRECT:
                # One table, last in the chain, negotiated, a non-zero multiple of 16 bytes, in memory.
                if (in_table or not indirect or flags & _NEXT or not length or length & 15
                        or length > _MAX_TABLE):
                    plain = False
                    break
                if not (lo <= addr and addr + length <= hi):
                    region = self.region(addr, length)
                    if region is None:
                        plain = False
                        break
                    lo, hi, data = region
                holder = owner[i]
                if holder >= 0 and holder != head and (holder in lean or holder in in_flight):
                    return None  # DESC_REUSED_IN_FLIGHT
                owner[i] = head
                args += (addr, length, flags, i, nxt)
                desc, entries, i, in_table = data[addr - lo:addr - lo + length], length >> 4, 0, 1
                continue
            if in_table:
                args += (addr, length, flags, i, nxt, 1)
                in_table += 1
            else:
                holder = owner[i]
                if holder >= 0 and holder != head and (holder in lean or holder in in_flight):
                    return None  # DESC_REUSED_IN_FLIGHT
                owner[i] = head
                args += (addr, length, flags, i, nxt)
            if length and not (lo <= addr and addr + length <= hi):
                region = self.region(addr, length)
                if region is None:
                    plain = False
                    break
                lo, hi, data = region
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
            if nxt >= entries or count >= size:  # (a loop runs into the second test)
                plain = False
                break
            count += 1
            if not in_table:
                indices.append(nxt)
            i = nxt
        if plain and readable + writable <= CHAIN_BYTES_LIMIT:
            n = len(indices)  # (readable, writable < 2^32: the record's u32 fields need no mask)
            kept = b"".join(parts)
            if in_table:
                in_table -= 1  # the table's entries
                shared = chain_and_size(n, in_table).pack(head, avail_idx, 0, n + in_table, readable, writable,
                                                          *args, len(kept)) + kept
            else:
                shared = CHAIN_AND_SIZE[n].pack(head, avail_idx, 0, n, readable, writable, *args, len(kept)) + \
                    kept if n < 9 else chain_and_size(n, 0).pack(head, avail_idx, 0, n, readable, writable, *args,
                                                                 len(kept)) + kept
            entry = [head, avail_idx, args, indices, readable, writable, kept, readable > len(kept), shared, spans,
                     None, None]
        else:
            chain = walk_split_chain(config, self.memory, head, avail_idx=avail_idx, table=table,
                                     bounds=self.bounds)
            if chain.anomalies:
                return None
            indices = ring_indices(chain)
            for index in indices:
                holder = owner[index]
                if holder >= 0 and holder != head and (holder in lean or holder in in_flight):
                    return None  # DESC_REUSED_IN_FLIGHT
                owner[index] = head
            entry = [head, avail_idx, None, indices, chain.readable_len, chain.writable_len, None, False, None,
                     None, chain, None]
        return entry


class RingBatch:
    """What one poll of a :class:`FastTap` found: the events of :meth:`TrackerTap.poll`, as tuples.

    ``notify`` (set by the proxy) is the KICK or CALL that made it look: ``(kind, data, channel)``,
    recorded first. ``avail`` holds lean entries (``E_*``), ``used`` items ``[entry or Chain, id,
    len, used_idx, written (after its u32 size), truncated]``.
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

    def blocks(self, out: list, iface: int) -> None:
        """Append the pcapng blocks of the events, on interface ``iface``, to ``out`` in pieces
        (joined, they are TraceWriter.block's bytes)."""
        q, ts = self.blocks_of, self.time_ns
        hi, lo = (ts >> 32) & 0xFFFFFFFF, ts & 0xFFFFFFFF
        if self.notify is not None:
            kind, data, channel = self.notify
            q.notify(out, iface, hi, lo, kind, channel, data)
        add = out.extend
        if self.avail:  # QueueBlocks.avail, inline
            head, head_cut, pack, tails = q.avail_head, q.avail_head_cut, EPB_HEAD.pack, AVAIL_TAILS
            for entry in self.avail:
                shared = entry[E_SHARED] or shared_of(entry)
                size = AVAIL_FIXED + len(shared)
                pad = -size & 3
                total = 32 + size + pad
                add((pack(6, total, iface, hi, lo, size, size, head_cut if entry[E_CUT] else head), shared,
                     tails[pad].pack(total)))
        if self.used:  # QueueBlocks.used, inline
            head, head_cut, pack, tails = q.used_head, q.used_head_cut, EPB_HEAD_USED.pack, USED_TAILS
            for item, used_id, length, used_idx, written, cut in self.used:
                shared = (item[E_SHARED] or shared_of(item)) if item.__class__ is list else item
                size = USED_FIXED + len(shared) + len(written)
                pad = -size & 3
                total = 32 + size + pad
                add((pack(6, total, iface, hi, lo, size, size, head_cut if cut else head, used_id & 0xFFFFFFFF,
                          length & 0xFFFFFFFF, used_idx & 0xFFFF), shared, written, tails[pad].pack(total)))

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
        for entry in self.avail:
            out.append(Event(EventKind.AVAIL, ts, source, queue, Direction.TO_DEVICE, entry[E_DATA], device_type,
                             chain=chain_of(entry, queue), features=features, packed=packed, truncated=entry[E_CUT]))
        for item, used_id, length, used_idx, written, cut in self.used:
            chain, data = (chain_of(item, queue), item[E_DATA]) if item.__class__ is list else item.chain_and_data
            out.append(Event(EventKind.USED, ts, source, queue, Direction.TO_DRIVER, data, device_type,
                             chain=chain, used=UsedElem(queue, used_id, length, used_idx), written=written[4:],
                             features=features, packed=packed, truncated=cut))
        return out


class _Used(bytes):
    """What the USED record of a chain of a careful poll shares with its AVAIL record
    (records.chain_and_readable), with ``chain_and_data``: its Chain and readable bytes."""

    chain_and_data: tuple[Chain, bytes]


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
            return FastSplitTracker(config, memory, snaplen=self.snaplen, kept=self._readable, **start)
        return super()._make_tracker(config, memory, **start)

    @property
    def in_flight(self) -> int:
        tracker = self.tracker
        return tracker.in_flight_count() if tracker.__class__ is FastSplitTracker else len(tracker.in_flight)

    @property
    def unwalked(self) -> int:
        """New avail entries the last look left for the next one (:meth:`poll_batch` ``avail_limit``)."""
        tracker = self.tracker
        return tracker.unwalked if tracker.__class__ is FastSplitTracker else 0

    def poll_batch(self, time_ns: int, avail_limit: int | None = None, *, used_side: bool = True
                   ) -> RingBatch | list[Event]:
        """A RingBatch (possibly empty) when the lean poll could read the rings, else TrackerTap's events.

        ``avail_limit`` and ``used_side`` make it a partial look (:meth:`FastSplitTracker.poll_lean`);
        a careful poll, and a packed ring, always read everything.
        """
        tracker = self.tracker
        lean = tracker.poll_lean(avail_limit, used_side=used_side) if tracker.__class__ is FastSplitTracker else None
        if lean is None:
            return self.poll(time_ns)
        found, done = lean
        queue = self.config.index
        for entry in found:
            if entry[E_DATA] is None:  # read by walk_split_chain: the bytes as TrackerTap reads them
                chain = entry[E_CHAIN]
                entry[E_DATA], entry[E_CUT] = self._bytes(chain, self.snaplen)
                entry[E_SHARED] = chain_and_readable(chain_bytes(chain), entry[E_DATA])
        for item in done:
            if item[4] is not None:
                continue
            # A chain of a careful poll, or one whose buffers moved between memory regions: as TrackerTap.
            snaplen, length = self.snaplen, item[2]
            if item[0].__class__ is list:
                entry = item[0]
                chain, data, cut = chain_of(entry, queue), entry[E_DATA], entry[E_CUT]
            else:
                chain = item[0]
                kept = self._readable.pop(id(chain), None)
                data, cut = (kept[1], kept[2]) if kept is not None and kept[0] is chain else \
                    self._bytes(chain, snaplen)
                shared = _Used(chain_and_readable(chain_bytes(chain), data))
                shared.chain_and_data = (chain, data)
                item[0] = shared
            written = self._bytes(chain, length if length < snaplen else snaplen, _WRITE)[0]
            item[4], item[5] = sized(written), cut or len(written) < length
        return RingBatch(self.blocks_of, time_ns, found, done)


class BlockSink:
    """A live session's trace writer: each flush's records in one write.

    Events go through :meth:`TraceWriter.block`; a :class:`RingBatch` becomes its blocks directly
    when the writer already has the batch's interface and would not cut its bytes further (its
    snap length is 0 or at least the tap's), else its events go through ``block`` too.
    """

    def __init__(self, writer: TraceWriter) -> None:
        self.writer = writer

    def __call__(self, records: list) -> int:
        """Write ``records`` (Events and RingBatches, in order); how many events that was."""
        writer = self.writer
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
                    item.blocks(parts, iface)
                    count += len(item)
            else:
                parts.append(block(item))
                count += 1
        writer.write_blocks(parts)  # the pieces of whole blocks, in order: one write
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
