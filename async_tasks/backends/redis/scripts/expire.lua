-- The time limits, in the given sessions, at most `budget` changes per call: never-started
-- pending tasks past their lifetime (counted from their creation, or from their delayed
-- start when that is later) are cancelled (taken out of delivery), finished tasks past their
-- TTL removed, idle sessions (nothing active, nothing changed for a while) forgotten with
-- their tasks (a large one over several calls), Idempotency-Keys past their window forgotten.
-- ARGV: 7 finished TTL ms (''), 8 pending lifetime ms (''), 9 session idle ms (''), 10 budget,
-- 11 the expired pending tasks' history reason (JSON), 12.. sessions.
-- Returns {finished removed, sessions forgotten, their tasks, budget left, cancelled JSONs, removed}.
local now = now_ms()
local budget = tonumber(ARGV[10])
local finished, sessions, session_tasks = 0, 0, 0
local cancelled = {}
for i = 12, #ARGV do
  local S = ARGV[i]
  if budget <= 0 then break end
  if ARGV[8] ~= '' then
    local cutoff = now - tonumber(ARGV[8])
    local index = P .. 'u:' .. S
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', cutoff, 'LIMIT', 0, budget)) do
      -- Its lifetime began when it was created, or at its delayed start when that is later
      -- (`P u:` is scored so; an entry written before delayed starts existed is put right).
      local f = redis.call('HMGET', tkey(id), 'createdAt', 'scheduledAt')
      local began = math.max(tonumber(f[1]) or 0, tonumber(f[2]) or 0)
      if began > cutoff then
        redis.call('ZADD', index, began, id)
      else
        local r = move(S, id, 'cancelled', {expect = ',pending,', reason = ARGV[11]})
        if r[1] == 'ok' then cancelled[#cancelled + 1] = record_json(id) end
      end
      budget = budget - 1
    end
  end
  if ARGV[7] ~= '' then
    local cutoff = now - tonumber(ARGV[7])
    for _, status in ipairs({'completed', 'failed', 'cancelled'}) do
      local index = P .. 'f:' .. S .. ':' .. status
      while budget > 0 do
        local oldest = redis.call('ZRANGE', index, 0, 0)[1]
        if not oldest then break end
        if (tonumber(redis.call('HGET', tkey(oldest), 'completedAt')) or 0) > cutoff then break end
        drop(S, oldest, 'expired')
        finished = finished + 1
        budget = budget - 1
      end
    end
  end
  if ARGV[9] ~= '' and budget > 0 then
    local active = in_status(S, 'pending') + in_status(S, 'running')
    local changed = redis.call('ZSCORE', P .. 'changed', S)
    if active == 0 and changed
      and (redis.call('HEXISTS', P .. 'c:' .. S, 'forgetting') == 1 or tonumber(changed) <= now - tonumber(ARGV[9])) then
      -- Forgetting a session may take several calls: it is marked so that the next call goes
      -- on even though this one changed it.
      local ids = redis.call('ZRANGE', P .. 's:' .. S, 0, budget - 1)
      if #ids > 0 then
        redis.call('HSET', P .. 'c:' .. S, 'forgetting', '1')
        session_tasks = session_tasks + #ids
        for _, id in ipairs(ids) do drop(S, id, 'expired') end
        budget = budget - #ids
      end
      if redis.call('ZCARD', P .. 's:' .. S) == 0 then
        sessions = sessions + 1
        redis.call('DEL', P .. 'b:' .. S)
        publish_ended(S, 'expired')
      end
    end
  end
  if budget > 0 then budget = budget - prune_keys(S, math.min(budget, 200)) end
  forget_session_if_empty(S)
end
return {finished, sessions, session_tasks, budget, cancelled, REMOVED}
