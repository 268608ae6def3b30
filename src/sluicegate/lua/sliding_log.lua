-- sliding_log.lua: the exact sliding log, the twin of sluicegate/algorithms/sliding_log.py.
--
-- keys[1]  sorted set of admitted requests: member "<seq>:<cost>", score = time (integer µs);
--          an entry counts while now < time + period
-- keys[2]  hash {used = sum of the logged costs, seq = last sequence number (keeps members unique)}
-- now      µs (integer); limit, capacity: units; period: µs; cost: units (0 = only look)
-- returns  allowed (boolean), remaining (units), reset_after (µs), retry_after (µs), write();
--          write() logs the request and returns its entry's seq (refund.lua's mark)
local function entry_cost(member)
  return tonumber(string.match(member, ':(%d+)$'))
end

algorithms.l = function(keys, now, limit, period, capacity, cost)
  local cutoff = string.format('%d', now - period)
  local used = tonumber(redis.call('HGET', keys[2], 'used') or 0)
  local expired = redis.call('ZRANGEBYSCORE', keys[1], '-inf', cutoff)
  for _, member in ipairs(expired) do
    used = used - entry_cost(member)
  end
  local allowed = used + cost <= limit
  local retry = 0
  if allowed then
    used = used + cost
  else -- wait until the oldest entries have freed enough
    local freed, needed = 0, used + cost - limit
    local live = redis.call('ZRANGEBYSCORE', keys[1], '(' .. cutoff, '+inf', 'WITHSCORES')
    for i = 1, #live, 2 do
      freed = freed + entry_cost(live[i])
      if freed >= needed then
        retry = tonumber(live[i + 1]) + period - now
        break
      end
    end
  end
  local newest -- the latest live entry, or this request when it is logged
  local last = redis.call('ZRANGE', keys[1], -1, -1, 'WITHSCORES')
  if last[2] and tonumber(last[2]) > now - period then
    newest = tonumber(last[2])
  end
  if allowed and cost > 0 then
    newest = math.max(newest or now, now)
  end
  local reset = newest and newest + period - now or 0
  local function write()
    local seq = redis.call('HINCRBY', keys[2], 'seq', 1)
    if #expired > 0 then
      redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', cutoff)
    end
    redis.call('ZADD', keys[1], string.format('%d', now), string.format('%d:%d', seq, cost))
    redis.call('HSET', keys[2], 'used', string.format('%d', used))
    local ttl = math.ceil(reset / 1000)
    redis.call('PEXPIRE', keys[1], ttl)
    redis.call('PEXPIRE', keys[2], ttl)
    return seq
  end
  return allowed, limit - used, reset, retry, write
end
