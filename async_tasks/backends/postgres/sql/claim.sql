-- A worker starts the attempt it was dispatched: pending (on the previous attempt, still
-- dispatched as this job) -> running, owned by the worker.
CREATE FUNCTION op_claim(p_now bigint, p_conf text, p_want boolean, p_op text, p_s text, p_id text,
    p_attempt integer, p_worker text, p_job text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    c ctx := ctx(p_now, p_conf, p_want, p_op);
    m moved;
BEGIN
    PERFORM lock_all();
    IF replayed_op(c, p_id) THEN
        RETURN done(p_id);
    END IF;
    m := move(c, p_s, p_id, 'running', p_expect => ARRAY['pending'], p_attempt => p_attempt - 1,
        p_runner => p_worker, p_claim => p_job, p_reason => 'started');
    IF m.kind <> 'ok' THEN
        RETURN miss(m);
    END IF;
    RETURN done(p_id, m.removed);
END $$;
