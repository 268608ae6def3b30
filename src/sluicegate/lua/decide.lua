-- decide.lua: decide one or many (key, policy, cost) items all-or-nothing in one call.
-- The algorithm files are loaded above this one; each adds a function to `algorithms`.
--
-- KEYS     the state keys of every item, in item order (2 for sliding-log, 1 otherwise)
-- ARGV[1]  now as integer µs, or '' to use the server's TIME (the default: nodes with skewed
--          clocks agree because they all read this one clock)
-- ARGV[2]  '1' to write the new state when every item is allowed, '0' to only look (peek)
-- ARGV[3…] five per item: algorithm code (g, l, w or f), limit (units), period (µs),
--          capacity (units), cost (units)
-- returns  {1 if every item is allowed else 0, then five integers per item: allowed (1|0),
--          remaining (units), reset_after (µs), retry_after (µs), mark}
-- If any item is denied nothing is written, and each allowed item reports its state as it stands.
-- mark is what the item's write left for refund.lua to find (gcra: its t0; sliding-log: its
-- entry's seq; the windows: the window index); 0 when nothing was written.
if redis.replicate_commands then
  redis.replicate_commands() -- Redis < 5: allow writes after TIME (later versions always do)
end

local now = tonumber(ARGV[1])
if not now then
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end

local items, all_allowed, next_key = {}, true, 1
for i = 3, #ARGV, 5 do
  local item = {code = ARGV[i], keys = {KEYS[next_key]}, limit = tonumber(ARGV[i + 1]),
    period = tonumber(ARGV[i + 2]), capacity = tonumber(ARGV[i + 3])}
  if item.code == 'l' then
    item.keys[2] = KEYS[next_key + 1]
  end
  next_key = next_key + #item.keys
  item.allowed, item.remaining, item.reset, item.retry, item.write = algorithms[item.code](
    item.keys, now, item.limit, item.period, item.capacity, tonumber(ARGV[i + 4]))
  all_allowed = all_allowed and item.allowed
  items[#items + 1] = item
end

local reply = {all_allowed and 1 or 0}
for _, item in ipairs(items) do
  if all_allowed then
    if ARGV[2] == '1' then
      item.mark = item.write()
    end
  elseif item.allowed then -- nothing was consumed: report the state as it stands (cost 0)
    local _
    _, item.remaining, item.reset = algorithms[item.code](
      item.keys, now, item.limit, item.period, item.capacity, 0)
  end
  reply[#reply + 1] = item.allowed and 1 or 0
  reply[#reply + 1] = item.remaining
  reply[#reply + 1] = item.reset
  reply[#reply + 1] = item.retry
  reply[#reply + 1] = item.mark or 0
end
return reply
