-- wrk script for bench/registry-reads: cycles through the request paths listed
-- in a file (one per line), optionally with a bearer token, an Accept and an
-- Accept-Encoding header, and prints one JSON line of results at the end.
--
-- Usage: wrk ... -s cycle.lua URL -- PATHS_FILE [TOKEN] [ACCEPT] [ENCODING]
-- An empty TOKEN, ACCEPT or ENCODING leaves that header out.

local thread_count = 0

function setup(thread)
  thread:set("thread_index", thread_count)
  thread_count = thread_count + 1
end

local requests = {}
local position = 0

function init(args)
  local paths_file = args[1]
  local token = args[2] or ""
  local accept = args[3] or ""
  local encoding = args[4] or ""
  local headers = {}
  if token ~= "" then
    headers["Authorization"] = "Bearer " .. token
  end
  if accept ~= "" then
    headers["Accept"] = accept
  end
  if encoding ~= "" then
    headers["Accept-Encoding"] = encoding
  end
  for path in io.lines(paths_file) do
    if path ~= "" then
      -- Formatted once here: building each request in Lua would cost the
      -- load generator more CPU than the fastest servers spend answering it.
      requests[#requests + 1] = wrk.format("GET", path, headers)
    end
  end
  if #requests == 0 then
    error("cycle.lua: no paths in " .. tostring(paths_file))
  end
  -- Threads start at different points of the list, so they do not request
  -- the same package at the same moment.
  position = (thread_index or 0) * math.floor(#requests / 2)
end

function request()
  position = position % #requests + 1
  return requests[position]
end

function done(summary, latency, requests_stats)
  local errors = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,' ..
    '"latency_mean_us":%.1f,"latency_p50_us":%d,"latency_p99_us":%d,"latency_max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, errors.connect, errors.read,
    errors.write, errors.status, errors.timeout,
    latency.mean, latency:percentile(50.0), latency:percentile(99.0), latency.max))
end
