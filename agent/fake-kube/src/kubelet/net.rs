//! The pod network of one kubelet, as a routed CNI and kube-proxy would make it: a host link
//! holding the gateway address 10.P.Q.1, a network namespace per pod with a veth pair and the
//! pod's /32 routed to it from the host, a Service range 10.(P+64).Q.0/24, and a nat chain of
//! DNAT rules from cluster IPs to endpoints. P.Q is picked at random per instance (and
//! retried if taken), so parallel test processes get separate networks.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

use crate::endpoints::SERVICE_NAME_LABEL;
use crate::store::{name_of, namespace_of};

pub(crate) struct Net {
    /// `mfkXXXX`: names the gateway link, the namespaces, the veths and the nat chain.
    tag: String,
    pub pods: [u8; 3],
    pub services: [u8; 3],
    /// Pod files (volumes, /etc/hosts), one directory per pod.
    pub dir: PathBuf,
    used: BTreeSet<u8>,
    removed: bool,
}

fn run(args: &[&str]) -> std::io::Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Turns a sysctl on, unless it is (so a read-only /proc/sys that already allows it is fine).
fn sysctl(path: &str) -> std::io::Result<()> {
    if std::fs::read_to_string(path)?.trim() == "1" {
        return Ok(());
    }
    std::fs::write(path, "1").map_err(|e| std::io::Error::other(format!("{path}: {e}")))
}

/// `prefix` followed by `rest`, run.
fn run_rule(prefix: &[&str], rest: &[String]) -> std::io::Result<String> {
    run(&prefix.iter().copied().chain(rest.iter().map(String::as_str)).collect::<Vec<_>>())
}

impl Net {
    pub fn create() -> std::io::Result<Net> {
        let mut last = None;
        for _ in 0..8 {
            let k = rand::random::<u16>() % (64 * 256);
            let tag = format!("mfk{k:04x}");
            let (p, q) = (64 + (k >> 8) as u8, (k & 0xff) as u8);
            // Ranges this host already routes (another network, or a crashed instance's) are left alone.
            let used = |[a, b, c]: [u8; 3]| {
                run(&["ip", "-4", "route", "show", "table", "all", "root", &format!("{a}.{b}.{c}.0/24")]).map_or(true, |r| !r.trim().is_empty())
            };
            if used([10, p, q]) || used([10, p + 64, q]) {
                continue;
            }
            // Taken by another instance: its gateway link exists. A veth pair stands in for a
            // dummy link (not every kernel has the dummy module).
            if let Err(e) = run(&["ip", "link", "add", &tag, "type", "veth", "peer", "name", &format!("{tag}g")]) {
                last = Some(e);
                continue;
            }
            let dir = std::env::temp_dir().join(format!("meshfleet-kubelet-{tag}"));
            let net = Net { tag, pods: [10, p, q], services: [10, p + 64, q], dir, used: BTreeSet::new(), removed: false };
            net.setup().inspect_err(|_| net.teardown())?;
            return Ok(net);
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no free pod network")))
    }

    fn setup(&self) -> std::io::Result<()> {
        let (tag, chain) = (self.tag.as_str(), self.chain());
        std::fs::create_dir_all(&self.dir)?;
        run(&["ip", "addr", "add", &format!("{}/32", self.gateway()), "dev", tag])?;
        run(&["ip", "link", "set", tag, "up"])?;
        // Pods' packets cross the host between their veths (left on: other users may need it).
        sysctl("/proc/sys/net/ipv4/ip_forward")?;
        run(&["iptables", "-t", "nat", "-N", &chain])?;
        for rule in self.jumps() {
            run_rule(&["iptables", "-A"], &rule)?;
        }
        Ok(())
    }

    /// The rules that send traffic into this network's chains: pods' and the host's traffic to
    /// cluster IPs to the DNAT chain, and forwarding for the pod range (hosts whose FORWARD
    /// policy is DROP, as Docker leaves it, would drop it otherwise).
    fn jumps(&self) -> Vec<Vec<String>> {
        let (pods, services, chain) = (self.cidr(self.pods), self.cidr(self.services), self.chain());
        let rule = |s: &str| s.split(' ').map(str::to_owned).collect();
        vec![
            rule(&format!("PREROUTING -t nat -d {services} -j {chain}")),
            rule(&format!("OUTPUT -t nat -d {services} -j {chain}")),
            rule(&format!("FORWARD -s {pods} -j ACCEPT")),
            rule(&format!("FORWARD -d {pods} -j ACCEPT")),
        ]
    }

    fn chain(&self) -> String {
        format!("{}-SERVICES", self.tag.to_uppercase())
    }

    fn cidr(&self, [a, b, c]: [u8; 3]) -> String {
        format!("{a}.{b}.{c}.0/24")
    }

    pub fn gateway(&self) -> Ipv4Addr {
        let [a, b, c] = self.pods;
        Ipv4Addr::new(a, b, c, 1)
    }

    /// A network namespace with the next free pod IP; returns its name and the IP.
    pub fn add_pod(&mut self) -> std::io::Result<(String, Ipv4Addr)> {
        let n = (2..=254u8).find(|n| !self.used.contains(n)).ok_or_else(|| std::io::Error::other("the pod range is full"))?;
        let [a, b, c] = self.pods;
        let ip = Ipv4Addr::new(a, b, c, n);
        let (netns, host, peer) = (format!("{}-{n}", self.tag), format!("{}h{n}", self.tag), format!("{}p{n}", self.tag));
        let gw = self.gateway().to_string();
        let steps: [&[&str]; 11] = [
            &["ip", "netns", "add", &netns],
            &["ip", "link", "add", &host, "type", "veth", "peer", "name", &peer],
            &["ip", "link", "set", &peer, "netns", &netns],
            &["ip", "-n", &netns, "link", "set", &peer, "name", "eth0"],
            &["ip", "-n", &netns, "addr", "add", &format!("{ip}/32"), "dev", "eth0"],
            &["ip", "-n", &netns, "link", "set", "eth0", "up"],
            &["ip", "-n", &netns, "link", "set", "lo", "up"],
            &["ip", "-n", &netns, "route", "add", &gw, "dev", "eth0"],
            &["ip", "-n", &netns, "route", "add", "default", "via", &gw],
            &["ip", "link", "set", &host, "up"],
            &["ip", "route", "add", &format!("{ip}/32"), "dev", &host, "src", &gw],
        ];
        self.used.insert(n);
        // The host answers the pod's ARP for the gateway on the veth.
        let done = steps.into_iter().try_for_each(|step| run(step).map(drop)).and_then(|()| sysctl(&format!("/proc/sys/net/ipv4/conf/{host}/proxy_arp")));
        if let Err(e) = done {
            self.remove_pod(&netns, ip);
            let _ = run(&["ip", "link", "del", &host]);
            return Err(e);
        }
        Ok((netns, ip))
    }

    /// Deleting the namespace deletes its veth, whose peer and route go with it.
    pub fn remove_pod(&mut self, netns: &str, ip: Ipv4Addr) {
        if let Err(e) = run(&["ip", "netns", "del", netns]) {
            tracing::warn!("removing the pod network: {e}");
        }
        self.used.remove(&ip.octets()[3]);
    }

    /// Replaces the DNAT chain's rules.
    pub fn set_service_rules(&self, rules: &[Vec<String>]) -> std::io::Result<()> {
        let chain = self.chain();
        run(&["iptables", "-t", "nat", "-F", &chain])?;
        for rule in rules {
            run_rule(&["iptables", "-t", "nat", "-A", &chain], rule)?;
        }
        Ok(())
    }

    fn teardown(&self) {
        for rule in self.jumps() {
            let _ = run_rule(&["iptables", "-D"], &rule);
        }
        let chain = self.chain();
        let _ = run(&["iptables", "-t", "nat", "-F", &chain]);
        let _ = run(&["iptables", "-t", "nat", "-X", &chain]);
        let _ = run(&["ip", "link", "del", &self.tag]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }

    /// Removes the rules, the chain, the gateway link and the pod files (pods must be gone).
    pub fn remove(&mut self) {
        if !self.removed {
            self.removed = true;
            self.teardown();
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove();
    }
}

/// What the Services make of a pod's /etc/hosts (a line per cluster IP) and of the DNAT chain
/// (rules from each cluster IP and port to the ready endpoints of the slices' same-named port).
pub(crate) fn service_view(services: &[Value], slices: &[Value]) -> (String, Vec<Vec<String>>) {
    let mut hosts = String::new();
    let mut rules = Vec::new();
    for svc in services {
        let Some(ip) = svc.pointer("/spec/clusterIP").and_then(Value::as_str).filter(|ip| !ip.is_empty() && *ip != "None") else { continue };
        let (name, ns) = (name_of(svc), namespace_of(svc));
        hosts.push_str(&format!("{ip}\t{name}.{ns}.svc {name}.{ns}.svc.cluster.local\n"));
        let label = format!("/metadata/labels/{}", SERVICE_NAME_LABEL.replace('/', "~1"));
        let mine: Vec<&Value> = slices.iter().filter(|s| namespace_of(s) == ns && s.pointer(&label).and_then(Value::as_str) == Some(name)).collect();
        for port in svc.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten() {
            let (port_name, number) = (port.get("name").and_then(Value::as_str).unwrap_or(""), port["port"].as_i64().unwrap_or(0));
            let backends: Vec<String> = mine.iter().flat_map(|s| backends(s, port_name)).collect();
            rules.extend(dnat_rules(ip, number, &backends));
        }
    }
    (hosts, rules)
}

/// `ip:port` of the slice's ready endpoints for the Service port named `port_name`.
fn backends(slice: &Value, port_name: &str) -> Vec<String> {
    let ports = slice.get("ports").and_then(Value::as_array).cloned().unwrap_or_default();
    let Some(port) = ports.iter().find(|p| p.get("name").and_then(Value::as_str).unwrap_or("") == port_name).and_then(|p| p["port"].as_i64()) else {
        return Vec::new();
    };
    let ready = slice.get("endpoints").and_then(Value::as_array).into_iter().flatten().filter(|e| e.pointer("/conditions/ready") == Some(&json!(true)));
    ready.flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default()).filter_map(|a| a.as_str().map(|a| format!("{a}:{port}"))).collect()
}

/// DNAT rules (arguments after `-A CHAIN`) spreading `cluster_ip:port` over `backends`
/// (`ip:port`) evenly, as kube-proxy's iptables mode does.
fn dnat_rules(cluster_ip: &str, port: i64, backends: &[String]) -> Vec<Vec<String>> {
    let n = backends.len();
    backends
        .iter()
        .enumerate()
        .map(|(i, to)| {
            let mut rule: Vec<String> = ["-d", &format!("{cluster_ip}/32"), "-p", "tcp", "--dport", &port.to_string()].iter().map(|s| s.to_string()).collect();
            if i + 1 < n {
                rule.extend(["-m", "statistic", "--mode", "random", "--probability", &format!("{:.5}", 1.0 / (n - i) as f64)].map(String::from));
            }
            rule.extend(["-j", "DNAT", "--to-destination", to].map(String::from));
            rule
        })
        .collect()
}
