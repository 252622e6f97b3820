-- Create a task (pending), with the session's quotas, the client's budgets, the server-wide
-- caps and the Idempotency-Key checked in the same step; where a budget or a full pool would
-- refuse, room is made in that step when it can be (see `make_room`); with `deliver`, the task
-- is handed to delivery in that step too (parked, or delayed until `due`), so a task that was
-- created and should run always will.
-- ARGV: 7 session, 8 task id, 9 max active tasks per session, 10 Idempotency-Key ('' none),
-- 11 its fingerprint (hex), 12 max tasks (''), 13 max sessions (''), 14 deliver ('1'),
-- 15 due ms ('' now), 16 the client asking ('': the session is its own), 17 max tasks per
-- client (''), 18 max sessions per client (''), 19.. field name / JSON value pairs.
-- Returns {'created', JSON, removed}, {'replay', JSON}, {'conflict', task id}, {'gone', task id},
-- {'quota', active}, {'sessions', held}, {'tasks', held}, {'client_sessions', held} or
-- {'client_tasks', held}.
local S, ID = ARGV[7], ARGV[8]
local FIELDS = 19
-- Entries of an index looked at before making room elsewhere (a script holds Redis).
local LOOKS = 64
local key = tkey(ID)
-- A create re-sent after its reply was lost finds its own task: the same answer as before.
if redis.call('HGET', key, '_s') == S then return {'created', record_json(ID)} end
local ik = ARGV[10]
if ik ~= '' then
  local seen = redis.call('HGET', P .. 'i:' .. S, ik)
  if seen then
    local sep = string.find(seen, '|', 1, true)
    local other, fingerprint = string.sub(seen, 1, sep - 1), string.sub(seen, sep + 1)
    local alive = redis.call('HGET', tkey(other), '_s') == S
    local window_open = KEY_WINDOW and tonumber(redis.call('ZSCORE', P .. 'ik:' .. S, ik) or 0) > now_ms() - KEY_WINDOW
    if alive or window_open then
      if fingerprint ~= ARGV[11] then return {'conflict', other} end
      if not alive then return {'gone', other} end
      return {'replay', record_json(other)}
    end
    -- The key's task is gone and its window over (or there is none): the key is free.
    redis.call('HDEL', P .. 'i:' .. S, ik)
    redis.call('ZREM', P .. 'ik:' .. S, ik)
  end
end
local new = redis.call('SISMEMBER', P .. 'sessions', S) == 0
if not new then
  local active = in_status(S, 'pending') + in_status(S, 'running')
  if active >= tonumber(ARGV[9]) then return {'quota', int(active)} end
end

-- -- making room (as `MemoryTaskStore._admit`: see `CreateLimits`) --------------------------

local function active_of(session)
  return in_status(session, 'pending'), in_status(session, 'running')
end
local function idle(session)
  local pending, running = active_of(session)
  return pending + running == 0
end
-- Nothing of it runs or was ever started.
local function unwatched(session)
  local pending, running = active_of(session)
  return running == 0 and pending == redis.call('ZCARD', P .. 'u:' .. session)
end
-- The least recently changed session of zset `index` (by last change) that `fits`, not in `gone`.
local function least_recent(index, fits, gone)
  for _, session in ipairs(redis.call('ZRANGE', index, 0, LOOKS - 1)) do
    if redis.call('SISMEMBER', P .. 'sessions', session) == 0 then
      redis.call('ZREM', index, session)  -- (never left behind: every change is one script)
    elseif not gone[session] and session ~= S and fits(session) then
      return session
    end
  end
  return nil
end
-- The first task of zset `index` whose session is not in `gone`.
local function first_task(index, gone)
  for _, id in ipairs(redis.call('ZRANGE', index, 0, LOOKS - 1)) do
    local session = redis.call('HGET', tkey(id), '_s')
    if session and not gone[session] then return id end
  end
  return nil
end
-- The clients holding more than ``mine + 1`` in counter zset `name`, the largest first.
local function larger_than(name, mine, me)
  local found = {}
  for _, client in ipairs(redis.call('ZRANGE', P .. name, '+inf', '(' .. int(mine + 1), 'BYSCORE', 'REV', 'LIMIT', 0, 8)) do
    if client ~= me then found[#found + 1] = client end
  end
  return found
end

local CL = ARGV[16]
if not new then CL = client_of(S) elseif CL == '' then CL = S end
local own_sessions = tonumber(redis.call('ZSCORE', P .. 'csessions', CL)) or 0
local own_tasks = tonumber(redis.call('ZSCORE', P .. 'ctasks', CL)) or 0
local sessions_held = redis.call('SCARD', P .. 'sessions')
local tasks_held = redis.call('ZCARD', P .. 'all')
local evict_sessions, evict_tasks, gone = {}, {}, {}
local function plan_session(session)
  evict_sessions[#evict_sessions + 1] = session
  gone[session] = true
  local n = redis.call('ZCARD', P .. 's:' .. session)
  tasks_held = tasks_held - n
  sessions_held = sessions_held - 1
  return n
end
if new and ARGV[18] ~= '' and own_sessions >= tonumber(ARGV[18]) then
  local victim = least_recent(P .. 'cs:' .. CL, idle, gone)
  if not victim then return {'client_sessions', int(own_sessions)} end
  own_tasks = own_tasks - plan_session(victim)
  own_sessions = own_sessions - 1
end
if ARGV[17] ~= '' and own_tasks >= tonumber(ARGV[17]) then
  local victim = first_task(P .. 'cf:' .. CL, gone)
  if not victim then return {'client_tasks', int(own_tasks)} end
  evict_tasks[#evict_tasks + 1] = victim
  own_tasks, tasks_held = own_tasks - 1, tasks_held - 1
end
if new and ARGV[13] ~= '' and sessions_held >= tonumber(ARGV[13]) then
  local victim
  for _, other in ipairs(larger_than('csessions', own_sessions, CL)) do
    victim = least_recent(P .. 'cs:' .. other, unwatched, gone)
    if victim then break end
  end
  -- Failing that, an idle session never blocks a new one (unless it is the one asking that
  -- holds the most).
  victim = victim or least_recent(P .. 'changed', function(session)
    return idle(session) and (tonumber(redis.call('ZSCORE', P .. 'csessions', client_of(session))) or 0) > own_sessions
  end, gone)
  if not victim then return {'sessions', int(sessions_held)} end
  plan_session(victim)
end
if ARGV[12] ~= '' and tasks_held >= tonumber(ARGV[12]) then
  local victim
  for _, other in ipairs(larger_than('ctasks', own_tasks, CL)) do
    victim = first_task(P .. 'cu:' .. other, gone) or first_task(P .. 'cf:' .. other, gone)
    if victim then break end
  end
  if not victim then return {'tasks', int(tasks_held)} end
  evict_tasks[#evict_tasks + 1] = victim
end
for _, session in ipairs(evict_sessions) do
  for _, id in ipairs(redis.call('ZRANGE', P .. 's:' .. session, 0, -1)) do drop(session, id, 'evicted') end
  forget_session_if_empty(session)
  publish_ended(session, 'evicted')
end
for _, id in ipairs(evict_tasks) do
  local session = redis.call('HGET', tkey(id), '_s')
  if session then
    drop(session, id, 'evicted')
    forget_session_if_empty(session)
  end
end
-- (Making room may have emptied this very session: it is then made again.)
if #evict_sessions > 0 or #evict_tasks > 0 then new = redis.call('SISMEMBER', P .. 'sessions', S) == 0 end

local now = int(now_ms())
-- Two numbers of the sequence: the task's creation order, then its event's.
local order = redis.call('INCRBY', P .. 'seq', 2) - 1
local fields = {'_s', S, '_sq', int(order), 'status', '"pending"', 'progress', '0', 'currentStep', 'null',
  'currentStepDescription', 'null', 'result', 'null', 'error', 'null', 'attempts', '0', 'autoRetries', '0',
  'deadLettered', 'false', 'createdAt', now, 'updatedAt', now, 'startedAt', 'null', 'completedAt', 'null',
  'scheduledAt', 'null', '_dv', ''}
for i = FIELDS, #ARGV do fields[#fields + 1] = ARGV[i] end
if OP ~= '' then fields[#fields + 1] = '_op'; fields[#fields + 1] = OP end
redis.call('HSET', key, unpack(fields))
local executor, tags = '', {}
-- The event's fields, as written (`event_fields` would read them back).
local r = {status = '"pending"', progress = '0', currentStep = 'null', currentStepDescription = 'null',
  updatedAt = now, error = 'null', result = 'null', attempts = '0'}
for i = FIELDS, #ARGV, 2 do
  local name = ARGV[i]
  if name == 'executor' then executor = cjson.decode(ARGV[i + 1])
  elseif name == 'tags' then tags = cjson.decode(ARGV[i + 1]) end
  if name == 'id' or name == 'sessionKey' or name == 'executor' or name == 'name' then r[name] = ARGV[i + 1] end
end
index_task(S, ID, order, executor, tags)
if ik ~= '' then remember_key(S, ik, ID .. '|' .. ARGV[11]) end
redis.call('RPUSH', P .. 'h:' .. ID, '{"at":' .. now .. ',"status":"pending","attempt":1,"reason":"created"}')
redis.call('ZADD', P .. 's:' .. S, order, ID)
redis.call('ZADD', P .. 'ss:' .. S .. ':pending', order, ID)
redis.call('ZADD', P .. 'all', order, ID)
redis.call('ZADD', P .. 'as:pending', order, ID)
redis.call('ZADD', P .. 'u:' .. S, now, ID)
if new then
  redis.call('HSET', P .. 'c:' .. S, 'cl', CL)
  CLIENTS[S] = CL
  client_count('csessions', CL, 1)
end
redis.call('SADD', P .. 'sessions', S)
client_count('ctasks', CL, 1)
redis.call('ZADD', P .. 'cu:' .. CL, order, ID)
redis.call('HDEL', P .. 'c:' .. S, 'forgetting')
touch(S)
publish(S, r, 'transition', 'null', order + 1)
if ARGV[14] == '1' then
  deliver(S, ID, tonumber(ARGV[15]))
  pump(8)
end
return {'created', record_json(ID), REMOVED}
