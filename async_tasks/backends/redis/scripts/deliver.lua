-- Start a pending task: hand it to delivery (now, or at `due`). Safe to ask again: a task
-- already waiting stays where it is, except that one dispatched to a worker whose lease has
-- expired, or delayed when asked to start now, is delivered afresh.
-- ARGV: 7 session, 8 task id, 9 due ms ('' now).
-- Returns {'ok', JSON, removed} or {'notfound'} or {'refused', status}.
local S, ID = ARGV[7], ARGV[8]
if replayed_op(ID) then return done(ID) end
local f = redis.call('HMGET', tkey(ID), '_s', 'status', '_dv', '_jw', '_op')
if f[1] ~= S then return {'notfound'} end
if f[2] ~= '"pending"' then return {'refused', unquote(f[2])} end
local due = tonumber(ARGV[9])
if (f[3] == 'q' and redis.call('EXISTS', P .. 'wk:' .. f[4]) == 0) or (f[3] == 'd' and not due) then
  undeliver(S, ID)
end
deliver(S, ID, due)
if OP ~= '' then redis.call('HSET', tkey(ID), '_op', remember_op(f[5])) end
pump(8)
return done(ID)
