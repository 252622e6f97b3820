-- The prelude, third part (see `prelude.lua`): the indexes filters walk, forgetting a
-- task or a session, the compare-and-set every status change goes through (`move`) and
-- the Idempotency-Keys.

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
    CLIENTS[session] = nil
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
-- report, stored with its outcome). Returns {'ok', previous status, startedAt, executor (JSON)}
-- (the task's, as they were before the change) or {'notfound'} or
-- {'refused', status}.
-- Leaving pending or running takes the task out of its delivery (a slot freed is refilled
-- when the script calls `pump`); entering pending does not deliver it (`deliver` does).
local function move(S, ID, target, o)
  local key = tkey(ID)
  local f = redis.call('HMGET', key, '_s', 'status', 'attempts', 'autoRetries', 'startedAt', '_sq', '_wk',
    '_dv', '_jk', '_op', '_jw', 'executor', 'id', 'sessionKey', 'progress', 'currentStep', 'currentStepDescription',
    'error', 'result', 'name')
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
  -- Two numbers of the sequence: the change's order (finish order), then its event's.
  local order = redis.call('INCRBY', P .. 'seq', 2) - 1
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
  if target ~= 'running' and (source == 'pending' or source == 'running') then
    undeliver(S, ID, {f[8], f[11], f[9], f[12]})
  end
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
  if o.dead_letter == '1' and target == 'failed' then
    redis.call('ZADD', P .. 'sd:' .. S, f[6], ID)
    redis.call('ZADD', P .. 'ad', f[6], ID)
  elseif source == 'failed' then
    -- Only a failed task can be dead-lettered (and it leaves failed only for pending).
    redis.call('ZREM', P .. 'sd:' .. S, ID)
    redis.call('ZREM', P .. 'ad', ID)
  end
  if source == 'running' then put('_wk', '') end
  if OP ~= '' then put('_op', remember_op(f[10])) end
  local entry = '{"at":' .. int(now) .. ',"status":"' .. target .. '","previous":"' .. source ..
    '","attempt":' .. int(math.max(attempts, 1))
  if o.reason and o.reason ~= '' then entry = entry .. ',"reason":' .. o.reason end
  if target == 'failed' and o.error and o.error ~= '' then entry = entry .. ',"error":' .. o.error end
  add_history(ID, entry .. '}')
  redis.call('HSET', key, unpack(set))
  redis.call('ZREM', P .. 'ss:' .. S .. ':' .. source, ID)
  redis.call('ZADD', P .. 'ss:' .. S .. ':' .. target, f[6], ID)
  redis.call('ZREM', P .. 'as:' .. source, ID)
  redis.call('ZADD', P .. 'as:' .. target, f[6], ID)
  touch(S)
  -- The event's fields: as read above, with what this change wrote (`event_fields`, without a read).
  local r = {updatedAt = int(now), attempts = int(attempts), executor = f[12], id = f[13], sessionKey = f[14],
    progress = f[15], currentStep = f[16], currentStepDescription = f[17], error = f[18], result = f[19], name = f[20]}
  for i = 1, #set, 2 do r[set[i]] = set[i + 1] end
  publish(S, r, 'transition', '"' .. source .. '"', order + 1)
  if FINISHED[target] and RETAIN then
    -- Retention as a task finishes: the oldest-finished beyond the limit go now (the
    -- task that just finished is the newest and always stays).
    local index = P .. 'f:' .. S .. ':' .. target
    local excess = redis.call('ZCARD', index) - math.max(RETAIN[target], 1)
    if excess > 0 then
      for _, id in ipairs(redis.call('ZRANGE', index, 0, excess - 1)) do drop(S, id, 'retention') end
    end
  end
  return {'ok', source, f[5], f[12]}
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
