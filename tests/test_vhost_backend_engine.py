"""The back-end engine serving a reference blk device, as scripted exchanges (no sockets).

Guest memory is a real memfd shared between the test's driver and the engine's mapping.
"""

from __future__ import annotations

import logging
import os
import struct

import pytest

from vqtrace.devices.blk import BlkDevice
from vqtrace.driver import LINUX_MODERN_ALIGN, GuestDriver
from vqtrace.events import EventKind
from vqtrace.model import VIRTIO_F_VERSION_1
from vqtrace.vhost import protocol as p
from vqtrace.vhost.backend import BACKEND_PROTOCOL_FEATURES, BackendEngine
from vqtrace.vhost.codec import Message
from vqtrace.vhost.engine import (
    Close,
    DataReceived,
    Log,
    Notified,
    Notify,
    Peer,
    PeerClosed,
    Record,
    Send,
    SessionEnded,
    Signal,
    Unwatch,
    Watch,
)
from vqtrace.vhost.playbook import ANY, Playbook

F = Peer.FRONTEND
USER = 0x7F00_0000_0000
HDR = struct.Struct("<IIQ")


def rx(msg: Message) -> DataReceived:
    return DataReceived(F, msg.raw, list(msg.fds))


def reply(msg: Message, payload: bytes) -> Send:
    return Send(F, msg.make_reply(payload))


@pytest.fixture
def setup():
    device = BlkDevice(size=1 << 20)
    engine = BackendEngine(device, source="blk.sock", clock=lambda: 42)
    guest = GuestDriver.in_memfd(1 << 20, 0, user_addr=USER)
    yield engine, device, guest
    engine.release()
    guest.close()


def negotiate(engine: BackendEngine, features: int, protocol: int) -> None:
    for msg in (Message.make(p.SET_PROTOCOL_FEATURES, p.pack_u64(protocol)),
                Message.make(p.SET_FEATURES, p.pack_u64(features | p.F_PROTOCOL_FEATURES))):
        assert not [c for c in engine.handle(rx(msg)) if isinstance(c, Send)]


def test_features_protocol_features_and_config(setup):
    engine, device, _ = setup
    get = Message.make(p.GET_FEATURES)
    getp = Message.make(p.GET_PROTOCOL_FEATURES)
    config = Message.make(p.GET_CONFIG, p.pack_config(0, bytes(8)))
    assert (
        Playbook(engine)
        >> rx(get)
        << reply(get, p.pack_u64(device.offered_features | p.F_PROTOCOL_FEATURES))
        >> rx(getp)
        << reply(getp, p.pack_u64(BACKEND_PROTOCOL_FEATURES))
        >> rx(config)
        << reply(config, p.pack_config(0, struct.pack("<Q", (1 << 20) // 512)))  # capacity, 5.2.4
    )


def test_reply_ack_answers_need_reply_with_a_status(setup):
    engine, _, _ = setup
    negotiate(engine, 1 << VIRTIO_F_VERSION_1, p.protocol_mask("REPLY_ACK"))
    owner = Message.make(p.SET_OWNER, need_reply=True)
    bad = Message.make(p.SET_LOG_FD, need_reply=True, fds=[os.eventfd(0)])  # not supported
    assert (
        Playbook(engine, logs=True)
        >> rx(owner)
        << reply(owner, p.pack_u64(0))
        >> rx(bad)
        << Log(logging.WARNING, "unsupported request SET_LOG_FD need_reply [1 fd]")
        << reply(bad, p.pack_u64(1))
    )
    with pytest.raises(OSError):
        os.fstat(bad.fds[0])  # the fd it did not use is closed


def test_inband_notifications_without_backend_req_closes_the_connection(setup):
    engine, _, _ = setup
    msg = Message.make(p.SET_PROTOCOL_FEATURES, p.pack_u64(p.protocol_mask("INBAND_NOTIFICATIONS")))
    reason = "the front-end asked for in-band notifications without BACKEND_REQ and REPLY_ACK"
    assert (
        Playbook(engine, logs=True)
        >> rx(msg)
        << Log(logging.ERROR, reason)
        << Close(Peer.FRONTEND)
        << Close(Peer.FRONTEND_CHANNEL)
        << SessionEnded(reason, True)
    )


def test_kick_runs_the_device_and_calls_the_driver(setup):
    engine, device, guest = setup
    negotiate(engine, 1 << VIRTIO_F_VERSION_1, 0)
    queue = guest.queue(0, 8, features=1 << VIRTIO_F_VERSION_1, align=LINUX_MODERN_ALIGN)
    region = p.MemoryRegion(0, 1 << 20, USER, 0)
    kick, call = os.eventfd(0, os.EFD_CLOEXEC), os.eventfd(0, os.EFD_CLOEXEC)
    c = queue.config
    setup_msgs = [
        Message.make(p.ADD_MEM_REG, p.pack_region(region), fds=[os.dup(guest.fd)]),
        Message.make(p.SET_VRING_NUM, p.pack_state(0, 8)),
        Message.make(p.SET_VRING_BASE, p.pack_state(0, 0)),
        Message.make(p.SET_VRING_ADDR, p.pack_addr(p.VringAddr(0, 0, USER + c.desc, USER + c.device,
                                                               USER + c.driver, c.device))),
        Message.make(p.SET_VRING_CALL, p.pack_vring_file(0), fds=[call]),
        Message.make(p.SET_VRING_ENABLE, p.pack_state(0, 1)),  # PROTOCOL_FEATURES: rings start disabled
    ]
    book = Playbook(engine)
    for msg in setup_msgs:
        book >> rx(msg)
    assert book >> rx(Message.make(p.SET_VRING_KICK, p.pack_vring_file(0), fds=[kick])) << Watch(kick, Notify.KICK, 0)
    # ring addresses were front-end virtual addresses; the queue reads guest-physical ones
    assert engine.session.queue_config(0).desc == c.desc != USER + c.desc
    queue.add([HDR.pack(1, 0, 3), b"W" * 512], [1])  # VIRTIO_BLK_T_OUT sector 3
    book = Playbook(engine, records=True)
    assert book >> Notified(Notify.KICK, 0, 7) << Record(ANY) << Record(ANY) << Record(ANY) << Signal(call) \
        << Record(ANY)
    kinds = [(c.event.kind, c.event.time_ns) for c in book.commands(Record)]
    assert kinds == [(EventKind.KICK, 7), (EventKind.AVAIL, 7), (EventKind.USED, 42), (EventKind.CALL, 42)]
    assert device.backend.read(3 * 512, 512) == b"W" * 512
    used = queue.get_used()
    assert [(u.len, u.written) for u in used] == [(1, b"\x00")]
    # GET_VRING_BASE stops the ring and says where it stopped; the kick fd is closed
    get = Message.make(p.GET_VRING_BASE, p.pack_state(0, 0))
    assert Playbook(engine) >> rx(get) << Unwatch(kick) << reply(get, p.pack_state(0, 1))
    with pytest.raises(OSError):
        os.fstat(kick)


def test_front_end_vanishing_mid_message_ends_with_one_error(setup):
    engine, _, _ = setup
    raw = Message.make(p.SET_FEATURES, p.pack_u64(1)).raw
    reason = "the front-end disconnected in the middle of a message (VHOST_USER_SET_FEATURES with 2 of its 8 " \
             "payload bytes)"
    assert (
        Playbook(engine, logs=True)
        >> DataReceived(F, raw[:14])
        >> PeerClosed(F)
        << Log(logging.ERROR, reason)
        << Close(Peer.FRONTEND)
        << Close(Peer.FRONTEND_CHANNEL)
        << SessionEnded(reason, True)
    )
