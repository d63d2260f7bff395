-- Notification policies: which channels an alert goes to and how alerts are grouped into
-- notifications. Matchers, channel ids and group-by labels are JSON arrays. Policies are tried
-- in `position` order; the first that matches routes the alert, and later ones too while the
-- matching one says `continue_matching`.
CREATE TABLE notification_policies (
    id                  TEXT PRIMARY KEY,
    org_id              TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name                TEXT NOT NULL,
    position            BIGINT NOT NULL,
    matchers            TEXT NOT NULL,
    channel_ids         TEXT NOT NULL,
    group_by            TEXT NOT NULL,
    group_wait_ms       BIGINT NOT NULL,
    group_interval_ms   BIGINT NOT NULL,
    repeat_interval_ms  BIGINT NOT NULL,
    continue_matching   BIGINT NOT NULL,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);
CREATE INDEX notification_policies_org ON notification_policies (org_id, position, id);

-- Alert groups as notified: per route (a policy id, or 'default' for alerts no policy takes)
-- and group key, the fingerprints whose firing the group's last notification carried. Each
-- notification is queued in the transaction that records what it carried, so a crash either
-- sends it and remembers, or does neither and the next evaluation sends it.
CREATE TABLE alert_groups (
    org_id      TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    route       TEXT NOT NULL,
    group_key   TEXT NOT NULL,
    labels      TEXT NOT NULL,
    sent        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    flushed_at  BIGINT,
    PRIMARY KEY (org_id, route, group_key)
);
