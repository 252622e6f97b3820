-- Workers: their leases, the pool of slots, what was dispatched to them.

-- A worker announces itself and keeps its lease (`lease_until`, `p_lease` ms from now): the
-- first time, and again after the reconciler forgot it, its slots join the pool and take
-- waiting tasks of the executors it runs (its description's `executors`) at once. A worker
-- that is leaving (`p_retiring`) keeps its lease while its
-- last attempts finish, retired from the pool: nothing more is dispatched to it.
-- Answers 1 when it (re)joined the pool, else 0.
CREATE FUNCTION op_worker(p_now bigint, p_conf text, p_worker text, p_queue text, p_slots integer,
    p_lease bigint, p_description json, p_retiring boolean) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    c ctx := ctx(p_now, p_conf, false, NULL);
    v_joined boolean;
BEGIN
    PERFORM lock_all();
    INSERT INTO workers (id, queue, executors, slots, started_at, renewed_at, lease_until, description, retired)
    VALUES (p_worker, p_queue, ARRAY(SELECT json_array_elements_text(coalesce(p_description -> 'executors', '[]'))),
        p_slots, c.now, c.now, c.now + p_lease, p_description, p_retiring)
    ON CONFLICT (id) DO UPDATE SET renewed_at = c.now, lease_until = c.now + p_lease, description = p_description,
        retired = workers.retired OR p_retiring, suspected_at = NULL
    RETURNING (xmax = 0) INTO v_joined;
    IF p_retiring THEN
        RETURN 0;
    END IF;
    PERFORM pump(c, CASE WHEN v_joined THEN 1000 ELSE 64 END);
    RETURN v_joined::integer;
END $$;

-- Dispatch nothing more to a worker (a lost or leaving one, before its tasks go elsewhere).
CREATE FUNCTION op_retire(p_worker text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM lock_all();
    UPDATE workers SET retired = true WHERE id = p_worker;
END $$;

-- Deliver afresh a task dispatched as job `p_job` that never started (its worker is gone,
-- or the job was lost): a no-op once the task has moved on. Answers 1 when delivered again.
CREATE FUNCTION op_redeliver(p_now bigint, p_conf text, p_s text, p_id text, p_job text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    c ctx := ctx(p_now, p_conf, false, NULL);
BEGIN
    PERFORM lock_all();
    IF NOT EXISTS (SELECT 1 FROM tasks WHERE id = p_id AND session_key = p_s AND status = 'pending'
        AND delivery = 'q' AND job_key = p_job) THEN
        RETURN 0;
    END IF;
    PERFORM undeliver(c, p_s, p_id);
    PERFORM deliver(c, p_s, p_id);
    PERFORM pump(c, 8);
    RETURN 1;
END $$;

-- Forget a worker whose lease has expired (or that is leaving, `p_force`): its jobs, its
-- SAQ stats and its slots. Refused while tasks are still dispatched to it (the reconciler
-- delivers those afresh or ends them first) or, without `p_force`, while its lease lives.
-- Answers 1 (forgotten), 0 (alive) or -1 (tasks left).
CREATE FUNCTION op_forget_worker(p_now bigint, p_worker text, p_force boolean) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint := coalesce(p_now, db_now());
    w workers;
BEGIN
    PERFORM lock_all();
    SELECT * INTO w FROM workers WHERE id = p_worker;
    IF NOT FOUND THEN
        RETURN 1;
    END IF;
    IF NOT p_force AND w.lease_until > v_now THEN
        RETURN 0;
    END IF;
    IF EXISTS (SELECT 1 FROM tasks WHERE job_worker = p_worker AND delivery = 'q') THEN
        RETURN -1;
    END IF;
    DELETE FROM saq_jobs WHERE queue = w.queue;
    DELETE FROM saq_stats WHERE worker_id = p_worker;
    DELETE FROM workers WHERE id = p_worker;
    RETURN 1;
END $$;

-- The workers without a lease for half a lease or more, besides `p_me` (a worker is first a
-- suspect, remembered here, so whichever worker reconciles next goes on from there; a
-- renewed lease clears it).
CREATE FUNCTION op_lost_workers(p_now bigint, p_me text, p_lease bigint) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint := coalesce(p_now, db_now());
BEGIN
    UPDATE workers SET suspected_at = v_now WHERE id <> p_me AND lease_until <= v_now AND suspected_at IS NULL;
    RETURN ARRAY(SELECT id FROM workers WHERE id <> p_me AND lease_until <= v_now
        AND suspected_at <= v_now - p_lease / 2 ORDER BY id);
END $$;

-- Take (or keep) the lease `p_name` for `p_ms` ms: true when `p_holder` holds it now.
CREATE FUNCTION op_take_lock(p_now bigint, p_name text, p_holder text, p_ms bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_now bigint := coalesce(p_now, db_now());
BEGIN
    INSERT INTO locks (name, holder, until) VALUES (p_name, p_holder, v_now + p_ms)
    ON CONFLICT (name) DO UPDATE SET holder = p_holder, until = v_now + p_ms
        WHERE locks.until <= v_now OR locks.holder = p_holder;
    RETURN FOUND;
END $$;
