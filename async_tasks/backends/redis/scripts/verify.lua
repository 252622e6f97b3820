-- Check the counters of the given sessions against their indexes (dispatched tasks; the counts
-- by status are the sizes of the indexes themselves), repair any that drifted
-- (they should never: every change is one script, every re-sent write answers "done") and
-- put back in line a session whose waiting tasks were not (in its line, in its executors'
-- lines, in the indexes across sessions). With no session given, check the deployment's
-- totals (dispatched, parked) against the sum of every session's, the counts by executor (`P offered`,
-- `P xq`) against the pool and the places of delivery, `P changed` against the sessions, and
-- what each client holds (`P ctasks`, `P csessions`) against its sessions ('client <key>').
-- ARGV: 7.. sessions. Returns {session (or what else was counted), field, was, is, ...} for
-- each repair.
local repaired = {}
local function report(label, field, was, is)
  repaired[#repaired + 1] = label; repaired[#repaired + 1] = field
  repaired[#repaired + 1] = tostring(was or 0); repaired[#repaired + 1] = int(is)
end
local function fix(key, label, field, was, is)
  if (tonumber(was) or 0) ~= is then
    redis.call('HSET', key, field, int(is))
    report(label, field, was, is)
  end
end
-- A hash of counts by executor made to hold `wanted` (no field for a zero).
local function fix_by_executor(key, field, wanted)
  local flat = redis.call('HGETALL', key)
  local was = {}
  for i = 1, #flat, 2 do was[flat[i]] = tonumber(flat[i + 1]) end
  for E, n in pairs(wanted) do
    if (was[E] or 0) ~= n then
      redis.call('HSET', key, E, int(n))
      report('executor ' .. E, field, was[E], n)
    end
    was[E] = nil
  end
  for E, n in pairs(was) do
    redis.call('HDEL', key, E)
    if n ~= 0 then report('executor ' .. E, field, n, 0) end
  end
end
if #ARGV < 7 then
  local sums = {d = 0, p = 0}
  local queued, offered = {}, {}
  local function add(counts, E, n) counts[E] = (counts[E] or 0) + n end
  local held = {ctasks = {}, csessions = {}}
  local sessions = redis.call('SMEMBERS', P .. 'sessions')
  for _, S in ipairs(sessions) do
    local client = client_of(S)
    add(held.ctasks, client, redis.call('ZCARD', P .. 's:' .. S))
    add(held.csessions, client, 1)
    sums.d = sums.d + counter(P .. 'c:' .. S, 'd')
    sums.p = sums.p + redis.call('ZCARD', P .. 'w:' .. S)
    for _, E in ipairs(redis.call('SMEMBERS', P .. 'px:' .. S)) do add(queued, E, redis.call('ZCARD', line(S, E))) end
    if not redis.call('ZSCORE', P .. 'changed', S) then
      redis.call('ZADD', P .. 'changed', now_ms(), S)
      report(S, 'changed', 0, 1)
    end
  end
  if redis.call('ZCARD', P .. 'changed') > #sessions then
    for _, S in ipairs(redis.call('ZRANGE', P .. 'changed', 0, -1)) do
      if redis.call('SISMEMBER', P .. 'sessions', S) == 0 then
        redis.call('ZREM', P .. 'changed', S)
        report(S, 'changed', 1, 0)
      end
    end
  end
  local t = redis.call('HMGET', P .. 'totals', 'd', 'p')
  fix(P .. 'totals', '', 'd', t[1], sums.d)
  fix(P .. 'totals', '', 'p', t[2], sums.p)
  -- By executor: the workers that run each, and its tasks delayed or dispatched (parked: above).
  local flat = redis.call('HGETALL', P .. 'workers')
  for i = 1, #flat, 2 do
    local W = flat[i]
    if redis.call('SISMEMBER', P .. 'retired', W) == 0 then
      for _, E in ipairs(redis.call('SMEMBERS', P .. 'runs:' .. W)) do add(offered, E, 1) end
    end
    for _, id in ipairs(redis.call('SMEMBERS', P .. 'wq:' .. W)) do
      local f = redis.call('HMGET', tkey(id), '_dv', '_jw', 'executor')
      if f[1] == 'q' and f[2] == W then add(queued, cjson.decode(f[3]), 1) end
    end
  end
  for _, id in ipairs(redis.call('ZRANGE', P .. 'delayed', 0, -1)) do
    local f = redis.call('HMGET', tkey(id), '_dv', 'executor')
    if f[1] == 'd' then add(queued, cjson.decode(f[2]), 1) end
  end
  fix_by_executor(P .. 'offered', 'workers', offered)
  fix_by_executor(P .. 'xq', 'queued', queued)
  -- What each client holds, from its sessions.
  for _, name in ipairs({'ctasks', 'csessions'}) do
    local want = held[name]
    local field = name == 'ctasks' and 'tasks' or 'sessions'
    local flat = redis.call('ZRANGE', P .. name, 0, -1, 'WITHSCORES')
    for i = 1, #flat, 2 do
      if not want[flat[i]] then want[flat[i]] = 0 end
    end
    for client, is in pairs(want) do
      local was = tonumber(redis.call('ZSCORE', P .. name, client)) or 0
      if was ~= is then
        if is == 0 then redis.call('ZREM', P .. name, client) else redis.call('ZADD', P .. name, is, client) end
        report('client ' .. client, field, int(was), is)
      end
    end
  end
  return repaired
end
-- Put a task that is missing from the indexes across sessions (written before they
-- existed) in them.
local function index_everywhere(ID, order)
  local f = redis.call('HMGET', tkey(ID), 'status', 'executor', 'tags', 'deadLettered')
  redis.call('ZADD', P .. 'all', order, ID)
  redis.call('ZADD', P .. 'as:' .. unquote(f[1]), order, ID)
  redis.call('ZADD', P .. 'ae:' .. cjson.decode(f[2]), order, ID)
  for _, tag in ipairs(cjson.decode(f[3] or '[]')) do redis.call('ZADD', P .. 'ag:' .. tag, order, ID) end
  if f[4] == 'true' then redis.call('ZADD', P .. 'ad', order, ID) end
end
for i = 7, #ARGV do
  local S = ARGV[i]
  local c = P .. 'c:' .. S
  local was = redis.call('HGET', c, 'd')
  local dispatched = 0
  for _, status in ipairs({'pending', 'running'}) do
    for _, id in ipairs(redis.call('ZRANGE', P .. 'ss:' .. S .. ':' .. status, 0, -1)) do
      if redis.call('HGET', tkey(id), '_dv') == 'q' then dispatched = dispatched + 1 end
    end
  end
  if redis.call('EXISTS', c) == 1 then fix(c, S, 'd', was, dispatched) end
  local tasks = P .. 's:' .. S
  local held = redis.call('ZCARD', tasks)
  local indexed = held > 0 and redis.call('ZINTERCARD', 2, tasks, P .. 'all') or 0
  if indexed < held then
    local flat = redis.call('ZRANGE', tasks, 0, -1, 'WITHSCORES')
    for j = 1, #flat, 2 do
      if not redis.call('ZSCORE', P .. 'all', flat[j]) then index_everywhere(flat[j], flat[j + 1]) end
    end
    report(S, 'indexed', indexed, held)
  end
  -- Its waiting tasks in their executors' lines.
  local parked, lined = redis.call('ZCARD', P .. 'w:' .. S), 0
  for _, E in ipairs(redis.call('SMEMBERS', P .. 'px:' .. S)) do lined = lined + redis.call('ZCARD', line(S, E)) end
  if lined ~= parked then
    for _, E in ipairs(redis.call('SMEMBERS', P .. 'px:' .. S)) do redis.call('DEL', line(S, E)) end
    local flat = redis.call('ZRANGE', P .. 'w:' .. S, 0, -1, 'WITHSCORES')
    for j = 1, #flat, 2 do
      local E = executor_of(flat[j])
      redis.call('ZADD', line(S, E), flat[j + 1], flat[j])
      redis.call('SADD', P .. 'px:' .. S, E)
    end
    report(S, 'lined', lined, parked)
  end
  place_session(S)
end
return repaired
