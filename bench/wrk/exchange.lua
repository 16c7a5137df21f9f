-- wrk script for POST /keys/<keyName>/requestToken with a fresh TokenRequest
-- per request. Arguments (after --): the file of pre-signed bodies (one JSON
-- TokenRequest per line), the request path, the number of wrk threads.
-- Thread i sends lines i+1, i+1+n, i+1+2n, ...: no body is sent twice. When a
-- thread runs out it stops itself (and counts it); run.py sizes the file so
-- that this does not happen, and reports it when it does.
local threads = {}
local counter = 0

setup = function(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

init = function(args)
  local step = tonumber(args[3])
  local bodies = {}
  local i = 0
  for line in io.lines(args[1]) do
    if i % step == id then
      bodies[#bodies + 1] = line
    end
    i = i + 1
  end
  requests_ = {}
  local headers = { ["Content-Type"] = "application/json" }
  for k = 1, #bodies do
    requests_[k] = wrk.format("POST", args[2], headers, bodies[k])
  end
  bodies = nil
  next_ = 1
  exhausted = 0
end

request = function()
  local r = requests_[next_]
  if r == nil then
    exhausted = exhausted + 1
    wrk.thread:stop()
    return wrk.format("GET", "/__bench_exhausted__")
  end
  next_ = next_ + 1
  return r
end

done = function(summary, latency, requests)
  local ex = 0
  for _, t in ipairs(threads) do
    ex = ex + (t:get("exhausted") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,' ..
    '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"exhausted":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99), ex))
end
