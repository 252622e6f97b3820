-- A status change asked for by a person or by the store's own rules: cancel, retry by hand,
-- expiry. A running task that is cancelled is told to stop (`P stop`, '<task id>:<attempt>')
-- in the same step; a task entering pending with `deliver` is handed to delivery.
-- ARGV: 7 session, 8 task id, 9 target status, 10 expected statuses (',pending,running,' or ''),
-- 11 attempt (''), 12 reason JSON (''), 13 error JSON (''), 14 result JSON (''),
-- 15 automatic ('1'), 16 dead letter ('1'), 17 deliver ('1'), 18 due ms ('' now).
-- Returns {'ok', JSON, removed} or {'notfound'} or {'refused', status}.
local S, ID, target = ARGV[7], ARGV[8], ARGV[9]
if replayed_op(ID) then return done(ID) end
local r = move(S, ID, target, {expect = ARGV[10], attempt = ARGV[11], reason = ARGV[12], error = ARGV[13],
  result = ARGV[14], automatic = ARGV[15], dead_letter = ARGV[16]})
if r[1] ~= 'ok' then return r end
if r[2] == 'running' and target == 'cancelled' then
  redis.call('PUBLISH', P .. 'stop', ID .. ':' .. redis.call('HGET', tkey(ID), 'attempts'))
end
if target == 'pending' and ARGV[17] == '1' then deliver(S, ID, tonumber(ARGV[18])) end
pump(8)
return done(ID)
