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
