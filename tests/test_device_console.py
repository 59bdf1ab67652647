"""The reference console (virtio 1.4, 5.3): one port, multiport bring-up, data both ways, malformed messages."""

from __future__ import annotations

import pytest

from vqtrace.devices.bench import DeviceBench
from vqtrace.devices.console import CONTROL, ConsoleDevice, PortSpec
from vqtrace.dissectors import console as layout
from vqtrace.dissectors.layers import get_layer
from vqtrace.errors import UsageError
from vqtrace.model import Layout

E = layout.EVENTS
CTRL_RX, CTRL_TX = 2, 3
CTRL = get_layer("virtio_console.ctrl")


def control(port: int, event: str, value: int = 0) -> bytes:
    return CONTROL.pack(port, E[f"VIRTIO_CONSOLE_{event}"], value)


def messages(used) -> list[tuple[int, str, int, object]]:
    out = []
    for buffer in used:
        message = CTRL.parse(buffer.written)
        name = str(message.event).removeprefix("VIRTIO_CONSOLE_")
        out.append((message.id, name, message.value, message.resize or message.name))
    return out


def test_control_struct_equals_the_layer():
    raw = CONTROL.pack(7, 6, 1)
    assert CTRL.build({"id": 7, "event": 6, "value": 1, "resize": None, "name": None}) == raw
    assert len(raw) == layout.CONTROL_SIZE


def test_single_port_output_and_input():
    device = ConsoleDevice()
    assert device.queue_names() == ["receiveq(port0)", "transmitq(port0)"]
    with DeviceBench(device) as bench:
        assert bench.request(1, [b"hello ", b"world\n"]).len == 0
        assert device.text(0) == "hello world\n"
        bench.add(0, writable=[4])
        device.send(0, b"abcdef")
        (used,) = bench.used(0)
        assert used.written == b"abcd"
        bench.add(0, writable=[64])
        assert bench.used(0)[0].written == b"ef"
        assert device.state()["ports"]["0"]["text"] == "hello world\n"


def test_config_size_and_emergency_write():
    device = ConsoleDevice(cols=132, rows=43)
    config = get_layer("virtio_console.config").parse(device.config_space())
    assert (config.cols, config.rows, config.emerg_wr) == (132, 43, 0)
    # 5.3.5.1: emerg_wr works before any negotiation; its low byte is output
    assert device.write_config(8, b"!\0\0\0").anomalies == []
    assert device.text(0) == "!"
    activity = device.resize(100, 30)
    assert not activity.config_changed  # SIZE not negotiated yet
    device.negotiate(device.offered_features)
    assert device.resize(90, 20).config_changed
    assert device.read_config(0, 4) == (90).to_bytes(2, "little") + (20).to_bytes(2, "little")


@pytest.mark.parametrize("ring", [Layout.SPLIT, Layout.PACKED], ids=["split", "packed"])
def test_multiport_bring_up(ring):
    device = ConsoleDevice(ports=[PortSpec("", console=True), PortSpec("org.vqtrace.agent"),
                                  PortSpec("closed.port", host_open=False)], max_ports=4)
    assert device.queue_names()[2:4] == ["control receiveq", "control transmitq"]
    assert device.num_queues == 2 + 2 + 2 * 3
    config = get_layer("virtio_console.config").parse(device.config_space())
    assert config.max_nr_ports == 4
    with DeviceBench(device, layout=ring) as bench:
        for _ in range(16):
            bench.add(CTRL_RX, writable=[64])
        bench.request(CTRL_TX, [control(0, "DEVICE_READY", 1)])
        assert messages(bench.used(CTRL_RX)) == [(0, "DEVICE_ADD", 0, None), (1, "DEVICE_ADD", 0, None),
                                                 (2, "DEVICE_ADD", 0, None)]
        bench.request(CTRL_TX, [control(0, "PORT_READY", 1)])
        assert messages(bench.used(CTRL_RX)) == [(0, "CONSOLE_PORT", 1, None), (0, "PORT_OPEN", 1, None)]
        bench.request(CTRL_TX, [control(1, "PORT_READY", 1)])
        assert messages(bench.used(CTRL_RX)) == [(1, "PORT_NAME", 0, "org.vqtrace.agent"), (1, "PORT_OPEN", 1, None)]
        bench.request(CTRL_TX, [control(2, "PORT_READY", 1)])
        assert messages(bench.used(CTRL_RX)) == [(2, "PORT_NAME", 0, "closed.port")]
        # 5.3.6.2.2: the driver answers CONSOLE_PORT with PORT_OPEN 1
        bench.request(CTRL_TX, [control(0, "PORT_OPEN", 1)])
        bench.request(CTRL_TX, [control(1, "PORT_OPEN", 1)])
        state = device.state()
        assert state["device_ready"] is True
        assert state["ports"]["0"]["guest_open"] and state["ports"]["1"]["guest_open"]
        assert not state["ports"]["2"]["guest_open"] and state["ports"]["1"]["name"] == "org.vqtrace.agent"
        # data on port 1: transmitq(port1) is queue 5, receiveq(port1) queue 4
        bench.request(5, [b"agent says hi"])
        assert device.text(1) == "agent says hi" and device.text(0) == ""
        bench.add(4, writable=[32])
        device.send(1, b"host reply")
        assert bench.used(4)[0].written == b"host reply"
        # a resize of the console port goes as a RESIZE control message
        device.resize(120, 40, port=0)
        assert messages(bench.used(CTRL_RX)) == [(0, "RESIZE", 0, {"cols": 120, "rows": 40})]
        assert bench.anomalies() == []


def test_control_messages_wait_for_buffers():
    device = ConsoleDevice(ports=2)
    with DeviceBench(device) as bench:
        bench.request(CTRL_TX, [control(0, "DEVICE_READY", 1)])
        assert device.state()["control_pending"] == 2
        bench.add(CTRL_RX, writable=[8])
        bench.add(CTRL_RX, writable=[8])
        assert messages(bench.used(CTRL_RX)) == [(0, "DEVICE_ADD", 0, None), (1, "DEVICE_ADD", 0, None)]


def test_hotplug_port():
    device = ConsoleDevice(ports=1, max_ports=2, multiport=True)
    with DeviceBench(device) as bench:
        for _ in range(4):
            bench.add(CTRL_RX, writable=[64])
        bench.request(CTRL_TX, [control(0, "DEVICE_READY", 1)])
        bench.used(CTRL_RX)
        device.add_port(PortSpec("hot"))
        assert messages(bench.used(CTRL_RX)) == [(1, "DEVICE_ADD", 0, None)]
        device.remove_port(1)
        assert messages(bench.used(CTRL_RX)) == [(1, "DEVICE_REMOVE", 0, None)]
        with pytest.raises(UsageError):
            device.add_port(PortSpec("a"))
            device.add_port(PortSpec("b"))  # max_nr_ports reached (5.3.6.2.1)


def test_bad_control_messages():
    device = ConsoleDevice(ports=2)
    with DeviceBench(device) as bench:
        bench.request(CTRL_TX, [b"\x00\x01"])  # short
        bench.request(CTRL_TX, [control(0, "DEVICE_ADD", 0)])  # only the device sends this
        bench.request(CTRL_TX, [control(9, "PORT_READY", 1)])  # no such port
        bench.request(CTRL_TX, [control(0, "PORT_OPEN", 1)], [8])  # writable in a transmitq
        codes = [a.code for a in bench.anomalies()]
        assert codes == ["CONSOLE_CTRL_MALFORMED", "CONSOLE_CTRL_UNEXPECTED", "CONSOLE_BAD_PORT",
                         "CONSOLE_TX_WRITABLE", "CONSOLE_BAD_PORT"]


def test_readable_buffer_in_receiveq():
    device = ConsoleDevice()
    with DeviceBench(device) as bench:
        assert bench.request(0, [b"wrong"]).len == 0
        assert bench.anomalies("CONSOLE_RX_READABLE")
        bench.request(1, [b"x"], [4])
        assert bench.anomalies("CONSOLE_TX_WRITABLE") and device.text(0) == "x"


def test_control_buffer_too_small():
    device = ConsoleDevice(ports=[PortSpec("", console=True), PortSpec("a-long-port-name")])
    with DeviceBench(device) as bench:
        for _ in range(3):
            bench.add(CTRL_RX, writable=[8])
        bench.request(CTRL_TX, [control(0, "DEVICE_READY", 1)])
        bench.request(CTRL_TX, [control(1, "PORT_READY", 1)])
        bench.used(CTRL_RX)
        assert bench.anomalies("CONSOLE_CTRL_BUFFER_SMALL")  # PORT_NAME needs 8 + 16 bytes
        bench.add(CTRL_RX, writable=[64])
        assert messages(bench.used(CTRL_RX))[0][1] == "PORT_NAME"


def test_options_validated():
    with pytest.raises(UsageError):
        ConsoleDevice(ports=2, multiport=False)
    with pytest.raises(UsageError):
        ConsoleDevice(ports=3, max_ports=2)
