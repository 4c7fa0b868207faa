-- wrk script for bench/run: optional POST body from a file, and a done() hook
-- that prints one JSON line (prefixed "WRKJSON ") with the counts and latency
-- percentiles, so the runner never has to parse wrk's human output.
--   METHOD=POST BODY=file.bin wrk -t1 -c64 -d5s -s wrk_json.lua URL
local method = os.getenv("METHOD") or "GET"
local path = os.getenv("BODY")
wrk.method = method
if path and path ~= "" then
  local f = assert(io.open(path, "rb"))
  wrk.body = f:read("*all")
  f:close()
  wrk.headers["Content-Type"] = "application/octet-stream"
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,' ..
    '"lat_mean_us":%.1f,"lat_p50_us":%d,"lat_p90_us":%d,"lat_p99_us":%d,"lat_max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
