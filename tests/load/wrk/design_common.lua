-- Shared by the wrk scripts of tests/load/bench_design.py (loaded with dofile from the script's own directory).
--
-- setup() numbers the threads (global `tid` in each thread, 0-based); keys() reads the API keys file (one key a
-- line); reset() and count() keep the per-thread counters of responses; done() prints one line "DESIGN_BENCH_RESULT {json}" with wrk's summary, the latency percentiles (wrk's
-- --latency prints only 50/75/90/99) and the per-thread counters the script names, summed over the threads.

local M = {}

local threads = {}

function M.setup(thread)
   thread:set("tid", #threads)
   table.insert(threads, thread)
end

function M.keys(path)
   local keys = {}
   for line in io.lines(path) do
      if line ~= "" then
         keys[#keys + 1] = line
      end
   end
   assert(#keys > 0, "no API keys in " .. path)
   return keys
end

-- Sets each named counter (a global of the thread) to 0; call from init().
function M.reset(counters)
   for _, name in ipairs(counters) do
      _G[name] = 0
   end
end

-- Counts a response into the thread's counters responses, ok (2xx), limited (429) and other; true for a 2xx.
function M.count(status)
   responses = responses + 1
   if status >= 200 and status < 300 then
      ok = ok + 1
      return true
   end
   if status == 429 then
      limited = limited + 1
   else
      other = other + 1
   end
   return false
end

-- A done() that reports wrk's summary and the sum over threads of each global counter in `counters`.
function M.done(counters)
   return function(summary, latency, requests)
      local fields = {}
      for _, name in ipairs(counters) do
         local total = 0
         for _, thread in ipairs(threads) do
            total = total + (thread:get(name) or 0)
         end
         fields[#fields + 1] = string.format('"%s":%d', name, total)
      end
      local percentiles = {}
      for _, q in ipairs({ 50, 75, 90, 95, 99, 99.9 }) do
         percentiles[#percentiles + 1] = string.format('"p%s":%d', tostring(q), latency:percentile(q))
      end
      local e = summary.errors
      io.write(
         string.format(
            'DESIGN_BENCH_RESULT {"duration_us":%d,"requests":%d,"bytes":%d,'
               .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
               .. '"latency_us":{%s,"min":%d,"max":%d,"mean":%.1f,"stdev":%.1f},"counters":{%s}}\n',
            summary.duration,
            summary.requests,
            summary.bytes,
            e.connect,
            e.read,
            e.write,
            e.status,
            e.timeout,
            table.concat(percentiles, ","),
            latency.min,
            latency.max,
            latency.mean,
            latency.stdev,
            table.concat(fields, ",")
         )
      )
   end
end

return M
