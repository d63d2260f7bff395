-- Per-cluster quotas on what agents send.

-- The distinct workloads (series) a cluster has reported metrics for, so the series quota is
-- checked against the database (metric_reports holds raw JSON, metric_rollups lags it).
CREATE TABLE metric_series (
    cluster_id  TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    org_id      TEXT NOT NULL,
    namespace   TEXT NOT NULL,
    workload    TEXT NOT NULL,
    first_seen  BIGINT NOT NULL,
    PRIMARY KEY (cluster_id, namespace, workload)
);
INSERT INTO metric_series (cluster_id, org_id, namespace, workload, first_seen)
    SELECT cluster_id, MIN(org_id), namespace, workload, MIN(minute) FROM metric_rollups GROUP BY cluster_id, namespace, workload;

-- What the gateway refused of a cluster's agent, per reason: shown on the cluster as a
-- finding while recent. `since` starts an episode; a quiet gap ends it.
CREATE TABLE cluster_throttles (
    cluster_id  TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    org_id      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    since       BIGINT NOT NULL,
    last_at     BIGINT NOT NULL,
    refused     BIGINT NOT NULL,
    PRIMARY KEY (cluster_id, reason)
);
