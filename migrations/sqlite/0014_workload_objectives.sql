-- An organization's workload objectives (`domain::objectives`, as JSON); no row: the defaults.
CREATE TABLE workload_objectives (
    org_id      TEXT PRIMARY KEY REFERENCES organizations(id) ON DELETE CASCADE,
    document    TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);
