-- `make bench` (bench_state): wrk script for PUT /v1/jobs, a distinct count-0 batch job per
-- request (the server-state write path only: validate, log, fsync, apply, publish), printing
-- one RESULT line with p50/p99/max in ms.
-- REGISTER_CLOSE set: each request on a new connection ("Connection: close").
local n = 0
-- Job IDs unique to this run (REGISTER_PREFIX, else the clock): wrk's Lua never seeds
-- math.random, so a second run on the same agent re-registered the first run's jobs (updates
-- of unchanged jobs, not registers).
local prefix = os.getenv("REGISTER_PREFIX") or (tostring(os.time()) .. "-" .. tostring(math.random(1, 1e9)))
local headers = {["Content-Type"] = "application/json"}
if os.getenv("REGISTER_CLOSE") then
  headers["Connection"] = "close"
end
request = function()
  n = n + 1
  local id = "wrk-" .. prefix .. "-" .. n
  local body = '{"Job":{"ID":"' .. id .. '","Type":"batch","Datacenters":["dc1"],"TaskGroups":[{"Name":"g","Count":0,"EphemeralDisk":{"SizeMB":4096},"Tasks":[{"Name":"t","Driver":"raw_exec","Config":{"command":"/bin/true"}}]}]}}'
  return wrk.format("PUT", "/v1/jobs", headers, body)
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT p50 %.2f p99 %.2f max %.2f n %d errors %d\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000,
    summary.requests, summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
