//! Authentication (bearer token -> user, configured by the test) and RBAC authorization from
//! the Role/ClusterRole/(Cluster)RoleBinding objects in the store, as the real API server
//! evaluates them. Every denial is recorded, so a test can assert there were none.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::Value;

use crate::resources::{find, Res};
use crate::store::Store;

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn service_account(namespace: &str, name: &str) -> User {
        User {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{namespace}"), "system:authenticated".into()],
        }
    }

    pub fn anonymous() -> User {
        User { name: "system:anonymous".into(), groups: vec!["system:unauthenticated".into()] }
    }

    pub fn admin() -> User {
        User { name: "admin".into(), groups: vec!["system:masters".into(), "system:authenticated".into()] }
    }
}

/// What a request asks to do, in RBAC terms.
#[derive(Debug, Clone)]
pub struct Attributes {
    pub verb: &'static str,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: String,
    /// Empty for create and for list/watch without a `metadata.name` field selector.
    pub name: String,
}

#[derive(Default)]
pub struct Authz {
    pub enforce: bool,
    tokens: HashMap<String, User>,
    denials: Vec<String>,
}

pub struct Rbac(Mutex<Authz>);

impl Rbac {
    pub fn new(admin_token: &str) -> Rbac {
        let mut a = Authz::default();
        a.tokens.insert(admin_token.to_owned(), User::admin());
        Rbac(Mutex::new(a))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Authz> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_enforce(&self, on: bool) {
        self.lock().enforce = on;
    }

    pub fn add_token(&self, token: &str, user: User) {
        self.lock().tokens.insert(token.to_owned(), user);
    }

    pub fn user(&self, token: &str) -> Option<User> {
        self.lock().tokens.get(token).cloned()
    }

    pub fn denials(&self) -> Vec<String> {
        self.lock().denials.clone()
    }

    /// None: no token needed (enforcement off). Some(None): unauthenticated (401).
    pub fn authenticate(&self, bearer: Option<&str>) -> Option<Option<User>> {
        let a = self.lock();
        if !a.enforce {
            return None;
        }
        Some(bearer.and_then(|t| a.tokens.get(t).cloned()))
    }

    pub fn record_denial(&self, user: &User, attrs: &Attributes) {
        let line = format!(
            "{} {} {}/{}{} ns={:?} name={:?}",
            user.name,
            attrs.verb,
            attrs.group,
            attrs.resource,
            attrs.subresource.as_ref().map(|s| format!("/{s}")).unwrap_or_default(),
            attrs.namespace,
            attrs.name
        );
        tracing::warn!(denied = %line, "fake kube RBAC denial");
        self.lock().denials.push(line);
    }
}

fn strs(v: Option<&Value>) -> Vec<&str> {
    v.and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let any = |list: &[&str], want: &str| list.iter().any(|x| *x == "*" || *x == want);
    let resource = match &a.subresource {
        Some(s) => format!("{}/{s}", a.resource),
        None => a.resource.clone(),
    };
    let names = strs(rule.get("resourceNames"));
    any(&strs(rule.get("verbs")), a.verb)
        && any(&strs(rule.get("apiGroups")), &a.group)
        && any(&strs(rule.get("resources")), &resource)
        && (names.is_empty() || (!a.name.is_empty() && names.contains(&a.name.as_str())))
}

fn subject_is(subject: &Value, user: &User) -> bool {
    let s = |k: &str| subject.get(k).and_then(Value::as_str).unwrap_or("");
    match s("kind") {
        "ServiceAccount" => user.name == format!("system:serviceaccount:{}:{}", s("namespace"), s("name")),
        "User" => user.name == s("name"),
        "Group" => user.groups.iter().any(|g| g == s("name")),
        _ => false,
    }
}

/// RBAC evaluation: a RoleBinding grants its (Cluster)Role's rules in its namespace; a
/// ClusterRoleBinding grants its ClusterRole's rules everywhere. Deny is the default.
pub fn allowed(store: &Store, user: &User, a: &Attributes) -> bool {
    if user.groups.iter().any(|g| g == "system:masters") {
        return true;
    }
    let res = |plural| find("rbac.authorization.k8s.io", "v1", plural).expect("rbac kinds are registered");
    let (roles, cluster_roles): (Res, Res) = (res("roles"), res("clusterroles"));
    let rules_of = |binding: &Value, ns: &str| -> Vec<Value> {
        let kind = binding.pointer("/roleRef/kind").and_then(Value::as_str).unwrap_or("");
        let name = binding.pointer("/roleRef/name").and_then(Value::as_str).unwrap_or("");
        let role = match kind {
            "Role" => store.get(roles, ns, name),
            "ClusterRole" => store.get(cluster_roles, "", name),
            _ => None,
        };
        role.and_then(|r| r.get("rules").and_then(Value::as_array).cloned()).unwrap_or_default()
    };
    let bound = |b: &Value| b.get("subjects").and_then(Value::as_array).is_some_and(|s| s.iter().any(|s| subject_is(s, user)));
    let (crbs, _) = store.list(res("clusterrolebindings"), None);
    if crbs.iter().filter(|b| bound(b)).any(|b| rules_of(b, "").iter().any(|r| rule_allows(r, a))) {
        return true;
    }
    if a.namespace.is_empty() {
        return false;
    }
    let (rbs, _) = store.list(res("rolebindings"), Some(&a.namespace));
    rbs.iter().filter(|b| bound(b)).any(|b| rules_of(b, &a.namespace).iter().any(|r| rule_allows(r, a)))
}
