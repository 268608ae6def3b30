-- gcra.lua: GCRA (token bucket as one value), the twin of sluicegate/algorithms/gcra.py.
--
-- keys[1]  string "<t0> <used>": t0 = time of the last admitted request (integer µs),
--          used = units in use right after it (a float, written with %.17g so it reads back exact)
-- now      µs (integer); limit, capacity: units; period: µs; cost: units (0 = only look)
-- returns  allowed (boolean), remaining (units), reset_after (µs), retry_after (µs), write()
algorithms.g = function(keys, now, limit, period, capacity, cost)
  local used = 0
  local state = redis.call('GET', keys[1])
  if state then
    local t0, used_then = string.match(state, '^(%S+) (%S+)$')
    t0, used_then = tonumber(t0), tonumber(used_then)
    now = math.max(now, t0) -- a clock that went back: treat it as no time passed
    used = math.max(used_then - (now - t0) * limit / period, 0)
  end
  local tolerance = capacity * 1e-12
  local allowed = used + cost <= capacity + tolerance
  local retry = 0
  if allowed then
    used = used + cost
  else
    retry = math.ceil((used + cost - capacity) * period / limit)
  end
  local remaining = math.max(math.floor(capacity - used + tolerance), 0)
  local reset = math.ceil(used * period / limit)
  local function write()
    redis.call('SET', keys[1], string.format('%d %.17g', now, used), 'PX', math.ceil(reset / 1000))
  end
  return allowed, remaining, reset, retry, write
end
