-- perdure schema v4: the claim index ends with the run id, the claim's last sort key, so a
-- claim walks the due runs of its queue in claim order and stops at its LIMIT: no sort of
-- every queued run, however many share one priority and due time (a bulk trigger).

DROP INDEX perdure_runs_claim;
CREATE INDEX perdure_runs_claim ON perdure_runs (queue, priority DESC, available_at, id)
    WHERE available_at IS NOT NULL;
