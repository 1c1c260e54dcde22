-- perdure queries for PostgreSQL. Each `-- name:` block is one statement, loaded by name; the
-- SQLite file defines exactly the same names (a test checks it). Parameters are psycopg's
-- %(name)s; list parameters arrive as arrays and are matched with = ANY(...). Every statement
-- runs at READ COMMITTED: a conditional UPDATE that waited on a concurrent writer re-checks its
-- WHERE clause on the newest row version, so the status/lease fences below hold under races.
-- Batch statements (insert_runs, insert_events, finish_attempts) handle many rows in one
-- statement: the rows arrive as one JSON array in %(rows)s, read with json_to_recordset, next to
-- scalar parameters shared by all rows. SQLite defines the same names as per-row statements.
-- A `-- fragment: x` block is text several statements share (what a claim sets, a row's
-- column list); a line `-- include: x` in a statement stands for it (storage/queries.py).

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

-- fragment: insert_runs_from_json
-- The runs of %(rows)s (one JSON array), inserted: insert_runs and create_runs_at_once.
INSERT INTO perdure_runs (
    id, task_id, queue, status, priority, input, attempt, max_attempts, timeout, version,
    available_at, expires_at, idempotency_key, idempotency_expires_at, concurrency_key,
    tags, metadata, parent_id, root_id, event_seq, created_at, updated_at
)
SELECT n.id, n.task_id, n.queue, n.status, n.priority, n.input, 0, n.max_attempts, n.timeout,
       n.version, n.available_at, n.expires_at, n.idempotency_key, n.idempotency_expires_at,
       n.concurrency_key, n.tags, n.metadata, n.parent_id, n.root_id, 1, n.now, n.now
FROM json_to_recordset(%(rows)s::json) AS n(
    id text, task_id text, queue text, status text, priority integer, input text,
    max_attempts integer, timeout double precision, version text,
    available_at double precision, expires_at double precision, idempotency_key text,
    idempotency_expires_at double precision, concurrency_key text, tags text, metadata text,
    parent_id text, root_id text, now double precision
)

-- name: insert_runs
-- Runs without an idempotency key, all at once. Their ids are fresh: a clash fails the
-- statement and its transaction (ConflictError), so no row count needs checking and
-- the statement may travel with COMMIT.
-- include: insert_runs_from_json;

-- name: create_runs_at_once
-- A trigger of runs without idempotency keys as ONE autocommit statement: the runs, their
-- `created` events and the NOTIFY that wakes workers, in one round trip and no BEGIN/COMMIT.
-- It writes nothing (inserted = 0) when one of `queues` has a depth cap (max_depth): the
-- caller then takes the locked, counted path. The events' column list is insert_events'
-- (one statement needs it with the runs'). Fresh ids: a clash fails it all.
WITH capped AS (
    SELECT 1 FROM perdure_queues
    WHERE name = ANY(%(queues)s::text[]) AND max_depth IS NOT NULL
), runs AS (
    -- include: insert_runs_from_json
    WHERE NOT EXISTS (SELECT 1 FROM capped)
    RETURNING 1
), events AS (
    INSERT INTO perdure_events (run_id, seq, type, at, data)
    SELECT e.run_id, e.seq, e.type, e.at, e.data
    FROM json_to_recordset(%(events)s::json) AS e(
        run_id text, seq integer, type text, at double precision, data text
    )
    WHERE NOT EXISTS (SELECT 1 FROM capped)
), notified AS (
    SELECT pg_notify(%(notify_channel)s, %(notify_payload)s)
    WHERE %(notify_channel)s::text IS NOT NULL AND NOT EXISTS (SELECT 1 FROM capped)
)
SELECT (SELECT count(*) FROM runs) AS inserted, (SELECT count(*) FROM notified) AS notified;

-- name: insert_event
INSERT INTO perdure_events (run_id, seq, type, at, data)
VALUES (%(run_id)s, %(seq)s, %(type)s, %(at)s, %(data)s);

-- name: insert_events
INSERT INTO perdure_events (run_id, seq, type, at, data)
SELECT e.run_id, e.seq, e.type, e.at, e.data
FROM json_to_recordset(%(rows)s::json) AS e(
    run_id text, seq integer, type text, at double precision, data text
);

-- name: find_idempotent_run
SELECT * FROM perdure_runs
WHERE task_id = %(task_id)s AND idempotency_key = %(idempotency_key)s;

-- name: release_idempotency_key
-- An expired key no longer dedupes: free it so a new run can take it.
UPDATE perdure_runs SET idempotency_key = NULL, idempotency_expires_at = NULL
WHERE task_id = %(task_id)s AND idempotency_key = %(idempotency_key)s
  AND idempotency_expires_at <= %(now)s;

-- fragment: claim_due
-- The end of a claim's choice of waiting runs, the same in every claim (claim_runs,
-- claim_queue): the worker's tasks, not expired unless started, in claim order.
AND task_id = ANY(%(task_ids)s::text[])
AND (expires_at IS NULL OR expires_at > %(now)s OR started_at IS NOT NULL)
ORDER BY priority DESC, available_at, id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- fragment: claim_set
-- What every claim sets on the runs it takes (claim_runs, claim_queue, claim_ids).
SET status = 'running',
    attempt = attempt + 1,
    lease_owner = %(worker_id)s,
    lease_expires_at = %(now)s + %(lease)s,
    available_at = NULL,
    started_at = COALESCE(started_at, %(now)s),
    updated_at = %(now)s,
    event_seq = event_seq + 1

-- name: claim_runs
-- SKIP LOCKED: concurrent claimers lock disjoint rows and never wait on each other. The CTE is
-- MATERIALIZED so its LIMIT is evaluated once; store.py still checks the row count. The status
-- is checked on the locked row (available_at is set exactly while a run waits), which keeps
-- the planner on the partial claim index alone.
WITH due AS MATERIALIZED (
    SELECT id FROM perdure_runs
    WHERE available_at IS NOT NULL
      AND available_at <= %(now)s
      AND queue = ANY(%(queues)s::text[])
      -- include: claim_due
)
UPDATE perdure_runs AS r
-- include: claim_set
FROM due
WHERE r.id = due.id AND r.status = ANY(%(from_statuses)s::text[])
RETURNING r.*;

-- name: claim_queue
-- claim_runs for a single queue: with `queue = …` the claim index yields the due runs already
-- in priority order, so the LIMIT stops the scan early instead of sorting every queued run.
-- It claims nothing from a queue that is paused or has claim limits (those go through the
-- locked, counted path), so it can be sent with find_queues before its answer is known.
-- Here (not on SQLite) it also appends each claimed run's `attempt_started` event, so the
-- statement is the whole claim and needs no transaction around it.
WITH due AS MATERIALIZED (
    SELECT id FROM perdure_runs
    WHERE available_at IS NOT NULL
      AND available_at <= %(now)s
      AND queue = %(queue)s
      AND NOT EXISTS (SELECT 1 FROM perdure_queues AS q
                      WHERE q.name = %(queue)s
                        AND (q.paused <> 0 OR q.concurrency IS NOT NULL
                             OR q.key_concurrency IS NOT NULL OR q.rate_limit IS NOT NULL
                             OR q.key_rate_limit IS NOT NULL))
      -- include: claim_due
), claimed AS (
    UPDATE perdure_runs AS r
    -- include: claim_set
    FROM due
    WHERE r.id = due.id AND r.status = ANY(%(from_statuses)s::text[])
    RETURNING r.*
), started AS (
    INSERT INTO perdure_events (run_id, seq, type, at, data)
    SELECT c.id, c.event_seq, 'attempt_started', %(now)s,
           '{"status":"running","attempt":' || c.attempt || ',"worker_id":'
           || to_json(%(worker_id)s::text)::text || '}'
    FROM claimed AS c
)
SELECT * FROM claimed;

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

-- name: leased_runs
-- Every attempt leased to one worker (its heartbeat's check for runs it is not running).
SELECT id, attempt FROM perdure_runs WHERE lease_owner = %(worker_id)s AND status = 'running';

-- name: owned_runs
SELECT r.id FROM perdure_runs AS r
JOIN (
    SELECT substring(k FROM '^(.*):') AS id, substring(k FROM ':([0-9]+)$')::integer AS attempt
    FROM unnest(%(attempts)s::text[]) AS k
) AS w ON r.id = w.id AND r.attempt = w.attempt
WHERE r.lease_owner = %(worker_id)s AND r.status = 'running';

-- name: finish_attempts
-- The outcomes of a batch of one worker's attempts. Fenced on (id, attempt, lease owner,
-- status): a stale worker's late write matches no row. The rows are locked in id order first
-- (as extend_leases does), so concurrent multi-row writers cannot deadlock. The lock step
-- finds them by primary key (`id = ANY(ARRAY(…))` keeps that plan even before the table was
-- ever analyzed) and leaves the attempt and status checks to the UPDATE.
-- Here (not on SQLite) it also appends the events of the outcomes it applied (`events`: each
-- outcome's k-th event, numbered from the run's bumped counter), and sends the NOTIFY when
-- `notify_channel` is set: for outcomes that settle no parent, it is the whole commit.
WITH outcome AS (
    SELECT * FROM json_to_recordset(%(rows)s::json) AS o(
        id text, attempt integer, status text, output text, error text,
        available_at double precision, finished_at double precision, failed integer,
        n_events integer
    )
), fenced AS MATERIALIZED (
    SELECT r.id, r.attempt FROM perdure_runs AS r
    WHERE r.id = ANY(ARRAY(SELECT o.id FROM outcome AS o)) AND r.lease_owner = %(worker_id)s
    ORDER BY r.id
    FOR NO KEY UPDATE OF r
), finished AS (
    UPDATE perdure_runs AS r
    SET status = o.status,
        output = o.output,
        error = o.error,
        lease_owner = NULL,
        lease_expires_at = NULL,
        available_at = o.available_at,
        finished_at = o.finished_at,
        updated_at = %(now)s,
        failures = r.failures + o.failed,
        event_seq = r.event_seq + o.n_events
    FROM fenced JOIN outcome AS o ON o.id = fenced.id AND o.attempt = fenced.attempt
    WHERE r.id = fenced.id AND r.attempt = fenced.attempt AND r.lease_owner = %(worker_id)s
      AND r.status = ANY(%(from_statuses)s::text[])
      -- `roots_only`: leave runs whose outcome settles a parent to the transaction path.
      AND (NOT %(roots_only)s OR r.parent_id IS NULL OR o.status = 'retrying')
    RETURNING r.id, r.attempt, r.event_seq, r.parent_id, o.n_events
), events AS (
    INSERT INTO perdure_events (run_id, seq, type, at, data)
    SELECT f.id, f.event_seq - f.n_events + e.k, e.type, %(now)s, e.data
    FROM finished AS f
    JOIN json_to_recordset(%(events)s::json) AS e(
        run_id text, attempt integer, k integer, type text, data text
    ) ON e.run_id = f.id AND e.attempt = f.attempt
), notified AS (
    SELECT pg_notify(%(notify_channel)s, %(notify_payload)s)
    WHERE %(notify_channel)s::text IS NOT NULL
)
SELECT f.id, f.attempt, f.event_seq, f.parent_id, (SELECT count(*) FROM notified) AS notified
FROM finished AS f;

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
-- Fenced like finish_attempts: a heartbeat that landed after the SELECT keeps the run.
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
RETURNING event_seq, parent_id;

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
RETURNING event_seq, parent_id;

-- name: get_run
SELECT * FROM perdure_runs WHERE id = %(id)s;

-- name: get_runs
SELECT * FROM perdure_runs WHERE id = ANY(%(ids)s::text[]);

-- name: get_finished_runs
-- The runs among `ids` that have finished (a waiter's read of runs it knows exist).
SELECT * FROM perdure_runs WHERE id = ANY(%(ids)s::text[]) AND status = ANY(%(statuses)s);

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

-- name: fence_and_bump
-- Fenced on the running attempt's lease; reserves `n_events` event numbers. Every durable
-- write of a running attempt starts here, so a stale worker's write stops at this row.
UPDATE perdure_runs
SET event_seq = event_seq + %(n_events)s, updated_at = %(now)s
WHERE id = %(id)s AND attempt = %(attempt)s AND lease_owner = %(worker_id)s
  AND status = 'running'
RETURNING event_seq;

-- fragment: insert_steps_select
-- Records read from a JSON array as `s` (steps_record_columns), inserted: record_steps,
-- insert_steps, insert_steps_counted.
INSERT INTO perdure_steps (run_id, position, kind, name, status, output, error, wake_at,
                           token_id, child_run_id, batch, attempt, created_at, completed_at)
SELECT s.run_id, s.position, s.kind, s.name, s.status, s.output, s.error, s.wake_at,
       s.token_id, s.child_run_id, s.batch, s.attempt, s.now, s.completed_at

-- fragment: steps_record_columns
run_id text, position integer, kind text, name text, status text, output text,
error text, wake_at double precision, token_id text, child_run_id text, batch integer,
attempt integer, now double precision, completed_at double precision

-- name: record_steps
-- Durable-call records (or progress/log events alone) of a batch of attempts in ONE statement,
-- run in autocommit: one round trip and one commit (one WAL flush) for the whole batch
-- (records.py). Each run is fenced on its attempt's lease; a run that fails its fence gets
-- no record and no event. Rows are locked in id order first (as extend_leases does), so
-- concurrent multi-row writers cannot deadlock. A position or token id already taken fails
-- the whole statement (unique violation): nothing is written, and the caller falls back to
-- record_steps' transaction.
-- %(rows)s: one fence per run (id, attempt, worker_id, n_events, now); %(steps)s and
-- %(events)s: the rows to insert, an event's seq given as its offset `n` in its run's batch.
WITH fence AS (
    SELECT * FROM json_to_recordset(%(rows)s::json) AS f(
        id text, attempt integer, worker_id text, n_events integer, now double precision
    )
), locked AS MATERIALIZED (
    SELECT r.id FROM perdure_runs AS r
    WHERE r.id = ANY(ARRAY(SELECT f.id FROM fence AS f))
    ORDER BY r.id
    FOR NO KEY UPDATE OF r
), fenced AS (
    UPDATE perdure_runs AS r
    SET event_seq = r.event_seq + f.n_events, updated_at = f.now
    FROM locked JOIN fence AS f ON f.id = locked.id
    WHERE r.id = locked.id AND r.attempt = f.attempt AND r.lease_owner = f.worker_id
      AND r.status = 'running'
    RETURNING r.id, r.event_seq - f.n_events AS seq_before
), recorded AS (
    -- include: insert_steps_select
    FROM json_to_recordset(%(steps)s::json) AS s(
        -- include: steps_record_columns
    )
    JOIN fenced ON fenced.id = s.run_id
), logged AS (
    INSERT INTO perdure_events (run_id, seq, type, at, data)
    SELECT e.run_id, fenced.seq_before + e.n, e.type, e.at, e.data
    FROM json_to_recordset(%(events)s::json) AS e(
        run_id text, n integer, type text, at double precision, data text
    )
    JOIN fenced ON fenced.id = e.run_id
)
SELECT id, seq_before FROM fenced;

-- name: load_steps
SELECT * FROM perdure_steps WHERE run_id = %(run_id)s ORDER BY position;

-- name: load_steps_of
-- The records of several runs at once (`run_ids`: the resumed runs of one claim).
SELECT * FROM perdure_steps
WHERE run_id = ANY(%(run_ids)s::text[])
ORDER BY run_id, position;

-- name: insert_step
INSERT INTO perdure_steps (run_id, position, kind, name, status, output, error, wake_at,
                           token_id, child_run_id, batch, attempt, created_at, completed_at)
VALUES (%(run_id)s, %(position)s, %(kind)s, %(name)s, %(status)s, %(output)s, %(error)s,
        %(wake_at)s, %(token_id)s, %(child_run_id)s, %(batch)s, %(attempt)s, %(now)s,
        %(completed_at)s)
ON CONFLICT DO NOTHING
RETURNING position;

-- name: insert_steps
-- Several records at once (a parent's children); the caller compares the rows returned.
-- include: insert_steps_select
FROM json_to_recordset(%(rows)s::json) AS s(
    -- include: steps_record_columns
)
ON CONFLICT DO NOTHING
RETURNING run_id, position;

-- name: insert_steps_counted
-- Several records at once (a parent's children); the caller compares the row count
-- (no RETURNING: SQLite runs it with executemany).
-- include: insert_steps_select
FROM json_to_recordset(%(rows)s::json) AS s(
    -- include: steps_record_columns
)
ON CONFLICT DO NOTHING;

-- name: lock_waitpoints
-- Row locks (in position order) make suspend and a completion serialize: whichever commits
-- second sees the other's write, so a completion racing the suspension still wakes the run.
SELECT position, status FROM perdure_steps
WHERE run_id = %(run_id)s AND position = ANY(%(positions)s::integer[])
ORDER BY position
FOR UPDATE;

-- name: suspend_run
UPDATE perdure_runs
SET status = %(status)s,
    lease_owner = NULL,
    lease_expires_at = NULL,
    available_at = %(available_at)s,
    updated_at = %(now)s,
    event_seq = event_seq + %(n_events)s
WHERE id = %(id)s AND attempt = %(attempt)s AND lease_owner = %(worker_id)s
  AND status = 'running'
RETURNING event_seq;

-- name: suspend_runs
-- Tree nodes of one group commit suspend (`rows`: a JSON array of {id, attempt, worker_id,
-- status, n_events}), each fenced on its attempt as suspend_run. Rows are locked in id order
-- first, by primary key, as finish_attempts does.
WITH spawn AS (
    SELECT * FROM json_to_recordset(%(rows)s::json) AS w(
        id text, attempt integer, worker_id text, status text, n_events integer
    )
), fenced AS MATERIALIZED (
    SELECT r.id FROM perdure_runs AS r
    WHERE r.id = ANY(ARRAY(SELECT id FROM spawn))
    ORDER BY r.id
    FOR NO KEY UPDATE OF r
)
UPDATE perdure_runs AS r
SET status = w.status,
    lease_owner = NULL,
    lease_expires_at = NULL,
    available_at = NULL,
    updated_at = %(now)s,
    event_seq = r.event_seq + w.n_events
FROM fenced JOIN spawn AS w ON w.id = fenced.id
WHERE r.id = fenced.id AND r.attempt = w.attempt AND r.lease_owner = w.worker_id
  AND r.status = 'running'
RETURNING r.id, r.attempt, r.event_seq;

-- name: complete_token
-- A concurrent completion of the same token waits on the row, then finds it settled.
UPDATE perdure_steps
SET status = %(status)s, output = %(output)s, error = %(error)s, completed_at = %(now)s
WHERE token_id = %(token_id)s AND status = 'pending'
RETURNING run_id, position;

-- name: get_token
SELECT * FROM perdure_steps WHERE token_id = %(token_id)s;

-- name: settle_child_waits
-- Settles a batch of children (`rows`: a JSON array of {child_run_id, output}). Also locks
-- their parent runs, in id order, before returning, so the wake_if_settled that follows takes
-- its snapshot only after any sibling settling concurrently has committed: of two siblings
-- finishing at once, the second always sees the first one settled and wakes the parent.
-- `= ANY(ARRAY(…))` finds the waitpoints by index whatever the planner guesses of the tables.
WITH child AS (
    SELECT * FROM json_to_recordset(%(rows)s::json) AS c(child_run_id text, output text)
), settled AS (
    UPDATE perdure_steps AS s
    SET status = 'completed', output = c.output, completed_at = %(now)s
    FROM child AS c
    WHERE s.child_run_id = ANY(ARRAY(SELECT child_run_id FROM child))
      AND s.child_run_id IS NOT NULL AND s.child_run_id = c.child_run_id
      AND s.status = 'pending'
    RETURNING s.run_id, s.batch, s.child_run_id
), parents AS (
    SELECT r.id FROM perdure_runs AS r
    WHERE r.id = ANY(ARRAY(SELECT run_id FROM settled))
    ORDER BY r.id
    FOR NO KEY UPDATE
)
SELECT s.run_id, s.batch, s.child_run_id FROM settled AS s JOIN parents AS p ON p.id = s.run_id;

-- name: wake_if_settled
-- Wake suspended runs (`rows`: a JSON array of {id, batch, complete, output}, one per run)
-- once no waitpoint of the batch each waits on is pending. A parent waiting for its finalize
-- task, whose task completed in this commit (`complete`), completes instead, with the task's
-- output (JSON text): all its body would do is return it. SET reads the row as it was.
WITH wake AS (
    SELECT * FROM json_to_recordset(%(rows)s::json)
        AS w(id text, batch integer, complete boolean, output text)
)
UPDATE perdure_runs AS r
SET status = CASE WHEN r.status = 'waiting_for_finalize' AND w.complete
                  THEN 'completed' ELSE r.status END,
    output = CASE WHEN r.status = 'waiting_for_finalize' AND w.complete
                  THEN w.output ELSE r.output END,
    error = CASE WHEN r.status = 'waiting_for_finalize' AND w.complete
                 THEN NULL ELSE r.error END,
    finished_at = CASE WHEN r.status = 'waiting_for_finalize' AND w.complete
                       THEN %(now)s ELSE r.finished_at END,
    available_at = CASE WHEN r.status = 'waiting_for_finalize' AND w.complete
                        THEN NULL ELSE %(now)s END,
    updated_at = %(now)s,
    event_seq = r.event_seq + 1
FROM wake AS w
WHERE r.id = ANY(ARRAY(SELECT id FROM wake)) AND r.id = w.id
  AND r.status = ANY(%(waiting)s)
  AND NOT EXISTS (SELECT 1 FROM perdure_steps AS s
                  WHERE s.run_id = w.id AND s.batch = w.batch AND s.status = 'pending')
RETURNING r.id, r.event_seq, r.status, r.attempt, r.parent_id, r.output;

-- name: bump_event_seqs
-- Reserve the next event number of each of several runs (`ids`).
UPDATE perdure_runs SET event_seq = event_seq + 1
WHERE id = ANY(%(ids)s::text[])
RETURNING id, event_seq;

-- name: wake_run
UPDATE perdure_runs
SET available_at = %(now)s, updated_at = %(now)s, event_seq = event_seq + 1
WHERE id = %(id)s AND status = ANY(%(waiting)s)
RETURNING event_seq;

-- name: bump_event_seq
UPDATE perdure_runs SET event_seq = event_seq + %(n_events)s WHERE id = %(id)s
RETURNING event_seq;

-- name: select_missed_wakeups
-- Safety net: suspended runs with no wake-up time and nothing left pending. SKIP LOCKED lets
-- concurrent sweepers split the work; wake_run re-checks the status anyway.
SELECT r.id FROM perdure_runs AS r
WHERE r.status = ANY(%(waiting)s) AND r.available_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM perdure_steps AS s
                  WHERE s.run_id = r.id AND s.status = 'pending')
LIMIT %(limit)s
FOR UPDATE OF r SKIP LOCKED;

-- name: update_metadata
UPDATE perdure_runs
SET metadata = %(metadata)s, updated_at = %(now)s, event_seq = event_seq + 1
WHERE id = %(id)s AND attempt = %(attempt)s AND lease_owner = %(worker_id)s
  AND status = 'running'
RETURNING event_seq;

-- name: copy_steps
-- fork: the new run starts with the source's settled records before `upto`; child links
-- are dropped (the child belongs to the source run) but their settled results are kept.
INSERT INTO perdure_steps (run_id, position, kind, name, status, output, error, wake_at,
                           token_id, child_run_id, batch, attempt, created_at, completed_at)
SELECT %(new_run_id)s, position, kind, name, status, output, error, wake_at, NULL, NULL, batch,
       0, %(now)s, %(now)s
FROM perdure_steps
WHERE run_id = %(source_run_id)s AND position < %(upto)s;

-- name: cancel_descendants
-- Every unfinished run below a finished parent, at any depth, is cancelled in the parent's
-- transaction: the whole subtree stops at once, not one level per poll. Rows are locked in id
-- order so two cascades over overlapping subtrees cannot deadlock.
WITH RECURSIVE subtree(id) AS (
    SELECT id FROM perdure_runs WHERE parent_id = ANY(%(ids)s)
    UNION
    SELECT r.id FROM perdure_runs AS r JOIN subtree AS s ON r.parent_id = s.id
), locked AS (
    SELECT r.id FROM perdure_runs AS r
    WHERE r.id IN (SELECT id FROM subtree) AND r.status = ANY(%(from_statuses)s)
    ORDER BY r.id
    FOR NO KEY UPDATE
)
UPDATE perdure_runs AS r
SET status = 'cancelled',
    error = %(error)s,
    lease_owner = NULL,
    lease_expires_at = NULL,
    available_at = NULL,
    finished_at = %(now)s,
    updated_at = %(now)s,
    event_seq = r.event_seq + 1
FROM locked
WHERE r.id = locked.id AND r.status = ANY(%(from_statuses)s)
RETURNING r.id, r.event_seq;

-- name: upsert_queue
-- Limits only: a paused queue stays paused when a deploy re-declares it.
INSERT INTO perdure_queues (name, concurrency, key_concurrency, rate_limit, rate_period,
                            key_rate_limit, key_rate_period, max_depth, paused, updated_at)
VALUES (%(name)s, %(concurrency)s, %(key_concurrency)s, %(rate_limit)s, %(rate_period)s,
        %(key_rate_limit)s, %(key_rate_period)s, %(max_depth)s, 0, %(now)s)
ON CONFLICT (name) DO UPDATE SET
    concurrency = excluded.concurrency, key_concurrency = excluded.key_concurrency,
    rate_limit = excluded.rate_limit, rate_period = excluded.rate_period,
    key_rate_limit = excluded.key_rate_limit, key_rate_period = excluded.key_rate_period,
    max_depth = excluded.max_depth, updated_at = excluded.updated_at;

-- name: set_queue_paused
INSERT INTO perdure_queues (name, paused, updated_at) VALUES (%(name)s, %(paused)s, %(now)s)
ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at;

-- name: list_queues
SELECT * FROM perdure_queues ORDER BY name;

-- name: lock_queues
-- Claims and depth-capped triggers on a limited queue serialize on its row, so two workers
-- cannot both see a free slot and exceed the limit together.
SELECT * FROM perdure_queues WHERE name = ANY(%(names)s::text[]) ORDER BY name FOR UPDATE;

-- name: count_running_in_queue
SELECT COUNT(*) AS n FROM perdure_runs WHERE queue = %(queue)s AND status = 'running';

-- name: count_recent_starts
SELECT COUNT(*) AS n FROM perdure_rate_starts WHERE queue = %(queue)s AND at > %(since)s;

-- name: count_recent_key_starts
SELECT COUNT(*) AS n FROM perdure_rate_starts
WHERE queue = %(queue)s AND concurrency_key = %(concurrency_key)s AND at > %(since)s;

-- name: recent_start_at
-- The (offset+1)-th oldest start in the window (of one key when concurrency_key is given):
-- the window has room again once it has left.
SELECT at FROM perdure_rate_starts
WHERE queue = %(queue)s AND at > %(since)s
  AND (%(concurrency_key)s::text IS NULL OR concurrency_key = %(concurrency_key)s)
ORDER BY at
LIMIT 1 OFFSET %(offset)s;

-- name: claim_candidates
-- A limited queue without per-key limits: plain priority order, walking the claim index.
-- The queue row lock (lock_queues) serializes claimers of this queue.
SELECT id FROM perdure_runs
WHERE available_at IS NOT NULL
  AND available_at <= %(now)s
  AND queue = %(queue)s
  AND task_id = ANY(%(task_ids)s::text[])
  AND (expires_at IS NULL OR expires_at > %(now)s OR started_at IS NOT NULL)
ORDER BY priority DESC, available_at, id
LIMIT %(limit)s;

-- name: claim_candidates_keyed
-- Fair across keys: the n-th waiting run of every key comes before the (n+1)-th of any key,
-- and a key gets no more than its limits leave (running and recent starts counted). At equal
-- rank and priority the key served least recently goes first, so keys take turns even when
-- fewer slots are free than keys wait (the claim records a start per run it takes). The
-- queue row lock (lock_queues) serializes claimers of this queue.
WITH busy AS (
    SELECT concurrency_key AS k, COUNT(*) AS n FROM perdure_runs
    WHERE queue = %(queue)s AND status = 'running' AND concurrency_key IS NOT NULL
    GROUP BY concurrency_key
), recent AS (
    SELECT concurrency_key AS k, COUNT(*) AS n FROM perdure_rate_starts
    WHERE queue = %(queue)s AND at > %(since)s AND concurrency_key IS NOT NULL
    GROUP BY concurrency_key
), candidates AS (
    SELECT id, concurrency_key, priority, available_at,
           ROW_NUMBER() OVER (PARTITION BY concurrency_key
                              ORDER BY priority DESC, available_at, id) AS rn
    FROM perdure_runs
    WHERE available_at IS NOT NULL AND available_at <= %(now)s AND queue = %(queue)s
      AND task_id = ANY(%(task_ids)s::text[])
      AND (expires_at IS NULL OR expires_at > %(now)s OR started_at IS NOT NULL)
)
SELECT c.id FROM candidates AS c
LEFT JOIN busy AS b ON b.k = c.concurrency_key
LEFT JOIN recent AS r ON r.k = c.concurrency_key
WHERE c.concurrency_key IS NULL
   OR (c.rn + COALESCE(b.n, 0) <= %(key_concurrency)s
       AND c.rn + COALESCE(r.n, 0) <= %(key_rate)s)
ORDER BY c.rn, c.priority DESC,
         COALESCE((SELECT MAX(s.at) FROM perdure_rate_starts AS s
                   WHERE s.queue = %(queue)s AND s.concurrency_key = c.concurrency_key), 0),
         c.available_at, c.id
LIMIT %(limit)s;

-- name: claim_ids
UPDATE perdure_runs
-- include: claim_set
WHERE id = ANY(%(ids)s::text[])
  AND available_at IS NOT NULL
  AND status = ANY(%(from_statuses)s::text[])
RETURNING *;

-- name: insert_rate_start
INSERT INTO perdure_rate_starts (queue, concurrency_key, at)
VALUES (%(queue)s, %(concurrency_key)s, %(at)s);

-- name: prune_rate_starts
DELETE FROM perdure_rate_starts WHERE at < %(before)s;

-- name: count_waiting_in_queue
SELECT COUNT(*) AS n FROM perdure_runs
WHERE queue = %(queue)s AND status IN ('delayed', 'queued', 'retrying');

-- name: queue_stats
SELECT queue, status, COUNT(*) AS n FROM perdure_runs
WHERE status = ANY(%(statuses)s::text[])
GROUP BY queue, status;

-- name: find_debounced_run
SELECT * FROM perdure_runs
WHERE task_id = %(task_id)s AND debounce_key = %(debounce_key)s AND status = 'delayed'
FOR UPDATE;

-- name: update_debounced_run
UPDATE perdure_runs
SET input = %(input)s, available_at = %(available_at)s, updated_at = %(now)s,
    event_seq = event_seq + 1
WHERE id = %(id)s AND status = 'delayed'
RETURNING *;

-- name: set_debounce_key
UPDATE perdure_runs SET debounce_key = %(debounce_key)s WHERE id = %(id)s;

-- name: select_dead_letters
SELECT id FROM perdure_runs
WHERE status = 'failed'
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(task_id)s::text IS NULL OR task_id = %(task_id)s)
ORDER BY id
LIMIT %(limit)s;

-- name: delete_runs
DELETE FROM perdure_runs WHERE id = ANY(%(ids)s::text[]);

-- name: delete_events
DELETE FROM perdure_events WHERE run_id = ANY(%(ids)s::text[]);

-- name: delete_steps
DELETE FROM perdure_steps WHERE run_id = ANY(%(ids)s::text[]);

-- name: lock_debounce
-- Two triggers of one debounce key serialize here, so they collapse into a single run.
SELECT pg_advisory_xact_lock(hashtext(%(task_id)s || ':' || %(debounce_key)s)) IS NULL AS locked;

-- name: find_queues
SELECT * FROM perdure_queues WHERE name = ANY(%(names)s::text[]);
