//! The domain layer: typed ids, roles and strings that can only exist once validated, and
//! the rules of the service as plain functions (fleet health, cluster liveness). Handlers and
//! the store exchange these, never raw strings, so an unchecked value cannot reach the
//! database; `http/` and `ui/` call the rules, they do not restate them.

pub mod alerting;
pub mod audit;
pub mod health;
pub mod labels;
pub mod liveness;
pub mod metric_rules;
pub mod objectives;
pub mod policies;
pub mod releases;
pub mod rollouts;
pub mod schema;
pub mod silences;
pub mod trust;
pub mod upgrade_policies;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A duration as the milliseconds the clock (`Clock::now_ms`) and the database count in.
pub fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
        #[serde(transparent)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            /// A new time-ordered id (UUIDv7), so ids sort by creation.
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map(Self)
            }
        }
    };
}

id_type!(/// An organization (the tenant).
    OrgId);
id_type!(/// A person who logs in.
    UserId);
id_type!(/// A Kubernetes cluster connected (or to be connected) to Meshfleet.
    ClusterId);
id_type!(/// An API token for automation.
    TokenId);
id_type!(/// One login: the family of refresh tokens rotated from it.
    SessionId);
id_type!(/// A command for a cluster's agent.
    CommandId);
id_type!(/// An alert: one rule's finding about one object of a cluster, from pending to resolved.
    AlertId);
id_type!(/// Where alerts are sent: a webhook, or a Slack, PagerDuty or Alertmanager receiver.
    ChannelId);
id_type!(/// A silence: mutes the notifications of the alerts its matchers match, for a while.
    SilenceId);
id_type!(/// A notification policy: which channels the alerts it matches go to, grouped how.
    PolicyId);
id_type!(/// A custom alert rule on the golden metrics of workloads.
    MetricRuleId);
id_type!(/// An upgrade policy: channel, mode, windows and pin for the clusters it selects.
    UpgradePolicyId);
id_type!(/// A rollout of a mesh version over clusters, in waves.
    RolloutId);

/// What a member or API token may do in an organization. Ordered: viewer < admin < owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Admin,
    Owner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "admin" => Ok(Role::Admin),
            "owner" => Ok(Role::Owner),
            other => Err(format!("unknown role {other:?}: expected owner, admin or viewer")),
        }
    }
}

/// A syntactically plausible e-mail address, trimmed and lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Email {
    type Err = &'static str;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_lowercase();
        let (local, domain) = s.split_once('@').ok_or("must contain @")?;
        let plausible = !local.is_empty()
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains('@')
            && s.len() <= 254
            && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if plausible {
            Ok(Email(s))
        } else {
            Err("is not a valid e-mail address")
        }
    }
}

/// A password that meets the policy. Never printed: `Debug` shows a placeholder.
pub struct Password(SecretString);

impl Password {
    pub const MIN_CHARS: usize = 12;
    pub const MAX_CHARS: usize = 1024;

    pub fn parse(s: &str) -> Result<Self, String> {
        let n = s.chars().count();
        if n < Self::MIN_CHARS {
            return Err(format!("must be at least {} characters", Self::MIN_CHARS));
        }
        if n > Self::MAX_CHARS {
            return Err(format!("must be at most {} characters", Self::MAX_CHARS));
        }
        Ok(Password(SecretString::from(s.to_owned())))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(***)")
    }
}

/// A cluster name: a DNS-1123 label, unique within its organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterName(String);

impl ClusterName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ClusterName {
    type Err = labels::LabelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        labels::validate_dns1123_label(s)?;
        Ok(ClusterName(s.to_owned()))
    }
}

/// A short human name (organization, API token): trimmed, 1..=100 characters, no control characters.
pub fn parse_display_name(s: &str) -> Result<String, &'static str> {
    let s = s.trim();
    if s.is_empty() {
        Err("must not be empty")
    } else if s.chars().count() > 100 {
        Err("must be at most 100 characters")
    } else if s.chars().any(char::is_control) {
        Err("must not contain control characters")
    } else {
        Ok(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_power() {
        assert!(Role::Viewer < Role::Admin && Role::Admin < Role::Owner);
        assert_eq!("admin".parse::<Role>().unwrap(), Role::Admin);
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!("  Ada@Example.COM ".parse::<Email>().unwrap().as_str(), "ada@example.com");
        for bad in ["", "ada", "@example.com", "ada@example", "ada@.com", "a da@example.com", "a@b@c.com"] {
            assert!(bad.parse::<Email>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn password_policy_and_redaction() {
        assert!(Password::parse("short").is_err());
        let p = Password::parse("correct horse battery").unwrap();
        assert_eq!(format!("{p:?}"), "Password(***)");
    }
}
