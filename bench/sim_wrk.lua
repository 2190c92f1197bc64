-- wrk script for `turnpike sim`: authorizations with unique references
-- (every request is a new charge committed to the journal before its answer).
-- wrk -t2 -c64 -d10s -s bench/sim_wrk.lua http://127.0.0.1:8430
local counter = 0
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  -- tid is set by setup() in this thread's Lua state; the time keeps runs apart.
  prefix = string.format("w%s-%d-", tostring(tid), os.time())
end

function request()
  counter = counter + 1
  local ref = prefix .. counter
  local body = '{"reference":"' .. ref .. '","payment":"pi_' .. ref .. '","amount":1000,"currency":"usd",' ..
    '"capture":true,"card":{"number":"4242424242424242","exp_month":12,"exp_year":2034,"cvc":"123"}}'
  return wrk.format("POST", "/p/bench/v1/authorizations", {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  if status ~= 200 then
    errors = (errors or 0) + 1
  end
end
