-- Schema version 1: the tables of one deployment (all in its own schema, POSTGRES_SCHEMA).
-- Times are epoch milliseconds of the database's clock (a test clock passes its own).
-- Columns without a comment are the task's fields as the HTTP contract names them.

-- One sequence orders everything: creation, finishing, lines, job keys and the push
-- streams' events (a stream's snapshot says which number it reflects).
CREATE SEQUENCE seq;

CREATE TABLE tasks (
    id text PRIMARY KEY,
    session_key text NOT NULL,
    seq bigint NOT NULL,                    -- creation order (newest first in lists)
    status text NOT NULL CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    executor text NOT NULL,
    name text NOT NULL,
    description text NOT NULL DEFAULT '',
    params json,
    metadata json NOT NULL DEFAULT '{}',
    tags text[] NOT NULL DEFAULT '{}',
    priority integer NOT NULL DEFAULT 0,
    timeout_ms integer,
    max_retries integer NOT NULL DEFAULT 0,
    request_id text,
    progress double precision NOT NULL DEFAULT 0,
    current_step text,
    current_step_description text,
    result json,
    error text,
    attempts integer NOT NULL DEFAULT 0,
    auto_retries integer NOT NULL DEFAULT 0,
    dead_lettered boolean NOT NULL DEFAULT false,
    created_at bigint NOT NULL,
    updated_at bigint NOT NULL,
    started_at bigint,
    completed_at bigint,
    scheduled_at bigint,
    fresh boolean NOT NULL DEFAULT true,    -- pending since its creation, never started
    lifetime_from bigint NOT NULL,          -- when its lifetime as a never-started task began (a delayed
                                            -- start's time, else its creation or its start asked for)
    finished_seq bigint,                    -- when it entered its finished status (retention)
    runner text,                            -- the worker running its attempt
    delivery text NOT NULL DEFAULT '' CHECK (delivery IN ('', 'p', 'd', 'q')),
                                            -- p parked in its session's line, d delayed, q dispatched
    line_order bigint,                      -- its place in the line: priority first, then first come
    due_at bigint,                          -- delayed until
    job_worker text,                        -- dispatched to this worker, as SAQ job `job_key`
    job_key text,
    history_next integer NOT NULL DEFAULT 1,
    history_len integer NOT NULL DEFAULT 0,
    logs_dropped integer NOT NULL DEFAULT 0,  -- its oldest log lines dropped to stay within the bounds
    log_lines integer NOT NULL DEFAULT 0,     -- log lines kept
    log_bytes integer NOT NULL DEFAULT 0,     -- their size, as JSON
    ops text[] NOT NULL DEFAULT '{}'        -- the last writes' operation ids (a re-sent write answers "done")
);
CREATE INDEX tasks_session ON tasks (session_key, seq);
CREATE INDEX tasks_session_status ON tasks (session_key, status, seq);
CREATE INDEX tasks_session_executor ON tasks (session_key, executor, seq);
CREATE INDEX tasks_finished ON tasks (session_key, status, finished_seq) WHERE finished_seq IS NOT NULL;
CREATE INDEX tasks_fresh ON tasks (session_key, lifetime_from) WHERE fresh;
CREATE INDEX tasks_line ON tasks (session_key, line_order) WHERE delivery = 'p';
CREATE INDEX tasks_delayed ON tasks (due_at) WHERE delivery = 'd';
CREATE INDEX tasks_dispatched ON tasks (job_worker) WHERE delivery = 'q';

CREATE TABLE task_history (
    task_id text NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    n integer NOT NULL,
    at bigint NOT NULL,
    status text NOT NULL,
    previous text,
    attempt integer NOT NULL,
    reason text,
    error text,
    omitted integer NOT NULL DEFAULT 0,     -- transitions this entry stands for (a capped history)
    PRIMARY KEY (task_id, n)
);

-- The lines a task's executor wrote (within TASK_LOG_LINES and TASK_LOG_BYTES: the oldest go).
CREATE TABLE task_logs (
    task_id text NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    n integer NOT NULL,                     -- its number in the task's log (dropped lines count)
    at bigint NOT NULL,
    message text NOT NULL,
    data json,                              -- structured partial results, if any
    size integer NOT NULL,                  -- its JSON's bytes (what the bound counts)
    PRIMARY KEY (task_id, n)
);

-- The run times (ms) of each executor's last completed attempts, newest first (estimates).
CREATE TABLE durations (
    executor text PRIMARY KEY,
    runs bigint[] NOT NULL
);

-- A session holding tasks: its counts (kept as tasks change), where it is in the line of
-- sessions waiting for a slot, and when it last changed (idle expiry).
CREATE TABLE sessions (
    key text PRIMARY KEY,
    pending integer NOT NULL DEFAULT 0,
    running integer NOT NULL DEFAULT 0,
    completed integer NOT NULL DEFAULT 0,
    failed integer NOT NULL DEFAULT 0,
    cancelled integer NOT NULL DEFAULT 0,
    dispatched integer NOT NULL DEFAULT 0,  -- tasks dispatched to a worker (queued there or running)
    duration_ms bigint NOT NULL DEFAULT 0,  -- summed run time of its completed tasks
    changed_at bigint NOT NULL,
    waiting_since bigint,                   -- in the line of sessions since (null: nothing parked)
    forgetting boolean NOT NULL DEFAULT false
);
CREATE INDEX sessions_line ON sessions (dispatched, waiting_since) WHERE waiting_since IS NOT NULL;
CREATE INDEX sessions_changed ON sessions (changed_at);

-- Every session's counts together (one row).
CREATE TABLE totals (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    pending bigint NOT NULL DEFAULT 0,
    running bigint NOT NULL DEFAULT 0,
    completed bigint NOT NULL DEFAULT 0,
    failed bigint NOT NULL DEFAULT 0,
    cancelled bigint NOT NULL DEFAULT 0,
    parked bigint NOT NULL DEFAULT 0,
    dispatched bigint NOT NULL DEFAULT 0,
    sessions bigint NOT NULL DEFAULT 0
);
INSERT INTO totals DEFAULT VALUES;

-- Idempotency-Keys: they outlive their tasks for IDEMPOTENCY_KEY_TTL_MS.
CREATE TABLE idempotency_keys (
    session_key text NOT NULL,
    key text NOT NULL,
    task_id text NOT NULL,
    fingerprint text NOT NULL,
    used_at bigint NOT NULL,
    PRIMARY KEY (session_key, key)
);
CREATE INDEX idempotency_keys_used ON idempotency_keys (session_key, used_at);
CREATE INDEX idempotency_keys_age ON idempotency_keys (used_at);

-- Workers: their slots, their lease, whether anything more is dispatched to them.
CREATE TABLE workers (
    id text PRIMARY KEY,
    queue text NOT NULL,                    -- the name of its own SAQ queue
    executors text[] NOT NULL DEFAULT '{}', -- the executors it runs: it is given tasks of these only
    slots integer NOT NULL,
    busy integer NOT NULL DEFAULT 0,        -- tasks dispatched to it
    started_at bigint NOT NULL,
    renewed_at bigint NOT NULL,
    lease_until bigint NOT NULL,
    description json NOT NULL DEFAULT '{}',
    retired boolean NOT NULL DEFAULT false, -- leaving, or lost: nothing more is dispatched to it
    suspected_at bigint                     -- when the reconciler first found its lease gone
);

-- Token buckets (create rates), shared by every API process. Unlogged: after a crash they
-- start full again, as a bucket nobody used for a while.
CREATE UNLOGGED TABLE buckets (
    name text PRIMARY KEY,
    tokens double precision NOT NULL,
    at double precision NOT NULL,           -- seconds
    op text,
    answer text,
    full_at bigint NOT NULL                 -- when it is full again (then it may go)
);

-- A removal's answer, kept a minute: a removal re-sent after its reply was lost answers with it.
CREATE TABLE removals (
    op text PRIMARY KEY,
    task json NOT NULL,
    at bigint NOT NULL
);

-- Leases of one-at-a-time duties (the reconciler).
CREATE TABLE locks (
    name text PRIMARY KEY,
    holder text NOT NULL,
    until bigint NOT NULL
);
