-- The prelude of every script, first of three files (`scripts.py` puts them before each
-- script, in this order, as one text: Redis runs each script as one chunk, so a helper
-- must come before its first use): here settings, time, the record's JSON, events,
-- clients and history; `prelude_delivery.lua` the delivery of attempts;
-- `prelude_changes.lua` the indexes, forgetting, the compare-and-set of a status change
-- and Idempotency-Keys.
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
-- How many of session S's tasks are in `status`: the size of its index (`P ss:<session>:<status>`;
-- every deployment's: `P as:<status>`, S nil). No counter is kept beside an index.
local function in_status(S, status)
  if S then return redis.call('ZCARD', P .. 'ss:' .. S .. ':' .. status) end
  return redis.call('ZCARD', P .. 'as:' .. status)
end

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

-- Publish a change as the push streams' envelope: [seq, taskId, type, status, attempt, event];
-- `seq`: its number when the caller has taken it already (see `move`).
local function publish(session, r, kind, previous, seq)
  seq = seq or redis.call('INCR', P .. 'seq')
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
-- `f`: the task's fields in `LOG_FIELDS` when the caller has just read them.
local LOG_FIELDS = {'logsDropped', '_lb', 'status', 'attempts', 'updatedAt', 'sessionKey'}
local function add_logs(S, ID, skipped, lines, f)
  local key, lkey = tkey(ID), P .. 'l:' .. ID
  f = f or redis.call('HMGET', key, unpack(LOG_FIELDS))
  local dropped = (tonumber(f[1]) or 0) + skipped
  local bytes = tonumber(f[2]) or 0
  local before = redis.call('LLEN', lkey)
  local count, n = before, dropped + before
  local added = {}
  for _, body in ipairs(lines) do
    n = n + 1
    local line = '{"n":' .. int(n) .. ',' .. string.sub(body, 2)
    added[#added + 1] = line
    bytes = bytes + #line
  end
  if #added > 0 then redis.call('RPUSH', lkey, unpack(added)) end
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

-- (Read once a script: `CLIENTS` remembers it; a script that sets or deletes `cl` says so.)
local CLIENTS = {}
local function client_of(session)
  local client = CLIENTS[session]
  if not client then
    client = redis.call('HGET', P .. 'c:' .. session, 'cl') or session
    CLIENTS[session] = client
  end
  return client
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
