-- Forget a worker whose lease has expired (or that is leaving, `force`): its queue, the SAQ
-- jobs in it, its slots and the executors it runs. Refused while tasks are still dispatched
-- to it (the reconciler delivers those afresh or ends them first) or, without `force`, while
-- its lease lives.
-- ARGV: 7 worker id, 8 force ('1'). Returns 1 (forgotten), 0 (alive) or -1 (tasks left).
local W = ARGV[7]
if ARGV[8] ~= '1' and redis.call('EXISTS', P .. 'wk:' .. W) == 1 then return 0 end
for _, id in ipairs(redis.call('SMEMBERS', P .. 'wq:' .. W)) do
  local f = redis.call('HMGET', tkey(id), '_dv', '_jw')
  if f[1] == 'q' and f[2] == W then return -1 end
  redis.call('SREM', P .. 'wq:' .. W, id)  -- an entry its task no longer matches
end
for _, kind in ipairs({'queued', 'active'}) do
  for _, jid in ipairs(redis.call('LRANGE', queue_key(W, kind), 0, -1)) do redis.call('DEL', jid) end
end
redis.call('DEL', queue_key(W, 'queued'), queue_key(W, 'active'), queue_key(W, 'incomplete'), P .. 'wk:' .. W)
if redis.call('HEXISTS', P .. 'workers', W) == 1 and redis.call('SISMEMBER', P .. 'retired', W) == 0 then
  offer(W, -1)
end
redis.call('HDEL', P .. 'workers', W)
redis.call('SREM', P .. 'retired', W)
redis.call('DEL', P .. 'runs:' .. W)
return 1
