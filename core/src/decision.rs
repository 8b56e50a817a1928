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

/// The `weir.v1` form of a firewall decision: what a gRPC plugin answers with, and what the
/// host sends a runner. One conversion each way, for both.
pub mod wire {
    use weir_proto::v1 as pb;

    use super::{Direction, FirewallDecision, Peer, PortRange, Protocol, Rule, Verdict};

    /// A `weir.v1.FirewallDecision` that is not a decision: which part, and why.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    #[error("{0}")]
    pub struct BadRules(pub String);

    fn verdict_pb(v: Verdict) -> String {
        match v {
            Verdict::Allow => "allow".into(),
            Verdict::Deny => "deny".into(),
        }
    }

    fn verdict(s: &str) -> Result<Verdict, BadRules> {
        match s {
            "allow" => Ok(Verdict::Allow),
            "deny" => Ok(Verdict::Deny),
            other => Err(BadRules(format!(
                "verdict {other:?} (allowed: allow, deny)"
            ))),
        }
    }

    pub fn firewall_to_pb(d: &FirewallDecision) -> pb::FirewallDecision {
        use pb::peer::Peer as P;
        pb::FirewallDecision {
            rules: d
                .rules
                .iter()
                .map(|r| pb::Rule {
                    direction: match r.direction {
                        Direction::Ingress => "ingress",
                        Direction::Egress => "egress",
                    }
                    .into(),
                    peer: Some(pb::Peer {
                        peer: Some(match &r.peer {
                            Peer::Labels(l) => P::Labels(pb::LabelSet {
                                labels: l.clone().into_iter().collect(),
                            }),
                            Peer::Cidr(c) => P::Cidr(c.clone()),
                            Peer::Host => P::Host(true),
                            Peer::Wan => P::Wan(true),
                            Peer::Any => P::Any(true),
                        }),
                    }),
                    protocol: match r.protocol {
                        Protocol::Any => "any",
                        Protocol::Tcp => "tcp",
                        Protocol::Udp => "udp",
                        Protocol::Icmp => "icmp",
                    }
                    .into(),
                    ports: r
                        .ports
                        .iter()
                        .map(|p| pb::PortRange {
                            first: u32::from(p.first),
                            last: u32::from(p.last),
                        })
                        .collect(),
                    verdict: verdict_pb(r.verdict),
                })
                .collect(),
            default_verdict: verdict_pb(d.default_verdict),
        }
    }

    pub fn firewall_from_pb(d: &pb::FirewallDecision) -> Result<FirewallDecision, BadRules> {
        use pb::peer::Peer as P;
        let port = |p: u32| u16::try_from(p).map_err(|_| BadRules(format!("port {p} above 65535")));
        let rules = d
            .rules
            .iter()
            .map(|r| {
                Ok(Rule {
                    direction: match r.direction.as_str() {
                        "ingress" => Direction::Ingress,
                        "egress" => Direction::Egress,
                        o => return Err(BadRules(format!("direction {o:?}"))),
                    },
                    peer: match r.peer.as_ref().and_then(|p| p.peer.as_ref()) {
                        Some(P::Labels(l)) => Peer::Labels(l.labels.clone().into_iter().collect()),
                        Some(P::Cidr(c)) => Peer::Cidr(c.clone()),
                        Some(P::Host(_)) => Peer::Host,
                        Some(P::Wan(_)) => Peer::Wan,
                        Some(P::Any(_)) | None => Peer::Any,
                    },
                    protocol: match r.protocol.as_str() {
                        "" | "any" => Protocol::Any,
                        "tcp" => Protocol::Tcp,
                        "udp" => Protocol::Udp,
                        "icmp" => Protocol::Icmp,
                        o => return Err(BadRules(format!("protocol {o:?}"))),
                    },
                    ports: r
                        .ports
                        .iter()
                        .map(|p| {
                            Ok(PortRange {
                                first: port(p.first)?,
                                last: port(p.last)?,
                            })
                        })
                        .collect::<Result<_, BadRules>>()?,
                    verdict: verdict(&r.verdict)?,
                })
            })
            .collect::<Result<_, BadRules>>()?;
        Ok(FirewallDecision {
            rules,
            default_verdict: verdict(&d.default_verdict)?,
        })
    }
}
