"""The Redis task store: tasks shared by every API and worker process.

Each method is one Lua script (or a read-only pipeline), so every multi-key change
is atomic and time comes from Redis (``TIME``), never from a machine's clock. Keys,
under a per-deployment prefix ``P`` (``REDIS_KEY_PREFIX``)::

    P t:<id>                   hash: the task; every field a JSON value, named as the
                               HTTP contract names it (``_``-prefixed fields are ours)
    P s:<session>              zset: the session's task ids by creation sequence
    P ss:<session>:<status>    zset: the same, per status (a page by status is O(page))
    P f:<session>:<status>     zset: finished ids by finish sequence (what retention needs)
    P c:<session>              hash: counts by status and the summed run time of completed tasks
    P i:<session>              hash: Idempotency-Key -> "<task id>|<fingerprint>"
    P totals / P sessions      every session's counts by status / the sessions holding tasks
    P running                  hash: running task id -> the worker that runs it (the reconciler's index)
    P seq                      the global event sequence: every change takes the next number
    P b:<bucket>               token buckets (they expire once full)

Every change is also published, from inside its script, on the session's channel
``<channel prefix><session>`` as the envelope the push streams read (`async_tasks.web.streams`),
so a browser connected to any API process sees changes made by any process, in the
order Redis applied them. Changes made through this object are published on `events`
too (metrics and tests listen there), except what `trim` removes.

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
from async_tasks.errors import (
    IdempotencyConflict,
    QuotaExceeded,
    StoreUnavailable,
    TaskNotFound,
)
from async_tasks.events import EventHub, EventType, TaskEvent
from async_tasks.store.base import (
    CreateLimits,
    Idempotency,
    Retention,
    SessionCounts,
    StoreTotals,
    TaskFilter,
    TaskPage,
    TrimResult,
)
from async_tasks.store.memory import refusal
from async_tasks.task import Task, TaskStatus

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

#: Default key prefix: one per deployment sharing a Redis.
DEFAULT_PREFIX: Final = "async-tasks:"
#: Tasks `trim` removes per script call (a script blocks Redis while it runs).
TRIM_BATCH: Final = 2000
#: Sessions `trim` of every session looks at per script call.
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
# Every script starts with this prelude. ARGV[1] is the key prefix, ARGV[2] the
# channel prefix; the rest is each script's own.
_PRELUDE = r"""
local P, CH = ARGV[1], ARGV[2]
local FINISHED = {completed = true, failed = true, cancelled = true}
local STATUSES = {'pending', 'running', 'completed', 'failed', 'cancelled'}
local ALLOWED = {
  pending = {running = true, cancelled = true},
  running = {completed = true, failed = true, cancelled = true},
  completed = {},
  failed = {pending = true},
  cancelled = {pending = true},
}
local EVENT_FIELDS = {'id', 'sessionKey', 'status', 'progress', 'currentStep', 'currentStepDescription',
  'updatedAt', 'executor', 'error', 'result', 'name', 'attempts'}

local function int(n) return string.format('%d', n) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function unquote(s) return string.sub(s, 2, -2) end

-- The task's JSON object, built from its hash (our own `_` fields left out).
local function record_json(key)
  local flat = redis.call('HGETALL', key)
  local parts = {}
  for i = 1, #flat, 2 do
    if string.byte(flat[i], 1) ~= 95 then
      parts[#parts + 1] = '"' .. flat[i] .. '":' .. flat[i + 1]
    end
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

-- Forget a task that is not running; returns its JSON (for the caller's own event).
local function forget(session, id)
  local key = P .. 't:' .. id
  local f = redis.call('HMGET', key, 'status', 'startedAt', 'completedAt', '_ik')
  local status = unquote(f[1])
  local r = event_fields(key)
  local json = record_json(key)
  redis.call('DEL', key)
  redis.call('ZREM', P .. 's:' .. session, id)
  redis.call('ZREM', P .. 'ss:' .. session .. ':' .. status, id)
  if FINISHED[status] then redis.call('ZREM', P .. 'f:' .. session .. ':' .. status, id) end
  redis.call('HINCRBY', P .. 'c:' .. session, status, -1)
  redis.call('HINCRBY', P .. 'totals', status, -1)
  if status == 'completed' then
    local started, completed = tonumber(f[2]), tonumber(f[3])
    if started and completed then redis.call('HINCRBY', P .. 'c:' .. session, 'dur', started - completed) end
  end
  if f[4] then redis.call('HDEL', P .. 'i:' .. session, f[4]) end
  publish(session, r, 'removed', 'null')
  return json
end

local function forget_session_if_empty(session)
  if redis.call('ZCARD', P .. 's:' .. session) == 0 then
    redis.call('DEL', P .. 'c:' .. session, P .. 'i:' .. session)
    redis.call('SREM', P .. 'sessions', session)
  end
end
"""

# ARGV: 3 session, 4 task id, 5 max active, 6 idempotency key ('' for none), 7 its fingerprint,
# 8.. static field name / JSON value pairs.
_CREATE = r"""
local S, ID = ARGV[3], ARGV[4]
local ik = ARGV[6]
if ik ~= '' then
  local seen = redis.call('HGET', P .. 'i:' .. S, ik)
  if seen then
    local sep = string.find(seen, '|', 1, true)
    local other, fingerprint = string.sub(seen, 1, sep - 1), string.sub(seen, sep + 1)
    if fingerprint ~= ARGV[7] then return {'conflict', other} end
    return {'replay', record_json(P .. 't:' .. other)}
  end
end
local counts = redis.call('HMGET', P .. 'c:' .. S, 'pending', 'running')
local active = (tonumber(counts[1]) or 0) + (tonumber(counts[2]) or 0)
if active >= tonumber(ARGV[5]) then return {'quota', int(active)} end
local now = int(now_ms())
local order = redis.call('INCR', P .. 'seq')
local key = P .. 't:' .. ID
local fields = {'_s', S, '_sq', int(order), 'status', '"pending"', 'progress', '0', 'currentStep', 'null',
  'currentStepDescription', 'null', 'result', 'null', 'error', 'null', 'attempts', '0', 'autoRetries', '0',
  'deadLettered', 'false', 'createdAt', now, 'updatedAt', now, 'startedAt', 'null', 'completedAt', 'null',
  'history', '[{"at":' .. now .. ',"status":"pending","attempt":1,"reason":"created"}]'}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
if ik ~= '' then
  fields[#fields + 1] = '_ik'
  fields[#fields + 1] = ik
  redis.call('HSET', P .. 'i:' .. S, ik, ID .. '|' .. ARGV[7])
end
redis.call('HSET', key, unpack(fields))
redis.call('ZADD', P .. 's:' .. S, order, ID)
redis.call('ZADD', P .. 'ss:' .. S .. ':pending', order, ID)
redis.call('HINCRBY', P .. 'c:' .. S, 'pending', 1)
redis.call('HINCRBY', P .. 'totals', 'pending', 1)
redis.call('SADD', P .. 'sessions', S)
publish(S, event_fields(key), 'transition', 'null')
return {'created', record_json(key)}
"""

# ARGV: 3 session, 4 task id, 5 target, 6 expected statuses (',pending,running,' or ''),
# 7 attempt (''), 8 reason JSON (''), 9 error JSON (''), 10 result JSON (''), 11 automatic,
# 12 dead letter, 13 owner (''), 14 session running limit (''), 15 global running limit (''),
# 16 keep the automatic-retry count ('1'), 17 a last progress report's percent JSON (''),
# 18 its step JSON (''), 19 its description JSON ('') (a running attempt's last report, stored
# with its outcome).
_TRANSITION = r"""
local S, ID, target = ARGV[3], ARGV[4], ARGV[5]
local key = P .. 't:' .. ID
local f = redis.call('HMGET', key, '_s', 'status', 'attempts', 'autoRetries', 'startedAt', '_sq', 'history')
if f[1] ~= S then return {'notfound'} end
local source = unquote(f[2])
local attempts = tonumber(f[3])
if not ALLOWED[source][target]
  or (ARGV[6] ~= '' and not string.find(ARGV[6], ',' .. source .. ',', 1, true))
  or (ARGV[7] ~= '' and attempts ~= tonumber(ARGV[7])) then
  return {'refused', source}
end
if target == 'running' then
  if ARGV[14] ~= '' and (tonumber(redis.call('HGET', P .. 'c:' .. S, 'running')) or 0) >= tonumber(ARGV[14]) then
    return {'busy', 'session'}
  end
  if ARGV[15] ~= '' and (tonumber(redis.call('HGET', P .. 'totals', 'running')) or 0) >= tonumber(ARGV[15]) then
    return {'busy', 'global'}
  end
end
local now = now_ms()
local order = redis.call('INCR', P .. 'seq')
local set = {'status', '"' .. target .. '"', 'updatedAt', int(now)}
local function put(name, value) set[#set + 1] = name; set[#set + 1] = value end
if FINISHED[source] then redis.call('ZREM', P .. 'f:' .. S .. ':' .. source, ID) end
if target == 'running' then
  attempts = attempts + 1
  put('attempts', int(attempts))
  put('startedAt', int(now))
  put('completedAt', 'null')
  put('_wk', ARGV[13])
  redis.call('HSET', P .. 'running', ID, ARGV[13])
elseif target == 'pending' then
  put('progress', '0'); put('currentStep', 'null'); put('currentStepDescription', 'null')
  put('result', 'null'); put('error', 'null'); put('startedAt', 'null'); put('completedAt', 'null')
  put('deadLettered', 'false')
  if ARGV[16] ~= '1' then
    if ARGV[11] == '1' then put('autoRetries', int(tonumber(f[4]) + 1)) else put('autoRetries', '0') end
  end
else
  if source == 'running' and ARGV[17] ~= '' then
    put('progress', ARGV[17])
    if ARGV[18] ~= '' then
      put('currentStep', ARGV[18])
      if ARGV[19] ~= '' then put('currentStepDescription', ARGV[19]) else put('currentStepDescription', 'null') end
    elseif ARGV[19] ~= '' then
      put('currentStepDescription', ARGV[19])
    end
  end
  put('completedAt', int(now))
  redis.call('ZADD', P .. 'f:' .. S .. ':' .. target, order, ID)
  if target == 'completed' then
    if ARGV[10] ~= '' then put('result', ARGV[10]) else put('result', 'null') end
    put('progress', '100')
    redis.call('HINCRBY', P .. 'c:' .. S, 'dur', now - (tonumber(f[5]) or now))
  elseif ARGV[9] ~= '' then
    put('error', ARGV[9])
  end
  if ARGV[12] == '1' then put('deadLettered', 'true') else put('deadLettered', 'false') end
end
if source == 'running' then redis.call('HDEL', P .. 'running', ID) end
local entry = '{"at":' .. int(now) .. ',"status":"' .. target .. '","previous":"' .. source ..
  '","attempt":' .. int(math.max(attempts, 1))
if ARGV[8] ~= '' then entry = entry .. ',"reason":' .. ARGV[8] end
if target == 'failed' and ARGV[9] ~= '' then entry = entry .. ',"error":' .. ARGV[9] end
entry = entry .. '}'
local history = f[7]
if history == '[]' then
  history = '[' .. entry .. ']'
else
  history = string.sub(history, 1, -2) .. ',' .. entry .. ']'
end
put('history', history)
redis.call('HSET', key, unpack(set))
redis.call('HINCRBY', P .. 'c:' .. S, source, -1)
redis.call('HINCRBY', P .. 'c:' .. S, target, 1)
redis.call('HINCRBY', P .. 'totals', source, -1)
redis.call('HINCRBY', P .. 'totals', target, 1)
redis.call('ZREM', P .. 'ss:' .. S .. ':' .. source, ID)
redis.call('ZADD', P .. 'ss:' .. S .. ':' .. target, f[6], ID)
publish(S, event_fields(key), 'transition', '"' .. source .. '"')
return {'ok', record_json(key)}
"""

# ARGV: 3 session, 4 task id, 5 attempt, 6 percent JSON, 7 step JSON (''), 8 description JSON (''),
# 9 '1' to return the task's JSON.
_PROGRESS = r"""
local S, ID = ARGV[3], ARGV[4]
local key = P .. 't:' .. ID
local f = redis.call('HMGET', key, '_s', 'status', 'attempts')
if f[1] ~= S or f[2] ~= '"running"' or f[3] ~= ARGV[5] then return 0 end
local set = {'progress', ARGV[6], 'updatedAt', int(now_ms())}
if ARGV[7] ~= '' then
  set[5] = 'currentStep'; set[6] = ARGV[7]
  set[7] = 'currentStepDescription'
  if ARGV[8] ~= '' then set[8] = ARGV[8] else set[8] = 'null' end
elseif ARGV[8] ~= '' then
  set[5] = 'currentStepDescription'; set[6] = ARGV[8]
end
redis.call('HSET', key, unpack(set))
publish(S, event_fields(key), 'progress', 'null')
if ARGV[9] == '1' then return record_json(key) end
return 1
"""

# ARGV: 3 session, 4 task id.
_REMOVE = r"""
local S, ID = ARGV[3], ARGV[4]
local key = P .. 't:' .. ID
local f = redis.call('HMGET', key, '_s', 'status')
if f[1] ~= S then return {'notfound'} end
if f[2] == '"running"' then return {'refused', 'running'} end
local json = forget(S, ID)
forget_session_if_empty(S)
return {'ok', json}
"""

# ARGV: 3 max completed, 4 max failed, 5 max cancelled, 6 budget, 7.. sessions.
# Returns {completed, failed, cancelled, budget left}.
_TRIM = r"""
local limits = {completed = tonumber(ARGV[3]), failed = tonumber(ARGV[4]), cancelled = tonumber(ARGV[5])}
local budget = tonumber(ARGV[6])
local removed = {completed = 0, failed = 0, cancelled = 0}
for i = 7, #ARGV do
  local S = ARGV[i]
  for _, status in ipairs({'completed', 'failed', 'cancelled'}) do
    local index = P .. 'f:' .. S .. ':' .. status
    local excess = redis.call('ZCARD', index) - limits[status]
    if excess > 0 and budget > 0 then
      local ids = redis.call('ZRANGE', index, 0, math.min(excess, budget) - 1)
      for _, id in ipairs(ids) do forget(S, id) end
      removed[status] = removed[status] + #ids
      budget = budget - #ids
    end
  end
  forget_session_if_empty(S)
end
return {removed.completed, removed.failed, removed.cancelled, budget}
"""

# ARGV: 3 session, 4 status (''), 5 executor JSON (''), 6 tag (''), 7 dead letter ('', 'true', 'false'),
# 8 offset, 9 limit (-1 for all). Returns {total, JSON array of the page}.
_QUERY = r"""
local S = ARGV[3]
local index = P .. 's:' .. S
if ARGV[4] ~= '' then index = P .. 'ss:' .. S .. ':' .. ARGV[4] end
local offset, limit = tonumber(ARGV[8]), tonumber(ARGV[9])
local page = {}
local total
if ARGV[5] == '' and ARGV[6] == '' and ARGV[7] == '' then
  total = redis.call('ZCARD', index)
  local stop = -1
  if limit >= 0 then stop = offset + limit - 1 end
  if limit ~= 0 then
    for _, id in ipairs(redis.call('ZREVRANGE', index, offset, stop)) do
      page[#page + 1] = record_json(P .. 't:' .. id)
    end
  end
else
  total = 0
  for _, id in ipairs(redis.call('ZREVRANGE', index, 0, -1)) do
    local key = P .. 't:' .. id
    local f = redis.call('HMGET', key, 'executor', 'tags', 'deadLettered')
    local match = (ARGV[5] == '' or f[1] == ARGV[5]) and (ARGV[7] == '' or f[3] == ARGV[7])
    if match and ARGV[6] ~= '' then
      match = false
      for _, tag in ipairs(cjson.decode(f[2])) do if tag == ARGV[6] then match = true end end
    end
    if match then
      if total >= offset and (limit < 0 or #page < limit) then page[#page + 1] = record_json(key) end
      total = total + 1
    end
  end
end
return {total, '[' .. table.concat(page, ',') .. ']'}
"""

# ARGV: 3 session, 4 task id ('' for all the session's tasks). Returns {seq, JSON array, newest first}.
_SNAPSHOT = r"""
local S = ARGV[3]
local seq = tonumber(redis.call('GET', P .. 'seq')) or 0
local page = {}
if ARGV[4] ~= '' then
  local key = P .. 't:' .. ARGV[4]
  if redis.call('HGET', key, '_s') == S then page[1] = record_json(key) end
else
  for _, id in ipairs(redis.call('ZREVRANGE', P .. 's:' .. S, 0, -1)) do
    page[#page + 1] = record_json(P .. 't:' .. id)
  end
end
return {int(seq), '[' .. table.concat(page, ',') .. ']'}
"""

# ARGV: 3 session, 4 task id. The task's JSON if it belongs to the session, else nil.
_GET = r"""
local key = P .. 't:' .. ARGV[4]
if redis.call('HGET', key, '_s') ~= ARGV[3] then return false end
return record_json(key)
"""

# ARGV: 3 bucket, 4 rate per second, 5 burst. Returns the seconds to wait, as a string ('0' = granted).
_TOKEN = r"""
local key = P .. 'b:' .. ARGV[3]
local rate, burst = tonumber(ARGV[4]), tonumber(ARGV[5])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
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
redis.call('PEXPIRE', key, math.ceil((burst - tokens) / rate * 1000) + 1000)
return wait
"""

# ARGV: 3 a worker's id. Running tasks whose worker's lease has expired or that this
# worker runs: flat {task id, session JSON, attempts, worker id, ...}.
_LOST = r"""
local out = {}
local running = redis.call('HGETALL', P .. 'running')
for i = 1, #running, 2 do
  local id, worker = running[i], running[i + 1]
  if worker ~= '' and (worker == ARGV[3] or redis.call('EXISTS', P .. 'wk:' .. worker) == 0) then
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
        self._base = [prefix, self.channel_prefix]

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
        with reachable():
            return await self._script(name, body)(args=[*self._base, *args])

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
            raise IdempotencyConflict(
                "This Idempotency-Key was already used with a different request in this session.",
                details={"idempotencyKey": idempotency.key, "taskId": payload.decode()},
            )
        if kind == b"quota":
            active = int(payload)
            raise QuotaExceeded(
                f"This session already has {active} active tasks (the limit is "
                f"{limits.max_active_per_session}). Wait for some to finish or cancel them.",
                retry_after=1,
                details={"limit": limits.max_active_per_session, "active": active},
            )
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
            raise IdempotencyConflict(
                "This Idempotency-Key was already used with a different request in this session.",
                details={"idempotencyKey": idempotency.key, "taskId": task_id},
            )
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
    ) -> Task:
        """`TaskStore.transition`, plus what the Redis execution backend needs: `owner`
        (the worker running the attempt, for the reconciler), the concurrency limits a
        start checks atomically (`SessionBusy` when one is reached), `keep_auto_retries`
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
        )
        kind = response[0]
        if kind == b"notfound":
            raise TaskNotFound(task_id)
        if kind == b"refused":
            current = TaskStatus(response[1].decode())
            stub: Task = Task(id=task_id, session_key=session_key, executor="", name="", params=None, status=current)
            raise refusal(stub, action or _ACTIONS[target])
        if kind == b"busy":
            raise SessionBusy(response[1].decode())
        task = _task(response[1])
        source = task.history[-1].previous
        for hook in self.events.on_transition:
            hook(task, source)
        self._publish(task, EventType.TRANSITION, source)
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
            stub: Task = Task(
                id=task_id, session_key=session_key, executor="", name="", params=None, status=TaskStatus.RUNNING
            )
            raise refusal(stub, "delete")
        task = _task(response[1])
        self._publish(task, EventType.REMOVED, None)
        return task

    async def trim(self, retention: Retention, session_key: str | None = None) -> TrimResult:
        result = TrimResult()
        limits = (retention.max_completed, retention.max_failed, retention.max_cancelled)

        async def run(sessions: list[str]) -> bool:
            """Trim `sessions`; True when the budget ran out (call again)."""
            completed, failed, cancelled, left = await self._run("trim", _TRIM, *limits, TRIM_BATCH, *sessions)
            result.completed += completed
            result.failed += failed
            result.cancelled += cancelled
            return int(left) <= 0

        if session_key is not None:
            while await run([session_key]):
                pass
            return result
        cursor = 0
        while True:
            with reachable():
                cursor, members = await self.redis.sscan(self.prefix + "sessions", cursor, count=TRIM_SESSIONS)
            sessions = [member.decode() for member in members]
            for start in range(0, len(sessions), TRIM_SESSIONS):
                while await run(sessions[start : start + TRIM_SESSIONS]):
                    pass
            if cursor == 0:
                return result

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

    def _publish(self, task: Task, kind: EventType, previous: TaskStatus | None) -> None:
        if self.events.listeners:
            self.events.publish(TaskEvent.of(task, kind, previous))


_ACTIONS = {
    TaskStatus.RUNNING: "start",
    TaskStatus.CANCELLED: "cancel",
    TaskStatus.PENDING: "retry",
    TaskStatus.COMPLETED: "complete",
    TaskStatus.FAILED: "fail",
}


@contextmanager
def reachable() -> Iterator[None]:
    """Turn a lost connection to Redis into `StoreUnavailable` (503 at the HTTP edge)."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError) as exc:
        raise StoreUnavailable(f"The task store (Redis) cannot be reached: {exc}") from exc
