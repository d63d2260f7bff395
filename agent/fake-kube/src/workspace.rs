//! Binaries of other packages of this workspace, for tests that run them as processes
//! (Cargo only builds a package's own binaries for its tests).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Builds `bins` of `package` into the target directory and profile the calling test binary
/// runs from (a no-op when fresh) and returns that directory, where the binaries now are.
pub fn build_bins(package: &str, bins: &[&str]) -> PathBuf {
    // .../target/<profile>/deps/<test>-<hash> -> .../target/<profile>
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps").to_path_buf();
    let target_dir = profile_dir.parent().expect("target dir");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_owned());
    let mut cmd = Command::new(cargo);
    // Without the variables Cargo sets for the test process: build scripts track some of them
    // (ring: CARGO_MANIFEST_DIR), and a changed value would rebuild half the dependency graph
    // here and again in the next outer `cargo test`.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let set_by_cargo = ["MANIFEST_DIR", "MANIFEST_PATH", "CRATE_NAME", "BIN_NAME", "PRIMARY_PACKAGE", "TARGET_TMPDIR", "RUSTC_CURRENT_DIR"]
            .iter()
            .any(|k| key == format!("CARGO_{k}"));
        if key.starts_with("CARGO_PKG_") || key == "OUT_DIR" || set_by_cargo {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args(["build", "--quiet", "-p", package]);
    for bin in bins {
        cmd.args(["--bin", bin]);
    }
    cmd.arg("--target-dir").arg(target_dir).stdout(Stdio::null()).stderr(Stdio::piped());
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo build");
    assert!(out.status.success(), "cargo build -p {package} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    profile_dir
}
