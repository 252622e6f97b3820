-- Forget a task that is not running. A removal sent again after its reply was lost finds
-- the operation's answer (kept a minute) and answers as the first run did.
-- Answers ["ok", task], ["notfound"] or ["refused", "running"].
CREATE FUNCTION op_remove(p_now bigint, p_conf text, p_want boolean, p_op text, p_s text, p_id text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    c ctx := ctx(p_now, p_conf, p_want, p_op);
    t tasks;
    v_json text;
BEGIN
    PERFORM lock_all();
    IF c.op IS NOT NULL THEN
        SELECT task INTO v_json FROM removals WHERE op = c.op;
        IF FOUND THEN
            RETURN '["ok",' || v_json || ']';
        END IF;
    END IF;
    SELECT * INTO t FROM tasks WHERE id = p_id;
    IF NOT FOUND OR t.session_key <> p_s THEN
        RETURN '["notfound"]';
    END IF;
    IF t.status = 'running' THEN
        RETURN '["refused","running"]';
    END IF;
    v_json := forget(c, p_s, p_id, true);
    PERFORM forget_session_if_empty(c, p_s);
    IF c.op IS NOT NULL THEN
        DELETE FROM removals WHERE at < c.now - 60000;
        INSERT INTO removals (op, task, at) VALUES (c.op, v_json::json, c.now);
    END IF;
    RETURN '["ok",' || v_json || ']';
END $$;
