-- A status change asked for by a person or by the store's own rules: cancel, retry by hand,
-- expiry. A running task that is cancelled is told to stop (NOTIFY on `<schema>_stop`,
-- '<task id>:<attempt>') in the same transaction; a task entering pending with `p_deliver`
-- is handed to delivery.
CREATE FUNCTION op_transition(p_now bigint, p_conf text, p_want boolean, p_op text, p_s text, p_id text,
    p_target text, p_expect text[], p_attempt integer, p_reason text, p_error text, p_result json,
    p_automatic boolean, p_dead_letter boolean, p_deliver boolean, p_due bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    c ctx := ctx(p_now, p_conf, p_want, p_op);
    m moved;
BEGIN
    PERFORM lock_all();
    IF replayed_op(c, p_id) THEN
        RETURN done(p_id);
    END IF;
    m := move(c, p_s, p_id, p_target, p_expect => p_expect, p_attempt => p_attempt, p_reason => p_reason,
        p_error => p_error, p_result => p_result, p_automatic => p_automatic, p_dead_letter => p_dead_letter);
    IF m.kind <> 'ok' THEN
        RETURN miss(m);
    END IF;
    IF m.source = 'running' AND p_target = 'cancelled' THEN
        PERFORM pg_notify(current_schema() || '_stop', p_id || ':' || (SELECT attempts FROM tasks WHERE id = p_id));
    END IF;
    IF p_target = 'pending' AND p_deliver THEN
        PERFORM deliver(c, p_s, p_id, p_due);
    END IF;
    PERFORM pump(c, 8);
    RETURN done(p_id, m.removed);
END $$;
