"""A running QEMU as a snapshot source: guest RAM read through ``/proc/PID/mem``.

Where guest RAM lives in QEMU's address space comes from QEMU itself, over QMP:
``info mtree -f`` (the flat view of the system address space: which
guest-physical ranges are RAM or ROM, and which RAM block backs them) and
``gpa2hva ADDR`` (the host virtual address of a guest-physical address) for the
first byte of each range. ``/proc/PID/maps`` then confirms every range is mapped
in the process. Nothing is written and the VM is not stopped: pages are read
with ``pread`` when first looked at (see :mod:`.lazy`), so the view of a busy
ring may be torn; pause the VM (QMP ``stop``) for a consistent picture.

Without ``--qmp``, the QMP socket is looked up on QEMU's command line
(``-qmp unix:PATH`` or ``-chardev socket,path=PATH`` with ``-mon mode=control``).
"""

from __future__ import annotations

import errno
import itertools
import os
import re
from dataclasses import dataclass

from ..errors import GuestMemoryError
from ..memory import Region
from .lazy import LazyMemory
from .qmp import QmpClient, QmpError

# One entry of `info mtree -f`: "  0000000000100000-0000000007ffffff (prio 0, ram): pc.ram @0000000000100000 KVM"
_MTREE_LINE = re.compile(r"^\s*([0-9a-f]+)-([0-9a-f]+) \(prio -?\d+, ([\w/-]+)\): (.*?)(?: @([0-9a-f]+))?"
                         r"(?: KVM| \[.*\])*\s*$")
_GPA2HVA = re.compile(r"Host virtual address for (0x[0-9a-f]+) \((.*)\) is (0x[0-9a-f]+)")
MEMORY_TYPES = ("ram", "rom")  # what dump-guest-memory writes too: RAM blocks, ROM included


@dataclass(frozen=True)
class RamRange:
    """One guest-physical range of RAM (or ROM) and where it is in QEMU's address space."""

    guest_addr: int
    size: int
    host_addr: int
    name: str
    kind: str = "ram"


def parse_mtree(text: str) -> list[tuple[int, int, str, str]]:
    """(start, size, kind, name) of the RAM and ROM ranges of the flat view of AS "memory"."""
    ranges: list[tuple[int, int, str, str]] = []
    in_memory = False
    for line in text.replace("\r", "").splitlines():
        if line.startswith("FlatView"):
            if ranges:
                break
            in_memory = False
            continue
        if line.startswith(' AS "memory"'):
            in_memory = True
            continue
        if not in_memory:
            continue
        match = _MTREE_LINE.match(line)
        if match and match.group(3) in MEMORY_TYPES:
            start, last = int(match.group(1), 16), int(match.group(2), 16)
            ranges.append((start, last - start + 1, match.group(3), match.group(4)))
    return ranges


def layout_from_qmp(qmp: QmpClient) -> list[RamRange]:
    """Guest RAM ranges and their host addresses, asked of QEMU."""
    mtree = qmp.hmp("info mtree -f")
    ranges = parse_mtree(mtree)
    if not ranges:
        raise QmpError("QEMU's 'info mtree -f' shows no RAM in the system address space")
    layout = []
    for start, size, kind, name in ranges:
        answer = qmp.hmp(f"gpa2hva 0x{start:x}")
        match = _GPA2HVA.search(answer)
        if match is None:
            raise QmpError(f"QEMU's 'gpa2hva 0x{start:x}' gave no host address: {answer.strip()[:80]!r}")
        layout.append(RamRange(start, size, int(match.group(3), 16), name, kind))
    return layout


def read_maps(pid: int) -> list[tuple[int, int, str]]:
    """(start, end, permissions) of the mappings of process ``pid``."""
    try:
        with open(f"/proc/{pid}/maps") as file:
            lines = file.read().splitlines()
    except OSError as err:
        raise GuestMemoryError(f"cannot read /proc/{pid}/maps: {err.strerror}") from None
    maps = []
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) >= 2:
            start, _, end = fields[0].partition("-")
            maps.append((int(start, 16), int(end, 16), fields[1]))
    return maps


def check_mapped(layout: list[RamRange], maps: list[tuple[int, int, str]], pid: int) -> None:
    """GuestMemoryError unless every range lies in readable mappings of the process."""
    for ram in layout:
        here, end = ram.host_addr, ram.host_addr + ram.size
        for start, stop, perms in maps:
            if start <= here < stop:
                if not perms.startswith("r"):
                    break
                here = stop
                if here >= end:
                    break
        if here < end:
            raise GuestMemoryError(f"guest range 0x{ram.guest_addr:x}+0x{ram.size:x} ({ram.name}) is not readable "
                                   f"in process {pid} at host address 0x{here:x}")


def qmp_sockets_of(pid: int) -> list[str]:
    """QMP socket paths found on the command line of QEMU process ``pid``."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            argv = file.read().decode(errors="replace").split("\0")
    except OSError as err:
        raise GuestMemoryError(f"no process {pid}: {err.strerror}") from None
    found: list[str] = []
    chardevs: dict[str, str] = {}
    monitors: list[str] = []
    for option, value in itertools.pairwise(argv):
        option = option.lstrip("-")
        if option == "qmp" and value.startswith("unix:"):
            path = value[5:].split(",")[0]
            found.append(path.removeprefix("path="))
        elif option == "chardev" and value.startswith("socket"):
            props = dict(part.partition("=")[::2] for part in value.split(",")[1:])
            if props.get("id") and props.get("path"):
                chardevs[props["id"]] = props["path"]
        elif option == "mon":
            props = dict(part.partition("=")[::2] for part in value.split(","))
            if props.get("mode") == "control" and props.get("chardev"):
                monitors.append(props["chardev"])
    found.extend(chardevs[name] for name in monitors if name in chardevs)
    return found


def connect_qmp(pid: int, qmp_address: str | None, timeout: float) -> QmpClient:
    """A connected QMP client for QEMU process ``pid``: ``qmp_address`` or one found on its command line."""
    candidates = [qmp_address] if qmp_address else qmp_sockets_of(pid)
    if not candidates:
        raise GuestMemoryError(f"process {pid} has no QMP socket on its command line: give --qmp PATH "
                               f"(start QEMU with -qmp unix:PATH,server=on,wait=off)")
    last: Exception | None = None
    for address in candidates:
        client = QmpClient(address, timeout=timeout)
        try:
            client.connect()
            return client
        except QmpError as err:
            last = err
    assert last is not None
    raise last


class ProcessMemory(LazyMemory):
    """Guest RAM of a running QEMU, read on demand from ``/proc/PID/mem`` (read-only)."""

    def __init__(self, pid: int, layout: list[RamRange]) -> None:
        super().__init__()
        self.pid = pid
        self.layout = layout
        try:
            self._fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            hint = " (needs root or CAP_SYS_PTRACE; see /proc/sys/kernel/yama/ptrace_scope)" \
                if err.errno in (errno.EACCES, errno.EPERM) else ""
            raise GuestMemoryError(f"cannot open /proc/{pid}/mem: {err.strerror}{hint}") from None
        self._host: dict[int, int] = {}
        for ram in layout:
            region = self.add_lazy(ram.guest_addr, ram.size, self._load, name=f"{ram.name} ({ram.kind})")
            self._host[region.guest_addr] = ram.host_addr

    def host_addr(self, region: Region) -> int:
        return self._host[region.guest_addr]

    def _load(self, region: Region, offset: int, into: memoryview) -> None:
        host = self._host[region.guest_addr] + offset
        done = 0
        while done < len(into):
            try:
                count = os.preadv(self._fd, [into[done:]], host + done)
            except OSError as err:
                raise GuestMemoryError(f"cannot read process {self.pid} at host address 0x{host + done:x}: "
                                       f"{err.strerror}", address=region.guest_addr + offset + done) from None
            if count <= 0:
                raise GuestMemoryError(f"process {self.pid} went away (read of host address 0x{host + done:x} "
                                       f"returned nothing)", address=region.guest_addr + offset + done)
            done += count

    def close(self) -> None:
        super().close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def open_process(pid: int, qmp: QmpClient) -> ProcessMemory:
    """The guest memory of QEMU process ``pid``, laid out as its QMP monitor ``qmp`` says."""
    if not os.path.exists(f"/proc/{pid}"):
        raise GuestMemoryError(f"no process {pid}")
    layout = layout_from_qmp(qmp)
    check_mapped(layout, read_maps(pid), pid)
    return ProcessMemory(pid, layout)
