//! The `meshfleet.identity.v1.Identity` gRPC service: verifies the caller's token, signs its CSR
//! with the current issuer (the identity comes from the token, never from the CSR), and streams
//! the trust bundle. All failures map to `tonic::Status` in `From<Error>`, in one place.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use meshfleet_pki::csr::CsrError;
use meshfleet_pki::mint::{issue_leaf, LeafProfile};
use meshfleet_pki::spiffe::WorkloadId;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::issuer::Pair;
use super::verifier::VerifyError;
use super::Shared;
use crate::identity::pb;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("invalid CSR: {0}")]
    Csr(CsrError),
    #[error("identity not representable: {0}")]
    Identity(meshfleet_pki::Error),
    #[error("signing failed: {0}")]
    Sign(meshfleet_pki::Error),
    #[error("no valid issuer yet")]
    NotReady,
}

impl Error {
    fn metric_label(&self) -> &'static str {
        match self {
            Self::Verify(e) => e.metric_label(),
            Self::Csr(_) => "invalid_csr",
            Self::Identity(_) => "invalid_identity",
            Self::Sign(_) => "sign",
            Self::NotReady => "not_ready",
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match &e {
            Error::Verify(VerifyError::Unauthenticated) => Status::unauthenticated(e.to_string()),
            Error::Verify(VerifyError::Unavailable(_)) => {
                tracing::error!(error = %e, "token verifier unavailable");
                Status::unavailable("token verifier unavailable")
            }
            Error::Csr(_) | Error::Identity(_) => Status::invalid_argument(e.to_string()),
            Error::Sign(_) => {
                tracing::error!(error = %e, "signing failed");
                Status::internal("signing failed")
            }
            Error::NotReady => Status::unavailable(e.to_string()),
        }
    }
}

pub struct IdentityService(pub Arc<Shared>);

impl IdentityService {
    async fn certify(&self, req: pb::CertifyRequest) -> Result<pb::CertifyResponse, Error> {
        let sa = self.0.verifier.verify(&req.token).await?;
        let id = WorkloadId::new(&self.0.config.trust_domain, &sa.namespace, &sa.name).map_err(Error::Identity)?;
        let public_key = meshfleet_pki::csr::check(&req.csr_der).map_err(Error::Csr)?;
        let pair = self.0.pair().ok_or(Error::NotReady)?;
        let wanted = SystemTime::now() + self.0.config.leaf_lifetime();
        // A leaf never outlives the issuer that signed it.
        let issuer_end = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(pair.issuer.info.not_after_unix.max(0) as u64);
        let not_after = wanted.min(issuer_end);
        let leaf = issue_leaf(&pair.issuer.signer, &public_key, &LeafProfile::workload(&id, not_after)).map_err(Error::Sign)?;
        tracing::info!(identity = %id, not_after = meshfleet_pki::unix(not_after), "issued leaf certificate");
        Ok(pb::CertifyResponse {
            leaf_der: leaf.der.to_vec(),
            intermediates_der: pair.issuer.chain.iter().map(|c| c.to_vec()).collect(),
            identity: id.to_string(),
            not_after_unix: meshfleet_pki::unix(not_after),
        })
    }
}

pub fn bundle_message(pair: &Pair) -> pb::TrustBundle {
    pb::TrustBundle {
        anchors_der: pair.bundle.anchors().iter().map(|a| a.to_vec()).collect(),
        version: pair.bundle.version().to_string(),
        issuer_fingerprint: pair.issuer_fingerprint.clone(),
    }
}

type BundleStream = Pin<Box<dyn Stream<Item = Result<pb::TrustBundle, Status>> + Send>>;

#[tonic::async_trait]
impl pb::identity_server::Identity for IdentityService {
    async fn certify(&self, request: Request<pb::CertifyRequest>) -> Result<Response<pb::CertifyResponse>, Status> {
        match IdentityService::certify(self, request.into_inner()).await {
            Ok(resp) => {
                self.0.metrics.issued.inc();
                Ok(Response::new(resp))
            }
            Err(e) => {
                self.0.metrics.refused.with_label_values(&[e.metric_label()]).inc();
                tracing::warn!(error = %e, "certificate request refused");
                Err(e.into())
            }
        }
    }

    type WatchTrustBundleStream = BundleStream;

    async fn watch_trust_bundle(&self, _request: Request<pb::WatchTrustBundleRequest>) -> Result<Response<BundleStream>, Status> {
        // The watch stream yields the current pair first, then each switch; a switch that leaves
        // the message as it was (nothing a proxy acts on changed) is not sent again.
        let mut last = None;
        let stream = tokio_stream::wrappers::WatchStream::new(self.0.subscribe()).filter_map(move |pair| {
            let msg = bundle_message(pair.as_deref()?);
            (last.as_ref() != Some(&msg)).then(|| {
                last = Some(msg.clone());
                Ok(msg)
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
