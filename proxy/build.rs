//! Compiles the mesh's protos with protox (pure Rust) so no system protoc is needed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/meshfleet/identity/v1/identity.proto", "proto/meshfleet/destination/v1/destination.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
