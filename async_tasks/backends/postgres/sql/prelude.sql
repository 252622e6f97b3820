-- The prelude: what every change function uses, in three files created in this order
-- (`schema.py`'s FUNCTIONS; a function in SQL must exist before one that calls it is
-- created): here settings, time, the record's JSON, events, clients and history;
-- `prelude_delivery.sql` the delivery of attempts; `prelude_changes.sql` forgetting, the
-- compare-and-set of a status change, Idempotency-Keys and logs.
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
