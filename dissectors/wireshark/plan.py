"""The Lua of the record plan: which layer dissects which bytes of a record.

The Lua twin of ``vqtrace/trace/dissect.py`` (record, body, payload) and
``vqtrace/trace/plan.py`` (a chain's device request as segments). The tshark tests
(tests/test_tshark_fields.py) hold every field equal between the two on sample traces
of every event kind and device.
"""

from ..record import (
    ANOMALY_HAS_ID,
    BALLOON,
    BLK,
    CHAIN_UNKNOWN,
    CONSOLE,
    FLAG_PACKED,
    FLAG_QUEUE,
    FLAG_XEN_MMAP,
    LINKTYPE_VQTRACE,
    NET,
    RECORD_VERSION,
    RNG,
    ROLES,
    SCSI,
    VSOCK,
)

_CONSTANTS = {
    "RECORD_VERSION": RECORD_VERSION, "FLAG_QUEUE": FLAG_QUEUE, "FLAG_PACKED": FLAG_PACKED,
    "FLAG_XEN_MMAP": FLAG_XEN_MMAP, "CHAIN_UNKNOWN": CHAIN_UNKNOWN, "NET": NET, "BLK": BLK, "CONSOLE": CONSOLE,
    "RNG": RNG, "BALLOON": BALLOON, "SCSI": SCSI, "VSOCK": VSOCK, "LINKTYPE": LINKTYPE_VQTRACE,
    "ANOMALY_HAS_ID": ANOMALY_HAS_ID,
    **{f"ROLE_{name}": value for name, value in ROLES.items()},
}

_PLAN = r'''
-- ---------------------------------------------------------------------------------------------
-- The record plan (mirrors vqtrace/trace/dissect.py and vqtrace/trace/plan.py)

local vqtrace = PROTO["vqtrace"]
local DATA = Dissector.get("data")
local ETH = Dissector.get("eth_withoutfcs")
local f_interface = Field.new("frame.interface_id")
local BODY = {[1] = "record.vhost_user", [2] = "record.notify", [3] = "record.notify", [4] = "record.avail",
              [5] = "record.used", [6] = "record.config", [7] = "record.anomaly", [8] = "record.data"}
local VU_NAMES = @{vhost_user.REQUESTS}
local VU_BACKEND_NAMES = @{vhost_user.BACKEND_REQUESTS}
local KIND_NAMES = {"VHOST_USER", "KICK", "CALL", "AVAIL", "USED", "CONFIG", "ANOMALY", "DATA"}
local CONFIG_LAYERS = {[$NET] = "virtio_net.config", [$BLK] = "virtio_blk.config",
                       [$CONSOLE] = "virtio_console.config", [$BALLOON] = "virtio_balloon.config",
                       [$SCSI] = "virtio_scsi.config", [$VSOCK] = "virtio_vsock.config"}
local PROTOCOLS = {[$NET] = "virtio-net", [$BLK] = "virtio-blk", [$CONSOLE] = "virtio-console",
                   [$RNG] = "virtio-rng", [$BALLOON] = "virtio-balloon", [$SCSI] = "virtio-scsi",
                   [$VSOCK] = "virtio-vsock"}
local ef_malformed = ProtoExpert.new("vqtrace.malformed.expert", "Malformed", expert.group.MALFORMED,
                                     expert.severity.ERROR)
local ef_version = ProtoExpert.new("vqtrace.version.expert", "Unknown record version", expert.group.UNDECODED,
                                   expert.severity.ERROR)
vqtrace.experts = {ef_malformed, ef_version}

local function u16(tvb, off) return tvb(off, 2):le_uint() end
local function u32(tvb, off) return tvb(off, 4):le_uint() end

local function raw(tvb, pinfo, tree, off, len)
    if len > 0 then DATA:call(tvb(off, len):tvb(), pinfo, tree) end
end

local function params_of(tbl)
    local ps = new_params()
    for name, value in pairs(tbl) do
        if type(value) == "table" then set_param(ps, name, value[1], value[2])
        elseif type(value) == "boolean" then set_param(ps, name, UInt64(value and 1 or 0, 0))
        else set_param(ps, name, UInt64(value % TWO32, floor(value / TWO32))) end
    end
    return ps
end

-- one layer over [off, off + len): its fields, or vqtrace.malformed and the bytes as data
local function layer(name, tvb, pinfo, tree, off, len, ps, quiet)
    local node = LAYERS[name]
    local items, err = dissect_layer(node, tvb, off, len, ps or new_params(), name)
    if items ~= nil then
        if node.proto == nil then
            -- a layer whose root is a subtree of its protocol (virtio_blk.status): under the protocol's
            -- item, so a filter naming the protocol finds it, as vqtrace's does
            tree = tree:add(PROTO[LAYER_PROTOCOL[name]], tvb(off, len))
        end
        emit(tree, tvb, off, items)
        return items
    end
    if quiet then return nil end
    local item = tree:add(F["vqtrace.malformed"], tvb(off, 0), name)
    item:add_proto_expert_info(ef_malformed, name .. " at offset " .. err.off .. ": " .. err.msg)
    raw(tvb, pinfo, tree, off, len)
    return nil
end

-- The segments of a chain (vqtrace/trace/plan.py)
local function seg(kind, part, start, len, params, extra)
    local s = {kind = kind, part = part, start = start, len = len, params = params}
    if extra ~= nil then for k, v in pairs(extra) do s[k] = v end end
    return s
end
local function rawseg(part, start, len) return seg("data", part, start, len) end
local function frameseg(out, part, start, len)
    if len >= 14 then out[#out + 1] = seg("eth", part, start, len)
    elseif len > 0 then out[#out + 1] = rawseg(part, start, len) end
end

local function has_feature(c, bit)
    if c.features == nil then return false end
    local w = c.fwords[floor(bit / 32) + 1]
    return w ~= nil and band(w, lshift(1, bit % 32)) ~= 0
end
local function feature_params(c)
    if c.features == nil then return {} end
    return {features = c.features}
end
local function net_hdr_size(c)
    local function has(bit)
        if c.features == nil then return bit == @{net.VIRTIO_F_VERSION_1} end
        return has_feature(c, bit)
    end
    if has(@{net.VIRTIO_NET_F_OUT_NET_HEADER}) or has(@{net.VIRTIO_NET_F_IPSEC}) then return 32 end
    if has(@{net.VIRTIO_NET_F_HOST_UDP_TUNNEL_GSO}) or has(@{net.VIRTIO_NET_F_GUEST_UDP_TUNNEL_GSO}) then return 24 end
    if has(@{net.VIRTIO_NET_F_HASH_REPORT}) then return 20 end
    if has(@{net.VIRTIO_F_VERSION_1}) or has(@{net.VIRTIO_NET_F_MRG_RXBUF}) then return 12 end
    return 10
end
local function wrote(c)
    if c.used_len ~= nil and c.used_len < c.wlen then return MAX(c.used_len, 0) end
    return c.wlen
end
local function sum(list)
    local total = 0
    for i = 1, #list do total = total + list[i] end
    return total
end
local function writable_len(c)
    if c.writable_lens ~= nil then return sum(c.writable_lens) end
    if c.written then return c.wlen end
    return nil
end
local function written_whole(c)
    if not c.written then return false end
    return c.writable_lens == nil or c.wlen >= sum(c.writable_lens)
end
local function rbyte(c, i) return c.tvb(c.r_at + i, 1):uint() end
local function ru32(c, i) return c.tvb(c.r_at + i, 4):le_uint() end
local function wbyte(c, i) return c.tvb(c.w_at + i, 1):uint() end

local function generic(c)
    local out = {}
    if c.rlen > 0 then out[#out + 1] = rawseg("readable", 0, c.rlen) end
    if c.written and c.wlen > 0 then
        local n = wrote(c)
        if n > 0 then out[#out + 1] = rawseg("written", 0, n) end
    end
    return out
end

local BLK_SEGMENT_TYPES = @{blk.SEGMENT_TYPES}
local BLK_ZONE_APPEND = @{blk.VIRTIO_BLK_T_ZONE_APPEND}
local BLK_T = @{blk.REQUEST_TYPES}
local function blk(c)
    local out = {}
    if c.rlen < 16 then
        if c.rlen > 0 then out[#out + 1] = rawseg("readable", 0, c.rlen) end
        if c.written and c.wlen > 0 then out[#out + 1] = rawseg("written", 0, c.wlen) end
        return out
    end
    local kind = band(ru32(c, 0), 0x7FFFFFFF)
    local whole = c.rlen
    if BLK_SEGMENT_TYPES[kind] then whole = 16 + floor((c.rlen - 16) / 16) * 16 end
    out[#out + 1] = seg("virtio_blk.req", "readable", 0, whole)
    if whole < c.rlen then out[#out + 1] = rawseg("readable", whole, c.rlen - whole) end
    if not c.used then return out end
    local status_size = kind == BLK_ZONE_APPEND and 9 or 1
    local writable = writable_len(c) or 0
    local data_len, status
    if c.written and written_whole(c) and c.wlen >= status_size then
        data_len = c.wlen - status_size
        status = seg("virtio_blk.status", "written", data_len, status_size)
    elseif c.tlen ~= nil and c.tlen >= status_size and c.writable_lens ~= nil and writable >= status_size then
        data_len = MIN(writable - status_size, c.wlen)
        status = seg("virtio_blk.status", "tail", c.tlen - status_size, status_size)
    else
        if c.written and c.wlen > 0 then out[#out + 1] = rawseg("written", 0, c.wlen) end
        return out
    end
    if kind == BLK_ZONE_APPEND then status.params = {request_type = kind} end
    if data_len > 0 then
        if kind == BLK_T["VIRTIO_BLK_T_GET_ID"] then
            out[#out + 1] = seg("virtio_blk.get_id", "written", 0, MIN(data_len, @{blk.VIRTIO_BLK_ID_BYTES}))
        elseif kind == BLK_T["VIRTIO_BLK_T_GET_LIFETIME"] then
            out[#out + 1] = seg("virtio_blk.lifetime", "written", 0, MIN(data_len, 6))
        elseif kind == BLK_T["VIRTIO_BLK_T_ZONE_REPORT"] then
            out[#out + 1] = seg("virtio_blk.zone_report", "written", 0, data_len)
        else
            out[#out + 1] = seg("bytes", "written", 0, data_len, nil, {root = "virtio_blk", field = "virtio_blk.data"})
        end
    end
    out[#out + 1] = status
    return out
end

local function net_tx(c)
    local size = net_hdr_size(c)
    if c.rlen < size then
        if c.rlen > 0 then return {rawseg("readable", 0, c.rlen)} end
        return {}
    end
    local out = {seg("virtio_net.hdr", "readable", 0, size, feature_params(c))}
    frameseg(out, "readable", size, c.rlen - size)
    return out
end

local function net_rx(c)
    local out = {}
    if c.rlen > 0 then out[#out + 1] = rawseg("readable", 0, c.rlen) end
    if not c.used or not c.written then return out end
    local n = wrote(c)
    if c.continuation then
        if n > 0 then out[#out + 1] = rawseg("written", 0, n) end
        return out
    end
    local size = net_hdr_size(c)
    if n < size then
        if n > 0 then out[#out + 1] = rawseg("written", 0, n) end
        return out
    end
    out[#out + 1] = seg("virtio_net.hdr", "written", 0, size, feature_params(c))
    frameseg(out, "written", size, n - size)
    return out
end

local function net_ctrl(c)
    local out = {}
    if c.rlen < 2 then
        if c.rlen > 0 then out[#out + 1] = rawseg("readable", 0, c.rlen) end
    else
        out[#out + 1] = seg("virtio_net.ctrl", "readable", 0, c.rlen)
    end
    if c.used and c.written then
        local n = wrote(c)
        if n > 0 then
            local params = {}
            if c.rlen >= 2 then params = {ctrl_class = rbyte(c, 0), ctrl_command = rbyte(c, 1)} end
            out[#out + 1] = seg("virtio_net.ctrl_ack", "written", 0, n, params)
        end
    end
    return out
end

local function console_tx(c) return {seg("virtio_console.data", "readable", 0, c.rlen)} end
local function console_rx(c)
    local out = {}
    if c.rlen > 0 then out[#out + 1] = rawseg("readable", 0, c.rlen) end
    if c.used and c.written then out[#out + 1] = seg("virtio_console.data", "written", 0, wrote(c)) end
    return out
end
local function console_ctrl(c, to_device)
    local part, length
    if to_device then
        part, length = "readable", c.rlen
    else
        if not c.used or not c.written then return {} end
        part, length = "written", wrote(c)
    end
    if length < 8 then
        if length > 0 then return {rawseg(part, 0, length)} end
        return {}
    end
    return {seg("virtio_console.ctrl", part, 0, length)}
end

local function rng(c)
    local out = {}
    if c.rlen > 0 then out[#out + 1] = rawseg("readable", 0, c.rlen) end
    if c.used and c.written then out[#out + 1] = seg("virtio_rng.data", "written", 0, wrote(c)) end
    return out
end

local function balloon_array(name, size)
    return function(c)
        local whole = floor(c.rlen / size) * size
        local out = {}
        if whole > 0 then out[#out + 1] = seg(name, "readable", 0, whole) end
        if whole < c.rlen then out[#out + 1] = rawseg("readable", whole, c.rlen - whole) end
        return out
    end
end
local function balloon_free_page(c)
    if c.rlen == 0 then return {} end
    if c.rlen < 4 then return {rawseg("readable", 0, c.rlen)} end
    local out = {seg("virtio_balloon.free_page_hint", "readable", 0, 4)}
    if c.rlen > 4 then out[#out + 1] = rawseg("readable", 4, c.rlen - 4) end
    return out
end

local SCSI_DATAIN = {[0x12] = "virtio_scsi.inquiry", [0x25] = "virtio_scsi.read_capacity10",
                     ["158,16"] = "virtio_scsi.read_capacity16", [0xA0] = "virtio_scsi.report_luns"}
local function scsi_params(c, pi_bytesin)
    local params = {cdb_size = c.cdb_size, sense_size = c.sense_size, pi_bytesin = pi_bytesin}
    if c.features ~= nil then params.features = c.features end
    return params
end
local function scsi_response(c, out, cdb_at, has_cdb, pi_bytesin)
    if not c.used or not c.written then return end
    local n = wrote(c)
    if n < 12 then
        if n > 0 then out[#out + 1] = rawseg("written", 0, n) end
        return
    end
    local status, response = wbyte(c, 10), wbyte(c, 11)
    out[#out + 1] = seg("virtio_scsi.cmd_resp", "written", 0, n, scsi_params(c, pi_bytesin))
    local pi = has_feature(c, 3)
    local datain_at = 12 + MAX(c.sense_size, 0) + (pi and pi_bytesin or 0)
    if n > datain_at and has_cdb and c.cdb_size > 0 and response == 0 and status == 0 then
        local opcode = rbyte(c, cdb_at)
        local key = opcode
        if opcode == 0x9E and c.cdb_size > 1 then key = opcode .. "," .. band(rbyte(c, cdb_at + 1), 0x1F) end
        local evpd = opcode == 0x12 and c.cdb_size > 1 and band(rbyte(c, cdb_at + 1), 1) ~= 0
        local name = SCSI_DATAIN[key]
        if opcode == 0x12 and evpd then name = nil end
        if name ~= nil then out[#out + 1] = seg(name, "written", datain_at, n - datain_at, nil, {quiet = true}) end
    end
end
local function scsi_request(c)
    local pi = has_feature(c, 3)
    local cdb_at = 19 + (pi and 8 or 0)
    local need = cdb_at + MAX(c.cdb_size, 0)
    local out = {}
    if c.rlen < need then
        if c.rlen > 0 then out[#out + 1] = rawseg("readable", 0, c.rlen) end
        scsi_response(c, out, cdb_at, false, 0)
        return out
    end
    local pi_bytesin = pi and ru32(c, 23) or 0
    out[#out + 1] = seg("virtio_scsi.cmd_req", "readable", 0, c.rlen, scsi_params(c, pi_bytesin))
    scsi_response(c, out, cdb_at, true, pi_bytesin)
    return out
end
local function scsi_control(c)
    local out = {}
    local kind = nil
    if c.rlen < 4 then
        if c.rlen > 0 then out[#out + 1] = rawseg("readable", 0, c.rlen) end
    else
        kind = ru32(c, 0)
        out[#out + 1] = seg((kind == 1 or kind == 2) and "virtio_scsi.ctrl_an" or "virtio_scsi.ctrl_tmf",
                            "readable", 0, c.rlen)
    end
    if c.used then
        local n = c.written and wrote(c) or 0
        local an = kind == 1 or kind == 2
        if n > (an and 4 or 0) then
            out[#out + 1] = seg(an and "virtio_scsi.ctrl_an_resp" or "virtio_scsi.ctrl_tmf_resp", "written", 0, n)
        end
    end
    return out
end
local function scsi_event(c)
    if not c.used or not c.written then return {} end
    local n = wrote(c)
    if n < 16 then
        if n > 0 then return {rawseg("written", 0, n)} end
        return {}
    end
    return {seg("virtio_scsi.event", "written", 0, n)}
end

local function vsock_packet(c, tx)
    local out = {}
    local part, n, at
    if tx then
        part, n, at = "readable", c.rlen, c.r_at
    else
        if c.rlen > 0 then out[#out + 1] = rawseg("readable", 0, c.rlen) end
        if not c.used or not c.written then return out end
        part, n, at = "written", wrote(c), c.w_at
    end
    if n < 44 then
        if n > 0 then out[#out + 1] = rawseg(part, 0, n) end
        return out
    end
    out[#out + 1] = seg("virtio_vsock.hdr", part, 0, n)
    if tx then
        local length = c.tvb(at + 24, 4):le_uint()
        local total = c.readable_lens ~= nil and sum(c.readable_lens) or c.rlen
        local present = MAX(total, n) - 44
        local stop = MIN(44 + length, n)
        if present > length and n > stop then out[#out + 1] = rawseg(part, stop, n - stop) end
    end
    return out
end
local function vsock_event(c)
    if not c.used or not c.written then return {} end
    local n = wrote(c)
    if n < 4 then
        if n > 0 then return {rawseg("written", 0, n)} end
        return {}
    end
    return {seg("virtio_vsock.event", "written", 0, 4)}
end

local PLANS = {
    [$BLK] = {[$ROLE_REQUEST] = blk},
    [$NET] = {[$ROLE_TX] = net_tx, [$ROLE_RX] = net_rx, [$ROLE_CONTROL] = net_ctrl},
    [$CONSOLE] = {[$ROLE_TX] = console_tx, [$ROLE_RX] = console_rx,
                  [$ROLE_CONTROL_TX] = function(c) return console_ctrl(c, true) end,
                  [$ROLE_CONTROL_RX] = function(c) return console_ctrl(c, false) end},
    [$RNG] = {[$ROLE_REQUEST] = rng},
    [$BALLOON] = {[$ROLE_INFLATE] = balloon_array("virtio_balloon.pfns", 4),
                  [$ROLE_DEFLATE] = balloon_array("virtio_balloon.pfns", 4),
                  [$ROLE_STATS] = balloon_array("virtio_balloon.stats", 10),
                  [$ROLE_FREE_PAGE] = balloon_free_page, [$ROLE_REPORTING] = function(c) return {} end},
    [$SCSI] = {[$ROLE_REQUEST] = scsi_request, [$ROLE_CONTROL] = scsi_control, [$ROLE_EVENT] = scsi_event},
    [$VSOCK] = {[$ROLE_TX] = function(c) return vsock_packet(c, true) end,
                [$ROLE_RX] = function(c) return vsock_packet(c, false) end, [$ROLE_EVENT] = vsock_event},
}

-- merged receive buffers (5.1.9.4): per interface and queue, how many continuation buffers follow,
-- decided on the first pass and remembered per frame
local RX_PENDING = {}
local RX_CONTINUATION = {}

local function chain_of(tvb, pinfo, h, at, kind)
    local c = {tvb = tvb, device = h.device, role = h.role, cdb_size = h.cdb_size, sense_size = h.sense_size}
    if h.features_lo ~= UInt64(0, 0) or h.features_hi ~= UInt64(0, 0) then
        c.features = {h.features_lo, h.features_hi}
        c.fwords = words_of(h.features_lo, h.features_hi)
    end
    if kind == 5 then
        c.used_len = u32(tvb, at + 4)
        at = at + 12
    end
    local cflags, ndesc = tvb(at + 4, 1):uint(), u16(tvb, at + 6)
    at = at + 16
    local rl, wl = {}, {}
    for _ = 1, ndesc do
        local length, dflags = u32(tvb, at + 8), u16(tvb, at + 12)
        if band(dflags, 4) == 0 then
            if band(dflags, 2) ~= 0 then wl[#wl + 1] = length else rl[#rl + 1] = length end
        end
        at = at + 24
    end
    if band(cflags, $CHAIN_UNKNOWN) == 0 then c.readable_lens, c.writable_lens = rl, wl end
    c.rlen = u32(tvb, at)
    c.r_at = at + 4
    at = at + 4 + c.rlen
    c.wlen = u32(tvb, at)
    c.w_at = at + 4
    c.written = kind == 5
    c.used = kind == 5
    at = at + 4 + c.wlen
    local tail = u32(tvb, at)
    if tail > 0 then c.tlen, c.t_at = tail, at + 4 end
    if not c.written then c.wlen = 0 end
    -- merged receive buffers
    if kind == 5 and c.device == $NET and c.role == $ROLE_RX then
        local key = tostring(f_interface() and f_interface().value or 0) .. ":" .. h.queue
        if not pinfo.visited then
            local pending = RX_PENDING[key] or 0
            if pending > 0 then
                RX_CONTINUATION[pinfo.number] = true
                RX_PENDING[key] = pending - 1
            elseif has_feature(c, @{net.VIRTIO_NET_F_MRG_RXBUF}) then
                local size = net_hdr_size(c)
                if size >= 12 and wrote(c) >= size then
                    local buffers = u16(tvb, c.w_at + 10)
                    if buffers > 1 then RX_PENDING[key] = buffers - 1 end
                end
            end
        end
        c.continuation = RX_CONTINUATION[pinfo.number] == true
    end
    return c
end

local function run_chain(tvb, pinfo, tree, h, at, kind)
    local c = chain_of(tvb, pinfo, h, at, kind)
    local byrole = PLANS[c.device]
    local handler = byrole and byrole[c.role]
    local segs = handler and handler(c) or generic(c)
    local first = nil
    for i = 1, #segs do
        local s = segs[i]
        local base = s.part == "readable" and c.r_at or s.part == "tail" and c.t_at or c.w_at
        local off = base + s.start
        if s.kind == "data" then
            raw(tvb, pinfo, tree, off, s.len)
        elseif s.kind == "eth" then
            ETH:call(tvb(off, s.len):tvb(), pinfo, tree)
        elseif s.kind == "bytes" then
            local item = tree:add(PROTO[s.root], tvb(off, s.len))
            item:add(F[s.field], tvb(off, s.len), tvb:raw(off, s.len))
        else
            layer(s.kind, tvb, pinfo, tree, off, s.len, params_of(s.params or {}), s.quiet)
            first = first or s.kind
        end
    end
    return first
end

function vqtrace.dissector(tvb, pinfo, tree)
    local size = tvb:captured_len()
    pinfo.cols.protocol = "vqtrace"
    local root = tree:add(vqtrace, tvb())
    if size < 1 then return end
    local version = tvb(0, 1):uint()
    if version ~= $RECORD_VERSION then
        root:add(F["vqtrace.version"], tvb(0, 1), version)
        root:add_proto_expert_info(ef_version, "unknown record version " .. version)
        pinfo.cols.info = "unknown record version " .. version
        return
    end
    local head, err = dissect_layer(LAYERS["record"], tvb, 0, size, new_params(), "record")
    if head == nil then
        local item = tree:add(F["vqtrace.malformed"], tvb(0, 0), "record")
        item:add_proto_expert_info(ef_malformed, "record at offset " .. err.off .. ": " .. err.msg)
        raw(tvb, pinfo, tree, 0, size)
        pinfo.cols.info = "malformed record"
        return
    end
    emit(root, tvb, 0, head[1].kids)
    local flags, hdr_len = tvb(3, 1):uint(), u16(tvb, 4)
    local h = {kind = tvb(1, 1):uint(), flags = flags, queue = u16(tvb, 6), device = u16(tvb, 8),
               role = tvb(10, 1):uint(), channel = tvb(11, 1):uint(), features_lo = tvb(16, 8):le_uint64(),
               features_hi = tvb(24, 8):le_uint64(), cdb_size = u16(tvb, 32), sense_size = u16(tvb, 34)}
    if h.cdb_size == 0 then h.cdb_size = 32 end
    if h.sense_size == 0 then h.sense_size = 96 end
    local kind = h.kind
    local name = KIND_NAMES[kind] or tostring(kind)
    local info = name
    if band(flags, $FLAG_QUEUE) ~= 0 then info = info .. " q=" .. h.queue end
    local body = BODY[kind]
    local items = nil
    if body ~= nil then items = dissect_layer(LAYERS[body], tvb, hdr_len, size - hdr_len, new_params(), body) end
    if items == nil then
        local item = tree:add(F["vqtrace.malformed"], tvb(hdr_len, 0), body or "record")
        item:add_proto_expert_info(ef_malformed, "malformed " .. name .. " record")
        raw(tvb, pinfo, tree, hdr_len, size - hdr_len)
        pinfo.cols.info = "malformed " .. name .. " record"
        return
    end
    emit(root, tvb, hdr_len, items[1].kids)
    local protocol = PROTOCOLS[h.device] or "vqtrace"
    if kind == 1 then
        local ps = {channel = h.channel}
        if band(flags, $FLAG_PACKED) ~= 0 then ps.packed = 1 end
        if band(flags, $FLAG_XEN_MMAP) ~= 0 then ps.xen_mmap = 1 end
        local msg = layer("vhost_user.msg", tvb, pinfo, tree, hdr_len, size - hdr_len, params_of(ps))
        protocol = "vhost-user"
        if msg ~= nil then
            local request = find(msg, F["vhost_user.request"])
            local text = request and VU_NAMES[request]
            if request == nil then
                request = find(msg, F["vhost_user.backend_request"])
                text = request and VU_BACKEND_NAMES[request]
            end
            info = text or ("vhost-user request " .. tostring(request))
            local flags = find(msg, F["vhost_user.flags"]) or 0
            if band(flags, 4) ~= 0 then info = info .. " reply" end
        else
            info = "malformed vhost-user message"
        end
    elseif kind == 4 or kind == 5 then
        local first = run_chain(tvb, pinfo, tree, h, hdr_len, kind)
        if first ~= nil then info = info .. " " .. first end
    elseif kind == 6 then
        local offset, length = u32(tvb, hdr_len), u32(tvb, hdr_len + 4)
        local cfg = CONFIG_LAYERS[h.device]
        if cfg ~= nil and offset == 0 then layer(cfg, tvb, pinfo, tree, hdr_len + 8, length, new_params()) end
        info = info .. " offset=" .. offset .. " size=" .. length
    elseif kind == 8 then
        local at = hdr_len
        local name_len = tvb(at, 1):uint()
        local lname = tvb:raw(at + 1, name_len)
        at = at + 1 + name_len
        local count = tvb(at, 1):uint()
        at = at + 1
        local ps = new_params()
        for _ = 1, count do
            local n = tvb(at, 1):uint()
            local pname = tvb:raw(at + 1, n)
            at = at + 1 + n
            set_param(ps, pname, tvb(at, 8):le_uint64(), tvb(at + 8, 8):le_uint64())
            at = at + 16
        end
        if LAYERS[lname] ~= nil then
            layer(lname, tvb, pinfo, tree, at, size - at, ps)
        else
            local item = tree:add(F["vqtrace.malformed"], tvb(at, 0), lname)
            item:add_proto_expert_info(ef_malformed, "unknown layer " .. lname)
            raw(tvb, pinfo, tree, at, size - at)
        end
        info = info .. " " .. lname
    end
    pinfo.cols.protocol = protocol
    pinfo.cols.info = info
end

DissectorTable.get("wtap_encap"):add(wtap_encaps.USER0 or wtap.USER0, vqtrace)
'''


def _render() -> str:
    text = _PLAN
    for name, value in sorted(_CONSTANTS.items(), key=lambda item: -len(item[0])):
        text = text.replace(f"${name}", str(value))
    return text


#: The plan's Lua; ``@{module.NAME}`` placeholders are filled in by the generator, like the helpers'.
PLAN = _render()
