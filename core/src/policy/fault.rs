//! Why a plugin's decision could not be used ([`Fault`]), how a fault is reported to the hub,
//! and why the policy refused an operation ([`Refusal`]).

use std::time::Duration;

use crate::decision::Hook;

/// Why a plugin's decision could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("deadline of {}ms exceeded", .0.as_millis())]
    Deadline(Duration),
    #[error("memory cap of {} bytes exceeded", .0)]
    Memory(usize),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("invalid output: {0}")]
    Output(String),
    #[error("configure refused: {0}")]
    Config(String),
    #[error("unreachable: {0}")]
    Transport(String),
}

impl Fault {
    /// A short cause label (for metrics and events).
    pub fn cause(&self) -> &'static str {
        match self {
            Fault::Deadline(_) => "deadline",
            Fault::Memory(_) => "memory",
            Fault::Trap(_) => "trap",
            Fault::Output(_) => "output",
            Fault::Config(_) => "config",
            Fault::Transport(_) => "transport",
        }
    }
}

/// A plugin fault, reported to the hub for its event log.
#[derive(Debug, Clone)]
pub struct FaultReport {
    pub plugin: String,
    pub version: String,
    pub hook: Hook,
    pub fault: Fault,
    pub applied: &'static str,
}

/// Why the policy refused an operation (the API maps it to PERMISSION_DENIED or UNAVAILABLE).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("policy plugin {plugin:?} denied it: {reason}")]
    Denied { plugin: String, reason: String },
    #[error(
        "policy plugin {plugin:?} failed ({fault}); its on_error = \"deny\" refuses the operation"
    )]
    Failed { plugin: String, fault: Fault },
}
