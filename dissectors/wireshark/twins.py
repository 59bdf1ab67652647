"""Lua twins of the layouts' Python callables (If conditions, Switch keys, counts, lengths).

The construct layouts keep their data-dependent parts in Python functions. The Lua
plugin needs the same decisions, so each such function has a twin here: a Lua
function expression of the context (``runtime.py`` documents V, HAS, P, PBIT, LEFT,
POS, PEEK, FAIL, KT, MIN, MAX, FLOORDIV). ``@{NAME}`` in a twin is filled in by the
generator from the Python function itself: a closure variable, a module global (a
number, a set, a dict), or a :data:`HELPERS` table; a callable is filled in with its
own twin. So constants never drift; only the logic is written twice.

Keys: ``module.qualname`` (``<locals>.`` dropped) for a named function, with the
fingerprint of its source, and ``module: lambda ARGS: BODY`` for a lambda (its source
is the key). When a function's source changes, the generator stops with the key and
the new fingerprint: review the twin, then update it. Helpers shared by twins
(:data:`HELPERS`) name the Python functions they mirror, with fingerprints too.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Twin:
    """The Lua of one Python callable: ``lua`` evaluates to a function."""

    lua: str
    fingerprint: str = ""  # of the named function's source ("" for a lambda: its key is its source)
    kind: str | None = None  # a Computed field's value kind, when it is not a string


@dataclass(frozen=True)
class Helper:
    """Lua shared by twins (``local function NAME ...``), mirroring Python functions (name -> fingerprint)."""

    lua: str
    mirrors: dict[str, str] = field(default_factory=dict)


LEFT_GT0 = "function(ctx) return LEFT(ctx) > 0 end"

TWINS: dict[str, Twin] = {
    # -- types.py ---------------------------------------------------------------------------------
    "types.more_data.condition": Twin(LEFT_GT0, "d119f84ac2fc"),
    # -- record.py --------------------------------------------------------------------------------
    "record.has_hdr_extra": Twin("function(ctx) return V(ctx, 'hdr_len') > @{HEADER_SIZE} end", "6f9d26942f1a"),
    "record.has_written_tail": Twin("function(ctx) return V(ctx, 'tail_size') > 0 end", "9cd17b77a879"),
    "record.has_anomaly_id": Twin("function(ctx) return band(V(ctx, 'flags'), @{ANOMALY_HAS_ID}) ~= 0 end",
                                  "eb7970f0c2bf"),
    "record.no_anomaly_id": Twin("function(ctx) return band(V(ctx, 'flags'), @{ANOMALY_HAS_ID}) == 0 end",
                                 "5516d3183d26"),
    "record.has_anomaly_address": Twin(
        "function(ctx) return band(V(ctx, 'flags'), @{ANOMALY_HAS_ADDRESS}) ~= 0 end", "e19e2da33a6b"),
    "record.no_anomaly_address": Twin(
        "function(ctx) return band(V(ctx, 'flags'), @{ANOMALY_HAS_ADDRESS}) == 0 end", "0c7c8a29d70b"),
    # -- virtqueue.py -----------------------------------------------------------------------------
    "virtqueue._has_queue_size": Twin("function(ctx) return P(ctx, 'queue_size') ~= nil end", "900ad2a980fb"),
    "virtqueue: lambda ctx: ctx._params[\"queue_size\"]": Twin(
        "function(ctx) local n = P(ctx, 'queue_size'); if n == nil then FAIL(ctx, 'queue_size') end; return n end"),
    "virtqueue._event_idx": Twin(
        "function(ctx) return TRUTH(P(ctx, 'event_idx')) and P(ctx, 'queue_size') ~= nil end", "ed54aaf4b062"),
    # -- pci.py -----------------------------------------------------------------------------------
    "pci._msix": Twin("function(ctx) return TRUTH(P(ctx, 'msix')) end", "0cd05343d9f9"),
    # -- console.py / rng.py ----------------------------------------------------------------------
    "console: lambda c: len(c.data)": Twin("function(ctx) return #V(ctx, 'data') end", kind="uint32"),
    "rng: lambda c: len(c.data)": Twin("function(ctx) return #V(ctx, 'data') end", kind="uint32"),
    "console: lambda ctx: enum_int(ctx.event, EVENTS) == event": Twin(
        "function(ctx) return V(ctx, 'event') == @{event} end"),
    # -- blk.py -----------------------------------------------------------------------------------
    "blk: lambda c: _request_type(c) in WRITE_TYPES": Twin(
        "function(ctx) return @{WRITE_TYPES}[BLK_TYPE(ctx)] == true end"),
    "blk: lambda c: _request_type(c) in SEGMENT_TYPES": Twin(
        "function(ctx) return @{SEGMENT_TYPES}[BLK_TYPE(ctx)] == true end"),
    "blk._is_zone_append": Twin("function(ctx) return P(ctx, 'request_type') == @{VIRTIO_BLK_T_ZONE_APPEND} end",
                                "c78e752e6ffe"),
    "blk: lambda c: c.nr_zones": Twin("function(ctx) return V(ctx, 'nr_zones') end"),
    # -- net.py -----------------------------------------------------------------------------------
    "net: lambda ctx: _hdr_size(ctx) >= size": Twin("function(ctx) return NET_HDR_SIZE(ctx) >= @{size} end"),
    "net: lambda c: _hdr_size(c) >= 32 and not _security(c)": Twin(
        "function(ctx) return NET_HDR_SIZE(ctx) >= 32 and band(V(ctx, 'flags'), @{VIRTIO_NET_HDR_F_SECURITY}) == 0 "
        "end"),
    "net: lambda c: _hdr_size(c) >= 32 and _security(c)": Twin(
        "function(ctx) return NET_HDR_SIZE(ctx) >= 32 and band(V(ctx, 'flags'), @{VIRTIO_NET_HDR_F_SECURITY}) ~= 0 "
        "end"),
    "net._class": Twin("function(ctx) return V(ctx, 'class') end", "ef8b9abd5a7f"),
    "net._class_command": Twin("function(ctx) return KT(V(ctx, 'class'), V(ctx, 'command')) end", "42122dbedd7f"),
    "net: lambda c: c.entries": Twin("function(ctx) return V(ctx, 'entries') end"),
    "net: lambda c: c.indirection_table_mask + 1": Twin(
        "function(ctx) return V(ctx, 'indirection_table_mask') + 1 end"),
    "net: lambda c: c.hash_key_length": Twin("function(ctx) return V(ctx, 'hash_key_length') end"),
    "net._result_key": Twin("function(ctx) return KT(P(ctx, 'ctrl_class'), P(ctx, 'ctrl_command')) end",
                            "d04727566487"),
    "net: lambda c: max(c.size - STATS_REPLY_HDR_SIZE, 0)": Twin(
        "function(ctx) return MAX(V(ctx, 'size') - @{STATS_REPLY_HDR_SIZE}, 0) end"),
    "net: lambda c: enum_int(c.type, STATS_REPLY_TYPES)": Twin("function(ctx) return V(ctx, 'type') end"),
    # -- vhost_user.py ----------------------------------------------------------------------------
    "vhost_user: lambda c: not _backend(c)": Twin("function(ctx) return not VU_BACKEND(ctx) end"),
    "vhost_user._backend": Twin("VU_BACKEND", "6bdac6a18a08"),
    "vhost_user._check_size": Twin("""function(ctx)
        local size, present = V(ctx, 'size'), LEFT(ctx)
        if size > @{MAX_PAYLOAD} then FAIL(ctx, 'vhost_user.size over the limit') end
        if size > present then FAIL(ctx, 'vhost_user.size larger than the payload') end
        if size < present then FAIL(ctx, 'bytes after the payload') end
        VU_KIND(ctx)
        return nil
    end""", "919475fbf865"),
    "vhost_user: lambda ctx: _kind(ctx) in kinds": Twin("function(ctx) return @{kinds}[VU_KIND(ctx)] == true end"),
    "vhost_user._vring_num_key": Twin("""function(ctx)
        if VU_KIND(ctx) ~= 'vring_base' then return 'state' end
        if TRUTH(P(ctx, 'packed')) then return 'packed' end
        return 'split'
    end""", "4898cc768a4b"),
    "vhost_user: lambda c: _kind(c)": Twin("function(ctx) return VU_KIND(ctx) end"),
    "vhost_user._nregions": Twin("""function(ctx)
        local count = V(V(ctx, 'memory'), 'nregions')
        if count > @{VHOST_MEMORY_BASELINE_NREGIONS} then FAIL(ctx, 'vhost_user.memory.nregions over 8') end
        local room = FLOORDIV(LEFT(ctx), VU_REGION_SIZE(ctx))
        if count > room then FAIL(ctx, 'vhost_user.memory.nregions larger than the payload') end
        return count
    end""", "4ff3a9e03e39"),
    "vhost_user._xen": Twin("function(ctx) return TRUTH(P(ctx, 'xen_mmap')) end", "4400edf04162"),
    "vhost_user._unused_regions": Twin("function(ctx) return VU_KIND(ctx) == 'memory' and LEFT(ctx) > 0 end",
                                       "cf21b65646bc"),
    "vhost_user: lambda c: c.size": Twin("function(ctx) return V(ctx, 'size') end"),
    "vhost_user._shmem_count": Twin("function(ctx) return FLOORDIV(V(VU_MSG(ctx), 'size') - 8, 8) end",
                                    "cddaa260707c"),
    "vhost_user._check_end": Twin("""function(ctx)
        if LEFT(ctx) > 0 then VU_KIND(ctx); FAIL(ctx, 'bytes after the payload fields') end
        return nil
    end""", "bb5a3be145c6"),
    "vhost_user._inflight_count": Twin("""function(ctx)
        local size = P(ctx, 'queue_size')
        if size == nil then return V(ctx, 'desc_num') end
        return size
    end""", "40f7f758253b"),
    # -- scsi.py ----------------------------------------------------------------------------------
    "scsi._t10_pi": Twin("SCSI_T10_PI", "94a5c1d5de40"),
    "scsi: lambda c: _t10_pi(c) and (c.get(\"pi_out\") is not None if c.get(\"_building\") else "
    "c.pi_bytesout > 0 and bytes_left(c) > 0)": Twin(
        "function(ctx) return SCSI_T10_PI(ctx) and V(ctx, 'pi_bytesout') > 0 and LEFT(ctx) > 0 end"),
    "scsi._pi_out_len": Twin("function(ctx) return MIN(V(ctx, 'pi_bytesout'), LEFT(ctx)) end", "208c398d03b5"),
    "scsi: lambda c: len(c.dataout) if c.get(\"_building\") else bytes_left(c)": Twin(
        "function(ctx) return LEFT(ctx) end"),
    "scsi._sense_window": Twin("SCSI_SENSE_WINDOW", "d31ada2cd86f"),
    "scsi._sense_present": Twin("function(ctx) return V(ctx, 'sense_len') > 0 and SCSI_SENSE_WINDOW(ctx) > 0 end",
                                "36e9110b4ca3"),
    "scsi: lambda c: _t10_pi(c) and (c.get(\"pi_in\") is not None if c.get(\"_building\") else "
    "_pi_in_len(c) > 0)": Twin("function(ctx) return SCSI_T10_PI(ctx) and SCSI_PI_IN_LEN(ctx) > 0 end"),
    "scsi._pi_in_len": Twin("SCSI_PI_IN_LEN", "15841b57a891"),
    "scsi: lambda c: len(c.datain) if c.get(\"_building\") else bytes_left(c)": Twin(
        "function(ctx) return LEFT(ctx) end"),
    "scsi: lambda c: _event(c) == EVENTS[\"VIRTIO_SCSI_T_TRANSPORT_RESET\"]": Twin(
        "function(ctx) return SCSI_EVENT(ctx) == @{EVENTS}['VIRTIO_SCSI_T_TRANSPORT_RESET'] end"),
    "scsi: lambda c: _event(c) == EVENTS[\"VIRTIO_SCSI_T_ASYNC_NOTIFY\"]": Twin(
        "function(ctx) return SCSI_EVENT(ctx) == @{EVENTS}['VIRTIO_SCSI_T_ASYNC_NOTIFY'] end"),
    "scsi: lambda c: _event(c) == EVENTS[\"VIRTIO_SCSI_T_PARAM_CHANGE\"]": Twin(
        "function(ctx) return SCSI_EVENT(ctx) == @{EVENTS}['VIRTIO_SCSI_T_PARAM_CHANGE'] end"),
    # -- scsi_cdb.py ------------------------------------------------------------------------------
    "scsi_cdb: lambda c: c._params.get(\"cdb_size\", CDB_DEFAULT_SIZE)": Twin(
        "function(ctx) return P(ctx, 'cdb_size', @{CDB_DEFAULT_SIZE}) end"),
    "scsi_cdb.peek_switch.key": Twin("function(ctx) return (@{parsed_key})(PEEK(ctx, @{nbytes}), ctx) end",
                                     "4903575e5e84"),
    "scsi_cdb: lambda head, ctx: cdb_key(head, _cdb_room(ctx))": Twin(
        "function(head, ctx) return CDB_KEY(head, CDB_ROOM(ctx)) end"),
    "scsi_cdb.sized.length": Twin("function(ctx) return MAX(0, (@{parsed})(ctx)) end", "ceaca045b270"),
    "scsi_cdb: lambda c: min(c.additional_cdb_length - 2, bytes_left(c))": Twin(
        "function(ctx) return MIN(V(ctx, 'additional_cdb_length') - 2, LEFT(ctx)) end"),
    "scsi_cdb: lambda c: min(c._params.get(\"cdb_size\", CDB_DEFAULT_SIZE) - 1, bytes_left(c))": Twin(
        "function(ctx) return MIN(P(ctx, 'cdb_size', @{CDB_DEFAULT_SIZE}) - 1, LEFT(ctx)) end"),
    "scsi_cdb._sense_key": Twin("""function(head, ctx)
        if #head == 0 then return nil end
        local code = band(sbyte(head, 1), 0x7F)
        if @{FIXED_FORMAT}[code] then return 'fixed' end
        if @{DESCRIPTOR_FORMAT}[code] then return 'descriptor' end
        return nil
    end""", "8698d75d5589"),
    "scsi_cdb._descriptor_key": Twin("""function(head, ctx)
        if #head < 2 then return nil end
        local dtype = sbyte(head, 1)
        local want = SENSE_DESC_LEN[dtype]
        if want ~= nil and want == sbyte(head, 2) then return dtype end
        return nil
    end""", "cac78c7c766b"),
    "scsi_cdb._has.condition": Twin(
        "function(ctx) return V(ctx, 'additional_sense_length') >= @{add_len} and SENSE_ROOM(ctx) >= @{width} end",
        "bcb83ce8784c"),
    "scsi_cdb: lambda c: c.get(\"asc\") is not None and c.get(\"ascq\") is not None": Twin(
        "function(ctx) return V(ctx, 'asc') ~= nil and V(ctx, 'ascq') ~= nil end"),
    "scsi_cdb: lambda c: asc_ascq_name(c.asc, c.ascq)": Twin(
        "function(ctx) return ASC_NAME(V(ctx, 'asc'), V(ctx, 'ascq')) end", kind="string"),
    "scsi_cdb: lambda c: c.get(\"additional_sense_bytes\") is not None if c.get(\"_building\") else "
    "c.additional_sense_length > 10 and _sense_room(c) > 0": Twin(
        "function(ctx) return V(ctx, 'additional_sense_length') > 10 and SENSE_ROOM(ctx) > 0 end"),
    "scsi_cdb: lambda c: min(c.additional_sense_length - 10, _sense_room(c))": Twin(
        "function(ctx) return MIN(V(ctx, 'additional_sense_length') - 10, SENSE_ROOM(ctx)) end"),
    "scsi_cdb._descriptor_count": Twin("""function(ctx)
        local area = PEEK(ctx, MAX(0, MIN(V(ctx, 'additional_sense_length'), SENSE_ROOM(ctx))))
        local pos, count = 0, 0
        while pos + 2 <= #area and count < @{MAX_SENSE_DESCRIPTORS} do
            local step = 2 + sbyte(area, pos + 2)
            if pos + step > #area then break end
            pos = pos + step
            count = count + 1
        end
        return count
    end""", "8bf48f979324"),
    "scsi_cdb: lambda c: min(c.additional_length, _sense_room(c))": Twin(
        "function(ctx) return MIN(V(ctx, 'additional_length'), SENSE_ROOM(ctx)) end"),
    "scsi_cdb: lambda c: c.get(\"trailing\") is not None if c.get(\"_building\") else "
    "_trailing_descriptor_bytes(c) > 0": Twin("function(ctx) return SENSE_TRAILING(ctx) > 0 end"),
    "scsi_cdb._trailing_descriptor_bytes": Twin("SENSE_TRAILING", "c446d20f7082"),
    "scsi_cdb._sense_room": Twin("SENSE_ROOM", "02adcdca9647"),
    "scsi_cdb._inq_opt.condition": Twin(
        "function(ctx) return V(ctx, 'additional_length') + 5 >= @{end} and LEFT(ctx) >= @{end} - POS(ctx) end",
        "7efc1264538f"),
    "scsi_cdb._rc16_opt.condition": Twin(LEFT_GT0, "247c0b31a17c"),
    "scsi_cdb: lambda c: len(c.lun) if c.get(\"_building\") else min(c.lun_list_length // 8, bytes_left(c) // 8, "
    "MAX_REPORT_LUNS)": Twin(
        "function(ctx) return MIN(FLOORDIV(V(ctx, 'lun_list_length'), 8), FLOORDIV(LEFT(ctx), 8), "
        "@{MAX_REPORT_LUNS}) end"),
    # -- vsock.py ---------------------------------------------------------------------------------
    "vsock._flags_key": Twin("""function(ctx)
        local op = V(ctx, 'op')
        if op == @{VIRTIO_VSOCK_OP_SHUTDOWN} then return 'shutdown' end
        if op == @{VIRTIO_VSOCK_OP_RW} and V(ctx, 'type') == @{VIRTIO_VSOCK_TYPE_SEQPACKET} then return 'seq' end
        return nil
    end""", "22a8c513ce03"),
    "vsock._payload_present": Twin("function(ctx) return V(ctx, 'len') > 0 and LEFT(ctx) > 0 end", "d904a62ca5c1"),
    "vsock._payload_len": Twin("function(ctx) return MIN(V(ctx, 'len'), LEFT(ctx)) end", "b880b94e5595"),
}

#: Lua shared by the twins, in the order the plugin defines it. ``@{module.NAME}`` names a global of a
#: dissectors module; the generator renders it (``generate.py`` has the renderers of the tables).
HELPERS: list[tuple[str, Helper]] = [
    ("BLK_TYPE", Helper("""local function BLK_TYPE(ctx)
    return band(V(ctx, 'type'), bnot(@{blk.VIRTIO_BLK_T_BARRIER}))
end""", {"blk._request_type": "7f89a6d01092"})),
    ("NET_HDR_SIZE", Helper("""local function NET_HDR_SIZE(ctx)
    local has
    if P(ctx, 'features') == nil then
        local legacy = TRUTH(P(ctx, 'legacy'))
        has = function(bit) return bit == @{net.VIRTIO_F_VERSION_1} and not legacy end
    else
        has = function(bit) return PBIT(ctx, 'features', bit) end
    end
    if has(@{net.VIRTIO_NET_F_OUT_NET_HEADER}) or has(@{net.VIRTIO_NET_F_IPSEC}) then return 32 end
    if has(@{net.VIRTIO_NET_F_HOST_UDP_TUNNEL_GSO}) or has(@{net.VIRTIO_NET_F_GUEST_UDP_TUNNEL_GSO}) then return 24 end
    if has(@{net.VIRTIO_NET_F_HASH_REPORT}) then return 20 end
    if has(@{net.VIRTIO_F_VERSION_1}) or has(@{net.VIRTIO_NET_F_MRG_RXBUF}) then return 12 end
    return 10
end""", {"net._hdr_size": "b0075a2b6137", "net.net_hdr_size": "96fae05f9894", "net._security": "97c9336129fa"})),
    ("VU", Helper("""local VU_SPECS = @{vhost_user.REQUEST_SPECS}
local VU_BACKEND_SPECS = @{vhost_user.BACKEND_REQUEST_SPECS}
local VU_PAYLOADS = @{vhost_user.PAYLOAD_KINDS}
local function VU_BACKEND(ctx) return P(ctx, 'channel') == 1 end
local function VU_MSG(ctx)
    for _ = 1, 8 do
        if ctx == nil or HAS(ctx, 'backend_request') then return ctx end
        ctx = ctx.parent
    end
    return ctx
end
local function VU_FITS(kind, size, xen)
    local sizes, low, high, step = kind.sizes, kind.min, kind.max, kind.step
    if xen and (kind.name == 'memory' or kind.name == 'region') then
        local region = @{vhost_user.MEMORY_REGION_XEN_SIZE}
        if kind.name == 'region' then
            sizes = {8 + region}
        else
            high, step = 8 + @{vhost_user.VHOST_MEMORY_BASELINE_NREGIONS} * region, region
        end
    end
    if #sizes > 0 then
        for i = 1, #sizes do if sizes[i] == size then return true end end
        return false
    end
    return low <= size and size <= high and (size - low) % step == 0
end
local function VU_KIND(ctx)
    local msg = VU_MSG(ctx)
    local backend = VU_BACKEND(msg)
    local number = backend and V(msg, 'backend_request') or V(msg, 'request')
    local spec = (backend and VU_BACKEND_SPECS or VU_SPECS)[number]
    if spec == nil then return 'raw' end
    local candidates = band(V(msg, 'flags'), @{vhost_user.VHOST_USER_REPLY_MASK}) ~= 0 and spec.reply or spec.payload
    local xen = TRUTH(P(msg, 'xen_mmap'))
    for i = 1, #candidates do
        if VU_FITS(VU_PAYLOADS[candidates[i]], V(msg, 'size'), xen) then return candidates[i] end
    end
    FAIL(ctx, 'vhost_user.size fits none of the request\\'s payloads')
end
local function VU_REGION_SIZE(ctx)
    if TRUTH(P(ctx, 'xen_mmap')) then return @{vhost_user.MEMORY_REGION_XEN_SIZE} end
    return @{vhost_user.MEMORY_REGION_SIZE}
end""", {"vhost_user._kind": "d8bed4f376de", "vhost_user.payload_kind": "454be76fd0f0",
         "vhost_user._kind_fits": "eba40d5b6e68", "vhost_user._message_context": "858bc99fd0f3",
         "vhost_user._request_number": "6051e9f1b000", "vhost_user._region_size": "69277f413354",
         "vhost_user._params": "ece2ed7e4e03", "vhost_user.is_backend_channel": "05ca0bcfcd4a"})),
    ("SCSI", Helper("""local function SCSI_T10_PI(ctx) return PBIT(ctx, 'features', @{scsi.VIRTIO_SCSI_F_T10_PI}) end
local function SCSI_SENSE_WINDOW(ctx)
    return MIN(MAX(0, P(ctx, 'sense_size', @{scsi.VIRTIO_SCSI_SENSE_DEFAULT_SIZE})), LEFT(ctx))
end
local function SCSI_PI_IN_LEN(ctx) return MIN(MAX(0, P(ctx, 'pi_bytesin', 0)), LEFT(ctx)) end
local function SCSI_EVENT(ctx) return band(V(ctx, 'event'), bnot(@{scsi.VIRTIO_SCSI_T_EVENTS_MISSED})) end""",
                    {"scsi._event": "e71293ec1175"})),
    ("CDB", Helper("""local CDB_SIZES = @{scsi_cdb.CDB_LAYOUT_SIZES}
local function CDB_ROOM(ctx) return MAX(0, MIN(P(ctx, 'cdb_size', @{scsi_cdb.CDB_DEFAULT_SIZE}), LEFT(ctx))) end
local function CDB_KEY(head, room)
    if #head == 0 then return nil end
    local opcode = sbyte(head, 1)
    local key = sfmt('%d', opcode)
    local value = opcode
    if #head > 1 then
        local pair = 't:' .. opcode .. ',' .. band(sbyte(head, 2), 0x1F)
        if CDB_SIZES[pair] ~= nil then key, value = pair, {tuple = pair} end
    end
    local size = CDB_SIZES[key]
    if size == nil then return nil end
    if room ~= nil and size >= 0 and size > room then return nil end
    return value
end""", {"scsi_cdb.cdb_key": "dde08f016f6b", "scsi_cdb._cdb_room": "d5d296e64432"})),
    ("SENSE", Helper("""local SENSE_DESC_LEN = @{scsi_cdb.SENSE_DESCRIPTOR_LENGTHS}
local ASC_ASCQ = @{scsi_cdb.ASC_ASCQ_NAMES}
local function ASC_NAME(asc, ascq)
    local name = ASC_ASCQ[asc * 256 + ascq]
    if name ~= nil then return name end
    if asc >= 0x80 or ascq >= 0x80 then return sfmt('VENDOR SPECIFIC (0x%02x/0x%02x)', asc, ascq) end
    return sfmt('Unknown (0x%02x/0x%02x)', asc, ascq)
end
local function SENSE_BOUNDS(ctx)
    local stop = ctx.st.size
    local node = ctx
    for _ = 1, 4 do
        if node == nil then break end
        if HAS(node, 'sense_len') and HAS(node, 'response') then
            return @{scsi_cdb.CMD_RESP_HDR_SIZE}, MIN(stop, @{scsi_cdb.CMD_RESP_HDR_SIZE} +
                MAX(0, P(ctx, 'sense_size', @{scsi_cdb.SENSE_DEFAULT_SIZE})))
        end
        node = node.parent
    end
    return 0, stop
end
local function SENSE_ROOM(ctx)
    local _, stop = SENSE_BOUNDS(ctx)
    return MAX(0, stop - POS(ctx))
end
local function SENSE_TRAILING(ctx)
    local start = SENSE_BOUNDS(ctx)
    local area_end = start + 8 + V(ctx, 'additional_sense_length')
    return MAX(0, MIN(area_end - POS(ctx), SENSE_ROOM(ctx)))
end""", {"scsi_cdb._sense_bounds": "ff814c0b19b4", "scsi_cdb.room": "503bfdec69b3",
         "scsi_cdb._stream_end": "38d7032063e5", "scsi_cdb.asc_ascq_name": "d9ec7b2b607c",
         "scsi_cdb.peek": "a65f7ef1611e"})),
]
