-- What one `/status` poll answers, in one step (`RedisReads.poll`): the task's status fields
-- only (never params, result, history or logs), and for a task waiting in its session's line
-- or running what its outlook needs: its place in line (as `position.lua` counts it), how
-- many of the session's tasks run now, and its executor's recent run times.
-- ARGV: 7 session, 8 task id, 9 how many run times to read.
-- Returns nil (no such task in the session) or {JSON, place (nil: not in line), running,
-- run times}.
local S, ID = ARGV[7], ARGV[8]
local v = redis.call('HMGET', tkey(ID), '_s', '_dv', 'id', 'sessionKey', 'executor', 'name', 'status', 'progress',
  'currentStep', 'currentStepDescription', 'error', 'startedAt', 'completedAt', 'scheduledAt')
if v[1] ~= S then return false end
local status, place, executor = v[7], v[2], v[5]
local json = '{"params":null,"id":' .. v[3] .. ',"sessionKey":' .. v[4] .. ',"executor":' .. executor ..
  ',"name":' .. v[6] .. ',"status":' .. status .. ',"progress":' .. v[8] .. ',"currentStep":' .. v[9] ..
  ',"currentStepDescription":' .. v[10] .. ',"error":' .. v[11] .. ',"startedAt":' .. v[12] ..
  ',"completedAt":' .. v[13] .. ',"scheduledAt":' .. v[14] .. ',"waitingReason":' ..
  waiting_reason(status, place, executor) .. '}'
local position, running = false, 0
if status == '"pending"' and (place == 'q' or place == 'p') then
  running = in_status(S, 'running')
  if place == 'q' then
    position = 1
  else
    position = math.max(0, counter(P .. 'c:' .. S, 'd') - running) + redis.call('ZRANK', P .. 'w:' .. S, ID) + 1
  end
elseif status ~= '"running"' then
  return {json, false, 0, {}}
end
return {json, position, running, redis.call('LRANGE', P .. 'durations:' .. unquote(executor), 0, tonumber(ARGV[9]) - 1)}
