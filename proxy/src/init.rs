//! `meshfleet-proxy init`: writes the nat-table rules that send a pod's TCP through its proxy,
//! after Linkerd's proxy-init. Inbound (PREROUTING) goes to the proxy's inbound port, outbound
//! (OUTPUT) to its outbound port, except the proxy's own uid (its dials must leave the pod),
//! loopback, and the configured ports and CIDRs. The rule set is computed by [`plan`] (pure) and
//! written by [`apply`]; running it again replaces the chains' contents instead of adding to them.

use std::process::Command;

pub const INBOUND_CHAIN: &str = "MESHFLEET_INBOUND";
pub const OUTBOUND_CHAIN: &str = "MESHFLEET_OUTPUT";

#[derive(Clone, Debug, clap::Parser)]
#[command(name = "meshfleet-proxy init", about = "Write the iptables rules that redirect a pod's TCP traffic to its proxy")]
pub struct InitConfig {
    /// The uid the proxy runs as; its own connections are never redirected.
    #[arg(long)]
    pub proxy_uid: u32,
    /// The proxy's inbound (mTLS) port: inbound TCP is redirected here.
    #[arg(long, default_value_t = crate::proxy::INBOUND_PORT)]
    pub inbound_port: u16,
    /// The proxy's intercepted outbound port (`--outbound-intercept`): outbound TCP is redirected here.
    #[arg(long, default_value_t = crate::proxy::OUTBOUND_PORT)]
    pub outbound_port: u16,
    /// Inbound destination ports left alone (e.g. the proxy's admin port).
    #[arg(long, value_delimiter = ',')]
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone.
    #[arg(long, value_delimiter = ',')]
    pub skip_outbound_ports: Vec<u16>,
    /// Outbound destination networks left alone, e.g. 10.96.0.0/12.
    #[arg(long, value_delimiter = ',')]
    pub skip_outbound_cidrs: Vec<String>,
    /// The iptables command to run (`iptables`, `iptables-legacy`, `iptables-nft`).
    #[arg(long, default_value = "iptables")]
    pub iptables: String,
}

/// One step of the rule set; arguments exclude the `iptables` command itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Create the chain unless it exists (`-t nat -N CHAIN`; "already exists" is fine).
    NewChain(String),
    /// Run as given (flush, append).
    Run(Vec<String>),
    /// Append unless an identical rule is already there (`-C` first, then `-A`).
    Ensure(Vec<String>),
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

/// The whole rule set for `c`, in order.
pub fn plan(c: &InitConfig) -> Result<Vec<Step>, String> {
    for cidr in &c.skip_outbound_cidrs {
        valid_cidr(cidr)?;
    }
    if c.inbound_port == 0 || c.outbound_port == 0 {
        return Err("--inbound-port and --outbound-port must not be 0".into());
    }
    let (inb, out) = (INBOUND_CHAIN, OUTBOUND_CHAIN);
    let mut steps =
        vec![Step::NewChain(inb.into()), Step::NewChain(out.into()), Step::Run(args(&["-t", "nat", "-F", inb])), Step::Run(args(&["-t", "nat", "-F", out]))];
    let append = |chain: &str, rest: &[&str]| Step::Run(args(&[&["-t", "nat", "-A", chain], rest].concat()));
    for port in &c.skip_inbound_ports {
        steps.push(append(inb, &["-p", "tcp", "--dport", &port.to_string(), "-j", "RETURN"]));
    }
    steps.push(append(inb, &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &c.inbound_port.to_string()]));
    steps.push(append(out, &["-m", "owner", "--uid-owner", &c.proxy_uid.to_string(), "-j", "RETURN"]));
    steps.push(append(out, &["-o", "lo", "-j", "RETURN"]));
    steps.push(append(out, &["-d", "127.0.0.0/8", "-j", "RETURN"]));
    for port in &c.skip_outbound_ports {
        steps.push(append(out, &["-p", "tcp", "--dport", &port.to_string(), "-j", "RETURN"]));
    }
    for cidr in &c.skip_outbound_cidrs {
        steps.push(append(out, &["-d", cidr, "-j", "RETURN"]));
    }
    steps.push(append(out, &["-p", "tcp", "-j", "REDIRECT", "--to-ports", &c.outbound_port.to_string()]));
    steps.push(Step::Ensure(args(&["-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-j", inb])));
    steps.push(Step::Ensure(args(&["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", out])));
    Ok(steps)
}

fn valid_cidr(s: &str) -> Result<(), String> {
    let (ip, len) = s.split_once('/').unwrap_or((s, "32"));
    let ip: std::net::IpAddr = ip.parse().map_err(|e| format!("--skip-outbound-cidrs {s:?}: {e}"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match len.parse::<u8>() {
        Ok(n) if n <= max => Ok(()),
        _ => Err(format!("--skip-outbound-cidrs {s:?}: prefix length must be 0..={max}")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{0}")]
    Config(String),
    #[error("cannot run {cmd:?}: {source} (is iptables installed?)")]
    Missing { cmd: String, source: std::io::Error },
    #[error("{cmd} {args} failed ({status}): {stderr}{hint}")]
    Failed { cmd: String, args: String, status: std::process::ExitStatus, stderr: String, hint: &'static str },
}

/// Runs `iptables ARGS`, returning whether it succeeded and its stderr.
fn run(cmd: &str, a: &[String]) -> Result<(bool, std::process::Output), InitError> {
    let out = Command::new(cmd).args(a).output().map_err(|source| InitError::Missing { cmd: cmd.into(), source })?;
    Ok((out.status.success(), out))
}

fn failed(cmd: &str, a: &[String], out: std::process::Output) -> InitError {
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let root = is_root();
    let hint = if !root { " (writing iptables rules needs root or CAP_NET_ADMIN)" } else { "" };
    InitError::Failed { cmd: cmd.into(), args: a.join(" "), status: out.status, stderr, hint }
}

/// Whether this process runs as uid 0, read from /proc (no libc call needed).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0")))
        .unwrap_or(false)
}

/// Writes the rule set, printing each command it runs to stdout.
pub fn apply(c: &InitConfig) -> Result<(), InitError> {
    let steps = plan(c).map_err(InitError::Config)?;
    let ipt = c.iptables.as_str();
    for step in steps {
        match step {
            Step::NewChain(chain) => {
                let list = args(&["-t", "nat", "-L", &chain, "-n"]);
                if run(ipt, &list)?.0 {
                    println!("exists: {ipt} -t nat -N {chain}");
                    continue;
                }
                let a = args(&["-t", "nat", "-N", &chain]);
                let (ok, out) = run(ipt, &a)?;
                if !ok {
                    return Err(failed(ipt, &a, out));
                }
                println!("ran: {ipt} {}", a.join(" "));
            }
            Step::Run(a) => {
                let (ok, out) = run(ipt, &a)?;
                if !ok {
                    return Err(failed(ipt, &a, out));
                }
                println!("ran: {ipt} {}", a.join(" "));
            }
            Step::Ensure(a) => {
                let mut check = a.clone();
                if let Some(flag) = check.iter_mut().find(|s| *s == "-A") {
                    *flag = "-C".into();
                }
                if run(ipt, &check)?.0 {
                    println!("exists: {ipt} {}", a.join(" "));
                    continue;
                }
                let (ok, out) = run(ipt, &a)?;
                if !ok {
                    return Err(failed(ipt, &a, out));
                }
                println!("ran: {ipt} {}", a.join(" "));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(extra: &[&str]) -> InitConfig {
        InitConfig::try_parse_from([&["init", "--proxy-uid", "2102"], extra].concat()).unwrap()
    }

    fn line(s: &Step) -> String {
        match s {
            Step::NewChain(c) => format!("new {c}"),
            Step::Run(a) => format!("run {}", a.join(" ")),
            Step::Ensure(a) => format!("ensure {}", a.join(" ")),
        }
    }

    #[test]
    fn default_rules() {
        let got: Vec<String> = plan(&parse(&[])).unwrap().iter().map(line).collect();
        assert_eq!(
            got,
            [
                "new MESHFLEET_INBOUND",
                "new MESHFLEET_OUTPUT",
                "run -t nat -F MESHFLEET_INBOUND",
                "run -t nat -F MESHFLEET_OUTPUT",
                "run -t nat -A MESHFLEET_INBOUND -p tcp -j REDIRECT --to-ports 4143",
                "run -t nat -A MESHFLEET_OUTPUT -m owner --uid-owner 2102 -j RETURN",
                "run -t nat -A MESHFLEET_OUTPUT -o lo -j RETURN",
                "run -t nat -A MESHFLEET_OUTPUT -d 127.0.0.0/8 -j RETURN",
                "run -t nat -A MESHFLEET_OUTPUT -p tcp -j REDIRECT --to-ports 4140",
                "ensure -t nat -A PREROUTING -p tcp -j MESHFLEET_INBOUND",
                "ensure -t nat -A OUTPUT -p tcp -j MESHFLEET_OUTPUT",
            ]
        );
    }

    #[test]
    fn skipped_ports_and_cidrs_return_before_the_redirect() {
        let c = parse(&[
            "--inbound-port=5143",
            "--outbound-port=5140",
            "--skip-inbound-ports=4191,4190",
            "--skip-outbound-ports=25",
            "--skip-outbound-cidrs=10.96.0.0/12,192.168.1.1",
        ]);
        let got: Vec<Vec<String>> = plan(&c)
            .unwrap()
            .into_iter()
            .filter_map(|s| match s {
                Step::Run(a) if a[2] == "-A" => Some(a[3..].to_vec()),
                _ => None,
            })
            .collect();
        let want: Vec<Vec<String>> = [
            "MESHFLEET_INBOUND -p tcp --dport 4191 -j RETURN",
            "MESHFLEET_INBOUND -p tcp --dport 4190 -j RETURN",
            "MESHFLEET_INBOUND -p tcp -j REDIRECT --to-ports 5143",
            "MESHFLEET_OUTPUT -m owner --uid-owner 2102 -j RETURN",
            "MESHFLEET_OUTPUT -o lo -j RETURN",
            "MESHFLEET_OUTPUT -d 127.0.0.0/8 -j RETURN",
            "MESHFLEET_OUTPUT -p tcp --dport 25 -j RETURN",
            "MESHFLEET_OUTPUT -d 10.96.0.0/12 -j RETURN",
            "MESHFLEET_OUTPUT -d 192.168.1.1 -j RETURN",
            "MESHFLEET_OUTPUT -p tcp -j REDIRECT --to-ports 5140",
        ]
        .iter()
        .map(|l| l.split(' ').map(String::from).collect())
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn bad_cidr_and_zero_port_are_errors() {
        assert!(plan(&parse(&["--skip-outbound-cidrs=10.0.0.0/33"])).unwrap_err().contains("prefix length"));
        assert!(plan(&parse(&["--skip-outbound-cidrs=nope"])).is_err());
        assert!(plan(&parse(&["--inbound-port=0"])).is_err());
    }

    #[test]
    fn missing_iptables_is_an_error_not_a_panic() {
        let mut c = parse(&[]);
        c.iptables = "/nonexistent/iptables".into();
        assert!(matches!(apply(&c), Err(InitError::Missing { .. })));
    }
}
