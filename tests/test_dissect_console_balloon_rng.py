"""Console (virtio 1.4, 5.3), balloon (5.5) and entropy (5.4) layouts against the spec."""

from __future__ import annotations

import struct

import pytest

from conftest import run_vqtrace
from vqtrace.dissectors import DissectError, dissect, get_layer, parse
from vqtrace.dissectors.balloon import BALLOON_CONFIG_SIZE, STAT_SIZE
from vqtrace.dissectors.console import CONSOLE_CONFIG_SIZE, CONTROL_SIZE


def spans(tree):
    out: dict[str, tuple[int, int]] = {}
    for node in tree.walk():
        out.setdefault(node.abbrev, (node.offset, node.length))
    return out


# --- console (5.3) ---------------------------------------------------------------------------

EVENTS = {"VIRTIO_CONSOLE_DEVICE_READY": 0, "VIRTIO_CONSOLE_DEVICE_ADD": 1, "VIRTIO_CONSOLE_DEVICE_REMOVE": 2,
          "VIRTIO_CONSOLE_PORT_READY": 3, "VIRTIO_CONSOLE_CONSOLE_PORT": 4, "VIRTIO_CONSOLE_RESIZE": 5,
          "VIRTIO_CONSOLE_PORT_OPEN": 6, "VIRTIO_CONSOLE_PORT_NAME": 7}


@pytest.mark.parametrize(("name", "value"), EVENTS.items())
def test_console_control_events(name, value):
    tree = dissect("virtio_console.ctrl", struct.pack("<IHH", 3, value, 1) + struct.pack("<HH", 80, 25))
    assert tree.find("virtio_console.ctrl.event").display == f"{name} ({value})"


def test_console_control_layout():
    assert CONTROL_SIZE == 8
    tree = dissect("virtio_console.ctrl", struct.pack("<IHH", 2, 6, 1))
    assert spans(tree) == {"virtio_console.ctrl": (0, 8), "virtio_console.ctrl.id": (0, 4),
                           "virtio_console.ctrl.event": (4, 2), "virtio_console.ctrl.value": (6, 2)}
    assert get_layer("virtio_console.ctrl").summary(tree) == "console ctrl PORT_OPEN id=2 value=1"


def test_console_resize_is_followed_by_cols_then_rows():
    tree = dissect("virtio_console.ctrl", struct.pack("<IHH", 0, 5, 0) + struct.pack("<HH", 132, 43))
    assert spans(tree)["virtio_console.ctrl.resize.cols"] == (8, 2)
    assert (tree["virtio_console.ctrl.resize.cols"], tree["virtio_console.ctrl.resize.rows"]) == (132, 43)
    assert get_layer("virtio_console.ctrl").summary(tree) == "console ctrl RESIZE id=0 cols=132 rows=43"
    with pytest.raises(DissectError) as info:
        dissect("virtio_console.ctrl", struct.pack("<IHH", 0, 5, 0) + b"\x50")
    assert info.value.offset == 8 and info.value.layer == "virtio_console.ctrl"


def test_console_port_name_runs_to_the_end_without_nul():
    name = "org.qemu.guest_agent.0"
    tree = dissect("virtio_console.ctrl", struct.pack("<IHH", 1, 7, 1) + name.encode())
    assert tree["virtio_console.ctrl.name"] == name
    assert spans(tree)["virtio_console.ctrl.name"] == (8, len(name))
    assert get_layer("virtio_console.ctrl").summary(tree) == f"console ctrl PORT_NAME id=1 name={name!r}"
    layer = get_layer("virtio_console.ctrl")
    raw = layer.build({"id": 1, "event": "VIRTIO_CONSOLE_PORT_NAME", "value": 1, "resize": None, "name": name})
    assert raw == struct.pack("<IHH", 1, 7, 1) + name.encode()
    assert parse("virtio_console.ctrl", raw).name == name


def test_console_config():
    raw = struct.pack("<HHII", 80, 25, 31, 0)
    assert len(raw) == CONSOLE_CONFIG_SIZE == 12
    tree = dissect("virtio_console.config", raw)
    assert spans(tree) == {"virtio_console.config": (0, 12), "virtio_console.config.cols": (0, 2),
                           "virtio_console.config.rows": (2, 2), "virtio_console.config.max_nr_ports": (4, 4),
                           "virtio_console.config.emerg_wr": (8, 4)}
    assert tree["virtio_console.config.max_nr_ports"] == 31
    assert get_layer("virtio_console.config").summary(tree) == "console config cols=80 rows=25"
    short = dissect("virtio_console.config", raw[:8])
    assert "virtio_console.config.emerg_wr" not in short


def test_console_port_data():
    tree = dissect("virtio_console.data", b"login: ")
    assert (tree["virtio_console.data.data"], tree["virtio_console.data.len"]) == (b"login: ", 7)
    assert get_layer("virtio_console.data").summary(tree) == "console data 'login: '"


# --- balloon (5.5) ---------------------------------------------------------------------------

def test_balloon_pfns_to_the_end_of_the_buffer():
    raw = struct.pack("<3I", 0x12345, 0x12346, 0x80000)
    tree = dissect("virtio_balloon.pfns", raw)
    assert tree.values()["virtio_balloon.pfns.pfn"] == [0x12345, 0x12346, 0x80000]
    assert [n.offset for n in tree.find_all("virtio_balloon.pfns.pfn")][1:] == [0, 4, 8]
    assert tree.find_all("virtio_balloon.pfns.pfn")[1].display == "0x00012345"
    assert get_layer("virtio_balloon.pfns").summary(tree) == "balloon 3 pfns 0x12345..0x80000"
    with pytest.raises(DissectError) as info:
        dissect("virtio_balloon.pfns", raw + b"\x01\x02")
    assert (info.value.layer, info.value.offset) == ("virtio_balloon.pfns", 12)


STAT_TAGS = {"VIRTIO_BALLOON_S_SWAP_IN": 0, "VIRTIO_BALLOON_S_SWAP_OUT": 1, "VIRTIO_BALLOON_S_MAJFLT": 2,
             "VIRTIO_BALLOON_S_MINFLT": 3, "VIRTIO_BALLOON_S_MEMFREE": 4, "VIRTIO_BALLOON_S_MEMTOT": 5,
             "VIRTIO_BALLOON_S_AVAIL": 6, "VIRTIO_BALLOON_S_CACHES": 7, "VIRTIO_BALLOON_S_HTLB_PGALLOC": 8,
             "VIRTIO_BALLOON_S_HTLB_PGFAIL": 9}


def test_balloon_stats_are_packed_10_byte_entries():
    assert STAT_SIZE == 10
    raw = b"".join(struct.pack("<HQ", tag, tag * 1000) for tag in STAT_TAGS.values())
    tree = dissect("virtio_balloon.stats", raw)
    tags = tree.find_all("virtio_balloon.stats.stat.tag")
    assert [t.display for t in tags] == [f"{name} ({value})" for name, value in STAT_TAGS.items()]
    vals = tree.find_all("virtio_balloon.stats.stat.val")
    assert [(v.offset, v.length) for v in vals[:2]] == [(2, 8), (12, 8)]
    assert vals[4].value == 4000
    summary = get_layer("virtio_balloon.stats").summary(tree)
    assert summary == "balloon stats SWAP_IN=0 SWAP_OUT=1000 MAJFLT=2000 MINFLT=3000 …"
    with pytest.raises(DissectError) as info:
        dissect("virtio_balloon.stats", raw[:15])
    assert info.value.offset == 12


def test_balloon_config_and_free_page_hint():
    raw = struct.pack("<4I", 262144, 1024, 1, 0xAA)
    assert len(raw) == BALLOON_CONFIG_SIZE == 16
    tree = dissect("virtio_balloon.config", raw)
    assert spans(tree) == {"virtio_balloon.config": (0, 16), "virtio_balloon.config.num_pages": (0, 4),
                           "virtio_balloon.config.actual": (4, 4),
                           "virtio_balloon.config.free_page_hint_cmd_id": (8, 4),
                           "virtio_balloon.config.poison_val": (12, 4)}
    assert get_layer("virtio_balloon.config").summary(tree) == "balloon config num_pages=262144 actual=1024"
    assert "virtio_balloon.config.poison_val" not in dissect("virtio_balloon.config", raw[:8])
    hint = dissect("virtio_balloon.free_page_hint", struct.pack("<I", 0))
    assert hint.find("virtio_balloon.free_page_hint.cmd_id").display == "VIRTIO_BALLOON_CMD_ID_STOP (0)"
    assert dissect("virtio_balloon.free_page_hint", struct.pack("<I", 1)).find(
        "virtio_balloon.free_page_hint.cmd_id").display == "VIRTIO_BALLOON_CMD_ID_DONE (1)"
    assert get_layer("virtio_balloon.free_page_hint").summary(
        dissect("virtio_balloon.free_page_hint", struct.pack("<I", 7))) == "balloon free page hint cmd_id=7"


def test_balloon_round_trip():
    layer = get_layer("virtio_balloon.stats")
    raw = layer.build({"stat": [{"tag": "VIRTIO_BALLOON_S_MEMFREE", "val": 1 << 30},
                                {"tag": 5, "val": 1 << 32}]})
    assert raw == struct.pack("<HQHQ", 4, 1 << 30, 5, 1 << 32)
    assert layer.dissect(raw).values()["virtio_balloon.stats.stat.val"] == [1 << 30, 1 << 32]
    pfns = get_layer("virtio_balloon.pfns").build({"pfn": [1, 2]})
    assert pfns == struct.pack("<2I", 1, 2)


# --- entropy (5.4) ---------------------------------------------------------------------------

def test_rng_data_and_length():
    tree = dissect("virtio_rng.data", bytes(range(16)))
    assert tree["virtio_rng.data.len"] == 16
    assert tree["virtio_rng.data.data"] == bytes(range(16))
    assert get_layer("virtio_rng.data").summary(tree) == "rng 16 random bytes"
    assert dissect("virtio_rng.data", b"")["virtio_rng.data.len"] == 0


def test_cli_decode_console_and_balloon():
    result = run_vqtrace("decode", "virtio_console.ctrl", "01000000 0700 0100 6f72672e71656d75")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "Event: VIRTIO_CONSOLE_PORT_NAME (7)" in out and "Port name: org.qemu" in out
    result = run_vqtrace("decode", "virtio_balloon.stats", "0400 0000004000000000")
    assert "Tag: VIRTIO_BALLOON_S_MEMFREE (4)" in result.stdout.decode()
    assert "Value: 1073741824" in result.stdout.decode()
