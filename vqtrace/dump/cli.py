"""The work behind ``vqtrace dump SUBCOMMAND`` (the argument parser is vqtrace/commands/dump.py)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import GuestMemoryError, UsageError
from ..output import dump_json
from . import report
from .snapshot import Extent, Snapshot, open_snapshot

if TYPE_CHECKING:
    # Each subcommand imports what it needs when it runs: `dump scan` loads numpy and the
    # scanner, not the ring readers, request decoders, QMP client or feature tables.
    from .analyze import Target
    from .qemu_status import QemuStatus
    from .qmp import QmpClient
    from .scan import Candidate

DEFAULT_MIN_SCORE = 0.6  # .scan.DEFAULT_MIN_SCORE, without importing numpy for `dump info`

EXIT_OK, EXIT_PROBLEM = 0, 1


@contextlib.contextmanager
def open_source(args: argparse.Namespace) -> Iterator[tuple[Snapshot, QmpClient | None]]:
    """The snapshot the arguments name (a file, or ``--pid``), and the QMP client ``--pid`` needed (else None)."""
    qmp: QmpClient | None = None
    snapshot: Snapshot | None = None
    try:
        if args.pid is not None:
            from .procmem import connect_qmp, open_process

            if args.snapshot:
                raise UsageError("give a snapshot FILE or --pid PID, not both")
            if args.base is not None:
                raise UsageError("--base applies to raw RAM files, not to --pid")
            qmp = connect_qmp(args.pid, args.qmp, timeout=10.0)
            memory = open_process(args.pid, qmp)
            extents = [Extent(r.guest_addr, r.size, r.host_addr, f"{r.name} ({r.kind})") for r in memory.layout]
            snapshot = Snapshot(f"pid {args.pid}", "process", memory, extents,
                                details={"qmp": qmp.address, "read": f"/proc/{args.pid}/mem (read-only, live)"})
        else:
            if not args.snapshot:
                raise UsageError("a snapshot FILE (or --pid PID) is required")
            snapshot = open_snapshot(args.snapshot, base=args.base)
        yield snapshot, qmp
    finally:
        if snapshot is not None:
            snapshot.close()
        if qmp is not None:
            qmp.close()


def _print(lines: list[str]) -> None:
    sys.stdout.write("\n".join(lines) + "\n")


def run_info(args: argparse.Namespace) -> int:
    with open_source(args) as (snapshot, _):
        if args.format == "json":
            print(dump_json(report.info_json(snapshot)))
        else:
            _print(report.info_text(snapshot))
    return EXIT_OK


def _min_score(args: argparse.Namespace) -> float:
    value = DEFAULT_MIN_SCORE if args.min_score is None else args.min_score
    if not 0 <= value <= 1:
        raise UsageError(f"--min-score must be between 0 and 1 (got {value})")
    return value


def run_scan(args: argparse.Namespace) -> int:
    from .scan import scan

    with open_source(args) as (snapshot, _):
        candidates = scan(snapshot, min_score=_min_score(args))
        if args.format == "json":
            print(dump_json({"snapshot": report.info_json(snapshot), "candidates": [c.to_json() for c in candidates]}))
        else:
            _print([report.describe(snapshot), *report.scan_text(candidates, verbose=not args.quiet)])
    return EXIT_OK


def _device_type(name: str | None) -> tuple[int, str]:
    if not name:
        return 0, ""
    from ..dissectors.features import find_device

    device = find_device(name)
    if device is None or device.id == 0:
        raise UsageError(f"--device {name!r}: unknown device type (try blk, net, console, rng, balloon, scsi, vsock)")
    return device.id, device.short


def _scan_targets(snapshot: Snapshot, args: argparse.Namespace) -> tuple[list[Target], list[Candidate]]:
    import dataclasses

    from ..dissectors.features import find_device
    from ..model import Layout
    from .analyze import Target
    from .scan import scan

    candidates = scan(snapshot, min_score=_min_score(args))
    chosen = candidates
    if args.candidate:
        numbers = {c.number: c for c in candidates}
        missing = [n for n in args.candidate if n not in numbers]
        if missing:
            raise UsageError(f"--candidate {missing[0]}: the scan found {len(candidates)} candidates "
                             f"(see 'vqtrace dump scan')")
        chosen = [numbers[n] for n in args.candidate]
    device_type, short = _device_type(args.device)
    targets = []
    for c in chosen:
        guess = short or c.device_guess or ""
        dtype = device_type or (find_device(guess).id if guess and find_device(guess) else 0)
        # The queue index is not in memory: take the queue whose requests the chains look like (5.2.2 blk
        # requestq 0, 5.1.2 net transmitq1 1, 5.6.2 scsi requestq 2), so requests decode as that queue's.
        index = {"net": 1, "scsi": 2}.get(guess, 0)
        config = c.config(index=index, features=args.features, device_type=dtype)
        if c.layout is Layout.PACKED:  # event suppression areas unknown: point them somewhere mapped, do not show
            config = dataclasses.replace(config, driver=config.desc, device=config.desc)
        note = f"scan candidate {c.number}, score {c.score:.2f}" + ("" if short or not guess else ", device guessed")
        targets.append(Target(config, f"candidate {c.number}", guess, note=note,
                              events_known=c.layout is not Layout.PACKED))
    return targets, candidates


def _queue_targets(args: argparse.Namespace) -> list[Target]:
    from .analyze import Target
    from .queue_spec import parse_queue_spec

    device_type, short = _device_type(args.device)
    targets = []
    for number, spec in enumerate(args.queue):
        parsed = parse_queue_spec(spec, default_index=number, features=args.features or 0, device_type=device_type)
        label = f"{short or 'queue'} queue {parsed.config.index}" if short else f"queue {parsed.config.index}"
        targets.append(Target(parsed.config, label, short, note="--queue", events_known=parsed.events_known))
    return targets


def _status_targets(status: QemuStatus, args: argparse.Namespace) -> list[Target]:
    from .analyze import targets_from_qemu

    targets = targets_from_qemu(status.devices, include_idle=args.all_queues)
    if not targets:
        raise UsageError(f"{status.source}: no queue of any device is set up (vring-desc 0): did the guest "
                         f"driver start? (--all-queues shows them anyway)")
    return targets


def run_analyze(args: argparse.Namespace) -> int:
    sources = sum(bool(x) for x in (args.qemu_status, args.queue, args.scan))
    if sources > 1:
        raise UsageError("choose one queue source: --qemu-status, --queue or --scan")
    if args.candidate and not args.scan:
        raise UsageError("--candidate needs --scan")
    if args.completed < 0:
        raise UsageError("--completed must not be negative")
    import json

    from .analyze import analyze
    from .qemu_status import collect, load_qemu_status, parse_qemu_status
    from .qmp import QmpClient

    with open_source(args) as (snapshot, qmp):
        extra: dict[str, Any] = {}
        if args.qemu_status:
            status = load_qemu_status(args.qemu_status)
            targets = _status_targets(status, args)
        elif args.queue:
            targets = _queue_targets(args)
        elif args.scan:
            targets, candidates = _scan_targets(snapshot, args)
            extra["candidates"] = [c.to_json() for c in candidates]
            if not targets:
                raise UsageError("the scan found no virtqueue to analyse (see 'vqtrace dump scan')")
        elif qmp is not None or args.qmp:
            if qmp is None:  # a snapshot file and a live QEMU: the user says they match (a stopped VM)
                with QmpClient(args.qmp) as live:
                    bundle, address = collect(live), live.address
            else:
                bundle, address = collect(qmp), qmp.address
            status = parse_qemu_status(json.dumps(bundle), f"QMP {address}")
            targets = _status_targets(status, args)
        else:
            raise UsageError("say where the queues are: --qemu-status FILE, --queue SPEC, --scan "
                             "(or --qmp SOCKET for a live QEMU)")
        reports = analyze(snapshot.memory, targets, completed=args.completed)
        if args.write:
            from .trace_out import write_trace

            written = write_trace(Path(args.write), snapshot, reports)
            extra["trace"] = {"path": args.write, "events": written}
        if args.format == "json":
            print(dump_json(report.analyze_json(snapshot, reports, extra)))
        else:
            lines = [report.describe(snapshot)]
            for queue_report in reports:
                lines += ["", *report.queue_text(queue_report, args.max_chains)]
            total = sum(len(r.anomalies) for r in reports)
            lines += ["", f"{len(reports)} queue{'s' if len(reports) != 1 else ''}, "
                          f"{sum(len(r.in_flight) for r in reports)} chains in flight, {total} "
                          f"anomal{'ies' if total != 1 else 'y'}"]
            if args.write:
                lines.append(f"trace: {args.write} ({extra['trace']['events']} events)")
            _print(lines)
    return EXIT_PROBLEM if any(r.anomalies for r in reports) else EXIT_OK


def run_qemu_status(args: argparse.Namespace) -> int:
    import json

    from .qemu_status import collect
    from .qmp import QmpClient

    with QmpClient(args.qmp) as qmp:
        if args.stop:
            qmp.execute("stop")
        bundle = collect(qmp, elements=args.elements)
    text = json.dumps(bundle, indent=1) + "\n"
    if args.output:
        try:
            Path(args.output).write_text(text)
        except OSError as err:
            raise UsageError(f"cannot write {args.output}: {err.strerror}") from None
        devices = len(bundle["devices"])
        queues = sum(len(d["queues"]) for d in bundle["devices"])
        print(f"{args.output}: {devices} devices, {queues} queues (VM {bundle['query-status'].get('status')})",
              file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _reader(snapshot: Snapshot, extent: Extent) -> Callable[[int, int], bytes]:
    from .lazy import LazyMemory

    memory = snapshot.memory

    def read(offset: int, length: int) -> bytes:
        region = memory.region_at(extent.guest_addr + offset)
        if isinstance(memory, LazyMemory) and region is not None and memory.is_lazy(region):
            buffer = bytearray(length)
            memory.stream(region, extent.guest_addr + offset - region.guest_addr, memoryview(buffer))
            return bytes(buffer)
        return memory.read(extent.guest_addr + offset, length)

    return read


def run_save(args: argparse.Namespace) -> int:
    from .elfwrite import write_elf_file
    from .progress import Progress

    output = Path(args.output)
    with open_source(args) as (snapshot, _):
        if args.snapshot and output.exists() and output.resolve() == Path(args.snapshot).resolve():
            raise UsageError("-o would overwrite the snapshot being read")
        ranges = [(e.guest_addr, e.size, _reader(snapshot, e)) for e in snapshot.extents]
        partial = output.with_name(output.name + f".part{os.getpid()}")
        try:
            with Progress(f"saving {output.name}", snapshot.total_size) as bar:
                size = write_elf_file(partial, ranges, snapshot.notes, progress=bar.update)
            os.replace(partial, output)
        except OSError as err:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise GuestMemoryError(f"cannot write {output}: {err.strerror or err}") from None
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        print(f"{output}: ELF core of {report.describe(snapshot)} ({size} bytes)", file=sys.stderr)
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "info": run_info, "scan": run_scan, "analyze": run_analyze, "qemu-status": run_qemu_status, "save": run_save,
}
