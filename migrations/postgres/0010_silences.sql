-- Silences: matchers over alert labels (JSON: [{"name", "op", "value"}]), a time window, who
-- made one and why. Expiring a silence moves its end to now; rows are kept, so expired
-- silences stay visible.
CREATE TABLE silences (
    id               TEXT PRIMARY KEY,
    org_id           TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    matchers         TEXT NOT NULL,
    starts_at        BIGINT NOT NULL,
    ends_at          BIGINT NOT NULL,
    comment          TEXT NOT NULL,
    -- The actor (user or api_token) and what it was called when it made the silence.
    created_by_kind  TEXT NOT NULL,
    created_by_id    TEXT NOT NULL,
    created_by_name  TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX silences_org ON silences (org_id, id);
CREATE INDEX silences_org_ends ON silences (org_id, ends_at);

-- When the alert's alert.firing notification was queued. A firing alert muted by a silence has
-- none until the silence ends; only an alert whose firing was sent gets alert.resolved.
ALTER TABLE alerts ADD COLUMN notified_at BIGINT;
-- Before silences every firing alert was notified as it fired.
UPDATE alerts SET notified_at = fired_at;
