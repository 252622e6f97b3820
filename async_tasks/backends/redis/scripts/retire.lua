-- Dispatch nothing more to a worker (a lost or leaving one, before its tasks go elsewhere):
-- it stays known until it is forgotten, and no longer counts as running its executors.
-- ARGV: 7 worker id. Returns 1 when it was not retired yet, else 0.
local W = ARGV[7]
if redis.call('SADD', P .. 'retired', W) == 0 then return 0 end
if redis.call('HEXISTS', P .. 'workers', W) == 1 then offer(W, -1) end
return 1
