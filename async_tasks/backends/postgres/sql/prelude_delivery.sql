-- The prelude, second part (see `prelude.sql`): the delivery of attempts. A task's place
-- (parked, delayed, dispatched), the line of sessions waiting for a slot, the workers'
-- free slots, and `pump`, which hands parked tasks to workers as the limits allow.

-- -- delivery ---------------------------------------------------------------------------

-- The session's place among those waiting for a slot: fewest dispatched first, then the one
-- that has waited longest; not there when nothing of it waits.
CREATE FUNCTION place_session(p_s text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM tasks WHERE session_key = p_s AND delivery = 'p') THEN
        UPDATE sessions SET waiting_since = nextval('seq') WHERE key = p_s AND waiting_since IS NULL;
    ELSE
        UPDATE sessions SET waiting_since = NULL WHERE key = p_s AND waiting_since IS NOT NULL;
    END IF;
END $$;

-- The live worker running `p_executor` with the most free slots, the longest-serving of
-- equals (NULL when none has a free slot).
CREATE FUNCTION pick_worker(c ctx, p_executor text) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT id FROM workers WHERE NOT retired AND lease_until > c.now AND slots > busy AND p_executor = ANY(executors)
    ORDER BY slots - busy DESC, started_at, id LIMIT 1
$$;

-- Hand task `p_id` of session `p_s` to worker `p_w`: a SAQ job in its queue, and a word to it.
CREATE FUNCTION dispatch(c ctx, p_s text, p_id text, p_w text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_n integer;
    v_queue text;
    v_key text;
BEGIN
    SELECT attempts + 1 INTO v_n FROM tasks WHERE id = p_id;
    SELECT queue INTO v_queue FROM workers WHERE id = p_w;
    v_key := p_id || ':' || v_n || ':' || nextval('seq');
    INSERT INTO saq_jobs (key, job, queue, status, priority, group_key, scheduled)
    VALUES (v_key, convert_to(json_build_object(
        'function', 'async_tasks.attempt', 'kwargs', json_build_object('s', p_s, 't', p_id, 'a', v_n, 'k', v_key),
        'queue', v_queue, 'key', v_key, 'timeout', 0, 'ttl', -1, 'queued', c.now, 'status', 'queued')::text, 'UTF8'),
        v_queue, 'queued', 0, NULL, 0);
    UPDATE tasks SET delivery = 'q', line_order = NULL, job_worker = p_w, job_key = v_key WHERE id = p_id;
    UPDATE sessions SET dispatched = dispatched + 1 WHERE key = p_s;
    UPDATE totals SET parked = parked - 1, dispatched = dispatched + 1;
    UPDATE workers SET busy = busy + 1 WHERE id = p_w;
    PERFORM place_session(p_s);
    PERFORM pg_notify('saq:' || v_queue, 'saq:enqueue');
END $$;

-- Dispatch parked tasks while the limits and the workers' slots allow (at most `p_budget`).
-- Routing: a task goes only to a worker that runs its executor. Each slot goes to the least
-- busy waiting session among those with a parked task that a worker with a free slot runs
-- (its first such task in its own order), and to the worker with the most free slots among
-- those that run it. A task whose executor no free worker runs holds up nothing: its
-- session's other tasks go past it.
CREATE FUNCTION pump(c ctx, p_budget integer) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_budget integer := p_budget;
    v_runnable text[];
    v_s text;
    v_busy integer;
    v_id text;
    v_executor text;
BEGIN
    WHILE v_budget > 0 LOOP
        v_budget := v_budget - 1;
        IF c.global_limit IS NOT NULL AND (SELECT dispatched FROM totals) >= c.global_limit THEN
            RETURN;
        END IF;
        v_runnable := ARRAY(SELECT DISTINCT e FROM workers, unnest(executors) AS e
            WHERE NOT retired AND lease_until > c.now AND slots > busy);
        IF cardinality(v_runnable) = 0 THEN
            RETURN;
        END IF;
        SELECT s.key, s.dispatched, t.id, t.executor INTO v_s, v_busy, v_id, v_executor FROM sessions s
        CROSS JOIN LATERAL (SELECT id, executor FROM tasks WHERE session_key = s.key AND delivery = 'p'
            AND executor = ANY(v_runnable) ORDER BY line_order LIMIT 1) t
        WHERE s.waiting_since IS NOT NULL ORDER BY s.dispatched, s.waiting_since LIMIT 1;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        -- The least busy waiting session: if it may not take a slot, none may.
        IF c.session_limit IS NOT NULL AND v_busy >= c.session_limit THEN
            RETURN;
        END IF;
        PERFORM dispatch(c, v_s, v_id, pick_worker(c, v_executor));
    END LOOP;
END $$;

-- Park a pending task in its session's line (higher priority first, then first parked
-- first), or delay it until `p_due` (ms) if that is later than now. False when it already
-- has a delivery.
CREATE FUNCTION deliver(c ctx, p_s text, p_id text, p_due bigint DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    t tasks;
BEGIN
    SELECT * INTO t FROM tasks WHERE id = p_id;
    IF t.delivery <> '' THEN
        RETURN false;
    END IF;
    IF p_due IS NOT NULL AND p_due > c.now THEN
        -- A task never started lives PENDING_TASK_TTL_MS from its delayed start.
        UPDATE tasks SET delivery = 'd', due_at = p_due, scheduled_at = p_due,
            lifetime_from = CASE WHEN fresh THEN greatest(lifetime_from, p_due) ELSE lifetime_from END
            WHERE id = p_id;
        -- The workers' timers wait for the earliest delayed task: tell them of a new earliest.
        IF NOT EXISTS (SELECT 1 FROM tasks WHERE delivery = 'd' AND due_at < p_due) THEN
            PERFORM pg_notify(current_schema() || '_due', p_due::text);
        END IF;
        RETURN true;
    END IF;
    UPDATE tasks SET delivery = 'p', scheduled_at = NULL, due_at = NULL,
        lifetime_from = CASE WHEN fresh THEN least(lifetime_from, c.now) ELSE lifetime_from END,
        line_order = -greatest(-4000, least(4000, t.priority))::bigint * 1099511627776
            + nextval('seq') % 1099511627776
        WHERE id = p_id;
    UPDATE totals SET parked = parked + 1;
    PERFORM place_session(p_s);
    RETURN true;
END $$;

-- Take the task out of wherever it waits or runs; true when that freed a dispatched slot.
CREATE FUNCTION undeliver(c ctx, p_s text, p_id text) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    t tasks;
BEGIN
    SELECT * INTO t FROM tasks WHERE id = p_id;
    IF NOT FOUND OR t.delivery = '' THEN
        RETURN false;
    END IF;
    UPDATE tasks SET delivery = '', job_worker = NULL, job_key = NULL, line_order = NULL, due_at = NULL,
        scheduled_at = NULL WHERE id = p_id;
    IF t.delivery = 'p' THEN
        UPDATE totals SET parked = parked - 1;
        PERFORM place_session(p_s);
        RETURN false;
    END IF;
    IF t.delivery = 'd' THEN
        RETURN false;
    END IF;
    -- A job still queued goes; one a worker has taken is its worker's to finish (its claim
    -- will be refused).
    DELETE FROM saq_jobs WHERE key = t.job_key AND status = 'queued';
    UPDATE workers SET busy = greatest(busy - 1, 0) WHERE id = t.job_worker;
    UPDATE sessions SET dispatched = dispatched - 1 WHERE key = p_s;
    UPDATE totals SET dispatched = dispatched - 1;
    PERFORM place_session(p_s);
    RETURN true;
END $$;
