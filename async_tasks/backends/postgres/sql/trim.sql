-- Retention: remove the oldest-finished tasks beyond the limits, in the given sessions, at
-- most `p_budget` tasks per call (a call holds the deployment's lock while it runs).
-- Answers [completed, failed, cancelled, budget left, [[cause, task], ...]].
CREATE FUNCTION op_trim(p_now bigint, p_conf text, p_want boolean, p_op text, p_completed integer,
    p_failed integer, p_cancelled integer, p_budget integer, p_sessions text[]) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    c ctx := ctx(p_now, p_conf, p_want, p_op);
    v_budget integer := p_budget;
    v_removed text[] := ARRAY[]::text[];
    v_counts integer[] := ARRAY[0, 0, 0];
    v_statuses text[] := ARRAY['completed', 'failed', 'cancelled'];
    v_limits integer[] := ARRAY[p_completed, p_failed, p_cancelled];
    v_s text;
    v_i integer;
    v_excess integer;
    v_id text;
BEGIN
    PERFORM lock_all();
    FOREACH v_s IN ARRAY p_sessions LOOP
        FOR v_i IN 1..3 LOOP
            SELECT CASE v_statuses[v_i] WHEN 'completed' THEN completed WHEN 'failed' THEN failed ELSE cancelled END
                - v_limits[v_i] INTO v_excess FROM sessions WHERE key = v_s;
            IF v_excess > 0 AND v_budget > 0 THEN
                FOR v_id IN SELECT id FROM tasks WHERE session_key = v_s AND status = v_statuses[v_i]
                    AND finished_seq IS NOT NULL ORDER BY finished_seq LIMIT least(v_excess, v_budget) LOOP
                    v_removed := v_removed || drop_task(c, v_s, v_id, 'retention');
                    v_counts[v_i] := v_counts[v_i] + 1;
                    v_budget := v_budget - 1;
                END LOOP;
            END IF;
        END LOOP;
        PERFORM forget_session_if_empty(c, v_s);
    END LOOP;
    RETURN '[' || v_counts[1] || ',' || v_counts[2] || ',' || v_counts[3] || ',' || v_budget || ','
        || removed_json(v_removed) || ']';
END $$;
