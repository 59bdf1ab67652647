"""The console device (virtio 1.4, 5.3): one port, or MULTIPORT with its control queues.

Queues (5.3.2): receiveq(port0), transmitq(port0), control receiveq, control
transmitq, receiveq(port1), transmitq(port1), ...; the control queues and further
ports exist only with VIRTIO_CONSOLE_F_MULTIPORT. What the driver writes on a
port's transmitq is that port's output text; :meth:`ConsoleDevice.send` queues input
for a port, put into the receive buffers the device holds.

Multiport bring-up (5.3.6.2): the driver sends DEVICE_READY; the device answers
with DEVICE_ADD for each port; on each PORT_READY it sends CONSOLE_PORT for a
console port, PORT_NAME for a named port and PORT_OPEN when the host side is open;
the driver's PORT_OPEN says whether the guest has the port open. Device
Requirements followed: 5.3.5.1 (a write to ``emerg_wr`` is allowed even on an
unconfigured device, and its low byte goes to port 0's output), 5.3.6.2.1 (no
DEVICE_ADD for a port that exists or is at or beyond ``max_nr_ports``; no
DEVICE_REMOVE for a port never added). Driver errors are anomalies: a
device-readable buffer in a receiveq, a device-writable one in a transmitq
(5.3.6.1), control messages that are short, name unknown ports or are events only
the device sends.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..dissectors import console as layout
from ..dissectors import features as feature_tables
from ..dissectors.layers import get_layer
from ..errors import DissectError, UsageError
from ..model import Chain
from .base import HELD, Activity, Device, feature_bits
from .chainio import ChainIO

_F = feature_bits(feature_tables.CONSOLE_FEATURES)
VIRTIO_CONSOLE_F_SIZE = _F["VIRTIO_CONSOLE_F_SIZE"]
VIRTIO_CONSOLE_F_MULTIPORT = _F["VIRTIO_CONSOLE_F_MULTIPORT"]
VIRTIO_CONSOLE_F_EMERG_WRITE = _F["VIRTIO_CONSOLE_F_EMERG_WRITE"]

E = layout.EVENTS
DEVICE_READY = E["VIRTIO_CONSOLE_DEVICE_READY"]
DEVICE_ADD = E["VIRTIO_CONSOLE_DEVICE_ADD"]
DEVICE_REMOVE = E["VIRTIO_CONSOLE_DEVICE_REMOVE"]
PORT_READY = E["VIRTIO_CONSOLE_PORT_READY"]
CONSOLE_PORT = E["VIRTIO_CONSOLE_CONSOLE_PORT"]
RESIZE = E["VIRTIO_CONSOLE_RESIZE"]
PORT_OPEN = E["VIRTIO_CONSOLE_PORT_OPEN"]
PORT_NAME = E["VIRTIO_CONSOLE_PORT_NAME"]
EVENT_TEXT = {value: name.removeprefix("VIRTIO_CONSOLE_") for name, value in E.items()}
#: Events the driver sends (5.3.6.2); the others only the device sends.
DRIVER_EVENTS = frozenset({DEVICE_READY, PORT_READY, PORT_OPEN})
CONTROL = struct.Struct("<IHH")  # struct virtio_console_control: id, event, value (tested against the layer)
_CTRL = get_layer("virtio_console.ctrl")
EMERG_WR_OFFSET = 8  # 5.3.4: offset of emerg_wr in struct virtio_console_config
CTRL_RX, CTRL_TX = 2, 3  # 5.3.2: the control queues
MAX_OUTPUT = 1 << 20  # output kept per port (the oldest bytes go first)


@dataclass
class PortSpec:
    """A port to offer: its name (PORT_NAME; empty: none), whether it is a console port, host side open."""

    name: str = ""
    console: bool = False
    host_open: bool = True


@dataclass
class Port:
    """One port's state."""

    id: int
    spec: PortSpec
    added: bool = False  # DEVICE_ADD sent
    ready: bool | None = None  # the driver's PORT_READY value (None: not yet)
    guest_open: bool = False  # the driver's last PORT_OPEN value
    output: bytearray = field(default_factory=bytearray)
    written: int = 0  # bytes the driver wrote, in all
    input: deque[bytes] = field(default_factory=deque)

    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


class ConsoleDevice(Device):
    """A virtio-console device with ``ports`` (a count, names, or PortSpecs); port 0 is the console."""

    name: ClassVar[str] = "console"
    device_id: ClassVar[int] = 3
    prefix: ClassVar[str] = "virtio_console"
    config_struct = layout.virtio_console_config
    config_full_size = layout.CONSOLE_CONFIG_SIZE

    def __init__(self, *, ports: int | list[str | PortSpec] = 1, max_ports: int | None = None,
                 multiport: bool | None = None, cols: int | None = 80, rows: int | None = 25,
                 emerg_write: bool = True, **options: Any) -> None:
        super().__init__(**options)
        if isinstance(ports, int):
            specs = [PortSpec(f"vqtrace.port{n}" if n else "", console=n == 0) for n in range(ports)]
        else:
            specs = [p if isinstance(p, PortSpec) else PortSpec(p) for p in ports]
            if specs and not any(s.console for s in specs):
                specs[0].console = True
        if not specs:
            raise UsageError("a console device needs at least one port")
        self.max_ports = max_ports or len(specs)
        if self.max_ports < len(specs) or self.max_ports > 0x7FFF:
            raise UsageError(f"max_ports {self.max_ports}: at least the {len(specs)} ports, at most 32767")
        self.offer_multiport = multiport if multiport is not None else self.max_ports > 1
        if len(specs) > 1 and not self.offer_multiport:
            raise UsageError("more than one port needs VIRTIO_CONSOLE_F_MULTIPORT")
        self.specs = specs
        self.cols, self.rows = cols, rows
        self.offer_emerg = emerg_write
        self.ports: dict[int, Port] = {}
        self.reset_state()

    def reset_state(self) -> None:
        old = getattr(self, "ports", {})
        # Output is what the driver wrote: it stays across a reset (like a terminal's scrollback).
        self.ports = {n: Port(n, spec, output=old[n].output if n in old else bytearray(),
                              written=old[n].written if n in old else 0) for n, spec in enumerate(self.specs)}
        self.device_ready: bool | None = None
        self.ctrl_out: deque[bytes] = deque()
        self.ctrl_log: deque[str] = deque(maxlen=256)

    # -- identity, features, configuration --------------------------------------------------------

    @property
    def multiport(self) -> bool:
        return self.shapes(VIRTIO_CONSOLE_F_MULTIPORT)

    def queue_names(self) -> list[str]:
        names = ["receiveq(port0)", "transmitq(port0)"]
        if self.multiport:
            names += ["control receiveq", "control transmitq"]
            for n in range(1, self.max_ports):
                names += [f"receiveq(port{n})", f"transmitq(port{n})"]
        return names

    @staticmethod
    def port_of(index: int) -> int | None:
        """The port of data queue ``index`` (None for the control queues)."""
        if index < 2:
            return 0
        if index < 4:
            return None
        return (index - 2) // 2

    @staticmethod
    def queues_of(port: int) -> tuple[int, int]:
        """(receiveq, transmitq) of ``port``."""
        return (0, 1) if port == 0 else (2 + 2 * port, 3 + 2 * port)

    def device_features(self) -> int:
        bits = []
        if self.cols is not None and self.rows is not None:
            bits.append(VIRTIO_CONSOLE_F_SIZE)
        if self.offer_multiport:
            bits.append(VIRTIO_CONSOLE_F_MULTIPORT)
        if self.offer_emerg:
            bits.append(VIRTIO_CONSOLE_F_EMERG_WRITE)
        return sum(1 << bit for bit in bits)

    def config_values(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if self.offers(VIRTIO_CONSOLE_F_SIZE):
            values.update(cols=self.cols, rows=self.rows)
        if self.offer_multiport:
            values["max_nr_ports"] = self.max_ports
        if self.offer_emerg:
            values["emerg_wr"] = 0
        return values

    def config_space(self) -> bytes:
        values = self.config_values()
        if not values:
            return bytes(4)  # cols and rows are always there, only valid with VIRTIO_CONSOLE_F_SIZE
        return super().config_space()

    def config_write(self, offset: int, data: bytes) -> bool:
        # 5.3.5.1: MUST allow a write to emerg_wr, even on an unconfigured device; the lower byte
        # goes to the output.
        if self.offer_emerg and offset == EMERG_WR_OFFSET and 1 <= len(data) <= 4:
            self._output(self.ports[0], data[:1])
            return True
        return False

    # -- host side --------------------------------------------------------------------------------

    def send(self, port: int, data: bytes) -> Activity:
        """Queue ``data`` as input for ``port`` and fill its receive buffers."""
        if port not in self.ports:
            raise UsageError(f"console has no port {port}")

        def work() -> None:
            self.ports[port].input.append(bytes(data))
            self._deliver_port(self.ports[port])
        return self.run(work)

    def resize(self, cols: int, rows: int, port: int = 0) -> Activity:
        """A console size change: config space for port 0 (5.3.6, VIRTIO_CONSOLE_F_SIZE), RESIZE with MULTIPORT."""
        def work() -> None:
            if port == 0:
                self.cols, self.rows = cols, rows
                if self.has(VIRTIO_CONSOLE_F_SIZE):
                    self.config_change()
            target = self.ports.get(port)
            if self.has(VIRTIO_CONSOLE_F_MULTIPORT) and target is not None and target.added:
                self._control(port, RESIZE, 0, resize={"cols": cols, "rows": rows})
        return self.run(work)

    def add_port(self, spec: PortSpec) -> Activity:
        """Hot-plug a port (DEVICE_ADD); 5.3.6.2.1 forbids an existing id or one >= max_nr_ports."""
        free = [n for n in range(self.max_ports) if n not in self.ports]
        if not free or not self.has(VIRTIO_CONSOLE_F_MULTIPORT):
            raise UsageError("no free port (max_nr_ports reached, or no MULTIPORT)")

        def work() -> None:
            port = Port(free[0], spec)
            self.ports[port.id] = port
            if self.device_ready:
                self._add(port)
        return self.run(work)

    def remove_port(self, port: int) -> Activity:
        """Hot-unplug ``port`` (DEVICE_REMOVE, only for a port added before: 5.3.6.2.1)."""
        def work() -> None:
            target = self.ports.pop(port, None)
            if target is not None and target.added:
                self._control(port, DEVICE_REMOVE, 0)
        return self.run(work)

    def text(self, port: int = 0) -> str:
        """What the driver wrote on ``port`` (the last MAX_OUTPUT bytes), as text."""
        return self.ports[port].text()

    # -- queues ------------------------------------------------------------------------------------

    def process(self, index: int, chain: Chain, io: ChainIO) -> int | None:
        if index == CTRL_TX:
            return self._control_in(index, chain, io)
        if index == CTRL_RX:
            return self._hold(index, chain, io)
        port = self.ports.get(self.port_of(index) or 0)
        if port is None:
            self._report("CONSOLE_BAD_PORT", "virtio 1.4, 5.3.6", f"queue {index} belongs to no port",
                         queue=index, id=chain.id)
            return 0
        if index % 2 == 0:
            return self._hold(index, chain, io)
        if io.writable_len:
            self._report("CONSOLE_TX_WRITABLE", "virtio 1.4, 5.3.6.1",
                         "the driver put a device-writable buffer in a transmitq", queue=index, id=chain.id)
        if self.memory_fault(io, index):
            return 0
        take = min(io.readable_len, self.max_request)
        if take < io.readable_len:
            self._report("CONSOLE_OVERSIZED", "virtio 1.4, 5.3.6",
                         f"transmit buffer of {io.readable_len} bytes; {take} kept", queue=index, id=chain.id)
        data = io.read(0, take)
        self._output(port, data)
        self.describe(f"console port{port.id} out {data[:32]!r}")
        return 0

    def after_kick(self, index: int) -> None:
        if index == CTRL_RX:
            self._deliver_control()
        elif index != CTRL_TX and index % 2 == 0:
            port = self.ports.get(self.port_of(index) or 0)
            if port is not None:
                self._deliver_port(port)

    def _hold(self, index: int, chain: Chain, io: ChainIO) -> int | None:
        if io.readable_len:  # 5.3.6.1: MUST NOT put a device-readable buffer in a receiveq
            self._report("CONSOLE_RX_READABLE", "virtio 1.4, 5.3.6.1",
                         "the driver put a device-readable buffer in a receiveq", queue=index, id=chain.id)
        if self.memory_fault(io, index) or io.writable_len == 0:
            if not io.unmapped:
                self._report("CONSOLE_RX_EMPTY", "virtio 1.4, 5.3.6", "receive buffer with no device-writable bytes",
                             queue=index, id=chain.id)
            return 0
        self.hold(index, chain, io)
        return HELD

    def _output(self, port: Port, data: bytes) -> None:
        port.output += data
        port.written += len(data)
        if len(port.output) > MAX_OUTPUT:
            del port.output[:len(port.output) - MAX_OUTPUT]

    def _deliver_port(self, port: Port) -> None:
        rx, _ = self.queues_of(port.id)
        held = self.held[rx]
        while port.input and held:
            chain, io = held.popleft()
            data = port.input.popleft()
            done = io.write(0, data)
            if done < len(data):
                port.input.appendleft(data[done:])
            self.complete(rx, chain, done, f"console port{port.id} in {data[:done][:32]!r}")

    # -- control queues ----------------------------------------------------------------------------

    def _control(self, port: int, event: int, value: int, *, resize: dict[str, int] | None = None,
                 name: str | None = None) -> None:
        """Queue a device -> driver control message (5.3.6.2) and send what fits now."""
        message = _CTRL.build({"id": port, "event": event, "value": value, "resize": resize, "name": name})
        self.ctrl_out.append(message)
        self.ctrl_log.append(f"device: {EVENT_TEXT[event]} id={port} value={value}" + (f" name={name}" if name else ""))
        self._deliver_control()

    def _deliver_control(self) -> None:
        held = self.held[CTRL_RX]
        while self.ctrl_out and held:
            chain, io = held.popleft()
            message = self.ctrl_out[0]
            if io.writable_len < len(message):
                self._report("CONSOLE_CTRL_BUFFER_SMALL", "virtio 1.4, 5.3.6.2",
                             f"control receive buffer of {io.writable_len} bytes for a {len(message)}-byte message",
                             queue=CTRL_RX, id=chain.id)
                self.complete(CTRL_RX, chain, 0, "console ctrl buffer too small")
                continue
            self.ctrl_out.popleft()
            io.write(0, message)
            port, event, value = CONTROL.unpack_from(message)
            self.complete(CTRL_RX, chain, len(message), f"console ctrl {EVENT_TEXT[event]} id={port} value={value}")

    def _add(self, port: Port) -> None:
        # 5.3.6.2.1: never a port that exists already, nor one >= max_nr_ports
        if port.added or port.id >= self.max_ports:
            return
        port.added = True
        self._control(port.id, DEVICE_ADD, 0)

    def _control_in(self, index: int, chain: Chain, io: ChainIO) -> int:
        if io.writable_len:
            self._report("CONSOLE_TX_WRITABLE", "virtio 1.4, 5.3.6.1",
                         "the driver put a device-writable buffer in the control transmitq", queue=index, id=chain.id)
        if self.memory_fault(io, index):
            return 0
        if not self.has(VIRTIO_CONSOLE_F_MULTIPORT):
            self._report("CONSOLE_CTRL_WITHOUT_MULTIPORT", "virtio 1.4, 5.3.2",
                         "control message without VIRTIO_CONSOLE_F_MULTIPORT negotiated", queue=index, id=chain.id)
            return 0
        if io.readable_len < layout.CONTROL_SIZE or io.readable_len > 4096:
            self._report("CONSOLE_CTRL_MALFORMED", "virtio 1.4, 5.3.6.2",
                         f"control message of {io.readable_len} bytes (struct virtio_console_control is 8)",
                         queue=index, id=chain.id)
            return 0
        raw = io.read(0, io.readable_len)
        try:
            message = _CTRL.parse(raw)
        except DissectError as err:
            self._report("CONSOLE_CTRL_MALFORMED", "virtio 1.4, 5.3.6.2", str(err), queue=index, id=chain.id)
            return 0
        port_id, event, value = message.id, int(message.event), message.value
        text = f"{EVENT_TEXT.get(event, str(event))} id={port_id} value={value}"
        self.ctrl_log.append("driver: " + text)
        self.describe("console ctrl " + text)
        if event not in DRIVER_EVENTS:
            self._report("CONSOLE_CTRL_UNEXPECTED", "virtio 1.4, 5.3.6.2",
                         f"the driver sent {text}, an event only the device sends", queue=index, id=chain.id)
            return 0
        if event == DEVICE_READY:
            self.device_ready = value == 1
            if self.device_ready:
                for port in sorted(self.ports.values(), key=lambda p: p.id):
                    self._add(port)
            return 0
        port = self.ports.get(port_id)
        if port is None or not port.added:
            self._report("CONSOLE_BAD_PORT", "virtio 1.4, 5.3.6.2",
                         f"{text}: no such port was added", queue=index, id=chain.id)
            return 0
        if event == PORT_READY:
            port.ready = value == 1
            if port.ready:
                if port.spec.console:
                    self._control(port.id, CONSOLE_PORT, 1)
                if port.spec.name:
                    self._control(port.id, PORT_NAME, 0, name=port.spec.name)
                if port.spec.host_open:
                    self._control(port.id, PORT_OPEN, 1)
        else:  # PORT_OPEN
            port.guest_open = value == 1
        return 0

    # -- state -------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        state = super().state()
        state.update({
            "multiport": self.has(VIRTIO_CONSOLE_F_MULTIPORT),
            "device_ready": self.device_ready,
            "ports": {str(n): {"name": p.spec.name, "console": p.spec.console, "added": p.added, "ready": p.ready,
                               "guest_open": p.guest_open, "host_open": p.spec.host_open, "text": p.text(),
                               "bytes_out": p.written, "input_pending": sum(len(d) for d in p.input)}
                      for n, p in sorted(self.ports.items())},
            "control": list(self.ctrl_log),
            "control_pending": len(self.ctrl_out),
        })
        return state
