-- fixed_window.lua: fixed windows aligned to multiples of the period, the twin of
-- sluicegate/algorithms/fixed_window.py.
--
-- keys[1]  string "<window> <count>": window index (now // period) and units admitted in it
-- now      µs (integer); limit, capacity: units; period: µs; cost: units (0 = only look)
-- returns  allowed (boolean), remaining (units), reset_after (µs), retry_after (µs), write();
--          write() stores the new state and returns its window index (refund.lua's mark)
algorithms.f = function(keys, now, limit, period, capacity, cost)
  local window, count = math.floor(now / period), 0
  local state = redis.call('GET', keys[1])
  if state then
    local stored_window, stored_count = string.match(state, '^(%d+) (%d+)$')
    stored_window = tonumber(stored_window)
    window = math.max(window, stored_window) -- a clock behind the stored window still counts in it
    if stored_window == window then
      count = tonumber(stored_count)
    end
  end
  local until_end = (window + 1) * period - now
  local allowed = count + cost <= limit
  if allowed then
    count = count + cost
  end
  local retry = allowed and 0 or until_end
  local reset = count > 0 and until_end or 0
  local function write()
    redis.call('SET', keys[1], string.format('%d %d', window, count), 'PX', math.ceil(until_end / 1000))
    return window
  end
  return allowed, limit - count, reset, retry, write
end
