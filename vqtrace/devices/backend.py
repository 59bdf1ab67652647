"""Storage behind the block and SCSI devices: an image file or memory, and written extents.

:class:`BlockBackend` is a byte-addressed store with the operations virtio-blk and
SBC commands need (read, write, write zeroes, discard, flush). :class:`ExtentSet`
records which ranges were written, so a device's state can say which sectors the
driver wrote.
"""

from __future__ import annotations

import bisect
import os
from pathlib import Path

from ..errors import UsageError


class BlockBackend:
    """A store of ``size`` bytes; ``readonly`` refuses writes (the device reports them first)."""

    def __init__(self, size: int, *, readonly: bool = False, name: str = "") -> None:
        self.size = size
        self.readonly = readonly
        self.name = name
        self.flushes = 0

    def read(self, offset: int, length: int) -> bytes:
        raise NotImplementedError

    def write(self, offset: int, data: bytes | memoryview) -> None:
        raise NotImplementedError

    def write_zeroes(self, offset: int, length: int) -> None:
        chunk = bytes(min(length, 1 << 20))
        done = 0
        while done < length:
            take = min(len(chunk), length - done)
            self.write(offset + done, chunk[:take])
            done += take

    def discard(self, offset: int, length: int) -> None:
        """Deallocate a range; reads of it afterwards are undefined (virtio 1.4, 5.2.6): zeroes here."""
        self.write_zeroes(offset, length)

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.name or f"{type(self).__name__}({self.size} bytes)"


class MemoryBackend(BlockBackend):
    """A store in process memory (tests, replay): ``data`` or ``size`` zero bytes."""

    def __init__(self, size: int | None = None, *, data: bytes | bytearray | None = None, readonly: bool = False,
                 name: str = "memory") -> None:
        if data is None:
            if size is None or size < 0:
                raise UsageError("a memory disk needs a size or data")
            data = bytearray(size)
        self.data = data if isinstance(data, bytearray) else bytearray(data)
        super().__init__(len(self.data), readonly=readonly, name=name)

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset:offset + length])

    def write(self, offset: int, data: bytes | memoryview) -> None:
        self.data[offset:offset + len(data)] = data

    def write_zeroes(self, offset: int, length: int) -> None:
        self.data[offset:offset + length] = bytes(length)


class FileBackend(BlockBackend):
    """A raw image file, read with ``pread`` and written with ``pwrite``; ``flush`` is ``fsync``."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        try:
            self.fd = os.open(self.path, os.O_RDONLY if readonly else os.O_RDWR)
        except OSError as err:
            raise UsageError(f"cannot open image {path}: {err.strerror}") from None
        try:
            size = os.fstat(self.fd).st_size
        except OSError as err:  # pragma: no cover - fstat on an open fd
            os.close(self.fd)
            raise UsageError(f"cannot stat image {path}: {err.strerror}") from None
        super().__init__(size, readonly=readonly, name=str(path))

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self.fd, length, offset)
        return data + bytes(length - len(data))

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            done = os.pwrite(self.fd, view, offset)
            view, offset = view[done:], offset + done

    def flush(self) -> None:
        super().flush()
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def open_backend(image: str | os.PathLike[str] | None = None, *, size: int | None = None,
                 data: bytes | bytearray | None = None, readonly: bool = False) -> BlockBackend:
    """A FileBackend for ``image``, else a MemoryBackend of ``data`` or ``size`` bytes."""
    if image is not None:
        return FileBackend(image, readonly=readonly)
    return MemoryBackend(size, data=data, readonly=readonly)


class ExtentSet:
    """A set of integers kept as sorted, merged ``[start, end)`` ranges."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, start: int, count: int) -> None:
        if count <= 0:
            return
        end = start + count
        lo = bisect.bisect_left(self._ends, start)
        hi = bisect.bisect_right(self._starts, end)
        if lo < hi:
            start = min(start, self._starts[lo])
            end = max(end, self._ends[hi - 1])
        self._starts[lo:hi] = [start]
        self._ends[lo:hi] = [end]

    def remove(self, start: int, count: int) -> None:
        end = start + count
        keep_s, keep_e = [], []
        for s, e in zip(self._starts, self._ends, strict=True):
            if e <= start or s >= end:
                keep_s.append(s)
                keep_e.append(e)
                continue
            if s < start:
                keep_s.append(s)
                keep_e.append(start)
            if e > end:
                keep_s.append(end)
                keep_e.append(e)
        self._starts, self._ends = keep_s, keep_e

    def __contains__(self, value: int) -> bool:
        at = bisect.bisect_right(self._starts, value) - 1
        return at >= 0 and value < self._ends[at]

    def __len__(self) -> int:
        return sum(e - s for s, e in zip(self._starts, self._ends, strict=True))

    def ranges(self) -> list[tuple[int, int]]:
        """The ranges as (start, count)."""
        return [(s, e - s) for s, e in zip(self._starts, self._ends, strict=True)]

    def clear(self) -> None:
        self._starts.clear()
        self._ends.clear()
