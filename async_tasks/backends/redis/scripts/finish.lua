-- The end of a running attempt, as its worker (or the reconciler, for a lost worker) reports
-- it, in one step: 'completed' (with the result), 'failed' (final), 'retry' (failed, then
-- pending again and delayed by the backoff: never seen as failed by retention or expiry) or
-- 'handback' (the worker shut down: pending again at once, the retry budget untouched).
-- The slot it held goes to the next waiting task.
-- ARGV: 7 session, 8 task id, 9 attempt, 10 the worker running it, 11 outcome,
-- 12 result JSON (''), 13 error JSON (''), 14 reason JSON, 15 dead letter ('1'),
-- 16 retry delay ms, 17 the retry's reason JSON, 18 last report's percent JSON (''),
-- 19 its step JSON (''), 20 its description JSON (''), 21 how many run times of its
-- executor's completed attempts to keep (`P durations:<executor>`, newest first), 22 log lines
-- the worker dropped before sending (''), 23... its last log lines' JSON (see `add_logs`).
-- Returns {'ok', JSON, removed} or {'notfound'} or {'refused', status}.
local S, ID, outcome = ARGV[7], ARGV[8], ARGV[11]
if replayed_op(ID) then return done(ID) end
local o = {expect = ',running,', attempt = ARGV[9], owner = ARGV[10], result = ARGV[12], error = ARGV[13],
  reason = ARGV[14], dead_letter = ARGV[15], percent = ARGV[18], step = ARGV[19], description = ARGV[20]}
local skipped = tonumber(ARGV[22] or '') or 0
if #ARGV >= 23 or skipped > 0 then
  -- The attempt's last lines come before its end (only if `move` will accept it).
  local f = redis.call('HMGET', tkey(ID), '_s', '_wk', unpack(LOG_FIELDS))
  if f[1] == S and f[5] == '"running"' and f[6] == ARGV[9] and (ARGV[10] == '' or f[2] == ARGV[10]) then
    local lines = {}
    for i = 23, #ARGV do lines[#lines + 1] = ARGV[i] end
    add_logs(S, ID, skipped, lines, {f[3], f[4], f[5], f[6], f[7], f[8]})
  end
end
local r
if outcome == 'completed' then
  r = move(S, ID, 'completed', o)
  if r[1] == 'ok' then
    -- Its run time: from its start to now, when `move` completed it.
    local took, kept = now_ms() - (tonumber(r[3]) or now_ms()), tonumber(ARGV[21]) or 0
    if kept > 0 then
      local runs = P .. 'durations:' .. unquote(r[4])
      redis.call('LPUSH', runs, int(took))
      redis.call('LTRIM', runs, 0, kept - 1)
    end
  end
else
  r = move(S, ID, 'failed', o)
  if r[1] == 'ok' and (outcome == 'retry' or outcome == 'handback') then
    local automatic, keep = '0', '0'
    if outcome == 'retry' then automatic = '1' else keep = '1' end
    move(S, ID, 'pending', {reason = ARGV[17], automatic = automatic, keep_auto = keep})
    deliver(S, ID, now_ms() + (tonumber(ARGV[16]) or 0))
  end
end
if r[1] ~= 'ok' then return r end
pump(8)
return done(ID)
