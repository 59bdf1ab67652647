"""Queue roles per device type (virtio 1.4, 5.x.2 "Virtqueues") and QueueContext."""

from __future__ import annotations

import pytest

from vqtrace.requests import QueueContext, decode_request, device_name, queue_role

VERSION_1 = 1 << 32
NET_CTRL_VQ, NET_MQ, NET_RSS = 1 << 17, 1 << 22, 1 << 60
BLK_MQ = 1 << 12
CONSOLE_MULTIPORT = 1 << 1
BALLOON_STATS, BALLOON_HINT, BALLOON_REPORTING = 1 << 1, 1 << 3, 1 << 5


def names(device, features, count, **config):
    out = []
    for q in range(count):
        role = queue_role(QueueContext(device, q, features, **config))
        out.append(role.name if role.exists else None)
    return out


def test_net_single_pair_without_and_with_controlq():
    assert names("net", VERSION_1, 3) == ["receiveq1", "transmitq1", None]
    assert names("net", VERSION_1 | NET_CTRL_VQ, 4) == ["receiveq1", "transmitq1", "controlq", None]


@pytest.mark.parametrize("multi", [NET_MQ, NET_RSS])
def test_net_controlq_follows_the_pairs_with_mq_or_rss(multi):
    got = names("net", VERSION_1 | NET_CTRL_VQ | multi, 8, max_virtqueue_pairs=3)
    assert got == ["receiveq1", "transmitq1", "receiveq2", "transmitq2", "receiveq3", "transmitq3", "controlq",
                   None]
    # max_virtqueue_pairs only counts with MQ or RSS (5.1.2: N=1 otherwise)
    assert names("net", VERSION_1 | NET_CTRL_VQ, 3, max_virtqueue_pairs=3) == ["receiveq1", "transmitq1", "controlq"]


def test_net_pair_numbers_and_guess_without_max_virtqueue_pairs():
    role = queue_role(QueueContext("net", 5, VERSION_1 | NET_MQ))
    assert (role.kind, role.name, role.number, role.guessed) == ("transmitq", "transmitq3", 3, False)
    even = queue_role(QueueContext("net", 4, VERSION_1 | NET_MQ | NET_CTRL_VQ))
    assert even.kind == "receiveq" and even.guessed
    # a chain with device-readable bytes on such a queue is a control command, with a note
    req = decode_request(QueueContext("net", 4, VERSION_1 | NET_MQ | NET_CTRL_VQ), bytes([0, 0, 1]), b"\0", 1)
    assert req.summary == "net ctrl RX PROMISC on=1 -> OK"
    assert [p.code for p in req.problems] == ["GUESSED_ROLE"] and req.problems[0].level == "note"


def test_blk_request_queues():
    assert names("blk", VERSION_1, 2) == ["requestq1", None]
    assert names("blk", VERSION_1 | BLK_MQ, 5, num_queues=4) == ["requestq1", "requestq2", "requestq3", "requestq4",
                                                                  None]
    assert names("blk", VERSION_1, 2, num_queues=4) == ["requestq1", None]  # num_queues needs MQ


def test_console_port0_control_then_ports():
    assert names("console", VERSION_1, 3) == ["receiveq(port0)", "transmitq(port0)", None]
    got = names("console", VERSION_1 | CONSOLE_MULTIPORT, 9, max_nr_ports=3)
    assert got == ["receiveq(port0)", "transmitq(port0)", "control receiveq", "control transmitq",
                   "receiveq(port1)", "transmitq(port1)", "receiveq(port2)", "transmitq(port2)", None]
    role = queue_role(QueueContext("console", 7, CONSOLE_MULTIPORT))
    assert (role.kind, role.number) == ("transmitq", 2)


def test_rng_and_vsock():
    assert names("rng", VERSION_1, 2) == ["requestq", None]
    assert names("vsock", VERSION_1, 4) == ["rx", "tx", "event", None]


def test_scsi_control_event_then_request_queues():
    assert names("scsi", VERSION_1, 5, num_queues=2) == ["controlq", "eventq", "requestq1", "requestq2", None]
    assert queue_role(QueueContext("scsi", 9)).name == "requestq8"  # num_queues unknown


@pytest.mark.parametrize(("features", "expected"), [
    (0, ["inflateq", "deflateq", None]),
    (BALLOON_STATS, ["inflateq", "deflateq", "statsq", None]),
    (BALLOON_REPORTING, ["inflateq", "deflateq", "reporting_vq", None]),
    (BALLOON_HINT | BALLOON_REPORTING, ["inflateq", "deflateq", "free_page_vq", "reporting_vq", None]),
    (BALLOON_STATS | BALLOON_HINT | BALLOON_REPORTING,
     ["inflateq", "deflateq", "statsq", "free_page_vq", "reporting_vq", None]),
])
def test_balloon_queues_shift_when_absent(features, expected):
    assert names("balloon", features, len(expected)) == expected


def test_balloon_fixed_indices_keep_the_list_of_5_5_2():
    got = names("balloon", BALLOON_REPORTING, 6, fixed_balloon_indices=True)
    assert got == ["inflateq", "deflateq", None, None, "reporting_vq", None]


def test_context_names_and_numbers():
    ctx = QueueContext("blk", 0)
    assert (ctx.device_type, ctx.device) == (2, "blk")
    assert QueueContext(2).device == "blk"
    assert QueueContext(99).device == "virtio-99"
    assert device_name(19) == "vsock"
    assert ctx.with_queue(3).queue == 3 and ctx.with_queue(3).device == "blk"
    assert not QueueContext("net", features=None).legacy and QueueContext("net", features=0).legacy
    assert QueueContext("net", features=VERSION_1).has(32) and not QueueContext("net").has(32)


def test_unknown_device_and_missing_queue_show_raw_bytes():
    req = decode_request(QueueContext(26, 1), b"\x01\x02", b"\x03", 1)
    assert req.device == "fs" and req.summary == "fs queue1 2 bytes -> 1 written"
    assert req.fields()["data.data"] == [b"\x01\x02", b"\x03"]
    missing = decode_request(QueueContext("vsock", 7), b"abc")
    assert [p.code for p in missing.problems] == ["NO_QUEUE"]
    assert "5.10.2" in missing.problems[0].section
    assert missing.trees[0].find("data.data").value == b"abc"


def test_role_given_by_the_caller():
    """A trace record stores the role: it overrides the numbering (here max_virtqueue_pairs is unknown)."""
    ctx = QueueContext("net", 6, VERSION_1 | NET_MQ | NET_CTRL_VQ)
    req = decode_request(ctx, bytes([0, 0, 1]), b"\0", 1, role="CONTROL")
    assert req.role.kind == "controlq" and req.summary == "net ctrl RX PROMISC on=1 -> OK" and req.problems == []
    rx = decode_request(QueueContext("net", 6), b"", writable_lens=[1526], role="receiveq")
    assert rx.role.kind == "receiveq" and rx.role.number == 4
    port = decode_request(QueueContext("console", 7, CONSOLE_MULTIPORT), b"hi", role="TX")
    assert port.summary == "console TX port2 2 bytes 'hi'"
    balloon = decode_request(QueueContext("balloon", 2), b"\0" * 10, role="STATS")
    assert balloon.role.kind == "statsq" and balloon.summary.startswith("balloon stats")
    odd = decode_request(QueueContext("blk", 0), b"abc", role="EVENT")
    assert odd.role.kind == "unknown" and odd.fields()["data.data"] == b"abc"
