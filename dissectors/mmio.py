"""Virtio over MMIO (virtio 1.4, 4.2): the register file of version 2 and of the legacy version 1.

Layers (all registers 32-bit little-endian, 4.2.2):

- ``virtio_mmio.regs`` (prefix ``virtio_mmio``): the version 2 control registers, 0x000
  to 0x100 (4.2.2, table "MMIO Device Register Layout"), including the shared memory
  (SHMSel ... SHMBaseHigh) and QueueReset registers; ``MagicValue`` must read "virt"
  (0x74726976; the field's value is the four bytes ``b"virt"``) and ``Version`` 2.
  Bytes from 0x100 on are the device-specific configuration space (``config``, raw).
- ``virtio_mmio.regs_legacy`` (prefix ``virtio_mmio``): the version 1 (legacy) layout
  (4.2.4): HostFeatures, GuestPageSize, QueueAlign, QueuePFN instead of the 64-bit
  queue address registers; ``Version`` must be 1.

Fields are the spec's register names in snake case (``MagicValue`` -> ``virtio_mmio.magic_value``).
Reserved gaps between registers are consumed but not shown. :data:`REGISTERS` and
:data:`LEGACY_REGISTERS` map an offset to its register, and :func:`register_name` names
the target of a single MMIO access (what a trace of guest accesses needs).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from construct import Bytes, Const, Default, GreedyBytes, Hex, If, Struct

from .layers import Layer, register
from .pci import DEVICE_STATUS
from .tree import Field
from .types import Bitmask, le32, more_data

VIRTIO_MMIO_MAGIC_VALUE = 0x74726976  # "virt" read as a little-endian 32-bit value
VIRTIO_MMIO_MAGIC = b"virt"  # the same four bytes, as the layout checks them
VIRTIO_MMIO_VERSION = 2
VIRTIO_MMIO_LEGACY_VERSION = 1
VIRTIO_MMIO_CONFIG = 0x100  # device-specific configuration space starts here
# InterruptStatus / InterruptACK bits (4.2.2)
INTERRUPT_BITS = {"USED_BUFFER_NOTIFICATION": 1, "CONFIGURATION_CHANGE_NOTIFICATION": 2}
# SHMLen / SHMBase of a region that does not exist (4.2.2)
SHM_LEN_NONE = 0xFFFF_FFFF_FFFF_FFFF
SHM_BASE_NONE = 0xFFFF_FFFF_FFFF_FFFF


class Register(NamedTuple):
    """One MMIO control register: spec name, field name, offset, direction (R, W, RW)."""

    name: str
    field: str
    offset: int
    access: str


def _table(*rows: tuple[str, str, int, str]) -> dict[int, Register]:
    return {offset: Register(name, field, offset, access) for name, field, offset, access in rows}


# 4.2.2 table "MMIO Device Register Layout" (version 2)
REGISTERS: dict[int, Register] = _table(
    ("MagicValue", "magic_value", 0x000, "R"),
    ("Version", "version", 0x004, "R"),
    ("DeviceID", "device_id", 0x008, "R"),
    ("VendorID", "vendor_id", 0x00C, "R"),
    ("DeviceFeatures", "device_features", 0x010, "R"),
    ("DeviceFeaturesSel", "device_features_sel", 0x014, "W"),
    ("DriverFeatures", "driver_features", 0x020, "W"),
    ("DriverFeaturesSel", "driver_features_sel", 0x024, "W"),
    ("QueueSel", "queue_sel", 0x030, "W"),
    ("QueueSizeMax", "queue_size_max", 0x034, "R"),
    ("QueueSize", "queue_size", 0x038, "W"),
    ("QueueReady", "queue_ready", 0x044, "RW"),
    ("QueueNotify", "queue_notify", 0x050, "W"),
    ("InterruptStatus", "interrupt_status", 0x060, "R"),
    ("InterruptACK", "interrupt_ack", 0x064, "W"),
    ("Status", "status", 0x070, "RW"),
    ("QueueDescLow", "queue_desc_low", 0x080, "W"),
    ("QueueDescHigh", "queue_desc_high", 0x084, "W"),
    ("QueueDriverLow", "queue_driver_low", 0x090, "W"),
    ("QueueDriverHigh", "queue_driver_high", 0x094, "W"),
    ("QueueDeviceLow", "queue_device_low", 0x0A0, "W"),
    ("QueueDeviceHigh", "queue_device_high", 0x0A4, "W"),
    ("SHMSel", "shm_sel", 0x0AC, "W"),
    ("SHMLenLow", "shm_len_low", 0x0B0, "R"),
    ("SHMLenHigh", "shm_len_high", 0x0B4, "R"),
    ("SHMBaseLow", "shm_base_low", 0x0B8, "R"),
    ("SHMBaseHigh", "shm_base_high", 0x0BC, "R"),
    ("QueueReset", "queue_reset", 0x0C0, "RW"),
    ("ConfigGeneration", "config_generation", 0x0FC, "R"),
)

# 4.2.4 table "MMIO Device Legacy Register Layout" (version 1)
LEGACY_REGISTERS: dict[int, Register] = _table(
    ("MagicValue", "magic_value", 0x000, "R"),
    ("Version", "version", 0x004, "R"),
    ("DeviceID", "device_id", 0x008, "R"),
    ("VendorID", "vendor_id", 0x00C, "R"),
    ("HostFeatures", "host_features", 0x010, "R"),
    ("HostFeaturesSel", "host_features_sel", 0x014, "W"),
    ("GuestFeatures", "guest_features", 0x020, "W"),
    ("GuestFeaturesSel", "guest_features_sel", 0x024, "W"),
    ("GuestPageSize", "guest_page_size", 0x028, "W"),
    ("QueueSel", "queue_sel", 0x030, "W"),
    ("QueueSizeMax", "queue_size_max", 0x034, "R"),
    ("QueueSize", "queue_size", 0x038, "W"),
    ("QueueAlign", "queue_align", 0x03C, "W"),
    ("QueuePFN", "queue_pfn", 0x040, "RW"),
    ("QueueNotify", "queue_notify", 0x050, "W"),
    ("InterruptStatus", "interrupt_status", 0x060, "R"),
    ("InterruptACK", "interrupt_ack", 0x064, "W"),
    ("Status", "status", 0x070, "RW"),
)


def register_name(offset: int, *, legacy: bool = False) -> str:
    """The spec name of the register an access at ``offset`` hits.

    ``Config+0x10`` inside the device-specific configuration space (0x100 on),
    ``QueueDescLow+2`` for an unaligned access, ``reserved(0x018)`` for a gap.
    """
    table = LEGACY_REGISTERS if legacy else REGISTERS
    if offset >= VIRTIO_MMIO_CONFIG:
        return f"Config+0x{offset - VIRTIO_MMIO_CONFIG:x}"
    aligned = offset & ~3
    reg = table.get(aligned)
    if reg is None:
        return f"reserved(0x{offset:03x})"
    return reg.name if aligned == offset else f"{reg.name}+{offset - aligned}"


# Field declarations: names and labels shared by both layouts
_DECL: dict[str, str] = {
    "magic_value": "Magic value",
    "version": "Device version number",
    "device_id": "Virtio subsystem device ID",
    "vendor_id": "Virtio subsystem vendor ID",
    "device_features": "Device features",
    "device_features_sel": "Device features word selection",
    "driver_features": "Driver features",
    "driver_features_sel": "Driver features word selection",
    "host_features": "Host (device) features",
    "host_features_sel": "Host (device) features word selection",
    "guest_features": "Guest (driver) features",
    "guest_features_sel": "Guest (driver) features word selection",
    "guest_page_size": "Guest page size",
    "queue_sel": "Virtqueue index",
    "queue_size_max": "Maximum virtqueue size (formerly QueueNumMax)",
    "queue_size": "Virtqueue size (formerly QueueNum)",
    "queue_align": "Used ring alignment",
    "queue_pfn": "Virtqueue guest physical page number",
    "queue_ready": "Virtqueue ready",
    "queue_notify": "Queue notifier",
    "interrupt_status": "Interrupt status",
    "interrupt_ack": "Interrupt acknowledge",
    "status": "Device status",
    "queue_desc_low": "Descriptor area address, low 32 bits",
    "queue_desc_high": "Descriptor area address, high 32 bits",
    "queue_driver_low": "Driver area address, low 32 bits",
    "queue_driver_high": "Driver area address, high 32 bits",
    "queue_device_low": "Device area address, low 32 bits",
    "queue_device_high": "Device area address, high 32 bits",
    "shm_sel": "Shared memory region id",
    "shm_len_low": "Shared memory region length, low 32 bits",
    "shm_len_high": "Shared memory region length, high 32 bits",
    "shm_base_low": "Shared memory region address, low 32 bits",
    "shm_base_high": "Shared memory region address, high 32 bits",
    "queue_reset": "Virtqueue reset",
    "config_generation": "Configuration generation",
}
_HEX = {"device_features", "driver_features", "host_features", "guest_features", "queue_pfn", "queue_desc_low",
        "queue_desc_high", "queue_driver_low", "queue_driver_high", "queue_device_low", "queue_device_high",
        "shm_len_low", "shm_len_high", "shm_base_low", "shm_base_high", "vendor_id"}


def _register_con(field: str, version: int) -> Any:
    if field == "magic_value":
        return Const(VIRTIO_MMIO_MAGIC, Bytes(4))
    if field == "version":
        return Const(version, le32)
    if field in ("interrupt_status", "interrupt_ack"):
        return Bitmask(le32, INTERRUPT_BITS)
    if field == "status":
        return Bitmask(le32, DEVICE_STATUS)
    return Hex(le32) if field in _HEX else le32


def _gap(size: int) -> Any:
    """Reserved bytes between registers: consumed but not shown, built as zeros."""
    return Default(Bytes(size), bytes(size))


def _register_file(table: dict[int, Register], version: int) -> Struct:
    """The registers of ``table`` at their offsets; unnamed bytes fill the gaps up to 0x100."""
    subcons: list[Any] = []
    here = 0
    for offset in sorted(table):
        reg = table[offset]
        if offset > here:
            subcons.append(_gap(offset - here))
        subcons.append(reg.field / _register_con(reg.field, version) * f"{_DECL[reg.field]} ({reg.name})")
        here = offset + 4
    if here < VIRTIO_MMIO_CONFIG:
        subcons.append(_gap(VIRTIO_MMIO_CONFIG - here))
    subcons.append("config" / If(more_data("config"), GreedyBytes) * "Device-specific configuration (Config)")
    return Struct(*subcons)


virtio_mmio_regs = _register_file(REGISTERS, VIRTIO_MMIO_VERSION)
virtio_mmio_regs_legacy = _register_file(LEGACY_REGISTERS, VIRTIO_MMIO_LEGACY_VERSION)


def _status_names(value: int) -> str:
    names = [name for name, bit in DEVICE_STATUS.items() if value & bit]
    return "|".join(names) if names else "0"


def _regs_summary(tree: Field) -> str:
    p = tree.abbrev
    text = (f"virtio_mmio v{tree[p + '.version']} device_id={tree[p + '.device_id']} "
            f"status={_status_names(tree[p + '.status'])} queue_sel={tree[p + '.queue_sel']}")
    if f"{p}.queue_desc_low" in tree:
        desc = tree[p + ".queue_desc_high"] << 32 | tree[p + ".queue_desc_low"]
        return text + f" queue_ready={tree[p + '.queue_ready']} desc=0x{desc:x}"
    return text + f" queue_pfn=0x{tree[p + '.queue_pfn']:x}"


register(Layer("virtio_mmio.regs", virtio_mmio_regs, "Virtio MMIO registers", "virtio 1.4, 4.2.2",
               prefix="virtio_mmio", summary=_regs_summary))
register(Layer("virtio_mmio.regs_legacy", virtio_mmio_regs_legacy, "Virtio MMIO legacy registers",
               "virtio 1.4, 4.2.4", prefix="virtio_mmio", summary=_regs_summary))
