-- Start a pending task: hand it to delivery (now, or at `p_due`). Safe to ask again: a task
-- dispatched to a worker stays there (unless that worker's lease has expired: then it is
-- delivered afresh); one still waiting for its turn or its time is delivered afresh when
-- asked for another time (a delayed start moved, started early, or delayed).
CREATE FUNCTION op_start(p_now bigint, p_conf text, p_want boolean, p_op text, p_s text, p_id text, p_due bigint)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    c ctx := ctx(p_now, p_conf, p_want, p_op);
    t tasks;
BEGIN
    PERFORM lock_all();
    IF replayed_op(c, p_id) THEN
        RETURN done(p_id);
    END IF;
    SELECT * INTO t FROM tasks WHERE id = p_id;
    IF NOT FOUND OR t.session_key <> p_s THEN
        RETURN '["notfound"]';
    END IF;
    IF t.status <> 'pending' THEN
        RETURN json_build_array('refused', t.status)::text;
    END IF;
    IF p_due IS NOT NULL AND p_due <= c.now THEN
        p_due := NULL;
    END IF;
    IF (t.delivery = 'q' AND NOT EXISTS (SELECT 1 FROM workers WHERE id = t.job_worker AND lease_until > c.now))
        OR (t.delivery = 'p' AND p_due IS NOT NULL)
        OR (t.delivery = 'd' AND p_due IS DISTINCT FROM t.scheduled_at) THEN
        PERFORM undeliver(c, p_s, p_id);
    END IF;
    PERFORM deliver(c, p_s, p_id, p_due);
    UPDATE tasks SET ops = remember_op(c, ops) WHERE id = p_id;
    PERFORM pump(c, 8);
    RETURN done(p_id);
END $$;
