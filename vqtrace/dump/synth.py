"""Synthetic guests for tests, benchmarks and demos: rings laid out as Linux does, with blk traffic.

:class:`SyntheticGuest` wraps a :class:`~vqtrace.driver.GuestDriver` over an in-memory
RAM: :meth:`~SyntheticGuest.blk_queue` places a split or packed ring on a page
boundary (``dma_alloc_coherent``'s alignment; the used ring at ``vring_align`` 64 as
Linux's modern virtio-pci driver does, or 4096 for legacy), :meth:`~SyntheticGuest.blk`
makes blk requests available and the reference device side (:mod:`vqtrace.rings.device`)
completes some of them; then the RAM is written as an ELF core
(:mod:`.elfwrite`) or a raw file. Nothing here is used by the analysis itself.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from ..driver import Allocator, DriverQueue, GuestDriver
from ..memory import GuestMemory
from ..model import VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_RING_PACKED, VIRTIO_F_VERSION_1, Layout
from ..rings.buffers import write_response
from ..rings.device import DeviceQueue
from .elfnotes import ElfNote
from .elfwrite import buffer_reader, prstatus_note, write_elf_file

PAGE = 4096
BLK_FEATURES = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_F_EVENT_IDX | 1 << VIRTIO_F_INDIRECT_DESC
VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT = 0, 1  # virtio 1.4, 5.2.6
BLK_DEVICE_ID = 2


def blk_header(kind: int, sector: int) -> bytes:
    """struct virtio_blk_req's header: le32 type, le32 reserved, le64 sector (5.2.6)."""
    return struct.pack("<IIQ", kind, 0, sector)


class SyntheticGuest:
    """An in-memory guest of ``size`` bytes at guest-physical ``base``; buffers come from its upper half."""

    def __init__(self, size: int = 16 << 20, base: int = 0, *, noise: bool = False) -> None:
        self.base, self.size = base, size
        self.ram = bytearray(size)
        if noise:
            self.ram[size // 4:size // 2] = os.urandom(size // 4)
        memory = GuestMemory()
        memory.add_buffer(base, self.ram, name="guest RAM")
        self.driver = GuestDriver(memory, Allocator(base + size // 2, size // 2))
        self.memory = memory
        self.devices: dict[int, DeviceQueue] = {}

    def blk_queue(self, desc: int, size: int = 256, *, packed: bool = False, align: int = 64, index: int = 0,
                  features: int = BLK_FEATURES) -> DriverQueue:
        """A blk queue whose ring starts at guest-physical ``desc`` (page-aligned, in the lower half)."""
        layout = Layout.PACKED if packed else Layout.SPLIT
        if packed:
            features |= 1 << VIRTIO_F_RING_PACKED
        queue = DriverQueue(self.memory, self.driver.allocator, index=index, size=size, layout=layout,
                            features=features, align=align, base=desc, device_type=BLK_DEVICE_ID)
        self.devices[desc] = DeviceQueue(queue.config, self.memory)
        return queue

    def blk(self, queue: DriverQueue, kind: int, sector: int, length: int = 4096, **kwargs: object) -> int:
        """Make a blk request available; its id."""
        if kind == VIRTIO_BLK_T_OUT:
            return queue.add([blk_header(kind, sector), bytes([sector & 0xFF]) * length], [1], **kwargs)
        return queue.add([blk_header(kind, sector)], [length, 1], **kwargs)

    def complete(self, queue: DriverQueue, count: int, status: int = 0) -> int:
        """The device takes ``count`` available requests and completes them (status byte written); how many."""
        device = self.devices[queue.config.desc]
        done = 0
        while done < count:
            chain = device.pop()
            if chain is None:
                break
            written = write_response(self.memory, chain, b"\0" * (chain.writable_len - 1) + bytes([status]))
            device.push(chain, written)
            done += 1
        return done

    def take(self, queue: DriverQueue, count: int) -> list:
        """The device takes ``count`` requests without completing them (they stay in flight)."""
        device = self.devices[queue.config.desc]
        return [c for c in (device.pop() for _ in range(count)) if c is not None]

    # -- writing snapshots ------------------------------------------------------------------------

    def write_raw(self, path: str | os.PathLike[str]) -> Path:
        Path(path).write_bytes(self.ram)
        return Path(path)

    def write_elf(self, path: str | os.PathLike[str], *, cpus: int = 2, split_at: int | None = None,
                  notes: list[ElfNote] | None = None) -> Path:
        """An ELF core of the RAM (two PT_LOADs when ``split_at`` is given), with ``cpus`` NT_PRSTATUS notes."""
        view = memoryview(self.ram)
        if split_at is None:
            ranges = [(self.base, self.size, buffer_reader(view))]
        else:
            ranges = [(self.base, split_at, buffer_reader(view[:split_at])),
                      (self.base + split_at, self.size - split_at, buffer_reader(view[split_at:]))]
        all_notes = [prstatus_note(n + 1) for n in range(cpus)] + list(notes or [])
        write_elf_file(path, ranges, all_notes)
        return Path(path)
