-- Forget a task that is not running. A removal re-sent after its reply was lost finds the
-- operation's mark (kept a minute) and answers as the first run did.
-- ARGV: 7 session, 8 task id. Returns {'ok', JSON} or {'notfound'} or {'refused', 'running'}.
local S, ID = ARGV[7], ARGV[8]
local mark = P .. 'op:' .. OP
if OP ~= '' then
  local earlier = redis.call('GET', mark)
  if earlier then return {'ok', earlier} end
end
local f = redis.call('HMGET', tkey(ID), '_s', 'status')
if f[1] ~= S then return {'notfound'} end
if f[2] == '"running"' then return {'refused', 'running'} end
local json = forget(S, ID, true)
forget_session_if_empty(S)
if OP ~= '' then redis.call('SET', mark, json, 'PX', 60000) end
return {'ok', json}
