-- wrk script of benches/write.rs: puts with a new key on every request, or
-- gets of keys an earlier put run wrote, against quorumd (Consul's KV API)
-- or etcd (its v3 JSON gateway, base64 keys and values).
--
--   wrk -t1 -c16 -d5s -s benches/wrk/kv.lua http://LEADER -- SYSTEM OP PREFIX N
--
-- SYSTEM: quorumd | etcd. OP: put (N: value bytes; keys PREFIX/<thread>/<i>)
-- or get (linearizable reads of PREFIX/000000 .. PREFIX/<N - 1>, six digits,
-- which the bench wrote before). The last line printed, `wrk-result ...`,
-- is what the bench parses.

local threads = 0

function setup(thread)
   thread:set("tid", threads)
   threads = threads + 1
end

local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

local function b64(s)
   local out = {}
   for i = 1, #s, 3 do
      local a, b, c = s:byte(i, i + 2)
      local n = a * 65536 + (b or 0) * 256 + (c or 0)
      local quad = {}
      for k = 4, 1, -1 do
         local v = n % 64
         quad[k] = alphabet:sub(v + 1, v + 1)
         n = (n - v) / 64
      end
      if not b then quad[3] = "=" end
      if not c then quad[4] = "=" end
      out[#out + 1] = table.concat(quad)
   end
   return table.concat(out)
end

local system, op, prefix, n
local counter = 0
local value

function init(args)
   system, op, prefix = args[1], args[2], args[3]
   n = tonumber(args[4])
   if (system ~= "quorumd" and system ~= "etcd") or (op ~= "put" and op ~= "get") or not prefix or not n then
      error("usage: -- quorumd|etcd put|get PREFIX N")
   end
   if op == "put" then
      value = string.rep("v", n)
      if system == "etcd" then value = b64(value) end
   end
end

function request()
   counter = counter + 1
   local key
   if op == "put" then
      key = prefix .. "/" .. tid .. "/" .. counter
   else
      key = string.format("%s/%06d", prefix, (counter - 1) % n)
   end
   if system == "quorumd" then
      if op == "put" then
         return wrk.format("PUT", "/v1/kv/" .. key, nil, value)
      end
      return wrk.format("GET", "/v1/kv/" .. key)
   end
   if op == "put" then
      return wrk.format("POST", "/v3/kv/put", nil,
         '{"key":"' .. b64(key) .. '","value":"' .. value .. '"}')
   end
   return wrk.format("POST", "/v3/kv/range", nil, '{"key":"' .. b64(key) .. '"}')
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "wrk-result requests=%d duration_us=%d p50_us=%d p99_us=%d errors=%d\n",
      summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
      e.connect + e.read + e.write + e.status + e.timeout))
end
