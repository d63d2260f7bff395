//! What a pod's processes see: its volumes written out as files (projected service-account
//! tokens minted and registered with the fake's TokenReview, ConfigMaps, Secrets, emptyDirs),
//! an /etc/hosts, and the process itself started in the pod's network namespace and a mount
//! namespace of its own with those files bind-mounted at their paths, then as its user.
//! Mount points missing on the host are created there as empty directories (bind mounts need
//! them); nothing else on the host is written.

use std::ffi::CString;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine;
use serde_json::{json, Value};

use super::KubeletConfig;
use crate::resources::find;
use crate::store::{name_of, namespace_of};
use crate::{rbac::User, Shared};

/// Where the pod's service account (token, namespace, kubeconfig) is mounted, as on a node.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn volume_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join("volumes").join(name)
}

fn write(path: &Path, contents: &[u8]) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::write(path, contents).map_err(|e| format!("{}: {e}", path.display()))?;
    // World-readable: containers run as any uid (the proxy as 2102).
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).map_err(|e| e.to_string())
}

/// A random token the fake's TokenReview (and authentication) maps to the pod's service account.
pub fn mint_token(shared: &Shared, pod: &Value) -> String {
    let sa = pod.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or("default");
    let token = format!("kubelet-{:032x}", rand::random::<u128>());
    shared.rbac.add_token(&token, User::service_account(namespace_of(pod), sa));
    token
}

/// Writes the pod's volumes and service-account files under `dir`. A ConfigMap or Secret that
/// does not exist (and is not optional) is an error: the pod waits, as on a node.
pub fn prepare(shared: &Shared, pod: &Value, dir: &Path, api: SocketAddr, token: &str) -> Result<(), String> {
    let ns = namespace_of(pod);
    if pod.pointer("/spec/automountServiceAccountToken") != Some(&json!(false)) {
        let sa_dir = dir.join("serviceaccount");
        write(&sa_dir.join("token"), token.as_bytes())?;
        write(&sa_dir.join("namespace"), ns.as_bytes())?;
        // The fake serves plain HTTP, which kube-rs's in-cluster configuration refuses: pods get
        // a kubeconfig for their service account instead (KUBECONFIG points at it).
        let kubeconfig = json!({"apiVersion": "v1", "kind": "Config", "current-context": "pod",
            "clusters": [{"name": "fake", "cluster": {"server": format!("http://{api}")}}],
            "users": [{"name": "pod", "user": {"tokenFile": format!("{SERVICE_ACCOUNT_DIR}/token")}}],
            "contexts": [{"name": "pod", "context": {"cluster": "fake", "user": "pod", "namespace": ns}}]});
        write(&sa_dir.join("kubeconfig"), kubeconfig.to_string().as_bytes())?;
    }
    for v in pod.pointer("/spec/volumes").and_then(Value::as_array).into_iter().flatten() {
        let target = volume_dir(dir, v["name"].as_str().unwrap_or(""));
        std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
        if v.get("emptyDir").is_some() {
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o1777)).map_err(|e| e.to_string())?;
        } else if let Some(cm) = v.get("configMap") {
            source_files(shared, ns, "ConfigMap", cm, &target)?;
        } else if let Some(secret) = v.get("secret") {
            source_files(shared, ns, "Secret", secret, &target)?;
        } else if let Some(projected) = v.get("projected") {
            for s in projected.get("sources").and_then(Value::as_array).into_iter().flatten() {
                if let Some(t) = s.get("serviceAccountToken") {
                    write(&target.join(t["path"].as_str().unwrap_or("token")), token.as_bytes())?;
                } else if let Some(cm) = s.get("configMap") {
                    source_files(shared, ns, "ConfigMap", cm, &target)?;
                } else if let Some(secret) = s.get("secret") {
                    source_files(shared, ns, "Secret", secret, &target)?;
                }
            }
        }
    }
    Ok(())
}

/// The files of one ConfigMap or Secret source (all keys, or its `items`).
fn source_files(shared: &Shared, ns: &str, kind: &str, source: &Value, target: &Path) -> Result<(), String> {
    let name = source.get(if kind == "Secret" { "secretName" } else { "name" }).or_else(|| source.get("name")).and_then(Value::as_str).unwrap_or("");
    let res = find("", "v1", if kind == "Secret" { "secrets" } else { "configmaps" }).expect("registered");
    let Some(obj) = shared.store.get(res, ns, name) else {
        return if source.get("optional") == Some(&json!(true)) { Ok(()) } else { Err(format!("{kind} {ns}/{name} not found")) };
    };
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.decode(s).unwrap_or_default();
    for (field, encoded) in [("data", kind == "Secret"), ("binaryData", true)] {
        for (k, v) in obj.get(field).and_then(Value::as_object).into_iter().flatten() {
            let s = v.as_str().unwrap_or("");
            files.push((k.clone(), if encoded { b64(s) } else { s.as_bytes().to_vec() }));
        }
    }
    let items = source.get("items").and_then(Value::as_array);
    for (key, bytes) in files {
        let path = match items {
            None => Some(key.clone()),
            Some(items) => items.iter().find(|i| i["key"] == json!(key)).and_then(|i| i["path"].as_str()).map(str::to_owned),
        };
        if let Some(path) = path.filter(|p| !p.split('/').any(|c| c == "..")) {
            write(&target.join(path), &bytes)?;
        }
    }
    Ok(())
}

/// Rewrites the pod's /etc/hosts in place (the bind mount follows the inode), and writes its
/// /etc/resolv.conf: there is no cluster DNS, Service names are in /etc/hosts, and a lookup
/// that misses must fail at once (to the pod's own loopback), not wait on a name server the
/// pod cannot reach (Python's http.server looks up its bind address when it starts).
pub fn write_hosts(dir: &Path, services: &str, ip: Ipv4Addr, pod: &str) -> std::io::Result<()> {
    let text = format!("127.0.0.1\tlocalhost\n::1\tlocalhost\n{ip}\t{pod}\n{services}");
    std::fs::write(dir.join("hosts"), text)?;
    std::fs::write(dir.join("resolv.conf"), "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
}

fn cstring(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)
}

/// The container's environment: a node's defaults, the pod's service account, then its `env`
/// (values, and `fieldRef`s to the pod's name, namespace, IP, service account and node).
fn environment(pod: &Value, container: &Value, ip: Ipv4Addr, api_host: bool) -> Vec<(String, String)> {
    let mut env = vec![
        ("PATH".to_owned(), std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into())),
        ("HOSTNAME".to_owned(), name_of(pod).to_owned()),
        ("HOME".to_owned(), "/root".to_owned()),
    ];
    if api_host {
        env.push(("KUBECONFIG".to_owned(), format!("{SERVICE_ACCOUNT_DIR}/kubeconfig")));
    }
    for e in container.get("env").and_then(Value::as_array).into_iter().flatten() {
        let name = e["name"].as_str().unwrap_or("").to_owned();
        let value = match (e.get("value"), e.pointer("/valueFrom/fieldRef/fieldPath").and_then(Value::as_str)) {
            (Some(v), _) => v.as_str().unwrap_or("").to_owned(),
            (None, Some("status.podIP")) => ip.to_string(),
            (None, Some("metadata.name")) => name_of(pod).to_owned(),
            (None, Some("metadata.namespace")) => namespace_of(pod).to_owned(),
            (None, Some("metadata.uid")) => pod.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or("").to_owned(),
            (None, Some("spec.serviceAccountName")) => pod.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or("default").to_owned(),
            (None, Some("spec.nodeName")) => "fake-node-1".to_owned(),
            _ => String::new(),
        };
        env.push((name, value));
    }
    env
}

/// Starts one container of the pod: in the pod's network namespace, in a new mount namespace
/// with its volumes, the service account and /etc/hosts bind-mounted, as `runAsUser` /
/// `runAsGroup` (container over pod), leading a process group of its own, its output appended
/// to its log file.
pub fn spawn(config: &KubeletConfig, pod: &Value, container: &Value, netns: &str, dir: &Path, ip: Ipv4Addr) -> std::io::Result<Child> {
    let (exe, args) = config.entrypoint(container).ok_or_else(|| std::io::Error::other("nothing to run"))?;
    let sa_dir = dir.join("serviceaccount");
    let mut mounts: Vec<(PathBuf, PathBuf, bool)> =
        vec![(dir.join("hosts"), "/etc/hosts".into(), false), (dir.join("resolv.conf"), "/etc/resolv.conf".into(), false)];
    if sa_dir.is_dir() {
        mounts.push((sa_dir.clone(), SERVICE_ACCOUNT_DIR.into(), true));
    }
    for m in container.get("volumeMounts").and_then(Value::as_array).into_iter().flatten() {
        let mut source = volume_dir(dir, m["name"].as_str().unwrap_or(""));
        if let Some(sub) = m.get("subPath").and_then(Value::as_str).filter(|s| !s.is_empty() && !s.split('/').any(|c| c == "..")) {
            source = source.join(sub);
        }
        let Some(target) = m.get("mountPath").and_then(Value::as_str) else { continue };
        mounts.push((source, target.into(), m.get("readOnly") == Some(&json!(true))));
    }
    for (source, target, _) in &mounts {
        if !target.exists() {
            if source.is_dir() {
                std::fs::create_dir_all(target)?;
            } else {
                std::fs::create_dir_all(target.parent().unwrap_or(Path::new("/")))?;
                File::create(target)?;
            }
        }
    }
    let mounts: Vec<(CString, CString, bool)> = mounts.iter().map(|(s, t, ro)| Ok((cstring(s)?, cstring(t)?, *ro))).collect::<std::io::Result<_>>()?;
    let security = |field: &str| {
        container
            .pointer(&format!("/securityContext/{field}"))
            .or_else(|| pod.pointer(&format!("/spec/securityContext/{field}")))
            .and_then(Value::as_u64)
            .map(|v| v as u32)
    };
    let (uid, gid) = (security("runAsUser").unwrap_or(0), security("runAsGroup").unwrap_or(0));
    let netns_file = File::open(format!("/var/run/netns/{netns}"))?;
    let netns_fd = netns_file.as_raw_fd();
    let log = std::fs::OpenOptions::new().create(true).append(true).open(super::log_path(config, pod, container["name"].as_str().unwrap_or("")))?;
    let mut cmd = Command::new(&exe);
    cmd.args(&args)
        .env_clear()
        .envs(environment(pod, container, ip, sa_dir.is_dir()))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: between fork and exec only syscalls run, on data prepared above (no allocation).
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
            check(libc::setns(netns_fd, libc::CLONE_NEWNET))?;
            check(libc::unshare(libc::CLONE_NEWNS))?;
            // Nothing mounted here propagates back to the host.
            check(libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
            for (source, target, read_only) in &mounts {
                check(libc::mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null()))?;
                if *read_only {
                    let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
                    check(libc::mount(std::ptr::null(), target.as_ptr(), std::ptr::null(), flags, std::ptr::null()))?;
                }
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
            Ok(())
        });
    }
    let child = cmd.spawn();
    drop(netns_file);
    child
}
