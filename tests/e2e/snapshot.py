"""Collect QEMU's own view of its virtio devices over QMP, in the documented JSON
bundle format (docs/qemu-status.md), and derive QEMU's in-flight view from it.

Run by hand against a running QEMU started with ``-qmp unix:SOCK,server=on,wait=off``::

    python tests/e2e/snapshot.py --qmp SOCK -o status.json [--dump guest.elf] [--inflight inflight.json]
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the sibling modules importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "e2e"

from .procs import HarnessError
from .qmp import QMP, QMPError

BUNDLE_FORMAT = "vqtrace-qemu-status"
INFLIGHT_FORMAT = "vqtrace-qemu-inflight"
VERSION = 1
PACKED_FEATURE = "VIRTIO_F_RING_PACKED"
PACKED_DESC = struct.Struct("<QIHH")  # struct pvirtq_desc { le64 addr; le32 len; le16 id; le16 flags; } (2.8.13)
PACKED_DESC_F_NEXT = 1
PACKED_DESC_F_WRITE = 2
PACKED_DESC_F_INDIRECT = 4
PACKED_DESC_F_AVAIL = 1 << 7
PACKED_DESC_F_USED = 1 << 15


def _answer(qmp: QMP, command: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """``{"return": ...}`` or ``{"error": {"class", "desc"}}``, as QMP itself frames them."""
    try:
        return {"return": qmp.execute(command, arguments)}
    except QMPError as err:
        return {"error": {"class": err.error_class, "desc": err.desc}}


def is_packed(device_status: dict[str, Any]) -> bool:
    """Whether the driver negotiated VIRTIO_F_RING_PACKED (virtio 1.4, 2.8), from x-query-virtio-status."""
    transports = device_status.get("guest-features", {}).get("transports", [])
    return any(name.split(":", 1)[0] == PACKED_FEATURE for name in transports)


def parse_xp(text: str) -> bytes:
    """The bytes of an HMP ``xp /N{h,g}x`` answer (``ADDR: 0x.. 0x..`` lines), little-endian."""
    data = b""
    for line in text.splitlines():
        _, sep, values = line.partition(": ")
        words = values.split()
        if not sep or not words or not all(word.startswith("0x") for word in words):
            raise HarnessError(f"QEMU could not read guest memory: {line.strip()!r}")
        for word in words:
            data += int(word, 16).to_bytes((len(word) - 2) // 2, "little")
    if not data:
        raise HarnessError(f"empty xp answer: {text!r}")
    return data


def _xp(qmp: QMP, log: list[dict[str, Any]], address: int, count: int, unit: str) -> bytes:
    """Read guest-physical memory through QEMU; keep the command and answer in ``log``."""
    command_line = f"xp /{count}{unit}x {address:#x}"
    text = qmp.hmp(command_line)
    log.append({"arguments": {"command-line": command_line}, "return": text})
    return parse_xp(text)


def split_inflight_positions(avail_idx: int, used_idx: int, size: int) -> list[int]:
    """The avail-ring positions (free-running u16 indices) of chains made available and not used.

    virtio 1.4, 2.7.6 / 2.7.8: ``avail.idx`` and ``used.idx`` count chains modulo 2^16; with
    in-order completion the chains in flight sit at positions ``used.idx .. avail.idx-1``.
    """
    count = (avail_idx - used_idx) & 0xFFFF
    if count > size:
        raise HarnessError(f"avail.idx {avail_idx} - used.idx {used_idx} = {count} exceeds the queue size {size}")
    return [(used_idx + i) & 0xFFFF for i in range(count)]


def packed_popped_positions(last_avail_idx: int, used_idx: int, size: int) -> list[int]:
    """Descriptor-ring slots QEMU has taken and not yet used: ``used_idx .. last_avail_idx-1`` (wrapping)."""
    if not (0 <= last_avail_idx < size and 0 <= used_idx < size):
        raise HarnessError(f"packed indices out of range: last-avail {last_avail_idx}, used {used_idx}, size {size}")
    return [(used_idx + i) % size for i in range((last_avail_idx - used_idx) % size)]


def collect_bundle(qmp: QMP, elements: bool = True) -> dict[str, Any]:
    """Every device's x-query-virtio-status and every queue's x-query-virtio-queue-status.

    With ``elements`` (and a stopped VM), also QEMU's in-flight view: for a split queue,
    ``avail.idx`` (read by QEMU, HMP ``xp``) and ``x-query-virtio-queue-element`` for each slot
    ``used.idx .. avail.idx-1``, never for other slots (QEMU walks whatever a slot names and may
    mark the device broken on a stale one); for a packed queue, which has no element query,
    the descriptors QEMU has taken and not used (``xp`` of slots ``used-idx .. last-avail-idx-1``).
    """
    bundle: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "version": VERSION,
        "query-version": qmp.execute("query-version"),
        "query-status": qmp.execute("query-status"),
        "x-query-virtio": qmp.execute("x-query-virtio"),
        "devices": [],
    }
    for info in sorted(bundle["x-query-virtio"], key=lambda d: d["path"]):
        path = info["path"]
        status = qmp.execute("x-query-virtio-status", {"path": path})
        device: dict[str, Any] = {"path": path, "name": info["name"], "x-query-virtio-status": status, "queues": []}
        for queue in range(status["num-vqs"]):
            entry: dict[str, Any] = {"queue": queue}
            entry["x-query-virtio-queue-status"] = _answer(qmp, "x-query-virtio-queue-status",
                                                           {"path": path, "queue": queue})
            qstatus = entry["x-query-virtio-queue-status"].get("return")
            if elements and qstatus and qstatus["vring-desc"]:
                if is_packed(status):
                    _packed_popped(qmp, entry, qstatus)
                else:
                    _split_elements(qmp, entry, path, queue, qstatus)
            device["queues"].append(entry)
        bundle["devices"].append(device)
    return bundle


def _split_elements(qmp: QMP, entry: dict[str, Any], path: str, queue: int, qstatus: dict[str, Any]) -> None:
    log = entry.setdefault("human-monitor-command", [])
    avail_idx, = struct.unpack("<H", _xp(qmp, log, qstatus["vring-avail"] + 2, 1, "h"))  # virtq_avail.idx
    positions = split_inflight_positions(avail_idx, qstatus["used-idx"], qstatus["vring-num"])
    entry["x-query-virtio-queue-element"] = [
        {"index": index, **_answer(qmp, "x-query-virtio-queue-element", {"path": path, "queue": queue, "index": index})}
        for index in positions
    ]


def _packed_popped(qmp: QMP, entry: dict[str, Any], qstatus: dict[str, Any]) -> None:
    log = entry.setdefault("human-monitor-command", [])
    for slot in packed_popped_positions(qstatus["last-avail-idx"], qstatus["used-idx"], qstatus["vring-num"]):
        _xp(qmp, log, qstatus["vring-desc"] + slot * PACKED_DESC.size, 2, "g")


def without_elements(bundle: dict[str, Any]) -> dict[str, Any]:
    """A copy with only the status answers: what an analyser is given, so it cannot read the answer key."""
    copy = json.loads(json.dumps(bundle))
    for device in copy["devices"]:
        for queue in device["queues"]:
            queue.pop("x-query-virtio-queue-element", None)
            queue.pop("human-monitor-command", None)
    return copy


def inflight_view(bundle: dict[str, Any]) -> dict[str, Any]:
    """QEMU's view of what is in flight in each set-up queue, from a bundle collected with elements.

    Split: each in-flight slot's head id and descriptors, as x-query-virtio-queue-element
    walked them. Packed: each descriptor QEMU has taken and not used (buffer id, flags).
    """
    queues = []
    for device in bundle["devices"]:
        packed = is_packed(device["x-query-virtio-status"])
        for entry in device["queues"]:
            qstatus = entry["x-query-virtio-queue-status"].get("return")
            if not qstatus or not qstatus["vring-desc"]:
                continue
            view: dict[str, Any] = {
                "path": device["path"], "name": device["name"], "queue": entry["queue"],
                "layout": "packed" if packed else "split", "size": qstatus["vring-num"],
                "last-avail-idx": qstatus.get("last-avail-idx"), "used-idx": qstatus["used-idx"],
                "inuse": qstatus["inuse"],
            }
            log = entry.get("human-monitor-command", [])
            if packed:
                slots = packed_popped_positions(qstatus["last-avail-idx"], qstatus["used-idx"], qstatus["vring-num"])
                if slots and not log:
                    view["in-flight"] = None  # collected without elements
                else:
                    view["in-flight"] = [_packed_summary(slot, parse_xp(answer["return"]))
                                         for slot, answer in zip(slots, log, strict=True)]
            else:
                view["avail-idx"] = struct.unpack("<H", parse_xp(log[0]["return"]))[0] if log else None
                elements = entry.get("x-query-virtio-queue-element")
                view["in-flight"] = None if elements is None else [_split_summary(answer) for answer in elements]
            queues.append(view)
    return {"format": INFLIGHT_FORMAT, "version": VERSION, "queues": queues}


def _split_summary(answer: dict[str, Any]) -> dict[str, Any]:
    index = answer["index"]
    if "error" in answer:
        return {"index": index, "error": answer["error"]}
    element = answer["return"]
    return {
        "index": index,
        "head": element["index"],
        # QEMU 7.2 lists a chain's descriptors last first; this view keeps the chain's order.
        "descs": [{"addr": d["addr"], "len": d["len"], "flags": d["flags"]} for d in reversed(element["descs"])],
    }


def _packed_summary(slot: int, raw: bytes) -> dict[str, Any]:
    addr, length, buffer_id, flags = PACKED_DESC.unpack(raw)
    names = [name for bit, name in ((PACKED_DESC_F_NEXT, "next"), (PACKED_DESC_F_WRITE, "write"),
                                    (PACKED_DESC_F_INDIRECT, "indirect"), (PACKED_DESC_F_AVAIL, "avail"),
                                    (PACKED_DESC_F_USED, "used")) if flags & bit]
    return {"slot": slot, "id": buffer_id, "addr": addr, "len": length, "flags": names}


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Collect QEMU's virtio status bundle over QMP "
                                                 "(docs/qemu-status.md).")
    parser.add_argument("--qmp", type=Path, required=True, help="QEMU's QMP unix socket")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the bundle (JSON)")
    parser.add_argument("--dump", type=Path, help="also dump-guest-memory (paging=false) to this file")
    parser.add_argument("--inflight", type=Path, help="also write QEMU's in-flight view here")
    parser.add_argument("--no-stop", action="store_true", help="do not stop the VM first (no element queries)")
    args = parser.parse_args(argv)
    try:
        qmp = QMP(args.qmp)
        if not args.no_stop:
            qmp.execute("stop")
        if args.dump:
            qmp.execute("dump-guest-memory", {"paging": False, "protocol": f"file:{args.dump.resolve()}"},
                        timeout=600)
        bundle = collect_bundle(qmp, elements=not args.no_stop)
        write_json(args.output, bundle)
        if args.inflight:
            write_json(args.inflight, inflight_view(bundle))
        return 0
    except HarnessError as err:
        print(f"snapshot: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
