"""Wireshark agrees with vqtrace: every field vqtrace shows has the same value in tshark with the plugin,
and the same display filter selects the same frames (Debian's tshark 4.0, the shipped plugin)."""

from __future__ import annotations

import io
import random
from collections import defaultdict

import pytest

from conftest import require_tool
from vqtrace.commands.show import show
from vqtrace.dissectors import all_layers
from vqtrace.events import Event, EventKind
from vqtrace.filter import compile_filter
from vqtrace.trace import tshark
from vqtrace.trace.display import catalog
from vqtrace.trace.dissect import Dissector, RecordError
from vqtrace.trace.reader import TraceReader
from vqtrace.trace.samples import write_samples
from vqtrace.trace.writer import TraceWriter

pytestmark = pytest.mark.tshark


def vqtrace_fields(path) -> list[dict[str, list]]:
    out = []
    dissector = Dissector()
    with TraceReader(path) as reader:
        for frame in reader:
            try:
                pairs = dissector.pairs(frame.data, frame.source)
            except RecordError as err:
                pairs = err.pairs
            fields: dict[str, list] = defaultdict(list)
            for abbrev, value in pairs:
                fields[abbrev].append(value)
            out.append(dict(fields))
    return out


def same(ours, theirs) -> bool:
    """A vqtrace value and tshark's text for it (Wireshark's strings end at a NUL byte)."""
    if isinstance(ours, str):
        return theirs == ours.split("\0", 1)[0]
    return tshark.normalize(theirs, ours) == ours


def mismatches(path) -> list[str]:
    require_tool("tshark")
    ours_all = vqtrace_fields(path)
    frames = tshark.run_json(path)
    assert len(frames) == len(ours_all)
    problems = []
    for number, (ours, frame) in enumerate(zip(ours_all, frames, strict=True), 1):
        theirs = tshark.flatten(tshark.layers(frame))
        errors = [key for key in theirs if key.startswith("Lua Error")]
        if errors:
            problems.append(f"frame {number}: {errors[0]}")
        for abbrev, values in ours.items():
            got = theirs.get(abbrev)
            if got is not None and "." not in abbrev:
                continue  # a protocol: present in both (the plugin also puts virtio_blk.status under virtio_blk)
            if got is None or len(got) != len(values) or not all(map(same, values, got)):
                problems.append(f"frame {number}: {abbrev}: vqtrace {values[:4]!r}, tshark {(got or [])[:4]!r}")
    return problems


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    path = tmp_path_factory.mktemp("tshark") / "samples.pcapng"
    write_samples(path)
    return path


def test_every_field_of_the_samples_is_the_same_in_tshark(samples):
    assert mismatches(samples) == []
    # and the samples do cover every event kind and every device
    kinds = {frame["vqtrace.kind"][0] for frame in vqtrace_fields(samples) if "vqtrace.kind" in frame}
    assert kinds == set(range(1, 9))
    protocols = set()
    for frame in vqtrace_fields(samples):
        protocols.update(key.split(".", 1)[0] for key in frame)
    assert protocols >= {"vqtrace", "vhost_user", "virtio_blk", "virtio_net", "virtio_console", "virtio_rng",
                         "virtio_balloon", "virtio_scsi", "virtio_vsock", "virtqueue", "eth", "ip", "udp", "arp",
                         "data"}


PARAMS = [None, {"queue_size": 4}, {"queue_size": 4, "event_idx": 1}, {"features": 1 << 32 | 1 << 57},
          {"features": 1 << 69}, {"features": 1 << 3}, {"channel": 1}, {"packed": 1}, {"xen_mmap": 1},
          {"cdb_size": 16, "sense_size": 32}, {"request_type": 15}, {"ctrl_class": 8, "ctrl_command": 1},
          {"ctrl_class": 6, "ctrl_command": 3}, {"legacy": 1}, {"msix": 1}, {"pi_bytesin": 8, "features": 8}]
STEERING = [0, 1, 2, 3, 5, 8, 0x12, 0x25, 0x28, 0x70, 0x72, 0x9E, 0xA0, 0xFF]


def random_message(rng: random.Random, layer: str) -> bytes:
    size = rng.choice([0, 1, 4, 8, 12, 16, 20, 24, 32, 40, 44, 48, 64, 100, 140, 200])
    data = bytes(rng.getrandbits(8) if rng.random() < 0.5 else rng.choice(STEERING) for _ in range(size))
    if layer == "vhost_user.msg" and size >= 12 and rng.random() < 0.8:
        # a plausible header, so the payload layouts of every request get their turn
        data = rng.randint(1, 44).to_bytes(4, "little") + bytes([rng.choice([1, 5, 9])]) + bytes(3) + \
            (size - 12).to_bytes(4, "little") + data[12:]
    return data


@pytest.mark.parametrize("seed", [1, 2])
def test_every_layer_dissects_the_same_in_tshark(tmp_path, seed):
    """DATA records of every layer with random bytes and parameters: the twins' decisions, tested."""
    rng = random.Random(seed)
    path = tmp_path / "layers.pcapng"
    with TraceWriter(path) as writer:
        for layer in all_layers():
            for _ in range(8):
                writer.write(Event(EventKind.DATA, 1, "fuzz", data=random_message(rng, layer.name), layer=layer.name,
                                   params=rng.choice(PARAMS)))
    assert mismatches(path) == []


# Display filters that mean the same in both tools (value names in their full spec spelling: Wireshark
# matches those; vqtrace also takes the short forms).
FILTERS = [
    "vqtrace.kind == 5",
    'vqtrace.kind == "USED"',
    "vqtrace.queue == 0 && vqtrace.direction == 1",
    'vhost_user.request == "VHOST_USER_SET_VRING_ADDR"',
    "vhost_user.flags.reply == 1",
    "vhost_user.addr.desc == 0x7f0000001000",
    "vqtrace.channel == 1",
    "vhost_user.backend_request",
    "virtio_blk.type == 1",
    'virtio_blk.type == "VIRTIO_BLK_T_IN" && virtio_blk.sector >= 8',
    "virtio_blk.status.status != 0",
    "virtio_blk.data contains 76:71:74:72",
    'virtio_blk.get_id.id == "vqtrace-blk"',
    "virtio_net.num_buffers == 1",
    "eth.type == 0x0806",
    "ip.src == 10.0.0.1",
    "udp.dstport == 53",
    "virtio_net.ctrl.class == 0",
    "virtio_console.ctrl.event == 3",
    'virtio_console.data.data contains "hello"',
    "virtio_rng.data.len == 16",
    "virtio_balloon.pfns.pfn == 0x1001",
    "virtio_scsi.cdb.opcode == 0x12",
    "virtio_scsi.status == 2",
    "virtio_scsi.sense.flags.sense_key == 5",
    'virtio_scsi.inquiry.vendor_identification == "VQTRACE"',
    "virtio_vsock.op == 5 && virtio_vsock.len == 4",
    "virtio_vsock.flags.shutdown_f_send == 1",
    'vqtrace.anomaly.code == "DESC_LOOP"',
    "vqtrace.desc.flags.indirect == 1",
    "vqtrace.malformed",
    "data.len > 0",
    'vqtrace.layer == "virtqueue.avail" && virtqueue.avail.ring == 2',
    'frame.interface_name == "net0-split"',
    "vqtrace and not vqtrace.chain",
    "vqtrace.desc.len in {16, 512}",
    "virtio_blk.sector in {0..10}",
    "count(vqtrace.desc) == 3",
    "len(virtio_blk.data) == 512",
    "vqtrace.features & 0x100000000",
    "!virtio_blk.status.status && virtio_blk",
    "virtio_scsi.cdb.opcode == 0x28 || virtio_vsock.op == 1",
]


def vqtrace_numbers(path, text: str) -> list[int]:
    out = io.StringIO()
    show(str(path), flt=compile_filter(text, catalog()), fmt="jsonl", out=out)
    import json

    return [json.loads(line)["frame"] for line in out.getvalue().splitlines()]


@pytest.mark.parametrize("text", FILTERS)
def test_a_display_filter_selects_the_same_frames(samples, text):
    require_tool("tshark")
    ours = vqtrace_numbers(samples, text)
    assert ours, f"{text!r} selects nothing in the samples: the test would prove nothing"
    assert tshark.frame_numbers(samples, text) == ours
