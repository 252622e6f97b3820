-- Creating a task: `op_create` and what it needs to make room (`room_for`), and the cheap
-- look at an Idempotency-Key before a request is validated (`op_replay`).

-- -- making room (as `MemoryTaskStore._admit`: see `CreateLimits`) -----------------------

-- What must go for one more task in session `p_s` (of client `p_client`; `p_new`: the
-- session holds nothing yet) to fit the client's budgets and the shared pools: whole
-- sessions and single tasks, nothing when it fits; or the refusal's answer when no room can
-- be made. It changes nothing itself.
--
-- At its own budget, a client's least recently changed idle session goes (for a new
-- session) or its oldest finished task. In a full pool, room comes from a client holding
-- more than the one asking (`async_tasks.clients.fair_victims`: more than one more, the
-- largest first, at most 8 of them): its oldest never-started task, or its oldest finished
-- one (MAX_TASKS); its least recently changed session where nothing runs or was started
-- (MAX_SESSIONS); failing that, the least recently changed idle session of a client holding
-- more sessions than the one asking (an idle session never blocks a new one; it is never
-- the largest holder's to take). Each look reads at most the first 64 entries of an index
-- (the deployment's lock is held).
CREATE TYPE room AS (refusal text, sessions text[], tasks text[]);

CREATE FUNCTION room_for(p_s text, p_client text, p_new boolean, p_max_tasks integer, p_max_sessions integer,
    p_max_client_tasks integer, p_max_client_sessions integer) RETURNS room LANGUAGE plpgsql AS $$
DECLARE
    r room := ROW(NULL, ARRAY[]::text[], ARRAY[]::text[])::room;
    v_own_sessions bigint := 0;
    v_own_tasks bigint := 0;
    v_sessions_held bigint;
    v_tasks_held bigint;
    v_other text;
    v_victim text;
    v_n bigint;
BEGIN
    SELECT sessions, tasks INTO v_own_sessions, v_own_tasks FROM clients WHERE key = p_client;
    v_own_sessions := coalesce(v_own_sessions, 0);
    v_own_tasks := coalesce(v_own_tasks, 0);
    SELECT sessions, pending + running + completed + failed + cancelled INTO v_sessions_held, v_tasks_held
        FROM totals;
    IF p_new AND p_max_client_sessions IS NOT NULL AND v_own_sessions >= p_max_client_sessions THEN
        SELECT s.key INTO v_victim FROM (SELECT key, changed_at, pending, running FROM sessions
            WHERE client = p_client ORDER BY changed_at, key LIMIT 64) s
        WHERE s.pending + s.running = 0 AND s.key <> p_s ORDER BY s.changed_at, s.key LIMIT 1;
        IF v_victim IS NULL THEN
            r.refusal := json_build_array('client_sessions', v_own_sessions)::text;
            RETURN r;
        END IF;
        v_n := session_size(v_victim);
        r.sessions := r.sessions || v_victim;
        v_own_sessions := v_own_sessions - 1;
        v_sessions_held := v_sessions_held - 1;
        v_own_tasks := v_own_tasks - v_n;
        v_tasks_held := v_tasks_held - v_n;
    END IF;
    IF p_max_client_tasks IS NOT NULL AND v_own_tasks >= p_max_client_tasks THEN
        v_victim := oldest_finished(p_client, r.sessions);
        IF v_victim IS NULL THEN
            r.refusal := json_build_array('client_tasks', v_own_tasks)::text;
            RETURN r;
        END IF;
        r.tasks := r.tasks || v_victim;
        v_own_tasks := v_own_tasks - 1;
        v_tasks_held := v_tasks_held - 1;
    END IF;
    IF p_new AND p_max_sessions IS NOT NULL AND v_sessions_held >= p_max_sessions THEN
        v_victim := NULL;
        FOR v_other IN SELECT key FROM clients WHERE sessions > v_own_sessions + 1 AND key <> p_client
            ORDER BY sessions DESC, key LIMIT 8 LOOP
            -- Its least recently changed session where nothing runs or ever started.
            SELECT s.key INTO v_victim FROM (SELECT key, changed_at, pending, running FROM sessions
                WHERE client = v_other ORDER BY changed_at, key LIMIT 64) s
            WHERE s.running = 0 AND s.key <> ALL(r.sessions)
                AND s.pending = (SELECT count(*) FROM tasks t WHERE t.session_key = s.key AND t.fresh)
            ORDER BY s.changed_at, s.key LIMIT 1;
            EXIT WHEN v_victim IS NOT NULL;
        END LOOP;
        IF v_victim IS NULL THEN
            -- Failing that, an idle session never blocks a new one (unless it is the one
            -- asking that holds the most).
            SELECT s.key INTO v_victim FROM (SELECT key, client, changed_at, pending, running FROM sessions
                ORDER BY changed_at, key LIMIT 64) s JOIN clients h ON h.key = s.client
            WHERE s.pending + s.running = 0 AND h.sessions > v_own_sessions AND s.key <> ALL(r.sessions)
                AND s.key <> p_s
            ORDER BY s.changed_at, s.key LIMIT 1;
        END IF;
        IF v_victim IS NULL THEN
            r.refusal := json_build_array('sessions', v_sessions_held)::text;
            RETURN r;
        END IF;
        r.sessions := r.sessions || v_victim;
        v_tasks_held := v_tasks_held - session_size(v_victim);
    END IF;
    IF p_max_tasks IS NOT NULL AND v_tasks_held >= p_max_tasks THEN
        v_victim := NULL;
        FOR v_other IN SELECT key FROM clients WHERE tasks > v_own_tasks + 1 AND key <> p_client
            ORDER BY tasks DESC, key LIMIT 8 LOOP
            v_victim := coalesce(oldest_unstarted(v_other, r.sessions), oldest_finished(v_other, r.sessions));
            EXIT WHEN v_victim IS NOT NULL;
        END LOOP;
        IF v_victim IS NULL THEN
            r.refusal := json_build_array('tasks', v_tasks_held)::text;
            RETURN r;
        END IF;
        r.tasks := r.tasks || v_victim;
    END IF;
    RETURN r;
END $$;

-- The tasks session `p_s` holds.
CREATE FUNCTION session_size(p_s text) RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT pending + running + completed + failed + cancelled FROM sessions WHERE key = p_s
$$;

-- The oldest never-started task of client `p_client` (by creation) outside the sessions
-- `p_gone`, among its first 64.
CREATE FUNCTION oldest_unstarted(p_client text, p_gone text[]) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT id FROM (SELECT id, session_key, seq FROM tasks WHERE client = p_client AND fresh ORDER BY seq LIMIT 64) t
    WHERE session_key <> ALL(p_gone) ORDER BY seq LIMIT 1
$$;

-- The client's task that finished first, outside the sessions `p_gone`, among its first 64.
CREATE FUNCTION oldest_finished(p_client text, p_gone text[]) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT id FROM (SELECT id, session_key, finished_seq FROM tasks WHERE client = p_client
        AND finished_seq IS NOT NULL ORDER BY finished_seq LIMIT 64) t
    WHERE session_key <> ALL(p_gone) ORDER BY finished_seq LIMIT 1
$$;

-- Create a task (pending), with the session's quotas, the client's budgets, the server-wide
-- caps and the Idempotency-Key checked in the same transaction; where a budget or a full
-- pool would refuse, room is made in it when it can be (see `room_for`); with `p_deliver`,
-- the task is handed to delivery in it too (parked, or delayed until `p_due`), so a task
-- that was created and should run always will. `p_client` is the client asking (NULL: the
-- session is its own); a session belongs to the client that created it.
-- Answers ["created", task, [[cause, task], ...]], ["replay", task], ["conflict", task id],
-- ["gone", task id], ["quota", active], ["sessions", held], ["tasks", held],
-- ["client_sessions", held] or ["client_tasks", held].
CREATE FUNCTION op_create(p_now bigint, p_conf text, p_want boolean, p_op text, p_s text, p_id text,
    p_max_active integer, p_key text, p_fingerprint text, p_max_tasks integer, p_max_sessions integer,
    p_deliver boolean, p_due bigint, p_client text, p_max_client_tasks integer, p_max_client_sessions integer,
    p_executor text, p_name text, p_description text, p_params json, p_metadata json, p_tags text[],
    p_priority integer, p_timeout_ms integer, p_max_retries integer, p_request_id text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    c ctx := ctx(p_now, p_conf, p_want, p_op);
    t tasks;
    k idempotency_keys;
    r room;
    v_alive boolean;
    v_active integer;
    v_client text;
    v_new boolean;
    v_removed text[] := ARRAY[]::text[];
    v_victim text;
    v_session text;
BEGIN
    PERFORM lock_all();
    -- A create sent again after its reply was lost finds its own task: the same answer as before.
    SELECT * INTO t FROM tasks WHERE id = p_id;
    IF FOUND AND t.session_key = p_s THEN
        RETURN json_build_array('created', task_json(t, true)::json)::text;
    END IF;
    IF p_key IS NOT NULL THEN
        SELECT * INTO k FROM idempotency_keys WHERE session_key = p_s AND key = p_key;
        IF FOUND THEN
            v_alive := EXISTS (SELECT 1 FROM tasks WHERE id = k.task_id AND session_key = p_s);
            IF v_alive OR (c.key_window IS NOT NULL AND k.used_at > c.now - c.key_window) THEN
                IF k.fingerprint <> p_fingerprint THEN
                    RETURN json_build_array('conflict', k.task_id)::text;
                END IF;
                IF NOT v_alive THEN
                    RETURN json_build_array('gone', k.task_id)::text;
                END IF;
                RETURN '["replay",' || (SELECT task_json(x, true) FROM tasks x WHERE x.id = k.task_id) || ']';
            END IF;
            -- The key's task is gone and its window over (or there is none): the key is free.
            DELETE FROM idempotency_keys WHERE session_key = p_s AND key = p_key;
        END IF;
    END IF;
    SELECT pending + running, client INTO v_active, v_client FROM sessions WHERE key = p_s;
    v_new := NOT FOUND;
    IF NOT v_new AND v_active >= p_max_active THEN
        RETURN json_build_array('quota', v_active)::text;
    END IF;
    IF v_new THEN
        v_client := coalesce(nullif(p_client, ''), p_s);
    END IF;
    r := room_for(p_s, v_client, v_new, p_max_tasks, p_max_sessions, p_max_client_tasks, p_max_client_sessions);
    IF r.refusal IS NOT NULL THEN
        RETURN r.refusal;
    END IF;
    FOREACH v_session IN ARRAY r.sessions LOOP
        FOR v_victim IN SELECT id FROM tasks WHERE session_key = v_session ORDER BY seq LOOP
            v_removed := v_removed || drop_task(c, v_session, v_victim, 'evicted');
        END LOOP;
        PERFORM forget_session_if_empty(c, v_session);
        PERFORM publish_ended(v_session, 'evicted');
    END LOOP;
    FOREACH v_victim IN ARRAY r.tasks LOOP
        SELECT session_key INTO v_session FROM tasks WHERE id = v_victim;
        IF FOUND THEN
            v_removed := v_removed || drop_task(c, v_session, v_victim, 'evicted');
            PERFORM forget_session_if_empty(c, v_session);
        END IF;
    END LOOP;
    -- (Making room may have emptied this very session: it is then made again.)
    INSERT INTO sessions (key, client, changed_at) VALUES (p_s, v_client, c.now) ON CONFLICT (key) DO NOTHING;
    v_new := FOUND;
    IF v_new THEN
        UPDATE totals SET sessions = sessions + 1;
    END IF;
    INSERT INTO tasks (id, session_key, client, seq, status, executor, name, description, params, metadata, tags,
        priority, timeout_ms, max_retries, request_id, created_at, updated_at, lifetime_from, ops)
    VALUES (p_id, p_s, v_client, nextval('seq'), 'pending', p_executor, p_name, p_description, p_params, p_metadata,
        p_tags, p_priority, p_timeout_ms, p_max_retries, p_request_id, c.now, c.now, c.now,
        CASE WHEN c.op IS NULL THEN '{}'::text[] ELSE ARRAY[c.op] END)
    RETURNING * INTO t;
    PERFORM client_count(v_client, v_new::integer, 1);
    IF p_key IS NOT NULL THEN
        INSERT INTO idempotency_keys (session_key, key, task_id, fingerprint, used_at)
            VALUES (p_s, p_key, p_id, p_fingerprint, c.now);
        PERFORM prune_keys(c, p_s, 16);
    END IF;
    PERFORM add_history(c, p_id, c.now, 'pending', NULL, 1, 'created', NULL);
    PERFORM shift_counts(p_s, NULL, 'pending');
    UPDATE sessions SET forgetting = false, changed_at = c.now WHERE key = p_s;
    PERFORM publish(t, 'transition', NULL);
    IF p_deliver THEN
        PERFORM deliver(c, p_s, p_id, p_due);
        PERFORM pump(c, 8);
    END IF;
    RETURN '["created",' || (SELECT task_json(x, true) FROM tasks x WHERE x.id = p_id) || ','
        || removed_json(v_removed) || ']';
END $$;

-- The task an earlier create with this Idempotency-Key made in the session (a cheap look
-- before validating a request; `op_create` checks again). Answers ["none"], ["replay",
-- task], ["conflict", task id] or ["gone", task id].
CREATE FUNCTION op_replay(p_now bigint, p_conf text, p_s text, p_key text, p_fingerprint text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    c ctx := ctx(p_now, p_conf, false, NULL);
    k idempotency_keys;
    v_json text;
BEGIN
    SELECT * INTO k FROM idempotency_keys WHERE session_key = p_s AND key = p_key;
    IF NOT FOUND THEN
        RETURN '["none"]';
    END IF;
    SELECT task_json(x, true) INTO v_json FROM tasks x WHERE x.id = k.task_id AND x.session_key = p_s;
    IF v_json IS NULL AND (c.key_window IS NULL OR k.used_at <= c.now - c.key_window) THEN
        RETURN '["none"]';  -- its task is gone and its window over (or there is none): the key is free
    END IF;
    IF k.fingerprint <> p_fingerprint THEN
        RETURN json_build_array('conflict', k.task_id)::text;
    END IF;
    IF v_json IS NULL THEN
        RETURN json_build_array('gone', k.task_id)::text;
    END IF;
    RETURN '["replay",' || v_json || ']';
END $$;
