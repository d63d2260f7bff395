//! Where the issuer and trust bundle come from: files polled on disk, or a Secret and a
//! ConfigMap watched through the Kubernetes API. Sources only read and offer what they read to
//! the switch in `reload`; they never validate or switch themselves.

pub(super) mod files;
pub(super) mod kubernetes;

/// `--issuer-source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IssuerSource {
    /// `--issuer-cert`, `--issuer-key` and `--trust-bundle`, re-read every `--reload-interval-ms`.
    File,
    /// The Secret `--issuer-secret` and the ConfigMap `--trust-bundle-configmap` in `--namespace`, watched.
    Kubernetes,
}
