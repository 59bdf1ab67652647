"""The block device (virtio 1.4, 5.2), backed by an image file or memory.

Requests (5.2.6): IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES (with UNMAP) and
SECURE_ERASE; the status byte, the last byte of the device-writable part, is
always written when there is one. Device Requirements followed (5.2.5.2, 5.2.6.2):

- VIRTIO_BLK_F_FLUSH is offered (and must be with CONFIG_WCE); ``writeback`` starts
  at 0 when CONFIG_WCE is negotiated without FLUSH; ``unused0``/``unused1`` are zero.
- A write (OUT, WRITE_ZEROES, DISCARD, SECURE_ERASE) on a device offering
  VIRTIO_BLK_F_RO gets VIRTIO_BLK_S_IOERR and writes no data.
- DISCARD, SECURE_ERASE and WRITE_ZEROES with an unknown flag, and DISCARD with
  ``unmap``, get VIRTIO_BLK_S_UNSUPP.
- After WRITE_ZEROES, reads of the range return zeroes, ``unmap`` or not.
- Writes are stable before completion when the spec requires it (neither
  CONFIG_WCE nor FLUSH negotiated though FLUSH is offered; or CONFIG_WCE negotiated
  and ``writeback`` 0): the image is fsync'ed.
- Zoned requests without VIRTIO_BLK_F_ZONED get VIRTIO_BLK_S_UNSUPP, as do unknown
  types and requests of features not negotiated. Driver errors (a read or write
  beyond ``capacity``, data not a multiple of 512 bytes, bad segments) get
  VIRTIO_BLK_S_IOERR ("device or driver error", 5.2.6), each with an anomaly.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar

from construct import GreedyRange

from ..dissectors import blk as layout
from ..dissectors import features as feature_tables
from ..errors import UsageError
from ..model import Chain
from .backend import BlockBackend, ExtentSet, open_backend
from .base import Device, feature_bits
from .chainio import ChainIO

# 5.2.3 Feature bits (dissectors.features)
_F = feature_bits(feature_tables.BLK_FEATURES)
VIRTIO_BLK_F_SIZE_MAX = _F["VIRTIO_BLK_F_SIZE_MAX"]
VIRTIO_BLK_F_SEG_MAX = _F["VIRTIO_BLK_F_SEG_MAX"]
VIRTIO_BLK_F_RO = _F["VIRTIO_BLK_F_RO"]
VIRTIO_BLK_F_BLK_SIZE = _F["VIRTIO_BLK_F_BLK_SIZE"]
VIRTIO_BLK_F_FLUSH = _F["VIRTIO_BLK_F_FLUSH"]
VIRTIO_BLK_F_TOPOLOGY = _F["VIRTIO_BLK_F_TOPOLOGY"]
VIRTIO_BLK_F_CONFIG_WCE = _F["VIRTIO_BLK_F_CONFIG_WCE"]
VIRTIO_BLK_F_MQ = _F["VIRTIO_BLK_F_MQ"]
VIRTIO_BLK_F_DISCARD = _F["VIRTIO_BLK_F_DISCARD"]
VIRTIO_BLK_F_WRITE_ZEROES = _F["VIRTIO_BLK_F_WRITE_ZEROES"]
VIRTIO_BLK_F_SECURE_ERASE = _F["VIRTIO_BLK_F_SECURE_ERASE"]

T = layout.REQUEST_TYPES
S = layout.STATUS_NAMES
VIRTIO_BLK_T_IN = T["VIRTIO_BLK_T_IN"]
VIRTIO_BLK_T_OUT = T["VIRTIO_BLK_T_OUT"]
VIRTIO_BLK_T_FLUSH = T["VIRTIO_BLK_T_FLUSH"]
VIRTIO_BLK_T_GET_ID = T["VIRTIO_BLK_T_GET_ID"]
VIRTIO_BLK_T_DISCARD = T["VIRTIO_BLK_T_DISCARD"]
VIRTIO_BLK_T_WRITE_ZEROES = T["VIRTIO_BLK_T_WRITE_ZEROES"]
VIRTIO_BLK_T_SECURE_ERASE = T["VIRTIO_BLK_T_SECURE_ERASE"]
VIRTIO_BLK_S_OK = S["VIRTIO_BLK_S_OK"]
VIRTIO_BLK_S_IOERR = S["VIRTIO_BLK_S_IOERR"]
VIRTIO_BLK_S_UNSUPP = S["VIRTIO_BLK_S_UNSUPP"]
STATUS_TEXT = {value: name.removeprefix("VIRTIO_BLK_S_") for name, value in S.items()}
TYPE_TEXT = {value: name.removeprefix("VIRTIO_BLK_T_") for name, value in T.items()}
VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP = 1  # 5.2.6 struct virtio_blk_discard_write_zeroes flags.unmap

SECTOR = layout.SECTOR_SIZE
#: The request header for the hot path: type, reserved, sector (tests hold it equal to virtio_blk_req).
REQ_HDR = struct.Struct("<IIQ")
_SEGMENTS = GreedyRange(layout.dwz_seg).compile()

# The feature each segment request needs, and its limits' config fields (5.2.4).
_SEGMENT_FEATURES = {
    VIRTIO_BLK_T_DISCARD: (VIRTIO_BLK_F_DISCARD, "max_discard_sectors", "max_discard_seg"),
    VIRTIO_BLK_T_WRITE_ZEROES: (VIRTIO_BLK_F_WRITE_ZEROES, "max_write_zeroes_sectors", "max_write_zeroes_seg"),
    VIRTIO_BLK_T_SECURE_ERASE: (VIRTIO_BLK_F_SECURE_ERASE, "max_secure_erase_sectors", "max_secure_erase_seg"),
}
SECTION_OP = "virtio 1.4, 5.2.6.2"
SECTION_DRIVER = "virtio 1.4, 5.2.6.1"


class BlkDevice(Device):
    """A virtio-blk device over an image file (``image``) or memory (``size`` bytes or ``data``)."""

    name: ClassVar[str] = "blk"
    device_id: ClassVar[int] = 2
    prefix: ClassVar[str] = "virtio_blk"
    in_order: ClassVar[bool] = True  # every request completes when it is handled
    config_struct = layout.virtio_blk_config
    config_full_size = layout.BLK_CONFIG_SIZE

    def __init__(self, image: str | None = None, *, size: int | None = None, data: bytes | bytearray | None = None,
                 backend: BlockBackend | None = None, readonly: bool = False, blk_size: int = 512,
                 seg_max: int = 126, size_max: int | None = None, num_queues: int = 1, flush: bool = True,
                 config_wce: bool = True, discard: bool = True, write_zeroes: bool = True,
                 secure_erase: bool = True, max_discard_sectors: int = 0x3FFFFF, max_discard_seg: int = 16,
                 max_write_zeroes_sectors: int = 0x3FFFFF, max_write_zeroes_seg: int = 16,
                 max_secure_erase_sectors: int = 0x3FFFFF, max_secure_erase_seg: int = 16,
                 serial: str = "vqtrace-blk", **options: Any) -> None:
        super().__init__(**options)
        if blk_size < SECTOR or blk_size & (blk_size - 1):
            raise UsageError(f"blk_size {blk_size}: a power of two of at least {SECTOR} bytes")
        if not 1 <= num_queues <= 0xFFFF:
            raise UsageError(f"num_queues {num_queues}: between 1 and 65535")
        if image is None and size is None and data is None and backend is None:
            size = 1 << 20
        self.backend = backend or open_backend(image, size=size, data=data, readonly=readonly)
        self.readonly = readonly or self.backend.readonly
        self.blk_size = blk_size
        self.seg_max = seg_max
        self.size_max = size_max
        self.queue_count = num_queues
        self.offer_flush = flush
        self.offer_config_wce = config_wce and flush  # 5.2.5.2: MUST offer FLUSH if it offers CONFIG_WCE
        # A read-only device offers no write-like requests.
        self.offer_discard = discard and not self.readonly
        self.offer_write_zeroes = write_zeroes and not self.readonly
        self.offer_secure_erase = secure_erase and not self.readonly
        self.limits = {
            "max_discard_sectors": max_discard_sectors, "max_discard_seg": max_discard_seg,
            "max_write_zeroes_sectors": max_write_zeroes_sectors, "max_write_zeroes_seg": max_write_zeroes_seg,
            "max_secure_erase_sectors": max_secure_erase_sectors, "max_secure_erase_seg": max_secure_erase_seg,
        }
        self.serial = serial
        self.writeback = 1
        self.written = ExtentSet()
        self.zeroed = ExtentSet()
        self.discarded = ExtentSet()
        self.requests: dict[str, int] = {}  # request type -> count
        self.statuses: dict[str, int] = {}  # status written -> count
        self.sectors_read = 0

    # -- identity, features, configuration --------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Capacity in 512-byte sectors (5.2.4)."""
        return self.backend.size // SECTOR

    def queue_names(self) -> list[str]:
        return [f"requestq{n + 1}" for n in range(self.queue_count)]

    def device_features(self) -> int:
        bits = [VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_TOPOLOGY]
        if self.size_max is not None:
            bits.append(VIRTIO_BLK_F_SIZE_MAX)
        if self.readonly:
            bits.append(VIRTIO_BLK_F_RO)
        if self.offer_flush:
            bits.append(VIRTIO_BLK_F_FLUSH)
        if self.offer_config_wce:
            bits.append(VIRTIO_BLK_F_CONFIG_WCE)
        if self.queue_count > 1:
            bits.append(VIRTIO_BLK_F_MQ)
        if self.offer_discard:
            bits.append(VIRTIO_BLK_F_DISCARD)
        if self.offer_write_zeroes:
            bits.append(VIRTIO_BLK_F_WRITE_ZEROES)
        if self.offer_secure_erase:
            bits.append(VIRTIO_BLK_F_SECURE_ERASE)
        return sum(1 << bit for bit in bits)

    def config_values(self) -> dict[str, Any]:
        align = self.blk_size // SECTOR
        values: dict[str, Any] = {"capacity": self.capacity, "seg_max": self.seg_max, "blk_size": self.blk_size,
                                  # physical block = logical block; offsets 0; io sizes in blocks
                                  "topology": {"physical_block_exp": 0, "alignment_offset": 0,
                                               "min_io_size": 1, "opt_io_size": 0}}
        if self.size_max is not None:
            values["size_max"] = self.size_max
        if self.offer_config_wce:
            values["writeback"] = self.writeback
        if self.queue_count > 1:
            values["num_queues"] = self.queue_count
        if self.offer_discard:
            values.update(max_discard_sectors=self.limits["max_discard_sectors"],
                          max_discard_seg=self.limits["max_discard_seg"], discard_sector_alignment=align)
        if self.offer_write_zeroes:
            values.update(max_write_zeroes_sectors=self.limits["max_write_zeroes_sectors"],
                          max_write_zeroes_seg=self.limits["max_write_zeroes_seg"], write_zeroes_may_unmap=1)
        if self.offer_secure_erase:
            values.update(max_secure_erase_sectors=self.limits["max_secure_erase_sectors"],
                          max_secure_erase_seg=self.limits["max_secure_erase_seg"],
                          secure_erase_sector_alignment=align)
        return values

    _WRITEBACK_OFFSET = 32  # 5.2.4: offset of writeback in struct virtio_blk_config

    def config_write(self, offset: int, data: bytes) -> bool:
        # 5.2.5: with CONFIG_WCE the driver may switch the cache mode by writing writeback.
        if self.offer_config_wce and offset == self._WRITEBACK_OFFSET and len(data) == 1 and data[0] in (0, 1):
            self.writeback = data[0]
            return True
        return False

    def features_changed(self) -> None:
        # 5.2.5.2: CONFIG_WCE negotiated without FLUSH: writeback MUST start at 0.
        if self.has(VIRTIO_BLK_F_CONFIG_WCE) and not self.has(VIRTIO_BLK_F_FLUSH):
            self.writeback = 0

    def reset_state(self) -> None:
        self.writeback = 1

    @property
    def writethrough(self) -> bool:
        """Whether completed writes must be stable (5.2.6.2, the three cases of a stable write)."""
        if self.has(VIRTIO_BLK_F_CONFIG_WCE):
            return self.writeback == 0
        return self.offer_flush and not self.has(VIRTIO_BLK_F_FLUSH)

    # -- requests --------------------------------------------------------------------------------

    def process(self, index: int, chain: Chain, io: ChainIO) -> int:
        status_at = io.writable_len - 1
        if status_at < 0:  # no device-writable byte: nowhere to put the status
            self._report("BLK_NO_STATUS", "virtio 1.4, 5.2.6", "request has no device-writable status byte",
                         queue=index, id=chain.id)
            self.describe("blk request without status byte")
            return 0
        if self.memory_fault(io, index):
            return self._finish(io, index, VIRTIO_BLK_S_IOERR, "blk request with buffers outside guest memory")
        if io.readable_len < layout.REQ_HDR_SIZE:
            what = "in device-writable buffers" if io.readable_len == 0 else f"only {io.readable_len} bytes"
            self._report("BLK_SHORT_HEADER", "virtio 1.4, 5.2.6",
                         f"request header must be {layout.REQ_HDR_SIZE} device-readable bytes, {what}",
                         queue=index, id=chain.id)
            return self._finish(io, index, VIRTIO_BLK_S_IOERR, "blk short header")
        kind, _reserved, sector = REQ_HDR.unpack(io.read(0, REQ_HDR.size))
        name = TYPE_TEXT.get(kind, f"type={kind}")
        self.requests[name] = self.requests.get(name, 0) + 1
        self._check_segments(index, chain)
        try:
            return self._request(index, chain, io, kind, sector, name)
        except OSError as err:  # the image failed: a device error (5.2.6: VIRTIO_BLK_S_IOERR)
            self._report("BLK_BACKEND_ERROR", "virtio 1.4, 5.2.6",
                         f"{name}: {self.backend.describe()}: {err.strerror or err}", queue=index, id=chain.id)
            return self._finish(io, index, VIRTIO_BLK_S_IOERR, f"blk {name} (image error)")

    def _request(self, index: int, chain: Chain, io: ChainIO, kind: int, sector: int, name: str) -> int:
        if kind == VIRTIO_BLK_T_IN:
            return self._read(index, io, sector)
        if kind == VIRTIO_BLK_T_OUT:
            return self._write(index, io, sector)
        if kind == VIRTIO_BLK_T_FLUSH and self.has(VIRTIO_BLK_F_FLUSH):
            if sector:
                self._report("BLK_FLUSH_SECTOR", SECTION_DRIVER, f"FLUSH with sector {sector}, not 0",
                             queue=index, id=chain.id)
            self.backend.flush()
            return self._finish(io, index, VIRTIO_BLK_S_OK, "blk FLUSH")
        if kind == VIRTIO_BLK_T_GET_ID:
            return self._get_id(index, io)
        if kind in _SEGMENT_FEATURES and self.has(_SEGMENT_FEATURES[kind][0]):
            return self._segments(index, io, kind)
        # 5.2.6: unknown types, zoned requests without ZONED (5.2.6.2 MUST), and requests of
        # features that were not negotiated are unsupported.
        return self._finish(io, index, VIRTIO_BLK_S_UNSUPP, f"blk {name}")

    def _finish(self, io: ChainIO, index: int, status: int, text: str) -> int:
        """Write the status byte last (5.2.6); the used length covers the whole writable part."""
        status_at = io.writable_len - 1
        gap = status_at - io.written
        if 0 < gap <= self.max_request:
            io.fill(io.written, gap)  # 2.7.8.2: the device writes the first len bytes
        elif gap > self.max_request:
            self._report("BLK_OVERSIZED", "virtio 1.4, 2.7.8.2",
                         f"{gap} device-writable bytes before the status byte", queue=index, id=io.chain.id)
        if not io.writable_ok(status_at, 1):
            self._report("BLK_NO_STATUS", "virtio 1.4, 5.2.6", "the status byte is outside guest memory",
                         queue=index, id=io.chain.id)
            self.describe(text + " (status not writable)")
            return io.written
        io.write(status_at, bytes([status]))
        key = STATUS_TEXT.get(status, str(status))
        self.statuses[key] = self.statuses.get(key, 0) + 1
        self.describe(f"{text} -> {key}")
        return io.writable_len

    def _range_ok(self, index: int, io: ChainIO, sector: int, length: int, what: str) -> bool:
        if length % SECTOR:
            self._report("BLK_BAD_LENGTH", SECTION_DRIVER,
                         f"{what} data of {length} bytes is not a multiple of {SECTOR}", queue=index, id=io.chain.id)
            return False
        if sector + length // SECTOR > self.capacity:
            self._report("BLK_OUT_OF_RANGE", SECTION_DRIVER,
                         f"{what} of {length // SECTOR} sectors at sector {sector} beyond capacity {self.capacity}",
                         queue=index, id=io.chain.id)
            return False
        if length > self.max_request:
            self._report("BLK_OVERSIZED", "virtio 1.4, 5.2.6",
                         f"{what} of {length} bytes is larger than the device accepts ({self.max_request})",
                         queue=index, id=io.chain.id)
            return False
        return True

    def _read(self, index: int, io: ChainIO, sector: int) -> int:
        length = io.writable_len - 1
        text = f"blk IN sector={sector} len={length}"
        if io.readable_len > REQ_HDR.size:
            self._report("BLK_EXTRA_READABLE", "virtio 1.4, 5.2.6",
                         f"IN request carries {io.readable_len - REQ_HDR.size} device-readable bytes after the header",
                         queue=index, id=io.chain.id)
        if not self._range_ok(index, io, sector, length, "IN"):
            return self._finish(io, index, VIRTIO_BLK_S_IOERR, text)
        io.write(0, self.backend.read(sector * SECTOR, length))
        self.sectors_read += length // SECTOR
        return self._finish(io, index, VIRTIO_BLK_S_OK, text)

    def _write(self, index: int, io: ChainIO, sector: int) -> int:
        length = io.readable_len - REQ_HDR.size
        text = f"blk OUT sector={sector} len={length}"
        if io.writable_len > 1:
            self._report("BLK_EXTRA_WRITABLE", "virtio 1.4, 5.2.6",
                         f"OUT request has {io.writable_len} device-writable bytes; only the status byte is written",
                         queue=index, id=io.chain.id)
        if self.readonly:  # 5.2.6.2: IOERR, and MUST NOT write any data
            return self._finish(io, index, VIRTIO_BLK_S_IOERR, text + " (read-only)")
        if not self._range_ok(index, io, sector, length, "OUT"):
            return self._finish(io, index, VIRTIO_BLK_S_IOERR, text)
        self.backend.write(sector * SECTOR, io.read(REQ_HDR.size, length))
        self._stable()
        self.written.add(sector, length // SECTOR)
        return self._finish(io, index, VIRTIO_BLK_S_OK, text)

    def _stable(self) -> None:
        if self.writethrough:
            self.backend.flush()

    def _get_id(self, index: int, io: ChainIO) -> int:
        room = io.writable_len - 1
        if room != layout.VIRTIO_BLK_ID_BYTES:
            self._report("BLK_GET_ID_LENGTH", SECTION_DRIVER,
                         f"GET_ID data is {room} bytes, not {layout.VIRTIO_BLK_ID_BYTES}", queue=index, id=io.chain.id)
        ident = layout.virtio_blk_get_id.build({"id": self.serial})
        io.write(0, ident[:room])
        return self._finish(io, index, VIRTIO_BLK_S_OK, f"blk GET_ID {self.serial!r}")

    def _segments(self, index: int, io: ChainIO, kind: int) -> int:
        name = TYPE_TEXT[kind]
        _, max_sectors_field, max_seg_field = _SEGMENT_FEATURES[kind]
        length = io.readable_len - REQ_HDR.size
        text = f"blk {name}"
        if length <= 0 or length % layout.DWZ_SEG_SIZE:
            self._report("BLK_BAD_SEGMENTS", SECTION_DRIVER,
                         f"{name} data of {length} bytes is not one or more {layout.DWZ_SEG_SIZE}-byte segments",
                         queue=index, id=io.chain.id)
            return self._finish(io, index, VIRTIO_BLK_S_IOERR, text)
        count = length // layout.DWZ_SEG_SIZE
        if count > self.limits[max_seg_field]:
            self._report("BLK_TOO_MANY_SEGMENTS", SECTION_DRIVER,
                         f"{name} with {count} segments; {max_seg_field} is {self.limits[max_seg_field]}",
                         queue=index, id=io.chain.id)
            return self._finish(io, index, VIRTIO_BLK_S_IOERR, text + f" segments={count}")
        segments = _SEGMENTS.parse(io.read(REQ_HDR.size, length))
        text += f" segments={count} sector={segments[0].sector}"
        for seg in segments:
            # 5.2.6.2: unknown flags are UNSUPP for all three, unmap is UNSUPP for discard; unmap only
            # has a meaning for write zeroes, so secure erase treats it as unknown too.
            unknown = seg.flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
            if unknown or (seg.flags and kind != VIRTIO_BLK_T_WRITE_ZEROES):
                return self._finish(io, index, VIRTIO_BLK_S_UNSUPP, text + f" flags=0x{seg.flags:x}")
        if self.readonly:  # not offered on a read-only device; a write all the same (5.2.6.2)
            return self._finish(io, index, VIRTIO_BLK_S_IOERR, text + " (read-only)")
        for seg in segments:
            if seg.num_sectors > self.limits[max_sectors_field] or seg.sector + seg.num_sectors > self.capacity:
                self._report("BLK_OUT_OF_RANGE", SECTION_DRIVER,
                             f"{name} segment of {seg.num_sectors} sectors at {seg.sector}: beyond capacity "
                             f"{self.capacity} or {max_sectors_field} {self.limits[max_sectors_field]}",
                             queue=index, id=io.chain.id)
                return self._finish(io, index, VIRTIO_BLK_S_IOERR, text)
        for seg in segments:
            offset, size = seg.sector * SECTOR, seg.num_sectors * SECTOR
            if kind == VIRTIO_BLK_T_DISCARD:
                self.backend.discard(offset, size)  # 5.2.6.2: MAY deallocate
                self.discarded.add(seg.sector, seg.num_sectors)
            else:  # write zeroes (5.2.6.2: reads MUST return zeroes), secure erase
                self.backend.write_zeroes(offset, size)
                self.zeroed.add(seg.sector, seg.num_sectors)
                self.written.add(seg.sector, seg.num_sectors)
        self._stable()
        return self._finish(io, index, VIRTIO_BLK_S_OK, text)

    def _check_segments(self, index: int, chain: Chain) -> None:
        """seg_max and size_max (5.2.3) bound the data buffers of a request: report excess."""
        buffers = chain.buffers
        if self.has(VIRTIO_BLK_F_SEG_MAX) and len(buffers) > self.seg_max + 2:
            self._report("BLK_SEG_MAX", "virtio 1.4, 5.2.3",
                         f"request uses {len(buffers)} buffers; seg_max is {self.seg_max} (plus header and status)",
                         queue=index, id=chain.id)
        if self.has(VIRTIO_BLK_F_SIZE_MAX) and self.size_max is not None:
            big = [d.len for d in buffers if d.len > self.size_max]
            if big:
                self._report("BLK_SIZE_MAX", "virtio 1.4, 5.2.3",
                             f"a segment of {big[0]} bytes exceeds size_max {self.size_max}", queue=index, id=chain.id)

    def close(self) -> None:
        self.backend.close()

    # -- state ------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        state = super().state()
        state.update({
            "image": self.backend.describe(),
            "capacity": self.capacity,
            "blk_size": self.blk_size,
            "readonly": self.readonly,
            "writeback": self.writeback,
            "sectors_written": len(self.written),
            "written": [list(r) for r in self.written.ranges()],
            "zeroed": [list(r) for r in self.zeroed.ranges()],
            "discarded": [list(r) for r in self.discarded.ranges()],
            "sectors_read": self.sectors_read,
            "flushes": self.backend.flushes,
            "requests": dict(self.requests),
            "statuses": dict(self.statuses),
        })
        return state
