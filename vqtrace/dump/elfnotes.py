"""ELF notes of a guest core (the PT_NOTE segments QEMU's dump-guest-memory writes).

QEMU writes, per virtual CPU, an ``NT_PRSTATUS`` note named ``CORE`` (the
registers, as a Linux core would have them) and a ``QEMU`` note (type 0, its own
``QEMUCPUState``); with a vmcoreinfo device the guest kernel's ``VMCOREINFO``
text follows. Notes are read with bounds: a hostile or truncated table gives
GuestMemoryError, never a hang.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from dataclasses import dataclass

from ..errors import GuestMemoryError
from ..memory import PT_NOTE, ElfSegment

NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_PRPSINFO = 3
NT_TASKSTRUCT = 4
NT_AUXV = 6
NT_SIGINFO = 0x53494749
NT_FILE = 0x46494C45
NT_PRXFPREG = 0x46E62B7F
NT_X86_XSTATE = 0x202

_CORE_TYPES = {NT_PRSTATUS: "NT_PRSTATUS", NT_PRFPREG: "NT_PRFPREG", NT_PRPSINFO: "NT_PRPSINFO",
               NT_TASKSTRUCT: "NT_TASKSTRUCT", NT_AUXV: "NT_AUXV", NT_SIGINFO: "NT_SIGINFO", NT_FILE: "NT_FILE",
               NT_PRXFPREG: "NT_PRXFPREG", NT_X86_XSTATE: "NT_X86_XSTATE"}
_NOTE_HEADER = struct.Struct("<III")  # namesz, descsz, type (the same in ELF32 and ELF64 cores)
MAX_NOTES_BYTES = 64 << 20  # bounds a hostile PT_NOTE


@dataclass(frozen=True)
class ElfNote:
    """One note: its owner name, type, and descriptor bytes."""

    name: str
    type: int
    desc: bytes

    @property
    def type_name(self) -> str:
        if self.name in ("CORE", "LINUX"):
            return _CORE_TYPES.get(self.type, f"type {self.type:#x}")
        if self.name == "QEMU" and self.type == 0:
            return "QEMUCPUState"
        if self.name == "VMCOREINFO":
            return "VMCOREINFO"
        return f"type {self.type:#x}"


def read_notes(path: str | os.PathLike[str], segments: list[ElfSegment]) -> list[ElfNote]:
    """Every note of the PT_NOTE segments of the ELF file at ``path``."""
    notes: list[ElfNote] = []
    name = str(path)
    try:
        with open(path, "rb") as file:
            for segment in segments:
                if segment.type != PT_NOTE or not segment.filesz:
                    continue
                if segment.filesz > MAX_NOTES_BYTES:
                    raise GuestMemoryError(f"{name}: a PT_NOTE segment of {segment.filesz} bytes is implausible")
                file.seek(segment.offset)
                notes.extend(parse_notes(file.read(segment.filesz), name, segment.offset))
    except OSError as err:
        raise GuestMemoryError(f"cannot read {name}: {err.strerror}") from None
    return notes


def parse_notes(data: bytes, where: str = "notes", base: int = 0) -> list[ElfNote]:
    """Notes from the bytes of one PT_NOTE segment (System V ABI, "Note Section"): 4-byte aligned."""
    notes = []
    at = 0
    while at + _NOTE_HEADER.size <= len(data):
        namesz, descsz, ntype = _NOTE_HEADER.unpack_from(data, at)
        name_at = at + _NOTE_HEADER.size
        desc_at = name_at + _align4(namesz)
        end = desc_at + _align4(descsz)
        if desc_at + descsz > len(data):
            raise GuestMemoryError(f"{where}: the ELF note at file offset {base + at} runs past its segment "
                                   f"({namesz}-byte name, {descsz}-byte descriptor)")
        owner = data[name_at:name_at + namesz].rstrip(b"\0").decode("ascii", "replace")
        notes.append(ElfNote(owner, ntype, bytes(data[desc_at:desc_at + descsz])))
        at = end
    return notes


def _align4(value: int) -> int:
    return (value + 3) & ~3


def summarize_notes(notes: list[ElfNote]) -> dict[str, object]:
    """What ``dump info`` reports: the CPU count, note counts by kind, and the guest's VMCOREINFO facts."""
    counts = Counter(f"{note.name} {note.type_name}" for note in notes)
    summary: dict[str, object] = {
        "cpus": sum(1 for note in notes if note.name == "CORE" and note.type == NT_PRSTATUS),
        "qemu_cpu_states": sum(1 for note in notes if note.name == "QEMU" and note.type == 0),
        "notes": dict(sorted(counts.items())),
    }
    vmcoreinfo = next((note for note in notes if note.name == "VMCOREINFO"), None)
    if vmcoreinfo is not None:
        facts = {}
        for line in vmcoreinfo.desc.decode("ascii", "replace").splitlines():
            key, sep, value = line.partition("=")
            if sep and key in ("OSRELEASE", "PAGESIZE", "BUILD-ID", "KERNELOFFSET", "CRASHTIME"):
                facts[key] = value
        summary["vmcoreinfo"] = facts
    return summary
