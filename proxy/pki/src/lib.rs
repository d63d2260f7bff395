//! X.509 and SPIFFE for Meshfleet, in one place: checking uploaded anchors ([`anchor`]), minting anchors, issuers and leaves ([`mint`]),
//! checking CSRs ([`csr`]), workload SPIFFE ids ([`spiffe`]), verifying chains exactly as proxies
//! verify peers ([`verify`]), reading what a certificate says and when it expires ([`inspect`]),
//! PEM in and out ([`pem`]), and the names of the mesh's Kubernetes objects ([`names`]).
//!
//! It belongs to the open-source mesh: the service and the agent depend on it, never the other
//! way round, so what the service signs is checked by the same code the controller and proxies
//! run. Nothing here writes a key to disk, and malformed input is an [`Error`], never a panic.

pub mod anchor;
pub mod csr;
pub mod inspect;
pub mod mint;
pub mod names;
pub mod pem;
#[cfg(feature = "rbac")]
pub mod rbac;
pub mod spiffe;
pub mod verify;

use std::time::{SystemTime, UNIX_EPOCH};

// The key and certificate types of the API, so dependents need not depend on rcgen or
// rustls-pki-types themselves (and cannot drift to another version of them).
pub use rcgen::{Issuer, KeyPair, PublicKeyData};
pub use rustls_pki_types::CertificateDer;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no PEM certificate found")]
    NoCertificate,
    #[error("invalid PEM: {0}")]
    Pem(String),
    #[error("invalid certificate: {0}")]
    X509(String),
    #[error("invalid private key: {0}")]
    Key(String),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid workload identity {0:?}")]
    Identity(String),
    #[error("trust bundle is empty")]
    EmptyBundle,
    #[error("trust anchor rejected: {0}")]
    Anchor(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Seconds since the Unix epoch (0 before it): the unit certificates carry.
pub fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
