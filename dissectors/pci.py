"""Virtio over PCI (virtio 1.4, 4.1): capabilities, common configuration, ISR, the legacy header.

Layers (all fields little-endian, 4.1.3):

- ``virtio_pci.cap`` (prefix ``virtio_pci.cap``): ``struct virtio_pci_cap`` (4.1.4), 16 bytes.
  The capability layers below share the prefix, so ``virtio_pci.cap.cfg_type`` filters
  every kind of virtio capability:
  ``virtio_pci.cap64`` (``struct virtio_pci_cap64``, 24 bytes, shared memory regions),
  ``virtio_pci.notify_cap`` (``struct virtio_pci_notify_cap``, 20 bytes, 4.1.4.4),
  ``virtio_pci.cfg_cap`` (``struct virtio_pci_cfg_cap``, 20 bytes, 4.1.4.9) and
  ``virtio_pci.vndr_data`` (``struct virtio_pci_vndr_data``, 4.1.4.8, vendor bytes to the end).
- ``virtio_pci.common_cfg``: ``struct virtio_pci_common_cfg`` (4.1.4.3), 64 bytes. The
  fields after ``queue_device`` came with later versions of the specification
  (``queue_notif_config_data``, formerly ``queue_notify_data``; ``queue_reset``;
  ``admin_queue_index``, ``admin_queue_num``): the layout takes as many as the data holds,
  so a 56-byte virtio 1.0 structure dissects too.
- ``virtio_pci.isr``: the ISR status byte (4.1.4.5).
- ``virtio_pci.legacy``: the legacy virtio header in BAR0 (4.1.4.10), 20 bytes, or 24 with
  the two MSI-X vector fields when the parameter ``msix`` is true; any bytes after it are
  the device-specific configuration (in the guest's native byte order, shown raw).

:data:`COMMON_CFG_FIELDS` and :data:`LEGACY_FIELDS` map byte offsets to field names and
widths, for decoding single BAR accesses (:func:`common_cfg_field`, :func:`legacy_field`).
:data:`DEVICE_STATUS` (the device status bits, 2.1) is :mod:`dissectors.features`'s table,
re-exported here for the MMIO and vhost-user dissectors.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from construct import Bytes, Enum, GreedyBytes, Hex, If, Struct

from .features import DEVICE_STATUS  # 2.1 Device Status Field: one table, in features.py
from .layers import Layer, register
from .tree import Field
from .types import Address, Bitmask, enum_name, le16, le32, more_data, u8

# 4.1.2 PCI Device Discovery
VIRTIO_PCI_VENDOR_ID = 0x1AF4
VIRTIO_PCI_DEVICE_ID_BASE = 0x1040  # PCI Device ID = 0x1040 + virtio device ID
TRANSITIONAL_DEVICE_IDS = {  # 4.1.2.1: Transitional PCI Device ID -> virtio device ID (5 "Device Types")
    0x1000: 1,  # network device
    0x1001: 2,  # block device
    0x1002: 5,  # memory ballooning (traditional)
    0x1003: 3,  # console
    0x1004: 8,  # SCSI host
    0x1005: 4,  # entropy source
    0x1009: 9,  # 9P transport
}

# 4.1.4 Virtio Structure PCI Capabilities
PCI_CAP_ID_VNDR = 0x09
CFG_TYPES = {
    "VIRTIO_PCI_CAP_COMMON_CFG": 1,
    "VIRTIO_PCI_CAP_NOTIFY_CFG": 2,
    "VIRTIO_PCI_CAP_ISR_CFG": 3,
    "VIRTIO_PCI_CAP_DEVICE_CFG": 4,
    "VIRTIO_PCI_CAP_PCI_CFG": 5,
    "VIRTIO_PCI_CAP_SHARED_MEMORY_CFG": 8,
    "VIRTIO_PCI_CAP_VENDOR_CFG": 9,
}
VIRTIO_PCI_CAP_SIZE = 16  # sizeof(struct virtio_pci_cap)
VIRTIO_PCI_CAP64_SIZE = 24  # sizeof(struct virtio_pci_cap64)
VIRTIO_PCI_NOTIFY_CAP_SIZE = 20  # sizeof(struct virtio_pci_notify_cap)
VIRTIO_PCI_CFG_CAP_SIZE = 20  # sizeof(struct virtio_pci_cfg_cap)

# 4.1.4.5 ISR status bits
ISR_STATUS = {"QUEUE_INTERRUPT": 1, "DEVICE_CONFIGURATION_INTERRUPT": 2, "reserved": 0xFC}

# 4.1.5.1.2 MSI-X Vector Configuration
VIRTIO_MSI_NO_VECTOR = 0xFFFF

# 4.1.5.1.3.1 / 4.1.4.10: the legacy Queue Address is a page frame number of 4096-byte pages
VIRTIO_PCI_LEGACY_QUEUE_ADDR_SHIFT = 12
VIRTIO_PCI_LEGACY_VRING_ALIGN = 4096


class RegisterField(NamedTuple):
    """One field of a register structure: where it is and how wide."""

    name: str
    offset: int
    size: int


# 4.1.4.3 struct virtio_pci_common_cfg: byte offset of every field (Linux's VIRTIO_PCI_COMMON_*)
COMMON_CFG_FIELDS: dict[int, RegisterField] = {f.offset: f for f in (
    RegisterField("device_feature_select", 0, 4),
    RegisterField("device_feature", 4, 4),
    RegisterField("driver_feature_select", 8, 4),
    RegisterField("driver_feature", 12, 4),
    RegisterField("config_msix_vector", 16, 2),
    RegisterField("num_queues", 18, 2),
    RegisterField("device_status", 20, 1),
    RegisterField("config_generation", 21, 1),
    RegisterField("queue_select", 22, 2),
    RegisterField("queue_size", 24, 2),
    RegisterField("queue_msix_vector", 26, 2),
    RegisterField("queue_enable", 28, 2),
    RegisterField("queue_notify_off", 30, 2),
    RegisterField("queue_desc", 32, 8),
    RegisterField("queue_driver", 40, 8),
    RegisterField("queue_device", 48, 8),
    RegisterField("queue_notif_config_data", 56, 2),
    RegisterField("queue_reset", 58, 2),
    RegisterField("admin_queue_index", 60, 2),
    RegisterField("admin_queue_num", 62, 2),
)}
COMMON_CFG_SIZE = 64  # with every field of virtio 1.4
COMMON_CFG_V1_0_SIZE = 56  # up to queue_device (virtio 1.0)

# 4.1.4.10 the legacy header in BAR0 (Linux's VIRTIO_PCI_HOST_FEATURES ... VIRTIO_MSI_QUEUE_VECTOR)
LEGACY_FIELDS: dict[int, RegisterField] = {f.offset: f for f in (
    RegisterField("device_features", 0, 4),
    RegisterField("driver_features", 4, 4),
    RegisterField("queue_address", 8, 4),
    RegisterField("queue_size", 12, 2),
    RegisterField("queue_select", 14, 2),
    RegisterField("queue_notify", 16, 2),
    RegisterField("device_status", 18, 1),
    RegisterField("isr_status", 19, 1),
    RegisterField("config_msix_vector", 20, 2),
    RegisterField("queue_msix_vector", 22, 2),
)}
LEGACY_HEADER_SIZE = 20  # device-specific configuration starts here without MSI-X
LEGACY_HEADER_MSIX_SIZE = 24  # ... and here with MSI-X enabled


def _field_at(table: dict[int, RegisterField], offset: int, size: int | None, config_at: int | None) -> str:
    for field in table.values():
        if field.offset <= offset < field.offset + field.size:
            delta = offset - field.offset
            if field.size == 8 and size == 4 and delta in (0, 4):
                return f"{field.name}.{'high' if delta else 'low'}"
            return field.name if delta == 0 else f"{field.name}+{delta}"
    if config_at is not None and offset >= config_at:
        return f"device config+0x{offset - config_at:x}"
    return f"reserved+0x{offset:x}"


def common_cfg_field(offset: int, size: int | None = None) -> str:
    """The name of the common configuration field a BAR access at ``offset`` touches.

    A 32-bit access to a 64-bit field gives ``queue_desc.low`` or ``queue_desc.high``
    (4.1.3: 64-bit fields are two 32-bit halves); a misaligned one ``name+N``.
    """
    return _field_at(COMMON_CFG_FIELDS, offset, size, config_at=None)


def legacy_field(offset: int, size: int | None = None, *, msix: bool = False) -> str:
    """The name of the legacy header field at ``offset``, or ``device config+0xN``."""
    table = LEGACY_FIELDS if msix else {k: v for k, v in LEGACY_FIELDS.items() if k < LEGACY_HEADER_SIZE}
    return _field_at(table, offset, size, LEGACY_HEADER_MSIX_SIZE if msix else LEGACY_HEADER_SIZE)


# 4.1.4 struct virtio_pci_cap
_cap_fields = (
    "cap_vndr" / Hex(u8) * "Capability ID (PCI_CAP_ID_VNDR)",
    "cap_next" / Hex(u8) * "Next capability",
    "cap_len" / u8 * "Capability length",
    "cfg_type" / Enum(u8, **CFG_TYPES) * "Structure type (cfg_type)",
    "bar" / u8 * "BAR",
    "id" / u8 * "Capability id",
    "padding" / Bytes(2) * "Padding",
    "offset" / Hex(le32) * "Offset within BAR",
    "length" / le32 * "Length",
)
virtio_pci_cap = Struct(*_cap_fields)

# 4.1.4 struct virtio_pci_cap64: the cap, then the high halves of offset and length
virtio_pci_cap64 = Struct(
    *_cap_fields,
    "offset_hi" / Hex(le32) * "Offset within BAR, high 32 bits",
    "length_hi" / le32 * "Length, high 32 bits",
)

# 4.1.4.4 struct virtio_pci_notify_cap
virtio_pci_notify_cap = Struct(
    *_cap_fields,
    "notify_off_multiplier" / le32 * "Multiplier for queue_notify_off",
)

# 4.1.4.9 struct virtio_pci_cfg_cap
virtio_pci_cfg_cap = Struct(
    *_cap_fields,
    "pci_cfg_data" / Bytes(4) * "Data for BAR access",
)

# 4.1.4.8 struct virtio_pci_vndr_data: vendor-defined bytes follow up to cap_len
virtio_pci_vndr_data = Struct(
    "cap_vndr" / Hex(u8) * "Capability ID (PCI_CAP_ID_VNDR)",
    "cap_next" / Hex(u8) * "Next capability",
    "cap_len" / u8 * "Capability length",
    "cfg_type" / Enum(u8, **CFG_TYPES) * "Structure type (cfg_type)",
    "vendor_id" / Hex(le16) * "Vendor ID",
    "vendor_data" / If(more_data("vendor_data"), GreedyBytes) * "Vendor data",
)


def _opt(name: str, con: Any) -> Any:
    """A trailing common_cfg field that exists only when the structure reaches it."""
    return name / If(more_data(name), con)


# 4.1.4.3 struct virtio_pci_common_cfg
virtio_pci_common_cfg = Struct(
    "device_feature_select" / le32 * "Device feature select",
    "device_feature" / Hex(le32) * "Device feature bits",
    "driver_feature_select" / le32 * "Driver feature select",
    "driver_feature" / Hex(le32) * "Driver feature bits",
    "config_msix_vector" / le16 * "Configuration MSI-X vector",
    "num_queues" / le16 * "Number of queues",
    "device_status" / Bitmask(u8, DEVICE_STATUS) * "Device status",
    "config_generation" / u8 * "Configuration generation",
    "queue_select" / le16 * "Queue select",
    "queue_size" / le16 * "Queue size",
    "queue_msix_vector" / le16 * "Queue MSI-X vector",
    "queue_enable" / le16 * "Queue enable",
    "queue_notify_off" / le16 * "Queue notify offset",
    "queue_desc" / Address() * "Descriptor area address",
    "queue_driver" / Address() * "Driver area address",
    "queue_device" / Address() * "Device area address",
    _opt("queue_notif_config_data", le16) * "Queue notification config data (formerly queue_notify_data)",
    _opt("queue_reset", le16) * "Queue reset",
    _opt("admin_queue_index", le16) * "Admin queue index",
    _opt("admin_queue_num", le16) * "Number of admin queues",
)

# 4.1.4.5 the ISR status byte
virtio_pci_isr = Struct("status" / Bitmask(u8, ISR_STATUS) * "ISR status")


def _msix(ctx: Any) -> bool:
    return bool(ctx._params.get("msix"))


# 4.1.4.10 Legacy Interfaces: the virtio header in BAR0, then the device-specific configuration
virtio_pci_legacy = Struct(
    "device_features" / Hex(le32) * "Device features bits 0:31",
    "driver_features" / Hex(le32) * "Driver features bits 0:31",
    "queue_address" / Hex(le32) * "Queue address (page frame number, 4096-byte pages)",
    "queue_size" / le16 * "Queue size",
    "queue_select" / le16 * "Queue select",
    "queue_notify" / le16 * "Queue notify",
    "device_status" / Bitmask(u8, DEVICE_STATUS) * "Device status",
    "isr_status" / Bitmask(u8, ISR_STATUS) * "ISR status",
    "config_msix_vector" / If(_msix, le16) * "Configuration MSI-X vector",
    "queue_msix_vector" / If(_msix, le16) * "Queue MSI-X vector",
    "device_config" / If(more_data("device_config"), GreedyBytes) * "Device-specific configuration",
)


def _value(tree: Field, abbrev: str, default: Any = None) -> Any:
    node = tree.find(abbrev)
    return default if node is None else node.value


def _cap_summary(tree: Field) -> str:
    p = tree.abbrev
    text = "virtio_pci cap " + enum_name(tree.find(f"{p}.cfg_type"), "VIRTIO_PCI_CAP_")
    offset = _value(tree, f"{p}.offset")
    if offset is not None:
        offset |= _value(tree, f"{p}.offset_hi", 0) << 32
        length = tree[f"{p}.length"] | _value(tree, f"{p}.length_hi", 0) << 32
        text += f" bar={tree[p + '.bar']} offset=0x{offset:x} length={length}"
    multiplier = _value(tree, f"{p}.notify_off_multiplier")
    if multiplier is not None:
        text += f" notify_off_multiplier={multiplier}"
    vendor = _value(tree, f"{p}.vendor_id")
    if vendor is not None:
        text += f" vendor_id=0x{vendor:04x}"
    return text


def _status_names(value: int) -> str:
    names = [name for name, bit in DEVICE_STATUS.items() if value & bit]
    return "|".join(names) if names else "0"


def _common_cfg_summary(tree: Field) -> str:
    p = tree.abbrev
    return (f"virtio_pci common_cfg status={_status_names(tree[p + '.device_status'])} "
            f"queue_select={tree[p + '.queue_select']} queue_size={tree[p + '.queue_size']} "
            f"queue_enable={tree[p + '.queue_enable']} desc=0x{tree[p + '.queue_desc']:x}")


def _legacy_summary(tree: Field) -> str:
    p = tree.abbrev
    pfn = tree[p + ".queue_address"]
    return (f"virtio_pci legacy status={_status_names(tree[p + '.device_status'])} "
            f"queue_select={tree[p + '.queue_select']} queue_size={tree[p + '.queue_size']} "
            f"queue_address=0x{pfn << VIRTIO_PCI_LEGACY_QUEUE_ADDR_SHIFT:x}")


def _isr_summary(tree: Field) -> str:
    node = tree.find(tree.abbrev + ".status")
    names = [child.label for child in node.children if child.value is True] if node else []
    return "virtio_pci isr " + ("|".join(names) if names else "0")


_SECTION = "virtio 1.4, 4.1.4"
register(Layer("virtio_pci.cap", virtio_pci_cap, "Virtio PCI capability", _SECTION, summary=_cap_summary))
register(Layer("virtio_pci.cap64", virtio_pci_cap64, "Virtio PCI 64-bit capability", _SECTION,
               prefix="virtio_pci.cap", summary=_cap_summary))
register(Layer("virtio_pci.notify_cap", virtio_pci_notify_cap, "Virtio PCI notification capability",
               "virtio 1.4, 4.1.4.4", prefix="virtio_pci.cap", summary=_cap_summary))
register(Layer("virtio_pci.cfg_cap", virtio_pci_cfg_cap, "Virtio PCI configuration access capability",
               "virtio 1.4, 4.1.4.9", prefix="virtio_pci.cap", summary=_cap_summary))
register(Layer("virtio_pci.vndr_data", virtio_pci_vndr_data, "Virtio PCI vendor data capability",
               "virtio 1.4, 4.1.4.8", prefix="virtio_pci.cap", summary=_cap_summary))
register(Layer("virtio_pci.common_cfg", virtio_pci_common_cfg, "Virtio PCI common configuration",
               "virtio 1.4, 4.1.4.3", summary=_common_cfg_summary))
register(Layer("virtio_pci.isr", virtio_pci_isr, "Virtio PCI ISR status", "virtio 1.4, 4.1.4.5",
               summary=_isr_summary))
register(Layer("virtio_pci.legacy", virtio_pci_legacy, "Virtio PCI legacy header", "virtio 1.4, 4.1.4.10",
               summary=_legacy_summary))
