-- The mesh's PKI run by the service (`domain::trust`): each organization's trust domain and
-- trust anchors (keys sealed), and the issuer the service last signed for each cluster (its
-- key stays in the cluster: only the certificate is here).
ALTER TABLE organizations ADD COLUMN trust_domain TEXT NOT NULL DEFAULT 'cluster.local';

CREATE TABLE trust_anchors (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    fingerprint  TEXT NOT NULL,
    subject      TEXT NOT NULL,
    cert_pem     TEXT NOT NULL,
    key_sealed   TEXT NOT NULL,
    not_before   BIGINT NOT NULL,
    not_after    BIGINT NOT NULL,
    state        TEXT NOT NULL,
    source       TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE UNIQUE INDEX trust_anchors_org_fingerprint ON trust_anchors (org_id, fingerprint);

CREATE TABLE cluster_issuers (
    cluster_id          TEXT PRIMARY KEY REFERENCES clusters(id) ON DELETE CASCADE,
    org_id              TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    command_id          TEXT NOT NULL,
    fingerprint         TEXT NOT NULL,
    anchor_fingerprint  TEXT NOT NULL,
    cert_pem            TEXT NOT NULL,
    not_before          BIGINT NOT NULL,
    not_after           BIGINT NOT NULL,
    signed_at           BIGINT NOT NULL
);
CREATE INDEX cluster_issuers_org ON cluster_issuers (org_id);

-- What each pod's proxy trusts and presents, as its agent reads it from the proxy's admin
-- `/identity`: trust-anchor rotation waits on these.
ALTER TABLE cluster_pods ADD COLUMN bundle_fingerprints TEXT NOT NULL DEFAULT '';
ALTER TABLE cluster_pods ADD COLUMN leaf_anchor TEXT;
ALTER TABLE cluster_pods ADD COLUMN leaf_not_after BIGINT;

-- Trust-anchor rotations (`domain::trust::RotationPhase`), one organization's at a time: run by
-- the leased `anchor-rotation` job, each cluster's progress in the current phase as JSON.
CREATE TABLE anchor_rotations (
    id           TEXT PRIMARY KEY,
    org_id       TEXT NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    old_anchor   TEXT NOT NULL,
    new_anchor   TEXT NOT NULL,
    phase        TEXT NOT NULL,
    paused       BIGINT NOT NULL,
    excluded     TEXT NOT NULL,
    clusters     TEXT NOT NULL,
    started_by   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX anchor_rotations_org ON anchor_rotations (org_id, created_at);
