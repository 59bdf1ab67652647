"""Device requests: a chain's bytes mapped to a typed request with a summary and field trees.

One plain function over bytes serves live tracing, trace files (which store a
chain's readable bytes and the bytes the device wrote) and memory-dump analysis::

    from vqtrace.requests import QueueContext, decode_request

    ctx = QueueContext("blk", queue=0, features=features)      # or device_type=2
    req = decode_request(ctx, readable, written, used_len,
                         readable_lens=[16, 4096], writable_lens=[1])
    req.summary    # 'blk OUT sector=2048 len=4096 -> OK'
    req.trees      # [Field(virtio_blk ...), Field(virtio_blk.status ...)]
    req.problems   # [] or [Problem('SHORT_HEADER', ...), ...]

Queues (:mod:`.context`)
    ``QueueContext(device_type, queue, features=None, max_virtqueue_pairs=None,
    num_queues=None, max_nr_ports=None, cdb_size=32, sense_size=96,
    fixed_balloon_indices=False)``: the device type (virtio device ID or "net", "blk",
    "console", "rng", "balloon", "scsi", "vsock"), the queue index, the negotiated
    features (None: unknown, taken as VERSION_1 and no device feature) and the config
    fields the queue numbering or layouts depend on. ``queue_role(ctx) -> Role``
    (``kind``, ``name`` as the spec names the queue: "receiveq1", "controlq",
    "receiveq(port0)", "control transmitq", "statsq", "requestq2", "rx", ...;
    ``exists`` False when the features leave no queue at that index). Balloon queues
    are numbered among those present, as Linux and QEMU do (``fixed_balloon_indices``
    for the fixed 0..4 of 5.5.2); net's controlq is at 2 * max_virtqueue_pairs with
    MQ or RSS (give ``max_virtqueue_pairs``; unknown, an even queue whose chain has
    readable bytes is taken as the controlq, with a note).

Decoding (:func:`decode_request`)
    ``decode_request(ctx, readable, written=None, used_len=None, *, readable_lens=None,
    writable_lens=None, written_base=None, lazy=False, continuation=False, role=None,
    written_tail=None)``.
    ``written`` is the device-writable part after use, from its start: all of it, or
    only its first bytes (a trace may keep just ``used_len`` bytes; then a blk status
    byte, the last writable byte, is known only if the capture reaches it:
    ``writable_lens`` tell the part's size). None while the chain is in flight. The
    call never raises: bytes that do not dissect become :class:`Problem` entries and
    ``data`` trees (Wireshark's ``data.data``/``data.len``) holding the raw bytes.
    ``readable_lens`` summing to more than ``readable`` holds mean a cut capture: the
    summary gives the chain's true lengths, with a NOT_CAPTURED note. ``role`` overrides
    the queue numbering: a trace record's role name ("RX", "TX", "CONTROL", "EVENT",
    "CONTROL_RX", "INFLATE", ...), a kind ("receiveq") or a Role. ``written_tail``: the
    last bytes of the writable part when ``written`` stops short (blk reads its status
    there).

    ``decode_chain(ctx, memory, chain, used_len=None, *, lazy=False, limit=1 MiB)``
    (:mod:`.chains`) reads a :class:`~vqtrace.model.Chain` from a GuestMemory (the
    status end of a big blk read too) and decodes it; unreadable buffers are an
    UNREADABLE problem.

    With ``lazy=True`` only the summary, ``response``, ``info`` and the framing
    problems are computed (``struct`` code, microseconds per chain: what ``vqtrace
    show`` wants for a million events); the trees, and the problems only dissection
    finds, come on first access of ``req.trees``. Control queues, events and
    non-read/write SCSI commands are rare and always dissect at once.

:class:`DeviceRequest`
    ``device``, ``role``, ``summary``, ``response`` (the answer after ``->``: "OK",
    "IOERR", "GOOD", "CHECK CONDITION", "FUNCTION_COMPLETE"...; None before use),
    ``problems`` (``Problem(code, message, section, offset, level)``, level "error"
    or "note"), ``errors``, ``info`` (type, sector, data_len, frame_len, opcode,
    status, num_buffers, ...), ``readable_len``, ``writable_len``, ``written_len``,
    ``used_len``, ``complete``; ``trees`` (list of :class:`~vqtrace.dissectors.tree.Field`
    roots, one per protocol layer), ``fields()`` ({abbreviation: value}),
    ``filter_values()`` ({abbreviation: [values]} for ``compile_filter(...).matches``,
    with Wireshark's hidden ``ip.addr``/``ipv6.addr``/``eth.addr``/``tcp.port``/
    ``udp.port``), ``text()`` (tshark -V style lines), ``to_json()``.

Trees, and how a Wireshark plugin reproduces them
    Tree offsets count in ``readable + written`` (written from ``written_base``, by
    default ``len(readable)``). Which bytes each layer takes, per queue:

    - blk requestq: ``virtio_blk.req`` = all readable (header, OUT data, segments);
      writable: data = all but the status part (``virtio_blk.data`` for IN, else
      ``virtio_blk.get_id`` (20 bytes) / ``virtio_blk.lifetime`` (6) /
      ``virtio_blk.zone_report``), ``virtio_blk.status`` = the last byte (the last 9
      for ZONE_APPEND, parameter request_type=15). Needs the whole writable part.
    - net: header size ``net_hdr_size(features)``; transmitq: ``virtio_net.hdr`` then
      the frame (Wireshark fields ``eth.*``, ``vlan.*``, ``arp.*``, ``ip.*``,
      ``ipv6.*``, ``tcp.*``, ``udp.*``, ``icmp.*``, ``icmpv6.*``: see
      :data:`.ethernet.ETHERNET_FIELDS`); receiveq: the same in the first ``used_len``
      written bytes; controlq: ``virtio_net.ctrl`` readable, ``virtio_net.ctrl_ack``
      written (parameters ctrl_class / ctrl_command from the first two readable bytes).
    - console: ``virtio_console.data`` (transmitq readable, receiveq written),
      ``virtio_console.ctrl`` (control transmitq readable, control receiveq written).
    - rng: ``virtio_rng.data`` on the written bytes. balloon: ``virtio_balloon.pfns``
      / ``.stats`` / ``.free_page_hint`` on the readable bytes (whole entries; a
      partial one is a ``data`` tree).
    - scsi requestq: ``virtio_scsi.cmd_req`` readable, ``virtio_scsi.cmd_resp`` written
      (parameters cdb_size, sense_size, features, pi_bytesin), plus for a GOOD
      INQUIRY / READ CAPACITY / REPORT LUNS the datain as ``virtio_scsi.inquiry`` etc.;
      controlq: ``virtio_scsi.ctrl_tmf`` / ``ctrl_an`` by type, and their ``_resp``;
      eventq: ``virtio_scsi.event``. vsock: ``virtio_vsock.hdr`` (tx readable, rx
      written), ``virtio_vsock.event``.

    Written bytes count up to ``used_len`` (2.7.8: the driver may rely on the first
    ``len`` bytes only) except on blk, whose status closes the writable part.

Merged receive buffers (:mod:`.net`)
    ``RxAssembler(ctx).add(written, used_len) -> (request, packet_or_None)`` per
    receiveq, fed in used order; ``join_rx_buffers(ctx, buffers, used_lens)`` for one
    packet's buffers; ``decode_request(..., continuation=True)`` for a lone
    continuation buffer.

Field catalogs
    :func:`request_fields` lists the fields trees may hold that no registered layer
    declares (the Wireshark ``eth``/``ip``/... set and ``data``), as FieldSpecs:
    ``FieldCatalog.default().extended(request_fields())`` lets ``-Y ip.src == 10.0.0.1``
    compile.
"""

from ..dissectors.walk import FieldSpec
from .chains import decode_chain
from .context import DEVICE_IDS, QueueContext, Role, device_name, queue_role, role_named
from .decode import decode_request
from .ethernet import ETHERNET_FIELDS, frame_summary, frame_trees
from .net import RxAssembler, join_rx_buffers
from .request import DeviceRequest, Problem

#: Wireshark's ``data`` protocol, used for bytes no dissector takes.
DATA_FIELDS = [FieldSpec("data", "Data", "none"), FieldSpec("data.data", "Data", "bytes"),
               FieldSpec("data.len", "Length", "int32")]


def request_fields() -> list[FieldSpec]:
    """Every field a request tree may hold beyond the registered layers' own fields."""
    return [*ETHERNET_FIELDS, *DATA_FIELDS]


__all__ = [
    "DATA_FIELDS",
    "DEVICE_IDS",
    "ETHERNET_FIELDS",
    "DeviceRequest",
    "Problem",
    "QueueContext",
    "Role",
    "RxAssembler",
    "decode_chain",
    "decode_request",
    "device_name",
    "frame_summary",
    "frame_trees",
    "join_rx_buffers",
    "queue_role",
    "request_fields",
    "role_named",
]
