//! The `weir.v1` gRPC API, generated from the `.proto` files under `proto/weir/v1`.

pub mod v1 {
    tonic::include_proto!("weir.v1");

    /// The encoded descriptors of every `weir.v1` file, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("weir_descriptor");

    /// The encoded descriptor of the standard `grpc.health.v1` service, registered under its
    /// canonical file name `grpc/health/v1/health.proto` (tonic-health's own set names the
    /// file `health.proto`), for server reflection.
    pub const HEALTH_FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("health_descriptor");

    impl command::Op {
        /// The command's name, for spans, metrics and logs.
        pub fn name(&self) -> &'static str {
            match self {
                command::Op::Attach(_) => "attach",
                command::Op::Detach(_) => "detach",
                command::Op::Sync(_) => "sync",
                command::Op::Peers(_) => "peers",
                command::Op::Routes(_) => "routes",
                command::Op::Underlay(_) => "underlay",
                command::Op::Inspect(_) => "inspect",
            }
        }
    }
}
