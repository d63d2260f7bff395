//! The values an agent needs to register, as the install manifest carries them.

use secrecy::SecretString;
use serde::Deserialize;

use super::Error;

/// What an agent needs to register, from the `meshfleet-agent-bootstrap` Secret.
pub struct Bootstrap {
    pub token: SecretString,
    pub gateway_address: String,
    pub ca_pem: String,
}

/// Reads MESHFLEET_BOOTSTRAP_TOKEN, MESHFLEET_GATEWAY_ADDRESS and MESHFLEET_GATEWAY_CA from the
/// Secret `meshfleet-agent-bootstrap` (stringData) of a multi-document manifest.
pub fn parse_bootstrap(yaml: &str) -> Result<Bootstrap, Error> {
    let bad = |m: &str| Error::Manifest(m.to_owned());
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = serde_yaml_ng::Value::deserialize(doc).map_err(|e| Error::Manifest(e.to_string()))?;
        let is_secret = value["kind"].as_str() == Some("Secret") && value["metadata"]["name"].as_str() == Some("meshfleet-agent-bootstrap");
        if !is_secret {
            continue;
        }
        let data = &value["stringData"];
        let get = |k: &str| data[k].as_str().map(str::to_owned).ok_or_else(|| bad(&format!("the bootstrap Secret has no stringData.{k}")));
        return Ok(Bootstrap {
            token: get("MESHFLEET_BOOTSTRAP_TOKEN")?.into(),
            gateway_address: get("MESHFLEET_GATEWAY_ADDRESS")?,
            ca_pem: get("MESHFLEET_GATEWAY_CA")?,
        });
    }
    Err(bad("no Secret meshfleet-agent-bootstrap in the manifest"))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn bootstrap_values_come_from_the_secret() {
        let yaml = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: meshfleet-system\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: meshfleet-agent-bootstrap\n  namespace: meshfleet-system\nstringData:\n  MESHFLEET_BOOTSTRAP_TOKEN: mfb_secret\n  MESHFLEET_GATEWAY_ADDRESS: https://127.0.0.1:8443\n  MESHFLEET_GATEWAY_CA: |\n    -----BEGIN CERTIFICATE-----\n    MIIB\n    -----END CERTIFICATE-----\n";
        let b = parse_bootstrap(yaml).unwrap();
        assert_eq!(b.token.expose_secret(), "mfb_secret");
        assert_eq!(b.gateway_address, "https://127.0.0.1:8443");
        assert!(b.ca_pem.starts_with("-----BEGIN CERTIFICATE-----\nMIIB\n"));
        assert!(matches!(parse_bootstrap("kind: Namespace\n"), Err(Error::Manifest(_))));
    }
}
