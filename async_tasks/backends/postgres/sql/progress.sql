-- A progress report and log lines of a running attempt (refused once the task is no longer
-- running that attempt): what a worker's flush of one task writes, at most once a window.
-- Safe to run twice: it sets values, and a batch of lines carries an operation id (a batch
-- sent again finds it and adds nothing). Reports share the deployment's lock among
-- themselves. `p_percent` NULL: no report, lines only. Answers '0' (refused), '1', or the
-- task's JSON when `p_return`.
CREATE FUNCTION op_progress(p_now bigint, p_conf text, p_op text, p_s text, p_id text, p_attempt integer,
    p_percent double precision, p_step text, p_description text, p_return boolean, p_skipped integer,
    p_lines json) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    c ctx := ctx(p_now, p_conf, false, p_op);
    t tasks;
BEGIN
    PERFORM lock_all(true);
    SELECT * INTO t FROM tasks WHERE id = p_id AND session_key = p_s AND status = 'running' AND attempts = p_attempt
        FOR UPDATE;
    IF NOT FOUND THEN
        RETURN '0';
    END IF;
    IF replayed_op(c, p_id) THEN
        RETURN '1';
    END IF;
    IF p_percent IS NOT NULL THEN
        UPDATE tasks SET progress = p_percent, updated_at = c.now,
            current_step = CASE WHEN p_step IS NOT NULL THEN p_step ELSE current_step END,
            current_step_description = CASE WHEN p_step IS NOT NULL THEN p_description
                ELSE coalesce(p_description, current_step_description) END
            WHERE id = p_id RETURNING * INTO t;
        PERFORM publish(t, 'progress', NULL);
    END IF;
    IF coalesce(p_skipped, 0) > 0 OR json_array_length(coalesce(p_lines, '[]')) > 0 THEN
        PERFORM add_logs(c, p_s, p_id, p_skipped, p_lines);
        UPDATE tasks SET ops = remember_op(c, ops) WHERE id = p_id;
    END IF;
    IF p_return THEN
        RETURN (SELECT task_json(x, true) FROM tasks x WHERE x.id = p_id);
    END IF;
    RETURN '1';
END $$;
