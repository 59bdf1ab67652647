"""Display filters (vqtrace.filter): Wireshark 4.0 syntax and semantics over {abbreviation: [values]}.

The semantics tables were checked against tshark 4.0.17 by hand (and
test_agrees_with_tshark repeats that check on real frames when tshark is installed).
"""

from __future__ import annotations

import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import require_tool
from vqtrace.dissectors import dissect
from vqtrace.errors import UsageError, VqtraceError
from vqtrace.filter import FieldCatalog, FilterError, compile_filter, fields_of, values_mapping

# vhost-user request numbers: QEMU docs/interop/vhost-user.rst, "Front-end message types".
REQUESTS = {
    1: "VHOST_USER_GET_FEATURES",
    2: "VHOST_USER_SET_FEATURES",
    3: "VHOST_USER_SET_OWNER",
    5: "VHOST_USER_SET_MEM_TABLE",
    8: "VHOST_USER_SET_VRING_NUM",
    9: "VHOST_USER_SET_VRING_ADDR",
    11: "VHOST_USER_GET_VRING_BASE",
}
# virtio 1.4, 5.2.6 Device Operation: request types and status values.
BLK_TYPES = {0: "VIRTIO_BLK_T_IN", 1: "VIRTIO_BLK_T_OUT", 4: "VIRTIO_BLK_T_FLUSH", 8: "VIRTIO_BLK_T_GET_ID"}
BLK_STATUS = {0: "VIRTIO_BLK_S_OK", 1: "VIRTIO_BLK_S_IOERR", 2: "VIRTIO_BLK_S_UNSUPP"}

CATALOG = FieldCatalog([
    ("vhost_user.request", "uint32", REQUESTS),
    ("vhost_user.size", "uint32"),
    ("vhost_user.flags", "uint32"),
    ("vhost_user.flags.reply", "bool"),
    ("virtio_blk.type", "uint32", BLK_TYPES),
    ("virtio_blk.sector", "uint64"),
    ("virtio_blk.status", "uint8", BLK_STATUS),
    ("virtio_blk.data", "bytes"),
    ("virtio_blk.id", "string"),
    ("virtio_console.name", "string"),
    ("virtio_scsi.lun", "bytes"),
    ("virtqueue.desc.len", "uint32"),
    ("virtqueue.desc.flags", "uint16"),
    ("virtqueue.desc.next", "uint16"),
    ("vqtrace.time", "double"),
])

# One made-up event holding every kind of value (a real event has one protocol's fields).
EVENT = {
    "vhost_user.request": [5],
    "vhost_user.size": [40],
    "vhost_user.flags": [0x1],
    "vhost_user.flags.reply": [False],
    "virtio_blk.type": [1],
    "virtio_blk.sector": [128],
    "virtio_blk.status": [0],
    "virtio_blk.data": [b"\x00\x01Hello\xff"],
    "virtio_blk.id": ["qemu-disk"],
    "virtio_console.name": ['a"b\\c\td\x07é'],
    "virtqueue.desc.len": [16, 4096, 512],  # three descriptors in one chain
    "virtqueue.desc.flags": [1, 1, 1],
    "vqtrace.time": [1.25],
}

T = "virtio_blk.type == 1"  # true on EVENT
F = "virtio_blk.type == 2"  # false on EVENT

CASES = [
    # presence, absence, protocols and subtrees
    ("virtio_blk.sector", True),
    ("virtqueue.desc.next", False),
    ("!virtqueue.desc.next", True),
    ("not virtio_blk.sector", False),
    ("vhost_user.flags.reply", True),  # presence, not truth: the flag is False
    ("virtio_blk", True),
    ("virtqueue.desc", True),
    ("virtio_scsi", False),
    ("!virtio_scsi", True),
    # every comparison operator, true and false, symbol and word forms
    ("virtio_blk.sector == 128", True), ("virtio_blk.sector == 129", False),
    ("virtio_blk.sector eq 128", True), ("virtio_blk.sector any_eq 129", False),
    ("virtio_blk.sector != 129", True), ("virtio_blk.sector != 128", False),
    ("virtio_blk.sector ne 129", True), ("virtio_blk.sector all_ne 128", False),
    ("virtio_blk.sector < 129", True), ("virtio_blk.sector < 128", False),
    ("virtio_blk.sector lt 129", True), ("virtio_blk.sector lt 128", False),
    ("virtio_blk.sector <= 128", True), ("virtio_blk.sector <= 127", False),
    ("virtio_blk.sector le 128", True), ("virtio_blk.sector le 127", False),
    ("virtio_blk.sector > 127", True), ("virtio_blk.sector > 128", False),
    ("virtio_blk.sector gt 127", True), ("virtio_blk.sector gt 128", False),
    ("virtio_blk.sector >= 128", True), ("virtio_blk.sector >= 129", False),
    ("virtio_blk.sector ge 128", True), ("virtio_blk.sector ge 129", False),
    ("virtio_blk.sector === 128", True), ("virtio_blk.sector all_eq 127", False),
    ("virtio_blk.sector !== 127", True), ("virtio_blk.sector any_ne 128", False),
    ("virtio_blk.sector ~= 127", True), ("virtio_blk.sector ~= 128", False),
    ("virtio_blk.sector==128&&virtio_blk.type==1", True),
    # number forms: decimal, hex, octal, binary, signed, character constants
    ("virtio_blk.sector == 0x80", True), ("virtio_blk.sector == 0X80", True), ("virtio_blk.sector == 0x81", False),
    ("virtio_blk.sector == 0200", True), ("virtio_blk.sector == 0b10000000", True), ("virtio_blk.sector == +128", True),
    ("vhost_user.size == 0x28", True), ("vhost_user.size == 050", True), ("vhost_user.size == 0x50", False),
    ("virtio_blk.sector > -1", True), ("virtio_blk.sector == -128", False),
    ("vhost_user.size == '('", True), ("virtio_blk.sector == '\\x80'", True), ("virtio_blk.type == '\\001'", True),
    ("virtio_blk.type == '\\n'", False),
    # booleans
    ("vhost_user.flags.reply == False", True), ("vhost_user.flags.reply == FALSE", True),
    ("vhost_user.flags.reply == 0", True), ("vhost_user.flags.reply == 1", False),
    ("vhost_user.flags.reply == True", False), ("vhost_user.flags.reply == true", False),
    ("vhost_user.flags.reply != 1", True), ("vhost_user.flags.reply == 2", False),
    # floats
    ("vqtrace.time == 1.25", True), ("vqtrace.time > 1", True), ("vqtrace.time < 1.5e0", True),
    ("vqtrace.time >= 0x2", False), ("vqtrace.time in {1..2}", True),
    # value names: number, full spec name, name without the shared prefix, any case, unquoted
    ("vhost_user.request == 5", True),
    ('vhost_user.request == "SET_MEM_TABLE"', True),
    ('vhost_user.request == "VHOST_USER_SET_MEM_TABLE"', True),
    ('vhost_user.request == "set_mem_table"', True),
    ("vhost_user.request == SET_MEM_TABLE", True),
    ('vhost_user.request == "GET_FEATURES"', False),
    ('vhost_user.request != "GET_FEATURES"', True),
    ('vhost_user.request > "SET_FEATURES"', True),
    ('vhost_user.request < "SET_VRING_NUM"', True),
    ('vhost_user.request in {"GET_FEATURES", "SET_MEM_TABLE"}', True),
    ('vhost_user.request in {"GET_FEATURES".."SET_OWNER"}', False),
    ('virtio_blk.type == "OUT"', True), ('virtio_blk.type == "VIRTIO_BLK_T_IN"', False),
    ('virtio_blk.status == "OK"', True), ('virtio_blk.status == "IOERR"', False),
    # sets and ranges
    ("virtio_blk.sector in {12, 64}", False), ("virtio_blk.sector in {12, 128}", True),
    ("virtio_blk.sector in {100..200}", True), ("virtio_blk.sector in {129..200}", False),
    ("virtio_blk.sector in {0..127, 129..1000}", False), ("virtio_blk.sector in {128..128}", True),
    ("virtio_blk.sector in {200..100}", False),  # a reversed range is empty
    ("virtio_blk.sector in {0x80}", True), ("virtio_blk.sector in {1, 2, 120 .. 130, 1000}", True),
    ("virtio_blk.sector not in {128}", False), ("virtio_blk.sector !in {127}", True),
    ("virtqueue.desc.next in {1}", False), ("virtqueue.desc.next not in {1}", True),
    ('virtio_blk.id in {"a", "qemu-disk"}', True), ('virtio_blk.id in {"a".."r"}', True),
    ("virtio_blk.data in {00:01, 00:01:48:65:6c:6c:6f:ff}", True),
    # strings and escapes
    ('virtio_blk.id == "qemu-disk"', True), ('virtio_blk.id == "QEMU-DISK"', False),
    ("virtio_blk.id == qemu-disk", True),  # an unquoted string literal, as Wireshark allows
    ('virtio_blk.id != "qemu"', True), ('virtio_blk.id > "abc"', True), ('virtio_blk.id < "abc"', False),
    ('virtio_blk.id contains "mu-d"', True), ('virtio_blk.id contains "MU"', False),
    ('virtio_blk.id contains ""', True),
    (r'virtio_console.name == "a\"b\\c\td\aé"', True),
    (r'virtio_console.name == "a\"b\\c\x09d\x07é"', True),
    (r'virtio_console.name == "a\"b\\c\011d\7é"', True),
    (r'virtio_console.name == "a\"b\\c\td\a"', False),
    (r'virtio_console.name contains r"b\c"', True),
    (r'virtio_console.name contains "\x22b"', True),
    (r'virtio_console.name contains "\'"', False),
    # bytes literals
    ("virtio_blk.data == 00:01:48:65:6c:6c:6f:ff", True), ("virtio_blk.data == 00:01:48:65:6c:6c:6f:fe", False),
    ("virtio_blk.data == 00-01-48-65-6c-6c-6f-FF", True), ("virtio_blk.data == 000148656c6c6fff", True),
    ("virtio_blk.data == 0.1.48.65.6c.6c.6f.ff", True), ("virtio_blk.data != 00:01", True),
    ('virtio_blk.data == "\\x00\\x01Hello\\xff"', True),
    ("virtio_blk.data > 00", True), ("virtio_blk.data < 00:00", False),
    # contains and matches on bytes and strings
    ("virtio_blk.data contains 48:65", True), ("virtio_blk.data contains 6c6c", True),
    ("virtio_blk.data contains 0x48", True), ("virtio_blk.data contains 0x49", False),
    ('virtio_blk.data contains "Hello"', True), ('virtio_blk.data contains "hello"', False),
    ('virtio_blk.data contains "\\xff"', True), ("virtio_blk.data contains 'H'", True),
    ('virtio_blk.data matches "hello"', True),  # case-insensitive by default, as in Wireshark
    ('virtio_blk.data ~ "HEL+O"', True),
    ('virtio_blk.data matches "(?-i)hello"', False), ('virtio_blk.data matches "(?-i)Hello"', True),
    ('virtio_blk.data matches "^\\x00\\x01"', True), ('virtio_blk.data matches "^Hello"', False),
    ('virtio_blk.id matches "^QEMU"', True), ('virtio_blk.id matches "(?-i)^QEMU"', False),
    ('virtio_blk.id matches "disk$"', True), (r'virtio_blk.id matches r"^\w+-\w+$"', True),
    ('virtio_blk.id matches "^disk"', False),
    # a field that occurs several times: == any, != all-not-equal, === all, !== any-not-equal
    ("virtqueue.desc.len == 4096", True), ("virtqueue.desc.len == 1", False),
    ("virtqueue.desc.len != 4096", False), ("virtqueue.desc.len != 1", True),
    ("not virtqueue.desc.len == 4096", False),
    ("virtqueue.desc.len === 4096", False), ("virtqueue.desc.len !== 4096", True),
    ("virtqueue.desc.flags === 1", True), ("virtqueue.desc.flags !== 1", False),
    ("virtqueue.desc.len > 1000", True), ("virtqueue.desc.len < 16", False), ("virtqueue.desc.len <= 16", True),
    ("virtqueue.desc.len in {1..20}", True), ("virtqueue.desc.len not in {16, 512, 4096}", False),
    # comparisons on an absent field are false; their negation is true
    ("virtqueue.desc.next == 1", False), ("virtqueue.desc.next != 1", False),
    ("virtqueue.desc.next < 1", False), ("virtqueue.desc.next >= 0", False),
    ("virtqueue.desc.next === 1", False), ("virtqueue.desc.next !== 1", False),
    ("virtqueue.desc.next & 0xffff", False), ("count(virtqueue.desc.next) == 0", False),
    ("virtio_scsi.lun contains 00", False), ('virtio_scsi.lun matches "."', False),
    ("not virtqueue.desc.next == 1", True), ("not virtqueue.desc.next != 1", True),
    # precedence (not > and > or) and parentheses
    (f"{T} or {F} and {F}", True), (f"({T} or {F}) and {F}", False),
    (f"{F} and {F} or {T}", True), (f"{F} and ({F} or {T})", False),
    (f"not {F} and {F}", False), (f"not ({F} and {F})", True),
    (f"! {T} || {T}", True), (f"!({T} || {T})", False),
    (f"not {T} or {T}", True), (f"not ({T} or {T})", False),
    (f"{T} && !{F} && {T}", True), (f"not not {T}", True), (f"!!!{T}", False),
    (f"{F} or {F} or {F} or {T}", True), (f"{T} and {T} and {T} and {F}", False),
    (f"(({T}))", True), (f"(({F}) or (({T}) and ({T})))", True),
    # a field on the right: any pair of occurrences
    ("vhost_user.size == virtio_blk.sector", False), ("vhost_user.size < virtio_blk.sector", True),
    ("virtqueue.desc.len > virtio_blk.sector", True), ("virtqueue.desc.len != virtio_blk.sector", True),
    ("virtqueue.desc.len == virtqueue.desc.len", True), ("virtio_blk.sector == virtqueue.desc.next", False),
    ("virtio_blk.id contains virtio_blk.id", True),
    # bitwise and
    ("vhost_user.flags & 0x1", True), ("vhost_user.flags & 0x2", False), ("vhost_user.flags bitwise_and 1", True),
    ("virtio_blk.sector & 0xf0 == 0x80", True), ("virtio_blk.sector & 0x0f == 0", True),
    ("virtio_blk.sector & 0x0f != 0", False), ("not virtio_blk.sector & 0x7f", True),
    # functions
    ("len(virtio_blk.id) == 9", True), ("len(virtio_blk.data) == 8", True), ("len(virtio_blk.data) > 8", False),
    ('upper(virtio_blk.id) == "QEMU-DISK"', True), ('lower(virtio_blk.id) == "QEMU-DISK"', False),
    ('string(virtio_blk.sector) == "128"', True), ('string(virtio_blk.sector) matches "^1.8$"', True),
    ("count(virtio_blk.sector) == 1", True), ("count(virtqueue.desc.len) == 3", True),
    ("count(virtqueue.desc.len) > 3", False),
    # the empty filter shows everything, as tshark -Y ""
    ("", True), ("   ", True),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[case[0] or "<empty>" for case in CASES])
def test_filter_on_event(text, expected):
    flt = compile_filter(text, CATALOG)
    assert flt.matches(EVENT) is expected
    assert flt(EVENT) is expected


@pytest.mark.parametrize("text", [text for text, _ in CASES if text.strip()])
def test_every_comparison_is_false_on_an_event_without_its_fields(text):
    # Positive filters (no 'not'/'!') need their fields; on an empty event none matches.
    flt = compile_filter(text, CATALOG)
    if "not" in text or "!" in text.replace("!=", "").replace("!==", ""):
        return
    assert flt.matches({}) is False


PRECEDENCE = [
    ("a or b and c", "(a or (b and c))"),
    ("a and b or c", "((a and b) or c)"),
    ("not a and b", "((not a) and b)"),
    ("not a or not b and c", "((not a) or ((not b) and c))"),
    ("!a || b && !c", "((not a) or (b and (not c)))"),
    ("a and (b or c)", "(a and (b or c))"),
    ("a or b or c and d and e", "(a or b or (c and d and e))"),
    ("a == 1 and b in {1, 2..3} or not c contains 00", "(((a == 1) and (b in {1, 2..3})) or (not (c contains 00)))"),
    ("a & 0x1 == 1", "((a & 0x1) == 1)"),
    ("a not in {1}", "(not (a in {1}))"),
]
PRECEDENCE_CATALOG = FieldCatalog([("a", "uint8"), ("b", "uint8"), ("c", "bytes"), ("d", "uint8"), ("e", "uint8")])


@pytest.mark.parametrize(("text", "grouped"), PRECEDENCE)
def test_precedence_groups_like_tshark(text, grouped):
    assert compile_filter(text, PRECEDENCE_CATALOG).canonical == grouped


ERRORS = [
    # (filter, column, part of the message)
    # unterminated strings
    ('virtio_blk.id == "abc', 18, "unterminated string"),
    ('virtio_blk.id == "abc\\"', 18, "unterminated string"),
    ('virtio_blk.id == "abc\\', 18, "unterminated string"),
    # a missing operand
    ("virtio_blk.sector ==", 21, 'expected a value after "=="'),
    ("virtio_blk.sector == and virtio_blk", 22, 'expected a value after "==", found "and"'),
    ("virtio_blk.sector contains", 27, "expected a value after 'contains'"),
    ("virtio_blk.sector >= )", 22, 'expected a value after ">="'),
    # '==' (or another operator) without a left side
    ("== 5", 1, '"==" needs a field on its left'),
    ("eq 5", 1, '"eq" needs a field on its left'),
    (" contains 00", 2, '"contains" needs a field on its left'),
    ("virtio_blk and == 5", 16, '"==" needs a field on its left'),
    ("128 == virtio_blk.sector", 1, 'must be a field, not the value "128"'),
    ('"abc" == virtio_blk.id', 1, "must be a field, not the string"),
    # unbalanced parentheses and braces
    ("(virtio_blk.sector == 1", 1, "unbalanced '('"),
    ("((virtio_blk) or (virtio_blk.type == 1)", 1, "unbalanced '('"),
    ("virtio_blk.sector == 1)", 23, "unbalanced ')'"),
    ("(virtio_blk))", 13, "unbalanced ')'"),
    ("()", 2, "empty parentheses"),
    ("virtio_blk and ()", 17, "empty parentheses"),
    ("(virtio_blk virtio_blk.type)", 13, "expected ')'"),
    ("virtio_blk.sector in {1, 2", 22, "unbalanced '{'"),
    # a trailing operator
    ("virtio_blk.sector == 1 and", 27, "expected a field or '(' after \"and\""),
    ("virtio_blk.sector == 1 ||", 26, 'after "||"'),
    ("not", 4, 'after "not"'),
    ("!", 2, 'after "!"'),
    ("virtio_blk &&", 14, 'after "&&"'),
    ("virtio_blk.sector &", 20, "expected a mask after"),
    # bad numbers
    ("virtio_blk.sector == 0x", 22, '"0x" is not a valid number'),
    ("virtio_blk.sector == 09", 22, '"09" is not a valid number'),
    ("virtio_blk.sector == 1x", 22, '"1x" is not a valid number'),
    ("virtio_blk.sector == 12.5", 22, '"12.5" is not a valid number'),
    ("virtio_blk.sector == 0b2", 22, "not a valid number"),
    ("virtio_blk.sector in {1, 2..x9}", 29, "not a valid number"),
    ("vqtrace.time == 1.2.3", 17, "not a valid number"),
    ("virtio_blk.sector == lba", 22, '"lba" is not a valid number, and virtio_blk.sector has no value names'),
    ("virtio_blk.sector == " + "9" * 50, 22, "not a valid number"),
    ("virtio_blk.sector & 0x1z", 21, "the mask after '&' must be an integer"),
    # value names
    ('vhost_user.request == "SET_MEM_TABLES"', 23,
     "not a value name of vhost_user.request (did you mean SET_MEM_TABLE"),
    ("vhost_user.request == SET_MEM_TABLES", 23, "did you mean SET_MEM_TABLE"),
    ('virtio_blk.type == "READ"', 20, "known: IN, OUT, FLUSH, GET_ID"),
    ('vhost_user.request in {1, "NOPE"}', 27, '"NOPE" is not a value name of vhost_user.request'),
    ('virtio_blk.sector == "LBA"', 22, "virtio_blk.sector has no value names"),
    ('vhost_user.flags.reply == "True"', 27, "boolean: compare it with True, False, 1 or 0"),
    ("vhost_user.flags.reply == maybe", 27, "boolean"),
    # unknown fields
    ("virtio_blk.sectors == 1", 1, '"virtio_blk.sectors" is neither a field nor a protocol name (did you mean '
                                   "virtio_blk.sector"),
    ("virtio_blk and foo.bar", 16, '"foo.bar" is neither a field nor a protocol name'),
    ("len(nope.nope) == 1", 5, '"nope.nope" is neither a field'),
    # misplaced words and characters
    ("virtio_blk.sector == 1 == 2", 24, "comparisons cannot be chained"),
    ("virtio_blk.sector == 1 virtio_blk.type == 1", 24, "expected 'and', 'or' or the end of the filter"),
    ("virtio_blk.sector = 1", 19, 'unexpected character "="'),
    ("virtio_blk.sector == $", 22, 'unexpected character "$"'),
    ("virtio_blk.sector == 1 AND virtio_blk", 24, 'unexpected "AND"'),
    ("(virtio_blk) == 1", 14, "not a parenthesised test"),
    ("virtio_blk.sector in 1", 22, "expected '{' after 'in'"),
    ("virtio_blk.sector in {}", 23, "empty set"),
    ("virtio_blk.sector in {1 2}", 25, "expected ',' or '}' in the set"),
    ("virtio_blk.sector in {1, }", 26, "expected a value in the set"),
    ("virtio_blk.sector in {1..}", 26, "expected a value after '..'"),
    ("virtio_blk.sector in {virtio_blk.type}", 23, "not a valid number"),
    # escapes in strings
    ('virtio_blk.id == "a\\qb"', 20, '"\\q" is not a valid escape sequence'),
    ('virtio_blk.id == "\\777"', 19, "larger than 255"),
    ('virtio_blk.id == "\\xg"', 19, "\\x needs one or two hex digits"),
    ("virtio_blk.type == 'ab'", 20, "bad character constant"),
    ("virtio_blk.type == ''", 20, "bad character constant"),
    # operators on the wrong kind of field
    ("virtio_blk.sector contains 1", 1, "'contains' needs a string or bytes field"),
    ('virtio_blk.sector matches "1"', 1, "'matches' needs a string or bytes field"),
    ("virtio_blk.id matches abc", 23, "'matches' needs a double-quoted regular expression"),
    ('virtio_blk.id matches "[abc"', 23, "bad regular expression"),
    ("virtio_blk == 1", 1, "virtio_blk is a protocol or subtree: it can only be tested for presence"),
    ("virtio_blk.sector == virtio_blk", 22, "virtio_blk is a protocol or subtree"),
    ("virtio_blk.id & 1", 1, "'&' needs an integer field"),
    ("len(virtio_blk.sector) == 1", 5, "len() needs a string or bytes field"),
    ("string(virtio_blk.id) == 1", 8, "string() converts a number"),
    ("foo(virtio_blk)", 1, '"foo" is not a function'),
    ("len() == 1", 5, "len() needs a field"),
    ("virtio_blk.data == 4:6z", 20, "not a valid byte string"),
    ("virtio_blk.data == 486", 20, "not a valid byte string"),
    ("virtio_blk.data contains 0x4865", 26, "not a valid byte string"),
    ("vqtrace.time == \"1\"", 17, "not a valid number"),
    # hostile sizes
    ("(" * 100 + "virtio_blk" + ")" * 100, 65, "nesting deeper than 64 levels"),
]


@pytest.mark.parametrize(("text", "column", "message"), ERRORS, ids=[case[0][:60] for case in ERRORS])
def test_bad_filter_is_one_line_error_at_column(text, column, message):
    with pytest.raises(FilterError) as info:
        compile_filter(text, CATALOG)
    err = info.value
    assert isinstance(err, UsageError) and isinstance(err, VqtraceError)
    line = str(err)
    assert "\n" not in line
    assert line.startswith(f"display filter column {column}: "), line
    assert err.column == column
    assert message in line, line
    pointer = err.pointer().split("\n")
    assert pointer[0] == text and pointer[1].index("^") == column - 1


def test_ambiguous_value_name_cannot_be_ordered():
    # Two layouts of one field may give one name to two values (merged value-name tables).
    catalog = FieldCatalog([("vhost_user.request", "uint32", {1: "X_IOTLB_MSG", 2: "X_OTHER"}),
                            ("vhost_user.request", "uint32", {3: "X_IOTLB_MSG"})])
    flt = compile_filter('vhost_user.request == "IOTLB_MSG"', catalog)
    assert flt.matches({"vhost_user.request": [3]}) and flt.matches({"vhost_user.request": [1]})
    assert not flt.matches({"vhost_user.request": [2]})
    assert compile_filter('vhost_user.request != "IOTLB_MSG"', catalog).matches({"vhost_user.request": [2]})
    with pytest.raises(FilterError, match="names 2 values"):
        compile_filter('vhost_user.request > "IOTLB_MSG"', catalog)


def test_filter_text_longer_than_the_limit_is_refused():
    with pytest.raises(FilterError, match="more than 65536"):
        compile_filter("virtio_blk or " * 6000 + "virtio_blk", CATALOG)


def test_long_flat_chains_compile_and_run_without_recursion():
    text = " or ".join(f"virtio_blk.sector == {n}" for n in range(2000))
    flt = compile_filter(text, CATALOG)
    assert flt.matches(EVENT) and not flt.matches({"virtio_blk.sector": [5000]})
    assert compile_filter("not " * 5000 + "virtio_blk", CATALOG).matches(EVENT) is True


def test_fields_lists_what_the_filter_reads_in_order():
    flt = compile_filter('vhost_user.request == "SET_MEM_TABLE" || virtqueue.desc.len > vhost_user.size && '
                         "len(virtio_blk.id) == 1 || vhost_user.request == 1 || virtio_blk", CATALOG)
    assert flt.fields == ("vhost_user.request", "virtqueue.desc.len", "vhost_user.size", "virtio_blk.id",
                          "virtio_blk")
    assert compile_filter("", CATALOG).fields == ()
    assert flt.wants("virtio_blk.sector") and flt.wants("vhost_user.size") and flt.wants("virtio_blk")
    assert not flt.wants("vhost_user.flags") and not flt.wants("virtio_blk_x")


def test_values_of_unexpected_types_do_not_match_and_never_raise():
    cases = {
        "virtio_blk.sector > 5": {"virtio_blk.sector": ["x", None, b"\x01"]},
        "virtio_blk.sector in {1..9}": {"virtio_blk.sector": [[1], "a"]},
        "virtio_blk.id contains \"a\"": {"virtio_blk.id": [5]},
        "virtio_blk.id matches \"a\"": {"virtio_blk.id": [5, None]},
        "virtio_blk.sector & 1": {"virtio_blk.sector": ["1"]},
        "len(virtio_blk.id) == 1": {"virtio_blk.id": [7]},
        "virtqueue.desc.len < virtio_blk.id": {"virtqueue.desc.len": [1], "virtio_blk.id": ["a"]},
    }
    for text, event in cases.items():
        assert compile_filter(text, CATALOG).matches(event) is False, text
    # ...and a mixed list still finds the value that does match
    assert compile_filter("virtio_blk.sector > 5", CATALOG).matches({"virtio_blk.sector": ["x", 7]})


def test_unknown_field_allowed_by_catalog_compares_by_value_type():
    catalog = FieldCatalog(allow_unknown=True)
    assert compile_filter("x.y == 5", catalog).matches({"x.y": [5]})
    assert compile_filter("x.y == 5", catalog).matches({"x.y": ["5"]})
    assert compile_filter("x.y == 0x10", catalog).matches({"x.y": [16]})
    assert not compile_filter("x.y == 5", catalog).matches({"x.y": [6]})
    assert compile_filter('x.y == "abc"', catalog).matches({"x.y": [b"abc"]})
    assert compile_filter("x.y contains 62:63", catalog).matches({"x.y": [b"abcd"]})
    assert compile_filter("x.y == True", catalog).matches({"x.y": [True]})
    assert compile_filter("x.y > 1.5", catalog).matches({"x.y": [2]})
    assert compile_filter("x.y", catalog).fields == ("x.y",)


def test_catalog_shared_prefix_and_extension():
    catalog = FieldCatalog([("vhost_user.request", "uint32", REQUESTS), ("one.name", "uint8", {7: "ONLY_NAME"})])
    assert catalog.get("vhost_user.request").short_prefix() == "VHOST_USER_"
    assert catalog.get("one.name").short_prefix() == ""  # one name: nothing is shared
    assert catalog.has_children("vhost_user") and not catalog.has_children("vhost_user.request")
    assert catalog.get("vhost_user").kind == "none"
    assert catalog.get("nope") is None
    with pytest.raises(FilterError, match="neither a field"):
        compile_filter("frame.number == 1", catalog)
    wider = catalog.extended([("frame.number", "uint32")])
    assert compile_filter("frame.number == 1 and vhost_user.request == SET_OWNER", wider).matches(
        {"frame.number": [1], "vhost_user.request": [3]})


def test_default_catalog_holds_the_registered_virtqueue_fields():
    catalog = FieldCatalog.default()
    assert catalog.get("virtqueue.desc.len").kind == "uint32"
    assert catalog.get("virtqueue.desc.flags.write").kind == "bool"
    assert catalog.get("virtqueue.packed_event.flags").value_names[1] == "DISABLE"  # virtio 1.4, 2.8.14
    assert FieldCatalog.default() is catalog  # built once
    with pytest.raises(FilterError, match="neither a field nor a protocol name"):
        compile_filter("virtqueue.desc.length > 1")


def test_default_catalog_on_a_dissected_split_descriptor():
    # virtio 1.4, 2.7.5: struct virtq_desc {le64 addr; le32 len; le16 flags; le16 next}
    tree = dissect("virtqueue.desc", struct.pack("<QIHH", 0x1234_5000, 4096, 0x3, 7))
    event = fields_of([tree])
    expected = {
        "virtqueue.desc": True,
        "virtqueue": True,
        "virtqueue.used": False,
        "virtqueue.desc.len == 4096 && virtqueue.desc.flags.write == 1": True,
        "virtqueue.desc.flags.indirect == True": False,
        "virtqueue.desc.flags & 0x2 and virtqueue.desc.next == 7": True,
        "virtqueue.desc.addr in {0x12345000..0x12345fff}": True,
        # '!field' is absence, not falsehood: the INDIRECT flag is present (and False)
        "virtqueue.desc.flags.next && !virtqueue.desc.flags.indirect": False,
        "virtqueue.desc.flags.next && virtqueue.desc.flags.indirect == 0": True,
    }
    for text, result in expected.items():
        assert compile_filter(text).matches(event) is result, text


def test_fields_of_a_ring_keeps_every_entry_once():
    # virtio 1.4, 2.7.6: flags, idx, ring[queue_size], used_event
    tree = dissect("virtqueue.avail", struct.pack("<HH4HH", 1, 3, 0, 1, 2, 0, 0xBEEF),
                   params={"queue_size": 4, "event_idx": True})
    event = fields_of([tree])
    assert event["virtqueue.avail.ring"] == [0, 1, 2, 0]
    assert event["virtqueue.avail"] == [None]
    assert compile_filter("count(virtqueue.avail.ring) == 4 and virtqueue.avail.ring == 2").matches(event)
    assert not compile_filter("virtqueue.avail.ring === 0").matches(event)
    assert compile_filter('virtqueue.packed_event.flags == "DISABLE"').matches(
        {"virtqueue.packed_event.flags": [1]})
    assert values_mapping(tree.values()) == {k: v for k, v in event.items() if k != "virtqueue.avail"}


# -- property tests -----------------------------------------------------------------------------

EVENTS = [EVENT, {}, {"virtio_blk.sector": [0, 2**64 - 1]}, {"virtio_blk.id": ["", "x"], "virtio_blk.data": [b""]}]
PIECES = ["virtio_blk.sector", "virtio_blk.id", "virtio_blk.data", "vhost_user.request", "virtio_blk",
          "vhost_user.flags.reply", "vqtrace.time", "virtqueue.desc.len", "==", "!=", "===", "!==", "~=", "<",
          ">=", "eq", "contains", "matches", "~", "in", "not", "!", "and", "or", "&&", "||", "&", "(", ")", "{",
          "}", ",", "..", "1", "0x10", "017", "-3", "1.5", "aa:bb", '"x"', '"SET_MEM_TABLE"', "SET_OWNER", "True",
          "'a'", "len(", "count(", "upper(", "string(", '"\\x41"', 'r"\\d"', '"(?-i)a"', '"[a"', "09", '"']


def _check_compiles_or_filter_error(text: str) -> None:
    try:
        flt = compile_filter(text, CATALOG)
    except FilterError as err:
        assert "\n" not in str(err)
        assert 1 <= err.column <= len(text) + 1
        return
    for event in EVENTS:
        assert flt.matches(event) in (True, False)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=80))
def test_any_text_compiles_or_raises_filter_error(text):
    _check_compiles_or_filter_error(text)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(PIECES), max_size=12).map(" ".join))
def test_any_token_soup_compiles_or_raises_filter_error(text):
    _check_compiles_or_filter_error(text)


# Random boolean trees of known comparisons: the filter, written with full parentheses or with the
# fewest the precedence rules need, evaluates like the same tree in Python.
ATOMS = [(text, result) for text, result in CASES[:60] if text.strip() and "not" not in text and "!" not in text]


def _trees():
    leaf = st.sampled_from(ATOMS).map(lambda atom: ("atom", atom))
    return st.recursive(leaf, lambda sub: st.one_of(
        sub.map(lambda item: ("not", item)),
        st.tuples(st.sampled_from(["and", "or"]), st.lists(sub, min_size=2, max_size=4)),
    ), max_leaves=12)


def _value(tree) -> bool:
    if tree[0] == "atom":
        return tree[1][1]
    if tree[0] == "not":
        return not _value(tree[1])
    values = [_value(item) for item in tree[1]]
    return all(values) if tree[0] == "and" else any(values)


_STRENGTH = {"or": 1, "and": 2, "not": 3, "atom": 4}


def _render(tree, minimal: bool, words: bool, outer: int = 0) -> str:
    kind = tree[0]
    if kind == "atom":
        text = tree[1][0]
    elif kind == "not":
        text = ("not " if words else "!") + _render(tree[1], minimal, words, 3)
    else:
        op = {"and": " and " if words else " && ", "or": " or " if words else " || "}[kind]
        text = op.join(_render(item, minimal, words, _STRENGTH[kind] + 1) for item in tree[1])
    if kind != "atom" and (not minimal or _STRENGTH[kind] < outer):
        text = f"({text})"
    return text


@settings(max_examples=300, deadline=None)
@given(tree=_trees(), minimal=st.booleans(), words=st.booleans())
def test_random_boolean_trees_follow_precedence(tree, minimal, words):
    text = _render(tree, minimal, words)
    assert compile_filter(text, CATALOG).matches(EVENT) is _value(tree), text


# -- the same filters in tshark 4.0 -------------------------------------------------------------

def _pcap(frames: list[bytes]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)  # LINKTYPE_ETHERNET
    for index, frame in enumerate(frames):
        out += struct.pack("<IIII", index + 1, 0, len(frame), len(frame)) + frame
    return out


def _udp_frame(src_port: int, dst_port: int, ttl: int, payload: bytes, df: bool) -> bytes:
    ether = bytes.fromhex("02fc00000001" "02fc00000005") + b"\x08\x00"
    total = 20 + 8 + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000 if df else 0, ttl, 17, 0,
                         bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    udp = struct.pack("!HHHH", src_port, dst_port, 8 + len(payload), 0)
    return ether + header + udp + payload


def _arp_frame() -> bytes:
    return bytes.fromhex("ffffffffffff02fc000000010806" "0001080006040001" "02fc000000010a000001"
                         "0000000000000a000002")


TSHARK_FIELDS = {"udp.port": "uint16", "udp.srcport": "uint16", "udp.dstport": "uint16", "udp.length": "uint16",
                 "ip.ttl": "uint8", "ip.flags.df": "bool", "udp.payload": "bytes", "ip.src_host": "string",
                 "arp.opcode": "uint16"}
TSHARK_FILTERS = [
    "udp.port == 1000", "udp.port != 1000", "udp.port != 9", "udp.port === 53", "udp.port !== 53",
    "udp.port ~= 1000", "udp.port > 1500", "udp.port in {53, 80}", "udp.port not in {1000..1999}",
    "not udp.port == 53", 'ip.proto == "UDP"', "ip.proto == 17 and ip.proto != 6",
    'udp.payload contains "World"', "udp.payload contains 6c:6c", 'udp.payload matches "^hello"',
    'udp.payload matches "(?-i)^hello"', "udp.payload == 00:01:61:62:63", 'udp.payload > "Hello"',
    "ip.flags.df == 0", "ip.flags.df == True", "ip.flags.df", "ip.ttl < 10 or arp", "ip.ttl != 64", "!udp",
    "ip and not udp.port == 53 || arp", "udp.srcport & 0x8", "udp.srcport & 0xff == 0xe8",
    "len(udp.payload) == 11", "count(udp.port) == 2", "udp.srcport == udp.dstport", 'ip.src_host == "10.0.0.1"',
    'ip.src_host contains ".0."', "ip.ttl == 0x40", "ip.ttl == 0100", "ip.ttl > 'A'",
    'string(ip.ttl) matches "^6"', "arp or udp and ip.ttl == 1", "not arp and udp or ip.ttl == 64",
    "arp.opcode == 1", "udp.length in {10..20}",
]


@pytest.mark.tshark
def test_agrees_with_tshark(tmp_path):
    tshark = require_tool("tshark")
    frames = [_udp_frame(1000, 2000, 64, b"Hello World", False), _arp_frame(),
              _udp_frame(53, 53, 1, b"\x00\x01abc", True)]
    path = tmp_path / "frames.pcap"
    path.write_bytes(_pcap(frames))
    fields = [*TSHARK_FIELDS, "ip.proto"]
    out = subprocess.run([tshark, "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=a", "-E",
                          "aggregator=,", *(arg for name in fields for arg in ("-e", name))],
                         capture_output=True, text=True, check=True).stdout
    catalog = FieldCatalog([*TSHARK_FIELDS.items(), ("ip.proto", "uint8", {1: "ICMP", 6: "TCP", 17: "UDP"})])
    events = []
    for line in out.splitlines():
        event = {}
        for name, column in zip(fields, line.split("\t"), strict=True):
            if not column:
                continue
            kind = catalog.get(name).kind
            if kind == "bytes":
                event[name] = [bytes.fromhex(column)]
            elif kind == "string":
                event[name] = column.split(",")
            elif kind == "bool":
                event[name] = [item in ("1", "True") for item in column.split(",")]
            else:
                event[name] = [int(item, 0) for item in column.split(",")]
        events.append(event)
    assert len(events) == 3 and events[0]["udp.port"] == [1000, 2000]

    def shown_by_tshark(text: str) -> list[int]:
        result = subprocess.run([tshark, "-n", "-r", str(path), "-Y", text, "-T", "fields", "-e", "frame.number"],
                                capture_output=True, text=True)
        assert result.returncode == 0, (text, result.stderr)
        return [int(number) for number in result.stdout.split()]

    with ThreadPoolExecutor(max_workers=4) as pool:
        expected = dict(zip(TSHARK_FILTERS, pool.map(shown_by_tshark, TSHARK_FILTERS), strict=True))
    for text in TSHARK_FILTERS:
        flt = compile_filter(text, catalog)
        ours = [index + 1 for index, event in enumerate(events) if flt.matches(event)]
        assert ours == expected[text], text
