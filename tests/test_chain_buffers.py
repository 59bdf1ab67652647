"""A chain's bytes: readable windows, writable spans, responses written across descriptors."""

from __future__ import annotations

import pytest

from vqtrace.driver import GuestDriver
from vqtrace.errors import GuestMemoryError
from vqtrace.rings import (
    DeviceQueue,
    iter_readable,
    read_readable,
    read_written,
    readable_spans,
    writable_spans,
    write_response,
)


@pytest.fixture
def chain_and_memory():
    guest = GuestDriver.in_buffer(1 << 20)
    queue = guest.queue(0, 8, features=1 << 28)
    queue.add([b"0123", b"456789", b"AB"], [3, 5], indirect=True)
    chain = DeviceQueue(queue.config, guest.memory).pop()
    return chain, guest.memory


def test_spans(chain_and_memory):
    chain, _ = chain_and_memory
    assert [s.len for s in readable_spans(chain)] == [4, 6, 2]
    assert [s.len for s in writable_spans(chain)] == [3, 5]
    assert all(s.addr == d.addr for s, d in zip(readable_spans(chain), chain.readable, strict=True))


@pytest.mark.parametrize("offset, limit, expected", [
    (0, None, b"0123456789AB"), (0, 5, b"01234"), (3, 4, b"3456"), (10, None, b"AB"), (11, 10, b"B"),
    (12, None, b""), (50, 5, b""), (0, 0, b""),
])
def test_readable_windows(chain_and_memory, offset, limit, expected):
    chain, memory = chain_and_memory
    assert read_readable(memory, chain, limit, offset) == expected
    assert b"".join(bytes(v) for v in iter_readable(memory, chain, limit, offset)) == expected


def test_iter_readable_gives_views_not_copies(chain_and_memory):
    chain, memory = chain_and_memory
    views = list(iter_readable(memory, chain))
    assert all(isinstance(v, memoryview) for v in views)
    memory.write(chain.readable[0].addr, b"Z")
    assert bytes(views[0])[:1] == b"Z"


def test_write_response_across_spans_and_truncation(chain_and_memory):
    chain, memory = chain_and_memory
    assert write_response(memory, chain, b"abcdefgh") == 8
    assert read_written(memory, chain, 8) == b"abcdefgh"
    assert [memory.read(s.addr, s.len) for s in writable_spans(chain)] == [b"abc", b"defgh"]
    assert write_response(memory, chain, b"XYZ", offset=2) == 3
    assert read_written(memory, chain, 8) == b"abXYZfgh"
    assert write_response(memory, chain, b"0123456789") == 8  # only 8 writable bytes
    assert read_written(memory, chain, 100) == b"01234567"
    assert read_written(memory, chain, 4, offset=3) == b"3456"
    assert read_written(memory, chain, 0) == b""
    assert write_response(memory, chain, b"") == 0


def test_bad_windows_and_unmapped_buffers(chain_and_memory):
    chain, memory = chain_and_memory
    with pytest.raises(ValueError):
        read_readable(memory, chain, offset=-1)
    with pytest.raises(ValueError):
        read_readable(memory, chain, limit=-2)
    guest = GuestDriver.in_buffer(1 << 16)
    queue = guest.queue(0, 8)
    queue.add([b"a"], [4], hook=lambda specs: setattr(specs[0], "addr", 0x900000))
    bad = DeviceQueue(queue.config, guest.memory).pop()
    assert not bad.ok
    with pytest.raises(GuestMemoryError) as err:
        read_readable(guest.memory, bad)
    assert err.value.address == 0x900000
