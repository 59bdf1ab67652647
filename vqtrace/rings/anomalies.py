"""Every anomaly the ring readers report: a stable code, the rule it breaks, a summary.

Codes are part of the API (filters, trace files, tests and the TUI use them):
never rename one. Sections are virtio 1.4 (split ring 2.7, packed ring 2.8).
:func:`anomaly` builds the :class:`~vqtrace.model.Anomaly` for a code.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..model import Anomaly


@dataclass(frozen=True)
class AnomalyKind:
    """One kind of anomaly: its code, the section it cites for each ring layout, and a summary."""

    code: str
    split: str  # the section broken on a split ring
    packed: str  # the section broken on a packed ring
    summary: str


# -- chains (descriptor walking) ---------------------------------------------------------------
DESC_LOOP = "DESC_LOOP"
CHAIN_TOO_LONG = "CHAIN_TOO_LONG"
CHAIN_TOO_BIG = "CHAIN_TOO_BIG"
DESC_INDEX_RANGE = "DESC_INDEX_RANGE"
DESC_OUT_OF_MEMORY = "DESC_OUT_OF_MEMORY"
NESTED_INDIRECT = "NESTED_INDIRECT"
INDIRECT_WITH_NEXT = "INDIRECT_WITH_NEXT"
INDIRECT_BAD_LEN = "INDIRECT_BAD_LEN"
INDIRECT_NOT_NEGOTIATED = "INDIRECT_NOT_NEGOTIATED"
READABLE_AFTER_WRITABLE = "READABLE_AFTER_WRITABLE"
# -- the available side ---------------------------------------------------------------------
AVAIL_IDX_AHEAD = "AVAIL_IDX_AHEAD"
HEAD_REUSED_IN_FLIGHT = "HEAD_REUSED_IN_FLIGHT"
DESC_REUSED_IN_FLIGHT = "DESC_REUSED_IN_FLIGHT"
# -- the used side --------------------------------------------------------------------------
USED_ID_NOT_IN_FLIGHT = "USED_ID_NOT_IN_FLIGHT"
USED_LEN_TOO_LARGE = "USED_LEN_TOO_LARGE"
USED_IDX_AHEAD = "USED_IDX_AHEAD"
IN_ORDER_VIOLATION = "IN_ORDER_VIOLATION"
# -- packed ring specifics --------------------------------------------------------------------
PACKED_WRAP_MISMATCH = "PACKED_WRAP_MISMATCH"
PACKED_ID_RANGE = "PACKED_ID_RANGE"
PACKED_CHAIN_INCOMPLETE = "PACKED_CHAIN_INCOMPLETE"
# -- the ring itself ------------------------------------------------------------------------
RING_UNMAPPED = "RING_UNMAPPED"
RING_MISALIGNED = "RING_MISALIGNED"
EVENT_FLAGS_INVALID = "EVENT_FLAGS_INVALID"

KINDS: dict[str, AnomalyKind] = {kind.code: kind for kind in (
    AnomalyKind(DESC_LOOP, "virtio 1.4, 2.7.5.2", "virtio 1.4, 2.8.17",
                "the descriptor chain loops (NEXT leads back to a descriptor already in the chain)"),
    AnomalyKind(CHAIN_TOO_LONG, "virtio 1.4, 2.7.5.3.1", "virtio 1.4, 2.8.17",
                "the chain has more descriptors than the queue size"),
    AnomalyKind(CHAIN_TOO_BIG, "virtio 1.4, 2.7.5.2", "virtio 1.4, 2.8.17",
                "the chain's buffers total more than 2^32 bytes"),
    AnomalyKind(DESC_INDEX_RANGE, "virtio 1.4, 2.7.5", "virtio 1.4, 2.8.7",
                "a head, NEXT link or indirect index is outside its table"),
    AnomalyKind(DESC_OUT_OF_MEMORY, "virtio 1.4, 2.7.5", "virtio 1.4, 2.8.4",
                "a buffer or indirect table lies (partly) outside guest memory"),
    AnomalyKind(NESTED_INDIRECT, "virtio 1.4, 2.7.5.3.1", "virtio 1.4, 2.8.19",
                "an indirect table holds a descriptor with INDIRECT set"),
    AnomalyKind(INDIRECT_WITH_NEXT, "virtio 1.4, 2.7.5.3.1", "virtio 1.4, 2.8.19",
                "a descriptor has both INDIRECT and NEXT set (packed: INDIRECT inside a NEXT list)"),
    AnomalyKind(INDIRECT_BAD_LEN, "virtio 1.4, 2.7.5.3", "virtio 1.4, 2.8.7",
                "an indirect table length is zero or not a multiple of 16"),
    AnomalyKind(INDIRECT_NOT_NEGOTIATED, "virtio 1.4, 2.7.5.3.1", "virtio 1.4, 2.8.19",
                "INDIRECT is set but VIRTIO_F_INDIRECT_DESC was not negotiated"),
    AnomalyKind(READABLE_AFTER_WRITABLE, "virtio 1.4, 2.7.4.2", "virtio 1.4, 2.8.17",
                "a device-readable descriptor follows a device-writable one"),
    AnomalyKind(AVAIL_IDX_AHEAD, "virtio 1.4, 2.7.13", "virtio 1.4, 2.8.17",
                "the available index is ahead of the used index by more than the queue size"),
    AnomalyKind(HEAD_REUSED_IN_FLIGHT, "virtio 1.4, 2.7.13.1", "virtio 1.4, 2.8.21.1",
                "a head (packed: buffer id) was made available again while still in flight"),
    AnomalyKind(DESC_REUSED_IN_FLIGHT, "virtio 1.4, 2.7.13.1", "virtio 1.4, 2.8.16",
                "a descriptor of a chain still in flight was put in a new chain"),
    AnomalyKind(USED_ID_NOT_IN_FLIGHT, "virtio 1.4, 2.7.8", "virtio 1.4, 2.8.6",
                "the device used an id that is not in flight"),
    AnomalyKind(USED_LEN_TOO_LARGE, "virtio 1.4, 2.7.8.2", "virtio 1.4, 2.8.4",
                "the used length is larger than the chain's writable bytes"),
    AnomalyKind(USED_IDX_AHEAD, "virtio 1.4, 2.7.8", "virtio 1.4, 2.8.12",
                "the device used more chains than the driver made available"),
    AnomalyKind(IN_ORDER_VIOLATION, "virtio 1.4, 2.7.9", "virtio 1.4, 2.8.8",
                "with VIRTIO_F_IN_ORDER, a used entry does not match the batch it must close"),
    AnomalyKind(PACKED_WRAP_MISMATCH, "virtio 1.4, 2.8.1", "virtio 1.4, 2.8.1",
                "a descriptor's AVAIL/USED flags do not match the ring wrap counter"),
    AnomalyKind(PACKED_ID_RANGE, "virtio 1.4, 2.8.21.3", "virtio 1.4, 2.8.21.3",
                "a buffer id is not below the queue size"),
    AnomalyKind(PACKED_CHAIN_INCOMPLETE, "virtio 1.4, 2.8.17", "virtio 1.4, 2.8.17",
                "the first descriptor of a list is available before the rest of the list"),
    AnomalyKind(RING_UNMAPPED, "virtio 1.4, 2.6", "virtio 1.4, 2.6",
                "a ring area (descriptors, driver area, device area) is not in guest memory"),
    AnomalyKind(RING_MISALIGNED, "virtio 1.4, 2.7.1", "virtio 1.4, 2.8.11",
                "a ring area breaks the alignment table"),
    AnomalyKind(EVENT_FLAGS_INVALID, "virtio 1.4, 2.7.7.1", "virtio 1.4, 2.8.14",
                "notification suppression flags hold a reserved value"),
)}


def anomaly(code: str, message: str, *, packed: bool = False, queue: int | None = None, id: int | None = None,
            address: int | None = None) -> Anomaly:
    """The :class:`Anomaly` of ``code`` (one of :data:`KINDS`), citing the split or packed section."""
    kind = KINDS[code]
    return Anomaly(code, kind.packed if packed else kind.split, message, queue=queue, id=id, address=address)
