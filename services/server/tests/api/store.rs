//! The storage contract: every store function against a freshly migrated database, with
//! the same assertions on SQLite and PostgreSQL.

use std::collections::BTreeSet;

use meshfleet_server::db::{is_unique_violation, Db};
use meshfleet_server::domain::audit::AuditEntry;
use meshfleet_server::domain::labels::{Labels, Selector};
use meshfleet_server::domain::liveness::Liveness;
use meshfleet_server::domain::{ClusterId, OrgId, Role, SessionId, TokenId, UserId};
use meshfleet_server::store::api_tokens::NewApiToken;
use meshfleet_server::store::clusters::{Cluster, ListQuery};
use meshfleet_server::store::{accounts, api_tokens, audit, clusters, login_throttle, sessions, signing_keys};
use sqlx::pool::PoolConnection;
use sqlx::Any;

use crate::helpers::{Engine, TestDb};
use crate::on_both_engines;

const NOW: i64 = 1_700_000_000_000;
const HOUR: i64 = 3_600_000;

type Conn = PoolConnection<Any>;

on_both_engines!(
    accounts_and_memberships,
    clusters_selectors_and_paging,
    clusters_update_delete_and_isolation,
    bootstrap_tokens_are_single_use,
    sessions_and_refresh_tokens,
    api_tokens_lifecycle,
    api_tokens_follow_their_creators_membership,
    login_attempts_count_per_window_and_ended_windows_are_forgotten,
    audit_log_pages_newest_first,
    signing_keys_newest_first,
);

/// A fresh migrated database, its pool and one connection (drop order: conn, pool, database).
async fn open(engine: Engine) -> (TestDb, Db, Conn) {
    let db = TestDb::new(engine).await;
    let store = Db::connect(&db.url, 4).await.unwrap();
    let conn = store.pool.acquire().await.unwrap();
    (db, store, conn)
}

async fn new_org(conn: &mut Conn, name: &str) -> OrgId {
    let id = OrgId::new();
    accounts::create_org(conn, id, name, NOW).await.unwrap();
    id
}

async fn new_user(conn: &mut Conn, email: &str) -> UserId {
    let id = UserId::new();
    accounts::create_user(conn, id, &email.parse().unwrap(), "argon2-hash", NOW).await.unwrap();
    id
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

async fn new_cluster(conn: &mut Conn, org: OrgId, name: &str, pairs: &[(&str, &str)], status: &str) -> Cluster {
    let c = Cluster {
        id: ClusterId::new(),
        org_id: org,
        name: name.into(),
        labels: labels(pairs),
        status: status.into(),
        created_at: NOW,
        updated_at: NOW,
        last_seen_at: (status == "connected").then_some(NOW),
        agent_version: None,
        kubernetes_version: None,
    };
    clusters::insert(conn, &c).await.unwrap();
    c
}

/// Names of the org's clusters matching `selector` (and `status`), in one large page.
async fn names(conn: &mut Conn, org: OrgId, selector: &str, status: Option<&str>) -> Vec<String> {
    let selector: Selector = selector.parse().unwrap();
    let live = Liveness { stale_before: NOW - 30_000, disconnected_before: NOW - 300_000 };
    let q = ListQuery { selector: &selector, status: status.map(|s| (s, live)), after_name: None, limit: 1000 };
    clusters::list(conn, org, &q).await.unwrap().into_iter().map(|c| c.name).collect()
}

/// Rows of `table` still pointing at the cluster (to observe cascades).
async fn rows_of(conn: &mut Conn, table: &str, cluster: ClusterId) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE cluster_id = $1")).bind(cluster.to_string()).fetch_one(&mut **conn).await.unwrap()
}

async fn accounts_and_memberships(engine: Engine) {
    let (_db, store, mut conn) = open(engine).await;
    let acme = new_org(&mut conn, "Acme").await;
    let other = new_org(&mut conn, "Other").await;
    let ada = new_user(&mut conn, "ada@example.com").await;
    let bob = new_user(&mut conn, "bob@example.com").await;
    accounts::add_member(&mut conn, acme, ada, Role::Owner, NOW).await.unwrap();
    accounts::add_member(&mut conn, acme, bob, Role::Viewer, NOW + 1).await.unwrap();
    accounts::add_member(&mut conn, other, ada, Role::Admin, NOW + 2).await.unwrap();

    let email = " ADA@Example.com".parse().unwrap();
    let err = accounts::create_user(&mut conn, UserId::new(), &email, "h", NOW).await.unwrap_err();
    assert!(is_unique_violation(&err), "{err}");
    let err = accounts::add_member(&mut conn, acme, bob, Role::Admin, NOW).await.unwrap_err();
    assert!(is_unique_violation(&err), "{err}");
    assert_eq!(accounts::user_id_by_email(&mut conn, &email).await.unwrap(), Some(ada));
    assert_eq!(accounts::user_email(&mut conn, bob).await.unwrap().as_deref(), Some("bob@example.com"));

    let orgs = accounts::memberships_of(&mut conn, ada).await.unwrap();
    let orgs: Vec<_> = orgs.iter().map(|m| (m.org_id, m.org_name.as_str(), m.role, m.since)).collect();
    assert_eq!(orgs, [(acme, "Acme", Role::Owner, NOW), (other, "Other", Role::Admin, NOW + 2)]);
    let members = accounts::list_members(&mut conn, acme).await.unwrap();
    let members: Vec<_> = members.iter().map(|m| (m.user_id, m.email.as_str(), m.role)).collect();
    assert_eq!(members, [(ada, "ada@example.com", Role::Owner), (bob, "bob@example.com", Role::Viewer)]);
    assert!(accounts::get_member(&mut conn, other, bob).await.unwrap().is_none());

    let role_of = |m: Option<accounts::Member>| m.map(|m| m.role);
    assert!(accounts::set_role(&mut conn, acme, bob, Role::Owner).await.unwrap());
    assert!(!accounts::set_role(&mut conn, other, bob, Role::Owner).await.unwrap());
    assert_eq!(role_of(accounts::get_member(&mut conn, acme, bob).await.unwrap()), Some(Role::Owner));
    assert_eq!(accounts::count_owners(&mut conn, acme).await.unwrap(), 2);
    assert_eq!(accounts::count_owners(&mut conn, other).await.unwrap(), 0);

    assert!(accounts::remove_member(&mut conn, acme, bob).await.unwrap());
    assert!(!accounts::remove_member(&mut conn, acme, bob).await.unwrap());
    assert_eq!(role_of(accounts::get_member(&mut conn, acme, bob).await.unwrap()), None);
    assert_eq!(accounts::count_owners(&mut conn, acme).await.unwrap(), 1);
    assert_eq!(accounts::org_name(&mut conn, acme).await.unwrap().as_deref(), Some("Acme"));
    assert_eq!(accounts::org_name(&mut conn, OrgId::new()).await.unwrap(), None);

    let mut tx = store.pool.begin().await.unwrap();
    accounts::lock_org(&mut tx, acme).await.unwrap();
    assert_eq!(accounts::count_owners(&mut tx, acme).await.unwrap(), 1);
    tx.commit().await.unwrap();
    assert_eq!(accounts::org_name(&mut conn, acme).await.unwrap().as_deref(), Some("Acme"));
}

async fn clusters_selectors_and_paging(engine: Engine) {
    let (_db, _store, mut conn) = open(engine).await;
    let org = new_org(&mut conn, "Acme").await;
    let rival = new_org(&mut conn, "Rival").await;
    // name, labels, status
    type Member<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let fleet: [Member; 9] = [
        ("alpha", &[("env", "prod"), ("tier", "web")], "connected"),
        ("bravo", &[("env", "staging"), ("tier", "api"), ("legacy", "")], "pending"),
        ("charlie", &[("env", "prod"), ("tier", "db"), ("legacy", "true")], "connected"),
        ("delta", &[], "pending"),
        ("echo", &[("tier", "web")], "connected"),
        ("web-1", &[("env", "prod")], "pending"),
        ("web-10", &[("env", "dev")], "connected"),
        ("web-2", &[("team", "a")], "connected"),
        ("web1", &[("tier", "api")], "pending"),
    ];
    let mut ours = Vec::new();
    for (name, pairs, status) in fleet {
        ours.push(new_cluster(&mut conn, org, name, pairs, status).await);
    }
    // Same name in another org is fine, and its labels match every selector below.
    new_cluster(&mut conn, rival, "alpha", &[("env", "prod"), ("tier", "web"), ("legacy", "x")], "connected").await;
    new_cluster(&mut conn, rival, "zulu", &[("env", "staging"), ("tier", "api")], "pending").await;
    let dup = Cluster { id: ClusterId::new(), ..ours[0].clone() };
    let err = clusters::insert(&mut conn, &dup).await.unwrap_err();
    assert!(is_unique_violation(&err), "{err}");

    let ours_named = |names: &[String]| ours.iter().filter(|c| names.contains(&c.name)).count();
    for sel in [
        "",
        "env=prod",
        "env!=prod",
        "tier in (web,api)",
        "tier notin (web)",
        "legacy",
        "!legacy",
        "env=prod,!legacy",
        "tier in (web, api, db),env notin (staging)",
    ] {
        let selector: Selector = sel.parse().unwrap();
        let want: Vec<String> = ours.iter().filter(|c| selector.matches(&c.labels)).map(|c| c.name.clone()).collect();
        let got = names(&mut conn, org, sel, None).await;
        assert_eq!(BTreeSet::from_iter(&got), BTreeSet::from_iter(&want), "selector {sel:?}");
        assert_eq!(got.len(), want.len(), "selector {sel:?}: duplicates or another org's rows in {got:?}");
        assert_eq!(ours_named(&got), got.len());
    }
    assert_eq!(names(&mut conn, org, "env=prod", Some("connected")).await, ["alpha", "charlie"]);
    assert_eq!(names(&mut conn, org, "", Some("pending")).await, ["bravo", "delta", "web-1", "web1"]);
    assert_eq!(names(&mut conn, rival, "", None).await, ["alpha", "zulu"]);

    // Keyset pages: every name once, in byte order, on both engines.
    for (sel, limit) in [("", 2), ("", 4), ("tier", 1), ("!legacy", 3)] {
        let selector: Selector = sel.parse().unwrap();
        let mut want: Vec<String> = ours.iter().filter(|c| selector.matches(&c.labels)).map(|c| c.name.clone()).collect();
        want.sort();
        let (mut seen, mut after) = (Vec::new(), None::<String>);
        loop {
            let q = ListQuery { selector: &selector, status: None, after_name: after.as_deref(), limit };
            let page = clusters::list(&mut conn, org, &q).await.unwrap();
            assert!(page.len() <= limit as usize);
            let Some(last) = page.last() else { break };
            after = Some(last.name.clone());
            seen.extend(page.into_iter().map(|c| c.name));
        }
        assert_eq!(seen, want, "selector {sel:?} in pages of {limit}");
    }
}

async fn clusters_update_delete_and_isolation(engine: Engine) {
    let (_db, _store, mut conn) = open(engine).await;
    let org = new_org(&mut conn, "Acme").await;
    let rival = new_org(&mut conn, "Rival").await;
    let a = new_cluster(&mut conn, org, "alpha", &[("env", "prod"), ("tier", "web")], "pending").await;
    let b = new_cluster(&mut conn, org, "bravo", &[("env", "prod")], "pending").await;

    let got = clusters::get(&mut conn, org, a.id).await.unwrap().unwrap();
    assert_eq!((got.id, got.org_id, &got.name, &got.labels, &got.status), (a.id, org, &a.name, &a.labels, &a.status));
    assert_eq!((got.created_at, got.updated_at, got.last_seen_at), (NOW, NOW, None));
    assert!(clusters::get(&mut conn, rival, a.id).await.unwrap().is_none());
    assert!(clusters::name_taken(&mut conn, org, &"alpha".parse().unwrap()).await.unwrap());
    assert!(!clusters::name_taken(&mut conn, rival, &"alpha".parse().unwrap()).await.unwrap());

    let fresh = labels(&[("env", "dev")]);
    assert!(!clusters::update_labels(&mut conn, rival, a.id, &fresh, NOW + 5).await.unwrap());
    assert_eq!(names(&mut conn, org, "tier=web", None).await, ["alpha"], "a refused update changed nothing");
    assert!(clusters::update_labels(&mut conn, org, a.id, &fresh, NOW + 5).await.unwrap());
    assert!(names(&mut conn, org, "tier", None).await.is_empty());
    assert_eq!(names(&mut conn, org, "env=prod", None).await, ["bravo"]);
    assert_eq!(names(&mut conn, org, "env=dev", None).await, ["alpha"]);
    let got = clusters::get(&mut conn, org, a.id).await.unwrap().unwrap();
    assert_eq!((got.labels, got.updated_at), (fresh, NOW + 5));
    assert!(names(&mut conn, rival, "", None).await.is_empty());

    clusters::insert_bootstrap_token(&mut conn, "boot-b", org, b.id, NOW, NOW + HOUR).await.unwrap();
    assert!(!clusters::delete(&mut conn, rival, b.id).await.unwrap());
    assert!(clusters::get(&mut conn, org, b.id).await.unwrap().is_some());
    assert!(clusters::delete(&mut conn, org, b.id).await.unwrap());
    assert!(!clusters::delete(&mut conn, org, b.id).await.unwrap());
    assert!(clusters::get(&mut conn, org, b.id).await.unwrap().is_none());
    assert_eq!(rows_of(&mut conn, "cluster_labels", b.id).await, 0, "labels cascade");
    assert_eq!(rows_of(&mut conn, "bootstrap_tokens", b.id).await, 0, "bootstrap tokens cascade");
    assert_eq!(clusters::consume_bootstrap_token(&mut conn, "boot-b", NOW).await.unwrap(), None);
    assert_eq!(names(&mut conn, org, "", None).await, ["alpha"]);
}

async fn bootstrap_tokens_are_single_use(engine: Engine) {
    let (_db, _store, mut conn) = open(engine).await;
    let org = new_org(&mut conn, "Acme").await;
    let rival = new_org(&mut conn, "Rival").await;
    let a = new_cluster(&mut conn, org, "alpha", &[], "pending").await.id;
    let b = new_cluster(&mut conn, org, "bravo", &[], "pending").await.id;
    for (hash, cluster, created, expires) in [
        ("once", a, NOW, NOW + HOUR),
        ("expired", a, NOW - HOUR, NOW),
        ("old-1", a, NOW - 2, NOW + HOUR),
        ("old-2", a, NOW - 1, NOW + HOUR),
        ("other-cluster", b, NOW, NOW + HOUR),
    ] {
        clusters::insert_bootstrap_token(&mut conn, hash, org, cluster, created, expires).await.unwrap();
    }

    assert_eq!(clusters::consume_bootstrap_token(&mut conn, "once", NOW).await.unwrap(), Some((org, a)));
    assert_eq!(clusters::consume_bootstrap_token(&mut conn, "once", NOW).await.unwrap(), None);
    assert_eq!(clusters::consume_bootstrap_token(&mut conn, "expired", NOW).await.unwrap(), None);
    assert_eq!(clusters::consume_bootstrap_token(&mut conn, "unknown", NOW).await.unwrap(), None);

    clusters::expire_bootstrap_tokens(&mut conn, rival, b, NOW).await.unwrap(); // not rival's: no effect
    clusters::expire_bootstrap_tokens(&mut conn, org, a, NOW).await.unwrap();
    for hash in ["old-1", "old-2"] {
        assert_eq!(clusters::consume_bootstrap_token(&mut conn, hash, NOW).await.unwrap(), None, "{hash}");
    }
    assert_eq!(clusters::consume_bootstrap_token(&mut conn, "other-cluster", NOW).await.unwrap(), Some((org, b)));
}

async fn sessions_and_refresh_tokens(engine: Engine) {
    let (_db, _store, mut conn) = open(engine).await;
    let org = new_org(&mut conn, "Acme").await;
    let ada = new_user(&mut conn, "ada@example.com").await;
    let bob = new_user(&mut conn, "bob@example.com").await;
    accounts::add_member(&mut conn, org, ada, Role::Owner, NOW).await.unwrap();
    accounts::add_member(&mut conn, org, bob, Role::Viewer, NOW).await.unwrap();

    let s = SessionId::new();
    sessions::create(&mut conn, s, org, ada, NOW, NOW + HOUR).await.unwrap();
    sessions::insert_refresh_token(&mut conn, "r1", s, org, NOW, NOW + HOUR).await.unwrap();
    sessions::insert_refresh_token(&mut conn, "r2", s, org, NOW, NOW + HOUR).await.unwrap();
    assert_eq!(sessions::live_role(&mut conn, s, ada, org, NOW).await.unwrap(), Some(Role::Owner));
    assert_eq!(sessions::live_role(&mut conn, s, ada, org, NOW + HOUR).await.unwrap(), None, "expired");
    assert_eq!(sessions::live_role(&mut conn, s, bob, org, NOW).await.unwrap(), None, "someone else's session");

    let found = sessions::find_refresh_token(&mut conn, "r1").await.unwrap().unwrap();
    assert_eq!((found.session_id, found.org_id, found.user_id, found.expires_at), (s, org, ada, NOW + HOUR));
    assert!(!found.used && !found.session_revoked);
    assert!(sessions::use_refresh_token(&mut conn, "r1", NOW + 1).await.unwrap());
    assert!(!sessions::use_refresh_token(&mut conn, "r1", NOW + 2).await.unwrap(), "replay");
    assert!(sessions::find_refresh_token(&mut conn, "r1").await.unwrap().unwrap().used);
    assert!(sessions::find_refresh_token(&mut conn, "unknown").await.unwrap().is_none());

    sessions::revoke(&mut conn, s, NOW + 3).await.unwrap();
    let found = sessions::find_refresh_token(&mut conn, "r2").await.unwrap().unwrap();
    assert!(found.session_revoked && !found.used);
    assert_eq!(sessions::live_role(&mut conn, s, ada, org, NOW + 4).await.unwrap(), None, "revoked");

    let s2 = SessionId::new();
    sessions::create(&mut conn, s2, org, bob, NOW, NOW + HOUR).await.unwrap();
    assert_eq!(sessions::live_role(&mut conn, s2, bob, org, NOW).await.unwrap(), Some(Role::Viewer));
    assert!(accounts::set_role(&mut conn, org, bob, Role::Admin).await.unwrap());
    assert_eq!(sessions::live_role(&mut conn, s2, bob, org, NOW).await.unwrap(), Some(Role::Admin), "role is live");
    assert!(accounts::remove_member(&mut conn, org, bob).await.unwrap());
    assert_eq!(sessions::live_role(&mut conn, s2, bob, org, NOW).await.unwrap(), None, "no longer a member");
}

/// A new token named `name` whose hash is `hash`, alive over `[created_at, expires_at)`.
fn api_token<'a>(org: OrgId, by: UserId, name: &'a str, role: Role, hash: &'a str, created_at: i64, expires_at: i64) -> NewApiToken<'a> {
    let (id, prefix) = (TokenId::new(), "mf_abc");
    NewApiToken { id, org_id: org, name, role, prefix, token_hash: hash, created_by: by, created_at, expires_at }
}

async fn api_tokens_lifecycle(engine: Engine) {
    let (_db, _store, mut conn) = open(engine).await;
    let org = new_org(&mut conn, "Acme").await;
    let rival = new_org(&mut conn, "Rival").await;
    let ada = new_user(&mut conn, "ada@example.com").await;
    accounts::add_member(&mut conn, org, ada, Role::Owner, NOW).await.unwrap();
    let ci = api_token(org, ada, "ci", Role::Admin, "h-ci", NOW, NOW + HOUR);
    let deploy = api_token(org, ada, "deploy", Role::Viewer, "h-deploy", NOW + 1, NOW + HOUR);
    let short = api_token(org, ada, "short", Role::Viewer, "h-short", NOW + 2, NOW + 10);
    for t in [&ci, &deploy, &short] {
        api_tokens::insert(&mut conn, t).await.unwrap();
    }
    let copy = api_token(rival, ada, "copy", Role::Viewer, "h-ci", NOW, NOW + HOUR);
    let err = api_tokens::insert(&mut conn, &copy).await.unwrap_err();
    assert!(is_unique_violation(&err), "{err}");

    let auth = api_tokens::authenticate(&mut conn, "h-ci", NOW).await.unwrap().unwrap();
    assert_eq!((auth.id, auth.org_id, auth.role, auth.last_used_at), (ci.id, org, Role::Admin, None));
    assert!(api_tokens::authenticate(&mut conn, "h-short", NOW + 9).await.unwrap().is_some());
    assert!(api_tokens::authenticate(&mut conn, "h-short", NOW + 10).await.unwrap().is_none(), "expired");
    assert!(api_tokens::authenticate(&mut conn, "unknown", NOW).await.unwrap().is_none());

    let listed: Vec<String> = api_tokens::list(&mut conn, org).await.unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(listed, ["short", "deploy", "ci"]);
    assert!(api_tokens::list(&mut conn, rival).await.unwrap().is_empty());
    let got = api_tokens::get(&mut conn, org, ci.id).await.unwrap().unwrap();
    assert_eq!((got.name.as_str(), got.role, got.prefix.as_str()), ("ci", Role::Admin, "mf_abc"));
    assert_eq!((got.created_by, got.created_at, got.expires_at), (Some(ada.to_string()), NOW, NOW + HOUR));
    assert_eq!((got.last_used_at, got.revoked_at), (None, None));
    assert!(api_tokens::get(&mut conn, rival, ci.id).await.unwrap().is_none());

    api_tokens::touch(&mut conn, ci.id, NOW + 5).await.unwrap();
    assert_eq!(api_tokens::get(&mut conn, org, ci.id).await.unwrap().unwrap().last_used_at, Some(NOW + 5));
    assert_eq!(api_tokens::authenticate(&mut conn, "h-ci", NOW + 6).await.unwrap().unwrap().last_used_at, Some(NOW + 5));

    assert!(!api_tokens::revoke(&mut conn, rival, deploy.id, NOW + 7).await.unwrap());
    assert!(api_tokens::authenticate(&mut conn, "h-deploy", NOW + 7).await.unwrap().is_some());
    assert!(api_tokens::revoke(&mut conn, org, deploy.id, NOW + 7).await.unwrap());
    assert!(!api_tokens::revoke(&mut conn, org, deploy.id, NOW + 8).await.unwrap(), "already revoked");
    assert!(api_tokens::authenticate(&mut conn, "h-deploy", NOW + 8).await.unwrap().is_none(), "revoked");
    assert_eq!(api_tokens::get(&mut conn, org, deploy.id).await.unwrap().unwrap().revoked_at, Some(NOW + 7));
    assert_eq!(api_tokens::creator(&mut conn, org, ci.id).await.unwrap(), Some(ada));
    assert_eq!(api_tokens::creator(&mut conn, rival, ci.id).await.unwrap(), None);
}

async fn api_tokens_follow_their_creators_membership(engine: Engine) {
    let (_db, _store, mut conn) = open(engine).await;
    let (org, other) = (new_org(&mut conn, "Acme").await, new_org(&mut conn, "Other").await);
    let (ada, bob) = (new_user(&mut conn, "ada@example.com").await, new_user(&mut conn, "bob@example.com").await);
    accounts::add_member(&mut conn, org, ada, Role::Admin, NOW).await.unwrap();
    accounts::add_member(&mut conn, org, bob, Role::Admin, NOW).await.unwrap();
    accounts::add_member(&mut conn, other, ada, Role::Owner, NOW).await.unwrap();
    let tokens = [
        api_token(org, ada, "ada-1", Role::Admin, "h-ada-1", NOW, NOW + HOUR),
        api_token(org, ada, "ada-2", Role::Viewer, "h-ada-2", NOW, NOW + HOUR),
        api_token(org, bob, "bob", Role::Admin, "h-bob", NOW, NOW + HOUR),
        api_token(other, ada, "elsewhere", Role::Owner, "h-elsewhere", NOW, NOW + HOUR),
    ];
    for t in &tokens {
        api_tokens::insert(&mut conn, t).await.unwrap();
    }
    assert_eq!(token_role(&mut conn, "h-ada-1").await, Some(Role::Admin));

    // Demoted: capped at the member's role, never above the token's own.
    accounts::set_role(&mut conn, org, ada, Role::Viewer).await.unwrap();
    assert_eq!(token_role(&mut conn, "h-ada-1").await, Some(Role::Viewer));
    accounts::set_role(&mut conn, org, ada, Role::Owner).await.unwrap();
    assert_eq!((token_role(&mut conn, "h-ada-1").await, token_role(&mut conn, "h-ada-2").await), (Some(Role::Admin), Some(Role::Viewer)));

    // Removed: refused even before revocation; revocation takes only that member's tokens here.
    accounts::remove_member(&mut conn, org, ada).await.unwrap();
    assert_eq!(token_role(&mut conn, "h-ada-1").await, None);
    assert_eq!(api_tokens::revoke_created_by(&mut conn, org, ada, NOW + 1).await.unwrap(), 2);
    accounts::add_member(&mut conn, org, ada, Role::Owner, NOW + 2).await.unwrap();
    assert_eq!((token_role(&mut conn, "h-ada-1").await, token_role(&mut conn, "h-ada-2").await), (None, None), "revoked for good");
    assert_eq!((token_role(&mut conn, "h-bob").await, token_role(&mut conn, "h-elsewhere").await), (Some(Role::Admin), Some(Role::Owner)));
}

async fn token_role(conn: &mut Conn, hash: &str) -> Option<Role> {
    api_tokens::authenticate(conn, hash, NOW).await.unwrap().map(|a| a.role)
}

async fn login_attempts_count_per_window_and_ended_windows_are_forgotten(engine: Engine) {
    let (_db, _store, mut conn) = open(engine).await;
    const WINDOW: i64 = 60_000;
    for n in 1..=3 {
        assert_eq!(login_throttle::count_attempt(&mut conn, "account:a", NOW + n, WINDOW).await.unwrap(), (n, NOW + 1));
    }
    login_throttle::uncount_attempt(&mut conn, "account:a", NOW + 1).await.unwrap();
    login_throttle::uncount_attempt(&mut conn, "account:a", NOW).await.unwrap(); // another window: no effect
    assert_eq!(login_throttle::count_attempt(&mut conn, "account:a", NOW + 4, WINDOW).await.unwrap(), (3, NOW + 1));
    assert_eq!(login_throttle::count_attempt(&mut conn, "address:b", NOW + 5, WINDOW).await.unwrap(), (1, NOW + 5));

    // The window ends: the next attempt starts a new one; ended rows are deleted.
    let later = NOW + 1 + WINDOW;
    assert_eq!(login_throttle::count_attempt(&mut conn, "account:a", later, WINDOW).await.unwrap(), (1, later));
    assert_eq!(login_throttle::forget_ended(&mut conn, NOW + 5 + WINDOW, WINDOW).await.unwrap(), 1, "address:b only");
    assert_eq!(login_throttle::count_attempt(&mut conn, "address:b", NOW + 6 + WINDOW, WINDOW).await.unwrap(), (1, NOW + 6 + WINDOW));
}

/// An audit entry whose (UUIDv7) id carries its time, as the service writes them.
fn audit_entry(org: OrgId, at: i64, action: &str) -> AuditEntry {
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, (at / 1000) as u64, (at % 1000) as u32 * 1_000_000);
    AuditEntry {
        id: uuid::Uuid::new_v7(ts),
        org_id: org,
        at,
        actor_kind: "user".into(),
        actor_id: "someone".into(),
        action: action.into(),
        target_kind: "cluster".into(),
        target_id: "c1".into(),
        details: serde_json::json!({ "at": at, "labels": { "env": "prod" } }),
    }
}

async fn audit_log_pages_newest_first(engine: Engine) {
    let (_db, _store, mut conn) = open(engine).await;
    let org = new_org(&mut conn, "Acme").await;
    let rival = new_org(&mut conn, "Rival").await;
    let entries: Vec<AuditEntry> = (0..7).map(|i| audit_entry(org, NOW + i * 1000, &format!("action.{i}"))).collect();
    for e in entries.iter().rev().chain([&audit_entry(rival, NOW + 500, "rival.a"), &audit_entry(rival, NOW + 9000, "rival.b")]) {
        audit::insert(&mut conn, e).await.unwrap();
    }

    let (mut seen, mut before) = (Vec::new(), None);
    loop {
        let page = audit::list(&mut conn, org, before, 3).await.unwrap();
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        seen.extend(page);
    }
    let actions: Vec<&str> = seen.iter().map(|e| e.action.as_str()).collect();
    let want: Vec<String> = (0..7).rev().map(|i| format!("action.{i}")).collect();
    assert_eq!(actions, want);
    let newest = &seen[0];
    let expected = &entries[6];
    assert_eq!((newest.id, newest.org_id, newest.at, &newest.details), (expected.id, org, expected.at, &expected.details));
    let (actor, target) = ((&newest.actor_kind[..], &newest.actor_id[..]), (&newest.target_kind[..], &newest.target_id[..]));
    assert_eq!((actor, target), (("user", "someone"), ("cluster", "c1")));

    let theirs: Vec<String> = audit::list(&mut conn, rival, None, 50).await.unwrap().into_iter().map(|e| e.action).collect();
    assert_eq!(theirs, ["rival.b", "rival.a"]);
}

async fn signing_keys_newest_first(engine: Engine) {
    let (_db, _store, mut conn) = open(engine).await;
    assert!(signing_keys::all(&mut conn).await.unwrap().is_empty());
    for (kid, created_at) in [("k-old", NOW), ("k-new", NOW + HOUR)] {
        let key = signing_keys::SigningKey { kid: kid.into(), private_key_sealed: format!("sealed-{kid}"), public_key: format!("public-{kid}"), created_at };
        signing_keys::insert(&mut conn, &key).await.unwrap();
    }
    let keys = signing_keys::all(&mut conn).await.unwrap();
    let keys: Vec<_> = keys.iter().map(|k| (&k.kid[..], &k.private_key_sealed[..], &k.public_key[..], k.created_at)).collect();
    assert_eq!(keys, [("k-new", "sealed-k-new", "public-k-new", NOW + HOUR), ("k-old", "sealed-k-old", "public-k-old", NOW)]);
}
