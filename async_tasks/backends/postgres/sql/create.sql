-- Create a task (pending), with the session's quotas, the server-wide caps and the
-- Idempotency-Key checked in the same transaction; with `p_deliver`, it is handed to
-- delivery in it too (parked, or delayed until `p_due`), so a task that was created and
-- should run always will.
-- Answers ["created", task], ["replay", task], ["conflict", task id], ["gone", task id],
-- ["quota", active], ["sessions", held] or ["tasks", held].
CREATE FUNCTION op_create(p_now bigint, p_conf text, p_want boolean, p_op text, p_s text, p_id text,
    p_max_active integer, p_key text, p_fingerprint text, p_max_tasks integer, p_max_sessions integer,
    p_deliver boolean, p_due bigint, p_executor text, p_name text, p_description text, p_params json,
    p_metadata json, p_tags text[], p_priority integer, p_timeout_ms integer, p_max_retries integer,
    p_request_id text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    c ctx := ctx(p_now, p_conf, p_want, p_op);
    t tasks;
    k idempotency_keys;
    v_alive boolean;
    v_held bigint;
    v_active integer;
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
    SELECT pending + running INTO v_active FROM sessions WHERE key = p_s;
    IF FOUND THEN
        IF v_active >= p_max_active THEN
            RETURN json_build_array('quota', v_active)::text;
        END IF;
    ELSIF p_max_sessions IS NOT NULL THEN
        SELECT sessions INTO v_held FROM totals;
        IF v_held >= p_max_sessions THEN
            RETURN json_build_array('sessions', v_held)::text;
        END IF;
    END IF;
    IF p_max_tasks IS NOT NULL THEN
        SELECT pending + running + completed + failed + cancelled INTO v_held FROM totals;
        IF v_held >= p_max_tasks THEN
            RETURN json_build_array('tasks', v_held)::text;
        END IF;
    END IF;
    INSERT INTO sessions (key, changed_at) VALUES (p_s, c.now) ON CONFLICT (key) DO NOTHING;
    IF FOUND THEN
        UPDATE totals SET sessions = sessions + 1;
    END IF;
    INSERT INTO tasks (id, session_key, seq, status, executor, name, description, params, metadata, tags, priority,
        timeout_ms, max_retries, request_id, created_at, updated_at, lifetime_from, ops)
    VALUES (p_id, p_s, nextval('seq'), 'pending', p_executor, p_name, p_description, p_params, p_metadata, p_tags,
        p_priority, p_timeout_ms, p_max_retries, p_request_id, c.now, c.now, c.now,
        CASE WHEN c.op IS NULL THEN '{}'::text[] ELSE ARRAY[c.op] END)
    RETURNING * INTO t;
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
    RETURN '["created",' || (SELECT task_json(x, true) FROM tasks x WHERE x.id = p_id) || ']';
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
