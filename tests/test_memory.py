"""GuestMemory: every backing, bounds checks that name the address, spans, read-only, address spaces."""

from __future__ import annotations

import mmap
import os
import struct

import pytest

from vqtrace.errors import GuestMemoryError, VqtraceError
from vqtrace.memory import PT_LOAD, PT_NOTE, GuestMemory, Region, elf_load_segments, elf_segments

PAGE = mmap.PAGESIZE


def _pattern(size: int, seed: int = 0) -> bytes:
    return bytes((seed + i * 7) & 0xFF for i in range(size))


# -- ELF cores built here, the way QEMU's dump-guest-memory lays them out --------------------------


def write_elf_core(path: str, segments: list[tuple[int, int, bytes]], *, note: bytes = b"", elf32: bool = False,
                   memsz_extra: int = 0) -> None:
    """An ELF core: a PT_NOTE (if ``note``), then one PT_LOAD per (paddr, vaddr, data)."""
    phdrs = ([(PT_NOTE, 0, 0, note)] if note else []) + [(PT_LOAD, paddr, vaddr, data)
                                                          for paddr, vaddr, data in segments]
    if elf32:
        ehsize, phentsize = 52, 32
    else:
        ehsize, phentsize = 64, 56
    offset = ehsize + phentsize * len(phdrs)
    table, body = b"", b""
    for ptype, paddr, vaddr, data in phdrs:
        memsz = len(data) + (memsz_extra if ptype == PT_LOAD else 0)
        if elf32:
            table += struct.pack("<IIIIIIII", ptype, offset, vaddr, paddr, len(data), memsz, 0, 0)
        else:
            table += struct.pack("<IIQQQQQQ", ptype, 0, offset, vaddr, paddr, len(data), memsz, 0)
        body += data
        offset += len(data)
    ident = b"\x7fELF" + bytes([1 if elf32 else 2, 1, 1]) + bytes(9)
    if elf32:
        header = struct.pack("<16sHHIIIIIHHHHHH", ident, 4, 3, 1, 0, ehsize, 0, 0, ehsize, phentsize,
                             len(phdrs), 0, 0, 0)
    else:
        header = struct.pack("<16sHHIQQQIHHHHHH", ident, 4, 62, 1, 0, ehsize, 0, 0, ehsize, phentsize,
                             len(phdrs), 0, 0, 0)
    with open(path, "wb") as file:
        file.write(header + table + body)


# -- in-process buffers --------------------------------------------------------------------------


def test_buffer_read_write_and_typed_access():
    memory = GuestMemory.from_bytes(bytearray(64), 0x1000)
    memory.write(0x1010, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    assert memory.read(0x1010, 4) == b"\x01\x02\x03\x04"
    assert memory.read_u16(0x1010) == 0x0201
    assert memory.read_u32(0x1010) == 0x04030201
    assert memory.read_u64(0x1010) == 0x0807060504030201
    memory.write_u16(0x1000, 0xBEEF)
    memory.write_u32(0x1002, 0xDEADC0DE)
    memory.write_u64(0x1008, 0x1122334455667788)
    assert memory.read(0x1000, 6) == bytes.fromhex("efbedec0adde")
    assert memory.read_u64(0x1008) == 0x1122334455667788
    assert memory.total_size == 64
    assert memory.contains(0x1000, 64) and not memory.contains(0x1000, 65)


def test_view_is_zero_copy_within_one_region():
    backing = bytearray(32)
    memory = GuestMemory.from_bytes(backing)
    view = memory.view(8, 4)
    backing[8:12] = b"live"
    assert bytes(view) == b"live"  # the view sees later writes: no copy


def test_bytes_buffer_is_read_only():
    memory = GuestMemory.from_bytes(b"\x00" * 16, 0x2000)
    with pytest.raises(GuestMemoryError, match="read-only") as err:
        memory.write(0x2004, b"x")
    assert "0x2004" in str(err.value)
    assert memory.read(0x2000, 2) == b"\x00\x00"


def test_writable_false_makes_a_bytearray_read_only():
    memory = GuestMemory()
    memory.add_buffer(0, bytearray(16), writable=False)
    with pytest.raises(GuestMemoryError, match="read-only"):
        memory.write(0, b"x")


# -- holes and the end -----------------------------------------------------------------------------


@pytest.fixture
def holey() -> GuestMemory:
    """[0x1000, 0x1100) and [0x2000, 0x2100), a hole between."""
    memory = GuestMemory()
    memory.add_buffer(0x1000, bytearray(_pattern(0x100, 1)), name="low")
    memory.add_buffer(0x2000, bytearray(_pattern(0x100, 2)), name="high")
    return memory


def test_read_in_a_hole_names_the_address(holey):
    with pytest.raises(GuestMemoryError) as err:
        holey.read(0x1800, 4)
    assert err.value.address == 0x1800
    assert "guest address 0x1800" in str(err.value)
    assert isinstance(err.value, VqtraceError)


def test_read_running_into_a_hole_names_where_the_hole_starts(holey):
    with pytest.raises(GuestMemoryError) as err:
        holey.read(0x10F0, 0x20)
    assert err.value.address == 0x1100
    assert "0x1100" in str(err.value) and "hole" in str(err.value)


def test_read_past_the_end_names_the_address(holey):
    with pytest.raises(GuestMemoryError) as err:
        holey.read(0x20FF, 2)
    assert err.value.address == 0x2100
    with pytest.raises(GuestMemoryError) as err:
        holey.read_u64(0x9000)
    assert err.value.address == 0x9000
    with pytest.raises(GuestMemoryError):
        holey.write(0x20FE, b"abc")
    assert holey.read(0x20FE, 2) == _pattern(0x100, 2)[0xFE:]  # a failed write changes nothing


def test_bad_ranges_are_errors(holey):
    with pytest.raises(GuestMemoryError):
        holey.read(-1, 1)
    with pytest.raises(GuestMemoryError):
        holey.read(0x1000, -1)
    assert not holey.contains(-5, 1)
    assert holey.read(0x1000, 0) == b""


def test_empty_memory():
    memory = GuestMemory()
    assert memory.region_at(0) is None
    with pytest.raises(GuestMemoryError, match="unmapped"):
        memory.read(0, 1)
    assert memory.ranges() == []


# -- adjacent regions ------------------------------------------------------------------------------


@pytest.fixture
def adjacent() -> tuple[GuestMemory, bytearray, bytearray]:
    first, second = bytearray(_pattern(0x100, 3)), bytearray(_pattern(0x80, 4))
    memory = GuestMemory([])
    memory.add_buffer(0x4000, first, name="a")
    memory.add_buffer(0x4100, second, name="b")
    return memory, first, second


def test_read_spanning_two_adjacent_regions(adjacent):
    memory, first, second = adjacent
    assert memory.read(0x40F8, 0x10) == bytes(first[0xF8:]) + bytes(second[:8])
    assert bytes(memory.view(0x40F8, 0x10)) == bytes(first[0xF8:]) + bytes(second[:8])
    assert memory.read_u32(0x40FE) == int.from_bytes(first[0xFE:] + second[:2], "little")
    assert memory.contains(0x4000, 0x180) and not memory.contains(0x4000, 0x181)
    assert memory.ranges() == [(0x4000, 0x4180)]


def test_write_spanning_two_adjacent_regions(adjacent):
    memory, first, second = adjacent
    memory.write(0x40FC, b"ABCDEFGH")
    assert bytes(first[0xFC:]) == b"ABCD" and bytes(second[:4]) == b"EFGH"


def test_write_spanning_into_a_read_only_region_writes_nothing():
    writable = bytearray(16)
    memory = GuestMemory()
    memory.add_buffer(0, writable)
    memory.add_buffer(16, bytes(16))
    with pytest.raises(GuestMemoryError, match="read-only"):
        memory.write(12, b"12345678")
    assert writable == bytearray(16)


def test_overlapping_regions_are_refused(adjacent):
    memory, _, _ = adjacent
    with pytest.raises(GuestMemoryError, match="overlaps") as err:
        memory.add_buffer(0x40F0, bytearray(0x20))
    assert "0x40f0" in str(err.value)


def test_regions_are_kept_in_address_order_and_can_be_removed():
    memory = GuestMemory()
    memory.add_buffer(0x3000, bytearray(16), name="c")
    memory.add_buffer(0x1000, bytearray(16), name="a")
    memory.add_buffer(0x2000, bytearray(16), name="b")
    assert [r.name for r in memory.regions] == ["a", "b", "c"]
    generation = memory.generation
    removed = memory.remove(0x2000)
    assert removed.name == "b" and memory.generation != generation
    assert memory.region_at(0x2008) is None
    with pytest.raises(GuestMemoryError, match="no region starts here"):
        memory.remove(0x2000)


def test_region_backing_must_match_its_size():
    with pytest.raises(GuestMemoryError):
        GuestMemory([Region(0, 32, memoryview(bytearray(16)))])


# -- a real memfd ----------------------------------------------------------------------------------


@pytest.fixture
def memfd():
    fd = os.memfd_create("vqtrace-test", 0)
    os.ftruncate(fd, 4 * PAGE)
    os.pwrite(fd, _pattern(4 * PAGE, 5), 0)
    yield fd
    os.close(fd)


def test_memfd_mapping_is_shared_and_read_only_by_default(memfd):
    with GuestMemory() as memory:
        memory.add_fd(memfd, 0x10000, 2 * PAGE, offset=PAGE)
        assert memory.read(0x10000, 8) == _pattern(4 * PAGE, 5)[PAGE:PAGE + 8]
        os.pwrite(memfd, b"fresh", PAGE + 16)  # someone else (the guest) writes
        assert memory.read(0x10010, 5) == b"fresh"
        with pytest.raises(GuestMemoryError, match="read-only"):
            memory.write(0x10000, b"x")


def test_memfd_writable_mapping_writes_through(memfd):
    with GuestMemory() as memory:
        memory.add_fd(memfd, 0, PAGE, writable=True)
        memory.write(100, b"device wrote")
        assert os.pread(memfd, 12, 100) == b"device wrote"


def test_memfd_at_an_unaligned_offset(memfd):
    with GuestMemory() as memory:
        memory.add_fd(memfd, 0x800, 100, offset=PAGE + 24)  # vhost-user mmap_offset need not be page aligned
        assert memory.read(0x800, 100) == _pattern(4 * PAGE, 5)[PAGE + 24:PAGE + 124]
        with pytest.raises(GuestMemoryError) as err:
            memory.read(0x800 + 99, 2)
        assert err.value.address == 0x800 + 100


def test_bad_fd_mappings_are_errors(memfd):
    with GuestMemory() as memory:
        with pytest.raises(GuestMemoryError, match="cannot map"):
            memory.add_fd(memfd, 0, 8 * PAGE)  # past the end of the fd
        with pytest.raises(GuestMemoryError, match="bad mapping"):
            memory.add_fd(memfd, 0, 1, offset=-1)
        with pytest.raises(GuestMemoryError, match="bad mapping"):
            memory.add_fd(-1, 0, PAGE)  # mmap would make anonymous memory of it
        with pytest.raises(GuestMemoryError, match="bad mapping"):
            memory.add_fd(memfd, 0, 0)
        assert memory.regions == []


def test_closing_the_fd_keeps_the_mapping(memfd):
    dup = os.dup(memfd)
    memory = GuestMemory()
    memory.add_fd(dup, 0, PAGE)
    os.close(dup)
    assert memory.read(0, 4) == _pattern(4, 5)
    memory.close()
    assert memory.regions == []


# -- user (front-end virtual) <-> guest-physical ---------------------------------------------------------


def test_user_guest_translation_per_region(memfd):
    with GuestMemory() as memory:
        memory.add_fd(memfd, 0x0, PAGE, user_addr=0x7F0000000000)
        memory.add_fd(memfd, 0x100000, PAGE, offset=PAGE, user_addr=0x7F0000200000)
        memory.add_buffer(0x200000, bytearray(16))  # no user address (a dump, a test buffer)
        assert memory.user_to_guest(0x7F0000000010) == 0x10
        assert memory.user_to_guest(0x7F0000200FF0, 16) == 0x100FF0
        assert memory.guest_to_user(0x100FF0) == 0x7F0000200FF0
        assert memory.guest_to_user(memory.user_to_guest(0x7F0000000123)) == 0x7F0000000123
        with pytest.raises(GuestMemoryError, match="front-end address 0x7f0000200ff1"):
            memory.user_to_guest(0x7F0000200FF1, 16)  # runs past the region's end
        with pytest.raises(GuestMemoryError):
            memory.user_to_guest(0x1234)
        with pytest.raises(GuestMemoryError) as err:
            memory.guest_to_user(0x200000)
        assert err.value.address == 0x200000
        with pytest.raises(GuestMemoryError):
            memory.guest_to_user(0x5000)


# -- a raw RAM file ----------------------------------------------------------------------------------


def test_raw_file_at_a_base_address(tmp_path):
    path = tmp_path / "ram.raw"
    path.write_bytes(_pattern(3 * PAGE, 6))
    with GuestMemory() as memory:
        memory.add_file(path, 0x40000000)
        assert memory.read(0x40000000 + PAGE - 2, 4) == _pattern(3 * PAGE, 6)[PAGE - 2:PAGE + 2]
        with pytest.raises(GuestMemoryError, match="read-only"):
            memory.write(0x40000000, b"x")
        with pytest.raises(GuestMemoryError) as err:
            memory.read(0x40000000 + 3 * PAGE, 1)
        assert err.value.address == 0x40000000 + 3 * PAGE
    with GuestMemory() as memory:
        memory.add_file(path, 0, offset=PAGE, size=PAGE)
        assert memory.read(0, 8) == _pattern(3 * PAGE, 6)[PAGE:PAGE + 8]
        assert memory.total_size == PAGE


def test_raw_file_errors(tmp_path):
    path = tmp_path / "small.raw"
    path.write_bytes(b"x" * 100)
    with GuestMemory() as memory:
        with pytest.raises(GuestMemoryError, match="cannot map"):
            memory.add_file(path, 0, offset=50, size=100)
        with pytest.raises(GuestMemoryError, match="cannot open"):
            memory.add_file(tmp_path / "missing.raw")
    empty = tmp_path / "empty.raw"
    empty.write_bytes(b"")
    with GuestMemory() as memory, pytest.raises(GuestMemoryError):
        memory.add_file(empty)


def test_raw_file_opened_writable(tmp_path):
    path = tmp_path / "rw.raw"
    path.write_bytes(bytes(PAGE))
    with GuestMemory() as memory:
        memory.add_file(path, 0, writable=True)
        memory.write(10, b"hello")
    assert path.read_bytes()[10:15] == b"hello"


# -- an ELF core ---------------------------------------------------------------------------------------


def test_elf_core_segments_at_their_physical_addresses(tmp_path):
    path = str(tmp_path / "dump.elf")
    low, high, rom = _pattern(2 * PAGE, 7), _pattern(PAGE, 8), _pattern(256, 9)
    # vaddr differs from paddr: the reader must use p_paddr (QEMU writes physical addresses there).
    write_elf_core(path, [(0x0, 0xFFFF800000000000, low), (0x100000, 0, high), (0xFFFC0000, 0, rom)],
                   note=b"CORE\x00\x00\x00\x00" * 4)
    types = [segment.type for segment in elf_segments(path)]
    assert types == [PT_NOTE, PT_LOAD, PT_LOAD, PT_LOAD]
    assert [s.paddr for s in elf_load_segments(path)] == [0x0, 0x100000, 0xFFFC0000]
    with GuestMemory.from_elf(path) as memory:
        assert memory.read(0x10, 16) == low[0x10:0x20]
        assert memory.read(0x100000 + PAGE - 4, 4) == high[-4:]
        assert memory.read(0xFFFC0000, 256) == rom
        with pytest.raises(GuestMemoryError) as err:
            memory.read(2 * PAGE, 1)  # the hole between RAM blocks
        assert err.value.address == 2 * PAGE
        with pytest.raises(GuestMemoryError, match="read-only"):
            memory.write(0, b"x")


def test_elf32_core(tmp_path):
    path = str(tmp_path / "dump32.elf")
    write_elf_core(path, [(0x8000, 0xC0008000, _pattern(512, 10))], elf32=True)
    with GuestMemory.from_elf(path) as memory:
        assert memory.regions[0].guest_addr == 0x8000
        assert memory.read(0x8000, 512) == _pattern(512, 10)


def test_adjacent_elf_segments_read_as_one(tmp_path):
    path = str(tmp_path / "adjacent.elf")
    write_elf_core(path, [(0x0, 0, _pattern(PAGE, 11)), (PAGE, 0, _pattern(PAGE, 12))])
    with GuestMemory.from_elf(path) as memory:
        assert memory.read(PAGE - 3, 6) == _pattern(PAGE, 11)[-3:] + _pattern(PAGE, 12)[:3]


@pytest.mark.parametrize("content, message", [
    (b"", "not an ELF file"),
    (b"MZ" + bytes(100), "not an ELF file"),
    (b"\x7fELF\x02\x02\x01" + bytes(57), "big-endian"),
    (b"\x7fELF\x05\x01\x01" + bytes(57), "unknown ELF class"),
])
def test_bad_elf_headers(tmp_path, content, message):
    path = tmp_path / "bad.elf"
    path.write_bytes(content)
    with pytest.raises(GuestMemoryError, match=message):
        GuestMemory.from_elf(path)


def test_truncated_elf_core_is_an_error_naming_the_segment(tmp_path):
    path = tmp_path / "cut.elf"
    write_elf_core(str(path), [(0, 0, _pattern(2 * PAGE, 13))])
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(GuestMemoryError, match=r"segment 0 .* truncated dump"):
        GuestMemory.from_elf(path)


def test_elf_without_load_segments(tmp_path):
    path = tmp_path / "notes.elf"
    write_elf_core(str(path), [], note=b"x" * 16)
    with pytest.raises(GuestMemoryError, match="no PT_LOAD"):
        GuestMemory.from_elf(path)


def test_elf_with_a_hostile_program_header_table(tmp_path):
    path = tmp_path / "hostile.elf"
    write_elf_core(str(path), [(0, 0, b"x" * 64)])
    data = bytearray(path.read_bytes())
    struct.pack_into("<H", data, 56, 60000)  # e_phnum
    path.write_bytes(bytes(data))
    with pytest.raises(GuestMemoryError, match=r"implausible|runs past"):
        GuestMemory.from_elf(path)
