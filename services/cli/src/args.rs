//! The command line as clap reads it: every command, its options, and the examples its
//! `--help` shows. Nothing here talks to the API.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use meshfleet_client::{MatchOp, Matcher};

const EXIT_CODES: &str = "\
Exit codes:
  0   success (for `status`: healthy, or findings that only inform)
  1   `status` found warnings
  2   `status` found something critical
  3   error: the API refused (its problem is printed), could not be reached, or you are not logged in
  64  bad usage (unknown command or option, a malformed value)

Environment:
  MESHFLEET_URL          the API's URL for `login`
  MESHFLEET_TOKEN        an API token to act with instead of the saved session (with MESHFLEET_URL), for CI
  MESHFLEET_CONFIG_DIR   where the session is kept (default $XDG_CONFIG_HOME/meshfleet, else ~/.config/meshfleet)
  MESHFLEET_KUBECTL      the kubectl that `connect --apply` runs (default: kubectl on the PATH)";

/// Manage a Meshfleet fleet from the command line.
#[derive(Debug, Parser)]
#[command(name = "meshfleet", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// How results are printed: a table for people, or the API's JSON for scripts.
    #[arg(long, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in and keep the session (mode 0600) in the config directory.
    #[command(after_help = "Examples:
  printf '%s' \"$PASSWORD\" | meshfleet login --url https://fleet.example.com --email ada@example.com --password-stdin
  printf '%s' \"$MESHFLEET_API_TOKEN\" | meshfleet login --url https://fleet.example.com --token-stdin")]
    Login(Login),
    /// End the session (for a log-in with a password, on the server too) and forget it.
    #[command(after_help = "Example:\n  meshfleet logout")]
    Logout,
    /// List, show, create and delete clusters.
    #[command(subcommand)]
    Clusters(Clusters),
    /// Write a cluster's install manifest (it holds a fresh bootstrap token), or apply it.
    #[command(after_help = "Examples:
  meshfleet connect prod-eu-1 --apply                 # kubectl apply -f - with the current context
  meshfleet connect prod-eu-1 -o prod-eu-1.yaml       # written with mode 0600: it holds a token
  meshfleet connect prod-eu-1 --meshed-namespace shop > install.yaml")]
    Connect(Connect),
    /// The fleet's health findings, or one cluster's; the exit code tells the worst (0, 1, 2).
    #[command(after_help = "Exit code: 0 healthy (or findings that only inform), 1 warnings, 2 critical, 3 error.

Examples:
  meshfleet status                  # the whole fleet
  meshfleet status prod-eu-1        # one cluster
  meshfleet status || echo \"the fleet needs attention (exit $?)\"")]
    Status(Status),
    /// Trust anchors and what expires next, or one cluster's certificates.
    #[command(after_help = "Examples:
  meshfleet certs                   # the organization's trust anchors and next expiry
  meshfleet certs prod-eu-1         # the cluster's bundle, issuer and proxies' leaves
  meshfleet certs --output json")]
    Certs(Certs),
    /// List alerts and silence them.
    #[command(subcommand)]
    Alerts(Alerts),
    /// Plan, start and steer rollouts of a mesh version.
    #[command(subcommand)]
    Upgrades(Upgrades),
    /// Print a shell completion script.
    #[command(after_help = "Examples:
  meshfleet completions bash > /etc/bash_completion.d/meshfleet
  meshfleet completions zsh > \"${fpath[1]}/_meshfleet\"
  meshfleet completions fish > ~/.config/fish/completions/meshfleet.fish")]
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Args)]
pub struct Login {
    /// The API's URL, e.g. https://fleet.example.com.
    #[arg(long, env = "MESHFLEET_URL")]
    pub url: String,
    /// The account's e-mail (with --password-stdin).
    #[arg(long, requires = "password_stdin")]
    pub email: Option<String>,
    /// Read the password from standard input, never from the command line.
    #[arg(long, requires = "email", required_unless_present = "token_stdin")]
    pub password_stdin: bool,
    /// Read an API token from standard input instead.
    #[arg(long, conflicts_with_all = ["email", "password_stdin"])]
    pub token_stdin: bool,
}

#[derive(Debug, Subcommand)]
pub enum Clusters {
    /// Every cluster, by name.
    #[command(after_help = "Examples:\n  meshfleet clusters list\n  meshfleet clusters list --output json")]
    List,
    /// One cluster, by id or name.
    #[command(after_help = "Example:\n  meshfleet clusters get prod-eu-1")]
    Get { cluster: String },
    /// Create a cluster; connect it with `meshfleet connect NAME`.
    #[command(after_help = "Example:\n  meshfleet clusters create prod-eu-1 --label env=prod --label region=eu-west-1")]
    Create {
        /// A DNS-1123 label, unique in the organization.
        name: String,
        /// A label, key=value (repeat for more).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = label)]
        labels: Vec<(String, String)>,
    },
    /// Delete a cluster, by id or name: its agent is cut off.
    #[command(after_help = "Example:\n  meshfleet clusters delete prod-eu-1")]
    Delete { cluster: String },
}

#[derive(Debug, Args)]
pub struct Connect {
    /// The cluster, by id or name.
    pub cluster: String,
    /// Write the manifest to this file (mode 0600) instead of standard output.
    #[arg(short = 'o', long = "output-file", value_name = "FILE", conflicts_with = "apply")]
    pub file: Option<PathBuf>,
    /// Pipe the manifest to `kubectl apply -f -` (MESHFLEET_KUBECTL names another kubectl).
    #[arg(long)]
    pub apply: bool,
    /// A namespace opted into the mesh, which the agent may restart workloads in (repeat for more).
    #[arg(long = "meshed-namespace", value_name = "NAMESPACE")]
    pub meshed_namespaces: Vec<String>,
}

#[derive(Debug, Args)]
pub struct Status {
    /// One cluster (id or name) instead of the whole fleet.
    pub cluster: Option<String>,
}

#[derive(Debug, Args)]
pub struct Certs {
    /// One cluster (id or name): its bundle, issuer and proxies' leaves.
    pub cluster: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Alerts {
    /// Alerts, newest first (default: firing ones).
    #[command(after_help = "Examples:\n  meshfleet alerts list\n  meshfleet alerts list --state all --limit 20")]
    List {
        #[arg(long, value_enum, default_value_t = AlertState::Firing)]
        state: AlertState,
        /// At most this many, 1 to 500.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
    },
    /// Silence the alerts all the matchers match, for a while (admins).
    #[command(after_help = "Matchers compare an alert's labels (its cluster's labels, cluster, check, object,
alertname and severity): name=value, name!=value, name=~regex, name!~regex.

Examples:
  meshfleet alerts silence --matcher cluster=prod-eu-1 --duration 2h --comment 'planned maintenance'
  meshfleet alerts silence --matcher 'alertname=~agent|certificate_expiry' --matcher env!=prod --duration 1d30m --comment 'known issue'")]
    Silence {
        /// name=value, name!=value, name=~regex or name!~regex (repeat: all must match).
        #[arg(long = "matcher", value_name = "MATCHER", required = true, value_parser = matcher)]
        matchers: Vec<Matcher>,
        /// How long from now: e.g. 30m, 2h, 1d, 1h30m (at most 90 days).
        #[arg(long, value_parser = duration)]
        duration: chrono::Duration,
        /// Why the alerts are silenced.
        #[arg(long)]
        comment: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AlertState {
    Firing,
    Pending,
    /// Pending and firing.
    Open,
    Resolved,
    All,
}

#[derive(Debug, Subcommand)]
pub enum Upgrades {
    /// Show the waves a rollout would run, without starting it (admins).
    #[command(after_help = "Examples:\n  meshfleet upgrades plan --version 0.2.0\n  meshfleet upgrades plan --version 0.2.0 --selector env=staging")]
    Plan(Target),
    /// Start a rollout as `plan` shows it (admins).
    #[command(after_help = "Example:\n  meshfleet upgrades start --version 0.2.0 --selector 'env in (staging,prod)'")]
    Start(Target),
    /// Pause a running rollout (admins).
    #[command(after_help = "Example:\n  meshfleet upgrades pause 0193a5c4-...")]
    Pause { rollout: String },
    /// Resume a paused rollout (admins).
    #[command(after_help = "Example:\n  meshfleet upgrades resume 0193a5c4-...")]
    Resume { rollout: String },
    /// Abort a rollout: nothing more is sent, clusters keep the version they reached (admins).
    #[command(after_help = "Example:\n  meshfleet upgrades abort 0193a5c4-...")]
    Abort { rollout: String },
    /// The latest rollouts, or one rollout's clusters and phases.
    #[command(after_help = "Examples:\n  meshfleet upgrades status\n  meshfleet upgrades status 0193a5c4-...")]
    Status { rollout: Option<String> },
}

#[derive(Debug, Args)]
pub struct Target {
    /// A version in the release catalog.
    #[arg(long)]
    pub version: String,
    /// The clusters it covers, by label (Kubernetes selector syntax); default: every cluster.
    #[arg(long, default_value = "")]
    pub selector: String,
}

fn label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err("expected KEY=VALUE".into()),
    }
}

/// `name=value`, `name!=value`, `name=~regex` or `name!~regex`: the operator is the first `=`
/// or `!` and what follows it, as Alertmanager's amtool reads them.
pub fn matcher(s: &str) -> Result<Matcher, String> {
    let at = s.find(['=', '!']).filter(|&i| i > 0).ok_or("expected name=value, name!=value, name=~regex or name!~regex")?;
    let (name, rest) = s.split_at(at);
    let (op, len) = [("!=", MatchOp::NotEq), ("!~", MatchOp::NotRe), ("=~", MatchOp::Re), ("=", MatchOp::Eq)]
        .into_iter()
        .find(|(token, _)| rest.starts_with(token))
        .map(|(token, op)| (op, token.len()))
        .ok_or("expected an operator: =, !=, =~ or !~")?;
    Ok(Matcher { name: name.trim().to_owned(), op, value: rest[len..].to_owned() })
}

/// A duration as a sequence of `<number><unit>`, units `s`, `m`, `h`, `d` (e.g. `1h30m`).
pub fn duration(s: &str) -> Result<chrono::Duration, String> {
    let bad = || format!("{s:?} is not a duration like 30m, 2h, 1d or 1h30m");
    let mut total = chrono::Duration::zero();
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        let part = match c {
            's' => chrono::Duration::try_seconds(n),
            'm' => chrono::Duration::try_minutes(n),
            'h' => chrono::Duration::try_hours(n),
            'd' => chrono::Duration::try_days(n),
            _ => None,
        };
        total = part.and_then(|p| total.checked_add(&p)).ok_or_else(bad)?;
    }
    if !digits.is_empty() || total <= chrono::Duration::zero() {
        return Err(bad());
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matchers_take_the_first_operator() {
        let m = |s| matcher(s).map(|m| (m.name, m.op, m.value));
        assert_eq!(m("cluster=prod-eu-1"), Ok(("cluster".into(), MatchOp::Eq, "prod-eu-1".into())));
        assert_eq!(m("env!=prod"), Ok(("env".into(), MatchOp::NotEq, "prod".into())));
        assert_eq!(m("alertname=~agent|certificate_expiry"), Ok(("alertname".into(), MatchOp::Re, "agent|certificate_expiry".into())));
        assert_eq!(m("severity!~warn.*"), Ok(("severity".into(), MatchOp::NotRe, "warn.*".into())));
        assert_eq!(m("team="), Ok(("team".into(), MatchOp::Eq, String::new())));
        assert_eq!(m("a=b=c"), Ok(("a".into(), MatchOp::Eq, "b=c".into())));
        assert!(m("=value").is_err() && m("novalue").is_err() && m("a!b").is_err());
    }

    #[test]
    fn durations_add_their_parts() {
        assert_eq!(duration("2h"), Ok(chrono::Duration::hours(2)));
        assert_eq!(duration("1h30m"), Ok(chrono::Duration::minutes(90)));
        assert_eq!(duration("1d"), Ok(chrono::Duration::days(1)));
        assert_eq!(duration("45s"), Ok(chrono::Duration::seconds(45)));
        for bad in ["", "2", "h", "2x", "0m", "1h30", "-1h"] {
            assert!(duration(bad).is_err(), "{bad}");
        }
    }
}
