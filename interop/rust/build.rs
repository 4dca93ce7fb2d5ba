//! Generates the ravi.mesh.v1 client from the repository's proto/ with tonic-prost-build's
//! default settings (client, server and the transport `connect` constructor included): the
//! contract must compile as any Rust user would generate it. protoc comes from a crate, so the
//! build needs nothing installed on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    let proto = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    tonic_prost_build::configure().compile_protos(
        &[
            proto.join("ravi/mesh/v1/agent_service.proto"),
            proto.join("ravi/mesh/v1/errors.proto"),
            proto.join("ravi/conformance/v1/conformance.proto"),
        ],
        &[proto],
    )?;
    Ok(())
}
