//! The records the store keeps: the store's own types, so that a change elsewhere (a plugin
//! type, a protobuf message) never silently changes the on-disk format. Records are JSON in
//! both back ends, so state stays inspectable and new fields can be added with defaults; a
//! change of shape is a new [`SCHEMA_VERSION`](super::SCHEMA_VERSION) with a migration.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// A runner the host knows by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerRecord {
    pub name: String,
    /// `None` when no overlay network is enabled (isolated mode).
    pub id: Option<u32>,
    pub physical_ip: Ipv4Addr,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub version: String,
    /// Unix milliseconds of the last registration or heartbeat persisted.
    pub last_seen_ms: i64,
    /// Bumped whenever the allocation changes; sessions must present the current one.
    pub generation: u64,
}

/// A valid tunnel found in the kernel at host start with no runner in the store: its id stays
/// held until a runner from that physical IP claims it, or it is reclaimed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceholderRecord {
    pub id: u32,
    pub physical_ip: Ipv4Addr,
    pub recovered_ms: i64,
}

/// A workload's interface on one network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadRecord {
    pub network: String,
    pub id: String,
    pub runner: String,
    /// Address with the runner subnet's prefix.
    pub ip: ipnet::Ipv4Net,
    pub netns: PathBuf,
    pub ifname: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub created_ms: i64,
    /// A VM (a tap device on the runner) rather than a container namespace.
    #[serde(default)]
    pub vm: bool,
    /// The MAC of a VM's NIC (`52:54:00:…`), for its cloud-init.
    #[serde(default)]
    pub mac: String,
    /// The reservation whose address this workload holds.
    #[serde(default)]
    pub reservation: Option<String>,
    /// The firewall plugin's rules for this workload (none: the built-in open policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<FirewallRecord>,
    /// The rules come from a monitor-mode plugin: count would-be drops, never drop.
    #[serde(default)]
    pub firewall_monitor: bool,
    /// The workload's default route goes through this interface (its first network).
    #[serde(default = "yes")]
    pub default_route: bool,
    /// The namespace the interface was created in: a different namespace at the same path is
    /// never given this workload's interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns_id: Option<NamespaceId>,
    /// Who attached it: `scheduler` (the control API) or an engine's plugin on the runner
    /// (`cni/NAME`, `docker/ID`, `netavark/NAME`). Records from before it have none.
    #[serde(default = "scheduler_origin")]
    pub origin: String,
    /// Handed off (Docker): a veth pair whose container end, `ifname` in the runner's own
    /// namespace when made, the engine moved into its container; `netns` is empty.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub handoff: bool,
}

/// The origin of a workload attached through the control API.
pub const SCHEDULER_ORIGIN: &str = "scheduler";

fn scheduler_origin() -> String {
    SCHEDULER_ORIGIN.into()
}

/// A network namespace's identity: the device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceId {
    pub dev: u64,
    pub ino: u64,
}

fn yes() -> bool {
    true
}

/// A workload's firewall rules as stored (schema 1: the shape plugins' decisions had when
/// schema 1 was written; the hub converts to and from the plugin types).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallRecord {
    pub rules: Vec<RuleRecord>,
    /// `allow` or `deny`.
    pub default_verdict: VerdictRecord,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRecord {
    pub direction: DirectionRecord,
    pub peer: PeerRecord,
    pub protocol: ProtocolRecord,
    #[serde(default)]
    pub ports: Vec<PortRangeRecord>,
    pub verdict: VerdictRecord,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirectionRecord {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PeerRecord {
    Labels(BTreeMap<String, String>),
    Cidr(String),
    Host,
    Wan,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProtocolRecord {
    Any,
    Tcp,
    Udp,
    Icmp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerdictRecord {
    Allow,
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRangeRecord {
    pub first: u16,
    pub last: u16,
}

/// An address held for a workload that does not exist yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservationRecord {
    pub id: String,
    pub network: String,
    pub runner: String,
    pub ip: Ipv4Addr,
    pub created_ms: i64,
    pub expires_ms: i64,
    /// The workload that used the token; `None` while unused.
    pub used_by: Option<String>,
}

impl WorkloadRecord {
    pub fn key(&self) -> String {
        workload_key(&self.network, &self.id)
    }
}

/// A workload's key in the store: its network and id (NUL-separated; neither may hold NUL).
pub fn workload_key(network: &str, id: &str) -> String {
    format!("{network}\u{0}{id}")
}
