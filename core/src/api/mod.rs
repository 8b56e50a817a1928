//! The gRPC layer: the host's `Agent` and `Control` services, the listeners that serve them,
//! and the client side (channels for the runner agent and the CLI). Only this module speaks
//! tonic; the hub and the agent see plain messages.

pub mod agent;
pub mod auth;
pub mod client;
pub mod control;
pub mod runner;
pub mod server;
pub mod telemetry;

use tonic::{Code, Status};

use crate::hub::HubError;

/// Map a hub error to the one gRPC status code that describes it.
pub fn status(e: HubError) -> Status {
    let code = match &e {
        HubError::InvalidArgument(_) => Code::InvalidArgument,
        HubError::NotFound(_) => Code::NotFound,
        HubError::AlreadyExists(_) => Code::AlreadyExists,
        HubError::FailedPrecondition(_) => Code::FailedPrecondition,
        HubError::ResourceExhausted(_) => Code::ResourceExhausted,
        HubError::PermissionDenied(_) => Code::PermissionDenied,
        HubError::Unavailable(_) => Code::Unavailable,
        HubError::Runner(_) => Code::Aborted,
        HubError::Dataplane(_) | HubError::Store(_) | HubError::Internal(_) => Code::Internal,
    };
    Status::new(code, e.to_string())
}
