-- A worker announces itself and keeps its lease (`P wk:<id>`, expiring after `lease` ms):
-- the first time, and again after the reconciler forgot it, its slots join the pool
-- (`P workers`: id -> slots) with the executors it runs (`P runs:<id>`, from its
-- description) and take waiting tasks of those at once. A worker that is leaving
-- (`retiring`) keeps its lease while its last attempts finish, retired from the pool
-- (`P retired`): nothing more is dispatched to it.
-- ARGV: 7 worker id, 8 its slots, 9 lease ms, 10 its description (a JSON object with
-- `executors`), 11 retiring ('1').
-- Returns 1 when it (re)joined the pool, else 0.
local W = ARGV[7]
-- The lease holds the description and when it was last renewed (the admin view's lease age).
redis.call('SET', P .. 'wk:' .. W, '{"renewedAt":' .. int(now_ms()) .. ',' .. string.sub(ARGV[10], 2), 'PX', ARGV[9])
local joined = redis.call('HSETNX', P .. 'workers', W, ARGV[8])
if joined == 1 then
  local runs = P .. 'runs:' .. W
  redis.call('DEL', runs)
  for _, E in ipairs(cjson.decode(ARGV[10]).executors or {}) do redis.call('SADD', runs, E) end
end
if ARGV[11] == '1' then
  -- Still known (the reconciler finds it if it dies now), but no longer offering its executors.
  if redis.call('SADD', P .. 'retired', W) == 1 and joined == 0 then offer(W, -1) end
  return 0
end
if joined == 1 then
  if redis.call('SISMEMBER', P .. 'retired', W) == 0 then offer(W, 1) end
  pump(1000)
else
  pump(64)
end
return joined
