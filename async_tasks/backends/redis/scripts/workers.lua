-- The live workers (those in the pool with a lease), as the admin view lists them.
-- Returns {now ms, {worker id, its lease (JSON: description and renewedAt), slots,
-- attempts running there, retired ('1' or '0')}, ...}. O(workers + their dispatched tasks).
local found = {}
local flat = redis.call('HGETALL', P .. 'workers')
for i = 1, #flat, 2 do
  local W = flat[i]
  local lease = redis.call('GET', P .. 'wk:' .. W)
  if lease then
    local running = 0
    for _, id in ipairs(redis.call('SMEMBERS', P .. 'wq:' .. W)) do
      local f = redis.call('HMGET', tkey(id), 'status', '_wk')
      if f[1] == '"running"' and f[2] == W then running = running + 1 end
    end
    local retired = '0'
    if redis.call('SISMEMBER', P .. 'retired', W) == 1 then retired = '1' end
    found[#found + 1] = {W, lease, flat[i + 1], running, retired}
  end
end
return {int(now_ms()), found}
