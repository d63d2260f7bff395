//! How the mesh follows versions in the fake cluster (`Mesh::upgradable`): the controller
//! process restarted at the version of its Deployment's image, the injector as the install sets
//! it up, and what a version's proxies do beyond reporting it (`Releases`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use meshfleet_fake_kube::FakeKube;
use serde_json::Value;

use super::{mesh_bin, Process};

/// What versions do beyond reporting themselves: extra proxy arguments by version.
#[derive(Clone, Default)]
pub struct Releases(HashMap<String, Vec<String>>);

impl Releases {
    /// The proxies of `version` also run with `args` (`--test-fail-share=0.5`: a bad release).
    pub fn with(mut self, version: &str, args: &[&str]) -> Releases {
        self.0.insert(version.into(), args.iter().map(|a| a.to_string()).collect());
        self
    }

    pub(super) fn args(&self, version: &str) -> &[String] {
        self.0.get(version).map_or(&[], Vec::as_slice)
    }
}

/// The controller process and the (version, proxy version) it plays when it follows its
/// Deployment.
pub struct Controller {
    pub process: Process,
    pub playing: Option<(String, String)>,
    pub(super) launch: Launch,
}

impl Controller {
    /// Restarts the process at the version its Deployment's template now runs, as replacing
    /// its pod would.
    pub(super) fn follow(&mut self, kube: &FakeKube) {
        let Some(want) = deployed(kube) else { return };
        if self.playing.as_ref() != Some(&want) {
            // The old one first: the new one takes over its gRPC port.
            self.process.stop();
            self.process = self.launch.spawn(kube, Some(&want));
            self.playing = Some(want);
        }
    }
}

/// How the controller is (re)started.
pub(super) struct Launch {
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(&'static str, PathBuf)>,
    pub(super) dir: PathBuf,
    pub(super) starts: usize,
}

impl Launch {
    pub(super) fn spawn(&mut self, kube: &FakeKube, playing: Option<&(String, String)>) -> Process {
        self.starts += 1;
        let mut args = self.args.clone();
        if let Some((version, proxy)) = playing {
            args.extend([format!("--version-override={version}"), format!("--proxy-version={proxy}")]);
        }
        let env: Vec<(&str, &Path)> = self.env.iter().map(|(k, v)| (*k, v.as_path())).collect();
        let ready = if self.starts == 1 { "controller.ready".to_owned() } else { format!("controller-{}.ready", self.starts) };
        let p = Process::spawn_with_env("meshfleet-controller", &args, &env, &self.dir.join(ready));
        if p.addrs.get("injector").is_some() {
            kube.route_service(MESH_NAMESPACE, CONTROLLER, INJECTOR_PORT, p.addr("injector"));
        }
        // A restarted controller keeps the first one's gRPC address: the proxies know only it.
        for a in self.args.iter_mut().filter(|a| a.starts_with("--grpc-addr=")) {
            *a = format!("--grpc-addr={}", p.addr("grpc"));
        }
        p
    }
}

const MESH_NAMESPACE: &str = "meshfleet";
const CONTROLLER: &str = "meshfleet-controller";
/// The injector's port on the controller's Service (`meshfleet-controller install --injector`).
const INJECTOR_PORT: i32 = 8443;
const PROXY_CONTAINER: &str = "meshfleet-proxy";

/// An image's tag (`meshfleet/proxy:0.2.0` -> `0.2.0`).
pub(super) fn tag(image: &str) -> Option<String> {
    image.rsplit_once(':').filter(|(_, t)| !t.contains('/')).map(|(_, t)| t.to_owned())
}

/// The version the controller Deployment's template runs (its image's tag) and the proxy version
/// it injects (`MESHFLEET_PROXY_VERSION`, else its own).
pub(super) fn deployed(kube: &FakeKube) -> Option<(String, String)> {
    let d = kube.get("apps/v1", "Deployment", MESH_NAMESPACE, CONTROLLER)?;
    let c = d.pointer("/spec/template/spec/containers/0")?;
    let version = tag(c["image"].as_str()?)?;
    let proxy = c["env"].as_array().into_iter().flatten().find(|e| e["name"] == "MESHFLEET_PROXY_VERSION").and_then(|e| e["value"].as_str());
    Some((version.clone(), proxy.map_or(version, str::to_owned)))
}

/// The injector as `meshfleet-controller install --injector` sets it up: its
/// MutatingWebhookConfiguration in the fake cluster, its serving certificate and key in `dir`
/// (`injector.crt`, `injector.key`).
pub(super) fn install_injector(kube: &FakeKube, dir: &Path) {
    use serde::Deserialize as _;
    let out = Command::new(mesh_bin("meshfleet-controller")).args(["install", "--dev-certs", "--injector"]).output().expect("install");
    assert!(out.status.success(), "install: {}", String::from_utf8_lossy(&out.stderr));
    let yaml = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&yaml).map(|d| Value::deserialize(d).unwrap()).collect();
    let hook = docs.iter().find(|d| d["kind"] == "MutatingWebhookConfiguration").expect("the injector's webhook");
    kube.apply(hook.clone()).unwrap();
    let secret = docs.iter().find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "meshfleet-injector-tls").expect("the injector's Secret");
    use base64::Engine as _;
    for (key, file) in [("tls.crt", "injector.crt"), ("tls.key", "injector.key")] {
        let pem = base64::engine::general_purpose::STANDARD.decode(secret["data"][key].as_str().unwrap()).unwrap();
        std::fs::write(dir.join(file), pem).unwrap();
    }
}

/// The tag of a pod's proxy image: the version its sidecar plays.
pub fn proxy_version(pod: &Value) -> Option<String> {
    proxy_of(pod)?["image"].as_str().and_then(tag)
}

/// A pod's proxy container: a plain container, or a native sidecar as the injector adds it.
pub(super) fn proxy_of(pod: &Value) -> Option<&Value> {
    let plain = pod.pointer("/spec/containers").and_then(Value::as_array).into_iter().flatten();
    let native = pod.pointer("/spec/initContainers").and_then(Value::as_array).into_iter().flatten().filter(|c| c["restartPolicy"] == "Always");
    plain.chain(native).find(|c| c["name"] == PROXY_CONTAINER)
}
