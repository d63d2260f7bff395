//! Runs the fake Kubernetes API server and writes a kubeconfig for it, for trying the agent or
//! the mesh by hand: `meshfleet-fake-kube --kubeconfig /tmp/fake.kubeconfig [--manifest
//! mesh.yaml]`, with `--kubelet --image REPO=PATH...` to run pods for real (root); and a tiny
//! kubectl for it: `meshfleet-fake-kube apply --kubeconfig PATH FILE...` and
//! `meshfleet-fake-kube wait --kubeconfig PATH NAMESPACE/DEPLOYMENT...`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use meshfleet_fake_kube::client::Client;
use meshfleet_fake_kube::{Config, FakeKube, KubeletConfig};

const USAGE: &str = "usage: meshfleet-fake-kube --kubeconfig PATH [--manifest FILE]... [--listen ADDR] [--kubelet [--image REPO=PATH]... [--pod-logs DIR]]
       meshfleet-fake-kube apply --kubeconfig PATH FILE... (- for stdin)
       meshfleet-fake-kube wait --kubeconfig PATH [--timeout SECS] NAMESPACE/DEPLOYMENT...";

fn usage() -> ! {
    eprintln!("{USAGE}");
    std::process::exit(64);
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("apply") | Some("wait") => {
            let command = args.remove(0);
            client_command(&command, args).await
        }
        _ => serve(args).await,
    }
}

async fn serve(args: Vec<String>) -> anyhow::Result<()> {
    let mut args = args.into_iter();
    let (mut kubeconfig, mut manifests, mut listen) = (None, Vec::new(), "127.0.0.1:0".to_owned());
    let (mut kubelet, mut images, mut pod_logs) = (false, std::collections::HashMap::new(), PathBuf::from("fake-kube-logs"));
    while let Some(a) = args.next() {
        match a.as_str() {
            "--kubeconfig" => kubeconfig = args.next(),
            "--manifest" => manifests.extend(args.next()),
            "--listen" => listen = args.next().context("--listen needs an address")?,
            "--kubelet" => kubelet = true,
            "--image" => {
                let Some((repo, path)) = args.next().and_then(|m| m.split_once('=').map(|(r, p)| (r.to_owned(), PathBuf::from(p)))) else { usage() };
                let path = std::fs::canonicalize(&path).with_context(|| format!("--image {repo}={}", path.display()))?;
                images.insert(repo, path);
            }
            "--pod-logs" => pod_logs = args.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            _ => usage(),
        }
    }
    let kubelet = kubelet.then_some(KubeletConfig { images, log_dir: pod_logs });
    let config = Config { addr: listen.parse().context("--listen")?, ready_delay: Duration::from_secs(1), kubelet, ..Config::default() };
    let kube = FakeKube::start_with(config).await.context("starting the fake API server")?;
    for m in manifests {
        let yaml = std::fs::read_to_string(&m).with_context(|| m.clone())?;
        kube.apply_yaml(&yaml).with_context(|| m.clone())?;
    }
    let path = kubeconfig.unwrap_or_else(|| "fake-kube.kubeconfig".into());
    kube.write_kubeconfig(path.as_ref(), &kube.admin_token)?;
    println!("fake Kubernetes API server at {}; kubeconfig written to {path}", kube.url);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    // Dropping it stops the pods and removes their network.
    drop(kube);
    Ok(())
}

async fn client_command(command: &str, args: Vec<String>) -> anyhow::Result<()> {
    let mut args = args.into_iter();
    let (mut kubeconfig, mut rest, mut timeout) = (None, Vec::new(), Duration::from_secs(60));
    while let Some(a) = args.next() {
        match a.as_str() {
            "--kubeconfig" => kubeconfig = args.next(),
            "--timeout" => timeout = Duration::from_secs(args.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| usage())),
            "-f" => {}
            _ if a.starts_with('-') => usage(),
            _ => rest.push(a),
        }
    }
    let path = kubeconfig.unwrap_or_else(|| "fake-kube.kubeconfig".into());
    let client = Client::from_kubeconfig(&std::fs::read_to_string(&path).with_context(|| path.clone())?)?;
    for item in rest {
        if command == "apply" {
            let yaml = if item == "-" { std::io::read_to_string(std::io::stdin())? } else { std::fs::read_to_string(&item).with_context(|| item.clone())? };
            for applied in client.apply_yaml(&yaml).await.with_context(|| item.clone())? {
                println!("{applied} applied");
            }
        } else {
            let Some((ns, name)) = item.split_once('/') else { usage() };
            for pod in client.wait_deployment(ns, name, timeout).await? {
                println!("{ns}/{pod}");
            }
        }
    }
    Ok(())
}
