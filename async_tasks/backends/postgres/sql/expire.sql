-- The time limits, in the given sessions, at most `p_budget` changes per call: never-started
-- pending tasks past their lifetime are cancelled (taken out of delivery), finished tasks
-- past their TTL removed, idle sessions (nothing active, nothing changed for a while)
-- forgotten with their tasks (a large one over several calls; then announced as ended, so
-- their push streams end), Idempotency-Keys past their window forgotten. With no session
-- given: what belongs to no session (keys of forgotten sessions, full token buckets, old
-- removal answers).
-- Answers [finished removed, sessions forgotten, their tasks, budget left, [cancelled task, ...],
-- [[cause, task], ...]].
CREATE FUNCTION op_expire(p_now bigint, p_conf text, p_want boolean, p_op text, p_finished_ttl bigint,
    p_pending_ttl bigint, p_idle bigint, p_budget integer, p_reason text, p_sessions text[]) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    c ctx := ctx(p_now, p_conf, p_want, p_op);
    v_budget integer := p_budget;
    v_removed text[] := ARRAY[]::text[];
    v_cancelled text[] := ARRAY[]::text[];
    v_finished integer := 0;
    v_forgotten integer := 0;
    v_held integer := 0;
    v_s text;
    v_id text;
    v_status text;
    v_n integer;
    m moved;
    r sessions;
BEGIN
    PERFORM lock_all();
    IF p_sessions IS NULL THEN
        IF c.key_window IS NOT NULL THEN
            DELETE FROM idempotency_keys WHERE (session_key, key) IN (SELECT session_key, key FROM idempotency_keys
                WHERE used_at <= c.now - c.key_window ORDER BY used_at LIMIT v_budget);
        END IF;
        DELETE FROM buckets WHERE full_at <= c.now;
        DELETE FROM removals WHERE at < c.now - 60000;
        RETURN '[0,0,0,' || v_budget || ',[],[]]';
    END IF;
    FOREACH v_s IN ARRAY p_sessions LOOP
        EXIT WHEN v_budget <= 0;
        IF p_pending_ttl IS NOT NULL THEN
            FOR v_id IN SELECT id FROM tasks WHERE session_key = v_s AND fresh
                AND lifetime_from <= c.now - p_pending_ttl ORDER BY lifetime_from LIMIT v_budget LOOP
                m := move(c, v_s, v_id, 'cancelled', p_expect => ARRAY['pending'], p_reason => p_reason);
                IF m.kind = 'ok' THEN
                    v_cancelled := v_cancelled || (SELECT task_json(x, true) FROM tasks x WHERE x.id = v_id);
                    v_removed := v_removed || m.removed;
                END IF;
                v_budget := v_budget - 1;
            END LOOP;
        END IF;
        IF p_finished_ttl IS NOT NULL THEN
            FOREACH v_status IN ARRAY ARRAY['completed', 'failed', 'cancelled'] LOOP
                FOR v_id IN SELECT id FROM tasks WHERE session_key = v_s AND status = v_status
                    AND finished_seq IS NOT NULL AND completed_at <= c.now - p_finished_ttl
                    ORDER BY finished_seq LIMIT greatest(v_budget, 0) LOOP
                    v_removed := v_removed || drop_task(c, v_s, v_id, 'expired');
                    v_finished := v_finished + 1;
                    v_budget := v_budget - 1;
                END LOOP;
            END LOOP;
        END IF;
        IF p_idle IS NOT NULL AND v_budget > 0 THEN
            SELECT * INTO r FROM sessions WHERE key = v_s;
            IF FOUND AND r.pending + r.running = 0 AND (r.forgetting OR r.changed_at <= c.now - p_idle) THEN
                -- Forgetting a session may take several calls: it is marked so that the next
                -- call goes on even though this one changed it.
                v_n := 0;
                FOR v_id IN SELECT id FROM tasks WHERE session_key = v_s ORDER BY seq LIMIT v_budget LOOP
                    v_removed := v_removed || drop_task(c, v_s, v_id, 'expired');
                    v_n := v_n + 1;
                END LOOP;
                IF v_n > 0 THEN
                    UPDATE sessions SET forgetting = true WHERE key = v_s;
                    v_held := v_held + v_n;
                    v_budget := v_budget - v_n;
                END IF;
                IF NOT EXISTS (SELECT 1 FROM tasks WHERE session_key = v_s) THEN
                    v_forgotten := v_forgotten + 1;
                    DELETE FROM buckets WHERE name = v_s;
                    PERFORM publish_ended(v_s, 'expired');
                END IF;
            END IF;
        END IF;
        IF v_budget > 0 THEN
            v_budget := v_budget - prune_keys(c, v_s, least(v_budget, 200));
        END IF;
        PERFORM forget_session_if_empty(c, v_s);
    END LOOP;
    RETURN '[' || v_finished || ',' || v_forgotten || ',' || v_held || ',' || v_budget || ','
        || '[' || coalesce(array_to_string(v_cancelled, ','), '') || '],' || removed_json(v_removed) || ']';
END $$;
