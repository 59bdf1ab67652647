"""The SCSI host device (virtio 1.4, 5.6): a target with logical units backed by images.

Queues (5.6.2): controlq, eventq, then the request queues. Each logical unit is a
direct-access block device (SBC-3) over a :class:`~.backend.BlockBackend` and
answers TEST UNIT READY, INQUIRY (standard data and VPD pages 00h, 80h, 83h),
READ CAPACITY (10) and (16), READ/WRITE (6), (10) and (16), REPORT LUNS, MODE
SENSE (6) and (10) (caching and control pages), REQUEST SENSE, SYNCHRONIZE CACHE
(10) and (16) and START STOP UNIT. Other operation codes get CHECK CONDITION with
fixed-format sense data (SPC-4 4.5.3): ILLEGAL REQUEST, INVALID COMMAND OPERATION
CODE; an LBA past the end gets LOGICAL BLOCK ADDRESS OUT OF RANGE.

Device Requirements followed (5.6.6.1.1): ``status`` is a SAM status code;
``response`` is VIRTIO_SCSI_S_OK when the command ran (whatever its status),
VIRTIO_SCSI_S_OVERRUN when the CDB asks for more data than the datain/dataout
buffers hold, VIRTIO_SCSI_S_BAD_TARGET for a target that does not exist, and
VIRTIO_SCSI_S_FAILURE for other driver errors, in particular both dataout and
datain without VIRTIO_SCSI_F_INOUT. 5.6.4.2: on reset ``sense_size`` is 96 and
``cdb_size`` 32. Task management functions (5.6.6.2) answer FUNCTION COMPLETE (every
command completes before it is used, so there is never a task to abort),
FUNCTION REJECTED for CLEAR ACA and unknown functions, BAD_TARGET / INCORRECT_LUN
for addresses that do not exist. With VIRTIO_SCSI_F_HOTPLUG, adding or removing a
LUN sends a VIRTIO_SCSI_T_TRANSPORT_RESET event (5.6.6.3).
"""

from __future__ import annotations

import hashlib
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

from construct import Construct

from ..dissectors import features as feature_tables
from ..dissectors import scsi as layout
from ..dissectors import scsi_cdb as t10
from ..errors import UsageError
from ..model import Chain
from . import scsi_data as spc
from .backend import BlockBackend, ExtentSet, open_backend
from .base import HELD, Activity, Device, feature_bits
from .chainio import ChainIO

_F = feature_bits(feature_tables.SCSI_FEATURES)
VIRTIO_SCSI_F_INOUT = _F["VIRTIO_SCSI_F_INOUT"]
VIRTIO_SCSI_F_HOTPLUG = _F["VIRTIO_SCSI_F_HOTPLUG"]

R = layout.RESPONSES
S_OK, S_OVERRUN, S_BAD_TARGET = R["VIRTIO_SCSI_S_OK"], R["VIRTIO_SCSI_S_OVERRUN"], R["VIRTIO_SCSI_S_BAD_TARGET"]
S_FAILURE, S_INCORRECT_LUN = R["VIRTIO_SCSI_S_FAILURE"], R["VIRTIO_SCSI_S_INCORRECT_LUN"]
S_FUNCTION_COMPLETE = layout.TMF_RESPONSES["VIRTIO_SCSI_S_FUNCTION_COMPLETE"]
S_FUNCTION_REJECTED = R["VIRTIO_SCSI_S_FUNCTION_REJECTED"]
RESPONSE_TEXT = {value: name.removeprefix("VIRTIO_SCSI_S_") for name, value in R.items()}
TMF = layout.TMF_SUBTYPES
TMF_TEXT = {value: name.removeprefix("VIRTIO_SCSI_T_TMF_") for name, value in TMF.items()}
GOOD, CHECK_CONDITION = t10.GOOD, t10.CHECK_CONDITION
OP = t10.OPCODES
SK = t10.SENSE_KEYS

#: The fixed parts of a request and its response, for the hot path (tests hold them equal
#: to virtio_scsi.cmd_req / virtio_scsi.cmd_resp): lun, id, task_attr, prio, crn; and
#: sense_len, residual, status_qualifier, status, response.
CMD_REQ_HDR = struct.Struct("<8sQBBB")
CMD_RESP_HDR = struct.Struct("<IIHBB")
EVENT = struct.Struct("<I8sI")  # struct virtio_scsi_event (tested against the layer)
CONTROLQ, EVENTQ = 0, 1
SENSE_SIZE_OFFSET, CDB_SIZE_OFFSET = 20, 24  # 5.6.4: offsets of sense_size and cdb_size
T_TRANSPORT_RESET = layout.EVENTS["VIRTIO_SCSI_T_TRANSPORT_RESET"]
EVT_RESET_RESCAN = layout.RESET_REASONS["VIRTIO_SCSI_EVT_RESET_RESCAN"]
EVT_RESET_REMOVED = layout.RESET_REASONS["VIRTIO_SCSI_EVT_RESET_REMOVED"]
SENSE_FIXED_SIZE = 18  # SPC-4 4.5.3 with ADDITIONAL SENSE LENGTH 10
MAX_EVENTS = 64

# (sense key, asc, ascq) of the conditions reported
INVALID_OPCODE = (SK["ILLEGAL REQUEST"], 0x20, 0x00)
LBA_OUT_OF_RANGE = (SK["ILLEGAL REQUEST"], 0x21, 0x00)
INVALID_FIELD_IN_CDB = (SK["ILLEGAL REQUEST"], 0x24, 0x00)
LUN_NOT_SUPPORTED = (SK["ILLEGAL REQUEST"], 0x25, 0x00)
WRITE_PROTECTED = (SK["DATA PROTECT"], 0x27, 0x00)
SAVING_NOT_SUPPORTED = (SK["ILLEGAL REQUEST"], 0x39, 0x00)
NO_SENSE = (SK["NO SENSE"], 0x00, 0x00)
WRITE_ERROR = (SK["MEDIUM ERROR"], 0x0C, 0x00)
UNRECOVERED_READ_ERROR = (SK["MEDIUM ERROR"], 0x11, 0x00)


def fixed_sense(key: int, asc: int, ascq: int) -> bytes:
    """Fixed-format sense data, current error (SPC-4 4.5.3), built with the dissector's layout."""
    return t10.fixed_sense.build({
        "response_code": 0x70, "obsolete": 0, "flags": key, "information": 0,
        "additional_sense_length": SENSE_FIXED_SIZE - 8, "command_specific_information": 0, "asc": asc,
        "ascq": ascq, "field_replaceable_unit_code": 0, "sense_key_specific": 0, "additional_sense_bytes": None})


def descriptor_sense(key: int, asc: int, ascq: int) -> bytes:
    """Descriptor-format sense data without descriptors (SPC-4 4.5.2), for REQUEST SENSE with DESC."""
    return t10.descriptor_sense.build({"response_code": 0x72, "flags": key, "asc": asc, "ascq": ascq,
                                       "desc_flags": 0, "additional_sense_length": 0, "descriptor": [],
                                       "trailing": None})


@dataclass
class LogicalUnit:
    """A direct-access logical unit over ``backend``."""

    backend: BlockBackend
    block_size: int = 512
    serial: str = ""
    written: ExtentSet = field(default_factory=ExtentSet)
    reads: int = 0
    writes: int = 0

    @property
    def readonly(self) -> bool:
        return self.backend.readonly

    @property
    def blocks(self) -> int:
        return self.backend.size // self.block_size


@dataclass
class Result:
    """How a command ended: SAM status, sense data, data for datain, dataout consumed, response."""

    status: int = GOOD
    sense: bytes = b""
    data: bytes | None = None  # datain bytes to return (already cut to the allocation length)
    transferred: int = 0  # datain bytes written directly (READ)
    consumed: int = 0  # dataout bytes used
    response: int = S_OK
    text: str = ""


#: The operation codes the target implements (those whose CDB it parses).
HANDLED = frozenset(OP[name] for name in (
    "TEST UNIT READY", "REQUEST SENSE", "READ(6)", "WRITE(6)", "INQUIRY", "MODE SENSE(6)", "START STOP UNIT",
    "READ CAPACITY(10)", "READ(10)", "WRITE(10)", "SYNCHRONIZE CACHE(10)", "MODE SENSE(10)", "READ(16)",
    "WRITE(16)", "SYNCHRONIZE CACHE(16)", "SERVICE ACTION IN(16)", "REPORT LUNS"))


def _check(condition: tuple[int, int, int], text: str = "") -> Result:
    return Result(CHECK_CONDITION, fixed_sense(*condition), text=text)


class ScsiDevice(Device):
    """A virtio-scsi host with LUNs on target 0 (``image``/``images``) or anywhere (``luns``)."""

    name: ClassVar[str] = "scsi"
    device_id: ClassVar[int] = 8
    prefix: ClassVar[str] = "virtio_scsi"
    config_struct = layout.virtio_scsi_config
    config_full_size = layout.SCSI_CONFIG_SIZE

    def __init__(self, image: str | None = None, *, images: list[str] | None = None,
                 luns: dict[tuple[int, int], BlockBackend] | None = None, size: int | None = None,
                 readonly: bool = False, block_size: int = 512, num_queues: int = 1, hotplug: bool = True,
                 inout: bool = False, vendor: str = "VQTRACE", product: str = "VIRTIO-SCSI DISK",
                 revision: str = "0.1", seg_max: int = 254, max_sectors: int = 0xFFFF, cmd_per_lun: int = 128,
                 **options: Any) -> None:
        super().__init__(**options)
        if block_size < 512 or block_size & (block_size - 1):
            raise UsageError(f"block_size {block_size}: a power of two of at least 512")
        if not 1 <= num_queues <= 0xFFFF:
            raise UsageError(f"num_queues {num_queues}: between 1 and 65535")
        backends: dict[tuple[int, int], BlockBackend] = dict(luns or {})
        paths = [image] if image is not None else []
        paths += images or []
        for n, path in enumerate(paths):
            backends[(0, n)] = open_backend(path, readonly=readonly)
        if not backends:
            backends[(0, 0)] = open_backend(size=size or 1 << 20, readonly=readonly)
        for target, lun in backends:
            if not (0 <= target <= 255 and 0 <= lun <= 0x3FFF):
                raise UsageError(f"LUN {target}:{lun}: target 0-255, LUN 0-16383 (5.6.6.1)")
        self.units: dict[tuple[int, int], LogicalUnit] = {
            key: LogicalUnit(b, block_size, f"VQ{key[0]:02d}{key[1]:05d}") for key, b in sorted(backends.items())}
        self.request_queues = num_queues
        self.offer_hotplug = hotplug
        self.offer_inout = inout
        self.vendor, self.product, self.revision = vendor, product, revision
        self.limits = {"seg_max": seg_max, "max_sectors": max_sectors, "cmd_per_lun": cmd_per_lun}
        self.counters: dict[str, int] = {}
        self.reset_state()

    def reset_state(self) -> None:
        # 5.6.4.2: on reset sense_size is 96 and cdb_size 32
        self.sense_size = layout.VIRTIO_SCSI_SENSE_DEFAULT_SIZE
        self.cdb_size = layout.VIRTIO_SCSI_CDB_DEFAULT_SIZE
        self.events: deque[bytes] = deque()
        self.events_missed = False

    # -- identity, features, configuration --------------------------------------------------------

    def queue_names(self) -> list[str]:
        return ["controlq", "eventq", *(f"request{n}" for n in range(self.request_queues))]

    def device_features(self) -> int:
        bits = []
        if self.offer_hotplug:
            bits.append(VIRTIO_SCSI_F_HOTPLUG)
        if self.offer_inout:
            bits.append(VIRTIO_SCSI_F_INOUT)
        return sum(1 << bit for bit in bits)

    def config_values(self) -> dict[str, Any]:
        return {"num_queues": self.request_queues, **self.limits, "event_info_size": layout.EVENT_SIZE,
                "sense_size": self.sense_size, "cdb_size": self.cdb_size, "max_channel": 0,
                "max_target": max(t for t, _ in self.units), "max_lun": 0x3FFF}

    def config_write(self, offset: int, data: bytes) -> bool:
        # 5.6.4.1: the driver may write sense_size and cdb_size, nothing else
        if len(data) != 4 or offset not in (SENSE_SIZE_OFFSET, CDB_SIZE_OFFSET):
            return False
        value = int.from_bytes(data, "little")
        if offset == SENSE_SIZE_OFFSET and value <= 252:
            self.sense_size = value
            return True
        if offset == CDB_SIZE_OFFSET and 6 <= value <= 260:
            self.cdb_size = value
            return True
        return False

    # -- hot-plug ----------------------------------------------------------------------------------

    def add_lun(self, target: int, lun: int, backend: BlockBackend, *, block_size: int = 512) -> Activity:
        """Attach a logical unit; with VIRTIO_SCSI_F_HOTPLUG a TRANSPORT_RESET (RESCAN) event tells the driver."""
        if (target, lun) in self.units:
            raise UsageError(f"LUN {target}:{lun} exists already")

        def work() -> None:
            self.units[(target, lun)] = LogicalUnit(backend, block_size, f"VQ{target:02d}{lun:05d}")
            self._event(T_TRANSPORT_RESET, target, lun, EVT_RESET_RESCAN)
        return self.run(work)

    def remove_lun(self, target: int, lun: int) -> Activity:
        """Detach a logical unit; with VIRTIO_SCSI_F_HOTPLUG a TRANSPORT_RESET (REMOVED) event."""
        def work() -> None:
            if self.units.pop((target, lun), None) is not None:
                self._event(T_TRANSPORT_RESET, target, lun, EVT_RESET_REMOVED)
        return self.run(work)

    def _event(self, event: int, target: int, lun: int, reason: int) -> None:
        if not self.has(VIRTIO_SCSI_F_HOTPLUG):
            return
        if len(self.events) >= MAX_EVENTS:
            self.events_missed = True  # 5.6.6.3: reported with VIRTIO_SCSI_T_EVENTS_MISSED
            return
        self.events.append(EVENT.pack(event, layout.lun_bytes(target, lun), reason))
        self._deliver_events()

    def _deliver_events(self) -> None:
        held = self.held[EVENTQ]
        while self.events and held:
            chain, io = held.popleft()
            message = self.events.popleft()
            if self.events_missed:
                kind = int.from_bytes(message[:4], "little") | layout.VIRTIO_SCSI_T_EVENTS_MISSED
                message = kind.to_bytes(4, "little") + message[4:]
                self.events_missed = False
            done = io.write(0, message)
            self.complete(EVENTQ, chain, done, f"scsi event 0x{int.from_bytes(message[:4], 'little'):x}")

    # -- queues ------------------------------------------------------------------------------------

    def process(self, index: int, chain: Chain, io: ChainIO) -> int | None:
        if index == CONTROLQ:
            return self._control(index, chain, io)
        if index == EVENTQ:
            if io.readable_len or io.writable_len < layout.EVENT_SIZE or self.memory_fault(io, index):
                self._report("SCSI_EVENT_BUFFER", "virtio 1.4, 5.6.6.3.1",
                             f"eventq buffer of {io.writable_len} device-writable bytes (and {io.readable_len} "
                             f"readable); it needs {layout.EVENT_SIZE}", queue=index, id=chain.id)
                return 0
            self.hold(index, chain, io)
            return HELD
        return self._command(index, chain, io)

    def after_kick(self, index: int) -> None:
        if index == EVENTQ:
            self._deliver_events()

    def _count(self, key: str) -> None:
        self.counters[key] = self.counters.get(key, 0) + 1

    def _command(self, index: int, chain: Chain, io: ChainIO) -> int:
        if io.writable_len < CMD_RESP_HDR.size or not io.writable_ok(0, CMD_RESP_HDR.size):
            self._report("SCSI_NO_RESPONSE", "virtio 1.4, 5.6.6.1",
                         f"request has {io.writable_len} device-writable bytes; the response needs "
                         f"{CMD_RESP_HDR.size} plus sense_size", queue=index, id=chain.id)
            self.describe("scsi request without response buffer")
            return 0
        sense_size, cdb_size = self.sense_size, self.cdb_size
        header = CMD_REQ_HDR.size + cdb_size
        datain_at = CMD_RESP_HDR.size + sense_size
        if io.unmapped:
            self.memory_fault(io, index)
            return self._respond(io, Result(response=S_FAILURE, text="buffers outside guest memory"), 0, 0)
        if io.readable_len < header:
            self._report("SCSI_SHORT_REQUEST", "virtio 1.4, 5.6.6.1",
                         f"request of {io.readable_len} device-readable bytes; lun, id, task_attr, prio, crn and "
                         f"a {cdb_size}-byte cdb need {header}", queue=index, id=chain.id)
            return self._respond(io, Result(response=S_FAILURE, text="short request"), 0, 0)
        if io.writable_len < datain_at:
            self._report("SCSI_SHORT_RESPONSE", "virtio 1.4, 5.6.6.1",
                         f"response buffer of {io.writable_len} bytes is shorter than {datain_at} "
                         f"(12 + sense_size {sense_size}): sense data is cut", queue=index, id=chain.id)
        raw = io.read(0, header)
        lun, tag, _attr, _prio, _crn = CMD_REQ_HDR.unpack_from(raw)
        cdb = raw[CMD_REQ_HDR.size:header]
        dataout = io.readable_len - header
        datain = max(0, io.writable_len - datain_at)
        name = t10.OPCODE_NAMES.get(cdb[0], f"opcode 0x{cdb[0]:02x}")
        self._count(name)
        if dataout and datain and not self.has(VIRTIO_SCSI_F_INOUT):  # 5.6.6.1.1: immediately FAILURE
            self._report("SCSI_INOUT", "virtio 1.4, 5.6.6.1.1",
                         "request with both dataout and datain without VIRTIO_SCSI_F_INOUT", queue=index, id=chain.id)
            return self._respond(io, Result(response=S_FAILURE, text=name), dataout, datain)
        try:
            result = self._execute(lun, cdb, io, header, dataout, datain_at, datain)
        except OSError as err:  # the image failed: MEDIUM ERROR, WRITE ERROR or UNRECOVERED READ ERROR
            self._report("SCSI_BACKEND_ERROR", "virtio 1.4, 5.6.6.1.1", f"{name}: {err.strerror or err}",
                         queue=index, id=chain.id)
            writing = cdb[0] in (OP["WRITE(6)"], OP["WRITE(10)"], OP["WRITE(16)"])
            result = _check(WRITE_ERROR if writing else UNRECOVERED_READ_ERROR, "image error")
        result.text = f"{name} {result.text}".strip()
        self.describe(f"scsi {result.text} id={tag}")
        return self._respond(io, result, dataout, datain)

    def _respond(self, io: ChainIO, result: Result, dataout: int, datain: int) -> int:
        """Write the response (5.6.6.1): header, sense, then datain; the used length covers them."""
        sense_size = self.sense_size
        datain_at = CMD_RESP_HDR.size + sense_size
        transferred = result.transferred
        if result.data is not None and result.response == S_OK:
            transferred = io.write(datain_at, result.data) if datain_at < io.writable_len else 0
        sense = result.sense[:sense_size]
        if datain:
            residual = datain - transferred
        elif dataout:
            residual = dataout - result.consumed
        else:
            residual = 0
        io.write(0, CMD_RESP_HDR.pack(len(sense), residual, 0, result.status, result.response))
        if transferred:
            io.fill(CMD_RESP_HDR.size, sense_size)  # the whole sense area before datain (2.7.8.2)
        if sense:
            io.write(CMD_RESP_HDR.size, sense)
        key = "S_" + RESPONSE_TEXT.get(result.response, str(result.response))
        self._count(key)
        if not self._last_summary:
            self.describe(f"scsi {result.text} -> {key[2:]}")
        else:
            self.describe(self._last_summary + f" -> {key[2:]} status=0x{result.status:02x}")
        return io.written

    # -- commands ----------------------------------------------------------------------------------

    def _execute(self, lun: bytes, cdb: bytes, io: ChainIO, data_at: int, dataout: int, datain_at: int,
                 datain: int) -> Result:
        opcode = cdb[0]
        if lun[0] == 0xC1 and lun[1] == 0x01:  # the REPORT LUNS well-known logical unit (5.6.6.1)
            target, unit, wlun = 0, None, True
        elif lun[0] == 1:
            target, number = lun[1], (lun[2] << 8 | lun[3]) & 0x3FFF
            unit, wlun = self.units.get((target, number)), False
        else:
            return Result(response=S_BAD_TARGET, text=f"lun {lun.hex()}")
        if not wlun and not any(t == target for t, _ in self.units):
            return Result(response=S_BAD_TARGET, text=f"target {target}")
        length = t10.cdb_length(opcode)
        parsed = self._parse_cdb(cdb, length)
        if parsed is None and opcode in HANDLED:  # the CDB does not fit in cdb_size (5.6.4)
            return _check(INVALID_FIELD_IN_CDB, f"CDB longer than cdb_size {len(cdb)}")
        if opcode == OP["REPORT LUNS"]:
            return self._report_luns(target, parsed, datain)
        if opcode == OP["INQUIRY"]:
            return self._inquiry(unit, wlun, parsed, datain)
        if opcode == OP["REQUEST SENSE"]:
            condition = LUN_NOT_SUPPORTED if unit is None and not wlun else NO_SENSE
            desc = bool(parsed.flags & t10.CDB_FLAGS["DESC"])
            data = descriptor_sense(*condition) if desc else fixed_sense(*condition)
            return self._alloc(data, parsed.allocation_length8, datain)
        if wlun:
            if opcode == OP["TEST UNIT READY"]:
                return Result()
            return _check(INVALID_OPCODE)
        if unit is None:
            return _check(LUN_NOT_SUPPORTED, f"lun {lun[1]}:{(lun[2] << 8 | lun[3]) & 0x3FFF}")
        if opcode in (OP["TEST UNIT READY"], OP["START STOP UNIT"]):
            return Result()
        if opcode == OP["READ CAPACITY(10)"]:
            if not parsed.rc_flags & 1 and parsed.lba32:  # SBC-3 5.15: LBA must be 0 without PMI
                return _check(INVALID_FIELD_IN_CDB)
            data = t10.read_capacity10_data.build({"returned_logical_block_address": min(unit.blocks - 1, 0xFFFFFFFF),
                                                   "logical_block_length": unit.block_size})
            return self._alloc(data, len(data), datain)
        if opcode == OP["SERVICE ACTION IN(16)"] and cdb[1] & 0x1F == t10.READ_CAPACITY_16:
            data = t10.read_capacity16_data.build({
                "returned_logical_block_address": unit.blocks - 1, "logical_block_length": unit.block_size,
                "protection": 0, "exponents": 0, "provisioning": 0, "reserved": bytes(16)})
            return self._alloc(data, parsed.allocation_length32, datain)
        if opcode in (OP["READ(6)"], OP["READ(10)"], OP["READ(16)"]):
            return self._read(unit, parsed, io, datain_at, datain)
        if opcode in (OP["WRITE(6)"], OP["WRITE(10)"], OP["WRITE(16)"]):
            return self._write(unit, parsed, io, data_at, dataout)
        if opcode in (OP["MODE SENSE(6)"], OP["MODE SENSE(10)"]):
            return self._mode_sense(unit, opcode, parsed, datain)
        if opcode in (OP["SYNCHRONIZE CACHE(10)"], OP["SYNCHRONIZE CACHE(16)"]):
            lba = parsed.lba32 if opcode == OP["SYNCHRONIZE CACHE(10)"] else parsed.lba64
            count = parsed.number_of_blocks16 if opcode == OP["SYNCHRONIZE CACHE(10)"] else parsed.number_of_blocks32
            if lba + count > unit.blocks:
                return _check(LBA_OUT_OF_RANGE, f"lba={lba}")
            unit.backend.flush()
            return Result(text=f"lba={lba} blocks={count}")
        return _check(INVALID_OPCODE)

    @staticmethod
    def _parse_cdb(cdb: bytes, length: int | None) -> Any:
        key = t10.cdb_key(cdb[:2], len(cdb))
        layout_ = t10.CDB_LAYOUTS.get(key) if key is not None else None
        if layout_ is None or length is None:
            return None
        return _compiled(layout_).parse(cdb[:length])

    @staticmethod
    def _alloc(data: bytes, allocation: int, datain: int) -> Result:
        """Data cut to the allocation length; more than the datain buffer holds is an OVERRUN (5.6.6.1.1)."""
        data = data[:allocation]
        if len(data) > datain:
            return Result(response=S_OVERRUN, text=f"needs {len(data)} bytes, datain has {datain}")
        return Result(data=data)

    def _transfer(self, unit: LogicalUnit, parsed: Any) -> tuple[int, int]:
        if hasattr(parsed, "lba21"):  # READ(6)/WRITE(6): 21-bit LBA, length 0 means 256 (SBC-3 5.13)
            return parsed.lba21 & 0x1FFFFF, parsed.transfer_length8 or 256
        lba = parsed.lba64 if hasattr(parsed, "lba64") else parsed.lba32
        return lba, parsed.get("transfer_length16", parsed.get("transfer_length32", 0))

    def _read(self, unit: LogicalUnit, parsed: Any, io: ChainIO, datain_at: int, datain: int) -> Result:
        lba, blocks = self._transfer(unit, parsed)
        text = f"lba={lba} blocks={blocks}"
        if lba + blocks > unit.blocks:
            return _check(LBA_OUT_OF_RANGE, text)
        size = blocks * unit.block_size
        if size > datain:
            return Result(response=S_OVERRUN, text=text)
        if size > self.max_request:
            self._report("SCSI_OVERSIZED", "virtio 1.4, 5.6.4", f"READ of {size} bytes", id=io.chain.id)
            return _check(INVALID_FIELD_IN_CDB, text)
        done = io.write(datain_at, unit.backend.read(lba * unit.block_size, size)) if size else 0
        unit.reads += 1
        return Result(transferred=done, text=text)

    def _write(self, unit: LogicalUnit, parsed: Any, io: ChainIO, data_at: int, dataout: int) -> Result:
        lba, blocks = self._transfer(unit, parsed)
        text = f"lba={lba} blocks={blocks}"
        if unit.readonly:
            return _check(WRITE_PROTECTED, text)
        if lba + blocks > unit.blocks:
            return _check(LBA_OUT_OF_RANGE, text)
        size = blocks * unit.block_size
        if size > dataout:
            return Result(response=S_OVERRUN, text=text)
        if size > self.max_request:
            self._report("SCSI_OVERSIZED", "virtio 1.4, 5.6.4", f"WRITE of {size} bytes", id=io.chain.id)
            return _check(INVALID_FIELD_IN_CDB, text)
        if size:
            unit.backend.write(lba * unit.block_size, io.read(data_at, size))
            unit.written.add(lba, blocks)
            if parsed.flags & t10.CDB_FLAGS["FUA"]:
                unit.backend.flush()
        unit.writes += 1
        return Result(consumed=size, text=text)

    def _report_luns(self, target: int, parsed: Any, datain: int) -> Result:
        select = int(parsed.select_report)
        if select not in (0x00, 0x01, 0x02) or parsed.allocation_length32 < 16:  # SPC-4 6.33
            return _check(INVALID_FIELD_IN_CDB, "select_report/allocation length")
        numbers = [] if select == 0x01 else sorted(n for t, n in self.units if t == target)
        entries = [{"single_level": n if n < 256 else 0x4000 | n, "lower_levels": None} for n in numbers]
        data = t10.report_luns_data.build({"lun_list_length": 8 * len(entries), "reserved": None, "lun": entries})
        return self._alloc(data, parsed.allocation_length32, datain)

    def _peripheral(self, unit: LogicalUnit | None, wlun: bool) -> int:
        if wlun:
            return 0x1E  # well known logical unit
        return 0x00 if unit is not None else 0x7F  # SPC-4 6.6.2: qualifier 3, type 1Fh: no LU here

    def _inquiry(self, unit: LogicalUnit | None, wlun: bool, parsed: Any, datain: int) -> Result:
        flags, page, alloc = parsed.flags, int(parsed.page_code), parsed.allocation_length16
        peripheral = self._peripheral(unit, wlun)
        if flags & t10.CDB_FLAGS["CMDDT"] or (not flags & t10.CDB_FLAGS["EVPD"] and page):
            return _check(INVALID_FIELD_IN_CDB, "cmddt/page code")
        if not flags & t10.CDB_FLAGS["EVPD"]:
            data = t10.inquiry_data.build({
                "peripheral": peripheral, "flags1": 0, "version": t10.INQUIRY_VERSIONS["SPC-4"],
                "flags3": 0x10 | 2,  # HISUP, RESPONSE DATA FORMAT 2
                "additional_length": t10.INQUIRY_MIN_SIZE - 5, "flags5": 0, "flags6": 0,
                "flags7": 0x02,  # CMDQUE
                "vendor_identification": self.vendor, "product_identification": self.product,
                "product_revision_level": self.revision, "vendor_specific": None, "flags56": None,
                "reserved": None, "version_descriptor": None})
            return self._alloc(data, alloc, datain)
        if unit is None:
            return _check(LUN_NOT_SUPPORTED)
        if page == 0x00:
            data = spc.vpd_supported_pages.build({"peripheral": peripheral, "page_code": 0,
                                                  "pages": [0x00, 0x80, 0x83]})
        elif page == 0x80:
            data = spc.vpd_unit_serial.build({"peripheral": peripheral, "page_code": 0x80,
                                              "serial": unit.serial.encode()})
        elif page == 0x83:
            data = spc.vpd_device_identification.build({"peripheral": peripheral, "page_code": 0x83,
                                                        "descriptors": self._designators(unit)})
        else:
            return _check(INVALID_FIELD_IN_CDB, f"vpd page 0x{page:02x}")
        return self._alloc(data, alloc, datain)

    def _designators(self, unit: LogicalUnit) -> list[dict[str, Any]]:
        """SPC-4 7.8.6: a T10 vendor ID based designator and a locally assigned NAA (type 3) one."""
        t10_id = self.vendor.encode().ljust(8)[:8] + self.product.encode().rstrip() + b" " + unit.serial.encode()
        digest = int.from_bytes(hashlib.sha256(t10_id).digest()[:8], "big")
        naa = (0x3 << 60 | digest & ((1 << 60) - 1)).to_bytes(8, "big")  # NAA 3: locally assigned
        return [
            {"protocol_code_set": spc.CODE_SETS["ASCII"], "designator_flags": spc.DESIGNATOR_TYPES[
                "T10 VENDOR ID BASED"], "reserved": b"\0", "designator": t10_id},
            {"protocol_code_set": spc.CODE_SETS["BINARY"], "designator_flags": spc.DESIGNATOR_TYPES["NAA"],
             "reserved": b"\0", "designator": naa},
        ]

    def _mode_sense(self, unit: LogicalUnit, opcode: int, parsed: Any, datain: int) -> Result:
        six = opcode == OP["MODE SENSE(6)"]
        page_control, page = parsed.page >> 6, parsed.page & 0x3F
        if page_control == 3:  # saved values
            return _check(SAVING_NOT_SUPPORTED, "saved values")
        if parsed.subpage_code not in (0, 0xFF) or page not in (spc.CACHING_PAGE, spc.CONTROL_PAGE, spc.ALL_PAGES):
            return _check(INVALID_FIELD_IN_CDB, f"page 0x{page:02x}/0x{parsed.subpage_code:02x}")
        changeable = page_control == 1
        pages = b""
        if page in (spc.CACHING_PAGE, spc.ALL_PAGES):
            params = bytearray(spc.CACHING_PAGE_LENGTH)
            params[0] = 0 if changeable else spc.CACHING_WCE  # byte 2 of the page: WCE (writeback cache)
            pages += spc.mode_page.build({"page": spc.CACHING_PAGE, "parameters": bytes(params)})
        if page in (spc.CONTROL_PAGE, spc.ALL_PAGES):
            pages += spc.mode_page.build({"page": spc.CONTROL_PAGE, "parameters": bytes(spc.CONTROL_PAGE_LENGTH)})
        dbd = bool(parsed.flags & t10.CDB_FLAGS["DBD"])
        long_lba = not six and bool(parsed.flags & t10.CDB_FLAGS["LLBAA"])
        blocks = b""
        if not dbd:
            if long_lba:
                blocks = spc.long_block_descriptor.build({"number_of_blocks": unit.blocks, "reserved": bytes(4),
                                                          "logical_block_length": unit.block_size})
            else:
                blocks = spc.short_block_descriptor.build({"number_of_blocks": min(unit.blocks, 0xFFFFFFFF),
                                                           "reserved": b"\0", "logical_block_length": unit.block_size})
        specific = (0x80 if unit.readonly else 0) | 0x10  # SBC-3 6.4.1: WP, DPOFUA
        if six:
            header = spc.mode_header6.build({"mode_data_length": 3 + len(blocks) + len(pages), "medium_type": 0,
                                             "device_specific": specific, "block_descriptor_length": len(blocks)})
            alloc = parsed.allocation_length8
        else:
            header = spc.mode_header10.build({"mode_data_length": 6 + len(blocks) + len(pages), "medium_type": 0,
                                              "device_specific": specific, "flags": int(long_lba),
                                              "reserved": b"\0", "block_descriptor_length": len(blocks)})
            alloc = parsed.allocation_length16
        return self._alloc(header + blocks + pages, alloc, datain)

    # -- control queue -----------------------------------------------------------------------------

    def _control(self, index: int, chain: Chain, io: ChainIO) -> int:
        if io.writable_len < 1 or not io.writable_ok(io.writable_len - 1, 1):
            self._report("SCSI_CTRL_NO_RESPONSE", "virtio 1.4, 5.6.6.2",
                         "controlq request without a device-writable response", queue=index, id=chain.id)
            return 0
        last = io.writable_len - 1  # struct virtio_scsi_ctrl: the response byte ends the structure
        kind = int.from_bytes(io.read(0, 4), "little") if io.readable_len >= 4 and not io.unmapped else None
        if kind == layout.CTRL_TYPES["VIRTIO_SCSI_T_TMF"] and io.readable_len >= layout.CTRL_TMF_SIZE:
            _, subtype, lun, tag = struct.unpack("<II8sQ", io.read(0, layout.CTRL_TMF_SIZE))
            response = self._tmf(subtype, lun)
            name = TMF_TEXT.get(subtype, str(subtype))
            self._count("TMF " + name)
            io.fill(0, last)
            io.write(last, bytes([response]))
            self.describe(f"scsi tmf {name} id={tag} -> {RESPONSE_TEXT.get(response, response)}")
            return io.written
        if kind in (1, 2) and io.readable_len >= layout.CTRL_AN_SIZE and io.writable_len >= 5:
            _, lun, _requested = struct.unpack("<I8sI", io.read(0, layout.CTRL_AN_SIZE))
            exists = lun[0] == 1 and any(t == lun[1] for t, _ in self.units)
            response = S_OK if exists else S_BAD_TARGET
            self._count("AN")
            io.fill(0, last)  # event_actual = 0: the LUNs report no asynchronous events
            io.write(last, bytes([response]))
            self.describe(f"scsi an type={kind} -> {RESPONSE_TEXT[response]}")
            return io.written
        self._report("SCSI_CTRL_MALFORMED", "virtio 1.4, 5.6.6.2",
                     f"controlq request of type {kind} with {io.readable_len} readable and {io.writable_len} "
                     "writable bytes", queue=index, id=chain.id)
        io.write(last, bytes([S_FAILURE]))
        return io.written

    def _tmf(self, subtype: int, lun: bytes) -> int:
        if lun[0] != 1 or not any(t == lun[1] for t, _ in self.units):
            return S_BAD_TARGET
        if subtype == TMF["VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET"]:  # addresses the I_T nexus: LUN ignored
            return S_FUNCTION_COMPLETE
        if (lun[1], (lun[2] << 8 | lun[3]) & 0x3FFF) not in self.units:
            return S_INCORRECT_LUN
        if subtype in (TMF["VIRTIO_SCSI_T_TMF_ABORT_TASK"], TMF["VIRTIO_SCSI_T_TMF_ABORT_TASK_SET"],
                       TMF["VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET"], TMF["VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET"],
                       TMF["VIRTIO_SCSI_T_TMF_QUERY_TASK"], TMF["VIRTIO_SCSI_T_TMF_QUERY_TASK_SET"]):
            return S_FUNCTION_COMPLETE  # no command is ever pending: nothing to abort or report
        return S_FUNCTION_REJECTED  # CLEAR ACA (NACA is not supported) and unknown functions

    def close(self) -> None:
        for unit in self.units.values():
            unit.backend.close()

    # -- state -------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        state = super().state()
        state.update({
            "sense_size": self.sense_size,
            "cdb_size": self.cdb_size,
            "luns": {f"{t}:{n}": {"image": u.backend.describe(), "blocks": u.blocks, "block_size": u.block_size,
                                  "readonly": u.readonly, "blocks_written": len(u.written),
                                  "written": [list(r) for r in u.written.ranges()], "reads": u.reads,
                                  "writes": u.writes}
                     for (t, n), u in sorted(self.units.items())},
            "events_pending": len(self.events),
            "commands": dict(self.counters),
        })
        return state


_COMPILED: dict[int, Construct] = {}


def _compiled(con: Construct) -> Construct:
    key = id(con)
    if key not in _COMPILED:
        try:
            _COMPILED[key] = con.compile()
        except Exception:
            _COMPILED[key] = con
    return _COMPILED[key]
