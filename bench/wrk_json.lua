-- wrk script for bench/run: optional POST body from a file, and a done() hook
-- that prints one JSON line (prefixed "WRKJSON ") with the counts and latency
-- percentiles, so the runner never has to parse wrk's human output.
--   METHOD=POST BODY=file.bin wrk -t1 -c64 -d5s -s wrk_json.lua URL
-- EXPECT=text (optional) counts the 200 answers whose body lacks that text as
-- "mismatches" (deploy/fleet/fleet checks every digest under failover with it).
local method = os.getenv("METHOD") or "GET"
local path = os.getenv("BODY")
wrk.method = method
if path and path ~= "" then
  local f = assert(io.open(path, "rb"))
  wrk.body = f:read("*all")
  f:close()
  wrk.headers["Content-Type"] = "application/octet-stream"
end

-- Each wrk thread runs its own copy of this script: mismatches is a global of
-- that copy, which done() (in the main copy) reads through setup()'s handles.
mismatches = 0
local expect = os.getenv("EXPECT")
if expect and expect ~= "" then
  function response(status, headers, body)
    if status == 200 and not string.find(body, expect, 1, true) then
      mismatches = mismatches + 1
    end
  end
end
local threads = {}
function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local e = summary.errors
  local mm = 0
  for _, t in ipairs(threads) do
    mm = mm + (t:get("mismatches") or 0)
  end
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"mismatches":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"lat_mean_us":%.1f,"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,"lat_max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, mm,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
