-- A progress report of a running attempt (refused once the task is no longer running that
-- attempt). Safe to run twice: it sets values.
-- ARGV: 7 session, 8 task id, 9 attempt, 10 percent JSON, 11 step JSON (''), 12 description
-- JSON (''), 13 '1' to return the task's JSON. Returns 0 (refused), 1 or the JSON.
local S, ID = ARGV[7], ARGV[8]
local key = tkey(ID)
local f = redis.call('HMGET', key, '_s', 'status', 'attempts')
if f[1] ~= S or f[2] ~= '"running"' or f[3] ~= ARGV[9] then return 0 end
local set = {'progress', ARGV[10], 'updatedAt', int(now_ms())}
if ARGV[11] ~= '' then
  set[5] = 'currentStep'; set[6] = ARGV[11]
  set[7] = 'currentStepDescription'
  if ARGV[12] ~= '' then set[8] = ARGV[12] else set[8] = 'null' end
elseif ARGV[12] ~= '' then
  set[5] = 'currentStepDescription'; set[6] = ARGV[12]
end
redis.call('HSET', key, unpack(set))
publish(S, event_fields(key), 'progress', 'null')
if ARGV[13] == '1' then return record_json(ID) end
return 1
