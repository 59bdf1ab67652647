"""Compressed snapshots: detect gzip, zstd, xz and bzip2, decompress once to a cache file.

A compressed stream cannot be read at random, so it is decompressed once, in
bounded chunks (never the whole snapshot in RAM), into a *sparse* file: runs of
zero bytes become holes, so a mostly-empty 16 GiB guest costs little disk and
the scanner can skip the holes with ``SEEK_DATA``. The file is then mapped like
any uncompressed snapshot. Cache files are keyed by the source's path, size,
inode and mtime, written under a temporary name and renamed when complete, so
an interrupted or failed decompression never leaves a bad cache entry.

Cache directory: ``$VQTRACE_CACHE_DIR``, else ``$XDG_CACHE_HOME/vqtrace/snapshots``,
else ``~/.cache/vqtrace/snapshots``.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import lzma
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import GuestMemoryError
from .progress import Progress

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XZ_MAGIC = b"\xfd7zXZ\x00"
BZIP2_MAGIC = b"BZh"
LZ4_MAGIC = b"\x04\x22\x4d\x18"

OUT_CHUNK = 4 << 20  # decompressed bytes per step: bounds memory whatever the compression ratio
HOLE_BLOCK = 64 << 10  # zero blocks of this size become holes in the cache file
_ZERO_BLOCK = bytes(HOLE_BLOCK)


def compression_of(head: bytes) -> str | None:
    """``"gzip"``, ``"zstd"``, ``"xz"`` or ``"bzip2"`` from a file's first bytes, else None."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(XZ_MAGIC):
        return "xz"
    if head.startswith(BZIP2_MAGIC) and len(head) > 3 and head[3:4].isdigit():
        return "bzip2"
    if head.startswith(LZ4_MAGIC):
        raise GuestMemoryError("lz4-compressed snapshots are not supported: decompress it first (lz4 -d)")
    return None


def cache_dir() -> Path:
    """Where decompressed snapshots are kept."""
    if os.environ.get("VQTRACE_CACHE_DIR"):
        return Path(os.environ["VQTRACE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vqtrace" / "snapshots"


def cache_path(source: str | os.PathLike[str]) -> Path:
    """The cache file for ``source`` (which need not exist yet)."""
    import hashlib  # 5 ms, only for compressed snapshots

    st = os.stat(source)
    key = f"{os.path.realpath(source)}\0{st.st_size}\0{st.st_ino}\0{st.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    stem = Path(source).name
    for suffix in (".gz", ".zst", ".zstd", ".xz", ".bz2"):
        stem = stem.removesuffix(suffix)
    return cache_dir() / f"{stem}.{digest}"


def _open_reader(kind: str, src: BinaryIO) -> Any:
    """A file object that reads the decompressed bytes of ``src``, ``read(n)`` bounded by ``n``.

    gzip members, xz and bzip2 streams and zstd frames may be concatenated. The
    stdlib readers raise EOFError on a truncated stream; zstandard's does not, so
    zstd input is checked first by :func:`check_zstd_frames`.
    """
    if kind == "gzip":
        import gzip

        return gzip.GzipFile(fileobj=src, mode="rb")
    if kind == "xz":
        return lzma.LZMAFile(src, mode="rb")
    if kind == "bzip2":
        return bz2.BZ2File(src, mode="rb")
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(src, read_across_frames=True, closefd=False)


# Zstandard frame format (RFC 8878, 3.1): magic, frame header, blocks, optional checksum.
_ZSTD_FRAME_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE_MASK, _ZSTD_SKIPPABLE = 0xFFFFFFF0, 0x184D2A50
_FCS_BYTES = (0, 2, 4, 8)
_DICT_BYTES = (0, 1, 2, 4)


def check_zstd_frames(src: BinaryIO, size: int, name: str) -> int | None:
    """Walk the frame and block headers of a zstd file (RFC 8878, 3.1.1); the content size when every frame
    declares one. GuestMemoryError when the file is truncated or not zstd."""
    at, total = 0, 0
    while at < size:
        src.seek(at)
        head = src.read(18)
        if len(head) < 8:
            raise GuestMemoryError(f"truncated zstd stream (frame header at offset {at} cut short)", where=name)
        magic = int.from_bytes(head[:4], "little")
        if magic & _ZSTD_SKIPPABLE_MASK == _ZSTD_SKIPPABLE:
            at += 8 + int.from_bytes(head[4:8], "little")
            continue
        if magic != _ZSTD_FRAME_MAGIC:
            raise GuestMemoryError(f"not a zstd frame at offset {at} (trailing garbage?)", where=name)
        descriptor = head[4]
        single = descriptor >> 5 & 1
        fcs_bytes = _FCS_BYTES[descriptor >> 6] or (1 if single else 0)
        dict_bytes = _DICT_BYTES[descriptor & 3]
        checksum = descriptor >> 2 & 1
        pos = 5 + (0 if single else 1) + dict_bytes
        if fcs_bytes and total is not None:
            fcs = int.from_bytes(head[pos:pos + fcs_bytes], "little")
            total += fcs + (256 if fcs_bytes == 2 else 0)
        else:
            total = None
        at += pos + fcs_bytes
        while True:
            src.seek(at)
            block = src.read(3)
            if len(block) < 3:
                raise GuestMemoryError(f"truncated zstd stream (block header at offset {at} cut short)", where=name)
            word = int.from_bytes(block, "little")
            last, btype, bsize = word & 1, word >> 1 & 3, word >> 3
            if btype == 3:
                raise GuestMemoryError(f"corrupt zstd data (reserved block type at offset {at})", where=name)
            at += 3 + (1 if btype == 1 else bsize)
            if at > size:
                raise GuestMemoryError(f"truncated zstd stream (a block runs past the end of the "
                                       f"file, {size} bytes)", where=name)
            if last:
                break
        at += 4 * checksum
        if at > size:
            raise GuestMemoryError("truncated zstd stream (checksum cut short)", where=name)
    return total


def _error_of(kind: str, err: Exception) -> str:
    text = str(err)
    if isinstance(err, EOFError):
        return f"truncated {kind} stream ({text})" if text else f"truncated {kind} stream"
    return f"corrupt {kind} data ({text})" if text else f"corrupt {kind} data"


def decompress_to(source: str | os.PathLike[str], kind: str, target: str | os.PathLike[str], *,
                  progress_label: str | None = None) -> int:
    """Decompress ``source`` into the sparse file ``target``; its size in bytes.

    GuestMemoryError when the stream is corrupt or truncated (``target`` is then removed).
    """
    name = str(source)
    label = progress_label or f"decompressing {Path(name).name}"
    try:
        with open(source, "rb") as src, open(target, "wb") as dst:
            total_in = os.fstat(src.fileno()).st_size
            if kind == "zstd":
                expected = check_zstd_frames(src, total_in, name)
                if expected is not None:
                    _check_space(Path(target).parent, expected, name)
                src.seek(0)
            with Progress(label, total_in) as bar:
                size = _pump(_open_reader(kind, src), dst, kind, name, lambda: bar.update(src.tell()))
            dst.truncate(size)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(target)
        if err.errno == errno.ENOSPC:
            raise GuestMemoryError(f"no space left on the device while decompressing {name} into {target}; "
                                   f"set VQTRACE_CACHE_DIR to a bigger disk") from None
        raise GuestMemoryError(f"cannot decompress {name}: {err.strerror or err}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise
    return size


def _check_space(directory: Path, needed: int, name: str) -> None:
    """Refuse to start a decompression that cannot fit (holes aside, so only when clearly short)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return
    free = st.f_bavail * st.f_frsize
    if needed > free * 4:  # sparse output: zero runs take no space, so only refuse the hopeless cases
        raise GuestMemoryError(f"{name} decompresses to {needed} bytes and {directory} has {free} bytes free; "
                               f"set VQTRACE_CACHE_DIR to a bigger disk")


def _pump(reader: Any, dst: BinaryIO, kind: str, name: str, report: Callable[[], None]) -> int:
    written = 0
    with reader:
        while True:
            try:
                data = reader.read(OUT_CHUNK)
            except (zlib.error, lzma.LZMAError, OSError, ValueError, EOFError) as err:
                if isinstance(err, OSError) and err.errno is not None:
                    raise
                raise GuestMemoryError(_error_of(kind, err), where=name) from None
            except Exception as err:  # zstandard.ZstdError has no common base with the stdlib's errors
                if type(err).__name__ == "ZstdError":
                    raise GuestMemoryError(_error_of(kind, err), where=name) from None
                raise
            if not data:
                break
            written = _write_sparse(dst, data, written)
            report()
    if written == 0:
        raise GuestMemoryError(f"the {kind} stream holds no data", where=name)
    return written


def _write_sparse(dst: BinaryIO, data: bytes, at: int) -> int:
    """Write ``data`` at ``at``, leaving holes for whole zero blocks; the new end."""
    pending_start = None
    for start in range(0, len(data), HOLE_BLOCK):
        block = data[start:start + HOLE_BLOCK]
        if len(block) == HOLE_BLOCK and block == _ZERO_BLOCK:
            if pending_start is not None:
                dst.seek(at + pending_start)
                dst.write(data[pending_start:start])
                pending_start = None
        elif pending_start is None:
            pending_start = start
    if pending_start is not None:
        dst.seek(at + pending_start)
        dst.write(data[pending_start:])
    return at + len(data)


def decompressed(source: str | os.PathLike[str], kind: str) -> Path:
    """The decompressed copy of ``source`` in the cache, decompressing it first if needed."""
    target = cache_path(source)
    if target.exists():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GuestMemoryError(f"cannot create the cache directory {target.parent}: {err.strerror}; "
                               f"set VQTRACE_CACHE_DIR") from None
    partial = target.with_name(f"{target.name}.part{os.getpid()}")
    decompress_to(source, kind, partial)
    os.replace(partial, target)
    return target
