//! Why the runner agent could not do what the host asked. The texts are what the host sees in
//! a `CommandResult.error` or a held workload's `problem` (`kind: detail`, which the host's
//! consistency check splits at the first `": "`).

use std::fmt;

use crate::dataplane::DataplaneError;

/// What is wrong with a workload's network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceProblem {
    /// It no longer exists (deleted, its last process gone, its bind mount removed).
    Gone,
    /// The path holds another namespace than the one the workload was attached in.
    Replaced,
}

impl fmt::Display for NamespaceProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Gone => "namespace-gone",
            Self::Replaced => "namespace-replaced",
        })
    }
}

/// How a refusal for an address in use on the bridge starts (the host reads it to try
/// another address).
pub const ADDRESS_IN_USE: &str = "address-in-use: ";

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The address is in use on the bridge by something Weir did not attach.
    #[error(
        "address-in-use: {ip} is in use on {bridge} by {mac} (the runner's neighbour table), which Weir did not attach; it is not given to a new workload"
    )]
    AddressInUse {
        ip: std::net::Ipv4Addr,
        bridge: String,
        mac: String,
    },
    /// A field of the host's message does not parse.
    #[error("the host sent a malformed {field}: {value:?}")]
    Malformed { field: &'static str, value: String },
    #[error("vxlan_port {0} is out of range")]
    PortOutOfRange(u32),
    /// The firewall decision the host sent is not one the runner can apply.
    #[error("firewall rules: {0}")]
    FirewallRules(String),
    /// A command names a network the runner has not built (yet).
    #[error("network {0:?} is not built on this runner")]
    NetworkNotBuilt(String),
    /// The workload's namespace is missing or another one: a sync remembers the workload as
    /// missing instead of failing.
    #[error("{problem}: {detail}")]
    Namespace {
        problem: NamespaceProblem,
        detail: String,
    },
    /// A workload's namespace holds no interface with an address.
    #[error("interface-missing: {0}")]
    InterfaceMissing(String),
    /// Committing the workload firewall (or its connection tracking) failed.
    #[error("firewall: {0}")]
    Firewall(#[source] DataplaneError),
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// One workload of a sync could not be restored.
    #[error("{workload}: {source}")]
    Workload {
        workload: String,
        #[source]
        source: Box<AgentError>,
    },
    /// Several things failed (a sync goes on after a failure and reports them all).
    #[error("{}", join(.0))]
    Several(Vec<AgentError>),
}

fn join(errors: &[AgentError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl AgentError {
    pub(crate) fn gone(detail: impl Into<String>) -> Self {
        Self::Namespace {
            problem: NamespaceProblem::Gone,
            detail: detail.into(),
        }
    }

    pub(crate) fn replaced(detail: impl Into<String>) -> Self {
        Self::Namespace {
            problem: NamespaceProblem::Replaced,
            detail: detail.into(),
        }
    }

    /// The namespace problem, if this is one.
    pub fn namespace_problem(&self) -> Option<NamespaceProblem> {
        match self {
            Self::Namespace { problem, .. } => Some(*problem),
            _ => None,
        }
    }
}

pub type Result<T, E = AgentError> = std::result::Result<T, E>;
