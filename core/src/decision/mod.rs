//! The policy vocabulary: the hooks' inputs and outputs, as plain Rust (and JSON, for `weir
//! plugin eval` and the decision log). They mirror `wit/policy.wit` and `weir.v1.PolicyPlugin`
//! one to one. A leaf of the ground floor (it imports nothing of Weir): the plugin host, the
//! hub, the agent and the data plane all speak it.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub mod peers;
pub mod pool;

pub use peers::{PeerIndex, PeersView};
pub use pool::{FreeRanges, PoolJson, PoolView};

pub type Labels = BTreeMap<String, String>;

/// The version of `wit/policy.wit` (and of `weir.v1.PolicyPlugin`'s shape) this host speaks.
pub const INTERFACE_VERSION: &str = "0.2.0";

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
    pub overlay: Ipv4Net,
    pub max_runners: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakenId {
    pub id: u32,
    pub runner: Option<String>,
    pub physical_ip: Ipv4Addr,
    pub last_seen_ms: i64,
    pub active: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerRequest {
    pub network: String,
    pub name: String,
    pub physical_ip: Ipv4Addr,
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

/// Which engine attached a workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    #[default]
    Scheduler,
    Cni,
    Docker,
    Netavark,
    Kohakuriver,
}

/// Who attached a workload: the engine and its network (`cni/NAME`, `docker/ID`, …).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Origin {
    pub engine: Engine,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl Origin {
    /// A record's origin (`scheduler`, `cni/NAME`, `docker/ID`, `netavark/NAME`,
    /// `kohakuriver/…`); anything else is the scheduler's, named as given.
    pub fn parse(s: &str) -> Self {
        let (engine, name) = s.split_once('/').unwrap_or((s, ""));
        let engine = match engine {
            "cni" => Engine::Cni,
            "docker" => Engine::Docker,
            "netavark" => Engine::Netavark,
            "kohakuriver" => Engine::Kohakuriver,
            "scheduler" | "" => Engine::Scheduler,
            _ => {
                return Self {
                    engine: Engine::Scheduler,
                    name: s.to_string(),
                };
            }
        };
        Self {
            engine,
            name: name.to_string(),
        }
    }
}

/// An attach, and the pool its address comes from (a shared view, not a copy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AddressRequestJson", into = "AddressRequestJson")]
pub struct AddressRequest {
    pub network: String,
    pub workload_id: String,
    pub vm: bool,
    pub origin: Origin,
    pub labels: Labels,
    pub runner: String,
    pub runner_labels: Labels,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
    pub pool: PoolView,
}

impl AddressRequest {
    /// A scheduler's container attach on `subnet` with the hub's address rules (gateway `.1`,
    /// workloads `.2` to broadcast − 2, never the host's `.254`), `held` already taken: for
    /// tests, benchmarks and `weir plugin bench`.
    pub fn on_subnet(runner: &str, workload_id: &str, subnet: Ipv4Net, held: &[Ipv4Addr]) -> Self {
        let net = u32::from(subnet.network());
        let first = Ipv4Addr::from(net.saturating_add(2));
        let last = Ipv4Addr::from(u32::from(subnet.broadcast()).saturating_sub(2));
        let host_side = Ipv4Addr::from(net.saturating_add(254));
        let mut held = held.to_vec();
        if subnet.prefix_len() <= 24 {
            held.push(host_side);
        }
        Self {
            network: "default".into(),
            workload_id: workload_id.into(),
            vm: false,
            origin: Origin::default(),
            labels: Labels::new(),
            runner: runner.into(),
            runner_labels: Labels::new(),
            subnet,
            gateway: Ipv4Addr::from(net.saturating_add(1)),
            first,
            last,
            pool: PoolView::from_held(first, last, &held),
        }
    }
}

/// The JSON form of [`AddressRequest`]: the pool as a summary (what the decision log writes:
/// its generation and digest, O(1)), or, written by hand, as `free` ranges or `held`
/// addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AddressRequestJson {
    network: String,
    workload_id: String,
    #[serde(default)]
    vm: bool,
    #[serde(default)]
    origin: Origin,
    #[serde(default)]
    labels: Labels,
    runner: String,
    #[serde(default)]
    runner_labels: Labels,
    subnet: Ipv4Net,
    gateway: Ipv4Addr,
    first: Ipv4Addr,
    last: Ipv4Addr,
    #[serde(default)]
    pool: PoolJson,
    /// Interface 0.1's list of held addresses: read only to refuse it by name, so an old
    /// request is not evaluated against an empty pool.
    #[serde(default, skip_serializing)]
    taken: Option<serde_json::Value>,
}

impl TryFrom<AddressRequestJson> for AddressRequest {
    type Error = String;
    fn try_from(j: AddressRequestJson) -> Result<Self, String> {
        if j.taken.is_some() {
            return Err(
                "`taken` is interface 0.1's list of held addresses; 0.2 reads `pool`: \
                 {\"held\": [addresses]} or {\"free\": [[first, last], …]}"
                    .into(),
            );
        }
        if j.first > j.last {
            return Err(format!("first {} is above last {}", j.first, j.last));
        }
        let mut pool = j.pool.view(j.first, j.last);
        // The gateway is never free, whatever the JSON said.
        if pool.is_free(j.gateway) {
            let mut free = pool.free().clone();
            free.remove(u32::from(j.gateway));
            pool = PoolView::new(std::sync::Arc::new(free), pool.generation());
        }
        Ok(Self {
            network: j.network,
            workload_id: j.workload_id,
            vm: j.vm,
            origin: j.origin,
            labels: j.labels,
            runner: j.runner,
            runner_labels: j.runner_labels,
            subnet: j.subnet,
            gateway: j.gateway,
            first: j.first,
            last: j.last,
            pool,
        })
    }
}

impl From<AddressRequest> for AddressRequestJson {
    fn from(r: AddressRequest) -> Self {
        Self {
            pool: PoolJson::summary(&r.pool),
            network: r.network,
            workload_id: r.workload_id,
            vm: r.vm,
            origin: r.origin,
            labels: r.labels,
            runner: r.runner,
            runner_labels: r.runner_labels,
            subnet: r.subnet,
            gateway: r.gateway,
            first: r.first,
            last: r.last,
            taken: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AddressDecision {
    Address(Ipv4Addr),
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
    pub address: Ipv4Addr,
    #[serde(default)]
    pub origin: Origin,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Egress {
    #[default]
    RunnerNat,
    ViaHost,
}

/// A runner as route decisions see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerInfo {
    pub name: String,
    pub id: u32,
    #[serde(default)]
    pub labels: Labels,
    pub physical_ip: Ipv4Addr,
}

/// What a route decision is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RouteChange {
    /// The runner joined or changed: every path anew (peers not named: via-hub).
    Joined,
    /// A peer joined or changed: the path to it.
    Peer(RunnerInfo),
}

/// One runner's paths after a change, and the peers it may name (a shared index).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RouteRequestJson", into = "RouteRequestJson")]
pub struct RouteRequest {
    pub network: String,
    pub runner: RunnerInfo,
    pub change: RouteChange,
    pub peers: PeersView,
}

/// The JSON form of [`RouteRequest`]: the peers are listed when written by hand; the
/// decision log writes their count only.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RouteRequestJson {
    network: String,
    runner: RunnerInfo,
    change: RouteChange,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    peers: Vec<RunnerInfo>,
    #[serde(default)]
    peer_count: usize,
}

impl TryFrom<RouteRequestJson> for RouteRequest {
    type Error = String;
    fn try_from(j: RouteRequestJson) -> Result<Self, String> {
        let me = j.runner.name.clone();
        Ok(Self {
            network: j.network,
            runner: j.runner,
            change: j.change,
            peers: PeersView::new(std::sync::Arc::new(PeerIndex::new(j.peers)), &me),
        })
    }
}

impl From<RouteRequest> for RouteRequestJson {
    fn from(r: RouteRequest) -> Self {
        Self {
            peer_count: r.peers.count(),
            network: r.network,
            runner: r.runner,
            change: r.change,
            peers: Vec::new(),
        }
    }
}

/// What a route decision changes: paths not named keep what they were.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RouteDelta {
    #[serde(default)]
    pub paths: Vec<(String, PathKind)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Egress>,
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
    Route(RouteDelta),
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
