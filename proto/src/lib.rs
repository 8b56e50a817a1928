//! The `weir.v1` gRPC API, generated from the `.proto` files under `proto/weir/v1`.
