-- wrk's script for `make bench`: POST /v1/orders with a JSON body, and an
-- Idempotency-Key that is new for every request ("unique", the first-request
-- path) or the same for all ("same", the replay and conflict paths).
-- Arguments after `--`: mode, key (a prefix for "unique"), body, the
-- Authorization header value ("" for none), and the path.

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  mode, key, body, authorization, path = args[1], args[2], args[3], args[4], args[5]
  n = 0
end

function request()
  n = n + 1
  local headers = { ["Content-Type"] = "application/json" }
  if mode == "unique" then
    headers["Idempotency-Key"] = string.format("%s-%d-%010d", key, tid, n)
  else
    headers["Idempotency-Key"] = key
  end
  if authorization ~= "" then
    headers["Authorization"] = authorization
  end
  return wrk.format("POST", path, headers, body)
end
