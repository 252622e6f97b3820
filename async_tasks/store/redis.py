"""The Redis task store: tasks shared by every API and worker process.

Each method is one Lua script (or a read-only pipeline), so every multi-key change
is atomic and time comes from Redis (``TIME``), never from a machine's clock (a test
clock, `FakeClock`, is passed in instead). Keys, under a per-deployment prefix ``P``
(``REDIS_KEY_PREFIX``)::

    P t:<id>                   hash: the task; every field a JSON value, named as the
                               HTTP contract names it (``_``-prefixed fields are ours)
    P h:<id>                   list: the task's history entries (JSON), capped by the policy
    P s:<session>              zset: the session's task ids by creation sequence
    P ss:<session>:<status>    zset: the same, per status (a page by status is O(page))
    P f:<session>:<status>     zset: finished ids by finish sequence (retention, finished TTL)
    P u:<session>              zset: pending tasks never started, by creation sequence (their lifetime)
    P c:<session>              hash: counts by status, the summed run time of completed
                               tasks and when the session last changed (idle expiry)
    P i:<session>              hash: Idempotency-Key -> "<task id>|<fingerprint>"
    P totals / P sessions      every session's counts by status / the sessions holding tasks
    P running                  hash: running task id -> the worker that runs it (the reconciler's index)
    P workers                  hash: live worker id -> its concurrency (the slots fair sharing divides)
    P seq                      the global event sequence: every change takes the next number
    P b:<bucket>               token buckets (they expire once full: no pruning needed)

The store's `policy` applies inside the scripts: retention as a task finishes (in the
transition's own script) and the cap on each task's history. The server-wide caps
(`CreateLimits.max_tasks`, `max_sessions`) are checked by the create script, so they
hold across every process. `expire` and `trim` of every session walk the sessions in
batches (one script per batch, a budget of changes per script).

Every change is also published, from inside its script, on the session's channel
``<channel prefix><session>`` as the envelope the push streams read (`async_tasks.web.streams`),
so a browser connected to any API process sees changes made by any process, in the
order Redis applied them. Changes made through this object are published on `events`
too, and its `on_removed` hooks learn what the scripts removed by themselves and why
(metrics and tests listen there): what another process does reaches its own hub only.

Params and results come back as plain JSON values (the store does not know the
executors' types); the execution backend converts params before `execute`. Needs a
standalone Redis (scripts compute key names; Redis Cluster is not supported).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final, cast

import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from async_tasks.clock import SYSTEM_CLOCK, Clock
from async_tasks.errors import StoreUnavailable, TaskNotFound
from async_tasks.events import EventHub, EventType, TaskEvent
from async_tasks.store.base import (
    ACTIONS,
    HISTORY_HEAD,
    CreateLimits,
    Expiry,
    ExpiryResult,
    Idempotency,
    Retention,
    SessionCounts,
    SessionPage,
    StorePolicy,
    StoreTotals,
    TaskFilter,
    TaskPage,
    TrimResult,
    idempotency_conflict,
    quota_exceeded,
    refusal,
    too_many_sessions,
    too_many_tasks,
)
from async_tasks.task import Task, TaskStatus

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

#: Default key prefix: one per deployment sharing a Redis.
DEFAULT_PREFIX: Final = "async-tasks:"
#: Tasks `trim` and `expire` change per script call (a script blocks Redis while it runs).
TRIM_BATCH: Final = 2000
#: Sessions `trim` and `expire` of every session look at per script call.
TRIM_SESSIONS: Final = 200

_STATUSES: Final = tuple(status.value for status in TaskStatus)
_encode = msgspec.json.Encoder().encode
_decode_task = msgspec.json.Decoder(Task).decode
_decode_tasks = msgspec.json.Decoder(list[Task]).decode
_decode_str = msgspec.json.Decoder(str).decode


class SessionBusy(Exception):
    """A start was refused because a concurrency limit (the session's or the global one) is reached."""

    def __init__(self, scope: str) -> None:
        super().__init__(f"the {scope} concurrency limit is reached")
        self.scope = scope


# -- Lua ----------------------------------------------------------------------------
# Every script starts with this prelude. ARGV[1] is the key prefix, ARGV[2] the channel
# prefix, ARGV[3] the time in ms ('' to read Redis's TIME: only a test clock passes
# one), ARGV[4] the store's policy ('<max completed>,<max failed>,<max cancelled>,<max
# history>', '' for none), ARGV[5] '1' when the caller wants the records of the tasks a
# script removes (its event hooks listen). Each script's own arguments start at ARGV[6].
_PRELUDE = r"""
local P, CH, CLOCK, WANT = ARGV[1], ARGV[2], ARGV[3], ARGV[5] == '1'
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
local HISTORY_HEAD = __HISTORY_HEAD__

local RETAIN, MAX_HISTORY
do
  local policy = {}
  for value in string.gmatch(ARGV[4] .. ',', '([^,]*),') do policy[#policy + 1] = value end
  if policy[1] and policy[1] ~= '' then
    RETAIN = {completed = tonumber(policy[1]), failed = tonumber(policy[2]), cancelled = tonumber(policy[3])}
  end
  if policy[4] and policy[4] ~= '' then MAX_HISTORY = tonumber(policy[4]) end
end

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

-- The task's JSON object, built from its hash (our own `_` fields left out) and its history list.
local function record_json(id)
  local flat = redis.call('HGETALL', P .. 't:' .. id)
  local parts = {}
  for i = 1, #flat, 2 do
    if string.byte(flat[i], 1) ~= 95 then
      parts[#parts + 1] = '"' .. flat[i] .. '":' .. flat[i + 1]
    end
  end
  parts[#parts + 1] = '"history":[' .. table.concat(redis.call('LRANGE', P .. 'h:' .. id, 0, -1), ',') .. ']'
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

-- Forget a task that is not running; its JSON when `want_json`.
local function forget(session, id, want_json)
  local key = P .. 't:' .. id
  local f = redis.call('HMGET', key, 'status', 'startedAt', 'completedAt', '_ik')
  local status = unquote(f[1])
  local r = event_fields(key)
  local json
  if want_json then json = record_json(id) end
  redis.call('DEL', key, P .. 'h:' .. id)
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
  if f[4] then redis.call('HDEL', P .. 'i:' .. session, f[4]) end
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
    redis.call('DEL', P .. 'c:' .. session, P .. 'i:' .. session, P .. 'u:' .. session)
    redis.call('SREM', P .. 'sessions', session)
  end
end

-- The compare-and-set every status change goes through (see `RedisTaskStore.transition`).
-- `o` holds the options as script arguments ('' for none). Returns {'ok', JSON} or
-- {'notfound'}, {'refused', status}, {'busy', scope}.
local function move(S, ID, target, o)
  local key = P .. 't:' .. ID
  local f = redis.call('HMGET', key, '_s', 'status', 'attempts', 'autoRetries', 'startedAt', '_sq')
  if f[1] ~= S then return {'notfound'} end
  local source = unquote(f[2])
  local attempts = tonumber(f[3])
  if not ALLOWED[source][target]
    or (o.expect ~= '' and not string.find(o.expect, ',' .. source .. ',', 1, true))
    or (o.attempt ~= '' and attempts ~= tonumber(o.attempt)) then
    return {'refused', source}
  end
  if target == 'running' then
    if o.session_limit ~= '' and
      (tonumber(redis.call('HGET', P .. 'c:' .. S, 'running')) or 0) >= tonumber(o.session_limit) then
      return {'busy', 'session'}
    end
    if o.global_limit ~= '' and
      (tonumber(redis.call('HGET', P .. 'totals', 'running')) or 0) >= tonumber(o.global_limit) then
      return {'busy', 'global'}
    end
    if o.fair == '1' then
      -- While other sessions wait, a session runs fewer tasks than there are free slots.
      local all = redis.call('HMGET', P .. 'totals', 'pending', 'running')
      local own = redis.call('HMGET', P .. 'c:' .. S, 'pending', 'running')
      if (tonumber(all[1]) or 0) > (tonumber(own[1]) or 0) then
        local slots = 0
        for _, n in ipairs(redis.call('HVALS', P .. 'workers')) do slots = slots + tonumber(n) end
        if o.global_limit ~= '' then slots = math.min(slots, tonumber(o.global_limit)) end
        if (tonumber(own[2]) or 0) >= slots - (tonumber(all[2]) or 0) then return {'busy', 'fair'} end
      end
    end
  end
  local now = now_ms()
  local order = redis.call('INCR', P .. 'seq')
  local set = {'status', '"' .. target .. '"', 'updatedAt', int(now)}
  local function put(name, value) set[#set + 1] = name; set[#set + 1] = value end
  if FINISHED[source] then
    redis.call('ZREM', P .. 'f:' .. S .. ':' .. source, ID)
  elseif source == 'pending' then
    redis.call('ZREM', P .. 'u:' .. S, ID)
  end
  if target == 'running' then
    attempts = attempts + 1
    put('attempts', int(attempts))
    put('startedAt', int(now))
    put('completedAt', 'null')
    put('_wk', o.owner)
    redis.call('HSET', P .. 'running', ID, o.owner)
  elseif target == 'pending' then
    put('progress', '0'); put('currentStep', 'null'); put('currentStepDescription', 'null')
    put('result', 'null'); put('error', 'null'); put('startedAt', 'null'); put('completedAt', 'null')
    put('deadLettered', 'false')
    if o.keep_auto ~= '1' then
      if o.automatic == '1' then put('autoRetries', int(tonumber(f[4]) + 1)) else put('autoRetries', '0') end
    end
  else
    if source == 'running' and o.percent ~= '' then
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
      if o.result ~= '' then put('result', o.result) else put('result', 'null') end
      put('progress', '100')
      redis.call('HINCRBY', P .. 'c:' .. S, 'dur', now - (tonumber(f[5]) or now))
    elseif o.error ~= '' then
      put('error', o.error)
    end
    if o.dead_letter == '1' then put('deadLettered', 'true') else put('deadLettered', 'false') end
  end
  if source == 'running' then redis.call('HDEL', P .. 'running', ID) end
  local entry = '{"at":' .. int(now) .. ',"status":"' .. target .. '","previous":"' .. source ..
    '","attempt":' .. int(math.max(attempts, 1))
  if o.reason ~= '' then entry = entry .. ',"reason":' .. o.reason end
  if target == 'failed' and o.error ~= '' then entry = entry .. ',"error":' .. o.error end
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
  local json = record_json(ID)
  if FINISHED[target] and RETAIN then
    -- Retention as a task finishes: the oldest-finished beyond the limit go now (the
    -- task that just finished is the newest and always stays).
    local index = P .. 'f:' .. S .. ':' .. target
    local excess = redis.call('ZCARD', index) - math.max(RETAIN[target], 1)
    if excess > 0 then
      for _, id in ipairs(redis.call('ZRANGE', index, 0, excess - 1)) do drop(S, id, 'retention') end
    end
  end
  return {'ok', json}
end

local function options(expect, reason)
  return {expect = expect, attempt = '', reason = reason, error = '', result = '', automatic = '0',
    dead_letter = '0', owner = '', session_limit = '', global_limit = '', keep_auto = '0', percent = '',
    step = '', description = '', fair = ''}
end
""".replace("__HISTORY_HEAD__", str(HISTORY_HEAD))

# ARGV: 6 session, 7 task id, 8 max active, 9 idempotency key ('' for none), 10 its fingerprint,
# 11 max tasks (''), 12 max sessions (''), 13.. static field name / JSON value pairs.
_CREATE = r"""
local S, ID = ARGV[6], ARGV[7]
local ik = ARGV[9]
if ik ~= '' then
  local seen = redis.call('HGET', P .. 'i:' .. S, ik)
  if seen then
    local sep = string.find(seen, '|', 1, true)
    local other, fingerprint = string.sub(seen, 1, sep - 1), string.sub(seen, sep + 1)
    if fingerprint ~= ARGV[10] then return {'conflict', other} end
    return {'replay', record_json(other)}
  end
end
if redis.call('SISMEMBER', P .. 'sessions', S) == 1 then
  local counts = redis.call('HMGET', P .. 'c:' .. S, 'pending', 'running')
  local active = (tonumber(counts[1]) or 0) + (tonumber(counts[2]) or 0)
  if active >= tonumber(ARGV[8]) then return {'quota', int(active)} end
elseif ARGV[12] ~= '' then
  local held = redis.call('SCARD', P .. 'sessions')
  if held >= tonumber(ARGV[12]) then return {'sessions', int(held)} end
end
if ARGV[11] ~= '' then
  local held = 0
  for _, n in ipairs(redis.call('HVALS', P .. 'totals')) do held = held + tonumber(n) end
  if held >= tonumber(ARGV[11]) then return {'tasks', int(held)} end
end
local now = int(now_ms())
local order = redis.call('INCR', P .. 'seq')
local key = P .. 't:' .. ID
local fields = {'_s', S, '_sq', int(order), 'status', '"pending"', 'progress', '0', 'currentStep', 'null',
  'currentStepDescription', 'null', 'result', 'null', 'error', 'null', 'attempts', '0', 'autoRetries', '0',
  'deadLettered', 'false', 'createdAt', now, 'updatedAt', now, 'startedAt', 'null', 'completedAt', 'null'}
for i = 13, #ARGV do fields[#fields + 1] = ARGV[i] end
if ik ~= '' then
  fields[#fields + 1] = '_ik'
  fields[#fields + 1] = ik
  redis.call('HSET', P .. 'i:' .. S, ik, ID .. '|' .. ARGV[10])
end
redis.call('HSET', key, unpack(fields))
redis.call('RPUSH', P .. 'h:' .. ID, '{"at":' .. now .. ',"status":"pending","attempt":1,"reason":"created"}')
redis.call('ZADD', P .. 's:' .. S, order, ID)
redis.call('ZADD', P .. 'ss:' .. S .. ':pending', order, ID)
redis.call('ZADD', P .. 'u:' .. S, order, ID)
redis.call('HINCRBY', P .. 'c:' .. S, 'pending', 1)
redis.call('HINCRBY', P .. 'totals', 'pending', 1)
redis.call('SADD', P .. 'sessions', S)
touch(S)
publish(S, event_fields(key), 'transition', 'null')
return {'created', record_json(ID)}
"""

# ARGV: 6 session, 7 task id, 8 target, 9 expected statuses (',pending,running,' or ''),
# 10 attempt (''), 11 reason JSON (''), 12 error JSON (''), 13 result JSON (''), 14 automatic,
# 15 dead letter, 16 owner (''), 17 session running limit (''), 18 global running limit (''),
# 19 keep the automatic-retry count ('1'), 20 a last progress report's percent JSON (''),
# 21 its step JSON (''), 22 its description JSON ('') (a running attempt's last report, stored
# with its outcome), 23 '1' to apply fair sharing to a start. Returns {'ok', JSON, removed}
# or the refusal.
_TRANSITION = r"""
local r = move(ARGV[6], ARGV[7], ARGV[8], {expect = ARGV[9], attempt = ARGV[10], reason = ARGV[11],
  error = ARGV[12], result = ARGV[13], automatic = ARGV[14], dead_letter = ARGV[15], owner = ARGV[16],
  session_limit = ARGV[17], global_limit = ARGV[18], keep_auto = ARGV[19], percent = ARGV[20],
  step = ARGV[21], description = ARGV[22], fair = ARGV[23]})
if r[1] == 'ok' then r[3] = REMOVED end
return r
"""

# ARGV: 6 session, 7 task id, 8 attempt, 9 percent JSON, 10 step JSON (''), 11 description JSON (''),
# 12 '1' to return the task's JSON.
_PROGRESS = r"""
local S, ID = ARGV[6], ARGV[7]
local key = P .. 't:' .. ID
local f = redis.call('HMGET', key, '_s', 'status', 'attempts')
if f[1] ~= S or f[2] ~= '"running"' or f[3] ~= ARGV[8] then return 0 end
local set = {'progress', ARGV[9], 'updatedAt', int(now_ms())}
if ARGV[10] ~= '' then
  set[5] = 'currentStep'; set[6] = ARGV[10]
  set[7] = 'currentStepDescription'
  if ARGV[11] ~= '' then set[8] = ARGV[11] else set[8] = 'null' end
elseif ARGV[11] ~= '' then
  set[5] = 'currentStepDescription'; set[6] = ARGV[11]
end
redis.call('HSET', key, unpack(set))
publish(S, event_fields(key), 'progress', 'null')
if ARGV[12] == '1' then return record_json(ID) end
return 1
"""

# ARGV: 6 session, 7 task id.
_REMOVE = r"""
local S, ID = ARGV[6], ARGV[7]
local f = redis.call('HMGET', P .. 't:' .. ID, '_s', 'status')
if f[1] ~= S then return {'notfound'} end
if f[2] == '"running"' then return {'refused', 'running'} end
local json = forget(S, ID, true)
forget_session_if_empty(S)
return {'ok', json}
"""

# ARGV: 6 max completed, 7 max failed, 8 max cancelled, 9 budget, 10.. sessions.
# Returns {completed, failed, cancelled, budget left, removed}.
_TRIM = r"""
local limits = {completed = tonumber(ARGV[6]), failed = tonumber(ARGV[7]), cancelled = tonumber(ARGV[8])}
local budget = tonumber(ARGV[9])
local removed = {completed = 0, failed = 0, cancelled = 0}
for i = 10, #ARGV do
  local S = ARGV[i]
  for _, status in ipairs({'completed', 'failed', 'cancelled'}) do
    local index = P .. 'f:' .. S .. ':' .. status
    local excess = redis.call('ZCARD', index) - limits[status]
    if excess > 0 and budget > 0 then
      local ids = redis.call('ZRANGE', index, 0, math.min(excess, budget) - 1)
      for _, id in ipairs(ids) do drop(S, id, 'retention') end
      removed[status] = removed[status] + #ids
      budget = budget - #ids
    end
  end
  forget_session_if_empty(S)
end
return {removed.completed, removed.failed, removed.cancelled, budget, REMOVED}
"""

# ARGV: 6 finished TTL ms (''), 7 pending lifetime ms (''), 8 session idle ms (''), 9 budget,
# 10 the expired pending tasks' history reason (JSON), 11.. sessions.
# Returns {finished removed, sessions forgotten, their tasks, budget left, cancelled JSONs, removed}.
_EXPIRE = r"""
local now = now_ms()
local budget = tonumber(ARGV[9])
local finished, sessions, session_tasks = 0, 0, 0
local cancelled = {}
for i = 11, #ARGV do
  local S = ARGV[i]
  if budget <= 0 then break end
  if ARGV[7] ~= '' then
    local cutoff = now - tonumber(ARGV[7])
    for _, id in ipairs(redis.call('ZRANGE', P .. 'u:' .. S, 0, budget - 1)) do
      if (tonumber(redis.call('HGET', P .. 't:' .. id, 'createdAt')) or 0) > cutoff then break end
      local r = move(S, id, 'cancelled', options(',pending,', ARGV[10]))
      if r[1] == 'ok' then cancelled[#cancelled + 1] = r[2] end
      budget = budget - 1
    end
  end
  if ARGV[6] ~= '' then
    local cutoff = now - tonumber(ARGV[6])
    for _, status in ipairs({'completed', 'failed', 'cancelled'}) do
      local index = P .. 'f:' .. S .. ':' .. status
      while budget > 0 do
        local oldest = redis.call('ZRANGE', index, 0, 0)[1]
        if not oldest then break end
        if (tonumber(redis.call('HGET', P .. 't:' .. oldest, 'completedAt')) or 0) > cutoff then break end
        drop(S, oldest, 'expired')
        finished = finished + 1
        budget = budget - 1
      end
    end
  end
  if ARGV[8] ~= '' and budget > 0 then
    local c = redis.call('HMGET', P .. 'c:' .. S, 'pending', 'running', 'changed')
    local active = (tonumber(c[1]) or 0) + (tonumber(c[2]) or 0)
    if active == 0 and c[3] and tonumber(c[3]) <= now - tonumber(ARGV[8]) then
      local ids = redis.call('ZRANGE', P .. 's:' .. S, 0, -1)
      if #ids > 0 then
        sessions = sessions + 1
        session_tasks = session_tasks + #ids
        for _, id in ipairs(ids) do drop(S, id, 'expired') end
        budget = budget - #ids
      end
      redis.call('DEL', P .. 'b:' .. S)
    end
  end
  forget_session_if_empty(S)
end
return {finished, sessions, session_tasks, budget, cancelled, REMOVED}
"""

# ARGV: 6 session, 7 status (''), 8 executor JSON (''), 9 tag (''), 10 dead letter ('', 'true', 'false'),
# 11 offset, 12 limit (-1 for all). Returns {total, JSON array of the page}.
_QUERY = r"""
local S = ARGV[6]
local index = P .. 's:' .. S
if ARGV[7] ~= '' then index = P .. 'ss:' .. S .. ':' .. ARGV[7] end
local offset, limit = tonumber(ARGV[11]), tonumber(ARGV[12])
local page = {}
local total
if ARGV[8] == '' and ARGV[9] == '' and ARGV[10] == '' then
  total = redis.call('ZCARD', index)
  local stop = -1
  if limit >= 0 then stop = offset + limit - 1 end
  if limit ~= 0 then
    for _, id in ipairs(redis.call('ZREVRANGE', index, offset, stop)) do
      page[#page + 1] = record_json(id)
    end
  end
else
  total = 0
  for _, id in ipairs(redis.call('ZREVRANGE', index, 0, -1)) do
    local f = redis.call('HMGET', P .. 't:' .. id, 'executor', 'tags', 'deadLettered')
    local match = (ARGV[8] == '' or f[1] == ARGV[8]) and (ARGV[10] == '' or f[3] == ARGV[10])
    if match and ARGV[9] ~= '' then
      match = false
      for _, tag in ipairs(cjson.decode(f[2])) do if tag == ARGV[9] then match = true end end
    end
    if match then
      if total >= offset and (limit < 0 or #page < limit) then page[#page + 1] = record_json(id) end
      total = total + 1
    end
  end
end
return {total, '[' .. table.concat(page, ',') .. ']'}
"""

# ARGV: 6 session, 7 task id ('' for all the session's tasks). Returns {seq, JSON array, newest first}.
_SNAPSHOT = r"""
local S = ARGV[6]
local seq = tonumber(redis.call('GET', P .. 'seq')) or 0
local page = {}
if ARGV[7] ~= '' then
  if redis.call('HGET', P .. 't:' .. ARGV[7], '_s') == S then page[1] = record_json(ARGV[7]) end
else
  for _, id in ipairs(redis.call('ZREVRANGE', P .. 's:' .. S, 0, -1)) do
    page[#page + 1] = record_json(id)
  end
end
return {int(seq), '[' .. table.concat(page, ',') .. ']'}
"""

# ARGV: 6 session, 7 task id. The task's JSON if it belongs to the session, else nil.
_GET = r"""
if redis.call('HGET', P .. 't:' .. ARGV[7], '_s') ~= ARGV[6] then return false end
return record_json(ARGV[7])
"""

# ARGV: 6 bucket, 7 rate per second, 8 burst. Returns the seconds to wait, as a string ('0' = granted).
_TOKEN = r"""
local key = P .. 'b:' .. ARGV[6]
local rate, burst = tonumber(ARGV[7]), tonumber(ARGV[8])
local now
if CLOCK ~= '' then
  now = tonumber(CLOCK) / 1000
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local f = redis.call('HMGET', key, 'tokens', 'at')
local tokens, last = tonumber(f[1]), tonumber(f[2])
if not tokens then tokens, last = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - last) * rate)
local wait = '0'
if tokens < 1 then
  wait = string.format('%.6f', (1 - tokens) / rate)
else
  tokens = tokens - 1
end
redis.call('HSET', key, 'tokens', string.format('%.6f', tokens), 'at', string.format('%.6f', now))
-- A full bucket is the same as none: it goes once it would have refilled.
redis.call('PEXPIRE', key, math.ceil((burst - tokens) / rate * 1000) + 1000)
return wait
"""

# ARGV: 6 session, 7 task id, 8 the key prefix of queued jobs ('' to count every pending
# task). The task's place among the session's pending tasks (higher priority first, then
# oldest first) that have a job ``<8><task id>:<next attempt>`` waiting; nil if it has none.
_POSITION = r"""
local S, ID, JOBS = ARGV[6], ARGV[7], ARGV[8]
local index = P .. 'ss:' .. S .. ':pending'
local function waiting(id)
  local f = redis.call('HMGET', P .. 't:' .. id, 'priority', 'attempts')
  if JOBS ~= '' and redis.call('EXISTS', JOBS .. id .. ':' .. int(tonumber(f[2]) + 1)) == 0 then return nil end
  return tonumber(f[1]) or 0
end
local seq = redis.call('ZSCORE', index, ID)
if not seq then return false end
seq = tonumber(seq)
local priority = waiting(ID)
if not priority then return false end
local ahead = 0
local flat = redis.call('ZRANGE', index, 0, -1, 'WITHSCORES')
for i = 1, #flat, 2 do
  if flat[i] ~= ID then
    local p = waiting(flat[i])
    if p and (p > priority or (p == priority and tonumber(flat[i + 1]) < seq)) then ahead = ahead + 1 end
  end
end
return ahead + 1
"""

# ARGV: 6 a worker's id. Running tasks whose worker's lease has expired or that this
# worker runs: flat {task id, session JSON, attempts, worker id, ...}. Forgets the
# slots of the workers whose lease has expired.
_LOST = r"""
local out = {}
local workers = redis.call('HKEYS', P .. 'workers')
for _, worker in ipairs(workers) do
  if redis.call('EXISTS', P .. 'wk:' .. worker) == 0 then redis.call('HDEL', P .. 'workers', worker) end
end
local running = redis.call('HGETALL', P .. 'running')
for i = 1, #running, 2 do
  local id, worker = running[i], running[i + 1]
  if worker ~= '' and (worker == ARGV[6] or redis.call('EXISTS', P .. 'wk:' .. worker) == 0) then
    local f = redis.call('HMGET', P .. 't:' .. id, 'sessionKey', 'attempts')
    if f[1] then
      out[#out + 1] = id; out[#out + 1] = f[1]; out[#out + 1] = f[2]; out[#out + 1] = worker
    else
      redis.call('HDEL', P .. 'running', id)
    end
  end
end
return out
"""


def _task(raw: bytes) -> Task:
    task = _decode_task(raw)
    _whole(task)
    return task


def _tasks(raw: bytes) -> list[Task]:
    tasks = _decode_tasks(raw)
    for task in tasks:
        _whole(task)
    return tasks


def _whole(task: Task) -> None:
    # JSON has one kind of number: a whole percent decodes as 45.0, while the reporter
    # keeps it 45 (clients see `45`, as in memory mode).
    progress = task.progress
    if progress.is_integer():
        task.progress = int(progress)


def _json_or_empty(value: Any) -> bytes:
    return b"" if value is None else _encode(value)


class _Shared:
    """What a store and its siblings (other clients on the same keys) share."""

    __slots__ = ("policy", "policy_arg")

    def __init__(self, policy: StorePolicy) -> None:
        self.policy = policy
        self.policy_arg = _policy_arg(policy)


def _policy_arg(policy: StorePolicy) -> str:
    retention = policy.retention
    limits = (
        ",,," if retention is None else f"{retention.max_completed},{retention.max_failed},{retention.max_cancelled},"
    )
    return limits + ("" if policy.max_history is None else str(policy.max_history))


class RedisTaskStore:
    """`TaskStore` in Redis, shared by every process of a deployment.

    Build it with a client (`redis.asyncio.Redis`, ``decode_responses=False``) or a
    factory of one: with a factory the client is made when first used and `aclose`
    forgets it, so the same store can serve one event loop after another.
    """

    def __init__(
        self,
        redis: Redis | None = None,
        *,
        factory: Callable[[], Redis] | None = None,
        prefix: str = DEFAULT_PREFIX,
        channel_prefix: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        events: EventHub | None = None,
        policy: StorePolicy | None = None,
    ) -> None:
        self.clock = clock
        self.events = events or EventHub()
        self.prefix = prefix
        #: Where each session's changes are published: ``<channel_prefix><session key>``.
        self.channel_prefix = channel_prefix if channel_prefix is not None else prefix + "session:"
        if (redis is None) == (factory is None):
            raise TypeError("give RedisTaskStore either a client or a factory of clients")
        self._factory = factory
        self._redis = redis
        self._scripts: dict[str, AsyncScript] = {}
        self._shared = _Shared(policy or StorePolicy())
        # Time from Redis (TIME), unless a test clock is given: then its time is passed in.
        self._clock_time = type(clock) is not Clock

    def sibling(self, factory: Callable[[], Redis]) -> RedisTaskStore:
        """The same store through another client: the same keys, events and policy."""
        twin = RedisTaskStore(
            factory=factory,
            prefix=self.prefix,
            channel_prefix=self.channel_prefix,
            clock=self.clock,
            events=self.events,
        )
        twin._shared = self._shared
        return twin

    @property
    def policy(self) -> StorePolicy:
        return self._shared.policy

    @policy.setter
    def policy(self, policy: StorePolicy) -> None:
        self._shared.policy = policy
        self._shared.policy_arg = _policy_arg(policy)

    # -- connection ------------------------------------------------------------------

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            assert self._factory is not None
            self._redis = self._factory()
            self._scripts.clear()
        return self._redis

    async def aclose(self) -> None:
        """Close the client (a factory-made one is made again when next used)."""
        client = self._redis
        if client is not None and self._factory is not None:
            self._redis = None
            self._scripts.clear()
        if client is not None:
            await client.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await cast("Awaitable[bool]", self.redis.ping()))
        except Exception:
            return False

    def _script(self, name: str, body: str) -> AsyncScript:
        script = self._scripts.get(name)
        if script is None:
            script = self._scripts[name] = self.redis.register_script(_PRELUDE + body)
        return script

    async def _run(self, name: str, body: str, *args: Any) -> Any:
        events = self.events
        base = (
            self.prefix,
            self.channel_prefix,
            self.clock.now_ms() if self._clock_time else "",
            self._shared.policy_arg,
            "1" if events.on_removed or events.listeners else "0",
        )
        with reachable():
            return await self._script(name, body)(args=[*base, *args])

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    # -- reads ---------------------------------------------------------------------

    async def get(self, session_key: str, task_id: str) -> Task:
        raw = await self._run("get", _GET, session_key, task_id)
        if raw is None:
            raise TaskNotFound(task_id)
        return _task(raw)

    async def query(
        self, session_key: str, where: TaskFilter, *, limit: int | None = None, offset: int = 0
    ) -> TaskPage:
        total, raw = await self._run(
            "query",
            _QUERY,
            session_key,
            where.status.value if where.status is not None else "",
            _json_or_empty(where.executor),
            where.tag or "",
            "" if where.dead_letter is None else ("true" if where.dead_letter else "false"),
            offset,
            -1 if limit is None else limit,
        )
        return TaskPage(_tasks(raw), int(total))

    async def snapshot(self, session_key: str, task_id: str | None = None) -> tuple[int, list[Task]]:
        """The session's tasks (or one of them), newest first, and the event sequence
        number they reflect, read at one moment: every change with a higher number
        happened after this read."""
        seq, raw = await self._run("snapshot", _SNAPSHOT, session_key, task_id or "")
        return int(seq), _tasks(raw)

    async def counts(self, session_key: str) -> SessionCounts:
        with reachable():
            values = await cast(
                "Awaitable[list[Any]]", self.redis.hmget(self.key("c", session_key), [*_STATUSES, "dur"])
            )
        by_status = {status: int(value or 0) for status, value in zip(TaskStatus, values, strict=False)}
        completed = by_status[TaskStatus.COMPLETED]
        duration = int(values[-1] or 0)
        return SessionCounts(by_status=by_status, average_duration_ms=duration / completed if completed else 0.0)

    async def totals(self) -> StoreTotals:
        with reachable():
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.hmget(self.prefix + "totals", list(_STATUSES))
                pipe.scard(self.prefix + "sessions")
                values, sessions = await pipe.execute()
        by_status = {status: int(value or 0) for status, value in zip(TaskStatus, values, strict=False)}
        return StoreTotals(by_status=by_status, sessions=int(sessions))

    # -- changes -------------------------------------------------------------------

    async def create(
        self, task: Task, *, limits: CreateLimits, idempotency: Idempotency | None = None
    ) -> tuple[Task, bool]:
        kind, payload = await self._run(
            "create",
            _CREATE,
            task.session_key,
            task.id,
            limits.max_active_per_session,
            idempotency.key if idempotency is not None else "",
            idempotency.fingerprint.hex() if idempotency is not None else "",
            "" if limits.max_tasks is None else limits.max_tasks,
            "" if limits.max_sessions is None else limits.max_sessions,
            "id",
            _encode(task.id),
            "sessionKey",
            _encode(task.session_key),
            "executor",
            _encode(task.executor),
            "name",
            _encode(task.name),
            "params",
            _encode(task.params),
            "description",
            _encode(task.description),
            "metadata",
            _encode(task.metadata),
            "tags",
            _encode(task.tags),
            "priority",
            _encode(task.priority),
            "timeoutMs",
            _encode(task.timeout_ms),
            "maxRetries",
            _encode(task.max_retries),
            "requestId",
            _encode(task.request_id),
        )
        if kind == b"conflict":
            assert idempotency is not None
            raise idempotency_conflict(idempotency.key, payload.decode())
        if kind == b"quota":
            raise quota_exceeded(limits.max_active_per_session, int(payload))
        if kind == b"sessions":
            assert limits.max_sessions is not None
            raise too_many_sessions(limits.max_sessions, int(payload))
        if kind == b"tasks":
            assert limits.max_tasks is not None
            raise too_many_tasks(limits.max_tasks, int(payload))
        created = _task(payload)
        if kind == b"replay":
            return created, True
        for hook in self.events.on_transition:
            hook(created, None)
        self._publish(created, EventType.TRANSITION, None)
        return created, False

    async def replay(self, session_key: str, idempotency: Idempotency) -> Task | None:
        with reachable():
            seen = await cast("Awaitable[bytes | None]", self.redis.hget(self.key("i", session_key), idempotency.key))
        if seen is None:
            return None
        task_id, _, fingerprint = seen.decode().partition("|")
        if fingerprint != idempotency.fingerprint.hex():
            raise idempotency_conflict(idempotency.key, task_id)
        try:
            return await self.get(session_key, task_id)
        except TaskNotFound:
            return None

    async def transition(
        self,
        session_key: str,
        task_id: str,
        target: TaskStatus,
        *,
        expect: Collection[TaskStatus] | None = None,
        attempt: int | None = None,
        reason: str | None = None,
        error: str | None = None,
        result: Any = None,
        action: str | None = None,
        automatic: bool = False,
        dead_letter: bool = False,
        owner: str | None = None,
        session_limit: int | None = None,
        global_limit: int | None = None,
        keep_auto_retries: bool = False,
        report: tuple[float, str | None, str | None] | None = None,
        fair: bool = False,
    ) -> Task:
        """`TaskStore.transition`, plus what the Redis execution backend needs: `owner`
        (the worker running the attempt, for the reconciler), the concurrency limits a
        start checks atomically (`SessionBusy` when one is reached; with `fair`, also
        when other sessions have pending tasks and this one runs as many as there are
        free slots: the live workers' concurrency, within `global_limit`), `keep_auto_retries`
        (a retry that leaves the automatic-retry count alone) and `report`, a running
        attempt's last progress report (percent, step, description) applied with its
        outcome, as if reported just before."""
        response = await self._run(
            "transition",
            _TRANSITION,
            session_key,
            task_id,
            target.value,
            "" if expect is None else "," + ",".join(status.value for status in expect) + ",",
            "" if attempt is None else attempt,
            _json_or_empty(reason),
            _json_or_empty(error),
            _json_or_empty(result) if target is TaskStatus.COMPLETED else b"",
            "1" if automatic else "0",
            "1" if dead_letter else "0",
            owner or "",
            "" if session_limit is None else session_limit,
            "" if global_limit is None else global_limit,
            "1" if keep_auto_retries else "0",
            b"" if report is None else _encode(report[0]),
            b"" if report is None else _json_or_empty(report[1]),
            b"" if report is None else _json_or_empty(report[2]),
            "1" if fair else "",
        )
        kind = response[0]
        if kind == b"notfound":
            raise TaskNotFound(task_id)
        if kind == b"refused":
            raise refusal(task_id, TaskStatus(response[1].decode()), action or ACTIONS[target])
        if kind == b"busy":
            raise SessionBusy(response[1].decode())
        task = _task(response[1])
        self._transitioned(task, task.history[-1].previous)
        self._removed(response[2])
        return task

    async def report_progress(
        self,
        session_key: str,
        task_id: str,
        attempt: int,
        percent: float,
        step: str | None,
        description: str | None,
    ) -> bool:
        want = bool(self.events.listeners)
        response = await self._run(
            "progress",
            _PROGRESS,
            session_key,
            task_id,
            attempt,
            _encode(percent),
            _json_or_empty(step),
            _json_or_empty(description),
            "1" if want else "0",
        )
        if response == 0:
            return False
        if want and isinstance(response, bytes):
            self.events.publish(TaskEvent.of(_task(response), EventType.PROGRESS))
        return True

    async def remove(self, session_key: str, task_id: str) -> Task:
        response = await self._run("remove", _REMOVE, session_key, task_id)
        kind = response[0]
        if kind == b"notfound":
            raise TaskNotFound(task_id)
        if kind == b"refused":
            raise refusal(task_id, TaskStatus.RUNNING, "delete")
        task = _task(response[1])
        for hook in self.events.on_removed:
            hook(task, None)
        self._publish(task, EventType.REMOVED, None)
        return task

    async def trim(self, retention: Retention, session_key: str | None = None) -> TrimResult:
        result = TrimResult()
        limits = (retention.max_completed, retention.max_failed, retention.max_cancelled)

        async def run(sessions: list[str]) -> bool:
            """Trim `sessions`; True when the budget ran out (call again)."""
            completed, failed, cancelled, left, removed = await self._run("trim", _TRIM, *limits, TRIM_BATCH, *sessions)
            result.completed += completed
            result.failed += failed
            result.cancelled += cancelled
            self._removed(removed)
            return int(left) <= 0

        await self._each_batch(run, session_key)
        return result

    async def expire(self, expiry: Expiry, session_key: str | None = None) -> ExpiryResult:
        result = ExpiryResult()
        if expiry.finished_ttl_ms is None and expiry.pending_ttl_ms is None and expiry.session_idle_ms is None:
            return result
        reason = b""
        if expiry.pending_ttl_ms is not None:
            minutes = expiry.pending_ttl_ms / 60_000
            reason = _encode(f"expired: not started within {minutes:g} min (PENDING_TASK_TTL_MS)")
        limits = [
            "" if limit is None else limit
            for limit in (expiry.finished_ttl_ms, expiry.pending_ttl_ms, expiry.session_idle_ms)
        ]

        async def run(sessions: list[str]) -> bool:
            """Expire in `sessions`; True when the budget ran out (call again)."""
            finished, forgotten, held, left, cancelled, removed = await self._run(
                "expire", _EXPIRE, *limits, TRIM_BATCH, reason, *sessions
            )
            result.finished += finished
            result.sessions += forgotten
            result.session_tasks += held
            for raw in cancelled:
                task = _task(raw)
                self._transitioned(task, TaskStatus.PENDING)
                result.pending.append(task)
            self._removed(removed)
            return int(left) <= 0

        await self._each_batch(run, session_key)
        return result

    async def _each_batch(self, run: Callable[[list[str]], Awaitable[bool]], session_key: str | None) -> None:
        """Call `run` on one session, or on every session a batch at a time, again while
        it says its budget ran out."""
        if session_key is not None:
            while await run([session_key]):
                pass
            return
        cursor = 0
        while True:
            with reachable():
                cursor, members = await self.redis.sscan(self.prefix + "sessions", cursor, count=TRIM_SESSIONS)
            sessions = [member.decode() for member in members]
            for start in range(0, len(sessions), TRIM_SESSIONS):
                while await run(sessions[start : start + TRIM_SESSIONS]):
                    pass
            if cursor == 0:
                return

    async def take_token(self, bucket: str, rate: float, burst: int) -> float:
        wait = await self._run("token", _TOKEN, bucket, repr(float(rate)), burst)
        return float(wait)

    # -- for the execution backend ------------------------------------------------------

    async def lost_attempts(self, worker: str = "") -> list[tuple[str, str, int, str]]:
        """Running tasks whose worker's lease (``P wk:<worker id>``) has expired, and
        those `worker` runs: ``(task id, session key, attempt, worker id)`` each."""
        flat = await self._run("lost", _LOST, worker)
        return [
            (flat[i].decode(), _decode_str(flat[i + 1]), int(flat[i + 2]), flat[i + 3].decode())
            for i in range(0, len(flat), 4)
        ]

    async def queue_position(self, session_key: str, task_id: str, jobs: str = "") -> int | None:
        """A pending task's place among its session's pending tasks (higher priority
        first, then oldest first); None when it is not pending. With `jobs`, only the
        tasks whose next attempt's job (key ``<jobs><task id>:<attempt>``) exists count,
        and None when this one has none. O(the session's pending tasks): the session's
        own queue, never another's."""
        position = await self._run("position", _POSITION, session_key, task_id, jobs)
        return None if position is None else int(position)

    # -- events -------------------------------------------------------------------------

    def _transitioned(self, task: Task, previous: TaskStatus | None) -> None:
        for hook in self.events.on_transition:
            hook(task, previous)
        self._publish(task, EventType.TRANSITION, previous)

    def _removed(self, flat: list[bytes]) -> None:
        """Tell the hooks about the tasks a script removed by itself: ``[cause, JSON, ...]``."""
        for i in range(0, len(flat), 2):
            task = _task(flat[i + 1])
            cause = flat[i].decode()
            for hook in self.events.on_removed:
                hook(task, cause)
            self._publish(task, EventType.REMOVED, None)

    def _publish(self, task: Task, kind: EventType, previous: TaskStatus | None) -> None:
        if self.events.listeners:
            self.events.publish(TaskEvent.of(task, kind, previous))

    # -- across sessions (the admin view): not written for Redis yet -------------------

    async def list_sessions(self, *, limit: int, offset: int = 0) -> SessionPage:
        raise NotImplementedError(_ADMIN_NOT_YET.format(what="The list of every session"))

    async def query_all(self, where: TaskFilter, *, limit: int | None = None, offset: int = 0) -> TaskPage:
        raise NotImplementedError(_ADMIN_NOT_YET.format(what="Listing tasks across sessions"))

    async def find(self, task_id: str) -> Task:
        raise NotImplementedError(_ADMIN_NOT_YET.format(what="Finding a task in any session"))


_ADMIN_NOT_YET = "{what} (the admin view) is not available on the Redis backend yet; it works with TASK_BACKEND=memory"


@contextmanager
def reachable() -> Iterator[None]:
    """Turn a lost connection to Redis into `StoreUnavailable` (503 at the HTTP edge)."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError) as exc:
        raise StoreUnavailable(f"The task store (Redis) cannot be reached: {exc}") from exc
