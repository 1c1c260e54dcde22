-- perdure schema v1: runs, their event history, and the task catalog.
-- Same tables, columns and meanings as the SQLite schema. Timestamps are epoch seconds
-- (DOUBLE PRECISION) taken from the engine's clock. JSON columns are TEXT so payloads round-trip
-- byte for byte on both backends (JSONB would reorder keys and reject \u0000).
-- Ids use the "C" collation: byte order, so id order is creation order whatever the locale.

CREATE TABLE perdure_runs (
    id                      TEXT COLLATE "C" PRIMARY KEY,
    task_id                 TEXT NOT NULL,
    queue                   TEXT NOT NULL,
    status                  TEXT NOT NULL,
    priority                INTEGER NOT NULL DEFAULT 0,
    input                   TEXT,
    output                  TEXT,
    error                   TEXT,
    attempt                 INTEGER NOT NULL DEFAULT 0,
    max_attempts            INTEGER NOT NULL DEFAULT 1,
    lost_leases             INTEGER NOT NULL DEFAULT 0,
    timeout                 DOUBLE PRECISION,
    version                 TEXT,
    lease_owner             TEXT,
    lease_expires_at        DOUBLE PRECISION,
    -- Set exactly while the run waits to be claimed; the claim index covers only those rows.
    available_at            DOUBLE PRECISION,
    expires_at              DOUBLE PRECISION,
    idempotency_key         TEXT,
    idempotency_expires_at  DOUBLE PRECISION,
    concurrency_key         TEXT,
    tags                    TEXT NOT NULL DEFAULT '[]',
    metadata                TEXT NOT NULL DEFAULT '{}',
    parent_id               TEXT COLLATE "C",
    root_id                 TEXT COLLATE "C",
    event_seq               INTEGER NOT NULL DEFAULT 0,
    created_at              DOUBLE PRECISION NOT NULL,
    updated_at              DOUBLE PRECISION NOT NULL,
    started_at              DOUBLE PRECISION,
    finished_at             DOUBLE PRECISION
);

CREATE INDEX perdure_runs_claim ON perdure_runs (queue, priority DESC, available_at)
    WHERE available_at IS NOT NULL;
CREATE INDEX perdure_runs_lease ON perdure_runs (lease_expires_at)
    WHERE lease_expires_at IS NOT NULL;
CREATE INDEX perdure_runs_ttl ON perdure_runs (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE UNIQUE INDEX perdure_runs_idempotency ON perdure_runs (task_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX perdure_runs_status ON perdure_runs (status, id);
CREATE INDEX perdure_runs_task ON perdure_runs (task_id, id);
CREATE INDEX perdure_runs_parent ON perdure_runs (parent_id) WHERE parent_id IS NOT NULL;

CREATE TABLE perdure_events (
    run_id  TEXT COLLATE "C" NOT NULL,
    seq     INTEGER NOT NULL,
    type    TEXT NOT NULL,
    at      DOUBLE PRECISION NOT NULL,
    data    TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE perdure_tasks (
    task_id        TEXT PRIMARY KEY,
    queue          TEXT NOT NULL,
    max_attempts   INTEGER NOT NULL,
    timeout        DOUBLE PRECISION,
    version        TEXT,
    input_schema   TEXT,
    output_schema  TEXT,
    updated_at     DOUBLE PRECISION NOT NULL
);
