-- Create a task (pending), with the session's quotas, the server-wide caps and the
-- Idempotency-Key checked in the same step; with `deliver`, it is handed to delivery in
-- that step too (parked, or delayed until `due`), so a task that was created and should run
-- always will.
-- ARGV: 7 session, 8 task id, 9 max active tasks per session, 10 Idempotency-Key ('' none),
-- 11 its fingerprint (hex), 12 max tasks (''), 13 max sessions (''), 14 deliver ('1'),
-- 15 due ms ('' now), 16.. field name / JSON value pairs.
-- Returns {'created', JSON}, {'replay', JSON}, {'conflict', task id}, {'gone', task id},
-- {'quota', active}, {'sessions', held} or {'tasks', held}.
local S, ID = ARGV[7], ARGV[8]
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
if redis.call('SISMEMBER', P .. 'sessions', S) == 1 then
  local counts = redis.call('HMGET', P .. 'c:' .. S, 'pending', 'running')
  local active = (tonumber(counts[1]) or 0) + (tonumber(counts[2]) or 0)
  if active >= tonumber(ARGV[9]) then return {'quota', int(active)} end
elseif ARGV[13] ~= '' then
  local held = redis.call('SCARD', P .. 'sessions')
  if held >= tonumber(ARGV[13]) then return {'sessions', int(held)} end
end
if ARGV[12] ~= '' then
  local held = 0
  for _, name in ipairs({'pending', 'running', 'completed', 'failed', 'cancelled'}) do
    held = held + counter(P .. 'totals', name)
  end
  if held >= tonumber(ARGV[12]) then return {'tasks', int(held)} end
end
local now = int(now_ms())
local order = redis.call('INCR', P .. 'seq')
local fields = {'_s', S, '_sq', int(order), 'status', '"pending"', 'progress', '0', 'currentStep', 'null',
  'currentStepDescription', 'null', 'result', 'null', 'error', 'null', 'attempts', '0', 'autoRetries', '0',
  'deadLettered', 'false', 'createdAt', now, 'updatedAt', now, 'startedAt', 'null', 'completedAt', 'null',
  'scheduledAt', 'null', '_dv', ''}
for i = 16, #ARGV do fields[#fields + 1] = ARGV[i] end
if OP ~= '' then fields[#fields + 1] = '_op'; fields[#fields + 1] = OP end
redis.call('HSET', key, unpack(fields))
local executor, tags = '', {}
for i = 16, #ARGV, 2 do
  if ARGV[i] == 'executor' then executor = cjson.decode(ARGV[i + 1])
  elseif ARGV[i] == 'tags' then tags = cjson.decode(ARGV[i + 1]) end
end
index_task(S, ID, order, executor, tags)
if ik ~= '' then remember_key(S, ik, ID .. '|' .. ARGV[11]) end
redis.call('RPUSH', P .. 'h:' .. ID, '{"at":' .. now .. ',"status":"pending","attempt":1,"reason":"created"}')
redis.call('ZADD', P .. 's:' .. S, order, ID)
redis.call('ZADD', P .. 'ss:' .. S .. ':pending', order, ID)
redis.call('ZADD', P .. 'all', order, ID)
redis.call('ZADD', P .. 'as:pending', order, ID)
redis.call('ZADD', P .. 'u:' .. S, now, ID)
redis.call('HINCRBY', P .. 'c:' .. S, 'pending', 1)
redis.call('HINCRBY', P .. 'totals', 'pending', 1)
redis.call('SADD', P .. 'sessions', S)
redis.call('HDEL', P .. 'c:' .. S, 'forgetting')
touch(S)
publish(S, event_fields(key), 'transition', 'null')
if ARGV[14] == '1' then
  deliver(S, ID, tonumber(ARGV[15]))
  pump(8)
end
return {'created', record_json(ID)}
