"""Console device layouts (virtio 1.4, 5.3): port data, control messages, configuration.

- ``virtio_console.data``: the bytes of a port's receiveq or transmitq buffer (5.3.6).
- ``virtio_console.ctrl``: ``struct virtio_console_control`` on the control
  receiveq / transmitq (5.3.6.2), followed for VIRTIO_CONSOLE_RESIZE by
  ``struct virtio_console_resize`` and for VIRTIO_CONSOLE_PORT_NAME by the UTF-8 name
  up to the end of the buffer.
- ``virtio_console.config``: ``struct virtio_console_config`` (5.3.4); fields after
  ``cols`` exist only with some features, so the layout takes what the data holds.
"""

from __future__ import annotations

from typing import Any

from construct import Adapter, Computed, Enum, GreedyBytes, If, Struct

from .layers import Layer, register
from .tree import Field
from .types import CString, enum_int, enum_name, le16, le32, more_data

# 5.3.6.2 Multiport Device Operation: event values. (Linux calls 1 and 2
# VIRTIO_CONSOLE_PORT_ADD / VIRTIO_CONSOLE_PORT_REMOVE; the spec names are used here.)
EVENTS = {
    "VIRTIO_CONSOLE_DEVICE_READY": 0,
    "VIRTIO_CONSOLE_DEVICE_ADD": 1,
    "VIRTIO_CONSOLE_DEVICE_REMOVE": 2,
    "VIRTIO_CONSOLE_PORT_READY": 3,
    "VIRTIO_CONSOLE_CONSOLE_PORT": 4,
    "VIRTIO_CONSOLE_RESIZE": 5,
    "VIRTIO_CONSOLE_PORT_OPEN": 6,
    "VIRTIO_CONSOLE_PORT_NAME": 7,
}
VIRTIO_CONSOLE_RESIZE = EVENTS["VIRTIO_CONSOLE_RESIZE"]
VIRTIO_CONSOLE_PORT_NAME = EVENTS["VIRTIO_CONSOLE_PORT_NAME"]
CONTROL_SIZE = 8  # 5.3.6.2: sizeof(struct virtio_console_control)


class PortName(CString):
    """UTF-8 text up to the end of the buffer, without a NUL terminator (5.3.6.2 PORT_NAME)."""

    def __init__(self) -> None:
        Adapter.__init__(self, GreedyBytes)
        self.size = None

    def _decode(self, obj: bytes, context: Any, path: Any) -> str:
        return obj.decode("utf-8", "replace")

    def _encode(self, obj: str, context: Any, path: Any) -> bytes:
        return obj.encode()


def _event_is(event: int) -> Any:
    return lambda ctx: enum_int(ctx.event, EVENTS) == event


# 5.3.6.2 struct virtio_console_control, and what follows RESIZE and PORT_NAME
virtio_console_control = Struct(
    "id" / le32 * "Port number",
    "event" / Enum(le16, **EVENTS) * "Event",
    "value" / le16 * "Value",
    # struct virtio_console_resize is cols then rows; Linux drivers before 2025 read rows first.
    "resize" / If(_event_is(VIRTIO_CONSOLE_RESIZE), Struct(
        "cols" / le16 * "Columns",
        "rows" / le16 * "Rows",
    )) * "Console size",
    "name" / If(_event_is(VIRTIO_CONSOLE_PORT_NAME), PortName()) * "Port name",
)


def _ctrl_summary(tree: Field) -> str:
    p = tree.abbrev
    event = tree.find(f"{p}.event")
    text = f"console ctrl {enum_name(event, 'VIRTIO_CONSOLE_')} id={tree[p + '.id']}"
    if event is not None and event.value == VIRTIO_CONSOLE_RESIZE:
        return text + f" cols={tree[p + '.resize.cols']} rows={tree[p + '.resize.rows']}"
    if event is not None and event.value == VIRTIO_CONSOLE_PORT_NAME:
        return text + f" name={tree[p + '.name']!r}"
    return text + f" value={tree[p + '.value']}"


# 5.3.6 the characters of a port's receiveq / transmitq buffer
virtio_console_data = Struct(
    "data" / GreedyBytes * "Data",
    "len" / Computed(lambda c: len(c.data)) * "Length",
)


def _data_summary(tree: Field) -> str:
    data = tree[tree.abbrev + ".data"]
    return f"console data {data[:32].decode('utf-8', 'replace')!r}" + ("…" if len(data) > 32 else "")


# 5.3.4 struct virtio_console_config
virtio_console_config = Struct(
    "cols" / le16 * "Columns",
    "rows" / If(more_data("rows"), le16) * "Rows",
    "max_nr_ports" / If(more_data("max_nr_ports"), le32) * "Max number of ports",
    "emerg_wr" / If(more_data("emerg_wr"), le32) * "Emergency write",
)
CONSOLE_CONFIG_SIZE = 12  # 5.3.4: every field present


def _config_summary(tree: Field) -> str:
    values = tree.values()
    return f"console config cols={values[tree.abbrev + '.cols']} rows={values.get(tree.abbrev + '.rows', '?')}"


register(Layer("virtio_console.data", virtio_console_data, "Virtio console port data", "virtio 1.4, 5.3.6",
               summary=_data_summary))
register(Layer("virtio_console.ctrl", virtio_console_control, "Virtio console control message",
               "virtio 1.4, 5.3.6.2", summary=_ctrl_summary))
register(Layer("virtio_console.config", virtio_console_config, "Virtio console device configuration",
               "virtio 1.4, 5.3.4", summary=_config_summary))
