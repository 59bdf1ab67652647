"""Reference devices: the device side of the virtio 1.4 specification, per device type.

Each device (blk, net, console, rng, balloon, scsi, vsock) is a :class:`~.base.Device`:
one place for its offered features, queues and configuration space, ``negotiate``,
config reads and writes, ``reset``, ``kick`` on a queue notification, held buffers
for receive-style queues, anomalies for malformed requests and an inspectable
``state()``. The vhost-user back-end serves them, replay drives them, the TUI steps
them. :func:`create_device` builds one by its ``--device`` name.

Device modules are imported on first use, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:
    from .base import Device

#: ``--device`` name -> "module:class" of the reference device.
DEVICES: dict[str, str] = {
    "blk": "blk:BlkDevice",
    "net": "net:NetDevice",
    "console": "console:ConsoleDevice",
    "rng": "rng:RngDevice",
    "balloon": "balloon:BalloonDevice",
    "scsi": "scsi:ScsiDevice",
    "vsock": "vsock:VsockDevice",
}
#: Other names the CLI accepts for the same devices.
ALIASES = {"block": "blk", "network": "net", "serial": "console", "entropy": "rng", "socket": "vsock"}


def device_names() -> list[str]:
    """The registry's device names, in the order of the specification's chapter 5."""
    return list(DEVICES)


def device_class(name: str) -> type[Device]:
    """The device class registered as ``name`` (or an alias); UsageError naming the known ones."""
    key = ALIASES.get(name, name)
    if key not in DEVICES:
        raise UsageError(f"unknown device {name!r} (known: {', '.join(DEVICES)})")
    module, cls = DEVICES[key].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def create_device(name: str, **options: Any) -> Device:
    """A new ``name`` device; ``options`` are its constructor's keywords (``image=...`` for blk).

    Options given as None are left out (a CLI can pass every flag it has); an option the
    device does not take is a UsageError (one line), not a TypeError.
    """
    cls = device_class(name)
    try:
        return cls(**{key: value for key, value in options.items() if value is not None})
    except TypeError as err:
        raise UsageError(f"{name}: {err}") from None
