//! The data plane: the only part of Weir that touches the kernel, through netlink and nftables.
//!
//! - [`netns`]: open workload namespaces safely; enter, create and delete network namespaces
//! - [`netlink`]: links, addresses and routes (rtnetlink)
//! - [`nft`]: Weir's own nftables tables, replaced atomically
//! - [`overlay`]: the names and the rule builder the host's and the runners' tables share
//! - [`host`]: the hub's devices, tunnels and rules
//! - [`runner`]: a runner's tunnel, bridge, route and NAT
//! - [`attach`]: workload interfaces created inside the workload's namespace
//! - [`adopt`]: containers Weir did not attach (KohakuRiver's), found on a bridge and taken over
//! - [`runner_kernel`]: everything the runner agent asks of the kernel, as one interface
//!   (and, in test builds, `fake_runner`: a recording fake of it)

pub mod adopt;
pub mod attach;
#[cfg(test)]
pub mod fake_host;
#[cfg(test)]
pub mod fake_runner;
pub mod firewall;
pub mod firewalld;
pub mod garp;
pub mod host;
pub mod host_kernel;
pub mod netlink;
pub mod netns;
pub mod nfnl;
pub mod nft;
pub mod overlay;
pub mod runner;
pub mod runner_kernel;
pub mod sysctl;
pub mod tap;

/// A kernel operation that failed, with what Weir was doing.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("{op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nftables: {0}")]
    Nft(String),
    /// A bridge has no free port (the kernel caps a bridge at 1023 ports).
    #[error("bridge #{0} has no free port")]
    BridgeFull(u32),
    /// A workload's network namespace was refused (see [`netns::open_workload`]).
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    /// The path no longer holds the workload's namespace.
    #[error(
        "the namespace at {path} is not the workload's: it was replaced (expected {expected}, found {found})"
    )]
    NetnsReplaced {
        path: std::path::PathBuf,
        expected: netns::NsIdentity,
        found: netns::NsIdentity,
    },
    /// The workload's namespace already routes its default traffic elsewhere.
    #[error(
        "the namespace {path} already has a default route {route}; Weir does not replace it (attach this interface without the default route, or remove that route first)"
    )]
    ForeignDefaultRoute {
        path: std::path::PathBuf,
        route: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl DataplaneError {
    pub fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        Self::Netlink {
            op: op.into(),
            source,
        }
    }
    pub fn io(op: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            op: op.into(),
            source,
        }
    }
}

pub type Result<T, E = DataplaneError> = std::result::Result<T, E>;
