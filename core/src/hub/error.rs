//! Why the hub refused or failed an operation. The API layer maps each variant to one gRPC code.

use crate::dataplane::DataplaneError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Malformed input; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The cluster is not in a state that allows the operation (inactive runner, …).
    #[error("{0}")]
    FailedPrecondition(String),
    /// No id or address left.
    #[error("{0}")]
    ResourceExhausted(String),
    /// A position past the end (e.g. watching after a sequence number not yet reached).
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// The runner that must carry out the operation is unreachable or too slow.
    #[error("{0}")]
    Unavailable(String),
    /// The address is in use on the runner's bridge by something Weir did not attach.
    #[error("{0}")]
    AddressInUse(String),
    /// The runner tried and failed.
    #[error("runner failed: {0}")]
    Runner(String),
    #[error("kernel: {0}")]
    Dataplane(#[from] DataplaneError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

impl From<crate::policy::Refusal> for HubError {
    fn from(r: crate::policy::Refusal) -> Self {
        match r {
            crate::policy::Refusal::Denied { .. } => HubError::PermissionDenied(r.to_string()),
            crate::policy::Refusal::Failed { .. } => HubError::Unavailable(r.to_string()),
        }
    }
}
