-- perdure schema v2: durable-function steps and waitpoints (sleeps, tokens, child waits).
-- Same tables, columns and meanings as the SQLite schema. Every durable call in a task body
-- takes the next position; a replay returns what the row at that position recorded.

ALTER TABLE perdure_runs ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;

CREATE TABLE perdure_steps (
    run_id        TEXT COLLATE "C" NOT NULL,
    position      INTEGER NOT NULL,
    kind          TEXT NOT NULL,      -- step | sleep | token | child
    name          TEXT NOT NULL,
    status        TEXT NOT NULL,      -- completed | failed | pending
    output        TEXT,
    error         TEXT,
    wake_at       DOUBLE PRECISION,   -- sleep: when it ends; token: when it times out
    token_id      TEXT,
    child_run_id  TEXT COLLATE "C",
    batch         INTEGER,            -- child: first position of the batch it belongs to
    attempt       INTEGER NOT NULL,
    created_at    DOUBLE PRECISION NOT NULL,
    completed_at  DOUBLE PRECISION,
    PRIMARY KEY (run_id, position)
);

CREATE UNIQUE INDEX perdure_steps_token ON perdure_steps (token_id)
    WHERE token_id IS NOT NULL;
CREATE UNIQUE INDEX perdure_steps_child ON perdure_steps (child_run_id)
    WHERE child_run_id IS NOT NULL;
-- The safety sweep finds suspended runs whose waitpoints all settled.
CREATE INDEX perdure_runs_suspended ON perdure_runs (status) WHERE status = 'suspended';
