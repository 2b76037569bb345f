-- 24 h analytics for tests/load/bench_design.py: GET /v1/analytics/performance/<vehicleId>?<QUERY> for a random
-- loaded vehicle each request, each request with the next read key of the file (round-robin).
--
--   wrk -t2 -c8 -d20s -s design_analytics.lua http://127.0.0.1:PORT/v1/analytics/performance/ -- \
--       KEYS_FILE DEVICES VEHICLE_PREFIX ID_WIDTH QUERY SEED
--
-- Counted per thread: sent, responses, ok (2xx), limited (429), other (any other status).

local common = dofile(debug.getinfo(1, "S").source:match("^@(.*/)") .. "design_common.lua")

local COUNTERS = { "sent", "responses", "ok", "limited", "other" }
setup = common.setup
done = common.done(COUNTERS)

local keys, devices, path_fmt, headers

function init(args)
   keys = common.keys(args[1])
   devices = tonumber(args[2])
   path_fmt = wrk.path .. args[3] .. "%0" .. args[4] .. "d?" .. args[5]:gsub("%%", "%%%%")
   math.randomseed(tonumber(args[6]) + 7919 * tid)
   headers = {}
   common.reset(COUNTERS)
end

function request()
   sent = sent + 1
   headers["X-API-Key"] = keys[sent % #keys + 1]
   return wrk.format("GET", string.format(path_fmt, math.random(1, devices)), headers)
end

function response(status)
   common.count(status)
end
