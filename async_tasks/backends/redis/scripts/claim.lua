-- A worker starts the attempt it was dispatched: pending (on the previous attempt, still
-- dispatched as this job) -> running, owned by the worker.
-- ARGV: 7 session, 8 task id, 9 the attempt it starts, 10 worker id, 11 job key.
-- Returns {'ok', JSON, removed} or {'notfound'} or {'refused', status}.
local S, ID = ARGV[7], ARGV[8]
if replayed_op(ID) then return done(ID) end
local r = move(S, ID, 'running', {expect = ',pending,', attempt = int(tonumber(ARGV[9]) - 1), runner = ARGV[10],
  claim = ARGV[11], reason = '"started"'})
if r[1] ~= 'ok' then return r end
return done(ID)
