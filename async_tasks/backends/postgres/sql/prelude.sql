-- The prelude: what every change function uses. Settings, time, the record's JSON, events,
-- history, the compare-and-set of a status change and the delivery of attempts.
--
-- Every change function takes the same first four arguments (see `store.py`):
--   p_now   time in ms (NULL: the database's clock; only a test clock passes one)
--   p_conf  settings: '<max completed>,<max failed>,<max cancelled>,<max history>,
--           <global running limit>,<session running limit>,<idempotency window ms>,
--           <idempotency keys per session>,<log lines per task>,<log bytes per task>'
--           ('' for none of each)
--   p_want  whether the caller wants the records of the tasks the function removes
--   p_op    the operation id: a write that finds it on its task already happened (sent
--           again after its reply was lost) and answers as the first did
-- and answers a JSON array: ["ok", task, [[cause, task], ...]], ["notfound"] or
-- ["refused", status] (or its own shape, said in its file).
--
-- Every change takes the deployment's lock first (`lock_all`): changes apply one at a
-- time, as scripts do in Redis, so each is a compare-and-set on what the last one left;
-- progress reports share it among themselves. Reads take none.
--
-- Delivery. A task that should run is in one of three places, its `delivery`: 'p' parked
-- in its session's line (`line_order`: priority first, then first come first served), 'd'
-- delayed until `due_at`, or 'q' dispatched to one worker (`job_worker`): a row of SAQ's
-- `saq_jobs` (`job_key`) in that worker's own queue, queued or running. `pump` dispatches
-- parked tasks while a worker has a free slot and the concurrency limits allow, always from
-- the waiting session that holds the fewest dispatched tasks (ties: the one waiting
-- longest), and only to a worker that runs the task's executor (`workers.executors`).
-- Every change of place happens in the transaction that changes the task.

CREATE TYPE ctx AS (
    now bigint,
    retain_completed integer,
    retain_failed integer,
    retain_cancelled integer,
    max_history integer,
    global_limit integer,
    session_limit integer,
    key_window bigint,
    keys_kept integer,
    log_lines integer,
    log_bytes integer,
    want boolean,
    op text
);

CREATE TYPE moved AS (kind text, source text, removed text[]);

CREATE FUNCTION db_now() RETURNS bigint LANGUAGE sql VOLATILE AS $$
    SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint
$$;

CREATE FUNCTION ctx(p_now bigint, p_conf text, p_want boolean, p_op text) RETURNS ctx
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v text[] := string_to_array(coalesce(p_conf, ''), ',');
    c ctx;
BEGIN
    c.now := coalesce(p_now, db_now());
    c.retain_completed := nullif(v[1], '')::integer;
    c.retain_failed := nullif(v[2], '')::integer;
    c.retain_cancelled := nullif(v[3], '')::integer;
    c.max_history := nullif(v[4], '')::integer;
    c.global_limit := nullif(v[5], '')::integer;
    c.session_limit := nullif(v[6], '')::integer;
    c.key_window := nullif(v[7], '')::bigint;
    c.keys_kept := nullif(v[8], '')::integer;
    c.log_lines := coalesce(nullif(v[9], '')::integer, 100);
    c.log_bytes := coalesce(nullif(v[10], '')::integer, 16384);
    c.want := coalesce(p_want, false);
    c.op := nullif(p_op, '');
    RETURN c;
END $$;

-- The deployment's lock: every change holds it (progress reports share it) until it commits.
CREATE FUNCTION lock_all(shared boolean DEFAULT false) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF shared THEN
        PERFORM pg_advisory_xact_lock_shared(1735, hashtext(current_schema()));
    ELSE
        PERFORM pg_advisory_xact_lock(1735, hashtext(current_schema()));
    END IF;
END $$;

CREATE FUNCTION allowed(source text, target text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT (source, target) IN (('pending', 'running'), ('pending', 'cancelled'), ('running', 'completed'),
        ('running', 'failed'), ('running', 'cancelled'), ('failed', 'pending'), ('cancelled', 'pending'))
$$;

CREATE FUNCTION finished(status text) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
    SELECT status IN ('completed', 'failed', 'cancelled')
$$;

-- A log line's JSON, as `LogLine` encodes it (no `data` when it has none).
CREATE FUNCTION line_json(n integer, at bigint, message text, data json) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT '{"n":' || n || ',"at":' || at || ',"message":' || to_json(message)::text
        || CASE WHEN data IS NULL THEN '' ELSE ',"data":' || data::text END || '}'
$$;

-- A task's log lines, oldest first (only the latest `last` when given).
CREATE FUNCTION logs_json(p_id text, last integer DEFAULT NULL) RETURNS json LANGUAGE sql STABLE AS $$
    SELECT ('[' || coalesce(string_agg(line_json(l.n, l.at, l.message, l.data), ',' ORDER BY l.n), '') || ']')::json
    FROM (SELECT * FROM task_logs WHERE task_id = p_id ORDER BY n DESC LIMIT last) l
$$;

-- Why a pending task has not started, for a person: no worker in the pool runs its executor.
CREATE FUNCTION waiting_reason(t tasks) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN t.status = 'pending' AND t.delivery = 'p' AND NOT EXISTS (SELECT 1 FROM workers w
        WHERE NOT w.retired AND t.executor = ANY(w.executors)) THEN 'waiting for a worker that runs `' || t.executor
        || '`' END
$$;

-- The task's JSON as the HTTP contract names its fields (its history too when `whole`).
CREATE FUNCTION task_json(t tasks, whole boolean DEFAULT true) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', t.id, 'sessionKey', t.session_key, 'executor', t.executor, 'name', t.name,
        'params', t.params, 'description', t.description, 'metadata', t.metadata, 'tags', t.tags,
        'status', t.status, 'progress', t.progress, 'currentStep', t.current_step,
        'currentStepDescription', t.current_step_description, 'result', t.result, 'error', t.error,
        'attempts', t.attempts, 'priority', t.priority, 'timeoutMs', t.timeout_ms, 'maxRetries', t.max_retries,
        'autoRetries', t.auto_retries, 'deadLettered', t.dead_lettered, 'requestId', t.request_id,
        'createdAt', t.created_at, 'updatedAt', t.updated_at, 'startedAt', t.started_at,
        'completedAt', t.completed_at, 'scheduledAt', t.scheduled_at,
        'history', CASE WHEN whole THEN (
            SELECT coalesce(json_agg(json_strip_nulls(json_build_object(
                'at', h.at, 'status', h.status, 'previous', h.previous, 'attempt', h.attempt,
                'reason', h.reason, 'error', h.error, 'omitted', nullif(h.omitted, 0))) ORDER BY h.n), '[]')
            FROM task_history h WHERE h.task_id = t.id) ELSE '[]' END,
        'logs', logs_json(t.id), 'logsDropped', t.logs_dropped, 'waitingReason', waiting_reason(t)
    )::text
$$;

-- What a list item shows: never params, metadata, result or history (a page costs its length).
CREATE FUNCTION summary_json(t tasks) RETURNS json LANGUAGE sql STABLE AS $$
    SELECT json_build_object(
        'id', t.id, 'sessionKey', t.session_key, 'name', t.name, 'executor', t.executor, 'params', NULL,
        'status', t.status, 'progress', t.progress, 'currentStep', t.current_step,
        'currentStepDescription', t.current_step_description, 'error', t.error, 'attempts', t.attempts,
        'priority', t.priority, 'tags', t.tags, 'deadLettered', t.dead_lettered, 'createdAt', t.created_at,
        'updatedAt', t.updated_at, 'startedAt', t.started_at, 'completedAt', t.completed_at,
        'scheduledAt', t.scheduled_at, 'maxRetries', t.max_retries, 'autoRetries', t.auto_retries,
        'description', t.description, 'logs', logs_json(t.id, 3), 'logsDropped', t.logs_dropped,
        'waitingReason', waiting_reason(t))
$$;

-- A push stream's event about the task (its result only when `with_result`), as compact
-- JSON (a row's JSON has no spaces: clients read it as it is sent).
CREATE TYPE event AS ("type" text, "taskId" text, "sessionKey" text, status text, progress double precision,
    "currentStep" text, "currentStepDescription" text, at bigint, executor text, previous text, error text,
    result json, name text, attempt integer);

CREATE FUNCTION event_json(t tasks, kind text, previous text, with_result boolean) RETURNS json
LANGUAGE sql STABLE AS $$
    SELECT to_json(ROW(kind, t.id, t.session_key, t.status, t.progress, t.current_step,
        t.current_step_description, t.updated_at, t.executor, previous, t.error,
        CASE WHEN with_result AND t.status = 'completed' THEN t.result END, t.name, t.attempts)::event)
$$;

CREATE FUNCTION envelope(n bigint, t tasks, kind text, previous text, with_result boolean) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT t.session_key || E'\n[' || n || ',' || to_json(t.id) || ',' || to_json(kind) || ',' || to_json(t.status)
        || ',' || t.attempts || ',' || event_json(t, kind, previous, with_result) || ']'
$$;

-- Publish a change as the push streams' envelope, [seq, taskId, type, status, attempt,
-- event], on the deployment's channel (`<schema>_events`), after the session key and a
-- newline. A NOTIFY carries at most 8000 bytes: a larger event leaves its result out (a
-- client reads it with GET /tasks/{id}) and shortens its texts.
CREATE FUNCTION publish(t tasks, kind text, previous text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    n bigint := nextval('seq');
    payload text;
BEGIN
    payload := envelope(n, t, kind, previous, true);
    IF octet_length(payload) > 7900 THEN
        t.error := left(t.error, 1000);
        t.current_step := left(t.current_step, 200);
        t.current_step_description := left(t.current_step_description, 1000);
        payload := envelope(n, t, kind, previous, false);
    END IF;
    PERFORM pg_notify(current_schema() || '_events', payload);
    RETURN n;
END $$;

-- Announce on the session's channel that it ended (forgotten whole, when idle or to make
-- room): its push streams end, on every API process.
CREATE FUNCTION publish_ended(p_s text, p_cause text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(current_schema() || '_events', p_s || E'\n[' || nextval('seq') || ',"","ended","",0,'
        || '{"type":"ended","sessionKey":' || to_json(p_s)::text || ',"reason":' || to_json(p_cause)::text || '}]');
END $$;

-- The session changed now (what idle expiry and making room look at).
CREATE FUNCTION touch(c ctx, s text) RETURNS void LANGUAGE sql AS $$
    UPDATE sessions SET changed_at = c.now WHERE key = s
$$;

-- -- clients (`async_tasks.clients`) -------------------------------------------------------
-- A session belongs to the client that created it (`sessions.client`; one created without a
-- client is its own), and each task to its session's client (`tasks.client`). `clients`
-- counts the sessions and tasks each client holds; its never-started tasks are its `fresh`
-- ones (by `seq`), its finished ones those with a `finished_seq`, its sessions by
-- `changed_at`. They change in the transaction that changes the task.

-- Add `p_sessions` sessions and `p_tasks` tasks to what `p_client` holds (its row goes
-- when it holds nothing).
CREATE FUNCTION client_count(p_client text, p_sessions integer, p_tasks integer) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_sessions integer;
    v_tasks integer;
BEGIN
    IF p_sessions >= 0 AND p_tasks >= 0 THEN
        INSERT INTO clients AS h (key, sessions, tasks) VALUES (p_client, p_sessions, p_tasks)
            ON CONFLICT (key) DO UPDATE SET sessions = h.sessions + p_sessions, tasks = h.tasks + p_tasks;
        RETURN;
    END IF;
    UPDATE clients SET sessions = sessions + p_sessions, tasks = tasks + p_tasks WHERE key = p_client
        RETURNING sessions, tasks INTO v_sessions, v_tasks;
    IF v_sessions <= 0 AND v_tasks <= 0 THEN
        DELETE FROM clients WHERE key = p_client;
    END IF;
END $$;

-- Move `n` tasks of session `s` out of status `source` and into `target` (either may be NULL).
CREATE FUNCTION shift_counts(s text, source text, target text, n integer DEFAULT 1) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sessions SET
        pending = pending + n * ((target IS NOT DISTINCT FROM 'pending')::int - (source IS NOT DISTINCT FROM 'pending')::int),
        running = running + n * ((target IS NOT DISTINCT FROM 'running')::int - (source IS NOT DISTINCT FROM 'running')::int),
        completed = completed + n * ((target IS NOT DISTINCT FROM 'completed')::int - (source IS NOT DISTINCT FROM 'completed')::int),
        failed = failed + n * ((target IS NOT DISTINCT FROM 'failed')::int - (source IS NOT DISTINCT FROM 'failed')::int),
        cancelled = cancelled + n * ((target IS NOT DISTINCT FROM 'cancelled')::int - (source IS NOT DISTINCT FROM 'cancelled')::int)
    WHERE key = s;
    UPDATE totals SET
        pending = pending + n * ((target IS NOT DISTINCT FROM 'pending')::int - (source IS NOT DISTINCT FROM 'pending')::int),
        running = running + n * ((target IS NOT DISTINCT FROM 'running')::int - (source IS NOT DISTINCT FROM 'running')::int),
        completed = completed + n * ((target IS NOT DISTINCT FROM 'completed')::int - (source IS NOT DISTINCT FROM 'completed')::int),
        failed = failed + n * ((target IS NOT DISTINCT FROM 'failed')::int - (source IS NOT DISTINCT FROM 'failed')::int),
        cancelled = cancelled + n * ((target IS NOT DISTINCT FROM 'cancelled')::int - (source IS NOT DISTINCT FROM 'cancelled')::int);
END $$;

-- Append a history entry, keeping at most `max_history`: the first HISTORY_HEAD (10, at
-- most half the cap), one entry standing for those left out (`omitted` counts them), the
-- latest.
CREATE FUNCTION add_history(c ctx, p_id text, p_at bigint, p_status text, p_previous text, p_attempt integer,
    p_reason text, p_error text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_n integer;
    v_len integer;
    v_head integer;
    v_marker task_history;
    v_absorbed task_history;
    v_omitted integer;
BEGIN
    UPDATE tasks SET history_next = history_next + 1, history_len = history_len + 1 WHERE id = p_id
        RETURNING history_next - 1, history_len INTO v_n, v_len;
    INSERT INTO task_history (task_id, n, at, status, previous, attempt, reason, error)
        VALUES (p_id, v_n, p_at, p_status, p_previous, p_attempt, p_reason, p_error);
    IF c.max_history IS NULL OR v_len <= c.max_history OR c.max_history < 3 THEN
        RETURN;
    END IF;
    v_head := least(10, c.max_history / 2);
    SELECT * INTO v_marker FROM task_history WHERE task_id = p_id ORDER BY n OFFSET v_head LIMIT 1;
    SELECT * INTO v_absorbed FROM task_history WHERE task_id = p_id ORDER BY n OFFSET v_head + 1 LIMIT 1;
    v_omitted := greatest(v_marker.omitted, 1) + 1;
    UPDATE task_history SET at = v_absorbed.at, status = v_absorbed.status, previous = v_marker.previous,
        attempt = v_absorbed.attempt, error = v_absorbed.error, omitted = v_omitted,
        reason = v_omitted || ' transitions omitted (history is capped at ' || c.max_history || ' entries)'
        WHERE task_id = p_id AND n = v_marker.n;
    DELETE FROM task_history WHERE task_id = p_id AND n = v_absorbed.n;
    UPDATE tasks SET history_len = history_len - 1 WHERE id = p_id;
END $$;

-- -- delivery ---------------------------------------------------------------------------

-- The session's place among those waiting for a slot: fewest dispatched first, then the one
-- that has waited longest; not there when nothing of it waits.
CREATE FUNCTION place_session(p_s text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM tasks WHERE session_key = p_s AND delivery = 'p') THEN
        UPDATE sessions SET waiting_since = nextval('seq') WHERE key = p_s AND waiting_since IS NULL;
    ELSE
        UPDATE sessions SET waiting_since = NULL WHERE key = p_s AND waiting_since IS NOT NULL;
    END IF;
END $$;

-- The live worker running `p_executor` with the most free slots, the longest-serving of
-- equals (NULL when none has a free slot).
CREATE FUNCTION pick_worker(c ctx, p_executor text) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT id FROM workers WHERE NOT retired AND lease_until > c.now AND slots > busy AND p_executor = ANY(executors)
    ORDER BY slots - busy DESC, started_at, id LIMIT 1
$$;

-- Hand task `p_id` of session `p_s` to worker `p_w`: a SAQ job in its queue, and a word to it.
CREATE FUNCTION dispatch(c ctx, p_s text, p_id text, p_w text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_n integer;
    v_queue text;
    v_key text;
BEGIN
    SELECT attempts + 1 INTO v_n FROM tasks WHERE id = p_id;
    SELECT queue INTO v_queue FROM workers WHERE id = p_w;
    v_key := p_id || ':' || v_n || ':' || nextval('seq');
    INSERT INTO saq_jobs (key, job, queue, status, priority, group_key, scheduled)
    VALUES (v_key, convert_to(json_build_object(
        'function', 'async_tasks.attempt', 'kwargs', json_build_object('s', p_s, 't', p_id, 'a', v_n, 'k', v_key),
        'queue', v_queue, 'key', v_key, 'timeout', 0, 'ttl', -1, 'queued', c.now, 'status', 'queued')::text, 'UTF8'),
        v_queue, 'queued', 0, NULL, 0);
    UPDATE tasks SET delivery = 'q', line_order = NULL, job_worker = p_w, job_key = v_key WHERE id = p_id;
    UPDATE sessions SET dispatched = dispatched + 1 WHERE key = p_s;
    UPDATE totals SET parked = parked - 1, dispatched = dispatched + 1;
    UPDATE workers SET busy = busy + 1 WHERE id = p_w;
    PERFORM place_session(p_s);
    PERFORM pg_notify('saq:' || v_queue, 'saq:enqueue');
END $$;

-- Dispatch parked tasks while the limits and the workers' slots allow (at most `p_budget`).
-- Routing: a task goes only to a worker that runs its executor. Each slot goes to the least
-- busy waiting session among those with a parked task that a worker with a free slot runs
-- (its first such task in its own order), and to the worker with the most free slots among
-- those that run it. A task whose executor no free worker runs holds up nothing: its
-- session's other tasks go past it.
CREATE FUNCTION pump(c ctx, p_budget integer) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_budget integer := p_budget;
    v_runnable text[];
    v_s text;
    v_busy integer;
    v_id text;
    v_executor text;
BEGIN
    WHILE v_budget > 0 LOOP
        v_budget := v_budget - 1;
        IF c.global_limit IS NOT NULL AND (SELECT dispatched FROM totals) >= c.global_limit THEN
            RETURN;
        END IF;
        v_runnable := ARRAY(SELECT DISTINCT e FROM workers, unnest(executors) AS e
            WHERE NOT retired AND lease_until > c.now AND slots > busy);
        IF cardinality(v_runnable) = 0 THEN
            RETURN;
        END IF;
        SELECT s.key, s.dispatched, t.id, t.executor INTO v_s, v_busy, v_id, v_executor FROM sessions s
        CROSS JOIN LATERAL (SELECT id, executor FROM tasks WHERE session_key = s.key AND delivery = 'p'
            AND executor = ANY(v_runnable) ORDER BY line_order LIMIT 1) t
        WHERE s.waiting_since IS NOT NULL ORDER BY s.dispatched, s.waiting_since LIMIT 1;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        -- The least busy waiting session: if it may not take a slot, none may.
        IF c.session_limit IS NOT NULL AND v_busy >= c.session_limit THEN
            RETURN;
        END IF;
        PERFORM dispatch(c, v_s, v_id, pick_worker(c, v_executor));
    END LOOP;
END $$;

-- Park a pending task in its session's line (higher priority first, then first parked
-- first), or delay it until `p_due` (ms) if that is later than now. False when it already
-- has a delivery.
CREATE FUNCTION deliver(c ctx, p_s text, p_id text, p_due bigint DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    t tasks;
BEGIN
    SELECT * INTO t FROM tasks WHERE id = p_id;
    IF t.delivery <> '' THEN
        RETURN false;
    END IF;
    IF p_due IS NOT NULL AND p_due > c.now THEN
        -- A task never started lives PENDING_TASK_TTL_MS from its delayed start.
        UPDATE tasks SET delivery = 'd', due_at = p_due, scheduled_at = p_due,
            lifetime_from = CASE WHEN fresh THEN greatest(lifetime_from, p_due) ELSE lifetime_from END
            WHERE id = p_id;
        RETURN true;
    END IF;
    UPDATE tasks SET delivery = 'p', scheduled_at = NULL, due_at = NULL,
        lifetime_from = CASE WHEN fresh THEN least(lifetime_from, c.now) ELSE lifetime_from END,
        line_order = -greatest(-4000, least(4000, t.priority))::bigint * 1099511627776
            + nextval('seq') % 1099511627776
        WHERE id = p_id;
    UPDATE totals SET parked = parked + 1;
    PERFORM place_session(p_s);
    RETURN true;
END $$;

-- Take the task out of wherever it waits or runs; true when that freed a dispatched slot.
CREATE FUNCTION undeliver(c ctx, p_s text, p_id text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    t tasks;
BEGIN
    SELECT * INTO t FROM tasks WHERE id = p_id;
    IF NOT FOUND OR t.delivery = '' THEN
        RETURN false;
    END IF;
    UPDATE tasks SET delivery = '', job_worker = NULL, job_key = NULL, line_order = NULL, due_at = NULL,
        scheduled_at = NULL WHERE id = p_id;
    IF t.delivery = 'p' THEN
        UPDATE totals SET parked = parked - 1;
        PERFORM place_session(p_s);
        RETURN false;
    END IF;
    IF t.delivery = 'd' THEN
        RETURN false;
    END IF;
    -- A job still queued goes; one a worker has taken is its worker's to finish (its claim
    -- will be refused).
    DELETE FROM saq_jobs WHERE key = t.job_key AND status = 'queued';
    UPDATE workers SET busy = greatest(busy - 1, 0) WHERE id = t.job_worker;
    UPDATE sessions SET dispatched = dispatched - 1 WHERE key = p_s;
    UPDATE totals SET dispatched = dispatched - 1;
    PERFORM place_session(p_s);
    RETURN true;
END $$;

-- -- forgetting --------------------------------------------------------------------------

-- Forget a task that is not running; its JSON when `p_want`. Its Idempotency-Key stays
-- (a request re-sent after its task is gone must not create another).
CREATE FUNCTION forget(c ctx, p_s text, p_id text, p_want boolean) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    t tasks;
    v_json text;
BEGIN
    PERFORM undeliver(c, p_s, p_id);
    SELECT * INTO t FROM tasks WHERE id = p_id;
    IF p_want THEN
        v_json := task_json(t, true);
    END IF;
    DELETE FROM tasks WHERE id = p_id;
    PERFORM shift_counts(p_s, t.status, NULL);
    PERFORM client_count(t.client, 0, -1);
    IF t.status = 'completed' AND t.started_at IS NOT NULL AND t.completed_at IS NOT NULL THEN
        UPDATE sessions SET duration_ms = duration_ms - (t.completed_at - t.started_at) WHERE key = p_s;
    END IF;
    PERFORM touch(c, p_s);
    PERFORM publish(t, 'removed', NULL);
    RETURN v_json;
END $$;

-- What the store removed by itself (retention, expiry), as [cause, JSON] for the caller's hooks.
CREATE FUNCTION drop_task(c ctx, p_s text, p_id text, p_cause text) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    v_json text := forget(c, p_s, p_id, c.want);
BEGIN
    IF c.want THEN
        RETURN ARRAY[p_cause, v_json];
    END IF;
    RETURN ARRAY[]::text[];
END $$;

CREATE FUNCTION forget_session_if_empty(c ctx, p_s text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_client text;
BEGIN
    DELETE FROM sessions WHERE key = p_s AND pending + running + completed + failed + cancelled = 0
        RETURNING client INTO v_client;
    IF FOUND THEN
        UPDATE totals SET sessions = sessions - 1;
        PERFORM client_count(v_client, -1, 0);
        -- With a window, its Idempotency-Keys stay until it ends.
        IF c.key_window IS NULL THEN
            DELETE FROM idempotency_keys WHERE session_key = p_s;
        END IF;
    END IF;
END $$;

-- -- the status change -------------------------------------------------------------------

-- The task's last writes' operation ids (the newest first, at most 8): a write re-sent after
-- its reply was lost finds its id there even if other writes came in between.
CREATE FUNCTION remember_op(c ctx, p_ops text[]) RETURNS text[] LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN c.op IS NULL THEN p_ops ELSE (ARRAY[c.op] || array_remove(p_ops, c.op))[1:8] END
$$;

-- The compare-and-set every status change goes through: it applies only if the task is
-- in session `p_s`, the machine allows source -> target, the source is among `p_expect`,
-- the task is still on `p_attempt`, run by `p_owner`, dispatched as job `p_claim` (each
-- when given). A running attempt's last held-back report (`p_percent`, `p_step`,
-- `p_description`; NULL when not given) is stored with its outcome. Leaving pending or
-- running takes the task out of its delivery; entering pending does not deliver it
-- (`deliver` does). Retention applies as a task finishes: its session's oldest-finished
-- tasks of that status beyond the limit go at once.
CREATE FUNCTION move(c ctx, p_s text, p_id text, p_target text, p_expect text[] DEFAULT NULL,
    p_attempt integer DEFAULT NULL, p_owner text DEFAULT NULL, p_runner text DEFAULT NULL,
    p_reason text DEFAULT NULL, p_error text DEFAULT NULL, p_result json DEFAULT NULL,
    p_automatic boolean DEFAULT false, p_keep_auto boolean DEFAULT false, p_dead_letter boolean DEFAULT false,
    p_claim text DEFAULT NULL, p_percent double precision DEFAULT NULL, p_step text DEFAULT NULL,
    p_description text DEFAULT NULL) RETURNS moved LANGUAGE plpgsql AS $$
DECLARE
    t tasks;
    v_source text;
    v_removed text[] := ARRAY[]::text[];
    v_keep integer;
    v_excess integer;
    v_gone text;
BEGIN
    SELECT * INTO t FROM tasks WHERE id = p_id;
    IF NOT FOUND OR t.session_key <> p_s THEN
        RETURN ROW('notfound', NULL, NULL)::moved;
    END IF;
    v_source := t.status;
    IF NOT allowed(v_source, p_target)
        OR (p_expect IS NOT NULL AND NOT v_source = ANY(p_expect))
        OR (p_attempt IS NOT NULL AND t.attempts <> p_attempt)
        OR (p_owner IS NOT NULL AND t.runner IS DISTINCT FROM p_owner)
        OR (p_claim IS NOT NULL AND (t.delivery <> 'q' OR t.job_key IS DISTINCT FROM p_claim)) THEN
        RETURN ROW('refused', v_source, NULL)::moved;
    END IF;
    IF p_target <> 'running' AND v_source IN ('pending', 'running') THEN
        PERFORM undeliver(c, p_s, p_id);
        SELECT * INTO t FROM tasks WHERE id = p_id;
    END IF;
    t.status := p_target;
    t.updated_at := c.now;
    IF v_source = 'pending' THEN
        t.fresh := false;
    END IF;
    IF finished(v_source) THEN
        t.finished_seq := NULL;
    END IF;
    IF p_target = 'running' THEN
        t.attempts := t.attempts + 1;
        t.started_at := c.now;
        t.completed_at := NULL;
        t.scheduled_at := NULL;
        t.runner := p_runner;
    ELSIF p_target = 'pending' THEN
        t.progress := 0;
        t.current_step := NULL;
        t.current_step_description := NULL;
        t.result := NULL;
        t.error := NULL;
        t.started_at := NULL;
        t.completed_at := NULL;
        t.dead_lettered := false;
        IF NOT p_keep_auto THEN
            t.auto_retries := CASE WHEN p_automatic THEN t.auto_retries + 1 ELSE 0 END;
        END IF;
    ELSE
        IF v_source = 'running' AND p_percent IS NOT NULL THEN
            t.progress := p_percent;
            IF p_step IS NOT NULL THEN
                t.current_step := p_step;
                t.current_step_description := p_description;
            ELSIF p_description IS NOT NULL THEN
                t.current_step_description := p_description;
            END IF;
        END IF;
        t.completed_at := c.now;
        t.finished_seq := nextval('seq');
        IF p_target = 'completed' THEN
            t.result := p_result;
            t.progress := 100;
            UPDATE sessions SET duration_ms = duration_ms + (c.now - coalesce(t.started_at, c.now)) WHERE key = p_s;
        ELSIF p_error IS NOT NULL THEN
            t.error := p_error;
        END IF;
        t.dead_lettered := p_dead_letter AND p_target = 'failed';
    END IF;
    IF v_source = 'running' THEN
        t.runner := NULL;
    END IF;
    t.ops := remember_op(c, t.ops);
    UPDATE tasks SET status = t.status, updated_at = t.updated_at, fresh = t.fresh, finished_seq = t.finished_seq,
        attempts = t.attempts, started_at = t.started_at, completed_at = t.completed_at,
        scheduled_at = t.scheduled_at, runner = t.runner, progress = t.progress, current_step = t.current_step,
        current_step_description = t.current_step_description, result = t.result, error = t.error,
        dead_lettered = t.dead_lettered, auto_retries = t.auto_retries, ops = t.ops
        WHERE id = p_id;
    PERFORM add_history(c, p_id, c.now, p_target, v_source, greatest(t.attempts, 1), p_reason,
        CASE WHEN p_target = 'failed' THEN p_error END);
    PERFORM shift_counts(p_s, v_source, p_target);
    PERFORM touch(c, p_s);
    PERFORM publish(t, 'transition', v_source);
    IF finished(p_target) THEN
        v_keep := CASE p_target WHEN 'completed' THEN c.retain_completed WHEN 'failed' THEN c.retain_failed
            ELSE c.retain_cancelled END;
        IF v_keep IS NOT NULL THEN
            -- Retention as a task finishes: the oldest-finished beyond the limit go now (the
            -- task that just finished is the newest and always stays).
            SELECT CASE p_target WHEN 'completed' THEN completed WHEN 'failed' THEN failed ELSE cancelled END
                INTO v_excess FROM sessions WHERE key = p_s;
            v_excess := v_excess - greatest(v_keep, 1);
            IF v_excess > 0 THEN
                FOR v_gone IN SELECT id FROM tasks WHERE session_key = p_s AND status = p_target
                    AND finished_seq IS NOT NULL ORDER BY finished_seq LIMIT v_excess LOOP
                    v_removed := v_removed || drop_task(c, p_s, v_gone, 'retention');
                END LOOP;
            END IF;
        END IF;
    END IF;
    RETURN ROW('ok', v_source, v_removed)::moved;
END $$;

-- A write whose operation id is among its task's last ones happened: its reply was lost
-- and it was sent again. Answer as the first run did.
CREATE FUNCTION replayed_op(c ctx, p_id text) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT c.op IS NOT NULL AND EXISTS (SELECT 1 FROM tasks WHERE id = p_id AND c.op = ANY(ops))
$$;

-- [[cause, task], ...] of what a function removed by itself.
CREATE FUNCTION removed_json(p_removed text[]) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT '[' || coalesce(string_agg('[' || to_json(p_removed[i])::text || ',' || p_removed[i + 1] || ']', ','
        ORDER BY i), '') || ']'
    FROM generate_series(1, coalesce(array_length(p_removed, 1), 0), 2) AS i
$$;

-- The usual answer of a function that changed one task: its JSON and what retention removed.
CREATE FUNCTION done(p_id text, p_removed text[] DEFAULT ARRAY[]::text[]) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT '["ok",' || task_json(t, true) || ',' || removed_json(p_removed) || ']' FROM tasks t WHERE t.id = p_id
$$;

-- A refusal or a miss, as a change function answers it.
CREATE FUNCTION miss(m moved) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN m.kind = 'notfound' THEN '["notfound"]' ELSE json_build_array('refused', m.source)::text END
$$;

-- -- Idempotency-Keys --------------------------------------------------------------------
-- A session's keys outlive their tasks for the idempotency window (`key_window`); at most
-- `keys_kept` per session (the oldest go first). Without a window, a key lives as long as
-- its task.

CREATE FUNCTION prune_keys(c ctx, p_s text, p_budget integer) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_gone integer := 0;
    v_n integer;
    v_excess integer;
BEGIN
    IF c.key_window IS NOT NULL THEN
        DELETE FROM idempotency_keys WHERE (session_key, key) IN (SELECT session_key, key FROM idempotency_keys
            WHERE session_key = p_s AND used_at <= c.now - c.key_window ORDER BY used_at LIMIT p_budget);
        GET DIAGNOSTICS v_gone = ROW_COUNT;
    END IF;
    IF c.keys_kept IS NOT NULL THEN
        SELECT count(*) - c.keys_kept INTO v_excess FROM idempotency_keys WHERE session_key = p_s;
        IF v_excess > 0 THEN
            DELETE FROM idempotency_keys WHERE (session_key, key) IN (SELECT session_key, key FROM idempotency_keys
                WHERE session_key = p_s ORDER BY used_at LIMIT least(v_excess, p_budget));
            GET DIAGNOSTICS v_n = ROW_COUNT;
            v_gone := v_gone + v_n;
        END IF;
    END IF;
    RETURN v_gone;
END $$;

-- -- logs ---------------------------------------------------------------------------------

-- What a stream starts from for a task: its event, with its log (all of it when `whole`, else
-- its latest 3 lines, RECENT_LINES in task_log.py) and its result unless larger than
-- `result_bytes` (NULL: always), as compact JSON.
CREATE TYPE snapshot AS ("type" text, "taskId" text, "sessionKey" text, status text, progress double precision,
    "currentStep" text, "currentStepDescription" text, at bigint, executor text, previous text, error text,
    result json, name text, attempt integer, logs json, "logsDropped" integer);

CREATE FUNCTION snapshot_json(t tasks, whole boolean, result_bytes integer) RETURNS json LANGUAGE sql STABLE AS $$
    SELECT to_json(ROW('snapshot', t.id, t.session_key, t.status, t.progress, t.current_step,
        t.current_step_description, t.updated_at, t.executor, NULL, t.error,
        CASE WHEN t.status = 'completed' AND (result_bytes IS NULL OR octet_length(t.result::text) <= result_bytes)
            THEN t.result END, t.name, t.attempts, logs_json(t.id, CASE WHEN whole THEN NULL ELSE 3 END),
        t.logs_dropped)::snapshot)
$$;

-- Append log lines to running task `p_id` of session `p_s`: `p_lines` is a JSON array of
-- lines without their `n`, oldest first, after `p_skipped` lines its worker dropped before
-- sending them. Each is numbered (following the task's last line; dropped lines count);
-- beyond `log_lines` lines or `log_bytes` bytes (each line's JSON) the oldest go, counted in
-- the task's `logs_dropped` (the newest always stays). The lines kept are published as `log`
-- events (as many as NOTIFY's 8000 bytes need). Returns how many were appended.
CREATE FUNCTION add_logs(c ctx, p_s text, p_id text, p_skipped integer, p_lines json) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    t tasks;
    v_line json;
    v_n integer;
    v_size integer;
    v_added integer := 0;
    v_first integer;
    v_popped integer := 0;
    v_gone task_logs;
    v_chunk text[] := ARRAY[]::text[];
    v_chunk_bytes integer := 0;
    v_text text;
BEGIN
    SELECT * INTO t FROM tasks WHERE id = p_id;
    t.logs_dropped := t.logs_dropped + coalesce(p_skipped, 0);
    v_n := t.logs_dropped + t.log_lines;
    v_first := v_n + 1;
    FOR v_line IN SELECT value FROM json_array_elements(coalesce(p_lines, '[]')) LOOP
        v_n := v_n + 1;
        v_text := line_json(v_n, (v_line ->> 'at')::bigint, v_line ->> 'message', v_line -> 'data');
        v_size := octet_length(v_text);
        INSERT INTO task_logs (task_id, n, at, message, data, size)
            VALUES (p_id, v_n, (v_line ->> 'at')::bigint, v_line ->> 'message', v_line -> 'data', v_size);
        t.log_lines := t.log_lines + 1;
        t.log_bytes := t.log_bytes + v_size;
        v_added := v_added + 1;
    END LOOP;
    WHILE t.log_lines > 1 AND (t.log_lines > c.log_lines OR t.log_bytes > c.log_bytes) LOOP
        DELETE FROM task_logs WHERE (task_id, n) = (SELECT task_id, n FROM task_logs WHERE task_id = p_id
            ORDER BY n LIMIT 1) RETURNING * INTO v_gone;
        t.log_lines := t.log_lines - 1;
        t.log_bytes := t.log_bytes - v_gone.size;
        t.logs_dropped := t.logs_dropped + 1;
        v_popped := v_popped + 1;
    END LOOP;
    UPDATE tasks SET logs_dropped = t.logs_dropped, log_lines = t.log_lines, log_bytes = t.log_bytes
        WHERE id = p_id;
    -- The lines added that are still kept, in events of at most ~7000 bytes each.
    FOR v_text IN SELECT line_json(l.n, l.at, l.message, l.data) FROM task_logs l
        WHERE l.task_id = p_id AND l.n >= v_first ORDER BY l.n LOOP
        IF v_chunk_bytes + octet_length(v_text) > 7000 AND array_length(v_chunk, 1) > 0 THEN
            PERFORM publish_log(t, v_chunk);
            v_chunk := ARRAY[]::text[];
            v_chunk_bytes := 0;
        END IF;
        v_chunk := v_chunk || v_text;
        v_chunk_bytes := v_chunk_bytes + octet_length(v_text);
    END LOOP;
    IF array_length(v_chunk, 1) > 0 THEN
        PERFORM publish_log(t, v_chunk);
    END IF;
    RETURN v_added;
END $$;

-- Publish log lines (their JSON) of the task as one `log` event.
CREATE FUNCTION publish_log(t tasks, p_lines text[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    n bigint := nextval('seq');
BEGIN
    PERFORM pg_notify(current_schema() || '_events', t.session_key || E'\n[' || n || ',' || to_json(t.id) || ',"log",'
        || to_json(t.status) || ',' || t.attempts || ',{"type":"log","taskId":' || to_json(t.id) || ',"sessionKey":'
        || to_json(t.session_key) || ',"status":' || to_json(t.status) || ',"attempt":' || t.attempts || ',"at":'
        || t.updated_at || ',"lines":[' || array_to_string(p_lines, ',') || '],"logsDropped":' || t.logs_dropped
        || '}]');
END $$;

-- Remember how long a completed attempt of `executor` took (the newest `keep` of them).
CREATE FUNCTION record_duration(p_executor text, p_took bigint, p_keep integer) RETURNS void LANGUAGE sql AS $$
    INSERT INTO durations (executor, runs) VALUES (p_executor, ARRAY[p_took])
    ON CONFLICT (executor) DO UPDATE SET runs = (ARRAY[p_took] || durations.runs)[1:p_keep]
$$;
