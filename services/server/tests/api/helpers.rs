//! The server's tests use the shared TestApp of meshfleet-test-support (the end-to-end tests
//! in tests/ use it too); what only these tests need is here.

use reqwest::StatusCode;
use serde_json::{json, Value};

pub use meshfleet_test_support::app::*;

/// Unix milliseconds as the API writes times (RFC 3339, UTC).
pub fn rfc3339(ms: i64) -> String {
    serde_json::to_value(chrono::DateTime::from_timestamp_millis(ms).unwrap()).unwrap().as_str().unwrap().to_owned()
}

/// Asserts a problem+json body with the given type (and field, when given).
pub fn assert_problem(status: StatusCode, body: &Value, want_status: u16, want_type: &str, want_field: Option<&str>) {
    assert_eq!(status.as_u16(), want_status, "{body}");
    assert_eq!(body["type"], format!("/problems/{want_type}"), "{body}");
    assert_eq!(body["status"], want_status, "{body}");
    assert!(body["title"].is_string(), "{body}");
    if let Some(field) = want_field {
        let fields: Vec<&str> = body["errors"].as_array().into_iter().flatten().filter_map(|e| e["field"].as_str()).collect();
        assert!(fields.contains(&field), "field {field} not named in {body}");
    }
}

/// A small HTTP client for a server process.
pub struct Api {
    pub base: String,
    pub token: String,
    pub http: reqwest::Client,
}

impl Api {
    pub async fn signup(base: &str, email: &str) -> Api {
        let http = reqwest::Client::new();
        let body = json!({ "email": email, "password": PASSWORD, "organization": "Acme" });
        let resp = http.post(format!("{base}/api/v1/signup")).json(&body).send().await.unwrap();
        assert!(resp.status().is_success());
        Api::login(base, email).await
    }

    pub async fn login(base: &str, email: &str) -> Api {
        let http = reqwest::Client::new();
        let resp: Value =
            http.post(format!("{base}/api/v1/login")).json(&json!({ "email": email, "password": PASSWORD })).send().await.unwrap().json().await.unwrap();
        Api { base: base.to_owned(), token: resp["access_token"].as_str().unwrap().to_owned(), http }
    }

    pub async fn get(&self, path: &str) -> Value {
        self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.token).send().await.unwrap().json().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let resp = self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.token).json(&body).send().await.unwrap();
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.json().await.unwrap()
    }
}
