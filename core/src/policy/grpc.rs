//! Out-of-process plugins: a `weir.v1.PolicyPlugin` service on a unix socket or a URL, called
//! with the plugin's deadline. A dead or slow plugin is a fault like a trapped component.

use std::time::Duration;

use tonic::transport::Channel;
use weir_proto::v1 as pb;
use weir_proto::v1::policy_plugin_client::PolicyPluginClient;

use super::Fault;
use crate::decision::{self as t, Decision, Request};
use crate::transport::{ChannelOptions, ClientError, endpoint};

/// Why a gRPC plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Url(#[from] ClientError),
    #[error("{url}: configure failed: {message}")]
    Configure { url: String, message: String },
    #[error("configure refused the settings: {0}")]
    Refused(String),
}

pub struct GrpcPlugin {
    name: String,
    client: PolicyPluginClient<Channel>,
}

impl GrpcPlugin {
    /// Connect and `Configure`. The plugin must be up when the host loads it.
    pub async fn connect(
        name: &str,
        url: &str,
        config: &[(String, String)],
        deadline: Duration,
    ) -> Result<Self, ConnectError> {
        let opts = ChannelOptions {
            connect_timeout: deadline.max(Duration::from_secs(1)),
            keepalive: None,
        };
        let ep = endpoint(url, opts)?;
        // Lazy: a plugin that dies later is reconnected on the next call.
        let channel = ep.connect_lazy();
        let mut client = PolicyPluginClient::new(channel);
        let mut req = tonic::Request::new(pb::ConfigureRequest {
            config: config.iter().cloned().collect(),
            interface_version: t::INTERFACE_VERSION.into(),
        });
        req.set_timeout(deadline.max(Duration::from_secs(2)));
        let resp = client
            .configure(req)
            .await
            .map_err(|st| ConnectError::Configure {
                url: url.to_string(),
                message: st.message().to_string(),
            })?
            .into_inner();
        if !resp.error.is_empty() {
            return Err(ConnectError::Refused(resp.error));
        }
        Ok(Self {
            name: name.to_string(),
            client,
        })
    }

    /// One decision, bounded by `deadline`.
    pub async fn call(&self, request: &Request, deadline: Duration) -> Result<Decision, Fault> {
        let mut c = self.client.clone();
        let fault = |st: tonic::Status| match st.code() {
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => Fault::Deadline(deadline),
            _ => Fault::Transport(format!("{}: {}", self.name, st.message())),
        };
        let work = async {
            Ok(match request {
                Request::AssignRunner(r) => Decision::Runner(runner_decision(
                    c.assign_runner(timed(runner_request(r), deadline))
                        .await
                        .map_err(fault)?
                        .into_inner(),
                )?),
                Request::AssignAddress(r) => Decision::Address(address_decision(
                    c.assign_address(timed(address_request(r), deadline))
                        .await
                        .map_err(fault)?
                        .into_inner(),
                )?),
                Request::Rules(r) => Decision::Firewall(firewall_decision(
                    c.rules(timed(firewall_request(r), deadline))
                        .await
                        .map_err(fault)?
                        .into_inner(),
                )?),
                Request::Route(r) => Decision::Route(route_delta(
                    c.route(timed(route_request(r), deadline))
                        .await
                        .map_err(fault)?
                        .into_inner(),
                )?),
            })
        };
        // The gRPC timeout covers the call; this covers connecting to a dead socket too.
        match tokio::time::timeout(deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(Fault::Deadline(deadline)),
        }
    }
}

/// The size in bytes of `request` as a gRPC plugin receives it (benchmarks: what a decision
/// costs on the wire, the pool as free ranges and the peers only on a join).
pub fn encoded_len(request: &Request) -> usize {
    use prost::Message;
    match request {
        Request::AssignRunner(r) => runner_request(r).encoded_len(),
        Request::AssignAddress(r) => address_request(r).encoded_len(),
        Request::Rules(r) => firewall_request(r).encoded_len(),
        Request::Route(r) => route_request(r).encoded_len(),
    }
}

fn timed<T>(msg: T, deadline: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(deadline);
    r
}

fn runner_request(r: &t::RunnerRequest) -> pb::RunnerRequest {
    pb::RunnerRequest {
        network: r.network.clone(),
        name: r.name.clone(),
        physical_ip: r.physical_ip.to_string(),
        labels: r.labels.clone().into_iter().collect(),
        taken: r
            .taken
            .iter()
            .map(|x| pb::TakenId {
                id: x.id,
                runner: x.runner.clone().unwrap_or_default(),
                physical_ip: x.physical_ip.to_string(),
                last_seen_ms: x.last_seen_ms,
                active: x.active,
            })
            .collect(),
        plan: Some(pb::PolicyPlan {
            spec: r.plan.spec.clone(),
            overlay: r.plan.overlay.to_string(),
            max_runners: r.plan.max_runners,
        }),
    }
}

fn runner_decision(d: pb::RunnerDecision) -> Result<t::RunnerDecision, Fault> {
    use pb::runner_decision::Decision as D;
    match d.decision {
        Some(D::Id(i)) => Ok(t::RunnerDecision::Id(i)),
        Some(D::Builtin(_)) => Ok(t::RunnerDecision::Builtin),
        Some(D::Deny(m)) => Ok(t::RunnerDecision::Deny(m)),
        None => Err(Fault::Output("empty runner decision".into())),
    }
}

fn origin(o: &t::Origin) -> pb::Origin {
    pb::Origin {
        engine: match o.engine {
            t::Engine::Scheduler => "scheduler",
            t::Engine::Cni => "cni",
            t::Engine::Docker => "docker",
            t::Engine::Netavark => "netavark",
            t::Engine::Kohakuriver => "kohakuriver",
        }
        .into(),
        name: o.name.clone(),
    }
}

/// The pool goes as its free ranges: O(ranges) bytes, no call back.
fn address_request(r: &t::AddressRequest) -> pb::AddressRequest {
    pb::AddressRequest {
        network: r.network.clone(),
        workload_id: r.workload_id.clone(),
        vm: r.vm,
        labels: r.labels.clone().into_iter().collect(),
        runner: r.runner.clone(),
        runner_labels: r.runner_labels.clone().into_iter().collect(),
        subnet: r.subnet.to_string(),
        gateway: r.gateway.to_string(),
        first: r.first.to_string(),
        last: r.last.to_string(),
        free: r
            .pool
            .free()
            .iter()
            .map(|(first, last)| pb::AddressRange { first, last })
            .collect(),
        free_count: r.pool.free().count(),
        pool_generation: r.pool.generation(),
        origin: Some(origin(&r.origin)),
    }
}

fn address_decision(d: pb::AddressDecision) -> Result<t::AddressDecision, Fault> {
    use pb::address_decision::Decision as D;
    match d.decision {
        Some(D::Address(a)) => a.parse().map(t::AddressDecision::Address).map_err(|_| {
            let shown: String = a.chars().take(40).collect();
            Fault::Output(format!("{shown:?} is not an IPv4 address"))
        }),
        Some(D::NextFree(_)) => Ok(t::AddressDecision::NextFree),
        Some(D::Deny(m)) => Ok(t::AddressDecision::Deny(m)),
        None => Err(Fault::Output("empty address decision".into())),
    }
}

fn firewall_request(r: &t::FirewallRequest) -> pb::FirewallRequest {
    pb::FirewallRequest {
        network: r.network.clone(),
        workload_id: r.workload_id.clone(),
        labels: r.labels.clone().into_iter().collect(),
        runner: r.runner.clone(),
        address: r.address.to_string(),
        groups: r
            .groups
            .iter()
            .map(|g| pb::LabelSet {
                labels: g.clone().into_iter().collect(),
            })
            .collect(),
        origin: Some(origin(&r.origin)),
    }
}

/// A firewall decision from its `weir.v1` message.
fn firewall_decision(d: pb::FirewallDecision) -> Result<t::FirewallDecision, Fault> {
    crate::decision::wire::firewall_from_pb(&d).map_err(|e| Fault::Output(e.to_string()))
}

fn runner_info(r: &t::RunnerInfo) -> pb::RunnerInfo {
    pb::RunnerInfo {
        name: r.name.clone(),
        labels: r.labels.clone().into_iter().collect(),
        physical_ip: r.physical_ip.to_string(),
        id: r.id,
    }
}

/// A joined runner's request lists every peer (once per registration); a peer's change names
/// that peer alone.
fn route_request(r: &t::RouteRequest) -> pb::RouteRequest {
    use pb::route_request::Change;
    let (change, peers) = match &r.change {
        t::RouteChange::Joined => (
            Change::Joined(true),
            r.peers.all().map(runner_info).collect(),
        ),
        t::RouteChange::Peer(p) => (Change::Peer(runner_info(p)), Vec::new()),
    };
    pb::RouteRequest {
        network: r.network.clone(),
        runner: Some(runner_info(&r.runner)),
        change: Some(change),
        peers,
    }
}

fn route_delta(d: pb::RouteDelta) -> Result<t::RouteDelta, Fault> {
    let mut paths: Vec<(String, t::PathKind)> = d
        .paths
        .into_iter()
        .map(|(n, p)| match p.as_str() {
            "via-hub" => Ok((n, t::PathKind::ViaHub)),
            "direct" => Ok((n, t::PathKind::Direct)),
            o => Err(Fault::Output(format!(
                "path {:?} (allowed: via-hub, direct)",
                o.chars().take(40).collect::<String>()
            ))),
        })
        .collect::<Result<_, _>>()?;
    paths.sort();
    Ok(t::RouteDelta {
        paths,
        egress: match d.egress.as_str() {
            "" => None,
            "runner-nat" => Some(t::Egress::RunnerNat),
            "via-host" => Some(t::Egress::ViaHost),
            o => {
                return Err(Fault::Output(format!(
                    "egress {:?} (allowed: runner-nat, via-host, empty)",
                    o.chars().take(40).collect::<String>()
                )));
            }
        },
    })
}
