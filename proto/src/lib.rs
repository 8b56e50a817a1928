//! The `weir.v1` gRPC API, generated from the `.proto` files under `proto/weir/v1`.

pub mod v1 {
    tonic::include_proto!("weir.v1");

    /// The encoded descriptors of every `weir.v1` file, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("weir_descriptor");
}
