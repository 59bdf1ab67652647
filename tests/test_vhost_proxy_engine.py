"""The proxy engine as scripted exchanges: ``>> received`` / ``<< sent`` (no sockets).

Real fds throughout (memfds for guest memory, eventfds), so mapping and fd
substitution are real; only the sockets are left out.
"""

from __future__ import annotations

import logging
import os
import struct

import pytest

from vqtrace.events import Direction, EventKind
from vqtrace.vhost import protocol as p
from vqtrace.vhost.codec import Message
from vqtrace.vhost.engine import (
    Attach,
    Close,
    DataReceived,
    Log,
    Notified,
    Notify,
    OsResources,
    Peer,
    PeerClosed,
    Record,
    Send,
    SessionEnded,
    Signal,
    Unwatch,
    Watch,
)
from vqtrace.vhost.playbook import ANY, Placeholder, Playbook
from vqtrace.vhost.proxy import ProxyEngine

F, B, FC, BC = Peer.FRONTEND, Peer.BACKEND, Peer.FRONTEND_CHANNEL, Peer.BACKEND_CHANNEL


class CountingResources(OsResources):
    """Real eventfds and socket pairs, remembering which are still open."""

    def __init__(self) -> None:
        self.open: set[int] = set()

    def eventfd(self) -> int:
        fd = super().eventfd()
        self.open.add(fd)
        return fd

    def socketpair(self) -> tuple[int, int]:
        a, b = super().socketpair()
        self.open.update((a, b))
        return a, b

    def close(self, fd: int) -> None:
        self.open.discard(fd)
        super().close(fd)


@pytest.fixture
def engine():
    resources = CountingResources()
    proxy = ProxyEngine(source="test.sock", resources=resources)
    yield proxy
    proxy.release()


def rx(peer: Peer, msg: Message) -> DataReceived:
    return DataReceived(peer, msg.raw, list(msg.fds))


def fwd(peer: Peer, msg: Message, keep: tuple = ()) -> Send:
    return Send(peer, msg, keep)


def memfd(size: int) -> int:
    fd = os.memfd_create("guest", os.MFD_CLOEXEC)
    os.ftruncate(fd, size)
    return fd


def test_negotiation_is_forwarded_unchanged_and_tracked(engine):
    get = Message.make(p.GET_FEATURES)
    offer = get.make_reply(p.pack_u64(1 << 32 | p.F_PROTOCOL_FEATURES))
    getp = Message.make(p.GET_PROTOCOL_FEATURES)
    offerp = getp.make_reply(p.pack_u64(p.protocol_mask("REPLY_ACK", "CONFIGURE_MEM_SLOTS")))
    setp = Message.make(p.SET_PROTOCOL_FEATURES, p.pack_u64(p.protocol_mask("REPLY_ACK")))
    owner = Message.make(p.SET_OWNER, need_reply=True)
    ack = owner.make_reply(p.pack_u64(0))
    assert (
        Playbook(engine)
        >> rx(F, get)
        << fwd(B, get)
        >> rx(B, offer)
        << fwd(F, offer)
        >> rx(F, getp)
        << fwd(B, getp)
        >> rx(B, offerp)
        << fwd(F, offerp)
        >> rx(F, setp)
        << fwd(B, setp)
        >> rx(F, owner)
        << fwd(B, owner)
        >> rx(B, ack)
        << fwd(F, ack)
    )
    session = engine.session
    assert session.features_offered == 1 << 32 | p.F_PROTOCOL_FEATURES
    assert session.has_protocol("REPLY_ACK") and not session.has_protocol("CONFIGURE_MEM_SLOTS")
    assert not session.pending  # the REPLY_ACK reply matched SET_OWNER need_reply


def test_every_message_is_recorded_with_its_direction_and_fds(engine):
    kick = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    get = Message.make(p.GET_FEATURES)
    book = Playbook(engine, records=True)
    assert (
        book
        >> rx(F, get)
        << Record(ANY)
        << fwd(B, get)
        >> rx(F, Message.make(p.SET_VRING_KICK, p.pack_vring_file(0), fds=[kick]))
        << Record(ANY)
        << Watch(kick, Notify.KICK, 0, forward_to=ANY)
        << Send(B, ANY, keep=ANY)
    )
    events = [c.event for c in book.commands(Record)]
    assert [e.kind for e in events] == [EventKind.VHOST_USER] * 2
    assert events[0].data == get.raw and events[0].direction is Direction.TO_DEVICE and events[0].fds == 0
    assert events[1].fds == 1 and events[1].queue == 0 and events[1].source == "test.sock"


def test_kick_and_call_fds_are_replaced_by_the_proxys_eventfds(engine):
    kick = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    call = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    my_kick, my_call = Placeholder("proxy kick"), Placeholder("proxy call")
    set_kick = Message.make(p.SET_VRING_KICK, p.pack_vring_file(0), fds=[kick])
    set_call = Message.make(p.SET_VRING_CALL, p.pack_vring_file(0), fds=[call])
    assert (
        Playbook(engine)
        >> rx(F, set_kick)
        << Watch(kick, Notify.KICK, 0, forward_to=my_kick)
        << Send(B, Message.make(p.SET_VRING_KICK, p.pack_vring_file(0), fds=[my_kick]), keep=(my_kick,))
        >> rx(F, set_call)
        << Watch(my_call, Notify.CALL, 0)  # the proxy forwards calls itself, after reading the used ring
        << Send(B, Message.make(p.SET_VRING_CALL, p.pack_vring_file(0), fds=[my_call]), keep=(my_call,))
    )
    assert my_kick() != kick and my_call() != call and my_kick() in engine.resources.open
    # A new call fd (QEMU masking a vector) re-targets the same proxy eventfd; the old one is closed.
    call2 = os.eventfd(0, os.EFD_CLOEXEC)
    assert (
        Playbook(engine)
        >> rx(F, Message.make(p.SET_VRING_CALL, p.pack_vring_file(0), fds=[call2]))
        << Watch(my_call(), Notify.CALL, 0)
        << Send(B, Message.make(p.SET_VRING_CALL, p.pack_vring_file(0), fds=[my_call()]), keep=(my_call(),))
    )
    with pytest.raises(OSError):
        os.fstat(call)
    # Notifications are recorded; the edge forwarded the kick already, the call goes to the new fd.
    book = Playbook(engine, records=True)
    assert (book >> Notified(Notify.KICK, 0, 123) << Record(ANY)
            >> Notified(Notify.CALL, 0, 456) << Record(ANY) << Signal(call2))
    kinds = [(c.event.kind, c.event.direction, c.event.time_ns) for c in book.commands(Record)]
    assert kinds == [(EventKind.KICK, Direction.TO_DEVICE, 123), (EventKind.CALL, Direction.TO_DRIVER, 456)]
    assert engine.session.vrings[0].started


def test_nofd_and_poll_mode_pass_notification_messages_through(engine):
    nofd = Message.make(p.SET_VRING_KICK, p.pack_vring_file(1, nofd=True))
    assert Playbook(engine) >> rx(F, nofd) << fwd(B, nofd)
    assert engine.session.vrings[1].kick == "nofd" and engine.session.vrings[1].started
    poller = ProxyEngine(poll=True)
    kick = os.eventfd(0, os.EFD_CLOEXEC)
    set_kick = Message.make(p.SET_VRING_KICK, p.pack_vring_file(0), fds=[kick])
    assert Playbook(poller) >> rx(F, set_kick) << fwd(B, set_kick)  # the fd itself goes on
    os.close(kick)


def test_memory_table_is_mapped_read_only_and_forwarded(engine):
    fd = memfd(0x4000)
    os.pwrite(fd, b"ring bytes", 0x1000)
    table = Message.make(p.SET_MEM_TABLE, p.pack_memory([p.MemoryRegion(0x0, 0x4000, 0x7F0000000000, 0)]),
                         fds=[fd])
    assert Playbook(engine) >> rx(F, table) << fwd(B, table)
    assert engine.memory.read(0x1000, 10) == b"ring bytes"
    assert not engine.memory.regions[0].writable
    assert engine.memory.regions[0].user_addr == 0x7F0000000000
    # ADD_MEM_REG adds, REM_MEM_REG removes (CONFIGURE_MEM_SLOTS, as QEMU does with qemu-storage-daemon)
    fd2 = memfd(0x2000)
    region = p.MemoryRegion(0x100000, 0x2000, 0x7F0000100000, 0)
    add = Message.make(p.ADD_MEM_REG, p.pack_region(region), fds=[fd2])
    rem = Message.make(p.REM_MEM_REG, p.pack_region(region))
    assert Playbook(engine) >> rx(F, add) << fwd(B, add)
    assert len(engine.memory.regions) == 2 and engine.session.user_to_guest(0x7F0000100010) == 0x100010
    assert Playbook(engine) >> rx(F, rem) << fwd(B, rem)
    assert len(engine.memory.regions) == 1 and len(engine.session.regions) == 1


def test_ring_addresses_are_translated_from_user_addresses(engine):
    fd = memfd(0x10000)
    user = 0x7F0000000000
    gpa = 0x40000
    table = Message.make(p.SET_MEM_TABLE, p.pack_memory([p.MemoryRegion(gpa, 0x10000, user, 0)]), fds=[fd])
    msgs = [table, Message.make(p.SET_VRING_NUM, p.pack_state(0, 64)),
            Message.make(p.SET_VRING_ADDR, p.pack_addr(p.VringAddr(0, 0, user + 0x1000, user + 0x3000,
                                                                   user + 0x2000, gpa + 0x3000)))]
    book = Playbook(engine)
    for msg in msgs:
        book = book >> rx(F, msg) << fwd(B, msg)
    assert book
    config = engine.session.queue_config(0)
    assert (config.desc, config.driver, config.device, config.size) == (gpa + 0x1000, gpa + 0x2000, gpa + 0x3000, 64)


def test_backend_channel_gets_its_own_socket_pair(engine):
    theirs, other = (s.detach() for s in __import__("socket").socketpair())
    mine, backend_end = Placeholder("proxy end"), Placeholder("back-end end")
    req = Message.make(p.SET_BACKEND_REQ_FD, fds=[theirs])
    call = Message.make(p.BACKEND_VRING_CALL, p.pack_state(0, 0), channel=1)
    config = Message.make(p.BACKEND_CONFIG_CHANGE_MSG, need_reply=True, channel=1)
    assert (
        Playbook(engine)
        >> rx(F, req)
        << Attach(FC, theirs)
        << Attach(BC, mine)
        << Send(B, Message.make(p.SET_BACKEND_REQ_FD, fds=[backend_end]))
        >> rx(BC, call)
        << fwd(FC, call)
        >> rx(BC, config)
        << fwd(FC, config)
        >> rx(FC, config.make_reply(p.pack_u64(0)))
        << fwd(BC, config.make_reply(p.pack_u64(0)))
    )
    assert engine.session.backend_channel and mine() != backend_end()
    # a back-end channel end going away closes the other end, the session goes on
    assert Playbook(engine) >> PeerClosed(BC) << Close(BC) << Close(FC)
    assert not engine.ended
    os.close(other)
    os.close(backend_end())


def test_get_vring_base_stops_the_ring(engine):
    get = Message.make(p.GET_VRING_BASE, p.pack_state(0, 0))
    reply = get.make_reply(p.pack_state(0, 42))
    assert Playbook(engine) >> Notified(Notify.KICK, 0) >> rx(F, get) << fwd(B, get) >> rx(B, reply) << fwd(F, reply)
    ring = engine.session.vrings[0]
    assert not ring.started and ring.last_base == 42


def test_unexpected_reply_is_logged_and_forwarded(engine):
    reply = Message.make(p.GET_FEATURES).make_reply(p.pack_u64(0))
    assert (
        Playbook(engine, logs=True)
        >> rx(B, reply)
        << Log(logging.WARNING, "back-end: unexpected reply GET_FEATURES reply 0x0: no request is waiting for one")
        << fwd(F, reply)
    )


def _ending(reason: str, error: bool) -> list:
    return [Log(logging.ERROR if error else logging.INFO, reason), *[Close(peer) for peer in Peer],
            SessionEnded(reason, error)]


def test_frontend_disconnect_closes_the_backend(engine):
    book = Playbook(engine, logs=True) >> PeerClosed(F)
    for command in _ending("the front-end disconnected", False):
        book = book << command
    assert book
    assert engine.ended


def test_backend_dying_mid_message_is_one_error_line(engine):
    raw = Message.make(p.GET_FEATURES).make_reply(p.pack_u64(7)).raw
    book = Playbook(engine, logs=True) >> DataReceived(B, raw[:15]) >> PeerClosed(B)
    reason = ("the back-end disconnected in the middle of a message "
              "(VHOST_USER_GET_FEATURES with 3 of its 8 payload bytes)")
    for command in _ending(reason, True):
        book = book << command
    assert book


def test_garbage_header_ends_the_session_and_closes_every_fd(engine):
    kick = os.eventfd(0, os.EFD_CLOEXEC)
    call = os.eventfd(0, os.EFD_CLOEXEC)
    book = Playbook(engine)
    book >> rx(F, Message.make(p.SET_VRING_KICK, p.pack_vring_file(0), fds=[kick]))
    book >> rx(F, Message.make(p.SET_VRING_CALL, p.pack_vring_file(0), fds=[call]))
    book >> DataReceived(F, struct.pack("<III", 0x41414141, 0x41414141, 0x41414141))
    with pytest.raises(AssertionError):
        assert book
    ended = book.commands(SessionEnded)
    assert len(ended) == 1 and ended[0].error and "garbage header" in ended[0].reason
    assert kick in [c.fd for c in book.commands(Unwatch)]
    assert not engine.resources.open  # the proxy's own eventfds are closed
    for fd in (kick, call):
        with pytest.raises(OSError):
            os.fstat(fd)


def test_too_many_fds_is_an_error(engine):
    fds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(3)]
    book = Playbook(engine, logs=True)
    book >> DataReceived(F, Message.make(p.GET_FEATURES).raw, fds, truncated=True)
    with pytest.raises(AssertionError):
        assert book
    assert "more than 8 fds" in book.commands(SessionEnded)[0].reason
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_reconnect_with_an_inflight_buffer_names_the_requests_to_resubmit(engine):
    """SET_INFLIGHT_FD after a reconnect ("Inflight I/O tracking"): once the ring is set up the proxy
    decodes the queue's region, records it, and logs which requests the back-end must resubmit."""
    from vqtrace.driver import GuestDriver

    qsize = 8
    guest = GuestDriver.in_memfd(1 << 20, 0, user_addr=0x7E00_0000_0000)
    queue = guest.queue(0, qsize, features=1 << 32)
    # two blk requests the back-end took and did not finish before it died
    heads = [queue.add([struct.pack("<IIQ", 1, 0, sector), b"d" * 512], [1]) for sector in (8, 16)]
    region = bytearray(64 + 16 * qsize)  # QueueRegionSplit: features, version, desc_num, last_batch_head, used_idx
    struct.pack_into("<QHHHH", region, 0, 0, 1, qsize, 0, 0)
    for counter, head in ((5, heads[1]), (9, heads[0])):  # fetched in this order: head 1 first
        struct.pack_into("<B5xHQ", region, 16 + 16 * head, 1, 0, counter)
    fd = memfd(len(region))
    os.pwrite(fd, bytes(region), 0)
    c = queue.config
    user = 0x7E00_0000_0000
    messages = [
        Message.make(p.SET_FEATURES, p.pack_u64(1 << 32)),
        Message.make(p.SET_INFLIGHT_FD, p.pack_inflight(p.Inflight(len(region), 0, 1, qsize)), fds=[fd]),
        Message.make(p.SET_MEM_TABLE, p.pack_memory([p.MemoryRegion(0, 1 << 20, user, 0)]), fds=[os.dup(guest.fd)]),
        Message.make(p.SET_VRING_NUM, p.pack_state(0, qsize)),
        Message.make(p.SET_VRING_BASE, p.pack_state(0, 2)),
        Message.make(p.SET_VRING_ADDR, p.pack_addr(p.VringAddr(0, 0, user + c.desc, user + c.device,
                                                               user + c.driver, c.device))),
        Message.make(p.SET_VRING_KICK, p.pack_vring_file(0, nofd=True)),
    ]
    engine.device_type = 2
    book = Playbook(engine, logs=True, records=True)
    for msg in messages:
        book >> rx(F, msg)
    with pytest.raises(AssertionError):
        assert book  # (not scripting every record: the log line and the DATA record are checked below)
    logs = [c.text for c in book.commands(Log)]
    assert ("vring 0: the inflight buffer says the back-end must resubmit 2 requests: "
            f"head {heads[1]} (blk OUT sector=16 len=512), head {heads[0]} (blk OUT sector=8 len=512)") in logs
    data = [c.event for c in book.commands(Record) if c.event.kind is EventKind.DATA]
    assert len(data) == 1 and data[0].layer == "vhost_user.inflight_split" and data[0].queue == 0
    assert data[0].params == {"queue_size": qsize} and len(data[0].data) == 16 + 16 * qsize
    assert engine.inflight_reports[0].heads == [heads[1], heads[0]]
    guest.close()


def test_follow_up_looks_find_completions_that_bring_no_call():
    """A driver that polls (SeaBIOS sets NO_INTERRUPT) gets no call: while chains are in flight the
    proxy asks for a follow-up Tick and records the used chains then, backing off while idle."""
    from vqtrace.driver import GuestDriver
    from vqtrace.rings.device import DeviceQueue
    from vqtrace.vhost.engine import Tick, WakeAfter
    from vqtrace.vhost.tap import tracker_tap

    engine = ProxyEngine(tap_factory=tracker_tap, device_type=2)
    user = 0x7E00_0000_0000
    guest = GuestDriver.in_memfd(1 << 20, 0, user_addr=user)
    queue = guest.queue(0, 8, features=1 << 32)
    c = queue.config
    kick = os.eventfd(0, os.EFD_CLOEXEC)
    setup = [
        Message.make(p.SET_FEATURES, p.pack_u64(1 << 32)),
        Message.make(p.SET_MEM_TABLE, p.pack_memory([p.MemoryRegion(0, 1 << 20, user, 0)]), fds=[os.dup(guest.fd)]),
        Message.make(p.SET_VRING_NUM, p.pack_state(0, 8)),
        Message.make(p.SET_VRING_ADDR, p.pack_addr(p.VringAddr(0, 0, user + c.desc, user + c.device,
                                                               user + c.driver, c.device))),
        Message.make(p.SET_VRING_KICK, p.pack_vring_file(0), fds=[kick]),
    ]
    for msg in setup:
        engine.handle(rx(F, msg))
    queue.add([struct.pack("<IIQ", 0, 0, 5)], [512, 1])
    commands = engine.handle(Notified(Notify.KICK, 0, 10))
    assert WakeAfter(0.002) in commands
    assert [c.event.kind for c in commands if isinstance(c, Record)] == [EventKind.KICK, EventKind.AVAIL]
    assert engine.handle(Tick(20)) == [WakeAfter(0.004)]  # nothing yet: look again, later
    device = DeviceQueue(c, guest.memory)
    device.push(device.pop(), 513)  # used, and no call
    commands = engine.handle(Tick(30))
    used = [c.event for c in commands if isinstance(c, Record)]
    assert [(e.kind, e.time_ns) for e in used] == [(EventKind.USED, 30)]
    assert not [c for c in commands if isinstance(c, WakeAfter) and c.seconds]  # nothing in flight any more
    engine.release()
    guest.close()


def test_a_stopped_ring_is_not_read_until_it_is_set_up_again():
    """Between GET_VRING_BASE and the next SET_VRING_KICK (QEMU restarting the device for the guest
    kernel after the firmware), a call must not make the proxy read the old ring's memory."""
    from vqtrace.driver import GuestDriver
    from vqtrace.vhost.tap import tracker_tap

    engine = ProxyEngine(tap_factory=tracker_tap, device_type=2)
    user = 0x7E00_0000_0000
    guest = GuestDriver.in_memfd(1 << 20, 0, user_addr=user)
    queue = guest.queue(0, 8, features=1 << 32)
    c = queue.config
    call = os.eventfd(0, os.EFD_CLOEXEC)
    for msg in (Message.make(p.SET_MEM_TABLE, p.pack_memory([p.MemoryRegion(0, 1 << 20, user, 0)]),
                             fds=[os.dup(guest.fd)]),
                Message.make(p.SET_VRING_NUM, p.pack_state(0, 8)),
                Message.make(p.SET_VRING_ADDR, p.pack_addr(p.VringAddr(0, 0, user + c.desc, user + c.device,
                                                                       user + c.driver, c.device))),
                Message.make(p.SET_VRING_KICK, p.pack_vring_file(0, nofd=True)),
                Message.make(p.SET_VRING_CALL, p.pack_vring_file(0), fds=[call])):
        engine.handle(rx(F, msg))
    get = Message.make(p.GET_VRING_BASE, p.pack_state(0, 0))
    engine.handle(rx(F, get))
    engine.handle(rx(B, get.make_reply(p.pack_state(0, 0))))
    guest.memory.write(c.driver, b"\xff" * 4)  # the guest reuses the old ring's memory
    commands = engine.handle(Notified(Notify.CALL, 0, 5))
    assert [c.event.kind for c in commands if isinstance(c, Record)] == [EventKind.CALL]
    assert not engine.taps
    engine.release()
    guest.close()
