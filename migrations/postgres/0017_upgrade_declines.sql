-- Upgrades the service will not propose again on its own (`rollouts::proposals`): a cluster
-- whose rollout to `version` was rolled back, skipped or aborted. People may still start a
-- rollout to it by hand; only the automatic policy leaves it alone.
CREATE TABLE upgrade_declines (
    cluster_id  TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    org_id      TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    version     TEXT NOT NULL,
    rollout_id  TEXT NOT NULL,
    reason      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (cluster_id, version)
);
CREATE INDEX upgrade_declines_org ON upgrade_declines (org_id);
