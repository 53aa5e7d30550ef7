-- wrk script: posts pre-signed, all-distinct JAS events, one per request, in file order.
-- Usage: wrk -t1 -c16 -d10s -s bench/wrk-signed.lua http://127.0.0.1:PORT/webhooks/jas -- BODIES [FIRST]
-- BODIES has one "X-SIG<space>body" per line (callhook-bench writes it); sending starts at line
-- FIRST (default 1), so a second run against the same daemon sends bodies it has not seen. With -t1 a single Lua
-- state sends them, so no body repeats while there are more lines than requests.
-- done() prints one JSON line with the totals and latency percentiles (microseconds).

local sigs, bodies, n, i = {}, {}, 0, 0

function init(args)
  for line in io.lines(args[1]) do
    local sp = line:find(" ", 1, true)
    n = n + 1
    sigs[n] = line:sub(1, sp - 1)
    bodies[n] = line:sub(sp + 1)
  end
  i = (tonumber(args[2]) or 1) - 1
end

function request()
  i = i + 1
  if i > n then i = 1 end
  return wrk.format("POST", nil, { ["X-SIG"] = sigs[i], ["Content-Type"] = "application/json" }, bodies[i])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,' ..
    '"non2xx":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
