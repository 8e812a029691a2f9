//! Compiles the protobuf API with a protoc that ships as a crate, so a fresh
//! machine needs no system protoc, and writes the descriptor set that the
//! reflection service serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the
    // environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "proto/readyd/v1/streams.proto",
        "proto/readyd/v1/health.proto",
        "proto/readyd/v1/config.proto",
        "proto/readyd/v1/flags.proto",
        "proto/readyd/v1/deployments.proto",
        "proto/readyd/v1/replication.proto",
        "proto/grpc/health/v1/health.proto",
        "proto/flagd/evaluation/v1/evaluation.proto",
        "proto/flagd/evaluation/v2/evaluation.proto",
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("readyd_descriptor.bin"))
        .compile_well_known_types(false)
        // Services are implemented issue by issue; an RPC without a handler
        // answers UNIMPLEMENTED instead of failing the build.
        .generate_default_stubs(true)
        .compile_protos(
            &protos.map(PathBuf::from),
            &[PathBuf::from("proto"), protoc_bin_vendored::include_path()?],
        )?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
