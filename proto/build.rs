fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A vendored protoc: the build needs nothing installed on the machine.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { std::env::set_var("PROTOC", protoc) };
    // tonic-prost-build does not ask to be re-run when a .proto changes.
    println!("cargo:rerun-if-changed=weir");
    println!("cargo:rerun-if-changed=grpc");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // For gRPC server reflection (grpcurl and friends).
        .file_descriptor_set_path(out.join("weir_descriptor.bin"))
        .compile_protos(
            &[
                "weir/v1/agent.proto",
                "weir/v1/control.proto",
                "weir/v1/local.proto",
                "weir/v1/policy.proto",
            ],
            &["."],
        )?;
    // The standard health service's descriptor under its canonical file name
    // (`grpc/health/v1/health.proto`, as reflection clients expect); tonic-health serves the
    // service itself, so only the descriptor set is used (the generated code is not included).
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .file_descriptor_set_path(out.join("health_descriptor.bin"))
        .compile_protos(&["grpc/health/v1/health.proto"], &["."])?;
    Ok(())
}
