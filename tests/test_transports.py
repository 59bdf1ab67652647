"""The PCI (virtio 1.4, 4.1) and MMIO (4.2) transport layouts against the specification."""

from __future__ import annotations

import json
import re
import struct

import pytest

from conftest import run_vqtrace
from vqtrace.dissectors import DissectError, dissect, get_layer, mmio, parse, pci


def spans(tree) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for node in tree.walk():
        out.setdefault(node.abbrev, (node.offset, node.length))
    return out


# ----------------------------------------------------------------------------------------------
# 4.1.4 capabilities

CAP = "<BBBBBB2sII"  # struct virtio_pci_cap
CAP_OFFSETS = {"cap_vndr": (0, 1), "cap_next": (1, 1), "cap_len": (2, 1), "cfg_type": (3, 1), "bar": (4, 1),
               "id": (5, 1), "padding": (6, 2), "offset": (8, 4), "length": (12, 4)}


def cap(cfg_type: int, *, bar: int = 4, offset: int = 0x3000, length: int = 0x1000, cap_len: int = 16) -> bytes:
    return struct.pack(CAP, 0x09, 0x84, cap_len, cfg_type, bar, 0, b"\0\0", offset, length)


def test_virtio_pci_cap_is_16_bytes_at_spec_offsets():
    assert struct.calcsize(CAP) == pci.VIRTIO_PCI_CAP_SIZE == 16 == get_layer("virtio_pci.cap").sizeof()
    tree = dissect("virtio_pci.cap", cap(1))
    got = spans(tree)
    assert {name: got[f"virtio_pci.cap.{name}"] for name in CAP_OFFSETS} == CAP_OFFSETS
    assert tree["virtio_pci.cap.cap_vndr"] == pci.PCI_CAP_ID_VNDR == 0x09
    assert get_layer("virtio_pci.cap").summary(tree) == "virtio_pci cap COMMON_CFG bar=4 offset=0x3000 length=4096"


@pytest.mark.parametrize(("value", "name"), [(1, "COMMON_CFG"), (2, "NOTIFY_CFG"), (3, "ISR_CFG"), (4, "DEVICE_CFG"),
                                             (5, "PCI_CFG"), (8, "SHARED_MEMORY_CFG"), (9, "VENDOR_CFG")])
def test_cfg_type_names(value, name):
    tree = dissect("virtio_pci.cap", cap(value))
    assert tree.find("virtio_pci.cap.cfg_type").display == f"VIRTIO_PCI_CAP_{name} ({value})"


def test_reserved_cfg_type_is_shown_not_fatal():
    assert dissect("virtio_pci.cap", cap(6)).find("virtio_pci.cap.cfg_type").display == "Unknown (6)"


def test_cap64_notify_cap_cfg_cap_and_vendor_data():
    tree = dissect("virtio_pci.cap64", cap(8, offset=0, length=0) + struct.pack("<II", 0x1, 0x2))
    assert get_layer("virtio_pci.cap64").sizeof() == pci.VIRTIO_PCI_CAP64_SIZE == 24
    assert spans(tree)["virtio_pci.cap.offset_hi"] == (16, 4) and spans(tree)["virtio_pci.cap.length_hi"] == (20, 4)
    assert get_layer("virtio_pci.cap64").summary(tree) == (
        "virtio_pci cap SHARED_MEMORY_CFG bar=4 offset=0x100000000 length=8589934592")

    tree = dissect("virtio_pci.notify_cap", cap(2, cap_len=20) + struct.pack("<I", 4))
    assert get_layer("virtio_pci.notify_cap").sizeof() == pci.VIRTIO_PCI_NOTIFY_CAP_SIZE == 20
    assert spans(tree)["virtio_pci.cap.notify_off_multiplier"] == (16, 4)
    assert tree["virtio_pci.cap.notify_off_multiplier"] == 4

    tree = dissect("virtio_pci.cfg_cap", cap(5, bar=0, offset=0, length=4, cap_len=20) + b"\x01\x02\x03\x04")
    assert get_layer("virtio_pci.cfg_cap").sizeof() == pci.VIRTIO_PCI_CFG_CAP_SIZE == 20
    assert spans(tree)["virtio_pci.cap.pci_cfg_data"] == (16, 4)

    raw = struct.pack("<BBBBH", 0x09, 0, 12, 9, 0x8086) + b"abcdef"
    tree = dissect("virtio_pci.vndr_data", raw)
    assert spans(tree)["virtio_pci.cap.vendor_id"] == (4, 2) and tree["virtio_pci.cap.vendor_data"] == b"abcdef"
    assert get_layer("virtio_pci.vndr_data").summary(tree) == "virtio_pci cap VENDOR_CFG vendor_id=0x8086"


def test_capability_fields_mean_one_thing_across_capability_layers():
    kinds = {}
    for name in ("virtio_pci.cap", "virtio_pci.cap64", "virtio_pci.notify_cap", "virtio_pci.cfg_cap",
                 "virtio_pci.vndr_data"):
        for spec in get_layer(name).fields():
            assert kinds.setdefault(spec.abbrev, spec.kind) == spec.kind, spec.abbrev


def test_truncated_capability():
    with pytest.raises(DissectError) as info:
        dissect("virtio_pci.notify_cap", cap(2))
    assert (info.value.layer, info.value.offset) == ("virtio_pci.notify_cap", 16)
    assert "virtio_pci.cap.notify_off_multiplier needs 4 bytes, 0 left" in str(info.value)


# ----------------------------------------------------------------------------------------------
# 4.1.4.3 common configuration

# struct virtio_pci_common_cfg, written out from the spec: name -> (offset, width)
COMMON_CFG = {
    "device_feature_select": (0, 4), "device_feature": (4, 4), "driver_feature_select": (8, 4),
    "driver_feature": (12, 4), "config_msix_vector": (16, 2), "num_queues": (18, 2), "device_status": (20, 1),
    "config_generation": (21, 1), "queue_select": (22, 2), "queue_size": (24, 2), "queue_msix_vector": (26, 2),
    "queue_enable": (28, 2), "queue_notify_off": (30, 2), "queue_desc": (32, 8), "queue_driver": (40, 8),
    "queue_device": (48, 8), "queue_notif_config_data": (56, 2), "queue_reset": (58, 2),
    "admin_queue_index": (60, 2), "admin_queue_num": (62, 2),
}
COMMON_CFG_FMT = "<IIIIHHBBHHHHHQQQHHHH"


def common_cfg(**values) -> bytes:
    defaults = dict.fromkeys(COMMON_CFG, 0)
    defaults.update(values)
    return struct.pack(COMMON_CFG_FMT, *defaults.values())


def test_common_cfg_offsets_of_every_field():
    assert struct.calcsize(COMMON_CFG_FMT) == pci.COMMON_CFG_SIZE == 64
    tree = dissect("virtio_pci.common_cfg", common_cfg())
    got = spans(tree)
    assert {name: got[f"virtio_pci.common_cfg.{name}"] for name in COMMON_CFG} == COMMON_CFG
    assert {f.name: (f.offset, f.size) for f in pci.COMMON_CFG_FIELDS.values()} == COMMON_CFG


def test_common_cfg_values_and_summary():
    raw = common_cfg(device_feature_select=1, device_feature=0x1, num_queues=2, device_status=0x0F,
                     queue_select=1, queue_size=256, queue_msix_vector=pci.VIRTIO_MSI_NO_VECTOR, queue_enable=1,
                     queue_desc=0x1_2340_0000, queue_driver=0x1_2340_1000, queue_device=0x1_2340_2000,
                     queue_notif_config_data=7, queue_reset=0, admin_queue_index=2, admin_queue_num=1)
    tree = dissect("virtio_pci.common_cfg", raw)
    assert tree["virtio_pci.common_cfg.device_status.features_ok"] is True
    assert tree["virtio_pci.common_cfg.device_status.failed"] is False
    assert tree["virtio_pci.common_cfg.queue_msix_vector"] == 0xFFFF
    assert tree["virtio_pci.common_cfg.queue_device"] == 0x1_2340_2000
    assert tree["virtio_pci.common_cfg.admin_queue_index"] == 2
    assert get_layer("virtio_pci.common_cfg").summary(tree) == (
        "virtio_pci common_cfg status=ACKNOWLEDGE|DRIVER|DRIVER_OK|FEATURES_OK queue_select=1 queue_size=256 "
        "queue_enable=1 desc=0x123400000")
    values = parse("virtio_pci.common_cfg", raw)
    assert get_layer("virtio_pci.common_cfg").build(values) == raw


def test_common_cfg_of_an_older_device_ends_after_queue_device():
    tree = dissect("virtio_pci.common_cfg", common_cfg(queue_device=0x3000)[:pci.COMMON_CFG_V1_0_SIZE])
    assert tree["virtio_pci.common_cfg.queue_device"] == 0x3000
    assert "virtio_pci.common_cfg.queue_reset" not in tree
    tree = dissect("virtio_pci.common_cfg", common_cfg(queue_reset=1)[:60])  # virtio 1.2: with queue_reset
    assert tree["virtio_pci.common_cfg.queue_reset"] == 1 and "virtio_pci.common_cfg.admin_queue_index" not in tree
    with pytest.raises(DissectError) as info:
        dissect("virtio_pci.common_cfg", common_cfg()[:57])
    assert info.value.offset == 56 and "queue_notif_config_data" in str(info.value)
    with pytest.raises(DissectError):
        dissect("virtio_pci.common_cfg", common_cfg()[:40])


def test_bar_access_offsets_name_common_cfg_fields():
    assert pci.common_cfg_field(20, 1) == "device_status"
    assert pci.common_cfg_field(0x20, 8) == pci.common_cfg_field(0x20) == "queue_desc"
    assert pci.common_cfg_field(0x20, 4) == "queue_desc.low"
    assert pci.common_cfg_field(0x24, 4) == "queue_desc.high"  # 4.1.3: two 32-bit halves
    assert pci.common_cfg_field(0x3A, 2) == "queue_reset"
    assert pci.common_cfg_field(19) == "num_queues+1"
    assert pci.common_cfg_field(64) == "reserved+0x40"


def test_isr_status_bits():
    tree = dissect("virtio_pci.isr", b"\x03")
    assert tree["virtio_pci.isr.status.queue_interrupt"] is True
    assert tree["virtio_pci.isr.status.device_configuration_interrupt"] is True
    assert get_layer("virtio_pci.isr").summary(dissect("virtio_pci.isr", b"\x02")) == (
        "virtio_pci isr DEVICE_CONFIGURATION_INTERRUPT")
    assert dissect("virtio_pci.isr", b"\x80")["virtio_pci.isr.status.reserved"] == 0x20


# ----------------------------------------------------------------------------------------------
# 4.1.4.10 the legacy header

LEGACY = {"device_features": (0, 4), "driver_features": (4, 4), "queue_address": (8, 4), "queue_size": (12, 2),
          "queue_select": (14, 2), "queue_notify": (16, 2), "device_status": (18, 1), "isr_status": (19, 1)}


def legacy(msix: bool = False, config: bytes = b"") -> bytes:
    raw = struct.pack("<IIIHHHBB", 0x3000_0001, 0x1, 0x12345, 256, 0, 0, 0x07, 0x01)
    if msix:
        raw += struct.pack("<HH", 0, 1)
    return raw + config


def test_legacy_header_without_msix():
    tree = dissect("virtio_pci.legacy", legacy(config=b"\x52\x54\x00\x12\x34\x56"))
    got = spans(tree)
    assert {name: got[f"virtio_pci.legacy.{name}"] for name in LEGACY} == LEGACY
    assert "virtio_pci.legacy.config_msix_vector" not in tree
    # 4.1.4.10: device-specific configuration starts at byte 20 without MSI-X
    assert got["virtio_pci.legacy.device_config"] == (pci.LEGACY_HEADER_SIZE, 6) == (20, 6)
    assert get_layer("virtio_pci.legacy").summary(tree) == (
        "virtio_pci legacy status=ACKNOWLEDGE|DRIVER|DRIVER_OK queue_select=0 queue_size=256 queue_address=0x12345000")


def test_legacy_header_with_msix():
    tree = dissect("virtio_pci.legacy", legacy(msix=True, config=b"\xff"), params={"msix": 1})
    got = spans(tree)
    assert (got["virtio_pci.legacy.config_msix_vector"], got["virtio_pci.legacy.queue_msix_vector"]) == (
        (20, 2), (22, 2))
    assert got["virtio_pci.legacy.device_config"] == (pci.LEGACY_HEADER_MSIX_SIZE, 1) == (24, 1)
    assert pci.legacy_field(20) == "device config+0x0"
    assert pci.legacy_field(20, msix=True) == "config_msix_vector"
    assert pci.legacy_field(25, msix=True) == "device config+0x1"
    assert {pci.legacy_field(offset): (offset, width) for offset, width in LEGACY.values()} == {
        name: LEGACY[name] for name in LEGACY}


def test_transitional_ids():
    assert pci.VIRTIO_PCI_VENDOR_ID == 0x1AF4 and pci.VIRTIO_PCI_DEVICE_ID_BASE + 1 == 0x1041
    assert pci.TRANSITIONAL_DEVICE_IDS[0x1000] == 1 and pci.TRANSITIONAL_DEVICE_IDS[0x1009] == 9


# ----------------------------------------------------------------------------------------------
# 4.2 MMIO

# 4.2.2 table "MMIO Device Register Layout", written out from the spec
MMIO_V2 = {
    "MagicValue": 0x000, "Version": 0x004, "DeviceID": 0x008, "VendorID": 0x00C, "DeviceFeatures": 0x010,
    "DeviceFeaturesSel": 0x014, "DriverFeatures": 0x020, "DriverFeaturesSel": 0x024, "QueueSel": 0x030,
    "QueueSizeMax": 0x034, "QueueSize": 0x038, "QueueReady": 0x044, "QueueNotify": 0x050,
    "InterruptStatus": 0x060, "InterruptACK": 0x064, "Status": 0x070, "QueueDescLow": 0x080,
    "QueueDescHigh": 0x084, "QueueDriverLow": 0x090, "QueueDriverHigh": 0x094, "QueueDeviceLow": 0x0A0,
    "QueueDeviceHigh": 0x0A4, "SHMSel": 0x0AC, "SHMLenLow": 0x0B0, "SHMLenHigh": 0x0B4, "SHMBaseLow": 0x0B8,
    "SHMBaseHigh": 0x0BC, "QueueReset": 0x0C0, "ConfigGeneration": 0x0FC,
}
# 4.2.4 table "MMIO Device Legacy Register Layout"
MMIO_V1 = {
    "MagicValue": 0x000, "Version": 0x004, "DeviceID": 0x008, "VendorID": 0x00C, "HostFeatures": 0x010,
    "HostFeaturesSel": 0x014, "GuestFeatures": 0x020, "GuestFeaturesSel": 0x024, "GuestPageSize": 0x028,
    "QueueSel": 0x030, "QueueSizeMax": 0x034, "QueueSize": 0x038, "QueueAlign": 0x03C, "QueuePFN": 0x040,
    "QueueNotify": 0x050, "InterruptStatus": 0x060, "InterruptACK": 0x064, "Status": 0x070,
}


def regs(version: int = 2, config: bytes = b"", **values: int) -> bytes:
    table = mmio.REGISTERS if version == 2 else mmio.LEGACY_REGISTERS
    raw = bytearray(0x100)
    struct.pack_into("<4sII", raw, 0, b"virt", version, 1)
    for name, value in values.items():
        offset = next(r.offset for r in table.values() if r.name == name)
        struct.pack_into("<I", raw, offset, value)
    return bytes(raw) + config


@pytest.mark.parametrize(("layer", "table", "version"), [("virtio_mmio.regs", MMIO_V2, 2),
                                                         ("virtio_mmio.regs_legacy", MMIO_V1, 1)])
def test_mmio_register_offsets(layer, table, version):
    registers = mmio.REGISTERS if version == 2 else mmio.LEGACY_REGISTERS
    assert {r.name: r.offset for r in registers.values()} == table
    tree = dissect(layer, regs(version))
    got = spans(tree)
    assert {r.name: got[f"virtio_mmio.{r.field}"] for r in registers.values()} == {
        name: (offset, 4) for name, offset in table.items()}
    assert got["virtio_mmio"] == (0, 0x100) and "virtio_mmio.config" not in tree


def test_mmio_field_names_are_the_spec_register_names():
    fields = {r.name: r.field for r in mmio.REGISTERS.values()}
    assert fields["MagicValue"] == "magic_value" and fields["DeviceID"] == "device_id"
    assert fields["QueueSizeMax"] == "queue_size_max" and fields["SHMBaseHigh"] == "shm_base_high"
    assert fields["InterruptACK"] == "interrupt_ack" and fields["ConfigGeneration"] == "config_generation"


def test_mmio_values_config_and_summary():
    raw = regs(2, config=b"\x00\x10\x00\x00", Status=0x0F, QueueSel=1, QueueReady=1, QueueDescLow=0x2000,
               QueueDescHigh=0x1, InterruptStatus=3, SHMLenLow=0xFFFFFFFF, SHMLenHigh=0xFFFFFFFF)
    tree = dissect("virtio_mmio.regs", raw)
    assert tree["virtio_mmio.magic_value"] == b"virt" and tree["virtio_mmio.version"] == 2
    assert tree["virtio_mmio.status.features_ok"] is True
    assert tree["virtio_mmio.interrupt_status.used_buffer_notification"] is True
    assert tree["virtio_mmio.interrupt_status.configuration_change_notification"] is True
    assert tree["virtio_mmio.shm_len_high"] << 32 | tree["virtio_mmio.shm_len_low"] == mmio.SHM_LEN_NONE
    assert spans(tree)["virtio_mmio.config"] == (0x100, 4)
    assert get_layer("virtio_mmio.regs").summary(tree) == (
        "virtio_mmio v2 device_id=1 status=ACKNOWLEDGE|DRIVER|DRIVER_OK|FEATURES_OK queue_sel=1 queue_ready=1 "
        "desc=0x100002000")
    layer = get_layer("virtio_mmio.regs")
    assert layer.build(parse("virtio_mmio.regs", raw)) == raw


def test_mmio_legacy_values_and_round_trip():
    raw = regs(1, GuestPageSize=4096, QueueAlign=4096, QueuePFN=0x12345, QueueSizeMax=256, Status=3)
    tree = dissect("virtio_mmio.regs_legacy", raw)
    assert tree["virtio_mmio.guest_page_size"] == 4096 and tree["virtio_mmio.queue_pfn"] == 0x12345
    assert get_layer("virtio_mmio.regs_legacy").summary(tree) == (
        "virtio_mmio v1 device_id=1 status=ACKNOWLEDGE|DRIVER queue_sel=0 queue_pfn=0x12345")
    assert get_layer("virtio_mmio.regs_legacy").build(parse("virtio_mmio.regs_legacy", raw)) == raw


def test_mmio_magic_and_version_are_checked():
    with pytest.raises(DissectError) as info:
        dissect("virtio_mmio.regs", b"virx" + regs()[4:])
    assert (info.value.offset, "virtio_mmio.magic_value: expected b'virt', found b'virx'") == (
        0, str(info.value).split(": ", 1)[1])
    with pytest.raises(DissectError, match=re.escape("virtio_mmio.version: expected 2, found 1")):
        dissect("virtio_mmio.regs", regs(1))
    with pytest.raises(DissectError, match=re.escape("virtio_mmio.version: expected 1, found 2")):
        dissect("virtio_mmio.regs_legacy", regs(2))
    with pytest.raises(DissectError) as info:
        dissect("virtio_mmio.regs", regs()[:0x44])
    assert info.value.offset == 0x44 and "virtio_mmio.queue_ready" in str(info.value)


def test_mmio_register_names_for_single_accesses():
    assert mmio.register_name(0x070) == "Status"
    assert mmio.register_name(0x0C0) == "QueueReset"
    assert mmio.register_name(0x040) == "reserved(0x040)"
    assert mmio.register_name(0x040, legacy=True) == "QueuePFN"
    assert mmio.register_name(0x082) == "QueueDescLow+2"
    assert mmio.register_name(0x108) == "Config+0x8"
    assert mmio.REGISTERS[0x0B8].access == "R" and mmio.REGISTERS[0x044].access == "RW"


# ----------------------------------------------------------------------------------------------
# The CLI


def test_cli_decodes_common_cfg():
    raw = common_cfg(num_queues=2, device_status=0x0F, queue_size=256, queue_desc=0x1000)
    result = run_vqtrace("decode", "virtio_pci.common_cfg", raw.hex())
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "Number of queues: 2" in out and "Descriptor area address: 0x0000000000001000" in out
    assert "Device status: 0x0f (ACKNOWLEDGE, DRIVER, DRIVER_OK, FEATURES_OK)" in out
    result = run_vqtrace("decode", "virtio_pci.common_cfg", "-T", "json", raw.hex())
    fields = json.loads(result.stdout)["fields"]
    assert fields["virtio_pci.common_cfg.queue_size"] == 256 and fields["virtio_pci.common_cfg.admin_queue_num"] == 0


def test_cli_legacy_msix_parameter_and_mmio():
    result = run_vqtrace("decode", "virtio_pci.legacy", "--param", "msix=1", "-T", "json", legacy(msix=True).hex())
    assert json.loads(result.stdout)["fields"]["virtio_pci.legacy.queue_msix_vector"] == 1
    result = run_vqtrace("decode", "virtio_mmio.regs", (b"bad!" + regs()[4:]).hex())
    assert result.returncode == 2
    line = result.stderr.decode().strip()
    assert "\n" not in line and "virtio_mmio.regs at offset 0" in line and "expected b'virt'" in line
