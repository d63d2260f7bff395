//! Certificate metadata from PEM (subject, SANs, validity, SHA-256 fingerprint). It is only ever
//! given certificate PEM; a private key must never reach this module or leave the cluster.

use meshfleet_agent_protocol::v1::CertificateInfo;
use meshfleet_pki::inspect::{inspect, San};

/// Every certificate in `pem` up to a malformed PEM section; unparsable certificates are
/// skipped (logged), never a panic.
pub fn describe(role: &str, pem: &[u8]) -> Vec<CertificateInfo> {
    let mut out = Vec::new();
    for der in meshfleet_pki::pem::readable_certs(pem) {
        let Ok(cert) = inspect(&der) else {
            tracing::warn!(role, "skipping an unparsable certificate");
            continue;
        };
        let sans = cert
            .sans
            .into_iter()
            .filter_map(|s| match s {
                San::Uri(name) | San::Dns(name) => Some(name),
                San::Ip(_) => None,
            })
            .collect();
        out.push(CertificateInfo {
            role: role.to_owned(),
            subject: cert.subject,
            sans,
            not_before_unix_ms: cert.not_before_unix * 1000,
            not_after_unix_ms: cert.not_after_unix * 1000,
            sha256_fingerprint: meshfleet_pki::pem::fingerprint(&der),
        });
    }
    out
}
