//! The SSRF guard of outgoing webhooks: a channel may only reach public addresses, checked on
//! the addresses DNS gives at send time (so a name that later resolves inward does not pass)
//! and connected to exactly; redirects are never followed. The `alert_webhook_allow` setting
//! admits private targets (hosts or CIDRs) for self-hosted installs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::Url;

/// Hosts and networks admitted despite the guard (`alert_webhook_allow`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allow {
    hosts: Vec<String>,
    nets: Vec<(IpAddr, u8)>,
}

impl std::str::FromStr for Allow {
    type Err = String;
    /// Comma-separated host names, addresses and CIDRs (`10.0.0.0/8`, `::1/128`).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut allow = Allow::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let (addr, bits) = item.split_once('/').unwrap_or((item, ""));
            match addr.trim_matches(['[', ']']).parse::<IpAddr>() {
                Ok(ip) => {
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    let bits =
                        if bits.is_empty() { max } else { bits.parse().ok().filter(|b| *b <= max).ok_or_else(|| format!("{item:?}: bad prefix length"))? };
                    allow.nets.push((ip, bits));
                }
                Err(_) if bits.is_empty() => allow.hosts.push(item.to_ascii_lowercase()),
                Err(_) => return Err(format!("{item:?} is not an address/prefix")),
            }
        }
        Ok(allow)
    }
}

impl Allow {
    pub fn host(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    pub fn ip(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|(net, bits)| in_net(ip, *net, *bits))
    }
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => bits == 0 || (u32::from(a) ^ u32::from(n)) >> (32 - u32::from(bits)) == 0,
        (IpAddr::V6(a), IpAddr::V6(n)) => bits == 0 || (u128::from(a) ^ u128::from(n)) >> (128 - u32::from(bits)) == 0,
        _ => false,
    }
}

/// Loopback, private, link-local (cloud metadata at 169.254.169.254 included), shared
/// (CGNAT), multicast, unspecified, broadcast and documentation addresses: never a webhook.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => internal_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => internal_v4(v4),
            None => internal_v6(v6),
        },
    }
}

fn internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
        || a >= 240
}

fn internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local, AWS metadata fd00:ec2::254 included
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first == 0x2001 && ip.segments()[1] == 0x0db8) // documentation
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("use https (http only for hosts in alert_webhook_allow)")]
    Scheme,
    #[error("the URL has no host")]
    NoHost,
    #[error("{0} is an internal address (loopback, private, link-local, multicast or metadata)")]
    Internal(IpAddr),
    #[error("the host did not resolve: {0}")]
    Resolve(String),
}

/// Checks what can be checked without DNS, when a channel is created: the scheme, and the
/// host when it is an address.
pub fn check_url(url: &Url, allow: &Allow) -> Result<(), Refused> {
    let host = url.host_str().ok_or(Refused::NoHost)?;
    let literal = host.trim_matches(['[', ']']).parse::<IpAddr>().ok();
    let allowed = allow.host(host) || literal.is_some_and(|ip| allow.ip(ip));
    match url.scheme() {
        "https" => {}
        "http" if allowed => {}
        _ => return Err(Refused::Scheme),
    }
    match literal {
        Some(ip) if is_internal(ip) && !allowed => Err(Refused::Internal(ip)),
        _ => Ok(()),
    }
}

/// Resolves the URL's host and returns the one address to connect to: the first whose every
/// sibling is public (or allowed). Any internal address refuses the whole name, so a name
/// resolving both ways cannot pick its target per connection.
pub async fn resolve(url: &Url, allow: &Allow) -> Result<SocketAddr, Refused> {
    check_url(url, allow)?;
    let host = url.host_str().ok_or(Refused::NoHost)?;
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = match host.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port)).await.map_err(|e| Refused::Resolve(e.to_string()))?.collect(),
    };
    let host_allowed = allow.host(host);
    if let Some(bad) = addrs.iter().find(|a| is_internal(a.ip()) && !host_allowed && !allow.ip(a.ip())) {
        return Err(Refused::Internal(bad.ip()));
    }
    addrs.first().copied().ok_or_else(|| Refused::Resolve("no addresses".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        s.parse().unwrap()
    }

    #[test]
    fn internal_addresses_are_refused_without_the_allow_list() {
        let none = Allow::default();
        for u in [
            "https://127.0.0.1/x",
            "https://169.254.169.254/latest",
            "https://10.1.2.3/",
            "https://[::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://100.64.0.1/",
            "https://[fd00:ec2::254]/",
        ] {
            assert!(matches!(check_url(&url(u), &none), Err(Refused::Internal(_))), "{u}");
        }
        assert_eq!(check_url(&url("http://hooks.example.com/"), &none), Err(Refused::Scheme));
        assert_eq!(check_url(&url("https://hooks.example.com/"), &none), Ok(()));
        assert_eq!(check_url(&url("https://8.8.8.8/"), &none), Ok(()));
    }

    #[test]
    fn the_allow_list_admits_hosts_and_networks() {
        let allow: Allow = "127.0.0.0/8, receiver.internal, ::1".parse().unwrap();
        assert_eq!(check_url(&url("http://127.0.0.1:9000/x"), &allow), Ok(()));
        assert_eq!(check_url(&url("http://[::1]:9000/x"), &allow), Ok(()));
        assert_eq!(check_url(&url("http://receiver.internal/"), &allow), Ok(()));
        assert!(check_url(&url("https://10.0.0.1/"), &allow).is_err());
        assert!("10.0.0.0/40".parse::<Allow>().is_err());
    }

    #[tokio::test]
    async fn names_are_checked_after_resolution() {
        let refused = resolve(&url("https://localhost:9/"), &Allow::default()).await;
        assert!(matches!(refused, Err(Refused::Internal(_))), "{refused:?}");
    }
}
