-- Custom alert rules on the golden metrics of workloads (`domain::metric_rules`). A rule's name
-- is its alerts' `alertname`, unique in the organization.
CREATE TABLE metric_rules (
    id                TEXT PRIMARY KEY,
    org_id            TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name              TEXT NOT NULL,
    cluster_selector  TEXT NOT NULL,
    namespace         TEXT,
    workload          TEXT,
    metric            TEXT NOT NULL,
    comparison        TEXT NOT NULL,
    threshold         DOUBLE PRECISION NOT NULL,
    window_ms         BIGINT NOT NULL,
    for_ms            BIGINT NOT NULL,
    severity          TEXT NOT NULL,
    enabled           BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);
CREATE UNIQUE INDEX metric_rules_org_name ON metric_rules (org_id, name);
