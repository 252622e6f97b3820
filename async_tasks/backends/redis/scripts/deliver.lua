-- Start a pending task: hand it to delivery (now, or at `due`). Safe to ask again: a task
-- dispatched to a worker stays there (unless that worker's lease has expired: then it is
-- delivered afresh); one still waiting for its turn or its time is delivered afresh when
-- asked for another time (a delayed start moved, started early, or delayed).
-- ARGV: 7 session, 8 task id, 9 due ms ('' now).
-- Returns {'ok', JSON, removed} or {'notfound'} or {'refused', status}.
local S, ID = ARGV[7], ARGV[8]
if replayed_op(ID) then return done(ID) end
local f = redis.call('HMGET', tkey(ID), '_s', 'status', '_dv', '_jw', '_op', 'scheduledAt')
if f[1] ~= S then return {'notfound'} end
if f[2] ~= '"pending"' then return {'refused', unquote(f[2])} end
local due = tonumber(ARGV[9])
if due and due <= now_ms() then due = nil end
local place = f[3]
if (place == 'q' and redis.call('EXISTS', P .. 'wk:' .. f[4]) == 0)
  or (place == 'p' and due)
  or (place == 'd' and due ~= tonumber(f[6])) then
  undeliver(S, ID)
end
deliver(S, ID, due)
if OP ~= '' then redis.call('HSET', tkey(ID), '_op', remember_op(f[5])) end
pump(8)
return done(ID)
