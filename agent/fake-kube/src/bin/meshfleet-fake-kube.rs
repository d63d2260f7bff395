//! Runs the fake Kubernetes API server and writes a kubeconfig for it, for trying the agent by
//! hand: `meshfleet-fake-kube --kubeconfig /tmp/fake.kubeconfig [--manifest mesh.yaml]`.

use std::time::Duration;

use anyhow::Context;
use meshfleet_fake_kube::{Config, FakeKube};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let mut args = std::env::args().skip(1);
    let (mut kubeconfig, mut manifests, mut listen) = (None, Vec::new(), "127.0.0.1:0".to_owned());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--kubeconfig" => kubeconfig = args.next(),
            "--manifest" => manifests.extend(args.next()),
            "--listen" => listen = args.next().context("--listen needs an address")?,
            _ => {
                eprintln!("usage: meshfleet-fake-kube --kubeconfig PATH [--manifest FILE]... [--listen ADDR]");
                std::process::exit(64);
            }
        }
    }
    let config = Config { addr: listen.parse().context("--listen")?, ready_delay: Duration::from_secs(1), ..Config::default() };
    let kube = FakeKube::start_with(config).await?;
    for m in manifests {
        let yaml = std::fs::read_to_string(&m).with_context(|| m.clone())?;
        kube.apply_yaml(&yaml).with_context(|| m.clone())?;
    }
    let path = kubeconfig.unwrap_or_else(|| "fake-kube.kubeconfig".into());
    kube.write_kubeconfig(path.as_ref(), &kube.admin_token)?;
    println!("fake Kubernetes API server at {}; kubeconfig written to {path}", kube.url);
    tokio::signal::ctrl_c().await?;
    Ok(())
}
