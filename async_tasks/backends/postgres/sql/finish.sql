-- The end of a running attempt, as its worker (or the reconciler, for a lost worker)
-- reports it, in one transaction: 'completed' (with the result), 'failed' (final), 'retry'
-- (failed, then pending again and delayed by the backoff: never seen as failed by
-- retention or expiry) or 'handback' (the worker shut down: pending again at once, the
-- retry budget untouched). The slot it held goes to the next waiting task.
CREATE FUNCTION op_finish(p_now bigint, p_conf text, p_want boolean, p_op text, p_s text, p_id text,
    p_attempt integer, p_owner text, p_outcome text, p_result json, p_error text, p_reason text,
    p_dead_letter boolean, p_retry_delay_ms bigint, p_retry_reason text, p_percent double precision,
    p_step text, p_description text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    c ctx := ctx(p_now, p_conf, p_want, p_op);
    m moved;
BEGIN
    PERFORM lock_all();
    IF replayed_op(c, p_id) THEN
        RETURN done(p_id);
    END IF;
    m := move(c, p_s, p_id, CASE WHEN p_outcome = 'completed' THEN 'completed' ELSE 'failed' END,
        p_expect => ARRAY['running'], p_attempt => p_attempt, p_owner => p_owner, p_result => p_result,
        p_error => p_error, p_reason => p_reason, p_dead_letter => p_dead_letter, p_percent => p_percent,
        p_step => p_step, p_description => p_description);
    IF m.kind <> 'ok' THEN
        RETURN miss(m);
    END IF;
    IF p_outcome IN ('retry', 'handback') THEN
        PERFORM move(c, p_s, p_id, 'pending', p_reason => p_retry_reason, p_automatic => p_outcome = 'retry',
            p_keep_auto => p_outcome = 'handback');
        PERFORM deliver(c, p_s, p_id, c.now + coalesce(p_retry_delay_ms, 0));
    END IF;
    PERFORM pump(c, 8);
    RETURN done(p_id, m.removed);
END $$;
