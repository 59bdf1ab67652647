"""The SCSI command set a virtio SCSI host carries (T10 SAM/SPC/SBC), as construct layouts.

virtio 1.4, 5.6.6.1 puts a SCSI CDB in ``virtio_scsi_req_cmd.cdb`` and the SCSI status
and sense data in its device-writable part, "as defined in SAM". This module declares
that T10 side, named as T10 names it:

- ``cdb``: the command descriptor block, dissected by OPERATION CODE (SPC-4 4.2) with
  the fields of the common SPC-4 / SBC-3 commands (a service action picks the layout of
  SERVICE ACTION IN(16)); other known operation codes get the generic layout of their
  group (SPC-4 4.2.5.1), unknown ones show as ``Unknown`` with their bytes.
- ``sense_data``: fixed-format and descriptor-format sense data (SPC-4 4.5), with the
  sense key and ASC/ASCQ named.
- ``inquiry_data`` (SPC-4 6.6.2), ``read_capacity10_data`` (SBC-3 5.16.2),
  ``read_capacity16_data`` (SBC-3 5.16.2 / SBC-4), ``report_luns_data`` (SPC-4 6.33).

Field abbreviations of a value whose width differs between commands carry the width
in bits (``lba32`` in 10- and 12-byte CDBs, ``lba64`` in 16-byte ones,
``transfer_length8/16/32``, ``allocation_length8/16/32``, ``parameter_list_length8/16/32``),
so each abbreviation means one kind of value (Wireshark's scsi dissector does the same).
The bit flags of CDB byte 1 share one ``flags`` field whose bit names keep one mask in
every command (``flags.fua`` is always bit 3).

The CDB and the sense data are chosen by peeking at their first bytes (:func:`peek_switch`),
so their fields sit directly under ``<prefix>.cdb`` / ``<prefix>.sense`` whatever the
command or format; these two layouts must be fields of a Struct (which provides the stream).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from construct import (
    Array,
    Bytes,
    Computed,
    Construct,
    Default,
    Enum,
    Hex,
    If,
    Int24ub,
    Padded,
    SizeofError,
    Struct,
    Switch,
)

from .types import Bitmask, CString, be16, be32, be64, bytes_left, enum_int, u8

# ---------------------------------------------------------------------------------------
# Helpers


def reserved(n: int) -> Construct:
    """Reserved bytes: shown (non-zero reserved bytes are worth seeing), built as zeros."""
    return Default(Bytes(n), bytes(n))


def peek(ctx: Any, n: int) -> bytes:
    """The next ``n`` bytes of the stream being parsed, without consuming them."""
    stream = ctx._io
    here = stream.tell()
    data = stream.read(min(n, bytes_left(ctx)))  # never a short read: Layer.parse's stream rejects those
    stream.seek(here)
    return data


def peek_switch(nbytes: int, parsed_key: Callable[[bytes, Any], Any], built_key: Callable[[Any], Any],
                cases: dict[Any, Construct], default: Construct) -> Switch:
    """A Switch whose key comes from the first ``nbytes`` of its own data.

    Each case is a whole layout (its first field included), so the fields of every case
    sit directly under the Switch's field name. Parsing, ``parsed_key`` gets the peeked
    bytes (fewer at the end of the data) and the context; building, ``built_key`` gets
    the enclosing context (whose values name the case).
    """

    def key(ctx: Any) -> Any:
        if ctx.get("_building"):
            return built_key(ctx)
        if ctx.get("_sizing") or ctx.get("_io") is None:
            raise SizeofError("the layout depends on the data")
        return parsed_key(peek(ctx, nbytes), ctx)

    return Switch(key, cases, default)


def room(ctx: Any, end: Callable[[Any], int]) -> int:
    """Bytes between the parse position and ``end(ctx)`` (an absolute stream position)."""
    return max(0, end(ctx) - ctx._io.tell())


def _stream_end(ctx: Any) -> int:
    return ctx._io.tell() + bytes_left(ctx)


def sized(name: str, parsed: Callable[[Any], int]) -> Callable[[Any], int]:
    """The length of bytes field ``name``: ``parsed(ctx)`` parsing, the value's own length building."""

    def length(ctx: Any) -> int:
        if ctx.get("_building"):
            return len(ctx[name])
        return max(0, parsed(ctx))

    return length


class AsciiField(CString):
    """T10 ASCII data (SPC-4 4.4.1): left-aligned, space-padded; the value is the text without the padding."""

    def _decode(self, obj: bytes, context: Any, path: Any) -> str:
        return obj.decode("ascii", "replace").rstrip(" \0")

    def _encode(self, obj: str, context: Any, path: Any) -> bytes:
        return obj.encode("ascii").ljust(self.size, b" ")[: self.size]


# ---------------------------------------------------------------------------------------
# SAM-5 5.3.1 status codes

SCSI_STATUS = {
    "GOOD": 0x00,
    "CHECK CONDITION": 0x02,
    "CONDITION MET": 0x04,
    "BUSY": 0x08,
    "INTERMEDIATE": 0x10,  # obsolete
    "INTERMEDIATE-CONDITION MET": 0x14,  # obsolete
    "RESERVATION CONFLICT": 0x18,
    "COMMAND TERMINATED": 0x22,  # obsolete
    "TASK SET FULL": 0x28,
    "ACA ACTIVE": 0x30,
    "TASK ABORTED": 0x40,
}
GOOD = SCSI_STATUS["GOOD"]
CHECK_CONDITION = SCSI_STATUS["CHECK CONDITION"]

# ---------------------------------------------------------------------------------------
# SPC-4 4.2 / Annex D operation codes (SPC, SBC, and the MMC ones a CD-ROM LU sees)

OPCODES = {
    "TEST UNIT READY": 0x00,
    "REZERO UNIT": 0x01,
    "REQUEST SENSE": 0x03,
    "FORMAT UNIT": 0x04,
    "REASSIGN BLOCKS": 0x07,
    "READ(6)": 0x08,
    "WRITE(6)": 0x0A,
    "SEEK(6)": 0x0B,
    "INQUIRY": 0x12,
    "MODE SELECT(6)": 0x15,
    "RESERVE(6)": 0x16,
    "RELEASE(6)": 0x17,
    "MODE SENSE(6)": 0x1A,
    "START STOP UNIT": 0x1B,
    "RECEIVE DIAGNOSTIC RESULTS": 0x1C,
    "SEND DIAGNOSTIC": 0x1D,
    "PREVENT ALLOW MEDIUM REMOVAL": 0x1E,
    "READ FORMAT CAPACITIES": 0x23,
    "READ CAPACITY(10)": 0x25,
    "READ(10)": 0x28,
    "WRITE(10)": 0x2A,
    "SEEK(10)": 0x2B,
    "WRITE AND VERIFY(10)": 0x2E,
    "VERIFY(10)": 0x2F,
    "PRE-FETCH(10)": 0x34,
    "SYNCHRONIZE CACHE(10)": 0x35,
    "READ DEFECT DATA(10)": 0x37,
    "WRITE BUFFER": 0x3B,
    "READ BUFFER(10)": 0x3C,
    "WRITE SAME(10)": 0x41,
    "UNMAP": 0x42,
    "READ TOC/PMA/ATIP": 0x43,
    "GET CONFIGURATION": 0x46,
    "GET EVENT STATUS NOTIFICATION": 0x4A,
    "LOG SELECT": 0x4C,
    "LOG SENSE": 0x4D,
    "READ DISC INFORMATION": 0x51,
    "MODE SELECT(10)": 0x55,
    "RESERVE(10)": 0x56,
    "RELEASE(10)": 0x57,
    "MODE SENSE(10)": 0x5A,
    "PERSISTENT RESERVE IN": 0x5E,
    "PERSISTENT RESERVE OUT": 0x5F,
    "VARIABLE LENGTH": 0x7F,
    "EXTENDED COPY": 0x83,
    "RECEIVE COPY RESULTS": 0x84,
    "ATA PASS-THROUGH(16)": 0x85,
    "ACCESS CONTROL IN": 0x86,
    "ACCESS CONTROL OUT": 0x87,
    "READ(16)": 0x88,
    "COMPARE AND WRITE": 0x89,
    "WRITE(16)": 0x8A,
    "WRITE AND VERIFY(16)": 0x8E,
    "VERIFY(16)": 0x8F,
    "PRE-FETCH(16)": 0x90,
    "SYNCHRONIZE CACHE(16)": 0x91,
    "WRITE SAME(16)": 0x93,
    "SERVICE ACTION IN(16)": 0x9E,
    "SERVICE ACTION OUT(16)": 0x9F,
    "REPORT LUNS": 0xA0,
    "ATA PASS-THROUGH(12)": 0xA1,
    "SECURITY PROTOCOL IN": 0xA2,
    "MAINTENANCE IN": 0xA3,
    "MAINTENANCE OUT": 0xA4,
    "READ(12)": 0xA8,
    "WRITE(12)": 0xAA,
    "WRITE AND VERIFY(12)": 0xAE,
    "VERIFY(12)": 0xAF,
    "SECURITY PROTOCOL OUT": 0xB5,
    "READ DEFECT DATA(12)": 0xB7,
    "SET CD SPEED": 0xBB,
    "MECHANISM STATUS": 0xBD,
    "READ CD": 0xBE,
}
OPCODE_NAMES = {value: name for name, value in OPCODES.items()}
op = OPCODES  # short alias for the layout table below

# SBC-3 5.16 / SBC-4: SERVICE ACTION IN(16) service actions
SAI_SERVICE_ACTIONS = {
    "READ CAPACITY(16)": 0x10,
    "READ LONG(16)": 0x11,
    "GET LBA STATUS": 0x12,
    "REPORT REFERRALS": 0x13,
    "GET STREAM STATUS": 0x16,
    "GET PHYSICAL ELEMENT STATUS": 0x17,
}
READ_CAPACITY_16 = SAI_SERVICE_ACTIONS["READ CAPACITY(16)"]
GET_LBA_STATUS = SAI_SERVICE_ACTIONS["GET LBA STATUS"]
# SPC-4 6.13 / 6.14: PERSISTENT RESERVE IN / OUT service actions
PR_IN_SERVICE_ACTIONS = {"READ KEYS": 0, "READ RESERVATION": 1, "REPORT CAPABILITIES": 2, "READ FULL STATUS": 3}
PR_OUT_SERVICE_ACTIONS = {
    "REGISTER": 0, "RESERVE": 1, "RELEASE": 2, "CLEAR": 3, "PREEMPT": 4, "PREEMPT AND ABORT": 5,
    "REGISTER AND IGNORE EXISTING KEY": 6, "REGISTER AND MOVE": 7, "REPLACE LOST RESERVATION": 8,
}
# SPC-4 6.14.2 persistent reservation TYPE
PR_TYPES = {
    "WRITE EXCLUSIVE": 1, "EXCLUSIVE ACCESS": 3, "WRITE EXCLUSIVE - REGISTRANTS ONLY": 5,
    "EXCLUSIVE ACCESS - REGISTRANTS ONLY": 6, "WRITE EXCLUSIVE - ALL REGISTRANTS": 7,
    "EXCLUSIVE ACCESS - ALL REGISTRANTS": 8,
}
# SPC-4 6.33 REPORT LUNS SELECT REPORT
SELECT_REPORT = {"LOGICAL UNITS": 0x00, "WELL KNOWN LOGICAL UNITS": 0x01, "ALL LOGICAL UNITS": 0x02}
# SPC-4 7.8 vital product data page codes (INQUIRY with EVPD set)
VPD_PAGES = {
    "SUPPORTED VPD PAGES": 0x00,
    "UNIT SERIAL NUMBER": 0x80,
    "DEVICE IDENTIFICATION": 0x83,
    "SOFTWARE INTERFACE IDENTIFICATION": 0x84,
    "MANAGEMENT NETWORK ADDRESSES": 0x85,
    "EXTENDED INQUIRY DATA": 0x86,
    "MODE PAGE POLICY": 0x87,
    "SCSI PORTS": 0x88,
    "ATA INFORMATION": 0x89,
    "POWER CONDITION": 0x8A,
    "THIRD-PARTY COPY": 0x8F,
    "BLOCK LIMITS": 0xB0,
    "BLOCK DEVICE CHARACTERISTICS": 0xB1,
    "LOGICAL BLOCK PROVISIONING": 0xB2,
    "REFERRALS": 0xB3,
}
# SPC-4 6.11 MODE SENSE page control
MODE_PAGE_CONTROL = {"CURRENT": 0, "CHANGEABLE": 1, "DEFAULT": 2, "SAVED": 3}
# SPC-4 6.6 LOG SENSE page control
LOG_PAGE_CONTROL = {"THRESHOLD": 0, "CUMULATIVE": 1, "DEFAULT THRESHOLD": 2, "DEFAULT CUMULATIVE": 3}
# SBC-3 5.25 START STOP UNIT power condition
POWER_CONDITIONS = {
    "START_VALID": 0x0, "ACTIVE": 0x1, "IDLE": 0x2, "STANDBY": 0x3, "LU_CONTROL": 0x7,
    "FORCE_IDLE_0": 0xA, "FORCE_STANDBY_0": 0xB,
}

# CDB byte 1 bit names, one mask each in every command (SBC-3 5.x, SPC-4 6.x).
CDB_FLAGS = {
    "RDPROTECT": 0xE0, "WRPROTECT": 0xE0, "VRPROTECT": 0xE0,
    "DPO": 0x10, "FUA": 0x08, "RARC": 0x04, "BYTCHK": 0x06, "DLD2": 0x01,
    "ANCHOR": 0x10, "UNMAP": 0x08, "NDOB": 0x01,
    "SYNC_NV": 0x04, "IMMED": 0x02,
    "EVPD": 0x01, "CMDDT": 0x02, "DESC": 0x01,
    "PF": 0x10, "SP": 0x01, "DBD": 0x08, "LLBAA": 0x10, "PPC": 0x02, "PCR": 0x02,
}


def cdb_flags(*names: str) -> Construct:
    """CDB byte 1 as a ``flags`` Bitmask with the named bits of CDB_FLAGS."""
    return "flags" / Bitmask(u8, {name: CDB_FLAGS[name] for name in names}) * "Flags"


# SAM-5 / SPC-4 4.2.5: the CONTROL byte ends every CDB
CONTROL = "control" / Bitmask(u8, {"NACA": 0x04}) * "Control"
GROUP_NUMBER = "group_number" / u8 * "Group number (bits 4-0; DLD1/DLD0 in 16-byte CDBs)"


def cdb(*fields: Construct) -> Struct:
    """A CDB layout: OPERATION CODE, then ``fields``, then CONTROL."""
    return Struct("opcode" / Enum(u8, **OPCODES) * "Operation code", *fields, CONTROL)


LBA32 = "lba32" / be32 * "Logical block address"
LBA64 = "lba64" / be64 * "Logical block address"
_RW_FLAGS = {"READ": ("RDPROTECT", "DPO", "FUA", "RARC"), "WRITE": ("WRPROTECT", "DPO", "FUA")}


def _rw10(kind: str, length: str = "transfer_length16", extra: tuple[str, ...] = ()) -> Struct:
    names = (*_RW_FLAGS.get(kind, ()), *extra)
    return cdb(cdb_flags(*names), LBA32, GROUP_NUMBER, length / be16 * "Transfer length (blocks)")


def _rw12(kind: str, length: str = "transfer_length32", extra: tuple[str, ...] = ()) -> Struct:
    names = (*_RW_FLAGS.get(kind, ()), *extra)
    return cdb(cdb_flags(*names), LBA32, length / be32 * "Transfer length (blocks)", GROUP_NUMBER)


def _rw16(kind: str, length: str = "transfer_length32", extra: tuple[str, ...] = ()) -> Struct:
    names = (*_RW_FLAGS.get(kind, ()), *extra)
    return cdb(cdb_flags(*names), LBA64, length / be32 * "Transfer length (blocks)", GROUP_NUMBER)


def _rw6() -> Struct:
    # SBC-3 5.13 / 5.38: 21-bit LBA in bytes 1-3 (bits 7-5 of byte 1 reserved); length 0 means 256
    return cdb("lba21" / Int24ub * "Logical block address (21 bits)",
               "transfer_length8" / u8 * "Transfer length (blocks; 0 means 256)")


_PAGE = "page" / Bitmask(u8, {"PC": 0xC0, "PAGE_CODE": 0x3F}, names={"PC": MODE_PAGE_CONTROL}) * "Page"
_LOG_PAGE = "log_page" / Bitmask(u8, {"PC": 0xC0, "PAGE_CODE": 0x3F}, names={"PC": LOG_PAGE_CONTROL}) * "Page"
_SUBPAGE = "subpage_code" / u8 * "Subpage code"

# The layouts of the commands whose fields are decoded, by operation code.
CDB_LAYOUTS: dict[Any, Struct] = {
    op["TEST UNIT READY"]: cdb("reserved" / reserved(4)),  # SPC-4 6.37
    op["REQUEST SENSE"]: cdb(cdb_flags("DESC"), "reserved" / reserved(2),  # SPC-4 6.29
                             "allocation_length8" / u8 * "Allocation length"),
    op["READ(6)"]: _rw6(),  # SBC-3 5.13
    op["WRITE(6)"]: _rw6(),  # SBC-3 5.38
    op["INQUIRY"]: cdb(cdb_flags("EVPD", "CMDDT"),  # SPC-4 6.6
                       "page_code" / Enum(u8, **VPD_PAGES) * "Page code (VPD page when EVPD is set)",
                       "allocation_length16" / be16 * "Allocation length"),
    op["MODE SELECT(6)"]: cdb(cdb_flags("PF", "SP"), "reserved" / reserved(2),  # SPC-4 6.9
                              "parameter_list_length8" / u8 * "Parameter list length"),
    op["MODE SENSE(6)"]: cdb(cdb_flags("DBD"), _PAGE, _SUBPAGE,  # SPC-4 6.11
                             "allocation_length8" / u8 * "Allocation length"),
    op["START STOP UNIT"]: cdb( # SBC-3 5.25
                               "start_stop_flags" / Bitmask(u8, {"IMMED": 0x01}) * "Flags",
                               "reserved" / reserved(1),
                               "power_condition_modifier" / u8 * "Power condition modifier (bits 3-0)",
                               "power" / Bitmask(u8, {"POWER_CONDITION": 0xF0, "NO_FLUSH": 0x04, "LOEJ": 0x02,
                                                      "START": 0x01}, names={"POWER_CONDITION": POWER_CONDITIONS})
                               * "Power condition and start"),
    op["PREVENT ALLOW MEDIUM REMOVAL"]: cdb("reserved" / reserved(3),  # SPC-4 6.13 / SBC-3
                                            "prevent" / u8 * "Prevent (bits 1-0)"),
    op["READ CAPACITY(10)"]: cdb("reserved" / reserved(1), LBA32,  # SBC-3 5.15 (LBA and PMI obsolete in SBC-4)
                                 "reserved2" / reserved(2), "rc_flags" / Bitmask(u8, {"PMI": 0x01}) * "Flags"),
    op["READ(10)"]: _rw10("READ"),  # SBC-3 5.11
    op["WRITE(10)"]: _rw10("WRITE"),  # SBC-3 5.35
    op["WRITE AND VERIFY(10)"]: _rw10("", extra=("WRPROTECT", "DPO", "BYTCHK")),  # SBC-3 5.39
    op["VERIFY(10)"]: _rw10("", "verification_length16", ("VRPROTECT", "DPO", "BYTCHK")),  # SBC-3 5.31
    op["PRE-FETCH(10)"]: _rw10("", "prefetch_length16", ("IMMED",)),  # SBC-3 5.8
    op["SYNCHRONIZE CACHE(10)"]: _rw10("", "number_of_blocks16", ("SYNC_NV", "IMMED")),  # SBC-3 5.22
    op["WRITE SAME(10)"]: _rw10("", "number_of_blocks16", ("WRPROTECT", "ANCHOR", "UNMAP")),  # SBC-3 5.42
    op["UNMAP"]: cdb("unmap_flags" / Bitmask(u8, {"ANCHOR": 0x01}) * "Flags",  # SBC-3 5.28
                     "reserved" / reserved(4), GROUP_NUMBER,
                     "parameter_list_length16" / be16 * "Parameter list length"),
    op["LOG SELECT"]: cdb(cdb_flags("PCR", "SP"), _LOG_PAGE, _SUBPAGE, "reserved" / reserved(3),  # SPC-4 6.5
                          "parameter_list_length16" / be16 * "Parameter list length"),
    op["LOG SENSE"]: cdb(cdb_flags("PPC", "SP"), _LOG_PAGE, _SUBPAGE, "reserved" / reserved(1),  # SPC-4 6.6
                         "parameter_pointer" / be16 * "Parameter pointer",
                         "allocation_length16" / be16 * "Allocation length"),
    op["MODE SELECT(10)"]: cdb(cdb_flags("PF", "SP"), "reserved" / reserved(5),  # SPC-4 6.10
                               "parameter_list_length16" / be16 * "Parameter list length"),
    op["MODE SENSE(10)"]: cdb(cdb_flags("LLBAA", "DBD"), _PAGE, _SUBPAGE, "reserved" / reserved(3),  # SPC-4 6.12
                              "allocation_length16" / be16 * "Allocation length"),
    op["PERSISTENT RESERVE IN"]: cdb( # SPC-4 6.13
                                     "service_action" / Enum(u8, **PR_IN_SERVICE_ACTIONS) * "Service action",
                                     "reserved" / reserved(5), "allocation_length16" / be16 * "Allocation length"),
    op["PERSISTENT RESERVE OUT"]: cdb( # SPC-4 6.14
                                      "service_action" / Enum(u8, **PR_OUT_SERVICE_ACTIONS) * "Service action",
                                      "scope_type" / Bitmask(u8, {"SCOPE": 0xF0, "TYPE": 0x0F},
                                                             names={"SCOPE": {"LU_SCOPE": 0}, "TYPE": PR_TYPES})
                                      * "Scope and type",
                                      "reserved" / reserved(2),
                                      "parameter_list_length32" / be32 * "Parameter list length"),
    op["READ(16)"]: _rw16("READ", extra=("DLD2",)),  # SBC-3 5.13 / SBC-4
    op["WRITE(16)"]: _rw16("WRITE", extra=("DLD2",)),  # SBC-3 5.37 / SBC-4
    op["WRITE AND VERIFY(16)"]: _rw16("", extra=("WRPROTECT", "DPO", "BYTCHK")),  # SBC-3 5.41
    op["VERIFY(16)"]: _rw16("", "verification_length32", ("VRPROTECT", "DPO", "BYTCHK")),  # SBC-3 5.33
    op["PRE-FETCH(16)"]: _rw16("", "prefetch_length32", ("IMMED",)),  # SBC-3 5.9
    op["SYNCHRONIZE CACHE(16)"]: _rw16("", "number_of_blocks32", ("SYNC_NV", "IMMED")),  # SBC-3 5.23
    op["WRITE SAME(16)"]: _rw16("", "number_of_blocks32", ("WRPROTECT", "ANCHOR", "UNMAP", "NDOB")),  # SBC-3 5.43
    op["COMPARE AND WRITE"]: cdb(cdb_flags("WRPROTECT", "DPO", "FUA"), LBA64,  # SBC-3 5.2
                                 "reserved" / reserved(3), "number_of_logical_blocks" / u8 * "Number of logical blocks",
                                 GROUP_NUMBER),
    op["REPORT LUNS"]: cdb("reserved" / reserved(1),  # SPC-4 6.33
                           "select_report" / Enum(u8, **SELECT_REPORT) * "Select report",
                           "reserved2" / reserved(3), "allocation_length32" / be32 * "Allocation length",
                           "reserved3" / reserved(1)),
    op["READ(12)"]: _rw12("READ"),  # SBC-3 5.12
    op["WRITE(12)"]: _rw12("WRITE"),  # SBC-3 5.36
    op["WRITE AND VERIFY(12)"]: _rw12("", extra=("WRPROTECT", "DPO", "BYTCHK")),  # SBC-3 5.40
    op["VERIFY(12)"]: _rw12("", "verification_length32", ("VRPROTECT", "DPO", "BYTCHK")),  # SBC-3 5.32
}

_SAI = "service_action" / Enum(u8, **SAI_SERVICE_ACTIONS) * "Service action"
# SERVICE ACTION IN(16) layouts, by (operation code, service action)
CDB_LAYOUTS[(op["SERVICE ACTION IN(16)"], READ_CAPACITY_16)] = cdb(  # SBC-3 5.16
    _SAI, LBA64, "allocation_length32" / be32 * "Allocation length",
    "rc_flags" / Bitmask(u8, {"PMI": 0x01}) * "Flags")
CDB_LAYOUTS[(op["SERVICE ACTION IN(16)"], GET_LBA_STATUS)] = cdb(  # SBC-3 5.4
    _SAI, LBA64, "allocation_length32" / be32 * "Allocation length",
    "report_type" / u8 * "Report type (bits 1-0, SBC-4)")
CDB_LAYOUTS[op["SERVICE ACTION IN(16)"]] = cdb(_SAI, "parameters" / Bytes(13) * "Parameters")


def cdb_length(opcode: int) -> int | None:
    """The CDB length of ``opcode``'s group (SPC-4 4.2.5.1), None for the variable/vendor groups."""
    return {0: 6, 1: 10, 2: 10, 4: 16, 5: 12}.get(opcode >> 5)


# Known operation codes without a decoded layout: the generic layout of their group.
for _code in OPCODES.values():
    _size = cdb_length(_code)
    if _code not in CDB_LAYOUTS and _size is not None:
        CDB_LAYOUTS[_code] = cdb("parameters" / Bytes(_size - 2) * "Parameters")

# SPC-4 4.2.4 variable length CDB (32-byte READ/WRITE(32) and friends)
VARIABLE_LENGTH_SERVICE_ACTIONS = {
    "READ(32)": 0x0009, "VERIFY(32)": 0x000A, "WRITE(32)": 0x000B, "WRITE AND VERIFY(32)": 0x000C,
    "WRITE SAME(32)": 0x000D, "ORWRITE(32)": 0x000E,
}


CDB_DEFAULT_SIZE = 32  # virtio 1.4, 5.6.4: VIRTIO_SCSI_CDB_DEFAULT_SIZE


def _cdb_room(ctx: Any) -> int:
    """Bytes a CDB may take: ``cdb_size`` (parameter, default 32; virtio 1.4, 5.6.4) within the data."""
    return max(0, min(ctx._params.get("cdb_size", CDB_DEFAULT_SIZE), bytes_left(ctx)))


CDB_LAYOUTS[op["VARIABLE LENGTH"]] = Struct(  # SPC-4 4.2.4: the CONTROL byte comes second
    "opcode" / Enum(u8, **OPCODES) * "Operation code",
    CONTROL,
    "reserved" / reserved(4),
    GROUP_NUMBER,
    "additional_cdb_length" / u8 * "Additional CDB length",
    "variable_service_action" / Enum(be16, **VARIABLE_LENGTH_SERVICE_ACTIONS) * "Service action",
    "parameters" / Bytes(sized("parameters", lambda c: min(c.additional_cdb_length - 2, bytes_left(c))))
    * "Parameters",
)

# An operation code without a known layout: its number, then the rest of the CDB (within cdb_size).
UNKNOWN_CDB = Struct(
    "opcode" / Enum(u8, **OPCODES) * "Operation code",
    "parameters" / Bytes(sized("parameters", lambda c: min(c._params.get("cdb_size", CDB_DEFAULT_SIZE) - 1,
                                                           bytes_left(c)))) * "CDB bytes",
)


def _layout_size(con: Construct) -> int | None:
    try:
        return con.sizeof()
    except Exception:
        return None


_LAYOUT_SIZES = {key: _layout_size(con) for key, con in CDB_LAYOUTS.items()}


def cdb_key(head: bytes, room_left: int | None = None) -> Any:
    """Which CDB_LAYOUTS entry dissects a CDB that starts with ``head`` (None: unknown).

    A CDB whose layout does not fit in ``room_left`` bytes shows as unknown, its bytes raw.
    """
    if not head:
        return None
    opcode = head[0]
    key: Any = opcode
    if len(head) > 1 and (opcode, head[1] & 0x1F) in CDB_LAYOUTS:
        key = (opcode, head[1] & 0x1F)
    if key not in CDB_LAYOUTS:
        return None
    size = _LAYOUT_SIZES.get(key)
    if room_left is not None and size is not None and size > room_left:
        return None
    return key


def built_cdb_key(values: Any) -> Any:
    """The CDB_LAYOUTS key of a CDB being built from ``values``.

    Values without the fields of their opcode's layout (a CDB parsed as unknown because
    it did not fit, with only ``opcode`` and ``parameters``) build as UNKNOWN_CDB again.
    """
    opcode = enum_int(values["opcode"], OPCODES)
    action = values.get("service_action")
    key: Any = opcode if opcode in CDB_LAYOUTS else None
    if action is not None and opcode == op["SERVICE ACTION IN(16)"]:
        action_key = (opcode, enum_int(action, SAI_SERVICE_ACTIONS) & 0x1F)  # bits 4-0, as cdb_key reads it
        if action_key in CDB_LAYOUTS:
            key = action_key
    if key is not None and not all(sub.name in values for sub in CDB_LAYOUTS[key].subcons if sub.name):
        return None
    return key


def cdb_switch(name: str) -> Switch:
    """A CDB dissected by its operation code, as field ``name`` of a Struct."""
    return peek_switch(2, lambda head, ctx: cdb_key(head, _cdb_room(ctx)), lambda ctx: built_cdb_key(ctx[name]),
                       CDB_LAYOUTS, UNKNOWN_CDB)


def cdb_field(name: str = "cdb") -> Construct:
    """``u8 cdb[cdb_size]`` (virtio 1.4, 5.6.6.1): ``cdb_size`` bytes (parameter, default 32), by opcode."""
    return name / Padded(lambda c: c._params.get("cdb_size", CDB_DEFAULT_SIZE), cdb_switch(name)) * "CDB"


# ---------------------------------------------------------------------------------------
# SPC-4 4.5 sense data

SENSE_KEYS = {
    "NO SENSE": 0x0, "RECOVERED ERROR": 0x1, "NOT READY": 0x2, "MEDIUM ERROR": 0x3, "HARDWARE ERROR": 0x4,
    "ILLEGAL REQUEST": 0x5, "UNIT ATTENTION": 0x6, "DATA PROTECT": 0x7, "BLANK CHECK": 0x8,
    "VENDOR SPECIFIC": 0x9, "COPY ABORTED": 0xA, "ABORTED COMMAND": 0xB, "VOLUME OVERFLOW": 0xD,
    "MISCOMPARE": 0xE, "COMPLETED": 0xF,
}
ILLEGAL_REQUEST = SENSE_KEYS["ILLEGAL REQUEST"]
UNIT_ATTENTION = SENSE_KEYS["UNIT ATTENTION"]

# SPC-4 4.5.1 response codes; bit 7 of a fixed-format byte 0 is VALID (INFORMATION is valid)
RESPONSE_CODES = {
    "CURRENT FIXED": 0x70, "DEFERRED FIXED": 0x71, "CURRENT DESCRIPTOR": 0x72, "DEFERRED DESCRIPTOR": 0x73,
    "VENDOR SPECIFIC": 0x7F, "CURRENT FIXED|VALID": 0xF0, "DEFERRED FIXED|VALID": 0xF1,
}
FIXED_FORMAT = frozenset({0x70, 0x71})
DESCRIPTOR_FORMAT = frozenset({0x72, 0x73})
SENSE_VALID = 0x80

# SPC-4 Annex D (Table D.1): the additional sense codes a disk, CD-ROM or virtio-scsi device reports
ASC_ASCQ: dict[tuple[int, int], str] = {
    (0x00, 0x00): "NO ADDITIONAL SENSE INFORMATION",
    (0x00, 0x06): "I/O PROCESS TERMINATED",
    (0x00, 0x16): "OPERATION IN PROGRESS",
    (0x00, 0x1D): "ATA PASS THROUGH INFORMATION AVAILABLE",
    (0x02, 0x00): "NO SEEK COMPLETE",
    (0x04, 0x00): "LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE",
    (0x04, 0x01): "LOGICAL UNIT IS IN PROCESS OF BECOMING READY",
    (0x04, 0x02): "LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED",
    (0x04, 0x03): "LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED",
    (0x04, 0x04): "LOGICAL UNIT NOT READY, FORMAT IN PROGRESS",
    (0x04, 0x07): "LOGICAL UNIT NOT READY, OPERATION IN PROGRESS",
    (0x04, 0x09): "LOGICAL UNIT NOT READY, SELF-TEST IN PROGRESS",
    (0x04, 0x0A): "LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION",
    (0x04, 0x0B): "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE",
    (0x04, 0x0C): "LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE",
    (0x04, 0x11): "LOGICAL UNIT NOT READY, NOTIFY (ENABLE SPINUP) REQUIRED",
    (0x05, 0x00): "LOGICAL UNIT DOES NOT RESPOND TO SELECTION",
    (0x08, 0x00): "LOGICAL UNIT COMMUNICATION FAILURE",
    (0x0C, 0x00): "WRITE ERROR",
    (0x0C, 0x02): "WRITE ERROR - AUTO REALLOCATION FAILED",
    (0x10, 0x01): "LOGICAL BLOCK GUARD CHECK FAILED",
    (0x10, 0x02): "LOGICAL BLOCK APPLICATION TAG CHECK FAILED",
    (0x10, 0x03): "LOGICAL BLOCK REFERENCE TAG CHECK FAILED",
    (0x11, 0x00): "UNRECOVERED READ ERROR",
    (0x11, 0x04): "UNRECOVERED READ ERROR - AUTO REALLOCATE FAILED",
    (0x14, 0x01): "RECORD NOT FOUND",
    (0x1A, 0x00): "PARAMETER LIST LENGTH ERROR",
    (0x1D, 0x00): "MISCOMPARE DURING VERIFY OPERATION",
    (0x20, 0x00): "INVALID COMMAND OPERATION CODE",
    (0x20, 0x02): "ACCESS DENIED - NO ACCESS RIGHTS",
    (0x21, 0x00): "LOGICAL BLOCK ADDRESS OUT OF RANGE",
    (0x21, 0x01): "INVALID ELEMENT ADDRESS",
    (0x24, 0x00): "INVALID FIELD IN CDB",
    (0x25, 0x00): "LOGICAL UNIT NOT SUPPORTED",
    (0x26, 0x00): "INVALID FIELD IN PARAMETER LIST",
    (0x26, 0x01): "PARAMETER NOT SUPPORTED",
    (0x26, 0x02): "PARAMETER VALUE INVALID",
    (0x27, 0x00): "WRITE PROTECTED",
    (0x27, 0x01): "HARDWARE WRITE PROTECTED",
    (0x27, 0x02): "LOGICAL UNIT SOFTWARE WRITE PROTECTED",
    (0x27, 0x07): "SPACE ALLOCATION FAILED WRITE PROTECT",
    (0x28, 0x00): "NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED",
    (0x29, 0x00): "POWER ON, RESET, OR BUS DEVICE RESET OCCURRED",
    (0x29, 0x01): "POWER ON OCCURRED",
    (0x29, 0x02): "SCSI BUS RESET OCCURRED",
    (0x29, 0x03): "BUS DEVICE RESET FUNCTION OCCURRED",
    (0x29, 0x04): "DEVICE INTERNAL RESET",
    (0x29, 0x07): "I_T NEXUS LOSS OCCURRED",
    (0x2A, 0x00): "PARAMETERS CHANGED",
    (0x2A, 0x01): "MODE PARAMETERS CHANGED",
    (0x2A, 0x02): "LOG PARAMETERS CHANGED",
    (0x2A, 0x03): "RESERVATIONS PREEMPTED",
    (0x2A, 0x04): "RESERVATIONS RELEASED",
    (0x2A, 0x05): "REGISTRATIONS PREEMPTED",
    (0x2A, 0x06): "ASYMMETRIC ACCESS STATE CHANGED",
    (0x2A, 0x09): "CAPACITY DATA HAS CHANGED",
    (0x2C, 0x00): "COMMAND SEQUENCE ERROR",
    (0x2F, 0x00): "COMMANDS CLEARED BY ANOTHER INITIATOR",
    (0x31, 0x00): "MEDIUM FORMAT CORRUPTED",
    (0x38, 0x07): "THIN PROVISIONING SOFT THRESHOLD REACHED",
    (0x3A, 0x00): "MEDIUM NOT PRESENT",
    (0x3A, 0x01): "MEDIUM NOT PRESENT - TRAY CLOSED",
    (0x3A, 0x02): "MEDIUM NOT PRESENT - TRAY OPEN",
    (0x3E, 0x00): "LOGICAL UNIT HAS NOT SELF-CONFIGURED YET",
    (0x3F, 0x01): "MICROCODE HAS BEEN CHANGED",
    (0x3F, 0x03): "INQUIRY DATA HAS CHANGED",
    (0x3F, 0x0E): "REPORTED LUNS DATA HAS CHANGED",
    (0x44, 0x00): "INTERNAL TARGET FAILURE",
    (0x47, 0x00): "SCSI PARITY ERROR",
    (0x49, 0x00): "INVALID MESSAGE ERROR",
    (0x4B, 0x00): "DATA PHASE ERROR",
    (0x4E, 0x00): "OVERLAPPED COMMANDS ATTEMPTED",
    (0x53, 0x02): "MEDIUM REMOVAL PREVENTED",
    (0x55, 0x03): "INSUFFICIENT RESOURCES",
    (0x5D, 0x00): "FAILURE PREDICTION THRESHOLD EXCEEDED",
    (0x5E, 0x00): "LOW POWER CONDITION ON",
}


def asc_ascq_name(asc: int, ascq: int) -> str:
    """The SPC-4 Annex D description of ASC/ASCQ, "VENDOR SPECIFIC" or "Unknown (0xAA/0xQQ)"."""
    name = ASC_ASCQ.get((asc, ascq))
    if name is not None:
        return name
    if asc >= 0x80 or ascq >= 0x80:
        return f"VENDOR SPECIFIC (0x{asc:02x}/0x{ascq:02x})"
    return f"Unknown (0x{asc:02x}/0x{ascq:02x})"


# SPC-4 4.5.2.1 sense data descriptor types
DESCRIPTOR_TYPES = {
    "INFORMATION": 0x00, "COMMAND-SPECIFIC INFORMATION": 0x01, "SENSE KEY SPECIFIC": 0x02,
    "FIELD REPLACEABLE UNIT": 0x03, "STREAM COMMANDS": 0x04, "BLOCK COMMANDS": 0x05,
    "OSD OBJECT IDENTIFICATION": 0x06, "OSD RESPONSE INTEGRITY CHECK VALUE": 0x07,
    "OSD ATTRIBUTE IDENTIFICATION": 0x08, "ATA STATUS RETURN": 0x09, "ANOTHER PROGRESS INDICATION": 0x0A,
    "USER DATA SEGMENT REFERRAL": 0x0B, "FORWARDED SENSE DATA": 0x0C, "DIRECT-ACCESS BLOCK DEVICE": 0x0D,
    "DEVICE DESIGNATION": 0x0E, "MICROCODE ACTIVATION": 0x0F,
}
_SKS = "sense_key_specific" / Bitmask(Int24ub, {"SKSV": 0x800000, "SENSE_KEY_SPECIFIC": 0x7FFFFF}) \
    * "Sense key specific"
_DESC_HEAD = ("descriptor_type" / Enum(u8, **DESCRIPTOR_TYPES) * "Descriptor type",
              "additional_length" / u8 * "Additional length")
# SPC-4 4.5.2.x: the descriptors decoded, with the additional length each has
SENSE_DESCRIPTORS: dict[int, tuple[int, Struct]] = {
    0x00: (0x0A, Struct(*_DESC_HEAD, "flags" / Bitmask(u8, {"VALID": 0x80}) * "Flags", "reserved" / reserved(1),
                        "information" / be64 * "Information")),  # 4.5.2.2
    0x01: (0x0A, Struct(*_DESC_HEAD, "reserved" / reserved(2),
                        "command_specific_information" / be64 * "Command-specific information")),  # 4.5.2.3
    0x02: (0x06, Struct(*_DESC_HEAD, "reserved" / reserved(2), _SKS, "reserved2" / reserved(1))),  # 4.5.2.4
    0x03: (0x02, Struct(*_DESC_HEAD, "reserved" / reserved(1),
                        "field_replaceable_unit_code" / u8 * "Field replaceable unit code")),  # 4.5.2.5
    0x05: (0x02, Struct(*_DESC_HEAD, "reserved" / reserved(1),
                        "block_flags" / Bitmask(u8, {"ILI": 0x20}) * "Flags")),  # SBC-3 4.18.2
}
_DESC_CASES = {dtype: con for dtype, (_, con) in SENSE_DESCRIPTORS.items()}
MAX_SENSE_DESCRIPTORS = 128  # 244 bytes of descriptors hold at most 122 (2 bytes each at least)


def _sense_bounds(ctx: Any) -> tuple[int, int]:
    """(start, end) stream positions of the sense data being parsed.

    Inside ``virtio_scsi.cmd_resp`` the sense buffer starts after the 12-byte header and
    holds ``sense_size`` bytes (parameter, default 96); standing alone, it is all the data.
    """
    end = _stream_end(ctx)
    node = ctx
    for _ in range(4):
        if node is None:
            break
        if "sense_len" in node and "response" in node:
            from_params = ctx._params.get("sense_size", SENSE_DEFAULT_SIZE)
            return CMD_RESP_HDR_SIZE, min(end, CMD_RESP_HDR_SIZE + max(0, from_params))
        node = node.get("_")
    return 0, end


SENSE_DEFAULT_SIZE = 96  # virtio 1.4, 5.6.4: VIRTIO_SCSI_SENSE_DEFAULT_SIZE
CMD_RESP_HDR_SIZE = 12  # virtio 1.4, 5.6.6.1: sense_len, residual, status_qualifier, status, response


def _sense_room(ctx: Any) -> int:
    return room(ctx, lambda c: _sense_bounds(c)[1])


def _has(name: str, add_len: int, width: int) -> Callable[[Any], bool]:
    """A fixed-format field: present when ADDITIONAL SENSE LENGTH covers it and the bytes are there."""

    def condition(ctx: Any) -> bool:
        if ctx.get("_building"):
            return ctx.get(name) is not None
        return ctx.additional_sense_length >= add_len and _sense_room(ctx) >= width

    return condition


def _opt(name: str, add_len: int, width: int, con: Construct, label: str) -> Construct:
    return name / If(_has(name, add_len, width), con) * label


_RESPONSE_CODE = "response_code" / Enum(u8, **RESPONSE_CODES) * "Response code"
_ASC = "asc" / Hex(u8) * "Additional sense code"
_ASCQ = "ascq" / Hex(u8) * "Additional sense code qualifier"
_ADDITIONAL_SENSE = "additional_sense" / Computed(lambda c: asc_ascq_name(c.asc, c.ascq)) * "Additional sense"
_SENSE_KEY_NAMES = {"SENSE_KEY": SENSE_KEYS}

# SPC-4 4.5.3 fixed format sense data
fixed_sense = Struct(
    _RESPONSE_CODE,
    "obsolete" / u8 * "Obsolete (segment number)",
    "flags" / Bitmask(u8, {"FILEMARK": 0x80, "EOM": 0x40, "ILI": 0x20, "SDAT_OVFL": 0x10, "SENSE_KEY": 0x0F},
                      names=_SENSE_KEY_NAMES) * "Flags and sense key",
    "information" / be32 * "Information",
    "additional_sense_length" / u8 * "Additional sense length",
    _opt("command_specific_information", 4, 4, be32, "Command-specific information"),
    _opt("asc", 5, 1, Hex(u8), "Additional sense code"),
    _opt("ascq", 6, 1, Hex(u8), "Additional sense code qualifier"),
    "additional_sense" / If(lambda c: c.get("asc") is not None and c.get("ascq") is not None,
                            Computed(lambda c: asc_ascq_name(c.asc, c.ascq))) * "Additional sense",
    _opt("field_replaceable_unit_code", 7, 1, u8, "Field replaceable unit code"),
    _opt("sense_key_specific", 10, 3, _SKS.subcon, "Sense key specific"),
    "additional_sense_bytes" / If(
        lambda c: (c.get("additional_sense_bytes") is not None if c.get("_building")
                   else c.additional_sense_length > 10 and _sense_room(c) > 0),
        Bytes(sized("additional_sense_bytes", lambda c: min(c.additional_sense_length - 10, _sense_room(c)))))
    * "Additional sense bytes",
)


def _descriptor_count(ctx: Any) -> int:
    """How many whole descriptors the ADDITIONAL SENSE LENGTH bytes hold (and the data has)."""
    if ctx.get("_building"):
        return len(ctx.descriptor)
    end = ctx._io.tell() + min(ctx.additional_sense_length, _sense_room(ctx))
    area = peek(ctx, max(0, end - ctx._io.tell()))
    pos = count = 0
    while pos + 2 <= len(area) and count < MAX_SENSE_DESCRIPTORS:
        step = 2 + area[pos + 1]
        if pos + step > len(area):
            break
        pos += step
        count += 1
    return count


def _descriptor_key(head: bytes, ctx: Any) -> int | None:
    if len(head) < 2:
        return None
    known = SENSE_DESCRIPTORS.get(head[0])
    return head[0] if known is not None and known[0] == head[1] else None


def _built_descriptor_key(ctx: Any) -> int | None:
    values = ctx.descriptor[ctx._index]
    dtype = enum_int(values["descriptor_type"], DESCRIPTOR_TYPES)
    known = SENSE_DESCRIPTORS.get(dtype)
    return dtype if known is not None and known[0] == values["additional_length"] else None


_RAW_DESCRIPTOR = Struct(*_DESC_HEAD, "descriptor_data" / Bytes(
    sized("descriptor_data", lambda c: min(c.additional_length, _sense_room(c)))) * "Descriptor data")

sense_descriptor = peek_switch(2, _descriptor_key, _built_descriptor_key, _DESC_CASES, _RAW_DESCRIPTOR)

def _trailing_descriptor_bytes(ctx: Any) -> int:
    start, _ = _sense_bounds(ctx)
    area_end = start + 8 + ctx.additional_sense_length
    return max(0, min(area_end - ctx._io.tell(), _sense_room(ctx)))


# SPC-4 4.5.2 descriptor format sense data
descriptor_sense = Struct(
    _RESPONSE_CODE,
    "flags" / Bitmask(u8, {"SENSE_KEY": 0x0F}, names=_SENSE_KEY_NAMES) * "Sense key",
    _ASC,
    _ASCQ,
    _ADDITIONAL_SENSE,
    "desc_flags" / Bitmask(u8, {"SDAT_OVFL": 0x80}) * "Flags",
    "reserved" / reserved(2),
    "additional_sense_length" / u8 * "Additional sense length",
    "descriptor" / Array(_descriptor_count, sense_descriptor) * "Sense data descriptor",
    "trailing" / If(
        lambda c: (c.get("trailing") is not None if c.get("_building")
                   else _trailing_descriptor_bytes(c) > 0),
        Bytes(sized("trailing", _trailing_descriptor_bytes)))
    * "Partial descriptor",
)


def _sense_key(head: bytes, ctx: Any) -> str | None:
    if not head:
        return None
    code = head[0] & 0x7F
    return "fixed" if code in FIXED_FORMAT else "descriptor" if code in DESCRIPTOR_FORMAT else None


def _built_sense_key(name: str) -> Callable[[Any], str | None]:
    def key(ctx: Any) -> str | None:
        code = enum_int(ctx[name]["response_code"], RESPONSE_CODES) & 0x7F
        return "fixed" if code in FIXED_FORMAT else "descriptor" if code in DESCRIPTOR_FORMAT else None

    return key


_OTHER_SENSE = Struct(
    _RESPONSE_CODE,
    "sense_bytes" / Bytes(sized("sense_bytes", _sense_room)) * "Sense bytes",
)


def sense_field(name: str = "sense") -> Construct:
    """Sense data (fixed or descriptor format, by response code) as a Struct field; see _sense_bounds."""
    return peek_switch(1, _sense_key, _built_sense_key(name),
                       {"fixed": fixed_sense, "descriptor": descriptor_sense}, _OTHER_SENSE)


# ---------------------------------------------------------------------------------------
# SPC-4 6.6.2 standard INQUIRY data

PERIPHERAL_DEVICE_TYPES = {
    "DIRECT ACCESS BLOCK DEVICE": 0x00, "SEQUENTIAL ACCESS DEVICE": 0x01, "PRINTER DEVICE": 0x02,
    "PROCESSOR DEVICE": 0x03, "WRITE-ONCE DEVICE": 0x04, "CD/DVD DEVICE": 0x05, "OPTICAL MEMORY DEVICE": 0x07,
    "MEDIUM CHANGER DEVICE": 0x08, "STORAGE ARRAY CONTROLLER DEVICE": 0x0C, "ENCLOSURE SERVICES DEVICE": 0x0D,
    "SIMPLIFIED DIRECT ACCESS DEVICE": 0x0E, "OPTICAL CARD READER/WRITER DEVICE": 0x0F,
    "OBJECT-BASED STORAGE DEVICE": 0x11, "AUTOMATION/DRIVE INTERFACE": 0x12, "HOST MANAGED ZONED BLOCK DEVICE": 0x14,
    "WELL KNOWN LOGICAL UNIT": 0x1E, "UNKNOWN OR NO DEVICE TYPE": 0x1F,
}
PERIPHERAL_QUALIFIERS = {"CONNECTED": 0, "NOT CONNECTED": 1, "NOT SUPPORTED": 3}
INQUIRY_VERSIONS = {"NONE": 0x00, "SPC": 0x03, "SPC-2": 0x04, "SPC-3": 0x05, "SPC-4": 0x06, "SPC-5": 0x07}
TPGS_VALUES = {"NOT SUPPORTED": 0, "IMPLICIT": 1, "EXPLICIT": 2, "IMPLICIT AND EXPLICIT": 3}
INQUIRY_MIN_SIZE = 36  # SPC-4 6.6.2: the bytes every standard INQUIRY data has


def _inq_opt(name: str, end: int, con: Construct, label: str) -> Construct:
    """A field after byte 35: present when ADDITIONAL LENGTH covers it and the data holds it."""

    def condition(ctx: Any) -> bool:
        if ctx.get("_building"):
            return ctx.get(name) is not None
        # ADDITIONAL LENGTH is n - 4, n the index of the last byte: the data is additional_length + 5 bytes
        return ctx.additional_length + 5 >= end and bytes_left(ctx) >= end - ctx._io.tell()

    return name / If(condition, con) * label


inquiry_data = Struct(
    "peripheral" / Bitmask(u8, {"PERIPHERAL_QUALIFIER": 0xE0, "PERIPHERAL_DEVICE_TYPE": 0x1F},
                           names={"PERIPHERAL_QUALIFIER": PERIPHERAL_QUALIFIERS,
                                  "PERIPHERAL_DEVICE_TYPE": PERIPHERAL_DEVICE_TYPES})
    * "Peripheral qualifier and device type",
    "flags1" / Bitmask(u8, {"RMB": 0x80, "LU_CONG": 0x40}) * "Flags (byte 1)",
    "version" / Enum(u8, **INQUIRY_VERSIONS) * "Version",
    "flags3" / Bitmask(u8, {"NORMACA": 0x20, "HISUP": 0x10, "RESPONSE_DATA_FORMAT": 0x0F}) * "Flags (byte 3)",
    "additional_length" / u8 * "Additional length (n - 4)",
    "flags5" / Bitmask(u8, {"SCCS": 0x80, "ACC": 0x40, "TPGS": 0x30, "3PC": 0x08, "PROTECT": 0x01},
                       names={"TPGS": TPGS_VALUES}) * "Flags (byte 5)",
    "flags6" / Bitmask(u8, {"ENCSERV": 0x40, "VS": 0x20, "MULTIP": 0x10, "ADDR16": 0x01}) * "Flags (byte 6)",
    "flags7" / Bitmask(u8, {"WBUS16": 0x20, "SYNC": 0x10, "CMDQUE": 0x02, "VS": 0x01}) * "Flags (byte 7)",
    "vendor_identification" / AsciiField(8) * "T10 vendor identification",
    "product_identification" / AsciiField(16) * "Product identification",
    "product_revision_level" / AsciiField(4) * "Product revision level",
    _inq_opt("vendor_specific", 56, Bytes(20), "Vendor specific"),
    _inq_opt("flags56", 57, Bitmask(u8, {"CLOCKING": 0x0C, "QAS": 0x02, "IUS": 0x01}), "Flags (byte 56)"),
    _inq_opt("reserved", 58, Bytes(1), "Reserved"),
    _inq_opt("version_descriptor", 74, Array(8, be16), "Version descriptor"),
)

# SBC-3 5.16.2 READ CAPACITY (10) parameter data
read_capacity10_data = Struct(
    "returned_logical_block_address" / be32 * "Returned logical block address (last LBA)",
    "logical_block_length" / be32 * "Logical block length in bytes",
)
READ_CAPACITY10_SIZE = 8

# SBC-3 5.16.2 / SBC-4 READ CAPACITY (16) parameter data
P_TYPES = {"TYPE 1 PROTECTION": 0, "TYPE 2 PROTECTION": 1, "TYPE 3 PROTECTION": 2}


def _rc16_opt(name: str, con: Construct, label: str) -> Construct:
    def condition(ctx: Any) -> bool:
        if ctx.get("_building"):
            return ctx.get(name) is not None
        return bytes_left(ctx) > 0

    return name / If(condition, con) * label


read_capacity16_data = Struct(
    "returned_logical_block_address" / be64 * "Returned logical block address (last LBA)",
    "logical_block_length" / be32 * "Logical block length in bytes",
    _rc16_opt("protection", Bitmask(u8, {"RC_BASIS": 0x30, "P_TYPE": 0x0E, "PROT_EN": 0x01},
                                    names={"P_TYPE": P_TYPES}), "Protection"),
    _rc16_opt("exponents", Bitmask(u8, {"P_I_EXPONENT": 0xF0, "LOGICAL_BLOCKS_PER_PHYSICAL_BLOCK_EXPONENT": 0x0F}),
              "Exponents"),
    _rc16_opt("provisioning", Bitmask(be16, {"LBPME": 0x8000, "LBPRZ": 0x4000,
                                             "LOWEST_ALIGNED_LOGICAL_BLOCK_ADDRESS": 0x3FFF}),
              "Provisioning and alignment"),
    _rc16_opt("reserved", Bytes(16), "Reserved"),
)
READ_CAPACITY16_SIZE = 32

# SAM-5 4.7: LUN address methods (bits 7-6 of a LUN's first byte)
ADDRESS_METHODS = {"PERIPHERAL": 0, "FLAT SPACE": 1, "LOGICAL UNIT": 2, "EXTENDED LOGICAL UNIT": 3}
SINGLE_LEVEL_LUN = Bitmask(be16, {"ADDRESS_METHOD": 0xC000, "LUN": 0x3FFF}, names={"ADDRESS_METHOD": ADDRESS_METHODS})
MAX_REPORT_LUNS = 16384  # virtio 1.4, 5.6.6.1: up to 16384 LUNs per target

# SPC-4 6.33 REPORT LUNS parameter data
report_luns_data = Struct(
    "lun_list_length" / be32 * "LUN list length (bytes)",
    "reserved" / reserved(4),
    "lun" / Array(lambda c: (len(c.lun) if c.get("_building")
                             else min(c.lun_list_length // 8, bytes_left(c) // 8, MAX_REPORT_LUNS)), Struct(
        "single_level" / SINGLE_LEVEL_LUN * "First level addressing",
        "lower_levels" / reserved(6),
    )) * "LUN",
)
