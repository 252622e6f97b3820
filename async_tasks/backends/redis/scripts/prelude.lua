-- The prelude of every script: settings, time, the record's JSON, events, history,
-- the compare-and-set of a status change and the delivery of attempts.
--
-- Arguments every script gets first (see `scripts.py`):
--   ARGV[1] key prefix P          ARGV[2] channel prefix CH (session events: CH .. session)
--   ARGV[3] time in ms ('' = Redis TIME; only a test clock passes one)
--   ARGV[4] settings: '<max completed>,<max failed>,<max cancelled>,<max history>,
--           <global running limit>,<session running limit>,<idempotency window ms>,
--           <idempotency keys per session>,<log lines per task>,<log bytes per task>'
--           ('' for none of each)
--   ARGV[5] '1' when the caller wants the records of the tasks a script removes
--   ARGV[6] the operation id: a write that finds it on its task already happened (a
--           command re-sent after its reply was lost) and answers as the first did
-- A script's own arguments start at ARGV[7].
--
-- Delivery. A task that should run is in one of three places, named by its `_dv`
-- field: 'p' parked in its session's waiting line (`P w:<session>`, priority first,
-- then first come first served; and in the line of its executor, `P wx:<session>:<executor>`),
-- 'd' delayed until a time (`P delayed`: a retry's backoff, a delayed start), or 'q'
-- dispatched to one worker (`_jw`): a SAQ job (`_jk`) in that worker's own queue,
-- queued or running. `pump` moves parked tasks to workers while a worker has a free
-- slot and the concurrency limits allow, always from the waiting session that holds
-- the fewest dispatched tasks (ties: the one waiting longest), and only to a worker that
-- runs the task's executor (`P runs:<worker>`, written when it joins): fair sharing reads
-- queued work, never tasks nobody asked to run. Every change of place happens in the
-- script that changes the task, so no crash between two steps can strand a task.

local P, CH, CLOCK, WANT, OP = ARGV[1], ARGV[2], ARGV[3], ARGV[5] == '1', ARGV[6]
local FINISHED = {completed = true, failed = true, cancelled = true}
local ALLOWED = {
  pending = {running = true, cancelled = true},
  running = {completed = true, failed = true, cancelled = true},
  completed = {},
  failed = {pending = true},
  cancelled = {pending = true},
}
local EVENT_FIELDS = {'id', 'sessionKey', 'status', 'progress', 'currentStep', 'currentStepDescription',
  'updatedAt', 'executor', 'error', 'result', 'name', 'attempts'}
local SUMMARY_FIELDS = {'id', 'sessionKey', 'name', 'executor', 'status', 'progress', 'currentStep',
  'currentStepDescription', 'error', 'attempts', 'priority', 'tags', 'deadLettered', 'createdAt', 'updatedAt',
  'startedAt', 'completedAt', 'scheduledAt', 'maxRetries', 'autoRetries', 'description', 'logsDropped'}
local HISTORY_HEAD = 10
local TICKET = 1099511627776  -- 2^40: a score's low part (a sequence number) below its high part

local CONF = {}
for value in string.gmatch(ARGV[4] .. ',', '([^,]*),') do CONF[#CONF + 1] = value end
local RETAIN, MAX_HISTORY
if CONF[1] and CONF[1] ~= '' then
  RETAIN = {completed = tonumber(CONF[1]), failed = tonumber(CONF[2]), cancelled = tonumber(CONF[3])}
end
if CONF[4] and CONF[4] ~= '' then MAX_HISTORY = tonumber(CONF[4]) end
local GLOBAL_LIMIT = tonumber(CONF[5] or '')
local SESSION_LIMIT = tonumber(CONF[6] or '')
local KEY_WINDOW = tonumber(CONF[7] or '')
local KEYS_KEPT = tonumber(CONF[8] or '')
local LOG_LINES = tonumber(CONF[9] or '') or 100
local LOG_BYTES = tonumber(CONF[10] or '') or 16384
-- A task's summary carries its latest log lines, this many (RECENT_LINES in task_log.py).
local RECENT_LOGS = 3

local function int(n) return string.format('%d', n) end
local NOW
local function now_ms()
  if not NOW then
    if CLOCK ~= '' then
      NOW = tonumber(CLOCK)
    else
      local t = redis.call('TIME')
      NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    end
  end
  return NOW
end
local function unquote(s) return string.sub(s, 2, -2) end
local function tkey(id) return P .. 't:' .. id end

-- SAQ's keys for the queue of worker W (SAQ names a queue's keys 'saq:<name>:<kind>' and a
-- job 'saq:job:<name>:<job key>'; each worker has its own queue, named P .. 'w:' .. W).
local function queue_key(W, kind) return 'saq:' .. P .. 'w:' .. W .. ':' .. kind end
local function job_id(W, key) return 'saq:job:' .. P .. 'w:' .. W .. ':' .. key end

local function counter(key, field) return tonumber(redis.call('HGET', key, field)) or 0 end

-- Why a pending task has not started, for a person: its executor is run by no live worker
-- (`P offered`: executor -> workers taking tasks that run it; read once per executor in a
-- script, so a page of a thousand waiting tasks asks it once). JSON; null for any other case.
local OFFERED = {}
local function waiting_reason(status, place, executor)
  if status ~= '"pending"' or place ~= 'p' or not executor then return 'null' end
  local reason = OFFERED[executor]
  if reason == nil then
    local E = cjson.decode(executor)
    reason = 'null'
    if counter(P .. 'offered', E) == 0 then reason = cjson.encode('waiting for a worker that runs `' .. E .. '`') end
    OFFERED[executor] = reason
  end
  return reason
end

-- The task's JSON object, built from its hash (our own `_` fields left out) and its history.
local function record_json(id)
  local flat = redis.call('HGETALL', tkey(id))
  local parts = {}
  local status, place, executor
  for i = 1, #flat, 2 do
    local name = flat[i]
    if string.byte(name, 1) ~= 95 then
      parts[#parts + 1] = '"' .. name .. '":' .. flat[i + 1]
      if name == 'status' then status = flat[i + 1] elseif name == 'executor' then executor = flat[i + 1] end
    elseif name == '_dv' then
      place = flat[i + 1]
    end
  end
  parts[#parts + 1] = '"waitingReason":' .. waiting_reason(status, place, executor)
  parts[#parts + 1] = '"history":[' .. table.concat(redis.call('LRANGE', P .. 'h:' .. id, 0, -1), ',') .. ']'
  parts[#parts + 1] = '"logs":[' .. table.concat(redis.call('LRANGE', P .. 'l:' .. id, 0, -1), ',') .. ']'
  return '{' .. table.concat(parts, ',') .. '}'
end

-- What a list item shows: the summary fields only (never params, metadata, result or history),
-- so a page costs its length, not the bytes its tasks hold.
local function summary_json(id)
  local v = redis.call('HMGET', tkey(id), '_dv', unpack(SUMMARY_FIELDS))
  local parts = {'"params":null'}
  for i, name in ipairs(SUMMARY_FIELDS) do
    if v[i + 1] then parts[#parts + 1] = '"' .. name .. '":' .. v[i + 1] end
  end
  -- v[1] is `_dv`; SUMMARY_FIELDS starts id, sessionKey, name, executor, status.
  parts[#parts + 1] = '"waitingReason":' .. waiting_reason(v[6], v[1], v[5])
  if v[#SUMMARY_FIELDS + 1] then  -- `logsDropped` (the last field) is there once the task has a log
    local recent = redis.call('LRANGE', P .. 'l:' .. id, -RECENT_LOGS, -1)
    parts[#parts + 1] = '"logs":[' .. table.concat(recent, ',') .. ']'
  end
  return '{' .. table.concat(parts, ',') .. '}'
end

local function event_fields(key)
  local v = redis.call('HMGET', key, unpack(EVENT_FIELDS))
  local r = {}
  for i, name in ipairs(EVENT_FIELDS) do r[name] = v[i] end
  return r
end

-- Publish a change as the push streams' envelope: [seq, taskId, type, status, attempt, event].
local function publish(session, r, kind, previous)
  local seq = redis.call('INCR', P .. 'seq')
  local result = 'null'
  if r.status == '"completed"' then result = r.result end
  local event = '{"type":"' .. kind .. '","taskId":' .. r.id .. ',"sessionKey":' .. r.sessionKey ..
    ',"status":' .. r.status .. ',"progress":' .. r.progress .. ',"currentStep":' .. r.currentStep ..
    ',"currentStepDescription":' .. r.currentStepDescription .. ',"at":' .. r.updatedAt ..
    ',"executor":' .. r.executor .. ',"previous":' .. previous .. ',"error":' .. r.error ..
    ',"result":' .. result .. ',"name":' .. r.name .. ',"attempt":' .. r.attempts .. '}'
  redis.call('PUBLISH', CH .. session,
    '[' .. int(seq) .. ',' .. r.id .. ',"' .. kind .. '",' .. r.status .. ',' .. r.attempts .. ',' .. event .. ']')
  return seq
end

-- Append log lines to running task ID of session S: `lines` are their JSON without `n`, oldest
-- first, after `skipped` lines its worker dropped before sending them. Each is numbered (`n`,
-- following the task's last line; dropped lines count); beyond LOG_LINES lines or LOG_BYTES
-- bytes (each line's JSON) the oldest go, counted in the task's `logsDropped` (the newest always
-- stays). The lines kept are published as one `log` event. Returns how many were appended.
local function add_logs(S, ID, skipped, lines)
  local key, lkey = tkey(ID), P .. 'l:' .. ID
  local f = redis.call('HMGET', key, 'logsDropped', '_lb', 'status', 'attempts', 'updatedAt', 'sessionKey')
  local dropped = (tonumber(f[1]) or 0) + skipped
  local bytes = tonumber(f[2]) or 0
  local before = redis.call('LLEN', lkey)
  local count, n = before, dropped + before
  local added = {}
  for _, body in ipairs(lines) do
    n = n + 1
    local line = '{"n":' .. int(n) .. ',' .. string.sub(body, 2)
    redis.call('RPUSH', lkey, line)
    added[#added + 1] = line
    bytes = bytes + #line
  end
  count = count + #added
  local popped = 0
  while count > 1 and (count > LOG_LINES or bytes > LOG_BYTES) do
    bytes = bytes - #redis.call('LPOP', lkey)
    count, popped = count - 1, popped + 1
  end
  dropped = dropped + popped
  redis.call('HSET', key, 'logsDropped', int(dropped), '_lb', int(bytes))
  local kept = {}
  for i = math.max(1, popped - before + 1), #added do kept[#kept + 1] = added[i] end
  if #kept == 0 then return #added end
  local seq = redis.call('INCR', P .. 'seq')
  local event = '{"type":"log","taskId":"' .. ID .. '","sessionKey":' .. f[6] .. ',"status":' .. f[3] ..
    ',"attempt":' .. f[4] .. ',"at":' .. f[5] .. ',"lines":[' .. table.concat(kept, ',') .. '],"logsDropped":' ..
    int(dropped) .. '}'
  redis.call('PUBLISH', CH .. S, '[' .. int(seq) .. ',"' .. ID .. '","log",' .. f[3] .. ',' .. f[4] .. ',' .. event .. ']')
  return #added
end

-- -- clients (`async_tasks.clients`) ------------------------------------------------------
-- A session belongs to the client that created it (`c:<session>` field `cl`; a session
-- without one is its own client). Per client: `P ctasks` / `P csessions` (zsets: client ->
-- tasks / sessions it holds), `P cu:<client>` (its never-started tasks by creation order),
-- `P cf:<client>` (its finished tasks by finish order), `P cs:<client>` (its sessions by
-- last change); and `P changed` (every session by last change). They change in the script that
-- changes the task; `verify.lua` checks the counters.

local function client_of(session)
  return redis.call('HGET', P .. 'c:' .. session, 'cl') or session
end

-- Add `delta` to what `client` holds in counter zset `name` (a member goes at zero).
local function client_count(name, client, delta)
  if tonumber(redis.call('ZINCRBY', P .. name, delta, client)) <= 0 then redis.call('ZREM', P .. name, client) end
end

-- Announce on the session's channel that it ended (forgotten whole): its streams end.
local function publish_ended(session, cause)
  local seq = redis.call('INCR', P .. 'seq')
  redis.call('PUBLISH', CH .. session, '[' .. int(seq) .. ',"","ended","",0,{"type":"ended","sessionKey":' ..
    cjson.encode(session) .. ',"reason":"' .. cause .. '"}]')
end

-- The session changed now (what idle expiry and making room look at; `P changed` orders
-- every session by it, `P cs:<client>` its client's).
local function touch(session)
  local now = int(now_ms())
  redis.call('HSET', P .. 'c:' .. session, 'changed', now)
  redis.call('ZADD', P .. 'changed', now, session)
  redis.call('ZADD', P .. 'cs:' .. client_of(session), now, session)
end

-- Append a history entry, keeping at most MAX_HISTORY: the first HISTORY_HEAD (at most
-- half the cap), one entry standing for those left out (`omitted` counts them), the latest.
local function add_history(id, entry)
  local hkey = P .. 'h:' .. id
  local n = redis.call('RPUSH', hkey, entry)
  local limit = MAX_HISTORY
  if not limit or n <= limit or limit < 3 then return end
  local head = math.min(HISTORY_HEAD, math.floor(limit / 2))
  local marker = cjson.decode(redis.call('LINDEX', hkey, head))
  local absorbed = cjson.decode(redis.call('LINDEX', hkey, head + 1))
  local omitted = tonumber(marker.omitted) or 0
  if omitted == 0 then omitted = 1 end
  omitted = omitted + 1
  local e = '{"at":' .. int(absorbed.at) .. ',"status":"' .. absorbed.status .. '"'
  if type(marker.previous) == 'string' then e = e .. ',"previous":"' .. marker.previous .. '"' end
  e = e .. ',"attempt":' .. int(tonumber(absorbed.attempt) or 1) .. ',"reason":' ..
    cjson.encode(int(omitted) .. ' transitions omitted (history is capped at ' .. int(limit) .. ' entries)')
  if type(absorbed.error) == 'string' then e = e .. ',"error":' .. cjson.encode(absorbed.error) end
  e = e .. ',"omitted":' .. int(omitted) .. '}'
  redis.call('LSET', hkey, head, e)
  redis.call('LSET', hkey, head + 1, '')
  redis.call('LREM', hkey, 1, '')
end

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
-- one that has waited longest; not there when nothing of it waits.
local function place_session(S)
  local c, kinds = P .. 'c:' .. S, P .. 'px:' .. S
  if redis.call('ZCARD', P .. 'w:' .. S) == 0 then
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

-- Hand task ID (executor E) of session S to worker W: a SAQ job in W's queue.
local function dispatch(S, ID, W, E)
  local key = tkey(ID)
  local n = (tonumber(redis.call('HGET', key, 'attempts')) or 0) + 1
  local jk = ID .. ':' .. int(n) .. ':' .. int(redis.call('INCR', P .. 'seq'))
  local jid = job_id(W, jk)
  redis.call('SET', jid, '{"function":"async_tasks.attempt","kwargs":{"s":' .. cjson.encode(S) ..
    ',"t":"' .. ID .. '","a":' .. int(n) .. ',"k":"' .. jk .. '"},"queue":' .. cjson.encode(P .. 'w:' .. W) ..
    ',"key":"' .. jk .. '","timeout":0,"ttl":-1,"queued":' .. int(now_ms()) .. ',"status":"queued"}')
  redis.call('ZADD', queue_key(W, 'incomplete'), 0, jid)
  redis.call('RPUSH', queue_key(W, 'queued'), jid)
  redis.call('ZREM', P .. 'w:' .. S, ID)
  redis.call('ZREM', line(S, E), ID)
  redis.call('HINCRBY', P .. 'totals', 'p', -1)
  redis.call('SADD', P .. 'wq:' .. W, ID)
  redis.call('HSET', key, '_dv', 'q', '_jw', W, '_jk', jk)
  redis.call('HINCRBY', P .. 'c:' .. S, 'd', 1)
  redis.call('HINCRBY', P .. 'totals', 'd', 1)
  place_session(S)
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
  local workers
  while budget > 0 do
    budget = budget - 1
    if GLOBAL_LIMIT and counter(P .. 'totals', 'd') >= GLOBAL_LIMIT then return end
    workers = workers or free_workers()
    local S, E, best, head
    local seen = {}
    for _, w in ipairs(workers) do
      if w.free > 0 then
        for x in pairs(w.runs) do
          if not seen[x] then
            seen[x] = true
            local top = redis.call('ZRANGE', P .. 'ready:' .. x, 0, 0, 'WITHSCORES')
            if top[1] then
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
      dispatch(S, ID, chosen.id, E)
      chosen.free = chosen.free - 1
    else
      place_session(S)
    end
  end
end

-- Park a pending task in its session's waiting line (higher priority first, then first
-- parked first), or delay it until `due` (ms) if that is later than now. A task never
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
local function undeliver(S, ID)
  local key = tkey(ID)
  local f = redis.call('HMGET', key, '_dv', '_jw', '_jk', 'executor')
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
  place_session(S)
  return true
end

-- -- the indexes filters walk (status: `P ss:`, executor: `P se:`, tag: `P st:`, dead letter: `P sd:`;
-- and across sessions, for the admin view: `P all`, `P as:`, `P ae:`, `P ag:`, `P ad`)

local function index_task(S, ID, order, executor, tags)
  redis.call('ZADD', P .. 'se:' .. S .. ':' .. executor, order, ID)
  redis.call('ZADD', P .. 'ae:' .. executor, order, ID)
  for _, tag in ipairs(tags) do
    redis.call('ZADD', P .. 'st:' .. S .. ':' .. tag, order, ID)
    redis.call('ZADD', P .. 'ag:' .. tag, order, ID)
  end
end

local function unindex_task(S, ID)
  local f = redis.call('HMGET', tkey(ID), 'executor', 'tags')
  if f[1] then
    local executor = cjson.decode(f[1])
    redis.call('ZREM', P .. 'se:' .. S .. ':' .. executor, ID)
    redis.call('ZREM', P .. 'ae:' .. executor, ID)
  end
  if f[2] then
    for _, tag in ipairs(cjson.decode(f[2])) do
      redis.call('ZREM', P .. 'st:' .. S .. ':' .. tag, ID)
      redis.call('ZREM', P .. 'ag:' .. tag, ID)
    end
  end
  redis.call('ZREM', P .. 'sd:' .. S, ID)
  redis.call('ZREM', P .. 'ad', ID)
end

-- -- forgetting ---------------------------------------------------------------------------

-- Forget a task that is not running; its JSON when `want_json`. Its Idempotency-Key stays
-- (see `remember_key`): a request re-sent after its task is gone must not create another.
local function forget(session, id, want_json)
  local key = tkey(id)
  undeliver(session, id)
  local f = redis.call('HMGET', key, 'status', 'startedAt', 'completedAt')
  local status = unquote(f[1])
  local r = event_fields(key)
  local json
  if want_json then json = record_json(id) end
  unindex_task(session, id)
  redis.call('DEL', key, P .. 'h:' .. id, P .. 'l:' .. id)
  redis.call('ZREM', P .. 's:' .. session, id)
  redis.call('ZREM', P .. 'ss:' .. session .. ':' .. status, id)
  redis.call('ZREM', P .. 'all', id)
  redis.call('ZREM', P .. 'as:' .. status, id)
  local client = client_of(session)
  client_count('ctasks', client, -1)
  if FINISHED[status] then
    redis.call('ZREM', P .. 'f:' .. session .. ':' .. status, id)
    redis.call('ZREM', P .. 'cf:' .. client, id)
  elseif status == 'pending' then
    redis.call('ZREM', P .. 'u:' .. session, id)
    redis.call('ZREM', P .. 'cu:' .. client, id)
  end
  redis.call('HINCRBY', P .. 'c:' .. session, status, -1)
  redis.call('HINCRBY', P .. 'totals', status, -1)
  if status == 'completed' then
    local started, completed = tonumber(f[2]), tonumber(f[3])
    if started and completed then redis.call('HINCRBY', P .. 'c:' .. session, 'dur', started - completed) end
  end
  touch(session)
  publish(session, r, 'removed', 'null')
  return json
end

-- What the store removed by itself (retention, expiry): {cause, JSON, ...} for the caller's hooks.
local REMOVED = {}
local function drop(session, id, cause)
  local json = forget(session, id, WANT)
  if WANT then
    REMOVED[#REMOVED + 1] = cause
    REMOVED[#REMOVED + 1] = json
  end
end

local function forget_session_if_empty(session)
  if redis.call('ZCARD', P .. 's:' .. session) == 0 then
    local client = client_of(session)
    redis.call('DEL', P .. 'c:' .. session, P .. 'u:' .. session)
    -- With a window, its Idempotency-Keys stay until it ends (they expire by themselves).
    if not KEY_WINDOW then redis.call('DEL', P .. 'i:' .. session, P .. 'ik:' .. session) end
    if redis.call('SREM', P .. 'sessions', session) == 1 then client_count('csessions', client, -1) end
    redis.call('ZREM', P .. 'changed', session)
    redis.call('ZREM', P .. 'cs:' .. client, session)
  end
end

-- -- the status change --------------------------------------------------------------------

-- The task's last writes' operation ids (`_op`, the newest first, at most 8): a write re-sent
-- after its reply was lost finds its id there even if other writes came in between.
local function remember_op(ops)
  local kept = {OP}
  for op in string.gmatch(ops or '', '[^,]+') do
    if #kept < 8 and op ~= OP then kept[#kept + 1] = op end
  end
  return table.concat(kept, ',')
end

-- The compare-and-set every status change goes through. `o` holds the options ('' for
-- none): expect (',pending,running,'), attempt, owner (the worker that must be running it),
-- runner (the worker a start hands the attempt to),
-- reason / error / result (JSON), automatic, keep_auto, dead_letter ('1'), claim (a job key:
-- the start of a dispatched attempt), percent / step / description (a running attempt's last
-- report, stored with its outcome). Returns {'ok', previous status} or {'notfound'} or
-- {'refused', status}.
-- Leaving pending or running takes the task out of its delivery (a slot freed is refilled
-- when the script calls `pump`); entering pending does not deliver it (`deliver` does).
local function move(S, ID, target, o)
  local key = tkey(ID)
  local f = redis.call('HMGET', key, '_s', 'status', 'attempts', 'autoRetries', 'startedAt', '_sq', '_wk',
    '_dv', '_jk', '_op')
  if f[1] ~= S then return {'notfound'} end
  local source = unquote(f[2])
  local attempts = tonumber(f[3])
  if not ALLOWED[source][target]
    or (o.expect and o.expect ~= '' and not string.find(o.expect, ',' .. source .. ',', 1, true))
    or (o.attempt and o.attempt ~= '' and attempts ~= tonumber(o.attempt))
    or (o.owner and o.owner ~= '' and f[7] ~= o.owner) then
    return {'refused', source}
  end
  if o.claim and o.claim ~= '' and (f[8] ~= 'q' or f[9] ~= o.claim) then return {'refused', source} end
  local now = now_ms()
  local order = redis.call('INCR', P .. 'seq')
  local set = {'status', '"' .. target .. '"', 'updatedAt', int(now)}
  local function put(name, value) set[#set + 1] = name; set[#set + 1] = value end
  local client = client_of(S)
  if FINISHED[source] then
    redis.call('ZREM', P .. 'f:' .. S .. ':' .. source, ID)
    redis.call('ZREM', P .. 'cf:' .. client, ID)
  elseif source == 'pending' then
    redis.call('ZREM', P .. 'u:' .. S, ID)
    redis.call('ZREM', P .. 'cu:' .. client, ID)
  end
  if target ~= 'running' and (source == 'pending' or source == 'running') then undeliver(S, ID) end
  if target == 'running' then
    attempts = attempts + 1
    put('attempts', int(attempts))
    put('startedAt', int(now))
    put('completedAt', 'null')
    put('scheduledAt', 'null')
    put('_wk', o.runner or '')
  elseif target == 'pending' then
    put('progress', '0'); put('currentStep', 'null'); put('currentStepDescription', 'null')
    put('result', 'null'); put('error', 'null'); put('startedAt', 'null'); put('completedAt', 'null')
    put('deadLettered', 'false')
    if o.keep_auto ~= '1' then
      if o.automatic == '1' then put('autoRetries', int(tonumber(f[4]) + 1)) else put('autoRetries', '0') end
    end
  else
    if source == 'running' and o.percent and o.percent ~= '' then
      put('progress', o.percent)
      if o.step ~= '' then
        put('currentStep', o.step)
        if o.description ~= '' then put('currentStepDescription', o.description) else
          put('currentStepDescription', 'null') end
      elseif o.description ~= '' then
        put('currentStepDescription', o.description)
      end
    end
    put('completedAt', int(now))
    redis.call('ZADD', P .. 'f:' .. S .. ':' .. target, order, ID)
    redis.call('ZADD', P .. 'cf:' .. client, order, ID)
    if target == 'completed' then
      if o.result and o.result ~= '' then put('result', o.result) else put('result', 'null') end
      put('progress', '100')
      redis.call('HINCRBY', P .. 'c:' .. S, 'dur', now - (tonumber(f[5]) or now))
    elseif o.error and o.error ~= '' then
      put('error', o.error)
    end
    if o.dead_letter == '1' then put('deadLettered', 'true') else put('deadLettered', 'false') end
  end
  if target ~= 'running' then
    if o.dead_letter == '1' and target == 'failed' then
      redis.call('ZADD', P .. 'sd:' .. S, f[6], ID)
      redis.call('ZADD', P .. 'ad', f[6], ID)
    else
      redis.call('ZREM', P .. 'sd:' .. S, ID)
      redis.call('ZREM', P .. 'ad', ID)
    end
  end
  if source == 'running' then put('_wk', '') end
  if OP ~= '' then put('_op', remember_op(f[10])) end
  local entry = '{"at":' .. int(now) .. ',"status":"' .. target .. '","previous":"' .. source ..
    '","attempt":' .. int(math.max(attempts, 1))
  if o.reason and o.reason ~= '' then entry = entry .. ',"reason":' .. o.reason end
  if target == 'failed' and o.error and o.error ~= '' then entry = entry .. ',"error":' .. o.error end
  add_history(ID, entry .. '}')
  redis.call('HSET', key, unpack(set))
  redis.call('HINCRBY', P .. 'c:' .. S, source, -1)
  redis.call('HINCRBY', P .. 'c:' .. S, target, 1)
  redis.call('HINCRBY', P .. 'totals', source, -1)
  redis.call('HINCRBY', P .. 'totals', target, 1)
  redis.call('ZREM', P .. 'ss:' .. S .. ':' .. source, ID)
  redis.call('ZADD', P .. 'ss:' .. S .. ':' .. target, f[6], ID)
  redis.call('ZREM', P .. 'as:' .. source, ID)
  redis.call('ZADD', P .. 'as:' .. target, f[6], ID)
  touch(S)
  publish(S, event_fields(key), 'transition', '"' .. source .. '"')
  if FINISHED[target] and RETAIN then
    -- Retention as a task finishes: the oldest-finished beyond the limit go now (the
    -- task that just finished is the newest and always stays).
    local index = P .. 'f:' .. S .. ':' .. target
    local excess = redis.call('ZCARD', index) - math.max(RETAIN[target], 1)
    if excess > 0 then
      for _, id in ipairs(redis.call('ZRANGE', index, 0, excess - 1)) do drop(S, id, 'retention') end
    end
  end
  return {'ok', source}
end

-- A write whose operation id is among its task's last ones happened: the reply was lost
-- and the command re-sent. Answer as the first run did.
local function replayed_op(ID)
  if OP == '' then return false end
  local ops = redis.call('HGET', tkey(ID), '_op')
  return ops ~= false and string.find(',' .. ops .. ',', ',' .. OP .. ',', 1, true) ~= nil
end

-- The usual ending of a script that changed one task: its JSON and what retention removed.
local function done(ID)
  return {'ok', record_json(ID), REMOVED}
end

-- -- Idempotency-Keys ---------------------------------------------------------------------
-- A session's keys (`P i:<session>`: key -> '<task id>|<fingerprint>') outlive their tasks
-- for the idempotency window, by creation time in `P ik:<session>`; at most KEYS_KEPT per
-- session (the oldest go first). Without a window, a key lives as long as its task.

local function prune_keys(S, budget)
  local index, keys = P .. 'ik:' .. S, P .. 'i:' .. S
  local gone = {}
  if KEY_WINDOW then
    gone = redis.call('ZRANGEBYSCORE', index, '-inf', now_ms() - KEY_WINDOW, 'LIMIT', 0, budget)
  end
  if KEYS_KEPT then
    local excess = redis.call('ZCARD', index) - #gone - KEYS_KEPT
    if excess > 0 then gone = redis.call('ZRANGE', index, 0, #gone + math.min(excess, budget) - 1) end
  end
  for _, k in ipairs(gone) do
    redis.call('HDEL', keys, k)
    redis.call('ZREM', index, k)
  end
  return #gone
end

local function remember_key(S, k, value)
  redis.call('HSET', P .. 'i:' .. S, k, value)
  redis.call('ZADD', P .. 'ik:' .. S, now_ms(), k)
  prune_keys(S, 16)
  if KEY_WINDOW then
    -- The newest key's window is the longest: both go with it, session or not.
    redis.call('PEXPIRE', P .. 'i:' .. S, KEY_WINDOW)
    redis.call('PEXPIRE', P .. 'ik:' .. S, KEY_WINDOW)
  end
end
