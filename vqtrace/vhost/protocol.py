"""vhost-user payloads as plain values (QEMU docs/interop/vhost-user.rst, "Payload").

The hot paths of the engine pack and unpack payloads with :mod:`struct`; every layout
here is tested equal to the construct definition in ``dissectors/vhost_user.py``
(tests/test_vhost_codec.py). Protocol feature bits follow "Protocol features".
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from ..dissectors import vhost_user as vu
from ..errors import VhostUserError

# "Protocol features" (VHOST_USER_PROTOCOL_F_*), with the newer names of the renamed bits.
PROTOCOL_FEATURES: dict[str, int] = {
    "MQ": 0,
    "LOG_SHMFD": 1,
    "RARP": 2,
    "REPLY_ACK": 3,
    "NET_MTU": 4,
    "BACKEND_REQ": 5,  # was SLAVE_REQ
    "CROSS_ENDIAN": 6,
    "CRYPTO_SESSION": 7,
    "PAGEFAULT": 8,
    "CONFIG": 9,
    "BACKEND_SEND_FD": 10,  # was SLAVE_SEND_FD
    "HOST_NOTIFIER": 11,
    "INFLIGHT_SHMFD": 12,
    "RESET_DEVICE": 13,
    "INBAND_NOTIFICATIONS": 14,
    "CONFIGURE_MEM_SLOTS": 15,
    "STATUS": 16,
    "XEN_MMAP": 17,
    "SHARED_OBJECT": 18,
    "DEVICE_STATE": 19,
}
PROTOCOL_BIT = {bit: name for name, bit in PROTOCOL_FEATURES.items()}


def protocol_mask(*names: str) -> int:
    """The protocol feature bits of ``names`` (without the VHOST_USER_PROTOCOL_F_ prefix)."""
    mask = 0
    for name in names:
        mask |= 1 << PROTOCOL_FEATURES[name]
    return mask


def protocol_names(mask: int) -> list[str]:
    """The names of the protocol feature bits set in ``mask`` (unknown bits as ``bitN``)."""
    return [PROTOCOL_BIT.get(bit, f"bit{bit}") for bit in range(64) if mask >> bit & 1]


# Front-end requests ("Front-end message types") by name, for readable code.
GET_FEATURES = 1
SET_FEATURES = 2
SET_OWNER = 3
RESET_OWNER = 4
SET_MEM_TABLE = 5
SET_LOG_BASE = 6
SET_LOG_FD = 7
SET_VRING_NUM = 8
SET_VRING_ADDR = 9
SET_VRING_BASE = 10
GET_VRING_BASE = 11
SET_VRING_KICK = 12
SET_VRING_CALL = 13
SET_VRING_ERR = 14
GET_PROTOCOL_FEATURES = 15
SET_PROTOCOL_FEATURES = 16
GET_QUEUE_NUM = 17
SET_VRING_ENABLE = 18
SET_BACKEND_REQ_FD = 21
GET_CONFIG = 24
SET_CONFIG = 25
GET_INFLIGHT_FD = 31
SET_INFLIGHT_FD = 32
RESET_DEVICE = 34
VRING_KICK = 35
GET_MAX_MEM_SLOTS = 36
ADD_MEM_REG = 37
REM_MEM_REG = 38
SET_STATUS = 39
GET_STATUS = 40
# Back-end requests ("Back-end message types")
BACKEND_CONFIG_CHANGE_MSG = 2
BACKEND_VRING_HOST_NOTIFIER_MSG = 3
BACKEND_VRING_CALL = 4
BACKEND_VRING_ERR = 5

VRING_IDX_MASK = vu.VHOST_USER_VRING_IDX_MASK
VRING_NOFD_MASK = vu.VHOST_USER_VRING_NOFD_MASK
F_PROTOCOL_FEATURES = 1 << vu.VHOST_USER_F_PROTOCOL_FEATURES

_U64 = struct.Struct("<Q")
_STATE = struct.Struct("<II")
_ADDR = struct.Struct("<IIQQQQ")
_MEMORY_HDR = struct.Struct("<II")
_REGION = struct.Struct("<QQQQ")
_LOG = struct.Struct("<QQ")
_INFLIGHT = struct.Struct("<QQHH4x")
_CONFIG_HDR = struct.Struct("<III")
_AREA = struct.Struct("<QQQ")


class VringState(NamedTuple):
    """"A vring state description": index, num."""

    index: int
    num: int


class VringAddr(NamedTuple):
    """"A vring address description". Ring addresses are front-end virtual addresses
    (IOVAs with VIRTIO_F_IOMMU_PLATFORM); ``log`` is a guest address."""

    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int


class MemoryRegion(NamedTuple):
    """A "Memory regions description" entry."""

    guest_addr: int
    size: int
    user_addr: int
    mmap_offset: int


class Inflight(NamedTuple):
    """"Inflight description"."""

    mmap_size: int
    mmap_offset: int
    num_queues: int
    queue_size: int


class ConfigSpace(NamedTuple):
    """"Virtio device config space": offset, size, flags, the bytes."""

    offset: int
    size: int
    flags: int
    data: bytes


class VringArea(NamedTuple):
    """"Vring area description"."""

    u64: int
    size: int
    offset: int


def _need(payload: bytes, size: int, what: str) -> None:
    if len(payload) < size:
        raise VhostUserError(f"{what} payload of {len(payload)} bytes, {size} expected")


def pack_u64(value: int) -> bytes:
    return _U64.pack(value & 0xFFFF_FFFF_FFFF_FFFF)


def unpack_u64(payload: bytes) -> int:
    _need(payload, 8, "u64")
    return _U64.unpack_from(payload)[0]


def pack_state(index: int, num: int) -> bytes:
    return _STATE.pack(index, num)


def unpack_state(payload: bytes) -> VringState:
    _need(payload, 8, "vring state")
    return VringState(*_STATE.unpack_from(payload))


def pack_addr(addr: VringAddr) -> bytes:
    return _ADDR.pack(*addr)


def unpack_addr(payload: bytes) -> VringAddr:
    _need(payload, _ADDR.size, "vring address")
    return VringAddr(*_ADDR.unpack_from(payload))


def pack_memory(regions: list[MemoryRegion]) -> bytes:
    """A memory table of ``regions`` (QEMU sends exactly ``nregions`` entries)."""
    return _MEMORY_HDR.pack(len(regions), 0) + b"".join(_REGION.pack(*r) for r in regions)


def unpack_memory(payload: bytes) -> list[MemoryRegion]:
    _need(payload, 8, "memory table")
    count = _MEMORY_HDR.unpack_from(payload)[0]
    if count > vu.VHOST_MEMORY_BASELINE_NREGIONS or 8 + count * _REGION.size > len(payload):
        raise VhostUserError(f"memory table of {count} regions in a {len(payload)}-byte payload")
    return [MemoryRegion(*_REGION.unpack_from(payload, 8 + i * _REGION.size)) for i in range(count)]


def pack_region(region: MemoryRegion) -> bytes:
    """"Single memory region description" (ADD_MEM_REG, REM_MEM_REG): 8 bytes of padding first."""
    return bytes(8) + _REGION.pack(*region)


def unpack_region(payload: bytes) -> MemoryRegion:
    _need(payload, 8 + _REGION.size, "memory region")
    return MemoryRegion(*_REGION.unpack_from(payload, 8))


def pack_log(size: int, offset: int) -> bytes:
    return _LOG.pack(size, offset)


def pack_inflight(inflight: Inflight) -> bytes:
    """VhostUserInflight with the C structure's 4 bytes of tail padding (24 bytes, as QEMU sends)."""
    return _INFLIGHT.pack(*inflight)


def unpack_inflight(payload: bytes) -> Inflight:
    _need(payload, 20, "inflight description")
    return Inflight(*struct.unpack_from("<QQHH", payload))


def pack_config(offset: int, data: bytes, flags: int = 0, size: int | None = None) -> bytes:
    return _CONFIG_HDR.pack(offset, len(data) if size is None else size, flags) + bytes(data)


def unpack_config(payload: bytes) -> ConfigSpace:
    _need(payload, _CONFIG_HDR.size, "config space")
    offset, size, flags = _CONFIG_HDR.unpack_from(payload)
    return ConfigSpace(offset, size, flags, bytes(payload[_CONFIG_HDR.size:]))


def unpack_area(payload: bytes) -> VringArea:
    _need(payload, _AREA.size, "vring area")
    return VringArea(*_AREA.unpack_from(payload))


def pack_vring_file(index: int, nofd: bool = False) -> bytes:
    """SET_VRING_KICK/CALL/ERR: bits 0-7 the vring index, bit 8 the invalid FD flag."""
    return pack_u64((index & VRING_IDX_MASK) | (VRING_NOFD_MASK if nofd else 0))


def unpack_vring_file(payload: bytes) -> tuple[int, bool]:
    """(vring index, invalid FD flag) of a SET_VRING_KICK/CALL/ERR payload."""
    value = unpack_u64(payload)
    return value & VRING_IDX_MASK, bool(value & VRING_NOFD_MASK)


def split_base(num: int) -> int:
    """The split-ring avail index of a SET_VRING_BASE / GET_VRING_BASE num."""
    return num & 0xFFFF


def packed_base(num: int) -> tuple[int, bool, int, bool]:
    """(avail idx, avail wrap, used idx, used wrap) of a packed-ring vring base num."""
    return num & 0x7FFF, bool(num & 0x8000), num >> 16 & 0x7FFF, bool(num & 0x8000_0000)


def pack_packed_base(avail_idx: int, avail_wrap: bool, used_idx: int, used_wrap: bool) -> int:
    return (avail_idx & 0x7FFF) | (0x8000 if avail_wrap else 0) | (used_idx & 0x7FFF) << 16 \
        | (0x8000_0000 if used_wrap else 0)
