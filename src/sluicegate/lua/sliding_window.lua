-- sliding_window.lua: the two-counter sliding window approximation, the twin of
-- sluicegate/algorithms/sliding_window.py.
--
-- keys[1]  string "<window> <current> <previous>": window index and the two counts
-- now      µs (integer); limit, capacity: units; period: µs; cost: units (0 = only look)
-- returns  allowed (boolean), remaining (units), reset_after (µs), retry_after (µs), write();
--          write() stores the new state and returns its window index (refund.lua's mark)
algorithms.w = function(keys, now, limit, period, capacity, cost)
  local window, current, previous = math.floor(now / period), 0, 0
  local state = redis.call('GET', keys[1])
  if state then
    local stored_window, stored_current, stored_previous = string.match(state, '^(%d+) (%d+) (%d+)$')
    stored_window = tonumber(stored_window)
    window = math.max(window, stored_window) -- a clock behind the stored window still counts in it
    if stored_window == window then
      current, previous = tonumber(stored_current), tonumber(stored_previous)
    elseif stored_window == window - 1 then
      previous = tonumber(stored_current)
    end
  end
  local start = window * period
  local elapsed = math.max(now - start, 0)
  local weight = (period - elapsed) / period
  -- The estimate falls by previous / period units per µs: this slack is TIME_TOLERANCE_US.
  -- The counts are combined first, exactly (they are integers), so that the previous window's
  -- fading weight is not lost in the rounding of a large sum.
  local slack = previous * TIME_TOLERANCE_US / period
  local allowed = previous * weight <= limit - current - cost + slack
  local retry = 0
  if allowed then
    current = current + cost
  else
    local room = limit - current - cost
    local wait
    if room >= 0 then -- the previous window's weight alone is in the way: wait for it to fade
      wait = period - room * period / previous - (now - start)
    else -- wait for the next window, where this window's count becomes the previous one
      wait = (start + period - now) + math.max(period - (limit - cost) * period / current, 0)
    end
    retry = math.ceil(wait - TIME_TOLERANCE_US)
  end
  local remaining = math.max(math.floor(limit - current - previous * weight + slack), 0)
  local reset = 0
  if current > 0 then
    reset = start + 2 * period - now
  elseif previous > 0 then
    reset = start + period - now
  end
  local function write()
    redis.call('SET', keys[1], string.format('%d %d %d', window, current, previous),
      'PX', math.ceil(reset / 1000))
    return window
  end
  return allowed, remaining, reset, retry, write
end
