"""Write the network or socket traffic of a trace as pcapng files Wireshark dissects natively.

--net OUT: the Ethernet frames of the virtio-net queues (LINKTYPE_ETHERNET), one
interface per queue, each frame with its direction (the EPB flags and a comment)
and its virtio_net_hdr fields as a packet comment; merged receive buffers are joined
into one packet. --vsock OUT: the packets of the virtio-vsock queues as
LINKTYPE_VSOCK (271) records (Linux's vsockmon header, virtio_vsock_hdr, payload),
which Wireshark's vsock dissector decodes.

Examples:
  vqtrace export trace.pcapng --net frames.pcapng
  vqtrace export trace.pcapng --vsock vsock.pcapng
"""

from __future__ import annotations

import argparse
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import TraceFileError, UsageError

LINKTYPE_ETHERNET = 1
LINKTYPE_VSOCK = 271
EPB_FLAGS = 2  # pcapng epb_flags: bits 0-1 direction (01 inbound, 10 outbound)
INBOUND, OUTBOUND = 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="a vqtrace trace (pcapng)")
    parser.add_argument("--net", metavar="OUT", help="write the Ethernet frames of virtio-net queues here")
    parser.add_argument("--vsock", metavar="OUT", help="write the virtio-vsock packets here (LINKTYPE_VSOCK)")


@dataclass
class Packet:
    source: str
    queue: int
    time_ns: int
    data: bytes
    orig_len: int
    direction: int
    comments: list[str]


def _hdr_comment(hdr: bytes) -> str:
    from ..dissectors.net import GSO_TYPE_NAMES, HDR_FLAGS

    flags, gso, hdr_len, gso_size, csum_start, csum_offset = struct.unpack_from("<BBHHHH", hdr)
    names = [name for name, mask in HDR_FLAGS.items() if flags & mask]
    gso_names = {value: name for name, value in GSO_TYPE_NAMES.items()}
    text = (f"virtio_net_hdr: flags=0x{flags:02x}{' (' + '|'.join(names) + ')' if names else ''} "
            f"gso_type={gso_names.get(gso, gso)} hdr_len={hdr_len} gso_size={gso_size} csum_start={csum_start} "
            f"csum_offset={csum_offset}")
    if len(hdr) >= 12:
        text += f" num_buffers={struct.unpack_from('<H', hdr, 10)[0]}"
    return text


def net_packets(path: str, problems: list[tuple[int, str]]) -> Iterator[Packet]:
    """The Ethernet frames of a trace's virtio-net queues (TX when made available, RX when used)."""
    from ..dissectors import record as layout
    from ..dissectors.net import net_hdr_size
    from ..trace.dissect import AVAIL, USED, Dissector, RecordError
    from ..trace.reader import TraceReader

    dissector = Dissector()
    pending: dict[tuple[str, int], Packet] = {}  # a merged receive packet waiting for its other buffers
    waiting: dict[tuple[str, int], int] = {}
    with TraceReader(path) as reader:
        for frame in reader:
            data = frame.data
            if frame.interface.linktype != layout.LINKTYPE_VQTRACE or len(data) < layout.HEADER_SIZE:
                continue
            if data[0] != layout.RECORD_VERSION:
                problems.append((frame.offset, f"frame {frame.number}: unknown record version {data[0]}"))
                continue
            if data[1] not in (AVAIL, USED) or int.from_bytes(data[8:10], "little") != layout.NET:
                continue
            try:
                rec, _head, _body = dissector.locate(data)
                c = dissector.chain(rec, frame.source)
            except (RecordError, struct.error, KeyError) as err:
                problems.append((frame.offset, f"frame {frame.number}: {err}"))
                continue
            queue = rec.header[5]
            size = net_hdr_size(c.features)
            key = (frame.source, queue)
            if c.role == layout.ROLES["TX"] and rec.kind == AVAIL and len(c.readable) >= size:
                total = max(c.readable_total - size, len(c.readable) - size)
                yield Packet(frame.source, queue, frame.time_ns, c.readable[size:], total, OUTBOUND,
                             [f"virtio-net TX queue {queue}", _hdr_comment(c.readable[:size])])
            elif c.role == layout.ROLES["RX"] and rec.kind == USED and c.written is not None:
                wrote = c.written[:c.wrote()]
                if c.continuation and key in pending:
                    packet = pending[key]
                    packet.data += wrote
                    packet.orig_len += c.used_len if c.used_len is not None else len(wrote)
                    waiting[key] -= 1
                    if waiting[key] <= 0:
                        yield pending.pop(key)
                    continue
                if len(wrote) < size:
                    continue
                used = c.used_len if c.used_len is not None else len(wrote)
                packet = Packet(frame.source, queue, frame.time_ns, wrote[size:], max(used - size, 0), INBOUND,
                                [f"virtio-net RX queue {queue}", _hdr_comment(wrote[:size])])
                buffers = struct.unpack_from("<H", wrote, 10)[0] if size >= 12 and c.has(15) else 1
                if buffers > 1:
                    pending[key] = packet
                    waiting[key] = buffers - 1
                else:
                    yield packet
        problems.extend((p.offset, p.message) for p in reader.problems)
    yield from pending.values()  # packets whose last buffers the trace does not hold


def vsock_packets(path: str, problems: list[tuple[int, str]]) -> Iterator[Packet]:
    """The virtio-vsock packets of a trace: tx when made available, rx when used."""
    from ..dissectors import record as layout
    from ..dissectors.vsock import HDR_SIZE, vsockmon_record
    from ..trace.dissect import AVAIL, USED, Dissector, RecordError
    from ..trace.reader import TraceReader

    dissector = Dissector()
    with TraceReader(path) as reader:
        for frame in reader:
            data = frame.data
            if frame.interface.linktype != layout.LINKTYPE_VQTRACE or len(data) < layout.HEADER_SIZE:
                continue
            if data[0] != layout.RECORD_VERSION:
                problems.append((frame.offset, f"frame {frame.number}: unknown record version {data[0]}"))
                continue
            if data[1] not in (AVAIL, USED) or int.from_bytes(data[8:10], "little") != layout.VSOCK:
                continue
            try:
                rec, _head, _body = dissector.locate(data)
                c = dissector.chain(rec, frame.source)
            except (RecordError, struct.error, KeyError) as err:
                problems.append((frame.offset, f"frame {frame.number}: {err}"))
                continue
            if c.role == layout.ROLES["TX"] and rec.kind == AVAIL:
                packet, direction = c.readable, OUTBOUND
            elif c.role == layout.ROLES["RX"] and rec.kind == USED and c.written is not None:
                packet, direction = c.written[:c.wrote()], INBOUND
            else:
                continue
            if len(packet) < HDR_SIZE:
                continue
            record = vsockmon_record(packet)
            yield Packet(frame.source, rec.header[5], frame.time_ns, record, len(record), direction,
                         [f"virtio-vsock {'tx' if direction == OUTBOUND else 'rx'} queue {rec.header[5]}"])
        problems.extend((p.offset, p.message) for p in reader.problems)


def write_packets(out: str, packets: Iterator[Packet], linktype: int) -> int:
    """A pcapng file with one interface per (source, queue); how many packets."""
    from ..trace import pcapng

    count = 0
    interfaces: dict[tuple[str, int], int] = {}
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as err:
        raise UsageError(f"cannot write {out}: {err.strerror}") from None
    try:
        os.write(fd, pcapng.section_header("vqtrace export"))
        for packet in packets:
            key = (packet.source, packet.queue)
            iface = interfaces.get(key)
            if iface is None:
                iface = interfaces[key] = len(interfaces)
                name = f"{packet.source} q{packet.queue}"
                os.write(fd, pcapng.interface_description(linktype, name, f"vqtrace export of {name}"))
            head = struct.pack("<IIIII", iface, (packet.time_ns >> 32) & 0xFFFFFFFF, packet.time_ns & 0xFFFFFFFF,
                               len(packet.data), max(packet.orig_len, len(packet.data)))
            opts = [(pcapng.OPT_COMMENT, text.encode()) for text in packet.comments]
            opts.append((EPB_FLAGS, struct.pack("<I", packet.direction)))
            body = head + packet.data + b"\0" * (-len(packet.data) % 4) + pcapng.options(opts)
            os.write(fd, pcapng.block(pcapng.EPB_TYPE, body))
            count += 1
    finally:
        os.close(fd)
    return count


def run(args: argparse.Namespace) -> int:
    if not args.net and not args.vsock:
        raise UsageError("nothing to export: give --net OUT and/or --vsock OUT")
    for target in (args.net, args.vsock):
        if target and os.path.abspath(target) == os.path.abspath(args.file):
            raise UsageError(f"{target}: the output would overwrite the trace")
    problems: list[tuple[int, str]] = []
    if args.net:
        count = write_packets(args.net, net_packets(args.file, problems), LINKTYPE_ETHERNET)
        print(f"{args.net}: {count} Ethernet frames")
    if args.vsock:
        count = write_packets(args.vsock, vsock_packets(args.file, problems), LINKTYPE_VSOCK)
        print(f"{args.vsock}: {count} vsock packets")
    problems = list(dict.fromkeys(problems))  # the reader's problems come once per output
    if problems:
        offset, message = problems[0]
        raise TraceFileError(message + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                             path=args.file, offset=offset)
    return 0
