//! The audit trail's vocabulary: who acted, and what one entry records. Entries are written by
//! `store::audit::record` in the transaction of the mutation they describe.

use super::{OrgId, SessionId, TokenId, UserId};

/// Who made a change.
#[derive(Debug, Clone, Copy)]
pub enum Actor {
    User { id: UserId, session: SessionId },
    ApiToken(TokenId),
}

impl Actor {
    pub fn kind(&self) -> &'static str {
        match self {
            Actor::User { .. } => "user",
            Actor::ApiToken(_) => "api_token",
        }
    }

    pub fn id(&self) -> String {
        match self {
            Actor::User { id, .. } => id.to_string(),
            Actor::ApiToken(id) => id.to_string(),
        }
    }
}

/// One entry of an organization's audit log.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub id: uuid::Uuid,
    pub org_id: OrgId,
    pub at: i64,
    pub actor_kind: String,
    pub actor_id: String,
    pub action: String,
    pub target_kind: String,
    pub target_id: String,
    pub details: serde_json::Value,
}

impl AuditEntry {
    /// `actor` did `action` (`cluster.delete`, ...) to `target` (kind, id) at `at` (ms).
    pub fn new(org: OrgId, at: i64, actor: &Actor, action: &str, target: (&str, String), details: serde_json::Value) -> AuditEntry {
        AuditEntry {
            // Time-ordered, so the log pages by id.
            id: uuid::Uuid::now_v7(),
            org_id: org,
            at,
            actor_kind: actor.kind().into(),
            actor_id: actor.id(),
            action: action.into(),
            target_kind: target.0.into(),
            target_id: target.1,
            details,
        }
    }

    /// The service itself did it: a job (`issuer-rotation`) or the gateway for an agent
    /// (`agent:<cluster>`), named by `by`.
    pub fn by_service(org: OrgId, at: i64, by: &str, action: &str, target: (&str, String), details: serde_json::Value) -> AuditEntry {
        AuditEntry {
            id: uuid::Uuid::now_v7(),
            org_id: org,
            at,
            actor_kind: "service".into(),
            actor_id: by.into(),
            action: action.into(),
            target_kind: target.0.into(),
            target_id: target.1,
            details,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_name_their_actor_and_target() {
        let token = TokenId::new();
        let e = AuditEntry::new(OrgId::new(), 5, &Actor::ApiToken(token), "cluster.delete", ("cluster", "c1".into()), serde_json::json!({}));
        assert_eq!(
            (e.actor_kind.as_str(), e.actor_id, e.action.as_str(), e.target_kind.as_str(), e.target_id.as_str()),
            ("api_token", token.to_string(), "cluster.delete", "cluster", "c1")
        );
        let later = AuditEntry::new(e.org_id, 6, &Actor::ApiToken(token), "x", ("y", "z".into()), serde_json::json!(null));
        assert!(later.id > e.id, "ids sort by creation");
    }
}
