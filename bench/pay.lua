-- wrk script for bench/run.sh: POST /v1/payment_intents with confirm=true,
-- each request carrying its own Idempotency-Key so every one is a new
-- payment (a repeated key would be a cheap replay, not a payment).
--
-- Environment: TURNPIKE_KEY (secret key; may be empty for the nginx
-- baseline), BENCH_RUN_ID (keeps keys unique across the warmup and the
-- measured run against the same database).
--
-- done() prints one machine-readable line starting with "BENCH " that
-- run.sh parses; wrk's own summary is printed above it.

local key = os.getenv("TURNPIKE_KEY") or ""
local run_id = os.getenv("BENCH_RUN_ID") or tostring(os.time())

local threads = {}
local next_id = 0

-- Runs in the main Lua state once per thread before it starts: hand each
-- thread a distinct id and keep the handle to read its counters in done().
function setup(thread)
   next_id = next_id + 1
   thread:set("tid", next_id)
   table.insert(threads, thread)
end

-- Per-thread state (each wrk thread has its own Lua state).
local counter = 0
local headers = nil
local prefix = ""
-- BENCH_BODY (bench/run.sh with BENCH_FLOW=saved) charges a customer's saved
-- card instead of the test token pm_card_visa.
local body = os.getenv("BENCH_BODY")
if body == nil or body == "" then
   body = "amount=1999&currency=usd&confirm=true&payment_method=pm_card_visa"
end
-- BENCH_BODIES="A|B|..." (bench/orchestration.sh's segmented routing run)
-- takes turns between several bodies, e.g. cards of different brands.
local bodies = {}
for b in string.gmatch(os.getenv("BENCH_BODIES") or "", "[^|]+") do
   table.insert(bodies, b)
end
-- Counts by HTTP status; kept as plain globals so thread:get can read them.
n200 = 0
n2xx = 0
nnon2xx = 0
n402 = 0
n409 = 0
n4xx = 0
n5xx = 0

function init(args)
   math.randomseed(os.time() * 100 + tid)
   headers = {}
   headers["Content-Type"] = "application/x-www-form-urlencoded"
   if key ~= "" then
      headers["Authorization"] = "Bearer " .. key
   end
   prefix = "bench-" .. run_id .. "-t" .. tostring(tid) .. "-"
end

-- BENCH_KEYS=uuid: random version-4 UUIDs as keys, as stripe-node sends
-- (its automatic keys), instead of a counter: keys land anywhere in the
-- idempotency index rather than at its end.
local uuid_keys = os.getenv("BENCH_KEYS") == "uuid"
local function uuid4()
   return string.format("%08x-%04x-4%03x-%04x-%06x%06x", math.random(0, 0x7fffffff),
      math.random(0, 0xffff), math.random(0, 0xfff), 0x8000 + math.random(0, 0x3fff),
      math.random(0, 0xffffff), math.random(0, 0xffffff))
end

function request()
   counter = counter + 1
   if uuid_keys then
      headers["Idempotency-Key"] = uuid4()
      if #bodies > 0 then
         return wrk.format("POST", "/v1/payment_intents", headers, bodies[counter % #bodies + 1])
      end
      return wrk.format("POST", "/v1/payment_intents", headers, body)
   end
   headers["Idempotency-Key"] = prefix .. counter
   if #bodies > 0 then
      return wrk.format("POST", "/v1/payment_intents", headers, bodies[counter % #bodies + 1])
   end
   return wrk.format("POST", "/v1/payment_intents", headers, body)
end

function response(status, hdrs, resp_body)
   if status == 200 then
      n200 = n200 + 1
   end
   if status >= 200 and status < 300 then
      n2xx = n2xx + 1
   else
      nnon2xx = nnon2xx + 1
      if status == 402 then n402 = n402 + 1
      elseif status == 409 then n409 = n409 + 1
      elseif status >= 500 then n5xx = n5xx + 1
      elseif status >= 400 then n4xx = n4xx + 1 end
   end
end

function done(summary, latency, requests)
   local t = { n200 = 0, n2xx = 0, nnon2xx = 0, n402 = 0, n409 = 0,
               n4xx = 0, n5xx = 0 }
   for _, thread in ipairs(threads) do
      for k, _ in pairs(t) do
         t[k] = t[k] + (thread:get(k) or 0)
      end
   end
   local e = summary.errors
   local sock_errors = e.connect + e.read + e.write + e.timeout
   io.write(string.format(
      "BENCH duration_us=%d requests=%d n200=%d n2xx=%d non2xx=%d " ..
      "n402=%d n409=%d n4xx=%d n5xx=%d sock_errors=%d " ..
      "p50_us=%d p90_us=%d p99_us=%d max_us=%d\n",
      summary.duration, summary.requests, t.n200, t.n2xx, t.nnon2xx,
      t.n402, t.n409, t.n4xx, t.n5xx, sock_errors,
      latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max))
end
