-- Alerts raised by the rules on each cluster's health findings. An alert is open while
-- pending or firing; at most one open alert per fingerprint (rule, cluster, object).
CREATE TABLE alerts (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    cluster_id   TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    fingerprint  TEXT NOT NULL,
    rule         TEXT NOT NULL,
    object       TEXT NOT NULL,
    severity     TEXT NOT NULL,
    summary      TEXT NOT NULL,
    labels       TEXT NOT NULL,
    state        TEXT NOT NULL,
    starts_at    BIGINT NOT NULL,
    fired_at     BIGINT,
    cleared_at   BIGINT,
    ends_at      BIGINT,
    updated_at   BIGINT NOT NULL
);
CREATE UNIQUE INDEX alerts_open_fingerprint ON alerts (org_id, fingerprint) WHERE state <> 'resolved';
CREATE INDEX alerts_org_state ON alerts (org_id, state, id);

-- An organization's changes to a built-in rule; no row means the rule's defaults.
CREATE TABLE alert_rules (
    org_id       TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    rule         TEXT NOT NULL,
    disabled_at  BIGINT,
    severity     TEXT,
    for_ms       BIGINT,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (org_id, rule)
);
