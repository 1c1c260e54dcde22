-- perdure queries for SQLite. Each `-- name:` block is one statement, loaded by name; the
-- PostgreSQL file defines exactly the same names (a test checks it). List parameters arrive as
-- JSON arrays and are read with json_each.
-- Batch statements (insert_runs, insert_events, finish_attempts) run once per row here (an
-- in-process call costs no round trip); PostgreSQL runs them once for the whole batch.
-- A `-- fragment: x` block is text several statements share (what a claim sets, a row's
-- column list); a line `-- include: x` in a statement stands for it (storage/queries.py).

-- fragment: insert_run_values
-- One run's row: insert_run and insert_runs.
INSERT INTO perdure_runs (
    id, task_id, queue, status, priority, input, attempt, max_attempts, timeout, version,
    available_at, expires_at, idempotency_key, idempotency_expires_at, concurrency_key,
    tags, metadata, parent_id, root_id, event_seq, created_at, updated_at
) VALUES (
    :id, :task_id, :queue, :status, :priority, :input, 0, :max_attempts, :timeout, :version,
    :available_at, :expires_at, :idempotency_key, :idempotency_expires_at, :concurrency_key,
    :tags, :metadata, :parent_id, :root_id, 1, :now, :now
)

-- name: insert_run
-- include: insert_run_values
ON CONFLICT DO NOTHING
RETURNING id;

-- name: insert_runs
-- Runs without an idempotency key, all at once. Their ids are fresh: a clash fails the
-- statement and its transaction (ConflictError), so no row count needs checking and
-- the statement may travel with COMMIT.
-- include: insert_run_values;

-- name: insert_event
INSERT INTO perdure_events (run_id, seq, type, at, data)
VALUES (:run_id, :seq, :type, :at, :data);

-- name: insert_events
INSERT INTO perdure_events (run_id, seq, type, at, data)
VALUES (:run_id, :seq, :type, :at, :data);

-- name: find_idempotent_run
SELECT * FROM perdure_runs WHERE task_id = :task_id AND idempotency_key = :idempotency_key;

-- name: release_idempotency_key
-- An expired key no longer dedupes: free it so a new run can take it.
UPDATE perdure_runs SET idempotency_key = NULL, idempotency_expires_at = NULL
WHERE task_id = :task_id AND idempotency_key = :idempotency_key
  AND idempotency_expires_at <= :now;

-- fragment: claim_due
-- The end of a claim's choice of waiting runs, the same in every claim (claim_runs,
-- claim_queue): the worker's tasks, not expired unless started, in claim order. (The unary
-- + keeps the planner on the claim index, not the per-task listing index.)
AND +task_id IN (SELECT value FROM json_each(:task_ids))
AND (expires_at IS NULL OR expires_at > :now OR started_at IS NOT NULL)
ORDER BY priority DESC, available_at, id
LIMIT :limit

-- fragment: claim_set
-- What every claim sets on the runs it takes (claim_runs, claim_queue, claim_ids).
SET status = 'running',
    attempt = attempt + 1,
    lease_owner = :worker_id,
    lease_expires_at = :now + :lease,
    available_at = NULL,
    started_at = COALESCE(started_at, :now),
    updated_at = :now,
    event_seq = event_seq + 1

-- name: claim_runs
-- Inside BEGIN IMMEDIATE: no other writer can claim the same rows between SELECT and UPDATE.
UPDATE perdure_runs
-- include: claim_set
WHERE id IN (
    SELECT id FROM perdure_runs
    WHERE available_at IS NOT NULL
      AND available_at <= :now
      AND queue IN (SELECT value FROM json_each(:queues))
      -- include: claim_due
)
AND status IN (SELECT value FROM json_each(:from_statuses))
RETURNING *;

-- name: claim_queue
-- claim_runs for a single queue: with `queue = …` the claim index yields the due runs already
-- in priority order, so the LIMIT stops the scan early instead of sorting every queued run.
-- It claims nothing from a queue that is paused or has claim limits (those go through the
-- locked, counted path), so it can be sent with find_queues before its answer is known.
UPDATE perdure_runs
-- include: claim_set
WHERE id IN (
    SELECT id FROM perdure_runs
    WHERE available_at IS NOT NULL
      -- unary +: a range on available_at would make the planner skip-scan and sort it all
      AND +available_at <= :now
      AND queue = :queue
      AND NOT EXISTS (SELECT 1 FROM perdure_queues AS q
                      WHERE q.name = :queue
                        AND (q.paused <> 0 OR q.concurrency IS NOT NULL
                             OR q.key_concurrency IS NOT NULL OR q.rate_limit IS NOT NULL
                             OR q.key_rate_limit IS NOT NULL))
      -- include: claim_due
)
AND status IN (SELECT value FROM json_each(:from_statuses))
RETURNING *;

-- name: extend_leases
UPDATE perdure_runs
SET lease_expires_at = :now + :lease
WHERE lease_owner = :worker_id AND status = 'running'
  AND id || ':' || attempt IN (SELECT value FROM json_each(:attempts))
RETURNING id;

-- name: leased_runs
-- Every attempt leased to one worker (its heartbeat's check for runs it is not running).
SELECT id, attempt FROM perdure_runs WHERE lease_owner = :worker_id AND status = 'running';

-- name: owned_runs
SELECT id FROM perdure_runs
WHERE lease_owner = :worker_id AND status = 'running'
  AND id || ':' || attempt IN (SELECT value FROM json_each(:attempts));

-- name: finish_attempts
-- One outcome of a worker's attempt. Fenced on (id, attempt, lease owner, status): a stale
-- worker's late write matches no row.
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
RETURNING id, attempt, event_seq, parent_id;

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
-- Fenced like finish_attempts: a heartbeat that landed after the SELECT keeps the run.
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

-- name: get_finished_runs
-- The runs among `ids` that have finished (a waiter's read of runs it knows exist).
SELECT * FROM perdure_runs
WHERE id IN (SELECT value FROM json_each(:ids))
  AND status IN (SELECT value FROM json_each(:statuses));

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

-- name: record_steps
-- Fences one run of a batch of durable-call records (a batch statement: once per run) and
-- reserves its events' numbers; records.py inserts the records and events in the same
-- BEGIN IMMEDIATE transaction (PostgreSQL does all of it in this one statement).
UPDATE perdure_runs
SET event_seq = event_seq + :n_events, updated_at = :now
WHERE id = :id AND attempt = :attempt AND lease_owner = :worker_id AND status = 'running'
RETURNING id, event_seq - :n_events AS seq_before;

-- name: load_steps
SELECT * FROM perdure_steps WHERE run_id = :run_id ORDER BY position;

-- name: load_steps_of
-- The records of several runs at once (`run_ids`: the resumed runs of one claim).
SELECT * FROM perdure_steps
WHERE run_id IN (SELECT value FROM json_each(:run_ids))
ORDER BY run_id, position;

-- fragment: insert_step_values
-- One record's row, skipped if its position (or token, or child) is taken: insert_step,
-- insert_steps, insert_steps_counted.
INSERT INTO perdure_steps (run_id, position, kind, name, status, output, error, wake_at,
                           token_id, child_run_id, batch, attempt, created_at, completed_at)
VALUES (:run_id, :position, :kind, :name, :status, :output, :error, :wake_at, :token_id,
        :child_run_id, :batch, :attempt, :now, :completed_at)
ON CONFLICT DO NOTHING

-- name: insert_step
-- include: insert_step_values
RETURNING position;

-- name: insert_steps
-- Several records at once (a parent's children); the caller compares the rows returned.
-- include: insert_step_values
RETURNING run_id, position;

-- name: insert_steps_counted
-- Several records at once (a parent's children); the caller compares the row count
-- (no RETURNING: SQLite runs it with executemany).
-- include: insert_step_values;

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
    event_seq = event_seq + :n_events
WHERE id = :id AND attempt = :attempt AND lease_owner = :worker_id AND status = 'running'
RETURNING event_seq;

-- name: suspend_runs
-- One tree node of a group commit suspends, fenced on its attempt as suspend_run (one row of
-- a batch: PostgreSQL suspends them all in one statement).
UPDATE perdure_runs
SET status = :status,
    lease_owner = NULL,
    lease_expires_at = NULL,
    available_at = NULL,
    updated_at = :now,
    event_seq = event_seq + :n_events
WHERE id = :id AND attempt = :attempt AND lease_owner = :worker_id AND status = 'running'
RETURNING id, attempt, event_seq;

-- name: complete_token
UPDATE perdure_steps
SET status = :status, output = :output, error = :error, completed_at = :now
WHERE token_id = :token_id AND status = 'pending'
RETURNING run_id, position;

-- name: get_token
SELECT * FROM perdure_steps WHERE token_id = :token_id;

-- name: settle_child_waits
-- Settles a batch of children (`rows`: a JSON array of {child_run_id, output}) at once.
UPDATE perdure_steps
SET status = 'completed', output = json_extract(c.value, '$.output'), completed_at = :now
FROM json_each(:rows) AS c
WHERE perdure_steps.child_run_id = json_extract(c.value, '$.child_run_id')
  AND perdure_steps.status = 'pending'
RETURNING run_id, batch, child_run_id;

-- name: wake_if_settled
-- Wake suspended runs (`rows`: a JSON array of {id, batch, complete, output}, one per run)
-- once no waitpoint of the batch each waits on is pending. A parent waiting for its finalize
-- task, whose task completed in this commit (`complete`), completes instead, with the task's
-- output (JSON text): all its body would do is return it. SET reads the row as it was.
-- Unary +: the status index would scan every waiting run.
UPDATE perdure_runs
SET status = CASE WHEN status = 'waiting_for_finalize' AND json_extract(w.value, '$.complete')
                  THEN 'completed' ELSE status END,
    output = CASE WHEN status = 'waiting_for_finalize' AND json_extract(w.value, '$.complete')
                  THEN json_extract(w.value, '$.output') ELSE output END,
    error = CASE WHEN status = 'waiting_for_finalize' AND json_extract(w.value, '$.complete')
                 THEN NULL ELSE error END,
    finished_at = CASE WHEN status = 'waiting_for_finalize'
                            AND json_extract(w.value, '$.complete')
                       THEN :now ELSE finished_at END,
    available_at = CASE WHEN status = 'waiting_for_finalize'
                             AND json_extract(w.value, '$.complete')
                        THEN NULL ELSE :now END,
    updated_at = :now,
    event_seq = event_seq + 1
FROM json_each(:rows) AS w
WHERE perdure_runs.id = json_extract(w.value, '$.id')
  AND +perdure_runs.status IN (SELECT value FROM json_each(:waiting))
  AND NOT EXISTS (SELECT 1 FROM perdure_steps AS s
                  WHERE s.run_id = perdure_runs.id AND s.batch = json_extract(w.value, '$.batch')
                    AND s.status = 'pending')
RETURNING id, event_seq, status, attempt, parent_id, output;

-- name: bump_event_seqs
-- Reserve the next event number of each of several runs (`ids`).
UPDATE perdure_runs SET event_seq = event_seq + 1
WHERE id IN (SELECT value FROM json_each(:ids))
RETURNING id, event_seq;

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

-- name: upsert_queue
-- Limits only: a paused queue stays paused when a deploy re-declares it.
INSERT INTO perdure_queues (name, concurrency, key_concurrency, rate_limit, rate_period,
                            key_rate_limit, key_rate_period, max_depth, paused, updated_at)
VALUES (:name, :concurrency, :key_concurrency, :rate_limit, :rate_period, :key_rate_limit,
        :key_rate_period, :max_depth, 0, :now)
ON CONFLICT (name) DO UPDATE SET
    concurrency = excluded.concurrency, key_concurrency = excluded.key_concurrency,
    rate_limit = excluded.rate_limit, rate_period = excluded.rate_period,
    key_rate_limit = excluded.key_rate_limit, key_rate_period = excluded.key_rate_period,
    max_depth = excluded.max_depth, updated_at = excluded.updated_at;

-- name: set_queue_paused
INSERT INTO perdure_queues (name, paused, updated_at) VALUES (:name, :paused, :now)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at;

-- name: list_queues
SELECT * FROM perdure_queues ORDER BY name;

-- name: lock_queues
-- Inside BEGIN IMMEDIATE claims are already serialized; PostgreSQL locks these rows.
SELECT * FROM perdure_queues WHERE name IN (SELECT value FROM json_each(:names)) ORDER BY name;

-- name: count_running_in_queue
SELECT COUNT(*) AS n FROM perdure_runs WHERE queue = :queue AND status = 'running';

-- name: count_recent_starts
SELECT COUNT(*) AS n FROM perdure_rate_starts WHERE queue = :queue AND at > :since;

-- name: count_recent_key_starts
SELECT COUNT(*) AS n FROM perdure_rate_starts
WHERE queue = :queue AND concurrency_key = :concurrency_key AND at > :since;

-- name: recent_start_at
-- The (offset+1)-th oldest start in the window (of one key when concurrency_key is given):
-- the window has room again once it has left.
SELECT at FROM perdure_rate_starts
WHERE queue = :queue AND at > :since
  AND (:concurrency_key IS NULL OR concurrency_key = :concurrency_key)
ORDER BY at
LIMIT 1 OFFSET :offset;

-- name: claim_candidates
-- A limited queue without per-key limits: plain priority order, walking the claim index.
SELECT id FROM perdure_runs
WHERE available_at IS NOT NULL
  AND +available_at <= :now
  AND queue = :queue
  AND +task_id IN (SELECT value FROM json_each(:task_ids))
  AND (expires_at IS NULL OR expires_at > :now OR started_at IS NOT NULL)
ORDER BY priority DESC, available_at, id
LIMIT :limit;

-- name: claim_candidates_keyed
-- Fair across keys: the n-th waiting run of every key comes before the (n+1)-th of any key,
-- and a key gets no more than its limits leave (running and recent starts counted). At equal
-- rank and priority the key served least recently goes first, so keys take turns even when
-- fewer slots are free than keys wait (the claim records a start per run it takes).
WITH busy AS (
    SELECT concurrency_key AS k, COUNT(*) AS n FROM perdure_runs
    WHERE queue = :queue AND status = 'running' AND concurrency_key IS NOT NULL
    GROUP BY concurrency_key
), recent AS (
    SELECT concurrency_key AS k, COUNT(*) AS n FROM perdure_rate_starts
    WHERE queue = :queue AND at > :since AND concurrency_key IS NOT NULL
    GROUP BY concurrency_key
), candidates AS (
    SELECT id, concurrency_key, priority, available_at,
           ROW_NUMBER() OVER (PARTITION BY concurrency_key
                              ORDER BY priority DESC, available_at, id) AS rn
    FROM perdure_runs
    WHERE available_at IS NOT NULL AND available_at <= :now AND queue = :queue
      AND +task_id IN (SELECT value FROM json_each(:task_ids))
      AND (expires_at IS NULL OR expires_at > :now OR started_at IS NOT NULL)
)
SELECT c.id FROM candidates c
LEFT JOIN busy b ON b.k = c.concurrency_key
LEFT JOIN recent r ON r.k = c.concurrency_key
WHERE c.concurrency_key IS NULL
   OR (c.rn + COALESCE(b.n, 0) <= :key_concurrency AND c.rn + COALESCE(r.n, 0) <= :key_rate)
ORDER BY c.rn, c.priority DESC,
         COALESCE((SELECT MAX(s.at) FROM perdure_rate_starts s
                   WHERE s.queue = :queue AND s.concurrency_key = c.concurrency_key), 0),
         c.available_at, c.id
LIMIT :limit;

-- name: claim_ids
UPDATE perdure_runs
-- include: claim_set
WHERE id IN (SELECT value FROM json_each(:ids))
  AND available_at IS NOT NULL
  AND status IN (SELECT value FROM json_each(:from_statuses))
RETURNING *;

-- name: insert_rate_start
INSERT INTO perdure_rate_starts (queue, concurrency_key, at) VALUES (:queue, :concurrency_key, :at);

-- name: prune_rate_starts
DELETE FROM perdure_rate_starts WHERE at < :before;

-- name: count_waiting_in_queue
SELECT COUNT(*) AS n FROM perdure_runs
WHERE queue = :queue AND status IN ('delayed', 'queued', 'retrying');

-- name: queue_stats
SELECT queue, status, COUNT(*) AS n FROM perdure_runs
WHERE status IN (SELECT value FROM json_each(:statuses))
GROUP BY queue, status;

-- name: find_debounced_run
SELECT * FROM perdure_runs
WHERE task_id = :task_id AND debounce_key = :debounce_key AND status = 'delayed';

-- name: update_debounced_run
UPDATE perdure_runs
SET input = :input, available_at = :available_at, updated_at = :now,
    event_seq = event_seq + 1
WHERE id = :id AND status = 'delayed'
RETURNING *;

-- name: set_debounce_key
UPDATE perdure_runs SET debounce_key = :debounce_key WHERE id = :id;

-- name: select_dead_letters
SELECT id FROM perdure_runs
WHERE status = 'failed'
  AND (:queue IS NULL OR queue = :queue)
  AND (:task_id IS NULL OR task_id = :task_id)
ORDER BY id
LIMIT :limit;

-- name: delete_runs
DELETE FROM perdure_runs WHERE id IN (SELECT value FROM json_each(:ids));

-- name: delete_events
DELETE FROM perdure_events WHERE run_id IN (SELECT value FROM json_each(:ids));

-- name: delete_steps
DELETE FROM perdure_steps WHERE run_id IN (SELECT value FROM json_each(:ids));

-- name: lock_debounce
-- Writers are serialized by BEGIN IMMEDIATE; PostgreSQL takes an advisory lock per key.
SELECT 1 AS locked;

-- name: find_queues
SELECT * FROM perdure_queues WHERE name IN (SELECT value FROM json_each(:names));
