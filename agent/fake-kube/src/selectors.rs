//! Label selectors (`a=b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`) and field selectors
//! (`path=value`, `path!=value` on any dotted JSON path, e.g. `metadata.name`, `status.phase`).
//! Malformed selectors are an error (400), never a panic.

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
}
