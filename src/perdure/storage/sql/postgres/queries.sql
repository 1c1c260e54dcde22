-- perdure queries for PostgreSQL. Each `-- name:` block is one statement, loaded by name; the
-- SQLite file defines exactly the same names (a test checks it). Parameters are psycopg's
-- %(name)s; list parameters arrive as arrays and are matched with = ANY(...). Every statement
-- runs at READ COMMITTED: a conditional UPDATE that waited on a concurrent writer re-checks its
-- WHERE clause on the newest row version, so the status/lease fences below hold under races.

-- name: insert_run
-- A concurrent insert of the same idempotency key waits for the first to commit, then does
-- nothing and returns no row; store.py then reads the winner.
INSERT INTO perdure_runs (
    id, task_id, queue, status, priority, input, attempt, max_attempts, timeout, version,
    available_at, expires_at, idempotency_key, idempotency_expires_at, concurrency_key,
    tags, metadata, parent_id, root_id, event_seq, created_at, updated_at
) VALUES (
    %(id)s, %(task_id)s, %(queue)s, %(status)s, %(priority)s, %(input)s, 0, %(max_attempts)s,
    %(timeout)s, %(version)s, %(available_at)s, %(expires_at)s, %(idempotency_key)s,
    %(idempotency_expires_at)s, %(concurrency_key)s, %(tags)s, %(metadata)s, %(parent_id)s,
    %(root_id)s, 1, %(now)s, %(now)s
)
ON CONFLICT DO NOTHING
RETURNING id;

-- name: insert_event
INSERT INTO perdure_events (run_id, seq, type, at, data)
VALUES (%(run_id)s, %(seq)s, %(type)s, %(at)s, %(data)s);

-- name: find_idempotent_run
SELECT * FROM perdure_runs
WHERE task_id = %(task_id)s AND idempotency_key = %(idempotency_key)s;

-- name: release_idempotency_key
-- An expired key no longer dedupes: free it so a new run can take it.
UPDATE perdure_runs SET idempotency_key = NULL, idempotency_expires_at = NULL
WHERE task_id = %(task_id)s AND idempotency_key = %(idempotency_key)s
  AND idempotency_expires_at <= %(now)s;

-- name: claim_runs
-- SKIP LOCKED: concurrent claimers lock disjoint rows and never wait on each other. The CTE is
-- MATERIALIZED so its LIMIT is evaluated once; store.py still checks the row count.
WITH due AS MATERIALIZED (
    SELECT id FROM perdure_runs
    WHERE available_at IS NOT NULL
      AND available_at <= %(now)s
      AND queue = ANY(%(queues)s::text[])
      AND task_id = ANY(%(task_ids)s::text[])
      AND (expires_at IS NULL OR expires_at > %(now)s OR started_at IS NOT NULL)
      AND status = ANY(%(from_statuses)s::text[])
    ORDER BY priority DESC, available_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE perdure_runs AS r
SET status = 'running',
    attempt = r.attempt + 1,
    lease_owner = %(worker_id)s,
    lease_expires_at = %(now)s + %(lease)s,
    available_at = NULL,
    started_at = COALESCE(r.started_at, %(now)s),
    updated_at = %(now)s,
    event_seq = r.event_seq + 1
FROM due
WHERE r.id = due.id
RETURNING r.*;

-- name: extend_leases
-- Locks the rows in id order, so two multi-row writers locking in id order cannot deadlock.
WITH wanted AS (
    SELECT substring(k FROM '^(.*):') AS id, substring(k FROM ':([0-9]+)$')::integer AS attempt
    FROM unnest(%(attempts)s::text[]) AS k
), owned AS MATERIALIZED (
    SELECT r.id FROM perdure_runs AS r
    JOIN wanted AS w ON r.id = w.id AND r.attempt = w.attempt
    WHERE r.lease_owner = %(worker_id)s AND r.status = 'running'
    ORDER BY r.id
    FOR NO KEY UPDATE OF r
)
UPDATE perdure_runs AS r
SET lease_expires_at = %(now)s + %(lease)s
FROM owned
WHERE r.id = owned.id
RETURNING r.id;

-- name: owned_runs
SELECT r.id FROM perdure_runs AS r
JOIN (
    SELECT substring(k FROM '^(.*):') AS id, substring(k FROM ':([0-9]+)$')::integer AS attempt
    FROM unnest(%(attempts)s::text[]) AS k
) AS w ON r.id = w.id AND r.attempt = w.attempt
WHERE r.lease_owner = %(worker_id)s AND r.status = 'running';

-- name: finish_attempt
-- Fenced on (id, attempt, lease owner, status): a stale worker's late write matches no row.
UPDATE perdure_runs
SET status = %(status)s,
    output = %(output)s,
    error = %(error)s,
    lease_owner = NULL,
    lease_expires_at = NULL,
    available_at = %(available_at)s,
    finished_at = %(finished_at)s,
    updated_at = %(now)s,
    event_seq = event_seq + %(n_events)s
WHERE id = %(id)s AND attempt = %(attempt)s AND lease_owner = %(worker_id)s
  AND status = ANY(%(from_statuses)s::text[])
RETURNING event_seq;

-- name: cancel_run
UPDATE perdure_runs
SET status = 'cancelled',
    error = %(error)s,
    lease_owner = NULL,
    lease_expires_at = NULL,
    available_at = NULL,
    finished_at = %(now)s,
    updated_at = %(now)s,
    event_seq = event_seq + 1
WHERE id = %(id)s AND status = ANY(%(from_statuses)s::text[])
RETURNING *;

-- name: select_expired_leases
-- SKIP LOCKED: concurrent sweepers split the expired runs instead of queueing on them; the
-- lock holds until commit, so a heartbeat cannot slip in between this and recover_lease.
SELECT id, attempt, lease_owner, lost_leases FROM perdure_runs
WHERE lease_expires_at IS NOT NULL AND lease_expires_at < %(now)s AND status = 'running'
ORDER BY lease_expires_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: recover_lease
-- Fenced like finish_attempt: a heartbeat that landed after the SELECT keeps the run.
UPDATE perdure_runs
SET status = %(status)s,
    error = COALESCE(%(error)s, error),
    lost_leases = lost_leases + 1,
    lease_owner = NULL,
    lease_expires_at = NULL,
    available_at = %(available_at)s,
    finished_at = %(finished_at)s,
    updated_at = %(now)s,
    event_seq = event_seq + %(n_events)s
WHERE id = %(id)s AND attempt = %(attempt)s AND lease_owner = %(worker_id)s
  AND status = 'running' AND lease_expires_at < %(now)s
RETURNING event_seq;

-- name: select_expired_ttl
-- SKIP LOCKED: a run a worker is claiming right now is left to the claim (which re-checks TTL).
SELECT id FROM perdure_runs
WHERE expires_at IS NOT NULL AND expires_at <= %(now)s AND available_at IS NOT NULL
  AND started_at IS NULL
ORDER BY expires_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: expire_run
UPDATE perdure_runs
SET status = 'expired',
    error = %(error)s,
    available_at = NULL,
    finished_at = %(now)s,
    updated_at = %(now)s,
    event_seq = event_seq + 1
WHERE id = %(id)s AND started_at IS NULL
  AND status = ANY(%(from_statuses)s::text[])
RETURNING event_seq;

-- name: get_run
SELECT * FROM perdure_runs WHERE id = %(id)s;

-- name: get_runs
SELECT * FROM perdure_runs WHERE id = ANY(%(ids)s::text[]);

-- name: list_runs
SELECT * FROM perdure_runs
WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(task_id)s::text IS NULL OR task_id = %(task_id)s::text)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s::text)
  AND (%(parent_id)s::text IS NULL OR parent_id = %(parent_id)s::text)
  AND (%(cursor)s::text IS NULL OR id < %(cursor)s::text)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: get_events
SELECT run_id, seq, type, at, data FROM perdure_events
WHERE run_id = %(run_id)s AND seq > %(after_seq)s
ORDER BY seq
LIMIT %(limit)s;

-- name: upsert_task
INSERT INTO perdure_tasks (task_id, queue, max_attempts, timeout, version, input_schema,
                           output_schema, updated_at)
VALUES (%(task_id)s, %(queue)s, %(max_attempts)s, %(timeout)s, %(version)s, %(input_schema)s,
        %(output_schema)s, %(now)s)
ON CONFLICT (task_id) DO UPDATE SET
    queue = excluded.queue, max_attempts = excluded.max_attempts, timeout = excluded.timeout,
    version = excluded.version, input_schema = excluded.input_schema,
    output_schema = excluded.output_schema, updated_at = excluded.updated_at;

-- name: get_task
SELECT * FROM perdure_tasks WHERE task_id = %(task_id)s;

-- name: list_tasks
SELECT * FROM perdure_tasks ORDER BY task_id;

-- name: count_runs_by_status
SELECT status, COUNT(*)::integer AS n FROM perdure_runs GROUP BY status;

-- name: applied_migrations
SELECT version FROM perdure_migrations ORDER BY version;

-- name: record_migration
INSERT INTO perdure_migrations (version, name, applied_at)
VALUES (%(version)s, %(name)s, to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'));
