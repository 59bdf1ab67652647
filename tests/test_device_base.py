"""What every reference device shares: registry, features, config space, reset, activity, state."""

from __future__ import annotations

import json

import pytest

from vqtrace.devices import ALIASES, DEVICES, create_device, device_class, device_names
from vqtrace.devices.backend import ExtentSet
from vqtrace.devices.base import Device, build_config
from vqtrace.devices.bench import DeviceBench
from vqtrace.dissectors import features
from vqtrace.dissectors.blk import virtio_blk_config
from vqtrace.errors import UsageError
from vqtrace.model import VIRTIO_F_IN_ORDER, VIRTIO_F_VERSION_1

#: virtio 1.4, 5 "Device Types"
DEVICE_IDS = {"net": 1, "blk": 2, "console": 3, "rng": 4, "balloon": 5, "scsi": 8, "vsock": 19}


def test_registry_names_and_ids():
    assert device_names() == ["blk", "net", "console", "rng", "balloon", "scsi", "vsock"]
    for name in DEVICES:
        cls = device_class(name)
        assert issubclass(cls, Device) and cls.name == name and cls.device_id == DEVICE_IDS[name]
        assert features.DEVICE_TYPES[cls.device_id].short == name  # the same short names as `vqtrace features`
    assert device_class(ALIASES["block"]) is device_class("blk")
    assert device_class("socket").name == "vsock"


def test_unknown_device_and_bad_options_are_one_line_errors():
    with pytest.raises(UsageError, match=r"unknown device 'gpu'.*known: blk, net"):
        create_device("gpu")
    with pytest.raises(UsageError, match=r"blk: .*unexpected keyword argument 'colour'"):
        create_device("blk", colour="red")
    with pytest.raises(UsageError, match="cannot open image"):
        create_device("blk", image="/nonexistent/disk.img")
    with pytest.raises(UsageError):
        create_device("net", mac="not-a-mac")


@pytest.mark.parametrize("name", list(DEVICES))
def test_offers_keep_the_feature_rules(name):
    device = create_device(name)
    offered = device.offered_features
    assert offered >> VIRTIO_F_VERSION_1 & 1
    space = features.feature_space(device.device_id)
    must = [p for p in features.check(offered, space, side="device") if p.level == "MUST"]
    assert must == []  # 2.2.2: no feature without the features it requires
    known = set(features.DEVICE_FEATURES.get(device.device_id, {})) | set(features.TRANSPORT_FEATURES)
    assert {bit for bit in range(128) if offered >> bit & 1} <= known


@pytest.mark.parametrize("name", list(DEVICES))
def test_config_state_and_reset(name):
    device = create_device(name)
    space = device.config_space()
    assert device.read_config(0, len(space)) == space
    full = max(len(space), device.config_full_size)
    assert device.read_config(0, full) == space + bytes(full - len(space))  # the whole struct: zeros past the space
    assert device.anomalies == []
    assert device.read_config(full, 4) == bytes(4) and device.anomalies[-1].code == "CONFIG_OUT_OF_RANGE"
    if device.config_struct is not None:
        device.config_struct.parse(space)  # the dissector's layout reads what the device built
    with DeviceBench(device) as bench:
        assert bench.features == device.features and device.negotiated
        state = device.state()
        json.dumps(state)  # inspectable by the TUI and replay as plain data
        assert state["device"] == name and state["queues"] == device.queue_names()
    device.reset()
    assert device.features == 0 and not device.negotiated and device.queues == {}


def test_negotiation_reports_bits_not_offered_and_broken_dependencies():
    device = create_device("net")
    used = device.negotiate(device.offered_features | 1 << 60)  # RSS was not offered
    assert not used >> 60 & 1
    assert device.anomalies[-1].code == "FEATURE_NOT_OFFERED"
    device.negotiate(1 << 18 | 1 << VIRTIO_F_VERSION_1)  # CTRL_RX without CTRL_VQ
    assert device.anomalies[-1].code == "FEATURE_DEPENDENCY" and device.anomalies[-1].section.endswith("5.1.3.1")


def test_in_order_offered_only_by_devices_that_complete_in_order():
    for name in DEVICES:
        device = create_device(name)
        assert bool(device.offered_features >> VIRTIO_F_IN_ORDER & 1) == device.in_order
    assert create_device("blk").in_order and not create_device("net").in_order


def test_kick_on_a_queue_that_is_not_set_up():
    device = create_device("rng")
    activity = device.kick(0)
    assert activity.anomalies[0].code == "QUEUE_NOT_READY"
    with pytest.raises(UsageError):
        device.set_queue(5, None)


def test_build_config_keeps_fixed_offsets():
    raw = build_config(virtio_blk_config, {"capacity": 8, "blk_size": 4096})
    assert len(raw) == 24  # capacity, size_max, seg_max, geometry, blk_size
    assert raw[20:24] == (4096).to_bytes(4, "little") and raw[8:20] == bytes(12)


def test_extent_set():
    extents = ExtentSet()
    for start, count in [(10, 5), (20, 5), (15, 5), (0, 2)]:
        extents.add(start, count)
    assert extents.ranges() == [(0, 2), (10, 15)] and len(extents) == 17 and 24 in extents and 25 not in extents
    extents.remove(12, 3)
    assert extents.ranges() == [(0, 2), (10, 2), (15, 10)]


def test_deterministic_seed():
    assert create_device("rng", seed=5).deterministic and not create_device("rng").deterministic


def test_release_held_returns_chains_never_used():
    device = create_device("net")
    with DeviceBench(device) as bench:
        ids = [bench.add(0, writable=[2048]) for _ in range(3)]
        assert device.state()["held"] == {"0": 3}
        released = device.release_held(0)
        assert [chain.id for chain in released] == ids  # oldest first: a stopped ring rewinds to the first
        assert released[0].avail_idx == 0 and device.state()["held"] == {}
        device.receive(b"\xff" * 6 + b"\x52\x54\x00\x00\x00\x01" + b"\x08\x00" + bytes(46))
        assert bench.used(0) == []  # nothing held any more: the frame waits in the backlog


def test_create_device_leaves_out_none_options(tmp_path):
    device = create_device("rng", image=None, seed=None)
    assert device.name == "rng" and not device.deterministic
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(4096))
    blk = create_device("blk", image=str(image), readonly=True)
    assert blk.capacity == 8 and blk.readonly
    blk.close()


def test_handle_without_a_queue_reports_the_completion():
    from vqtrace.driver import GuestDriver
    from vqtrace.rings.device import DeviceQueue

    device = create_device("rng", seed=1)
    device.negotiate(device.offered_features)
    with GuestDriver.in_buffer(1 << 20) as driver:
        queue = driver.queue(0, 8, features=device.features)
        device.attach(driver.memory)
        queue.add(writable=[32])
        chain = DeviceQueue(queue.config, driver.memory).pop()  # replay hands the device a chain
        activity = device.handle(0, chain)
        assert [(c.queue, c.id, c.len) for c in activity.completions] == [(0, chain.id, 32)]
        assert activity.completions[0].summary == "rng 32 random bytes"


def test_stop_queue_returns_held_chains_and_a_new_ring_starts_empty():
    device = create_device("vsock")
    with DeviceBench(device) as bench:
        for _ in range(2):
            bench.add(0, writable=[4096])
        queue = device.queues[0]
        chains = device.stop_queue(0)
        assert [c.avail_idx for c in chains] == [0, 1] and 0 not in device.queues
        device.set_queue(0, queue)
        bench.add(0, writable=[4096])
        assert device.state()["held"] == {"0": 1}
        device.set_queue(0, None)  # detaching drops what the old ring held
        assert device.state()["held"] == {}
