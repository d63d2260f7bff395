//! Label selectors (`a=b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`) and field selectors
//! (`path=value`, `path!=value` on any dotted JSON path, e.g. `metadata.name`, `status.phase`),
//! and structured `LabelSelector`s (`matchLabels`, `matchExpressions`) as webhook configurations
//! carry them. Malformed selectors are an error (400), never a panic.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selector {
    labels: Vec<Req>,
    fields: Vec<Req>,
}

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out.into_iter().map(str::trim).filter(|p| !p.is_empty()).collect()
}

fn set(s: &str) -> Result<Vec<String>, String> {
    let inner = s.trim().strip_prefix('(').and_then(|s| s.strip_suffix(')')).ok_or_else(|| format!("expected a (set) in {s:?}"))?;
    Ok(inner.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect())
}

fn parse_req(p: &str) -> Result<Req, String> {
    let valid = |k: &str| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
    let req = if let Some((k, v)) = p.split_once("!=") {
        Req::Ne(k.trim().into(), v.trim().into())
    } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
        Req::Eq(k.trim().into(), v.trim().into())
    } else if let Some((k, v)) = p.split_once(" notin ") {
        Req::NotIn(k.trim().into(), set(v)?)
    } else if let Some((k, v)) = p.split_once(" in ") {
        Req::In(k.trim().into(), set(v)?)
    } else if let Some(k) = p.strip_prefix('!') {
        Req::NotExists(k.trim().into())
    } else {
        Req::Exists(p.trim().into())
    };
    let key = match &req {
        Req::Eq(k, _) | Req::Ne(k, _) | Req::In(k, _) | Req::NotIn(k, _) | Req::Exists(k) | Req::NotExists(k) => k,
    };
    if valid(key) {
        Ok(req)
    } else {
        Err(format!("invalid selector requirement {p:?}"))
    }
}

fn matches(req: &Req, get: impl Fn(&str) -> Option<String>) -> bool {
    match req {
        Req::Eq(k, v) => get(k).as_deref() == Some(v),
        Req::Ne(k, v) => get(k).as_deref() != Some(v),
        Req::In(k, vs) => get(k).is_some_and(|x| vs.contains(&x)),
        Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(&x)),
        Req::Exists(k) => get(k).is_some(),
        Req::NotExists(k) => get(k).is_none(),
    }
}

impl Selector {
    pub fn parse(label: Option<&str>, field: Option<&str>) -> Result<Selector, String> {
        let labels = split_top(label.unwrap_or("")).into_iter().map(parse_req).collect::<Result<_, _>>()?;
        let fields: Vec<Req> = split_top(field.unwrap_or("")).into_iter().map(parse_req).collect::<Result<_, _>>()?;
        if fields.iter().any(|f| !matches!(f, Req::Eq(..) | Req::Ne(..))) {
            return Err("field selectors support only = and !=".into());
        }
        Ok(Selector { labels, fields })
    }

    /// A structured label selector: every `matchLabels` pair and every `matchExpressions`
    /// requirement must hold; an empty selector matches everything.
    pub fn from_label_selector(selector: &LabelSelector) -> Result<Selector, String> {
        let mut labels: Vec<Req> = selector.match_labels.iter().flatten().map(|(k, v)| Req::Eq(k.clone(), v.clone())).collect();
        for e in selector.match_expressions.iter().flatten() {
            let (key, values) = (e.key.clone(), e.values.clone().unwrap_or_default());
            labels.push(match (e.operator.as_str(), values.is_empty()) {
                ("In", false) => Req::In(key, values),
                ("NotIn", false) => Req::NotIn(key, values),
                ("Exists", true) => Req::Exists(key),
                ("DoesNotExist", true) => Req::NotExists(key),
                (op @ ("In" | "NotIn"), true) => return Err(format!("{op} on {key:?} needs values")),
                (op @ ("Exists" | "DoesNotExist"), false) => return Err(format!("{op} on {key:?} takes no values")),
                (op, _) => return Err(format!("{op:?} is not a valid label selector operator")),
            });
        }
        Ok(Selector { labels, fields: Vec::new() })
    }

    /// The name a list/watch is restricted to by `metadata.name=`, which RBAC treats as the
    /// request's resource name (as the real API server does).
    pub fn field_name(&self) -> Option<&str> {
        self.fields.iter().find_map(|f| match f {
            Req::Eq(k, v) if k == "metadata.name" => Some(v.as_str()),
            _ => None,
        })
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str).map(str::to_owned);
        let field = |path: &str| {
            let mut v = obj;
            for part in path.split('.') {
                v = v.get(part)?;
            }
            Some(match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        };
        // An absent field compares as "" (so `spec.nodeName=` matches unscheduled pods).
        let field_or_empty = |p: &str| Some(field(p).unwrap_or_default());
        self.labels.iter().all(|r| matches(r, label)) && self.fields.iter().all(|r| matches(r, field_or_empty))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_and_field_selectors() {
        let pod = json!({"metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web", "tier": "front"}}, "status": {"phase": "Running"}});
        let ok = |l: &str, f: &str| Selector::parse(Some(l), Some(f)).unwrap().matches(&pod);
        assert!(ok("app=web,tier in (front, back)", "metadata.name=web-1,status.phase!=Pending"));
        assert!(ok("!missing,app", ""));
        assert!(!ok("app notin (web)", ""));
        assert!(!ok("", "metadata.namespace=other"));
        assert!(Selector::parse(Some("a in x"), None).is_err());
        assert!(Selector::parse(Some("=x"), None).is_err());
        assert_eq!(Selector::parse(None, Some("metadata.name=x")).unwrap().field_name(), Some("x"));
    }

    #[test]
    fn structured_label_selectors() {
        let pod = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        let sel = |v: Value| Selector::from_label_selector(&serde_json::from_value(v).unwrap());
        let ok = |v: Value| sel(v).unwrap().matches(&pod);
        assert!(ok(json!({})));
        assert!(ok(json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "back"]}]})));
        assert!(ok(json!({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["prod"]}, {"key": "env", "operator": "DoesNotExist"}]})));
        assert!(!ok(json!({"matchLabels": {"app": "api"}})));
        assert!(!ok(json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]})));
        assert!(!ok(json!({"matchExpressions": [{"key": "env", "operator": "Exists"}]})));
        for bad in [
            json!({"key": "a", "operator": "In"}),
            json!({"key": "a", "operator": "Exists", "values": ["x"]}),
            json!({"key": "a", "operator": "Gt", "values": ["1"]}),
        ] {
            assert!(sel(json!({"matchExpressions": [bad]})).is_err());
        }
    }
}
