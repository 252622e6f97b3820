-- A progress report of a running attempt (refused once the task is no longer running that
-- attempt). Safe to run twice: it sets values. Reports share the deployment's lock among
-- themselves. Answers '0' (refused), '1', or the task's JSON when `p_return`.
CREATE FUNCTION op_progress(p_now bigint, p_s text, p_id text, p_attempt integer, p_percent double precision,
    p_step text, p_description text, p_return boolean) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    t tasks;
BEGIN
    PERFORM lock_all(true);
    UPDATE tasks SET progress = p_percent, updated_at = coalesce(p_now, db_now()),
        current_step = CASE WHEN p_step IS NOT NULL THEN p_step ELSE current_step END,
        current_step_description = CASE WHEN p_step IS NOT NULL THEN p_description
            ELSE coalesce(p_description, current_step_description) END
        WHERE id = p_id AND session_key = p_s AND status = 'running' AND attempts = p_attempt
        RETURNING * INTO t;
    IF NOT FOUND THEN
        RETURN '0';
    END IF;
    PERFORM publish(t, 'progress', NULL);
    IF p_return THEN
        RETURN task_json(t, true);
    END IF;
    RETURN '1';
END $$;
