-- The end of a running attempt, as its worker (or the reconciler, for a lost worker)
-- reports it, in one transaction: 'completed' (with the result), 'failed' (final), 'retry'
-- (failed, then pending again and delayed by the backoff: never seen as failed by
-- retention or expiry) or 'handback' (the worker shut down: pending again at once, the
-- retry budget untouched). The slot it held goes to the next waiting task. The attempt's
-- last log lines (`p_lines`, after `p_skipped` its worker dropped) are added first; a
-- completed attempt's run time is kept for estimates (the newest `p_keep` of its executor).
CREATE FUNCTION op_finish(p_now bigint, p_conf text, p_want boolean, p_op text, p_s text, p_id text,
    p_attempt integer, p_owner text, p_outcome text, p_result json, p_error text, p_reason text,
    p_dead_letter boolean, p_retry_delay_ms bigint, p_retry_reason text, p_percent double precision,
    p_step text, p_description text, p_keep integer, p_skipped integer, p_lines json) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    c ctx := ctx(p_now, p_conf, p_want, p_op);
    m moved;
    t tasks;
BEGIN
    PERFORM lock_all();
    IF replayed_op(c, p_id) THEN
        RETURN done(p_id);
    END IF;
    IF coalesce(p_skipped, 0) > 0 OR json_array_length(coalesce(p_lines, '[]')) > 0 THEN
        -- The attempt's last lines come before its end (only if `move` will accept it).
        SELECT * INTO t FROM tasks WHERE id = p_id;
        IF FOUND AND t.session_key = p_s AND t.status = 'running' AND t.attempts = p_attempt
            AND (p_owner IS NULL OR t.runner IS NOT DISTINCT FROM p_owner) THEN
            PERFORM add_logs(c, p_s, p_id, p_skipped, p_lines);
        END IF;
    END IF;
    m := move(c, p_s, p_id, CASE WHEN p_outcome = 'completed' THEN 'completed' ELSE 'failed' END,
        p_expect => ARRAY['running'], p_attempt => p_attempt, p_owner => p_owner, p_result => p_result,
        p_error => p_error, p_reason => p_reason, p_dead_letter => p_dead_letter, p_percent => p_percent,
        p_step => p_step, p_description => p_description);
    IF m.kind <> 'ok' THEN
        RETURN miss(m);
    END IF;
    IF p_outcome = 'completed' AND coalesce(p_keep, 0) > 0 THEN
        SELECT * INTO t FROM tasks WHERE id = p_id;
        PERFORM record_duration(t.executor, t.completed_at - coalesce(t.started_at, t.completed_at), p_keep);
    END IF;
    IF p_outcome IN ('retry', 'handback') THEN
        PERFORM move(c, p_s, p_id, 'pending', p_reason => p_retry_reason, p_automatic => p_outcome = 'retry',
            p_keep_auto => p_outcome = 'handback');
        PERFORM deliver(c, p_s, p_id, c.now + coalesce(p_retry_delay_ms, 0));
    END IF;
    PERFORM pump(c, 8);
    RETURN done(p_id, m.removed);
END $$;
