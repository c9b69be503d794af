-- wrk's script for `make bench`: POST /v1/orders with a JSON body, and an
-- Idempotency-Key that is new for every request ("unique", the first-request
-- path) or the same for all ("same", the replay and conflict paths).
-- Arguments after `--`: mode, key (a prefix for "unique"), body, the
-- Authorization header value ("" for none), the path, and optionally a file
-- of bodies, one per line, sent in turn instead of `body` (ChargeOnce's
-- first requests: each a new order, since a new key for an order already
-- paid gets that order's answer without a forward).

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  mode, key, body, authorization, path = args[1], args[2], args[3], args[4], args[5]
  bodies = {}
  if args[6] and args[6] ~= "" then
    for line in io.lines(args[6]) do
      bodies[#bodies + 1] = line
    end
  end
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
  local sent = body
  if #bodies > 0 then
    sent = bodies[((n - 1) % #bodies) + 1]
  end
  return wrk.format("POST", path, headers, sent)
end
