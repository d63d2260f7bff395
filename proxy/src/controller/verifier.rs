//! Proof of workload identity: a token in, a Kubernetes service account out. The trait keeps the
//! file verifier (local runs, tests) and the TokenReview verifier (clusters) on one code path.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct ServiceAccount {
    pub namespace: String,
    #[serde(rename = "serviceAccount")]
    pub name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("token not recognised")]
    Unauthenticated,
    #[error("token verifier unavailable: {0}")]
    Unavailable(String),
}

impl VerifyError {
    /// Short stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::Unavailable(_) => "verifier_unavailable",
        }
    }
}

pub type VerifyFuture<'a> = Pin<Box<dyn Future<Output = Result<ServiceAccount, VerifyError>> + Send + 'a>>;

pub trait TokenVerifier: Send + Sync + 'static {
    fn verify<'a>(&'a self, token: &'a str) -> VerifyFuture<'a>;
}

/// Tokens mapped to service accounts in a JSON file:
/// `{"tokens": {"<token>": {"namespace": "web", "serviceAccount": "frontend"}}}`.
/// The file is read on every call, so edits apply at once without a restart.
pub struct FileVerifier {
    path: PathBuf,
}

#[derive(serde::Deserialize)]
struct TokensFile {
    tokens: HashMap<String, ServiceAccount>,
}

impl FileVerifier {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    async fn lookup(&self, token: &str) -> Result<ServiceAccount, VerifyError> {
        let bytes = tokio::fs::read(&self.path).await.map_err(|e| VerifyError::Unavailable(format!("{}: {e}", self.path.display())))?;
        let file: TokensFile = serde_json::from_slice(&bytes).map_err(|e| VerifyError::Unavailable(format!("{}: {e}", self.path.display())))?;
        // An empty token must never match, even if the file maps one.
        if token.is_empty() {
            return Err(VerifyError::Unauthenticated);
        }
        file.tokens.get(token).cloned().ok_or(VerifyError::Unauthenticated)
    }
}

impl TokenVerifier for FileVerifier {
    fn verify<'a>(&'a self, token: &'a str) -> VerifyFuture<'a> {
        Box::pin(self.lookup(token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_verifier_maps_known_tokens_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        std::fs::write(&path, r#"{"tokens":{"t1":{"namespace":"web","serviceAccount":"frontend"},"":{"namespace":"x","serviceAccount":"y"}}}"#).unwrap();
        let v = FileVerifier::new(path.clone());
        assert_eq!(v.verify("t1").await.unwrap(), ServiceAccount { namespace: "web".into(), name: "frontend".into() });
        assert!(matches!(v.verify("nope").await, Err(VerifyError::Unauthenticated)));
        assert!(matches!(v.verify("").await, Err(VerifyError::Unauthenticated)));
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(v.verify("t1").await, Err(VerifyError::Unavailable(_))));
    }
}
