-- Dashboard sessions: the browser holds a random token in an HttpOnly cookie; the service
-- keeps only its hash, tied to a login session (so logging out or removal ends it).
CREATE TABLE ui_sessions (
    token_hash  TEXT PRIMARY KEY,
    session_id  TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL
);
