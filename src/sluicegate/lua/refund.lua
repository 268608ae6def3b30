-- refund.lua: give back what one committed decide.lua call consumed in this slot, because the
-- Redis Cluster hit_all it belonged to was denied in another slot (sluicegate/stores/cluster.py).
-- The algorithm files are loaded above this one; they report the state after the refund.
--
-- KEYS     the state keys of the items to refund, in item order, as decide.lua took them
-- ARGV[1]  now as integer µs, or '' to use the server's TIME (only for the report)
-- ARGV[2…] six per item: algorithm code (g, l, w or f), limit (units), period (µs),
--          capacity (units), cost (units), mark (what decide.lua returned for the item)
-- returns  decide.lua's reply for a denied call: {0, then five integers per item: 1, remaining
--          (units), reset_after (µs), 0, 0}, each item's state as it stands after the refund
--
-- A refund takes back the call's own units and never any other call's, whatever ran between
-- the commit and the refund; state that has expired or moved on is left alone. State that the
-- refund empties is deleted, as if it had never been written. Other TTLs are kept: a refund
-- only shrinks state, so they err long, which changes no decision.
local refunds = {}

-- Store a string state again, or delete it when nothing is left in it.
local function put(key, empty, ...)
  if empty then
    redis.call('DEL', key)
  else
    redis.call('SET', key, string.format(...), 'KEEPTTL')
  end
end

-- gcra: used -= cost. If another call wrote after this one (t0 moved past the mark), the part of
-- the cost that may have drained before that write is not given back: never more than the call
-- still holds, and exactly the cost when nothing wrote in between.
refunds.g = function(keys, limit, period, cost, mark)
  local state = redis.call('GET', keys[1])
  if state then
    local t0, used = string.match(state, '^(%S+) (%S+)$')
    t0, used = tonumber(t0), tonumber(used)
    used = math.max(used - math.max(cost - math.max(t0 - mark, 0) * limit / period, 0), 0)
    put(keys[1], used == 0, '%d %.17g', t0, used)
  end
end

-- fixed-window: count -= cost while the stored window is still the call's window.
refunds.f = function(keys, limit, period, cost, mark)
  local state = redis.call('GET', keys[1])
  if state then
    local window, count = string.match(state, '^(%d+) (%d+)$')
    if tonumber(window) == mark then
      count = math.max(tonumber(count) - cost, 0)
      put(keys[1], count == 0, '%d %d', mark, count)
    end
  end
end

-- sliding-window: current -= cost in the call's window; once the next window has begun, the
-- call's units are in previous.
refunds.w = function(keys, limit, period, cost, mark)
  local state = redis.call('GET', keys[1])
  if state then
    local window, current, previous = string.match(state, '^(%d+) (%d+) (%d+)$')
    window, current, previous = tonumber(window), tonumber(current), tonumber(previous)
    if window == mark then
      current = math.max(current - cost, 0)
    elseif window == mark + 1 then
      previous = math.max(previous - cost, 0)
    else
      return
    end
    put(keys[1], current == 0 and previous == 0, '%d %d %d', window, current, previous)
  end
end

-- sliding-log: remove the call's own entry "<seq>:<cost>" and its cost from used; an entry that
-- another call already expired from the log was already taken out of used by that call. used
-- is the sum of the entries in the log, so at 0 the log is empty (Redis removed the key).
refunds.l = function(keys, limit, period, cost, mark)
  if redis.call('ZREM', keys[1], string.format('%d:%d', mark, cost)) == 1 then
    if redis.call('HINCRBY', keys[2], 'used', -cost) <= 0 then
      redis.call('DEL', keys[2])
    end
  end
end

local now = tonumber(ARGV[1])
if not now then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end

local reply, next_key = {0}, 1
for i = 2, #ARGV, 6 do
  local code, keys = ARGV[i], {KEYS[next_key]}
  if code == 'l' then
    keys[2] = KEYS[next_key + 1]
  end
  next_key = next_key + #keys
  local limit, period, capacity = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3])
  refunds[code](keys, limit, period, tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5]))
  local _, remaining, reset = algorithms[code](keys, now, limit, period, capacity, 0)
  reply[#reply + 1] = 1
  reply[#reply + 1] = remaining
  reply[#reply + 1] = reset
  reply[#reply + 1] = 0
  reply[#reply + 1] = 0
end
return reply
