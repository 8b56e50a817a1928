//! Client channels to the host, as the API's callers (the runner's session, the CLI) see them:
//! the channel code itself lives in the leaf module [`crate::transport`], shared with the
//! policy host's gRPC plugins.

pub use crate::transport::{
    ChannelOptions, ClientError, ClientTls, ClientTlsError, code_name, connect, connect_tls,
    endpoint, endpoint_tls, error_chain,
};
