-- perdure schema v3: flow control. Queue limits live in the database so every worker (and
-- the CLI) sees the same ones; each claim from a rate-limited queue records its starts.

CREATE TABLE perdure_queues (
    name             TEXT PRIMARY KEY,
    concurrency      INTEGER,
    key_concurrency  INTEGER,
    rate_limit       INTEGER,
    rate_period      REAL,
    key_rate_limit   INTEGER,
    key_rate_period  REAL,
    max_depth        INTEGER,
    paused           INTEGER NOT NULL DEFAULT 0,
    updated_at       REAL NOT NULL
);

CREATE TABLE perdure_rate_starts (
    queue            TEXT NOT NULL,
    concurrency_key  TEXT,
    at               REAL NOT NULL
);
CREATE INDEX perdure_rate_starts_queue ON perdure_rate_starts (queue, at);
CREATE INDEX perdure_rate_starts_key ON perdure_rate_starts (queue, concurrency_key, at);

ALTER TABLE perdure_runs ADD COLUMN debounce_key TEXT;
CREATE INDEX perdure_runs_queue_status ON perdure_runs (queue, status);
CREATE INDEX perdure_runs_debounce ON perdure_runs (task_id, debounce_key)
    WHERE debounce_key IS NOT NULL;
