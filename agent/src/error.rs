//! The library's one error type.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid gateway url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("could not connect to the gateway: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The gateway answered with a gRPC status (e.g. PERMISSION_DENIED for a deleted cluster).
    #[error("gateway said {:?}: {}", .0.code(), .0.message())]
    Status(Box<tonic::Status>),
    #[error("key or certificate request: {0}")]
    Crypto(#[from] meshfleet_pki::Error),
    #[error("the gateway sent an unusable certificate: {0}")]
    BadCertificate(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not an identity file: {source}")]
    IdentityFormat { path: PathBuf, source: serde_json::Error },
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Status(Box::new(status))
    }
}

impl Error {
    /// The gRPC status code, when the gateway answered with one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}
