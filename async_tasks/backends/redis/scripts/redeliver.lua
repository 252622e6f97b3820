-- Deliver afresh a task dispatched as job `ARGV[9]` that never started (its worker is gone,
-- or the job was lost): a no-op once the task has moved on.
-- ARGV: 7 session, 8 task id, 9 job key. Returns 1 when it was delivered again, else 0.
local S, ID = ARGV[7], ARGV[8]
local f = redis.call('HMGET', tkey(ID), '_s', 'status', '_dv', '_jk')
if f[1] ~= S or f[2] ~= '"pending"' or f[3] ~= 'q' or f[4] ~= ARGV[9] then return 0 end
undeliver(S, ID)
deliver(S, ID)
pump(8)
return 1
