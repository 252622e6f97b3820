-- The prelude, second part (see `prelude.lua`): the delivery of attempts. A task's place
-- (parked, delayed, dispatched), the line of sessions waiting for a slot, the workers'
-- free slots, and `pump`, which hands parked tasks to workers as the limits allow.

-- -- delivery -----------------------------------------------------------------------------

-- The executor's name of task ID.
local function executor_of(ID) return cjson.decode(redis.call('HGET', tkey(ID), 'executor')) end

-- The session's line of parked tasks of executor E (its whole line is `P w:<session>`).
local function line(S, E) return P .. 'wx:' .. S .. ':' .. E end

-- Count a task of executor E into (1) or out of (-1) delivery: `P xq` holds, per executor,
-- the tasks parked, delayed or dispatched (queued on a worker or running).
local function count_delivery(E, n)
  if redis.call('HINCRBY', P .. 'xq', E, n) <= 0 then redis.call('HDEL', P .. 'xq', E) end
end

-- The session's place among those waiting for a slot, in the line of sessions of each
-- executor it has parked tasks of (`P ready:<executor>`): fewest dispatched first, then the
-- one that has waited longest; not there when nothing of it waits. `moved`: only its count of
-- dispatched tasks changed, not its line (an empty line was already cleared when it emptied).
local function place_session(S, moved)
  local c, kinds = P .. 'c:' .. S, P .. 'px:' .. S
  if redis.call('ZCARD', P .. 'w:' .. S) == 0 then
    if moved then return end
    for _, E in ipairs(redis.call('SMEMBERS', kinds)) do redis.call('ZREM', P .. 'ready:' .. E, S) end
    redis.call('DEL', kinds)
    redis.call('HDEL', c, 'waiting')
    return
  end
  local since = tonumber(redis.call('HGET', c, 'waiting'))
  if not since then
    since = redis.call('INCR', P .. 'seq') % TICKET
    redis.call('HSET', c, 'waiting', int(since))
  end
  local score = counter(c, 'd') * TICKET + since
  for _, E in ipairs(redis.call('SMEMBERS', kinds)) do
    if redis.call('ZCARD', line(S, E)) == 0 then
      redis.call('ZREM', P .. 'ready:' .. E, S)
      redis.call('SREM', kinds, E)
    else
      redis.call('ZADD', P .. 'ready:' .. E, score, S)
    end
  end
end

-- The live workers that take tasks (not retired) and have a free slot: {id, free, runs}
-- (`runs`: the executors it runs, as a set).
local function free_workers()
  local found = {}
  local flat = redis.call('HGETALL', P .. 'workers')
  for i = 1, #flat, 2 do
    local W = flat[i]
    local free = tonumber(flat[i + 1]) - redis.call('SCARD', P .. 'wq:' .. W)
    if free > 0 and redis.call('SISMEMBER', P .. 'retired', W) == 0 then
      local runs = {}
      for _, E in ipairs(redis.call('SMEMBERS', P .. 'runs:' .. W)) do runs[E] = true end
      found[#found + 1] = {id = W, free = free, runs = runs}
    end
  end
  return found
end

-- Count worker W's executors into (1) or out of (-1) `P offered` (executor -> workers in the
-- pool, not retired, that run it): what says a task's executor is run by no live worker.
local function offer(W, n)
  for _, E in ipairs(redis.call('SMEMBERS', P .. 'runs:' .. W)) do
    if redis.call('HINCRBY', P .. 'offered', E, n) <= 0 then redis.call('HDEL', P .. 'offered', E) end
  end
  OFFERED = {}
end

-- Hand task ID (executor E) of session S to worker W: a SAQ job in W's queue; `parked`: it
-- leaves its session's line (otherwise it was never parked: see `deliver`).
local function dispatch(S, ID, W, E, parked)
  local key = tkey(ID)
  local n = (tonumber(redis.call('HGET', key, 'attempts')) or 0) + 1
  local jk = ID .. ':' .. int(n) .. ':' .. int(redis.call('INCR', P .. 'seq'))
  local jid = job_id(W, jk)
  redis.call('SET', jid, '{"function":"async_tasks.attempt","kwargs":{"s":' .. cjson.encode(S) ..
    ',"t":"' .. ID .. '","a":' .. int(n) .. ',"k":"' .. jk .. '"},"queue":' .. cjson.encode(P .. 'w:' .. W) ..
    ',"key":"' .. jk .. '","timeout":0,"ttl":-1,"queued":' .. int(now_ms()) .. ',"status":"queued"}')
  redis.call('ZADD', queue_key(W, 'incomplete'), 0, jid)
  redis.call('RPUSH', queue_key(W, 'queued'), jid)
  if parked then
    redis.call('ZREM', P .. 'w:' .. S, ID)
    redis.call('ZREM', line(S, E), ID)
    redis.call('HINCRBY', P .. 'totals', 'p', -1)
  end
  redis.call('SADD', P .. 'wq:' .. W, ID)
  redis.call('HSET', key, '_dv', 'q', '_jw', W, '_jk', jk, 'scheduledAt', 'null')
  redis.call('HINCRBY', P .. 'c:' .. S, 'd', 1)
  redis.call('HINCRBY', P .. 'totals', 'd', 1)
  if parked then place_session(S) end
end

-- Dispatch parked tasks while the limits and the workers' slots allow (at most `budget`).
-- Routing: a task goes only to a worker that runs its executor. Each slot goes to the least
-- busy waiting session among those with a parked task that a worker with a free slot runs
-- (between two executors of one session, its own order decides), and to the worker with
-- the most free slots among those that run it. A task whose executor no free worker runs
-- holds up nothing: its session's other tasks go past it.
local function pump(budget)
  -- Nothing parked in any session's line (`P totals` p): nothing to dispatch, and the
  -- workers' table is not read (a finish or a lease renewal then costs one read here).
  if counter(P .. 'totals', 'p') <= 0 then return end
  -- Executors whose line of sessions was found empty: it stays so while this pump dispatches
  -- (a dispatch only moves its own session within the lines it is in), so it is not read again.
  local workers, empty = nil, {}
  while budget > 0 do
    budget = budget - 1
    if GLOBAL_LIMIT and counter(P .. 'totals', 'd') >= GLOBAL_LIMIT then return end
    workers = workers or free_workers()
    local S, E, best, head
    local seen = {}
    for _, w in ipairs(workers) do
      if w.free > 0 then
        for x in pairs(w.runs) do
          if not seen[x] and not empty[x] then
            seen[x] = true
            local top = redis.call('ZRANGE', P .. 'ready:' .. x, 0, 0, 'WITHSCORES')
            if not top[1] then
              empty[x] = true
            else
              local score = tonumber(top[2])
              if not best or score < best then
                S, E, best, head = top[1], x, score, nil
              elseif score == best then
                -- Scores are unique per session: S waits for both executors.
                head = head or tonumber(redis.call('ZRANGE', line(S, E), 0, 0, 'WITHSCORES')[2])
                local other = tonumber(redis.call('ZRANGE', line(S, x), 0, 0, 'WITHSCORES')[2])
                if other and (not head or other < head) then E, head = x, other end
              end
            end
          end
        end
      end
    end
    if not S then return end
    -- The least busy waiting session: if it may not take a slot, none may.
    if SESSION_LIMIT and counter(P .. 'c:' .. S, 'd') >= SESSION_LIMIT then return end
    local chosen
    for _, w in ipairs(workers) do
      if w.free > 0 and w.runs[E] and (not chosen or w.free > chosen.free) then chosen = w end
    end
    local ID = redis.call('ZRANGE', line(S, E), 0, 0)[1]
    if ID then
      dispatch(S, ID, chosen.id, E, true)
      chosen.free = chosen.free - 1
    else
      place_session(S)
    end
  end
end

-- Park a pending task in its session's waiting line (higher priority first, then first
-- parked first), or delay it until `due` (ms) if that is later than now; when nothing is
-- parked anywhere and a worker that runs it has a free slot, it is dispatched at once. A task never
-- started lives PENDING_TASK_TTL_MS from then (`P u:`, by when its lifetime began).
local function deliver(S, ID, due)
  local key = tkey(ID)
  local f = redis.call('HMGET', key, '_dv', 'priority', 'executor')
  if f[1] and f[1] ~= '' then return false end
  local E = cjson.decode(f[3])
  count_delivery(E, 1)
  if due and due > now_ms() then
    local delayed = P .. 'delayed'
    redis.call('ZADD', delayed, due, ID)
    redis.call('HSET', key, '_dv', 'd', 'scheduledAt', int(due))
    redis.call('ZADD', P .. 'u:' .. S, 'XX', 'GT', due, ID)
    -- The workers' timers wait for the earliest delayed task: tell them of a new earliest.
    if redis.call('ZRANGE', delayed, 0, 0)[1] == ID then redis.call('PUBLISH', P .. 'due', int(due)) end
    return true
  end
  redis.call('ZADD', P .. 'u:' .. S, 'XX', 'LT', now_ms(), ID)
  -- Nothing parked in any session's line: `pump` would hand this very task to the worker with
  -- the most free slots that runs it, if the limits allow. That is done at once, unparked.
  if counter(P .. 'totals', 'p') <= 0
    and not (GLOBAL_LIMIT and counter(P .. 'totals', 'd') >= GLOBAL_LIMIT)
    and not (SESSION_LIMIT and counter(P .. 'c:' .. S, 'd') >= SESSION_LIMIT) then
    local chosen
    for _, w in ipairs(free_workers()) do
      if w.runs[E] and (not chosen or w.free > chosen.free) then chosen = w end
    end
    if chosen then
      dispatch(S, ID, chosen.id, E, false)
      return true
    end
  end
  local priority = math.max(-4000, math.min(4000, tonumber(f[2]) or 0))
  local score = -priority * TICKET + redis.call('INCR', P .. 'seq') % TICKET
  redis.call('ZADD', P .. 'w:' .. S, score, ID)
  redis.call('ZADD', line(S, E), score, ID)
  redis.call('SADD', P .. 'px:' .. S, E)
  redis.call('HINCRBY', P .. 'totals', 'p', 1)
  redis.call('HSET', key, '_dv', 'p', 'scheduledAt', 'null')
  place_session(S)
  return true
end

-- Take the task out of wherever it waits or runs; true when that freed a dispatched slot.
-- `f`: its fields `_dv`, `_jw`, `_jk` and `executor` when the caller has just read them.
local function undeliver(S, ID, f)
  local key = tkey(ID)
  f = f or redis.call('HMGET', key, '_dv', '_jw', '_jk', 'executor')
  local place = f[1]
  if not place or place == '' then return false end
  local E = cjson.decode(f[4])
  count_delivery(E, -1)
  redis.call('HSET', key, '_dv', '', '_jw', '', '_jk', '', 'scheduledAt', 'null')
  if place == 'p' then
    redis.call('ZREM', P .. 'w:' .. S, ID)
    redis.call('ZREM', line(S, E), ID)
    redis.call('HINCRBY', P .. 'totals', 'p', -1)
    place_session(S)
    return false
  end
  if place == 'd' then
    redis.call('ZREM', P .. 'delayed', ID)
    return false
  end
  local W, jid = f[2], job_id(f[2], f[3])
  -- A job still queued goes; one a worker has taken is its worker's to finish (its claim
  -- will be refused).
  if redis.call('LREM', queue_key(W, 'queued'), 1, jid) == 1 then
    redis.call('ZREM', queue_key(W, 'incomplete'), jid)
    redis.call('DEL', jid)
  end
  redis.call('SREM', P .. 'wq:' .. W, ID)
  redis.call('HINCRBY', P .. 'c:' .. S, 'd', -1)
  redis.call('HINCRBY', P .. 'totals', 'd', -1)
  place_session(S, true)
  return true
end
