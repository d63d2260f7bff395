//! The container images (`deploy/*.Dockerfile`). No Docker engine runs here, so this checks
//! what can be checked without building them: each deployed binary has its Dockerfile, built
//! from the package that declares it with the lock file, in a build stage apart from a
//! distroless runtime stage that runs it as a non-root user, under the names the install
//! manifest uses.

use std::path::Path;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// (binary, package, the package's manifest)
const DEPLOYED: [(&str, &str, &str); 4] = [
    ("meshfleet-server", "meshfleet-server", "services/server/Cargo.toml"),
    ("meshfleet-agent", "meshfleet-agent", "agent/Cargo.toml"),
    ("meshfleet-proxy", "meshfleet-mesh", "proxy/Cargo.toml"),
    ("meshfleet-controller", "meshfleet-mesh", "proxy/Cargo.toml"),
];

fn declared_bins(manifest: &str) -> (String, Vec<String>) {
    let text = std::fs::read_to_string(Path::new(ROOT).join(manifest)).unwrap();
    let doc: toml::Table = text.parse().unwrap();
    let package = doc["package"]["name"].as_str().unwrap().to_owned();
    let bins = doc.get("bin").and_then(|b| b.as_array()).map(|a| a.iter().map(|b| b["name"].as_str().unwrap().to_owned()).collect()).unwrap_or_default();
    (package, bins)
}

#[test]
fn dockerfiles_build_each_binary_as_non_root() {
    for (bin, package, manifest) in DEPLOYED {
        let (declared_package, bins) = declared_bins(manifest);
        assert_eq!(declared_package, package, "{manifest}");
        assert!(bins.iter().any(|b| b == bin), "{manifest} declares no binary {bin}: {bins:?}");

        let path = Path::new(ROOT).join(format!("deploy/{bin}.Dockerfile"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(text.lines().next(), Some("# syntax=docker/dockerfile:1"), "{bin}: the syntax line must come first");
        let stages: Vec<&str> = text.split("\nFROM ").skip(1).collect();
        assert_eq!(stages.len(), 2, "{bin}: a build stage and a runtime stage");
        assert!(stages[0].starts_with("rust:") && stages[0].lines().next().unwrap().ends_with(" AS build"), "{bin}: {}", stages[0]);
        assert!(stages[0].contains(&format!("cargo build --release --locked -p {package} --bin {bin}")), "{bin}: {}", stages[0]);
        let runtime = stages[1];
        assert!(runtime.starts_with("gcr.io/distroless/cc-debian12:nonroot\n"), "{bin}: {runtime}");
        assert!(runtime.contains("\nUSER 65532:65532\n"), "{bin}: runs as root");
        assert!(!runtime.contains("\nRUN "), "{bin}: nothing runs in the runtime stage (it has no shell)");
        assert!(runtime.trim_end().ends_with(&format!("ENTRYPOINT [\"/usr/local/bin/{bin}\"]")), "{bin}: {runtime}");
        assert!(text.contains(&format!("-t meshfleet/{bin}:")), "{bin}: the documented tag names the image meshfleet/{bin}");
    }
    // No Dockerfile for something that is not deployed.
    let mut files: Vec<String> = std::fs::read_dir(Path::new(ROOT).join("deploy"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|n| n.ends_with(".Dockerfile"))
        .collect();
    files.sort();
    let mut expected: Vec<String> = DEPLOYED.iter().map(|(bin, _, _)| format!("{bin}.Dockerfile")).collect();
    expected.sort();
    assert_eq!(files, expected);
    // The install manifest runs the agent image these build.
    let image = meshfleet_server::Config::default().agent_image;
    assert_eq!(image, format!("meshfleet/meshfleet-agent:{}", env!("CARGO_PKG_VERSION")));
}
