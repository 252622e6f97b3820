-- Deliver the delayed tasks whose time has come (retries after their backoff, delayed
-- starts), at most `max`; safe to run from several workers at once.
-- ARGV: 7 max. Returns {how many, the next due time in ms ('' when none)}.
local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[7]))
local delivered = 0
for _, id in ipairs(due) do
  local f = redis.call('HMGET', tkey(id), '_s', '_dv', 'status')
  if f[1] and f[2] == 'd' and f[3] == '"pending"' then
    undeliver(f[1], id)
    deliver(f[1], id)
    delivered = delivered + 1
  else
    redis.call('ZREM', P .. 'delayed', id)  -- an entry its task no longer matches
  end
end
if delivered > 0 then pump(1000) end
local next_due = redis.call('ZRANGE', P .. 'delayed', 0, 0, 'WITHSCORES')[2] or ''
return {delivered, next_due}
