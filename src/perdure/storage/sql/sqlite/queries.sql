-- perdure queries for SQLite. Each `-- name:` block is one statement, loaded by name; the
-- PostgreSQL file defines exactly the same names (a test checks it). List parameters arrive as
-- JSON arrays and are read with json_each.

-- name: insert_run
INSERT INTO perdure_runs (
    id, task_id, queue, status, priority, input, attempt, max_attempts, timeout, version,
    available_at, expires_at, idempotency_key, idempotency_expires_at, concurrency_key,
    tags, metadata, parent_id, root_id, event_seq, created_at, updated_at
) VALUES (
    :id, :task_id, :queue, :status, :priority, :input, 0, :max_attempts, :timeout, :version,
    :available_at, :expires_at, :idempotency_key, :idempotency_expires_at, :concurrency_key,
    :tags, :metadata, :parent_id, :root_id, 1, :now, :now
)
ON CONFLICT DO NOTHING
RETURNING id;

-- name: insert_event
INSERT INTO perdure_events (run_id, seq, type, at, data)
VALUES (:run_id, :seq, :type, :at, :data);

-- name: find_idempotent_run
SELECT * FROM perdure_runs WHERE task_id = :task_id AND idempotency_key = :idempotency_key;

-- name: release_idempotency_key
-- An expired key no longer dedupes: free it so a new run can take it.
UPDATE perdure_runs SET idempotency_key = NULL, idempotency_expires_at = NULL
WHERE task_id = :task_id AND idempotency_key = :idempotency_key
  AND idempotency_expires_at <= :now;

-- name: claim_runs
-- Inside BEGIN IMMEDIATE: no other writer can claim the same rows between SELECT and UPDATE.
UPDATE perdure_runs
SET status = 'running',
    attempt = attempt + 1,
    lease_owner = :worker_id,
    lease_expires_at = :now + :lease,
    available_at = NULL,
    started_at = COALESCE(started_at, :now),
    updated_at = :now,
    event_seq = event_seq + 1
WHERE id IN (
    SELECT id FROM perdure_runs
    WHERE available_at IS NOT NULL
      AND available_at <= :now
      AND queue IN (SELECT value FROM json_each(:queues))
      -- unary + keeps the planner on the claim index (not the per-task listing index)
      AND +task_id IN (SELECT value FROM json_each(:task_ids))
      AND (expires_at IS NULL OR expires_at > :now OR started_at IS NOT NULL)
    ORDER BY priority DESC, available_at, id
    LIMIT :limit
)
AND status IN (SELECT value FROM json_each(:from_statuses))
RETURNING *;

-- name: extend_leases
UPDATE perdure_runs
SET lease_expires_at = :now + :lease
WHERE lease_owner = :worker_id AND status = 'running'
  AND id || ':' || attempt IN (SELECT value FROM json_each(:attempts))
RETURNING id;

-- name: owned_runs
SELECT id FROM perdure_runs
WHERE lease_owner = :worker_id AND status = 'running'
  AND id || ':' || attempt IN (SELECT value FROM json_each(:attempts));

-- name: finish_attempt
-- Fenced on (id, attempt, lease owner, status): a stale worker's late write matches no row.
UPDATE perdure_runs
SET status = :status,
    output = :output,
    error = :error,
    lease_owner = NULL,
    lease_expires_at = NULL,
    available_at = :available_at,
    finished_at = :finished_at,
    updated_at = :now,
    failures = failures + :failed,
    event_seq = event_seq + :n_events
WHERE id = :id AND attempt = :attempt AND lease_owner = :worker_id
  AND status IN (SELECT value FROM json_each(:from_statuses))
RETURNING event_seq, parent_id;

-- name: cancel_run
UPDATE perdure_runs
SET status = 'cancelled',
    error = :error,
    lease_owner = NULL,
    lease_expires_at = NULL,
    available_at = NULL,
    finished_at = :now,
    updated_at = :now,
    event_seq = event_seq + 1
WHERE id = :id AND status IN (SELECT value FROM json_each(:from_statuses))
RETURNING *;

-- name: select_expired_leases
SELECT id, attempt, lease_owner, lost_leases FROM perdure_runs
WHERE lease_expires_at IS NOT NULL AND lease_expires_at < :now AND status = 'running'
ORDER BY lease_expires_at
LIMIT :limit;

-- name: recover_lease
-- Fenced like finish_attempt: a heartbeat that landed after the SELECT keeps the run.
UPDATE perdure_runs
SET status = :status,
    error = COALESCE(:error, error),
    lost_leases = lost_leases + 1,
    lease_owner = NULL,
    lease_expires_at = NULL,
    available_at = :available_at,
    finished_at = :finished_at,
    updated_at = :now,
    event_seq = event_seq + :n_events
WHERE id = :id AND attempt = :attempt AND lease_owner = :worker_id
  AND status = 'running' AND lease_expires_at < :now
RETURNING event_seq, parent_id;

-- name: select_expired_ttl
SELECT id FROM perdure_runs
WHERE expires_at IS NOT NULL AND expires_at <= :now AND available_at IS NOT NULL
  AND started_at IS NULL
LIMIT :limit;

-- name: expire_run
UPDATE perdure_runs
SET status = 'expired',
    error = :error,
    available_at = NULL,
    finished_at = :now,
    updated_at = :now,
    event_seq = event_seq + 1
WHERE id = :id AND started_at IS NULL
  AND status IN (SELECT value FROM json_each(:from_statuses))
RETURNING event_seq, parent_id;

-- name: get_run
SELECT * FROM perdure_runs WHERE id = :id;

-- name: get_runs
SELECT * FROM perdure_runs WHERE id IN (SELECT value FROM json_each(:ids));

-- name: list_runs
SELECT * FROM perdure_runs
WHERE (:status IS NULL OR status = :status)
  AND (:task_id IS NULL OR task_id = :task_id)
  AND (:queue IS NULL OR queue = :queue)
  AND (:parent_id IS NULL OR parent_id = :parent_id)
  AND (:cursor IS NULL OR id < :cursor)
ORDER BY id DESC
LIMIT :limit;

-- name: get_events
SELECT run_id, seq, type, at, data FROM perdure_events
WHERE run_id = :run_id AND seq > :after_seq
ORDER BY seq
LIMIT :limit;

-- name: upsert_task
INSERT INTO perdure_tasks (task_id, queue, max_attempts, timeout, version, input_schema,
                           output_schema, updated_at)
VALUES (:task_id, :queue, :max_attempts, :timeout, :version, :input_schema, :output_schema, :now)
ON CONFLICT (task_id) DO UPDATE SET
    queue = excluded.queue, max_attempts = excluded.max_attempts, timeout = excluded.timeout,
    version = excluded.version, input_schema = excluded.input_schema,
    output_schema = excluded.output_schema, updated_at = excluded.updated_at;

-- name: get_task
SELECT * FROM perdure_tasks WHERE task_id = :task_id;

-- name: list_tasks
SELECT * FROM perdure_tasks ORDER BY task_id;

-- name: count_runs_by_status
SELECT status, COUNT(*) AS n FROM perdure_runs GROUP BY status;

-- name: applied_migrations
SELECT version FROM perdure_migrations ORDER BY version;

-- name: record_migration
INSERT INTO perdure_migrations (version, name, applied_at)
VALUES (:version, :name, datetime('now'));

-- name: fence_and_bump
-- Fenced on the running attempt's lease; reserves `n_events` event numbers. Every durable
-- write of a running attempt starts here, so a stale worker's write stops at this row.
UPDATE perdure_runs
SET event_seq = event_seq + :n_events, updated_at = :now
WHERE id = :id AND attempt = :attempt AND lease_owner = :worker_id AND status = 'running'
RETURNING event_seq;

-- name: load_steps
SELECT * FROM perdure_steps WHERE run_id = :run_id ORDER BY position;

-- name: insert_step
INSERT INTO perdure_steps (run_id, position, kind, name, status, output, error, wake_at,
                           token_id, child_run_id, batch, attempt, created_at, completed_at)
VALUES (:run_id, :position, :kind, :name, :status, :output, :error, :wake_at, :token_id,
        :child_run_id, :batch, :attempt, :now, :completed_at)
ON CONFLICT DO NOTHING
RETURNING position;

-- name: lock_waitpoints
-- PostgreSQL locks these rows (FOR UPDATE) so suspend and complete serialize on them.
SELECT position, status FROM perdure_steps
WHERE run_id = :run_id AND position IN (SELECT value FROM json_each(:positions));

-- name: suspend_run
UPDATE perdure_runs
SET status = :status,
    lease_owner = NULL,
    lease_expires_at = NULL,
    available_at = :available_at,
    updated_at = :now,
    event_seq = event_seq + 1
WHERE id = :id AND attempt = :attempt AND lease_owner = :worker_id AND status = 'running'
RETURNING event_seq;

-- name: complete_token
UPDATE perdure_steps
SET status = :status, output = :output, error = :error, completed_at = :now
WHERE token_id = :token_id AND status = 'pending'
RETURNING run_id, position;

-- name: get_token
SELECT * FROM perdure_steps WHERE token_id = :token_id;

-- name: settle_child_waits
UPDATE perdure_steps
SET status = 'completed', output = :output, completed_at = :now
WHERE child_run_id = :child_run_id AND status = 'pending'
RETURNING run_id, batch;

-- name: wake_if_settled
-- Wake a suspended run once no waitpoint of the batch it waits on is pending.
UPDATE perdure_runs
SET available_at = :now, updated_at = :now, event_seq = event_seq + 1
WHERE id = :id AND status IN (SELECT value FROM json_each(:waiting))
  AND NOT EXISTS (SELECT 1 FROM perdure_steps
                  WHERE run_id = :id AND batch = :batch AND status = 'pending')
RETURNING event_seq;

-- name: wake_run
UPDATE perdure_runs
SET available_at = :now, updated_at = :now, event_seq = event_seq + 1
WHERE id = :id AND status IN (SELECT value FROM json_each(:waiting))
RETURNING event_seq;

-- name: bump_event_seq
UPDATE perdure_runs SET event_seq = event_seq + :n_events WHERE id = :id
RETURNING event_seq;

-- name: select_missed_wakeups
-- Safety net: suspended runs with no wake-up time and nothing left pending.
SELECT r.id FROM perdure_runs r
WHERE r.status IN (SELECT value FROM json_each(:waiting)) AND r.available_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM perdure_steps s
                  WHERE s.run_id = r.id AND s.status = 'pending')
LIMIT :limit;

-- name: update_metadata
UPDATE perdure_runs SET metadata = :metadata, updated_at = :now, event_seq = event_seq + 1
WHERE id = :id AND attempt = :attempt AND lease_owner = :worker_id AND status = 'running'
RETURNING event_seq;

-- name: copy_steps
-- fork: the new run starts with the source's settled records before `upto`; child links
-- are dropped (the child belongs to the source run) but their settled results are kept.
INSERT INTO perdure_steps (run_id, position, kind, name, status, output, error, wake_at,
                           token_id, child_run_id, batch, attempt, created_at, completed_at)
SELECT :new_run_id, position, kind, name, status, output, error, wake_at, NULL, NULL, batch,
       0, :now, :now
FROM perdure_steps
WHERE run_id = :source_run_id AND position < :upto;

-- name: cancel_descendants
-- Every unfinished run below a finished parent, at any depth, is cancelled in the parent's
-- transaction: the whole subtree stops at once, not one level per poll.
UPDATE perdure_runs
SET status = 'cancelled',
    error = :error,
    lease_owner = NULL,
    lease_expires_at = NULL,
    available_at = NULL,
    finished_at = :now,
    updated_at = :now,
    event_seq = event_seq + 1
WHERE id IN (
    WITH RECURSIVE subtree(id) AS (
        SELECT id FROM perdure_runs WHERE parent_id IN (SELECT value FROM json_each(:ids))
        UNION
        SELECT r.id FROM perdure_runs r JOIN subtree s ON r.parent_id = s.id
    )
    SELECT id FROM subtree
)
AND status IN (SELECT value FROM json_each(:from_statuses))
RETURNING id, event_seq;
