-- Metrics reports as received: one row per report, its windows as compact JSON. The
-- acknowledged path only appends here (no upserts); the rollup folds these rows into
-- metric_rollups and deletes them in one transaction, so a report counts exactly once.
-- The id increases with insertion, which orders each cluster's reports (a cluster's reports
-- are written by one writer, one transaction after another).
CREATE TABLE metric_reports (
    id          INTEGER PRIMARY KEY,
    org_id      TEXT NOT NULL,
    cluster_id  TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    windows     TEXT NOT NULL
);
CREATE INDEX metric_reports_cluster ON metric_reports(org_id, cluster_id);
