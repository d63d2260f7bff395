//! Compiles the proto with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["meshfleet/agent/v1/agent.proto"], ["proto"])?;
    // No generated `connect` constructor: it would clash with the `Connect` RPC; clients build
    // their own TLS channel anyway.
    tonic_prost_build::configure().build_transport(false).compile_fds(fds)?;
    Ok(())
}
