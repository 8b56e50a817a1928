//! The policy vocabulary: the hooks' inputs and outputs, as plain Rust (and JSON, for `weir
//! plugin eval` and the decision log). They mirror `wit/policy.wit` and `weir.v1.PolicyPlugin`
//! one to one. A leaf of the ground floor (it imports nothing of Weir): the plugin host, the
//! hub, the agent and the data plane all speak it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub type Labels = BTreeMap<String, String>;

/// Which hook a decision is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hook {
    /// `assign-runner` and `assign-address` (the allocator world).
    Allocator,
    Firewall,
    Router,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Allocator => "allocator",
            Hook::Firewall => "firewall",
            Hook::Router => "router",
        }
    }
    pub fn parse(s: &str) -> Option<Hook> {
        match s {
            "allocator" => Some(Hook::Allocator),
            "firewall" => Some(Hook::Firewall),
            "router" => Some(Hook::Router),
            _ => None,
        }
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanInfo {
    pub spec: String,
    pub overlay: String,
    pub max_runners: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakenId {
    pub id: u32,
    pub runner: Option<String>,
    pub physical_ip: String,
    pub last_seen_ms: i64,
    pub active: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerRequest {
    pub network: String,
    pub name: String,
    pub physical_ip: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub taken: Vec<TakenId>,
    pub plan: PlanInfo,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunnerDecision {
    Id(u32),
    Builtin,
    Deny(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressRequest {
    pub network: String,
    pub workload_id: String,
    #[serde(default)]
    pub vm: bool,
    #[serde(default)]
    pub labels: Labels,
    pub runner: String,
    #[serde(default)]
    pub runner_labels: Labels,
    pub subnet: String,
    pub gateway: String,
    pub first: String,
    pub last: String,
    #[serde(default)]
    pub taken: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddressDecision {
    Address(String),
    NextFree,
    Deny(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    Any,
    Tcp,
    Udp,
    Icmp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Peer {
    Labels(Labels),
    Cidr(String),
    Host,
    Wan,
    Any,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    pub direction: Direction,
    pub peer: Peer,
    pub protocol: Protocol,
    #[serde(default)]
    pub ports: Vec<PortRange>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallRequest {
    pub network: String,
    pub workload_id: String,
    #[serde(default)]
    pub labels: Labels,
    pub runner: String,
    pub address: String,
    #[serde(default)]
    pub groups: Vec<Labels>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirewallDecision {
    pub rules: Vec<Rule>,
    pub default_verdict: Verdict,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathKind {
    ViaHub,
    Direct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Egress {
    RunnerNat,
    ViaHost,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRunner {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    pub physical_ip: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRequest {
    pub network: String,
    pub runner: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub peers: Vec<PeerRunner>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteDecision {
    pub peers: Vec<(String, PathKind)>,
    pub egress: Egress,
}

/// One call of one hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "kebab-case")]
pub enum Request {
    AssignRunner(RunnerRequest),
    AssignAddress(AddressRequest),
    Rules(FirewallRequest),
    Route(RouteRequest),
}

impl Request {
    pub fn hook(&self) -> Hook {
        match self {
            Request::AssignRunner(_) | Request::AssignAddress(_) => Hook::Allocator,
            Request::Rules(_) => Hook::Firewall,
            Request::Route(_) => Hook::Router,
        }
    }
    pub fn call_name(&self) -> &'static str {
        match self {
            Request::AssignRunner(_) => "assign-runner",
            Request::AssignAddress(_) => "assign-address",
            Request::Rules(_) => "rules",
            Request::Route(_) => "route",
        }
    }
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    Runner(RunnerDecision),
    Address(AddressDecision),
    Firewall(FirewallDecision),
    Route(RouteDecision),
}

impl Decision {
    /// What kind of answer this is (`chosen`, `builtin`, `deny`, `rules`, `routes`), for
    /// spans and metrics; never the chosen value itself.
    pub fn kind(&self) -> &'static str {
        match self {
            Decision::Runner(RunnerDecision::Id(_))
            | Decision::Address(AddressDecision::Address(_)) => "chosen",
            Decision::Runner(RunnerDecision::Builtin)
            | Decision::Address(AddressDecision::NextFree) => "builtin",
            Decision::Runner(RunnerDecision::Deny(_))
            | Decision::Address(AddressDecision::Deny(_)) => "deny",
            Decision::Firewall(_) => "rules",
            Decision::Route(_) => "routes",
        }
    }
}
