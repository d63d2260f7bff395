-- The release catalog (`domain::releases`): the mesh versions the service knows, for every
-- organization alike. `version` is a semantic version; `cautions` a JSON array of strings.
CREATE TABLE mesh_releases (
    version            TEXT PRIMARY KEY,
    channel            TEXT NOT NULL,
    released_on        TEXT NOT NULL,
    controller_image   TEXT NOT NULL,
    proxy_image        TEXT NOT NULL,
    min_agent_version  TEXT NOT NULL,
    notes              TEXT NOT NULL,
    cautions           TEXT NOT NULL,
    yanked             BIGINT NOT NULL,
    source             TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL
);

-- Upgrade policies (`domain::upgrade_policies`): `spec` is the policy as written (JSON), checked
-- again when read; `position` orders them (the first whose selector matches a cluster governs it).
CREATE TABLE upgrade_policies (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    position    BIGINT NOT NULL,
    spec        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX upgrade_policies_org ON upgrade_policies (org_id, position);

-- Rollouts (`domain::rollouts::Rollout`): the whole state machine, each cluster's phase and
-- command included, as one JSON document; `state` and `updated_at` beside it for the job's
-- queries and for optimistic concurrency (a save names the `updated_at` it read).
CREATE TABLE rollouts (
    id          TEXT PRIMARY KEY,
    org_id      TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    state       TEXT NOT NULL,
    document    TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX rollouts_org ON rollouts (org_id, id);
CREATE INDEX rollouts_state ON rollouts (state);
