"""Device IDs, device status, feature bits and their rules (virtio 1.4 and vhost-user).

Sources: virtio 1.4 (OASIS cs01, the ``oasis-tcs/virtio-spec`` repository) and QEMU's
``docs/interop/vhost-user.rst``; numbers cross-checked with Linux
``include/uapi/linux/virtio_*.h`` (tests/test_features.py).

Tables:

- :data:`DEVICE_TYPES` / :data:`DEVICE_IDS` (5 "Device Types"): every device ID the spec
  lists, 0 "reserved (invalid)" included; :data:`UNASSIGNED_DEVICE_IDS` are the numbers
  below 50 the table skips.
- :data:`DEVICE_STATUS` (2.1): the device status bits, SUSPEND included.
- :func:`bit_range` (2.2): which bits are device-specific, transport or reserved.
- :data:`TRANSPORT_FEATURES` (6, 6.3): bits 24 to 43, the legacy ones flagged;
  :data:`VHOST_FEATURES`: the two bits vhost-user gives another meaning (26, 30).
- :data:`DEVICE_FEATURES`: device-specific bits of net, blk, console, rng, balloon, scsi,
  gpu, input, vsock and fs (net has bits above 63: a feature word is an int of any width).
- :data:`VHOST_USER_PROTOCOL_FEATURES` (vhost-user.rst "Protocol features"):
  ``{name without VHOST_USER_PROTOCOL_F_: bit}``; :data:`PROTOCOL_FEATURE_BITS` describes them.
- :data:`TRANSPORT_RULES`, :data:`DEVICE_RULES`, :data:`PROTOCOL_RULES`: the dependency
  and negotiation rules the documents state, each with its section.

Where a bit's meaning depends on the device or on the version the tables say so: bit 41
is VIRTIO_F_ADMIN_VQ, but on a network device also the legacy VIRTIO_NET_F_GUEST_RSC4
(and 2.2 counts 41 and 42 among the device-type bits); bits 24, 27 and 30 exist only in
the legacy interface, and on a vhost-user connection 30 is VHOST_USER_F_PROTOCOL_FEATURES.

Analysis (pure functions over the tables): :func:`feature_space` / :data:`PROTOCOL_SPACE`
name the bits of one kind of word, :func:`decode` lists a word's set bits,
:func:`check` the rules one word breaks, :func:`compare` an offer against what the driver
(or vhost-user front-end) accepted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

VIRTIO = "virtio 1.4"
VHOST_USER_DOC = "QEMU docs/interop/vhost-user.rst"

# ---------------------------------------------------------------------------------------------
# 5 Device Types


@dataclass(frozen=True)
class DeviceType:
    """One row of the "Device Types" table."""

    id: int
    name: str  # as the spec's table writes it
    short: str  # vqtrace's short name (``--device net``)
    section: str = ""  # where the spec defines the device, if it does
    aliases: tuple[str, ...] = ()  # other names accepted on the command line


def _device(id: int, name: str, short: str, section: str = "", *aliases: str) -> DeviceType:
    return DeviceType(id, name, short, f"{VIRTIO}, {section}" if section else "", aliases)


DEVICE_TYPES: dict[int, DeviceType] = {d.id: d for d in (
    _device(0, "reserved (invalid)", "reserved"),
    _device(1, "network device", "net", "5.1", "network"),
    _device(2, "block device", "blk", "5.2", "block"),
    _device(3, "console", "console", "5.3", "serial"),
    _device(4, "entropy source", "rng", "5.4", "entropy"),
    _device(5, "memory ballooning (traditional)", "balloon", "5.5"),
    _device(6, "ioMemory", "iomem"),
    _device(7, "rpmsg", "rpmsg"),
    _device(8, "SCSI host", "scsi", "5.6"),
    _device(9, "9P transport", "9p"),
    _device(10, "mac80211 wlan", "mac80211-wlan"),
    _device(11, "rproc serial", "rproc-serial"),
    _device(12, "virtio CAIF", "caif"),
    _device(13, "memory balloon", "memory-balloon"),
    _device(16, "GPU device", "gpu", "5.7"),
    _device(17, "RTC (Real Time Clock) device", "rtc", "5.23", "clock"),
    _device(18, "Input device", "input", "5.8"),
    _device(19, "Socket device", "vsock", "5.10", "socket"),
    _device(20, "Crypto device", "crypto", "5.9"),
    _device(21, "Signal Distribution Module", "signal-dist"),
    _device(22, "pstore device", "pstore"),
    _device(23, "IOMMU device", "iommu", "5.13"),
    _device(24, "Memory device", "mem", "5.15"),
    _device(25, "Sound device", "sound", "5.14", "snd"),
    _device(26, "file system device", "fs", "5.11", "virtiofs"),
    _device(27, "PMEM device", "pmem", "5.19"),
    _device(28, "RPMB device", "rpmb", "5.12"),
    _device(29, "mac80211 hwsim wireless simulation device", "mac80211-hwsim"),
    _device(30, "Video encoder device", "video-encoder"),
    _device(31, "Video decoder device", "video-decoder"),
    _device(32, "SCMI device", "scmi", "5.17"),
    _device(33, "NitroSecureModule", "nsm"),
    _device(34, "I2C adapter", "i2c", "5.16"),
    _device(35, "Watchdog", "watchdog"),
    _device(36, "CAN device", "can", "5.20"),
    _device(38, "Parameter Server", "param-serv"),
    _device(39, "Audio policy device", "audio-policy"),
    _device(40, "Bluetooth device", "bt", "", "bluetooth"),
    _device(41, "GPIO device", "gpio", "5.18"),
    _device(42, "RDMA device", "rdma"),
    _device(43, "Camera device", "camera"),
    _device(44, "ISM device", "ism"),
    _device(45, "SPI controller", "spi", "5.21"),
    _device(46, "TEE device", "tee"),
    _device(47, "CPU balloon device", "cpu-balloon"),
    _device(48, "Media device", "media", "5.22"),
    _device(49, "USB controller", "usb"),
)}
#: Device ID -> the spec's name for it (5 "Device Types").
DEVICE_IDS: dict[int, str] = {d.id: d.name for d in DEVICE_TYPES.values()}
#: Numbers below 50 the table does not list (Linux's virtio_ids.h has 37 as VIRTIO_ID_DMABUF).
UNASSIGNED_DEVICE_IDS: tuple[int, ...] = tuple(n for n in range(50) if n not in DEVICE_TYPES)


def device_name(device_id: int) -> str:
    """The spec's name of ``device_id``, or ``unassigned device ID N``."""
    known = DEVICE_TYPES.get(device_id)
    return known.name if known else f"unassigned device ID {device_id}"


def find_device(text: str) -> DeviceType | None:
    """The device type a user names: ``net``, ``virtio-blk``, ``block device``, ``19``, ``0x13``."""
    key = text.strip().lower().replace("_", "-")
    if key.startswith("virtio") and len(key) > len("virtio"):
        key = key.removeprefix("virtio").removeprefix("-").removeprefix(" ")
    try:
        return DEVICE_TYPES.get(int(key, 0))
    except ValueError:
        pass
    for device in DEVICE_TYPES.values():
        if key in (device.short, device.name.lower(), *device.aliases):
            return device
    return None


# ---------------------------------------------------------------------------------------------
# 2.1 Device Status Field, in the order the spec lists the bits (the order they are typically set)

DEVICE_STATUS: dict[str, int] = {
    "ACKNOWLEDGE": 1,
    "DRIVER": 2,
    "DRIVER_OK": 4,
    "FEATURES_OK": 8,
    "SUSPEND": 16,  # only when VIRTIO_F_SUSPEND is negotiated (2.1, 3.4)
    "DEVICE_NEEDS_RESET": 64,  # Linux: VIRTIO_CONFIG_S_NEEDS_RESET
    "FAILED": 128,
}
DEVICE_STATUS_SECTION = f"{VIRTIO}, 2.1"


def status_names(status: int) -> list[str]:
    """The names of the device status bits set in ``status``; unknown bits as ``0xNN``."""
    names = [name for name, mask in DEVICE_STATUS.items() if status & mask]
    rest = status & ~sum(DEVICE_STATUS.values())
    return [*names, f"0x{rest:x}"] if rest else names


# ---------------------------------------------------------------------------------------------
# 2.2 Feature Bits: how the bit numbers are allocated

DEVICE_BIT_RANGES = ((0, 23), (41, 42), (50, 127))  # "Feature bits for the specific device type"
TRANSPORT_BIT_RANGES = ((24, 40), (43, 43))  # "reserved for extensions to the queue and feature negotiation"
RESERVED_BIT_RANGES = ((44, 49),)  # "... and 128 and above": reserved for future extensions
FEATURE_BITS_SECTION = f"{VIRTIO}, 2.2"


def bit_range(bit: int) -> str:
    """``device``, ``transport`` or ``reserved``: what 2.2 allocates ``bit`` to."""
    if bit < 0:
        raise ValueError(f"negative feature bit {bit}")
    for kind, ranges in (("device", DEVICE_BIT_RANGES), ("transport", TRANSPORT_BIT_RANGES)):
        if any(lo <= bit <= hi for lo, hi in ranges):
            return kind
    return "reserved"


# ---------------------------------------------------------------------------------------------
# Feature bit tables


@dataclass(frozen=True)
class FeatureBit:
    """One named feature bit."""

    bit: int
    name: str  # the spec's name, e.g. VIRTIO_NET_F_CSUM
    section: str  # where it is defined, e.g. "virtio 1.4, 5.1.3"
    text: str  # what it means, in short
    scope: str = "device"  # device, transport, vhost (vhost-user's own bits) or protocol
    legacy: bool = False  # defined only by a "Legacy Interface" section
    aliases: tuple[str, ...] = ()  # other names of the same bit (older spec, Linux, QEMU)
    note: str = ""  # where the meaning depends on the device or the version


def _table(prefix: str, section: str, scope: str, rows: Iterable[tuple]) -> dict[int, FeatureBit]:
    """``{bit: FeatureBit}`` from rows ``(bit, name, text[, options])``; names get ``prefix``."""
    table: dict[int, FeatureBit] = {}
    for bit, name, text, *rest in rows:
        options = dict(rest[0]) if rest else {}
        where = options.pop("section", section)
        full_name = options.pop("full_name", prefix + name)
        table[bit] = FeatureBit(bit, full_name, f"{VIRTIO}, {where}" if where[0].isdigit() else where,
                                text, scope, **options)
    return table


_LEGACY = {"legacy": True}

# 6 Reserved Feature Bits, 6.3 Legacy Interface: Reserved Feature Bits
TRANSPORT_FEATURES: dict[int, FeatureBit] = _table("VIRTIO_F_", "6", "transport", (
    (24, "NOTIFY_ON_EMPTY", "Device notifies when a virtqueue runs out of available descriptors, "
                            "even with notifications suppressed", {"section": "6.3", "legacy": True}),
    (27, "ANY_LAYOUT", "Device accepts arbitrary descriptor layouts (2.7.4.3)", {"section": "6.3", "legacy": True}),
    (28, "INDIRECT_DESC", "Driver can use descriptors with VIRTQ_DESC_F_INDIRECT",
     {"aliases": ("VIRTIO_RING_F_INDIRECT_DESC",)}),
    (29, "EVENT_IDX", "Enables the used_event and avail_event fields", {"aliases": ("VIRTIO_RING_F_EVENT_IDX",)}),
    (30, "UNUSED", "Used by QEMU to detect early virtio drivers that did not negotiate correctly; "
                   "SHOULD NOT be negotiated", {"section": "6.3", "legacy": True, "full_name": "UNUSED",
                                                "aliases": ("VIRTIO_F_BAD_FEATURE",),
                                                "note": "vhost-user reuses it as VHOST_USER_F_PROTOCOL_FEATURES"}),
    (32, "VERSION_1", "Compliance with this specification (absent: a legacy device or driver)"),
    (33, "ACCESS_PLATFORM", "Device access to memory is limited and/or translated by the platform (IOMMU)",
     {"aliases": ("VIRTIO_F_IOMMU_PLATFORM",)}),
    (34, "RING_PACKED", "Packed virtqueue layout (2.8)"),
    (35, "IN_ORDER", "Device uses all buffers in the order they were made available"),
    (36, "ORDER_PLATFORM", "Memory accesses are ordered as the platform describes (hardware barriers)"),
    (37, "SR_IOV", "Device supports Single Root I/O Virtualization (PCI only)"),
    (38, "NOTIFICATION_DATA", "Driver notifications carry extra data (next_off, next_wrap; 2.9)"),
    (39, "NOTIF_CONFIG_DATA", "Driver notifications use the device-supplied queue_notif_config_data"),
    (40, "RING_RESET", "Driver can reset a queue individually (2.6.1)"),
    (41, "ADMIN_VQ", "Device exposes administration virtqueues (PCI only so far)",
     {"note": "2.2 counts bits 41 and 42 as device-type bits; on a network device bit 41 is also "
              "the legacy VIRTIO_NET_F_GUEST_RSC4 (5.1.3.2)"}),
    (43, "SUSPEND", "Driver can suspend the device with the SUSPEND status bit (3.4)"),
))

# vhost-user's own meaning of two bits of the GET_FEATURES / SET_FEATURES word
VHOST_FEATURES: dict[int, FeatureBit] = {
    26: FeatureBit(26, "VHOST_F_LOG_ALL", f"{VHOST_USER_DOC}, Migration",
                   "Front-end logs dirty pages; SET_FEATURES with it starts logging", "vhost",
                   note="a vhost feature, not a virtio one (virtio leaves bit 26 unassigned)"),
    30: FeatureBit(30, "VHOST_USER_F_PROTOCOL_FEATURES", f"{VHOST_USER_DOC}, Communication",
                   "Back-end supports GET/SET_PROTOCOL_FEATURES; rings start disabled", "vhost",
                   note="the UNUSED (30) bit of virtio 1.4, 6.3"),
}

# 5.1.3 Network Device Feature bits, 5.1.3.2 Legacy Interface: Feature bits
NET_FEATURES = _table("VIRTIO_NET_F_", "5.1.3", "device", (
    (0, "CSUM", "Device handles packets with partial checksum offload"),
    (1, "GUEST_CSUM", "Driver handles packets with partial checksum"),
    (2, "CTRL_GUEST_OFFLOADS", "Control channel offloads reconfiguration"),
    (3, "MTU", "Device reports its maximum MTU in mtu"),
    (5, "MAC", "Device has given MAC address"),
    (6, "GSO", "Device handles packets with any GSO type", {"section": "5.1.3.2", **_LEGACY}),
    (7, "GUEST_TSO4", "Driver can receive TSOv4"),
    (8, "GUEST_TSO6", "Driver can receive TSOv6"),
    (9, "GUEST_ECN", "Driver can receive TSO with ECN"),
    (10, "GUEST_UFO", "Driver can receive UFO"),
    (11, "HOST_TSO4", "Device can receive TSOv4"),
    (12, "HOST_TSO6", "Device can receive TSOv6"),
    (13, "HOST_ECN", "Device can receive TSO with ECN"),
    (14, "HOST_UFO", "Device can receive UFO"),
    (15, "MRG_RXBUF", "Driver can merge receive buffers"),
    (16, "STATUS", "Configuration status field is available"),
    (17, "CTRL_VQ", "Control channel is available"),
    (18, "CTRL_RX", "Control channel RX mode support"),
    (19, "CTRL_VLAN", "Control channel VLAN filtering"),
    (20, "CTRL_RX_EXTRA", "Control channel RX extra mode support"),
    (21, "GUEST_ANNOUNCE", "Driver can send gratuitous packets"),
    (22, "MQ", "Device supports multiqueue with automatic receive steering"),
    (23, "CTRL_MAC_ADDR", "Set MAC address through control channel"),
    (41, "GUEST_RSC4", "Device coalesces TCP/IPv4 packets (the Windows driver fails if a device reports it)",
     {"section": "5.1.3.2", **_LEGACY, "note": "the same bit is VIRTIO_F_ADMIN_VQ (6)"}),
    (42, "GUEST_RSC6", "Device coalesces TCP/IPv6 packets", {"section": "5.1.3.2", **_LEGACY}),
    (50, "DEVICE_STATS", "Device-level statistics through the control virtqueue"),
    (51, "HASH_TUNNEL", "Inner header hash for encapsulated packets"),
    (52, "VQ_NOTF_COAL", "Virtqueue notification coalescing"),
    (53, "NOTF_COAL", "Notification coalescing"),
    (54, "GUEST_USO4", "Driver can receive USOv4 packets"),
    (55, "GUEST_USO6", "Driver can receive USOv6 packets"),
    (56, "HOST_USO", "Device can receive USO packets"),
    (57, "HASH_REPORT", "Device reports a per-packet hash value and type"),
    (59, "GUEST_HDRLEN", "Driver provides the exact hdr_len"),
    (60, "RSS", "Receive-side scaling with Toeplitz hash and configurable parameters"),
    (61, "RSC_EXT", "Device reports coalesced segments and duplicated ACKs"),
    (62, "STANDBY", "Device may act as a standby for a primary device with the same MAC address"),
    (63, "SPEED_DUPLEX", "Device reports speed and duplex"),
    (64, "RSS_CONTEXT", "Multiple RSS contexts"),
    (65, "GUEST_UDP_TUNNEL_GSO", "Driver can receive GSO packets carried by a UDP tunnel"),
    (66, "GUEST_UDP_TUNNEL_GSO_CSUM", "Driver handles UDP-tunnel packets with partial outer checksum"),
    (67, "HOST_UDP_TUNNEL_GSO", "Device can receive GSO packets carried by a UDP tunnel"),
    (68, "HOST_UDP_TUNNEL_GSO_CSUM", "Device handles UDP-tunnel packets with partial outer checksum"),
    (69, "OUT_NET_HEADER", "Driver provides outer_nh_offset"),
    (70, "IPSEC", "Inline IPsec processing (the header grows to ipsec_resource_hdr)"),
))

# 5.2.3 Block Device Feature bits, 5.2.3.1 Legacy Interface: Feature bits
BLK_FEATURES = _table("VIRTIO_BLK_F_", "5.2.3", "device", (
    (0, "BARRIER", "Device supports request barriers", {"section": "5.2.3.1", **_LEGACY}),
    (1, "SIZE_MAX", "Maximum size of any single segment is in size_max"),
    (2, "SEG_MAX", "Maximum number of segments in a request is in seg_max"),
    (4, "GEOMETRY", "Disk-style geometry specified in geometry"),
    (5, "RO", "Device is read-only"),
    (6, "BLK_SIZE", "Block size of disk is in blk_size"),
    (7, "SCSI", "Device supports SCSI packet commands", {"section": "5.2.3.1", **_LEGACY}),
    (9, "FLUSH", "Cache flush command support", {"aliases": ("VIRTIO_BLK_F_WCE",),
                                                 "note": "called VIRTIO_BLK_F_WCE in the legacy interface"}),
    (10, "TOPOLOGY", "Device exports information on optimal I/O alignment"),
    (11, "CONFIG_WCE", "Device can toggle its cache between writeback and writethrough"),
    (12, "MQ", "Device supports multiqueue"),
    (13, "DISCARD", "Discard command; limits in max_discard_sectors and max_discard_seg"),
    (14, "WRITE_ZEROES", "Write zeroes command; limits in max_write_zeroes_sectors and _seg"),
    (15, "LIFETIME", "Device provides storage lifetime information"),
    (16, "SECURE_ERASE", "Secure erase command; limits in max_secure_erase_sectors and _seg"),
    (17, "ZONED", "Device is a zoned block device"),
))

# 5.3.3 Console Device Feature bits
CONSOLE_FEATURES = _table("VIRTIO_CONSOLE_F_", "5.3.3", "device", (
    (0, "SIZE", "Configuration cols and rows are valid"),
    (1, "MULTIPORT", "Multiple ports; max_nr_ports is valid and control virtqueues are used"),
    (2, "EMERG_WRITE", "Emergency write; configuration field emerg_wr is valid"),
))

# 5.5.3 Traditional Memory Balloon Device Feature bits
BALLOON_FEATURES = _table("VIRTIO_BALLOON_F_", "5.5.3", "device", (
    (0, "MUST_TELL_HOST", "Host has to be told before pages from the balloon are used"),
    (1, "STATS_VQ", "A virtqueue for reporting guest memory statistics is present"),
    (2, "DEFLATE_ON_OOM", "Deflate balloon on guest out of memory condition"),
    (3, "FREE_PAGE_HINT", "Free page hinting virtqueue; free_page_hint_cmd_id is valid"),
    (4, "PAGE_POISON", "Driver writes poison_val to pages after deflating them"),
    (5, "PAGE_REPORTING", "Free page reporting virtqueue", {"aliases": ("VIRTIO_BALLOON_F_REPORTING",)}),
))

# 5.6.3 SCSI Host Device Feature bits
SCSI_FEATURES = _table("VIRTIO_SCSI_F_", "5.6.3", "device", (
    (0, "INOUT", "A request can include both device-readable and device-writable data buffers"),
    (1, "HOTPLUG", "Hot-plug and hot-unplug events for LUNs and targets"),
    (2, "CHANGE", "LUN parameter changes reported with VIRTIO_SCSI_T_PARAM_CHANGE"),
    (3, "T10_PI", "T10 protection information fields in the request header"),
))

# 5.7.3 GPU Device Feature bits
GPU_FEATURES = _table("VIRTIO_GPU_F_", "5.7.3", "device", (
    (0, "VIRGL", "virgl 3D mode is supported"),
    (1, "EDID", "EDID is supported"),
    (2, "RESOURCE_UUID", "Resources can be assigned UUIDs for export to other virtio devices"),
    (3, "RESOURCE_BLOB", "Size-based blob resources"),
    (4, "CONTEXT_INIT", "Multiple context types and synchronization timelines"),
    (5, "BLOB_ALIGNMENT", "Configuration field blob_alignment is valid"),
))

# 5.10.3 Socket Device Feature bits
VSOCK_FEATURES = _table("VIRTIO_VSOCK_F_", "5.10.3", "device", (
    (0, "STREAM", "Stream socket type is supported"),
    (1, "SEQPACKET", "Seqpacket socket type is supported"),
    (2, "NO_IMPLIED_STREAM", "Stream socket type is not implied"),
))

# 5.11.3 File System Device Feature bits
FS_FEATURES = _table("VIRTIO_FS_F_", "5.11.3", "device", (
    (0, "NOTIFICATION", "FUSE notify messages; the notification queue is virtqueue 1"),
))

#: Device ID -> its device-specific feature bits. The entropy (5.4.3: "None currently
#: defined") and input (5.8.3: "None.") devices define none.
DEVICE_FEATURES: dict[int, dict[int, FeatureBit]] = {
    1: NET_FEATURES,
    2: BLK_FEATURES,
    3: CONSOLE_FEATURES,
    4: {},
    5: BALLOON_FEATURES,
    8: SCSI_FEATURES,
    16: GPU_FEATURES,
    18: {},
    19: VSOCK_FEATURES,
    26: FS_FEATURES,
}
#: Where each device's feature bits are defined (also for the devices that define none).
DEVICE_FEATURE_SECTIONS: dict[int, str] = {
    1: f"{VIRTIO}, 5.1.3", 2: f"{VIRTIO}, 5.2.3", 3: f"{VIRTIO}, 5.3.3", 4: f"{VIRTIO}, 5.4.3",
    5: f"{VIRTIO}, 5.5.3", 8: f"{VIRTIO}, 5.6.3", 16: f"{VIRTIO}, 5.7.3", 18: f"{VIRTIO}, 5.8.3",
    19: f"{VIRTIO}, 5.10.3", 26: f"{VIRTIO}, 5.11.3",
}

# ---------------------------------------------------------------------------------------------
# vhost-user "Protocol features"

_PROTOCOL = f"{VHOST_USER_DOC}, Protocol features"
_PROTOCOL_ROWS: tuple[tuple, ...] = (
    (0, "MQ", "Multiple queues: VHOST_USER_GET_QUEUE_NUM"),
    (1, "LOG_SHMFD", "Dirty log in shared memory: SET_LOG_BASE carries the log fd and is answered"),
    (2, "RARP", "VHOST_USER_SEND_RARP after migration"),
    (3, "REPLY_ACK", "Any request sent with need_reply is answered"),
    (4, "MTU", "VHOST_USER_NET_SET_MTU", {"aliases": ("NET_MTU",),
                                          "note": "QEMU's code and message text call it NET_MTU"}),
    (5, "BACKEND_REQ", "Back-end channel: VHOST_USER_SET_BACKEND_REQ_FD", {"aliases": ("SLAVE_REQ",)}),
    (6, "CROSS_ENDIAN", "VHOST_USER_SET_VRING_ENDIAN for legacy devices"),
    (7, "CRYPTO_SESSION", "VHOST_USER_CREATE/CLOSE_CRYPTO_SESSION"),
    (8, "PAGEFAULT", "Postcopy migration: VHOST_USER_POSTCOPY_ADVISE/LISTEN/END"),
    (9, "CONFIG", "VHOST_USER_GET/SET_CONFIG and BACKEND_CONFIG_CHANGE_MSG"),
    (10, "BACKEND_SEND_FD", "Back-end requests may carry file descriptors (at most 8)",
     {"aliases": ("SLAVE_SEND_FD",)}),
    (11, "HOST_NOTIFIER", "VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG"),
    (12, "INFLIGHT_SHMFD", "Inflight I/O tracking: VHOST_USER_GET/SET_INFLIGHT_FD"),
    (13, "RESET_DEVICE", "VHOST_USER_RESET_DEVICE"),
    (14, "INBAND_NOTIFICATIONS", "Kick, call and error as messages: VHOST_USER_VRING_KICK, BACKEND_VRING_CALL/ERR"),
    (15, "CONFIGURE_MEM_SLOTS", "VHOST_USER_GET_MAX_MEM_SLOTS, ADD_MEM_REG, REM_MEM_REG"),
    (16, "STATUS", "VHOST_USER_SET/GET_STATUS"),
    (17, "XEN_MMAP", "Memory regions carry Xen mmap flags and a domid",
     {"note": "QEMU itself does not implement it (its enum only reserves 17)"}),
    (18, "SHARED_OBJECT", "Shared objects (dma-buf) by UUID: GET_SHARED_OBJECT, BACKEND_SHARED_OBJECT_*"),
    (19, "DEVICE_STATE", "Back-end state migration: SET_DEVICE_STATE_FD, CHECK_DEVICE_STATE"),
    (20, "GET_VRING_BASE_INFLIGHT", "Back-end may suspend in-flight requests on GET_VRING_BASE, "
                                    "recording them in the inflight region",
     {"note": "earlier revisions of the shared memory patch series used bit 20 for SHMEM"}),
    (21, "GPA_ADDRESSES", "Ring and region user addresses are guest-physical addresses"),
    (22, "SHMEM", "VIRTIO Shared Memory Regions: GET_SHMEM_CONFIG, BACKEND_SHMEM_MAP/UNMAP"),
    (23, "GET_VRING_BASE_SKIP_DRAIN", "VHOST_USER_GET_VRING_BASE_SKIP_DRAIN stops a ring without draining it"),
)
PROTOCOL_FEATURE_PREFIX = "VHOST_USER_PROTOCOL_F_"
#: vhost-user protocol feature bits: bit -> description (names with the VHOST_USER_PROTOCOL_F_ prefix).
PROTOCOL_FEATURE_BITS: dict[int, FeatureBit] = _table(PROTOCOL_FEATURE_PREFIX, _PROTOCOL, "protocol", _PROTOCOL_ROWS)
#: ``{name without VHOST_USER_PROTOCOL_F_: bit}``, every bit of "Protocol features".
VHOST_USER_PROTOCOL_FEATURES: dict[str, int] = {name: bit for bit, name, *_ in _PROTOCOL_ROWS}

# ---------------------------------------------------------------------------------------------
# Rules


@dataclass(frozen=True)
class Rule:
    """One rule a document states about feature bits.

    ``kind``:

    - ``requires``: ``feature`` needs every group of ``others`` (a group is satisfied by
      any one of its names). It binds every feature set: the device's offer (2.2.2) and
      what the driver accepts (2.2.1); ``side`` narrows it to one of them.
    - ``excludes``: ``feature`` together with any of ``others``.
    - ``accept``: a driver accepts ``feature`` when it is offered.
    - ``offer``: a device offers ``feature``.
    - ``avoid``: ``feature`` is not negotiated.

    ``level`` is the document's keyword: MUST (a violation), SHOULD, or NOTE (a
    consequence worth knowing, not a violation). ``legacy_only``: the rule binds only a
    negotiation without VIRTIO_F_VERSION_1.
    """

    kind: str
    feature: str
    others: tuple[tuple[str, ...], ...] = ()
    section: str = ""
    level: str = "MUST"
    text: str = ""
    side: str = "both"  # both, device or driver
    legacy_only: bool = False

    def names(self) -> Iterator[str]:
        """Every feature name the rule mentions."""
        yield self.feature
        for group in self.others:
            yield from group


def _needs(feature: str, *groups: str | tuple[str, ...], section: str, level: str = "MUST", text: str = "",
           side: str = "both") -> Rule:
    others = tuple(group if isinstance(group, tuple) else (group,) for group in groups)
    return Rule("requires", feature, others, section, level, text, side)


_NET_REQ = f"{VIRTIO}, 5.1.3.1"
_N = "VIRTIO_NET_F_"
_TCP_TSO = (f"{_N}GUEST_TSO4", f"{_N}GUEST_TSO6")
_HOST_TSO = (f"{_N}HOST_TSO4", f"{_N}HOST_TSO6")

#: Device ID -> the rules of that device's feature bits. Console (5.3), SCSI (5.6), entropy,
#: input and fs state no rules between their feature bits.
DEVICE_RULES: dict[int, tuple[Rule, ...]] = {
    1: (
        # 5.1.3.1 Feature bit requirements
        _needs(f"{_N}GUEST_TSO4", f"{_N}GUEST_CSUM", section=_NET_REQ),
        _needs(f"{_N}GUEST_TSO6", f"{_N}GUEST_CSUM", section=_NET_REQ),
        _needs(f"{_N}GUEST_ECN", _TCP_TSO, section=_NET_REQ),
        _needs(f"{_N}GUEST_UFO", f"{_N}GUEST_CSUM", section=_NET_REQ),
        _needs(f"{_N}GUEST_USO4", f"{_N}GUEST_CSUM", section=_NET_REQ),
        _needs(f"{_N}GUEST_USO6", f"{_N}GUEST_CSUM", section=_NET_REQ),
        _needs(f"{_N}GUEST_UDP_TUNNEL_GSO", f"{_N}GUEST_TSO4", f"{_N}GUEST_TSO6", f"{_N}GUEST_USO4",
               f"{_N}GUEST_USO6", section=_NET_REQ),
        _needs(f"{_N}GUEST_UDP_TUNNEL_GSO_CSUM", f"{_N}GUEST_UDP_TUNNEL_GSO", section=_NET_REQ),
        _needs(f"{_N}HOST_TSO4", f"{_N}CSUM", section=_NET_REQ),
        _needs(f"{_N}HOST_TSO6", f"{_N}CSUM", section=_NET_REQ),
        _needs(f"{_N}HOST_ECN", _HOST_TSO, section=_NET_REQ),
        _needs(f"{_N}HOST_UFO", f"{_N}CSUM", section=_NET_REQ),
        _needs(f"{_N}HOST_USO", f"{_N}CSUM", section=_NET_REQ),
        _needs(f"{_N}HOST_UDP_TUNNEL_GSO", f"{_N}HOST_TSO4", f"{_N}HOST_TSO6", f"{_N}HOST_USO", section=_NET_REQ),
        _needs(f"{_N}HOST_UDP_TUNNEL_GSO_CSUM", f"{_N}HOST_UDP_TUNNEL_GSO", section=_NET_REQ),
        _needs(f"{_N}CTRL_RX", f"{_N}CTRL_VQ", section=_NET_REQ),
        _needs(f"{_N}CTRL_VLAN", f"{_N}CTRL_VQ", section=_NET_REQ),
        _needs(f"{_N}GUEST_ANNOUNCE", f"{_N}CTRL_VQ", section=_NET_REQ),
        _needs(f"{_N}MQ", f"{_N}CTRL_VQ", section=_NET_REQ),
        _needs(f"{_N}CTRL_MAC_ADDR", f"{_N}CTRL_VQ", section=_NET_REQ),
        _needs(f"{_N}NOTF_COAL", f"{_N}CTRL_VQ", section=_NET_REQ),
        _needs(f"{_N}RSC_EXT", _HOST_TSO, section=_NET_REQ),
        _needs(f"{_N}RSS", f"{_N}CTRL_VQ", section=_NET_REQ),
        _needs(f"{_N}VQ_NOTF_COAL", f"{_N}CTRL_VQ", section=_NET_REQ),
        _needs(f"{_N}HASH_TUNNEL", f"{_N}CTRL_VQ", (f"{_N}RSS", f"{_N}HASH_REPORT"), section=_NET_REQ),
        _needs(f"{_N}RSS_CONTEXT", f"{_N}CTRL_VQ", f"{_N}RSS", section=_NET_REQ),
        # 5.1.3: "When a device offers IPsec feature, it SHOULD also offer the VIRTIO_NET_F_OUT_NET_HEADER"
        _needs(f"{_N}IPSEC", f"{_N}OUT_NET_HEADER", section=f"{VIRTIO}, 5.1.3", level="SHOULD", side="device"),
    ),
    2: (
        # 5.2.5.2 Device Requirements: Device Initialization
        _needs("VIRTIO_BLK_F_CONFIG_WCE", "VIRTIO_BLK_F_FLUSH", section=f"{VIRTIO}, 5.2.5.2", side="device",
               text="devices MUST offer VIRTIO_BLK_F_FLUSH if they offer VIRTIO_BLK_F_CONFIG_WCE"),
        Rule("offer", "VIRTIO_BLK_F_FLUSH", section=f"{VIRTIO}, 5.2.5.2", level="SHOULD", side="device"),
        _needs("VIRTIO_BLK_F_ZONED", "VIRTIO_F_VERSION_1", section=f"{VIRTIO}, 5.2.5.2", side="device",
               text="legacy devices MUST NOT offer VIRTIO_BLK_F_ZONED"),
    ),
    5: (
        # 5.5.3.1 Driver Requirements: Feature bits
        Rule("accept", "VIRTIO_BALLOON_F_MUST_TELL_HOST", section=f"{VIRTIO}, 5.5.3.1", level="SHOULD",
             text="the device MAY then fail FEATURES_OK (5.5.3.2)"),
        _needs("VIRTIO_BALLOON_F_PAGE_REPORTING", "VIRTIO_BALLOON_F_PAGE_POISON", section=f"{VIRTIO}, 5.5.3.1",
               level="NOTE", side="driver",
               text="a driver expecting pages to keep their contents MUST NOT accept PAGE_REPORTING without "
                    "PAGE_POISON"),
    ),
    16: (
        # 5.7.3 Feature bits: "Requires ..."
        _needs("VIRTIO_GPU_F_CONTEXT_INIT", "VIRTIO_GPU_F_VIRGL", section=f"{VIRTIO}, 5.7.3"),
        _needs("VIRTIO_GPU_F_BLOB_ALIGNMENT", "VIRTIO_GPU_F_RESOURCE_BLOB", section=f"{VIRTIO}, 5.7.3"),
    ),
    19: (
        # 5.10.3.1 / 5.10.3.2
        Rule("accept", "VIRTIO_VSOCK_F_NO_IMPLIED_STREAM", section=f"{VIRTIO}, 5.10.3.1", level="SHOULD"),
        Rule("offer", "VIRTIO_VSOCK_F_NO_IMPLIED_STREAM", section=f"{VIRTIO}, 5.10.3.2", level="SHOULD",
             side="device"),
    ),
}

#: Rules of the transport feature bits (6 "Reserved Feature Bits" and its legacy section).
TRANSPORT_RULES: tuple[Rule, ...] = (
    Rule("accept", "VIRTIO_F_VERSION_1", section=f"{VIRTIO}, 6.1"),
    Rule("accept", "VIRTIO_F_ACCESS_PLATFORM", section=f"{VIRTIO}, 6.1", level="SHOULD"),
    Rule("accept", "VIRTIO_F_RING_PACKED", section=f"{VIRTIO}, 6.1", level="SHOULD"),
    Rule("accept", "VIRTIO_F_ORDER_PLATFORM", section=f"{VIRTIO}, 6.1", level="SHOULD"),
    Rule("accept", "VIRTIO_F_NOTIF_CONFIG_DATA", section=f"{VIRTIO}, 6.1", level="SHOULD"),
    Rule("offer", "VIRTIO_F_VERSION_1", section=f"{VIRTIO}, 6.2", level="NOTE", side="device",
         text="a device without it is a legacy device (2.2.3)"),
    Rule("accept", "VIRTIO_F_ANY_LAYOUT", section=f"{VIRTIO}, 6.3", legacy_only=True,
         text="transitional drivers MUST accept it when offered"),
    Rule("avoid", "UNUSED", section=f"{VIRTIO}, 6.3", level="SHOULD", side="driver"),
)

#: Transport -> the transport feature bits it does not support ("Features reserved for future
#: use"; SR-IOV is PCI only, 6.1 / 6.2).
TRANSPORT_UNSUPPORTED: dict[str, dict[str, str]] = {
    "pci": {},
    "mmio": {"VIRTIO_F_ADMIN_VQ": f"{VIRTIO}, 4.2.5", "VIRTIO_F_SR_IOV": f"{VIRTIO}, 6.1"},
    "ccw": {"VIRTIO_F_ADMIN_VQ": f"{VIRTIO}, 4.3.4", "VIRTIO_F_RING_RESET": f"{VIRTIO}, 4.3.4",
            "VIRTIO_F_SR_IOV": f"{VIRTIO}, 6.1"},
}
TRANSPORTS = tuple(TRANSPORT_UNSUPPORTED)

_P = PROTOCOL_FEATURE_PREFIX
#: Rules of the vhost-user protocol features.
PROTOCOL_RULES: tuple[Rule, ...] = (
    _needs(f"{_P}INBAND_NOTIFICATIONS", f"{_P}BACKEND_REQ", f"{_P}REPLY_ACK",
           section=f"{VHOST_USER_DOC}, In-band notifications",
           text="it is considered an error to negotiate it without the other two"),
    _needs(f"{_P}BACKEND_SEND_FD", f"{_P}BACKEND_REQ", section=f"{VHOST_USER_DOC}, Back-end communication",
           text="the file descriptors travel on the back-end channel"),
    _needs(f"{_P}HOST_NOTIFIER", f"{_P}BACKEND_REQ", f"{_P}BACKEND_SEND_FD",
           section=f"{VHOST_USER_DOC}, Back-end message types",
           text="its message, VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG, is a back-end request carrying an fd"),
    _needs(f"{_P}GET_VRING_BASE_SKIP_DRAIN", f"{_P}GET_VRING_BASE_INFLIGHT", f"{_P}INFLIGHT_SHMFD",
           section=f"{VHOST_USER_DOC}, VHOST_USER_GET_VRING_BASE_SKIP_DRAIN"),
    _needs(f"{_P}SHMEM", f"{_P}BACKEND_REQ", f"{_P}BACKEND_SEND_FD", level="NOTE",
           section=f"{VHOST_USER_DOC}, Back-end message types",
           text="without them the back-end cannot send VHOST_USER_BACKEND_SHMEM_MAP (an fd on the back-end "
                "channel)"),
    Rule("excludes", f"{_P}PAGEFAULT", ((f"{_P}CONFIGURE_MEM_SLOTS",),), f"{VHOST_USER_DOC}, Migration",
         "NOTE", "postcopy migration is not supported when CONFIGURE_MEM_SLOTS is negotiated"),
)

# ---------------------------------------------------------------------------------------------
# Analysis


@dataclass(frozen=True)
class FeatureSpace:
    """The names of one kind of feature word and the rules that bind it."""

    title: str
    meanings: dict[int, tuple[FeatureBit, ...]]  # bit -> what it means, first meaning first
    rules: tuple[Rule, ...]
    device: DeviceType | None = None
    transport: str | None = None
    protocol: bool = False  # a vhost-user protocol feature word
    vhost_user: bool = False  # a vhost-user GET/SET_FEATURES word
    _bits: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        short: dict[str, int] = {}
        for bit, meanings in self.meanings.items():
            for meaning in meanings:
                for name in (meaning.name, *meaning.aliases):
                    self._bits.setdefault(name.upper(), bit)
                    # the name without its prefix: CSUM for VIRTIO_NET_F_CSUM, MQ for VHOST_USER_PROTOCOL_F_MQ
                    short.setdefault(name.upper().rsplit("_F_", 1)[-1], bit)
        for name, bit in short.items():
            self._bits.setdefault(name, bit)
        if not self.protocol:
            # QEMU names bit 30 VHOST_USER_F_PROTOCOL_FEATURES even for its emulated devices
            for bit, meaning in VHOST_FEATURES.items():
                self._bits.setdefault(meaning.name, bit)

    def bit_of(self, name: str) -> int | None:
        """The bit called ``name``: its spec name or an alias, with or without the prefix, any case."""
        return self._bits.get(name.strip().upper())

    def has_table(self) -> bool:
        """Whether vqtrace knows this word's device-specific bits (always, for protocol words)."""
        return self.protocol or (self.device is not None and self.device.id in DEVICE_FEATURES)

    def kind_of(self, bit: int) -> str:
        """``device``, ``transport``, ``vhost``, ``protocol`` or ``reserved`` for a set bit."""
        meanings = self.meanings.get(bit)
        if meanings:
            return meanings[0].scope
        if self.protocol:
            return "reserved"
        kind = bit_range(bit)
        return "device" if kind == "device" and not self.has_table() else "reserved"


def feature_space(device: int | DeviceType | None = None, *, transport: str | None = None,
                  vhost_user: bool = False) -> FeatureSpace:
    """The bits and rules of a feature word of ``device`` (a device ID, or None: transport bits only).

    ``vhost_user``: the word travels in VHOST_USER_GET/SET_FEATURES, where bit 26 is
    VHOST_F_LOG_ALL and bit 30 VHOST_USER_F_PROTOCOL_FEATURES.
    """
    if isinstance(device, int):
        device = DEVICE_TYPES.get(device) or DeviceType(device, device_name(device), str(device))
    if transport is not None and transport not in TRANSPORT_UNSUPPORTED:
        raise ValueError(f"unknown transport {transport!r} (known: {', '.join(TRANSPORTS)})")
    meanings: dict[int, list[FeatureBit]] = {bit: [meaning] for bit, meaning in TRANSPORT_FEATURES.items()}
    if vhost_user:
        for bit, meaning in VHOST_FEATURES.items():
            meanings.setdefault(bit, []).insert(0, meaning)
    device_bits = DEVICE_FEATURES.get(device.id, {}) if device else {}
    for bit, meaning in device_bits.items():
        meanings.setdefault(bit, []).append(meaning)
    rules = list(TRANSPORT_RULES)
    if device:
        rules += DEVICE_RULES.get(device.id, ())
    if vhost_user:
        rules = [rule for rule in rules if rule.feature != "UNUSED"]
    title = f"virtio {device.short} (device ID {device.id})" if device else "virtio (no device type)"
    return FeatureSpace(title, {bit: tuple(m) for bit, m in sorted(meanings.items())}, tuple(rules), device,
                        transport, vhost_user=vhost_user)


#: The vhost-user protocol feature word (GET/SET_PROTOCOL_FEATURES).
PROTOCOL_SPACE = FeatureSpace("vhost-user protocol features",
                              {bit: (meaning,) for bit, meaning in PROTOCOL_FEATURE_BITS.items()},
                              PROTOCOL_RULES, protocol=True)


def set_bits(value: int) -> list[int]:
    """The numbers of the bits set in ``value``, lowest first (any width)."""
    if value < 0:
        raise ValueError("a feature word is not negative")
    bits = []
    while value:
        low = value & -value
        bits.append(low.bit_length() - 1)
        value ^= low
    return bits


@dataclass(frozen=True)
class BitInfo:
    """One set bit of a decoded word."""

    bit: int
    kind: str  # device, transport, vhost, protocol or reserved
    meanings: tuple[FeatureBit, ...]

    @property
    def name(self) -> str:
        """The first meaning's name, or ``reserved`` / ``device bit N``."""
        if self.meanings:
            return self.meanings[0].name
        return f"device bit {self.bit}" if self.kind == "device" else "reserved"


def decode(value: int, space: FeatureSpace) -> list[BitInfo]:
    """Every bit set in ``value``, named in ``space``; bits it does not know are reserved."""
    return [BitInfo(bit, space.kind_of(bit), space.meanings.get(bit, ())) for bit in set_bits(value)]


@dataclass(frozen=True)
class Problem:
    """A rule a feature word (or a negotiation) breaks."""

    level: str  # MUST, SHOULD or NOTE
    message: str
    section: str
    bits: tuple[int, ...] = ()
    rule: Rule | None = None

    def __str__(self) -> str:
        return f"{self.level}: {self.message} [{self.section}]"


def _label(space: FeatureSpace, name: str) -> str:
    bit = space.bit_of(name)
    return name if bit is None else f"{name} ({bit})"


def _has(space: FeatureSpace, value: int, name: str) -> bool:
    bit = space.bit_of(name)
    return bit is not None and bool(value >> bit & 1)


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _parties(space: FeatureSpace) -> tuple[str, str]:
    """Who offers and who accepts a word of ``space``."""
    return ("back-end", "front-end") if space.protocol or space.vhost_user else ("device", "driver")


def _who(space: FeatureSpace, side: str) -> str:
    offerer, accepter = _parties(space)
    return {"device": f"the {offerer} offers", "driver": f"the {accepter} accepts"}.get(side, "")


def _word_problems(value: int, space: FeatureSpace, side: str) -> list[Problem]:
    """Rules broken by the one feature set ``value``; ``side`` is word, device or driver."""
    problems: list[Problem] = []
    who = _who(space, side)
    for rule in space.rules:
        if rule.side != "both" and rule.side != side:
            continue  # a rule of one side only binds a word known to be that side's
        if rule.kind not in ("requires", "excludes") or not _has(space, value, rule.feature):
            continue
        if rule.kind == "requires":
            missing = [group for group in rule.others if not any(_has(space, value, n) for n in group)]
            if not missing:
                continue
            wanted = _and([" or ".join(_label(space, n) for n in group) for group in missing])
            verb = f"{who} {_label(space, rule.feature)} without" if who else f"{_label(space, rule.feature)} requires"
            message = f"{verb} {wanted}".strip()
        else:
            present = [n for group in rule.others for n in group if _has(space, value, n)]
            if not present:
                continue
            message = f"{_label(space, rule.feature)} with {', '.join(_label(space, n) for n in present)}"
        if rule.text:
            message += f": {rule.text}"
        bits = tuple(b for b in (space.bit_of(n) for n in rule.names()) if b is not None)
        problems.append(Problem(rule.level, message, rule.section, bits, rule))
    if space.transport:
        for name, section in TRANSPORT_UNSUPPORTED[space.transport].items():
            if _has(space, value, name):
                subject = who or "the word has"
                problems.append(Problem("MUST", f"{subject} {_label(space, name)}, which the {space.transport} "
                                        "transport does not support", section, (space.bit_of(name) or 0,)))
    return problems


LEVELS = ("MUST", "SHOULD", "NOTE")


def by_level(problems: list[Problem]) -> list[Problem]:
    """``problems`` with the MUST ones first, then SHOULD, then NOTE (stable within a level)."""
    return sorted(problems, key=lambda problem: LEVELS.index(problem.level))


def check(value: int, space: FeatureSpace, *, side: str = "word") -> list[Problem]:
    """The rules one feature word breaks.

    ``side``: ``device`` (an offer), ``driver`` (what a driver accepted) or ``word``
    (unknown: only the rules that bind every feature set).
    """
    if side not in ("word", "device", "driver"):
        raise ValueError(f"side must be word, device or driver, not {side!r}")
    problems = _word_problems(value, space, side)
    offerer, accepter = _parties(space)
    for rule in space.rules:
        label = _label(space, rule.feature)
        extra = f": {rule.text}" if rule.text else ""
        bits = (space.bit_of(rule.feature) or 0,)
        if side == "device" and rule.kind == "offer" and not _has(space, value, rule.feature):
            problems.append(Problem(rule.level, f"the {offerer} does not offer {label}{extra}", rule.section, bits,
                                    rule))
        elif side == "driver" and rule.kind == "avoid" and _has(space, value, rule.feature):
            problems.append(Problem(rule.level, f"the {accepter} accepts {label}, which should not be negotiated"
                                    f"{extra}", rule.section, bits, rule))
    return by_level(problems)


@dataclass(frozen=True)
class BitNegotiation:
    """One bit of an offer/accept pair."""

    info: BitInfo
    offered: bool
    accepted: bool

    @property
    def status(self) -> str:
        """``accepted``, ``refused`` or ``not offered`` (accepted although the device never offered it)."""
        if self.offered:
            return "accepted" if self.accepted else "refused"
        return "not offered"


@dataclass(frozen=True)
class Negotiation:
    """An offer set beside an accepted set, bit by bit, with the problems found."""

    offered: int
    accepted: int
    bits: list[BitNegotiation]
    problems: list[Problem]

    def count(self, status: str) -> int:
        return sum(1 for bit in self.bits if bit.status == status)


def compare(offered: int, accepted: int, space: FeatureSpace) -> Negotiation:
    """``offered`` (the device's, or back-end's, features) beside what the driver (front-end) accepted."""
    union = offered | accepted
    infos = decode(union, space)
    bits = [BitNegotiation(info, bool(offered >> info.bit & 1), bool(accepted >> info.bit & 1)) for info in infos]
    problems = check(offered, space, side="device") + check(accepted, space, side="driver")
    offerer, subject = _parties(space)
    for neg in bits:
        if neg.status == "not offered":
            problems.append(Problem("MUST", f"the {subject} accepted {neg.info.name} (bit {neg.info.bit}), which "
                                    f"the {offerer} did not offer", f"{VIRTIO}, 2.2.1" if not space.protocol else
                                    f"{VHOST_USER_DOC}, Communication", (neg.info.bit,)))
        elif neg.info.kind == "reserved":
            document = "the vhost-user document" if space.protocol else "virtio 1.4"
            if neg.accepted:
                problems.append(Problem("SHOULD" if space.protocol else "MUST",
                                        f"the {subject} accepted reserved bit {neg.info.bit}, not described in "
                                        f"{document}", _PROTOCOL if space.protocol else f"{VIRTIO}, 2.2.1",
                                        (neg.info.bit,)))
            else:
                problems.append(Problem("NOTE", f"the {offerer} offers bit {neg.info.bit}, which {document} does "
                                        "not describe (a later version's feature, or a bug)",
                                        _PROTOCOL if space.protocol else f"{VIRTIO}, 2.2.2", (neg.info.bit,)))
    legacy = not _has(space, accepted, "VIRTIO_F_VERSION_1") and not space.protocol
    for rule in space.rules:
        if (rule.kind == "accept" and (legacy or not rule.legacy_only) and _has(space, offered, rule.feature)
                and not _has(space, accepted, rule.feature)):
            problems.append(Problem(rule.level, f"the {subject} refused {_label(space, rule.feature)}, which "
                                    f"the {offerer} offered" + (f": {rule.text}" if rule.text else ""),
                                    rule.section, (space.bit_of(rule.feature) or 0,), rule))
    return Negotiation(offered, accepted, bits, by_level(problems))
