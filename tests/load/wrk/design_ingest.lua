-- Single-reading ingest for tests/load/bench_design.py: POST /v1/telemetry/ingest, one reading per request, METER
-- and VEHICLE alternating, for the loaded devices, each request with the next device key of the file (round-robin).
--
--   wrk -t2 -c32 -d20s -s design_ingest.lua http://127.0.0.1:PORT/v1/telemetry/ingest -- \
--       KEYS_FILE DEVICES METER_PREFIX VEHICLE_PREFIX ID_WIDTH BASE_MS THREADS
--
-- Reading number g = n * THREADS + tid (n: this thread's request count) is unique across threads: kind g % 2, and
-- with j = g // 2, device j % DEVICES + 1 and timestamp BASE_MS + j // DEVICES milliseconds (UTC). So every
-- (device, timestamp) is new, every 2xx is a stored reading, and a run spans a few ms of timestamps from BASE_MS
-- (the caller passes a time just before the run: after the loaded day, never in the future).
-- Counted per thread: sent (requests built), responses, ok (2xx), stored (2xx whose body says "stored": 1),
-- limited (429), other (any other status).

local common = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "design_common.lua")

local COUNTERS = { "sent", "responses", "ok", "stored", "limited", "other" }
setup = common.setup
done = common.done(COUNTERS)

local METER = '{"type":"METER","payload":{"meterId":"%s","kwhConsumedAc":%.2f,"voltage":%.1f,"timestamp":"%s"}}'
local VEHICLE = '{"type":"VEHICLE","payload":{"vehicleId":"%s","soc":%.2f,"kwhDeliveredDc":%.2f,'
   .. '"batteryTemp":%.1f,"timestamp":"%s"}}'

local keys, devices, meter_fmt, vehicle_fmt, base_ms, nthreads, headers
local floor = math.floor
local n = 0
local second, second_text = -1, ""

function init(args)
   keys = common.keys(args[1])
   devices = tonumber(args[2])
   meter_fmt = args[3] .. "%0" .. args[5] .. "d"
   vehicle_fmt = args[4] .. "%0" .. args[5] .. "d"
   base_ms = tonumber(args[6])
   nthreads = tonumber(args[7])
   headers = { ["Content-Type"] = "application/json" }
   common.reset(COUNTERS)
end

local function timestamp(ms)
   local s = floor(ms / 1000)
   if s ~= second then
      second, second_text = s, os.date("!%Y-%m-%dT%H:%M:%S", s)
   end
   return string.format("%s.%03dZ", second_text, ms % 1000)
end

function request()
   local g = n * nthreads + tid
   n = n + 1
   local j = floor(g / 2)
   local device = j % devices + 1
   local ts = timestamp(base_ms + floor(j / devices))
   local body
   if g % 2 == 0 then
      body = string.format(METER, string.format(meter_fmt, device), (g % 19 + 1) / 100, 225 + (g % 200) / 10, ts)
   else
      body = string.format(
         VEHICLE,
         string.format(vehicle_fmt, device),
         5 + (j % 9000) / 100,
         (g % 17 + 1) / 100,
         15 + (g % 250) / 10,
         ts
      )
   end
   headers["X-API-Key"] = keys[g % #keys + 1]
   sent = sent + 1
   return wrk.format("POST", nil, headers, body)
end

function response(status, _, body)
   if common.count(status) and body:find('"stored":%s*1[^%d]') then
      stored = stored + 1
   end
end
