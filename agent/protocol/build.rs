//! Compiles the proto with protox (pure Rust), so no system `protoc` is needed.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    println!("cargo:rerun-if-changed=tests/frozen");
    let fds = protox::compile(["meshfleet/agent/v1/agent.proto"], ["proto"])?;
    // No generated `connect` constructor: it would clash with the `Connect` RPC; clients build
    // their own TLS channel anyway.
    tonic_prost_build::configure().build_transport(false).compile_fds(fds)?;

    // The protocol as released before typed commands, for the compatibility tests (`frozen`):
    // the same package, so it goes to a folder of its own. Only its client is needed, to play an
    // old agent against the real gateway.
    let frozen = PathBuf::from(std::env::var("OUT_DIR")?).join("frozen");
    std::fs::create_dir_all(&frozen)?;
    let fds = protox::compile(["meshfleet/agent/v1/agent.proto"], ["tests/frozen"])?;
    tonic_prost_build::configure().build_transport(false).build_server(false).out_dir(&frozen).compile_fds(fds)?;
    Ok(())
}
