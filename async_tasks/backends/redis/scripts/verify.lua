-- Check the counters of the given sessions against their indexes, repair any that drifted
-- (they should never: every change is one script, every re-sent write answers "done") and
-- put back in line a session whose waiting tasks were not. With no session given, check the
-- deployment's totals against the sum of every session's counts, and what each client holds
-- (`P ctasks`, `P csessions`) against its sessions.
-- ARGV: 7.. sessions. Returns {session (or '' for the totals, 'client <key>' for a client),
-- field, was, is, ...} for each repair.
local STATUSES = {'pending', 'running', 'completed', 'failed', 'cancelled'}
local repaired = {}
local function fix(key, label, field, was, is)
  if (tonumber(was) or 0) ~= is then
    redis.call('HSET', key, field, int(is))
    repaired[#repaired + 1] = label; repaired[#repaired + 1] = field
    repaired[#repaired + 1] = tostring(was or 0); repaired[#repaired + 1] = int(is)
  end
end
if #ARGV < 7 then
  local sums = {d = 0}
  for _, status in ipairs(STATUSES) do sums[status] = 0 end
  local held = {ctasks = {}, csessions = {}}
  for _, S in ipairs(redis.call('SMEMBERS', P .. 'sessions')) do
    local c = redis.call('HMGET', P .. 'c:' .. S, 'd', unpack(STATUSES))
    sums.d = sums.d + (tonumber(c[1]) or 0)
    for i, status in ipairs(STATUSES) do sums[status] = sums[status] + (tonumber(c[i + 1]) or 0) end
    local client = client_of(S)
    held.ctasks[client] = (held.ctasks[client] or 0) + redis.call('ZCARD', P .. 's:' .. S)
    held.csessions[client] = (held.csessions[client] or 0) + 1
  end
  local t = redis.call('HMGET', P .. 'totals', 'd', unpack(STATUSES))
  fix(P .. 'totals', '', 'd', t[1], sums.d)
  for i, status in ipairs(STATUSES) do fix(P .. 'totals', '', status, t[i + 1], sums[status]) end
  for _, name in ipairs({'ctasks', 'csessions'}) do
    local want = held[name]
    local field = name == 'ctasks' and 'tasks' or 'sessions'
    local flat = redis.call('ZRANGE', P .. name, 0, -1, 'WITHSCORES')
    local recorded = {}
    for i = 1, #flat, 2 do recorded[flat[i]] = tonumber(flat[i + 1]) end
    for client, was in pairs(recorded) do
      if not want[client] then want[client] = 0 end
    end
    for client, is in pairs(want) do
      local was = recorded[client] or 0
      if was ~= is then
        if is == 0 then redis.call('ZREM', P .. name, client) else redis.call('ZADD', P .. name, is, client) end
        repaired[#repaired + 1] = 'client ' .. client; repaired[#repaired + 1] = field
        repaired[#repaired + 1] = int(was); repaired[#repaired + 1] = int(is)
      end
    end
  end
  return repaired
end
for i = 7, #ARGV do
  local S = ARGV[i]
  local c = P .. 'c:' .. S
  local was = redis.call('HMGET', c, 'd', unpack(STATUSES))
  local dispatched = 0
  for _, status in ipairs({'pending', 'running'}) do
    for _, id in ipairs(redis.call('ZRANGE', P .. 'ss:' .. S .. ':' .. status, 0, -1)) do
      if redis.call('HGET', tkey(id), '_dv') == 'q' then dispatched = dispatched + 1 end
    end
  end
  if redis.call('EXISTS', c) == 1 then
    fix(c, S, 'd', was[1], dispatched)
    for j, status in ipairs(STATUSES) do
      fix(c, S, status, was[j + 1], redis.call('ZCARD', P .. 'ss:' .. S .. ':' .. status))
    end
  end
  place_session(S)
end
return repaired
