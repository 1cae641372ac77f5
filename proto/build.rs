//! Compiles `proto/ctcluster.proto` with protox (pure Rust, no system protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/ctcluster.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Tensor payloads as `Bytes`: sliced and passed on without copies.
        .bytes(".")
        .compile_fds(descriptors)?;
    Ok(())
}
