-- decide.lua: decide one or many (key, policy, cost) items all-or-nothing in one call, or
-- (batch mode) several independent groups of items, each all-or-nothing on its own.
-- The algorithm files are loaded above this one; each adds a function to `algorithms`.
--
-- KEYS     the state keys of every item, in item order (2 for sliding-log, 1 otherwise)
-- One group (the common case):
--   ARGV[1]  now as integer µs, or '' to use the server's TIME (the default: nodes with skewed
--            clocks agree because they all read this one clock)
--   ARGV[2]  '1' to write the new state when every item is allowed, '0' to only look (peek)
--   ARGV[3…] five per item: algorithm code (g, l, w or f), limit (units), period (µs),
--            capacity (units), cost (units)
--   returns  {1 if every item is allowed else 0, then five integers per item: allowed (1|0),
--            remaining (units), reset_after (µs), retry_after (µs), mark}
-- Batch mode (AsyncRedisStore coalescing concurrent decisions into one call):
--   ARGV[1]  the number of groups
--   ARGV[2]  'b'
--   ARGV[3…] per group: now (as above), commit ('1'|'0'), item count, then five per item
--   returns  each group's reply (as above), one after another
--   Groups are decided in order, each reading the state its predecessors wrote: the result is
--   exactly that of one call per group, made one after another (TIME is read once per call).
-- If any item of a group is denied nothing of it is written, and each allowed item reports its
-- state as it stands. mark is what the item's write left for refund.lua to find (gcra: its t0;
-- sliding-log: its entry's seq; the windows: the window index); 0 when nothing was written.
if redis.replicate_commands then
  redis.replicate_commands() -- Redis < 5: allow writes after TIME (later versions always do)
end

local server_now
local function clock(arg)
  local now = tonumber(arg)
  if now then
    return now
  end
  if not server_now then
    local time = redis.call('TIME')
    server_now = tonumber(time[1]) * 1000000 + tonumber(time[2])
  end
  return server_now
end

-- Decides the `count` items whose ARGV start at `arg` and whose KEYS start at `next_key`,
-- appends the group's reply to `reply`, and returns the ARGV and KEYS indexes after them.
local function decide(now, commit, arg, next_key, count, reply)
  local items, all_allowed = {}, true
  for i = arg, arg + 5 * (count - 1), 5 do
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

  reply[#reply + 1] = all_allowed and 1 or 0
  for _, item in ipairs(items) do
    if all_allowed then
      if commit then
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
  return arg + 5 * count, next_key
end

local reply = {}
if ARGV[2] == 'b' then
  local arg, next_key = 3, 1
  for _ = 1, tonumber(ARGV[1]) do
    local now, commit, count = clock(ARGV[arg]), ARGV[arg + 1] == '1', tonumber(ARGV[arg + 2])
    arg, next_key = decide(now, commit, arg + 3, next_key, count, reply)
  end
else
  decide(clock(ARGV[1]), ARGV[2] == '1', 3, 1, (#ARGV - 2) / 5, reply)
end
return reply
