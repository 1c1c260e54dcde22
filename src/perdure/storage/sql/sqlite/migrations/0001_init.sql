-- perdure schema v1: runs, their event history, and the task catalog.
-- Timestamps are epoch seconds (REAL) taken from the engine's clock.

CREATE TABLE perdure_runs (
    id                      TEXT PRIMARY KEY,
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
    timeout                 REAL,
    version                 TEXT,
    lease_owner             TEXT,
    lease_expires_at        REAL,
    -- Set exactly while the run waits to be claimed; the claim index covers only those rows.
    available_at            REAL,
    expires_at              REAL,
    idempotency_key         TEXT,
    idempotency_expires_at  REAL,
    concurrency_key         TEXT,
    tags                    TEXT NOT NULL DEFAULT '[]',
    metadata                TEXT NOT NULL DEFAULT '{}',
    parent_id               TEXT,
    root_id                 TEXT,
    event_seq               INTEGER NOT NULL DEFAULT 0,
    created_at              REAL NOT NULL,
    updated_at              REAL NOT NULL,
    started_at              REAL,
    finished_at             REAL
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
    run_id  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    type    TEXT NOT NULL,
    at      REAL NOT NULL,
    data    TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

CREATE TABLE perdure_tasks (
    task_id        TEXT PRIMARY KEY,
    queue          TEXT NOT NULL,
    max_attempts   INTEGER NOT NULL,
    timeout        REAL,
    version        TEXT,
    input_schema   TEXT,
    output_schema  TEXT,
    updated_at     REAL NOT NULL
);
