-- What a push stream starts from (and starts again from after a lost connection): the
-- events of the session's newest tasks (at most `limit`), or of one task, and the event
-- sequence number they reflect, read at one moment: every change with a higher number
-- happened after. A result over `result_bytes` is left out of a session's snapshots (a
-- client reads it with GET /tasks/{id}); one task's snapshot always carries it. Each carries
-- the task's log: all of it in one task's snapshot, the latest RECENT_LOGS lines in a session's.
-- ARGV: 7 session, 8 task id ('' for the session), 9 limit, 10 result bytes.
-- Returns {seq, {event JSON, ...} newest first}.
local S, ID = ARGV[7], ARGV[8]
local seq = tonumber(redis.call('GET', P .. 'seq')) or 0
local function event(id, whole)
  local r = event_fields(tkey(id))
  local result = 'null'
  if r.status == '"completed"' and r.result and (whole or #r.result <= tonumber(ARGV[10])) then result = r.result end
  local dropped, logs = redis.call('HGET', tkey(id), 'logsDropped'), {}
  if dropped then  -- the task has a log
    local first = 0
    if not whole then first = -RECENT_LOGS end
    logs = redis.call('LRANGE', P .. 'l:' .. id, first, -1)
  end
  return '{"type":"snapshot","taskId":' .. r.id .. ',"sessionKey":' .. r.sessionKey ..
    ',"status":' .. r.status .. ',"progress":' .. r.progress .. ',"currentStep":' .. r.currentStep ..
    ',"currentStepDescription":' .. r.currentStepDescription .. ',"at":' .. r.updatedAt ..
    ',"executor":' .. r.executor .. ',"previous":null,"error":' .. r.error ..
    ',"result":' .. result .. ',"name":' .. r.name .. ',"attempt":' .. r.attempts ..
    ',"logs":[' .. table.concat(logs, ',') .. '],"logsDropped":' .. (dropped or '0') .. '}'
end
local events = {}
if ID ~= '' then
  if redis.call('HGET', tkey(ID), '_s') == S then events[1] = event(ID, true) end
else
  for _, id in ipairs(redis.call('ZREVRANGE', P .. 's:' .. S, 0, tonumber(ARGV[9]) - 1)) do
    events[#events + 1] = event(id, false)
  end
end
return {int(seq), events}
