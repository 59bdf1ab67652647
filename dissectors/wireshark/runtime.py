"""The hand-written half of the Wireshark plugin: a Lua interpreter of the generated layout tables.

``generate.py`` writes the layouts (node tables), the fields and the twins of the
layouts' Python callables; this runtime walks a node table over a buffer exactly as
``dissectors/walk.py`` walks the construct declaration (same fields, values, order,
offsets and errors), and helpers the twins share. Lua 5.2 (tshark 4.0): numbers are
doubles, so 64-bit integers are read as two 32-bit halves (a UInt64 for the tree, a
number, exact below 2^53, for conditions).
"""

RUNTIME = r'''
-- ---------------------------------------------------------------------------------------------
-- Runtime: the layout interpreter (mirrors dissectors/walk.py)

local band, bor, bxor, rshift, lshift, bnot = bit32.band, bit32.bor, bit32.bxor, bit32.rshift, bit32.lshift,
    bit32.bnot
local sbyte, schar, ssub, sfmt, floor = string.byte, string.char, string.sub, string.format, math.floor
local TWO32 = 4294967296

local VqError = {}
local function fail(st, off, msg)
    error(setmetatable({off = off, msg = msg}, VqError), 0)
end

-- Python truthiness of a twin's result
local function TRUTH(v)
    return v ~= nil and v ~= false and v ~= 0 and v ~= ""
end

-- the context a twin sees: ctx.v (field values), ctx.has (names parsed), ctx.parent, ctx.params, ctx.st
local function V(ctx, name) return ctx.v[name] end
local function HAS(ctx, name) return ctx.has ~= nil and ctx.has[name] == true end
local function P(ctx, name, default)
    local value = ctx.params[name]
    if value == nil then return default end
    return value
end
-- bit n of an integer parameter (parameters keep their 32-bit words in ctx.pwords)
local function PBIT(ctx, name, n)
    local words = ctx.pwords[name]
    if words == nil then return false end
    local w = words[floor(n / 32) + 1]
    return w ~= nil and band(w, lshift(1, n % 32)) ~= 0
end
local function LEFT(ctx) return ctx.st.size - ctx.st.pos end
local function POS(ctx) return ctx.st.pos end
local function PEEK(ctx, n)
    local st = ctx.st
    return ssub(st.s, st.pos + 1, st.pos + n)
end
local function FAIL(ctx, msg) fail(ctx.st, ctx.st.pos, msg) end
local function MIN(a, b, c)
    local m = a < b and a or b
    if c ~= nil and c < m then m = c end
    return m
end
local function MAX(a, b) return a > b and a or b end
local function FLOORDIV(a, b) return floor(a / b) end
-- a Switch key: numbers as Python's str(), strings prefixed, tuples built by KT()
local function KT(...)
    local parts = {}
    for i = 1, select("#", ...) do
        local v = select(i, ...)
        parts[i] = v == nil and "nil" or tostring(v)
    end
    return {tuple = "t:" .. table.concat(parts, ",")}
end
local function KEY(v)
    local t = type(v)
    if t == "number" then return sfmt("%d", v) end
    if t == "string" then return "s:" .. v end
    if t == "table" and v.tuple ~= nil then return v.tuple end
    if t == "boolean" then return v and "1" or "0" end
    return "nil"
end
local function EVAL(spec, ctx)
    if type(spec) == "function" then return spec(ctx) end
    return spec
end

local function rd_le(s, p, n)
    local v = 0
    for i = n, 1, -1 do v = v * 256 + sbyte(s, p + i) end
    return v
end
local function rd_be(s, p, n)
    local v = 0
    for i = 1, n do v = v * 256 + sbyte(s, p + i) end
    return v
end

-- UTF-8 decoding with U+FFFD for each maximal invalid subpart (Python's errors="replace")
local FFFD = "\239\191\189"
local function utf8_replace(s)
    local n = #s
    if not s:find("[\128-\255]") then return s end
    local out, i = {}, 1
    while i <= n do
        local b = sbyte(s, i)
        if b < 0x80 then
            out[#out + 1] = schar(b); i = i + 1
        else
            local need, lo, hi = 0, 0x80, 0xBF
            if b >= 0xC2 and b <= 0xDF then need = 1
            elseif b == 0xE0 then need, lo = 2, 0xA0
            elseif (b >= 0xE1 and b <= 0xEC) or b == 0xEE or b == 0xEF then need = 2
            elseif b == 0xED then need, hi = 2, 0x9F
            elseif b == 0xF0 then need, lo = 3, 0x90
            elseif b >= 0xF1 and b <= 0xF3 then need = 3
            elseif b == 0xF4 then need, hi = 3, 0x8F
            end
            if need == 0 then
                out[#out + 1] = FFFD; i = i + 1
            else
                local j, ok = i + 1, true
                for k = 1, need do
                    local c = sbyte(s, j)
                    local l, h = 0x80, 0xBF
                    if k == 1 then l, h = lo, hi end
                    if c == nil or c < l or c > h then ok = false; break end
                    j = j + 1
                end
                if ok then
                    out[#out + 1] = ssub(s, i, j - 1)
                else
                    out[#out + 1] = FFFD
                end
                i = j
            end
        end
    end
    return table.concat(out)
end

local DECODE = {
    mac = function(raw)
        local parts = {}
        for i = 1, #raw do parts[i] = sfmt("%02x", sbyte(raw, i)) end
        return table.concat(parts, ":")
    end,
    cstring = function(raw)
        local cut = raw:find("\0", 1, true)
        if cut then raw = ssub(raw, 1, cut - 1) end
        return utf8_replace(raw)
    end,
    ascii = function(raw)
        local text = raw:gsub("[\128-\255]", FFFD)
        return (text:gsub("[ %z]+$", ""))
    end,
    utf8 = utf8_replace,
}

local PARSE = {}
local function parse(node, st, ctx, out)
    return PARSE[node.t](node, st, ctx, out)
end

local function truncate(list, mark)
    for i = #list, mark + 1, -1 do list[i] = nil end
end

PARSE.int = function(node, st, ctx, out)
    local p, size = st.pos, node.size
    if p + size > st.size then
        fail(st, p, "truncated: " .. node.ab .. " needs " .. size .. " bytes, " .. (st.size - p) .. " left")
    end
    local s = st.s
    local value, tree
    if size == 8 then
        local lo, hi
        if node.big then hi, lo = rd_be(s, p, 4), rd_be(s, p + 4, 4)
        else lo, hi = rd_le(s, p, 4), rd_le(s, p + 4, 4) end
        tree = UInt64(lo, hi)
        value = hi * TWO32 + lo
    else
        value = node.big and rd_be(s, p, size) or rd_le(s, p, size)
        if node.signed and value >= 2 ^ (8 * size - 1) then value = value - 2 ^ (8 * size) end
        tree = value
    end
    st.pos = p + size
    local item = {f = node.f, off = p, len = size, val = tree}
    out[#out + 1] = item
    local flags = node.flags
    if flags ~= nil then
        local kids = {}
        for i = 1, #flags do
            local fl = flags[i]
            local bits
            if size == 8 then
                bits = tree:band(fl.mask64):rshift(fl.shift)  -- a UInt64: the field is a uint64
                if fl.single then bits = bits ~= UInt64(0, 0) end
            else
                bits = rshift(band(value, fl.mask), fl.shift)
                if fl.single then bits = bits ~= 0 end
            end
            kids[i] = {f = fl.f, off = p, len = size, val = bits}
        end
        item.kids = kids
    end
    return value
end

local function take(node, st, ctx)
    local p = st.pos
    local length = node.length
    if length == nil then
        st.pos = st.size
        return ssub(st.s, p + 1, st.size)
    end
    if type(length) == "function" then
        length = length(ctx)
        if type(length) ~= "number" or length ~= floor(length) then FAIL(ctx, node.ab .. ": bad length") end
    end
    if length < 0 or p + length > st.size then
        fail(st, p, "truncated: " .. node.ab .. " runs past the end (" .. (st.size - p) .. " bytes left)")
    end
    st.pos = p + length
    return ssub(st.s, p + 1, p + length)
end

PARSE.bytes = function(node, st, ctx, out)
    local p = st.pos
    local value = take(node, st, ctx)
    out[#out + 1] = {f = node.f, off = p, len = st.pos - p, val = value}
    return value
end

PARSE.string = function(node, st, ctx, out)
    local p = st.pos
    local value = DECODE[node.style](take(node, st, ctx))
    out[#out + 1] = {f = node.f, off = p, len = st.pos - p, val = value}
    return value
end

PARSE.computed = function(node, st, ctx, out)
    local value = EVAL(node.func, ctx)
    out[#out + 1] = {f = node.f, off = st.pos, len = 0, val = value}
    return value
end

PARSE.const = function(node, st, ctx, out)
    local p = st.pos
    local value = parse(node.sub, st, ctx, out)
    if value ~= node.value then fail(st, p, node.ab .. ": unexpected value") end
    return value
end

PARSE.pass = function(node, st, ctx, out)
    return nil
end

PARSE.struct = function(node, st, parent, out)
    local ctx = {v = {}, has = {}, parent = parent, params = parent.params, pwords = parent.pwords, st = st,
                 index = parent.index}
    local start = st.pos
    local item = {f = node.f, proto = node.proto, off = start, kids = {}}
    out[#out + 1] = item
    local fields = node.fields
    for i = 1, #fields do
        local fd = fields[i]
        if fd.name ~= nil then
            ctx.v[fd.name] = parse(fd.node, st, ctx, item.kids)
            ctx.has[fd.name] = true
        else
            parse(fd.node, st, ctx, {})
        end
    end
    item.len = st.pos - start
    return ctx
end

PARSE.array = function(node, st, ctx, out)
    local start = st.pos
    local left = st.size - start
    local n = nil
    if node.count ~= nil then
        n = EVAL(node.count, ctx)
        if type(n) ~= "number" or n < 0 or n ~= floor(n) then fail(st, start, node.ab .. ": bad element count") end
        if node.esize ~= nil and n * node.esize > left then
            fail(st, start, "truncated: " .. node.ab .. " has " .. n .. " entries of " .. node.esize .. " bytes")
        end
        if node.esize == 0 and n > left + 1 then fail(st, start, node.ab .. ": entries of zero size") end
    end
    local item = {text = node.label, off = start, kids = {}}
    out[#out + 1] = item
    local values, i = {}, 0
    while n == nil or i < n do
        if n == nil and st.pos >= st.size then break end
        ctx.index = i
        local before, mark = st.pos, #item.kids
        local value = parse(node.elem, st, ctx, item.kids)
        if n == nil and st.pos == before then truncate(item.kids, mark); break end
        i = i + 1
        values[i] = value
    end
    values.n = i
    item.len = st.pos - start
    item.text = node.label .. " (" .. i .. " entries)"
    return values
end

PARSE.switch = function(node, st, ctx, out)
    local case = node.cases[KEY(EVAL(node.key, ctx))] or node.default
    return parse(case, st, ctx, out)
end

PARSE["if"] = function(node, st, ctx, out)
    if TRUTH(EVAL(node.cond, ctx)) then return parse(node["then"], st, ctx, out) end
    return parse(node["else"], st, ctx, out)
end

PARSE.padded = function(node, st, ctx, out)
    local size = EVAL(node.length, ctx)
    local start = st.pos
    local value = parse(node.sub, st, ctx, out)
    local used = st.pos - start
    if used > size then fail(st, start, node.ab .. ": " .. used .. " bytes do not fit in " .. size) end
    if st.pos + size - used > st.size then
        fail(st, st.pos, "truncated: " .. node.ab .. " runs past the end")
    end
    st.pos = st.pos + size - used
    return value
end

-- parameters: numbers for the twins, and their 32-bit words for PBIT
local function words_of(lo, hi)
    return {lo:band(UInt64(0xFFFFFFFF, 0)):tonumber(), lo:rshift(32):tonumber(),
            hi:band(UInt64(0xFFFFFFFF, 0)):tonumber(), hi:rshift(32):tonumber()}
end
local function new_params()
    return {params = {}, pwords = {}}
end
local function set_param(ps, name, lo, hi)
    hi = hi or UInt64(0, 0)
    local w = words_of(lo, hi)
    ps.pwords[name] = w
    ps.params[name] = w[1] + w[2] * TWO32 + (w[3] + w[4] * TWO32) * TWO32 * TWO32
end

-- one layer over tvb bytes [off, off + len): the items it gives, or nil and the error
local function dissect_layer(node, tvb, off, len, ps, layer)
    local st = {s = len > 0 and tvb:raw(off, len) or "", pos = 0, size = len, base = off, layer = layer}
    local top = {v = {}, params = ps.params, pwords = ps.pwords, st = st}
    local out = {}
    local ok, err = pcall(parse, node, st, top, out)
    if ok then return out, nil end
    if getmetatable(err) == VqError then return nil, {off = off + err.off, msg = err.msg} end
    return nil, {off = off + st.pos, msg = tostring(err)}
end

local function emit(tree, tvb, base, items)
    for i = 1, #items do
        local it = items[i]
        local range = tvb(base + it.off, it.len)
        local sub
        if it.text ~= nil then sub = tree:add(range, it.text)
        elseif it.proto ~= nil then sub = tree:add(it.proto, range)
        elseif it.val == nil then sub = tree:add(it.f, range)
        else sub = tree:add(it.f, range, it.val) end
        if it.kids ~= nil then emit(sub, tvb, base, it.kids) end
    end
end

-- the value of the first item called `f` (depth first), for the plan and the info column
local function find(items, f)
    for i = 1, #items do
        local it = items[i]
        if it.f == f then return it.val end
        if it.kids ~= nil then
            local v = find(it.kids, f)
            if v ~= nil then return v end
        end
    end
    return nil
end
'''
