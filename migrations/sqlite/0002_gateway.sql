-- The agent gateway: PKI, agent certificates, what agents report, and commands.

-- CA and server certificates of the gateway; private keys sealed. Shared by every replica.
CREATE TABLE pki (
    name        TEXT PRIMARY KEY,
    cert_pem    TEXT NOT NULL,
    key_sealed  TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- Every client certificate issued to an agent; deleting the cluster deletes them, so a
-- certificate of a deleted cluster is refused.
CREATE TABLE agent_certificates (
    serial      TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL,
    cluster_id  TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    not_after   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX agent_certificates_cluster ON agent_certificates(cluster_id);

ALTER TABLE clusters ADD COLUMN agent_version TEXT;
ALTER TABLE clusters ADD COLUMN kubernetes_version TEXT;
-- The stream that last connected, so an older stream ending does not mark a newer one gone.
ALTER TABLE clusters ADD COLUMN agent_session TEXT;

-- The latest inventory: cluster-wide facts as JSON, pods one row each (deltas touch rows).
CREATE TABLE cluster_inventory (
    cluster_id  TEXT PRIMARY KEY REFERENCES clusters(id) ON DELETE CASCADE,
    org_id      TEXT NOT NULL,
    facts       TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE cluster_pods (
    cluster_id     TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    org_id         TEXT NOT NULL,
    namespace      TEXT NOT NULL,
    name           TEXT NOT NULL,
    workload       TEXT NOT NULL,
    proxy_version  TEXT NOT NULL,
    ready          BIGINT NOT NULL,
    restarts       BIGINT NOT NULL,
    phase          TEXT NOT NULL,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (cluster_id, namespace, name)
);

-- Golden metrics per workload per minute. last_window_end makes a resent window a no-op.
CREATE TABLE metric_rollups (
    cluster_id       TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    org_id           TEXT NOT NULL,
    namespace        TEXT NOT NULL,
    workload         TEXT NOT NULL,
    minute           BIGINT NOT NULL,
    requests         BIGINT NOT NULL,
    failures         BIGINT NOT NULL,
    latency_p50_ms   DOUBLE PRECISION NOT NULL,
    latency_p95_ms   DOUBLE PRECISION NOT NULL,
    latency_p99_ms   DOUBLE PRECISION NOT NULL,
    last_window_end  BIGINT NOT NULL,
    PRIMARY KEY (cluster_id, namespace, workload, minute)
);
CREATE INDEX metric_rollups_minute ON metric_rollups(minute);

CREATE TABLE cluster_events (
    cluster_id  TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    org_id      TEXT NOT NULL,
    id          TEXT NOT NULL,
    at          BIGINT NOT NULL,
    type        TEXT NOT NULL,
    namespace   TEXT NOT NULL,
    object      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    message     TEXT NOT NULL,
    PRIMARY KEY (cluster_id, id)
);
CREATE INDEX cluster_events_at ON cluster_events(cluster_id, at);

CREATE TABLE commands (
    id            TEXT PRIMARY KEY,
    org_id        TEXT NOT NULL,
    cluster_id    TEXT NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    kind          TEXT NOT NULL,
    params        TEXT NOT NULL,
    state         TEXT NOT NULL,
    created_by    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    deadline      BIGINT NOT NULL,
    attempts      BIGINT NOT NULL,
    delivered_at  BIGINT,
    completed_at  BIGINT,
    progress      BIGINT NOT NULL,
    message       TEXT NOT NULL,
    output        TEXT
);
CREATE INDEX commands_cluster ON commands(cluster_id, created_at);
CREATE INDEX commands_state ON commands(state);
