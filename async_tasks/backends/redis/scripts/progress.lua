-- A progress report and log lines of a running attempt (refused once the task is no longer
-- running that attempt): what a worker's flush of one task writes, at most once a window.
-- Safe to run twice: it sets values, and a batch of lines carries an operation id (a re-sent
-- batch finds it and adds nothing).
-- ARGV: 7 session, 8 task id, 9 attempt, 10 percent JSON ('': no report, lines only),
-- 11 step JSON (''), 12 description JSON (''), 13 '1' to return the task's JSON,
-- 14 lines the worker dropped before sending (''), 15... the lines' JSON (without `n`, oldest
-- first; see `add_logs`). Returns 0 (refused), 1 or the JSON.
local S, ID = ARGV[7], ARGV[8]
local key = tkey(ID)
local f = redis.call('HMGET', key, '_s', 'status', 'attempts')
if f[1] ~= S or f[2] ~= '"running"' or f[3] ~= ARGV[9] then return 0 end
if replayed_op(ID) then return 1 end
if ARGV[10] ~= '' then
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
end
local skipped = tonumber(ARGV[14] or '') or 0
if #ARGV >= 15 or skipped > 0 then
  local lines = {}
  for i = 15, #ARGV do lines[#lines + 1] = ARGV[i] end
  add_logs(S, ID, skipped, lines)
  if OP ~= '' then redis.call('HSET', key, '_op', remember_op(redis.call('HGET', key, '_op'))) end
end
if ARGV[13] == '1' then return record_json(ID) end
return 1
