-- The prelude, third part (see `prelude.sql`): forgetting a task or a session, the
-- compare-and-set every status change goes through (`move`), the Idempotency-Keys and
-- the task logs.

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
