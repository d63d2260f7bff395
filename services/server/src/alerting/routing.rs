//! From alerts to notifications: after each evaluation, every firing alert is routed by the
//! organization's notification policies (`domain::policies`) into groups, and each group that
//! is due tells its channels what changed: Slack and Alertmanager receivers one message for the
//! group, webhooks and PagerDuty one event per alert.
//!
//! Level-triggered, so nothing is lost: what a group has told is stored (`alert_groups.sent`)
//! in the transaction that queues its notifications, and each evaluation compares it with the
//! alerts as they are. A crash after an alert changed and before its group was notified is
//! made good by the next evaluation.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::app::AppState;
use crate::domain::alerting::{self, AlertEvent, AlertState, EventType};
use crate::domain::policies::{self, Flush, Members, Notified, Route};
use crate::domain::silences::Silence;
use crate::domain::OrgId;
use crate::store;
use crate::store::alert_channels::Channel;
use crate::store::alerts::Alert;
use crate::store::policies::StoredGroup;

/// A group as this evaluation finds it.
struct Found<'a> {
    route: Route<'a>,
    labels: BTreeMap<String, String>,
    members: Members,
}

/// Notifies every group of `org` that is due at `now`, given its `alerts` as evaluation just
/// left them.
pub async fn notify(state: &AppState, org: OrgId, alerts: &[Alert], silences: &[Silence], now: i64) -> anyhow::Result<()> {
    let (policies, channels, stored) = {
        let mut conn = state.db.pool.acquire().await?;
        let policies = store::policies::list(&mut conn, org).await?;
        let channels = store::alert_channels::list_enabled(&mut conn, org).await?;
        let stored = store::policies::groups(&mut conn, org).await?;
        (policies, channels, stored)
    };
    let firing: HashMap<&str, &Alert> = alerts.iter().filter(|a| a.state == AlertState::Firing).map(|a| (a.fingerprint.as_str(), a)).collect();
    let mut found: BTreeMap<(String, String), Found> = BTreeMap::new();
    for alert in firing.values() {
        let labels = alerting::matchable_labels(&alert.labels, &alert.rule, alert.severity);
        // A firing alert whose condition is clearing is not worth paging about any more; if it
        // comes back, it is told then.
        let notifiable = alert.cleared_at.is_none() && alert.muted_by(silences, now).is_empty();
        for route in policies::routes(&policies, &labels) {
            let (key, group_labels) = route.group(&labels, &alert.fingerprint);
            let group = found.entry((route.id(), key)).or_insert_with(|| Found { route, labels: group_labels, members: Members::default() });
            group.members.firing.insert(alert.fingerprint.clone());
            if notifiable {
                group.members.notifiable.insert(alert.fingerprint.clone());
            }
        }
    }
    let mut stored: HashMap<(String, String), StoredGroup> = stored.into_iter().map(|g| ((g.route.clone(), g.key.clone()), g)).collect();
    let keys: HashSet<(String, String)> = found.keys().chain(stored.keys()).cloned().collect();
    for key in keys {
        let (route, labels, members) = match found.remove(&key) {
            Some(f) => (f.route, f.labels, f.members),
            None => {
                let Some(route) = route_of(&policies, &key.0) else {
                    // Its policy is gone.
                    store::policies::forget_group(&mut *state.db.pool.acquire().await?, org, &key.0, &key.1).await?;
                    continue;
                };
                (route, stored[&key].labels.clone(), Members::default())
            }
        };
        let existing = stored.remove(&key);
        let notified = match &existing {
            Some(g) => g.notified.clone(),
            None if members.notifiable.is_empty() => continue,
            None => Notified { created_at: now, flushed_at: None, sent: Default::default() },
        };
        let group = StoredGroup { route: key.0, key: key.1, labels, notified };
        match policies::flush(&group.notified, &members, |f| firing.contains_key(f), now, route.timing()) {
            Flush::Wait if existing.is_none() => store::policies::save_group(&mut *state.db.pool.acquire().await?, org, &group).await?,
            Flush::Wait => {}
            Flush::Forget if existing.is_some() => store::policies::forget_group(&mut *state.db.pool.acquire().await?, org, &group.route, &group.key).await?,
            Flush::Forget => {}
            Flush::Send { firing: told, resolved, repeat, sent } => {
                let targets: Vec<&Channel> = match route.channels() {
                    None => channels.iter().collect(),
                    Some(ids) => channels.iter().filter(|c| ids.contains(&c.id)).collect(),
                };
                let mut tx = state.db.begin().await?;
                let resolved_fps: Vec<&str> = resolved.iter().map(String::as_str).collect();
                let resolved = store::alerts::last_resolved(&mut tx, org, &resolved_fps).await?;
                let events = |fps: &std::collections::BTreeSet<String>| -> Vec<AlertEvent> {
                    fps.iter().filter_map(|f| firing.get(f.as_str())).map(|a| super::rules::event(state, a, EventType::Firing, now)).collect()
                };
                let told_events = events(&told);
                let resolved_events: Vec<AlertEvent> = resolved.iter().map(|a| super::rules::event(state, a, EventType::Resolved, now)).collect();
                // Slack and Alertmanager get the whole group: all its alerts firing now.
                let whole: Vec<AlertEvent> = events(&members.notifiable).into_iter().chain(resolved_events.iter().cloned()).collect();
                let mut outbox = store::notifications::Outbox::new(now);
                for channel in targets {
                    let receiver = channel.name.as_str();
                    match channel.kind {
                        crate::alerting::channels::ChannelKind::Webhook | crate::alerting::channels::ChannelKind::Pagerduty => {
                            for event in told_events.iter().chain(&resolved_events) {
                                outbox.push_event(channel, event);
                            }
                        }
                        kind if !whole.is_empty() => {
                            let event_type = if whole.iter().any(|e| e.event_type == EventType::Firing) { EventType::Firing } else { EventType::Resolved };
                            let message = crate::alerting::channels::Group { key: group_key(&group), labels: &group.labels, alerts: &whole };
                            outbox.push(channel, event_type.as_str(), |_| crate::alerting::channels::render_group(kind, receiver, &message));
                        }
                        _ => {}
                    }
                }
                outbox.insert(&mut tx).await?;
                if !repeat {
                    let ids: Vec<_> = told.iter().filter_map(|f| firing.get(f.as_str())).map(|a| a.id).collect();
                    store::alerts::mark_notified(&mut tx, org, &ids, now).await?;
                }
                let group = StoredGroup { notified: Notified { created_at: group.notified.created_at, flushed_at: Some(now), sent }, ..group };
                store::policies::save_group(&mut tx, org, &group).await?;
                tx.commit().await?;
            }
        }
    }
    Ok(())
}

/// The route a stored group belongs to, if its policy still exists.
fn route_of<'a>(policies: &'a [policies::Policy], id: &str) -> Option<Route<'a>> {
    if id == policies::DEFAULT_ROUTE {
        return Some(Route::Default);
    }
    policies.iter().find(|p| p.id.to_string() == id).map(Route::Policy)
}

/// Alertmanager's `groupKey`: the route, then the group's labels.
fn group_key(group: &StoredGroup) -> String {
    let labels: Vec<String> = group.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    let route = if group.route == policies::DEFAULT_ROUTE { "{}".to_owned() } else { format!("{{}}/{{policy={:?}}}", group.route) };
    format!("{route}:{{{}}}", labels.join(", "))
}
