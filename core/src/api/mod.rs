//! The gRPC layer: the host's `Agent` and `Control` services, the listeners that serve them,
//! and the client side (channels for the runner agent and the CLI). Only this module speaks
//! tonic; the hub and the agent see plain messages.

pub mod agent;
pub mod auth;
pub mod client;
pub mod control;
pub mod docker;
pub mod edge;
pub mod local;
pub mod runner;
pub mod server;
pub mod standby;
pub mod telemetry;

use tonic::{Code, Status};

use crate::hub::HubError;
use crate::store::StoreError;

/// The longest status message a host sends (longer ones are cut, saying by how much): a
/// message travels in an HTTP/2 header, and clients refuse large header blocks.
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// Map a hub error to the one gRPC status code that describes it.
pub fn status(e: HubError) -> Status {
    let code = match &e {
        HubError::InvalidArgument(_) => Code::InvalidArgument,
        HubError::NotFound(_) => Code::NotFound,
        HubError::AlreadyExists(_) | HubError::AddressInUse(_) => Code::AlreadyExists,
        HubError::FailedPrecondition(_) => Code::FailedPrecondition,
        HubError::ResourceExhausted(_) => Code::ResourceExhausted,
        HubError::OutOfRange(_) => Code::OutOfRange,
        HubError::PermissionDenied(_) => Code::PermissionDenied,
        HubError::Unavailable(_) => Code::Unavailable,
        HubError::Runner(_) => Code::Aborted,
        // etcd unreachable, slow or without quorum: nothing was applied (or an unsettled
        // change blocks writes until etcd answers again); the caller may retry.
        // A leader between losing its lease and taking the role back (or stepping down):
        // retry, here or at the leader.
        HubError::Store(
            StoreError::Unavailable(_) | StoreError::Unknown(_) | StoreError::LeaseLost { .. },
        ) => Code::Unavailable,
        // Another writer got there first (or took over): retry from a fresh read.
        HubError::Store(StoreError::Conflict { .. } | StoreError::Fenced { .. }) => Code::Aborted,
        HubError::Dataplane(_) | HubError::Store(_) | HubError::Internal(_) => Code::Internal,
    };
    Status::new(code, cap_message(e.to_string()))
}

/// `message`, cut to at most [`MAX_STATUS_MESSAGE`] bytes (on a character boundary).
pub fn cap_message(mut message: String) -> String {
    if message.len() <= MAX_STATUS_MESSAGE {
        return message;
    }
    let total = message.len();
    let mut cut = MAX_STATUS_MESSAGE - 48;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    message.truncate(cut);
    message.push_str(&format!("… (message cut: {total} bytes in all)"));
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_are_capped_on_a_character_boundary() {
        let s = status(HubError::InvalidArgument(format!(
            "x: {}",
            "é".repeat(20_000)
        )));
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(
            s.message().len() <= MAX_STATUS_MESSAGE,
            "{}",
            s.message().len()
        );
        assert!(s.message().ends_with("(message cut: 40003 bytes in all)"));
        assert_eq!(cap_message("short".into()), "short");
        let s = status(HubError::OutOfRange("after".into()));
        assert_eq!(s.code(), Code::OutOfRange);
    }
}
