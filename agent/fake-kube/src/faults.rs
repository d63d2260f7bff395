//! Fault injection for tests: answer the next matching request(s) with a status code (410, 409,
//! 500 ...) instead of serving it. A 410 on a watch is streamed as an ERROR event, as the real
//! API server does for an expired resourceVersion.

use std::sync::Mutex;

#[derive(Debug, Clone)]
pub struct Fault {
    /// RBAC verb: get, list, watch, create, update, patch, delete; None for any.
    pub verb: Option<String>,
    /// Resource plural, e.g. "pods"; None for any.
    pub resource: Option<String>,
    pub status: u16,
    /// How many requests get it.
    pub times: usize,
}

impl Fault {
    pub fn once(verb: &str, resource: &str, status: u16) -> Fault {
        Fault { verb: Some(verb.into()), resource: Some(resource.into()), status, times: 1 }
    }
}

#[derive(Default)]
pub struct Faults {
    rules: Mutex<Vec<Fault>>,
    fired: Mutex<Vec<(String, String, u16)>>,
}

impl Faults {
    pub fn add(&self, f: Fault) {
        self.rules.lock().unwrap_or_else(|e| e.into_inner()).push(f);
    }

    pub fn take(&self, verb: &str, resource: &str) -> Option<u16> {
        let mut rules = self.rules.lock().unwrap_or_else(|e| e.into_inner());
        let i = rules.iter().position(|f| f.verb.as_deref().is_none_or(|v| v == verb) && f.resource.as_deref().is_none_or(|r| r == resource))?;
        let status = rules[i].status;
        rules[i].times = rules[i].times.saturating_sub(1);
        if rules[i].times == 0 {
            rules.remove(i);
        }
        self.fired.lock().unwrap_or_else(|e| e.into_inner()).push((verb.into(), resource.into(), status));
        Some(status)
    }

    /// (verb, resource, status) of every fault served so far.
    pub fn fired(&self) -> Vec<(String, String, u16)> {
        self.fired.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
