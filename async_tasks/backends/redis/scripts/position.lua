-- A pending task's place in its session's line: 1 once it is dispatched to a worker (it
-- starts as soon as that worker has a free slot), else after the session's dispatched tasks
-- that have not started and the parked tasks ahead of it. O(log n).
-- ARGV: 7 session, 8 task id. Returns the place, or nil when it is not waiting.
local S, ID = ARGV[7], ARGV[8]
local f = redis.call('HMGET', tkey(ID), '_s', 'status', '_dv')
if f[1] ~= S or f[2] ~= '"pending"' then return false end
if f[3] == 'q' then return 1 end
if f[3] ~= 'p' then return false end
local queued = math.max(0, counter(P .. 'c:' .. S, 'd') - in_status(S, 'running'))
return queued + redis.call('ZRANK', P .. 'w:' .. S, ID) + 1
