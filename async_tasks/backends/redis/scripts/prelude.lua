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
-- then first come first served), 'd' delayed until a time (`P delayed`), or 'q'
-- dispatched to one worker (`_jw`): a SAQ job (`_jk`) in that worker's own queue,
-- queued or running. `pump` moves parked tasks to workers while a worker has a free
-- slot and the concurrency limits allow, always from the waiting session that holds
-- the fewest dispatched tasks (ties: the one waiting longest): fair sharing reads
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

-- The task's JSON object, built from its hash (our own `_` fields left out) and its history.
local function record_json(id)
  local flat = redis.call('HGETALL', tkey(id))
  local parts = {}
  for i = 1, #flat, 2 do
    if string.byte(flat[i], 1) ~= 95 then
      parts[#parts + 1] = '"' .. flat[i] .. '":' .. flat[i + 1]
    end
  end
  parts[#parts + 1] = '"history":[' .. table.concat(redis.call('LRANGE', P .. 'h:' .. id, 0, -1), ',') .. ']'
  parts[#parts + 1] = '"logs":[' .. table.concat(redis.call('LRANGE', P .. 'l:' .. id, 0, -1), ',') .. ']'
  return '{' .. table.concat(parts, ',') .. '}'
end

-- What a list item shows: the summary fields only (never params, metadata, result or history),
-- so a page costs its length, not the bytes its tasks hold.
local function summary_json(id)
  local v = redis.call('HMGET', tkey(id), unpack(SUMMARY_FIELDS))
  local parts = {'"params":null'}
  for i, name in ipairs(SUMMARY_FIELDS) do
    if v[i] then parts[#parts + 1] = '"' .. name .. '":' .. v[i] end
  end
  if v[#SUMMARY_FIELDS] then  -- `logsDropped` is there once the task has a log
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

-- The session changed now (what idle expiry looks at).
local function touch(session)
  redis.call('HSET', P .. 'c:' .. session, 'changed', int(now_ms()))
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

local function counter(key, field) return tonumber(redis.call('HGET', key, field)) or 0 end

-- The session's place among those waiting for a slot: fewest dispatched first, then the one
-- that has waited longest; not there when nothing of it waits.
local function place_session(S)
  local ready = P .. 'ready'
  if redis.call('ZCARD', P .. 'w:' .. S) == 0 then
    redis.call('ZREM', ready, S)
    redis.call('HDEL', P .. 'c:' .. S, 'waiting')
    return
  end
  local c = P .. 'c:' .. S
  local since = tonumber(redis.call('HGET', c, 'waiting'))
  if not since then
    since = redis.call('INCR', P .. 'seq') % TICKET
    redis.call('HSET', c, 'waiting', int(since))
  end
  redis.call('ZADD', ready, counter(c, 'd') * TICKET + since, S)
end

-- The live worker with the most free slots (nil when every slot is taken).
local function pick_worker()
  local best, most = nil, 0
  local flat = redis.call('HGETALL', P .. 'workers')
  for i = 1, #flat, 2 do
    local free = tonumber(flat[i + 1]) - redis.call('SCARD', P .. 'wq:' .. flat[i])
    if free > most and redis.call('SISMEMBER', P .. 'retired', flat[i]) == 0 then best, most = flat[i], free end
  end
  return best
end

-- Hand task ID of session S to worker W: a SAQ job in W's queue.
local function dispatch(S, ID, W)
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
  redis.call('HINCRBY', P .. 'totals', 'p', -1)
  redis.call('SADD', P .. 'wq:' .. W, ID)
  redis.call('HSET', key, '_dv', 'q', '_jw', W, '_jk', jk)
  redis.call('HINCRBY', P .. 'c:' .. S, 'd', 1)
  redis.call('HINCRBY', P .. 'totals', 'd', 1)
  place_session(S)
end

-- Dispatch parked tasks while the limits and the workers' slots allow (at most `budget`).
local function pump(budget)
  local ready = P .. 'ready'
  while budget > 0 do
    budget = budget - 1
    if GLOBAL_LIMIT and counter(P .. 'totals', 'd') >= GLOBAL_LIMIT then return end
    local S = redis.call('ZRANGE', ready, 0, 0)[1]
    if not S then return end
    -- The least busy waiting session: if it may not take a slot, none may.
    if SESSION_LIMIT and counter(P .. 'c:' .. S, 'd') >= SESSION_LIMIT then return end
    local W = pick_worker()
    if not W then return end
    local ID = redis.call('ZRANGE', P .. 'w:' .. S, 0, 0)[1]
    if ID then dispatch(S, ID, W) else place_session(S) end
  end
end

-- Park a pending task in its session's waiting line (higher priority first, then first
-- parked first), or delay it until `due` (ms) if that is later than now.
local function deliver(S, ID, due)
  local key = tkey(ID)
  local f = redis.call('HMGET', key, '_dv', 'priority')
  if f[1] and f[1] ~= '' then return false end
  if due and due > now_ms() then
    redis.call('ZADD', P .. 'delayed', due, ID)
    redis.call('HSET', key, '_dv', 'd', 'scheduledAt', int(due))
    return true
  end
  local priority = math.max(-4000, math.min(4000, tonumber(f[2]) or 0))
  local seq = redis.call('INCR', P .. 'seq') % TICKET
  redis.call('ZADD', P .. 'w:' .. S, -priority * TICKET + seq, ID)
  redis.call('HINCRBY', P .. 'totals', 'p', 1)
  redis.call('HSET', key, '_dv', 'p', 'scheduledAt', 'null')
  place_session(S)
  return true
end

-- Take the task out of wherever it waits or runs; true when that freed a dispatched slot.
local function undeliver(S, ID)
  local key = tkey(ID)
  local f = redis.call('HMGET', key, '_dv', '_jw', '_jk')
  local place = f[1]
  if not place or place == '' then return false end
  redis.call('HSET', key, '_dv', '', '_jw', '', '_jk', '', 'scheduledAt', 'null')
  if place == 'p' then
    redis.call('ZREM', P .. 'w:' .. S, ID)
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

-- -- the indexes filters walk (status: `P ss:`, executor: `P se:`, tag: `P st:`, dead letter: `P sd:`)

local function index_task(S, ID, order, executor, tags)
  redis.call('ZADD', P .. 'se:' .. S .. ':' .. executor, order, ID)
  for _, tag in ipairs(tags) do redis.call('ZADD', P .. 'st:' .. S .. ':' .. tag, order, ID) end
end

local function unindex_task(S, ID)
  local f = redis.call('HMGET', tkey(ID), 'executor', 'tags')
  if f[1] then redis.call('ZREM', P .. 'se:' .. S .. ':' .. cjson.decode(f[1]), ID) end
  if f[2] then
    for _, tag in ipairs(cjson.decode(f[2])) do redis.call('ZREM', P .. 'st:' .. S .. ':' .. tag, ID) end
  end
  redis.call('ZREM', P .. 'sd:' .. S, ID)
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
  if FINISHED[status] then
    redis.call('ZREM', P .. 'f:' .. session .. ':' .. status, id)
  elseif status == 'pending' then
    redis.call('ZREM', P .. 'u:' .. session, id)
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
    redis.call('DEL', P .. 'c:' .. session, P .. 'u:' .. session)
    -- With a window, its Idempotency-Keys stay until it ends (they expire by themselves).
    if not KEY_WINDOW then redis.call('DEL', P .. 'i:' .. session, P .. 'ik:' .. session) end
    redis.call('SREM', P .. 'sessions', session)
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
  if FINISHED[source] then
    redis.call('ZREM', P .. 'f:' .. S .. ':' .. source, ID)
  elseif source == 'pending' then
    redis.call('ZREM', P .. 'u:' .. S, ID)
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
    else
      redis.call('ZREM', P .. 'sd:' .. S, ID)
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
