-- Reads: a page of a session's tasks, a waiting task's place, a push stream's snapshot.
-- None takes the deployment's lock but the snapshot (see there).

-- A page of the session's tasks, newest first, as summaries (never params, metadata,
-- results or history), matching every filter given (NULL: any), after `p_offset` more or
-- below the cursor `p_below` (a creation sequence number a page gave).
-- Answers {"total": n, "tasks": [...], "next": cursor or null}.
CREATE FUNCTION op_query(p_s text, p_status text, p_executor text, p_tag text, p_dead boolean, p_offset integer,
    p_limit integer, p_below bigint) RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_total bigint;
    v_page json;
    v_last bigint;
    v_got integer;
BEGIN
    SELECT count(*) INTO v_total FROM tasks WHERE session_key = p_s
        AND (p_status IS NULL OR status = p_status) AND (p_executor IS NULL OR executor = p_executor)
        AND (p_tag IS NULL OR p_tag = ANY(tags)) AND (p_dead IS NULL OR dead_lettered = p_dead);
    SELECT json_agg(summary_json(x) ORDER BY x.seq DESC), min(x.seq), count(*) INTO v_page, v_last, v_got FROM (
        SELECT * FROM tasks WHERE session_key = p_s
            AND (p_status IS NULL OR status = p_status) AND (p_executor IS NULL OR executor = p_executor)
            AND (p_tag IS NULL OR p_tag = ANY(tags)) AND (p_dead IS NULL OR dead_lettered = p_dead)
            AND (p_below IS NULL OR seq < p_below)
        ORDER BY seq DESC OFFSET p_offset LIMIT CASE WHEN p_limit < 0 THEN NULL ELSE p_limit END) x;
    RETURN json_build_object('total', v_total, 'tasks', coalesce(v_page, '[]'),
        'next', CASE WHEN p_limit > 0 AND v_got >= p_limit AND EXISTS (SELECT 1 FROM tasks WHERE session_key = p_s
            AND (p_status IS NULL OR status = p_status) AND (p_executor IS NULL OR executor = p_executor)
            AND (p_tag IS NULL OR p_tag = ANY(tags)) AND (p_dead IS NULL OR dead_lettered = p_dead)
            AND seq < v_last) THEN v_last::text END)::text;
END $$;

-- A pending task's place in its session's line: 1 once it is dispatched to a worker (it
-- starts as soon as that worker has a free slot), else after the session's dispatched
-- tasks that have not started and the parked tasks ahead of it. NULL when not waiting.
CREATE FUNCTION op_position(p_s text, p_id text) RETURNS integer LANGUAGE plpgsql STABLE AS $$
DECLARE
    t tasks;
    r sessions;
BEGIN
    SELECT * INTO t FROM tasks WHERE id = p_id AND session_key = p_s AND status = 'pending';
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF t.delivery = 'q' THEN
        RETURN 1;
    END IF;
    IF t.delivery <> 'p' THEN
        RETURN NULL;
    END IF;
    SELECT * INTO r FROM sessions WHERE key = p_s;
    RETURN greatest(0, r.dispatched - r.running)
        + (SELECT count(*) FROM tasks WHERE session_key = p_s AND delivery = 'p' AND line_order < t.line_order) + 1;
END $$;

-- What a push stream starts from (and starts again from after a lost connection): the
-- events of the session's newest tasks (at most `p_limit`), or of one task, and the event
-- sequence number they reflect, read at one moment: every change with a higher number
-- happened after. It takes the deployment's lock, so no change is half-way (a number
-- taken, not yet committed). A result over `p_result_bytes` is left out of a session's
-- snapshots (a client reads it with GET /tasks/{id}); one task's snapshot always carries it.
-- Each carries the task's log: all of it in one task's snapshot, its latest lines in a session's.
-- Answers [seq, [event, ...] newest first].
CREATE FUNCTION op_snapshot(p_s text, p_id text, p_limit integer, p_result_bytes integer) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint;
    v_events json;
BEGIN
    PERFORM lock_all();
    SELECT CASE WHEN is_called THEN last_value ELSE 0 END INTO v_seq FROM seq;
    IF p_id IS NOT NULL THEN
        SELECT json_agg(snapshot_json(t, true, NULL)) INTO v_events FROM tasks t
            WHERE t.id = p_id AND t.session_key = p_s;
    ELSE
        SELECT json_agg(snapshot_json(t, false, p_result_bytes) ORDER BY t.seq DESC) INTO v_events
        FROM (SELECT * FROM tasks WHERE session_key = p_s ORDER BY seq DESC LIMIT p_limit) t;
    END IF;
    RETURN '[' || v_seq || ',' || coalesce(v_events::text, '[]') || ']';
END $$;

-- Check the counters of the given sessions against their tasks, repair any that drifted
-- (they should never: every change is one transaction, every re-sent write answers
-- "done") and put back in line a session whose waiting tasks were not. With no session
-- given, check the totals against every session's counts, the workers' slots in use and
-- what each client holds against its sessions ('client <key>', 'sessions' or 'tasks').
-- Answers [[session (or what else was counted), field, was, is], ...] for each repair.
CREATE FUNCTION op_verify(p_sessions text[]) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    v_repairs json[] := ARRAY[]::json[];
    v_s text;
    v_field text;
    v_was bigint;
    v_is bigint;
BEGIN
    PERFORM lock_all();
    IF p_sessions IS NULL THEN
        FOR v_field, v_was, v_is IN
            SELECT f, was, actual FROM (
                SELECT 'pending' AS f, (SELECT pending FROM totals) AS was, (SELECT coalesce(sum(pending), 0) FROM sessions) AS actual
                UNION ALL SELECT 'running', (SELECT running FROM totals), (SELECT coalesce(sum(running), 0) FROM sessions)
                UNION ALL SELECT 'completed', (SELECT completed FROM totals), (SELECT coalesce(sum(completed), 0) FROM sessions)
                UNION ALL SELECT 'failed', (SELECT failed FROM totals), (SELECT coalesce(sum(failed), 0) FROM sessions)
                UNION ALL SELECT 'cancelled', (SELECT cancelled FROM totals), (SELECT coalesce(sum(cancelled), 0) FROM sessions)
                UNION ALL SELECT 'dispatched', (SELECT dispatched FROM totals), (SELECT coalesce(sum(dispatched), 0) FROM sessions)
                UNION ALL SELECT 'parked', (SELECT parked FROM totals), (SELECT count(*) FROM tasks WHERE delivery = 'p')
                UNION ALL SELECT 'sessions', (SELECT sessions FROM totals), (SELECT count(*) FROM sessions)
            ) x WHERE was <> actual
        LOOP
            EXECUTE format('UPDATE totals SET %I = $1', v_field) USING v_is;
            v_repairs := v_repairs || json_build_array('', v_field, v_was, v_is);
        END LOOP;
        FOR v_s, v_was, v_is IN
            SELECT w.id, w.busy, (SELECT count(*) FROM tasks t WHERE t.job_worker = w.id AND t.delivery = 'q')
            FROM workers w
        LOOP
            IF v_was <> v_is THEN
                UPDATE workers SET busy = v_is WHERE id = v_s;
                v_repairs := v_repairs || json_build_array('worker ' || v_s, 'busy', v_was, v_is);
            END IF;
        END LOOP;
        -- What each client holds, from its sessions (and a client holding nothing has no row).
        FOR v_s, v_field, v_was, v_is IN
            WITH held AS (
                SELECT s.client, count(*) AS sessions, sum((SELECT count(*) FROM tasks t WHERE t.session_key = s.key))
                    AS tasks
                FROM sessions s GROUP BY s.client
            )
            SELECT coalesce(h.key, held.client), f.name,
                coalesce(CASE f.name WHEN 'sessions' THEN h.sessions ELSE h.tasks END, 0),
                coalesce(CASE f.name WHEN 'sessions' THEN held.sessions ELSE held.tasks END, 0)
            FROM clients h FULL JOIN held ON held.client = h.key, unnest(ARRAY['sessions', 'tasks']) AS f(name)
        LOOP
            IF v_was <> v_is THEN
                v_repairs := v_repairs || json_build_array('client ' || v_s, v_field, v_was, v_is);
            END IF;
        END LOOP;
        DELETE FROM clients h WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.client = h.key);
        INSERT INTO clients AS h (key, sessions, tasks)
            SELECT s.client, count(*), sum((SELECT count(*) FROM tasks t WHERE t.session_key = s.key))
            FROM sessions s GROUP BY s.client
        ON CONFLICT (key) DO UPDATE SET sessions = excluded.sessions, tasks = excluded.tasks
            WHERE (h.sessions, h.tasks) IS DISTINCT FROM (excluded.sessions, excluded.tasks);
        RETURN coalesce(array_to_json(v_repairs), '[]')::text;
    END IF;
    FOREACH v_s IN ARRAY p_sessions LOOP
        FOR v_field, v_was, v_is IN
            SELECT f.name, CASE f.name WHEN 'pending' THEN r.pending WHEN 'running' THEN r.running
                    WHEN 'completed' THEN r.completed WHEN 'failed' THEN r.failed WHEN 'cancelled' THEN r.cancelled
                    ELSE r.dispatched END,
                CASE f.name WHEN 'dispatched' THEN
                    (SELECT count(*) FROM tasks t WHERE t.session_key = v_s AND t.delivery = 'q')
                ELSE (SELECT count(*) FROM tasks t WHERE t.session_key = v_s AND t.status = f.name) END
            FROM sessions r, unnest(ARRAY['pending', 'running', 'completed', 'failed', 'cancelled', 'dispatched'])
                AS f(name)
            WHERE r.key = v_s
        LOOP
            IF v_was <> v_is THEN
                EXECUTE format('UPDATE sessions SET %I = $1 WHERE key = $2', v_field) USING v_is, v_s;
                v_repairs := v_repairs || json_build_array(v_s, v_field, v_was, v_is);
            END IF;
        END LOOP;
        PERFORM place_session(v_s);
    END LOOP;
    RETURN coalesce(array_to_json(v_repairs), '[]')::text;
END $$;
