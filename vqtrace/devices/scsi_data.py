"""T10 data the SCSI target returns that ``dissectors/scsi_cdb.py`` does not declare yet.

Declared with construct, as the dissectors are (and in their style), so they can move
there: vital product data pages 00h, 80h and 83h (SPC-4 7.8), the mode parameter
headers, block descriptors and the caching and control mode pages (SPC-4 7.5,
SBC-3 6.4). Standard INQUIRY data, READ CAPACITY data, REPORT LUNS data and sense
data come from ``dissectors/scsi_cdb.py``.
"""

from __future__ import annotations

from construct import Bytes, GreedyBytes, GreedyRange, Int8ul, Int16ub, Int24ub, Int32ub, Int64ub, Prefixed, Struct

from ..dissectors.types import Bitmask

u8, be16, be24, be32, be64 = Int8ul, Int16ub, Int24ub, Int32ub, Int64ub

# SPC-4 7.8.2: every VPD page starts PERIPHERAL, PAGE CODE, PAGE LENGTH (n - 3)
VPD_PERIPHERAL = "peripheral" / u8 * "Peripheral qualifier and device type"

# SPC-4 7.8.16 Supported VPD Pages
vpd_supported_pages = Struct(
    VPD_PERIPHERAL,
    "page_code" / u8 * "Page code (00h)",
    "pages" / Prefixed(be16, GreedyRange(u8)) * "Supported VPD page list",
)

# SPC-4 7.8.18 Unit Serial Number (bytes 2-3: PAGE LENGTH in SPC-5, byte 2 reserved in SPC-4)
vpd_unit_serial = Struct(
    VPD_PERIPHERAL,
    "page_code" / u8 * "Page code (80h)",
    "serial" / Prefixed(be16, GreedyBytes) * "Product serial number",
)

# SPC-4 7.8.6.1 designation descriptor
CODE_SETS = {"BINARY": 1, "ASCII": 2, "UTF-8": 3}
DESIGNATOR_TYPES = {"VENDOR SPECIFIC": 0, "T10 VENDOR ID BASED": 1, "EUI-64": 2, "NAA": 3,
                    "RELATIVE TARGET PORT": 4, "TARGET PORT GROUP": 5, "LOGICAL UNIT GROUP": 6, "MD5": 7,
                    "SCSI NAME STRING": 8}
designation_descriptor = Struct(
    "protocol_code_set" / Bitmask(u8, {"PROTOCOL_IDENTIFIER": 0xF0, "CODE_SET": 0x0F},
                                  names={"CODE_SET": CODE_SETS}) * "Protocol identifier and code set",
    "designator_flags" / Bitmask(u8, {"PIV": 0x80, "ASSOCIATION": 0x30, "DESIGNATOR_TYPE": 0x0F},
                                 names={"DESIGNATOR_TYPE": DESIGNATOR_TYPES}) * "PIV, association, type",
    "reserved" / Bytes(1) * "Reserved",
    "designator" / Prefixed(u8, GreedyBytes) * "Designator",
)

# SPC-4 7.8.6 Device Identification
vpd_device_identification = Struct(
    VPD_PERIPHERAL,
    "page_code" / u8 * "Page code (83h)",
    "descriptors" / Prefixed(be16, GreedyRange(designation_descriptor)) * "Designation descriptor list",
)

# SPC-4 7.5.5 mode parameter header (6) and (10)
mode_header6 = Struct(
    "mode_data_length" / u8 * "Mode data length (n - 1)",
    "medium_type" / u8 * "Medium type",
    "device_specific" / Bitmask(u8, {"WP": 0x80, "DPOFUA": 0x10}) * "Device-specific parameter (SBC-3 6.4.1)",
    "block_descriptor_length" / u8 * "Block descriptor length",
)
mode_header10 = Struct(
    "mode_data_length" / be16 * "Mode data length (n - 2)",
    "medium_type" / u8 * "Medium type",
    "device_specific" / Bitmask(u8, {"WP": 0x80, "DPOFUA": 0x10}) * "Device-specific parameter (SBC-3 6.4.1)",
    "flags" / Bitmask(u8, {"LONGLBA": 0x01}) * "Flags",
    "reserved" / Bytes(1) * "Reserved",
    "block_descriptor_length" / be16 * "Block descriptor length",
)
# SBC-3 6.4.2 short LBA and 6.4.3 long LBA mode parameter block descriptors
short_block_descriptor = Struct(
    "number_of_blocks" / be32 * "Number of logical blocks",
    "reserved" / Bytes(1) * "Reserved",
    "logical_block_length" / be24 * "Logical block length",
)
long_block_descriptor = Struct(
    "number_of_blocks" / be64 * "Number of logical blocks",
    "reserved" / Bytes(4) * "Reserved",
    "logical_block_length" / be32 * "Logical block length",
)
# SPC-4 7.5.7 page_0 mode page format: PS, SPF, PAGE CODE, PAGE LENGTH, then the parameters
mode_page = Struct(
    "page" / Bitmask(u8, {"PS": 0x80, "SPF": 0x40, "PAGE_CODE": 0x3F}) * "PS, SPF and page code",
    "parameters" / Prefixed(u8, GreedyBytes) * "Mode parameters",
)
CACHING_PAGE = 0x08  # SBC-3 6.4.5: 18 parameter bytes; byte 2 bit 2 is WCE
CACHING_PAGE_LENGTH = 0x12
CACHING_WCE = 0x04
CONTROL_PAGE = 0x0A  # SPC-4 7.5.8: 10 parameter bytes
CONTROL_PAGE_LENGTH = 0x0A
ALL_PAGES = 0x3F
