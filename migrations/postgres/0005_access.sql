-- API tokens are bound to the member who created them: a token acts with at most its
-- creator's current role and stops when the creator leaves. A token created by another
-- token was stored without a creator; it inherits the creator of the token that made it
-- (found through the audit log), and one whose creator cannot be found or who is no
-- longer a member is revoked, since nothing could bound what it may do.
WITH RECURSIVE chain(id, creator) AS (
    SELECT id, created_by FROM api_tokens WHERE created_by IS NOT NULL
    UNION
    SELECT a.target_id, chain.creator FROM audit_log a JOIN chain ON a.actor_id = chain.id
    WHERE a.action = 'api_token.create' AND a.actor_kind = 'api_token' AND a.target_kind = 'api_token'
)
UPDATE api_tokens SET created_by = (SELECT MIN(creator) FROM chain WHERE chain.id = api_tokens.id)
WHERE created_by IS NULL;

UPDATE api_tokens SET revoked_at = (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT
WHERE revoked_at IS NULL AND NOT EXISTS (
    SELECT 1 FROM memberships m WHERE m.org_id = api_tokens.org_id AND m.user_id = api_tokens.created_by
);

CREATE INDEX api_tokens_creator ON api_tokens(org_id, created_by);

-- Log-in attempts per subject (an account or a client address) in a fixed window that starts at
-- the subject's first attempt. Shared by every replica; rows of ended windows are deleted on
-- write, so the table holds only subjects tried within the last window.
CREATE TABLE login_throttle (
    subject       TEXT PRIMARY KEY,
    window_start  BIGINT NOT NULL,
    attempts      BIGINT NOT NULL
);
CREATE INDEX login_throttle_window ON login_throttle(window_start);
