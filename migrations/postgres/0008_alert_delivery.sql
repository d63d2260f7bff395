-- Alert channels and the notification outbox. A channel's URL and signing secrets are sealed
-- (`secrets::Sealer`), as is a PagerDuty routing key; `url_display` is the part safe to show
-- (scheme and host).
CREATE TABLE alert_channels (
    id                      TEXT PRIMARY KEY,
    org_id                  TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name                    TEXT NOT NULL,
    kind                    TEXT NOT NULL,
    url_sealed              TEXT NOT NULL,
    url_display             TEXT NOT NULL,
    secret_sealed           TEXT NOT NULL,
    -- PagerDuty's integration key; added to the body only when sending.
    routing_key_sealed      TEXT,
    -- The secret before the last rotation, still signing beside the new one until then.
    previous_secret_sealed  TEXT,
    previous_secret_until   BIGINT,
    enabled                 BIGINT NOT NULL,
    disabled_reason         TEXT,
    -- First failure of the current run of failures; NULL after a success.
    failing_since           BIGINT,
    created_at              BIGINT NOT NULL
);
CREATE INDEX alert_channels_org ON alert_channels(org_id, created_at);

-- The outbox: one row per (event, channel), written in the transaction of the change that
-- caused it. `id` is the message id (`webhook-id`), the same on every attempt; `body` is the
-- rendered request body, sent byte for byte on every attempt.
CREATE TABLE notifications (
    id               TEXT PRIMARY KEY,
    org_id           TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    channel_id       TEXT NOT NULL REFERENCES alert_channels(id) ON DELETE CASCADE,
    event_type       TEXT NOT NULL,
    body             TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    -- pending, delivered or failed (the retry schedule ran out).
    status           TEXT NOT NULL,
    attempts         BIGINT NOT NULL,
    next_attempt_at  BIGINT NOT NULL,
    -- A replica sending it holds it until then; after a crash it is due again.
    claimed_until    BIGINT NOT NULL
);
CREATE INDEX notifications_due ON notifications(status, next_attempt_at);
CREATE INDEX notifications_channel ON notifications(org_id, channel_id);

-- Every attempt to send a notification: the channel's delivery log.
CREATE TABLE delivery_attempts (
    id                TEXT PRIMARY KEY,
    org_id            TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    channel_id        TEXT NOT NULL REFERENCES alert_channels(id) ON DELETE CASCADE,
    message_id        TEXT NOT NULL REFERENCES notifications(id) ON DELETE CASCADE,
    at                BIGINT NOT NULL,
    status_code       BIGINT,
    error             TEXT,
    latency_ms        BIGINT NOT NULL,
    response_excerpt  TEXT NOT NULL
);
CREATE INDEX delivery_attempts_channel ON delivery_attempts(org_id, channel_id, id);
