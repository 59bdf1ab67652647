"""What one vhost-user connection has negotiated, from the messages it carried (sans-io).

:class:`Session` watches requests and replies in order and keeps: the feature and
protocol-feature negotiation, the memory table (SET_MEM_TABLE, or ADD_MEM_REG /
REM_MEM_REG with VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS), each vring's size,
addresses, base, notification fds and ring state (stopped / started, enabled),
the inflight description and the replies still owed ("Communication",
"VHOST_USER_PROTOCOL_F_REPLY_ACK"). It holds values only: every role (proxy,
back-end, front-end) owns its fds and memory and asks the session what a message
means. QEMU docs/interop/vhost-user.rst is the authority for every rule here.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from ..dissectors import vhost_user as vu
from ..errors import VhostUserError
from ..model import VIRTIO_F_RING_PACKED, Layout, QueueConfig
from . import protocol as p
from .codec import BACKEND_CHANNEL, Message

VIRTIO_F_IOMMU_PLATFORM = 33


@dataclass
class Vring:
    """One vring as the front-end configured it ("Ring states")."""

    index: int
    num: int = 0  # SET_VRING_NUM: the queue size
    addr: p.VringAddr | None = None  # SET_VRING_ADDR: front-end virtual addresses
    base: int = 0  # SET_VRING_BASE num (split: next avail idx; packed: indices and wrap counters)
    kick: str = "none"  # "fd", "nofd" (polling) or "none" (not set yet)
    call: str = "none"
    err: str = "none"
    enabled: bool = False
    started: bool = False  # started on the first kick, stopped by GET_VRING_BASE
    last_base: int | None = None  # the GET_VRING_BASE reply when the ring was last stopped

    @property
    def ready(self) -> bool:
        """Size and addresses are known: the ring can be read."""
        return self.num > 0 and self.addr is not None


@dataclass
class Pending:
    """A request waiting for its reply."""

    message: Message
    why: str  # "always", "REPLY_ACK", a protocol feature name, "postcopy"


@dataclass
class Session:
    """The negotiated state of one vhost-user connection (front-end channel and back-end channel)."""

    features_offered: int | None = None  # GET_FEATURES reply
    features: int = 0  # SET_FEATURES
    features_set: bool = False
    protocol_offered: int | None = None  # GET_PROTOCOL_FEATURES reply
    protocol: int = 0  # SET_PROTOCOL_FEATURES
    owner: bool = False
    regions: list[p.MemoryRegion] = field(default_factory=list)
    vrings: dict[int, Vring] = field(default_factory=dict)
    inflight: p.Inflight | None = None  # GET_INFLIGHT_FD reply / SET_INFLIGHT_FD
    backend_channel: bool = False
    status: int = 0
    postcopy_listening: bool = False
    queue_num: int | None = None
    max_mem_slots: int | None = None
    pending: deque[Pending] = field(default_factory=deque)  # front-end requests owed a reply
    backend_pending: deque[Pending] = field(default_factory=deque)  # back-end requests owed a reply

    # -- negotiation ----------------------------------------------------------------------

    def has_protocol(self, name: str) -> bool:
        """Whether protocol feature ``name`` was negotiated (set by SET_PROTOCOL_FEATURES)."""
        return bool(self.protocol >> p.PROTOCOL_FEATURES[name] & 1)

    @property
    def protocol_features_negotiated(self) -> bool:
        """VHOST_USER_F_PROTOCOL_FEATURES offered by the back-end ("Ring states", "Communication")."""
        if self.features_set:
            return bool(self.features & p.F_PROTOCOL_FEATURES)
        return bool((self.features_offered or 0) & p.F_PROTOCOL_FEATURES)

    @property
    def layout(self) -> Layout:
        return Layout.PACKED if self.features >> VIRTIO_F_RING_PACKED & 1 else Layout.SPLIT

    def vring(self, index: int) -> Vring:
        ring = self.vrings.get(index)
        if ring is None:
            ring = self.vrings[index] = Vring(index)
            # "If VHOST_USER_F_PROTOCOL_FEATURES has not been negotiated, the ring starts
            # directly in the enabled state."
            ring.enabled = not self.protocol_features_negotiated
        return ring

    def reply_reason(self, msg: Message) -> str | None:
        """Why the receiver of request ``msg`` must answer it, or None when it must not."""
        if msg.reply:
            return None
        backend = msg.channel == BACKEND_CHANNEL
        table = vu.BACKEND_NEEDS_REPLY if backend else vu.NEEDS_REPLY
        if msg.request in table:
            feature = table[msg.request]
            if feature is None:
                return "always"
            if self.has_protocol(feature):
                return feature
        if not backend and self.postcopy_listening and msg.request in (p.SET_MEM_TABLE, p.ADD_MEM_REG):
            return "postcopy"  # "SET_MEM_TABLE replies with the bases of the memory mapped regions"
        if msg.need_reply and self.has_protocol("REPLY_ACK"):
            return "REPLY_ACK"
        return None

    # -- the front-end's requests ---------------------------------------------------------

    def on_request(self, msg: Message) -> Pending | None:
        """Account for request ``msg`` (sent by the front-end, or by the back-end on its
        channel); returns the Pending entry when it is owed a reply."""
        why = self.reply_reason(msg)
        pending = Pending(msg, why) if why else None
        if msg.channel == BACKEND_CHANNEL:
            if pending:
                self.backend_pending.append(pending)
            return pending
        if pending:
            self.pending.append(pending)
        self._apply_request(msg)
        return pending

    def _apply_request(self, msg: Message) -> None:
        request, payload = msg.request, msg.payload
        if request == p.SET_OWNER:
            self.owner = True
        elif request == p.SET_FEATURES:
            self.features = p.unpack_u64(payload)
            self.features_set = True
        elif request == p.SET_PROTOCOL_FEATURES:
            self.protocol = p.unpack_u64(payload)
        elif request == p.SET_MEM_TABLE:
            self.regions = p.unpack_memory(payload)
        elif request == p.ADD_MEM_REG:
            self.regions.append(p.unpack_region(payload))
        elif request == p.REM_MEM_REG:
            gone = p.unpack_region(payload)
            # "identified by its guest address, user address and size. The mmap offset is ignored."
            self.regions = [r for r in self.regions if (r.guest_addr, r.user_addr, r.size)
                            != (gone.guest_addr, gone.user_addr, gone.size)]
        elif request == p.SET_VRING_NUM:
            state = p.unpack_state(payload)
            self.vring(state.index).num = state.num
        elif request == p.SET_VRING_ADDR:
            addr = p.unpack_addr(payload)
            self.vring(addr.index).addr = addr
        elif request == p.SET_VRING_BASE:
            state = p.unpack_state(payload)
            self.vring(state.index).base = state.num
        elif request in (p.SET_VRING_KICK, p.SET_VRING_CALL, p.SET_VRING_ERR):
            index, nofd = p.unpack_vring_file(payload)
            ring = self.vring(index)
            value = "nofd" if nofd else "fd"
            if request == p.SET_VRING_KICK:
                ring.kick = value
                if nofd:
                    ring.started = True  # "This signals that polling should be used"
            elif request == p.SET_VRING_CALL:
                ring.call = value
            else:
                ring.err = value
        elif request == p.VRING_KICK:
            self.vring(p.unpack_state(payload).index).started = True
        elif request == p.SET_VRING_ENABLE:
            state = p.unpack_state(payload)
            self.vring(state.index).enabled = bool(state.num)
        elif request == p.GET_VRING_BASE:
            self.vring(p.unpack_state(payload).index).started = False  # "stop ring upon receiving"
        elif request == p.SET_BACKEND_REQ_FD:
            self.backend_channel = True
        elif request == p.SET_INFLIGHT_FD:
            self.inflight = p.unpack_inflight(payload)
        elif request == p.SET_STATUS:
            self.status = p.unpack_u64(payload)
        elif request == 29:  # VHOST_USER_POSTCOPY_LISTEN
            self.postcopy_listening = True
        elif request == 30:  # VHOST_USER_POSTCOPY_END
            self.postcopy_listening = False
        elif request in (p.RESET_OWNER, p.RESET_DEVICE):
            # "disable all rings and reset all internal device state to the initial state"
            for ring in self.vrings.values():
                ring.started = False
                ring.enabled = not self.protocol_features_negotiated
            self.status = 0

    def kicked(self, index: int) -> None:
        """A kick arrived on vring ``index``: "The back-end must start ring upon receiving a kick"."""
        self.vring(index).started = True

    # -- replies --------------------------------------------------------------------------

    def on_reply(self, msg: Message) -> Pending:
        """Match reply ``msg`` to the oldest request owed one; VhostUserError when none is."""
        queue = self.backend_pending if msg.channel == BACKEND_CHANNEL else self.pending
        if not queue:
            raise VhostUserError(f"unexpected reply {msg.describe()}: no request is waiting for one")
        pending = queue[0]
        if pending.message.request != msg.request:
            raise VhostUserError(f"reply {msg.describe()} does not answer the pending "
                                 f"{pending.message.describe()}")
        queue.popleft()
        if msg.channel != BACKEND_CHANNEL:
            self._apply_reply(pending.message, msg)
        return pending

    def _apply_reply(self, request: Message, msg: Message) -> None:
        if pending_ack_only(request, msg):
            return
        number, payload = msg.request, msg.payload
        if number == p.GET_FEATURES:
            self.features_offered = p.unpack_u64(payload)
        elif number == p.GET_PROTOCOL_FEATURES:
            self.protocol_offered = p.unpack_u64(payload)
        elif number == p.GET_VRING_BASE:
            state = p.unpack_state(payload)
            self.vring(state.index).last_base = state.num
        elif number == p.GET_INFLIGHT_FD:
            self.inflight = p.unpack_inflight(payload)
        elif number == p.GET_QUEUE_NUM:
            self.queue_num = p.unpack_u64(payload)
        elif number == p.GET_MAX_MEM_SLOTS:
            self.max_mem_slots = p.unpack_u64(payload)
        elif number == p.GET_STATUS:
            self.status = p.unpack_u64(payload)

    # -- addresses ------------------------------------------------------------------------

    def user_to_guest(self, user_addr: int, length: int = 1) -> int:
        """The guest-physical address of front-end virtual ``user_addr`` ("Memory access")."""
        for region in self.regions:
            if region.user_addr <= user_addr and user_addr + length <= region.user_addr + region.size:
                return region.guest_addr + user_addr - region.user_addr
        raise VhostUserError(f"front-end address 0x{user_addr:x} is in no memory region")

    def queue_config(self, index: int, device_type: int = 0) -> QueueConfig:
        """The QueueConfig of vring ``index``, its areas translated to guest-physical addresses.

        "Note that a ring address is an IOVA if VIRTIO_F_IOMMU_PLATFORM has been negotiated.
        Otherwise it is a user address": vqtrace translates user addresses through the memory
        table (with an IOMMU it would need the IOTLB, which it does not follow).
        """
        ring = self.vrings.get(index)
        if ring is None or not ring.ready:
            raise VhostUserError(f"vring {index} has no size or addresses yet")
        if self.features >> VIRTIO_F_IOMMU_PLATFORM & 1:
            raise VhostUserError(f"vring {index}: VIRTIO_F_IOMMU_PLATFORM ring addresses are IOVAs, "
                                 "which vqtrace does not translate")
        addr = ring.addr
        assert addr is not None
        return QueueConfig(index=index, size=ring.num, desc=self.user_to_guest(addr.desc),
                           driver=self.user_to_guest(addr.avail), device=self.user_to_guest(addr.used),
                           layout=self.layout, features=self.features, device_type=device_type)


def pending_ack_only(request: Message, reply: Message) -> bool:
    """Whether ``reply`` is only the REPLY_ACK u64 (status) rather than the request's own answer."""
    own = vu.NEEDS_REPLY if request.channel != BACKEND_CHANNEL else vu.BACKEND_NEEDS_REPLY
    return request.request not in own and len(reply.payload) == 8
