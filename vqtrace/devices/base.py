"""The common base of the reference devices: identity, features, config space, queues.

A device is sans-io (DESIGN.md): it reads and writes guest memory through the
chains its queues hand it, and every public call returns an :class:`Activity`
saying what happened (chains used, queues whose used buffer notification is due,
configuration changes, anomalies). Sockets, eventfds and clocks stay with the
caller: the vhost-user back-end, replay, the TUI and the tests.

Life cycle, in the order the specification's initialization goes (virtio 1.4, 3.1):
``offered_features`` and ``read_config`` before negotiation, :meth:`Device.negotiate`
with the driver's features (the device then only uses what was negotiated),
:meth:`Device.attach` the guest memory and :meth:`Device.set_queue` each queue,
then :meth:`Device.kick` whenever the driver notifies a queue. :meth:`Device.reset`
returns to the state after construction (2.4).
"""

from __future__ import annotations

import random
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from construct import Construct

from ..dissectors import features as feature_tables
from ..errors import GuestMemoryError, UsageError, VqtraceError
from ..memory import GuestMemory
from ..model import (
    VIRTIO_F_EVENT_IDX,
    VIRTIO_F_IN_ORDER,
    VIRTIO_F_INDIRECT_DESC,
    VIRTIO_F_RING_PACKED,
    VIRTIO_F_VERSION_1,
    Anomaly,
    Chain,
)
from .chainio import ChainIO

#: Transport features every reference device offers unless told otherwise (virtio 1.4, 6): the
#: device side of the rings (vqtrace.rings.DeviceQueue) handles indirect tables, event index and
#: packed rings. VIRTIO_F_IN_ORDER is added by devices that use every buffer of a queue in the
#: order it was made available (``Device.in_order``): not those that hold receive buffers while
#: completing a malformed one at once.
DEFAULT_TRANSPORT_FEATURES = (1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_F_INDIRECT_DESC | 1 << VIRTIO_F_EVENT_IDX
                              | 1 << VIRTIO_F_RING_PACKED)
#: The transport bits a device may offer at all (6 "Reserved Feature Bits": 24 to 40 and 43).
TRANSPORT_FEATURE_MASK = sum(1 << bit for bit in (*range(24, 41), 43))

#: Bound on the bytes a device copies out of one chain: a longer request is answered as
#: an error (and an anomaly), not read into memory.
DEFAULT_MAX_REQUEST = 16 << 20


class Queue(Protocol):
    """The device side of one virtqueue as a device uses it: :class:`vqtrace.rings.device.DeviceQueue`.

    ``pop`` returns the next chain the driver made available (None when there is none);
    ``push`` / ``push_batch`` return chains as used with the bytes written (a batch is
    published together: the buffers of one merged receive packet, 5.1.9.4.1, 2.8.9);
    ``should_notify`` says, after some pushes, whether a used buffer notification is due
    (2.7.7.2 / 2.8.10: flags, EVENT_IDX, packed event suppression).
    """

    def pop(self) -> Chain | None: ...

    def push(self, chain: Chain, length: int) -> None: ...

    def push_batch(self, items: Iterable[tuple[Chain, int]]) -> None: ...

    def should_notify(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Completion:
    """A chain the device used: queue, chain id, bytes written, and what it was."""

    queue: int
    id: int
    len: int
    summary: str = ""


@dataclass
class Activity:
    """What one call into a device did.

    ``notify``: queues whose used buffer notification is due now (write their call
    eventfd); ``config_changed``: the configuration space changed and a configuration
    change notification is due (4.1.4.5 / vhost-user CONFIG_CHANGE_MSG).
    """

    completions: list[Completion] = field(default_factory=list)
    notify: set[int] = field(default_factory=set)
    anomalies: list[Anomaly] = field(default_factory=list)
    config_changed: bool = False
    held: int = 0  # chains the device kept for later (receive-style queues)

    def merge(self, other: Activity) -> Activity:
        self.completions += other.completions
        self.notify |= other.notify
        self.anomalies += other.anomalies
        self.config_changed |= other.config_changed
        self.held += other.held
        return self

    def used(self, queue: int) -> list[Completion]:
        return [c for c in self.completions if c.queue == queue]


HELD = None  # handler result: the chain is kept, to be used later


class Device:
    """Base of every reference device; subclasses fill in the device-specific parts.

    Class attributes: ``name`` (the registry name, ``--device NAME``), ``device_id``
    (virtio 1.4, 5 "Device Types"), ``prefix`` (field abbreviation prefix).
    """

    name: ClassVar[str] = ""
    device_id: ClassVar[int] = 0
    prefix: ClassVar[str] = ""
    #: The construct layout of the configuration space (dissectors), None when the device has none.
    config_struct: ClassVar[Construct | None] = None
    #: Bytes of that layout with every field present: a front-end may read them all (QEMU's
    #: vhost-user GET_CONFIG asks for the whole struct); they read as zeros past the space.
    config_full_size: ClassVar[int] = 0
    #: Whether the device uses the buffers of each queue in the order they were made available,
    #: so that it can offer VIRTIO_F_IN_ORDER (2.7.9 / 2.8.8).
    in_order: ClassVar[bool] = False

    def __init__(self, *, seed: int | None = None, transport_features: int | None = None,
                 max_request: int = DEFAULT_MAX_REQUEST) -> None:
        if transport_features is None:
            transport_features = DEFAULT_TRANSPORT_FEATURES | (1 << VIRTIO_F_IN_ORDER if self.in_order else 0)
        if transport_features & ~TRANSPORT_FEATURE_MASK:
            raise UsageError(f"transport features 0x{transport_features:x} include device-specific bits")
        self.seed = seed
        self.deterministic = seed is not None
        self.random = random.Random(seed)
        self.transport_features = transport_features
        self.max_request = max_request
        self.memory: GuestMemory | None = None
        self.queues: dict[int, Queue] = {}
        #: Chains the device keeps to fill later (receive-style queues), per queue, oldest first.
        self.held: defaultdict[int, deque[tuple[Chain, ChainIO]]] = defaultdict(deque)
        self.features = 0  # the negotiated features (0 until negotiate())
        self.negotiated = False
        self.status = 0
        self.anomalies: list[Anomaly] = []
        self.on_anomaly: Callable[[Anomaly], None] | None = None
        #: Receives device-initiated activity that happens outside a call on this device
        #: (a peer device delivering a frame); without it the activity waits in ``pending``.
        self.on_activity: Callable[[Activity], None] | None = None
        self.pending = Activity()
        self._activity: Activity | None = None
        self._touched: set[int] = set()
        self._depth = 0
        self._last_summary = ""

    # -- identity, features, configuration (one place per device) ---------------------------------

    @property
    def num_queues(self) -> int:
        """How many virtqueues the device has (before negotiation: as many as its offer allows)."""
        return len(self.queue_names())

    def queue_names(self) -> list[str]:
        """The spec's names of the queues, by index (e.g. ``["receiveq1", "transmitq1", "controlq"]``)."""
        raise NotImplementedError

    def device_features(self) -> int:
        """The device-specific feature bits offered (subclasses)."""
        return 0

    @property
    def offered_features(self) -> int:
        """Every feature bit the device offers: device-specific ones and the transport ones."""
        return self.device_features() | self.transport_features

    def has(self, bit: int) -> bool:
        """Whether feature ``bit`` was negotiated."""
        return bool(self.features >> bit & 1)

    def shapes(self, bit: int) -> bool:
        """Whether ``bit`` shapes the device's queues now: negotiated, or offered before negotiation."""
        return self.has(bit) if self.negotiated else self.offers(bit)

    def offers(self, bit: int) -> bool:
        return bool(self.offered_features >> bit & 1)

    def config_values(self) -> dict[str, Any] | None:
        """The configuration fields present with the offered features (subclasses); None: no config."""
        return None

    def config_space(self) -> bytes:
        """The device configuration space as it reads now (2.5; built with the dissector's layout).

        Fields conditional on a feature are present when the feature is offered: 2.5.2 "The
        device MUST allow reading of any device-specific configuration field before FEATURES_OK".
        """
        values = self.config_values()
        if values is None or self.config_struct is None:
            return b""
        return build_config(self.config_struct, values)

    @property
    def config_size(self) -> int:
        return len(self.config_space())

    def read_config(self, offset: int, size: int) -> bytes:
        """``size`` bytes of the configuration space at ``offset`` (zeros beyond its end)."""
        space = self.config_space()
        if offset < 0 or size < 0 or offset + size > max(len(space), self.config_full_size):
            self._report("CONFIG_OUT_OF_RANGE", "virtio 1.4, 2.5",
                         f"config read of {size} bytes at offset {offset}; the space has {len(space)}")
        data = space[max(0, offset):max(0, offset) + max(0, size)]
        return data + bytes(max(0, size) - len(data))

    def write_config(self, offset: int, data: bytes) -> Activity:
        """The driver writes ``data`` at ``offset``; read-only fields are left alone (an anomaly)."""
        self._begin()
        space = self.config_space()
        if offset < 0 or offset + len(data) > len(space) or not self.config_write(offset, bytes(data)):
            self._report("CONFIG_WRITE_READONLY", "virtio 1.4, 2.5",
                         f"driver wrote {len(data)} bytes at config offset {offset}, which is not writable")
        return self._end()

    def config_write(self, offset: int, data: bytes) -> bool:
        """Apply a driver write to writable config fields (subclasses); False: not writable."""
        return False

    # -- life cycle -----------------------------------------------------------------------------

    def negotiate(self, driver_features: int) -> int:
        """Take the driver's accepted features; returns the set the device will use.

        2.2.1: the driver MUST NOT accept a feature the device did not offer: such bits are
        reported and ignored. The device accepts any subset of its offer (2.2.2).
        """
        extra = driver_features & ~self.offered_features
        if extra:
            self._report("FEATURE_NOT_OFFERED", "virtio 1.4, 2.2.1",
                         f"driver accepted feature bits 0x{extra:x} that were not offered")
        self.features = driver_features & self.offered_features
        # 2.2.1: nor a feature which requires another feature which was not accepted.
        space = feature_tables.feature_space(self.device_id, vhost_user=False)
        for problem in feature_tables.check(self.features, space, side="driver"):
            if problem.level == "MUST":
                self._report("FEATURE_DEPENDENCY", problem.section, problem.message)
        self.negotiated = True
        self.features_changed()
        return self.features

    def features_changed(self) -> None:
        """Hook: the negotiated features changed (subclasses)."""

    def set_status(self, status: int) -> None:
        """The driver wrote ``device status`` (2.1); 0 resets the device (2.4)."""
        if status == 0:
            self.reset()
        else:
            self.status = status

    def attach(self, memory: GuestMemory | None) -> None:
        """Use ``memory`` for the guest memory the chains point into."""
        self.memory = memory

    def set_queue(self, index: int, queue: Queue | None) -> None:
        """Attach (or with None detach) the device-side queue for virtqueue ``index``.

        Chains held from a previous queue of that index are dropped (they belong to the old
        ring): call :meth:`stop_queue` first to get them back.
        """
        if not 0 <= index < self.num_queues:
            raise UsageError(f"{self.name} has no queue {index} (it has {self.num_queues})")
        if self.queues.get(index) is not queue:
            self.held.pop(index, None)
        if queue is None:
            self.queues.pop(index, None)
        else:
            self.queues[index] = queue

    def stop_queue(self, index: int) -> list[Chain]:
        """A ring stops (vhost-user GET_VRING_BASE): detach it; the chains it held, never used.

        The caller rewinds the ring to the first one (split: ``chains[0].avail_idx`` as the
        vring base; packed: its slot and ``wrap``) so the driver's buffers are offered again.
        """
        chains = self.release_held(index)
        self.queues.pop(index, None)
        return chains

    def reset(self) -> None:
        """Device reset (2.4.1): forget negotiation, queues, held buffers and protocol state."""
        self.features = 0
        self.negotiated = False
        self.status = 0
        self.queues.clear()
        self.held.clear()
        self.reset_state()

    def reset_state(self) -> None:
        """Hook: clear device protocol state on reset (subclasses); cumulative counters may stay."""

    def close(self) -> None:
        """Release what the device opened (image files, capture files)."""

    # -- operation ------------------------------------------------------------------------------

    def kick(self, index: int, *, limit: int | None = None) -> Activity:
        """The driver notified queue ``index``: handle up to ``limit`` available chains."""
        self._begin()
        queue = self.queues.get(index)
        if queue is None:
            self._report("QUEUE_NOT_READY", "virtio 1.4, 2.6", f"kick on queue {index}, which is not set up",
                         queue=index)
            return self._end()
        self.pump(index, limit)
        self.after_kick(index)
        return self._end()

    def pump(self, index: int, limit: int | None = None) -> int:
        """Pop and handle available chains of queue ``index`` while ``can_pop`` allows; how many."""
        queue = self.queues.get(index)
        done = 0
        while queue is not None and (limit is None or done < limit) and self.can_pop(index):
            chain = queue.pop()
            if chain is None:
                break
            self._dispatch(index, chain)
            done += 1
        return done

    def step(self, index: int) -> Activity:
        """Handle one available chain of queue ``index`` (the TUI's single step)."""
        return self.kick(index, limit=1)

    def handle(self, index: int, chain: Chain) -> Activity:
        """Handle one chain given directly (replay, tests): as a kick would, without popping it."""
        self._begin()
        self._dispatch(index, chain)
        self.after_kick(index)
        return self._end()

    def hold(self, index: int, chain: Chain, io: ChainIO) -> None:
        """Keep ``chain`` of queue ``index`` to fill later (``process`` then returns HELD)."""
        self.held[index].append((chain, io))

    def release_held(self, index: int) -> list[Chain]:
        """Forget the chains held for queue ``index`` and return them, oldest first.

        For a ring being stopped (vhost-user GET_VRING_BASE): the chains were taken from
        the ring but never used; the caller rewinds the ring to the first one's
        ``avail_idx`` (split) / slot and wrap (packed) so they are offered again, or
        returns them with length 0.
        """
        chains = [chain for chain, _ in self.held.pop(index, ())]
        return chains

    def can_pop(self, index: int) -> bool:
        """Whether the device takes more chains from queue ``index`` now (flow control, subclasses)."""
        return True

    def after_kick(self, index: int) -> None:
        """Hook after the chains of a kick were handled: deliver pending data (subclasses)."""

    def process(self, index: int, chain: Chain, io: ChainIO) -> int | None:
        """Handle one chain: the used length, or None (HELD) when the device keeps it (subclasses)."""
        raise NotImplementedError

    def summary(self, index: int, chain: Chain) -> str:
        return ""

    def state(self) -> dict[str, Any]:
        """Inspectable device state for the TUI and replay (JSON-serialisable)."""
        return {
            "device": self.name,
            "device_id": self.device_id,
            "features": self.features,
            "offered_features": self.offered_features,
            "queues": self.queue_names(),
            "config": self.config_space().hex(),
            "held": {str(index): len(chains) for index, chains in sorted(self.held.items()) if chains},
            "anomalies": len(self.anomalies),
        }

    # -- helpers for subclasses -------------------------------------------------------------------

    def _dispatch(self, index: int, chain: Chain) -> None:
        if self.memory is None:
            self._report("NO_GUEST_MEMORY", "virtio 1.4, 2.6", "a chain arrived before guest memory was attached",
                         queue=index, id=chain.id)
            self.complete(index, chain, 0, "no guest memory")
            return
        io = ChainIO(self.memory, chain)
        self._last_summary = ""
        try:
            length = self.process(index, chain, io)
        except (GuestMemoryError, VqtraceError) as err:
            self._report("CHAIN_MEMORY_FAULT" if isinstance(err, GuestMemoryError) else "MALFORMED_REQUEST",
                         "virtio 1.4, 2.7.5", f"{err}", queue=index, id=chain.id,
                         address=getattr(err, "address", None))
            length = io.written
        if length is not HELD:
            self.complete(index, chain, length, self._last_summary)
        elif self._activity is not None:
            self._activity.held += 1

    def describe(self, text: str) -> None:
        """Set the summary of the chain being handled (shown in completions)."""
        self._last_summary = text

    def complete(self, index: int, chain: Chain, length: int, summary: str = "") -> None:
        """Use ``chain`` on queue ``index`` with ``length`` bytes written (2.7.8 / 2.8.21)."""
        self.complete_batch(index, [(chain, length)], summary)

    def complete_batch(self, index: int, items: list[tuple[Chain, int]], summary: str = "") -> None:
        """Use several chains of queue ``index`` together (published at once, 2.8.9)."""
        queue = self.queues.get(index)
        if queue is not None:
            queue.push_batch(items)
        self._touched.add(index)
        if self._activity is not None:
            self._activity.completions += [Completion(index, chain.id, length, summary) for chain, length in items]

    def config_change(self) -> None:
        """The device changed its configuration space: a change notification is due."""
        if self._activity is not None:
            self._activity.config_changed = True

    def memory_fault(self, io: ChainIO, index: int) -> bool:
        """Report the first buffer outside guest memory, if any; True when there was one."""
        err = io.fault()
        if err is None:
            return False
        self._report("CHAIN_MEMORY_FAULT", "virtio 1.4, 2.7.5", str(err), queue=index, id=io.chain.id,
                     address=err.address)
        return True

    def _report(self, code: str, section: str, message: str, *, queue: int | None = None, id: int | None = None,
                address: int | None = None) -> Anomaly:
        anomaly = Anomaly(code, section, message, queue=queue, id=id, address=address)
        self.anomalies.append(anomaly)
        if self._activity is not None:
            self._activity.anomalies.append(anomaly)
        if self.on_anomaly is not None:
            self.on_anomaly(anomaly)
        return anomaly

    def _begin(self) -> None:
        if self._activity is None:
            self._activity = Activity()
            self._touched = set()
        self._depth += 1

    def _end(self) -> Activity:
        self._depth -= 1
        activity = self._activity
        assert activity is not None
        if self._depth:
            return activity
        for index in sorted(self._touched):
            queue = self.queues.get(index)
            if queue is not None and queue.should_notify():
                activity.notify.add(index)
        self._activity = None
        self._touched = set()
        return activity

    def emit(self, activity: Activity) -> None:
        """Hand device-initiated ``activity`` to the device's owner (``on_activity``, else ``pending``)."""
        if self.on_activity is not None:
            self.on_activity(activity)
        else:
            self.pending.merge(activity)

    def take_pending(self) -> Activity:
        """The activity collected in ``pending`` since the last call, and clear it."""
        activity, self.pending = self.pending, Activity()
        return activity

    def run(self, fn: Callable[[], None]) -> Activity:
        """Run ``fn`` (device-initiated work: data from a source, a config change) as one activity."""
        self._begin()
        fn()
        return self._end()


def feature_bits(table: dict[int, Any]) -> dict[str, int]:
    """``{spec name: bit}`` of a feature table of :mod:`dissectors.features` (e.g. BLK_FEATURES)."""
    return {info.name: bit for bit, info in table.items()}


def build_config(struct: Construct, values: dict[str, Any]) -> bytes:
    """Config space bytes for ``values`` with the dissector's layout, at the spec's fixed offsets.

    Fields keep their offsets (virtio 1.4, 2.5): every field up to the last one given is
    present, the ones not given are zero (as are padding fields); the space ends there.
    """
    names = [sub.name for sub in struct.subcons if sub.name]
    last = max((names.index(k) for k, v in values.items() if v is not None), default=-1)
    zero = _zero_values(struct)
    built: dict[str, Any] = {}
    for at, name in enumerate(names):
        value = values.get(name)
        built[name] = (zero[name] if value is None else value) if at <= last else None
    return struct.build(built)


_ZERO_CACHE: dict[int, dict[str, Any]] = {}


def _zero_values(struct: Construct) -> dict[str, Any]:
    """Every field of a config layout parsed from zero bytes (the layout's full size)."""
    key = id(struct)
    if key not in _ZERO_CACHE:
        parsed = struct.parse(bytes(4096))
        _ZERO_CACHE[key] = {k: v for k, v in parsed.items() if not k.startswith("_")}
    return _ZERO_CACHE[key]
