-- Deliver the delayed tasks whose time has come (retries after their backoff, delayed
-- starts), at most `p_most`; safe to run from several workers at once.
-- Answers [how many, the next due time in ms (null when none)].
CREATE FUNCTION op_promote(p_now bigint, p_conf text, p_most integer) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    c ctx := ctx(p_now, p_conf, false, NULL);
    t tasks;
    v_n integer := 0;
BEGIN
    PERFORM lock_all();
    FOR t IN SELECT * FROM tasks WHERE delivery = 'd' AND due_at <= c.now ORDER BY due_at LIMIT p_most LOOP
        UPDATE tasks SET delivery = '', due_at = NULL WHERE id = t.id;
        IF t.status = 'pending' THEN
            PERFORM deliver(c, t.session_key, t.id);
        END IF;
        v_n := v_n + 1;
    END LOOP;
    PERFORM pump(c, 1000);
    RETURN json_build_array(v_n, (SELECT min(due_at) FROM tasks WHERE delivery = 'd'))::text;
END $$;
