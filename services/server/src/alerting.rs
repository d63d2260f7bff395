//! Alerting: the rules evaluated on every cluster's health findings (`rules`), and alerts
//! leaving the service: channels (where alerts go and how each kind's body looks), Standard
//! Webhooks signing, the SSRF guard and the delivery job of the notification outbox.

pub mod channels;
pub mod delivery;
pub mod routing;
pub mod rules;
mod settling;
pub mod signing;
pub mod ssrf;
