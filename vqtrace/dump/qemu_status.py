"""QEMU's own view of its virtio devices: the answers of the QMP ``x-query-virtio*`` commands.

``--qemu-status FILE`` takes:

- the bundle ``vqtrace dump qemu-status --qmp SOCKET -o FILE`` writes (format
  ``vqtrace-qemu-status``, docs/qemu-status.md): ``x-query-virtio``, then per device
  its ``path``, ``name``, ``x-query-virtio-status`` answer and per queue the
  ``x-query-virtio-queue-status`` answer (``{"return": ...}`` or ``{"error": ...}``),
  optionally ``x-query-virtio-queue-element`` answers;
- a QMP transcript: a JSON array or JSON lines of commands and answers as they
  crossed the socket (``{"execute": ..., "arguments": ...}`` followed by
  ``{"return": ...}``), or objects holding both (``{"execute", "arguments", "return"}``);
- bare answers, when the devices can be told apart: each queue status names its
  device (``"name": "virtio-blk"``), and is matched to the device of that name.

From each answer: the device type (``device-id``), the negotiated features (the
names in ``guest-features`` turned back into bits with the feature tables, plus
``unknown-dev-features``), and per queue the size (``vring-num``), the ring
addresses (``vring-desc``/``-avail``/``-used``, guest-physical, decimal; for a
packed queue the last two are the event suppression areas) and QEMU's indices
(``last-avail-idx``, ``used-idx``, ``inuse``, ``signalled-used``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..dissectors.features import feature_space
from ..errors import UsageError
from ..model import VIRTIO_F_RING_PACKED, Layout, QueueConfig

BUNDLE_FORMAT = "vqtrace-qemu-status"
BUNDLE_VERSION = 1


@dataclass
class QemuQueue:
    """One queue as QEMU reported it."""

    index: int
    size: int
    desc: int
    avail: int  # split: the available ring; packed: the driver event suppression area
    used: int  # split: the used ring; packed: the device event suppression area
    last_avail_idx: int | None = None
    used_idx: int | None = None
    inuse: int | None = None
    shadow_avail_idx: int | None = None
    signalled_used: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    elements: list[dict[str, Any]] = field(default_factory=list)  # x-query-virtio-queue-element answers

    @property
    def set_up(self) -> bool:
        """Whether the driver gave the queue its ring addresses."""
        return bool(self.size and self.desc)


@dataclass
class QemuDevice:
    """One virtio device as QEMU reported it."""

    path: str
    name: str  # QEMU's name: "virtio-blk", "virtio-net", ...
    device_id: int
    features: int
    status_names: list[str]
    broken: bool
    queues: list[QemuQueue]
    unknown_features: list[str] = field(default_factory=list)  # feature names no table knows
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def packed(self) -> bool:
        return bool(self.features >> VIRTIO_F_RING_PACKED & 1)

    def config(self, queue: QemuQueue) -> QueueConfig:
        layout = Layout.PACKED if self.packed else Layout.SPLIT
        return QueueConfig(queue.index, queue.size, queue.desc, queue.avail, queue.used, layout, self.features,
                           self.device_id)


@dataclass
class QemuStatus:
    """Every device of one QEMU status file."""

    devices: list[QemuDevice]
    source: str = ""
    vm_status: str | None = None  # query-status "status": "paused", "io-error", "running", ...
    version: str | None = None  # query-version, as "7.2.22"


def features_of(answer: dict[str, Any], device_id: int) -> tuple[int, list[str]]:
    """The bits of a ``guest-features`` answer (VirtioDeviceFeatures) and the names no table knows."""
    space = feature_space(device_id, vhost_user=True)
    bits, unknown = 0, []
    for key in ("transports", "dev-features"):
        for entry in answer.get(key) or []:
            name = str(entry).split(":", 1)[0].strip()
            bit = space.bit_of(name)
            if bit is None:
                unknown.append(name)
            else:
                bits |= 1 << bit
    extra = answer.get("unknown-dev-features")
    if isinstance(extra, int) and extra >= 0:
        bits |= extra
    return bits, unknown


def _int(value: Any, what: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError(f"{source}: {what} is not a non-negative integer ({value!r})")
    return value


def parse_queue(answer: dict[str, Any], source: str, index: int | None = None) -> QemuQueue:
    """A :class:`QemuQueue` from one ``x-query-virtio-queue-status`` answer (VirtQueueStatus)."""
    try:
        queue = QemuQueue(
            index=_int(answer.get("queue-index", index), "queue-index", source),
            size=_int(answer["vring-num"], "vring-num", source),
            desc=_int(answer["vring-desc"], "vring-desc", source),
            avail=_int(answer["vring-avail"], "vring-avail", source),
            used=_int(answer["vring-used"], "vring-used", source),
            raw=answer,
        )
    except KeyError as err:
        raise UsageError(f"{source}: a queue status without {err.args[0]!r}") from None
    for name, key in (("last_avail_idx", "last-avail-idx"), ("used_idx", "used-idx"), ("inuse", "inuse"),
                      ("shadow_avail_idx", "shadow-avail-idx"), ("signalled_used", "signalled-used")):
        if isinstance(answer.get(key), int):
            setattr(queue, name, answer[key])
    return queue


def parse_device(status: dict[str, Any], path: str, queues: list[QemuQueue], source: str) -> QemuDevice:
    """A :class:`QemuDevice` from one ``x-query-virtio-status`` answer (VirtioStatus) and its queues."""
    try:
        device_id = _int(status["device-id"], "device-id", source)
    except KeyError:
        raise UsageError(f"{source}: the status of {path or 'a device'} has no device-id") from None
    features, unknown = features_of(status.get("guest-features") or {}, device_id)
    statuses = [str(s).split(":", 1)[0] for s in (status.get("status") or {}).get("statuses", [])]
    return QemuDevice(path, str(status.get("name", "")), device_id, features, statuses,
                      bool(status.get("broken")), sorted(queues, key=lambda q: q.index), unknown, status)


def _unwrap(answer: Any) -> Any:
    """``{"return": X}`` -> X; anything else unchanged."""
    if isinstance(answer, dict) and "return" in answer and len(set(answer) - {"return", "id"}) == 0:
        return answer["return"]
    return answer


def _is_device_status(obj: Any) -> bool:
    return isinstance(obj, dict) and "device-id" in obj and ("guest-features" in obj or "num-vqs" in obj)


def _is_queue_status(obj: Any) -> bool:
    return isinstance(obj, dict) and "vring-desc" in obj and "vring-num" in obj


def from_bundle(doc: dict[str, Any], source: str) -> QemuStatus:
    """The bundle format (docs/qemu-status.md)."""
    version = doc.get("version")
    if isinstance(version, int) and version > BUNDLE_VERSION:
        raise UsageError(f"{source}: bundle version {version} is newer than this vqtrace reads ({BUNDLE_VERSION})")
    devices = []
    for entry in doc.get("devices") or []:
        if not isinstance(entry, dict):
            raise UsageError(f"{source}: a device entry is not an object")
        status = _unwrap(entry.get("x-query-virtio-status") or entry.get("status"))
        if "error" in (status or {}):
            continue
        if not _is_device_status(status):
            raise UsageError(f"{source}: device {entry.get('path', '?')} has no x-query-virtio-status answer")
        queues = []
        for number, item in enumerate(entry.get("queues") or []):
            answer = item.get("x-query-virtio-queue-status", item) if isinstance(item, dict) else item
            answer = _unwrap(answer)
            if not isinstance(answer, dict) or "error" in answer:
                continue  # QEMU refused (a queue that does not exist); nothing to analyse
            if not _is_queue_status(answer):
                raise UsageError(f"{source}: queue {number} of {entry.get('path', '?')} is not a queue status")
            queue = parse_queue(answer, source, item.get("queue", number) if isinstance(item, dict) else number)
            elements = item.get("x-query-virtio-queue-element") if isinstance(item, dict) else None
            queue.elements = [e for e in elements or [] if isinstance(e, dict)]
            queues.append(queue)
        devices.append(parse_device(status, str(entry.get("path", "")), queues, source))
    vm = _unwrap(doc.get("query-status"))
    qv = _unwrap(doc.get("query-version"))
    version_text = None
    if isinstance(qv, dict) and isinstance(qv.get("qemu"), dict):
        q = qv["qemu"]
        version_text = f"{q.get('major')}.{q.get('minor')}.{q.get('micro')}"
    return QemuStatus(devices, source, vm.get("status") if isinstance(vm, dict) else None, version_text)


def from_messages(messages: list[Any], source: str) -> QemuStatus:
    """A QMP transcript (commands and answers), or bare answers."""
    statuses: list[tuple[str, dict[str, Any]]] = []  # (path, answer)
    queues: list[tuple[str | None, int | None, dict[str, Any]]] = []  # (path, queue, answer)
    pending: dict[str, Any] | None = None
    for message in messages:
        if not isinstance(message, dict):
            continue
        if "execute" in message:
            pending = message
            if "return" not in message:
                continue
        answer = message.get("return", message if "execute" not in message else None)
        request = pending if pending is not None else {}
        args = request.get("arguments") or {}
        pending = None
        if _is_device_status(answer):
            statuses.append((str(args.get("path", "")), answer))
        elif _is_queue_status(answer):
            queues.append((args.get("path"), args.get("queue"), answer))
    if not statuses:
        raise UsageError(f"{source}: no x-query-virtio-status answer found (see 'vqtrace dump qemu-status')")
    devices = []
    by_name: dict[str, list[str]] = {}
    for path, answer in statuses:
        by_name.setdefault(str(answer.get("name", "")), []).append(path)
    for number, (path, answer) in enumerate(statuses):
        name = str(answer.get("name", ""))
        mine = []
        for qpath, qindex, qanswer in queues:
            if qpath is not None:
                if qpath != path:
                    continue
            elif qanswer.get("name") != name:
                continue
            elif len(by_name[name]) > 1:
                raise UsageError(f"{source}: queue answers without their request cannot be matched to one of "
                                 f"the {len(by_name[name])} devices named {name}; keep the commands in the file")
            mine.append(parse_queue(qanswer, source, qindex))
        devices.append(parse_device(answer, path or f"device {number}", mine, source))
    return QemuStatus(devices, source)


def load_qemu_status(path: str | os.PathLike[str]) -> QemuStatus:
    """Read a ``--qemu-status`` file in any of the accepted shapes (module doc)."""
    source = str(path)
    try:
        text = open(path, encoding="utf-8").read()  # noqa: SIM115
    except OSError as err:
        raise UsageError(f"cannot read {source}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{source}: not a JSON text file") from None
    return parse_qemu_status(text, source)


def parse_qemu_status(text: str, source: str = "qemu status") -> QemuStatus:
    """:func:`load_qemu_status` over the text of the file."""
    try:
        doc: Any = json.loads(text)
    except ValueError:
        doc = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    doc.append(json.loads(line))
                except ValueError as err:
                    raise UsageError(f"{source}: line {number} is not JSON ({err.msg})") from None
    if isinstance(doc, dict) and ("devices" in doc or doc.get("format") == BUNDLE_FORMAT):
        return from_bundle(doc, source)
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list):
        raise UsageError(f"{source}: expected a JSON object or array")
    return from_messages(doc, source)


def collect(qmp: Any, *, elements: bool = False) -> dict[str, Any]:
    """Ask a live QEMU for the bundle (:class:`~vqtrace.dump.qmp.QmpClient`): the answers, as QMP gave them.

    ``elements`` also asks ``x-query-virtio-queue-element`` for the in-flight slots of split queues
    (``used-idx`` .. the guest's ``avail->idx``), and only those: QEMU may mark a device broken when
    asked for a stale slot.
    """
    from .qmp import QmpError

    def answer(command: str, arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            return {"return": qmp.execute(command, arguments)}
        except QmpError as err:
            return {"error": {"desc": str(err)}}

    bundle: dict[str, Any] = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION}
    for command in ("query-version", "query-status"):
        bundle[command] = qmp.execute(command)
    bundle["x-query-virtio"] = qmp.execute("x-query-virtio")
    bundle["devices"] = []
    for info in sorted(bundle["x-query-virtio"], key=lambda d: d["path"]):
        status = qmp.execute("x-query-virtio-status", {"path": info["path"]})
        device: dict[str, Any] = {"path": info["path"], "name": info.get("name"), "x-query-virtio-status": status,
                                  "queues": []}
        packed = any(str(n).startswith("VIRTIO_F_RING_PACKED") for n in
                     (status.get("guest-features") or {}).get("transports", []))
        for queue in range(int(status.get("num-vqs", 0))):
            entry: dict[str, Any] = {"queue": queue, "x-query-virtio-queue-status": answer(
                "x-query-virtio-queue-status", {"path": info["path"], "queue": queue})}
            qstatus = entry["x-query-virtio-queue-status"].get("return")
            if elements and qstatus and qstatus.get("vring-desc") and not packed:
                entry["x-query-virtio-queue-element"] = _elements(qmp, answer, info["path"], queue, qstatus)
            device["queues"].append(entry)
        bundle["devices"].append(device)
    return bundle


def _elements(qmp: Any, answer: Any, path: str, queue: int, qstatus: dict[str, Any]) -> list[dict[str, Any]]:
    text = qmp.hmp(f"xp /1hx {qstatus['vring-avail'] + 2:#x}")  # struct virtq_avail { flags; idx; ring[] }
    try:
        avail_idx = int(text.split(":", 1)[1].split()[0], 16)
    except (IndexError, ValueError):
        return []
    count = (avail_idx - qstatus["used-idx"]) & 0xFFFF
    if count > qstatus["vring-num"]:
        return []
    out = []
    for k in range(count):
        index = (qstatus["used-idx"] + k) & 0xFFFF
        out.append({"index": index, **answer("x-query-virtio-queue-element",
                                             {"path": path, "queue": queue, "index": index})})
    return out
