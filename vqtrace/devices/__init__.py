"""Reference devices: the device side of the virtio 1.4 specification, per device type."""
