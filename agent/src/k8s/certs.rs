//! Certificate metadata from PEM (subject, SANs, validity, SHA-256 fingerprint). It is only ever
//! given certificate PEM; a private key must never reach this module or leave the cluster.

use meshfleet_agent_proto::v1::CertificateInfo;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

/// Every certificate in `pem`; unparsable blocks are skipped (logged), never a panic.
pub fn describe(role: &str, pem: &[u8]) -> Vec<CertificateInfo> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let Ok(block) = block else { break };
        if block.label != "CERTIFICATE" {
            continue;
        }
        let Ok(cert) = block.parse_x509() else {
            tracing::warn!(role, "skipping an unparsable certificate");
            continue;
        };
        let sans = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        out.push(CertificateInfo {
            role: role.to_owned(),
            subject: cert.subject().to_string(),
            sans,
            not_before_unix_ms: cert.validity().not_before.timestamp() * 1000,
            not_after_unix_ms: cert.validity().not_after.timestamp() * 1000,
            sha256_fingerprint: hex::encode(Sha256::digest(&block.contents)),
        });
    }
    out
}
