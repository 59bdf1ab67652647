"""Text and JSON for ``vqtrace dump info``, ``scan`` and ``analyze``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .elfnotes import summarize_notes
from .snapshot import Snapshot

if TYPE_CHECKING:  # the analysis (numpy, the ring readers) loads only when a command needs it
    from .analyze import QueueReport
    from .scan import Candidate

FORMAT_NAMES = {"elf": "ELF core", "kdump": "kdump-compressed dump", "raw": "raw RAM", "process": "running process"}


def human(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift:
            return f"{size / (1 << shift):.1f} {unit}"
    return f"{size} B"


def describe(snapshot: Snapshot) -> str:
    """``guest.elf.zst: ELF core (zstd), 5 ranges, 128.3 MiB``."""
    what = FORMAT_NAMES.get(snapshot.format, snapshot.format)
    if snapshot.compression:
        what += f" ({snapshot.compression}-compressed)"
    return f"{snapshot.source}: {what}, {len(snapshot.extents)} ranges, {human(snapshot.total_size)}"


def info_json(snapshot: Snapshot) -> dict[str, Any]:
    notes = summarize_notes(snapshot.notes)
    return {
        "source": snapshot.source, "format": snapshot.format, "compression": snapshot.compression,
        "data_path": snapshot.data_path if snapshot.data_path != snapshot.source else None,
        "total_size": snapshot.total_size,
        "ranges": [{"start": e.guest_addr, "end": e.end, "size": e.size, "offset": e.offset, "name": e.name}
                   for e in snapshot.extents],
        "cpus": notes["cpus"], "notes": notes["notes"], "vmcoreinfo": notes.get("vmcoreinfo"),
        "details": snapshot.details,
    }


def info_text(snapshot: Snapshot) -> list[str]:
    doc = info_json(snapshot)
    lines = [describe(snapshot)]
    if doc["data_path"]:
        lines.append(f"  decompressed copy: {doc['data_path']}")
    where = {"process": "host address", "kdump": None}.get(snapshot.format, "file offset")
    lines.append(f"  memory ranges (guest-physical), {human(snapshot.total_size)} in all:")
    for extent in snapshot.extents:
        line = f"    0x{extent.guest_addr:012x}-0x{extent.end - 1:012x}  {human(extent.size):>10}"
        if where:
            line += f"  {where} 0x{extent.offset:x}"
        lines.append(line + (f"  {extent.name}" if extent.name else ""))
    if snapshot.format in ("elf", "kdump"):
        lines.append(f"  CPUs: {doc['cpus']} (NT_PRSTATUS notes)")
        for name, count in doc["notes"].items():
            lines.append(f"    note {name}: {count}")
        for key, value in (doc["vmcoreinfo"] or {}).items():
            lines.append(f"  VMCOREINFO {key}={value}")
    for key, value in snapshot.details.items():
        if value not in ("", None):
            lines.append(f"  {key}: {value}")
    return lines


def candidate_line(c: Candidate) -> str:
    if c.layout.value == "split":
        where = f"desc 0x{c.desc:x} avail 0x{c.driver:x} used 0x{c.device:x}"
        state = f"avail.idx {c.state['avail_idx']} used.idx {c.state['used_idx']}"
    else:
        where = f"desc 0x{c.desc:x}"
        state = f"driver next slot {c.state['next_avail']} wrap {c.state['avail_wrap']}"
    guess = f" looks like {c.device_guess}" if c.device_guess else ""
    return f"#{c.number:<3} {c.score * 100:5.1f}%  {c.layout.value:<6} size {c.size:<5} {where}  {state}{guess}"


def scan_text(candidates: list[Candidate], verbose: bool = True) -> list[str]:
    if not candidates:
        return ["no virtqueue found"]
    lines = [f"{len(candidates)} candidate ring{'s' if len(candidates) != 1 else ''} (best first):"]
    for c in candidates:
        lines.append(candidate_line(c))
        if verbose:
            lines += [f"       + {text}" for text in c.evidence]
            lines += [f"       - {text}" for text in c.problems]
    return lines


MAX_CHAIN_LINES = 12


def _rest(chains: list[Any]) -> str:
    """``... 241 more: net RX buffer 1536 bytes x230, net RX buffer 2048 bytes x11``."""
    counts: dict[str, int] = {}
    for chain in chains:
        counts[chain.summary] = counts.get(chain.summary, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    shown = ", ".join(f"{text} x{count}" for text, count in ranked[:3])
    return f"    ... {len(chains)} more: {shown}" + (", ..." if len(ranked) > 3 else "")


def queue_text(report: QueueReport, max_chains: int = MAX_CHAIN_LINES) -> list[str]:
    from .analyze import feature_names, layout_name

    config, state, target = report.config, report.state, report.target
    lines = [f"{target.label}: {layout_name(config)}, size {config.size}"
             + (f"  [{target.note}]" if target.note else "")]
    if config.packed:
        areas = f"desc 0x{config.desc:x}"
        if target.events_known:
            areas += f" driver events 0x{config.driver:x} device events 0x{config.device:x}"
    else:
        areas = f"desc 0x{config.desc:x} avail 0x{config.driver:x} used 0x{config.device:x}"
    names = " ".join(n.removeprefix("VIRTIO_F_") for n in feature_names(config)
                     if n.startswith("VIRTIO_F_")) or "none known"
    lines.append(f"  {areas}; features 0x{config.features:x} ({names})")
    if state is not None:
        if config.packed:
            line = (f"  driver next slot {state.avail_idx} (wrap {int(state.avail_wrap)}), device next slot "
                    f"{state.used_idx} (wrap {int(state.used_wrap)}), in flight {len(report.in_flight)}")
        else:
            line = (f"  avail.idx {state.avail_idx}  used.idx {state.used_idx}  in flight "
                    f"{(state.avail_idx - state.used_idx) & 0xFFFF}")
            if state.used_event is not None:
                line += f"  used_event {state.used_event} avail_event {state.avail_event}"
        q = target.qemu_queue
        if q is not None:
            line += f"  | QEMU: last_avail_idx {q.last_avail_idx} used_idx {q.used_idx} inuse {q.inuse}"
        lines.append(line)
    if report.in_flight:
        lines.append("  in flight:")
        shown = report.in_flight if max_chains <= 0 else report.in_flight[:max_chains]
        for chain in shown:
            where = f"slot {chain.position}" if config.packed else f"avail[{chain.position}]"
            state_text = f" ({chain.state})" if chain.state else ""
            lines.append(f"    {where} id {chain.id}: {chain.summary} in flight{state_text}")
        if len(shown) < len(report.in_flight):
            lines.append(_rest(report.in_flight[len(shown):]))
    else:
        lines.append("  nothing in flight")
    if report.completed:
        lines.append("  last completed (newest first; buffers as memory holds them now):")
        for chain in report.completed:
            where = f"slot {chain.position}" if config.packed else f"used[{chain.position}]"
            length = f" len {chain.used_len}" if chain.used_len is not None and not config.packed else ""
            lines.append(f"    {where} id {chain.id}{length}: {chain.summary}")
    if report.anomalies:
        lines.append(f"  anomalies ({len(report.anomalies)}):")
        lines += [f"    {a.code} ({a.section}): {a.message}" for a in report.anomalies]
    for note in report.notes:
        lines.append(f"  note: {note}")
    return lines


def analyze_json(snapshot: Snapshot, reports: list[QueueReport], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    from .analyze import anomaly_json

    anomalies = [anomaly_json(a) for r in reports for a in r.anomalies]
    doc: dict[str, Any] = {"snapshot": info_json(snapshot), "queues": [r.to_json() for r in reports],
                           "anomaly_count": len(anomalies)}
    if extra:
        doc.update(extra)
    return doc
