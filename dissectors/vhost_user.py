"""vhost-user messages (QEMU docs/interop/vhost-user.rst) and the inflight I/O tracking region.

Authority: QEMU's "Vhost-user Protocol" document, with VHOST_USER_GET_SHMEM_CONFIG (44) and
VHOST_USER_BACKEND_SHMEM_MAP/UNMAP (9, 10). All numbers are in the machine's native byte
order, little-endian on every host vqtrace runs on.

Layers:

- ``vhost_user.msg`` (prefix ``vhost_user``): the 12-byte header (``request``, ``flags``
  with ``.version``/``.reply``/``.need_reply``, ``size``), then the payload the request
  and the reply flag select ("Front-end message types", "Back-end message types"). Every
  payload kind of the document has its own fields (``vhost_user.vring.index``,
  ``vhost_user.addr.desc``, ``vhost_user.region.guest_addr``, ...); an unknown request
  shows its payload as raw ``vhost_user.payload`` bytes. The data must be exactly one
  message: ``size`` must equal the bytes after the header and fit the request's layout,
  else a DissectError names the field.

  Context parameters: ``channel`` = ``"backend"`` (or 1, as ``vqtrace decode --param
  channel=1`` passes it) for messages on the back-end channel (requests sent by the
  back-end, "Back-end message types"), default the front-end channel; ``packed`` (bool)
  for the packed-virtqueue encoding of VHOST_USER_SET_VRING_BASE and of the
  VHOST_USER_GET_VRING_BASE reply; ``xen_mmap`` (bool) when
  VHOST_USER_PROTOCOL_F_XEN_MMAP was negotiated (memory regions then carry two more fields).
- ``vhost_user.inflight_split`` / ``vhost_user.inflight_packed``: one queue's region of the
  shared inflight buffer ("Inflight I/O tracking"): ``QueueRegionSplit`` /
  ``QueueRegionPacked`` and their ``desc[]`` array of ``queue_size`` entries (parameter;
  without it, ``desc_num`` of the header). :func:`inflight_split_resubmit` and
  :func:`inflight_packed_resubmit` list the heads a back-end must resubmit after a reconnect.

Plain tables for the engine: :data:`REQUESTS`, :data:`BACKEND_REQUESTS` (number -> name),
:data:`REQUEST_SPECS` / :data:`BACKEND_REQUEST_SPECS` (payload and reply kinds, file
descriptors, replies), :data:`FD_REQUESTS`, :data:`NEEDS_REPLY`, :data:`PREVIOUS_NAMES`,
:data:`OLD_PEER_NAMES`, :data:`HEADER_SIZE`, :data:`MAX_PAYLOAD`, and
:func:`pack_header` / :func:`unpack_header` / :func:`pack_message` / :func:`payload_kind`.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from construct import (
    Array,
    Bytes,
    Computed,
    ConstructError,
    Enum,
    GreedyBytes,
    Hex,
    If,
    Pass,
    Struct,
    Switch,
)

from .errors import DissectError, VqtraceError
from .features import VHOST_USER_PROTOCOL_FEATURES
from .layers import Layer, register
from .pci import DEVICE_STATUS
from .tree import Field
from .types import Address, Bitmask, MacAddress, bytes_left, enum_int, enum_name, le16, le32, le64, more_data, u8

# ---------------------------------------------------------------------------------------------
# Header ("Message Specification / Header")

HEADER_SIZE = 12  # request, flags, size: three 32-bit fields
HEADER = struct.Struct("<III")
VHOST_USER_VERSION = 0x1  # "Lower 2 bits are the version (currently 0x01)"
VHOST_USER_VERSION_MASK = 0x3
VHOST_USER_REPLY_MASK = 0x1 << 2
VHOST_USER_NEED_REPLY_MASK = 0x1 << 3
FLAGS = {"VERSION": VHOST_USER_VERSION_MASK, "REPLY": VHOST_USER_REPLY_MASK, "NEED_REPLY": VHOST_USER_NEED_REPLY_MASK}

#: Largest payload vqtrace accepts. The largest payload the document defines is the VIRTIO
#: Shared Memory Region configuration (8 + 256 * 8 = 2056 bytes); QEMU rejects any header
#: whose size exceeds sizeof(VhostUserPayload). 4096 leaves room and bounds a hostile peer.
MAX_PAYLOAD = 4096
#: At most this many file descriptors travel with one message (VHOST_MEMORY_BASELINE_NREGIONS;
#: "at most 8 descriptors in each message" on the back-end channel).
MAX_FDS = 8

# Payload constants
VHOST_MEMORY_BASELINE_NREGIONS = 8  # regions in a multiple memory regions description
VHOST_USER_MAX_CONFIG_SIZE = 256  # QEMU's bound on a config space access
VHOST_USER_MAX_SHMEM_REGIONS = 256  # "mem size 0 .. mem size 255"
VHOST_USER_F_PROTOCOL_FEATURES = 30  # feature bit of GET/SET_FEATURES ("Communication")
VHOST_F_LOG_ALL = 26  # vhost feature bit ("Migration")
VHOST_LOG_PAGE = 0x1000  # dirty log page size ("Migration")
VHOST_VRING_F_LOG = 0  # bit of the vring address flags
VHOST_USER_VRING_IDX_MASK = 0xFF  # SET_VRING_KICK/CALL/ERR u64, vring area u64: vring index
VHOST_USER_VRING_NOFD_MASK = 0x1 << 8  # ... and the invalid FD flag
MEMORY_REGION_SIZE = 32  # guest address, size, user address, mmap offset
MEMORY_REGION_XEN_SIZE = 40  # ... with xen mmap flags and domid (VHOST_USER_PROTOCOL_F_XEN_MMAP)
VRING_ADDR_SIZE = 40  # index, flags, descriptor, used, available, log
CONFIG_HDR_SIZE = 12  # offset, size, flags before the config bytes
INFLIGHT_SPLIT_HDR_SIZE = 16  # QueueRegionSplit before desc[]
INFLIGHT_SPLIT_DESC_SIZE = 16  # sizeof(DescStateSplit)
INFLIGHT_PACKED_HDR_SIZE = 32  # QueueRegionPacked before desc[] (8-byte aligned, see below)
INFLIGHT_PACKED_DESC_SIZE = 32  # sizeof(DescStatePacked)
MAX_QUEUE_SIZE = 32768  # virtio 1.4, 2.7: the largest queue size (bounds inflight walks)

PROTOCOL_FEATURE_MASKS = {name: 1 << bit for name, bit in VHOST_USER_PROTOCOL_FEATURES.items()}

# ---------------------------------------------------------------------------------------------
# Payload kinds ("Payload"): name -> the document's title and the sizes it may have


class PayloadSizeError(ConstructError, VqtraceError):
    """A payload whose size disagrees with the header or with its request's layout.

    A ConstructError, so the field-tree walker and ``Layer.parse`` report it as a
    DissectError with the layer and offset; a VqtraceError for callers of
    :func:`payload_kind`.
    """


@dataclass(frozen=True)
class PayloadKind:
    """One payload layout of the document and the sizes a message of it may have."""

    name: str
    title: str
    sizes: tuple[int, ...] = ()  # the exact sizes allowed; empty: any size in [min_size, max_size]
    min_size: int = 0
    max_size: int = MAX_PAYLOAD
    step: int = 1  # variable kinds: size - min_size is a multiple of step


def _kinds(*kinds: PayloadKind) -> dict[str, PayloadKind]:
    return {kind.name: kind for kind in kinds}


PAYLOAD_KINDS: dict[str, PayloadKind] = _kinds(
    PayloadKind("none", "no payload", (0,)),
    PayloadKind("u64", "u64", (8,)),
    PayloadKind("features", "u64 (feature bits)", (8,)),
    PayloadKind("protocol_features", "u64 (protocol feature bits)", (8,)),
    PayloadKind("vring_file", "u64 (vring index, invalid FD flag)", (8,)),
    PayloadKind("rarp", "u64 (MAC address)", (8,)),
    PayloadKind("mtu", "u64 (MTU)", (8,)),
    PayloadKind("status", "u64 (device status)", (8,)),
    PayloadKind("vring", "vring state description", (8,)),
    PayloadKind("vring_base", "vring descriptor index/indices", (8,)),
    PayloadKind("addr", "vring address description", (VRING_ADDR_SIZE,)),
    PayloadKind("memory", "multiple memory regions description", min_size=8,
                max_size=8 + VHOST_MEMORY_BASELINE_NREGIONS * MEMORY_REGION_SIZE, step=MEMORY_REGION_SIZE),
    PayloadKind("region", "single memory region description", (8 + MEMORY_REGION_SIZE,)),
    PayloadKind("log", "log description", (16,)),
    # struct vhost_iotlb_msg: 26 bytes of fields, 32 with the C structure's tail padding (QEMU sends 32)
    PayloadKind("iotlb", "IOTLB message", (32, 26)),
    PayloadKind("config", "virtio device config space", min_size=CONFIG_HDR_SIZE,
                max_size=CONFIG_HDR_SIZE + VHOST_USER_MAX_CONFIG_SIZE),
    PayloadKind("area", "vring area description", (24,)),
    # VhostUserInflight: 20 bytes of fields, 24 with the C structure's tail padding (QEMU sends 24)
    PayloadKind("inflight", "inflight description", (24, 20)),
    PayloadKind("shared", "VhostUserShared (UUID)", (16,)),
    PayloadKind("transfer_state", "device state transfer parameters", (8,)),
    PayloadKind("device_state_fd", "u64 (result, invalid FD flag)", (8,)),
    PayloadKind("device_state_result", "u64 (device state check result)", (8,)),
    PayloadKind("shmem_config", "VIRTIO Shared Memory Region configuration", min_size=8,
                max_size=8 + VHOST_USER_MAX_SHMEM_REGIONS * 8, step=8),
    PayloadKind("mmap", "MMAP request", (40,)),
    PayloadKind("crypto_session", "crypto session description (layout not defined by the document)"),
    PayloadKind("raw", "payload of an unknown request"),
)


def _kind_fits(kind: PayloadKind, size: int, params: Mapping[str, Any]) -> bool:
    sizes, low, high, step = kind.sizes, kind.min_size, kind.max_size, kind.step
    if params.get("xen_mmap") and kind.name in ("memory", "region"):
        region = MEMORY_REGION_XEN_SIZE
        if kind.name == "region":
            sizes = (8 + region,)
        else:
            high, step = 8 + VHOST_MEMORY_BASELINE_NREGIONS * region, region
    if sizes:
        return size in sizes
    return low <= size <= high and (size - low) % step == 0


def _kind_sizes(kind: PayloadKind, params: Mapping[str, Any]) -> str:
    if params.get("xen_mmap") and kind.name == "region":
        return f"{8 + MEMORY_REGION_XEN_SIZE} bytes"
    if kind.sizes:
        return " or ".join(str(size) for size in kind.sizes) + " bytes"
    step = MEMORY_REGION_XEN_SIZE if params.get("xen_mmap") and kind.name == "memory" else kind.step
    high = 8 + VHOST_MEMORY_BASELINE_NREGIONS * step if kind.name == "memory" else kind.max_size
    text = f"{kind.min_size} to {high} bytes"
    return text + (f" in steps of {step}" if step > 1 else "")


# ---------------------------------------------------------------------------------------------
# Requests ("Front-end message types", "Back-end message types", "Communication")


@dataclass(frozen=True)
class Request:
    """What the document says of one request number on one channel."""

    number: int
    name: str
    payload: tuple[str, ...] = ("none",)  # candidate payload kinds of the request, first fit wins
    reply: tuple[str, ...] = ("u64",)  # ... of its reply (a bare u64 when only REPLY_ACK answers it)
    fds: tuple[int, int] = (0, 0)  # min, max file descriptors sent with the request
    reply_fds: tuple[int, int] = (0, 0)  # ... with the reply
    needs_reply: bool | str = False  # True: always answered; a protocol feature name: when negotiated
    previous_name: str | None = None  # the name before the SLAVE -> BACKEND renaming (same meaning)
    old_peer_name: str | None = None  # what the number meant in old or out-of-tree peers (other meaning)
    note: str = ""


_FRONTEND = (
    Request(1, "VHOST_USER_GET_FEATURES", reply=("features",), needs_reply=True),
    Request(2, "VHOST_USER_SET_FEATURES", ("features",)),
    Request(3, "VHOST_USER_SET_OWNER"),
    Request(4, "VHOST_USER_RESET_OWNER", note="deprecated: back-ends ignore it or disable all rings"),
    Request(5, "VHOST_USER_SET_MEM_TABLE", ("memory",), ("u64", "memory"), fds=(0, VHOST_MEMORY_BASELINE_NREGIONS),
            note="one fd per region; after POSTCOPY_LISTEN the back-end replies with the regions it mapped"),
    Request(6, "VHOST_USER_SET_LOG_BASE", ("u64", "log"), fds=(0, 1), needs_reply="LOG_SHMFD",
            note="with LOG_SHMFD: a log description and the log fd, and a reply"),
    Request(7, "VHOST_USER_SET_LOG_FD", fds=(1, 1)),
    Request(8, "VHOST_USER_SET_VRING_NUM", ("vring",)),
    Request(9, "VHOST_USER_SET_VRING_ADDR", ("addr",)),
    Request(10, "VHOST_USER_SET_VRING_BASE", ("vring_base",)),
    Request(11, "VHOST_USER_GET_VRING_BASE", ("vring",), ("vring_base",), needs_reply=True,
            note="stops the vring"),
    Request(12, "VHOST_USER_SET_VRING_KICK", ("vring_file",), fds=(0, 1), note="no fd when the invalid FD flag is set"),
    Request(13, "VHOST_USER_SET_VRING_CALL", ("vring_file",), fds=(0, 1), note="no fd when the invalid FD flag is set"),
    Request(14, "VHOST_USER_SET_VRING_ERR", ("vring_file",), fds=(0, 1), note="no fd when the invalid FD flag is set"),
    Request(15, "VHOST_USER_GET_PROTOCOL_FEATURES", reply=("protocol_features",), needs_reply=True,
            old_peer_name="VHOST_USER_NET_SET_BACKEND"),
    Request(16, "VHOST_USER_SET_PROTOCOL_FEATURES", ("protocol_features",), old_peer_name="VHOST_USER_ECHO"),
    Request(17, "VHOST_USER_GET_QUEUE_NUM", reply=("u64",), needs_reply=True),
    Request(18, "VHOST_USER_SET_VRING_ENABLE", ("vring",), note="num 1 enables, 0 disables"),
    Request(19, "VHOST_USER_SEND_RARP", ("rarp",)),
    Request(20, "VHOST_USER_NET_SET_MTU", ("mtu",)),
    Request(21, "VHOST_USER_SET_BACKEND_REQ_FD", fds=(1, 1), previous_name="VHOST_USER_SET_SLAVE_REQ_FD"),
    Request(22, "VHOST_USER_IOTLB_MSG", ("iotlb",), ("u64",), needs_reply=True),
    Request(23, "VHOST_USER_SET_VRING_ENDIAN", ("vring",), note="num 0 little-endian, 1 big-endian"),
    Request(24, "VHOST_USER_GET_CONFIG", ("config",), ("config", "none"), needs_reply=True,
            note="a reply without payload reports an error"),
    Request(25, "VHOST_USER_SET_CONFIG", ("config",)),
    Request(26, "VHOST_USER_CREATE_CRYPTO_SESSION", ("crypto_session",), ("crypto_session",), needs_reply=True),
    Request(27, "VHOST_USER_CLOSE_CRYPTO_SESSION", ("u64",)),
    Request(28, "VHOST_USER_POSTCOPY_ADVISE", reply=("none", "u64"), reply_fds=(1, 1), needs_reply=True,
            note="the reply carries the userfault fd"),
    Request(29, "VHOST_USER_POSTCOPY_LISTEN"),
    Request(30, "VHOST_USER_POSTCOPY_END", reply=("u64",), needs_reply=True),
    Request(31, "VHOST_USER_GET_INFLIGHT_FD", ("inflight",), ("inflight",), reply_fds=(1, 1),
            needs_reply="INFLIGHT_SHMFD", note="the reply carries the inflight buffer's fd"),
    Request(32, "VHOST_USER_SET_INFLIGHT_FD", ("inflight",), fds=(1, 1)),
    Request(33, "VHOST_USER_GPU_SET_SOCKET", fds=(1, 1)),
    Request(34, "VHOST_USER_RESET_DEVICE"),
    Request(35, "VHOST_USER_VRING_KICK", ("vring",)),
    Request(36, "VHOST_USER_GET_MAX_MEM_SLOTS", reply=("u64",), needs_reply=True),
    # The document's table says "request payload: N/A, reply payload: single memory region
    # description"; its text (and every implementation) sends the region with the request.
    Request(37, "VHOST_USER_ADD_MEM_REG", ("region",), ("u64", "region"), fds=(1, 1),
            note="after POSTCOPY_LISTEN the back-end replies with the region it mapped"),
    Request(38, "VHOST_USER_REM_MEM_REG", ("region",), ("u64", "region"), fds=(0, 1),
            note="no fd SHOULD be sent; a back-end MAY accept (and close) one"),
    Request(39, "VHOST_USER_SET_STATUS", ("status",)),
    Request(40, "VHOST_USER_GET_STATUS", reply=("status",), needs_reply=True),
    Request(41, "VHOST_USER_GET_SHARED_OBJECT", ("shared",), ("none", "u64"), reply_fds=(0, 1), needs_reply=True,
            note="the reply carries the dma-buf fd when the UUID is known"),
    Request(42, "VHOST_USER_SET_DEVICE_STATE_FD", ("transfer_state",), ("device_state_fd",), fds=(1, 1),
            reply_fds=(0, 1), needs_reply=True, note="the reply may carry the back-end's own channel fd"),
    Request(43, "VHOST_USER_CHECK_DEVICE_STATE", reply=("device_state_result",), needs_reply=True),
    Request(44, "VHOST_USER_GET_SHMEM_CONFIG", reply=("shmem_config",), needs_reply=True),
)

_BACKEND = (
    Request(1, "VHOST_USER_BACKEND_IOTLB_MSG", ("iotlb",), previous_name="VHOST_USER_SLAVE_IOTLB_MSG"),
    Request(2, "VHOST_USER_BACKEND_CONFIG_CHANGE_MSG", previous_name="VHOST_USER_SLAVE_CONFIG_CHANGE_MSG"),
    Request(3, "VHOST_USER_BACKEND_VRING_HOST_NOTIFIER_MSG", ("area",), fds=(0, 1),
            previous_name="VHOST_USER_SLAVE_VRING_HOST_NOTIFIER_MSG", note="no fd de-registers the notifier"),
    Request(4, "VHOST_USER_BACKEND_VRING_CALL", ("vring",), previous_name="VHOST_USER_SLAVE_VRING_CALL"),
    Request(5, "VHOST_USER_BACKEND_VRING_ERR", ("vring",), previous_name="VHOST_USER_SLAVE_VRING_ERR"),
    # 6 to 9 were VHOST_USER_SLAVE_FS_MAP, _FS_UNMAP, _FS_IO and _MEM_ACCESS in the virtio-fs DAX
    # patch series that QEMU never merged; a peer built from them means something else there.
    Request(6, "VHOST_USER_BACKEND_SHARED_OBJECT_ADD", ("shared",), old_peer_name="VHOST_USER_SLAVE_FS_MAP"),
    Request(7, "VHOST_USER_BACKEND_SHARED_OBJECT_REMOVE", ("shared",), old_peer_name="VHOST_USER_SLAVE_FS_UNMAP"),
    Request(8, "VHOST_USER_BACKEND_SHARED_OBJECT_LOOKUP", ("shared",), ("u64",), reply_fds=(0, 1), needs_reply=True,
            old_peer_name="VHOST_USER_SLAVE_FS_IO", note="the reply carries the dma-buf fd on success"),
    Request(9, "VHOST_USER_BACKEND_SHMEM_MAP", ("mmap",), fds=(1, 1), needs_reply=True,
            old_peer_name="VHOST_USER_SLAVE_MEM_ACCESS"),
    Request(10, "VHOST_USER_BACKEND_SHMEM_UNMAP", ("mmap",), needs_reply=True),
)

REQUEST_SPECS: dict[int, Request] = {r.number: r for r in _FRONTEND}
BACKEND_REQUEST_SPECS: dict[int, Request] = {r.number: r for r in _BACKEND}
#: Front-end request number -> name (requests sent by the front-end, answered by the back-end).
REQUESTS: dict[int, str] = {r.number: r.name for r in _FRONTEND}
#: Back-end request number -> name (requests sent by the back-end on its own channel).
BACKEND_REQUESTS: dict[int, str] = {r.number: r.name for r in _BACKEND}
#: Names before the SLAVE -> BACKEND renaming (same number, same meaning).
PREVIOUS_NAMES: dict[int, str] = {r.number: r.previous_name for r in _FRONTEND if r.previous_name}
BACKEND_PREVIOUS_NAMES: dict[int, str] = {r.number: r.previous_name for r in _BACKEND if r.previous_name}
#: Numbers that meant something else in old peers (the first vhost-user prototypes used 15 and
#: 16 for NET_SET_BACKEND and ECHO) or in unmerged out-of-tree back-end channel extensions.
OLD_PEER_NAMES: dict[int, str] = {r.number: r.old_peer_name for r in _FRONTEND if r.old_peer_name}
BACKEND_OLD_PEER_NAMES: dict[int, str] = {r.number: r.old_peer_name for r in _BACKEND if r.old_peer_name}
#: Requests that carry file descriptors: number -> (min, max) fds with the request.
FD_REQUESTS: dict[int, tuple[int, int]] = {r.number: r.fds for r in _FRONTEND if r.fds[1]}
BACKEND_FD_REQUESTS: dict[int, tuple[int, int]] = {r.number: r.fds for r in _BACKEND if r.fds[1]}
#: Requests whose reply carries file descriptors: number -> (min, max).
REPLY_FD_REQUESTS: dict[int, tuple[int, int]] = {r.number: r.reply_fds for r in _FRONTEND if r.reply_fds[1]}
BACKEND_REPLY_FD_REQUESTS: dict[int, tuple[int, int]] = {r.number: r.reply_fds for r in _BACKEND
                                                         if r.reply_fds[1]}
#: Requests answered without need_reply: number -> None (always) or the protocol feature
#: (name without VHOST_USER_PROTOCOL_F_) that makes the reply happen. With
#: VHOST_USER_PROTOCOL_F_REPLY_ACK, any request sent with need_reply is answered too.
NEEDS_REPLY: dict[int, str | None] = {
    r.number: (None if r.needs_reply is True else r.needs_reply) for r in _FRONTEND if r.needs_reply}
BACKEND_NEEDS_REPLY: dict[int, str | None] = {
    r.number: (None if r.needs_reply is True else r.needs_reply) for r in _BACKEND if r.needs_reply}

_FRONTEND_NAMES = {r.name: r.number for r in _FRONTEND}
_BACKEND_NAMES = {r.name: r.number for r in _BACKEND}
BACKEND_CHANNEL = "backend"


def is_backend_channel(channel: Any) -> bool:
    """True for the back-end channel's spellings: "backend", "back-end" or 1 (from ``--param``)."""
    return channel in (BACKEND_CHANNEL, "back-end", 1) and channel is not True


def request_name(number: int, *, channel: Any = None) -> str:
    """The spec name of ``number`` on ``channel``, or ``VHOST_USER_<number>?`` when unknown."""
    table = BACKEND_REQUESTS if is_backend_channel(channel) else REQUESTS
    return table.get(number, f"VHOST_USER_{number}?")


def needs_reply(request: int, flags: int, *, channel: Any = None, protocol_features: int = 0) -> bool:
    """Whether the receiver of this request must answer it ("Communication", REPLY_ACK)."""
    table = BACKEND_NEEDS_REPLY if is_backend_channel(channel) else NEEDS_REPLY
    if flags & VHOST_USER_REPLY_MASK:
        return False
    if flags & VHOST_USER_NEED_REPLY_MASK and protocol_features & PROTOCOL_FEATURE_MASKS.get("REPLY_ACK", 0):
        return True
    if request not in table:
        return False
    feature = table[request]
    return feature is None or bool(protocol_features & PROTOCOL_FEATURE_MASKS.get(feature, 0))


def payload_kind(request: int, flags: int, size: int, *, channel: Any = None, xen_mmap: bool = False) -> str:
    """The payload kind (a :data:`PAYLOAD_KINDS` key) of a message; PayloadSizeError if none fits."""
    backend = is_backend_channel(channel)
    spec = (BACKEND_REQUEST_SPECS if backend else REQUEST_SPECS).get(request)
    if spec is None:
        return "raw"
    reply = bool(flags & VHOST_USER_REPLY_MASK)
    candidates = spec.reply if reply else spec.payload
    params = {"xen_mmap": xen_mmap}
    for name in candidates:
        if _kind_fits(PAYLOAD_KINDS[name], size, params):
            return name
    what = " or ".join(f"{PAYLOAD_KINDS[n].title} ({_kind_sizes(PAYLOAD_KINDS[n], params)})" for n in candidates)
    raise PayloadSizeError(f"vhost_user.size is {size}, but a {spec.name} {'reply' if reply else 'request'} "
                           f"carries {what}")


# ---------------------------------------------------------------------------------------------
# Header helpers


class Header(NamedTuple):
    """The three header fields of a message."""

    request: int
    flags: int
    size: int

    @property
    def version(self) -> int:
        return self.flags & VHOST_USER_VERSION_MASK

    @property
    def reply(self) -> bool:
        return bool(self.flags & VHOST_USER_REPLY_MASK)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & VHOST_USER_NEED_REPLY_MASK)


def pack_header(request: int, flags: int, size: int) -> bytes:
    """The 12 header bytes (native order, little-endian)."""
    return HEADER.pack(request, flags, size)


def unpack_header(data: bytes) -> Header:
    """The header at the start of ``data``; DissectError when fewer than 12 bytes."""
    if len(data) < HEADER_SIZE:
        raise DissectError("vhost_user.msg", len(data), f"truncated header: {len(data)} of {HEADER_SIZE} bytes")
    return Header(*HEADER.unpack_from(data))


def pack_message(request: int, payload: bytes = b"", *, reply: bool = False, need_reply: bool = False,
                 version: int = VHOST_USER_VERSION) -> bytes:
    """A whole message: header (``size`` = ``len(payload)``) then ``payload``."""
    flags = (version & VHOST_USER_VERSION_MASK) | (VHOST_USER_REPLY_MASK if reply else 0)
    flags |= VHOST_USER_NEED_REPLY_MASK if need_reply else 0
    return pack_header(request, flags, len(payload)) + bytes(payload)


# ---------------------------------------------------------------------------------------------
# The message layout


def _message_context(ctx: Any) -> Any:
    """The message's own context (the one holding ``backend_request``), from any nested context."""
    for _ in range(8):
        if ctx is None or "backend_request" in ctx:
            return ctx
        ctx = ctx.get("_")
    return ctx


def _params(ctx: Any) -> Mapping[str, Any]:
    return ctx.get("_params") or {}


def _backend(ctx: Any) -> bool:
    return is_backend_channel(_params(ctx).get("channel"))


def _request_number(msg: Any) -> int:
    if _backend(msg):
        return enum_int(msg.backend_request, _BACKEND_NAMES)
    return enum_int(msg.request, _FRONTEND_NAMES)


def _kind(ctx: Any) -> str:
    msg = _message_context(ctx)
    params = _params(msg)
    return payload_kind(_request_number(msg), int(msg.flags), msg.size, channel=params.get("channel"),
                        xen_mmap=bool(params.get("xen_mmap")))


def _when(*kinds: str) -> Any:
    return lambda ctx: _kind(ctx) in kinds


def _check_size(ctx: Any) -> None:
    """Before the payload: ``size`` matches the bytes present and the request's layout."""
    if ctx.get("_building") or ctx.get("_sizing") or ctx.get("_io") is None:
        return None
    size, present = ctx.size, bytes_left(ctx)
    if size > MAX_PAYLOAD:
        raise PayloadSizeError(f"vhost_user.size is {size}, more than the {MAX_PAYLOAD} bytes a payload may have")
    if size > present:
        raise PayloadSizeError(f"vhost_user.size is {size}, but only {present} payload bytes follow the header")
    if size < present:
        raise PayloadSizeError(f"{present - size} bytes follow the {size}-byte payload (vhost_user.size)")
    _kind(ctx)  # raises when the size fits none of the request's payload layouts
    return None


def _check_end(ctx: Any) -> None:
    """After the payload: its layout used every byte ``size`` announced."""
    if ctx.get("_building") or ctx.get("_sizing") or ctx.get("_io") is None:
        return None
    left = bytes_left(ctx)
    if left:
        kind = PAYLOAD_KINDS[_kind(ctx)]
        raise PayloadSizeError(f"{left} bytes after the {kind.title}: its fields end at byte "
                               f"{ctx.size - left} of the {ctx.size}-byte payload (vhost_user.size)")
    return None


def _region_size(ctx: Any) -> int:
    return MEMORY_REGION_XEN_SIZE if _params(_message_context(ctx)).get("xen_mmap") else MEMORY_REGION_SIZE


def _nregions(ctx: Any) -> int:
    count = ctx.memory.nregions
    if count > VHOST_MEMORY_BASELINE_NREGIONS:
        raise PayloadSizeError(f"vhost_user.memory.nregions is {count}, more than the "
                               f"{VHOST_MEMORY_BASELINE_NREGIONS} regions a memory table holds")
    if not ctx.get("_building") and ctx.get("_io") is not None:
        room = bytes_left(ctx) // _region_size(ctx)
        if count > room:
            raise PayloadSizeError(f"vhost_user.memory.nregions is {count}, but the payload holds {room} regions")
    return count


def _xen(ctx: Any) -> bool:
    return bool(_params(_message_context(ctx)).get("xen_mmap"))


def _vring_num_key(ctx: Any) -> str:
    if _kind(ctx) != "vring_base":
        return "state"
    return "packed" if _params(_message_context(ctx)).get("packed") else "split"


def _unused_regions(ctx: Any) -> bool:
    if ctx.get("_building"):
        return ctx.get("unused_regions") is not None
    return _kind(ctx) == "memory" and bytes_left(ctx) > 0


def _shmem_count(ctx: Any) -> int:
    return (_message_context(ctx).size - 8) // 8


# "Memory region description", with the two VHOST_USER_PROTOCOL_F_XEN_MMAP fields
XEN_MMAP_FLAGS = {"FOREIGN": 1 << 0, "GRANT": 1 << 1, "NO_ADVANCE_MAP": 1 << 8}
memory_region = Struct(
    "guest_addr" / Address() * "Guest address",
    "size" / Hex(le64) * "Size",
    "user_addr" / Address() * "User address",
    "mmap_offset" / Hex(le64) * "Mmap offset",
    "xen_mmap_flags" / If(_xen, Bitmask(le32, XEN_MMAP_FLAGS)) * "Xen mmap flags",
    "domid" / If(_xen, le32) * "Xen domain id",
)

# "A vring descriptor index for split virtqueues" / "Vring descriptor indices for packed virtqueues"
VRING_BASE_SPLIT = {"avail_idx": 0xFFFF, "reserved": 0xFFFF_0000}
VRING_BASE_PACKED = {"avail_idx": 0x7FFF, "avail_wrap_counter": 0x8000, "used_idx": 0x7FFF_0000,
                     "used_wrap_counter": 0x8000_0000}

IOTLB_TYPES = {"VHOST_IOTLB_MISS": 1, "VHOST_IOTLB_UPDATE": 2, "VHOST_IOTLB_INVALIDATE": 3,
               "VHOST_IOTLB_ACCESS_FAIL": 4}
IOTLB_PERM = {"READ": 1, "WRITE": 2}  # 0 no access, 1 read, 2 write, 3 read/write
CONFIG_FLAGS = {"VHOST_SET_CONFIG_TYPE_FRONTEND": 0, "VHOST_SET_CONFIG_TYPE_MIGRATION": 1}
TRANSFER_DIRECTIONS = {"VHOST_TRANSFER_STATE_DIRECTION_SAVE": 0, "VHOST_TRANSFER_STATE_DIRECTION_LOAD": 1}
TRANSFER_PHASES = {"VHOST_TRANSFER_STATE_PHASE_STOPPED": 0}
VRING_FILE = {"index": VHOST_USER_VRING_IDX_MASK, "invalid_fd": VHOST_USER_VRING_NOFD_MASK}
DEVICE_STATE_FD = {"error": 0xFF, "invalid_fd": 0x1 << 8}  # "Bits 0-7 ... Bit 8 is the invalid FD flag"
MMAP_FLAGS = {"MAP_RW": 1 << 0}  # VHOST_USER_FLAG_MAP_RW: 0 read-only, 1 read-write
FEATURE_BITS = {"VHOST_F_LOG_ALL": 1 << VHOST_F_LOG_ALL,
                "VHOST_USER_F_PROTOCOL_FEATURES": 1 << VHOST_USER_F_PROTOCOL_FEATURES}

vhost_user_msg = Struct(
    "request" / If(lambda c: not _backend(c), Enum(le32, **_FRONTEND_NAMES)) * "Request",
    "backend_request" / If(_backend, Enum(le32, **_BACKEND_NAMES)) * "Back-end request",
    "flags" / Bitmask(le32, FLAGS) * "Flags",
    "size" / le32 * "Payload size",
    Computed(_check_size),
    # single 64-bit integers
    "u64" / If(_when("u64"), le64) * "u64",
    "features" / If(_when("features"), Bitmask(le64, FEATURE_BITS)) * "Feature bits",
    "protocol_features" / If(_when("protocol_features"), Bitmask(le64, PROTOCOL_FEATURE_MASKS))
    * "Protocol feature bits",
    "vring_file" / If(_when("vring_file"), Bitmask(le64, VRING_FILE)) * "Vring index and invalid FD flag",
    "rarp" / If(_when("rarp"), Struct("mac" / MacAddress() * "Guest MAC address",
                                      "padding" / Bytes(2) * "Padding")) * "RARP",
    "mtu" / If(_when("mtu"), le64) * "MTU",
    "status" / If(_when("status"), Bitmask(le64, DEVICE_STATUS)) * "Device status",
    "device_state_fd" / If(_when("device_state_fd"), Bitmask(le64, DEVICE_STATE_FD)) * "Device state FD result",
    "device_state_result" / If(_when("device_state_result"), le64) * "Device state check result",
    # vring state / vring descriptor index (split) / indices (packed)
    "vring" / If(_when("vring", "vring_base"), Struct(
        "index" / le32 * "Vring index",
        "num" / Switch(_vring_num_key, {"split": Bitmask(le32, VRING_BASE_SPLIT),
                                        "packed": Bitmask(le32, VRING_BASE_PACKED)}, default=le32) * "Num",
    )) * "Vring state",
    "addr" / If(_when("addr"), Struct(
        "index" / le32 * "Vring index",
        "flags" / Bitmask(le32, {"LOG": 1 << VHOST_VRING_F_LOG}) * "Vring flags",
        "desc" / Address() * "Descriptor table address",
        "used" / Address() * "Used ring address",
        "avail" / Address() * "Available ring address",
        "log" / Address() * "Log guest address",
    )) * "Vring address",
    # multiple memory regions / single memory region
    "memory" / If(_when("memory"), Struct(
        "nregions" / le32 * "Number of regions",
        "padding" / le32 * "Padding",
    )) * "Memory table",
    "padding" / If(_when("region"), le64) * "Padding",
    "region" / Switch(lambda c: _kind(c), {"memory": Array(_nregions, memory_region),
                                           "region": memory_region}, default=Pass) * "Memory region",
    "unused_regions" / If(_unused_regions, GreedyBytes) * "Unused region slots",
    "log" / If(_when("log"), Struct(
        "size" / Hex(le64) * "Log size",
        "offset" / Hex(le64) * "Log offset",
    )) * "Log",
    "iotlb" / If(_when("iotlb"), Struct(
        "iova" / Address() * "I/O virtual address",
        "size" / Hex(le64) * "Size",
        "uaddr" / Address() * "User address",
        "perm" / Bitmask(u8, IOTLB_PERM) * "Permissions",
        "type" / Enum(u8, **IOTLB_TYPES) * "Type",
        "padding" / If(more_data("padding"), Bytes(6)) * "Padding",
    )) * "IOTLB message",
    "config" / If(_when("config"), Struct(
        "offset" / le32 * "Config space offset",
        "size" / le32 * "Config space access size",
        "flags" / Enum(le32, **CONFIG_FLAGS) * "Flags",
        "payload" / Bytes(lambda c: c.size) * "Config space contents",
    )) * "Device config space",
    "area" / If(_when("area"), Struct(
        "u64" / Bitmask(le64, VRING_FILE) * "Vring index and flags",
        "size" / Hex(le64) * "Area size",
        "offset" / Hex(le64) * "Area offset",
    )) * "Vring area",
    "inflight" / If(_when("inflight"), Struct(
        "mmap_size" / Hex(le64) * "Mmap size",
        "mmap_offset" / Hex(le64) * "Mmap offset",
        "num_queues" / le16 * "Number of queues",
        "queue_size" / le16 * "Queue size",
        "padding" / If(more_data("padding"), Bytes(4)) * "Padding",
    )) * "Inflight description",
    "shared" / If(_when("shared"), Struct("uuid" / Bytes(16) * "UUID")) * "Shared object",
    "transfer_state" / If(_when("transfer_state"), Struct(
        "direction" / Enum(le32, **TRANSFER_DIRECTIONS) * "Transfer direction",
        "phase" / Enum(le32, **TRANSFER_PHASES) * "Migration phase",
    )) * "Device state transfer parameters",
    "shmem" / If(_when("shmem_config"), Struct(
        "nregions" / le32 * "Number of regions",
        "padding" / le32 * "Padding",
        "mem_size" / Array(_shmem_count, Hex(le64)) * "Shared memory region size",
    )) * "Shared memory region configuration",
    "mmap" / If(_when("mmap"), Struct(
        "shmid" / u8 * "Shared memory region id",
        "padding" / Bytes(7) * "Padding",
        "fd_offset" / Hex(le64) * "Offset in the fd",
        "shm_offset" / Hex(le64) * "Offset in the shared memory region",
        "len" / Hex(le64) * "Length",
        "flags" / Bitmask(le64, MMAP_FLAGS) * "Flags",
    )) * "MMAP request",
    "crypto_session" / If(_when("crypto_session"), GreedyBytes) * "Crypto session description",
    "payload" / If(_when("raw"), GreedyBytes) * "Payload",
    Computed(_check_end),
)


# ---------------------------------------------------------------------------------------------
# Summary ("VHOST_USER_SET_VRING_ADDR idx=0")


def _get(tree: Field, abbrev: str) -> Any:
    node = tree.find(abbrev)
    return None if node is None else node.value


def format_uuid(raw: bytes) -> str:
    """The VhostUserShared UUID in its canonical form (its first components are big-endian)."""
    return str(uuid.UUID(bytes=bytes(raw)))


def _payload_text(tree: Field) -> str:
    p = tree.abbrev
    parts: list[str] = []
    for name in ("u64", "mtu", "device_state_result"):
        value = _get(tree, f"{p}.{name}")
        if value is not None:
            parts.append(str(value) if name == "u64" else f"{name}={value}")
    for name in ("features", "protocol_features", "status"):
        value = _get(tree, f"{p}.{name}")
        if value is not None:
            parts.append(f"0x{value:x}" if name != "status" else f"status=0x{value:x}")
    value = _get(tree, f"{p}.vring_file")
    if value is not None:
        parts.append(f"idx={value & VHOST_USER_VRING_IDX_MASK}" + (" nofd" if value & VHOST_USER_VRING_NOFD_MASK
                                                                   else ""))
    value = _get(tree, f"{p}.device_state_fd")
    if value is not None:
        parts.append(f"error={value & 0xFF}" + (" nofd" if value & 0x100 else ""))
    if f"{p}.vring.index" in tree:
        num = tree.find(f"{p}.vring.num")
        parts.append(f"idx={tree[p + '.vring.index']}")
        if num.children:
            parts.extend(f"{child.abbrev.rsplit('.', 1)[1]}={int(child.value)}" for child in num.children
                         if child.abbrev.rsplit(".", 1)[1] != "reserved")
        else:
            parts.append(f"num={num.value}")
    if f"{p}.addr.index" in tree:
        parts.append(f"idx={tree[p + '.addr.index']} desc=0x{tree[p + '.addr.desc']:x} "
                     f"avail=0x{tree[p + '.addr.avail']:x} used=0x{tree[p + '.addr.used']:x}")
        if tree[p + ".addr.flags"] & 1:
            parts.append(f"log=0x{tree[p + '.addr.log']:x}")
    if f"{p}.memory.nregions" in tree:
        parts.append(f"nregions={tree[p + '.memory.nregions']}")
    regions = tree.find_all(f"{p}.region.guest_addr")
    sizes = tree.find_all(f"{p}.region.size")
    parts.extend(f"gpa=0x{gpa.value:x}+0x{size.value:x}" for gpa, size in zip(regions, sizes, strict=False))
    for group, names in (("log", ("size", "offset")), ("area", ("size", "offset")),
                         ("inflight", ("mmap_size", "num_queues", "queue_size")),
                         ("config", ("offset", "size")), ("mmap", ("shmid", "shm_offset", "len"))):
        if f"{p}.{group}.{names[0]}" in tree:
            parts.extend(f"{name}={_hex_or_int(tree[f'{p}.{group}.{name}'])}" for name in names)
    if f"{p}.area.u64" in tree:
        parts.insert(0, f"idx={tree[p + '.area.u64'] & VHOST_USER_VRING_IDX_MASK}")
    if f"{p}.iotlb.type" in tree:
        kind = enum_name(tree.find(f"{p}.iotlb.type"), "VHOST_IOTLB_")
        parts.append(f"{kind} iova=0x{tree[p + '.iotlb.iova']:x} size=0x{tree[p + '.iotlb.size']:x}")
    if f"{p}.shared.uuid" in tree:
        parts.append(format_uuid(tree[p + ".shared.uuid"]))
    if f"{p}.transfer_state.direction" in tree:
        parts.append(enum_name(tree.find(f"{p}.transfer_state.direction"), "VHOST_TRANSFER_STATE_DIRECTION_")
                     + " " + enum_name(tree.find(f"{p}.transfer_state.phase"), "VHOST_TRANSFER_STATE_PHASE_"))
    if f"{p}.shmem.nregions" in tree:
        parts.append(f"nregions={tree[p + '.shmem.nregions']}")
    if f"{p}.rarp.mac" in tree:
        parts.append(tree[p + ".rarp.mac"])
    for name in ("crypto_session", "payload"):
        value = _get(tree, f"{p}.{name}")
        if value is not None:
            parts.append(f"{name}={len(value)} bytes")
    return " ".join(parts)


def _hex_or_int(value: int) -> str:
    return f"0x{value:x}" if value >= 0x10000 else str(value)


def _msg_summary(tree: Field) -> str:
    p = tree.abbrev
    request = tree.find(f"{p}.request") or tree.find(f"{p}.backend_request")
    name = request.display.rsplit(" (", 1)[0] if request is not None else "?"
    if name == "Unknown":
        name = f"request {request.value}"
    flags = _get(tree, f"{p}.flags") or 0
    text = name + (" reply" if flags & VHOST_USER_REPLY_MASK else "")
    if flags & VHOST_USER_NEED_REPLY_MASK:
        text += " need_reply"
    detail = _payload_text(tree)
    return f"{text} {detail}" if detail else text


# ---------------------------------------------------------------------------------------------
# Inflight I/O tracking ("Inflight I/O tracking")


def _inflight_count(ctx: Any) -> int:
    size = _params(ctx).get("queue_size")
    return ctx.desc_num if size is None else size


# typedef struct DescStateSplit
desc_state_split = Struct(
    "inflight" / u8 * "Inflight",
    "padding" / Bytes(5) * "Padding",
    "next" / le16 * "Next in last batch",
    "counter" / le64 * "Counter",
)

# typedef struct QueueRegionSplit
queue_region_split = Struct(
    "features" / Hex(le64) * "Features",
    "version" / le16 * "Version",
    "desc_num" / le16 * "Number of descriptor states",
    "last_batch_head" / le16 * "Last batch head",
    "used_idx" / le16 * "Used index",
    "desc" / Array(_inflight_count, desc_state_split) * "Descriptor state",
)

# typedef struct DescStatePacked
desc_state_packed = Struct(
    "inflight" / u8 * "Inflight",
    "padding" / Bytes(1) * "Padding",
    "next" / le16 * "Next free entry",
    "last" / le16 * "Last entry of the descriptor list",
    "num" / le16 * "Length of the descriptor list",
    "counter" / le64 * "Counter",
    "id" / le16 * "Buffer id",
    "flags" / Hex(le16) * "Descriptor flags",
    "len" / le32 * "Buffer length",
    "addr" / Address() * "Buffer address",
)

# typedef struct QueueRegionPacked. Its padding[7] ends at byte 29, but desc[] holds uint64_t
# members, so a C compiler starts it at byte 32: 3 more bytes of implicit padding.
queue_region_packed = Struct(
    "features" / Hex(le64) * "Features",
    "version" / le16 * "Version",
    "desc_num" / le16 * "Number of descriptor states",
    "free_head" / le16 * "Free list head",
    "old_free_head" / le16 * "Old free list head",
    "used_idx" / le16 * "Used index",
    "old_used_idx" / le16 * "Old used index",
    "used_wrap_counter" / u8 * "Used wrap counter",
    "old_used_wrap_counter" / u8 * "Old used wrap counter",
    "padding" / Bytes(10) * "Padding (7 declared, 3 for desc[] alignment)",
    "desc" / Array(_inflight_count, desc_state_packed) * "Descriptor state",
)


def inflight_split_resubmit(region: Any, used_ring_idx: int | None = None) -> list[int]:
    """Heads a split-queue back-end must resubmit after reconnecting, in fetch order.

    ``region`` is the parsed ``vhost_user.inflight_split`` (``Layer.parse``). When
    ``used_ring_idx`` (the ``idx`` of the used ring in guest memory) differs from
    ``used_idx``, the last batch, listed from ``last_batch_head`` through ``next``, is
    no longer in flight ("When reconnecting", step 1). Walks are bounded by the array.
    """
    desc = list(region.desc)
    inflight = [bool(entry.inflight) for entry in desc]
    if used_ring_idx is not None and used_ring_idx != region.used_idx:
        batch = (used_ring_idx - region.used_idx) & 0xFFFF
        head = region.last_batch_head
        for _ in range(min(batch, len(desc))):
            if head >= len(desc):
                break
            inflight[head] = False
            head = desc[head].next
    heads = [index for index, flag in enumerate(inflight) if flag]
    return sorted(heads, key=lambda index: desc[index].counter)


def inflight_packed_resubmit(region: Any) -> list[int]:
    """Head entries a packed-queue back-end must resubmit after reconnecting, in fetch order.

    Rolls back an in-progress update (``free_head`` := ``old_free_head``), drops the free
    list's entries (walked from ``old_free_head`` through ``next``, bounded by the array),
    and orders the remaining inflight heads by ``counter`` ("When reconnecting", steps 2-4;
    step 1 needs the descriptor ring, which the caller checks).
    """
    desc = list(region.desc)
    inflight = [bool(entry.inflight) for entry in desc]
    head, seen = region.old_free_head, set()
    while head < len(desc) and head not in seen:
        seen.add(head)
        inflight[head] = False
        head = desc[head].next
    heads = [index for index, flag in enumerate(inflight) if flag]
    return sorted(heads, key=lambda index: desc[index].counter)


def _inflight_summary(tree: Field) -> str:
    p = tree.abbrev
    flags = tree.find_all(f"{p}.desc.inflight")
    count = sum(1 for node in flags if node.value)
    return (f"vhost-user inflight v{tree[p + '.version']} desc_num={tree[p + '.desc_num']} "
            f"used_idx={tree[p + '.used_idx']} inflight={count}")


_DOC = "QEMU docs/interop/vhost-user.rst"
register(Layer("vhost_user.msg", vhost_user_msg, "vhost-user message", f"{_DOC}, Message Specification",
               prefix="vhost_user", summary=_msg_summary))
register(Layer("vhost_user.inflight_split", queue_region_split, "vhost-user inflight region (split queue)",
               f"{_DOC}, Inflight I/O tracking", summary=_inflight_summary))
register(Layer("vhost_user.inflight_packed", queue_region_packed, "vhost-user inflight region (packed queue)",
               f"{_DOC}, Inflight I/O tracking", summary=_inflight_summary))
