//! Kubernetes proof of identity: the pod's projected service-account token, checked with a
//! TokenReview against the API server. Only the API server's answer counts; the token is never
//! decoded or trusted locally.

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::{Api, Client};

use super::verifier::{ServiceAccount, TokenVerifier, VerifyError, VerifyFuture};

pub struct TokenReviewVerifier {
    api: Api<TokenReview>,
    audiences: Vec<String>,
}

impl TokenReviewVerifier {
    /// Uses the in-cluster configuration (or KUBECONFIG outside a cluster).
    pub async fn from_env(audiences: Vec<String>) -> Result<Self, kube::Error> {
        Ok(Self::new(Client::try_default().await?, audiences))
    }

    pub fn new(client: Client, audiences: Vec<String>) -> Self {
        Self { api: Api::all(client), audiences }
    }

    async fn review(&self, token: &str) -> Result<ServiceAccount, VerifyError> {
        if token.is_empty() {
            return Err(VerifyError::Unauthenticated);
        }
        let review = TokenReview {
            spec: TokenReviewSpec { token: Some(token.to_string()), audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()) },
            ..Default::default()
        };
        let answer = self.api.create(&PostParams::default(), &review).await.map_err(|e| VerifyError::Unavailable(e.to_string()))?;
        evaluate(answer.status.as_ref(), &self.audiences)
    }
}

impl TokenVerifier for TokenReviewVerifier {
    fn verify<'a>(&'a self, token: &'a str) -> VerifyFuture<'a> {
        Box::pin(self.review(token))
    }
}

/// Decides from a TokenReview status: authenticated, for one of our audiences (when we asked
/// for some), and a service-account user `system:serviceaccount:<ns>:<name>`.
pub fn evaluate(status: Option<&TokenReviewStatus>, audiences: &[String]) -> Result<ServiceAccount, VerifyError> {
    let status = status.ok_or(VerifyError::Unauthenticated)?;
    if status.authenticated != Some(true) {
        return Err(VerifyError::Unauthenticated);
    }
    if !audiences.is_empty() {
        let granted = status.audiences.as_deref().unwrap_or_default();
        if !granted.iter().any(|a| audiences.contains(a)) {
            return Err(VerifyError::Unauthenticated);
        }
    }
    let username = status.user.as_ref().and_then(|u| u.username.as_deref()).ok_or(VerifyError::Unauthenticated)?;
    parse_service_account(username).ok_or(VerifyError::Unauthenticated)
}

fn parse_service_account(username: &str) -> Option<ServiceAccount> {
    let rest = username.strip_prefix("system:serviceaccount:")?;
    let (namespace, name) = rest.split_once(':')?;
    if namespace.is_empty() || name.is_empty() || name.contains(':') {
        return None;
    }
    Some(ServiceAccount { namespace: namespace.into(), name: name.into() })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn status(auth: bool, user: &str, auds: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(auth),
            audiences: Some(auds.iter().map(|s| s.to_string()).collect()),
            user: Some(UserInfo { username: Some(user.into()), ..Default::default() }),
            ..Default::default()
        }
    }

    #[test]
    fn authenticated_service_account_maps_to_identity() {
        let aud = vec!["meshfleet-identity".to_string()];
        let sa = evaluate(Some(&status(true, "system:serviceaccount:web:frontend", &["meshfleet-identity"])), &aud).unwrap();
        assert_eq!(sa, ServiceAccount { namespace: "web".into(), name: "frontend".into() });
    }

    #[test]
    fn unauthenticated_wrong_audience_or_user_is_refused() {
        let aud = vec!["meshfleet-identity".to_string()];
        for s in [
            status(false, "system:serviceaccount:web:frontend", &["meshfleet-identity"]),
            status(true, "system:serviceaccount:web:frontend", &["other"]),
            status(true, "jane@example.com", &["meshfleet-identity"]),
            status(true, "system:serviceaccount:web", &["meshfleet-identity"]),
        ] {
            assert!(evaluate(Some(&s), &aud).is_err());
        }
        assert!(evaluate(None, &aud).is_err());
    }

    #[tokio::test]
    #[ignore = "needs a real Kubernetes API server and MESHFLEET_TEST_SA_TOKEN; none can run on these machines"]
    async fn real_cluster_token_review() {
        let token = std::env::var("MESHFLEET_TEST_SA_TOKEN").expect("MESHFLEET_TEST_SA_TOKEN");
        let v = TokenReviewVerifier::from_env(vec![]).await.expect("kube client");
        v.verify(&token).await.expect("token accepted");
    }
}
