"""Decode virtio and vhost-user feature words: bit names, negotiation, broken rules.

VALUE (and --driver VALUE) is a feature word: a number (0x1300000a3, 5100273827,
0b1011, underscores allowed, any width), a Linux sysfs features string (32 or more
0s and 1s, bit 0 first, as in /sys/bus/virtio/devices/virtio0/features), or a list of
bit numbers, ranges and names joined by ',', '|' or '+' (7,28-29,32 or
CSUM|GUEST_CSUM|VERSION_1; a single bit needs a trailing comma: 32,).

Exit status: 0 no rule broken, 1 a MUST rule is broken (or, with --strict, a SHOULD
rule) or the driver accepted a bit the device never offered, 2 bad usage or input.

Examples (QEMU 7.2's virtio-net offer, and what Linux 6.1 accepted):
  vqtrace features 0x10179bf8064 --device net
  vqtrace features 0x10179bf8064 --device net --driver 0x10130af8024 -T json
  vqtrace features CSUM,GUEST_TSO4,VERSION_1 --device virtio-net --side driver
  vqtrace features 0x4009 --protocol
  vqtrace features --list --device vsock
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..output import dump_json

if TYPE_CHECKING:  # the tables load when the command runs, not for `vqtrace --help`
    from ..dissectors import features as ft

#: The widest feature word accepted (2.2 allocates bits up to 127; wider words are reserved bits).
MAX_FEATURE_BITS = 1024
_SYSFS = re.compile(r"[01]{32,}")
_SEPARATORS = re.compile(r"[,|+\s]+")
_RANGE = re.compile(r"(\w+)-(\w+)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..dissectors import features as ft

    parser.add_argument("value", nargs="?", help="the feature word (the device's offer when --driver is given)")
    parser.add_argument("-d", "--device", metavar="TYPE",
                        help="device type: a name (net, blk, console, rng, balloon, scsi, gpu, input, vsock, fs, ...), "
                             "a virtio device ID, or a PCI device ID (0x1041, 0x1000)")
    parser.add_argument("--driver", metavar="VALUE",
                        help="what the driver accepted: show offered/accepted/refused per bit")
    parser.add_argument("--protocol", action="store_true",
                        help="a vhost-user protocol feature word (GET/SET_PROTOCOL_FEATURES); with --driver, the "
                             "front-end's SET_PROTOCOL_FEATURES beside the back-end's offer")
    parser.add_argument("--vhost-user", action="store_true",
                        help="a vhost-user GET/SET_FEATURES word: bit 26 is VHOST_F_LOG_ALL, bit 30 "
                             "VHOST_USER_F_PROTOCOL_FEATURES")
    parser.add_argument("--transport", choices=ft.TRANSPORTS, help="flag bits this transport does not support")
    parser.add_argument("--side", choices=("device", "driver"),
                        help="whose word VALUE is, to apply the rules of that side (without --driver)")
    parser.add_argument("--strict", action="store_true", help="exit 1 on broken SHOULD rules too")
    parser.add_argument("--list", action="store_true", help="list every known bit and rule of the word's kind")
    parser.add_argument("-T", dest="format", choices=("text", "json"), default="text", help="output format")


# ---------------------------------------------------------------------------------------------
# Arguments


def parse_device(text: str) -> ft.DeviceType:
    """A device type by name, virtio device ID or PCI device ID; UsageError otherwise."""
    from ..dissectors import features as ft

    device = ft.find_device(text)
    if device is None:
        # imported here: importing a layer module registers its layers (and loads construct),
        # and `decode --list` lists them in the order the registry loads them
        from ..dissectors.pci import TRANSITIONAL_DEVICE_IDS, VIRTIO_PCI_DEVICE_ID_BASE

        try:
            number = int(text.strip(), 0)
        except ValueError:
            number = None
        if number is not None and VIRTIO_PCI_DEVICE_ID_BASE <= number < VIRTIO_PCI_DEVICE_ID_BASE + 0x40:
            device = ft.DEVICE_TYPES.get(number - VIRTIO_PCI_DEVICE_ID_BASE)  # 4.1.2: 0x1040 + device ID
        elif number in TRANSITIONAL_DEVICE_IDS:
            device = ft.DEVICE_TYPES.get(TRANSITIONAL_DEVICE_IDS[number])  # 4.1.2.1
        if number is not None and device is None:
            raise UsageError(f"--device {text}: not a virtio device ID of 5 'Device Types' "
                             f"({ft.device_name(number) if 0 <= number < 0x1000 else 'nor a virtio PCI device ID'})")
    if device is None or device.id == 0:
        names = ", ".join(d.short for d in ft.DEVICE_TYPES.values() if d.id)
        raise UsageError(f"--device {text!r}: unknown device type (known: {names})")
    return device


def _bit_number(token: str, what: str) -> int:
    try:
        bit = int(token, 0)
    except ValueError:
        raise UsageError(f"{what}: {token!r} is not a bit number") from None
    if not 0 <= bit < MAX_FEATURE_BITS:
        raise UsageError(f"{what}: bit {bit} is out of range (0 to {MAX_FEATURE_BITS - 1})")
    return bit


def parse_word(text: str, space: ft.FeatureSpace, what: str = "VALUE") -> int:
    """A feature word from the command line (see the module help); UsageError on anything else."""
    raw = text.strip()
    if not raw:
        raise UsageError(f"{what}: empty feature word")
    if _SYSFS.fullmatch(raw):
        return sum(1 << bit for bit, digit in enumerate(raw) if digit == "1")
    tokens = [token for token in _SEPARATORS.split(raw) if token]
    single = len(tokens) == 1 and not _SEPARATORS.search(raw)
    if single:
        try:
            value = int(raw.replace("_", ""), 0)
        except ValueError:
            value = None
        if value is not None:
            if value < 0:
                raise UsageError(f"{what}: a feature word is not negative: {raw!r}")
            if value.bit_length() > MAX_FEATURE_BITS:
                raise UsageError(f"{what}: {value.bit_length()} bits wide, more than {MAX_FEATURE_BITS}")
            return value
    value = 0
    for token in tokens:
        if token[0].isdigit():
            match = _RANGE.fullmatch(token)
            if match:
                low, high = (_bit_number(part, what) for part in match.groups())
                if low > high:
                    raise UsageError(f"{what}: empty bit range {token!r}")
                value |= ((1 << (high - low + 1)) - 1) << low
            else:
                value |= 1 << _bit_number(token, what)
            continue
        bit = space.bit_of(token)
        if bit is None:
            raise UsageError(f"{what}: {token!r} is not a number, a bit list or a feature name of {space.title}")
        value |= 1 << bit
    return value


def build_space(args: argparse.Namespace) -> ft.FeatureSpace:
    from ..dissectors import features as ft

    if args.protocol:
        for option, given in (("--device", args.device), ("--vhost-user", args.vhost_user),
                              ("--transport", args.transport)):
            if given:
                raise UsageError(f"{option} does not apply to a vhost-user protocol feature word (--protocol)")
        return ft.PROTOCOL_SPACE
    device = parse_device(args.device) if args.device is not None else None
    return ft.feature_space(device, transport=args.transport, vhost_user=args.vhost_user)


# ---------------------------------------------------------------------------------------------
# Output


def _hex(value: int) -> str:
    digits = max(16, -(-value.bit_length() // 64) * 16)
    return f"0x{value:0{digits}x}"


def _section(section: str) -> str:
    from ..dissectors import features as ft

    return section.removeprefix(f"{ft.VIRTIO}, ")


def _bit_json(info: ft.BitInfo) -> dict[str, Any]:
    return {
        "bit": info.bit,
        "name": info.name,
        "kind": info.kind,
        "meanings": [{"name": m.name, "scope": m.scope, "section": m.section, "text": m.text, "legacy": m.legacy,
                      "aliases": list(m.aliases), "note": m.note} for m in info.meanings],
    }


def _problem_json(problem: ft.Problem) -> dict[str, Any]:
    return {"level": problem.level, "message": problem.message, "section": problem.section,
            "bits": list(problem.bits), "rule": problem.rule.kind if problem.rule else None}


def _space_json(space: ft.FeatureSpace) -> dict[str, Any]:
    device = space.device
    return {
        "space": "vhost-user-protocol" if space.protocol else "virtio",
        "title": space.title,
        "device": {"id": device.id, "name": device.name, "short": device.short} if device else None,
        "transport": space.transport,
        "vhost_user": space.vhost_user,
    }


def _heading(space: ft.FeatureSpace) -> str:
    if space.device:
        text = f"{space.title}, {space.device.name}"
        if not space.has_table():
            text += "; vqtrace has no table of its device-specific bits"
    else:
        text = space.title
    return text + (f", {space.transport} transport" if space.transport else "")


def _explain(info: ft.BitInfo, space: ft.FeatureSpace) -> str:
    if info.meanings:
        first = info.meanings[0]
        text = first.text + (" (legacy)" if first.legacy else "")
        others = [f"{m.name}{', legacy' if m.legacy else ''}" for m in info.meanings[1:]]
        if others:
            text += f"; also {'; '.join(others)}"
        return text if space.protocol else f"{text}  [{_section(first.section)}]"
    if info.kind == "device":
        return "device-specific bit"
    if space.protocol:
        return "not in the vhost-user document's \"Protocol features\""
    from ..dissectors import features as ft

    where = ft.bit_range(info.bit)
    if where == "reserved":
        return "reserved for future extensions  [2.2]"
    return f"not defined for this {'transport range' if where == 'transport' else 'device'}  [2.2]"


def _bit_lines(infos: list[ft.BitInfo], space: ft.FeatureSpace) -> list[str]:
    width = max((len(info.name) for info in infos), default=0)
    return [f"  bit {info.bit:>3}  {info.kind:<9}  {info.name:<{width}}  {_explain(info, space)}" for info in infos]


def _problem_lines(problems: list[ft.Problem]) -> list[str]:
    if not problems:
        return ["No rule broken."]
    broken = [p for p in problems if p.level != "NOTE"]
    notes = len(problems) - len(broken)
    head = f"{len(broken)} rule{'s' if len(broken) != 1 else ''} broken" if broken else "No rule broken"
    if notes:
        head += f", {notes} note{'s' if notes != 1 else ''}"
    return [head + ":"] + [f"  {p.level:<6}  {p.message}  [{p.section}]" for p in problems]


def _exit_status(problems: list[ft.Problem], strict: bool) -> int:
    levels = {"MUST", "SHOULD"} if strict else {"MUST"}
    return 1 if any(p.level in levels for p in problems) else 0


def _list(space: ft.FeatureSpace, fmt: str) -> int:
    from ..dissectors import features as ft

    bits = [ft.BitInfo(bit, meanings[0].scope, meanings) for bit, meanings in space.meanings.items()]
    if fmt == "json":
        print(dump_json({**_space_json(space), "bits": [_bit_json(info) for info in bits],
                         "rules": [{"kind": r.kind, "feature": r.feature, "others": [list(g) for g in r.others],
                                    "level": r.level, "side": r.side, "section": r.section, "text": r.text,
                                    "legacy_only": r.legacy_only} for r in space.rules]}))
        return 0
    lines = [_heading(space), *_bit_lines(bits, space), f"Rules ({len(space.rules)}):"]
    for rule in space.rules:
        if rule.others:
            what = " and ".join(" or ".join(group) for group in rule.others)
            what = f"{'requires' if rule.kind == 'requires' else 'excludes'} {what}"
        else:
            what = {"accept": "accepted when offered", "offer": "offered", "avoid": "not negotiated"}[rule.kind]
        side = "" if rule.side == "both" else f" ({rule.side} side)"
        lines.append(f"  {rule.level:<6}  {rule.feature} {what}{side}  [{rule.section}]")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def run(args: argparse.Namespace) -> int:
    from ..dissectors import features as ft

    space = build_space(args)
    if args.list:
        if args.value is not None or args.driver is not None:
            raise UsageError("--list takes no VALUE and no --driver")
        return _list(space, args.format)
    if args.value is None:
        raise UsageError("a feature word VALUE is required (or --list)")
    offered = parse_word(args.value, space)
    if args.driver is not None:
        if args.side:
            raise UsageError("--side does not apply with --driver (VALUE is the offer, --driver the accepted set)")
        accepted = parse_word(args.driver, space, "--driver")
        return _show_negotiation(ft.compare(offered, accepted, space), space, args)
    infos = ft.decode(offered, space)
    problems = ft.check(offered, space, side=args.side or "word")
    if args.format == "json":
        print(dump_json({**_space_json(space), "value": _hex(offered), "bits": [_bit_json(i) for i in infos],
                         "problems": [_problem_json(p) for p in problems]}))
    else:
        count = f"{len(infos)} bit{'s' if len(infos) != 1 else ''} set"
        lines = [f"{_heading(space)}: {_hex(offered)}, {count}", *_bit_lines(infos, space), *_problem_lines(problems)]
        sys.stdout.write("\n".join(lines) + "\n")
    return _exit_status(problems, args.strict)


def _show_negotiation(neg: ft.Negotiation, space: ft.FeatureSpace, args: argparse.Namespace) -> int:
    offerer, accepter = ("back-end", "front-end") if space.protocol or space.vhost_user else ("device", "driver")
    summary = {"offered": bin(neg.offered).count("1"), "accepted": bin(neg.accepted).count("1"),
               "refused": neg.count("refused"), "not_offered": neg.count("not offered")}
    if args.format == "json":
        print(dump_json({**_space_json(space), "offered": _hex(neg.offered), "accepted": _hex(neg.accepted),
                         "bits": [{**_bit_json(b.info), "offered": b.offered, "accepted": b.accepted,
                                   "status": b.status} for b in neg.bits],
                         "summary": summary, "problems": [_problem_json(p) for p in neg.problems]}))
        return _exit_status(neg.problems, args.strict)
    width = max((len(b.info.name) for b in neg.bits), default=4)
    lines = [_heading(space),
             f"  offered  ({offerer}): {_hex(neg.offered)}",
             f"  accepted ({accepter}): {_hex(neg.accepted)}",
             f"  bit  offered  accepted  {'status':<11}  name"]
    for b in neg.bits:
        status = b.status.upper() if b.status == "not offered" else b.status
        lines.append(f"  {b.info.bit:>3}  {'yes' if b.offered else 'no':<7}  {'yes' if b.accepted else 'no':<8}  "
                     f"{status:<11}  {b.info.name:<{width}}  {b.info.kind}")
    lines.append(f"offered {summary['offered']}, accepted {summary['accepted']} "
                 f"({summary['not_offered']} never offered), refused {summary['refused']}")
    lines += _problem_lines(neg.problems)
    sys.stdout.write("\n".join(lines) + "\n")
    return _exit_status(neg.problems, args.strict)
