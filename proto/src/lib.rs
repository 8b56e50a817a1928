//! The `weir.v1` gRPC API, generated from the `.proto` files under `proto/weir/v1`.

pub mod v1 {
    tonic::include_proto!("weir.v1");
}
