-- gcra.lua: GCRA (token bucket as one value), the twin of sluicegate/algorithms/gcra.py.
--
-- keys[1]  string "<t0> <used>": t0 = time of the last admitted request (integer µs),
--          used = units in use right after it (a float, written with %.17g so it reads back exact)
-- now      µs (integer); limit, capacity: units; period: µs; cost: units (0 = only look)
-- returns  allowed (boolean), remaining (units), reset_after (µs), retry_after (µs), write();
--          write() stores the new state and returns its t0 (refund.lua's mark)
algorithms.g = function(keys, now, limit, period, capacity, cost)
  local used, behind = 0, 0
  local state = redis.call('GET', keys[1])
  if state then
    local t0, used_then = string.match(state, '^(%S+) (%S+)$')
    t0, used_then = tonumber(t0), tonumber(used_then)
    -- A caller whose clock is behind the last writer's: no time has passed since t0, and every
    -- wait below is longer by how far behind it is.
    behind = math.max(t0 - now, 0)
    now = now + behind
    used = math.max(used_then - (now - t0) * limit / period, 0)
  end
  local wait = (used + cost - capacity) * period / limit
  local allowed = wait <= TIME_TOLERANCE_US
  local retry = 0
  if allowed then
    used = used + cost
  else
    retry = math.ceil(wait - TIME_TOLERANCE_US) + behind
  end
  local remaining = math.max(math.floor(capacity - used + TIME_TOLERANCE_US * limit / period), 0)
  local drain = used * period / limit
  local reset = 0
  if used > 0 then
    reset = math.ceil(drain - TIME_TOLERANCE_US) + behind
  end
  -- The TTL errs long (by 1 µs) so that once it has passed, the state is exactly empty.
  local ttl = math.ceil(drain) + 1 + behind
  local function write()
    redis.call('SET', keys[1], string.format('%d %.17g', now, used), 'PX', math.ceil(ttl / 1000))
    return now
  end
  return allowed, remaining, reset, retry, write
end
