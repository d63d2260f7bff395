//! `connect`: the cluster's install manifest to standard output, to a file (mode 0600: it
//! holds a bootstrap token), or piped to `kubectl apply -f -`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::args::Connect;
use super::error::Error;
use super::output::out;
use super::{clusters, exit, Ctx};

pub async fn run(ctx: &Ctx, args: Connect) -> Result<u8, Error> {
    let cluster = clusters::find(&ctx.client, &args.cluster).await?;
    let manifest = ctx.client.install_manifest_for(&cluster.id, &args.meshed_namespaces).await?;
    if args.apply {
        apply(&manifest).await?;
        eprintln!("Applied the install manifest of {}: its agent connects once it runs.", cluster.name);
    } else if let Some(path) = &args.file {
        let io = |source| Error::Io { path: path.clone(), source };
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io)?;
        // An existing file keeps its mode on open: narrow it before the token goes in.
        file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        file.write_all(manifest.as_bytes()).map_err(io)?;
        eprintln!("Wrote the install manifest of {} to {}: apply it with kubectl apply -f {}", cluster.name, path.display(), path.display());
    } else {
        out(&manifest);
    }
    Ok(exit::OK)
}

/// `kubectl apply -f -` (or MESHFLEET_KUBECTL) with the manifest on its standard input; its
/// own output goes to ours.
async fn apply(manifest: &str) -> Result<(), Error> {
    let kubectl = std::env::var_os("MESHFLEET_KUBECTL").filter(|k| !k.is_empty()).unwrap_or_else(|| "kubectl".into());
    let shown = kubectl.to_string_lossy().into_owned();
    let mut child = tokio::process::Command::new(&kubectl)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Kubectl(format!("cannot run {shown}: {e}")))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let written = stdin.write_all(manifest.as_bytes()).await;
    drop(stdin);
    let status = child.wait().await.map_err(|e| Error::Kubectl(format!("{shown}: {e}")))?;
    if !status.success() {
        return Err(Error::Kubectl(format!("{shown} apply failed ({status})")));
    }
    written.map_err(|e| Error::Kubectl(format!("{shown} did not read the manifest: {e}")))
}
