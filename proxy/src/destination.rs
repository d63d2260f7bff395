//! The `meshfleet.destination.v1` protocol: generated types and the one parser of a `Resolve`
//! target, shared by the controller (which answers it) and the proxy (which checks its
//! `--outbound` targets with it before asking).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

pub mod pb {
    tonic::include_proto!("meshfleet.destination.v1");
}

/// What a proxy may resolve: a Service by name and port, or an IP (cluster IP or pod IP) and port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    Service { name: String, namespace: String, port: u16 },
    Addr(SocketAddr),
}

/// A DNS-1123 label, as Service and namespace names are.
fn label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty() && b.len() <= 63 && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-') && b[0] != b'-' && b[b.len() - 1] != b'-'
}

impl FromStr for Target {
    type Err = String;

    /// `name.namespace[.svc[.cluster.local]]:port` or `ip:port` (`[v6]:port`).
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(addr) = s.parse::<SocketAddr>() {
            return Ok(Target::Addr(addr));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| format!("{s:?}: expected HOST:PORT"))?;
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| format!("{s:?}: invalid port"))?;
        if host.parse::<IpAddr>().is_ok() {
            return Err(format!("{s:?}: an IPv6 address needs brackets"));
        }
        let host = host.trim_end_matches('.');
        let short = host.strip_suffix(".svc.cluster.local").or_else(|| host.strip_suffix(".svc")).unwrap_or(host);
        match short.split('.').collect::<Vec<_>>()[..] {
            [name, namespace] if label(name) && label(namespace) => Ok(Target::Service { name: name.into(), namespace: namespace.into(), port }),
            _ => Err(format!("{s:?}: expected a Service name (name.namespace[.svc.cluster.local]) or an IP")),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Service { name, namespace, port } => write!(f, "{name}.{namespace}.svc.cluster.local:{port}"),
            Target::Addr(a) => write!(f, "{a}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_in_every_service_form_and_as_addresses() {
        let web = Target::Service { name: "web".into(), namespace: "apps".into(), port: 80 };
        for s in ["web.apps.svc.cluster.local:80", "web.apps.svc:80", "web.apps:80", "web.apps.svc.cluster.local.:80"] {
            assert_eq!(s.parse::<Target>(), Ok(web.clone()), "{s}");
        }
        assert_eq!(web.to_string().parse::<Target>(), Ok(web));
        assert_eq!("127.254.0.1:80".parse::<Target>(), Ok(Target::Addr("127.254.0.1:80".parse().unwrap())));
        assert_eq!("[::1]:80".parse::<Target>(), Ok(Target::Addr("[::1]:80".parse().unwrap())));
        for bad in [
            "",
            "web",
            "web.apps",
            "web.apps:0",
            "web.apps:99999",
            "web:80",
            "a.b.c:80",
            "Web.apps:80",
            "-web.apps:80",
            "web..apps:80",
            "::1:80",
            "web.apps:8o",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad:?} parsed");
        }
    }
}
