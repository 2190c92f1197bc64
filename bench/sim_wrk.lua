-- wrk script for `turnpike sim`: authorizations with unique references
-- (every request is a new charge committed to the journal before its answer).
-- wrk -t2 -c64 -d10s -s bench/sim_wrk.lua http://127.0.0.1:8430
local counter = 0
local tid = 0

function setup(thread)
  tid = tid + 1
  thread:set("tid", tid)
end

function init(args)
  prefix = string.format("w%d-%d-", tid or 0, math.random(1, 1000000000))
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
