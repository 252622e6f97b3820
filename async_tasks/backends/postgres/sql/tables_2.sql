-- Schema version 2: clients (`async_tasks.clients`). A session belongs to the client that
-- created it (a keyed hash of an address; a session created without one is its own
-- client), and each task to its session's client. A client's budgets and its share of the
-- shared pools (MAX_TASKS_PER_CLIENT, MAX_SESSIONS_PER_CLIENT, MAX_TASKS, MAX_SESSIONS) count
-- what its sessions hold; a full pool makes room from the largest holder's oldest
-- never-started or finished tasks (`fresh`, `finished_seq`) and its least recently changed
-- sessions (`changed_at`).
--
-- A deployment made by version 1 knew no clients: each of its sessions becomes its own
-- client, holding its tasks.

-- What each client holds, kept as tasks are created and forgotten (a client holding
-- nothing has no row).
CREATE TABLE clients (
    key text PRIMARY KEY,
    sessions integer NOT NULL DEFAULT 0,    -- its sessions holding tasks
    tasks integer NOT NULL DEFAULT 0        -- the tasks they hold
);
CREATE INDEX clients_sessions ON clients (sessions);
CREATE INDEX clients_tasks ON clients (tasks);

ALTER TABLE sessions ADD COLUMN client text;
UPDATE sessions SET client = key;
ALTER TABLE sessions ALTER COLUMN client SET NOT NULL;
CREATE INDEX sessions_client ON sessions (client, changed_at);

ALTER TABLE tasks ADD COLUMN client text;       -- its session's client (a session's never changes)
UPDATE tasks SET client = session_key;
ALTER TABLE tasks ALTER COLUMN client SET NOT NULL;
CREATE INDEX tasks_client_fresh ON tasks (client, seq) WHERE fresh;
CREATE INDEX tasks_client_finished ON tasks (client, finished_seq) WHERE finished_seq IS NOT NULL;

INSERT INTO clients (key, sessions, tasks)
    SELECT s.client, count(DISTINCT s.key), count(t.id)
    FROM sessions s LEFT JOIN tasks t ON t.session_key = s.key GROUP BY s.client;
