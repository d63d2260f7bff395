//! Alerts leaving the service: channels (where alerts go and how each kind's body looks),
//! Standard Webhooks signing, the SSRF guard and the delivery job of the notification outbox.
//! Deciding *whether* to alert is not here.

pub mod channels;
pub mod delivery;
pub mod signing;
pub mod ssrf;
